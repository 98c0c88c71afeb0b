"""Datasets on disk: ArrayRecord shards written from arrays or examples, and read back as a checked source.

``write_records(path, data, shards=4)`` writes one record per example into ``shards``
ArrayRecord files and a small ``metadata.json`` (field names, shapes and dtypes, the
number of examples, the size and SHA-256 of every shard). ``records(path)`` opens them as a
random-access source that ``fit`` (and ``fundl run``) reads lazily, each process only the
rows of its share of each batch: a dataset larger than memory trains as one in memory does,
to the same params.

A record is the raw bytes of each field, one after the other, in the metadata's order:
every example has the same fields, shapes and dtypes (images of one size, integer labels),
so reading one is a few ``np.frombuffer`` views. Needs the optional extra ``fundl[data]``
(``array-record``; ``grain`` for worker processes).

Example:
  >>> write_records("digits-records/train", fl.datasets.digits()["train"], shards=2)
  >>> train = records("digits-records/train")       # len(train) == 1527; train[0] == {"image": ..., "label": ...}
  >>> fit(loss, optimizer, train_state, train, batch_size=32, epochs=15)
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sized
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "fundl-records/1"
METADATA = "metadata.json"
_MISSING = "{what} needs the optional extra fundl[data]: pip install 'fundl[data]' (missing: {module})"


def _array_record() -> Any:
    try:
        from array_record.python import array_record_data_source, array_record_module
    except ImportError as error:
        raise ImportError(_MISSING.format(what="reading and writing ArrayRecord files", module=error.name)) from None
    return array_record_module, array_record_data_source


class RecordsError(ValueError):
    """A records directory that cannot be read as the dataset its metadata describes."""


def _fields(example: Any) -> tuple[list[str], bool]:
    """The field names of an example (a dict of arrays, or a tuple), and whether it is a tuple."""
    if isinstance(example, Mapping):
        return [str(k) for k in example], False
    if isinstance(example, (tuple, list)):
        return [str(i) for i in range(len(example))], True
    raise TypeError(f"an example must be a dict of arrays or a tuple of arrays, got {type(example).__name__}")


def _examples(data: Any, count: int | None) -> tuple[Iterator[Any], int | None]:
    """Examples one at a time from in-memory arrays (a dict or tuple with a leading example axis) or an iterable."""
    if isinstance(data, Mapping) and all(hasattr(v, "shape") for v in data.values()):
        arrays = {k: np.asarray(v) for k, v in data.items()}
        n = len(next(iter(arrays.values())))
        return ({k: v[i] for k, v in arrays.items()} for i in range(n)), n
    if isinstance(data, tuple) and all(hasattr(v, "shape") for v in data):
        arrays_t = [np.asarray(v) for v in data]
        n = len(arrays_t[0])
        return (tuple(v[i] for v in arrays_t) for i in range(n)), n
    if isinstance(data, Iterable):
        return iter(data), len(data) if isinstance(data, Sized) else count
    raise TypeError(
        f"write_records takes arrays with a leading example axis or an iterable of examples, got {type(data).__name__}"
    )


def write_records(
    path: str | os.PathLike, data: Any, *, shards: int = 1, count: int | None = None, overwrite: bool = False
) -> dict[str, Any]:
    """Writes ``data`` as ArrayRecord shards and ``metadata.json`` under the directory ``path``.

    Args:
      path: a new (or empty) directory.
      data: in-memory arrays with a leading example axis (``{"image": (n, 8, 8), "label": (n,)}`` or
        ``(x, y)``), or any iterable of examples (dicts or tuples of arrays of fixed shapes).
      shards: how many files; examples go to them in contiguous runs, in order.
      count: how many examples an iterable without a length yields (needed to cut it into
        several shards; it is streamed, never held in memory).
      overwrite: replace an existing dataset at ``path``.

    Returns:
      The metadata written.
    """
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise ValueError(f"shards must be a positive integer, got {shards!r}")
    array_record, _ = _array_record()
    directory = Path(path)
    if directory.exists() and any(directory.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{directory} is not empty: choose a new directory, or write_records(..., overwrite=True)"
        )
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.array_record"):
        old.unlink()
    examples, count = _examples(data, count)
    names: list[str] = []
    specs: list[tuple[tuple[int, ...], np.dtype]] = []
    as_tuple = False
    if count is None and shards > 1:
        raise ValueError(
            f"to cut an iterable without a length into {shards} shards, give its number of examples: count=N"
        )
    per_shard = -(-count // shards) if count is not None else None
    shard_files, written = [], 0
    for shard in range(shards):
        name = f"shard-{shard:05d}-of-{shards:05d}.array_record"
        writer = array_record.ArrayRecordWriter(str(directory / name), "group_size:1,uncompressed")  # random reads
        n = 0
        for example in examples:
            if not names:
                names, as_tuple = _fields(example)
                values = list(example.values()) if isinstance(example, Mapping) else list(example)
                specs = [(np.shape(v), np.asarray(v).dtype) for v in values]
            writer.write(_encode(example, names, specs, written))
            n, written = n + 1, written + 1
            if n == per_shard:
                break
        writer.close()
        shard_files.append(
            {"file": name, "count": n, "bytes": (directory / name).stat().st_size, "sha256": _sha256(directory / name)}
        )
    if written == 0:
        raise ValueError("write_records got no examples")
    if count is not None and written != count:
        raise ValueError(f"write_records was told of {count} examples and got {written}")
    metadata = {
        "format": FORMAT,
        "count": written,
        "tuple": as_tuple,
        "fields": [{"name": n, "shape": list(s), "dtype": str(d)} for n, (s, d) in zip(names, specs)],
        "shards": shard_files,
    }
    metadata["dataset_sha256"] = hashlib.sha256(json.dumps(metadata, sort_keys=True).encode()).hexdigest()
    (directory / METADATA).write_text(json.dumps(metadata, indent=2) + "\n")
    return metadata


def _encode(example: Any, names: list[str], specs: list[tuple[tuple[int, ...], np.dtype]], index: int) -> bytes:
    values = [example[n] for n in names] if isinstance(example, Mapping) else list(example)
    parts = []
    for name, value, (shape, dtype) in zip(names, values, specs):
        array = np.asarray(value)
        if array.shape != shape or array.dtype != dtype:
            raise ValueError(
                f"example {index}, field {name!r}: expected {dtype}{list(shape)} like the first example, "
                f"got {array.dtype}{list(array.shape)}: every example needs the same shapes and dtypes"
            )
        parts.append(np.ascontiguousarray(array).tobytes())
    return b"".join(parts)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Records:
    """A records directory as a random-access source: ``len(records)``, ``records[i]`` (one example), and
    ``records.read(indices)`` (a batch of them, stacked), as ``fit`` reads it.

    Made by :func:`records`, which checks the metadata and every shard first. Picklable (worker
    processes reopen the files), and each process opens only the readers it uses.

    Attributes:
      path: the directory.
      metadata: its ``metadata.json``.
    """

    def __init__(self, path: Path, metadata: dict[str, Any]):
        self.path, self.metadata = path, metadata
        self._names = [f["name"] for f in metadata["fields"]]
        self._specs = [(tuple(f["shape"]), np.dtype(f["dtype"])) for f in metadata["fields"]]
        self._sizes = [int(np.prod(shape, dtype=np.int64)) * dtype.itemsize for shape, dtype in self._specs]
        self._record_bytes = sum(self._sizes)
        self._source: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "metadata": self.metadata}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["metadata"])  # type: ignore[misc]

    def __len__(self) -> int:
        return int(self.metadata["count"])

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}: {d}{list(s)}" for n, (s, d) in zip(self._names, self._specs))
        return f"records({str(self.path)!r}: {len(self)} examples of {{{fields}}})"

    def identity(self) -> str:
        """What the data is, as a run's sealed identity records it: the dataset's SHA-256 (of its metadata, which
        holds every shard's SHA-256), so the same records moved elsewhere are the same data."""
        digest = self.metadata.get("dataset_sha256")
        return f"records {digest or hashlib.sha256(json.dumps(self.metadata, sort_keys=True).encode()).hexdigest()}"

    @property
    def element_spec(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Each field's shape and dtype, ``{name: (shape, dtype)}``."""
        return dict(zip(self._names, self._specs))

    def _reader(self) -> Any:
        if self._source is None:
            _, data_source = _array_record()
            paths = [str(self.path / shard["file"]) for shard in self.metadata["shards"]]
            self._source = data_source.ArrayRecordDataSource(paths)
        return self._source

    def _check_index(self, index: int) -> int:
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self!r}: index {index} is out of range")
        return index % len(self)

    def __getitem__(self, index: int) -> Any:
        (raw,) = self._reader().__getitems__([self._check_index(int(index))])
        values = [np.array(v) for v in self._decode(raw, int(index), 1)]
        return tuple(v[0] for v in values) if self.metadata["tuple"] else {n: v[0] for n, v in zip(self._names, values)}

    def read(self, indices: Any) -> Any:
        """The examples at ``indices`` (any integer array), stacked: leaves ``(*indices.shape, ...)``."""
        indices = np.asarray(indices, np.int64)
        flat = [self._check_index(int(i)) for i in indices.ravel()]
        raw = b"".join(self._reader().__getitems__(flat)) if flat else b""
        values = [
            v.reshape(*indices.shape, *shape)
            for v, (shape, _) in zip(self._decode(raw, flat[0] if flat else 0, len(flat)), self._specs)
        ]
        return tuple(values) if self.metadata["tuple"] else dict(zip(self._names, values))

    def _decode(self, raw: bytes, first: int, count: int) -> list[np.ndarray]:
        """``count`` records' bytes, joined, as one array per field ``(count, *shape)``."""
        if len(raw) != count * self._record_bytes:
            ends = np.cumsum([s["count"] for s in self.metadata["shards"]])
            shard = self.metadata["shards"][int(np.searchsorted(ends, first, side="right"))]["file"]
            raise RecordsError(  # a shard written for other fields, or metadata edited after writing
                f"{self.path / shard}: its records (near index {first}) hold {len(raw) // max(count, 1)} bytes each, "
                f"{METADATA}'s fields {self.element_spec} take {self._record_bytes}: "
                "the shard does not match its metadata"
            )
        rows = np.frombuffer(raw, np.uint8).reshape(count, self._record_bytes)
        out, offset = [], 0
        for size, (shape, dtype) in zip(self._sizes, self._specs):
            out.append(rows[:, offset : offset + size].copy().view(dtype).reshape(count, *shape))
            offset += size
        return out


def records(path: str | os.PathLike, *, verify: bool = True) -> Records:
    """Opens a directory written by :func:`write_records` as a source, after checking it.

    Every shard must exist with the size the metadata records and, with ``verify`` (the
    default), the same SHA-256 (each shard read once): a missing, truncated, corrupted or
    foreign shard is an error naming the file, before any training. ``verify=False`` checks
    sizes only (for very large datasets on slow disks).

    Raises:
      FileNotFoundError: no directory, or no ``metadata.json`` in it.
      RecordsError: a shard is missing or does not match the metadata.
    """
    directory = Path(path)
    meta_path = directory / METADATA
    if not directory.is_dir():
        raise FileNotFoundError(f"records directory {directory} does not exist")
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"{meta_path} is missing: {directory} was not written by fundl.datasets.write_records "
            f"(or its metadata was lost: write it again)"
        )
    try:
        metadata = json.loads(meta_path.read_text())
    except json.JSONDecodeError as error:
        raise RecordsError(f"{meta_path} is not valid JSON: {error}") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise RecordsError(f"{meta_path} is not fundl records metadata (format {FORMAT!r})")
    for shard in metadata["shards"]:
        file = directory / shard["file"]
        if not file.is_file():
            raise RecordsError(f"{file} is missing ({METADATA} lists {len(metadata['shards'])} shards)")
        size = file.stat().st_size
        if size != shard["bytes"]:
            raise RecordsError(f"{file} has {size} bytes, {METADATA} records {shard['bytes']}: truncated or replaced")
        if verify and _sha256(file) != shard["sha256"]:
            raise RecordsError(
                f"{file} is not the shard {METADATA} describes (its SHA-256 differs): corrupted, "
                f"or a shard of another dataset"
            )
    _array_record()  # the extra is there, or a clear error now
    opened = Records(directory, metadata)
    for shard_first in np.cumsum([0] + [s["count"] for s in metadata["shards"]])[:-1]:
        opened.read(np.array([shard_first]))  # each shard's first record has the metadata's fields, shapes and dtypes
    return opened
