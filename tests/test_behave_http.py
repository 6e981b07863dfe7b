"""OpenAI-compatible HTTP backend against servers of our own on 127.0.0.1: retries, errors, cache, key.

Every server here is a thread in this process bound to 127.0.0.1 (tests/_fixtures_behave.py).
"""

from __future__ import annotations

import json
import time

import pytest

from _fixtures_behave import FaultServer
from weightprint.behave.backends import GenerateRequest, open_backend
from weightprint.behave.backends.openai_http import OpenAIHttpBackend, _base_url, _retry_after_seconds
from weightprint.errors import BackendError, WeightprintError


def _backend(url, tmp_path, **kw):
    opts = dict(model="fake-model", timeout=0.5, backoff=0.01, max_backoff=2.0, max_retries=2,
                concurrency=1, cache=tmp_path / "cache.db")
    opts.update(kw)
    return open_backend(url, **opts)


def _completions(server):
    return [e for e in server.log if e[1].endswith("/completions")]


def test_open_backend_picks_http_for_urls(tmp_path):
    with FaultServer() as srv:
        b = open_backend(srv.url, cache=False)
        assert isinstance(b, OpenAIHttpBackend)
        assert b.model == "fake-model"  # from GET /v1/models
        assert b.base_url == srv.url + "/v1"
        b.close()


def test_base_url_forms():
    assert _base_url("http://127.0.0.1:8000") == "http://127.0.0.1:8000/v1"
    assert _base_url("http://127.0.0.1:8000/v1/") == "http://127.0.0.1:8000/v1"
    assert _base_url("http://127.0.0.1:8000/v1/chat/completions") == "http://127.0.0.1:8000/v1"
    with pytest.raises(WeightprintError, match="not an http"):
        _base_url("ftp://x")


@pytest.mark.parametrize("fault", ["drop", "500", "malformed", "wrong-shape", "stall", "429"])
def test_each_fault_is_retried_then_succeeds(tmp_path, fault):
    with FaultServer([fault], stall_s=1.5, retry_after=0.6) as srv:
        b = _backend(srv.url, tmp_path)
        t0 = time.monotonic()
        out = b.generate([GenerateRequest(prompt="hello", max_tokens=4)])
        elapsed = time.monotonic() - t0
        assert out[0].text == " echo hello"
        assert len(srv.log) == 3  # the faulty first attempt, its retry (the capability probe), the request
        if fault == "429":
            assert elapsed >= 0.55  # Retry-After honoured although the backoff is 0.01 s
        b.close()


def test_gives_up_after_bounded_retries_with_one_line_error(tmp_path):
    with FaultServer(default="500") as srv:
        b = _backend(srv.url, tmp_path, max_retries=3)
        with pytest.raises(BackendError) as e:
            b.generate([GenerateRequest(prompt="hello")])
        msg = str(e.value)
        assert "\n" not in msg
        assert msg == f"{srv.url}/v1/completions: HTTP 500 Internal Server Error (gave up after 4 attempts)"
        assert len(srv.log) == 4
        b.close()


def test_stalled_server_times_out(tmp_path):
    with FaultServer(default="stall", stall_s=1.0) as srv:
        b = _backend(srv.url, tmp_path, timeout=0.3, max_retries=1)
        with pytest.raises(BackendError, match=r"no answer within 0.3 s \(gave up after 2 attempts\)"):
            b.generate([GenerateRequest(prompt="hello")])
        b.close()


def test_client_error_fails_at_once_with_the_servers_reason(tmp_path):
    with FaultServer(default="400") as srv:
        b = _backend(srv.url, tmp_path)
        with pytest.raises(BackendError, match=r"/v1/completions: HTTP 400 Bad Request: bad request: unknown field$"):
            b.generate([GenerateRequest(prompt="hello")])
        assert len(srv.log) == 1
        b.close()


def test_refused_connection(tmp_path):
    from _fixtures_behave import free_port

    url = f"http://127.0.0.1:{free_port()}"
    b = _backend(url, tmp_path, max_retries=1)
    with pytest.raises(BackendError, match=r"connection refused \(gave up after 2 attempts\)"):
        b.generate([GenerateRequest(prompt="hello")])


def test_rerun_sends_no_request_and_a_failed_run_keeps_its_answers(tmp_path):
    reqs = [GenerateRequest(prompt=f"prompt {i}", max_tokens=4) for i in range(3)]
    # probe ok, prompt 0 ok, prompt 1 ok, prompt 2 fails every attempt
    with FaultServer(["ok", "ok", "ok", "500", "500", "500"]) as srv:
        b = _backend(srv.url, tmp_path)
        with pytest.raises(BackendError, match="gave up after 3 attempts"):
            b.generate(reqs)
        b.close()
        assert len(srv.log) == 6
        b = _backend(srv.url, tmp_path)  # server healthy again
        out = b.generate(reqs)
        assert [g.text for g in out] == [" echo prompt 0", " echo prompt 1", " echo prompt 2"]
        assert len(srv.log) == 7  # only the missing answer was asked for
        assert b.requests_sent == 1 and b.cache_hits == 3
        b.close()
        b = _backend(srv.url, tmp_path)
        b.generate(reqs)
        assert len(srv.log) == 7 and b.requests_sent == 0
        b.close()


def test_cache_off_sends_every_time(tmp_path):
    with FaultServer() as srv:
        for _ in range(2):
            b = _backend(srv.url, tmp_path, cache=False)
            b.generate([GenerateRequest(prompt="x")])
            b.close()
        assert len(_completions(srv)) == 4  # probe + request, twice


def test_api_key_is_sent_but_never_stored_or_shown(tmp_path, monkeypatch):
    secret = "sk-test-5up3r53cr3t"
    monkeypatch.setenv("WP_TEST_KEY", secret)
    with FaultServer(["ok", "ok", "500", "500", "500"]) as srv:
        b = _backend(srv.url, tmp_path, api_key_env="WP_TEST_KEY")
        b.generate([GenerateRequest(prompt="a")])
        with pytest.raises(BackendError) as e:
            b.generate([GenerateRequest(prompt="b")])
        headers = srv.log[0][3]
        assert headers.get("Authorization") == f"Bearer {secret}"
        assert secret not in str(e.value) and secret not in (e.value.hint or "")
        assert secret not in repr(b.__dict__.get("label")) and secret not in b.label
        b.close()
    blob = (tmp_path / "cache.db").read_bytes()
    assert secret.encode() not in blob


def test_text_only_server_gives_text_without_logprobs(tmp_path):
    with FaultServer() as srv:
        b = _backend(srv.url, tmp_path)
        assert not b.capabilities.logprobs
        g = b.generate([GenerateRequest(prompt="hi", top_logprobs=5)])[0]
        assert g.text == " echo hi" and g.token_logprobs is None
        body = json.loads(_completions(srv)[-1][2])
        assert "logprobs" not in body  # not asked of a server that does not give them
        b.close()


def test_concurrent_requests_keep_order(tmp_path):
    with FaultServer() as srv:
        b = _backend(srv.url, tmp_path, concurrency=4)
        out = b.generate([GenerateRequest(prompt=f"p{i}") for i in range(12)])
        assert [g.text for g in out] == [f" echo p{i}" for i in range(12)]
        b.close()


def test_retry_after_forms():
    assert _retry_after_seconds("3") == 3.0
    assert _retry_after_seconds(None) is None
    assert _retry_after_seconds("garbage") is None
    assert 0 <= _retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") <= 0.0 + 1e-9
