"""Threaded quantize/dequantize: the bytes and values do not depend on the number of threads.

Tensors here are large enough to be split into several chunks (``_MIN_THREAD_WEIGHTS`` each),
so the pool really runs; bit-exactness against ggml is tests/test_quant_exact.py's job, and a
chunk-invariant result plus those tests make the threaded path exact too.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

import weightprint.quant as wq
from weightprint.errors import NonFiniteError
from weightprint.quant import QUANTIZABLE, dequantize, num_threads, quantize, set_num_threads


@pytest.fixture
def threads():
    """Set the thread count for one test, then restore the default."""
    yield set_num_threads
    set_num_threads(None)


@pytest.fixture(scope="module")
def weights() -> np.ndarray:
    # 40 rows x 4096: ~5 chunks of 32k weights, a ragged last chunk per thread split
    rng = np.random.default_rng(7)
    w = rng.standard_normal((40, 4096), dtype=np.float32) * 0.05
    w[3, :64] = 0.0  # all-zero blocks
    w[5, 100] = 9.0  # an outlier
    return w


@pytest.mark.parametrize("qtype", sorted(q.name for q in QUANTIZABLE))
def test_bytes_and_values_do_not_depend_on_threads(qtype: str, weights: np.ndarray, threads) -> None:
    threads(1)
    one = quantize(weights, qtype)
    back_one = dequantize(one, qtype)
    for n in (2, 3):
        threads(n)
        assert np.array_equal(quantize(weights, qtype), one)
        assert np.array_equal(dequantize(one, qtype), back_one, equal_nan=True)
        out = np.empty(weights.size, dtype=np.float32)
        assert dequantize(one, qtype, out=out) is out
        assert np.array_equal(out.reshape(weights.shape), back_one, equal_nan=True)


def test_keyed_rounding_does_not_depend_on_threads(weights: np.ndarray, threads) -> None:
    dirs = np.random.default_rng(1).integers(-1, 2, size=weights.shape).astype(np.int8)
    threads(1)
    one = quantize(weights, "Q4_K", rounding=dirs, delta=0.3)
    threads(3)
    assert np.array_equal(quantize(weights, "Q4_K", rounding=dirs, delta=0.3), one)
    assert not np.array_equal(one, quantize(weights, "Q4_K"))


def test_non_finite_in_a_late_chunk_is_reported_once(weights: np.ndarray, threads) -> None:
    w = weights.copy()
    w[-1, -1] = np.nan
    w[20, 7] = np.inf
    threads(3)
    with pytest.raises(NonFiniteError, match="2 non-finite values"):
        quantize(w, "Q8_0", name="t")


def test_nested_calls_from_pool_threads_do_not_deadlock(weights: np.ndarray, threads) -> None:
    """quantize() called from inside a pool worker runs inline, not on the (busy) pool."""
    threads(2)
    expected = quantize(weights, "Q6_K")
    results = []

    def outer(start: int) -> None:
        results.append(quantize(weights, "Q6_K"))

    wq._run_chunks(outer, [0, 1, 2, 3])
    assert len(results) == 4 and all(np.array_equal(r, expected) for r in results)


def test_concurrent_callers_share_the_pool(weights: np.ndarray, threads) -> None:
    threads(2)
    expected = quantize(weights, "Q8_0")
    got: list[np.ndarray] = []
    workers = [threading.Thread(target=lambda: got.append(quantize(weights, "Q8_0"))) for _ in range(3)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert len(got) == 3 and all(np.array_equal(g, expected) for g in got)


def test_thread_count_setting(threads, monkeypatch) -> None:
    threads(None)
    monkeypatch.setenv("WEIGHTPRINT_THREADS", "3")
    assert num_threads() == 3
    threads(5)
    assert num_threads() == 5
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="positive integer"):
            set_num_threads(bad)


def test_bad_thread_variable_is_an_error_not_ignored(threads, monkeypatch, tmp_path) -> None:
    """``WEIGHTPRINT_THREADS=abc`` or ``0`` is refused with a one-line error naming the variable
    (it used to fall back silently to every CPU), also through the CLI (exit 2)."""
    from typer.testing import CliRunner

    from weightprint.cli import app
    from weightprint.errors import WeightprintError

    threads(None)
    for bad in ("abc", "0", "-2", "1e3"):
        monkeypatch.setenv("WEIGHTPRINT_THREADS", bad)
        with pytest.raises(WeightprintError, match="WEIGHTPRINT_THREADS"):
            num_threads()
    monkeypatch.setenv("WEIGHTPRINT_THREADS", "zero")
    from weightprint.testing.synthetic import write_synthetic

    src = tmp_path / "m.gguf"
    write_synthetic(src, 1, hidden=256, ffn=256, vocab=64)
    r = CliRunner().invoke(app, ["convert", str(src), str(tmp_path / "q.gguf"), "--type", "Q8_0"])
    assert r.exit_code == 2, r.output
    assert "WEIGHTPRINT_THREADS='zero'" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "q.gguf").exists()


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_forked_child_gets_a_fresh_pool(weights: np.ndarray, threads) -> None:
    """The parent's pool threads do not exist in a forked child: it must start its own."""
    import os
    import signal

    threads(2)
    expected = quantize(weights, "Q8_0")  # the parent's pool is up
    pid = os.fork()
    if pid == 0:  # child: exit 0 only if quantizing works and agrees; a hang dies by SIGALRM
        ok = False
        try:
            signal.alarm(60)
            ok = np.array_equal(quantize(weights, "Q8_0"), expected)
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def _all_dequantizable() -> list[str]:
    from weightprint.quant.base import registry

    return sorted(q.name for q in registry())


