"""Training batches: shuffled each epoch by a rule that depends only on the seed and the epoch.

The examples left over at the end of an epoch (fewer than a batch) are skipped in that
epoch, and a different few in the next. The data is in memory or a source (see
:mod:`fundl._data`); the order is the same either way, so are the batches.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from fundl._data import Batch, check_batch_size, is_source, num_examples, read_rows


class Shuffled:
    """Training batches of a dataset, reshuffled each epoch by the rule ``rng(seed, epoch)``.

    The order of epoch ``e`` is ``np.random.default_rng([seed, e]).permutation(n)``, and
    batch ``i`` of that epoch holds examples ``order[i * batch_size:(i + 1) * batch_size]``.
    """

    def __init__(self, data: Any, batch_size: int, seed: int = 0, name: str = "train data"):
        self.source = is_source(data)
        self.data = data if self.source else jax.tree.map(np.asarray, data)
        self.size = num_examples(self.data, name)
        check_batch_size(batch_size, self.size, name)
        self.batch_size = int(batch_size)
        self.seed = seed
        self.steps_per_epoch = self.size // batch_size
        # a source is never copied to the devices whole: it is read a batch at a time
        self.data_bytes = float("inf") if self.source else sum(leaf.nbytes for leaf in jax.tree.leaves(self.data))
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
        return read_rows(self.data, order.reshape(count, self.batch_size)[:, rows])

    def batch(self, epoch: int, index: int, rows: slice = slice(None)) -> Batch:
        """Batch ``index`` of ``epoch``: leaves ``(batch, ...)``; ``rows`` as in :meth:`batches`."""
        return read_rows(self.data, self.order(epoch)[index * self.batch_size : (index + 1) * self.batch_size][rows])
