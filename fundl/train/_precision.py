"""Precision policies: compute in bfloat16, keep params, optimizer state, loss and reductions in float32."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from fundl._core import Loss

PRECISION_POLICIES = ("float32", "bfloat16")


def _cast_floats(tree: Any, dtype: Any) -> Any:
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(jnp.result_type(a), jnp.floating) else a, tree)


@dataclasses.dataclass(frozen=True)
class _InBfloat16:
    """``fn(params, state, batch, *rest)`` with float params and batch cast to bfloat16, float32 results.

    Wraps a loss function (``rest = (key,)``, returning ``(loss, (new_state, metrics))``) or an
    evaluation function (no ``rest``, returning ``metrics``); equal for equal ``fn``.
    """

    fn: Callable[..., Any]
    returns_loss: bool

    def __call__(self, params: Any, state: Any, batch: Any, *rest: Any, **kwargs: Any) -> Any:
        out = self.fn(_cast_floats(params, jnp.bfloat16), state, _cast_floats(batch, jnp.bfloat16), *rest, **kwargs)
        if not self.returns_loss:
            return _cast_floats(out, jnp.float32)
        loss, (new_state, metrics) = out
        new_state = jax.tree.map(lambda new, old: new.astype(jnp.result_type(old)), new_state, state)
        return loss.astype(jnp.float32), (new_state, _cast_floats(metrics, jnp.float32))


def with_precision(loss: Loss | Callable[..., Any], policy: str) -> Loss:
    """``loss`` under a precision policy, as a :class:`~fundl.Loss`.

    ``"float32"`` returns the loss as it is. ``"bfloat16"`` casts the float params and
    the float leaves of the batch to bfloat16 before calling it (in training and in
    evaluation), so the model computes in bfloat16, while the params the optimizer sees,
    their gradients (the cast is differentiated back to float32) and the optimizer state
    stay float32. The loss and metrics come back as float32 (fundl's losses and
    normalisation layers reduce in float32 anyway), and the model state keeps its own
    dtypes. The data check is kept as it is.

    Example:
      >>> fit(with_precision(classification_loss(model), "bfloat16"), optimizer, ...)
    """
    if policy not in PRECISION_POLICIES:
        raise ValueError(f"unknown precision policy {policy!r}; available: {', '.join(PRECISION_POLICIES)}")
    loss = Loss.of(loss)
    if policy == "float32":
        return loss
    evaluate = None if loss.evaluate is None else _InBfloat16(loss.evaluate, returns_loss=False)
    return Loss(_InBfloat16(loss.fn, returns_loss=True), evaluate, loss.check_data)
