"""EQ-Bench v2 (Paech 2023, "EQ-Bench: an emotional intelligence benchmark for large language
models", arXiv:2312.06281) on any backend.

Each question is a dialogue and four emotions; the model rates how strongly a character feels
each, 0-10, and is scored against reference ratings.

Question file
    The official JSON (``data/eq_bench_v2_questions_171.json`` of github.com/EQ-bench/EQ-Bench):
    an object keyed by question id, each value with ``prompt`` and ``reference_answer_fullscale``
    = ``{"emotion1": name, ..., "emotion4": name, "emotion1_score": 0-10, ...}`` (scores may be
    strings, ``"6"``). A list of such objects with an ``id`` field is accepted too. The package
    ships a small sample written for this project in the same format (:data:`SAMPLE_FILE`).

Prompt
    The question's prompt (it asks for "First pass scores", a critique and "Revised scores").
    Without ``revise`` (the default, as lm-evaluation-harness's ``eq_bench`` task and EQ-Bench's
    ``remove_revision_instructions`` do) the revision instructions are cut and ``Your answer:`` is
    appended; the answer is then one set of four ratings.

Parsing (:func:`parse_ratings`)
    The official parser is ``dict(re.findall(r'(\\w+):\\s+(\\d+)', text))`` and needs exactly four
    pairs naming exactly the four emotions (case-sensitive). ``strict=True`` reproduces it. The
    default is robust to what small models write: each emotion is found case-insensitively,
    with optional markdown emphasis, ``:``/``=``/``-`` separators, a decimal value and a ``/10``
    suffix (``**Angry**: 7/10``); other lines are ignored; when an emotion is rated more than once
    the last rating counts (as the official ``dict`` does). A rating outside 0-10 makes the answer
    unparseable. With ``revise``, the first-pass section (between ``First pass scores:`` and
    ``Revised scores:``) and the revised section (after ``Revised scores:``) are parsed apart.

Scoring (:func:`question_score`, :func:`benchmark_score`), EQ-Bench v2 ("fullscale"), from
``calculate_score_fullscale`` and ``calculate_eq_bench_score`` in ``lib/scoring.py`` of the
official repository:
    for each emotion, ``d = |rating - reference|``, scaled as ``0`` when ``d == 0``,
    ``6.5 / (1 + exp(-1.2 (d - 4)))`` when ``0 < d <= 5``, and ``d`` when ``d > 5``; a question
    scores ``10 - 0.7477 * sum(scaled)`` (the constant makes random answers score about 0).
    The benchmark score is ``100 * mean(question score) / 10`` over the *parseable* answers only.
    Edge cases, as in the official code: a perfect answer scores 10 per question (100 overall); an
    answer off by 10 on all four emotions scores ``10 - 0.7477 * 40 = -19.908``, so the benchmark
    score can be negative; the scaling jumps at ``d -> 0+`` (``6.5 / (1 + e^4.8) = 0.0536``) and is
    nearly continuous at 5 (``4.995`` vs ``5``); no parseable answer gives a score of 0 (reported
    with a 100 % parse-failure rate). With ``revise``, the revised score is used when it is at
    least the first-pass score and has at least 95 % as many parseable answers, else the
    first-pass score. lm-evaluation-harness instead counts unparseable answers as 0; that figure
    is reported as ``score_unparseable_as_zero``.

Runs are resumable: with ``results_path`` every answer is appended to a JSON Lines file as soon
as it is generated, and a rerun with the same file skips the questions already answered (the
settings must match). Scores are always recomputed from the stored raw answers.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

from weightprint.behave.backends.base import Backend, GenerateRequest
from weightprint.errors import WeightprintError
from weightprint.evals.data import BenchmarkFormatError, shipped_path
from weightprint.progress import ProgressCallback, no_progress
from weightprint.results import VerdictResult

__all__ = [
    "ADJUST_CONSTANT", "SAMPLE_FILE", "EqBenchQuestion", "EqBenchResult", "QuestionResult", "benchmark_score",
    "build_prompt", "load_questions", "parse_ratings", "question_score", "run_eqbench", "scaled_difference",
]

#: the official constant that makes random answering score about zero
ADJUST_CONSTANT = 0.7477
SAMPLE_FILE = "eqbench_v2_sample.json"
#: default answer lengths, as the official runner: short without revision, long with it
DEFAULT_MAX_TOKENS = {False: 60, True: 1000}
RESULTS_FORMAT = "weightprint-eqbench-results-v1"


@dataclass(frozen=True)
class EqBenchQuestion:
    """One question: its prompt, the four emotions and their reference ratings (v2 full scale)."""

    id: str
    prompt: str
    emotions: tuple[str, str, str, str]
    reference: tuple[float, float, float, float]


def _reference(path: Path, qid: str, ref: Any) -> tuple[tuple[str, ...], tuple[float, ...]]:
    if not isinstance(ref, dict):
        raise BenchmarkFormatError(f"{path}: question {qid}: `reference_answer_fullscale` is not an object")
    emotions, scores = [], []
    for i in range(1, 5):
        name, score = ref.get(f"emotion{i}"), ref.get(f"emotion{i}_score")
        if not isinstance(name, str) or not name.strip():
            raise BenchmarkFormatError(f"{path}: question {qid}: reference has no emotion{i}")
        try:
            value = float(score)  # the official file has both 6 and "6"
        except (TypeError, ValueError):
            raise BenchmarkFormatError(f"{path}: question {qid}: emotion{i}_score {score!r} is not a number") from None
        if not 0.0 <= value <= 10.0:
            raise BenchmarkFormatError(f"{path}: question {qid}: emotion{i}_score {value:g} is outside 0-10")
        emotions.append(name.strip())
        scores.append(value)
    if len({e.lower() for e in emotions}) != 4:
        raise BenchmarkFormatError(f"{path}: question {qid}: the four emotions are not distinct ({', '.join(emotions)})")
    return tuple(emotions), tuple(scores)


def load_questions(path: str | Path) -> list[EqBenchQuestion]:
    """Questions of an EQ-Bench v2 JSON file, in file order.

    Raises
    ------
    BenchmarkFormatError
        Not JSON, no questions, or a question without a prompt or a valid full-scale reference.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise BenchmarkFormatError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from e
    except UnicodeDecodeError as e:
        raise BenchmarkFormatError(f"{path}: not UTF-8 text (byte {e.start})") from e
    if isinstance(data, dict):
        entries = [(str(k), v) for k, v in data.items()]
    elif isinstance(data, list):
        entries = [(str(v.get("id", i + 1)) if isinstance(v, dict) else str(i + 1), v) for i, v in enumerate(data)]
    else:
        raise BenchmarkFormatError(f"{path}: expected an EQ-Bench question object, got {type(data).__name__}")
    if not entries:
        raise BenchmarkFormatError(f"{path}: no questions")
    questions, seen = [], set()
    for qid, q in entries:
        if not isinstance(q, dict):
            raise BenchmarkFormatError(f"{path}: question {qid} is a {type(q).__name__}, not an object")
        if qid in seen:
            raise BenchmarkFormatError(f"{path}: question id {qid} appears twice")
        seen.add(qid)
        prompt = q.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise BenchmarkFormatError(f"{path}: question {qid} has no `prompt`")
        if "reference_answer_fullscale" not in q:
            raise BenchmarkFormatError(f"{path}: question {qid} has no `reference_answer_fullscale`",
                                       hint="EQ-Bench v2 questions (eq_bench_v2_questions_171.json) carry full-scale references")
        emotions, reference = _reference(path, qid, q["reference_answer_fullscale"])
        questions.append(EqBenchQuestion(qid, prompt, emotions, reference))  # type: ignore[arg-type]
    return questions


