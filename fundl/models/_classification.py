"""Classification: softmax cross-entropy of a model's logits, as a :class:`~fundl.Loss` that checks its labels."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fundl import losses
from fundl._core import EvalMode, Layer, Loss
from fundl._data import check_finite
from fundl.metrics import CLASSIFICATION_METRICS, classification_metrics

_BATCH_FORMS = (
    "classification_loss takes batches in one of these forms: a dict {{{inputs!r}: x, {labels!r}: y}}, "
    "a dict {{'x': x, 'y': y}}, or a tuple / list (x, y), with x the model's input (n, ...) and y "
    "integer classes (n,)"
)


def split_batch(batch: Any, inputs: str = "image", labels: str = "label", name: str = "the batch") -> tuple[Any, Any]:
    """``(x, y)`` from a batch given as ``{inputs: x, labels: y}``, ``{"x": x, "y": y}`` or ``(x, y)``.

    Raises:
      ValueError: the batch is in none of these forms; the message lists them.
    """
    forms = _BATCH_FORMS.format(inputs=inputs, labels=labels)
    if isinstance(batch, Mapping):
        for x_key, y_key in ((inputs, labels), ("x", "y")):
            if x_key in batch and y_key in batch:
                return batch[x_key], batch[y_key]
        keys = sorted(map(str, batch))
        raise ValueError(
            f"{forms}; {name} is a dict with the keys {keys}: name yours, e.g. "
            f"classification_loss(model, inputs={keys[0]!r}, labels={keys[-1]!r})"
        )
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    got = (
        f"a {type(batch).__name__} of length {len(batch)}"
        if isinstance(batch, (tuple, list))
        else f"a {type(batch).__name__}"
    )
    raise ValueError(f"{forms}; {name} is {got}")


_PROBABILITIES = (
    "classification_loss expects the model to output logits (any real numbers) and applies the softmax itself, but "
    "this model's output is already a probability distribution: its last operation is a softmax. Cross-entropy of "
    "a softmax of probabilities trains slowly and stalls. Remove the final softmax() layer; for probabilities, "
    "apply jax.nn.softmax to predict(model, params, state, x)"
)
_UNFLATTENED = (
    "{name}: the model gives {positions} sets of {classes} logits for each example (output {logits} for one "
    "example), but the labels hold one class per example; the inputs {x} reach a layer that acts on their last "
    "axis only (dense does). Flatten each example first: put fl.flatten() before the first dense layer "
    "(or give the model inputs of shape (n, features))"
)
_SHAPE_ONLY = frozenset({"reshape", "squeeze", "expand_dims", "convert_element_type", "copy", "copy_p"})
_BROADCASTS = frozenset({"broadcast_in_dim", "reshape", "expand_dims", "convert_element_type"})


def ends_in_softmax(jaxpr: Any, out: Any) -> bool:
    """Whether ``out`` of ``jaxpr`` is ``exp(z) / sum(exp(z))`` over its last axis (maybe reshaped or cast after).

    Read from the traced model, not from layer names, so that it finds ``fl.softmax()``,
    ``jax.nn.softmax`` inside a layer of one's own, a flax module's softmax and one written
    out by hand, inside nested ``jit`` calls too.
    """
    producers = {id(var): eqn for eqn in jaxpr.eqns for var in eqn.outvars}
    eqn = producers.get(id(out))
    while eqn is not None and eqn.primitive.name in _SHAPE_ONLY:
        out = eqn.invars[0]
        eqn = producers.get(id(out))
    if eqn is None:
        return False
    inner = eqn.params.get("jaxpr") or eqn.params.get("call_jaxpr")
    if inner is not None:  # a nested jit or custom rule: look inside it
        inner = getattr(inner, "jaxpr", inner)
        return ends_in_softmax(inner, inner.outvars[eqn.outvars.index(out)])
    if eqn.primitive.name != "div":
        return False
    numerator, denominator = eqn.invars
    exp = producers.get(id(numerator))
    total = producers.get(id(denominator))
    while total is not None and total.primitive.name in _BROADCASTS:
        total = producers.get(id(total.invars[0]))
    if exp is None or exp.primitive.name != "exp" or total is None or total.primitive.name != "reduce_sum":
        return False
    summed = total.invars[0]
    again = producers.get(id(summed))  # exp(z) computed a second time for the sum, as written by hand
    return summed is numerator or (again is not None and again.primitive.name == "exp" and again.invars == exp.invars)


def _first_bad(bad: np.ndarray) -> tuple[int, ...]:
    """The position of the first True of a boolean array."""
    return tuple(int(i) for i in np.argwhere(bad)[0])


@dataclasses.dataclass(frozen=True)
class _Classifier:
    """The cross-entropy of ``model``'s logits on batches ``{inputs: x, labels: y}``; equal for equal arguments."""

    model: Layer
    inputs: str
    labels: str
    metrics: tuple[str, ...] = ()

    def __call__(self, params, state, batch, key, *, train=True):
        x, y = split_batch(batch, self.inputs, self.labels)
        logits, new_state = self.model.apply(params, state, x, key=key, train=train)
        loss = losses.softmax_cross_entropy(logits, y)
        metrics = {"accuracy": losses.accuracy(logits, y)}
        if not train and self.metrics:  # whole-split metrics, in evaluation only
            metrics.update(classification_metrics(logits, y, self.metrics))
        return loss, (new_state, metrics)


