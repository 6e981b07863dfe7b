"""Whole-model commands against their references and against the machine's own floor, in one run.

Run: ``python bench/bench_e2e.py [--repeats 2] [--skip-hf] [--skip-quant]``. Writes
``bench/results/e2e.json``.

1. Floor, measured here: page-cache read and write bandwidth (a warm read of the Gemma 3 GGUF;
   a buffer written to a file in the output directory and unlinked) and a numpy copy. The
   floor of ``--to hf`` is ``source bytes / read bandwidth + output bytes / write bandwidth``.
2. ``convert gemma3.gguf out --to hf --dtype float16`` (``weightprint.convert.convert``) against
   gguf-py (``GGUFReader`` + ``gguf.quants.dequantize`` per tensor + ``safetensors.numpy.save_file``
   of float16 tensors) and against transformers' own GGUF loader
   (``AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)`` + ``save_pretrained``; needs
   ``accelerate``, skipped with a message without it).
3. ``convert gemma3-f16.gguf out.gguf --type Q8_0 / Q4_K_M / Q6_K`` at 1 and 2 threads against
   llama.cpp's ``llama_model_quantize`` with ``nthread`` 1 and 2; the tensors must be
   byte-identical.

Every comparison runs in-process (imports done before timing), ours and the reference
alternately; times are the minimum over repeats. The machine is shared: the load average is
recorded before and after, and only ratios from the same run mean anything.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
QUANT_TYPES = ("Q8_0", "Q4_K_M", "Q6_K")
THREADS = (1, 2)


_CPU: list[float] = []  # CPU seconds (all threads of this process) of each _time() call, in order


def _time(fn) -> float:
    """Wall seconds of ``fn()``; its CPU seconds are appended to ``_CPU`` (under heavy load the
    CPU time says what the work costs, the wall time what a user waits)."""
    gc.collect()
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
    _CPU.append(time.process_time() - c0)
    return wall


def _drop(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


# --------------------------------------------------------------------------- floor


def floor(source: Path, work: Path, repeats: int) -> dict:
    size = source.stat().st_size
    buf = bytearray(size)

    def read() -> None:
        with open(source, "rb", buffering=0) as f:
            view = memoryview(buf)
            got = 0
            while got < size:
                n = f.readinto(view[got:])
                if not n:
                    break
                got += n

    read()  # warm the page cache
    t_read = min(_time(read) for _ in range(repeats + 1))
    target = work / "floor.bin"

    def write() -> None:
        with open(target, "wb", buffering=0) as f:
            f.write(buf)
        target.unlink()

    t_write = min(_time(write) for _ in range(repeats + 1))
    a = np.frombuffer(buf, dtype=np.uint8)
    b = np.empty_like(a)
    t_copy = min(_time(lambda: np.copyto(b, a)) for _ in range(repeats + 1))
    out = {
        "bytes": size,
        "read_gb_s": size / t_read / 1e9,
        "write_gb_s": size / t_write / 1e9,
        "numpy_copy_gb_s": size / t_copy / 1e9,
    }
    print(f"floor: page-cache read {out['read_gb_s']:.2f} GB/s, write {out['write_gb_s']:.2f} GB/s,"
          f" numpy copy {out['numpy_copy_gb_s']:.2f} GB/s ({size / 1e6:.0f} MB)", flush=True)
    return out


# --------------------------------------------------------------------------- to hf


def ours_to_hf(source: Path, out: Path) -> None:
    from weightprint.convert import convert

    convert(source, out, to="hf", dtype="float16")


def gguf_py_to_hf(source: Path, out: Path) -> None:
    """The plain gguf-py pipeline: read, dequantize each tensor, save float16 safetensors."""
    import gguf
    from safetensors.numpy import save_file

    reader = gguf.GGUFReader(str(source))
    tensors = {}
    for t in reader.tensors:
        values = gguf.quants.dequantize(t.data, t.tensor_type)
        tensors[t.name] = np.ascontiguousarray(values.reshape(tuple(reversed([int(d) for d in t.shape]))), dtype=np.float16)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})


def transformers_to_hf(source: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    kwargs = {}
    try:  # transformers 5 keeps GGUF weights packed (not savable) unless asked to dequantize
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(gguf_file=source.name, dequantize=True)
    except ImportError:
        pass
    model = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name, dtype=torch.float16, **kwargs)
    model.save_pretrained(str(out))


def to_hf(source: Path, work: Path, repeats: int, fl: dict) -> dict:
    runs: dict[str, list[float]] = {"weightprint": [], "gguf_py": [], "transformers": []}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    skipped = {}
    try:
        import accelerate  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        skipped["transformers"] = f"transformers' GGUF loader needs accelerate and torch: {e}"
        print(f"skip transformers: {skipped['transformers']}", flush=True)
    import gguf  # noqa: F401
    import safetensors  # noqa: F401

    if "transformers" not in skipped:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()

    import weightprint.convert  # noqa: F401

    fns = {"weightprint": ours_to_hf, "gguf_py": gguf_py_to_hf, "transformers": transformers_to_hf}
    out_bytes = 0
    for r in range(repeats):
        for name, fn in fns.items():
            if name in skipped:
                continue
            out = work / f"hf-{name}"
            _drop(out)
            runs[name].append(_time(lambda: fn(source, out)))
            cpu[name].append(_CPU[-1])
            if name == "weightprint":
                out_bytes = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
            _drop(out)
            print(f"  to hf, {name}, repeat {r + 1}: {runs[name][-1]:.2f} s ({cpu[name][-1]:.2f} s CPU)", flush=True)
    best = {k: min(v) for k, v in runs.items() if v}
    floor_s = source.stat().st_size / (fl["read_gb_s"] * 1e9) + out_bytes / (fl["write_gb_s"] * 1e9)
    res = {
        "seconds": best,
        "all_seconds": runs,
        "cpu_seconds": {k: min(v) for k, v in cpu.items() if v},
        "all_cpu_seconds": cpu,
        "skipped": skipped,
        "output_bytes": out_bytes,
        "io_floor_seconds": floor_s,
        "times_over_floor": best["weightprint"] / floor_s,
        "speedup_vs_gguf_py": best["gguf_py"] / best["weightprint"],
    }
    if "transformers" in best:
        res["speedup_vs_transformers"] = best["transformers"] / best["weightprint"]
    print(f"to hf: weightprint {best['weightprint']:.2f} s; gguf-py {best['gguf_py']:.2f} s"
          f" ({res['speedup_vs_gguf_py']:.1f}x); transformers "
          + (f"{best['transformers']:.2f} s ({res['speedup_vs_transformers']:.1f}x)" if "transformers" in best else "skipped")
          + f"; I/O floor {floor_s:.2f} s ({res['times_over_floor']:.1f}x the floor)", flush=True)
    return res


# --------------------------------------------------------------------------- quantize


def _same_tensors(a: Path, b: Path) -> list[str]:
    from weightprint.io import open_model

    with open_model(a) as ma, open_model(b) as mb:
        names = ma.tensor_names()
        if sorted(names) != sorted(mb.tensor_names()):
            return ["<different tensor names>"]
        return [n for n in names if ma.info(n).qtype != mb.info(n).qtype
                or not np.array_equal(np.asarray(ma.raw(n)).view(np.uint8), np.asarray(mb.raw(n)).view(np.uint8))]


def quantize_all(f16: Path, work: Path, repeats: int) -> dict:
    from weightprint.constants import FileType
    from weightprint.convert import convert
    from weightprint.quant import set_num_threads
    from weightprint.testing.llama_ref import llama_quantize

    res = {}
    for ft in QUANT_TYPES:
        for threads in THREADS:
            ours_out, ref_out = work / f"ours-{ft}.gguf", work / f"ref-{ft}.gguf"
            ours, ref, ours_cpu, ref_cpu = [], [], [], []
            for _ in range(repeats):
                set_num_threads(threads)
                ours.append(_time(lambda: convert(f16, ours_out, file_type=ft)))
                ours_cpu.append(_CPU[-1])
                ref.append(_time(lambda: llama_quantize(f16, ref_out, FileType[ft], nthread=threads)))
                ref_cpu.append(_CPU[-1])
            set_num_threads(None)
            differ = _same_tensors(ours_out, ref_out)
            _drop(ours_out)
            _drop(ref_out)
            key = f"{ft}@{threads}"
            res[key] = {
                "weightprint_seconds": min(ours), "llama_cpp_seconds": min(ref),
                "ratio_ours_over_llama_cpp": min(ours) / min(ref),
                "all_weightprint": ours, "all_llama_cpp": ref,
                "weightprint_cpu_seconds": min(ours_cpu), "llama_cpp_cpu_seconds": min(ref_cpu),
                "byte_identical": not differ, "differing_tensors": differ[:10],
            }
            print(f"quantize {ft}, {threads} thread(s): weightprint {min(ours):.2f} s, llama.cpp {min(ref):.2f} s"
                  f" -> {min(ours) / min(ref):.2f}x llama.cpp's time (CPU {min(ours_cpu):.2f} s vs {min(ref_cpu):.2f} s);"
                  f" byte-identical: {not differ}", flush=True)
    return res


def fresh_process(source: Path, work: Path, repeats: int, warm_seconds: float | None) -> dict:
    """``weightprint convert --to hf`` as a user runs it: a new interpreter each time, with the
    compiled kernels cached on disk (numba's cache: no JIT), and once with an empty kernel cache
    (everything compiled on the spot); ``weightprint --help`` beside it (start-up alone)."""
    import subprocess

    exe = Path(sys.executable).with_name("weightprint")
    cmd = [str(exe), "convert", str(source), str(work / "hf-fresh"), "--to", "hf", "--dtype", "float16"]

    def run(env: dict | None = None, args: list[str] | None = None) -> float:
        _drop(work / "hf-fresh")
        t0 = time.perf_counter()
        subprocess.run(args or cmd, check=True, capture_output=True, env=env)
        return time.perf_counter() - t0

    run()  # the kernels are in the on-disk cache from here on
    fresh = min(run() for _ in range(repeats))
    help_s = min(run(args=[str(exe), "--help"]) for _ in range(repeats))
    with tempfile.TemporaryDirectory(prefix="wp-numba-") as empty:
        cold = run(env={**os.environ, "NUMBA_CACHE_DIR": empty})
    _drop(work / "hf-fresh")
    out = {"fresh_process_seconds": fresh, "help_seconds": help_s, "empty_kernel_cache_seconds": cold,
           "jit_seconds_saved_by_the_cache": cold - fresh}
    if warm_seconds is not None:
        out["in_process_warm_seconds"] = warm_seconds
        out["fresh_process_overhead_seconds"] = fresh - warm_seconds
    print(f"fresh process: convert --to hf {fresh:.2f} s (in-process warm {warm_seconds or float('nan'):.2f} s),"
          f" --help {help_s:.2f} s, with an empty kernel cache {cold:.2f} s", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--skip-quant", action="store_true")
    args = ap.parse_args()
    from weightprint.convert import convert
    from weightprint.testing.models import gemma3_path

    source = gemma3_path()
    result: dict = {
        "benchmark": "end-to-end convert, Gemma 3 270M",
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "platform": platform.platform(),
                    "load_before": os.getloadavg()},
        "repeats": args.repeats,
    }
    with tempfile.TemporaryDirectory(prefix="wp-e2e-", dir=os.environ.get("WEIGHTPRINT_BENCH_TMP")) as d:
        work = Path(d)
        result["floor"] = fl = floor(source, work, args.repeats)
        if not args.skip_hf:
            result["to_hf"] = to_hf(source, work, args.repeats, fl)
            result["fresh_process"] = fresh_process(source, work, args.repeats, result["to_hf"]["seconds"]["weightprint"])
        if not args.skip_quant:
            f16 = work / "gemma3-f16.gguf"
            convert(source, f16, file_type="F16")
            result["quantize"] = quantize_all(f16, work, args.repeats)
    result["machine"]["load_after"] = os.getloadavg()
    print(f"load average before {result['machine']['load_before']}, after {result['machine']['load_after']}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "e2e.json" if not (args.skip_hf or args.skip_quant) else ("e2e_quant.json" if args.skip_hf else "e2e_hf.json")
    (RESULTS / name).write_text(json.dumps(result, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
