"""``open_model``: one entry point for every model format."""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

from weightprint.constants import GGUF_MAGIC
from weightprint.errors import ModelFormatError, WeightprintError
from weightprint.io.limits import one_line, regular_file, stat_input, tidy_error
from weightprint.io.model import Model
from weightprint.io.refs import is_ref, resolve_ref


def _looks_like_safetensors(head: bytes, file_size: int) -> bool:
    """safetensors starts with a u64 header length and a JSON object."""
    if len(head) < 9:
        return False
    (n,) = struct.unpack_from("<Q", head, 0)
    return 2 <= n <= file_size - 8 and head[8:9] == b"{"


def open_model(path: str | os.PathLike[str]) -> Model:
    """Open a GGUF file, a safetensors file or a Hugging Face directory as a :class:`Model`.

    The format is chosen by content (GGUF magic, safetensors JSON header), then by extension;
    a directory must hold ``*.safetensors`` weights (and normally ``config.json``).

    Parameters
    ----------
    path : str or Path
        A ``.gguf`` file, a ``.safetensors`` file or a model directory, or a reference
        ``hf:org/name[@revision]`` / ``ollama:name[:tag]`` resolved offline (:mod:`weightprint.io.refs`).

    Returns
    -------
    Model
        :class:`~weightprint.io.gguf_file.GGUFModel`, ``SafetensorsModel`` or ``HFModel``; use it
        as a context manager to release the memory maps.

    Raises
    ------
    ModelFormatError
        The path does not exist, is not readable, has no weights, or is of an unknown format
        (``GGUFFormatError``/``SafetensorsFormatError`` for malformed files of a known format).

    Examples
    --------
    >>> with open_model("model.gguf") as m:   # doctest: +SKIP
    ...     print(m.architecture, len(m.tensor_names()))
    """
    p = resolve_ref(str(path)).path if is_ref(str(path)) else Path(path)
    try:
        return _open_checked(p)
    except WeightprintError as e:
        raise tidy_error(e) from e.__cause__
    except (RecursionError, UnicodeDecodeError, ValueError, OverflowError, struct.error, MemoryError) as e:
        # a parser limit nothing above caught: still one line naming the file, never a traceback
        raise ModelFormatError(one_line(f"{p}: malformed model ({type(e).__name__}: {e})")) from e


def _open_checked(p: Path) -> Model:
    st = stat_input(p)
    is_dir = stat.S_ISDIR(st.st_mode)
    if not is_dir:
        regular_file(p)  # a FIFO or device is refused before open(): it could block forever
    if is_dir:
        if not any(p.glob("*.safetensors")) and not os.path.lexists(p / "model.safetensors.index.json"):
            raise ModelFormatError(f"{p}: no *.safetensors weights found")
        from weightprint.io.hf import HFModel

        return HFModel(p)
    try:
        with open(p, "rb") as f:
            head = f.read(16)
            size = os.fstat(f.fileno()).st_size
    except OSError as e:
        raise ModelFormatError(f"{p}: cannot read ({e.strerror or e})") from e
    suffix = p.suffix.lower()
    if head[:4] == GGUF_MAGIC or (suffix == ".gguf" and not _looks_like_safetensors(head, size)):
        from weightprint.io.gguf_file import GGUFModel

        return GGUFModel(p)
    if suffix == ".safetensors" or _looks_like_safetensors(head, size):
        from weightprint.io.safetensors_file import SafetensorsModel

        return SafetensorsModel(p)
    raise ModelFormatError(f"{p}: not a GGUF or safetensors file (magic {head[:4]!r})")


def open_or_borrow(model: str | os.PathLike[str] | Model) -> tuple[Model, bool]:
    """``(model, owned)``: open a path with :func:`open_model`, or pass an open ``Model`` through.

    ``owned`` tells the caller whether it opened the model and so must ``close()`` it.
    """
    if isinstance(model, Model):
        return model, False
    return open_model(model), True
