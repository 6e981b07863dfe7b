"""Which chat-template family a model uses: from its metadata, or, for an endpoint, from its behaviour.

A file or directory carries its template (``tokenizer.chat_template``), classified by
:func:`weightprint.chat_templates.chat_template_family`. An endpoint shows only behaviour: it
answers a few questions (after an explicit system message, so that a template's default system
prompt does not differ) through ``/v1/chat/completions``, where the server applies the model's
template, and the same messages through ``/v1/completions`` written out by hand in each family's
format. The family whose hand-written prompt reproduces the chat answers best (mean
prefix similarity of the greedy continuations) is the template the server applies; a model that
was never trained on a format answers it with noise. When no family reproduces the answers
(best similarity under ``min_similarity``) the answer is ``other``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from weightprint.behave.backends.base import Backend, GenerateRequest
from weightprint.chat_templates import chat_template_family
from weightprint.errors import WeightprintError
from weightprint.progress import ProgressCallback, no_progress
from weightprint.results import VerdictResult, to_jsonable

__all__ = ["FAMILY_FORMATS", "TemplateResult", "detect_template", "template_family_of_text"]

#: a system message, one user turn, then the assistant's turn opened, in each family's format
#: (families without a system role put the system text at the start of the user turn)
FAMILY_FORMATS: dict[str, str] = {
    "ChatML": "<|im_start|>system\n{s}<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n",
    "Llama-3": ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{s}<|eot_id|>"
                "<|start_header_id|>user<|end_header_id|>\n\n{q}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"),
    "Llama-2": "[INST] <<SYS>>\n{s}\n<</SYS>>\n\n{q} [/INST]",
    "Mistral": "[INST] {s}\n\n{q} [/INST]",
    "Gemma": "<start_of_turn>user\n{s}\n\n{q}<end_of_turn>\n<start_of_turn>model\n",
    "Phi-3": "<|system|>\n{s}<|end|>\n<|user|>\n{q}<|end|>\n<|assistant|>\n",
    "Zephyr": "<|system|>\n{s}</s>\n<|user|>\n{q}</s>\n<|assistant|>\n",
}

#: the system message of every probe (given explicitly, so a template's default one does not differ)
PROBE_SYSTEM = "You are a helpful assistant."

PROBE_QUESTIONS = (
    "What is the capital of France?",
    "Name three colours of the rainbow.",
    "Write one sentence about cats.",
)


def template_family_of_text(template: str | None) -> str:
    """:func:`~weightprint.chat_templates.chat_template_family`, with Zephyr (``<|user|>`` turns ended by ``</s>``) told apart from ``other``."""
    family = chat_template_family(template)
    if family == "other" and template and "<|user|>" in template and ("</s>" in template or "eos_token" in template):
        return "Zephyr"
    return family


@dataclass(frozen=True)
class TemplateResult(VerdictResult):
    """The chat-template family of a model; ``verdict`` is the family name."""

    EVIDENCE_VERDICTS: ClassVar[frozenset[str]] = frozenset()

    model: str
    verdict: str
    source: str  # "metadata" or "behaviour"
    scores: dict[str, float]
    template_chars: int | None = None

    @property
    def family(self) -> str:
        return self.verdict

    def summary(self) -> str:
        how = "from its metadata" if self.source == "metadata" else "from its behaviour"
        return f"{self.model}: chat template {self.verdict} ({how})"

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable({"kind": "template", "model": self.model, "family": self.verdict, "source": self.source,
                            "scores": self.scores, "template_chars": self.template_chars})


def detect_template(ref: str | Path | Backend, *, model_options: dict[str, Any] | None = None,
                    max_tokens: int = 16, min_similarity: float = 0.5,
                    progress: ProgressCallback | None = None) -> TemplateResult:
    """The chat-template family of a model file/directory (metadata) or of an endpoint (behaviour).

    Parameters
    ----------
    ref : str, Path or Backend
        A GGUF file or Hugging Face directory (read its template), or an ``http(s)://`` URL / a
        backend (probed).
    model_options : dict, *optional*
        :func:`open_backend` options for an endpoint (``model=``...).
    max_tokens : int, *optional*, defaults to 16
    min_similarity : float, *optional*, defaults to 0.5
        Below this best similarity the family is ``other``.
    """
    progress = progress or no_progress
    if not isinstance(ref, Backend) and not str(ref).lower().startswith(("http://", "https://")):
        from weightprint.io import open_model

        path = Path(ref)
        if not path.exists():
            raise WeightprintError(f"{path}: no such file or directory")
        model = open_model(path)
        try:
            tpl = model.chat_template
        finally:
            close = getattr(model, "close", None)
            if callable(close):
                close()
        family = template_family_of_text(tpl)
        return TemplateResult(model=path.name, verdict=family, source="metadata", scores={},
                              template_chars=len(tpl) if tpl else None)
    from weightprint.behave.backends.base import open_backend
    from weightprint.behave.compare import prefix_similarity

    backend = ref if isinstance(ref, Backend) else open_backend(ref, **(model_options or {}))
    try:
        chat = backend.generate([GenerateRequest(prompt=q, max_tokens=max_tokens, chat=True, system=PROBE_SYSTEM)
                                 for q in PROBE_QUESTIONS])
        progress(1, 1 + len(FAMILY_FORMATS), "chat answers")
        scores: dict[str, float] = {}
        for k, (family, fmt) in enumerate(FAMILY_FORMATS.items()):
            raw = backend.generate([GenerateRequest(prompt=fmt.format(s=PROBE_SYSTEM, q=q), max_tokens=max_tokens)
                                    for q in PROBE_QUESTIONS])
            scores[family] = sum(prefix_similarity(c.text.strip(), r.text.strip(), 8) for c, r in zip(chat, raw)) / len(chat)
            progress(2 + k, 1 + len(FAMILY_FORMATS), family)
        label = backend.label or str(ref)
    finally:
        if not isinstance(ref, Backend):
            backend.close()
    best = max(scores, key=scores.get)
    family = best if scores[best] >= min_similarity else "other"
    return TemplateResult(model=label, verdict=family, source="behaviour", scores=scores)
