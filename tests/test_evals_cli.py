"""`weightprint eval eqbench` and `weightprint contamination` through a fake backend (CliRunner)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from _fixtures_evals import FakeEvalBackend
from weightprint.cli import app
from weightprint.evals.benchgen import generate_items
from weightprint.evals.eqbench import build_prompt, sample_questions

runner = CliRunner()


def run(*args):
    result = runner.invoke(app, [str(a) for a in args], env={"WEIGHTPRINT_QUIET": "1"})
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr
    return result


def one_line_error(result, message: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert lines[0] == f"error: {message}", lines


def _benchmark(tmp_path, name, items):
    path = tmp_path / name
    path.write_text("".join(json.dumps({"question": t}) + "\n" for t in items))
    return path


def test_contamination_cli(tmp_path):
    seen, unseen = generate_items(60, seed=21), generate_items(60, seed=22)
    FakeEvalBackend.CONFIGS["dirty"] = {"memorized": "\n".join(seen)}
    bench, other = _benchmark(tmp_path, "bench.jsonl", seen), _benchmark(tmp_path, "unseen.jsonl", unseen)
    html = tmp_path / "report.html"
    dirty = run("contamination", "fake-evals:dirty", "--benchmark", bench, "--field", "question", "--unseen", other,
                "--shards", 20, "--permutations", 20, "--html", html)
    assert dirty.exit_code == 1, dirty.stderr
    assert dirty.stdout.startswith("contaminated: bench.jsonl in fake-evals:dirty (60 items;")
    assert html.is_file() and "exchangeability" in html.read_text() and html.with_suffix(".json").is_file()
    clean = run("contamination", "fake-evals:clean", "--benchmark", bench, "--field", "question",
                "--shards", 20, "--permutations", 20, "--json")
    assert clean.exit_code == 0, clean.stderr
    data = json.loads(clean.stdout)
    assert data["verdict"] == "no evidence" and data["exchangeability"]["evidence"]["n_shards"] == 20
    assert data["membership"] is None and len(data["seen_scores"]["min_k_plus_plus"]) == 60


def test_contamination_cli_bad_input(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    one_line_error(run("contamination", "fake-evals:x", "--benchmark", empty), "empty.jsonl: empty benchmark (no items)")
    bench = _benchmark(tmp_path, "b.jsonl", ["a b c"])
    one_line_error(run("contamination", "fake-evals:x", "--benchmark", bench),
                   f"{bench}: record 1 has no field `text` (fields: question)")
    one_line_error(run("contamination", "fake-evals:x", "--benchmark", tmp_path / "missing.jsonl"),
                   f"{tmp_path / 'missing.jsonl'}: no such file or directory")
    one_line_error(run("contamination", "fake-evals:x", "--benchmark", bench, "--field", "question"),
                   "benchmark of 1 item: the exchangeability test needs at least 2 items")
    few = _benchmark(tmp_path, "few.jsonl", generate_items(8, seed=1))  # fewer items than shards: documented fallback
    res = run("contamination", "fake-evals:x", "--benchmark", few, "--field", "question", "--permutations", 30)
    assert res.exit_code == 0 and "note: 8 items: fewer than 20 for a sharded test" in res.stdout, res.stdout


def test_eqbench_cli(tmp_path):
    qs = sample_questions()
    answers = {build_prompt(q): "\n".join(f"{e}: {r:g}" for e, r in zip(q.emotions, q.reference)) for q in qs}
    FakeEvalBackend.CONFIGS["perfect"] = {"answer": lambda p: answers.get(p, "")}
    FakeEvalBackend.CONFIGS["mute"] = {"answer": lambda p: "I cannot say."}
    out = tmp_path / "answers.jsonl"
    res = run("eval", "eqbench", "fake-evals:perfect", "--results", out, "--html", tmp_path / "r.html")
    assert res.exit_code == 0, res.stderr
    assert "EQ-Bench v2 score 100.00 on 6 questions (0.0% parse failures)" in res.stdout
    assert len(out.read_text().splitlines()) == 6
    mute = run("eval", "eqbench", "fake-evals:mute", "--json")
    assert mute.exit_code == 0
    data = json.loads(mute.stdout)
    assert data["score"] == 0.0 and data["parse_failure_rate"] == 1.0 and data["verdict"] == "no parseable answers"
    bad = tmp_path / "q.json"
    bad.write_text('{"1": {"prompt": "hi"}}')
    one_line_error(run("eval", "eqbench", "fake-evals:perfect", "--questions", bad),
                   f"{bad}: question 1 has no `reference_answer_fullscale`")
