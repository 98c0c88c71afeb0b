"""In-memory datasets, the basics: how many examples, checked once on the host, read in order.

A dataset is any pytree of arrays (a dict of NumPy arrays, typically) whose leaves share
a leading example axis. These checks and readers are shared by the losses, the datasets
and the training loop, and need nothing but NumPy and ``jax.tree``.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Batch = Any


_NOT_IN_MEMORY = (
    "{name} is {what}: fit needs the data in memory, as arrays with a leading example axis, "
    "e.g. {{'image': (n, 8, 8), 'label': (n,)}} or (x, y). Collect it first: "
    "batches = list(...); data = jax.tree.map(lambda *b: np.concatenate(b), *batches) "
    "(np.stack for single examples instead of batches)"
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


def num_examples(data: Any, name: str = "data") -> int:
    """The common length of the leading axis of every array in ``data``.

    Raises:
      TypeError: ``data`` is an iterator, a generator or another stream of batches.
      ValueError: ``data`` is empty, or its arrays disagree on the number of examples.
    """
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


def in_order(data: Any, batch_size: int) -> Iterator[tuple[Batch, int]]:
    """Every example once, in order, as ``(batch, size)``; the last batch may be smaller."""
    data = jax.tree.map(np.asarray, data)
    size = num_examples(data)
    for start in range(0, size, batch_size):
        stop = min(start + batch_size, size)
        yield jax.tree.map(lambda a: a[start:stop], data), stop - start


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
