"""Convolutions over channels-last inputs: conv1d, conv2d and conv2d_transpose.

Inputs are ``(batch, *spatial, channels)`` and kernels ``(*kernel_size, in_channels,
features)`` (WIO / HWIO), as in ``flax.linen.Conv``. The spatial shape rules below are
shared with the pooling layers of :mod:`fundl.layers._pool`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, TypeGuard

import jax
import jax.numpy as jnp
from jax import lax

from fundl._core import (
    GLOROT_UNIFORM,
    ZEROS,
    Initializer,
    Layer,
    LayerError,
    Shape,
    check_bool,
    check_float,
    check_initializer,
    check_positive,
    check_rank,
    check_sizes,
    expect_params,
)

Padding = str | int | Sequence[tuple[int, int]]  # "SAME", "VALID", an int, or one (low, high) per spatial dim
PADDING_CHOICES = "'SAME', 'VALID', a non-negative int, or one (low, high) pair per spatial dim"


def layout(n: int) -> str:
    """The named input layout for ``n`` spatial dims, e.g. ``(batch, height, width, channels)``."""
    return "(" + ", ".join(("batch", *("depth", "height", "width")[3 - n :], "channels")) + ")"


def rank_hint(shape: Shape, n: int) -> str:
    """A likely fix for an input of the wrong rank, e.g. ``add reshape((8, 8, 1)) before it``."""
    target = None
    if len(shape) == n + 1:  # the channels axis is missing
        target = (*shape[1:], 1)
    elif n == 2 and len(shape) == 2 and isinstance(shape[1], int) and math.isqrt(shape[1]) ** 2 == shape[1]:
        target = (math.isqrt(shape[1]),) * 2 + (1,)  # flat square images
    return f"reshape it, e.g. add reshape({target}) before it" if target else ""


def as_tuple(kind: str, arg: str, value: Any, n: int) -> tuple[int, ...]:
    """``value`` (an int or a tuple of ``n`` ints) as a tuple of ``n`` positive ints."""
    value = tuple(value) if isinstance(value, list) else value
    if isinstance(value, tuple) and len(value) != n:
        raise LayerError(f"{kind}: `{arg}` must be an int or a tuple of {n} ints (one per spatial dim), got {value!r}")
    (check_sizes if isinstance(value, tuple) else check_positive)(kind, **{arg: value})
    return value if isinstance(value, tuple) else (value,) * n


def _non_negative(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def as_padding(kind: str, padding: Padding, n: int) -> str | tuple[tuple[int, int], ...]:
    """``"SAME"``, ``"VALID"`` or a tuple of ``n`` ``(low, high)`` pairs of non-negative ints."""
    if isinstance(padding, str):
        if padding.upper() in ("SAME", "VALID"):
            return padding.upper()
        raise LayerError(f"{kind}: unknown padding {padding!r}; expected {PADDING_CHOICES}")
    if _non_negative(padding):
        return ((padding, padding),) * n
    pairs = tuple(padding) if isinstance(padding, (tuple, list)) else ()
    if pairs and all(isinstance(p, (tuple, list)) and len(p) == 2 and all(_non_negative(v) for v in p) for p in pairs):
        if len(pairs) != n:
            got = f"got {len(pairs)}: {padding!r}"
            raise LayerError(f"{kind}: padding needs one (low, high) pair per spatial dim ({n}), {got}")
        return tuple((lo, hi) for lo, hi in pairs)
    raise LayerError(f"{kind}: padding must be {PADDING_CHOICES}, got {padding!r}")


def spatial_out(
    kind: str,
    sizes: Shape,
    window: tuple[int, ...],
    strides: tuple[int, ...],
    dilation: tuple[int, ...],
    padding: str | tuple[tuple[int, int], ...],
    what: str = "kernel",
) -> tuple[int, ...]:
    """Output spatial sizes of a convolution or pooling window (the rules in :func:`conv2d`)."""
    out = []
    for axis, (n, k, s, d) in enumerate(zip(sizes, window, strides, dilation)):
        k_eff = (k - 1) * d + 1
        if padding == "SAME":
            out.append(-(-n // s))
            continue
        lo, hi = (0, 0) if isinstance(padding, str) else padding[axis]  # "VALID" ("SAME" is done above)
        if n + lo + hi < k_eff:
            dilated = f" (dilated to {k_eff})" if d > 1 else ""
            raise LayerError(
                f"{kind}: input size {n} along spatial dim {axis} is smaller than the {what} size {k}{dilated} "
                f"with padding {padding!r}: use padding='SAME', a smaller {what}, or larger inputs"
            )
        out.append((n + lo + hi - k_eff) // s + 1)
    return tuple(out)


def _conv_layer(
    kind: str,
    n: int,
    features: int,
    kernel: tuple[int, ...],
    use_bias: bool,
    w_init: Initializer,
    b_init: Initializer,
    out_sizes: Callable[[Shape], tuple[int, ...]],
    compute: Callable[..., jax.Array],
) -> Layer:
    """The layer shared by all convolutions: params, checks and bias around ``compute(x, w)``."""

    def output_shape(shape: Shape) -> Shape:
        shape = tuple(shape)
        check_rank(kind, shape, n + 2, layout(n), rank_hint(shape, n))
        return (shape[0], *out_sizes(shape[1:-1]), features)

    def init(key, input_shape):
        out = output_shape(input_shape)
        w_key, b_key = jax.random.split(key)
        params = {"w": w_init(w_key, (*kernel, input_shape[-1], features), jnp.float32)}
        if use_bias:
            params["b"] = b_init(b_key, (features,), jnp.float32)
        return out, params, {}

    def apply(params, state, x, *, key=None, train=False):
        output_shape(jnp.shape(x))
        check_float(kind, x)
        c_in = jnp.shape(x)[-1]
        w = params.get("w") if isinstance(params, dict) else None
        if w is not None and jnp.ndim(w) == n + 2 and jnp.shape(w)[-2] != c_in:
            c_w = jnp.shape(w)[-2]
            raise LayerError(f"{kind} expects inputs with {c_w} channels, got {c_in}: input shape {jnp.shape(x)}")
        expected = {"w": (*kernel, c_in, features), **({"b": (features,)} if use_bias else {})}
        w, *b = expect_params(kind, params, expected)
        dtype = jnp.result_type(x, w)
        y = compute(jnp.asarray(x, dtype), jnp.asarray(w, dtype))
        if use_bias:
            y = y + jnp.reshape(b[0], (1,) * (n + 1) + (features,)).astype(dtype)
        return y, state

    return Layer(init, apply, kind)


# lax dimension numbers by number of spatial dims: channels-last inputs/outputs, (*kernel, in, out) kernels
_DIMS = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC")}


def _conv(kind, n, features, kernel_size, strides, padding, dilation, use_bias, w_init, b_init) -> Layer:
    check_positive(kind, features=features)
    check_bool(kind, use_bias=use_bias)
    check_initializer(kind, w_init=w_init, b_init=b_init)
    kernel = as_tuple(kind, "kernel_size", kernel_size, n)
    strides = as_tuple(kind, "strides", strides, n)
    dilation = as_tuple(kind, "dilation", dilation, n)
    pad = as_padding(kind, padding, n)

    def compute(x, w):
        return lax.conv_general_dilated(x, w, strides, pad, rhs_dilation=dilation, dimension_numbers=_DIMS[n])

    out_sizes = lambda sizes: spatial_out(kind, sizes, kernel, strides, dilation, pad)  # noqa: E731
    return _conv_layer(kind, n, features, kernel, use_bias, w_init, b_init, out_sizes, compute)


def conv2d(
    features: int,
    kernel_size: int | tuple[int, int],
    *,
    strides: int | tuple[int, int] = 1,
    padding: Padding = "SAME",
    dilation: int | tuple[int, int] = 1,
    use_bias: bool = True,
    w_init: Initializer = GLOROT_UNIFORM,
    b_init: Initializer = ZEROS,
) -> Layer:
    """A 2-D convolution (cross-correlation) of channels-last images.

    Shapes: ``x (batch, height, width, c_in) -> y (batch, h_out, w_out, features)``; params
    ``w (kh, kw, c_in, features)``, ``b (features,)``. Per spatial dim of size ``n``, with
    kernel ``k``, stride ``s``, dilation ``d`` and ``k_eff = (k - 1) * d + 1``, the output is
    ``ceil(n / s)`` for ``"SAME"``, ``floor((n - k_eff) / s) + 1`` for ``"VALID"`` (an error
    if the input is smaller than ``k_eff``) and ``floor((n + lo + hi - k_eff) / s) + 1`` for
    explicit padding ``(lo, hi)``.

    Args:
      features: number of output channels.
      kernel_size: ``(kh, kw)``, or an int for a square kernel.
      strides: step of the window per spatial dim (an int or a pair).
      padding: ``"SAME"``, ``"VALID"`` (any case), an int padding both sides of each dim,
        or ``((lo_h, hi_h), (lo_w, hi_w))``.
      dilation: spacing between kernel taps per spatial dim (an int or a pair).
      use_bias: add the bias ``b``.
      w_init, b_init: ``jax.nn.initializers`` for the kernel and the bias.

    Example:
      >>> out_shape, params, state = conv2d(32, (3, 3)).init(jax.random.key(0), (8, 28, 28, 1))  # (8, 28, 28, 32)
    """
    return _conv("conv2d", 2, features, kernel_size, strides, padding, dilation, use_bias, w_init, b_init)


def conv1d(
    features: int,
    kernel_size: int | tuple[int],
    *,
    strides: int | tuple[int] = 1,
    padding: Padding = "SAME",
    dilation: int | tuple[int] = 1,
    use_bias: bool = True,
    w_init: Initializer = GLOROT_UNIFORM,
    b_init: Initializer = ZEROS,
) -> Layer:
    """A 1-D convolution (cross-correlation) of channels-last sequences.

    Shapes: ``x (batch, width, c_in) -> y (batch, w_out, features)``; params
    ``w (k, c_in, features)``, ``b (features,)``. ``w_out`` follows the rules of :func:`conv2d`;
    the arguments are those of :func:`conv2d` with one entry per tuple instead of two.

    Example:
      >>> out_shape, params, _ = conv1d(16, 5, padding="VALID").init(jax.random.key(0), (8, 100, 3))  # (8, 96, 16)
    """
    return _conv("conv1d", 1, features, kernel_size, strides, padding, dilation, use_bias, w_init, b_init)


def conv2d_transpose(
    features: int,
    kernel_size: int | tuple[int, int],
    *,
    strides: int | tuple[int, int] = 1,
    padding: str = "SAME",
    use_bias: bool = True,
    w_init: Initializer = GLOROT_UNIFORM,
    b_init: Initializer = ZEROS,
) -> Layer:
    """A 2-D transposed convolution (upsampling), computed like ``flax.linen.ConvTranspose``.

    Shapes: ``x (batch, height, width, c_in) -> y (batch, h_out, w_out, features)``; params
    ``w (kh, kw, c_in, features)``, ``b (features,)``. Per spatial dim of size ``n``, with
    kernel ``k`` and stride ``s``, the output is ``n * s`` for ``"SAME"`` and
    ``n * s + max(k - s, 0)`` for ``"VALID"``.

    Args:
      features: number of output channels.
      kernel_size: ``(kh, kw)``, or an int for a square kernel.
      strides: upsampling factor per spatial dim (an int or a pair).
      padding: ``"SAME"`` or ``"VALID"`` (any case).
      use_bias: add the bias ``b``.
      w_init, b_init: ``jax.nn.initializers`` for the kernel and the bias.

    Example:
      >>> out_shape, _, _ = conv2d_transpose(16, 3, strides=2).init(jax.random.key(0), (8, 7, 7, 32))  # (8, 14, 14, 16)
    """
    kind, n = "conv2d_transpose", 2
    check_positive(kind, features=features)
    check_bool(kind, use_bias=use_bias)
    check_initializer(kind, w_init=w_init, b_init=b_init)
    kernel = as_tuple(kind, "kernel_size", kernel_size, n)
    stride = as_tuple(kind, "strides", strides, n)
    if not isinstance(padding, str) or padding.upper() not in ("SAME", "VALID"):
        raise LayerError(f"{kind}: padding must be 'SAME' or 'VALID', got {padding!r}")
    pad = padding.upper()

    def out_sizes(sizes):
        if pad == "SAME":
            return tuple(m * s for m, s in zip(sizes, stride))
        return tuple(m * s + max(k - s, 0) for m, k, s in zip(sizes, kernel, stride))

    def compute(x, w):
        return lax.conv_transpose(x, w, stride, pad, dimension_numbers=_DIMS[n], transpose_kernel=False)

    return _conv_layer(kind, n, features, kernel, use_bias, w_init, b_init, out_sizes, compute)
