"""Model references: a path, a Hugging Face cache id (``hf:``) or an ollama model (``ollama:``).

Both stores are read offline, from their on-disk layouts; nothing is downloaded.

- ``hf:org/name[@revision][/file]`` -- the snapshot ``models--org--name/snapshots/<commit>/``
  of the Hugging Face hub cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
  ``~/.cache/huggingface/hub``). ``revision`` is a branch or tag name recorded under
  ``refs/`` (default ``main``) or a commit hash (or an unambiguous prefix of one). The
  snapshot resolves to its directory when it holds safetensors weights, else to its one GGUF
  file; ``/file`` picks a file inside the snapshot.
- ``ollama:name[:tag]`` -- the GGUF blob of the model layer of the manifest
  ``manifests/registry.ollama.ai/library/<name>/<tag>`` in the ollama store
  (``$OLLAMA_MODELS``, else ``~/.ollama/models``); ``name`` may carry a namespace
  (``user/name``) or a registry host (``host/user/name``); the default tag is ``latest``.

:func:`resolve_ref` turns any reference into a local path; anything else is returned as a
path unchanged. Errors are one line naming the reference and what is missing.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from weightprint.errors import ModelFormatError

__all__ = [
    "HF_PREFIX",
    "OLLAMA_PREFIX",
    "OLLAMA_MODEL_MEDIA_TYPE",
    "ResolvedRef",
    "hf_cache_dir",
    "is_ref",
    "list_hf_cache",
    "list_ollama_store",
    "ollama_models_dir",
    "resolve_ref",
]

HF_PREFIX = "hf:"
OLLAMA_PREFIX = "ollama:"
OLLAMA_MODEL_MEDIA_TYPE = "application/vnd.ollama.image.model"
OLLAMA_DEFAULT_REGISTRY = "registry.ollama.ai"
_HF_WEIGHT_SUFFIXES = (".safetensors", ".gguf")


@dataclass(frozen=True)
class ResolvedRef:
    """Where a reference points.

    Attributes
    ----------
    ref : str
        The reference as written (``hf:org/name@main``), or the path for a plain path.
    path : Path
        The local file or directory to open.
    kind : {'path', 'hf', 'ollama'}
    revision : str | None
        The snapshot commit (``hf``) or the tag (``ollama``).
    """

    ref: str
    path: Path
    kind: str
    revision: str | None = None


def is_ref(s: str | os.PathLike[str]) -> bool:
    """True when ``s`` is an ``hf:`` or ``ollama:`` reference (not a plain path)."""
    return isinstance(s, str) and (s.startswith(HF_PREFIX) or s.startswith(OLLAMA_PREFIX))


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def ollama_models_dir() -> Path:
    """The ollama store: ``$OLLAMA_MODELS``, else ``~/.ollama/models``."""
    return Path(os.environ.get("OLLAMA_MODELS") or Path.home() / ".ollama" / "models").expanduser()


def resolve_ref(ref: str | os.PathLike[str]) -> ResolvedRef:
    """Resolve a model reference to a local path, offline.

    Parameters
    ----------
    ref : str or Path
        ``hf:org/name[@revision][/file]``, ``ollama:name[:tag]``, or a path (returned as is).

    Returns
    -------
    ResolvedRef

    Raises
    ------
    ModelFormatError
        A malformed reference, a model missing from the cache/store, a partial snapshot
        (missing or unfinished weight files), or an ollama manifest without a model layer.

    Examples
    --------
    >>> resolve_ref("hf:HuggingFaceTB/SmolLM2-135M").path   # doctest: +SKIP
    PosixPath('/root/.cache/huggingface/hub/models--HuggingFaceTB--SmolLM2-135M/snapshots/12fd.../')
    """
    if isinstance(ref, str) and ref.startswith(HF_PREFIX):
        return _resolve_hf(ref)
    if isinstance(ref, str) and ref.startswith(OLLAMA_PREFIX):
        return _resolve_ollama(ref)
    return ResolvedRef(str(ref), Path(ref), "path")


# ------------------------------------------------------------------------------ Hugging Face
_HF_RE = re.compile(r"^hf:(?P<repo>[^/@:\s]+/[^/@:\s]+)(?:@(?P<rev>[^/\s]+))?(?:/(?P<file>\S+))?$")


def _resolve_hf(ref: str) -> ResolvedRef:
    m = _HF_RE.match(ref)
    if not m:
        raise ModelFormatError(f"{ref}: not a Hugging Face reference, expected `hf:org/name[@revision][/file]`")
    repo, rev, file = m["repo"], m["rev"] or "main", m["file"]
    cache = hf_cache_dir()
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    if not repo_dir.is_dir():
        raise ModelFormatError(f"{ref}: not in the Hugging Face cache {cache}",
                               hint=f"download it first (`hf download {repo}`) or set HF_HOME / HF_HUB_CACHE")
    commit = _hf_commit(ref, repo_dir, rev)
    snap = repo_dir / "snapshots" / commit
    if not snap.is_dir():
        raise ModelFormatError(f"{ref}: partial snapshot: revision `{rev}` points to commit {commit[:12]} "
                               f"but {snap} is missing", hint=f"download it again (`hf download {repo} --revision {rev}`)")
    if file is not None:
        target = snap / file
        if not target.exists():
            raise ModelFormatError(f"{ref}: partial snapshot: {file} is missing from snapshot {commit[:12]}")
        _check_files(ref, [target] if target.is_file() or target.is_symlink() else _weight_files(target), commit)
        return ResolvedRef(ref, target, "hf", commit)
    return ResolvedRef(ref, _hf_snapshot_target(ref, snap, commit), "hf", commit)


def _hf_commit(ref: str, repo_dir: Path, rev: str) -> str:
    """The commit of ``rev``: a ref name under ``refs/``, a full commit hash or a unique prefix."""
    named = repo_dir / "refs" / rev
    if named.is_file():
        return named.read_text().strip()
    snaps = repo_dir / "snapshots"
    if (snaps / rev).is_dir():
        return rev
    if re.fullmatch(r"[0-9a-f]{4,40}", rev) and snaps.is_dir():
        hits = [p.name for p in snaps.iterdir() if p.name.startswith(rev)]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise ModelFormatError(f"{ref}: revision `{rev}` is ambiguous ({len(hits)} snapshots match)")
    known = sorted(p.name for p in (repo_dir / "refs").glob("*")) if (repo_dir / "refs").is_dir() else []
    raise ModelFormatError(f"{ref}: revision `{rev}` is not in the cache"
                           + (f" (refs: {', '.join(known)})" if known else " (no refs recorded)"))


def _weight_files(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.name.endswith(_HF_WEIGHT_SUFFIXES)) if d.is_dir() else []


def _check_files(ref: str, files: list[Path], commit: str) -> None:
    """Every weight file must resolve to a complete blob (a dangling link is a partial download)."""
    for p in files:
        if not p.exists():
            raise ModelFormatError(f"{ref}: partial snapshot: {p.name} in snapshot {commit[:12]} points to a missing blob",
                                   hint="the download did not finish; download it again")
        real = p.resolve()
        if real.name.endswith(".incomplete"):
            raise ModelFormatError(f"{ref}: partial snapshot: {p.name} is still downloading")


def _hf_snapshot_target(ref: str, snap: Path, commit: str) -> Path:
    """A snapshot with safetensors is the directory; one with GGUF files only is its one GGUF."""
    files = _weight_files(snap)
    st = [p for p in files if p.name.endswith(".safetensors")]
    gg = [p for p in files if p.name.endswith(".gguf")]
    index = snap / "model.safetensors.index.json"
    if index.exists():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ModelFormatError(f"{ref}: partial snapshot: unreadable {index.name} ({e})") from e
        missing = [s for s in shards if not (snap / s).exists()]
        if missing:
            raise ModelFormatError(f"{ref}: partial snapshot: {len(missing)} of {len(shards)} shards missing "
                                   f"(first: {missing[0]}) in snapshot {commit[:12]}", hint="download it again")
    if st:
        _check_files(ref, st, commit)
        return snap
    if len(gg) == 1:
        _check_files(ref, gg, commit)
        return gg[0]
    if len(gg) > 1:
        raise ModelFormatError(f"{ref}: snapshot {commit[:12]} holds {len(gg)} GGUF files; name one",
                               hint=f"{ref.split('@')[0]}@{commit[:12]}/{gg[0].name}")
    raise ModelFormatError(f"{ref}: partial snapshot: no weights (*.safetensors or *.gguf) in snapshot {commit[:12]}",
                           hint="download it again")


def list_hf_cache(cache: Path | None = None) -> list[str]:
    """Every ``hf:org/name@commit`` snapshot in the cache (sorted), without checking its files."""
    root = hf_cache_dir() if cache is None else Path(cache)
    out = []
    for repo_dir in sorted(root.glob("models--*--*")) if root.is_dir() else []:
        org_name = repo_dir.name[len("models--"):].split("--", 1)
        if len(org_name) != 2:
            continue
        for snap in sorted((repo_dir / "snapshots").glob("*")):
            if snap.is_dir():
                out.append(f"{HF_PREFIX}{org_name[0]}/{org_name[1]}@{snap.name}")
    return out


# ------------------------------------------------------------------------------------ ollama
_OLLAMA_RE = re.compile(r"^ollama:(?P<name>[A-Za-z0-9._\-/]+?)(?::(?P<tag>[A-Za-z0-9._\-]+))?$")


def _ollama_manifest_path(root: Path, name: str, tag: str) -> Path:
    parts = name.split("/")
    if len(parts) == 1:
        parts = [OLLAMA_DEFAULT_REGISTRY, "library", *parts]
    elif len(parts) == 2:
        parts = [OLLAMA_DEFAULT_REGISTRY, *parts]
    return root / "manifests" / Path(*parts) / tag


def _resolve_ollama(ref: str) -> ResolvedRef:
    m = _OLLAMA_RE.match(ref)
    if not m or ".." in m["name"].split("/"):
        raise ModelFormatError(f"{ref}: not an ollama reference, expected `ollama:name[:tag]`")
    name, tag = m["name"], m["tag"] or "latest"
    root = ollama_models_dir()
    manifest = _ollama_manifest_path(root, name, tag)
    if not manifest.is_file():
        raise ModelFormatError(f"{ref}: not in the ollama store {root} (no manifest {name}:{tag})",
                               hint=f"`ollama pull {name}:{tag}`, or set OLLAMA_MODELS")
    try:
        layers = json.loads(manifest.read_text()).get("layers") or []
        digests = [layer["digest"] for layer in layers if layer.get("mediaType") == OLLAMA_MODEL_MEDIA_TYPE]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ModelFormatError(f"{ref}: unreadable manifest {manifest} ({e})") from e
    if not digests:
        raise ModelFormatError(f"{ref}: manifest {manifest} has no model layer ({OLLAMA_MODEL_MEDIA_TYPE})")
    digest = str(digests[0])
    if not re.fullmatch(r"sha256[:-][0-9a-f]{64}", digest):
        raise ModelFormatError(f"{ref}: manifest {manifest} has a malformed model digest `{digest[:80]}`")
    blobs = root / "blobs"
    for cand in (blobs / digest.replace(":", "-"), blobs / digest):
        if cand.is_file():
            return ResolvedRef(ref, cand, "ollama", tag)
    raise ModelFormatError(f"{ref}: model blob {digest[:19]}... is missing from {blobs}",
                           hint=f"`ollama pull {name}:{tag}` again")


def list_ollama_store(root: Path | None = None) -> list[str]:
    """Every ``ollama:name:tag`` with a manifest in the store (sorted); library models without namespace."""
    base = (ollama_models_dir() if root is None else Path(root)) / "manifests"
    out = []
    for f in sorted(base.rglob("*")) if base.is_dir() else []:
        if not f.is_file():
            continue
        parts = f.relative_to(base).parts
        if len(parts) != 4:
            continue
        host, ns, name, tag = parts
        if host == OLLAMA_DEFAULT_REGISTRY:
            full = name if ns == "library" else f"{ns}/{name}"
        else:
            full = f"{host}/{ns}/{name}"
        out.append(f"{OLLAMA_PREFIX}{full}:{tag}")
    return out
