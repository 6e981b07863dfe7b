"""Helpers of the behave tests: real servers on 127.0.0.1, a requantized SmolLM2, free ports."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen | None = None, timeout: float = 120.0) -> None:
    """Poll ``url`` until it answers 200 (or fail with the server's exit status)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode} before it was ready")
        try:
            if httpx.get(url, timeout=2.0, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} not ready after {timeout:.0f} s")


def start_llama_server(model: Path, *, threads: int = 2, log: Path | None = None,
                       port: int | None = None) -> tuple[subprocess.Popen, str]:
    """Start ``python -m llama_cpp.server`` for ``model`` on 127.0.0.1 (``port``, default a free one);
    returns (process, base URL)."""
    port = port or free_port()
    out = open(log, "w") if log else subprocess.DEVNULL
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1", "--port", str(port),
         "--n_threads", str(threads), "--n_threads_batch", str(threads), "--n_ctx", "2048", "--verbose", "False"],
        stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "NO_PROXY": "127.0.0.1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url + "/v1/models", proc)
    except BaseException:
        stop(proc)
        raise
    return proc, url


def stop(proc: subprocess.Popen) -> None:
    """Terminate a server we started (kill after 10 s)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def requantized(source: Path, ftype: int = 7, name: str = "q8_0") -> Path:
    """``source`` requantized by llama.cpp's own quantizer (ftype 7 = Q8_0), cached beside the derived models."""
    import llama_cpp

    from weightprint.testing.models import cache_dir

    out = cache_dir() / "behave" / f"{source.stem}.requant-{name}.gguf"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.allow_requantize = True
    params.nthread = 2
    rc = llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), params)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize returned {rc}")
    os.replace(tmp, out)
    return out


# ----------------------------------------------------------------------------------------------
# Tiny HTTP servers of our own: a fault injector and a text-only sampling proxy
# ----------------------------------------------------------------------------------------------
import json  # noqa: E402
import random  # noqa: E402
import threading  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402


class _Server:
    """A ThreadingHTTPServer on a free 127.0.0.1 port, served from a thread; ``url`` is its root."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def completion_json(text: str = " fine, thank you") -> dict:
    return {"id": "cmpl-1", "object": "text_completion", "model": "fake",
            "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": "length"}]}


class _FaultHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def _send(self, status: int, body: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _handle(self) -> None:
        owner: FaultServer = self.server.owner  # type: ignore[attr-defined]
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        with owner.lock:
            owner.log.append((self.command, self.path, body, dict(self.headers)))
            fault = owner.faults.pop(0) if owner.faults else owner.default
        if fault == "drop":
            self.close_connection = True
            self.connection.shutdown(2)
            return
        if fault == "500":
            return self._send(500, b'{"error": {"message": "boom"}}')
        if fault == "malformed":
            return self._send(200, b'{"choices": [{"text": "trunc')
        if fault == "wrong-shape":
            return self._send(200, b'{"result": 1}')
        if fault == "stall":
            time.sleep(owner.stall_s)
            return self._send(200, json.dumps(completion_json()).encode())
        if fault == "429":
            return self._send(429, b'{"error": {"message": "slow down"}}', {"Retry-After": str(owner.retry_after)})
        if fault == "400":
            return self._send(400, b'{"error": {"message": "bad request: unknown field"}}')
        if self.path.endswith("/models"):
            return self._send(200, json.dumps({"data": [{"id": "fake-model"}]}).encode())
        d = json.loads(body or b"{}")
        return self._send(200, json.dumps(completion_json(f" echo {d.get('prompt', '')[:20]}")).encode())

    do_GET = _handle
    do_POST = _handle


class FaultServer(_Server):
    """Answers from a script of faults (``drop``, ``500``, ``malformed``, ``wrong-shape``, ``stall``,
    ``429``, ``400``, ``ok``), one per request, then ``default``; ``log`` records every request."""

    def __init__(self, faults: list[str] | None = None, *, default: str = "ok", stall_s: float = 2.0,
                 retry_after: float = 1.0) -> None:
        self.faults = list(faults or [])
        self.default = default
        self.stall_s = stall_s
        self.retry_after = retry_after
        self.log: list = []
        self.lock = threading.Lock()
        super().__init__(_FaultHandler)


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _handle(self) -> None:
        owner: TextOnlySamplingProxy = self.server.owner  # type: ignore[attr-defined]
        n = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(n) or b"{}") if n else None
        if isinstance(body, dict):
            body.pop("logprobs", None)
            body.pop("top_logprobs", None)
            body["temperature"] = max(float(body.get("temperature") or 0.0), owner.temperature)
            body["seed"] = owner.rng.randrange(2**31)  # the upstream's own randomness, not ours
        with owner.lock:
            owner.forwarded += 1
        r = httpx.request(self.command, owner.upstream + self.path, json=body, timeout=120, trust_env=False)
        data = r.json()
        for c in data.get("choices", []) if isinstance(data, dict) else []:
            c["logprobs"] = None
        out = json.dumps(data).encode()
        self.send_response(r.status_code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = _handle
    do_POST = _handle


class TextOnlySamplingProxy(_Server):
    """Forwards to ``upstream`` (another 127.0.0.1 server) with log-probabilities stripped from
    requests and answers, the temperature raised to at least ``temperature`` and a fresh random seed."""

    def __init__(self, upstream: str, *, temperature: float = 0.8, seed: int = 0) -> None:
        if not upstream.startswith("http://127.0.0.1:"):
            raise ValueError("the proxy forwards to 127.0.0.1 only")
        self.upstream = upstream.rstrip("/")
        self.temperature = temperature
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.forwarded = 0
        super().__init__(_ProxyHandler)
