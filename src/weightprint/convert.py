"""Convert between formats and quantize: GGUF <-> Hugging Face directory, any GGML type.

``convert`` streams: each tensor is read from the memory-mapped source, dequantized to
float32 (Hugging Face layout), optionally transformed (the watermark hook), put back into
the target's layout, quantized and written, one tensor at a time. Per-tensor types of a
mix (``Q4_K_M``...) follow llama.cpp's rules (:mod:`weightprint.quant.mixes`), so the output
is byte-identical to ``llama-quantize`` where llama.cpp is deterministic.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np

from weightprint.constants import FILE_TYPE_BASE, FileType, QType, parse_file_type
from weightprint.errors import ModelFormatError, WeightprintError
from weightprint.io.limits import check_output_path, clean_stale_temporaries, io_boundary
from weightprint.io.model import Model
from weightprint.progress import ProgressCallback, no_progress
from weightprint.io.open import open_or_borrow
from weightprint.quant import KeyedRounding

TensorTransform = Callable[[str, np.ndarray, QType], "np.ndarray | KeyedRounding"]
"""``transform(name, values, target_type) -> values``: float32 HF-layout values in and out, or
(GGUF output, grid target types) a :class:`~weightprint.quant.KeyedRounding` to steer rounding."""


@dataclass
class ConvertResult:
    """What ``convert`` wrote.

    Attributes
    ----------
    source, output : str
        Input and output paths.
    to : str
        ``gguf`` or ``hf``.
    file_type : str | None
        The GGUF file type (mix) written, e.g. ``Q4_K_M``.
    tensor_types : dict[str, str]
        Canonical tensor name -> type written.
    type_counts : dict[str, int]
        Number of tensors per type.
    n_tensors, n_parameters, output_bytes : int
    copied_tensors : int
        Tensors whose stored bytes were copied unchanged (same type, no transform).
    """

    source: str
    output: str
    to: str
    file_type: str | None
    tensor_types: dict[str, str] = field(default_factory=dict)
    type_counts: dict[str, int] = field(default_factory=dict)
    n_tensors: int = 0
    n_parameters: int = 0
    output_bytes: int = 0
    copied_tensors: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "output": self.output,
            "to": self.to,
            "file_type": self.file_type,
            "type_counts": dict(self.type_counts),
            "n_tensors": self.n_tensors,
            "n_parameters": self.n_parameters,
            "output_bytes": self.output_bytes,
            "copied_tensors": self.copied_tensors,
            "tensor_types": dict(self.tensor_types),
        }


def gguf_tensor_groups(model: Model) -> list[tuple[str, tuple[int, ...], list[str]]]:
    """The tensors of a GGUF written from ``model``: ``(GGUF name, shape, canonical names)``.

    One canonical tensor each, except a mixture of experts' per-expert tensors, which llama.cpp
    stacks into one 3-D tensor per layer and role (:func:`weightprint.io.names.expert_stack_of`):
    their group lists the experts in order and the shape is ``(n_expert, rows, cols)``.

    Raises
    ------
    ShapeMismatchError
        Experts of one stack with different shapes, or missing expert indices.
    """
    from weightprint.errors import ShapeMismatchError
    from weightprint.io.names import expert_stack_of, hf_to_gguf_name

    arch = model.architecture
    groups: dict[str, list[tuple[int, str]]] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for t in model.tensor_infos():
        stack = expert_stack_of(t.name)
        key, index = (hf_to_gguf_name(t.name, arch), 0) if stack is None else stack
        members = groups.setdefault(key, [])
        if stack is not None and members and shapes[key] != tuple(t.shape):
            raise ShapeMismatchError(f"{model.path}: expert tensor `{t.name}` has shape {tuple(t.shape)}, "
                                     f"its stack `{key}` {shapes[key]}")
        shapes[key] = tuple(t.shape)
        members.append((index, t.name))
    out = []
    for key, members in groups.items():
        if expert_stack_of(members[0][1]) is None:
            out.append((key, shapes[key], [members[0][1]]))
            continue
        members.sort()
        if [i for i, _ in members] != list(range(len(members))):
            raise ShapeMismatchError(f"{model.path}: experts of `{key}` are {[i for i, _ in members]}, "
                                     f"not 0..{len(members) - 1}")
        out.append((key, (len(members), *shapes[key]), [n for _, n in members]))
    return out


def plan_tensor_types(model: Model, file_type: FileType,
                      groups: list[tuple[str, tuple[int, ...], list[str]]] | None = None) -> dict[str, QType]:
    """The type llama.cpp would give each tensor of ``model`` for ``file_type`` (canonical names).

    ``groups``: :func:`gguf_tensor_groups` of ``model`` when the caller has it already."""
    from weightprint.quant.mixes import choose_tensor_types

    infos = {t.name: t for t in model.tensor_infos()}
    groups = gguf_tensor_groups(model) if groups is None else groups
    # A GGUF source's un-quantized tensors keep their stored type, as in llama.cpp; other
    # sources write 1-D tensors as F32, as llama.cpp's converter does.
    tensors = [
        (key, shape, infos[names[0]].qtype) if model.ggml_types else (key, shape)
        for key, shape, names in groups
    ]
    chosen = choose_tensor_types(model.architecture, tensors, file_type, **model.geometry.mix_params())
    return {name: QType(chosen[key]) for key, _, names in groups for name in names}


def convert(
    source: str | Path | Model,
    out: str | Path,
    *,
    to: Literal["gguf", "hf"] = "gguf",
    file_type: FileType | str | None = None,
    tensor_transform: TensorTransform | None = None,
    dtype: Literal["float16", "bfloat16", "float32"] = "float16",
    progress: ProgressCallback | None = None,
) -> ConvertResult:
    """Convert ``source`` to a GGUF file or a Hugging Face directory, quantizing on the way.

    Parameters
    ----------
    source : str, Path or Model
        A GGUF file, a safetensors file or a Hugging Face directory (or an open ``Model``).
    out : str or Path
        Output GGUF path (``to="gguf"``) or directory (``to="hf"``). Written to a temporary
        name first, then renamed: no partial output is ever left behind.
    to : {"gguf", "hf"}, *optional*, defaults to "gguf"
    file_type : FileType or str, *optional*
        GGUF file type (``Q4_K_M``, ``Q8_0``, ``F16``...); defaults to ``F16``.
    tensor_transform : callable, *optional*
        ``transform(name, values, target_type) -> values`` applied to every tensor's float32
        Hugging Face-layout values before quantization (the watermark hook).
    dtype : {"float16", "bfloat16", "float32"}, *optional*, defaults to "float16"
        Weight dtype of a Hugging Face directory.
    progress : callable, *optional*
        ``progress(done, total, description)`` per tensor.

    Returns
    -------
    ConvertResult

    Raises
    ------
    WeightprintError
        Unreadable source, unsupported type, shape that does not fit the block size.
    """
    if to not in ("gguf", "hf"):
        raise WeightprintError(f"unknown output format `{to}`; expected `gguf` or `hf`")
    # FileType.F32 is 0: `file_type or F16` would silently write F16 for `--type F32`
    ft = parse_file_type(file_type) if isinstance(file_type, str) else (
        FileType.F16 if file_type is None else FileType(file_type))
    label = source.path if isinstance(source, Model) else source
    with io_boundary(label):
        model, owned = open_or_borrow(source)
        progress = progress or no_progress
        try:
            _check_output(model, Path(out), to)
            if to == "gguf":
                return _convert_to_gguf(model, Path(out), ft, tensor_transform, progress)
            return _convert_to_hf(model, Path(out), dtype, tensor_transform, progress)
        finally:
            if owned:
                model.close()


def _check_output(model: Model, out: Path, to: str) -> None:
    """Refuse an output that is the input (or holds it) or is not a file/directory; clean the
    temporaries that killed runs left beside it."""
    _ = model.geometry  # the declared hyperparameters must be sane before anything is written from them
    inputs = {Path(model.path)} | {Path(t.file) for t in model.tensor_infos() if t.file is not None}
    check_output_path(out, "file" if to == "gguf" else "directory", sorted(inputs))
    clean_stale_temporaries(out)


def _gguf_metadata(model: Model, file_type: FileType) -> tuple[dict[str, Any], dict[str, Any] | None]:
    metadata, types = model.gguf_metadata()
    metadata = dict(metadata)
    types = dict(types) if types is not None else None
    from gguf import GGUFValueType

    metadata["general.file_type"] = int(file_type)
    metadata["general.quantization_version"] = 2
    if types is not None:
        types["general.file_type"] = GGUFValueType.UINT32
        types["general.quantization_version"] = GGUFValueType.UINT32
    return metadata, types


def _convert_to_gguf(
    model: Model,
    out: Path,
    file_type: FileType,
    transform: TensorTransform | None,
    progress: ProgressCallback,
) -> ConvertResult:
    from weightprint.io.gguf_writer import TensorSpec, write_gguf
    from weightprint.io.names import to_stored_layout
    from weightprint.io.safetensors_file import check_representable
    from weightprint.quant import quantize

    arch = model.architecture
    if not model.geometry.n_layers:
        raise ModelFormatError(f"{model.path}: the model declares no layer count (GGUF `{arch}.block_count`, "
                               f"config.json `num_hidden_layers`), needed to choose tensor types")
    infos = {t.name: t for t in model.tensor_infos()}
    groups = gguf_tensor_groups(model)
    plan = plan_tensor_types(model, file_type, groups)
    specs = [TensorSpec(key, shape, plan[names[0]]) for key, shape, names in groups]
    members = {key: names for key, _, names in groups}
    metadata, types = _gguf_metadata(model, file_type)
    result = ConvertResult(str(model.path), str(out), "gguf", file_type.name)
    total = len(infos)

    def one(name: str, qtype: QType) -> np.ndarray:
        info = infos[name]
        if transform is None and model.ggml_types and info.qtype == qtype:
            result.copied_tensors += 1
            out_bytes = np.array(model.raw(name)).view(np.uint8)
            model.release(name)
        else:
            values = model.tensor(name, np.float32)
            keyed = None
            if transform is not None:
                got = transform(name, values, qtype)
                if isinstance(got, KeyedRounding):
                    keyed = got
                    got = got.values
                values = np.asarray(got, dtype=np.float32)
                if values.shape != tuple(info.shape):
                    raise WeightprintError(
                        f"tensor transform changed the shape of `{name}` from {info.shape} to {values.shape}"
                    )
            if qtype in (QType.F16, QType.BF16):
                check_representable(name, values, qtype.name)  # as --to hf: never a silent infinity
            stored = to_stored_layout(name, values, arch, model.config)
            rows = stored.reshape(-1, stored.shape[-1]) if stored.ndim > 1 else stored.reshape(1, -1)
            if keyed is None:
                out_bytes = quantize(rows, qtype, name=name)
            else:
                dirs = to_stored_layout(name, np.asarray(keyed.rounding, dtype=np.int8), arch, model.config)
                out_bytes = quantize(rows, qtype, name=name, rounding=dirs.reshape(rows.shape),
                                     delta=keyed.delta)
        result.n_parameters += info.n_elements
        progress(result.n_tensors + 1, total, name)
        result.n_tensors += 1
        return out_bytes

    def data(spec: TensorSpec) -> np.ndarray:
        names = members[spec.stored_name]
        if len(names) == 1 and len(spec.shape) == len(infos[names[0]].shape):
            return one(names[0], spec.qtype)
        # stacked experts: each expert's rows, one after the other
        return np.concatenate([np.asarray(one(n, spec.qtype)).reshape(-1).view(np.uint8) for n in names])

    write_gguf(out, metadata=metadata, metadata_types=types, tensors=specs, data=data)
    result.tensor_types = {name: plan[name].name for name in infos}
    result.type_counts = dict(Counter(result.tensor_types.values()))
    result.output_bytes = out.stat().st_size
    return result


def _convert_to_hf(
    model: Model,
    out: Path,
    dtype: str,
    transform: TensorTransform | None,
    progress: ProgressCallback,
) -> ConvertResult:
    from weightprint.io.hf import write_hf_dir

    target = {"float16": QType.F16, "bfloat16": QType.BF16, "float32": QType.F32}.get(dtype)
    if target is None:
        raise WeightprintError(f"unknown dtype `{dtype}`; expected float16, bfloat16 or float32")
    names = model.tensor_names()

    def hook(name: str, values: np.ndarray) -> np.ndarray:
        got = transform(name, values, target)  # type: ignore[misc]
        if isinstance(got, KeyedRounding):
            raise WeightprintError(f"tensor `{name}`: keyed rounding needs a quantized GGUF target, not {dtype}")
        return np.asarray(got, dtype=np.float32)

    # without a transform the writer streams each tensor a few rows at a time from the map
    write_hf_dir(model, out, dtype=dtype, tensor_transform=None if transform is None else hook, progress=progress)
    result = ConvertResult(str(model.path), str(out), "hf", target.name)
    result.n_tensors = len(names)
    result.n_parameters = model.n_parameters()
    result.output_bytes = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return result


def file_type_base(file_type: FileType) -> QType:
    """The base tensor type of a file type (``Q4_K_M`` -> ``Q4_K``)."""
    return FILE_TYPE_BASE[file_type]
