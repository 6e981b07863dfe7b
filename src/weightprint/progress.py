"""Progress reporting without printing: library functions take an optional callback.

``progress(done, total, description)`` is called as work advances (units are the caller's:
tensors or bytes). The CLI turns it into a rich progress bar; the library never prints.
"""

from __future__ import annotations

from typing import Callable

ProgressCallback = Callable[[int, int, str], None]


def no_progress(done: int, total: int, description: str) -> None:  # noqa: ARG001
    """The default callback: do nothing."""
