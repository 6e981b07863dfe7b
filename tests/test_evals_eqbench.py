"""EQ-Bench v2 runner: parsing, the official scoring formula by hand, resumable runs, bad input."""

from __future__ import annotations

import json
import math

import pytest

from _fixtures_evals import FakeEvalBackend
from weightprint.errors import WeightprintError
from weightprint.evals.data import BenchmarkFormatError
from weightprint.evals.eqbench import (
    benchmark_score,
    build_prompt,
    load_questions,
    parse_ratings,
    question_score,
    run_eqbench,
    sample_questions,
    scaled_difference,
)

EMO = ["Angry", "Sad", "Calm", "Hopeful"]


# ------------------------------------------------------------------ scoring by hand
def test_scaled_difference_by_hand():
    assert scaled_difference(0) == 0.0
    assert scaled_difference(1) == pytest.approx(6.5 / (1 + math.exp(3.6)))  # 0.172881
    assert scaled_difference(1) == pytest.approx(0.172881, abs=1e-6)
    assert scaled_difference(4) == 3.25
    assert scaled_difference(5) == pytest.approx(4.995411, abs=1e-6)  # just below the d > 5 branch
    assert scaled_difference(5.5) == 5.5 and scaled_difference(10) == 10.0
    assert scaled_difference(0.001) == pytest.approx(6.5 / (1 + math.exp(4.8)), abs=1e-3)  # the jump at 0+


def test_question_score_by_hand():
    assert question_score([0, 6, 0, 7], [0, 6, 0, 7]) == 10.0
    # one emotion off by 1: 10 - 0.7477 * 0.172881 = 9.870737
    assert question_score([0, 6, 0, 7], [1, 6, 0, 7]) == pytest.approx(9.870737, abs=1e-6)
    # off by 2, 3, 6, 10: 6.5/(1+e^2.4) + 6.5/(1+e^1.2) + 6 + 10
    tally = 6.5 / (1 + math.exp(2.4)) + 6.5 / (1 + math.exp(1.2)) + 6 + 10
    assert question_score([0, 0, 0, 0], [2, 3, 6, 10]) == pytest.approx(10 - 0.7477 * tally)
    assert question_score([0, 0, 0, 0], [10, 10, 10, 10]) == pytest.approx(-19.908)  # the floor: negative
    with pytest.raises(ValueError, match="3 ratings for 4 reference scores"):
        question_score([0, 0, 0, 0], [1, 2, 3])


def test_benchmark_score_over_parseable_only():
    assert benchmark_score([10.0, 5.0, None]) == (75.0, 2)
    assert benchmark_score([None, None]) == (0.0, 0)
    assert benchmark_score([-19.908]) == (pytest.approx(-199.08), 1)


# ------------------------------------------------------------------ parsing
def test_parse_ratings_robust_and_strict():
    plain = "Angry: 7\nSad: 2\nCalm: 0\nHopeful: 3"
    assert parse_ratings(plain, EMO) == parse_ratings(plain, EMO, strict=True) == (7.0, 2.0, 0.0, 3.0)
    messy = "Sure! Here you go:\n**Angry**: 7/10\n- sad - 2\nCALM = 0\nHopeful: 3.5."
    assert parse_ratings(messy, EMO) == (7.0, 2.0, 0.0, 3.5)
    assert parse_ratings(messy, EMO, strict=True) is None  # the official regex needs `Word: digits`
    assert parse_ratings(plain + "\nNote: 4", EMO, strict=True) is None  # five pairs: official fails
    assert parse_ratings(plain + "\nNote: 4", EMO) == (7.0, 2.0, 0.0, 3.0)
    assert parse_ratings("Angry: 7\nSad: 2\nCalm: 0\nAngry: 5\nHopeful: 3", EMO) == (5.0, 2.0, 0.0, 3.0)  # last wins
    assert parse_ratings("Angry: 7\nSad: 2\nCalm: 0", EMO) is None  # one missing
    assert parse_ratings("Angry: 17\nSad: 2\nCalm: 0\nHopeful: 3", EMO) is None  # out of range
    assert parse_ratings("Angry: <score>\nSad: <score>\nCalm: <score>\nHopeful: <score>", EMO) is None
    assert parse_ratings("Angry: -3\nSad: 2\nCalm: 0\nHopeful: 3", EMO) is None
    assert parse_ratings("Hopefully: 3\nAngry: 7\nSad: 2\nCalm: 0", EMO) is None  # not the word Hopeful
    assert parse_ratings("", EMO) is None


def test_parse_revise_sections():
    text = ("First pass scores:\nAngry: 7\nSad: 2\nCalm: 0\nHopeful: 3\n\nCritique: hmm\n\n"
            "Revised scores:\nAngry: 6\nSad: 3\nCalm: 1\nHopeful: 2\n")
    assert parse_ratings(text, EMO, section="first") == (7.0, 2.0, 0.0, 3.0)
    assert parse_ratings(text, EMO, section="revised") == (6.0, 3.0, 1.0, 2.0)
    assert parse_ratings("Angry: 7", EMO, section="revised") is None


def test_build_prompt_cuts_the_revision():
    q = sample_questions()[0]
    assert build_prompt(q, revise=True) == q.prompt
    p = build_prompt(q)
    assert "Critique" not in p and "Revised scores" not in p and "First pass scores" not in p
    assert p.endswith("[End of answer]\n\nRemember: zero is a valid score, meaning they are likely not feeling that "
                      "emotion. You must score at least one emotion > 0.\n\nYour answer:\n")
    assert all(f"{e}: <score>" in p for e in q.emotions)


