"""Reading a source model and writing a derived Hugging Face directory, tensor by tensor.

A source is a Hugging Face directory read through :mod:`weightprint.io` (:class:`HFSource`), or a
GGUF converted once (cached) into one by weightprint's own converter (:func:`as_hf_dir`). Every
transform in :mod:`weightprint.testing.recipes` writes through :func:`_transform_dir`: a plan of
output tensors produced one at a time, written by the io layer's safetensors writer into a
temporary directory beside the output that is renamed into place when complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from weightprint.errors import ModelFormatError, TensorNotFound, WeightprintError
from weightprint.io.files import temp_dir_beside
from weightprint.io.geometry import Geometry, geometry_from_config
from weightprint.io.names import EMBED_NAMES, split_layer
from weightprint.results import to_jsonable

INFO_FILE = "weightprint_derive.json"
GGUF_FILE = "model.gguf"


def _source_path(model: Any) -> Path:
    """Path of a source given as a path or as a :class:`~weightprint.io.model.Model`."""
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
    elif hasattr(model, "path"):
        from weightprint.io.gguf_file import GGUFModel
        from weightprint.io.hf import HFModel
        from weightprint.io.safetensors_file import SafetensorsModel

        if not isinstance(model, (GGUFModel, HFModel, SafetensorsModel)):
            # a view (a transformed or mapped model) shares its file's path but not its values:
            # reading the path would silently drop the transform
            raise WeightprintError(
                f"{model.path}: a {type(model).__name__} view is not a file; write it first "
                "(weightprint.testing.symmetry.transformed, or convert)"
            )
        path = Path(model.path)
    else:
        raise WeightprintError(f"expected a model path or a weightprint Model, got {type(model).__name__}")
    if not path.exists():
        raise FileNotFoundError(f"No such file or directory: {path}")
    return path


class HFSource:
    """A Hugging Face directory opened for streaming with :class:`weightprint.io.hf.HFModel`.

    Attributes
    ----------
    path : Path
    config : dict
        ``config.json`` exactly as the directory holds it (the base of a derived config).
    names : list of str
        Tensor names, embeddings first, then the blocks in order, then the rest.
    shapes : dict of str to tuple
    """

    def __init__(self, path: str | Path) -> None:
        from weightprint.io.hf import HFModel

        self.path = Path(path)
        cfg = self.path / "config.json"
        if not cfg.is_file():
            raise ModelFormatError(f"{self.path}: not a Hugging Face directory (no config.json)")
        self.config: dict[str, Any] = json.loads(cfg.read_text())
        self.model = HFModel(self.path)
        self.shapes: dict[str, tuple[int, ...]] = {i.name: tuple(i.shape) for i in self.model.tensor_infos()}
        self.names: list[str] = sorted(self.shapes, key=_tensor_sort_key)

    def __contains__(self, name: str) -> bool:
        return name in self.shapes

    def tensor(self, name: str) -> np.ndarray:
        """The tensor as a new float32 array."""
        if name not in self.shapes:
            raise TensorNotFound(f"{self.path}: no tensor `{name}`")
        return np.array(self.model.tensor(name), dtype=np.float32)

    @property
    def geometry(self) -> Geometry:
        return self.model.geometry

    def close(self) -> None:
        self.model.close()

    def __enter__(self) -> "HFSource":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _tensor_sort_key(name: str) -> tuple:
    split = split_layer(name)
    if name in EMBED_NAMES or name.startswith("model.embed"):
        return (0, 0, name)
    if split is not None:
        return (1, split[1], "." + split[2])
    return (2, 0, name)


def geometry_of(src: HFSource | Geometry | Mapping[str, Any]) -> Geometry:
    """:class:`~weightprint.io.geometry.Geometry` of a source or a config dict, with the sizes the
    recipes need (layers, heads, key/value heads, head size, MLP width) checked present."""
    if isinstance(src, Geometry):
        g, where = src, "geometry"
    elif isinstance(src, HFSource):
        g, where = src.geometry, f"{src.path}/config.json"
    else:
        g, where = geometry_from_config(src, "unknown", ()), "config"
    missing = [k for k in ("n_layers", "n_heads", "n_kv_heads", "head_dim", "intermediate_size") if getattr(g, k) is None]
    if missing:
        raise ModelFormatError(f"{where}: missing or bad attention/MLP sizes ({', '.join(missing)})")
    return g


def as_hf_dir(model: Any) -> Path:
    """A Hugging Face directory for ``model``: the directory itself, or a cached F32 conversion of a GGUF.

    Parameters
    ----------
    model : str, Path or Model
        A Hugging Face directory, or a GGUF file (llama-family architectures that transformers reads).

    Returns
    -------
    Path
        The directory (``config.json``, ``model.safetensors``, tokenizer files).
    """
    path = _source_path(model)
    if path.is_dir():
        return path
    if path.suffix.lower() == ".gguf":
        from weightprint.testing.cache import derived

        return derived("hf", path)
    raise ModelFormatError(f"{path}: expected a GGUF file or a Hugging Face directory")


def _gguf_to_hf(source: Path, out: Path) -> Path:
    """Convert a GGUF to an F32 Hugging Face directory with weightprint's own streaming converter."""
    from weightprint.convert import convert

    convert(source, out, to="hf", dtype="float32")
    return out


