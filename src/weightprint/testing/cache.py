"""The derived-model cache: :func:`derived` builds a recipe once per machine and returns its path.

:func:`derived` caches any recipe under ``cache_dir()/derived/<key>``, where the key
(:func:`derived_key`) is the SHA-256 of the recipe, its parameters completed with their defaults,
the source's content hash, and the code that makes it (:func:`recipe_code_digest`: the syntax
of the recipe's modules without docstrings, so editing a recipe rebuilds what it made while a
comment or docstring edit does not); two processes that race build it once (a file lock) and the
result appears atomically (build in a temp dir, then rename). Every output directory holds
``weightprint_derive.json`` with the recipe, parameters and measured facts
(:func:`~weightprint.testing.hfdir.read_derive_info`).

What the converter (``weightprint.convert``, ``weightprint.io``) writes is not in the key: it is
checked bit for bit against transformers' own GGUF loader by the io tests; bump
``_RECIPE_VERSIONS`` if it ever changes a written value.
"""

from __future__ import annotations

import ast
import fcntl
import hashlib
import importlib.util
import inspect
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

from weightprint.errors import WeightprintError
from weightprint.io.files import temp_dir_beside
from weightprint.io.hashing import file_sha256
from weightprint.results import to_jsonable
from weightprint.testing.corpus import corpus_text
from weightprint.testing.finetune import finetune
from weightprint.testing.hfdir import GGUF_FILE, INFO_FILE, _gguf_recipe, _gguf_to_hf, _source_path, _write_info
from weightprint.testing.models import cache_dir
from weightprint.testing.recipes import add_noise, drop_layer, extend_vocab, permute_hidden_units
from weightprint.testing.tiny import tiny_tokenizer_path, train_tiny_llama
from weightprint.testing.transplant import transplant_recipe

_RECIPES: dict[str, Callable[..., Any]] = {
    "hf": lambda source, out: _gguf_to_hf(source, out),
    "permute": lambda source, out, **kw: permute_hidden_units(source, out, **kw),
    "noise": lambda source, out, **kw: add_noise(source, out, **kw),
    "extend_vocab": lambda source, out, **kw: extend_vocab(source, out, **kw),
    "drop_layer": lambda source, out, **kw: drop_layer(source, out, **kw),
    "finetune": lambda source, out, **kw: finetune(source, out, **kw),
    "tiny_llama": lambda source, out, **kw: train_tiny_llama(out, **kw),
    "gguf": _gguf_recipe,
    "transplant": transplant_recipe,
}
RECIPES = tuple(_RECIPES)

_RECIPE_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "permute": permute_hidden_units,
    "noise": add_noise,
    "extend_vocab": extend_vocab,
    "drop_layer": drop_layer,
    "finetune": finetune,
    "tiny_llama": train_tiny_llama,
    "gguf": _gguf_recipe,
    "transplant": transplant_recipe,
}
_NOT_IN_KEY = {"model", "out", "threads", "source", "tokenizer_source"}


