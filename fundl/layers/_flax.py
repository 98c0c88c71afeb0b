"""Bring a ``flax.linen`` module into a fundl model as an ordinary layer."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax.numpy as jnp

from fundl._core import Layer, LayerError

if TYPE_CHECKING:
    import flax.linen as nn


def from_flax(
    module: nn.Module,
    *,
    train_args: Callable[[bool], dict[str, Any]] | None = None,
    input_dtype: Any = jnp.float32,
    name: str | None = None,
) -> Layer:
    """Wraps a ``flax.linen`` module as a fundl layer.

    The module's ``"params"`` collection becomes the layer's params and its other
    collections (e.g. ``"batch_stats"``) the layer's state, updated when ``train=True``.
    A ``key`` given to ``apply`` is passed to the module as its ``"dropout"`` rng.

    Args:
      module: the flax module; it is called as ``module(x, **train_args(train))``.
      train_args: maps ``train`` to the module's own keywords, for modules that behave
        differently in training, e.g. ``lambda train: {"deterministic": not train}``.
      input_dtype: dtype of the dummy input used to initialise (int for ``nn.Embed``).
      name: name inside a model (default: the module's class name, e.g. ``Dense_0``).

    Example:
      >>> model = serial(from_flax(nn.Dense(32)), relu(), dense(10))
    """
    import flax.errors  # here, not at the top: `import fundl` does not need flax
    from flax.core import unfreeze

    extra = train_args or (lambda train: {})

    def init(key, input_shape):
        x = jnp.zeros(input_shape, input_dtype)
        try:
            y, variables = module.init_with_output({"params": key, "dropout": key}, x, **extra(False))
        except flax.errors.FlaxError as error:
            raise LayerError(f"flax module {type(module).__name__}: {error}") from None
        variables = unfreeze(variables)
        params = variables.pop("params", {})
        return tuple(jnp.shape(y)), params, variables

    def apply(params, state, x, *, key=None, train=False):
        variables = {"params": params, **state} if params else dict(state)
        rngs = {"dropout": key} if key is not None else {}
        try:
            if train and state:
                y, updates = module.apply(variables, x, rngs=rngs, mutable=list(state), **extra(train))
                return y, unfreeze(updates)
            return module.apply(variables, x, rngs=rngs, **extra(train)), state
        except flax.errors.FlaxError as error:
            raise LayerError(f"flax module {type(module).__name__}: {error}") from None

    return Layer(init, apply, name or type(module).__name__)