# ------------------------------------------------------------------ runs
def _fixed_answers(questions, ratings_of):
    """A fake backend answering each question (recognised by its prompt) with fixed ratings."""
    by_prompt = {build_prompt(q): "\n".join(f"{e}: {r:g}" for e, r in zip(q.emotions, ratings_of(q))) for q in questions}
    return FakeEvalBackend(answer=lambda prompt: by_prompt.get(prompt, "no idea"))


def test_fixed_answers_give_exactly_the_predicted_score():
    qs = sample_questions()

    def ratings_of(q):  # reference shifted by +1 on the first emotion (clipped), exact on the rest
        return [min(10, q.reference[0] + 1), *q.reference[1:]]

    res = run_eqbench(_fixed_answers(qs, ratings_of), qs)
    off = [abs(min(10, q.reference[0] + 1) - q.reference[0]) for q in qs]
    expected = [10 - 0.7477 * (6.5 / (1 + math.exp(-1.2 * (d - 4))) if d else 0.0) for d in off]
    assert res.score == pytest.approx(100 * sum(expected) / len(expected) / 10, abs=1e-12)
    assert res.parse_failure_rate == 0.0 and res.n_parsed == len(qs) and res.verdict == "scored"
    assert [q.id for q in res.questions] == [q.id for q in qs]
    assert "EQ-Bench v2 score" in res.summary()
    json.dumps(res.to_dict())


def test_model_that_never_answers_in_format_scores_zero_with_all_failures():
    qs = sample_questions()
    res = run_eqbench(FakeEvalBackend(answer=lambda p: "They probably feel a mix of things."), qs)
    assert res.score == 0.0 and res.parse_failure_rate == 1.0 and res.n_parsed == 0
    assert res.verdict == "no parseable answers" and all(q.score is None for q in res.questions)


def test_some_failures_are_left_out_of_the_score_and_counted_as_zero_in_the_harness_figure():
    qs = sample_questions()
    good = {build_prompt(q): "\n".join(f"{e}: {r:g}" for e, r in zip(q.emotions, q.reference)) for q in qs[:4]}
    res = run_eqbench(FakeEvalBackend(answer=lambda p: good.get(p, "???")), qs)
    assert res.score == pytest.approx(100.0) and res.n_parsed == 4
    assert res.parse_failure_rate == pytest.approx(2 / 6)
    assert res.score_unparseable_as_zero == pytest.approx(100.0 * 4 / 6)


def test_resumable_run(tmp_path):
    qs = sample_questions()
    out = tmp_path / "answers.jsonl"
    calls = []

    def flaky(prompt):
        calls.append(prompt)
        if len(calls) == 4:
            raise KeyboardInterrupt  # interrupted while answering question 4
        return "Angry: 1"

    with pytest.raises(KeyboardInterrupt):
        run_eqbench(FakeEvalBackend(answer=flaky), qs, results_path=out)
    assert len(out.read_text().splitlines()) == 3
    with open(out, "a") as f:
        f.write('{"format": "weightprint-eqbench-res')  # a torn last line (killed mid-write)
    steady = FakeEvalBackend(answer=lambda p: "Angry: 1")
    seen = []
    res = run_eqbench(steady, qs, results_path=out, progress=lambda d, t, s: seen.append((d, t)))
    assert res.resumed == 3 and len(steady.prompts) == 3 and seen[-1] == (6, 6)
    assert [json.loads(line)["id"] for line in out.read_text().splitlines() if line.endswith("}")] == [q.id for q in qs]
    again = FakeEvalBackend()
    assert run_eqbench(again, qs, results_path=out).resumed == 6 and again.prompts == []
    with pytest.raises(WeightprintError, match=r"answers.jsonl: question 1 was answered with other settings or another prompt$"):
        run_eqbench(FakeEvalBackend(), qs, results_path=out, max_tokens=10)


def test_malformed_question_files(tmp_path):
    def write(obj) -> str:
        p = tmp_path / "q.json"
        p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
        return str(p)

    ref = {"emotion1": "A", "emotion2": "B", "emotion3": "C", "emotion4": "D",
           "emotion1_score": 0, "emotion2_score": "6", "emotion3_score": 0, "emotion4_score": 7}
    assert load_questions(write({"1": {"prompt": "p", "reference_answer_fullscale": ref}}))[0].reference == (0, 6, 0, 7)
    cases = [
        ("{", r"q.json: invalid JSON at line 1 column 2"),
        ("3", r"q.json: expected an EQ-Bench question object, got int$"),
        ({}, r"q.json: no questions$"),
        ({"1": {"reference_answer_fullscale": ref}}, r"q.json: question 1 has no `prompt`$"),
        ({"1": {"prompt": "p"}}, r"q.json: question 1 has no `reference_answer_fullscale`$"),
        ({"1": {"prompt": "p", "reference_answer_fullscale": {**ref, "emotion3_score": "lots"}}},
         r"q.json: question 1: emotion3_score 'lots' is not a number$"),
        ({"1": {"prompt": "p", "reference_answer_fullscale": {**ref, "emotion2_score": 12}}},
         r"q.json: question 1: emotion2_score 12 is outside 0-10$"),
        ({"1": {"prompt": "p", "reference_answer_fullscale": {**ref, "emotion4": "a"}}},
         r"q.json: question 1: the four emotions are not distinct \(A, B, C, a\)$"),
        ({"1": {"prompt": "p", "reference_answer_fullscale": {k: v for k, v in ref.items() if k != "emotion2"}}},
         r"q.json: question 1: reference has no emotion2$"),
    ]
    for obj, message in cases:
        with pytest.raises(BenchmarkFormatError, match=message):
            load_questions(write(obj))
    with pytest.raises(WeightprintError, match="^no EQ-Bench questions to ask$"):
        run_eqbench(FakeEvalBackend(), [])
