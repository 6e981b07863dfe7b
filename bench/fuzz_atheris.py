"""Coverage-guided fuzzing of the model readers with atheris (libFuzzer for Python).

Targets (``--target``):

- ``gguf``: the input is a GGUF file;
- ``safetensors``: the input is a ``.safetensors`` file;
- ``hfdir``: the input is a small archive of a Hugging Face directory (``config.json``,
  ``model.safetensors`` or an index plus shards, ``tokenizer.json``, ``tokenizer_config.json``):
  repeated ``name index (1 byte) | length (u32 LE) | bytes`` records.

Each input is written under ``/dev/shm`` and opened with ``open_model``; every tensor is read, and
the geometry, tokenizer, chat template and config are built, then ``inspect_model`` runs. A
:class:`~weightprint.errors.WeightprintError` is the expected outcome for a bad input; any other
exception is a *finding*: its type, message, the last frame in weightprint and the input are
saved, and fuzzing goes on (libFuzzer itself stops only on a hang or a memory blow-up, which are
findings too: ``-timeout`` and ``-rss_limit_mb``).

Seeds come from real files: the metadata of the SmolLM2 and Gemma 3 GGUFs (vocabularies trimmed
to 64 tokens so that inputs stay small, hyperparameters shrunk to a 1-layer model with tiny
tensors), the HF directory and safetensors written from SmolLM2 by ``convert`` (tensors trimmed
the same way), and the valid cases of the crafted corpus (``tests/_crafted.py``).

Usage::

    .venv/bin/python bench/fuzz_atheris.py --target gguf --seconds 900 -- -rss_limit_mb=2048 -timeout=10

Writes ``bench/results/fuzz_atheris_<target>.json``: executions, wall time, executions per second,
coverage features seen by libFuzzer are in its own log; findings with their inputs under
``bench/results/fuzz_findings/``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))

import atheris  # noqa: E402

from _crafted import HF_NAMES, pack_dir, unpack_dir  # noqa: E402

with atheris.instrument_imports(include=["weightprint"]):
    import weightprint.inspect_model  # noqa: F401
    from weightprint.errors import WeightprintError
    from weightprint.inspect_model import inspect_model
    from weightprint.io import open_model
    from weightprint.io import gguf_file, hf, hf_config, geometry, limits, safetensors_file, values  # noqa: F401
    from weightprint.io import tokenizer as _tokenizer  # noqa: F401

MAX_TENSOR_ELEMENTS = 1 << 20  # reading a tensor of a crafted file is bounded by the file size anyway


# --------------------------------------------------------------------------- seeds


def _trim_real_gguf(src: Path, out: Path) -> None:
    """A small GGUF with the real metadata of ``src`` (vocabulary arrays cut to 64, hyperparameters
    shrunk to 1 layer) and tiny F32 tensors of the same architecture."""
    import numpy as np
    from gguf import GGUFValueType as T

    from _crafted import base_tensors
    from weightprint.io.gguf_file import GGUFModel, copy_metadata_for_write
    from weightprint.io.gguf_writer import TensorSpec, write_gguf
    from weightprint.constants import QType

    with GGUFModel(src) as m:
        meta, types = copy_metadata_for_write(m)
        arch = m.architecture
        meta = {k: (v.tolist()[:64] if isinstance(v, gguf_file.StringArray) else (v[:64] if hasattr(v, "__len__") and not isinstance(v, str) and k.startswith("tokenizer.ggml.") else v))
                for k, v in meta.items()}
    for k in ("bos_token_id", "eos_token_id", "padding_token_id", "unknown_token_id", "eot_token_id", "eom_token_id"):
        if f"tokenizer.ggml.{k}" in meta:
            meta[f"tokenizer.ggml.{k}"] = 1
    meta.update({f"{arch}.block_count": 1, f"{arch}.embedding_length": 8, f"{arch}.attention.head_count": 2,
                 f"{arch}.attention.head_count_kv": 1, f"{arch}.feed_forward_length": 16, f"{arch}.context_length": 64})
    if f"{arch}.attention.key_length" in meta:
        meta[f"{arch}.attention.key_length"] = 4
        meta[f"{arch}.attention.value_length"] = 4
    meta["general.file_type"] = 0
    types["general.file_type"] = T.UINT32
    specs = [TensorSpec(n, tuple(shape if n != "token_embd.weight" else (64, 8)), QType.F32) for n, shape in base_tensors(arch)]
    rng = np.random.default_rng(0)
    write_gguf(out, metadata=meta, metadata_types=types, tensors=specs,
               data=lambda s: (rng.standard_normal(s.shape) * 0.1).astype(np.float32))


def build_seeds(target: str, seed_dir: Path) -> None:
    from _crafted import build_corpus

    seed_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="wp-fuzz-seeds-"))
    corpus = build_corpus(work / "c")
    real: list[Path] = []
    try:
        from weightprint.testing.models import gemma3_path, smollm2_path

        for i, get in enumerate((smollm2_path, gemma3_path)):
            try:
                out = work / f"real{i}.gguf"
                _trim_real_gguf(Path(get()), out)
                real.append(out)
            except Exception as e:  # a model missing on this machine: fewer seeds, not a failure
                print(f"seed from {get.__name__} skipped: {type(e).__name__}: {e}", file=sys.stderr)
    except ImportError:
        pass
    n = 0
    if target == "gguf":
        for p in real + [c.path for c in corpus if c.path.suffix == ".gguf" and c.path.is_file() and c.expect == "ok"]:
            (seed_dir / f"seed{n}").write_bytes(p.read_bytes())
            n += 1
    elif target == "safetensors":
        from weightprint.convert import convert

        for i, p in enumerate(real):
            out = work / f"realhf{i}"
            convert(p, out, to="hf")
            (seed_dir / f"seed{n}").write_bytes((out / "model.safetensors").read_bytes())
            n += 1
        for c in corpus:
            if c.path.suffix == ".safetensors" and c.expect in ("ok", "any") and c.path.is_file() and c.path.stat().st_size < 1 << 16:
                (seed_dir / f"seed{n}").write_bytes(c.path.read_bytes())
                n += 1
    else:
        from weightprint.convert import convert

        dirs = []
        for i, p in enumerate(real):
            out = work / f"realhf{i}"
            convert(p, out, to="hf")
            dirs.append(out)
        dirs += [c.path for c in corpus if c.path.is_dir() and c.expect == "ok"]
        for d in dirs:
            files = {name: (d / name).read_bytes() for name in HF_NAMES if (d / name).is_file()}
            (seed_dir / f"seed{n}").write_bytes(pack_dir(files))
            n += 1
    shutil.rmtree(work, ignore_errors=True)
    print(f"{n} seeds for {target} in {seed_dir}", file=sys.stderr)


# --------------------------------------------------------------------------- the target


class Harness:
    def __init__(self, target: str, results: Path, findings_dir: Path) -> None:
        self.target = target
        self.results = results
        self.findings_dir = findings_dir
        self.work = Path(tempfile.mkdtemp(prefix=f"wp-fuzz-{target}-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
        self.execs = 0
        self.expected_errors = 0
        self.accepted = 0
        self.findings: dict[str, dict] = {}
        self.t0 = time.time()
        self.last_write = 0.0

    def exercise(self, path: Path) -> None:
        with open_model(path) as model:
            infos = model.tensor_infos()
            for info in infos[:64]:
                if info.n_elements <= MAX_TENSOR_ELEMENTS:
                    model.tensor(info.name)
            _ = model.geometry
            _ = model.tokenizer
            _ = model.chat_template
            _ = model.config
        inspect_model(path)

    def __call__(self, data: bytes) -> None:
        self.execs += 1
        if self.target == "hfdir":
            path = self.work / "d"
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir()
            unpack_dir(data, path)
        else:
            path = self.work / ("x.gguf" if self.target == "gguf" else "x.safetensors")
            path.write_bytes(data)
        try:
            self.exercise(path)
            self.accepted += 1
        except WeightprintError as e:
            self.expected_errors += 1
            if "\n" in str(e):
                self.record(data, e, "multi-line error message")
        except Exception as e:  # noqa: BLE001 - every other exception is a finding
            self.record(data, e, "")
        if time.time() - self.last_write > 10:
            self.write()

    def record(self, data: bytes, e: BaseException, why: str) -> None:
        frames = [f for f in traceback.extract_tb(e.__traceback__) if "weightprint" in f.filename]
        where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
        key = f"{type(e).__name__} at {where}{' ' + why if why else ''}"
        item = self.findings.setdefault(key, {"count": 0, "message": str(e)[:300], "input": None})
        item["count"] += 1
        if item["input"] is None:
            self.findings_dir.mkdir(parents=True, exist_ok=True)
            name = f"{self.target}-{hashlib.sha256(data).hexdigest()[:16]}"
            (self.findings_dir / name).write_bytes(data)
            item["input"] = str((self.findings_dir / name).relative_to(ROOT))
            print(f"FINDING {key}: {str(e)[:200]}", file=sys.stderr)

    def write(self) -> None:
        self.last_write = time.time()
        elapsed = self.last_write - self.t0
        report = {
            "target": self.target,
            "executions": self.execs,
            "seconds": round(elapsed, 1),
            "executions_per_second": round(self.execs / elapsed, 1) if elapsed else None,
            "accepted_inputs": self.accepted,
            "refused_with_weightprint_error": self.expected_errors,
            "findings": self.findings,
            "atheris": atheris.__version__ if hasattr(atheris, "__version__") else "installed",
            "note": "findings = exceptions other than WeightprintError (or multi-line messages); each one input saved",
        }
        self.results.write_text(json.dumps(report, indent=2) + "\n")


def merge_log(target: str, log: Path, suffix: str = "") -> None:
    """Put libFuzzer's final statistics (the authoritative execution count) from ``log`` into the results."""
    results = HERE / "results" / f"fuzz_atheris_{target}{suffix}.json"
    report = json.loads(results.read_text())
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("stat::"):
            k, _, v = line.removeprefix("stat::").partition(":")
            report.setdefault("libfuzzer", {})[k.strip()] = int(v.strip()) if v.strip().isdigit() else v.strip()
        elif " DONE " in line or line.startswith("#") and "cov:" in line:
            report.setdefault("libfuzzer", {})["last_status"] = line.strip()
        elif line.startswith("==") and "ERROR: libFuzzer" in line:
            report.setdefault("libfuzzer", {})["stopped_by"] = line.strip()
    if "libfuzzer" in report and "number_of_executed_units" in report["libfuzzer"]:
        report["executions"] = report["libfuzzer"]["number_of_executed_units"]
    results.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("target", "executions", "findings")}, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", choices=["gguf", "safetensors", "hfdir"], required=True)
    ap.add_argument("--seconds", type=int, default=600)
    ap.add_argument("--merge-log", type=Path, help="only merge libFuzzer's final stats from this log into the results")
    ap.add_argument("--suffix", default="", help="results file fuzz_atheris_<target><suffix>.json (keep several runs)")
    ap.add_argument("libfuzzer", nargs="*", help="extra libFuzzer flags after --")
    args = ap.parse_args()
    if args.merge_log:
        merge_log(args.target, args.merge_log, args.suffix)
        return
    results_dir = HERE / "results"
    seed_dir = Path(tempfile.mkdtemp(prefix=f"wp-fuzz-corpus-{args.target}-"))
    build_seeds(args.target, seed_dir)
    harness = Harness(args.target, results_dir / f"fuzz_atheris_{args.target}{args.suffix}.json", results_dir / "fuzz_findings")
    import atexit

    atexit.register(harness.write)
    flags = [sys.argv[0], str(seed_dir), f"-max_total_time={args.seconds}", "-max_len=262144", "-rss_limit_mb=2048",
             "-timeout=20", "-print_final_stats=1", *args.libfuzzer]
    atheris.Setup(flags, harness)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
