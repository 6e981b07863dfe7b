"""Hugging Face model directories: :class:`HFModel` (read) and :func:`write_hf_dir` (write).

A directory holds ``config.json``, weights as ``model.safetensors`` or as shards listed in
``model.safetensors.index.json``, and the tokenizer files (``tokenizer.json``,
``tokenizer_config.json``, ``special_tokens_map.json``, optionally ``chat_template.jinja``).
Tensors are memory-mapped shard by shard and read one at a time.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from collections.abc import Sized
from typing import Any, Callable, Iterator

import numpy as np

from weightprint.progress import ProgressCallback
from weightprint.errors import ModelFormatError, TensorNotFound, WeightprintError
from weightprint.io.hf_config import architecture_from_hf
from weightprint.io.model import Model, TensorInfo, TokenizerInfo
from weightprint.io.safetensors_file import SafetensorsModel, TensorChunks, write_safetensors_shards
from weightprint.io.files import temp_dir_beside
from weightprint.io.limits import check_json_file, confined_name, one_line, read_json, regular_file, release_freed_memory

__all__ = ["HFModel", "write_hf_dir", "TOKENIZER_FILES"]

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
# Files copied verbatim when the source is itself a HF directory.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "tokenizer.model",
    "added_tokens.json",
    "generation_config.json",
)
#: vocabulary + merges strings up to which tokenizer files are built beside the weights (see write_hf_dir)
CONCURRENT_TOKENIZER_STRINGS = 1 << 19

_DTYPES = {"float16": "F16", "bfloat16": "BF16", "float32": "F32"}

TensorTransform = Callable[[str, np.ndarray], np.ndarray]


def _read_json(path: Path, expect: type | None = dict) -> Any:
    """A JSON file of the directory, within size/count/depth limits (:func:`weightprint.io.limits.read_json`)."""
    return read_json(path, expect=expect)


@contextmanager
def _untrusted_json(path: Path) -> Iterator[None]:
    """A JSON document of the wrong shape (a list where an object belongs, ids given as strings)
    that the reader did not check: one line naming the file instead of an internal error."""
    try:
        yield
    except WeightprintError:
        raise
    except (AttributeError, TypeError, KeyError, IndexError, ValueError, RecursionError, OverflowError) as e:
        raise ModelFormatError(one_line(f"{path}: unexpected JSON structure ({type(e).__name__}: {e})")) from e


def _present(path: Path) -> bool:
    """The entry exists (a dangling symlink or a FIFO counts: reading it gives the proper error)."""
    return os.path.lexists(path)


class HFModel(Model):
    """A Hugging Face model directory opened for streaming.

    Parameters
    ----------
    path : str or Path
        The directory (``config.json`` plus ``model.safetensors`` or sharded weights with
        ``model.safetensors.index.json``).

    Attributes
    ----------
    config : dict
        ``config.json`` (empty if the directory has none), with ``_name_or_path`` set to the
        directory.
    metadata : dict[str, str]
        The ``__metadata__`` of the first weight file.
    architecture : str
        llama.cpp name: ``LlamaForCausalLM`` -> ``llama``, ``MistralForCausalLM`` -> ``mistral``,
        ``Qwen2ForCausalLM`` -> ``qwen2``, ``Gemma3ForCausalLM`` -> ``gemma3``, else ``unknown``.
    tokenizer : TokenizerInfo or None
        From ``tokenizer.json`` (None when there is none), parsed on first use.
    chat_template : str or None
        ``chat_template.jinja`` or ``tokenizer_config.json``'s ``chat_template``.

    Raises
    ------
    ModelFormatError
        The directory has no weights, its index is malformed or lists a missing shard, or a
        tensor appears in two files.
    SafetensorsFormatError
        A weight file is malformed.

    Examples
    --------
    >>> with HFModel("SmolLM2-hf") as m:   # doctest: +SKIP
    ...     print(m.architecture, m.tensor("model.norm.weight")[:4])
    """

    format = "hf"
    rows_from_file = True

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise ModelFormatError(f"{self.path}: not a directory")
        config_path = self.path / "config.json"
        self.config: dict[str, Any] = _read_json(config_path) if _present(config_path) else {}
        if not isinstance(self.config.get("_name_or_path"), str):
            self.config["_name_or_path"] = str(self.path)
        self.architecture = architecture_from_hf(self.config)
        self._files: list[SafetensorsModel] = []
        self._where: dict[str, SafetensorsModel] = {}
        try:
            self._open_weights()
        except BaseException:
            self.close()
            raise
        self.metadata = dict(self._files[0].metadata) if self._files else {}

    def _open_weights(self) -> None:
        index_path = self.path / INDEX_FILE
        if _present(index_path):
            index = _read_json(index_path)
            weight_map = index.get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ModelFormatError(f"{index_path}: no `weight_map` object")
            # every name is checked (plain file name, inside the directory) before any is opened
            shard_names = list(dict.fromkeys(
                confined_name(self.path, s, str(index_path)).name for s in weight_map.values()
            ))
            missing = [s for s in shard_names if not _present(self.path / s)]
            if missing:
                raise ModelFormatError(
                    f"{self.path}: {len(missing)} of {len(shard_names)} shards listed in {INDEX_FILE} "
                    f"are missing: {', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}"
                )
            shards = [self.path / s for s in sorted(shard_names)]
        elif _present(self.path / SINGLE_FILE):
            shards = [self.path / SINGLE_FILE]
            weight_map = None
        else:
            shards = sorted(p for p in self.path.glob("*.safetensors") if not p.name.startswith("."))
            weight_map = None
            if not shards:
                raise ModelFormatError(f"{self.path}: no {SINGLE_FILE}, {INDEX_FILE} or *.safetensors weights")
            for shard in shards:
                confined_name(self.path, shard.name, str(self.path))
        for shard in shards:
            st = SafetensorsModel(shard)
            self._files.append(st)
            for name in st.tensor_names():
                if name in self._where:
                    raise ModelFormatError(
                        f"{self.path}: tensor `{name}` is in both {self._where[name].path.name} and {shard.name}"
                    )
                self._where[name] = st
        if weight_map is not None:
            for name, shard_name in weight_map.items():
                st = self._where.get(name)
                if st is None or st.path.name != shard_name:
                    found = st.path.name if st else "no shard"
                    raise ModelFormatError(
                        f"{self.path}: {INDEX_FILE} puts `{name}` in {shard_name} but it is in {found}"
                    )

    # -- Model contract ------------------------------------------------------------

    def tensor_infos(self) -> list[TensorInfo]:
        return [info for st in self._files for info in st.tensor_infos()]

    def tensor_names(self) -> list[str]:
        return [name for st in self._files for name in st.tensor_names()]

    def _file(self, name: str) -> SafetensorsModel:
        try:
            return self._where[name]
        except KeyError:
            raise TensorNotFound(f"{self.path}: no tensor `{name}` ({len(self._where)} tensors)") from None

    def info(self, name: str) -> TensorInfo:
        return self._file(name).info(name)

    def raw(self, name: str) -> np.ndarray:
        return self._file(name).raw(name)

    def tensor(self, name: str, dtype: np.dtype | type = np.float32) -> np.ndarray:
        return self._file(name).tensor(name, dtype)

    def dtype_name(self, name: str) -> str:
        """The stored safetensors dtype (``F16``, ``BF16``...) of a tensor."""
        return self._file(name).dtype_name(name)

    def release(self, name: str) -> None:
        """Drop the tensor's mapped pages from the resident set (see ``SafetensorsModel.release``)."""
        self._file(name).release(name)

    @cached_property
    def tokenizer(self) -> TokenizerInfo | None:  # type: ignore[override]
        path = self.path / "tokenizer.json"
        if not _present(path):
            return None
        check_json_file(path)
        if _present(self.path / "tokenizer_config.json"):
            check_json_file(self.path / "tokenizer_config.json")
        from weightprint.io.tokenizer import tokenizer_info_from_hf

        with _untrusted_json(path):
            return tokenizer_info_from_hf(self.path)

    @cached_property
    def chat_template(self) -> str | None:  # type: ignore[override]
        from weightprint.io.tokenizer import read_chat_template

        cfg = self.path / "tokenizer_config.json"
        if _present(cfg):
            check_json_file(cfg)
        if _present(self.path / "chat_template.jinja"):
            regular_file(self.path / "chat_template.jinja", "chat template")
        with _untrusted_json(cfg):
            return read_chat_template(self.path)

    def close(self) -> None:
        for st in self._files:
            st.close()

    def __repr__(self) -> str:
        return f"HFModel({str(self.path)!r}, arch={self.architecture!r}, tensors={len(self._where)}, files={len(self._files)})"


