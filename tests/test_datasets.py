"""Tests for fundl.datasets: the bundled digits, IDX files and the MNIST loader."""

import gzip
import struct
from importlib import resources

import numpy as np
import pytest

from fundl.datasets import digits, mnist, read_idx, write_idx

MNIST_NAMES = {
    "train_image": "train-images-idx3-ubyte",
    "train_label": "train-labels-idx1-ubyte",
    "test_image": "t10k-images-idx3-ubyte",
    "test_label": "t10k-labels-idx1-ubyte",
}


# --- digits ---------------------------------------------------------------


def test_digits_shapes_dtypes_and_values():
    data = digits()
    assert set(data) == {"train", "test"}
    for split, n in (("train", 1527), ("test", 270)):
        image, label = data[split]["image"], data[split]["label"]
        assert set(data[split]) == {"image", "label"}
        assert image.shape == (n, 8, 8) and image.dtype == np.float32
        assert label.shape == (n,) and label.dtype == np.int32
        assert image.min() == 0.0 and image.max() == 1.0
        raw = image * 16  # exact in float32: raw values were the integers 0..16
        np.testing.assert_array_equal(raw, np.round(raw))
        assert set(np.unique(label).tolist()) == set(range(10))


def test_digits_validation_split_holds_out_part_of_train_reproducibly():
    whole, split = digits(), digits(validation=0.2)
    assert list(split) == ["train", "validation", "test"]
    assert (len(split["train"]["label"]), len(split["validation"]["label"])) == (1222, 305)
    np.testing.assert_array_equal(split["test"]["image"], whole["test"]["image"])  # the test split is untouched

    def rows(part):
        return {r.tobytes() for r in np.concatenate([part["image"].reshape(-1, 64), part["label"][:, None]], 1)}

    assert rows(split["train"]) | rows(split["validation"]) == rows(whole["train"])  # a partition of the training split
    assert not rows(split["train"]) & rows(split["validation"])
    np.testing.assert_array_equal(
        digits(validation=0.2)["validation"]["label"], split["validation"]["label"]
    )  # same seed, same split
    assert not np.array_equal(digits(validation=0.2, seed=1)["validation"]["label"], split["validation"]["label"])
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        digits(validation=1.5)


def test_digits_test_split_class_counts():
    # Counted once from the bundled file (scikit-learn's load_digits split with
    # test_size=0.15, random_state=37); a different split would change them.
    expected = [27, 29, 29, 17, 28, 31, 26, 24, 35, 24]
    counts = np.bincount(digits()["test"]["label"], minlength=10)
    assert counts.tolist() == expected


def test_digits_matches_sklearn_split():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    model_selection = pytest.importorskip("sklearn.model_selection")
    source = sklearn_datasets.load_digits()
    x_train, x_test, y_train, y_test = model_selection.train_test_split(
        source.images, source.target, test_size=0.15, random_state=37
    )
    expected = {"train": (x_train, y_train), "test": (x_test, y_test)}

    stored_file = resources.files("fundl.datasets").joinpath("digits.npz")
    with stored_file.open("rb") as file, np.load(file) as stored:
        for split, (x, y) in expected.items():
            assert stored[f"{split}_image"].dtype == np.uint8
            assert stored[f"{split}_label"].dtype == np.uint8
            np.testing.assert_array_equal(stored[f"{split}_image"], x)
            np.testing.assert_array_equal(stored[f"{split}_label"], y)

    data = digits()
    for split, (x, y) in expected.items():
        np.testing.assert_array_equal(data[split]["image"], (x / 16).astype(np.float32))
        np.testing.assert_array_equal(data[split]["label"], y)


def test_digits_returns_fresh_arrays():
    first = digits()
    original = first["train"]["image"][0].copy()
    first["train"]["image"][0] = 123.0
    first["test"]["label"][:] = -1
    second = digits()
    np.testing.assert_array_equal(second["train"]["image"][0], original)
    assert second["test"]["label"].min() >= 0


# --- IDX ------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize(
    ("dtype", "shape"),
    [
        (np.uint8, (3, 4, 5)),
        (np.int8, (7,)),
        (np.int16, (2, 3)),
        (np.int32, (4, 1, 2, 3)),
        (np.float32, (5, 2)),
        (np.float64, (0, 3)),
        (np.float64, ()),
    ],
)
def test_idx_round_trip(tmp_path, dtype, shape, suffix):
    rng = np.random.default_rng(0)
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    if info is not None:
        array = rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    else:
        array = (rng.standard_normal(shape) * 1e3).astype(dtype)
    path = tmp_path / f"data.idx{suffix}"
    write_idx(path, array)
    if suffix:
        assert path.read_bytes()[:2] == b"\x1f\x8b"
    result = read_idx(path)
    assert result.dtype == np.dtype(dtype) and result.dtype.isnative
    assert result.shape == shape
    np.testing.assert_array_equal(result, array)
    assert result.flags.writeable


def test_idx_big_endian_input_round_trips(tmp_path):
    array = np.arange(6, dtype=">i4").reshape(2, 3)
    write_idx(tmp_path / "a.idx", array)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.idx"), array)


def test_idx_matches_hand_built_bytes(tmp_path):
    array = np.array([[1, 2, 3], [250, 0, 7]], dtype=np.uint8)
    # 00 00, type 0x08 (uint8), 2 dims, dims 2 and 3 as big-endian uint32, data.
    expected = struct.pack(">BBBBII", 0, 0, 0x08, 2, 2, 3) + bytes([1, 2, 3, 250, 0, 7])
    write_idx(tmp_path / "w.idx", array)
    assert (tmp_path / "w.idx").read_bytes() == expected
    (tmp_path / "hand.idx").write_bytes(expected)
    np.testing.assert_array_equal(read_idx(tmp_path / "hand.idx"), array)
    # Gzip is detected from the content, not the name.
    (tmp_path / "hand_gz").write_bytes(gzip.compress(expected))
    np.testing.assert_array_equal(read_idx(tmp_path / "hand_gz"), array)


