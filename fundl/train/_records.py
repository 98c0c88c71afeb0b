"""What ``fit`` keeps and tells while it trains: the calls in flight, the records, the hooks, why it stopped.

``fit``'s loop dispatches compiled calls and reads their metrics back a few calls later
(:class:`InFlight`); everything that happens to those metrics and to the evaluations,
the records, the hooks, the progress bar and the reasons to stop, is :class:`Recorder`'s.
Each method is one thing the loop does, small enough to test alone.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from fundl.train._hooks import Event, Hook, first_nonfinite
from fundl.train._progress import ProgressReport
from fundl.train._state import TrainState

Metrics = dict[str, np.ndarray]  # each metric's values for consecutive steps, (n,) arrays


class InFlight:
    """Compiled calls dispatched but not read back yet, oldest first.

    Reading a call's metrics back waits for it to finish; keeping a few calls in flight
    lets the host prepare the next call while the device runs the last one.
    """

    def __init__(self, on_result: Callable[[int, Metrics], None], on_log: Callable[[int], None] = lambda step: None):
        self._calls: deque[tuple[int, int, Any, bool]] = deque()
        self._on_result = on_result
        self._on_log = on_log

    def __len__(self) -> int:
        return len(self._calls)

    def add(self, first_step: int, steps: int, metrics: Any, log_after: bool = False) -> None:
        """A call that runs steps ``first_step + 1 ... first_step + steps``, and its metrics (still on the device);
        ``log_after``: a training log is due at its last step, to be written once its metrics are back."""
        self._calls.append((first_step, steps, metrics, log_after))

    def drain(self, keep: int = 0) -> None:
        """Reads back the oldest calls until at most ``keep`` are in flight, passing each one's metrics on."""
        while len(self._calls) > keep:
            first, steps, metrics, log_after = self._calls.popleft()
            self._on_result(first, {name: np.reshape(values, (steps,)) for name, values in jax.device_get(metrics).items()})
            if log_after:
                self._on_log(first + steps)


class Recorder:
    """The history of one ``fit``: records, hook events, progress, and the reason to stop.

    Args:
      hooks: called with every :class:`Event`; a hook returning a string stops training.
      progress: the bar and the printed lines.
      per_epoch: steps per epoch, to give each record its epoch.
      stop_on_nan: stop at the first step with a NaN or infinite metric.
      speed: ``step -> examples/s`` so far, for the progress bar.
    """

    def __init__(self, hooks: Sequence[Hook], progress: ProgressReport, per_epoch: int, *, stop_on_nan: bool = True,
                 speed: Callable[[int], float] = lambda step: 0.0):
        self.hooks = list(hooks)
        self.progress = progress
        self.per_epoch = per_epoch
        self.stop_on_nan = stop_on_nan
        self.speed = speed
        self.records: list[dict[str, Any]] = []
        self.stop_reason: str | None = None
        self.nonfinite = False  # a NaN or infinity stopped training: that state is never saved
        self._since_log: list[Metrics] = []

    def stop(self, reason: str | None) -> None:
        """Stops training for ``reason`` (the first reason given wins); ``None`` does nothing."""
        if reason and self.stop_reason is None:
            self.stop_reason = reason
            self.progress.print(f"stopping: {reason}")

    def emit(self, kind: str, record: dict[str, Any], train_state: TrainState | None) -> None:
        """Calls every hook with the event; a hook's reason to stop is taken."""
        for hook in self.hooks:
            self.stop(hook(Event(kind, record, train_state)))

    def steps_done(self, first_step: int, metrics: Metrics) -> None:
        """The metrics of the steps after ``first_step``, read back: kept for the next log, checked, one event a step."""
        self._since_log.append(metrics)
        if self.stop_on_nan and (reason := first_nonfinite(metrics, first_step)):
            self.nonfinite = True
            self.stop(reason)
        steps = len(metrics["loss"])
        for i in range(steps) if self.hooks else ():
            step = first_step + i + 1
            self.emit("step", {**self._position(step, "train"), **{k: float(v[i]) for k, v in metrics.items()}}, None)
        last = first_step + steps
        self.progress.update(last, (last - 1) // self.per_epoch, float(metrics["loss"][-1]), self.speed(last))

    def log(self, step: int, train_state: TrainState | None) -> None:
        """Records the training metrics averaged over the steps since the last log (if any); ``train_state``
        may be ``None`` for a log written after the fact, when no hook is there to see it."""
        if not self._since_log:
            return
        names = self._since_log[0]
        means = {name: float(np.mean(np.concatenate([m[name] for m in self._since_log]), dtype=np.float64)) for name in names}
        self._since_log.clear()
        self.add("log", {**self._position(step, "train"), **means}, train_state)

    def add(self, kind: str, record: dict[str, Any], train_state: TrainState | None) -> None:
        """A log or evaluation record: to the hooks (which may add to it), the history and the console."""
        self.emit(kind, record, train_state)
        self.records.append(record)
        self.progress.record_line(record)

    def evaluation(self, step: int, split: str, metrics: dict[str, float], train_state: TrainState | None) -> None:
        """Records one split's evaluation after ``step`` steps."""
        self.add("eval", {**self._position(step, split), **metrics}, train_state)

    def latest(self) -> dict[str, float]:
        """The latest value of every metric, by ``"split/metric"`` (what a checkpoint remembers)."""
        return {f"{r['split']}/{k}": v for r in self.records for k, v in r.items() if k not in ("step", "epoch", "split")}

    def _position(self, step: int, split: str) -> dict[str, Any]:
        return {"step": step, "epoch": step / self.per_epoch, "split": split}


class CheckpointSaves:
    """Saves through a :class:`~fundl.train.Checkpointer`: never twice at one step, never a state that went non-finite."""

    def __init__(self, checkpoint: Any, recorder: Recorder):
        self.checkpoint = checkpoint
        self.recorder = recorder
        self.saved_at: int | None = None

    def __call__(self, step: int, train_state: TrainState) -> None:
        if self.checkpoint is None or self.recorder.nonfinite or self.saved_at == step:
            return
        hook_states = [getattr(hook, "state_dict", lambda: None)() for hook in self.recorder.hooks]
        self.checkpoint.save(step, train_state, hook_states, self.recorder.latest())
        self.saved_at = step
