"""Property test: a GGUF with mutated header bytes never crashes the reader.

H0 (what must hold): for any mutation of the header of a valid small GGUF, ``open_model`` and
reading every tensor, the tokenizer, the chat template and the config either succeed or raise a
``WeightprintError``; any other exception (IndexError, struct.error, MemoryError...) fails.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _fixtures_io import write_small_gguf
from weightprint.errors import WeightprintError
from weightprint.io import GGUFModel, open_model

_WORK = Path(tempfile.mkdtemp(prefix="wp-gguf-fuzz-"))
_BASE = write_small_gguf(_WORK / "base.gguf")
_CONTENT = _BASE.read_bytes()
_HEADER_END = GGUFModel(_BASE).data_offset


def _exercise(path: Path) -> None:
    try:
        with open_model(path) as model:
            for info in model.tensor_infos():
                values = model.tensor(info.name)
                assert values.shape == info.shape
                model.raw(info.name)
            _ = model.tokenizer
            _ = model.chat_template
            _ = model.config
    except WeightprintError:
        pass


mutation = st.one_of(
    # overwrite 1-8 bytes anywhere in the header with random bytes
    st.tuples(st.just("bytes"), st.integers(0, _HEADER_END - 1), st.binary(min_size=1, max_size=8)),
    # set one byte to an interesting value (length/count/type fields live on these)
    st.tuples(st.just("byte"), st.integers(0, _HEADER_END - 1),
              st.sampled_from([0, 1, 2, 3, 4, 5, 8, 9, 12, 13, 0x7F, 0x80, 0xFE, 0xFF]).map(lambda b: bytes([b]))),
    # truncate the file
    st.tuples(st.just("cut"), st.integers(0, len(_CONTENT)), st.just(b"")),
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations=st.lists(mutation, min_size=1, max_size=4))
def test_mutated_header_raises_only_weightprint_errors(mutations):
    content = bytearray(_CONTENT)
    for kind, pos, payload in mutations:
        if kind == "cut":
            del content[pos:]
        else:
            content[pos:pos + len(payload)] = payload
    path = _WORK / "mutant.gguf"
    path.write_bytes(bytes(content))
    _exercise(path)


def test_unmutated_base_reads_cleanly():
    with open_model(_BASE) as model:
        assert len(model.tensor_infos()) == 9
        assert all(np.isfinite(model.tensor(i.name)).all() for i in model.tensor_infos())


@pytest.mark.parametrize("field_offset", range(4, 24))
def test_every_fixed_header_byte_set_to_ff(field_offset):
    content = bytearray(_CONTENT)
    content[field_offset] = 0xFF
    path = _WORK / f"ff{field_offset}.gguf"
    path.write_bytes(bytes(content))
    _exercise(path)
