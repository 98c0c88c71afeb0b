"""Small data sets for examples and tests, as plain NumPy arrays.

``digits()`` returns the 8x8 handwritten digits bundled with the package (no
download, no scikit-learn needed); ``mnist(path)`` loads MNIST from IDX files
that you have downloaded into a local folder. Both return
``{"train": {"image": ..., "label": ...}, "test": {...}}`` with float32 images
scaled to [0, 1] and int32 labels. ``read_idx`` and ``write_idx`` read and
write single IDX files, the format MNIST is distributed in. For character-level language
models, ``numbers_text()`` generates a corpus (numbers written out in English words),
``stdlib_text()`` reads the Python standard library's modules as one text, ``read_text(path)``
reads a file, ``Vocabulary`` maps characters to ids, ``sequences`` cuts next-character
training windows and ``held_out_splits`` cuts a text into train, validation and test windows.
"""

from fundl.datasets._augment import RandomShift as RandomShift
from fundl.datasets._digits import digits
from fundl.datasets._idx import mnist, read_idx, write_idx
from fundl.datasets._ratings import (
    Ratings as Ratings,
    noise_floor as noise_floor,
    positive_pairs as positive_pairs,
    positives as positives,
    ratings as ratings,
    to_rating as to_rating,
)
from fundl.datasets._records import (
    Records as Records,
    RecordsError as RecordsError,
    records as records,
    write_records as write_records,
)
from fundl.datasets._seq2seq import (
    NumberTranslation as NumberTranslation,
    TokenVocabulary as TokenVocabulary,
    number_translation as number_translation,
)
from fundl.datasets._split import train_validation_split as train_validation_split
from fundl.datasets._text import (
    Corpus,
    Vocabulary,
    held_out_splits,
    number_words,
    numbers_text,
    read_text,
    sequences,
    stdlib_text,
)

__all__ = [
    "digits",
    "mnist",
    "read_idx",
    "write_idx",
    "Corpus",
    "Vocabulary",
    "held_out_splits",
    "number_words",
    "numbers_text",
    "read_text",
    "sequences",
    "stdlib_text",
]
