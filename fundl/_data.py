"""Datasets, the basics: how many examples, checked once on the host, read by rows.

A dataset is either in memory, any pytree of arrays (a dict of NumPy arrays, typically)
whose leaves share a leading example axis, or a **source**: anything with ``__len__`` and
``__getitem__(i)`` returning one example (a pytree of arrays), such as
``fundl.datasets.records(path)``, a ``grain.MapDataset`` or a list of examples' files read
on demand. A source is read lazily, a few rows at a time (``read_rows``); a source with a
``read(indices)`` method reads a batch at once. These checks and readers are shared by the
losses, the datasets and the training loop, and need nothing but NumPy and ``jax.tree``.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Batch = Any


_NOT_IN_MEMORY = (
    "{name} is {what}: fit needs random access to the data, as arrays with a leading example axis "
    "(e.g. {{'image': (n, 8, 8), 'label': (n,)}} or (x, y)) or as a source with __len__ and __getitem__ "
    "(e.g. fundl.datasets.records(path)). Collect a stream first: "
    "batches = list(...); data = jax.tree.map(lambda *b: np.concatenate(b), *batches) "
    "(np.stack for single examples instead of batches), or write it with fundl.datasets.write_records"
)


_PYTHON_LISTS = (
    "{name} holds Python lists of numbers ({where}): fit needs arrays with a leading example axis. "
    "Make them NumPy arrays first, e.g. (np.asarray(x, np.float32), np.asarray(y, np.int32))"
)


def _python_list(data: Any) -> str | None:
    """Where ``data`` holds a Python list of numbers (or of lists) instead of an array, if it does."""
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, Mapping):
            stack += reversed([(f"{path}[{key!r}]", value) for key, value in node.items()])
        elif isinstance(node, list) and node and isinstance(node[0], (int, float, list)):  # bool is an int
            return f"{path or 'it'} is a list of {len(node)} {type(node[0]).__name__}s"
        elif isinstance(node, (list, tuple)):
            stack += reversed([(f"{path}[{i}]", value) for i, value in enumerate(node)])
    return None


def _lazy_data(data: Any) -> str | None:
    """What ``data`` is, if it is an iterator, generator or other data stream rather than arrays."""
    is_stream = lambda leaf: isinstance(leaf, Iterable) and not hasattr(leaf, "shape")  # noqa: E731
    for leaf in [data, *jax.tree.leaves(data, is_leaf=is_stream)]:
        if isinstance(leaf, np.ndarray) and leaf.dtype == object and leaf.ndim == 0:
            leaf = leaf.item()  # np.asarray(generator) wraps it in an object array
        if hasattr(leaf, "shape") or isinstance(leaf, (str, bytes, list, tuple, Mapping)):
            continue
        if isinstance(leaf, (Iterator, Generator)):
            return f"an iterator ({type(leaf).__name__})"
        if isinstance(leaf, Iterable):
            return f"a stream of batches ({type(leaf).__name__})"
    return None


def is_source(data: Any) -> bool:
    """Whether ``data`` is a random-access source of examples rather than arrays with an example axis."""
    if isinstance(data, (Mapping, tuple, list, range, str, bytes, np.ndarray, jax.Array)) or hasattr(data, "shape"):
        return False
    return hasattr(data, "__len__") and hasattr(data, "__getitem__")


def read_rows(data: Any, indices: Any) -> Any:
    """The examples of ``data`` at ``indices`` (an integer array), stacked: leaves ``(*indices.shape, ...)``.

    In-memory arrays are indexed; a source is asked for the batch (``source.read(indices)``)
    if it can, else for each example, stacked.
    """
    indices = np.asarray(indices)
    if not is_source(data):
        return jax.tree.map(lambda a: a[indices], data)
    if hasattr(data, "read"):
        return data.read(indices)
    examples = [data[int(i)] for i in indices.ravel()]
    return jax.tree.map(lambda *leaves: np.stack(leaves).reshape(*indices.shape, *np.shape(leaves[0])), *examples)


def sample(data: Any, count: int = 256) -> Any:
    """The first ``count`` examples of ``data`` (all of it in memory): what is checked of a source before training."""
    return read_rows(data, np.arange(min(count, len(data)))) if is_source(data) else data


def num_examples(data: Any, name: str = "data") -> int:
    """The number of examples: the common length of the leading axis of every array, or a source's ``len``.

    Raises:
      TypeError: ``data`` is an iterator, a generator or another stream of batches.
      ValueError: ``data`` is empty, or its arrays disagree on the number of examples.
    """
    if is_source(data):
        if len(data) == 0:
            raise ValueError(f"{name} is empty: the source has 0 examples")
        return len(data)
    if (what := _lazy_data(data)) is not None:
        raise TypeError(_NOT_IN_MEMORY.format(name=name, what=what))
    if (where := _python_list(data)) is not None:
        raise TypeError(_PYTHON_LISTS.format(name=name, where=where))
    leaves = jax.tree.leaves(data)
    if not leaves:
        raise ValueError(f"{name} is empty: expected a pytree of arrays with a leading example axis")
    sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in leaves}
    if None in sizes or len(sizes) != 1:
        shapes = str(jax.tree.map(np.shape, data))
        shapes = shapes if len(shapes) <= 300 else shapes[:300] + " ..."
        raise ValueError(f"{name}: every array needs the same leading (example) axis, got shapes {shapes}")
    (size,) = sizes
    assert size is not None  # a leaf without a leading axis was refused above
    if size == 0:
        raise ValueError(f"{name} is empty: it has 0 examples")
    return size


WHOLE_SPLIT_BYTES = 8 << 20  # an evaluation split this small is evaluated as one batch


def eval_batch_size_for(split: Any, given: int | None, training: int) -> int:
    """The batch size to evaluate ``split`` with: ``given`` if set; else the whole split in one
    batch when its arrays take at most 8 MiB (one call, and one shape to compile); else
    the training batch size."""
    if given:
        return int(given)
    if is_source(split):  # its size: the first example's, times the number of examples
        size = len(split) * sum(np.asarray(leaf).nbytes for leaf in jax.tree.leaves(split[0]))
        return num_examples(split) if size <= WHOLE_SPLIT_BYTES else training
    size = sum(getattr(leaf, "nbytes", None) or np.asarray(leaf).nbytes for leaf in jax.tree.leaves(split))
    return num_examples(split) if size <= WHOLE_SPLIT_BYTES else training


def check_batch_size(batch_size: Any, size: int | None, name: str) -> None:
    """Raises ValueError unless ``batch_size`` is a positive int, at most ``size`` if one is given."""
    if isinstance(batch_size, (bool, np.bool_)) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise ValueError(f"batch size for {name} must be a positive integer, got {batch_size!r}")
    if size is not None and batch_size > size:
        raise ValueError(
            f"batch size {batch_size} is larger than {name}, which has {size} examples: "
            f"use a batch size of at most {size}"
        )


def rows(data: Any, start: int, stop: int) -> Any:
    """Examples ``start`` to ``stop`` of in-memory arrays (a slice) or of a source (read)."""
    return read_rows(data, np.arange(start, stop)) if is_source(data) else jax.tree.map(lambda a: a[start:stop], data)


def in_order(data: Any, batch_size: int) -> Iterator[tuple[Batch, int]]:
    """Every example once, in order, as ``(batch, size)``; the last batch may be smaller."""
    if not is_source(data):
        data = jax.tree.map(np.asarray, data)
    size = num_examples(data)
    for start in range(0, size, batch_size):
        stop = min(start + batch_size, size)
        yield rows(data, start, stop), stop - start


def check_finite(data: Any, name: str = "data") -> None:
    """Raises ValueError at the first NaN or infinity in the float arrays of ``data``.

    Args:
      data: a pytree of arrays with a leading example axis, e.g. ``{"image": (n, 8, 8), ...}``.
      name: the split, for the message, e.g. ``"train data"``.

    Raises:
      ValueError: naming the split, the leaf's path, the example's index and the value.
    """
    for path, leaf in jax.tree_util.tree_leaves_with_path(data):
        if not hasattr(leaf, "dtype") or not jnp.issubdtype(leaf.dtype, jnp.inexact):
            continue
        values = np.asarray(leaf)
        finite = np.isfinite(values)
        if finite.all():
            continue
        where = tuple(int(i) for i in np.argwhere(~finite)[0])
        index = f" at index {where[0]}" if where else ""
        position = f" (position {where})" if len(where) > 1 else ""
        raise ValueError(
            f"{name}: {jax.tree_util.keystr(path) or 'the array'} has the non-finite value {values[where]}{index}"
            f"{position}: drop or repair those examples before training, e.g. keep = np.isfinite(x).all(axis=1)"
        )
