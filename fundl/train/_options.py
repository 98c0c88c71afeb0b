"""The options of a training, as a few small frozen records that check themselves when made.

- :class:`Budget`: how long to train, and how often to log and evaluate.
- :class:`Execution`: how the steps run: the devices, micro-batches, steps per compiled
  call, calls in flight. Its fields (but the calls in flight) shape the compiled
  program, so they are part of the compile cache's key (:mod:`fundl.train._compiled`).
- :class:`Evaluation`: what is evaluated during training, in batches of what size.
- :class:`Input`: how training batches are read from the host: ahead, on a thread or in
  worker processes, and changed (augmented) on the way.
- :class:`Callbacks`: what is called on the way: hooks, the stop on NaN, the checkpointer,
  the console, the signals that stop training.

``fit`` and ``fit_members`` take their keywords and make these; ``fundl.runs`` makes them
from a config (before the run directory exists, so a bad value leaves nothing behind).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
from jax.sharding import Mesh

from fundl.distributed import MeshSpec, resolve_mesh
from fundl.train._hooks import Hook
from fundl.train._interrupt import STOP_SIGNALS
from fundl.train._progress import verbosity
from fundl.train._state import TrainState


def is_count(value: Any, least: int) -> bool:
    """An integer (Python or NumPy, not a bool) of at least ``least``."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)) and bool(value >= least)


