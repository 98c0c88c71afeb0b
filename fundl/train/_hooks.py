"""Hooks: plain callables that ``fit`` calls on its events, and the ready-made ones.

A hook is ``hook(event) -> None | str``. Returning a string stops training (in a sweep: the
member the hook belongs to); the string is the reason, recorded in the history. Hooks may
add metrics to ``event.record.metrics``: records of ``"log"`` and ``"eval"`` events are
kept in the history (and in ``metrics.jsonl``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from fundl.train._history import Record
from fundl.train._state import TrainState


class Event(NamedTuple):
    """Something that happened in ``fit``.

    Attributes:
      kind: ``"step"`` (every training step), ``"log"`` (training metrics averaged since
        the last log), ``"eval"`` (metrics over a whole evaluation split), ``"epoch_end"``,
        ``"end"`` (training is over, for whatever reason: close files here), or, after
        ``"end"``, ``"test"`` (``fundl run`` scored a test split once, with the final params).
      record: the :class:`~fundl.train.Record` (``step``, ``epoch``, ``split``, ``metrics``
        as Python floats, and ``member`` in a sweep); ``step`` is the number of updates done.
      train_state: the current train state (a sweep member's own), except for ``"step"``
        events, which arrive a few steps late (the loop keeps steps in flight). Its
        buffers are reused by the next step: copy what you keep (``jax.device_get``).
    """

    kind: str
    record: Record
    train_state: TrainState | None


Hook = Callable[[Event], "str | None"]


def first_nonfinite(metrics: dict[str, np.ndarray], first_step: int) -> str | None:
    """Why to stop, if any of the steps ``first_step + 1, ...`` has a NaN or infinite metric.

    Args:
      metrics: each metric's values for consecutive steps, ``(n,)`` arrays.
      first_step: the number of steps done before the first of them.
    """
    found = [
        (int(np.flatnonzero(~np.isfinite(values))[0]), order, name)
        for order, (name, values) in enumerate(metrics.items())
        if not np.all(np.isfinite(values))
    ]
    if not found:
        return None
    index, _, name = min(found)  # the earliest step; the loss first among equals
    return f"{name} became {metrics[name][index]} at step {first_step + index + 1}"


def stop_on_nonfinite() -> Hook:
    """Stops training at the first step whose loss or metrics are NaN or infinite.

    ``fit`` does this itself unless ``stop_on_nan=False``; the hook is for loops of your own.
    """

    def hook(event: Event) -> str | None:
        if event.kind != "step":
            return None
        return first_nonfinite({k: np.array([v]) for k, v in event.record.metrics.items()}, event.record.step - 1)

    return hook


def _better(mode: str, min_delta: float) -> Callable[[float, float | None], bool]:
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    sign = 1.0 if mode == "min" else -1.0
    return lambda value, best: best is None or sign * (best - value) > min_delta


def _watched(event: Event, split: str, metric: str) -> float | None:
    """The watched metric's value if ``event`` is an evaluation of ``split``."""
    if event.kind != "eval" or event.record.split != split:
        return None
    if metric not in event.record.metrics:
        raise ValueError(
            f"metric {metric!r} is not reported for split {split!r}; available: {list(event.record.metrics)}"
        )
    return event.record.metrics[metric]


class EarlyStopping:
    """Stops when ``split``'s ``metric`` has not improved for ``patience`` evaluations.

    Made by :func:`early_stopping`. Its counters are its state: ``state_dict()`` and
    ``load_state_dict()`` let a checkpoint carry them, so a resumed run stops where the
    uninterrupted one would.
    """

    def __init__(self, split: str, metric: str, *, mode: str = "min", patience: int = 5, min_delta: float = 0.0):
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"early_stopping: patience must be a positive integer, got {patience!r}")
        self.split, self.metric, self.patience = split, metric, patience
        self._better = _better(mode, min_delta)
        self.best: float | None = None
        self.waited = 0

    def __call__(self, event: Event) -> str | None:
        value = _watched(event, self.split, self.metric)
        if value is None:
            return None
        if self._better(value, self.best):
            self.best, self.waited = value, 0
            return None
        self.waited += 1
        if self.waited >= self.patience:
            return (
                f"early stopping: {self.split} {self.metric} has not improved on {self.best:.6g} "
                f"for {self.patience} evaluations"
            )
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "waited": self.waited}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.waited = state["best"], int(state["waited"])


