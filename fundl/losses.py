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
    where = where.astype(values.dtype)
    return jnp.sum(values * where) / jnp.maximum(jnp.sum(where), 1)


def _check_class_labels(name: str, logits: Array, labels: Array) -> None:
    dtype = jnp.result_type(labels)
    if not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(f"{name} expects integer class labels, got {dtype}")
    if jnp.shape(logits)[:-1] != jnp.shape(labels):
        raise ValueError(
            f"{name} expects labels of shape {jnp.shape(logits)[:-1]} for logits of shape "
            f"{jnp.shape(logits)} (one label per row of logits), got labels of shape {jnp.shape(labels)}"
        )
    check_indices(name, labels, jnp.shape(logits)[-1], "labels", error=ValueError)


def _check_same_shape(name: str, predictions: Array, targets: Array) -> None:
    if jnp.shape(predictions) != jnp.shape(targets):
        raise ValueError(f"{name} expects targets of shape {jnp.shape(predictions)}, got {jnp.shape(targets)}")


def softmax_cross_entropy(logits: Array, labels: Array, *, where: Array | None = None) -> Array:
    """Mean cross-entropy of integer ``labels`` under ``softmax(logits)``.

    Args:
      logits: ``(..., num_classes)`` unnormalised log-probabilities.
      labels: ``(...)`` integers in ``[0, num_classes)`` (checked when not under ``jit``).
      where: optional ``(...)`` boolean mask of the entries to average.
    """
    _check_class_labels("softmax_cross_entropy", logits, labels)
    return _mean(optax.losses.softmax_cross_entropy_with_integer_labels(_float32(logits), labels), where)


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
    """Fraction of rows whose largest logit is at the label: ``logits (..., K)``, ``labels (...)``."""
    _check_class_labels("accuracy", logits, labels)
    return _mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32), where)


def perplexity(logits: Array, labels: Array, *, where: Array | None = None) -> Array:
    """``exp`` of the mean cross-entropy: the effective number of equally likely choices.

    A model that knows nothing about ``K`` classes has perplexity ``K``. Averaging over
    batches must average the cross-entropy first and exponentiate last.
    """
    return jnp.exp(softmax_cross_entropy(logits, labels, where=where))
