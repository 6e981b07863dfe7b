"""OpenAI-compatible HTTP backend: any server answering ``/v1/completions`` or ``/v1/chat/completions``.

What the server offers is detected, not assumed: one probe request (``max_tokens=1`` with
``logprobs``) tells whether it returns log-probabilities and how many top alternatives; when it
does not, :meth:`OpenAIHttpBackend.generate` asks for plain text and returns
:class:`~weightprint.behave.backends.base.Generation` objects without ``token_logprobs``.
:meth:`OpenAIHttpBackend.is_sampling` tells whether the server samples even when asked for
``temperature=0`` (two greedy requests that differ only in ``seed`` give different texts).

Transport
---------
- ``timeout`` seconds per request (connect, read, write); a stalled server is a timeout.
- At most ``max_retries`` retries with exponential backoff (``backoff * 2**attempt`` seconds,
  capped at ``max_backoff``) after a dropped connection, a timeout, an HTTP 5xx, 408 or 429, or a
  body that is not the JSON expected; a 429's ``Retry-After`` (seconds or an HTTP date) is
  honoured up to ``max_backoff``. Other 4xx answers fail at once. The error is one line naming
  the URL, the last problem and the number of attempts.
- ``concurrency`` requests in flight at most (a thread pool over one ``httpx.Client``).
- The API key is read from the environment variable ``api_key_env`` and sent as a bearer
  token; it is never logged, cached, stored in a result or put into an error message.
- Responses are cached on disk (:class:`weightprint.store.ResultCache`, namespace
  ``openai_http``) under the SHA-256 of (endpoint URL, model, request body): a rerun sends no
  request, and a run that fails halfway keeps every answer it got. ``cache=False`` turns the
  cache off. A sampled answer is cached too: ask for another sample with another ``seed``.
- Requests to loopback hosts ignore proxy environment variables (traffic for 127.0.0.1 never
  leaves the machine).
"""

from __future__ import annotations

import email.utils
import json
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import urlsplit, urlunsplit

from weightprint.behave.backends.base import (
    Backend,
    Capabilities,
    GenerateRequest,
    Generation,
    register_backend,
)
from weightprint.errors import BackendError, WeightprintError
from weightprint.progress import ProgressCallback, no_progress

__all__ = ["OpenAIHttpBackend", "default_cache_path", "CACHE_NAMESPACE"]

CACHE_NAMESPACE = "openai_http"
DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"
#: the prompt of the capability and sampling probes (cached like any request)
PROBE_PROMPT = "The weather today is"
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def default_cache_path() -> Path:
    """``$WEIGHTPRINT_CACHE/http_cache.db`` (default ``~/.cache/weightprint/http_cache.db``)."""
    root = Path(os.environ.get("WEIGHTPRINT_CACHE", Path.home() / ".cache" / "weightprint"))
    return root / "http_cache.db"


def _is_url(ref: str) -> bool:
    return ref.lower().startswith(("http://", "https://"))


def _display_url(url: str) -> str:
    """``url`` without user info or query (which may hold credentials)."""
    p = urlsplit(url)
    host = p.hostname or ""
    if p.port:
        host = f"{host}:{p.port}"
    return urlunsplit((p.scheme, host, p.path, "", ""))


def _base_url(ref: str) -> str:
    """The API root ending in ``/v1``: ``http://h:8000`` and ``http://h:8000/v1/`` both give ``http://h:8000/v1``."""
    p = urlsplit(ref.strip())
    if p.scheme not in ("http", "https") or not p.hostname:
        raise WeightprintError(f"{_display_url(ref)}: not an http(s) URL with a host")
    path = p.path.rstrip("/")
    for tail in ("/chat/completions", "/completions"):
        if path.endswith(tail):
            path = path[: -len(tail)]
    if not path.endswith("/v1"):
        path += "/v1"
    return urlunsplit((p.scheme, p.netloc, path, "", ""))


