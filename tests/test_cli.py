"""CLI contract: one-line errors with exit code 2, no traceback, no partial output; --json on stdout."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from weightprint.cli import app

runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, list(args))


def _assert_one_line_error(result, pattern: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert lines, "no error message"
    assert lines[0].startswith("error: "), lines
    assert pattern in lines[0], (pattern, lines[0])
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert all(ln.startswith(("error: ", "hint: ")) for ln in lines), lines


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    _assert_one_line_error(_run("inspect", str(missing)), f"{missing}: no such file or directory")


def test_wrong_magic(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOPE" + bytes(100))
    _assert_one_line_error(_run("inspect", str(bad)), str(bad))


def test_directory_without_weights(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    _assert_one_line_error(_run("inspect", str(tmp_path)), str(tmp_path))


def test_unknown_quant_type_leaves_no_output(tmp_path: Path, smollm2: Path) -> None:
    out = tmp_path / "out.gguf"
    _assert_one_line_error(_run("convert", str(smollm2), str(out), "--type", "Q9_9"), "unknown quantization type `Q9_9`")
    assert list(tmp_path.iterdir()) == []


def test_truncated_gguf_convert_leaves_no_output(tmp_path: Path, smollm2: Path) -> None:
    cut = tmp_path / "cut.gguf"
    with open(smollm2, "rb") as f:
        cut.write_bytes(f.read(5_000_000))
    out = tmp_path / "out.gguf"
    _assert_one_line_error(_run("convert", str(cut), str(out), "--type", "Q8_0"), str(cut))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.gguf"]


@pytest.mark.slow
def test_inspect_smollm2_json(smollm2: Path) -> None:
    result = _run("inspect", str(smollm2), "--json")
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["architecture"] == "llama"
    assert info["n_parameters"] == 134_515_008
    assert info["vocab_size"] == 49_152
    assert info["tokenizer_model"] == "gpt2"
    assert info["chat_template_family"] == "ChatML"
    assert info["types"]["Q4_1"]["count"] == 210
    assert info["types"]["F32"]["count"] == 61
    assert info["types"]["Q8_0"]["count"] == 1
    assert info["context_length"] == 8192
    assert info["n_layers"] == 30 and info["hidden_size"] == 576


@pytest.mark.slow
def test_inspect_gemma_human(gemma3: Path) -> None:
    result = _run("inspect", str(gemma3))
    assert result.exit_code == 0, result.stderr
    assert "gemma3" in result.stdout
    assert "268,098,176" in result.stdout
    assert "262144" in result.stdout


def test_python_dash_m_error_has_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "weightprint", "inspect", str(tmp_path / "x.gguf")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ")
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------ verdict commands: exit codes 0 / 1 / 2
# The documented contract: 0 = no evidence, 1 = evidence found, 2 = error, for every verdict command.

@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    from _fixtures_mark import write_tiny_llama

    from weightprint.convert import convert

    d = tmp_path_factory.mktemp("cli")
    a = write_tiny_llama(d / "a.gguf", seed=0)
    b = write_tiny_llama(d / "b.gguf", seed=1)
    convert(a, d / "a-q8.gguf", file_type="Q8_0")
    convert(b, d / "b-q8.gguf", file_type="Q8_0")
    return {"dir": d, "a": a, "b": b, "a_q8": d / "a-q8.gguf", "b_q8": d / "b-q8.gguf"}


def _code(*args: object) -> tuple[int, str, str]:
    result = runner.invoke(app, [str(a) for a in args], env={"WEIGHTPRINT_QUIET": "1"})
    assert "Traceback" not in result.stderr, result.stderr
    return result.exit_code, result.stdout, result.stderr


def test_lineage_compare_exit_codes(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    code, out, _ = _code("lineage", "compare", tiny_models["a"], tiny_models["a_q8"], "--html", tmp_path / "l.html")
    assert code == 1 and out.startswith("derived"), out
    html = (tmp_path / "l.html").read_text()
    assert "<svg" in html and "derived" in html
    assert "token Gram correlation (basis-free evidence, not a test)" in html
    data = json.loads((tmp_path / "l.json").read_text())["sections"][0]["data"]
    assert data["verdict"] == "derived" and data["basis_free"]["token_gram_corr"] > 0.99
    code, out, _ = _code("lineage", "compare", tiny_models["a"], tiny_models["b"], "--json")
    assert code == 0 and json.loads(out)["verdict"] != "derived"
    assert _code("lineage", "compare", tiny_models["a"], tmp_path / "missing.gguf")[0] == 2


def test_lineage_exact_exit_codes(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    code, out, _ = _code("lineage", "exact", tiny_models["a"], tiny_models["a_q8"], "--json")
    assert code == 1 and json.loads(out)["verdict"] == "exact"
    code, out, _ = _code("lineage", "exact", tiny_models["a"], tiny_models["b_q8"], "--html", tmp_path / "e.html")
    assert code == 0 and "bytes differ" in out
    assert "not exact" in (tmp_path / "e.html").read_text()
    assert _code("lineage", "exact", tmp_path / "missing.gguf", tiny_models["a_q8"])[0] == 2


def test_lineage_search_exit_codes(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    db = tmp_path / "refs.db"
    code, out, _ = _code("fingerprint", tiny_models["a"], "--db", db, "--label", "model-a")
    assert code == 0 and "stored `model-a`" in out
    code, out, _ = _code("lineage", "search", tiny_models["a_q8"], "--db", db, "--html", tmp_path / "s.html")
    assert code == 1 and "model-a" in out and "derived from `model-a`" in out
    html = (tmp_path / "s.html").read_text()
    assert "<svg" in html and "Bonferroni" in html
    code, _, _ = _code("lineage", "search", tiny_models["b"], "--db", db)
    assert code == 0
    code, _, err = _code("lineage", "search", tiny_models["b"], "--db", tmp_path / "none.db")
    assert code == 2 and err.startswith("error: ")


def test_lineage_search_with_a_basis_sketch(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """`fingerprint --basis-sketch` stores what `search` needs to see through a rotated residual basis."""
    from weightprint.convert import convert
    from weightprint.io import open_model
    from weightprint.testing.symmetry import residual_transform

    rotated = tmp_path / "rot.gguf"
    with open_model(tiny_models["a"]) as m:
        convert(residual_transform(m, "rotate", seed=5), rotated, file_type="Q8_0")
    plain, sketch = tmp_path / "plain.db", tmp_path / "sketch.db"
    code, out, _ = _code("fingerprint", tiny_models["a"], "--db", plain, "--json")
    assert code == 0
    small = json.loads(out)["n_bytes"]
    code, out, err = _code("fingerprint", tiny_models["a"], "--db", sketch, "--basis-sketch", "--json")
    assert code == 0, err
    assert json.loads(out)["n_bytes"] > small
    assert _code("lineage", "search", rotated, "--db", plain)[0] == 0
    code, out, _ = _code("lineage", "search", rotated, "--db", sketch, "--json")
    assert code == 1
    top = json.loads(out)["ranking"][0]
    assert top["verdict"] == "derived" and top["basis"]["kind"] == "orthogonal"


def test_old_lineage_forms_are_gone(tiny_models: dict[str, Path]) -> None:
    """`lineage A B` is now `lineage compare A B`: the old form is a usage error (exit 2), not a verdict."""
    assert _code("lineage", tiny_models["a"], tiny_models["b"])[0] == 2


def test_mark_trace_and_verify_exit_codes(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    from _fixtures_mark import deterministic_issuing, write_test_key_file

    reg = f"sqlite:///{tmp_path / 'reg.db'}"
    key = write_test_key_file(tmp_path / "master.key", "cli")
    common = ("--registry", reg, "--key-file", key)
    assert _code("mark", "init", *common)[0] == 0
    with deterministic_issuing("cli"):
        for who in ("alice", "bob"):
            code, out, err = _code("mark", "issue", tiny_models["a"], "--recipient", who, "--out", tmp_path / f"{who}.gguf", *common)
            assert code == 0, err
    code, out, _ = _code("mark", "trace", tmp_path / "bob.gguf", "--source", tiny_models["a"], *common,
                         "--html", tmp_path / "t.html")
    assert code == 1 and "accused `bob`" in out, out
    assert "<svg" in (tmp_path / "t.html").read_text()
    code, out, _ = _code("mark", "trace", tiny_models["a_q8"], "--source", tiny_models["a"], *common, "--json")
    assert code == 0 and json.loads(out)["accused"] == []
    code, out, _ = _code("mark", "verify", tmp_path / "alice.gguf", *common)
    assert code == 1 and "exact copy issued to `alice`" in out
    code, out, _ = _code("mark", "verify", tiny_models["a_q8"], *common, "--source", tiny_models["a"])
    assert code == 0 and "no registered copy" in out
    assert _code("mark", "trace", tmp_path / "missing.gguf", "--source", tiny_models["a"], *common)[0] == 2
    assert _code("mark", "verify", tmp_path / "missing.gguf", *common)[0] == 2


def test_piped_progress_is_log_lines_with_elapsed_time(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    result = runner.invoke(app, ["convert", str(tiny_models["a"]), str(tmp_path / "x.gguf"), "--type", "Q8_0"],
                           env={"WEIGHTPRINT_QUIET": "0"})
    assert result.exit_code == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines and all(re.match(r"\[\d+\.\ds\] converting", ln) for ln in lines), lines
    assert lines[-1].endswith("converting: done") and len(lines) <= 5  # 20 tensors, rate-limited
