"""After training: exact metrics over a split, predictions in batches, the history as arrays.

The conveniences a Keras user reaches for (``model.evaluate``, ``model.predict``,
``history.history``) as plain functions of a loss function or a model and its params.

Example:
  >>> metrics = evaluate(loss_fn, train_state.params, train_state.state, data["test"])  # {"loss": ..., "accuracy": ...}
  >>> logits = predict(model, train_state.params, train_state.state, data["test"]["image"])  # (n, 10)
  >>> curves = history_arrays(history)  # curves["validation"]["accuracy"]: (evaluations,)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from fundl._core import Layer, Params, State
from fundl.distributed._mesh import MeshSpec, resolve_mesh
from fundl.distributed._placement import Placement
from fundl.train._data import check_batch_size, in_order, num_examples
from fundl.train._step import EvalFn, LossFn, default_eval_fn


# One compiled function per loss function (or model) and batch shape, kept by jit's cache,
# so that calling evaluate or predict again (after each epoch, say) compiles nothing new.
@functools.partial(jax.jit, static_argnames=("loss_fn", "eval_fn"))
def _eval_batch(params: Params, state: State, batch: Any, *, loss_fn: LossFn, eval_fn: EvalFn | None) -> dict[str, jax.Array]:
    return (eval_fn or default_eval_fn(loss_fn))(params, state, batch)


@functools.partial(jax.jit, static_argnames="apply")
def _predict_batch(params: Params, state: State, x_batch: Any, *, apply: Callable) -> Any:
    return apply(params, state, x_batch, train=False)[0]


def evaluate(
    loss_fn: LossFn, params: Params, state: State, data: Any, *, batch_size: int = 256, mesh: MeshSpec = 1,
    eval_fn: EvalFn | None = None,
) -> dict[str, float]:
    """The loss and metrics of ``loss_fn`` over every example of ``data``, in evaluation mode.

    The loss function is called as ``fit`` evaluates, ``loss_fn(params, state, batch, None,
    train=False)``, on batches of ``batch_size`` (the last may be smaller), and each
    batch's metrics are weighted by its size: the results are exact means over the split,
    whatever the batch size. One compiled function per batch shape (at most three).

    Args:
      loss_fn: ``(params, state, batch, key, *, train) -> (loss, (new_state, metrics))``.
      params, state: the model's, e.g. ``train_state.params`` and ``train_state.state``.
      data: a pytree of arrays with a leading example axis, in the form the loss function
        takes, e.g. ``{"image": (n, 8, 8), "label": (n,)}`` or ``(x, y)``. If the loss
        function has a ``check_data`` method (as :func:`classification_loss`'s does), the
        data is checked with it first.
      batch_size: examples per evaluation batch.
      mesh: the devices, as ``fit``'s ``mesh``: ``1`` (the default) is one device, ``None``
        every visible device (each batch is cut over them; the few examples that do not
        fill a row per device go as one more, replicated batch).
      eval_fn: ``(params, state, batch) -> metrics`` to call instead of the loss function
        in evaluation mode, as ``fit``'s ``eval_fn``.

    Returns:
      ``{"loss": float, **metrics}`` (or ``eval_fn``'s metrics), each the mean over all examples.

    Example:
      >>> evaluate(classification_loss(model), params, state, (x_test, y_test))
      {'loss': 0.1123, 'accuracy': 0.9666}
    """
    if eval_fn is None:
        default_eval_fn(loss_fn)  # an error now if it takes no `train` keyword
    size = num_examples(data, "data")
    check_batch_size(batch_size, None, "evaluation")
    data = jax.tree.map(np.asarray, data)
    if (check_data := getattr(loss_fn, "check_data", None)) is not None:
        check_data(data, "data")
    placement = Placement(resolve_mesh(mesh))
    batch_size = min(batch_size, size)
    with placement.context():
        if placement.mesh is not None:
            params, state = jax.device_put((params, state), placement.replicated)
        batches = placement.eval_batches(data, batch_size)
        results = [(_eval_batch(params, state, batch, loss_fn=loss_fn, eval_fn=eval_fn), n) for batch, n in batches]
        results = jax.device_get(results)
    return {
        name: float(math.fsum(float(metrics[name]) * n for metrics, n in results) / size) for name in results[0][0]
    }


def predict(model: Layer, params: Params, state: State, x: Any, *, batch_size: int = 256) -> Any:
    """``model``'s outputs for every example of ``x``, computed in batches in evaluation mode.

    Each batch is ``model.apply(params, state, x_batch, train=False)``, compiled once per
    batch shape (at most two: full batches and the last one).

    Args:
      model: the ``(init, apply)`` pair.
      params, state: the model's.
      x: the inputs ``(n, ...)``, or a pytree of them for a model with several inputs.
      batch_size: examples per batch.

    Returns:
      The outputs ``(n, ...)`` as NumPy arrays (a pytree of them for a model with several
      outputs), e.g. logits ``(n, num_classes)``: ``predict(...).argmax(-1)`` are the classes.

    Example:
      >>> predict(model, params, state, x_test).argmax(-1)  # (n,) predicted classes
    """
    size = num_examples(x, "x")
    check_batch_size(batch_size, None, "predict")

    batches = in_order(x, min(batch_size, size))
    outputs = [jax.device_get(_predict_batch(params, state, batch, apply=model.apply)) for batch, _ in batches]
    return jax.tree.map(lambda *parts: np.concatenate([np.asarray(p) for p in parts]), *outputs)


def history_arrays(history: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> dict[str, dict[str, np.ndarray]]:
    """``fit``'s history records as one array per split and column, ready to plot.

    Args:
      history: the history ``fit`` returns (or its ``"records"`` list).

    Returns:
      ``{split: {"step": int64 (records,), "epoch": float64 (records,), metric: float64
      (records,), ...}}``, splits and columns in the order they first appear, e.g.
      ``{"train": {"step", "epoch", "loss", "accuracy"}, "validation": {...}}``. A metric
      missing from some records of a split is NaN there.

    Example:
      >>> curves = history_arrays(history)
      >>> plt.plot(curves["train"]["epoch"], curves["train"]["loss"])
    """
    records = history["records"] if isinstance(history, Mapping) else history
    by_split: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        by_split.setdefault(record["split"], []).append(record)
    arrays = {}
    for split, rows in by_split.items():
        columns = list(dict.fromkeys(key for row in rows for key in row if key != "split"))
        arrays[split] = {
            key: np.array([row.get(key, -1 if key == "step" else np.nan) for row in rows], np.int64 if key == "step" else np.float64)
            for key in columns
        }
    return arrays