def sample_questions() -> list[EqBenchQuestion]:
    """The small sample shipped with the package (written for this project, EQ-Bench v2 format)."""
    return load_questions(shipped_path(SAMPLE_FILE))


# ------------------------------------------------------------------ prompt
_REVISION_SENTENCE = " Then critique your answer by thinking it through step by step. Finally, give your revised scores."


def build_prompt(question: EqBenchQuestion, *, revise: bool = False) -> str:
    """The prompt sent to the model: as in the file with ``revise``, else with the revision cut
    (EQ-Bench's ``remove_revision_instructions`` for English)."""
    prompt = question.prompt
    if revise:
        return prompt
    prompt = prompt.replace(_REVISION_SENTENCE, "").replace("First pass scores:\n", "")
    start, end = prompt.find("Critique: <your critique here>"), prompt.find("[End of answer]")
    if start >= 0 and end > start:
        prompt = prompt[:start] + "\n" + prompt[end:]
    return prompt + "\nYour answer:\n"


# ------------------------------------------------------------------ parsing
_OFFICIAL_PAIR = re.compile(r"(\w+):\s+(\d+)")


def _section(text: str, which: str) -> str:
    first = re.search(r"first\s*pass\s*scores?\s*:", text, re.IGNORECASE)
    revised = re.search(r"revised\s*scores?\s*:", text, re.IGNORECASE)
    if which == "revised":
        return text[revised.end():] if revised else ""
    if first is None:
        return ""
    return text[first.end(): revised.start() if revised and revised.start() > first.end() else len(text)]


