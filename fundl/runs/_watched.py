"""The metrics a run records while it trains, found without running it, and the config keys that watch one.

``checkpoint.best`` and ``early_stopping.metric`` name a ``split/metric``. What a run
records during training is known before it starts: the training metrics (``train/``: the
loss's metrics and the learning rate) and, for each split of ``eval_data``, the metrics of
the loss's evaluation. Their names come from tracing the loss and its evaluation once,
abstractly (``jax.eval_shape``: no data is computed on). A watched metric that training
never records would silently do nothing, so it is refused before the run directory exists.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from fundl._core import Loss
from fundl.runs._config import ConfigError
from fundl.train import DerivedMetric, Hook

TRAIN = "train"


def _abstract_batch(data: Any, rows: int) -> Any:
    """A batch of ``rows`` examples of ``data`` (a pytree of arrays with a leading example axis), abstractly."""

    def leaf(a: Any) -> jax.ShapeDtypeStruct:
        shape = np.shape(a)
        return jax.ShapeDtypeStruct((min(rows, shape[0]), *shape[1:]), np.result_type(a))

    return jax.tree.map(leaf, data)


def recorded_metrics(
    loss: Loss,
    model: Any,
    input_shape: Any,
    train_data: Any,
    eval_data: Mapping[str, Any],
    batch_size: int,
    hooks: Sequence[Hook] = (),
) -> dict[str, list[str]]:
    """``{split: metric names}`` that training records: ``"train"`` and each evaluation split.

    ``hooks``: the experiment's own; the metrics a :class:`~fundl.train.DerivedMetric` adds count too.
    """
    _, params, state = jax.eval_shape(lambda: model.init(jax.random.key(0), input_shape))
    key = jax.eval_shape(lambda: jax.random.key(0))
    derived = [hook.name for hook in hooks if isinstance(hook, DerivedMetric)]
    _, (_, metrics) = jax.eval_shape(loss.fn, params, state, _abstract_batch(train_data, batch_size), key)
    found = {TRAIN: ["loss", *metrics, "learning_rate", *derived]}
    if loss.evaluate is not None:
        for split, data in eval_data.items():
            evaluated = jax.eval_shape(loss.evaluate, params, state, _abstract_batch(data, batch_size))
            found[split] = [*evaluated, *derived]
    return {split: list(dict.fromkeys(names)) for split, names in found.items()}


def check_watched(
    key: str, watched: str | None, recorded: Mapping[str, Sequence[str]], test_splits: Sequence[str], *, train: bool
) -> None:
    """Raises :class:`ConfigError` unless ``watched`` (``"split/metric"``) is recorded during training.

    Args:
      key: the config key, for the message (``"checkpoint.best"``).
      watched: its value (``None``: nothing is watched).
      recorded: what :func:`recorded_metrics` found.
      test_splits: the splits scored once after training (never watched).
      train: whether the ``train`` split's metrics may be watched (early stopping watches evaluations only).
    """
    if watched is None:
        return
    allowed = {split: names for split, names in recorded.items() if train or split != TRAIN}
    choices = ", ".join(f"{split}/{name}" for split, names in allowed.items() for name in names) or (
        "none: the experiment has no eval_data"
    )
    split, slash, metric = watched.partition("/")
    if split in test_splits:
        raise ConfigError(
            f"{key} {watched!r}: the {split} split is scored once, after training, so that nothing is tuned on it, "
            f"and is never evaluated during training; watch a metric evaluated during training instead: {choices}"
        )
    if not slash or split not in allowed:
        evaluated = ", ".join(s for s in allowed if s != TRAIN) or "none"
        raise ConfigError(
            f"{key} names an evaluated 'split/metric' (splits: {evaluated}), got {watched!r}; "
            f"evaluated during training: {choices}"
        )
    if metric not in allowed[split]:
        raise ConfigError(
            f"{key} {watched!r}: split {split!r} does not report {metric!r}; evaluated during training: {choices}"
        )