def early_stopping(
    split: str, metric: str, *, mode: str = "min", patience: int = 5, min_delta: float = 0.0
) -> EarlyStopping:
    """Stops when ``split``'s ``metric`` has not improved by more than ``min_delta`` for ``patience`` evaluations.

    Example:
      >>> fit(..., hooks=[early_stopping("test", "loss", patience=3)])
    """
    return EarlyStopping(split, metric, mode=mode, patience=patience, min_delta=min_delta)


class BestParams:
    """Keeps a host copy of the params and state at the best evaluation of ``split``'s ``metric``.

    Attributes (``None`` until the first evaluation):
      params, state: NumPy copies from the best evaluation.
      step: the step of the best evaluation; value: its metric value.

    Example:
      >>> best = BestParams("test", "accuracy", mode="max")
      >>> fit(..., hooks=[best]); best.params
    """

    def __init__(self, split: str, metric: str, *, mode: str = "min"):
        self.split, self.metric = split, metric
        self._better = _better(mode, 0.0)
        self.params: Any = None
        self.state: Any = None
        self.step: int | None = None
        self.value: float | None = None

    def __call__(self, event: Event) -> None:
        value = _watched(event, self.split, self.metric)
        if value is not None and self._better(value, self.value):
            assert event.train_state is not None  # evaluations carry the train state
            self.value, self.step = value, event.record.step
            self.params = jax.device_get(event.train_state.params)
            self.state = jax.device_get(event.train_state.state)

    def state_dict(self) -> dict[str, Any]:
        """The best so far, for checkpoints (the arrays as NumPy arrays)."""
        return {"value": self.value, "step": self.step, "params": self.params, "state": self.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value, self.step, self.params, self.state = state["value"], state["step"], state["params"], state["state"]


def log_learning_rate(schedule: Callable[[Any], Any]) -> Hook:
    """Adds ``learning_rate``, the rate of the latest update, ``schedule(step - 1)``, to each log record."""

    def hook(event: Event) -> None:
        if event.kind == "log":
            event.record.metrics["learning_rate"] = float(np.asarray(schedule(max(event.record.step - 1, 0))))

    return hook


class DerivedMetric:
    """Adds ``name = fn(metrics)`` to the metrics of every log, evaluation and test record (see :func:`derived_metric`).

    ``name`` is public: ``fundl run`` counts it among the metrics a run records (``checkpoint.best`` and
    ``early_stopping.metric`` may watch it).
    """

    def __init__(self, name: str, fn: Callable[[dict[str, float]], float]):
        self.name, self.fn = name, fn

    def __call__(self, event: Event) -> None:
        if event.kind in ("log", "eval", "test"):
            event.record.metrics[self.name] = float(self.fn(event.record.metrics))

    def __repr__(self) -> str:
        return f"derived_metric({self.name!r}, ...)"


def derived_metric(name: str, fn: Callable[[dict[str, float]], float]) -> DerivedMetric:
    """Adds ``name = fn(metrics)`` to the metrics of every log, evaluation and test record.

    For metrics that are not means over examples: computing them from the exact split
    means keeps them exact, e.g. perplexity from the mean cross-entropy (averaging per-batch
    perplexities would not give the split's perplexity).

    Example:
      >>> derived_metric("perplexity", lambda metrics: math.exp(metrics["loss"]))
    """
    return DerivedMetric(name, fn)
