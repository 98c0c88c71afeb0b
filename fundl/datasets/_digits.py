"""The small 8x8 handwritten digits data set, bundled with fundl."""

from importlib import resources

import numpy as np

_FILE = "digits.npz"


def digits() -> dict[str, dict[str, np.ndarray]]:
    """Load the bundled 8x8 handwritten digits, split into train and test.

    The data file ships inside the package, so this works offline and needs
    no scikit-learn. It holds the 1797 digits of scikit-learn's
    ``load_digits``, split once with
    ``train_test_split(X, y, test_size=0.15, random_state=37)``:
    1527 training and 270 test images (see ``scripts/make_digits.py``).

    Each image is 8x8 with raw integer intensities 0..16; they are returned
    divided by 16, so every value lies in [0, 1] and is a multiple of 1/16.
    Each call returns new arrays, which the caller may modify freely.

    Data source: Optical Recognition of Handwritten Digits, E. Alpaydin and
    C. Kaynak, UCI Machine Learning Repository, licensed CC BY 4.0.

    Returns:
        ``{"train": {"image": x, "label": y}, "test": {"image": x, "label": y}}``
        where ``x`` is float32 of shape (n, 8, 8) with values in [0, 1] and
        ``y`` is int32 of shape (n,) with values 0..9; n is 1527 for
        ``"train"`` and 270 for ``"test"``.

    Example:
        >>> data = digits()
        >>> data["train"]["image"].shape, data["train"]["image"].dtype
        ((1527, 8, 8), dtype('float32'))
        >>> data["test"]["label"].shape, data["test"]["label"].dtype
        ((270,), dtype('int32'))
    """
    source = resources.files("fundl.datasets").joinpath(_FILE)
    with source.open("rb") as file, np.load(file) as stored:
        return {
            split: {
                "image": stored[f"{split}_image"].astype(np.float32) / np.float32(16),
                "label": stored[f"{split}_label"].astype(np.int32),
            }
            for split in ("train", "test")
        }
