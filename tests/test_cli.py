"""CLI contract: one-line errors with exit code 2, no traceback, no partial output; --json on stdout."""

from __future__ import annotations

import json
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
