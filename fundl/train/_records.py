"""What the loop keeps and tells while it trains: the calls in flight, the records, the hooks, why it stopped.

The loop dispatches compiled calls and reads their metrics back a few calls later
(:class:`InFlight`); everything that happens to those metrics and to the evaluations,
the records, the hooks, the progress bar and the reasons to stop, is :class:`Recorder`'s.
A population of members has one *lane* per member, each with its own hooks, records and
reason to stop; a single run is one lane, whose stop ends training.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from fundl.train._history import MemberEnd, Record
from fundl.train._hooks import Event, Hook, first_nonfinite
from fundl.train._interrupt import Aborted
from fundl.train._progress import ProgressReport
from fundl.train._state import TrainState

Metrics = dict[str, np.ndarray]  # each metric's values for consecutive steps, (n,) arrays
StateView = Callable[[int], "TrainState | None"]  # lane -> its train state (None: not available)


class InFlight:
    """Compiled calls dispatched but not read back yet, oldest first.

    Reading a call's metrics back waits for it to finish; keeping a few calls in flight
    lets the host prepare the next call while the device runs the last one.
    """

    def __init__(self, on_result: Callable[[int, int, Any], None], on_log: Callable[[int], None] = lambda step: None):
        self._calls: deque[tuple[int, int, Any, bool]] = deque()
        self._on_result = on_result
        self._on_log = on_log

    def __len__(self) -> int:
        return len(self._calls)

    def add(self, first_step: int, steps: int, outputs: Any, log_after: bool = False) -> None:
        """A call that runs steps ``first_step + 1 ... first_step + steps``, and its outputs (still on the device);
        ``log_after``: a training log is due at its last step, to be written once its metrics are back."""
        self._calls.append((first_step, steps, outputs, log_after))

    def drain(self, keep: int = 0) -> None:
        """Reads back the oldest calls until at most ``keep`` are in flight, passing each one's
        ``(first_step, steps, outputs)`` on."""
        while len(self._calls) > keep:
            first, steps, outputs, log_after = self._calls.popleft()
            self._on_result(first, steps, jax.device_get(outputs))
            if log_after:
                self._on_log(first + steps)


class Lane:
    """One member's bookkeeping: its hooks, the metrics since its last log, and why it stopped."""

    def __init__(self, hooks: Sequence[Hook], member: int | None):
        self.hooks = list(hooks)
        self.member = member
        self.stop_reason: str | None = None
        self.nonfinite = False
        self.since_log: list[Metrics] = []

    @property
    def live(self) -> bool:
        return self.stop_reason is None

    def end(self) -> MemberEnd:
        return MemberEnd(self.stop_reason, self.nonfinite)