def test_idx_int16_is_big_endian_on_disk(tmp_path):
    write_idx(tmp_path / "s.idx", np.array([258, -2], dtype=np.int16))
    assert (tmp_path / "s.idx").read_bytes()[8:] == b"\x01\x02\xff\xfe"


def test_write_idx_rejects_unsupported_dtype(tmp_path):
    with pytest.raises(TypeError, match=r"int64.*supported.*uint8.*float64"):
        write_idx(tmp_path / "x.idx", np.zeros(3, dtype=np.int64))


def test_read_idx_bad_magic(tmp_path):
    path = tmp_path / "bad.idx"
    path.write_bytes(b"\x12\x34\x08\x01" + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(ValueError, match=r"bad\.idx.*expected magic.*found 12 34 08 01"):
        read_idx(path)


def test_read_idx_unknown_type_code(tmp_path):
    path = tmp_path / "code.idx"
    path.write_bytes(struct.pack(">BBBBI", 0, 0, 0x0A, 1, 1) + b"\x00")
    with pytest.raises(ValueError, match=r"code\.idx.*unknown IDX type code.*found 0x0A"):
        read_idx(path)


@pytest.mark.parametrize("name", ["cut.idx", "cut.idx.gz"])
def test_read_idx_truncated_data(tmp_path, name):
    # Header for a 4x5 int32 array (80 data bytes), followed by only 76 bytes.
    raw = struct.pack(">BBBBII", 0, 0, 0x0C, 2, 4, 5) + bytes(4 * 20 - 4)
    if name.endswith(".gz"):
        raw = gzip.compress(raw)
    (tmp_path / name).write_bytes(raw)
    with pytest.raises(ValueError, match=r"cut\.idx.*truncated data.*expected 80.*found 76"):
        read_idx(tmp_path / name)


def test_read_idx_truncated_gzip_stream(tmp_path):
    path = tmp_path / "broken.idx.gz"
    write_idx(path, np.arange(100, dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"broken\.idx\.gz.*gzip"):
        read_idx(path)


# --- MNIST ----------------------------------------------------------------


def _fake_mnist(folder, suffix, n_train=5, n_test=3):
    rng = np.random.default_rng(1)
    arrays = {
        "train_image": rng.integers(0, 256, (n_train, 28, 28)).astype(np.uint8),
        "train_label": rng.integers(0, 10, n_train).astype(np.uint8),
        "test_image": rng.integers(0, 256, (n_test, 28, 28)).astype(np.uint8),
        "test_label": rng.integers(0, 10, n_test).astype(np.uint8),
    }
    arrays["train_image"][0, 0, 0], arrays["train_image"][0, 0, 1] = 0, 255
    for key, name in MNIST_NAMES.items():
        write_idx(folder / f"{name}{suffix}", arrays[key])
    return arrays


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_mnist_loads_fake_files(tmp_path, suffix):
    arrays = _fake_mnist(tmp_path, suffix)
    data = mnist(tmp_path)
    for split, n in (("train", 5), ("test", 3)):
        image, label = data[split]["image"], data[split]["label"]
        assert image.shape == (n, 28, 28) and image.dtype == np.float32
        assert label.shape == (n,) and label.dtype == np.int32
        assert 0.0 <= image.min() and image.max() <= 1.0
        np.testing.assert_allclose(image * 255, arrays[f"{split}_image"], atol=1e-4)
        np.testing.assert_array_equal(label, arrays[f"{split}_label"])
    assert data["train"]["image"][0, 0, 0] == 0.0
    assert data["train"]["image"][0, 0, 1] == 1.0


def test_mnist_mixed_plain_and_gzip_and_other_image_size(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.full((2, 4, 6), 51, np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([3, 4], np.uint8))
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((1, 4, 6), np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([9], np.uint8))
    data = mnist(str(tmp_path))
    assert data["train"]["image"].shape == (2, 4, 6)
    np.testing.assert_allclose(data["train"]["image"], 0.2)
    assert data["test"]["label"].tolist() == [9]


def test_mnist_missing_file(tmp_path):
    _fake_mnist(tmp_path, ".gz")
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    pattern = (
        r"t10k-labels-idx1-ubyte \(or t10k-labels-idx1-ubyte\.gz\)"
        r".*https://ossci-datasets\.s3\.amazonaws\.com/mnist/"
    )
    with pytest.raises(FileNotFoundError, match=pattern) as excinfo:
        mnist(tmp_path)
    message = str(excinfo.value)
    assert str(tmp_path) in message
    assert "train-images-idx3-ubyte" not in message  # only the missing file is named


def test_mnist_missing_folder(tmp_path):
    folder = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=r"nowhere.*does not exist.*ossci-datasets") as e:
        mnist(folder)
    for name in MNIST_NAMES.values():
        assert name in str(e.value)


def test_mnist_count_mismatch(tmp_path):
    _fake_mnist(tmp_path, "")
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(2, np.uint8))
    pattern = r"t10k-images-idx3-ubyte has 3 images.*t10k-labels-idx1-ubyte has 2 labels"
    with pytest.raises(ValueError, match=pattern):
        mnist(tmp_path)


def test_mnist_corrupted_file(tmp_path):
    _fake_mnist(tmp_path, "")
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(b"\xff\xff" + path.read_bytes()[2:])
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.*expected magic"):
        mnist(tmp_path)
