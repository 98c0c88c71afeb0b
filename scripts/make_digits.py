"""Generate ``fundl/datasets/digits.npz``, the bundled 8x8 handwritten digits.

This is a one-off script, kept in the repository so that the data file can be
checked and rebuilt. It takes scikit-learn's bundled copy of the digits data
(``sklearn.datasets.load_digits``), splits it exactly as the course does with
``train_test_split(X, y, test_size=0.15, random_state=37)`` (1527 training and
270 test images) and stores the four arrays, all ``uint8``, in a compressed
``.npz`` file:

* ``train_image`` (1527, 8, 8), values 0..16
* ``train_label`` (1527,), values 0..9
* ``test_image`` (270, 8, 8), values 0..16
* ``test_label`` (270,), values 0..9

It then prints the SHA-256 of each stored array's raw bytes, so that a rebuilt
file can be compared with the committed one.

Run it from the repository root::

    python scripts/make_digits.py

scikit-learn is needed only here, at generation time; ``fundl.datasets.digits``
reads the ``.npz`` file and does not import scikit-learn.

The file is written with fixed zip timestamps, so a rerun with the same NumPy
and zlib gives the same bytes, not only the same arrays.

Data credit: Optical Recognition of Handwritten Digits, E. Alpaydin and
C. Kaynak, UCI Machine Learning Repository, CC BY 4.0.
"""

import argparse
import hashlib
import zipfile
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "fundl" / "datasets" / "digits.npz"
TEST_SIZE = 0.15
RANDOM_STATE = 37


def make_split() -> dict[str, np.ndarray]:
    """Return the course's train/test split of the digits as uint8 arrays."""
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.images, digits.target, test_size=TEST_SIZE, random_state=RANDOM_STATE
    )
    arrays = {
        "train_image": x_train,
        "train_label": y_train,
        "test_image": x_test,
        "test_label": y_test,
    }
    out = {}
    for name, array in arrays.items():
        as_uint8 = np.ascontiguousarray(array, dtype=np.uint8)
        if not np.array_equal(as_uint8, array):  # the data are small integers
            raise ValueError(f"{name} does not fit in uint8 without loss")
        out[name] = as_uint8
    return out


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` like ``np.savez_compressed``, with fixed zip timestamps.

    The layout (one deflated ``<name>.npy`` member per array) is the one
    ``np.savez_compressed`` writes; only the member dates are pinned to
    1980-01-01 so that the output does not depend on when the script ran.
    """
    with zipfile.ZipFile(path, "w") as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output .npz file")
    args = parser.parse_args()

    arrays = make_split()
    write_npz(args.out, arrays)

    with np.load(args.out) as stored:  # hash what was actually stored
        for name in arrays:
            array = stored[name]
            digest = hashlib.sha256(array.tobytes()).hexdigest()
            print(f"{digest}  {name} {array.dtype} {array.shape}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
