"""Text for character-level language models: a generated corpus, Python's own sources, text files, a vocabulary."""

from __future__ import annotations

import hashlib
import os
import platform
import sysconfig
from pathlib import Path
from typing import Any, NamedTuple

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


class Corpus(NamedTuple):
    """A text and what identifies it: its SHA-256 (of the UTF-8 bytes) and where it came from."""

    text: str
    sha256: str
    source: str

    @classmethod
    def of(cls, text: str, source: str) -> Corpus:
        return cls(text, hashlib.sha256(text.encode("utf-8")).hexdigest(), source)

    def record(self) -> dict[str, Any]:
        """What identifies the corpus, for a run's records: source, SHA-256, characters, Python version."""
        return {
            "corpus": self.source,
            "corpus_sha256": self.sha256,
            "corpus_chars": len(self.text),
            "python": platform.python_version(),
        }


def stdlib_text() -> Corpus:
    """Python's standard library as one text: a corpus every Python ships, nothing to download.

    The top-level modules of ``sysconfig.get_paths()["stdlib"]`` (``*.py``, not the packages'
    folders), sorted by file name and concatenated (about 4.7 MB on Python 3.11). The text
    depends on the Python version: record :attr:`Corpus.sha256` with results.
    """
    folder = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(folder.glob("*.py"), key=lambda path: path.name)
    if not files:
        raise FileNotFoundError(f"no *.py files in {folder}, the standard library's folder of this Python")
    return Corpus.of("".join(path.read_text(encoding="utf-8") for path in files), f"{folder}/*.py ({len(files)} files)")


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
        self._codes = np.array([ord(c) for c in self.chars], np.uint32)  # sorted, as the characters are

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        """``text`` as an int32 array of ids; a character outside the vocabulary is an error."""
        unknown = sorted(set(text) - set(self._ids))
        if unknown:
            raise ValueError(
                f"characters {unknown} are not in the vocabulary of this model; it knows {''.join(self.chars)!r}"
            )
        codes = np.frombuffer(text.encode("utf-32-le"), np.uint32)  # one code point per character
        return np.searchsorted(self._codes, codes).astype(np.int32)

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
    windows = np.lib.stride_tricks.sliding_window_view(np.asarray(ids), length + 1)[: len(ids) - length : stride]
    return {"inputs": windows[:, :-1].copy(), "targets": windows[:, 1:].copy()}


def held_out_splits(ids: np.ndarray, length: int, held_out: float) -> tuple[dict, dict, dict]:
    """Train, validation and test windows (:func:`sequences`) of a text's ids.

    The last ``held_out`` fraction of the text is held out: its first half is the validation
    split, its second half the test split; the rest is the training split.
    """
    if not 0 < held_out < 1:
        raise ValueError(f"the held-out fraction must be in (0, 1), got {held_out}")
    train_end = int(len(ids) * (1 - held_out))
    validation_end = (train_end + len(ids)) // 2
    train, validation, test = (
        sequences(part, length) for part in (ids[:train_end], ids[train_end:validation_end], ids[validation_end:])
    )
    return train, validation, test
