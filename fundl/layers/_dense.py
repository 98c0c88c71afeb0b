"""Dense (fully connected) and embedding layers."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fundl._core import (
    GLOROT_UNIFORM,
    STANDARD_NORMAL,
    ZEROS,
    Initializer,
    Layer,
    LayerError,
    LayerTypeError,
    check_bool,
    check_float,
    check_indices,
    check_initializer,
    check_positive,
    expect_params,
)


def dense(
    units: int,
    *,
    use_bias: bool = True,
    w_init: Initializer = GLOROT_UNIFORM,
    b_init: Initializer = ZEROS,
) -> Layer:
    """An affine map of the last axis: ``y = x @ w + b``.

    Shapes: ``x (..., n_in) -> y (..., units)``; params ``w (n_in, units)``, ``b (units,)``.

    Args:
      units: number of output features.
      use_bias: add the bias ``b``.
      w_init, b_init: ``jax.nn.initializers`` for the weights and the bias.

    Example:
      >>> out_shape, params, state = dense(10).init(jax.random.key(0), (32, 64))  # (32, 10)
    """
    check_positive("dense", units=units)
    check_bool("dense", use_bias=use_bias)
    check_initializer("dense", w_init=w_init, b_init=b_init)

    def init(key, input_shape):
        if len(input_shape) < 1:
            raise LayerError(f"dense expects inputs of shape (..., features), got {tuple(input_shape)}")
        n_in = input_shape[-1]
        w_key, b_key = jax.random.split(key)
        params = {"w": w_init(w_key, (n_in, units), jnp.float32)}
        if use_bias:
            params["b"] = b_init(b_key, (units,), jnp.float32)
        return (*input_shape[:-1], units), params, {}

    def apply(params, state, x, *, key=None, train=False):
        check_float("dense", x)
        w = params.get("w") if isinstance(params, dict) else None
        n_in = w.shape[0] if w is not None and jnp.ndim(w) == 2 else jnp.shape(x)[-1]
        if jnp.ndim(x) < 1 or jnp.shape(x)[-1] != n_in:
            fix = ": add flatten() before it" if jnp.ndim(x) > 2 else ""
            raise LayerError(f"dense expects inputs of shape (..., {n_in}), got {jnp.shape(x)}{fix}")
        expected = {"w": (n_in, units), **({"b": (units,)} if use_bias else {})}
        w, *b = expect_params("dense", params, expected)
        y = x @ w
        return (y + b[0] if use_bias else y), state

    return Layer(init, apply, "dense")


def embedding(vocab_size: int, features: int, *, table_init: Initializer = STANDARD_NORMAL) -> Layer:
    """Looks up a learned vector for each integer token id.

    Shapes: ``ids (...) int -> y (..., features)``; params ``table (vocab_size, features)``.

    Ids outside ``[0, vocab_size)`` (negative ones included) are a ``LayerError`` when the
    call is eager. Under ``jit`` their values cannot be checked, so each such id gives a
    row of NaN (never another token's row): the loss becomes NaN and ``fit`` stops,
    naming the step. The gradient of the table is zero for those ids.

    Example:
      >>> out_shape, params, state = embedding(1000, 64).init(jax.random.key(0), (32, 20))  # (32, 20, 64)
    """
    check_positive("embedding", vocab_size=vocab_size, features=features)
    check_initializer("embedding", table_init=table_init)

    def init(key, input_shape):
        return (*input_shape, features), {"table": table_init(key, (vocab_size, features), jnp.float32)}, {}

    def apply(params, state, ids, *, key=None, train=False):
        dtype = jnp.result_type(ids)
        if not jnp.issubdtype(dtype, jnp.integer):
            raise LayerTypeError(f"embedding expects integer token ids, got {dtype}")
        check_indices("embedding", ids, vocab_size, "token ids")
        (table,) = expect_params("embedding", params, {"table": (vocab_size, features)})
        # Negative ids would wrap around (NumPy's rule); send them out of range, to the fill.
        ids = jnp.where(ids < 0, vocab_size, ids)
        return jnp.take(table, ids, axis=0, mode="fill", fill_value=jnp.nan), state

    return Layer(init, apply, "embedding")