def _is_loopback(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    return host in ("localhost", "::1") or host.startswith("127.")


def _retry_after_seconds(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class _Retryable(Exception):
    """A failure worth another attempt; ``wait`` overrides the backoff (Retry-After)."""

    def __init__(self, problem: str, wait: float | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.wait = wait


@register_backend(matches=_is_url)
class OpenAIHttpBackend(Backend):
    """A model behind an OpenAI-compatible HTTP API.

    Parameters
    ----------
    ref : str
        Server URL (``http://127.0.0.1:8000`` or ``.../v1``).
    model : str, *optional*
        The ``model`` field of requests; default: the first id ``GET /v1/models`` lists.
    api_key_env : str, *optional*, defaults to ``"OPENAI_API_KEY"``
        Environment variable holding the API key (none sent when unset or empty).
    timeout : float, *optional*, defaults to 60
        Seconds per request.
    max_retries : int, *optional*, defaults to 4
        Retries after the first attempt (so at most ``max_retries + 1`` attempts).
    backoff, max_backoff : float, *optional*, default 0.5 and 30
        First retry delay and the cap of every delay (Retry-After included).
    concurrency : int, *optional*, defaults to 4
        Requests in flight at most.
    cache : str, Path or bool, *optional*, defaults to True
        ``True``: :func:`default_cache_path`; a path or database URL; ``False``: no cache.
    endpoint : {'completions', 'chat'}, *optional*
        Which endpoint plain (non-chat) requests use; chat requests always use ``chat``.
    """

    name = "openai_http"

    def __init__(self, ref: str | Path, *, model: str | None = None, api_key_env: str = DEFAULT_API_KEY_ENV,
                 timeout: float = 60.0, max_retries: int = 4, backoff: float = 0.5, max_backoff: float = 30.0,
                 concurrency: int = 4, cache: str | Path | bool = True, endpoint: str = "completions",
                 transport: Any = None) -> None:
        import httpx

        self.base_url = _base_url(str(ref))
        self.display_url = _display_url(self.base_url)
        if endpoint not in ("completions", "chat"):
            raise WeightprintError(f"unknown endpoint `{endpoint}` (known: completions, chat)")
        for knob, value in (("max_retries", max_retries), ("concurrency", concurrency)):
            if not isinstance(value, int) or value < (0 if knob == "max_retries" else 1):
                raise WeightprintError(f"`{knob}` must be a {'non-negative' if knob == 'max_retries' else 'positive'} integer, got {value!r}")
        if not timeout > 0:
            raise WeightprintError(f"`timeout` must be positive, got {timeout!r}")
        self.endpoint = endpoint
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.concurrency = concurrency
        self.requests_sent = 0  # HTTP attempts actually made (cache hits excluded)
        self.cache_hits = 0
        self._lock = threading.Lock()
        headers = {"User-Agent": "weightprint"}
        key = os.environ.get(api_key_env, "") if api_key_env else ""
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.Client(headers=headers, timeout=httpx.Timeout(self.timeout),
                                    trust_env=not _is_loopback(self.base_url), transport=transport,
                                    limits=httpx.Limits(max_connections=concurrency))
        if cache is False or cache is None:
            self._cache = None
        else:
            from weightprint.store import ResultCache

            self._cache = ResultCache(default_cache_path() if cache is True else cache, CACHE_NAMESPACE)
        self.model = model or self._first_model()
        self.label = f"{self.display_url} ({self.model})"
        self._capabilities: Capabilities | None = None
        self._sampling: bool | None = None

    # ------------------------------------------------------------------ transport
    def _cache_key(self, method: str, path: str, body: Any) -> str:
        from weightprint.store import cache_key

        return cache_key(method, self.base_url + path, body)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None, *,
              check: Callable[[Any], None] | None = None, use_cache: bool = True) -> Any:
        """JSON answer of one request, from the cache or the server (with retries); cached on success."""
        key = self._cache_key(method, path, body)
        if use_cache and self._cache is not None:
            hit = self._cache.get(key)
            if hit is not None:
                with self._lock:
                    self.cache_hits += 1
                return hit
        url = self.base_url + path
        shown = self.display_url + path
        problem = ""
        for attempt in range(self.max_retries + 1):
            try:
                data = self._attempt(method, url, body, check)
            except _Retryable as e:
                problem = e.problem
                if attempt == self.max_retries:
                    break
                delay = min(self.max_backoff, self.backoff * 2 ** attempt * (1 + 0.25 * random.random()))
                if e.wait is not None:
                    delay = min(self.max_backoff, max(delay, e.wait))
                time.sleep(delay)
                continue
            except BackendError as e:  # not worth retrying
                raise BackendError(f"{shown}: {e.message}", hint=e.hint) from None
            if use_cache and self._cache is not None:
                self._cache.put(key, data)
            return data
        n = self.max_retries + 1
        raise BackendError(f"{shown}: {problem} (gave up after {n} attempt{'s' if n > 1 else ''})",
                           hint="check that the server is up; answers received so far are cached")

    def _attempt(self, method: str, url: str, body: Any, check: Callable[[Any], None] | None) -> Any:
        import httpx

        with self._lock:
            self.requests_sent += 1
        try:
            resp = self._client.request(method, url, json=body)
        except httpx.TimeoutException:
            raise _Retryable(f"no answer within {self.timeout:g} s") from None
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as e:
            kind = "connection refused" if isinstance(e, httpx.ConnectError) else "connection dropped"
            raise _Retryable(kind) from None
        except httpx.HTTPError as e:
            raise _Retryable(f"transport error ({type(e).__name__})") from None
        if resp.status_code in _RETRY_STATUS:
            wait = _retry_after_seconds(resp.headers.get("retry-after")) if resp.status_code in (429, 503) else None
            raise _Retryable(f"HTTP {resp.status_code} {resp.reason_phrase}".rstrip(), wait=wait)
        if resp.status_code >= 400:
            raise BackendError(f"HTTP {resp.status_code} {resp.reason_phrase}: {_error_text(resp)}".rstrip(": "),
                               hint="check the URL, --model and the API key variable" if resp.status_code in (401, 403, 404) else None)
        try:
            data = resp.json()
        except ValueError:
            raise _Retryable("malformed JSON in the answer") from None
        if check is not None:
            try:
                check(data)
            except (KeyError, IndexError, TypeError, ValueError) as e:
                raise _Retryable(f"unexpected answer shape ({type(e).__name__}: {e})") from None
        return data

    def _first_model(self) -> str:
        def check(d: Any) -> None:
            if not d["data"][0]["id"]:
                raise ValueError("empty model id")

        data = self._call("GET", "/models", None, check=check)
        return str(data["data"][0]["id"])

    # ------------------------------------------------------------------ capabilities
    @property
    def capabilities(self) -> Capabilities:  # type: ignore[override]
        """What the server offers, probed once (one cached ``max_tokens=1`` request with log-probabilities)."""
        if self._capabilities is None:
            self._capabilities = self._probe()
        return self._capabilities

    def _probe(self) -> Capabilities:
        k = 5
        body = self._completion_body(GenerateRequest(prompt=PROBE_PROMPT, max_tokens=1, top_logprobs=k), logprobs=True)
        data = self._call("POST", "/completions", body, check=_check_completion)
        lp = data["choices"][0].get("logprobs") or {}
        has_lp = bool(lp.get("token_logprobs")) and all(x is not None for x in lp.get("token_logprobs") or [None])
        tops = lp.get("top_logprobs") or []
        n_top = max((len(t or {}) for t in tops), default=0)
        return Capabilities(logprobs=has_lp, top_logprobs=has_lp and n_top > 1, echo=False,
                            full_distribution=False, sampling=True, chat=True,
                            max_top_logprobs=min(n_top, 20) if has_lp else 0)

    def is_sampling(self, max_tokens: int = 16) -> bool:
        """True when the server samples although asked for greedy output.

        Two ``temperature=0`` requests for the same prompt that differ only in ``seed`` (so the
        cache keeps both) are compared; different texts mean the server ignores the request's
        temperature. A server that samples with a fixed seed is not detected this way.
        """
        if self._sampling is None:
            outs = self.generate([GenerateRequest(prompt=PROBE_PROMPT, max_tokens=max_tokens, seed=s) for s in (1, 2)])
            self._sampling = outs[0].text != outs[1].text
        return self._sampling

    # ------------------------------------------------------------------ generation
    def _completion_body(self, r: GenerateRequest, *, logprobs: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "prompt": r.prompt, "max_tokens": r.max_tokens,
                                "temperature": float(r.temperature), "top_p": float(r.top_p)}
        if r.seed is not None:
            body["seed"] = int(r.seed)
        if r.stop:
            body["stop"] = list(r.stop)
        if logprobs and r.top_logprobs:
            body["logprobs"] = int(r.top_logprobs)
        return body

    def _chat_body(self, r: GenerateRequest, *, logprobs: bool) -> dict[str, Any]:
        messages = ([{"role": "system", "content": r.system}] if r.system else []) + [{"role": "user", "content": r.prompt}]
        body: dict[str, Any] = {"model": self.model, "messages": messages,
                                "max_tokens": r.max_tokens, "temperature": float(r.temperature),
                                "top_p": float(r.top_p)}
        if r.seed is not None:
            body["seed"] = int(r.seed)
        if r.stop:
            body["stop"] = list(r.stop)
        if logprobs and r.top_logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = int(r.top_logprobs)
        return body

    def _generate_one(self, r: GenerateRequest) -> Generation:
        want = bool(r.top_logprobs) and self.capabilities.logprobs
        if want:
            r = GenerateRequest(**{**r.__dict__, "top_logprobs": min(r.top_logprobs, max(1, self.capabilities.max_top_logprobs))})
        if r.chat or self.endpoint == "chat":
            data = self._call("POST", "/chat/completions", self._chat_body(r, logprobs=want), check=_check_chat)
            return _chat_generation(data["choices"][0], r.top_logprobs if want else 0)
        data = self._call("POST", "/completions", self._completion_body(r, logprobs=want), check=_check_completion)
        return _completion_generation(data["choices"][0], r.top_logprobs if want else 0)

    def generate(self, requests: Sequence[GenerateRequest], progress: ProgressCallback | None = None) -> list[Generation]:
        """Complete each request (``concurrency`` in flight); answers come back in request order."""
        progress = progress or no_progress
        if not requests:
            return []
        _ = self.capabilities  # probe once, before the pool
        out: list[Generation | None] = [None] * len(requests)
        done = 0
        if self.concurrency == 1 or len(requests) == 1:
            for i, r in enumerate(requests):
                out[i] = self._generate_one(r)
                progress(i + 1, len(requests), "generate")
            return out  # type: ignore[return-value]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            futures = {pool.submit(self._generate_one, r): i for i, r in enumerate(requests)}
            try:
                for fut in _as_completed(futures):
                    out[futures[fut]] = fut.result()
                    done += 1
                    progress(done, len(requests), "generate")
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
        return out  # type: ignore[return-value]

    def close(self) -> None:
        client = getattr(self, "_client", None)
        if client is not None:
            client.close()
            self._client = None  # type: ignore[assignment]


def _as_completed(futures: Any):
    from concurrent.futures import as_completed

    return as_completed(futures)


def _error_text(resp: Any) -> str:
    """A short reason from an error answer's body (``{"error": {"message": ...}}`` or text)."""
    try:
        d = resp.json()
        msg = d.get("error", d) if isinstance(d, dict) else d
        if isinstance(msg, dict):
            msg = msg.get("message") or msg.get("detail") or json.dumps(msg)
        text = str(msg)
    except ValueError:
        text = resp.text
    return " ".join(text.split())[:200]


def _check_completion(d: Any) -> None:
    c = d["choices"][0]
    if not isinstance(c["text"], str):
        raise TypeError("`text` is not a string")


def _check_chat(d: Any) -> None:
    c = d["choices"][0]
    content = c["message"].get("content")
    if content is not None and not isinstance(content, str):
        raise TypeError("`message.content` is not a string")


def _top_k(d: dict[str, float], k: int) -> dict[str, float]:
    return dict(sorted(((str(t), float(v)) for t, v in d.items()), key=lambda kv: -kv[1])[:k])


def _completion_generation(choice: dict[str, Any], k: int) -> Generation:
    lp = choice.get("logprobs")
    text = choice["text"]
    if not k or not lp or not lp.get("tokens") or any(x is None for x in lp.get("token_logprobs") or [None]):
        return Generation(text=text, finish_reason=choice.get("finish_reason"))
    tops = tuple(_top_k(d or {}, k) for d in (lp.get("top_logprobs") or [{}] * len(lp["tokens"])))
    return Generation(text=text, tokens=tuple(lp["tokens"]), token_logprobs=tuple(float(x) for x in lp["token_logprobs"]),
                      top_logprobs=tops, finish_reason=choice.get("finish_reason"))


def _chat_generation(choice: dict[str, Any], k: int) -> Generation:
    text = choice["message"].get("content") or ""
    content = (choice.get("logprobs") or {}).get("content")
    if not k or not content:
        return Generation(text=text, finish_reason=choice.get("finish_reason"))
    return Generation(
        text=text,
        tokens=tuple(c["token"] for c in content),
        token_logprobs=tuple(float(c["logprob"]) for c in content),
        top_logprobs=tuple(_top_k({t["token"]: t["logprob"] for t in c.get("top_logprobs", [])}, k) for c in content),
        finish_reason=choice.get("finish_reason"),
    )
