"""Find the models under scan targets: directory trees, the Hugging Face cache, the ollama store."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from weightprint.errors import WeightprintError
from weightprint.io.refs import is_ref, list_hf_cache, list_ollama_store, resolve_ref

__all__ = ["HF_CACHE_TARGET", "OLLAMA_TARGET", "ScanItem", "discover_models"]

HF_CACHE_TARGET = "hf-cache"
OLLAMA_TARGET = "ollama"
_SKIP_DIRS = {".git", "__pycache__", "blobs", ".locks"}


@dataclass(frozen=True)
class ScanItem:
    """One model to fingerprint: a GGUF/safetensors file or a Hugging Face directory.

    ``error`` is set (and the item skipped) when a reference could not be resolved.
    """

    ref: str
    path: str
    size: int
    mtime_ns: int
    kind: str  # "file" or "dir"
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _weights_in(d: Path) -> list[Path]:
    try:
        return sorted(p for p in d.iterdir() if p.suffix == ".safetensors")
    except OSError:
        return []


def _item(ref: str, path: Path) -> ScanItem:
    try:
        if path.is_dir():
            files = _weights_in(path)
            stats = [f.stat() for f in files]
            return ScanItem(ref, str(path), sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0), "dir")
        st = path.stat()
        return ScanItem(ref, str(path), st.st_size, st.st_mtime_ns, "file")
    except OSError as e:
        return ScanItem(ref, str(path), 0, 0, "file", error=f"{path}: cannot access ({e.strerror or e})")


def _walk(root: Path) -> list[ScanItem]:
    if root.is_file():
        return [_item(str(root), root)]
    if not root.is_dir():
        raise WeightprintError(f"{root}: no such file or directory", hint="a scan target is a directory, `hf-cache`, `ollama` or a model reference")
    out: list[ScanItem] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        d = Path(dirpath)
        dirnames[:] = sorted(n for n in dirnames if n not in _SKIP_DIRS and not n.startswith("."))
        if any(f.endswith(".safetensors") for f in filenames):
            out.append(_item(str(d), d))
            dirnames[:] = []  # a model directory is one model
            continue
        for f in sorted(filenames):
            if f.endswith(".gguf") and not f.startswith("."):
                out.append(_item(str(d / f), d / f))
    return out


def _refs(refs: list[str]) -> list[ScanItem]:
    out = []
    for ref in refs:
        try:
            out.append(_item(ref, resolve_ref(ref).path))
        except WeightprintError as e:  # a partial snapshot is reported, the rest is scanned
            out.append(ScanItem(ref, ref, 0, 0, "file", error=str(e)))
    return out


def discover_models(targets: list[str | os.PathLike[str]]) -> list[ScanItem]:
    """Every model under ``targets``, each path once (first target wins), in a stable order.

    Parameters
    ----------
    targets : list
        Directories or files (walked: ``*.gguf`` files and directories holding
        ``*.safetensors``), ``hf-cache`` (every snapshot of the Hugging Face cache),
        ``ollama`` (every model of the ollama store), or ``hf:``/``ollama:`` references.

    Raises
    ------
    WeightprintError
        A target that is neither an existing path nor a known store.
    """
    items: list[ScanItem] = []
    for t in targets:
        s = str(t)
        if s == HF_CACHE_TARGET:
            items += _refs(list_hf_cache())
        elif s == OLLAMA_TARGET:
            items += _refs(list_ollama_store())
        elif is_ref(s):
            items += _refs([s])
        else:
            items += _walk(Path(s))
    seen: set[str] = set()
    unique = []
    for it in items:
        key = it.path if it.error else os.path.realpath(it.path)
        if key not in seen:
            seen.add(key)
            unique.append(it)
    return unique
