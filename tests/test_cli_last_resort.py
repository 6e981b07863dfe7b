"""The CLI's last resort: an unexpected exception is one line naming the file, exit 2, no traceback.

Each test makes a library function raise what an unchecked input could raise (monkeypatched),
or feeds a real crafted input that reached an unguarded parser; the traceback shows only under
``--debug`` / ``WEIGHTPRINT_DEBUG=1``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from weightprint.cli import app

runner = CliRunner()


def _assert_internal_error(result, subject: str, exc_type: str) -> None:
    out = result.stdout + result.stderr
    assert result.exit_code == 2, (result.exit_code, out)
    assert "Traceback" not in out, out
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert lines and lines[0].startswith(f"error: {subject}: internal error ({exc_type}): "), lines
    assert all(ln.startswith(("error: ", "hint: ")) for ln in lines), lines


_RAISERS = {
    "RecursionError": RecursionError("maximum recursion depth exceeded"),
    "MemoryError": MemoryError(),
    "UnicodeDecodeError": UnicodeDecodeError("utf-8", b"\xff\xfe", 0, 1, "invalid start byte"),
    "ValueError": ValueError("cannot convert float NaN to integer"),
    "OverflowError": OverflowError("Python int too large to convert to C ssize_t"),
    "ZeroDivisionError": ZeroDivisionError("division by zero"),
    "TypeError": TypeError("'str' object cannot be interpreted as an integer"),
    "IndexError": IndexError("list index out of range"),
    "KeyError": KeyError("llama.block_count"),
    "AssertionError": AssertionError("multi\nline\nmessage"),
}


@pytest.mark.parametrize("name", sorted(_RAISERS))
def test_unexpected_exception_in_inspect_is_one_line(tmp_path: Path, monkeypatch, name: str) -> None:
    import weightprint.inspect_model as im

    def boom(*_a, **_k):
        raise _RAISERS[name]

    monkeypatch.setattr(im, "inspect_model", boom)
    model = tmp_path / "crafted.gguf"
    model.write_bytes(b"GGUF" + bytes(60))
    result = runner.invoke(app, ["inspect", str(model)])
    _assert_internal_error(result, str(model), name)
    assert "\n" not in result.stderr.splitlines()[0]


def test_message_is_bounded_and_the_traceback_shows_under_debug(tmp_path: Path, monkeypatch) -> None:
    import weightprint.convert as conv

    def boom(*_a, **_k):
        raise ValueError("x" * 100_000)

    monkeypatch.setattr(conv, "convert", boom)
    src, out = tmp_path / "in.gguf", tmp_path / "out.gguf"
    src.write_bytes(b"GGUF")
    result = runner.invoke(app, ["convert", str(src), str(out), "--type", "Q8_0"])
    _assert_internal_error(result, f"{src}, {out}", "ValueError")
    assert result.stderr.splitlines()[0].endswith("x...") and result.stderr.count("x") < 400
    assert "--debug" in result.stderr  # the hint says how to get the traceback
    debug = runner.invoke(app, ["--debug", "convert", str(src), str(out), "--type", "Q8_0"])
    assert debug.exit_code == 2 and "Traceback" in debug.stderr and "internal error (ValueError)" in debug.stderr
    by_env = runner.invoke(app, ["convert", str(src), str(out), "--type", "Q8_0"], env={"WEIGHTPRINT_DEBUG": "1"})
    assert by_env.exit_code == 2 and "Traceback" in by_env.stderr


def test_oserror_without_a_file_name_names_the_argument(tmp_path: Path, monkeypatch) -> None:
    import weightprint.inspect_model as im

    def boom(*_a, **_k):
        raise FileNotFoundError(2, "No such file or directory")  # filename None: was `error: None: ...`

    monkeypatch.setattr(im, "inspect_model", boom)
    model = tmp_path / "dangling.gguf"
    result = runner.invoke(app, ["inspect", str(model)])
    assert result.exit_code == 2
    assert result.stderr.splitlines()[0] == f"error: {model}: no such file or directory"


def test_mark_commands_name_their_file(tmp_path: Path, monkeypatch) -> None:
    import weightprint.mark.api as api

    def boom(*_a, **_k):
        raise OverflowError("cannot fit 'int' into an index-sized integer")

    monkeypatch.setattr(api, "verify_file", boom)
    f = tmp_path / "leak.gguf"
    result = runner.invoke(app, ["mark", "verify", str(f), "--key-file", str(tmp_path / "k")])
    _assert_internal_error(result, f"{f}, {tmp_path / 'k'}", "OverflowError")


def _deep_json_dir(tmp_path: Path) -> Path:
    """An HF directory whose config.json nests 100,000 arrays (a RecursionError in json.loads)."""
    import json
    import struct

    d = tmp_path / "deep"
    d.mkdir()
    (d / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    header = json.dumps({"model.embed_tokens.weight": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}})
    (d / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header.encode() + bytes(64))
    return d


@pytest.mark.parametrize("args", [["inspect"], ["convert", "--to", "hf"]])
def test_real_crafted_inputs_never_show_a_traceback(tmp_path: Path, args: list[str]) -> None:
    """A crafted input that reaches an unguarded parser: exit 0 or 2, never a traceback."""
    deep = _deep_json_dir(tmp_path)
    argv = [*args, str(deep)] + ([str(tmp_path / "out")] if args[0] == "convert" else [])
    result = runner.invoke(app, argv, env={"WEIGHTPRINT_QUIET": "1", "WEIGHTPRINT_DEBUG": "0"})
    out = result.stdout + result.stderr
    assert result.exit_code in (0, 2), (result.exit_code, out[-2000:])
    assert "Traceback" not in out, out[-2000:]
    if result.exit_code == 2:
        first = result.stderr.splitlines()[0]
        assert first.startswith("error: ") and str(deep) in first, first


def test_real_crafted_input_through_the_console_script(tmp_path: Path) -> None:
    deep = _deep_json_dir(tmp_path)
    env = {**os.environ, "WEIGHTPRINT_QUIET": "1"}
    env.pop("WEIGHTPRINT_DEBUG", None)
    p = subprocess.run([sys.executable, "-m", "weightprint", "inspect", "--json", str(deep)],
                       capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode in (0, 2), (p.returncode, p.stderr[-2000:])
    assert "Traceback" not in p.stderr + p.stdout, p.stderr[-2000:]
    if p.returncode == 2:
        first = p.stderr.splitlines()[0]
        assert first.startswith("error: ") and str(deep) in first, first


def test_entry_point_catches_what_escapes_a_command(monkeypatch, capsys) -> None:
    """An exception outside any command (start-up, a parameter callback) is one line too."""
    import weightprint.cli as cli

    def boom(*_a, **_k):
        raise TypeError("unexpected keyword argument")

    monkeypatch.setattr(cli, "app", boom)
    monkeypatch.delenv("WEIGHTPRINT_DEBUG", raising=False)
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines()[0].startswith("error: <unknown file>: internal error (TypeError): ")


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["convert", "a.gguf", "b", "--to", "onnx"], "`weightprint convert`: Invalid value for '--to'"),
        (["no-such-command"], "`weightprint`: No such command 'no-such-command'"),
        (["inspect"], "`weightprint inspect`: Missing argument 'path'"),
    ],
)
def test_usage_errors_are_one_error_line_and_exit_2(argv, fragment, monkeypatch, capsys):
    """Click's usage errors go through main() as `error: ...` + hint, exit 2, no box drawing."""
    from weightprint.cli import main

    monkeypatch.setattr(sys, "argv", ["weightprint", *argv])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[0].startswith("error: ") and fragment in lines[0] and not lines[0].endswith(".")
    assert lines[1].startswith("hint: ") and len(lines) == 2
    assert not any(ch in err for ch in "╭╰│")


def test_main_passes_verdict_exit_codes_through(monkeypatch, capsys):
    """`--help` exits 0 through main(); a command's own typer.Exit code is kept."""
    from weightprint.cli import main

    monkeypatch.setattr(sys, "argv", ["weightprint", "--help"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 0
    assert "Usage" in capsys.readouterr().out
