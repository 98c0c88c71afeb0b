"""Text for character-level language models: a generated corpus, text files, a vocabulary."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen "
    "eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(n: int) -> str:
    """``n`` (0 to 999,999) written out in English words, e.g. 342 -> "three hundred and forty two"."""
    if not 0 <= n < 1_000_000:
        raise ValueError(f"number_words covers 0 to 999999, got {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " and " + number_words(rest))
    rest = n % 1000
    tail = "" if rest == 0 else (" and " if rest < 100 else " ") + number_words(rest)
    return number_words(n // 1000) + " thousand" + tail


def numbers_text(count: int = 20_000, *, seed: int = 0, maximum: int = 999_999) -> str:
    """A corpus with nothing to download: ``count`` random numbers in words, one per line.

    The numbers are drawn uniformly from ``[0, maximum]`` with ``np.random.default_rng(seed)``,
    so the text is a pure function of its arguments.
    """
    numbers = np.random.default_rng(seed).integers(0, maximum + 1, size=count)
    return "\n".join(number_words(int(n)) for n in numbers) + "\n"


def read_text(path: str | os.PathLike) -> str:
    """The contents of a UTF-8 text file, with clear errors for a missing or empty file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text corpus {path} does not exist (data.path)")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise ValueError(f"text corpus {path} is empty: a language model needs some text to learn from")
    return text


class Vocabulary:
    """The characters of a text, each mapped to an integer id (sorted, so the ids are reproducible)."""

    def __init__(self, text: str):
        if not text:
            raise ValueError("cannot build a vocabulary from empty text")
        self.chars = sorted(set(text))
        self._ids = {c: i for i, c in enumerate(self.chars)}

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        """``text`` as an int32 array of ids; a character outside the vocabulary is an error."""
        unknown = sorted(set(text) - set(self._ids))
        if unknown:
            raise ValueError(
                f"characters {unknown} are not in the vocabulary of this model; it knows {''.join(self.chars)!r}"
            )
        return np.array([self._ids[c] for c in text], np.int32)

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)


def sequences(ids: np.ndarray, length: int, stride: int | None = None) -> dict[str, np.ndarray]:
    """Next-character training pairs: windows of ``length + 1`` ids every ``stride`` (default ``length``).

    Returns ``{"inputs": (n, length), "targets": (n, length)}`` where the targets are the
    inputs shifted by one character.
    """
    stride = stride or length
    if len(ids) < length + 1:
        raise ValueError(f"the text has {len(ids)} characters, fewer than one window of {length + 1}")
    starts = np.arange(0, len(ids) - length, stride)
    windows = np.stack([ids[s : s + length + 1] for s in starts])
    return {"inputs": windows[:, :-1], "targets": windows[:, 1:]}
