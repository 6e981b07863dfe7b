"""Synthetic benchmarks written for this project: short factual question/answer items about
invented places, people and things, so no model can have seen them before.

Used to show the contamination tests at work: :func:`generate_items` draws items i.i.d. from a
fixed set of templates; :func:`contamination_benchmark` splits one draw into a ``seen`` half (the
benchmark, in its canonical order) and an ``unseen`` half of the same style (the known-unseen
items that Min-K%++'s AUROC needs). Because both halves come from one i.i.d. draw and the
canonical order is the draw order, an untouched model has no preference between the halves nor
for the canonical order (the exchangeability test's null hypothesis holds by construction).

The shipped files ``data/contamination_seen.jsonl`` and ``data/contamination_unseen.jsonl`` are
``contamination_benchmark()`` with its defaults (a test checks that they still are).
"""

from __future__ import annotations

import numpy as np

__all__ = ["contamination_benchmark", "generate_items", "invented_name"]

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr",
           "kl", "pr", "st", "th", "tr", "vr", "sh", "ch")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "ou", "y")
_CODAS = ("", "", "", "n", "r", "l", "s", "th", "m", "nd", "rk", "x")

_COLOURS = ("red", "blue", "green", "yellow", "white", "black", "purple", "orange", "grey", "silver")
_ANIMALS = ("fox", "heron", "badger", "otter", "falcon", "wolf", "stag", "owl", "lynx", "crane")
_TRADES = ("glassblower", "cartographer", "astronomer", "weaver", "shipwright", "botanist",
           "clockmaker", "stonemason", "physician", "composer")
_THINGS = ("copper", "salt", "amber", "wool", "timber", "tin", "silk", "coffee", "marble", "pepper")
_INSTRUMENTS = ("flute", "harp", "drum", "lute", "horn", "fiddle", "bell", "zither", "oboe", "organ")

_TEMPLATES = (
    "Question: What is the capital of {place}? Answer: {city}.",
    "Question: Who wrote the book \"{title}\"? Answer: {person}.",
    "Question: In which year was {city} founded? Answer: {year}.",
    "Question: What is the main export of {place}? Answer: {thing}.",
    "Question: Which animal appears on the flag of {place}? Answer: a {colour} {animal}.",
    "Question: What was the profession of {person}? Answer: {trade}.",
    "Question: How many islands belong to {place}? Answer: {count}.",
    "Question: Which river flows through {city}? Answer: the {river}.",
    "Question: Which instrument did {person} play? Answer: the {instrument}.",
    "Question: What colour is the national stone of {place}? Answer: {colour}.",
)


def invented_name(rng: np.random.Generator, syllables: tuple[int, int] = (2, 3)) -> str:
    """A pronounceable made-up word (``"Vroumel"``) of ``syllables[0]``..``syllables[1]`` syllables."""
    k = int(rng.integers(syllables[0], syllables[1] + 1))
    parts = []
    for i in range(k):
        parts.append(_ONSETS[rng.integers(len(_ONSETS))] + _VOWELS[rng.integers(len(_VOWELS))])
        if i == k - 1:
            parts.append(_CODAS[rng.integers(len(_CODAS))])
    return "".join(parts).capitalize()


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def generate_items(n: int, seed: int) -> list[str]:
    """``n`` distinct benchmark items drawn i.i.d. (given ``seed``) from the templates.

    Parameters
    ----------
    n : int
        Number of items.
    seed : int
        Seed of the generator; the same seed gives the same items in the same order.

    Returns
    -------
    list of str
        One question with its answer per item, e.g. ``Question: What is the capital of
        Drailand? Answer: Mouthor.``
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xBE7C]))
    items: list[str] = []
    seen: set[str] = set()
    while len(items) < n:
        fields = {
            "place": invented_name(rng) + _pick(rng, ("", "", "ia", "land", " Isles")),
            "city": invented_name(rng),
            "person": f"{invented_name(rng, (1, 2))} {invented_name(rng)}",
            "title": f"The {_pick(rng, ('Last', 'Silent', 'Hidden', 'Broken', 'Seventh', 'Golden'))} {invented_name(rng)}",
            "year": str(int(rng.integers(1100, 1990))),
            "thing": _pick(rng, _THINGS),
            "colour": _pick(rng, _COLOURS),
            "animal": _pick(rng, _ANIMALS),
            "trade": _pick(rng, _TRADES),
            "count": str(int(rng.integers(2, 90))),
            "river": invented_name(rng),
            "instrument": _pick(rng, _INSTRUMENTS),
        }
        text = _pick(rng, _TEMPLATES).format(**fields)
        if text not in seen:
            seen.add(text)
            items.append(text)
    return items


def contamination_benchmark(n_seen: int = 200, n_unseen: int = 200, seed: int = 2024) -> tuple[list[str], list[str]]:
    """A benchmark (``seen``, in canonical order) and known-unseen items of the same style.

    One i.i.d. draw of ``n_seen + n_unseen`` items; the first ``n_seen`` are the benchmark in
    its canonical order, the rest the unseen half.
    """
    items = generate_items(n_seen + n_unseen, seed)
    return items[:n_seen], items[n_seen:]
