"""In-memory datasets: shuffled training batches and exact evaluation batches.

A dataset is any pytree of arrays (a dict of NumPy arrays, typically) whose leaves share
a leading example axis. Training batches are drawn without replacement in an order that
depends only on ``(seed, epoch)``; the examples left over at the end of an epoch (fewer
than a batch) are skipped in that epoch, and a different few in the next.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Iterator, Mapping
from typing import Any

import jax
import numpy as np

Batch = Any


_NOT_IN_MEMORY = (
    "{name} is {what}: fit needs the data in memory, as arrays with a leading example axis, "
    "e.g. {{'image': (n, 8, 8), 'label': (n,)}} or (x, y). Collect it first: "
    "batches = list(...); data = jax.tree.map(lambda *b: np.concatenate(b), *batches) "
    "(np.stack for single examples instead of batches)"
)


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
    leaves = jax.tree.leaves(data)
    if not leaves:
        raise ValueError(f"{name} is empty: expected a pytree of arrays with a leading example axis")
    sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in leaves}
    if None in sizes or len(sizes) != 1:
        shapes = jax.tree.map(np.shape, data)
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


class Shuffled:
    """Training batches of a dataset, reshuffled each epoch by the rule ``rng(seed, epoch)``.

    The order of epoch ``e`` is ``np.random.default_rng([seed, e]).permutation(n)``, and
    batch ``i`` of that epoch holds examples ``order[i * batch_size:(i + 1) * batch_size]``.
    """

    def __init__(self, data: Any, batch_size: int, seed: int = 0, name: str = "train data"):
        self.data = jax.tree.map(np.asarray, data)
        self.size = num_examples(self.data, name)
        check_batch_size(batch_size, self.size, name)
        self.batch_size = int(batch_size)
        self.seed = seed
        self.steps_per_epoch = self.size // batch_size
        self.data_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(self.data))
        self._order: tuple[int, np.ndarray] | None = None

    def order(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.size))
        return self._order[1]

    def indices(self, epoch: int, first: int, count: int, rows: slice = slice(None)) -> np.ndarray:
        """The example indices of batches ``first ..`` of ``epoch``: int32 ``(count, batch)``, or
        ``(batch,)`` if ``count`` is 1; ``rows`` as in :meth:`batches`."""
        order = self.order(epoch)[first * self.batch_size : (first + count) * self.batch_size]
        order = order.reshape(count, self.batch_size)[:, rows].astype(np.int32)
        return order if count > 1 else order[0]

    def batches(self, epoch: int, first: int, count: int, rows: slice = slice(None)) -> Batch:
        """Batches ``first .. first + count - 1`` of ``epoch``, stacked: leaves ``(count, batch, ...)``.

        ``rows`` selects the same rows of every batch (a process's share of a global batch).
        """
        order = self.order(epoch)[first * self.batch_size : (first + count) * self.batch_size]
        order = order.reshape(count, self.batch_size)[:, rows]
        return jax.tree.map(lambda a: a[order], self.data)

    def batch(self, epoch: int, index: int, rows: slice = slice(None)) -> Batch:
        """Batch ``index`` of ``epoch``: leaves ``(batch, ...)``; ``rows`` as in :meth:`batches`."""
        order = self.order(epoch)[index * self.batch_size : (index + 1) * self.batch_size][rows]
        return jax.tree.map(lambda a: a[order], self.data)


def in_order(data: Any, batch_size: int) -> Iterator[tuple[Batch, int]]:
    """Every example once, in order, as ``(batch, size)``; the last batch may be smaller."""
    data = jax.tree.map(np.asarray, data)
    size = num_examples(data)
    for start in range(0, size, batch_size):
        stop = min(start + batch_size, size)
        yield jax.tree.map(lambda a: a[start:stop], data), stop - start
