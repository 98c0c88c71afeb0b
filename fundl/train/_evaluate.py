"""Evaluation: the one exact-mean evaluator, and what a Keras user reaches for after training.

Every evaluation of fundl (``fit``'s evaluation splits, a sweep's members, the test splits
of a run, :func:`evaluate`) goes through :func:`exact_means`: each batch's metrics weighted
by its true size, summed in float64, so the result is the mean over every example of the
split whatever the batch size; a metric that is not a mean (:mod:`fundl.metrics`) is
combined from each batch's statistics and finished once. ``model.evaluate``, ``model.predict`` and
``history.history`` are plain functions here: :func:`evaluate`, :func:`predict`,
:func:`history_arrays`.

Example:
  >>> metrics = evaluate(loss_fn, train_state.params, train_state.state, data["test"])  # {"loss": ..., "accuracy": ...}
  >>> logits = predict(model, train_state.params, train_state.state, data["test"]["image"])  # (n, 10)
  >>> curves = history_arrays(history)  # curves["validation"]["accuracy"]: (evaluations,)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from fundl._core import EvalFn, Layer, Loss, Params, State
from fundl._data import check_batch_size, eval_batch_size_for, in_order, is_source, num_examples
from fundl.distributed import MeshSpec, Placement, resolve_mesh
from fundl.metrics import Accumulated, combined, finished
from fundl.train._edges import check_model
from fundl.train._history import History, Record
from fundl.train._structural import Structural

_NO_EVAL = (
    "evaluation needs either an eval_fn(params, state, batch) -> metrics, or a loss function that "
    "takes a `train` keyword (it is then called as loss_fn(params, state, batch, None, train=False)), "
    "or a fundl.Loss with its `evaluate`"
)


def evaluation_of(loss: Loss) -> EvalFn:
    """The loss's evaluation function; a clear error if it has none."""
    if loss.evaluate is None:
        raise ValueError(_NO_EVAL)
    return loss.evaluate


def exact_means(
    eval_call: Callable, params: Any, state: Any, batches: Iterable[tuple[Any, int]], *, members: bool = False
) -> dict[str, Any]:
    """The mean of each metric over every example of ``batches`` (``(batch, size)`` pairs): each batch's metrics,
    computed by ``eval_call(params, state, batch)``, weighted by its size and summed in float64.

    Dispatches every batch before reading any back. A metric is a scalar for one run, or ``(M,)`` for a
    population's members (``members``: their params and state stacked, the batch shared). A metric that is
    not a mean (an :class:`~fundl.metrics.Accumulated`: F1, ROC AUC, a confusion matrix) comes back with its
    statistics combined over the split, to be finished by :func:`fundl.metrics.finished`.
    """
    results = jax.device_get([(eval_call(params, state, batch), n) for batch, n in batches])
    total = sum(n for _, n in results)
    names = results[0][0]
    means: dict[str, Any] = {}
    for name in names:
        values = [metrics[name] for metrics, _ in results]
        if isinstance(values[0], Accumulated):
            means[name] = combined(values, members)
        else:
            means[name] = sum(np.asarray(value, np.float64) * n for value, (_, n) in zip(values, results)) / total
    return means


class Evaluator:
    """Every evaluation split's exact metrics for a carry, per lane: ``{split: [metrics of each lane]}``."""

    def __init__(
        self,
        eval_call: Callable | None,
        population: Any,
        placement: Placement,
        splits: Mapping[str, Any],
        batch_sizes: Mapping[str, int],
    ):
        self.eval_call, self.population, self.placement = eval_call, population, placement
        self.splits, self.batch_sizes = splits, batch_sizes

    def __call__(self, carry: Any, splits: Mapping[str, Any] | None = None) -> dict[str, list[dict[str, float]]]:
        """The metrics of ``splits`` (default: the evaluation splits) for ``carry``."""
        if self.eval_call is None:
            return {}
        params, state = self.population.eval_args(carry)
        members = self.population.size is not None
        return {
            name: self.population.lane_means(
                exact_means(
                    self.eval_call,
                    params,
                    state,
                    self.placement.eval_batches(split, self.batch_sizes[name]),
                    members=members,
                )
            )
            for name, split in (self.splits if splits is None else splits).items()
        }


def score(
    population: Any,
    loss: Loss,
    carry: Any,
    splits: Mapping[str, Any],
    *,
    mesh: Any,
    batch_size: int,
    eval_batch_size: int | None = None,
) -> dict[str, list[dict[str, float]]]:
    """Each split's exact metrics for a trained carry (one run's train state, or a population's), per member.

    What a run does once, after training, with its test splits: the same evaluator as the
    loop's, batches sized as the loop sizes them, on the carry's devices.

    Returns:
      ``{split: [metrics of each member]}`` (one dict for a single run).
    """
    placement = Placement(mesh, population.size)
    sizes = {name: eval_batch_size_for(split, eval_batch_size, batch_size) for name, split in splits.items()}
    with placement.context():
        call = _scoring_call(Structural(population), Structural(evaluation_of(loss)))
        return Evaluator(call, population, placement, splits, sizes)(carry)


@functools.lru_cache(maxsize=16)
def _scoring_call(population: Structural, evaluate: Structural) -> Callable:
    return jax.jit(population.value.eval_fn(evaluate.value))


