"""Positions for attention, which by itself ignores the order of its inputs: learned, sinusoidal, rotary.

``learned_positions`` and ``sinusoidal_positions`` are layers that add a vector per
position to a sequence ``(batch, time, features)``, usually right after the token
embedding. Rotary positions are not a layer: :func:`rotary_embedding` rotates the
queries and keys inside attention (``multi_head_attention(..., rotary=True)``), so that
their dot products depend on the distance between two positions only.

In cached decoding (:func:`fundl.init_cache`) the position layers keep the number of
tokens seen so far in their state, so that a token fed alone gets its own position.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from fundl._core import SMALL_NORMAL, Array, Initializer, Layer, LayerError, check_float, check_positive, expect_params
from fundl.layers._decoding import cache_dtype, check_room, decode_index

LAYOUT = "(batch, time, features)"


def _sequence_shape(kind: str, shape) -> tuple[int, int, int]:
    if len(shape) != 3 or not all(isinstance(d, int) for d in shape):
        hint = ": add embedding() before it for token ids (batch, time)" if len(shape) == 2 else ""
        raise LayerError(f"{kind} expects inputs of shape {LAYOUT}, got {tuple(shape)}{hint}")
    return tuple(shape)  # type: ignore[return-value]


def _index_state() -> dict:
    """``{"index": 0}`` inside :func:`fundl.init_cache`, else no state."""
    return {"index": jnp.zeros((), jnp.int32)} if cache_dtype() is not None else {}


def _advance(state: dict, time: int) -> dict:
    return {"index": state["index"] + time} if state else state


def learned_positions(max_len: int, *, table_init: Initializer = SMALL_NORMAL) -> Layer:
    """Adds a learned vector per position: ``y[:, t] = x[:, t] + table[t]``.

    Shapes: ``x (batch, time, features) -> y (same)``, ``time <= max_len``; params
    ``table (max_len, features)``.

    Args:
      max_len: the longest sequence the model will see (its context).
      table_init: ``jax.nn.initializers`` for the table.

    Example:
      >>> model = serial(embedding(vocab, 64), learned_positions(128), transformer(2, 4, causal=True))
    """
    check_positive("learned_positions", max_len=max_len)

    def init(key, input_shape):
        _, time, features = _sequence_shape("learned_positions", input_shape)
        if time > max_len:
            raise LayerError(f"learned_positions has {max_len} positions (max_len), got sequences of {time}")
        return tuple(input_shape), {"table": table_init(key, (max_len, features), jnp.float32)}, _index_state()

    def apply(params, state, x, *, key=None, train=False):
        check_float("learned_positions", x)
        _, time, features = _sequence_shape("learned_positions", jnp.shape(x))
        (table,) = expect_params("learned_positions", params, {"table": (max_len, features)})
        index = decode_index(state)
        check_room("learned_positions", index, time, max_len)
        rows = lax.dynamic_slice_in_dim(table, index, time) if state else table[:time]
        return x + rows.astype(x.dtype), _advance(state, time)

    return Layer(init, apply, "learned_positions")


def sinusoids(positions: Array, features: int, base: float = 10_000.0) -> Array:
    """The fixed position vectors of "Attention is all you need": ``(time,) -> (time, features)``.

    Feature ``2i`` is ``sin(p / base**(2i / features))``, feature ``2i + 1`` the cosine of the same angle.
    """
    rates = base ** (-jnp.arange(0, features, 2, dtype=jnp.float32) / features)  # (ceil(features / 2),)
    angles = positions.astype(jnp.float32)[:, None] * rates
    table = jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1).reshape(len(positions), -1)
    return table[:, :features]


def sinusoidal_positions(*, base: float = 10_000.0) -> Layer:
    """Adds fixed sine and cosine waves of the position (:func:`sinusoids`): no params, any length.

    Shapes: ``x (batch, time, features) -> y (same)``.
    """

    def init(key, input_shape):
        _sequence_shape("sinusoidal_positions", input_shape)
        return tuple(input_shape), {}, _index_state()

    def apply(params, state, x, *, key=None, train=False):
        check_float("sinusoidal_positions", x)
        _, time, features = _sequence_shape("sinusoidal_positions", jnp.shape(x))
        positions = decode_index(state) + jnp.arange(time)
        return x + sinusoids(positions, features, base).astype(x.dtype), _advance(state, time)

    return Layer(init, apply, "sinusoidal_positions")


def rotary_embedding(x: Array, positions: Array, *, base: float = 10_000.0) -> Array:
    """Rotates queries or keys by their positions (RoPE), so that ``q_t · k_s`` depends on ``t - s`` only.

    The last axis is cut in two halves ``(a, b)``; each pair ``(a_i, b_i)`` turns by the angle
    ``positions * base**(-2i / head_dim)``. Rotations compose, so rotating ``q`` by ``t`` and
    ``k`` by ``s`` leaves their dot product rotated by ``t - s``. Computed in float32 at least.

    Args:
      x: ``(batch, time, heads, head_dim)``, ``head_dim`` even.
      positions: ``(time,)`` integer positions.
      base: the longest wavelength's scale.

    Returns:
      ``(batch, time, heads, head_dim)`` in ``x``'s dtype.
    """
    half = jnp.shape(x)[-1] // 2
    rates = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = (positions.astype(jnp.float32)[:, None] * rates)[:, None, :]  # (time, 1, half): the same for every head
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    a, b = jnp.split(x.astype(jnp.promote_types(x.dtype, jnp.float32)), 2, axis=-1)
    return jnp.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1).astype(x.dtype)
