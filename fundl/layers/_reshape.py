"""Layers that only rearrange their input: flatten and reshape."""

from __future__ import annotations

import math

import jax.numpy as jnp

from fundl._core import Layer, LayerError, Shape, stateless


def flatten() -> Layer:
    """Flattens all but the batch axis: ``(batch, d1, d2, ...) -> (batch, d1 * d2 * ...)``."""

    def shape_fn(shape: Shape) -> Shape:
        if len(shape) < 1:
            raise LayerError(f"flatten expects inputs of shape (batch, ...), got {tuple(shape)}")
        return (shape[0], math.prod(shape[1:]))

    return stateless("flatten", lambda x: jnp.reshape(x, (x.shape[0], -1)), shape_fn)


def reshape(shape: tuple[int, ...]) -> Layer:
    """Reshapes all but the batch axis: ``(batch, ...) -> (batch, *shape)``.

    One entry of ``shape`` may be ``-1``, meaning "whatever is left", as in NumPy.

    Example:
      >>> reshape((8, 8, 1))   # flat 64-pixel digits to 8x8 single-channel images
    """
    if not isinstance(shape, (tuple, list)):
        raise LayerError(
            f"reshape: `shape` must be a tuple of the dimensions after the batch axis, e.g. (8, 8, 1), got {shape!r} "
            f"({type(shape).__name__}): for one dimension write ({shape!r},)"
        )
    shape = tuple(shape)
    if shape.count(-1) > 1 or any(not isinstance(d, int) or isinstance(d, bool) or (d < 1 and d != -1) for d in shape):
        raise LayerError(f"reshape: `shape` must hold positive integers and at most one -1, got {shape}")

    def shape_fn(input_shape: Shape) -> Shape:
        if len(input_shape) < 1:
            raise LayerError(f"reshape expects inputs of shape (batch, ...), got {tuple(input_shape)}")
        size = math.prod(input_shape[1:])
        known = math.prod(d for d in shape if d != -1)
        target = tuple(size // known if d == -1 else d for d in shape)
        if math.prod(target) != size:
            raise LayerError(
                f"reshape{shape} cannot hold an input of shape {tuple(input_shape)}: "
                f"{size} values per example do not fit {shape}"
            )
        return (input_shape[0], *target)

    def fn(x):
        return jnp.reshape(x, shape_fn(x.shape))

    return stateless("reshape", fn, shape_fn)