# One compiled function per evaluation function (or model) and batch shape, kept by jit's cache,
# so that calling evaluate or predict again (after each epoch, say) compiles nothing new; the
# function is a static argument compared by what it computes (a rebuilt equal one hits too).
@functools.partial(jax.jit, static_argnames="evaluate")
def _eval_batch(params: Params, state: State, batch: Any, *, evaluate: EvalFn) -> dict[str, jax.Array]:
    return evaluate(params, state, batch)


@functools.partial(jax.jit, static_argnames="apply")
def _predict_batch(params: Params, state: State, x_batch: Any, *, apply: Callable) -> Any:
    return apply(params, state, x_batch, train=False)[0]


def evaluate(
    loss_fn: Loss | Callable[..., Any],
    params: Params,
    state: State,
    data: Any,
    *,
    batch_size: int = 256,
    mesh: MeshSpec = 1,
    eval_fn: EvalFn | None = None,
) -> dict[str, Any]:
    """The loss and metrics of ``loss_fn`` over every example of ``data``, in evaluation mode.

    The loss is evaluated as ``fit`` evaluates it (its ``evaluate``; for a plain function
    with a ``train`` keyword, ``loss_fn(params, state, batch, None, train=False)``), on
    batches of ``batch_size`` (the last may be smaller), and each batch's metrics are
    weighted by its size: the results are exact means over the split, whatever the batch
    size. One compiled function per batch shape (at most three).

    Args:
      loss_fn: a :class:`~fundl.Loss` or ``(params, state, batch, key, *, train) -> (loss, (new_state, metrics))``.
      params, state: the model's, e.g. ``train_state.params`` and ``train_state.state``.
      data: a pytree of arrays with a leading example axis, in the form the loss function
        takes, e.g. ``{"image": (n, 8, 8), "label": (n,)}`` or ``(x, y)``. It is checked
        first with the loss's ``check_data`` (finite inputs by default).
      batch_size: examples per evaluation batch.
      mesh: the devices, as ``fit``'s ``mesh``: ``1`` (the default) is one device, ``None``
        every visible device (each batch is cut over them; the few examples that do not
        fill a row per device go as one more, replicated batch).
      eval_fn: ``(params, state, batch) -> metrics`` to call instead of the loss in evaluation mode.

    Returns:
      ``{"loss": float, **metrics}`` (or ``eval_fn``'s metrics), each the mean over all examples;
      a metric that is not a mean (:mod:`fundl.metrics`: F1, ROC AUC) is exact over the
      split too, and a confusion matrix comes back as a NumPy array.

    Example:
      >>> evaluate(classification_loss(model), params, state, (x_test, y_test))
      {'loss': 0.1123, 'accuracy': 0.9666}
    """
    loss = Loss.of(loss_fn, eval_fn)
    evaluation = evaluation_of(loss)
    size = num_examples(data, "data")
    check_batch_size(batch_size, None, "evaluation")
    data = data if is_source(data) else jax.tree.map(np.asarray, data)
    loss.check(data, "data")
    placement = Placement(resolve_mesh(mesh))
    with placement.context():
        if placement.sharded:
            params, state = jax.device_put((params, state), placement.replicated)
        call = functools.partial(_eval_batch, evaluate=Structural(evaluation))
        means = exact_means(call, params, state, placement.eval_batches(data, min(batch_size, size)))
    return {name: finished(value) for name, value in means.items()}


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
    check_model(model)
    size = num_examples(x, "x")
    check_batch_size(batch_size, None, "predict")

    batches = in_order(x, min(batch_size, size))
    apply = Structural(model.apply)
    outputs = [jax.device_get(_predict_batch(params, state, batch, apply=apply)) for batch, _ in batches]
    return jax.tree.map(lambda *parts: np.concatenate([np.asarray(p) for p in parts]), *outputs)


def history_arrays(history: History | Sequence[Record], member: int | None = None) -> dict[str, dict[str, np.ndarray]]:
    """``fit``'s history records as one array per split and column, ready to plot.

    Args:
      history: the :class:`~fundl.train.History` ``fit`` returns (or its records).
      member: in a population's history, the member whose records to take.

    Returns:
      ``{split: {"step": int64 (records,), "epoch": float64 (records,), metric: float64
      (records,), ...}}``, splits and columns in the order they first appear, e.g.
      ``{"train": {"step", "epoch", "loss", "accuracy"}, "validation": {...}}``. A metric
      missing from some records of a split is NaN there.

    Example:
      >>> curves = history_arrays(history)
      >>> plt.plot(curves["train"]["epoch"], curves["train"]["loss"])
    """
    records = history.records if isinstance(history, History) else history
    by_split: dict[str, list[Record]] = {}
    for record in records:
        if record.member == member:
            by_split.setdefault(record.split, []).append(record)
    arrays = {}
    for split, rows in by_split.items():
        names = list(dict.fromkeys(name for row in rows for name in row.metrics))
        arrays[split] = {
            "step": np.array([row.step for row in rows], np.int64),
            "epoch": np.array([row.epoch for row in rows], np.float64),
            **{name: np.array([row.metrics.get(name, np.nan) for row in rows], np.float64) for name in names},
        }
    return arrays