# --------------------------------------------------------------------------- writer


def _json_text(value: Any, level: int = 0) -> str:
    """``json.dumps(value, indent=2)``, except that the entries of a large object go one per line.

    An indented dump runs the pure-Python encoder (seconds for Gemma 3's 6k-entry
    ``added_tokens_decoder``); a large object's entries are dumped compactly by the C encoder, one
    per line. The JSON value is the same.
    """
    pad = "  " * (level + 1)
    if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
        if len(value) > 64:
            items = [f"{pad}{json.dumps(k, ensure_ascii=False)}: {json.dumps(v, ensure_ascii=False)}" for k, v in value.items()]
        else:
            items = [f"{pad}{json.dumps(k, ensure_ascii=False)}: {_json_text(v, level + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + "  " * level + "}"
    # JSON strings hold no raw newline: re-indenting the lines of a nested dump is safe
    return json.dumps(value, indent=2, ensure_ascii=False).replace("\n", "\n" + "  " * level)


def _write_json(directory: Path, name: str, value: Any) -> None:
    with open(directory / name, "w", encoding="utf-8") as f:
        f.write(_json_text(value) + "\n")


def _generation_config(config: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"_from_model_config": True}
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if config.get(key) is not None:
            out[key] = config[key]
    return out


def write_hf_dir(
    model: Model,
    out_dir: str | os.PathLike[str],
    *,
    dtype: str = "float16",
    tensor_transform: TensorTransform | None = None,
    progress: ProgressCallback | None = None,
    max_shard_bytes: int = 5 * 10**9,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` as a Hugging Face directory that ``transformers`` loads.

    Writes ``config.json``, ``generation_config.json``, the tokenizer files
    (``tokenizer.json``, ``tokenizer_config.json`` with the chat template,
    ``special_tokens_map.json``; copied as they are when ``model`` is a HF directory) and the
    weights, streamed one tensor at a time from ``model.tensor(name)``. Everything goes into a
    temporary directory next to ``out_dir`` that is renamed into place at the end.
    A model without ``lm_head.weight`` (GGUF without ``output.weight``) gets
    ``tie_word_embeddings: true``.

    Parameters
    ----------
    model : Model
        The source (GGUF file, safetensors file with a config, HF directory).
    out_dir : str or Path
        The directory to create.
    dtype : {"float16", "bfloat16", "float32"}, *optional*, defaults to "float16"
        Storage type of floating-point tensors (bfloat16: round to nearest even).
    tensor_transform : callable, optional
        ``(name, float32 array) -> array`` applied to each tensor before storing (same shape).
    progress : callable, optional
        Called as ``progress(i, total, name)`` after each tensor.
    max_shard_bytes : int, *optional*, defaults to 5e9
        Largest weight file; more tensors go into ``model-0000k-of-0000n.safetensors``.
    overwrite : bool, *optional*, defaults to False
        Replace an existing non-empty ``out_dir``.

    Returns
    -------
    Path
        ``out_dir``.

    Raises
    ------
    WeightprintError
        Unknown ``dtype``; ``out_dir`` exists and is not empty (without ``overwrite``); the
        model has no config; a transform changed a tensor's shape.
    """
    out = Path(out_dir)
    if dtype not in _DTYPES:
        raise WeightprintError(f"unknown dtype `{dtype}`; expected float16, bfloat16 or float32")
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise WeightprintError(f"{out}: already exists and is not empty", hint="choose a new directory or pass overwrite=True")
    config = dict(model.config or {})
    if not config.get("model_type") and not config.get("architectures"):
        raise WeightprintError(f"{model.path}: no model config to write a config.json from")

    infos = model.tensor_infos()
    names = [t.name for t in infos]
    config.pop("_name_or_path", None)
    config["tie_word_embeddings"] = "lm_head.weight" not in names
    shapes = {t.name: tuple(t.shape) for t in infos}
    embed = shapes.get("model.embed_tokens.weight")
    if embed is not None and len(embed) == 2:
        config["vocab_size"] = int(embed[0])  # the weights decide (vocabularies can be padded)
    config["dtype"] = dtype
    config["torch_dtype"] = dtype
    config.setdefault("transformers_version", _transformers_version())

    floating = {"F32", "F16", "BF16", "F64"}
    specs = []
    for t in infos:
        kind = t.qtype.name
        target = _DTYPES[dtype] if kind not in ("I8", "I16", "I32", "I64") else kind
        if isinstance(model, HFModel) and model.dtype_name(t.name) not in floating:
            target = model.dtype_name(t.name)
        specs.append((t.name, tuple(t.shape), target))
    total = len(specs)
    targets = {name: target for name, _, target in specs}
    half_buffer: list[np.ndarray] = []
    float_buffer: list[np.ndarray] = []
    stream_buffers: list[np.ndarray] = []
    done = {"n": 0}

    def data(name: str) -> np.ndarray | TensorChunks:
        if isinstance(model, HFModel) and model.dtype_name(name) not in floating:
            values = model.tensor(name, None)  # type: ignore[arg-type]
        elif tensor_transform is None and model.streams_rows(name):
            values = _stream_rows(model, name, targets[name], float_buffer, stream_buffers)
        else:
            values = model.tensor(name, np.float32)
            if tensor_transform is not None:
                values = np.asarray(tensor_transform(name, values))
                if tuple(values.shape) != shapes[name]:
                    raise WeightprintError(
                        f"tensor transform changed the shape of `{name}` from {list(shapes[name])} to {list(values.shape)}"
                    )
        done["n"] += 1
        if progress is not None:
            progress(done["n"], total, name)
        if targets[name] == "F16" and isinstance(values, np.ndarray) and values.dtype == np.float32:
            # the writer copies each tensor out before it asks for the next: one buffer serves all
            return _to_float16(name, values, half_buffer)
        return values

    parent = out.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir_beside(out)
    try:
        _write_json(tmp, "config.json", config)
        source_dir = model.path if isinstance(model, HFModel) else None
        copied = set()
        if source_dir is not None:
            for fname in TOKENIZER_FILES:
                if (source_dir / fname).is_file():
                    shutil.copyfile(source_dir / fname, tmp / fname)
                    copied.add(fname)
        if "generation_config.json" not in copied:
            _write_json(tmp, "generation_config.json", _generation_config(config))
        # The tokenizer files (Python work: vocabulary, merges, JSON) are built on a second
        # thread while the weights stream (numpy/numba work that releases the GIL); leaving the
        # `with` waits for it, and its error, if any, is raised.
        # A vocabulary past CONCURRENT_TOKENIZER_STRINGS (no real model's: Gemma 3 has 262k tokens,
        # Llama 3 128k + 280k merges) is written first, alone: its peak then does not add to
        # the weights' (a crafted million-token SentencePiece vocabulary: 445 MB RSS concurrently,
        # 282 MB alone).
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="weightprint-tokenizer") as pool:
            tokenizer_job = None
            if "tokenizer.json" not in copied:
                if _tokenizer_strings(model) > CONCURRENT_TOKENIZER_STRINGS:
                    _write_tokenizer_files(tmp, model, config)
                    release_freed_memory()  # the search's freed heap, before the weights' buffers
                else:
                    tokenizer_job = pool.submit(_write_tokenizer_files, tmp, model, config)
            write_safetensors_shards(tmp, specs, data, max_shard_bytes=max_shard_bytes, metadata={"format": "pt"})
            if tokenizer_job is not None:
                tokenizer_job.result()
        os.chmod(tmp, 0o755)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _tokenizer_strings(model: Model) -> int:
    """Tokens plus merges of ``model``'s tokenizer; from a GGUF file, the lengths of its
    metadata arrays, so that the strings are decoded on the tokenizer's thread, not before the
    weights start."""
    meta = model.metadata or {}
    tokens = meta.get("tokenizer.ggml.tokens")
    if isinstance(tokens, Sized):
        merges = meta.get("tokenizer.ggml.merges")
        return len(tokens) + (len(merges) if isinstance(merges, Sized) else 0)
    tok = model.tokenizer
    return 0 if tok is None else len(tok.tokens) + len(tok.merges or ())


_STREAM_ELEMENTS = 1 << 22
"""Values dequantized at a time by :func:`_stream_rows` (16 MB as float32)."""


def _stream_rows(model: Model, name: str, target: str, float_buffer: list[np.ndarray], half_buffers: list[np.ndarray]) -> TensorChunks:
    """``name`` as :class:`TensorChunks` of whole stored rows, dequantized into buffers reused
    across tensors (no fresh pages per tensor); the source's mapped pages are released as it
    goes. Peak memory: two buffers, whatever the tensor's size (a 7B model's 32000 x 4096
    embedding would otherwise be 512 MB as float32).

    To float16, each block is dequantized and rounded in one pass
    (:func:`weightprint.quant.dequantize_to_float16`) into one of two alternating buffers, so
    the writer can write one block while the next is computed. A float16 source written as
    float16 is copied as stored."""
    from weightprint.io.safetensors_file import check_representable
    from weightprint.quant import dequantize, dequantize_to_float16

    info = model.info(name)
    cols = int(info.shape[-1]) if len(info.shape) else 1
    copy_as_stored = info.qtype.name == target == "F16"
    to_half = target == "F16" and not copy_as_stored

    def pieces() -> Iterator[np.ndarray]:
        for raw in model.stored_row_blocks(name, _STREAM_ELEMENTS):
            if copy_as_stored:
                yield raw
                continue
            n = raw.shape[0] * cols
            if to_half:
                if len(half_buffers) < 2 or min(b.size for b in half_buffers) < n:
                    # a buffer still being written stays alive through the writer's reference
                    half_buffers[:] = [np.empty(max(n, _STREAM_ELEMENTS), dtype=np.uint16) for _ in range(2)]
                half_buffers.reverse()  # alternate across tensors too: the last piece may still be writing
                half = half_buffers[0][:n]
                if dequantize_to_float16(raw, info.qtype, half, name=name):
                    check_representable(name, dequantize(raw, info.qtype, name=name), "F16")  # raises, naming the tensor
                yield half.view(np.float16)
                continue
            if not float_buffer or float_buffer[0].size < n:
                float_buffer[:] = [np.empty(max(n, _STREAM_ELEMENTS), dtype=np.float32)]
            yield dequantize(raw, info.qtype, out=float_buffer[0][:n], name=name)

    return TensorChunks(info.shape, pieces(), ready=to_half)


def _to_float16(name: str, values: np.ndarray, reuse: list[np.ndarray] | None = None) -> np.ndarray:
    """float32 -> float16 in chunks on the quantization threads (one integer pass per value),
    refusing what the safetensors writer refuses (:func:`check_representable`: non-finite values,
    overflow, with its message), so that the writer only copies (a float16 input is checked there
    by a cheap bit test). ``reuse`` holds one buffer kept from call to call (the result is a view
    of it, valid until the next call): fresh pages cost more than the conversion itself."""
    from weightprint.io.safetensors_file import check_representable
    from weightprint.quant import for_each_chunk
    from weightprint.quant.legacy import half_bits_checked

    src = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    if reuse and reuse[0].size >= src.size:
        half = reuse[0][: src.size]
    else:
        half = np.empty(src.size, dtype=np.uint16)
        if reuse is not None:
            reuse[:] = [half]

    def work(start: int, stop: int) -> None:
        if half_bits_checked(src[start:stop], half[start:stop]):
            check_representable(name, src[start:stop], "F16")  # raises, naming the tensor

    for_each_chunk(src.size, work)
    return half.view(np.float16).reshape(values.shape)


def _write_tokenizer_files(directory: Path, model: Model, config: dict[str, Any]) -> None:
    from weightprint.io.tokenizer import (
        special_tokens_map_from_info,
        tokenizer_config_from_info,
        write_tokenizer_json,
    )

    info = model.tokenizer
    if info is None:
        return
    prefix = (model.metadata or {}).get("tokenizer.ggml.add_space_prefix")
    if isinstance(prefix, np.generic):
        prefix = prefix.item()
    if prefix is None and model.architecture == "gemma3":
        prefix = False
    try:
        write_tokenizer_json(info, directory / "tokenizer.json", add_space_prefix=None if prefix is None else bool(prefix))
    except WeightprintError as e:  # the builder's message names no file: name the model
        if str(model.path) in e.message:
            raise
        raise type(e)(f"{model.path}: {e.message}", hint=e.hint) from None
    _write_json(
        directory,
        "tokenizer_config.json",
        tokenizer_config_from_info(info, model.chat_template, model_max_length=config.get("max_position_embeddings")),
    )
    _write_json(directory, "special_tokens_map.json", special_tokens_map_from_info(info))


def _transformers_version() -> str:
    try:
        from importlib.metadata import version

        return version("transformers")
    except Exception:  # transformers is optional for writing
        return "5.0.0"