@pytest.mark.parametrize("qtype", _all_dequantizable())
@pytest.mark.parametrize("n_threads", [1, 2])
def test_dequantize_to_float16_is_dequantize_then_astype(qtype: str, n_threads: int, threads) -> None:
    """The fused path (each thread dequantizes a cache-sized piece and rounds it to half) gives
    numpy's float16 of :func:`dequantize`, counts what float16 cannot hold, on random bytes of
    every type (their scales include infinities, NaNs and huge values)."""
    from weightprint.quant import dequantize_to_float16, kernel

    threads(n_threads)
    k = kernel(qtype)
    rng = np.random.default_rng(11)
    rows = 40
    data = rng.integers(0, 256, size=(rows, k.type_size * max(1, 4096 // k.block_size)), dtype=np.uint8)
    ref = dequantize(data, qtype).reshape(-1)
    half = np.empty(ref.size, dtype=np.uint16)
    refused = dequantize_to_float16(data, qtype, half)
    ok = np.isfinite(ref) & (np.abs(ref) <= 65504)
    assert refused == int(np.count_nonzero(~ok))
    with np.errstate(over="ignore", invalid="ignore"):
        assert np.array_equal(half[ok], ref[ok].astype(np.float16).view(np.uint16))
    if qtype in ("F32", "F16", "BF16"):  # a native view is taken as its bytes
        native = data.view({"F32": np.float32, "F16": np.float16, "BF16": np.uint16}[qtype])
        again = np.empty_like(half)
        assert dequantize_to_float16(native, qtype, again) == refused
        assert np.array_equal(again[ok], half[ok])


def test_dequantize_to_float16_refuses_a_wrong_output() -> None:
    from weightprint.errors import ShapeMismatchError
    from weightprint.quant import dequantize_to_float16

    data = quantize(np.ones((2, 64), dtype=np.float32), "Q8_0")
    with pytest.raises(ShapeMismatchError, match="uint16 array of 128 elements"):
        dequantize_to_float16(data, "Q8_0", np.empty(127, dtype=np.uint16))
    with pytest.raises(ShapeMismatchError, match="uint16 array"):
        dequantize_to_float16(data, "Q8_0", np.empty(128, dtype=np.float32))