def parse_ratings(text: str, emotions: Sequence[str], *, strict: bool = False,
                  section: str | None = None) -> tuple[float, ...] | None:
    """The four ratings in ``text``, in the order of ``emotions``, or None when unparseable.

    Parameters
    ----------
    text : str
        The model's answer.
    emotions : sequence of 4 str
    strict : bool, *optional*
        Reproduce the official parser (see the module docstring).
    section : {None, 'first', 'revised'}, *optional*
        Parse only the first-pass or the revised section of a revise-style answer.

    Examples
    --------
    >>> parse_ratings("**Angry**: 7/10\\nsad - 2\\nCalm: 0\\nHopeful=3.5", ["Angry", "Sad", "Calm", "Hopeful"])
    (7.0, 2.0, 0.0, 3.5)
    >>> parse_ratings("Angry: 7\\nSad: 11\\nCalm: 0\\nHopeful: 3", ["Angry", "Sad", "Calm", "Hopeful"]) is None
    True
    """
    if section is not None:
        text = _section(text, section)
    if strict:
        pairs = dict(_OFFICIAL_PAIR.findall(text))
        if len(pairs) != 4 or set(pairs) != set(emotions):
            return None
        return tuple(float(pairs[e]) for e in emotions)
    ratings = []
    for emotion in emotions:
        pattern = re.compile(
            r"(?<![A-Za-z])[*_]*" + re.escape(emotion) + r"[*_]*\s*(?::|=|-|–)\s*[*_]*\s*(\d+(?:\.\d+)?)(?!\.?\d)(?:\s*/\s*10)?",
            re.IGNORECASE)
        found = pattern.findall(text)
        if not found:
            return None
        value = float(found[-1])
        if not 0.0 <= value <= 10.0:
            return None
        ratings.append(value)
    return tuple(ratings)


# ------------------------------------------------------------------ scoring
def scaled_difference(d: float) -> float:
    """EQ-Bench v2's scaling of one emotion's absolute difference ``d`` (0-10).

    Examples
    --------
    >>> scaled_difference(0), round(scaled_difference(4), 6), scaled_difference(7)
    (0.0, 3.25, 7.0)
    """
    if d == 0:
        return 0.0
    if d <= 5:
        return 6.5 / (1.0 + math.exp(-1.2 * (d - 4.0)))
    return float(d)


def question_score(reference: Sequence[float], ratings: Sequence[float]) -> float:
    """Score of one answer, ``10 - 0.7477 * sum(scaled |rating - reference|)`` (10 = perfect).

    Examples
    --------
    >>> question_score([0, 6, 0, 7], [0, 6, 0, 7])
    10.0
    >>> round(question_score([0, 0, 0, 0], [10, 10, 10, 10]), 3)
    -19.908
    """
    if len(reference) != 4 or len(ratings) != 4:
        raise ValueError(f"{len(ratings)} ratings for {len(reference)} reference scores; EQ-Bench has 4")
    tally = sum(scaled_difference(abs(float(r) - float(ref))) for r, ref in zip(ratings, reference))
    return 10.0 - tally * ADJUST_CONSTANT


def benchmark_score(scores: Sequence[float | None]) -> tuple[float, int]:
    """``(100 * mean / 10 over parseable answers, number parseable)``; 0 when none is parseable.

    ``None`` marks an unparseable answer.
    """
    ok = [s for s in scores if s is not None]
    if not ok:
        return 0.0, 0
    return 100.0 * (sum(ok) / len(ok)) / 10.0, len(ok)


