"""Acceptance of `weightprint scan` at hub scale, on real models.

A synthetic hub of 42 paths (41 distinct contents): SmolLM2 and Gemma 3 with their
dequantized, requantized, permuted, noised (fine-tune-like), pruned and vocabulary-extended
derivatives, three trained tiny models with seven derivatives each (fine-tuned, noised,
permuted, pruned, vocabulary-extended, quantized, cast to float16), six independent tiny
models, and a hard link of SmolLM2 -- laid out as a Hugging Face cache, an ollama store and a
plain tree (:func:`weightprint.testing.hub.build_hub`, files symlinked from the
derived-model cache).

H0 of every pair test: the two models were trained independently. The scan must link every
derivative to its true parent and link no independent model (at FDR 0.01), on a real local
Ray cluster with a worker killed mid-scan, and give the same graph on PostgreSQL.
"""

from __future__ import annotations

import os

import pytest

from _fixtures_postgres import postgres_url  # noqa: F401

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    from weightprint.testing.hub import build_hub

    hub = build_hub(tmp_path_factory.mktemp("hub"))
    mp = pytest.MonkeyPatch()
    for k, v in hub.env().items():
        mp.setenv(k, v)
    yield hub
    mp.undo()


@pytest.fixture(scope="module")
def ray_cluster(hub, tmp_path_factory):
    ray = pytest.importorskip("ray")
    marker = tmp_path_factory.mktemp("fault") / "killed"
    ctx = ray.init(num_cpus=2, object_store_memory=80 * 2**20, include_dashboard=False, _node_ip_address="127.0.0.1",
                   log_to_driver=False, runtime_env={"env_vars": {"WEIGHTPRINT_SCAN_KILL_ONCE": str(marker), **hub.env()}})
    yield ctx.address_info["address"], marker
    ray.shutdown()


def _targets(hub):
    return ["hf-cache", "ollama", str(hub.tree)]


def _graph(result):
    """{every name: parent's content id or None} and {child id: transform kind}."""
    by_name = {}
    for n in result.nodes:
        for name in n["names"]:
            by_name[name] = n["parent"]
    return by_name, {e["child"]: e["kind"] for e in result.edges}


@pytest.fixture(scope="module")
def ray_scan(hub, ray_cluster, tmp_path_factory):
    from weightprint.scan import scan_models

    address, marker = ray_cluster
    db = tmp_path_factory.mktemp("db") / "scan.db"
    return scan_models(_targets(hub), db, ray_address=address), db, marker


def _check_truth(hub, result):
    ids = {name: n["id"] for n in result.nodes for name in n["names"]}
    assert set(ids) == {e.name for e in hub.entries}
    wrong = []
    for e in hub.entries:
        node = next(n for n in result.nodes if e.name in n["names"])
        if e.recipe == "copy":  # the hard link shares the original's node
            assert node["id"] == ids[hub.entries[0].name]
            continue
        want = ids[e.parent] if e.parent else None
        if node["parent"] != want:
            wrong.append(f"{e.name} ({e.recipe}): parent {node['parent']} != {want}")
    assert not wrong, wrong


def test_ray_scan_recovers_every_parent_despite_a_killed_worker(hub, ray_scan):
    import sqlite3

    result, db, marker = ray_scan
    assert marker.exists(), "the fault was not injected"
    assert result.executor.startswith("ray:")
    assert len(hub.entries) >= 40 and len(result.files) == len(hub.entries)
    assert result.counts.get("error") is None
    _check_truth(hub, result)
    independents = {n["id"] for n in result.nodes if any(e.recipe == "independent" and e.name in n["names"] for e in hub.entries)}
    assert len(independents) == 6
    assert all(n["family"] is None for n in result.nodes if n["id"] in independents)
    assert not [r for r in result.related if {r["a"], r["b"]} & {e.name for e in hub.entries if e.recipe == "independent"}]
    kinds = " | ".join(e["kind"] for e in result.edges)
    for word in ("dequantized", "requantized", "quantized (8-bit grid)", "cast to float16", "hidden units permuted",
                 "pruned", "vocabulary changed", "weights changed"):
        assert word in kinds, word
    # sub-quadratic pre-filter: only same-geometry, shared-tokenizer pairs were tested
    assert result.n_tested < len(result.nodes) * (len(result.nodes) - 1) // 2
    with sqlite3.connect(db) as c:
        files = c.execute("select path, status from wp_scan_files").fetchall()
        n_fps = c.execute("select count(*) from wp_scan_fingerprints").fetchone()[0]
    assert len(files) == len({p for p, _ in files}) == len(hub.entries) and {s for _, s in files} == {"ok"}
    assert n_fps == len(hub.entries) - 1  # the hard link is one content


def test_rerun_recomputes_nothing(hub, ray_scan, ray_cluster):
    from weightprint.scan import scan_models

    result, db, _ = ray_scan
    again = scan_models(_targets(hub), db, ray_address=ray_cluster[0])
    assert again.counts == {"cached": len(hub.entries)}
    assert _graph(again) == _graph(result)


def test_postgres_scan_gives_the_same_graph(hub, ray_scan, postgres_url):  # noqa: F811
    from sqlalchemy import create_engine, text

    from weightprint.scan import scan_models

    result, _, _ = ray_scan
    pg = scan_models(_targets(hub), postgres_url, workers=2)
    assert pg.db_url.startswith("postgresql")
    assert pg.counts == {"computed": len(hub.entries) - 1, "deduplicated": 1}
    assert _graph(pg) == _graph(result)
    with create_engine(postgres_url).connect() as c:
        assert c.execute(text("select count(*), count(distinct path) from wp_scan_files")).one() == (len(hub.entries),) * 2
