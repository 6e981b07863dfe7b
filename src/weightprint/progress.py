"""Progress reporting without printing: library functions take an optional callback.

``progress(done, total, description)`` is called as work advances (units are the caller's:
tensors, steps or bytes). Every long-running call takes one ``progress: ProgressCallback |
None`` keyword; the library never prints. The command line turns the calls into a rich bar on
a terminal, or into log lines on stderr when it is piped (see :class:`ProgressLog`, which
decides *which* lines to write and leaves the writing to its caller).

A description may carry a detail after :data:`DETAIL_SEP` (``"issue copy to globex ·
blk.3.attn_q.weight 40/272"``): the part before it names the step, the part after it says
where inside the step the work is. :func:`substep` builds such a callback for a call made
inside one step of a longer job.
"""

from __future__ import annotations

import time
from typing import Callable

ProgressCallback = Callable[[int, int, str], None]
"""``progress(done, total, description)``: ``done`` of ``total`` units, what is being done now."""

DETAIL_SEP = " · "
"""Separates a step's name from the detail within the step in a progress description."""


def no_progress(done: int, total: int, description: str) -> None:  # noqa: ARG001
    """The default callback: do nothing."""


def substep(progress: ProgressCallback | None, done: int, total: int, step: str) -> ProgressCallback:
    """A callback for a call made inside step ``done`` of ``total`` of a longer job.

    The inner call's ``(d, t, what)`` reaches ``progress`` as ``(done, total,
    f"{step} · {what} {d}/{t}")``: the outer position stays, the detail says where the inner
    work is.

    Examples
    --------
    >>> seen = []
    >>> inner = substep(lambda d, t, s: seen.append((d, t, s)), 3, 12, "issue copy to globex")
    >>> inner(40, 272, "blk.3.attn_q.weight")
    >>> seen
    [(3, 12, 'issue copy to globex · blk.3.attn_q.weight 40/272')]
    """
    outer = progress or no_progress

    def inner(d: int, t: int, what: str) -> None:
        outer(done, total, f"{step}{DETAIL_SEP}{what} {d}/{t}".rstrip())

    return inner


class ProgressLog:
    """Progress calls as log lines for a non-terminal stream (a pipe, a CI log).

    One line per step, with the time since the start: ``[12.3s] demo: issue Q4_K_M copy to
    globex (3/12)``. A line is written when the step (the description before
    :data:`DETAIL_SEP`) changes, and otherwise at most once every ``interval`` seconds, so
    per-tensor callbacks show that work goes on without flooding the log.

    Parameters
    ----------
    label : str
        What the whole job is (``"demo"``, ``"converting"``); starts every line.
    emit : callable
        Called with each line (no newline); the caller decides where it goes.
    interval : float, *optional*, defaults to 5.0
        Seconds between two lines of the same step.
    steps : bool, *optional*, defaults to False
        True: each description names a step (a new description = a new line). False: the
        description is a detail of one step (a tensor name), written at most every ``interval``.
    clock : callable, *optional*
        Seconds as a float (``time.monotonic``); tests pass a fake one.
    """

    def __init__(
        self,
        label: str,
        emit: Callable[[str], None],
        *,
        interval: float = 5.0,
        steps: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.emit = emit
        self.interval = float(interval)
        self.steps = steps
        self.clock = clock
        self.start = clock()
        self._last_step: str | None = None
        self._last_time = -float("inf")
        self._last_line: str | None = None
        self._pending: str | None = None

    def line(self, done: int, total: int, description: str) -> str:
        """The log line for one call (without deciding whether to write it)."""
        step, detail = self._split(description)
        head = f"{self.label}: {step}" if step else self.label
        count = f" ({done}/{total})" if total else (f" ({done})" if done else "")
        tail = f"{DETAIL_SEP}{detail}" if detail else ""
        return f"[{self.clock() - self.start:.1f}s] {head}{count}{tail}"

    def _split(self, description: str) -> tuple[str, str]:
        if self.steps:
            step, _, detail = description.partition(DETAIL_SEP)
            return step.strip(), detail.strip()
        return "", description.strip()

    def __call__(self, done: int, total: int, description: str) -> None:
        step = self._split(description)[0]
        now = self.clock()
        text = self.line(done, total, description)
        if step != self._last_step or now - self._last_time >= self.interval:
            self._write(text, step, now)
        else:
            self._pending = text

    def _write(self, text: str, step: str, now: float) -> None:
        self.emit(text)
        self._last_step, self._last_time, self._last_line, self._pending = step, now, text, None

    def heartbeat(self, silence: float) -> None:
        """Repeat the current step (``... still running``) when nothing was written for ``silence`` seconds.

        For steps that report no inner progress (a fine-tune): a log that stays silent for
        minutes looks hung, and CI systems kill jobs that print nothing.
        """
        now = self.clock()
        if self._last_line is None or now - self._last_time < silence:
            return
        step = self._last_step or ""
        head = f"{self.label}: {step}" if step else self.label
        self._write(f"[{now - self.start:.1f}s] {head}: still running", step, now)
        self._pending = None

    def close(self, *, done: bool = True) -> None:
        """End the log: the last call's line if it was held back, then ``[t] label: done``.

        ``done=False`` (the work failed) writes the held-back line only: where it stopped.
        """
        if self._pending is not None and self._pending != self._last_line:
            self._write(self._pending, self._last_step or "", self.clock())
        if done:
            self.emit(f"[{self.clock() - self.start:.1f}s] {self.label}: done")