# ------------------------------------------------------------------ run
@dataclass(frozen=True)
class QuestionResult:
    """One answered question: the raw answer, the parsed ratings (None = unparseable) and scores."""

    id: str
    answer: str
    ratings: tuple[float, ...] | None
    score: float | None
    first_pass_ratings: tuple[float, ...] | None = None
    first_pass_score: float | None = None

    @property
    def parsed(self) -> bool:
        return self.ratings is not None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "answer": self.answer, "ratings": list(self.ratings) if self.ratings else None,
                "score": self.score, "first_pass_ratings": list(self.first_pass_ratings) if self.first_pass_ratings else None,
                "first_pass_score": self.first_pass_score}


@dataclass
class EqBenchResult(VerdictResult):
    """Result of :func:`run_eqbench`.

    Attributes
    ----------
    verdict : {'scored', 'no parseable answers'}
        An evaluation, not a test: neither verdict is "evidence" (exit code 0).
    score : float
        The EQ-Bench v2 score (0-100 for sensible answers; can be negative).
    parse_failure_rate : float
        Fraction of answers whose four ratings could not be parsed.
    score_unparseable_as_zero : float
        The lm-evaluation-harness figure (unparseable answers count as 0).
    questions : list of QuestionResult
    resumed : int
        Answers taken from an earlier run's results file.
    """

    EVIDENCE_VERDICTS: ClassVar[frozenset[str]] = frozenset()

    verdict: str
    model: str
    score: float
    parse_failure_rate: float
    score_unparseable_as_zero: float
    n_questions: int
    n_parsed: int
    questions: list[QuestionResult] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    resumed: int = 0
    first_pass_score: float | None = None
    revised_score: float | None = None

    def summary(self) -> str:
        return (f"EQ-Bench v2 score {self.score:.2f} on {self.n_questions} questions "
                f"({100 * self.parse_failure_rate:.1f}% parse failures) for {self.model}")

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "model": self.model, "score": self.score,
                "parse_failure_rate": self.parse_failure_rate, "score_unparseable_as_zero": self.score_unparseable_as_zero,
                "n_questions": self.n_questions, "n_parsed": self.n_parsed, "resumed": self.resumed,
                "first_pass_score": self.first_pass_score, "revised_score": self.revised_score,
                "settings": dict(self.settings), "questions": [q.to_dict() for q in self.questions]}


