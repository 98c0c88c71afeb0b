"""Losses and metrics as pure functions of predictions and targets.

Each returns the mean over all examples (and time steps), optionally restricted by a
boolean ``where`` mask of the same shape as the targets (for padded sequences). The
per-example formulas come from ``optax.losses``.

Example: the loss of a classifier, in the form the training loop takes::

    def loss_fn(params, state, batch, key):
        logits, state = model.apply(params, state, batch["image"], key=key, train=True)
        loss = losses.softmax_cross_entropy(logits, batch["label"])
        return loss, (state, {"accuracy": losses.accuracy(logits, batch["label"])})
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from fundl._core import check_indices

Array = jax.Array


def _float32(x: Array) -> Array:
    """``x`` in at least float32: losses are reduced in float32 even when the model computes in bfloat16."""
    return jnp.asarray(x).astype(jnp.promote_types(jnp.result_type(x), jnp.float32))


def _mean(values: Array, where: Array | None) -> Array:
    if where is None:
        return jnp.mean(values)
    if jnp.shape(where) != jnp.shape(values):
        raise ValueError(f"`where` must have the shape of the targets {jnp.shape(values)}, got {jnp.shape(where)}")
    where = jnp.asarray(where).astype(bool)
    total = jnp.sum(jnp.where(where, values, 0))  # a masked-out NaN stays out
    return total / jnp.maximum(jnp.sum(where.astype(values.dtype)), 1)


def _one_hot_hint(logits_shape: tuple[int, ...], labels_shape: tuple[int, ...]) -> str:
    """The fix for labels given one-hot (one column per class), or ``""``."""
    if tuple(labels_shape) == tuple(logits_shape) and len(labels_shape) >= 1:
        return ": these look one-hot; pass labels.argmax(-1)"
    return ""


def _check_class_labels(name: str, logits: Array, labels: Array) -> None:
    dtype = jnp.result_type(labels)
    logits_shape, labels_shape = jnp.shape(logits), jnp.shape(labels)
    if not jnp.issubdtype(dtype, jnp.integer):
        fix = _one_hot_hint(logits_shape, labels_shape) or ": cast with labels.astype(jnp.int32)"
        raise TypeError(f"{name} expects integer class labels, got {dtype} labels of shape {labels_shape}{fix}")
    if logits_shape[:-1] != labels_shape:
        raise ValueError(
            f"{name} expects labels of shape {logits_shape[:-1]} for logits of shape "
            f"{logits_shape} (one label per row of logits), got labels of shape {labels_shape}"
            + _one_hot_hint(logits_shape, labels_shape)
        )
    check_indices(name, labels, logits_shape[-1], "labels", error=ValueError)


def _nan_outside(values: Array, labels: Array, num_classes: int) -> Array:
    """``values`` with NaN where a label lies outside ``[0, num_classes)``.

    Under ``jit`` labels cannot be checked, and the gather would otherwise wrap -1 to the
    last class and read past the end for ``num_classes``: a NaN cannot pass unnoticed
    (``fit`` stops at the first non-finite loss and names the step).
    """
    valid = (labels >= 0) & (labels < num_classes)
    return jnp.where(valid, values, jnp.nan)


def _check_same_shape(name: str, predictions: Array, targets: Array) -> None:
    if jnp.shape(predictions) != jnp.shape(targets):
        raise ValueError(f"{name} expects targets of shape {jnp.shape(predictions)}, got {jnp.shape(targets)}")


def softmax_cross_entropy(logits: Array, labels: Array, *, where: Array | None = None) -> Array:
    """Mean cross-entropy of integer ``labels`` under ``softmax(logits)``.

    Args:
      logits: ``(..., num_classes)`` unnormalised log-probabilities.
      labels: ``(...)`` integers in ``[0, num_classes)``: eagerly, other values are a
        ``ValueError``; under ``jit`` (where they cannot be checked) each such entry's loss
        is NaN, so the mean is NaN unless ``where`` masks the entry out.
      where: optional ``(...)`` boolean mask of the entries to average.
    """
    _check_class_labels("softmax_cross_entropy", logits, labels)
    values = optax.losses.softmax_cross_entropy_with_integer_labels(_float32(logits), labels)
    return _mean(_nan_outside(values, labels, jnp.shape(logits)[-1]), where)


def binary_cross_entropy(logits: Array, targets: Array, *, where: Array | None = None) -> Array:
    """Mean cross-entropy of ``targets`` in [0, 1] under ``sigmoid(logits)``, same shapes."""
    _check_same_shape("binary_cross_entropy", logits, targets)
    return _mean(optax.losses.sigmoid_binary_cross_entropy(_float32(logits), _float32(targets)), where)


def mse(predictions: Array, targets: Array, *, where: Array | None = None) -> Array:
    """Mean squared error ``mean((predictions - targets) ** 2)``, same shapes."""
    _check_same_shape("mse", predictions, targets)
    return _mean(optax.losses.squared_error(_float32(predictions), _float32(targets)), where)


def mae(predictions: Array, targets: Array, *, where: Array | None = None) -> Array:
    """Mean absolute error ``mean(|predictions - targets|)``, same shapes."""
    _check_same_shape("mae", predictions, targets)
    return _mean(jnp.abs(_float32(predictions) - _float32(targets)), where)


def accuracy(logits: Array, labels: Array, *, where: Array | None = None) -> Array:
    """Fraction of rows whose largest logit is at the label: ``logits (..., K)``, ``labels (...)``.

    Labels outside ``[0, K)`` are an error eagerly and give NaN under ``jit``, as in
    :func:`softmax_cross_entropy`.
    """
    _check_class_labels("accuracy", logits, labels)
    hits = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return _mean(_nan_outside(hits, labels, jnp.shape(logits)[-1]), where)


def perplexity(logits: Array, labels: Array, *, where: Array | None = None) -> Array:
    """``exp`` of the mean cross-entropy: the effective number of equally likely choices.

    A model that knows nothing about ``K`` classes has perplexity ``K``. Averaging over
    batches must average the cross-entropy first and exponentiate last.
    """
    return jnp.exp(softmax_cross_entropy(logits, labels, where=where))
