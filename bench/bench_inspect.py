"""Inspect benchmark: open a GGUF and read all metadata + tensor infos, ours vs gguf-py.

For SmolLM2-135M (49,152-token vocabulary) and Gemma 3 270M (262,144 tokens), times

- ``ours_open``: ``GGUFModel(path)`` (header parsed; string arrays indexed, not decoded),
- ``ours_all``: open + every metadata value materialised (string arrays decoded to ``list[str]``)
  + ``tensor_infos()`` + tokenizer + config,
- ``gguf_py``: ``gguf.GGUFReader(path)`` + every field's ``contents()`` + its tensor list,

on a warm page cache (best of ``--repeat`` runs; gguf-py best of ``--repeat-gguf``). Prints the
ratios and writes ``bench/results/inspect.json``. Target: Gemma ``ours_all`` < 0.5 s.

    python bench/bench_inspect.py [--repeat 5] [--repeat-gguf 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def _best(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def ours_open(path: Path) -> None:
    from weightprint.io import GGUFModel

    GGUFModel(path).close()


def ours_all(path: Path) -> int:
    from weightprint.io import GGUFModel

    with GGUFModel(path) as model:
        n = 0
        for value in model.metadata.values():
            if hasattr(value, "tolist"):
                value = value.tolist()
            n += len(value) if isinstance(value, list) else 1
        n += len(model.tensor_infos())
        _ = model.tokenizer, model.config, model.chat_template
        return n


def gguf_py(path: Path) -> int:
    from gguf import GGUFReader

    reader = GGUFReader(path)
    n = 0
    for field in reader.fields.values():
        value = field.contents()
        n += len(value) if isinstance(value, list) else 1
    n += len(reader.tensors)
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--repeat-gguf", type=int, default=2)
    args = parser.parse_args()

    from weightprint.testing.models import gemma3_path, smollm2_path

    import os

    results = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, Python {platform.python_version()}",
        "load_average_1min": os.getloadavg()[0],  # other work on the machine slows both readers
        "models": {},
    }
    for label, path in (("smollm2", smollm2_path()), ("gemma3", gemma3_path())):
        path.read_bytes()  # warm the page cache for both readers alike
        row = {
            "file": path.name,
            "ours_open_s": _best(lambda: ours_open(path), args.repeat),
            "ours_all_s": _best(lambda: ours_all(path), args.repeat),
            "gguf_py_s": _best(lambda: gguf_py(path), args.repeat_gguf),
        }
        row["speedup_open"] = row["gguf_py_s"] / row["ours_open_s"]
        row["speedup_all"] = row["gguf_py_s"] / row["ours_all_s"]
        results["models"][label] = row
        print(
            f"{label:8s} ours open {row['ours_open_s'] * 1e3:7.1f} ms   ours all {row['ours_all_s'] * 1e3:7.1f} ms   "
            f"gguf-py {row['gguf_py_s']:6.2f} s   speed-up x{row['speedup_open']:.0f} (open), "
            f"x{row['speedup_all']:.0f} (all)"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "inspect.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
