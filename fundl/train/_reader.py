"""Reading training batches ahead of the loop: on a thread, or in worker processes with grain.

The loop's batches come from the data by the order rule (epoch ``e`` visits
``rng([seed, e]).permutation(n)``), so the batch of any step is known in advance: a
:class:`Reader` reads this process's rows of the batches of the steps to come, in order,
while the devices compute, and hands them to the loop. Reading starts at any step (a
resumed run starts where its checkpoint is), so the position in the data is the step alone.

- ``workers=0``: one background thread reads (NumPy and the ArrayRecord reader release
  the GIL for most of the work).
- ``workers=N``: ``N`` processes (grain's ``mp_prefetch``, started by ``spawn``) read,
  decode and augment whole steps' batches, in order.

An ``augment(example, rng) -> example`` function changes each example as it is read, with
``rng = np.random.default_rng([seed, epoch, index])`` for the example at ``index`` of the
dataset: the same example in the same epoch is augmented the same way whoever reads it
(any process or worker count, a resumed run), so runs stay reproducible.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from fundl._data import read_rows
from fundl.train._data import Shuffled

Augment = Callable[[Any, np.random.Generator], Any]
_DONE = object()


class StepRows:
    """The dataset indices of this process's rows of each step's batch (picklable: workers compute them too)."""

    def __init__(self, size: int, batch_size: int, seed: int, rows: slice):
        self.size, self.batch_size, self.seed, self.rows = size, batch_size, seed, rows
        self.per_epoch = size // batch_size
        self._order: tuple[int, np.ndarray] | None = None

    def __call__(self, step: int) -> tuple[int, np.ndarray]:
        """``(epoch, indices)`` of the batch that step ``step + 1`` trains on."""
        epoch, index = divmod(int(step), self.per_epoch)
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.size))
        return epoch, self._order[1][index * self.batch_size : (index + 1) * self.batch_size][self.rows]


class ReadStep:
    """Reads (and augments) the local batch of one step: a picklable function of the step, for workers."""

    def __init__(self, data: Any, step_rows: StepRows, augment: Augment | None):
        self.data, self.step_rows, self.augment = data, step_rows, augment

    def __call__(self, step: int) -> Any:
        epoch, indices = self.step_rows(step)
        batch = read_rows(self.data, indices)
        if self.augment is None:
            return batch
        seed = self.step_rows.seed
        examples = [
            self.augment(jax.tree.map(lambda a, i=i: a[i], batch), np.random.default_rng([seed, epoch, int(index)]))
            for i, index in enumerate(indices)
        ]
        return jax.tree.map(lambda *leaves: np.stack(leaves), *examples)


class Reader:
    """This process's rows of each step's batch, read ahead in order from ``start``.

    Args:
      order: the data and its order rule.
      rows: this process's rows of every global batch.
      total: the step at which training ends (nothing is read past it).
      workers: processes that read (0: a thread of this process).
      augment: ``augment(example, rng) -> example``, or ``None``.
      ahead: how many steps' batches are read ahead (per worker, with workers).
    """

    def __init__(
        self,
        order: Shuffled,
        rows: slice,
        total: int,
        *,
        workers: int = 0,
        augment: Augment | None = None,
        ahead: int = 4,
    ):
        self.read_step = ReadStep(order.data, StepRows(order.size, order.batch_size, order.seed, rows), augment)
        self.total, self.workers, self.ahead = total, workers, ahead
        self._next: int | None = None
        self._batches: Iterator[Any] | None = None
        self._stop: Callable[[], None] = lambda: None

    def batches(self, step: int, count: int) -> Any:
        """The batches of steps ``step + 1 .. step + count``: leaves ``(count, rows, ...)``; ``(rows, ...)`` for one."""
        if self._next != step:
            self._start(step)
        assert self._batches is not None
        parts = [next(self._batches) for _ in range(count)]
        self._next = step + count
        return parts[0] if count == 1 else jax.tree.map(lambda *leaves: np.stack(leaves), *parts)

    def _start(self, step: int) -> None:
        self.close()
        steps = range(step, self.total)
        self._batches, self._stop = (_in_workers if self.workers else _on_a_thread)(
            self.read_step, steps, self.workers, self.ahead
        )
        self._next = step

    def close(self) -> None:
        """Stops reading ahead (worker processes or the thread end)."""
        self._stop()
        self._batches, self._next, self._stop = None, None, lambda: None


def _on_a_thread(
    read_step: ReadStep, steps: range, workers: int, ahead: int
) -> tuple[Iterator[Any], Callable[[], None]]:
    """The batches of ``steps``, read by a daemon thread up to ``ahead`` steps ahead."""
    ready: queue.Queue = queue.Queue(maxsize=ahead)
    stop = threading.Event()

    def work() -> None:
        try:
            for step in steps:
                if stop.is_set():
                    return
                ready.put(read_step(step))
            ready.put(_DONE)
        except BaseException as error:  # passed to the loop, which raises it
            ready.put(error)

    thread = threading.Thread(target=work, name="fundl-reader", daemon=True)
    thread.start()

    def batches() -> Iterator[Any]:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close() -> None:
        stop.set()
        while thread.is_alive():  # unblock a put waiting for room
            try:
                ready.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.01)

    return batches(), close


def _mark_flags_parsed(*_: Any) -> None:
    """grain 0.2.18 with JAX installed: absl flags must be marked parsed before its workers read them."""
    try:
        from absl import flags
    except ImportError:
        return
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _in_workers(
    read_step: ReadStep, steps: range, workers: int, ahead: int
) -> tuple[Iterator[Any], Callable[[], None]]:
    """The batches of ``steps``, read by ``workers`` processes (grain), each ``ahead`` steps ahead."""
    try:
        import grain
    except ImportError:
        raise ImportError(
            "reading with worker processes needs the optional extra fundl[data]: "
            "pip install 'fundl[data]' (or read on a thread: workers=0)"
        ) from None
    _mark_flags_parsed()
    dataset = grain.MapDataset.range(steps.start, steps.stop).map(read_step).to_iter_dataset()
    options = grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=ahead)
    iterator = iter(dataset.mp_prefetch(options, worker_init_fn=_mark_flags_parsed))

    def close() -> None:
        stop = getattr(iterator, "close", None) or getattr(iterator, "stop_prefetch", None)
        if stop is not None:
            stop()

    return iterator, close