def _resolved_params(recipe: str, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` completed with the recipe function's defaults, so a changed default changes the key."""
    fn = _RECIPE_FUNCTIONS.get(recipe)
    if fn is None:
        if params:
            raise WeightprintError(f"recipe `{recipe}` takes no parameters, got {', '.join(sorted(params))}")
        return {}
    try:
        bound = inspect.signature(fn).bind_partial(**params)
    except TypeError as e:
        raise WeightprintError(f"recipe `{recipe}`: {e}") from e
    bound.apply_defaults()
    return {k: v for k, v in bound.arguments.items() if k not in _NOT_IN_KEY}


# Bump a recipe's version when its output changes for the same parameters.
_RECIPE_VERSIONS = {"gguf": 1, "hf": 1, "permute": 1, "noise": 1, "extend_vocab": 1, "drop_layer": 1, "finetune": 1, "tiny_llama": 1,
                    "transplant": 1}

_sha_memo: dict[tuple[str, int, int], str] = {}


def source_fingerprint(source: str | Path) -> str:
    """Content identity of a source: SHA-256 of a file, or of a directory's model files (memoised).

    A directory made by :func:`derived` is identified by its cache key (its name).
    """
    path = Path(source)
    if path.is_dir():
        root = cache_dir() / "derived"
        if path.parent.resolve() == root.resolve() and (path / INFO_FILE).is_file():
            return "derived:" + path.name
        h = hashlib.sha256()
        for p in sorted(path.iterdir()):
            if p.is_file() and (p.suffix in (".safetensors", ".json", ".gguf", ".model", ".txt", ".jinja")):
                h.update(p.name.encode() + b"\0" + _file_sha(p).encode())
        return h.hexdigest()
    return _file_sha(path)


def _file_sha(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _sha_memo:
        _sha_memo[key] = f"{file_sha256(path)}:{st.st_size}"
    return _sha_memo[key]


def derived_key(recipe: str, source: str | Path | None, **params: Any) -> str:
    """The cache key of ``derived(recipe, source, **params)``: a SHA-256 hex digest."""
    if recipe not in _RECIPES:
        raise WeightprintError(f"unknown recipe `{recipe}`; known: {', '.join(RECIPES)}")
    ident = {
        "recipe": recipe,
        "version": _RECIPE_VERSIONS[recipe],
        "params": to_jsonable(_resolved_params(recipe, params)),
        "code": recipe_code_digest(recipe),
        "source": None if source is None else source_fingerprint(_source_path(source)),
    }
    if recipe in ("finetune", "tiny_llama"):  # trained on the shipped text
        ident["corpus"] = hashlib.sha256(corpus_text().encode()).hexdigest()
        ident["tokenizer"] = _file_sha(tiny_tokenizer_path()) if recipe == "tiny_llama" else None
    if recipe == "transplant":  # the vocabulary's file is a second source
        ident["tokenizer"] = source_fingerprint(_source_path(params["tokenizer_source"]))
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()


def derived(recipe: str, source: str | Path | Any | None, **params: Any) -> Path:
    """Build (once per machine) and return a derived model, cached under ``cache_dir()/derived``.

    Parameters
    ----------
    recipe : {'hf', 'gguf', 'permute', 'noise', 'extend_vocab', 'drop_layer', 'finetune', 'tiny_llama', 'transplant'}
        ``hf`` converts a GGUF into an F32 Hugging Face directory (transformers' GGUF reader);
        ``gguf`` writes a GGUF with :func:`to_gguf` (``file_type=``); the others call
        :func:`permute_hidden_units`, :func:`add_noise`, :func:`extend_vocab`, :func:`drop_layer`,
        :func:`finetune`, :func:`train_tiny_llama` with ``**params``; ``transplant`` writes
        ``source`` under ``tokenizer_source``'s vocabulary (:func:`transplant_tokenizer`; the
        ``model.gguf`` file inside the directory is returned).
    source : str, Path, Model or None
        The source model (``None`` for ``tiny_llama``).
    **params
        Keyword arguments of the recipe's function (all part of the cache key).

    Returns
    -------
    Path
        The cached output directory (for ``gguf``: the ``model.gguf`` file inside it). Concurrent callers (threads or processes) wait for one
        build; a failed build leaves nothing behind.
    """
    if source is not None:
        source = _source_path(source)
    key = derived_key(recipe, source, **params)
    root = cache_dir() / "derived"
    root.mkdir(parents=True, exist_ok=True)
    final = root / key
    result = final / GGUF_FILE if recipe in ("gguf", "transplant") else final
    if (final / INFO_FILE).is_file():
        return result
    with open(root / f".{key}.lock", "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            if final.exists():
                return result
            staging = temp_dir_beside(final, suffix=".build")
            try:
                built = staging / "out"
                _RECIPES[recipe](source, built, **params)
                if recipe == "hf":
                    _write_info(built, {"recipe": "hf", "source": str(source), "params": {}})
                os.replace(built, final)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    return result



# The modules whose code makes each recipe's output (their syntax is part of the cache key).
_RECIPE_MODULES: dict[str, tuple[str, ...]] = {
    "hf": ("hfdir",),
    "gguf": ("hfdir",),
    "permute": ("recipes", "hfdir"),
    "noise": ("recipes", "hfdir"),
    "extend_vocab": ("recipes", "hfdir"),
    "drop_layer": ("recipes", "hfdir"),
    "finetune": ("finetune", "hfdir"),
    "tiny_llama": ("tiny", "finetune", "hfdir"),
    "transplant": ("transplant",),
}
_code_memo: dict[tuple[str, int, int], str] = {}


def code_digest(source: str) -> str:
    """SHA-256 of Python source's syntax tree with docstrings removed (comments and layout do not count)."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.dump(tree, annotate_fields=False).encode()).hexdigest()


def recipe_code_digest(recipe: str) -> str:
    """Digest of the code of the modules that implement ``recipe`` (see :data:`_RECIPE_MODULES`)."""
    h = hashlib.sha256()
    for name in _RECIPE_MODULES[recipe]:
        spec = importlib.util.find_spec(f"weightprint.testing.{name}")
        path = Path(spec.origin) if spec and spec.origin else None
        if path is None or not path.is_file():
            raise WeightprintError(f"cannot read the source of weightprint.testing.{name}")
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key not in _code_memo:
            _code_memo[key] = code_digest(path.read_text(encoding="utf-8"))
        h.update(f"{name}:{_code_memo[key]}\n".encode())
    return h.hexdigest()
