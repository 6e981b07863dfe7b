"""The shipped public-domain English text that fine-tunes and tiny models train on."""

from __future__ import annotations

from importlib import resources

from weightprint.errors import WeightprintError

CORPUS_FILES = ("corpus_prose.txt", "corpus_verse.txt", "corpus_documents.txt")


def corpus_text(names: tuple[str, ...] = CORPUS_FILES) -> str:
    """The shipped public-domain English text (``weightprint/data/corpus_*.txt``), joined.

    Parameters
    ----------
    names : tuple of str, *optional*
        File names inside ``weightprint/data``; defaults to all shipped corpora.

    Returns
    -------
    str
        The texts joined by blank lines (about 100 KB).
    """
    root = resources.files("weightprint") / "data"
    parts = []
    for name in names:
        try:
            parts.append((root / name).read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise WeightprintError(f"shipped corpus `{name}` is missing from weightprint/data") from e
    return "\n\n".join(parts)


def heldout_text(n_chars: int = 6000) -> str:
    """The last ``n_chars`` characters of the shipped corpus, which :func:`finetune` never trains on."""
    text = corpus_text()
    return text[-n_chars:]


def training_text(n_heldout_chars: int = 6000) -> str:
    text = corpus_text()
    return text[:-n_heldout_chars]

