"""Where tests record what they measured: ``bench/results/<name>.json`` (written atomically).

Set ``WEIGHTPRINT_RESULTS_DIR`` to send the numbers elsewhere (e.g. CI artifacts).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from weightprint.report import write_atomic


def results_dir() -> Path:
    return Path(os.environ.get("WEIGHTPRINT_RESULTS_DIR", Path(__file__).resolve().parents[1] / "bench" / "results"))


def write_result(name: str, payload: dict, *, merge: bool = False) -> Path:
    """Record measured numbers; with ``merge`` update the keys of an existing record."""
    target = results_dir() / f"{name}.json"
    if merge and target.exists():
        try:
            payload = {**json.loads(target.read_text()), **payload}
        except ValueError:
            pass
    write_atomic(target, json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return target
