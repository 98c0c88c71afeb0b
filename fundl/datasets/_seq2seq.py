"""Number translation pairs for sequence-to-sequence models, generated with nothing to download.

Each example is a number from 1 to 999,999 written two ways: in English words, word by
word ("three hundred and twelve thousand and five"), and in digits, digit by digit
("312005"). ``number_translation`` draws distinct numbers from a seed and splits them by
number into train, validation and test sets, so no number is in two splits.

Token ids: every vocabulary starts with ``<pad>`` (0), ``<bos>`` (1), ``<eos>`` (2). A
target sequence ``y_1 .. y_n`` becomes the decoder ``inputs`` ``<bos> y_1 .. y_n`` and the
``targets`` ``y_1 .. y_n <eos>``, right-padded with ``<pad>`` to a fixed length.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np

from fundl.datasets._text import number_words

PAD, BOS, EOS = 0, 1, 2
SPECIALS = ("<pad>", "<bos>", "<eos>")
DIRECTIONS = ("to_digits", "to_words")
MAXIMUM = 999_999
# The longest phrase: "seven hundred and seventy seven thousand seven hundred and seventy seven".
MAX_WORDS = 11
MAX_DIGITS = 6


class TokenVocabulary:
    """Tokens (words or digit characters) mapped to integer ids, after the three special tokens."""

    pad_id, bos_id, eos_id = PAD, BOS, EOS

    def __init__(self, tokens: Iterable[str], *, joiner: str):
        self.tokens = (*SPECIALS, *tokens)
        self.joiner = joiner  # " " between words, "" between digits
        self._ids = {t: i for i, t in enumerate(self.tokens)}

    def __len__(self) -> int:
        return len(self.tokens)

    def split(self, text: str) -> list[str]:
        """``text`` cut into tokens: words, or characters without spaces and commas for digits."""
        if self.joiner:
            return text.lower().replace("-", " ").split()
        return [c for c in text if c not in " ,_"]

    def encode(self, tokens: Sequence[str], *, where: str = "text") -> list[int]:
        """The ids of ``tokens``; an unknown token is an error that lists the vocabulary."""
        unknown = sorted({t for t in tokens if t not in self._ids or t in SPECIALS})
        if unknown:
            known = " ".join(self.tokens[len(SPECIALS) :])
            raise ValueError(f"{where}: unknown tokens {unknown}; the vocabulary is: {known}")
        return [self._ids[t] for t in tokens]

    def encode_text(self, text: str, length: int, *, where: str = "text") -> np.ndarray:
        """``text`` split into tokens, as a right-padded int32 ``(1, length)`` array of ids."""
        tokens = self.split(text)
        if not 1 <= len(tokens) <= length:
            raise ValueError(f"{where}: expected 1 to {length} tokens, got {len(tokens)} in {text!r}")
        return pad([self.encode(tokens, where=where)], length)

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids`` up to the first ``<eos>`` (or padding); ``<bos>`` is skipped."""
        out = []
        for i in map(int, ids):
            if i in (EOS, PAD):
                break
            if i != BOS:
                out.append(self.tokens[i])
        return self.joiner.join(out)


def _word_tokens() -> list[str]:
    """Every word ``number_words`` uses, in a fixed (sorted) order."""
    return sorted({w for n in [*range(100), 101, 1001] for w in number_words(n).split()})


WORDS = TokenVocabulary(_word_tokens(), joiner=" ")
DIGITS = TokenVocabulary("0123456789", joiner="")


class NumberTranslation(NamedTuple):
    """Train, validation and test pairs, and the two vocabularies.

    Each split is ``{"source": (n, S), "inputs": (n, T), "targets": (n, T), "number": (n,)}``
    of int32, where ``S`` and ``T`` are the longest source and target (plus ``<eos>``) of
    the direction, so that every split has the same shapes.
    """

    train: dict[str, np.ndarray]
    validation: dict[str, np.ndarray]
    test: dict[str, np.ndarray]
    source: TokenVocabulary
    target: TokenVocabulary


def vocabularies(direction: str) -> tuple[TokenVocabulary, TokenVocabulary]:
    """``(source, target)`` vocabularies of ``"to_digits"`` (words -> digits) or ``"to_words"``."""
    if direction not in DIRECTIONS:
        raise ValueError(f"data.direction must be one of {', '.join(DIRECTIONS)}; got {direction!r}")
    return (WORDS, DIGITS) if direction == "to_digits" else (DIGITS, WORDS)


def pad(rows: Sequence[Sequence[int]], length: int) -> np.ndarray:
    """Right-pads lists of ids with ``<pad>`` into an int32 ``(len(rows), length)`` array."""
    out = np.full((len(rows), length), PAD, np.int32)
    for i, row in enumerate(rows):
        if len(row) > length:
            raise ValueError(f"a sequence of {len(row)} tokens does not fit in {length}")
        out[i, : len(row)] = row
    return out


def encode_pairs(numbers: Sequence[int] | np.ndarray, direction: str = "to_digits") -> dict[str, np.ndarray]:
    """The padded ``source``, ``inputs``, ``targets`` (and ``number``) arrays of ``numbers``."""
    source_vocab, target_vocab = vocabularies(direction)
    words = [number_words(int(n)).split() for n in numbers]
    digits = [list(str(int(n))) for n in numbers]
    source, target = (words, digits) if direction == "to_digits" else (digits, words)
    source_len, target_len = (MAX_WORDS, MAX_DIGITS) if direction == "to_digits" else (MAX_DIGITS, MAX_WORDS)
    target_ids = [target_vocab.encode(t) for t in target]
    return {
        "source": pad([source_vocab.encode(s) for s in source], source_len),
        "inputs": pad([[BOS, *t] for t in target_ids], target_len + 1),
        "targets": pad([[*t, EOS] for t in target_ids], target_len + 1),
        "number": np.asarray(numbers, np.int32),
    }


def number_translation(
    train: int = 20_000, validation: int = 1000, test: int = 2000, *, seed: int = 0, direction: str = "to_digits"
) -> NumberTranslation:
    """Distinct random numbers in ``[1, 999999]`` as translation pairs, split by number.

    The numbers are ``np.random.default_rng(seed).choice`` without replacement, so the three
    splits are disjoint and the data is a pure function of the arguments.

    Args:
      train, validation, test: how many numbers in each split.
      seed: the seed of the draw.
      direction: ``"to_digits"`` (words in, digits out) or ``"to_words"``.

    Example:
      >>> data = number_translation(1000, 100, 100, seed=0)
      >>> data.source.decode(data.train["source"][0]), data.target.decode(data.train["targets"][0])
    """
    vocabularies(direction)  # checks the direction before the work
    sizes = {"train": train, "validation": validation, "test": test}
    for name, size in sizes.items():
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"number_translation: `{name}` must be a positive number of examples, got {size!r}")
    if sum(sizes.values()) > MAXIMUM:
        raise ValueError(f"number_translation: {sum(sizes.values())} distinct numbers asked for, only {MAXIMUM} exist")
    numbers = np.random.default_rng(seed).choice(MAXIMUM, size=sum(sizes.values()), replace=False) + 1
    cuts = np.cumsum([train, validation])
    train_pairs, validation_pairs, test_pairs = (encode_pairs(part, direction) for part in np.split(numbers, cuts))
    return NumberTranslation(train_pairs, validation_pairs, test_pairs, *vocabularies(direction))
