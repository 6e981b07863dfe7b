"""Model references resolved offline: the Hugging Face cache layout and the ollama store."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from weightprint.errors import ModelFormatError
from weightprint.io.refs import is_ref, list_hf_cache, list_ollama_store, resolve_ref

COMMIT = "0123456789abcdef0123456789abcdef01234567"
DIGEST = "a" * 64


def make_hf_snapshot(cache: Path, repo: str, files: dict[str, bytes], *, commit: str = COMMIT,
                     ref: str | None = "main") -> Path:
    """Lay out ``files`` as the hub cache does: blobs, a snapshot of symlinks, refs/<ref>."""
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    snap = repo_dir / "snapshots" / commit
    (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True, exist_ok=True)
    for i, (name, data) in enumerate(files.items()):
        blob = repo_dir / "blobs" / f"{i:040x}"
        blob.write_bytes(data)
        (snap / name).symlink_to(os.path.relpath(blob, snap))
    if ref:
        (repo_dir / "refs").mkdir(exist_ok=True)
        (repo_dir / "refs" / ref).write_text(commit)
    return snap


def make_ollama(root: Path, name: str, tag: str, data: bytes | None, *, media: str = "application/vnd.ollama.image.model") -> Path:
    parts = name.split("/")
    parts = ["registry.ollama.ai", "library", *parts] if len(parts) == 1 else ["registry.ollama.ai", *parts]
    man = root / "manifests" / Path(*parts) / tag
    man.parent.mkdir(parents=True, exist_ok=True)
    man.write_text(json.dumps({"schemaVersion": 2, "layers": [
        {"mediaType": media, "digest": f"sha256:{DIGEST}", "size": 4},
        {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:" + "b" * 64, "size": 1},
    ]}))
    if data is not None:
        (root / "blobs").mkdir(parents=True, exist_ok=True)
        (root / "blobs" / f"sha256-{DIGEST}").write_bytes(data)
    return man


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    return cache


def test_paths_pass_through():
    assert not is_ref("model.gguf") and is_ref("hf:a/b") and is_ref("ollama:x")
    r = resolve_ref("some/model.gguf")
    assert r.kind == "path" and r.path == Path("some/model.gguf")


def test_hf_directory_snapshot_branch_commit_and_prefix(hf_cache):
    snap = make_hf_snapshot(hf_cache, "org/model", {"model.safetensors": b"x", "config.json": b"{}"})
    for ref in ("hf:org/model", "hf:org/model@main", f"hf:org/model@{COMMIT}", "hf:org/model@0123456"):
        r = resolve_ref(ref)
        assert r.path == snap and r.kind == "hf" and r.revision == COMMIT
    assert resolve_ref("hf:org/model/config.json").path == snap / "config.json"
    assert list_hf_cache() == [f"hf:org/model@{COMMIT}"]


def test_hf_cache_env_precedence(tmp_path, monkeypatch):
    make_hf_snapshot(tmp_path / "elsewhere", "org/m", {"m.gguf": b"GGUF"})
    monkeypatch.setenv("HF_HOME", str(tmp_path / "nothing"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    assert resolve_ref("hf:org/m").path.name == "m.gguf"


def test_hf_gguf_only_snapshot(hf_cache):
    snap = make_hf_snapshot(hf_cache, "org/q", {"q4.gguf": b"GGUF"})
    assert resolve_ref("hf:org/q").path == snap / "q4.gguf"
    make_hf_snapshot(hf_cache, "org/two", {"a.gguf": b"GGUF", "b.gguf": b"GGUF"})
    with pytest.raises(ModelFormatError, match=r"^hf:org/two: snapshot 0123456789ab holds 2 GGUF files; name one$"):
        resolve_ref("hf:org/two")
    assert resolve_ref("hf:org/two/b.gguf").path.name == "b.gguf"


def test_hf_errors_are_one_line(hf_cache):
    with pytest.raises(ModelFormatError, match=r"^hf:org/none: not in the Hugging Face cache .*hub$"):
        resolve_ref("hf:org/none")
    with pytest.raises(ModelFormatError, match=r"not a Hugging Face reference"):
        resolve_ref("hf:justname")
    make_hf_snapshot(hf_cache, "org/m", {"model.safetensors": b"x"})
    with pytest.raises(ModelFormatError, match=r"^hf:org/m@dev: revision `dev` is not in the cache \(refs: main\)$"):
        resolve_ref("hf:org/m@dev")
    # partial: a dangling link (blob never finished)
    snap = make_hf_snapshot(hf_cache, "org/p", {"model.safetensors": b"x"})
    next((hf_cache / "models--org--p" / "blobs").iterdir()).unlink()
    with pytest.raises(ModelFormatError, match=r"^hf:org/p: partial snapshot: model.safetensors in snapshot 0123456789ab points to a missing blob$"):
        resolve_ref("hf:org/p")
    # partial: sharded index naming a missing shard
    snap = make_hf_snapshot(hf_cache, "org/s", {"model-00001-of-00002.safetensors": b"x"})
    (snap / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(ModelFormatError, match=r"partial snapshot: 1 of 2 shards missing \(first: model-00002-of-00002.safetensors\)"):
        resolve_ref("hf:org/s")
    # partial: no weights at all
    make_hf_snapshot(hf_cache, "org/e", {"config.json": b"{}"})
    with pytest.raises(ModelFormatError, match=r"partial snapshot: no weights"):
        resolve_ref("hf:org/e")
    # refs/main pointing to a snapshot that is not there
    repo = hf_cache / "models--org--r"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("f" * 40)
    with pytest.raises(ModelFormatError, match=r"partial snapshot: revision `main` points to commit ffffffffffff"):
        resolve_ref("hf:org/r")


def test_ollama_resolves_model_layer(tmp_path, monkeypatch):
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path))
    make_ollama(tmp_path, "smollm2", "135m", b"GGUF")
    make_ollama(tmp_path, "user/tuned", "latest", b"GGUF")
    r = resolve_ref("ollama:smollm2:135m")
    assert r.path == tmp_path / "blobs" / f"sha256-{DIGEST}" and r.kind == "ollama" and r.revision == "135m"
    assert resolve_ref("ollama:user/tuned").path.read_bytes() == b"GGUF"
    assert list_ollama_store() == ["ollama:smollm2:135m", "ollama:user/tuned:latest"]


def test_ollama_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path))
    with pytest.raises(ModelFormatError, match=r"^ollama:nope: not in the ollama store .* \(no manifest nope:latest\)$"):
        resolve_ref("ollama:nope")
    make_ollama(tmp_path, "adapter", "latest", b"x", media="application/vnd.ollama.image.adapter")
    with pytest.raises(ModelFormatError, match=r"^ollama:adapter: manifest .* has no model layer \(application/vnd.ollama.image.model\)$"):
        resolve_ref("ollama:adapter")
    (tmp_path / "blobs" / f"sha256-{DIGEST}").unlink()
    make_ollama(tmp_path, "gone", "latest", None)
    with pytest.raises(ModelFormatError, match=r"^ollama:gone: model blob sha256:aaaaaaaaaaaa... is missing from "):
        resolve_ref("ollama:gone")
    with pytest.raises(ModelFormatError, match=r"not an ollama reference"):
        resolve_ref("ollama:../etc:x")


def test_every_command_opens_refs(tmp_path, monkeypatch):
    """open_model -- and so every command -- takes hf: and ollama: references (real tiny model)."""
    from typer.testing import CliRunner

    from weightprint.cli import app
    from weightprint.io import open_model
    from weightprint.testing.derive import derived

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "ollama"))
    tiny = Path(derived("tiny_llama", None, seed=7100, n_layers=4, steps=150))
    snap = tmp_path / "hub" / "models--tiny--llama" / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    for f in tiny.iterdir():
        (snap / f.name).symlink_to(f)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text(COMMIT)
    gguf = Path(derived("gguf", tiny, file_type="Q8_0"))
    make_ollama(tmp_path / "ollama", "tiny", "q8_0", gguf.read_bytes())
    with open_model("hf:tiny/llama") as m:
        assert m.format != "gguf" and Path(m.path) == snap
    with open_model("ollama:tiny:q8_0") as m:
        assert m.format == "gguf"
    res = CliRunner().invoke(app, ["inspect", "hf:tiny/llama", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["path"] == str(snap)
    res = CliRunner().invoke(app, ["inspect", "ollama:tiny:q8_0"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["inspect", "hf:tiny/nothing"])
    assert res.exit_code == 2 and "error: hf:tiny/nothing: not in the Hugging Face cache" in res.stderr
