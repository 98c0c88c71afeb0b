"""What training leaves behind: one :class:`Record` per log or evaluation, and the :class:`History` of a training.

Both are typed values; they become JSON only where a file is written (``Record.to_json``)
and come back from it with ``Record.from_json``. This module needs nothing but Python, so
the run tools read records without starting JAX.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

_POSITION = ("step", "epoch", "split", "member")


class Record(NamedTuple):
    """One log or evaluation.

    Attributes:
      step: the number of updates done.
      epoch: ``step`` in epochs (a float: a log may fall inside an epoch).
      split: ``"train"`` for training metrics (averaged since the previous log), else the
        name of the evaluated split (``"validation"``, ``"test"``).
      metrics: each metric's value, a Python float (hooks may add entries).
      member: the member of a population (a sweep) it belongs to; ``None`` for a single run.
    """

    step: int
    epoch: float
    split: str
    metrics: dict[str, float]
    member: int | None = None

    def to_json(self) -> dict[str, Any]:
        """``{"step", "epoch", "split", ["member",] **metrics}``: one line of ``metrics.jsonl``."""
        member = {} if self.member is None else {"member": self.member}
        return {"step": self.step, "epoch": self.epoch, "split": self.split, **member, **self.metrics}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> "Record":
        """The record of a JSON object written by :meth:`to_json`."""
        metrics = {k: v for k, v in value.items() if k not in _POSITION}
        return cls(int(value["step"]), float(value["epoch"]), str(value["split"]), metrics, value.get("member"))


def final_metrics(records: Iterable[Record], member: int | None = None) -> dict[str, dict[str, float]]:
    """``{split: metrics}`` of each split's latest record (of one member of a population, if given)."""
    return {r.split: dict(r.metrics) for r in records if r.member == member}


class MemberEnd(NamedTuple):
    """How one member of a population ended: why it stopped before the budget (``None``: it did not)."""

    stop_reason: str | None = None
    nonfinite: bool = False


class History(NamedTuple):
    """What one training did.

    Attributes:
      records: every log and evaluation, in order.
      steps: the step training ended at; ``epochs``: the same in epochs.
      stop_reason: why training ended before its budget (a hook, a NaN, an interruption,
        every member of a population stopping), or ``None``.
      nonfinite: a NaN or infinite loss ended it (for a population: every member's did).
      interrupted: a first Ctrl-C (SIGINT, or a ``KeyboardInterrupt`` raised by a hook), SIGTERM in a
        run, or the checkpointer's step limit stopped it, with the reason in ``stop_reason``;
        the train state returned continues it exactly (resumable).
      members: each member's end (one, for a single run).
      wall_s, compile_s: seconds in all, and of those compiling.
      steps_per_call, steps_per_call_reason: how many steps each compiled call ran, and why.
      mesh: the devices, as :func:`fundl.distributed.describe_mesh` describes them.
      traces: how many times each compiled function was traced in this training.
    """

    records: list[Record]
    steps: int
    epochs: float
    stop_reason: str | None
    nonfinite: bool
    interrupted: bool
    members: tuple[MemberEnd, ...]
    wall_s: float
    compile_s: float
    steps_per_call: int
    steps_per_call_reason: str
    mesh: dict[str, Any]
    traces: dict[str, int]

    def final_metrics(self, member: int | None = None) -> dict[str, dict[str, float]]:
        """``{split: metrics}`` of each split's latest record (of ``member``, in a population)."""
        return final_metrics(self.records, member)
