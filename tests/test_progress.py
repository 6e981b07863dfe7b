"""Progress: one callback type; log lines (with elapsed time) when stderr is not a terminal, a bar when it is."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from weightprint.progress import DETAIL_SEP, ProgressLog, substep


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _log(steps: bool, interval: float = 5.0) -> tuple[ProgressLog, list[str], FakeClock]:
    lines: list[str] = []
    clock = FakeClock()
    return ProgressLog("demo", lines.append, interval=interval, steps=steps, clock=clock), lines, clock


def test_one_line_per_step_with_elapsed_time() -> None:
    log, lines, clock = _log(steps=True)
    for i, what in enumerate(["original: SmolLM2 -> F16", "issue Q4_K_M copy to globex", "trace the leak"], 1):
        clock.t += 12.3
        log(i, 3, what)
    log.close()
    assert lines == [
        "[12.3s] demo: original: SmolLM2 -> F16 (1/3)",
        "[24.6s] demo: issue Q4_K_M copy to globex (2/3)",
        "[36.9s] demo: trace the leak (3/3)",
        "[36.9s] demo: done",
    ]


def test_per_tensor_calls_inside_a_step_are_rate_limited() -> None:
    log, lines, clock = _log(steps=True, interval=5.0)
    log(3, 12, "issue Q4_K_M copy to globex")
    inner = substep(log, 3, 12, "issue Q4_K_M copy to globex")
    for k in range(1, 273):  # 272 tensors, 0.1 s each: 27.2 s in the step
        clock.t = 100.0 + k * 0.1
        inner(k, 272, f"blk.{k}.weight")
    log(4, 12, "trace the leak")
    # the step line, one line per 5 s of tensors (5 of them in 27.2 s), the next step
    assert len(lines) == 1 + 5 + 1, lines
    assert lines[0] == "[0.0s] demo: issue Q4_K_M copy to globex (3/12)"
    assert re.fullmatch(r"\[5\.0s\] demo: issue Q4_K_M copy to globex \(3/12\) · blk\.50\.weight 50/272", lines[1]), lines[1]
    assert lines[-1] == "[27.2s] demo: trace the leak (4/12)"


def test_close_writes_the_held_back_last_call() -> None:
    log, lines, clock = _log(steps=False)
    for k in range(1, 21):
        clock.t += 0.01
        log(k, 20, f"t{k}")
    log.close(done=False)
    assert lines == ["[0.0s] demo (1/20) · t1", "[0.2s] demo (20/20) · t20"]
    log.close()
    assert lines[-1] == "[0.2s] demo: done"


def test_detail_only_log_changes_no_step_per_description() -> None:
    """Without ``steps`` a new description (a tensor name) is a detail, not a new line each time."""
    log, lines, clock = _log(steps=False, interval=2.0)
    for k in range(100):
        clock.t += 0.05
        log(k + 1, 100, f"tensor {k}")
    assert len(lines) == 3  # at 0 s, 2 s and 4 s of the 5 s


def test_substep_keeps_the_outer_position() -> None:
    seen: list[tuple[int, int, str]] = []
    inner = substep(lambda d, t, s: seen.append((d, t, s)), 2, 9, "lineage")
    inner(1, 3, "fingerprint a.gguf")
    assert seen == [(2, 9, f"lineage{DETAIL_SEP}fingerprint a.gguf 1/3")]
    substep(None, 1, 1, "x")(1, 1, "y")  # no callback: nothing happens, nothing fails


def _cli_progress(monkeypatch: pytest.MonkeyPatch, *, terminal: bool, env: dict[str, str]) -> str:
    """Run progress_bar through a few calls with stderr a terminal or not; return what stderr got."""
    from weightprint.cli import _common

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=terminal, width=100)
    monkeypatch.setattr(_common, "err_console", console)
    monkeypatch.setattr(_common, "console", Console(file=io.StringIO(), force_terminal=terminal))
    monkeypatch.setattr(_common.sys, "stderr", buf)
    with _common.progress_bar("demo", steps=True) as progress:
        for i in range(1, 4):
            progress(i, 3, f"step {i}")
    return buf.getvalue()


def test_cli_progress_stdout_piped_is_log_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    """`weightprint demo | cat`: stderr is still the terminal, but the run is being recorded."""
    from weightprint.cli import _common

    monkeypatch.delenv("WEIGHTPRINT_QUIET", raising=False)
    buf = io.StringIO()
    monkeypatch.setattr(_common, "err_console", Console(file=buf, force_terminal=True))
    monkeypatch.setattr(_common, "console", Console(file=io.StringIO(), force_terminal=False))
    monkeypatch.setattr(_common.sys, "stderr", buf)
    with _common.progress_bar("demo", steps=True) as progress:
        progress(1, 2, "step 1")
    assert re.fullmatch(r"\[\d+\.\ds\] demo: step 1 \(1/2\)\n\[\d+\.\ds\] demo: done\n", buf.getvalue())


def test_cli_progress_piped_is_log_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WEIGHTPRINT_QUIET", raising=False)
    out = _cli_progress(monkeypatch, terminal=False, env={})
    lines = out.splitlines()
    assert [re.sub(r"^\[\d+\.\ds\] ", "", ln) for ln in lines] == [
        "demo: step 1 (1/3)", "demo: step 2 (2/3)", "demo: step 3 (3/3)", "demo: done"]
    assert "\x1b" not in out


def test_cli_progress_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _cli_progress(monkeypatch, terminal=False, env={"WEIGHTPRINT_QUIET": "1"}) == ""
    assert _cli_progress(monkeypatch, terminal=True, env={"WEIGHTPRINT_QUIET": "1"}) == ""


def test_cli_progress_terminal_bar_respects_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WEIGHTPRINT_QUIET", raising=False)
    monkeypatch.delenv("NO_COLOR", raising=False)
    coloured = _cli_progress(monkeypatch, terminal=True, env={})
    assert "demo step" in coloured and re.search(r"\x1b\[[0-9;]*3[0-9]m", coloured)  # a bar, in colour
    plain = _cli_progress(monkeypatch, terminal=True, env={"NO_COLOR": "1"})
    assert "demo step" in plain and not re.search(r"\x1b\[[0-9;]*3[0-9]m", plain)


def test_heartbeat_repeats_a_silent_step() -> None:
    log, lines, clock = _log(steps=True)
    log(9, 14, "leak: fine-tune 50 steps")
    clock.t += 10
    log.heartbeat(30.0)
    assert len(lines) == 1  # not silent long enough
    clock.t += 25
    log.heartbeat(30.0)
    assert lines[-1] == "[35.0s] demo: leak: fine-tune 50 steps: still running"
    log.heartbeat(30.0)
    assert len(lines) == 2  # the heartbeat itself resets the silence


def test_cli_heartbeat_thread_writes_during_a_silent_step(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from weightprint.cli import _common

    monkeypatch.delenv("WEIGHTPRINT_QUIET", raising=False)
    monkeypatch.setattr(_common, "PROGRESS_HEARTBEAT", 0.2)
    buf = io.StringIO()
    monkeypatch.setattr(_common, "err_console", Console(file=buf, force_terminal=False))
    monkeypatch.setattr(_common.sys, "stderr", buf)
    with _common.progress_bar("demo", steps=True) as progress:
        progress(1, 1, "fine-tune")
        time.sleep(0.6)
    lines = buf.getvalue().splitlines()
    assert lines[0].endswith("demo: fine-tune (1/1)") and lines[-1].endswith("demo: done")
    assert any(ln.endswith("demo: fine-tune: still running") for ln in lines[1:-1]), lines
