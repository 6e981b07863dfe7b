"""Prompt suites: the shipped multilingual prompts (package data) and users' own JSONL files.

A suite is a JSONL file, one prompt per line: ``{"id": "en-01", "lang": "en", "prompt": "..."}``
(``id`` and ``lang`` optional; ``chat: true`` sends the prompt as one user message through the
model's chat template). The shipped ``default`` suite was written for weightprint: open-ended
beginnings in English, Russian, German, French and Chinese, and code, whose continuations tell
models apart (a question with one short right answer does not).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from weightprint.errors import WeightprintError

__all__ = ["Prompt", "load_prompts", "shipped_suites"]


@dataclass(frozen=True)
class Prompt:
    """One prompt of a suite."""

    id: str
    prompt: str
    lang: str = ""
    chat: bool = False


def shipped_suites() -> list[str]:
    """Names of the suites shipped in ``weightprint/behave/prompts`` (``default``, ...)."""
    root = resources.files("weightprint.behave") / "prompts"
    return sorted(p.name[: -len(".jsonl")] for p in root.iterdir() if p.name.endswith(".jsonl"))


def load_prompts(suite: str | Path = "default", *, limit: int | None = None) -> list[Prompt]:
    """The prompts of a shipped suite (by name) or of a JSONL file (by path).

    Parameters
    ----------
    suite : str or Path, *optional*, defaults to ``"default"``
        A shipped suite name (see :func:`shipped_suites`) or a path to a JSONL file.
    limit : int, *optional*
        Keep the first ``limit`` prompts.

    Raises
    ------
    WeightprintError
        The file is missing, a line is not a JSON object with a non-empty string ``prompt``,
        two prompts share an id, or the suite is empty.
    """
    path = Path(suite)
    if isinstance(suite, str) and suite in shipped_suites() and not path.exists():
        text = (resources.files("weightprint.behave") / "prompts" / f"{suite}.jsonl").read_text(encoding="utf-8")
        where = f"suite `{suite}`"
    else:
        if not path.is_file():
            raise WeightprintError(f"{path}: no such prompt file", hint=f"shipped suites: {', '.join(shipped_suites())}")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise WeightprintError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
        where = str(path)
    prompts: list[Prompt] = []
    seen: set[str] = set()
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except ValueError as e:
            raise WeightprintError(f"{where}: line {lineno} is not JSON ({e})") from e
        if not isinstance(d, dict) or not isinstance(d.get("prompt"), str) or not d["prompt"]:
            raise WeightprintError(f"{where}: line {lineno} has no non-empty string `prompt`")
        pid = str(d.get("id", f"p{lineno}"))
        if pid in seen:
            raise WeightprintError(f"{where}: line {lineno} repeats the id `{pid}`")
        seen.add(pid)
        prompts.append(Prompt(id=pid, prompt=d["prompt"], lang=str(d.get("lang", "")), chat=bool(d.get("chat", False))))
    if not prompts:
        raise WeightprintError(f"{where}: no prompts")
    return prompts[:limit] if limit else prompts