_ST_DTYPES = {"float32": ("F32", 4), "float16": ("F16", 2), "bfloat16": ("BF16", 2)}


@dataclass
class _Planned:
    """One output tensor: its name and shape, known before writing, and a function producing it."""

    name: str
    shape: tuple[int, ...]
    produce: Callable[[], np.ndarray]


def _write_safetensors(path: Path, plan: list[_Planned], *, dtype: str = "float32") -> None:
    """Write ``plan`` into ``path`` (``model.safetensors``) tensor by tensor, via the io layer's writer."""
    from weightprint.io.safetensors_file import write_safetensors_shards

    if dtype not in _ST_DTYPES:
        raise WeightprintError(f"unsupported output dtype `{dtype}`; known: {', '.join(_ST_DTYPES)}")
    if path.name != "model.safetensors":
        raise WeightprintError(f"{path}: derived models are written as `model.safetensors`")
    producers = {p.name: p.produce for p in plan}
    if len(producers) != len(plan):
        raise WeightprintError(f"{path}: a tensor is planned twice")
    write_safetensors_shards(
        path.parent,
        [(p.name, p.shape, _ST_DTYPES[dtype][0]) for p in plan],
        lambda name: np.asarray(producers[name](), dtype=np.float32),
        max_shard_bytes=1 << 62,
    )


def _copy_tokenizer_files(src: Path, out: Path) -> None:
    for p in src.iterdir():
        if p.is_file() and (
            p.name.startswith("tokenizer")
            or p.name in ("special_tokens_map.json", "vocab.json", "merges.txt", "chat_template.jinja",
                          "generation_config.json", "added_tokens.json")
        ):
            shutil.copy2(p, out / p.name)


def _write_config(out: Path, config: dict[str, Any]) -> None:
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _write_info(out: Path, info: dict[str, Any]) -> None:
    (out / INFO_FILE).write_text(json.dumps(to_jsonable(info), indent=2, sort_keys=True, default=str) + "\n")


def read_derive_info(path: str | Path) -> dict[str, Any]:
    """The ``weightprint_derive.json`` record of a derived model directory (recipe, params, measurements)."""
    p = Path(path) / INFO_FILE
    try:
        return json.loads(p.read_text())
    except FileNotFoundError as e:
        raise WeightprintError(f"{path}: not a derived model (no {INFO_FILE})") from e


@contextlib.contextmanager
def _output_dir(out: str | Path) -> Iterator[Path]:
    """Yield a temp directory next to ``out``; on success it is renamed to ``out`` (which must not exist)."""
    out = Path(out)
    if out.exists():
        raise WeightprintError(f"{out}: output already exists")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir_beside(out)
    try:
        yield tmp
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _transform_dir(
    model: Any,
    out: str | Path,
    *,
    plan_fn: Callable[[HFSource], tuple[list[_Planned], dict[str, Any]]],
    info: dict[str, Any],
    dtype: str = "float32",
    tokenizer_fn: Callable[[Path, Path], None] | None = None,
) -> Path:
    src = HFSource(as_hf_dir(model))
    out = Path(out)
    with src, _output_dir(out) as tmp:
        plan, config = plan_fn(src)
        _write_safetensors(tmp / "model.safetensors", plan, dtype=dtype)
        _copy_tokenizer_files(src.path, tmp)
        if tokenizer_fn is not None:
            tokenizer_fn(src.path, tmp)
        _write_config(tmp, config)
        _write_info(tmp, {**info, "source": str(src.path), "dtype": dtype})
    return out






def to_gguf(model: Any, out: str | Path, file_type: str = "F16") -> Path:
    """Write ``model`` (typically a derived Hugging Face directory) as a GGUF with weightprint's converter.

    Parameters
    ----------
    model : str, Path or Model
    out : str or Path
        Output GGUF file.
    file_type : str, *optional*, defaults to "F16"
        ``F32``, ``F16``, ``Q8_0``, ``Q4_K_M``... (see :func:`weightprint.constants.parse_file_type`).

    Returns
    -------
    Path
        ``out``.
    """
    from weightprint.convert import convert

    convert(_source_path(model), out, to="gguf", file_type=file_type)
    return Path(out)


def _gguf_recipe(source: Path, out: Path, file_type: str = "F16") -> Path:
    out.mkdir(parents=True)
    to_gguf(source, out / GGUF_FILE, file_type=file_type)
    _write_info(out, {"recipe": "gguf", "source": str(source), "params": {"file_type": file_type}})
    return out / GGUF_FILE


