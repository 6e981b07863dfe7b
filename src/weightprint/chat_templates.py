"""Chat-template families: which prompt format a model was trained with.

The family is a strong lineage hint (miqu's prompt format matched Mistral's), so it is
reported by ``inspect`` and compared by ``lineage``.
"""

from __future__ import annotations

import hashlib

FAMILIES = ("ChatML", "Llama-3", "Llama-2", "Mistral", "Gemma", "Phi-3", "other", "none")


def chat_template_family(template: str | None) -> str:
    """Classify a Jinja chat template by the markers it emits.

    Returns one of ``ChatML`` (``<|im_start|>``), ``Llama-3`` (``<|start_header_id|>``),
    ``Llama-2`` (``[INST]`` with a ``<<SYS>>`` block), ``Mistral`` (``[INST]`` without
    ``<<SYS>>``), ``Gemma`` (``<start_of_turn>``), ``Phi-3`` (``<|user|>`` + ``<|end|>``),
    ``other`` (a template with none of these) or ``none`` (no template).
    """
    if not template or not template.strip():
        return "none"
    t = template
    if "<|im_start|>" in t:
        return "ChatML"
    if "<|start_header_id|>" in t:
        return "Llama-3"
    if "<start_of_turn>" in t:
        return "Gemma"
    if "[INST]" in t:
        return "Llama-2" if "<<SYS>>" in t else "Mistral"
    if "<|user|>" in t and "<|end|>" in t:
        return "Phi-3"
    return "other"


def template_sha256(template: str | None) -> str | None:
    """SHA-256 of the template text (None when there is no template)."""
    if not template:
        return None
    return hashlib.sha256(template.encode("utf-8")).hexdigest()
