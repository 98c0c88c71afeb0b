"""The plan of calls: where ``fit`` must pause, and how many steps each compiled call runs.

Training pauses at a *boundary*: the end of an epoch, a log, an evaluation, a checkpoint,
or the end of the budget. Between boundaries the steps run in compiled calls of
``fused`` steps (one ``lax.scan``), and in single steps where fewer than ``fused`` steps
are left before the next boundary, so that no call ever crosses one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple


class CallPlan(NamedTuple):
    """The boundaries and call sizes of one ``fit``.

    Attributes:
      total: the step at which training ends.
      per_epoch, eval_every, log_every: intervals in steps.
      fused: the steps of a fused call.
      next_checkpoint_after: ``step -> the next step after it at which a checkpoint is due`` (or ``None``).
      evaluates: whether there is anything to evaluate at ``eval_every``.
    """

    total: int
    per_epoch: int
    eval_every: int
    log_every: int
    fused: int
    next_checkpoint_after: Callable[[int], int | None] | None = None
    evaluates: bool = True

    def next_checkpoint(self, step: int) -> int:
        """The first checkpoint step after ``step`` (the end, if none is due before it)."""
        due = self.next_checkpoint_after(step) if self.next_checkpoint_after else None
        return self.total if due is None else min(due, self.total)

    def checkpoint_due(self, step: int) -> bool:
        return step == self.next_checkpoint(step - 1)

    def log_due(self, step: int) -> bool:
        return step % self.log_every == 0 or step == self.total

    def eval_due(self, step: int) -> bool:
        return step % self.eval_every == 0 or step == self.total

    def needs_state(self, step: int) -> bool:
        """Whether the boundary after ``step`` steps needs the train state: an evaluation, a checkpoint or the end."""
        return step == self.total or (self.evaluates and self.eval_due(step)) or self.checkpoint_due(step)

    def is_boundary(self, step: int) -> bool:
        intervals = (self.per_epoch, self.eval_every, self.log_every)
        return step == self.total or self.checkpoint_due(step) or any(step % every == 0 for every in intervals)

    def steps_to_boundary(self, step: int) -> int:
        intervals = (self.per_epoch, self.eval_every, self.log_every)
        return min(self.next_checkpoint(step), *(step + every - step % every for every in intervals)) - step

    def call_size(self, step: int) -> int:
        """How many steps the call starting after ``step`` steps runs: ``fused``, or 1 near a boundary."""
        return self.fused if self.fused > 1 and self.steps_to_boundary(step) >= self.fused else 1
