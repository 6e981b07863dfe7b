"""Every crafted input through the real CLI, one process per run: exit code, time and peak RSS.

The corpus is ``tests/_crafted.py`` with the heavy amplifiers (a GGUF of a million nested empty
string arrays, 4M+1 strings, a safetensors header of 32M ``[]``). Each run is a child forked from
a parent that has imported the CLI (so a run costs milliseconds, not an interpreter start), with
``RLIMIT_AS`` = 4 GiB as under ``ulimit -v 4G``; its own peak RSS comes from ``wait4``. Commands:
``inspect --json`` and ``convert --to hf`` on every case, plus ``convert --to gguf``,
``fingerprint`` and ``lineage compare`` on the cases that ask for them and a sample of others.

Acceptance (issue 11): every run exits 0 or 2, never a traceback, each within 10 s and 300 MB.

Usage: ``.venv/bin/python bench/bench_crafted.py`` -> ``bench/results/crafted.json``.
"""

from __future__ import annotations

import io
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from _crafted import build_corpus  # noqa: E402

LIMIT_AS = 4 << 30
TIME_LIMIT_S = 10.0
RSS_LIMIT_MB = 300.0


def args_for(case, command: str, out: Path) -> list[str]:
    return {
        "inspect": ["inspect", "--json", str(case.path)],
        "convert-hf": ["convert", "--to", "hf", str(case.path), str(out / "hf")],
        "convert-gguf": ["convert", "--to", "gguf", str(case.path), str(out / "x.gguf")],
        "fingerprint": ["fingerprint", str(case.path), "--db", str(out / "fp.sqlite")],
        "compare": ["lineage", "compare", "--json", str(case.path), str(case.path)],
    }[command]


def run_forked(argv: list[str], out_dir: Path) -> dict:
    stderr_path = out_dir / "stderr.txt"
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # child
        try:
            resource.setrlimit(resource.RLIMIT_AS, (LIMIT_AS, LIMIT_AS))
            fd = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 2)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", buffering=0), write_through=True)
            sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", buffering=0), write_through=True)
            signal_alarm = __import__("signal")
            signal_alarm.alarm(60)  # a hang is killed (and shows as a signal)
            sys.argv = ["weightprint", *argv]
            from weightprint.cli import main

            main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:  # noqa: BLE001
            import traceback

            traceback.print_exc()
            code = 99
        os._exit(code)
    _, status, usage = os.wait4(pid, 0)
    dt = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    stderr = stderr_path.read_text(errors="replace")
    return {"exit": code, "seconds": round(dt, 3), "rss_mb": round(usage.ru_maxrss / 1024, 1), "stderr": stderr}


def main() -> None:
    import weightprint.cli  # noqa: F401 - imported once, in the parent: children fork from here
    import weightprint.convert  # noqa: F401
    import weightprint.inspect_model  # noqa: F401
    import weightprint.lineage.compare  # noqa: F401
    import weightprint.lineage.db  # noqa: F401

    work = Path(tempfile.mkdtemp(prefix="wp-crafted-"))
    corpus = build_corpus(work / "c", heavy=True)
    sample_extra = {c.name for c in corpus[::15]}
    runs = []
    for i, case in enumerate(corpus):
        commands = list(dict.fromkeys([*case.commands, "inspect", "convert-hf"]))
        if case.name in sample_extra or case.kind == "baseline":
            commands += ["convert-gguf", "fingerprint", "compare"]
        for command in dict.fromkeys(commands):
            out = work / f"o{i}-{command}"
            out.mkdir()
            r = run_forked(args_for(case, command, out), out)
            lines = [ln for ln in r["stderr"].splitlines() if ln.strip() and not ln.startswith("[")]
            r.update(case=case.name, kind=case.kind, command=command,
                     traceback="Traceback" in r["stderr"], internal_error="internal error" in r["stderr"],
                     first_line=(lines[0] if lines else "")[:300].replace(str(work), "<tmp>"))
            del r["stderr"]
            runs.append(r)
    bad = [r for r in runs if r["exit"] not in (0, 2) or r["traceback"] or r["internal_error"]
           or r["seconds"] > TIME_LIMIT_S or r["rss_mb"] > RSS_LIMIT_MB]
    report = {
        "cases": len(corpus),
        "runs": len(runs),
        "limits": {"RLIMIT_AS_bytes": LIMIT_AS, "seconds": TIME_LIMIT_S, "rss_mb": RSS_LIMIT_MB},
        "exit_codes": {str(c): sum(r["exit"] == c for r in runs) for c in sorted({r["exit"] for r in runs})},
        "max_seconds": max(r["seconds"] for r in runs),
        "max_rss_mb": max(r["rss_mb"] for r in runs),
        "tracebacks": sum(r["traceback"] for r in runs),
        "internal_errors": sum(r["internal_error"] for r in runs),
        "violations": bad,
        "heaviest": sorted(runs, key=lambda r: -r["rss_mb"])[:10],
        "slowest": sorted(runs, key=lambda r: -r["seconds"])[:10],
        "note": "each run forked from a parent that imported the CLI (peak RSS includes the imported libraries)",
        "runs_detail": runs,
    }
    out = HERE / "results" / "crafted.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: report[k] for k in ("cases", "runs", "exit_codes", "max_seconds", "max_rss_mb", "tracebacks",
                                               "internal_errors")}, indent=1))
    print(f"{len(bad)} violations")
    for r in bad[:30]:
        print(r)


if __name__ == "__main__":
    main()
