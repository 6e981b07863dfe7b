"""Benchmark mark/trace on SmolLM2-135M: issue vs plain quantization, trace vs 8 recipients.

Targets (issues #3, #10): issuing a 135M Q4_K_M copy <= 1.5x the time of plain quantization; tracing a
135M leak against 8 recipients < 30 s on 2 cores. Writes ``bench/results/mark.json``.

Usage: ``python bench/bench_mark.py [--repeats N]``. The 8 issued copies come from the test
fixture cache (built once per machine by tests/_fixtures_mark.py). Timings are wall-clock
minima over repeats; the load average is recorded because the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def _timed(fn, repeats: int) -> tuple[float, list[float], object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), times, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    from _fixtures_mark import smol_issued
    from _results import write_result

    from weightprint.convert import convert
    from weightprint.mark import init_registry, issue_copy, trace_leak

    info = smol_issued()
    source = info["source"]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(dir=info["dir"]) as tmp:
        tmp = Path(tmp)
        url = f"sqlite:///{tmp / 'bench.db'}"
        key = tmp / "bench.key"
        init_registry(url, key)
        counter = {"i": 0}

        def plain():
            out = tmp / f"plain-{counter['i']}.gguf"
            counter["i"] += 1
            convert(source, out, file_type="Q4_K_M")
            out.unlink()

        def issue():
            counter["i"] += 1
            r = issue_copy(source, f"bench-{counter['i']}", "Q4_K_M", tmp / f"issued-{counter['i']}.gguf",
                           registry_url=url, key_file=key)
            Path(r.output).unlink()
            return r

        # interleave so that load changes hit both alike
        plain_times, issue_times = [], []
        for _ in range(args.repeats):
            plain_times.append(_timed(plain, 1)[0])
            issue_times.append(_timed(issue, 1)[0])

    leak = info["copies"]["recipient-3"]["output"]
    trace_leak(leak, source=source, registry_url=info["url"], key_file=info["key_file"])  # warm numba caches
    t_trace, trace_times, verdict = _timed(
        lambda: trace_leak(leak, source=source, registry_url=info["url"], key_file=info["key_file"]), args.repeats)
    result = {
        "model": "SmolLM2-135M-Instruct (F16 dequantization of the Q4_1 GGUF)",
        "file_type": "Q4_K_M",
        "plain_quantize_seconds": min(plain_times),
        "issue_seconds": min(issue_times),
        "issue_over_plain": min(issue_times) / min(plain_times),
        "issue_target": "<= 1.5x plain quantization",
        "plain_quantize_all": plain_times,
        "issue_all": issue_times,
        "trace_seconds_8_recipients": t_trace,
        "trace_all": trace_times,
        "trace_target_seconds": 30,
        "trace_accused": verdict.accused_recipient,
        "trace_log10_pvalue": verdict.accused[0].result.log10_pvalue if verdict.accused else None,
        "trace_z": verdict.accused[0].result.statistic if verdict.accused else None,
        "n_weights": verdict.n_weights,
        "cpu_count": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "machine": platform.platform(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path = write_result("mark", result)
    print(json.dumps(result, indent=2))
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
