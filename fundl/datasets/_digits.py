"""The small 8x8 handwritten digits data set, bundled with fundl."""

from importlib import resources

import numpy as np

_FILE = "digits.npz"


def digits(validation: float = 0.0, *, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Load the bundled 8x8 handwritten digits, split into train and test (and validation).

    The data file ships inside the package, so this works offline and needs
    no scikit-learn. It holds the 1797 digits of scikit-learn's
    ``load_digits``, split once with
    ``train_test_split(X, y, test_size=0.15, random_state=37)``:
    1527 training and 270 test images (see ``scripts/make_digits.py``).

    Each image is 8x8 with raw integer intensities 0..16; they are returned
    divided by 16, so every value lies in [0, 1] and is a multiple of 1/16.
    Each call returns new arrays, which the caller may modify freely.

    With ``validation > 0``, that share of the training split is held out as a
    ``"validation"`` split (:func:`~fundl.datasets.train_validation_split` with ``seed``),
    for choices made during training (which epoch, which learning rate), so that the
    test split is scored once, at the end, by a model it did not help to choose.

    Data source: Optical Recognition of Handwritten Digits, E. Alpaydin and
    C. Kaynak, UCI Machine Learning Repository, licensed CC BY 4.0.

    Args:
        validation: the share of the training split held out for validation (0: none).
        seed: the seed of that split.

    Returns:
        ``{"train": {"image": x, "label": y}, "test": {"image": x, "label": y}}``
        where ``x`` is float32 of shape (n, 8, 8) with values in [0, 1] and
        ``y`` is int32 of shape (n,) with values 0..9; n is 1527 for
        ``"train"`` and 270 for ``"test"``. With ``validation=0.2``, a
        ``"validation"`` split of 305 images comes between them and ``"train"`` keeps 1222.

    Example:
        >>> data = digits()
        >>> data["train"]["image"].shape, data["train"]["image"].dtype
        ((1527, 8, 8), dtype('float32'))
        >>> data["test"]["label"].shape, data["test"]["label"].dtype
        ((270,), dtype('int32'))
        >>> {name: len(split["label"]) for name, split in digits(validation=0.2).items()}
        {'train': 1222, 'validation': 305, 'test': 270}
    """
    source = resources.files("fundl.datasets").joinpath(_FILE)
    with source.open("rb") as file, np.load(file) as stored:
        data = {
            split: {
                "image": stored[f"{split}_image"].astype(np.float32) / np.float32(16),
                "label": stored[f"{split}_label"].astype(np.int32),
            }
            for split in ("train", "test")
        }
    if not validation:
        return data
    from fundl.datasets._split import train_validation_split

    train, held_out = train_validation_split(data["train"], validation, seed=seed)
    return {"train": train, "validation": held_out, "test": data["test"]}