class Recorder:
    """The records, hook events, progress and reasons to stop of one training.

    Args:
      lane_hooks: each lane's hooks (one list for a single run); a hook returning a string
        stops its lane.
      progress: the bar and the printed lines.
      per_epoch: steps per epoch, to give each record its epoch.
      members: whether the lanes are members of a population (records carry their index).
      stop_on_nan: stop a lane at its first step with a NaN or infinite metric.
      speed: ``step -> examples/s`` so far, for the progress bar.
    """

    def __init__(
        self,
        lane_hooks: Sequence[Sequence[Hook]],
        progress: ProgressReport,
        per_epoch: int,
        *,
        members: bool = False,
        stop_on_nan: bool = True,
        speed: Callable[[int], float] = lambda step: 0.0,
    ):
        self.lanes = [Lane(hooks, i if members else None) for i, hooks in enumerate(lane_hooks)]
        self.progress = progress
        self.per_epoch = per_epoch
        self.stop_on_nan = stop_on_nan
        self.speed = speed
        self.records: list[Record] = []
        self.stop_reason: str | None = None
        self.interrupted = False

    @property
    def hooks(self) -> bool:
        """Whether any lane has hooks (they must see the train state at every boundary)."""
        return any(lane.hooks for lane in self.lanes)

    @property
    def nonfinite(self) -> bool:
        """A NaN or infinity stopped training: of the only run, or of every member. That state is never saved."""
        return all(lane.nonfinite for lane in self.lanes)

    def stop(self, reason: str | None) -> None:
        """Stops all training for ``reason`` (the first reason given wins); ``None`` does nothing."""
        if reason and self.stop_reason is None:
            self.stop_reason = reason
            self.progress.print(f"stopping: {reason}")

    def interrupt(self, reason: str) -> None:
        """Stops training to be resumed later (a signal, a step limit): the lanes keep going when it resumes."""
        self.interrupted = True
        self.stop(reason)

    def stop_lane(self, lane: Lane, reason: str | None, nonfinite: bool = False) -> None:
        """Stops one lane; when no lane is left, training stops (a single run stops with its lane's reason)."""
        if not reason or not lane.live:
            return
        lane.stop_reason, lane.nonfinite = reason, nonfinite
        if lane.member is None:
            self.stop(reason)
            return
        self.progress.print(f"member {lane.member} stopped: {reason}")
        if not any(other.live for other in self.lanes):
            self.stop("every member stopped")

    def stopped_lanes(self) -> list[int]:
        """The indices of the lanes that have stopped."""
        return [i for i, lane in enumerate(self.lanes) if not lane.live]

    def emit(self, kind: str, record: Record, train_state: TrainState | None, lane: Lane) -> None:
        """Calls the lane's hooks with the event; a hook's reason to stop is taken.

        A ``KeyboardInterrupt`` raised by a hook is a first Ctrl-C: training stops cleanly
        (resumable) after this boundary; once interrupted, a second one propagates (abort).
        """
        for hook in lane.hooks:
            try:
                reason = hook(Event(kind, record, train_state))
            except KeyboardInterrupt as error:
                if self.interrupted or isinstance(error, Aborted):
                    raise
                self.interrupt("interrupted by KeyboardInterrupt (raised in a hook)")
                continue
            self.stop_lane(lane, reason)

    def steps_done(
        self, first_step: int, metrics: Sequence[Metrics | None], frozen: Sequence[int | None] | None = None
    ) -> None:
        """Each lane's metrics for the steps after ``first_step``, read back (``None``: the lane took no step):
        kept for the next log, checked, one event a step. ``frozen``: for each member, the index of the step
        at which it stopped being finite and was frozen on the device, if it did in these steps."""
        last, losses = first_step, []
        for lane, lane_metrics, froze in zip(self.lanes, metrics, frozen or [None] * len(self.lanes)):
            if lane_metrics is None or not lane.live:
                continue
            good = lane_metrics if froze is None else {name: values[:froze] for name, values in lane_metrics.items()}
            if froze is not None:  # frozen on the device: its last good state is kept, training goes on for the others
                why = (
                    first_nonfinite(lane_metrics, first_step)
                    or f"its params stopped being finite at step {first_step + froze + 1}"
                )
                self.stop_lane(lane, f"{why}: frozen at its last good state", nonfinite=True)
            elif self.stop_on_nan and (reason := first_nonfinite(lane_metrics, first_step)):
                self.stop_lane(lane, reason, nonfinite=True)
            steps = len(good["loss"])
            if not steps:
                continue
            lane.since_log.append(good)
            for i in range(steps) if lane.hooks else ():
                step = first_step + i + 1
                self.emit(
                    "step", self._record(step, "train", {k: float(v[i]) for k, v in good.items()}, lane), None, lane
                )
            last = max(last, first_step + steps)
            losses.append(float(good["loss"][-1]))
        if losses:
            finite = [value for value in losses if np.isfinite(value)]  # a population shows its members' mean
            shown = float(np.mean(finite)) if finite else losses[-1]
            self.progress.update(last, (last - 1) // self.per_epoch, shown, self.speed(last))

    def log(self, step: int, state_of: StateView) -> None:
        """Records each lane's training metrics averaged over its steps since its last log (if any);
        ``state_of(lane)`` may give ``None`` for a log written after the fact, when no hook is there to see it."""
        added = []
        for index, lane in enumerate(self.lanes):
            if not lane.since_log or (lane.member is not None and not lane.live):  # a stopped member logs no more
                continue
            names = lane.since_log[0]
            means = {
                name: float(np.mean(np.concatenate([m[name] for m in lane.since_log]), dtype=np.float64))
                for name in names
            }
            lane.since_log.clear()
            added.append(
                self.add("log", self._record(step, "train", means, lane), state_of(index) if lane.hooks else None, lane)
            )
        self._population_line(added)

    def evaluation(
        self, step: int, split: str, metrics: Sequence[dict[str, float]], state_of: StateView, kind: str = "eval"
    ) -> None:
        """Records one split's evaluation after ``step`` steps: one metrics dict per lane (live lanes only,
        unless ``kind`` is ``"test"``: the final scores of every member)."""
        added = [
            self.add(kind, self._record(step, split, dict(values), lane), state_of(index) if lane.hooks else None, lane)
            for index, (lane, values) in enumerate(zip(self.lanes, metrics))
            if lane.live or kind == "test"
        ]
        self._population_line(added)

    def add(self, kind: str, record: Record, train_state: TrainState | None, lane: Lane) -> Record:
        """A log or evaluation record: to the lane's hooks (which may add to it), the history and the console."""
        self.emit(kind, record, train_state, lane)
        self.records.append(record)
        if lane.member is None:
            self.progress.record_line(record)
        return record

    def _population_line(self, records: Sequence[Record]) -> None:
        """One console line for the members' records of one log or evaluation: the mean and spread of each metric."""
        if records and records[0].member is not None:
            self.progress.population_line(records)

    def latest(self) -> dict[str, float]:
        """The latest value of every metric of a single run, by ``"split/metric"`` (what a checkpoint remembers)."""
        return {f"{r.split}/{k}": v for r in self.records if r.member is None for k, v in r.metrics.items()}

    def hook_states(self) -> list[list[Any]]:
        """Each lane's hooks' ``state_dict()`` (``None`` for a hook without one), for a checkpoint."""
        return [[getattr(hook, "state_dict", lambda: None)() for hook in lane.hooks] for lane in self.lanes]

    def ends(self) -> list[MemberEnd]:
        return [lane.end() for lane in self.lanes]

    def restore_ends(self, ends: Sequence[MemberEnd]) -> None:
        """The lanes' ends as a checkpoint recorded them (a resumed sweep keeps its stopped members stopped)."""
        for lane, end in zip(self.lanes, ends):
            lane.stop_reason, lane.nonfinite = end.stop_reason, end.nonfinite

    def _record(self, step: int, split: str, metrics: dict[str, float], lane: Lane) -> Record:
        return Record(step, step / self.per_epoch, split, metrics, lane.member)


class CheckpointSaves:
    """Saves through a :class:`~fundl.train.Checkpointer`: never twice at a step, never a state that went non-finite."""

    def __init__(self, checkpoint: Any, recorder: Recorder):
        self.checkpoint = checkpoint
        self.recorder = recorder
        self.saved_at: int | None = None

    def __call__(self, step: int, carry: Any) -> None:
        if self.checkpoint is None or self.recorder.nonfinite or self.saved_at == step:
            return
        extra = {"hooks": self.recorder.hook_states(), "members": [list(end) for end in self.recorder.ends()]}
        self.checkpoint.save(step, carry, extra, self.recorder.latest())
        self.saved_at = step
