"""Read and write IDX files (the MNIST format), and load MNIST from a folder."""

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

# IDX type code -> big-endian dtype of the stored values.
_CODE_TO_DTYPE: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
# Native-endian dtype -> IDX type code.
_DTYPE_TO_CODE = {dtype.newbyteorder("="): code for code, dtype in _CODE_TO_DTYPE.items()}
_GZIP_MAGIC = b"\x1f\x8b"

_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_MNIST_ORIGIN = "http://yann.lecun.com/exdb/mnist/"


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file, plain or gzip-compressed, into a NumPy array.

    Compression is detected from the file's first bytes, not its name.

    Args:
        path: The IDX file to read.

    Returns:
        A native-endian array with the shape and dtype stored in the file
        (uint8, int8, int16, int32, float32 or float64).

    Raises:
        ValueError: If the file is not valid IDX: bad magic bytes, unknown
            type code, or too little or too much data for its header.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (EOFError, gzip.BadGzipFile, zlib.error) as error:
            raise ValueError(f"{path}: corrupt or truncated gzip data ({error})") from None
    if len(raw) < 4 or raw[:2] != b"\x00\x00":
        raise ValueError(
            f"{path}: not an IDX file: expected magic bytes 00 00 <type> <ndim>, "
            f"found {raw[:4].hex(' ') or 'an empty file'}"
        )
    code, ndim = raw[2], raw[3]
    if code not in _CODE_TO_DTYPE:
        known = ", ".join(f"0x{c:02X}" for c in _CODE_TO_DTYPE)
        raise ValueError(f"{path}: unknown IDX type code: expected one of {known}, found 0x{code:02X}")
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise ValueError(
            f"{path}: truncated header: expected {header_size} bytes for {ndim} dimensions, found {len(raw)}"
        )
    shape = struct.unpack(f">{ndim}I", raw[4:header_size])
    dtype = _CODE_TO_DTYPE[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(raw) - header_size
    if found != expected:
        problem = "truncated data" if found < expected else "trailing data"
        raise ValueError(
            f"{path}: {problem}: expected {expected} data bytes for shape {shape} "
            f"of {dtype.newbyteorder('=')}, found {found}"
        )
    array = np.frombuffer(raw, dtype=dtype, offset=header_size).reshape(shape)
    return array.astype(dtype.newbyteorder("="))  # a writable, native-endian copy


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write an array to an IDX file, gzip-compressed if the name ends in ``.gz``.

    Args:
        path: The file to create or overwrite.
        array: Array of any shape (at most 255 dimensions) with dtype uint8,
            int8, int16, int32, float32 or float64. It is not cast.

    Raises:
        TypeError: If the array's dtype is not one of the supported ones.
        ValueError: If the array has too many dimensions or a too long axis.
    """
    path = Path(path)
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    if native not in _DTYPE_TO_CODE:
        supported = ", ".join(str(dtype) for dtype in _DTYPE_TO_CODE)
        raise TypeError(f"IDX cannot store dtype {array.dtype}; supported dtypes: {supported}")
    if array.ndim > 255 or any(size >= 2**32 for size in array.shape):
        raise ValueError(f"IDX cannot store shape {array.shape}: at most 255 axes below 2**32")
    code = _DTYPE_TO_CODE[native]
    header = struct.pack(f">BBBB{array.ndim}I", 0, 0, code, array.ndim, *array.shape)
    payload = header + array.astype(native.newbyteorder(">")).tobytes()
    if path.name.endswith(".gz"):
        payload = gzip.compress(payload, mtime=0)
    path.write_bytes(payload)


def _find(folder: Path, name: str) -> Path | None:
    """Return ``folder/name`` or ``folder/name.gz``, whichever exists (plain first)."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def mnist(path: str | os.PathLike) -> dict[str, dict[str, np.ndarray]]:
    """Load MNIST from a local folder holding the four standard IDX files.

    The folder must contain ``train-images-idx3-ubyte``,
    ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
    ``t10k-labels-idx1-ubyte``, each plain or gzip-compressed with a ``.gz``
    suffix. Nothing is downloaded.

    Args:
        path: The folder to read from.

    Returns:
        ``{"train": {"image": x, "label": y}, "test": {"image": x, "label": y}}``
        (the same structure as ``digits()``), where ``x`` is float32 of shape
        (n, rows, cols) (28x28 for MNIST) with the uint8 pixels divided by 255,
        and ``y`` is int32 of shape (n,).

    Raises:
        FileNotFoundError: If the folder or any of the four files is missing.
        ValueError: If a file is not valid IDX, has the wrong dtype or number
            of dimensions, or the image and label counts of a split differ.
    """
    folder = Path(path)
    found = {name: _find(folder, name) for names in _MNIST_FILES.values() for name in names}
    missing = [name for name, file in found.items() if file is None]
    if missing:
        where = f"{folder} (folder does not exist)" if not folder.is_dir() else f"{folder}"
        names = ", ".join(f"{name} (or {name}.gz)" for name in missing)
        raise FileNotFoundError(
            f"MNIST files missing in {where}: {names}. Download the four files from "
            f"{_MNIST_URL} (a mirror of {_MNIST_ORIGIN}) into {folder}"
        )
    files = {name: file for name, file in found.items() if file is not None}  # all of them, after the check above
    data = {}
    for split, (image_name, label_name) in _MNIST_FILES.items():
        image_file, label_file = files[image_name], files[label_name]
        images, labels = read_idx(image_file), read_idx(label_file)
        if images.dtype != np.uint8 or images.ndim != 3:
            raise ValueError(
                f"{image_file}: expected uint8 images of shape (n, rows, cols), "
                f"found {images.dtype} of shape {images.shape}"
            )
        if labels.ndim != 1:
            raise ValueError(f"{label_file}: expected labels of shape (n,), found shape {labels.shape}")
        if len(images) != len(labels):
            raise ValueError(
                f"image and label counts differ: {image_file} has {len(images)} images, "
                f"{label_file} has {len(labels)} labels"
            )
        data[split] = {
            "image": images.astype(np.float32) / np.float32(255),
            "label": labels.astype(np.int32),
        }
    return data
