"""Precision policies: compute in bfloat16, keep params, optimizer state, loss and reductions in float32."""

from __future__ import annotations

import inspect
from typing import Any, cast

import jax
import jax.numpy as jnp

from fundl.train._step import CheckedLossFn, LossFn

PRECISION_POLICIES = ("float32", "bfloat16")


def _cast_floats(tree: Any, dtype: Any) -> Any:
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(jnp.result_type(a), jnp.floating) else a, tree)


def with_precision(loss_fn: LossFn, policy: str) -> LossFn:
    """``loss_fn`` under a precision policy.

    ``"float32"`` returns ``loss_fn`` itself. ``"bfloat16"`` casts the float params and
    the float leaves of the batch to bfloat16 before calling it, so the model computes
    in bfloat16, while the params the optimizer sees, their gradients (the cast is
    differentiated back to float32) and the optimizer state stay float32. The loss and
    metrics come back as float32 (fundl's losses and normalisation layers reduce in
    float32 anyway), and the model state keeps its own dtypes.

    Example:
      >>> fit(with_precision(classification_loss(model), "bfloat16"), optimizer, ...)
    """
    if policy not in PRECISION_POLICIES:
        raise ValueError(f"unknown precision policy {policy!r}; available: {', '.join(PRECISION_POLICIES)}")
    if policy == "float32":
        return loss_fn
    compute = jnp.bfloat16

    def call(params, state, batch, key, **kwargs):
        loss, (new_state, metrics) = loss_fn(_cast_floats(params, compute), state, _cast_floats(batch, compute), key, **kwargs)
        new_state = jax.tree.map(lambda new, old: new.astype(jnp.result_type(old)), new_state, state)
        return loss.astype(jnp.float32), (new_state, _cast_floats(metrics, jnp.float32))

    def loss_with_train(params, state, batch, key, *, train=True):
        return call(params, state, batch, key, train=train)

    def loss_without_train(params, state, batch, key):
        return call(params, state, batch, key)

    wrapped = cast(CheckedLossFn, loss_with_train if "train" in inspect.signature(loss_fn).parameters else loss_without_train)
    if hasattr(loss_fn, "check_data"):  # fit's data check (labels in range) applies unchanged
        wrapped.check_data = loss_fn.check_data
    return wrapped
