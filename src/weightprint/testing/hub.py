"""A synthetic hub with known lineage: the test and benchmark material of ``weightprint scan``.

:func:`build_hub` lays out >= 40 models -- derivatives of SmolLM2 and Gemma 3 (requantized,
dequantized, fine-tuned, permuted, pruned, vocabulary-extended), trained tiny models with their
derivatives, and independent tiny models -- partly as a Hugging Face cache, partly as an
ollama store and partly as a plain directory tree. Model files are symlinked (never copied)
from the per-machine cache of :func:`weightprint.testing.derive.derived`, so building a hub
twice costs nothing after the first time.

Every entry records its true parent (None for a root or an independent model), so a test can
check the recovered graph entry by entry.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Hub", "HubEntry", "build_hub"]

COMMIT = "5ca1ab1e" * 5
TINY = dict(n_layers=4, steps=150)


@dataclass(frozen=True)
class HubEntry:
    name: str  # the reference a scan reports: hf:..., ollama:... or a path under the tree
    source: str  # the derived-cache path
    parent: str | None  # name of the true parent in the hub
    recipe: str


@dataclass
class Hub:
    root: Path
    hf_cache: Path
    ollama: Path
    tree: Path
    entries: list[HubEntry] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        return {"HF_HUB_CACHE": str(self.hf_cache), "OLLAMA_MODELS": str(self.ollama)}

    def parent_of(self, name: str) -> str | None:
        return next(e.parent for e in self.entries if e.name == name)


def _sha256(path: Path) -> str:
    from weightprint.io.hashing import file_sha256

    return file_sha256(path)


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    dst.symlink_to(src.resolve())


def _place_hf(hub: Hub, repo: str, src: Path) -> str:
    snap = hub.hf_cache / ("models--" + repo.replace("/", "--")) / "snapshots" / COMMIT
    snap.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        for f in src.iterdir():
            if f.is_file():
                _link(f, snap / f.name)
    else:
        _link(src, snap / src.name)
    refs = snap.parent.parent / "refs"
    refs.mkdir(exist_ok=True)
    (refs / "main").write_text(COMMIT)
    return f"hf:{repo}@{COMMIT}"


def _place_ollama(hub: Hub, name: str, tag: str, src: Path) -> str:
    digest = _sha256(src)
    blob = hub.ollama / "blobs" / f"sha256-{digest}"
    _link(src, blob)
    parts = name.split("/")
    parts = ["registry.ollama.ai", "library", *parts] if len(parts) == 1 else ["registry.ollama.ai", *parts]
    man = hub.ollama / "manifests" / Path(*parts) / tag
    man.parent.mkdir(parents=True, exist_ok=True)
    man.write_text(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                               "layers": [{"mediaType": "application/vnd.ollama.image.model",
                                           "digest": f"sha256:{digest}", "size": src.stat().st_size}]}))
    return f"ollama:{name}:{tag}"


def _place_tree(hub: Hub, rel: str, src: Path) -> str:
    dst = hub.tree / rel
    if src.is_dir():
        dst.mkdir(parents=True, exist_ok=True)
        for f in src.iterdir():
            if f.is_file():
                _link(f, dst / f.name)
    else:
        _link(src, dst)
    return str(dst)


def build_hub(root: str | Path, *, gemma: bool = True, n_tiny_families: int = 3, n_independent: int = 6) -> Hub:
    """Build (or refresh) the synthetic hub under ``root``; derived models come from the cache.

    Parameters
    ----------
    root : path
        Directory for ``hf/`` (the HF cache), ``ollama/`` (the store) and ``tree/``.
    gemma : bool, *optional*
        Include Gemma 3 and its derivatives (the largest files).
    n_tiny_families, n_independent : int, *optional*
        Tiny trained models with 7 derivatives each, and tiny models with none.
    """
    from weightprint.testing.derive import derived
    from weightprint.testing.models import gemma3_path, smollm2_path

    root = Path(root)
    hub = Hub(root, root / "hf", root / "ollama", root / "tree")
    add = hub.entries.append

    s = smollm2_path()
    s_name = _place_ollama(hub, "smollm2", "135m-q4_1", s)
    add(HubEntry(s_name, str(s), None, "original"))
    dup = hub.tree / "mirror" / s.name  # a hard link: a second path to the same content
    dup.parent.mkdir(parents=True, exist_ok=True)
    if dup.exists() or dup.is_symlink():
        dup.unlink()
    try:
        os.link(s.resolve(), dup)
    except OSError:  # another file system: a symlink still gives a second path of the same content
        dup.symlink_to(s.resolve())
    dup = str(dup)
    add(HubEntry(dup, str(s), None, "copy"))
    perm = derived("permute", s, seed=1)
    recipes = [
        ("ollama", ("smollm2", "135m-f16"), derived("gguf", s, file_type="F16"), s_name, "dequantize F16"),
        ("tree", "smollm2-q8_0.gguf", derived("gguf", s, file_type="Q8_0"), s_name, "requantize Q8_0"),
        ("hf", "acme/smollm2-permuted", perm, s_name, "permute hidden units"),
        ("hf", "acme/smollm2-noised", derived("noise", s, sigma_rel=0.05, seed=1), s_name, "weight noise 5%"),
        ("hf", "acme/smollm2-pruned", derived("drop_layer", s, layer=15), s_name, "drop layer 15"),
        ("tree", "smollm2-extended", derived("extend_vocab", s, n_new=100), s_name, "extend vocabulary"),
    ]
    names = _place_all(hub, recipes)
    recipes = [("ollama", ("acme/smollm2-permuted", "q8_0"), derived("gguf", perm, file_type="Q8_0"),
                names["acme/smollm2-permuted"], "requantize Q8_0")]
    _place_all(hub, recipes)
    if gemma:
        g = gemma3_path()
        g_name = _place_hf(hub, "google/gemma-3-270m-gguf", g)
        add(HubEntry(g_name, str(g), None, "original"))
        _place_all(hub, [
            ("tree", "gemma-3-270m-f16.gguf", derived("gguf", g, file_type="F16"), g_name, "dequantize F16"),
            ("ollama", ("gemma3", "270m-q8_0"), derived("gguf", g, file_type="Q8_0"), g_name, "requantize Q8_0"),
        ])
    for k in range(n_tiny_families):
        t = derived("tiny_llama", None, seed=7100 + k, **TINY)
        t_name = _place_hf(hub, f"tiny/family{k}", t)
        add(HubEntry(t_name, str(t), None, "tiny original"))
        _place_all(hub, [
            ("hf", f"tiny/family{k}-finetuned", derived("finetune", t, steps=60, lr=1e-3, seed=k), t_name, "fine-tune"),
            ("tree", f"tiny{k}-noised", derived("noise", t, sigma_rel=0.05, seed=k), t_name, "weight noise 5%"),
            ("hf", f"tiny/family{k}-permuted", derived("permute", t, seed=k + 1), t_name, "permute hidden units"),
            ("ollama", (f"tiny{k}", "pruned"), derived("gguf", derived("drop_layer", t, layer=2), file_type="F32"), t_name,
             "drop layer 2, as F32 GGUF"),
            ("tree", f"tiny{k}-extended", derived("extend_vocab", t, n_new=50, seed=k), t_name, "extend vocabulary"),
            ("ollama", (f"tiny{k}", "q8_0"), derived("gguf", t, file_type="Q8_0"), t_name, "quantize Q8_0"),
            ("tree", f"tiny{k}-f16.gguf", derived("gguf", t, file_type="F16"), t_name, "convert F16"),
        ])
    for k in range(n_independent):
        t = derived("tiny_llama", None, seed=7200 + k, **TINY)
        where = ("hf", f"indie/model{k}") if k % 2 == 0 else ("tree", f"indie{k}")
        _place_all(hub, [(where[0], where[1], t, None, "independent")])
    (root / "hub.json").write_text(json.dumps([e.__dict__ for e in hub.entries], indent=1))
    return hub


def _place_all(hub: Hub, recipes: list) -> dict[str, str]:
    out = {}
    for where, key, src, parent, recipe in recipes:
        src = Path(src)
        if where == "hf":
            name = _place_hf(hub, key, src)
        elif where == "ollama":
            name = _place_ollama(hub, key[0], key[1], src)
        else:
            name = _place_tree(hub, key, src)
        hub.entries.append(HubEntry(name, str(src), parent, recipe))
        out[key if isinstance(key, str) else ":".join(key)] = name
    return out