def _interval(name: str, value: int | None) -> None:
    if value is not None and not is_count(value, 1):
        raise ValueError(f"{name} must be a positive number of steps, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Budget:
    """How long to train (exactly one of ``epochs`` and ``steps``), and how often to pause.

    Attributes:
      epochs, steps: the budget, counted from step 0 (a restored train state continues).
      eval_every, log_every: evaluate / log every this many steps (``None``: each epoch end).
    """

    epochs: int | None = None
    steps: int | None = None
    eval_every: int | None = None
    log_every: int | None = None

    def __post_init__(self) -> None:
        if (self.epochs is None) == (self.steps is None):
            raise ValueError(
                f"give exactly one training budget, epochs or steps; got epochs={self.epochs}, steps={self.steps}"
            )
        name, value = ("epochs", self.epochs) if self.steps is None else ("steps", self.steps)
        if not is_count(value, 0):
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        _interval("eval_every", self.eval_every)
        _interval("log_every", self.log_every)

    def total(self, per_epoch: int) -> int:
        """The step at which training ends, with ``per_epoch`` steps an epoch."""
        return int(self.steps) if self.steps is not None else int(self.epochs or 0) * per_epoch

    def every(self, per_epoch: int) -> tuple[int, int]:
        """``(eval_every, log_every)`` in steps."""
        return int(self.eval_every or per_epoch), int(self.log_every or per_epoch)


@dataclasses.dataclass(frozen=True)
class Execution:
    """How the steps run.

    Attributes:
      mesh: the devices, resolved (a one-device mesh included): make it with
        :meth:`Execution.on`, which takes ``None`` (every device), a count, devices or a mesh.
      accumulate: micro-batches per update (gradient accumulation); must divide the batch size.
      steps_per_call: steps per compiled call (one ``lax.scan``), or ``"auto"``.
      max_in_flight: compiled calls dispatched before the loop waits for the oldest.
      strict: an unexpected recompilation is an error instead of a warning.
    """

    mesh: Mesh
    accumulate: int = 1
    steps_per_call: int | str = "auto"
    max_in_flight: int = 2
    strict: bool = False

    def __post_init__(self) -> None:
        if not is_count(self.accumulate, 1):
            raise ValueError(
                f"accumulate must be a positive integer that divides the batch size, got {self.accumulate!r}"
            )
        if self.steps_per_call != "auto" and not is_count(self.steps_per_call, 1):
            raise ValueError(f'steps_per_call must be a positive integer or "auto", got {self.steps_per_call!r}')
        if not is_count(self.max_in_flight, 1):
            raise ValueError(f"max_in_flight must be a positive integer, got {self.max_in_flight!r}")

    @classmethod
    def on(cls, mesh: MeshSpec = None, **options: Any) -> "Execution":
        """Options on ``mesh`` as the API takes it: ``None`` every device, an int the first that many, or a mesh."""
        return cls(resolve_mesh(mesh), **options)


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """What is evaluated during training.

    Attributes:
      splits: named splits, each seen whole at every evaluation, e.g. ``{"validation": data}``.
      batch_size: examples per evaluation batch (``None``: a split of at most 8 MiB in
        one batch, a larger one in batches of the training size).
    """

    splits: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    batch_size: int | None = None

    def __post_init__(self) -> None:
        if self.batch_size is not None and not is_count(self.batch_size, 1):
            raise ValueError(
                "eval_batch_size must be a positive integer (or None "
                f"for the training batch size), got {self.batch_size!r}"
            )
        if "train" in self.splits:
            raise ValueError('eval split name "train" is taken by the training metrics; name it e.g. "train_eval"')


@dataclasses.dataclass(frozen=True)
class Input:
    """How training batches are read when they come from the host (a source, data too large for the devices,
    or augmented data; in-memory data otherwise lives on the devices and is gathered there).

    Attributes:
      workers: processes that read, decode and augment batches ahead (grain, the extra
        ``fundl[data]``); 0 reads on a thread of this process.
      augment: ``augment(example, rng) -> example``, applied to each training example as it
        is read, with ``rng = np.random.default_rng([data_seed, epoch, index])`` (reproducible
        whatever reads it). Must be picklable (a module-level function) with workers.
      ahead: steps read ahead (per worker, with workers).
    """

    workers: int = 0
    augment: Callable[[Any, Any], Any] | None = None
    ahead: int = 4

    def __post_init__(self) -> None:
        if not is_count(self.workers, 0):
            raise ValueError(f"workers must be a non-negative integer (0: read on a thread), got {self.workers!r}")
        if not is_count(self.ahead, 1):
            raise ValueError(f"ahead must be a positive number of steps, got {self.ahead!r}")
        if self.augment is not None and not callable(self.augment):
            raise TypeError(f"augment must be a function (example, rng) -> example, got {type(self.augment).__name__}")


class Checkpointer(Protocol):
    """What the loop asks of a checkpointer: when to save, saving, and whether to stop now."""

    def next_step(self, step: int) -> int | None:
        """The first step after ``step`` at which a checkpoint is due, if any."""

    def save(self, step: int, train_state: TrainState, extra: dict[str, Any], metrics: dict[str, float]) -> None:
        """Saves the train state (of a population: its carry) after ``step`` steps, and ``extra``: the
        ``state_dict()`` of each member's hooks (``None`` for hooks without one) under ``"hooks"``, each
        member's end under ``"members"``. ``metrics`` are the latest evaluations, by ``"split/metric"``.
        Must not keep references to ``train_state``'s buffers, which the next step reuses."""

    def interrupted(self, step: int) -> str | None:
        """A reason to stop training now (a signal arrived, a step limit was reached), or ``None``."""


@dataclasses.dataclass(frozen=True)
class Callbacks:
    """What the loop calls on the way.

    Attributes:
      hooks: a single run's hooks; for a population, a function ``member -> its hooks``
        (each member has its own, so early stopping stops that member alone).
      stop_on_nan: stop a single run at its first NaN or infinite metric (a member of a
        population is always frozen at its last good state instead).
      checkpoint: saves the train state when due, and says when to stop for an interruption.
      verbose: what is printed: ``0``/``"silent"``, ``1``/``"epochs"`` (a line per log or
        evaluation), ``2``/``"bar"`` (and a live progress bar); see :mod:`fundl.train._progress`.
      signals: the signals that stop training cleanly (the first; a second SIGINT aborts),
        e.g. ``(signal.SIGINT, signal.SIGTERM)``; see :mod:`fundl.train._interrupt`.
    """

    hooks: Sequence[Hook] | Callable[[int], Sequence[Hook]] = ()
    stop_on_nan: bool = True
    checkpoint: Checkpointer | None = None
    verbose: int | str = 2
    signals: tuple[int, ...] = STOP_SIGNALS

    def __post_init__(self) -> None:
        verbosity(self.verbose)  # a clear error for a bad level, before anything runs

    def lane_hooks(self, members: int | None) -> list[list[Hook]]:
        """Each lane's hooks: the run's, or each member's."""
        if members is None:
            if callable(self.hooks):
                raise TypeError("a single run takes a list of hooks, not a function of the member")
            return [list(self.hooks)]
        if callable(self.hooks):
            return [list(self.hooks(member)) for member in range(members)]
        if self.hooks:
            raise TypeError(
                "a population takes its hooks as a function member -> that member's hooks (each member needs its own)"
            )
        return [[] for _ in range(members)]
