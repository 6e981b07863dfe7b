"""Temporary outputs that become real files: write beside the target, then rename.

``tempfile.mkstemp``/``mkdtemp`` create 0600/0700 entries; an output renamed from one would
be unreadable to everyone else, unlike a file made by ``open()``. These helpers give the
temporary the mode a plain ``open()``/``mkdir()`` would (0666/0777 minus the umask).

Temporaries are named ``.NAME.<pid>.<random><suffix>`` so that those of a killed run can be
told from those of a live one (:func:`weightprint.io.limits.clean_stale_temporaries`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_file_beside(path: Path) -> tuple[int, str]:
    """``(fd, name)`` of a new temporary file in ``path``'s directory, mode ``0666 & ~umask``."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    os.fchmod(fd, 0o666 & ~_umask())
    return fd, name


def temp_dir_beside(path: Path, suffix: str = ".tmp") -> Path:
    """A new temporary directory in ``path``'s directory, mode ``0777 & ~umask``."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=suffix, dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp
