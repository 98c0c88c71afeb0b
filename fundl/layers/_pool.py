"""Pooling over the spatial dims of channels-last inputs: max, average and global average."""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from fundl._core import Layer, LayerError, Shape, check_float, check_rank, check_sizes
from fundl.layers._conv import Padding, as_padding, as_tuple, layout, rank_hint, spatial_out


def _pool(
    kind: str,
    window: tuple[int, ...],
    strides: int | tuple[int, ...] | None,
    padding: Padding,
    reduce: Callable[[jax.Array, tuple[int, ...], tuple[int, ...], object], jax.Array],
) -> Layer:
    """A window reduction ``reduce(x, dims, strides, padding)`` over the spatial dims."""
    if not isinstance(window, (tuple, list)) or not window:
        raise LayerError(
            f"{kind}: `window` must be a tuple with one size per spatial dim, got {window!r}: "
            f"e.g. {kind}((2, 2)) for images, {kind}((2,)) for sequences"
        )
    window = tuple(window)
    n = len(window)
    check_sizes(kind, window=window)
    strides = window if strides is None else as_tuple(kind, "strides", strides, n)
    pad = as_padding(kind, padding, n)
    full_pad = pad if isinstance(pad, str) else ((0, 0), *pad, (0, 0))

    def output_shape(shape: Shape) -> Shape:
        shape = tuple(shape)
        check_rank(
            kind, shape, n + 2, layout(n) if n <= 3 else f"(batch, {n} spatial dims, channels)", rank_hint(shape, n)
        )
        return (shape[0], *spatial_out(kind, shape[1:-1], window, strides, (1,) * n, pad, "window"), shape[-1])

    def init(key, input_shape):
        return output_shape(input_shape), {}, {}

    def apply(params, state, x, *, key=None, train=False):
        output_shape(jnp.shape(x))
        check_float(kind, x)
        return reduce(jnp.asarray(x), (1, *window, 1), (1, *strides, 1), full_pad), state

    return Layer(init, apply, kind)


def max_pool(
    window: tuple[int, ...], strides: int | tuple[int, ...] | None = None, padding: Padding = "VALID"
) -> Layer:
    """The maximum over each window of the spatial dims, channel by channel.

    Shapes: ``x (batch, *spatial, channels) -> y (batch, *spatial_out, channels)`` with
    ``len(spatial) == len(window)``; no params. ``spatial_out`` follows the rules of
    :func:`fundl.conv2d` (dilation 1). Padded positions never win the maximum.

    Args:
      window: window size per spatial dim, e.g. ``(2, 2)`` for images.
      strides: step per spatial dim (an int or a tuple); defaults to ``window``.
      padding: ``"VALID"``, ``"SAME"``, an int, or one ``(low, high)`` pair per spatial dim.

    Example:
      >>> out_shape, _, _ = max_pool((2, 2)).init(jax.random.key(0), (8, 28, 28, 32))  # (8, 14, 14, 32)
    """

    def reduce(x, dims, strides, pad):
        return lax.reduce_window(x, -jnp.inf, lax.max, dims, strides, pad)  # a Python scalar, so JAX
        # recognises the max monoid and can differentiate it (a jnp.array here breaks grad under jit)

    return _pool("max_pool", window, strides, padding, reduce)


def avg_pool(
    window: tuple[int, ...], strides: int | tuple[int, ...] | None = None, padding: Padding = "VALID"
) -> Layer:
    """The mean over each window of the spatial dims, channel by channel.

    Shapes and arguments as in :func:`max_pool`. With ``"SAME"`` or explicit padding, each
    window's sum is divided by its number of real (non-padded) elements, so border outputs
    are true means (``count_include_pad=False`` in ``flax.linen.avg_pool``).

    Example:
      >>> out_shape, _, _ = avg_pool((2, 2), padding="SAME").init(jax.random.key(0), (8, 7, 7, 3))  # (8, 4, 4, 3)
    """

    def reduce(x, dims, strides, pad):
        sums = lax.reduce_window(x, 0.0, lax.add, dims, strides, pad)
        if pad == "VALID":
            return sums / math.prod(dims)
        ones = jnp.ones((1, *x.shape[1:-1], 1), x.dtype)
        return sums / lax.reduce_window(ones, 0.0, lax.add, dims, strides, pad)

    return _pool("avg_pool", window, strides, padding, reduce)


def global_avg_pool() -> Layer:
    """The mean over all spatial dims: ``x (batch, *spatial, channels) -> y (batch, channels)``.

    At least one spatial dim is required; no params.

    Example:
      >>> out_shape, _, _ = global_avg_pool().init(jax.random.key(0), (8, 7, 7, 64))  # (8, 64)
    """
    kind = "global_avg_pool"

    def output_shape(shape: Shape) -> Shape:
        shape = tuple(shape)
        if len(shape) < 3:
            hint = f": add a channel axis, e.g. reshape({(*shape[1:], 1)}) before it" if len(shape) == 2 else ""
            layout = "(batch, *spatial, channels) (rank >= 3)"
            raise LayerError(f"{kind} expects inputs of shape {layout}, got {shape}{hint}")
        return (shape[0], shape[-1])

    def init(key, input_shape):
        return output_shape(input_shape), {}, {}

    def apply(params, state, x, *, key=None, train=False):
        output_shape(jnp.shape(x))
        check_float(kind, x)
        return jnp.mean(x, axis=tuple(range(1, jnp.ndim(x) - 1))), state

    return Layer(init, apply, kind)
