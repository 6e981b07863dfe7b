"""`weightprint scan` on tiny models: discovery, the FDR correction, signatures, the local pool,
faults (corrupt file, a worker killed mid-scan), reruns, and the CLI.

The hub-scale acceptance test (SmolLM2, Gemma 3, Ray, PostgreSQL) is tests/test_scan_hub.py.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from weightprint.scan import benjamini_yekutieli, discover_models, scan_models
from weightprint.scan.signature import grid_bits, mantissa_bits, source_rank
from weightprint.scan.worker import KILL_ONCE_ENV

TINY = dict(n_layers=4, steps=150)


# ------------------------------------------------------------------------------ pure parts
def test_benjamini_yekutieli_matches_scipy():
    from scipy.stats import false_discovery_control

    rng = np.random.default_rng(0)
    p = np.concatenate([rng.uniform(size=40), 10.0 ** -rng.uniform(3, 30, size=10)])
    ours = 10.0 ** np.array(benjamini_yekutieli(np.log10(p).tolist()))
    np.testing.assert_allclose(ours, false_discovery_control(p, method="by"), rtol=1e-9)
    assert benjamini_yekutieli([]) == []


def test_grid_bits_tell_quantized_from_float_values():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 256)).astype(np.float32)
    assert grid_bits(x) is None and mantissa_bits(x) == 24
    blocks = x.reshape(-1, 32)
    scale = np.abs(blocks).max(axis=1, keepdims=True) / 7
    q4 = (np.round(blocks / scale).clip(-8, 7) * scale).astype(np.float32).reshape(x.shape)
    assert grid_bits(q4) == 4
    assert grid_bits(q4.astype(np.float16).astype(np.float32)) == 4  # a float16 dequantization keeps the grid
    d8 = np.abs(blocks).max(axis=1, keepdims=True) / 127
    q8_of_q4 = (np.round(q4.reshape(-1, 32) / d8) * d8).astype(np.float32)  # requantized: the step divides the gaps
    assert grid_bits(q8_of_q4) == 8
    assert mantissa_bits(x.astype(np.float16).astype(np.float32)) == 11
    # among re-encodings: float before quantized, more mantissa first, coarser grid first
    f32, f16 = {"grid_bits": None, "mantissa_bits": 24, "stored_bits": 32}, {"grid_bits": None, "mantissa_bits": 11, "stored_bits": 16}
    g4, g8 = {"grid_bits": 4, "stored_bits": 4.5}, {"grid_bits": 8, "stored_bits": 8.5}
    g4_wide = {"grid_bits": 4, "stored_bits": 16}
    assert sorted([g8, g4_wide, f16, g4, f32], key=source_rank) == [f32, f16, g4, g4_wide, g8]


# ------------------------------------------------------------------------------- tiny hub
@pytest.fixture(scope="module")
def tiny_hub(tmp_path_factory):
    """Two tiny families (root + 3 derivatives) and two independent tiny models, plus a corrupt file."""
    from weightprint.testing.derive import derived

    root = tmp_path_factory.mktemp("tinyhub")
    truth: dict[str, str | None] = {}

    def place(src: Path, rel: str, parent: str | None) -> str:
        dst = root / rel
        if src.is_dir():
            dst.mkdir(parents=True)
            for f in src.iterdir():
                if f.is_file():
                    (dst / f.name).symlink_to(f)
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(src)
        truth[str(dst)] = parent
        return str(dst)

    for k in range(2):
        t = derived("tiny_llama", None, seed=7100 + k, **TINY)
        tname = place(t, f"fam{k}/root", None)
        place(derived("permute", t, seed=k + 1), f"fam{k}/permuted", tname)
        place(derived("gguf", t, file_type="Q8_0"), f"fam{k}/q8.gguf", tname)
        place(derived("noise", t, sigma_rel=0.05, seed=k), f"fam{k}/noised", tname)
    for k in range(2):
        place(derived("tiny_llama", None, seed=7200 + k, **TINY), f"indie/m{k}", None)
    good = Path(derived("gguf", derived("tiny_llama", None, seed=7100, **TINY), file_type="Q8_0"))
    corrupt = root / "broken" / "truncated.gguf"
    corrupt.parent.mkdir()
    corrupt.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    (root / "notes.txt").write_text("not a model")
    return root, truth, corrupt


def _rows(db: Path, table: str) -> list[tuple]:
    with sqlite3.connect(db) as c:
        return c.execute(f"select * from {table}").fetchall()


def test_discover_walks_trees_and_stores(tiny_hub, tmp_path, monkeypatch):
    root, truth, corrupt = tiny_hub
    items = discover_models([root])
    assert sorted(i.path for i in items) == sorted([*truth, str(corrupt)])
    assert {i.kind for i in items if i.path.endswith("root")} == {"dir"}
    # stores: an empty HF cache and an ollama manifest without its blob -> an error item, not a crash
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "ol"))
    man = tmp_path / "ol" / "manifests" / "registry.ollama.ai" / "library" / "m" / "latest"
    man.parent.mkdir(parents=True)
    man.write_text(json.dumps({"layers": [{"mediaType": "application/vnd.ollama.image.model", "digest": "sha256:" + "c" * 64}]}))
    got = discover_models(["hf-cache", "ollama"])
    assert [(i.ref, bool(i.error)) for i in got] == [("ollama:m:latest", True)]
    assert "model blob sha256:cccccccccccc... is missing" in got[0].error


def test_local_scan_recovers_parents_skips_corrupt_and_reruns_for_free(tiny_hub, tmp_path):
    root, truth, corrupt = tiny_hub
    db = tmp_path / "scan.db"
    r = scan_models([root], db, workers=2)
    assert r.verdict == "lineage found"
    assert r.counts == {"computed": len(truth), "error": 1}
    [err] = r.errors
    assert err["path"] == str(corrupt) and err["error"].startswith(str(corrupt))
    for name, parent in truth.items():
        assert r.parent_of(name) == parent, name
    kinds = {e["child_name"].split("/", 3)[-1]: e["kind"] for e in r.edges}
    assert any("hidden units permuted" in k for k in kinds.values())
    assert any(k.startswith("quantized (8-bit grid)") for k in kinds.values())
    assert any(k.startswith("weights changed") for k in kinds.values())
    assert len(_rows(db, "wp_scan_fingerprints")) == len(truth)
    assert len(_rows(db, "wp_scan_files")) == len(truth) + 1
    # a rerun reads nothing and recomputes nothing: same graph
    again = scan_models([root], db, workers=2)
    assert again.counts == {"cached": len(truth), "error": 1}
    assert [(e["parent"], e["child"]) for e in again.edges] == [(e["parent"], e["child"]) for e in r.edges]
    # a copy under a new path is hashed, not fingerprinted again
    extra = tmp_path / "copy"
    shutil.copytree(Path(next(p for p, v in truth.items() if v is None and "fam0" in p)).resolve(), extra)
    third = scan_models([root, extra], db, workers=1)
    assert third.counts == {"cached": len(truth), "deduplicated": 1, "error": 1}
    assert len(_rows(db, "wp_scan_fingerprints")) == len(truth)


def test_local_pool_survives_a_killed_worker(tiny_hub, tmp_path, monkeypatch):
    root, truth, _ = tiny_hub
    marker = tmp_path / "killed"
    monkeypatch.setenv(KILL_ONCE_ENV, str(marker))  # the first worker to finish a fingerprint dies before its file row
    db = tmp_path / "scan.db"
    r = scan_models([root], db, workers=2)
    assert marker.exists()
    assert r.counts.get("error") == 1 and sum(r.counts.values()) == len(truth) + 1
    files = _rows(db, "wp_scan_files")
    assert len(files) == len({f[0] for f in files}) == len(truth) + 1  # no duplicate, no missing row
    assert len(_rows(db, "wp_scan_fingerprints")) == len(truth)
    for name, parent in truth.items():
        assert r.parent_of(name) == parent, name


def test_cli_scan_writes_json_and_html(tiny_hub, tmp_path):
    from weightprint.cli import app

    root, truth, corrupt = tiny_hub
    out, page = tmp_path / "graph.json", tmp_path / "graph.html"
    res = CliRunner().invoke(app, ["scan", str(root / "fam0"), str(root / "indie"), "--db", str(tmp_path / "s.db"),
                                   "--workers", "1", "--out", str(out), "--html", str(page)])
    assert res.exit_code == 1, res.output  # evidence found
    assert res.stdout.startswith("lineage found: 3 parent links in 1 families")
    assert "(p = " in res.stdout and ", q = " in res.stdout
    data = json.loads(out.read_text())
    assert {e["kind"].split(" ")[0] for e in data["edges"]} <= {"quantized", "re-encoded", "weights"}
    assert all(e["log10_qvalue"] < -2 for e in data["edges"])
    html = page.read_text()
    import xml.etree.ElementTree as ET

    svg = ET.fromstring(html[html.index("<svg"):html.index("</svg>") + 6])  # well-formed, self-contained SVG
    assert len(list(svg.iter("{http://www.w3.org/2000/svg}line"))) == 3
    assert html.count("<rect") == 6 and "<script src" not in html and "http" not in html.split("<svg", 1)[0]
    res = CliRunner().invoke(app, ["scan", str(root / "indie"), "--db", str(tmp_path / "s.db"), "--workers", "1"])
    assert res.exit_code == 0 and res.stdout.startswith("no evidence of lineage at FDR 0.01")
    res = CliRunner().invoke(app, ["scan", str(tmp_path / "nope"), "--db", str(tmp_path / "s.db")])
    assert res.exit_code == 2 and "error: " in res.stderr and "no such file or directory" in res.stderr
