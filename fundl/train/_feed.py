"""The input of each compiled call: this process's rows of its batches, placed on the devices.

Training data kept on the devices is gathered there from index arrays; otherwise (a source,
data too large for the devices, augmented data) each member's :class:`Reader` reads the
batches ahead on the host.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np

from fundl.distributed import Placement
from fundl.train._data import Shuffled
from fundl.train._plan import CallPlan
from fundl.train._reader import Reader


class BatchFeed(NamedTuple):
    """Makes each call's input: an index array into the resident data, or the batches themselves.

    A population's inputs stack its members' batches (each member has its own data
    order) on an axis after the steps: ``(steps, members, batch)``.
    """

    orders: list[Shuffled]  # one per member (a single run: one)
    placement: Placement
    plan: CallPlan
    batch_size: int
    rows: slice
    resident: Any  # the training data on the device(s); None: the batches themselves are sent
    members: bool = False
    readers: list[Reader] | None = None  # one per member, when the batches are sent

    def call(self, step: int) -> tuple[int, Any]:
        """The size of the call after ``step`` steps, and its index array (or its batches)."""
        n = self.plan.call_size(step)
        if self.resident is not None:
            epoch, index = divmod(step, self.plan.per_epoch)
            local = self._stack([order.indices(epoch, index, n, self.rows) for order in self.orders], n)
        elif self.readers is not None:
            local = self._stack([reader.batches(step, n) for reader in self.readers], n)
        else:
            epoch, index = divmod(step, self.plan.per_epoch)
            parts = [
                order.batches(epoch, index, n, self.rows) if n > 1 else order.batch(epoch, index, self.rows)
                for order in self.orders
            ]
            local = self._stack(parts, n)
        return n, self.placement.batch(local, self.batch_size, leading=int(n > 1) + int(self.members))

    def close(self) -> None:
        for reader in self.readers or ():
            reader.close()

    def _stack(self, parts: list[Any], n: int) -> Any:
        """One member's part as it is; a population's stacked on the member axis (after the steps of a fused call)."""
        if not self.members:
            return parts[0]
        return jax.tree.map(lambda *leaves: np.stack(leaves, axis=1 if n > 1 else 0), *parts)
