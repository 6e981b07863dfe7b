"""``inspect``: what a model file is, at a glance and without reading its weights."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weightprint.chat_templates import chat_template_family, template_sha256
from weightprint.io.model import Model


@dataclass
class TypeSummary:
    """Tensors of one storage type."""

    count: int = 0
    n_elements: int = 0
    nbytes: int = 0


@dataclass
class InspectResult:
    """Facts about one model checkpoint.

    Attributes
    ----------
    path, format, architecture : str
    n_parameters, n_tensors : int
    types : dict[str, TypeSummary]
        Per storage type: tensor count, elements and bytes.
    context_length : int | None
    n_layers, hidden_size : int | None
    n_experts : int
        Experts per MoE layer (0 for a dense model); ``n_tensors`` counts each expert's tensors.
    tokenizer_model : str | None
        ``gpt2`` (byte-level BPE), ``llama`` (SentencePiece)...
    vocab_size : int | None
    tokenizer_sha256 : str | None
        SHA-256 of the vocabulary (tokens joined by NUL) — equal vocabularies, equal hashes.
    chat_template : str | None
    chat_template_family : str
    file_sha256 : str | None
        Only when asked for (it reads the whole file).
    """

    path: str
    format: str
    architecture: str
    name: str | None
    n_parameters: int
    n_tensors: int
    types: dict[str, TypeSummary] = field(default_factory=dict)
    context_length: int | None = None
    n_layers: int | None = None
    hidden_size: int | None = None
    tokenizer_model: str | None = None
    tokenizer_pre: str | None = None
    vocab_size: int | None = None
    tokenizer_sha256: str | None = None
    chat_template: str | None = None
    chat_template_family: str = "none"
    chat_template_sha256: str | None = None
    file_type: str | None = None
    file_bytes: int = 0
    file_sha256: str | None = None
    n_experts: int = 0

    def facts(self) -> list[tuple[str, str]]:
        """The summary as ``(label, text)`` rows, for tables and reports."""
        rows = [
            ("path", self.path),
            ("format", self.format),
            ("architecture", self.architecture),
            ("name", self.name or "-"),
            ("parameters", f"{self.n_parameters:,}"),
            ("tensors", str(self.n_tensors)),
            ("file type", self.file_type or "-"),
            ("layers / hidden", f"{self.n_layers} / {self.hidden_size}"),
            *([("experts", f"{self.n_experts} per layer")]
              if self.n_experts > 1 else []),
            ("context length", str(self.context_length)),
            ("tokenizer", f"{self.tokenizer_model} (pre={self.tokenizer_pre}), vocab {self.vocab_size}"),
            ("vocab sha256", self.tokenizer_sha256 or "-"),
            ("chat template", f"{self.chat_template_family} ({len(self.chat_template or '')} chars)"),
            ("bytes", f"{self.file_bytes:,}"),
        ]
        if self.file_sha256:
            rows.append(("file sha256", self.file_sha256))
        return rows

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["types"] = {k: dict(v.__dict__) for k, v in self.types.items()}
        return d


def vocabulary_sha256(tokens: list[str]) -> str:
    """SHA-256 of a vocabulary in id order (tokens joined by NUL bytes)."""
    joined = "\0".join(tokens) + "\0" if len(tokens) else ""
    return hashlib.sha256(joined.encode("utf-8", "surrogatepass")).hexdigest()


def inspect_model(path: str | Path | Model, *, sha256: bool = False) -> InspectResult:
    """Summarise a model file: architecture, sizes, tensor types, tokenizer and chat template.

    Parameters
    ----------
    path : str, Path or Model
        GGUF file, safetensors file or Hugging Face directory.
    sha256 : bool, *optional*, defaults to False
        Also hash the whole file (reads every byte; off by default).
    """
    from weightprint.io.limits import io_boundary

    with io_boundary(path.path if isinstance(path, Model) else path):
        return _inspect(path, sha256)


def _inspect(path: str | Path | Model, sha256: bool) -> InspectResult:
    from weightprint.io import file_sha256, open_model
    from weightprint.io.values import Values

    model = path if isinstance(path, Model) else open_model(path)
    try:
        infos = model.tensor_infos()
        types: dict[str, TypeSummary] = defaultdict(TypeSummary)
        for t in infos:
            s = types[t.qtype.name]
            s.count += 1
            s.n_elements += t.n_elements
            s.nbytes += t.nbytes
        geo = model.geometry  # checks every hyperparameter against the tensors
        md = model.metadata or {}
        cfg = (model.config or {}) if model.format != "gguf" else {}  # a GGUF's config is rebuilt: not needed here
        tok = model.tokenizer
        checked = Values(md, str(model.path))
        file_type = checked.int("general.file_type", lo=None)
        if file_type is not None:
            from weightprint.constants import FileType

            try:
                file_type = FileType(file_type).name
            except ValueError:
                file_type = str(file_type)
        name = checked.str("general.name") if model.format == "gguf" else None
        if name is None and isinstance(cfg.get("_name_or_path"), str):
            name = cfg["_name_or_path"]
        p = Path(model.path)
        files = [p] if p.is_file() else sorted(p.glob("*.safetensors"))
        result = InspectResult(
            path=str(model.path),
            format=model.format,
            architecture=model.architecture,
            name=name,
            n_parameters=sum(t.n_elements for t in infos),
            n_tensors=len(infos),
            types=dict(sorted(types.items())),
            context_length=geo.context_length,
            n_layers=geo.n_layers,
            hidden_size=geo.hidden_size,
            tokenizer_model=tok.model if tok else None,
            tokenizer_pre=tok.pre if tok else None,
            vocab_size=tok.vocab_size if tok else geo.vocab_size,
            tokenizer_sha256=vocabulary_sha256(tok.tokens) if tok and tok.tokens else None,
            chat_template=model.chat_template,
            chat_template_family=chat_template_family(model.chat_template),
            chat_template_sha256=template_sha256(model.chat_template),
            file_type=file_type,
            file_bytes=sum(f.stat().st_size for f in files),
            n_experts=int(geo.n_experts or 0),
        )
        if sha256:
            result.file_sha256 = file_sha256(p) if p.is_file() else None
        return result
    finally:
        if not isinstance(path, Model):
            model.close()