@dataclasses.dataclass(frozen=True)
class _LabelCheck:
    """Checks a whole split of a classifier's data on the host: integer labels within the classes, finite inputs."""

    task: _Classifier

    def __call__(self, data: Any, name: str = "data") -> None:
        """Raises ValueError naming ``name``, the first bad example's index and its value.

        Args:
          data: a whole split, in any form a batch may take (leaves ``(n, ...)``).
          name: the split, for the message, e.g. ``"train data"``.
        """
        model = self.task.model
        x, y = split_batch(data, self.task.inputs, self.task.labels, name)
        y = np.asarray(y)
        check_finite(x, name)
        one = jax.tree.map(lambda a: jax.ShapeDtypeStruct((1, *np.shape(a)[1:]), jnp.asarray(a[:1]).dtype), x)

        def logits_of(x1):
            _, params, state = model.init(jax.random.key(0), jax.tree.map(jnp.shape, x1))
            return model.apply(params, state, x1)[0]

        traced, logits = jax.make_jaxpr(logits_of, return_shape=True)(one)
        if ends_in_softmax(traced.jaxpr, traced.jaxpr.outvars[0]):
            raise ValueError(_PROBABILITIES)
        num_classes, per_example = logits.shape[-1], logits.shape[1:-1]
        if not np.issubdtype(y.dtype, np.integer):
            fix = (
                "these look one-hot; pass labels.argmax(-1)"
                if y.shape[1:] == (*per_example, num_classes)
                else "cast with labels.astype(np.int32)"
            )
            raise ValueError(f"{name}: labels must be integer classes, got {y.dtype} labels of shape {y.shape}: {fix}")
        if y.shape[1:] == () and per_example and np.ndim(x) > 2:  # a dense layer on images keeps their rows
            raise ValueError(
                _UNFLATTENED.format(
                    name=name, logits=logits.shape[1:], positions=per_example, classes=num_classes, x=np.shape(x)
                )
            )
        if y.shape[1:] != per_example:
            raise ValueError(
                f"{name}: the model gives logits of shape {logits.shape} for one example, so each label needs the "
                f"shape {per_example}; got labels of shape {y.shape} (one row per example)"
            )
        bad = (y < 0) | (y >= num_classes)
        if bad.any():
            where = _first_bad(bad)
            index = where[0] if len(where) == 1 else where
            raise ValueError(
                f"{name}: label {y[where]} at index {index} is outside [0, {num_classes}) "
                f"(the model gives {num_classes} logits per example): fix the labels, or give the "
                f"model's last layer as many units as there are classes"
            )


def classification_loss(
    model: Layer, *, inputs: str = "image", labels: str = "label", metrics: Sequence[str] = ()
) -> Loss:
    """Softmax cross-entropy of ``model``'s logits, with accuracy as a metric.

    A batch is a dict ``{inputs: x, labels: y}`` (by default ``{"image": x, "label": y}``),
    a dict ``{"x": x, "y": y}``, or a tuple ``(x, y)``: ``x`` the model's input
    ``(batch, ...)``, ``y`` integer classes ``(batch,)`` in ``[0, num_classes)`` (not
    one-hot). It evaluates in evaluation mode (``train=False``: no dropout, running
    batch statistics).

    Its ``check_data(data, name)`` checks a whole split once on the host, with NumPy,
    before training: labels are integers in ``[0, num_classes)`` (``num_classes`` from
    the model's output shape) and float inputs are finite. Under ``jit`` such errors
    could not be named; a label outside the classes makes the loss NaN there.

    ``metrics`` adds whole-split metrics to every evaluation (not to the training steps'
    metrics), exact over the split (:mod:`fundl.metrics`): any of ``"precision"``,
    ``"recall"``, ``"f1"`` (macro averages over the classes), ``"roc_auc"`` (one class
    against the rest, on the softmax probabilities) and ``"confusion_matrix"``.

    Two calls with the same model and keys give equal losses, so a notebook cell that
    builds it again finds ``fit``'s compiled programs again.

    Example:
      >>> loss_fn = classification_loss(fl.serial(fl.flatten(), fl.dense(10)))
      >>> loss_fn.check_data((x_train, y_train), "train data")
      >>> loss, (state, metrics) = loss_fn(params, state, (x, y), key)
    """
    unknown = sorted(set(metrics) - set(CLASSIFICATION_METRICS))
    if unknown:
        raise ValueError(
            f"classification_loss(metrics=...): unknown metric(s) {unknown}; "
            f"available: {', '.join(CLASSIFICATION_METRICS)}"
        )
    task = _Classifier(model, inputs, labels, tuple(metrics))
    return Loss(task, EvalMode(task), _LabelCheck(task))