def _settings_key(settings: dict[str, Any], question: EqBenchQuestion) -> str:
    blob = json.dumps({"settings": settings, "prompt": question.prompt}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _read_results(path: Path) -> dict[str, dict[str, Any]]:
    """Answers already in an append-only results file (records torn by an interruption are ignored)."""
    if not path.exists():
        return {}
    done: dict[str, dict[str, Any]] = {}
    lines = path.read_text(encoding="utf-8").splitlines()
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            head = json.dumps({"format": RESULTS_FORMAT})[:-1]
            if line.startswith(head) or head.startswith(line):  # a write cut short by an interruption: redo it
                continue
            raise BenchmarkFormatError(f"{path}: line {lineno} is not JSON ({e.msg}); not an EQ-Bench results file") from e
        if not isinstance(rec, dict) or rec.get("format") != RESULTS_FORMAT or "id" not in rec:
            raise BenchmarkFormatError(f"{path}: line {lineno} is not a weightprint EQ-Bench result")
        done[str(rec["id"])] = rec
    return done


def _append(path: Path, record: dict[str, Any]) -> None:
    # if the previous writer died mid-line, start on a fresh line so that the torn one stays alone
    needs_newline = path.exists() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
    with open(path, "a", encoding="utf-8") as f:
        f.write(("\n" if needs_newline else "") + json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _score_answer(q: EqBenchQuestion, answer: str, *, revise: bool, strict: bool) -> QuestionResult:
    if not revise:
        ratings = parse_ratings(answer, q.emotions, strict=strict)
        return QuestionResult(q.id, answer, ratings, question_score(q.reference, ratings) if ratings else None)
    first = parse_ratings(answer, q.emotions, strict=strict, section="first")
    revised = parse_ratings(answer, q.emotions, strict=strict, section="revised")
    return QuestionResult(q.id, answer, revised, question_score(q.reference, revised) if revised else None,
                          first, question_score(q.reference, first) if first else None)


def run_eqbench(
    backend: Backend,
    questions: Sequence[EqBenchQuestion],
    *,
    results_path: str | Path | None = None,
    revise: bool = False,
    strict: bool = False,
    chat: bool = True,
    max_tokens: int | None = None,
    temperature: float = 0.0,
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> EqBenchResult:
    """Ask every question, parse the ratings and score the answers (EQ-Bench v2).

    Parameters
    ----------
    backend : Backend
        Any backend that generates text.
    questions : sequence of EqBenchQuestion
        From :func:`load_questions`.
    results_path : str or Path, *optional*
        Append-only JSON Lines file of raw answers; questions already in it are not asked again.
    revise : bool, *optional*
        Keep the first-pass / critique / revised format of the prompt (see the module docstring).
    strict : bool, *optional*
        The official parser instead of the robust one.
    chat : bool, *optional*, defaults to True
        Wrap the prompt in the model's chat template.
    max_tokens : int, *optional*
        Answer length; 60 without ``revise``, 1000 with it (as the official runner).
    temperature, seed : *optional*
        Sampling (0 = greedy).
    progress : ProgressCallback, *optional*
        ``progress(done, total, question id)`` after each question.

    Returns
    -------
    EqBenchResult

    Raises
    ------
    WeightprintError
        No questions; a results file made with other settings or that is not a results file.
    """
    if not questions:
        raise WeightprintError("no EQ-Bench questions to ask")
    progress = progress or no_progress
    max_tokens = DEFAULT_MAX_TOKENS[revise] if max_tokens is None else int(max_tokens)
    settings = {"revise": revise, "chat": chat, "max_tokens": max_tokens, "temperature": float(temperature), "seed": seed}
    path = Path(results_path) if results_path is not None else None
    done = _read_results(path) if path is not None else {}
    known = {q.id for q in questions}
    answers: dict[str, str] = {}
    for qid, rec in done.items():
        if qid not in known:
            raise WeightprintError(f"{path}: holds an answer to question {qid}, which is not in the question file",
                                   hint="use a new results file for another question set")
    resumed = 0
    total = len(questions)
    for i, q in enumerate(questions):
        key = _settings_key(settings, q)
        rec = done.get(q.id)
        if rec is not None:
            if rec.get("key") != key:
                raise WeightprintError(f"{path}: question {q.id} was answered with other settings or another prompt",
                                       hint="use a new results file, or the settings of the first run")
            answers[q.id] = str(rec["answer"])
            resumed += 1
        else:
            req = GenerateRequest(prompt=build_prompt(q, revise=revise), max_tokens=max_tokens,
                                  temperature=float(temperature), seed=seed, chat=chat)
            answers[q.id] = backend.generate([req])[0].text
            if path is not None:
                _append(path, {"format": RESULTS_FORMAT, "id": q.id, "key": key, "settings": settings,
                               "answer": answers[q.id]})
        progress(i + 1, total, f"question {q.id}")
    results = [_score_answer(q, answers[q.id], revise=revise, strict=strict) for q in questions]
    revised_score, n_revised = benchmark_score([r.score for r in results])
    first_score, n_first = (benchmark_score([r.first_pass_score for r in results]) if revise else (None, 0))
    score, n_parsed, final = revised_score, n_revised, results
    if revise and first_score is not None and not (revised_score >= first_score and n_revised >= 0.95 * n_first):
        score, n_parsed = first_score, n_first
        final = [QuestionResult(r.id, r.answer, r.first_pass_ratings, r.first_pass_score) for r in results]
    as_zero = 100.0 * sum(r.score or 0.0 for r in final) / (10.0 * total)
    return EqBenchResult(
        verdict="scored" if n_parsed else "no parseable answers",
        model=getattr(backend, "label", "") or backend.name, score=score,
        parse_failure_rate=1.0 - n_parsed / total, score_unparseable_as_zero=as_zero,
        n_questions=total, n_parsed=n_parsed, questions=results, settings=settings, resumed=resumed,
        first_pass_score=first_score, revised_score=revised_score if revise else None,
    )
