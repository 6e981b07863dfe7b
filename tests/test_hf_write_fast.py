"""The fast paths of writing a Hugging Face directory: threaded float16 conversion, the bit test
for float16 input, and the JSON layout of large objects. Same values and same refusals as the
plain path."""

from __future__ import annotations

import json

import numpy as np
import pytest

from weightprint.errors import NonFiniteError
from weightprint.io.hf import _json_text, _to_float16
from weightprint.io.safetensors_file import check_representable
from weightprint.quant import set_num_threads


@pytest.fixture(params=[1, 3])
def threads(request):
    set_num_threads(request.param)
    yield request.param
    set_num_threads(None)


def test_float16_conversion_is_numpys(threads: int) -> None:
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((300, 700)) * np.float32(20000)).astype(np.float32)
    x[0, :4] = [65504.0, -65504.0, 6e-8, 1e-9]  # largest half, subnormal, underflow to 0
    x = np.clip(x, -65504, 65504)
    got = _to_float16("w", x)
    assert got.dtype == np.float16 and got.shape == x.shape
    assert np.array_equal(got.view(np.uint16), x.astype(np.float16).view(np.uint16))
    reuse: list[np.ndarray] = []
    first = _to_float16("w", x, reuse)
    assert np.array_equal(first, got) and reuse[0].size == x.size
    smaller = _to_float16("v", x[:10], reuse)  # a view of the same buffer
    assert np.shares_memory(smaller, reuse[0]) and np.array_equal(smaller, got[:10])


@pytest.mark.parametrize("impl", ["_half_bits_software", "_half_bits_hardware"])
def test_float16_bits_exhaustive_sample(impl: str) -> None:
    """Every float32 whose top 16 bits are any value, with low bits around rounding ties, through
    both conversions (the hardware one is used where LLVM has an instruction for it)."""
    from weightprint.quant import legacy

    if impl == "_half_bits_hardware" and not legacy._hardware_half():
        pytest.skip("no hardware float16 conversion on this CPU")
    half_bits_checked = getattr(legacy, impl)
    high = np.arange(1 << 16, dtype=np.uint32) << np.uint32(16)
    low = np.array([0, 1, 0x0FFF, 0x1000, 0x1001, 0x1FFF, 0x2000, 0x3000, 0xFFFF], dtype=np.uint32)
    x = (high[:, None] | low[None, :]).reshape(-1).view(np.float32)
    dst = np.zeros(x.size, dtype=np.uint16)
    ok = np.isfinite(x) & (np.abs(x) <= 65504)
    assert half_bits_checked(x, dst) == int(np.count_nonzero(~ok))
    with np.errstate(over="ignore", invalid="ignore"):
        assert np.array_equal(dst[ok], x[ok].astype(np.float16).view(np.uint16))


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.nan, "1 non-finite values"),
        (np.inf, "1 non-finite values"),
        (70000.0, "1 values overflow F16"),
        (65510.0, "1 values overflow F16"),  # rounds to 65504 in float16, refused as before
    ],
)
def test_float16_conversion_refuses_what_the_writer_refuses(bad: float, match: str, threads: int) -> None:
    x = np.zeros(250_000, dtype=np.float32)
    x[-3] = bad  # in the last chunk
    with pytest.raises(NonFiniteError, match=rf"tensor `w`: {match}"):
        _to_float16("w", x)
    with pytest.raises(NonFiniteError, match=rf"tensor `w`: {match}"):
        check_representable("w", x, "F16")


def test_float16_input_bit_test() -> None:
    h = np.array([0.0, -65504.0, 65504.0, 6e-8], dtype=np.float16)
    check_representable("h", h, "F16")
    for bad in (np.inf, -np.inf, np.nan):
        with pytest.raises(NonFiniteError, match=r"tensor `h`: 1 non-finite values \(NaN or infinity\); cannot store as F16"):
            check_representable("h", np.append(h, np.float16(bad)), "F16")


@pytest.mark.parametrize(
    "value",
    [
        {},
        {"a": 1, "b": [1, {"c": None}], "d": {"e": "x\ny\u00e9"}},
        {"added_tokens_decoder": {str(i): {"content": f"<t{i}>", "special": i % 2 == 0} for i in range(200)},
         "model_max_length": 32768, "chat_template": "{{ x }}\n"},
        [1, 2, {"a": []}],
        "text",
    ],
)
def test_json_layout(value) -> None:
    text = _json_text(value)
    assert json.loads(text) == value
    big = isinstance(value, dict) and any(isinstance(v, dict) and len(v) > 64 for v in value.values())
    if not big:
        assert text == json.dumps(value, indent=2, ensure_ascii=False)
    else:  # one entry per line
        assert text.count("\n") == len(value) + 2 + 200  # braces of both objects, entries


def test_ready_pieces_are_written_in_the_background_in_order(tmp_path) -> None:
    """Ready pieces come from two alternating buffers that the producer refills as soon as the
    piece after next is asked for; the file must still hold every piece as it was."""
    from safetensors.numpy import load_file

    from weightprint.io.safetensors_file import TensorChunks, write_safetensors_shards

    rng = np.random.default_rng(3)
    values = {name: rng.standard_normal((rows, 96)).astype(np.float16) for name, rows in (("a", 70), ("b", 1), ("c", 33))}
    buffers = [np.empty(10 * 96, dtype=np.float16) for _ in range(2)]

    def data(name: str) -> TensorChunks:
        def pieces():
            flat = values[name].reshape(-1)
            for start in range(0, flat.size, 10 * 96):
                buffers.reverse()
                piece = buffers[0][: min(10 * 96, flat.size - start)]
                piece[:] = flat[start : start + piece.size]
                yield piece
        return TensorChunks(values[name].shape, pieces(), ready=True)

    write_safetensors_shards(tmp_path, [(n, v.shape, "F16") for n, v in values.items()], data)
    got = load_file(tmp_path / "model.safetensors")
    for name, v in values.items():
        assert np.array_equal(got[name], v), name


def test_ready_piece_of_the_wrong_dtype_and_a_failing_write(tmp_path) -> None:
    from weightprint.errors import ShapeMismatchError
    from weightprint.io.safetensors_file import TensorChunks, _Writer, write_safetensors_shards

    with pytest.raises(ShapeMismatchError, match="a ready piece must be C-contiguous F16, got float32"):
        write_safetensors_shards(tmp_path, [("w", (4,), "F16")],
                                 lambda name: TensorChunks((4,), [np.zeros(4, np.float32)], ready=True))
    assert list(tmp_path.iterdir()) == []  # no half-written file

    class Full:
        def write(self, data):
            raise OSError(28, "No space left on device")

    writer = _Writer(Full())
    writer.write(np.zeros(8, np.float16), background=True)
    with pytest.raises(OSError, match="No space left"):
        writer.close()
