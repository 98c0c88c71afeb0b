"""Normalisation layers: batch norm (with running statistics in its state), layer norm and RMS norm."""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from fundl._core import Layer, LayerError, check_bool, check_float, check_number, expect_params


def _check_features(kind: str, x, features: int) -> None:
    if jnp.shape(x)[-1:] != (features,):
        raise LayerError(f"{kind} expects inputs with {features} features on the last axis, got shape {jnp.shape(x)}")


def _scale_and_shift(x, params, use_scale: bool, use_bias: bool):
    if use_scale:
        x = x * params["scale"]
    if use_bias:
        x = x + params["bias"]
    return x


def _affine_shapes(features: int, use_scale: bool, use_bias: bool) -> dict[str, tuple[int]]:
    return {name: (features,) for name, used in (("scale", use_scale), ("bias", use_bias)) if used}


def _affine_params(features: int, use_scale: bool, use_bias: bool) -> dict:
    shapes = _affine_shapes(features, use_scale, use_bias)
    return {name: (jnp.ones if name == "scale" else jnp.zeros)(shape, jnp.float32) for name, shape in shapes.items()}


def _float32(x):
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def batch_norm(
    *,
    momentum: float = 0.9,
    epsilon: float = 1e-5,
    use_scale: bool = True,
    use_bias: bool = True,
    axis_name: str | None = None,
) -> Layer:
    """Normalises each feature (last axis) over the batch and all other axes.

    With ``train=True`` it uses the statistics of the batch and returns updated running
    statistics in its state: ``mean <- momentum * mean + (1 - momentum) * batch_mean``, and
    the same for the (biased) variance. With ``train=False`` it uses the running statistics
    and returns the state unchanged.

    Shapes: ``x (batch, ..., features) -> y (same)``; params ``scale, bias (features,)``;
    state ``mean, var (features,)`` starting at 0 and 1.

    The default momentum, 0.9 (PyTorch's; flax and Keras use 0.99), lets the running
    statistics settle within a few dozen steps, which suits the small data sets of a course.

    On a device mesh under ``jit`` (what ``fit`` does) the statistics are over the global
    batch without further ado. Per-device code under ``shard_map`` sees only its own
    slice: give ``axis_name`` (e.g. ``"data"``) to average the statistics over that mesh
    axis. Statistics are computed in float32 whatever the input's dtype.
    """
    check_number("batch_norm", "momentum", momentum, low=0.0, high=1.0, what="in [0, 1)")
    check_number("batch_norm", "epsilon", epsilon, positive=True, what="positive")
    check_bool("batch_norm", use_scale=use_scale, use_bias=use_bias)
    if axis_name is not None and not isinstance(axis_name, str):
        raise LayerError(f"batch_norm: `axis_name` must be a mesh axis name (a str) or None, got {axis_name!r}")

    def init(key, input_shape):
        if len(input_shape) < 2:
            raise LayerError(f"batch_norm expects inputs of shape (batch, ..., features), got {tuple(input_shape)}")
        features = input_shape[-1]
        state = {"mean": jnp.zeros((features,), jnp.float32), "var": jnp.ones((features,), jnp.float32)}
        return input_shape, _affine_params(features, use_scale, use_bias), state

    def apply(params, state, x, *, key=None, train=False):
        check_float("batch_norm", x)
        running_mean = state.get("mean") if isinstance(state, dict) else None
        features = jnp.shape(running_mean)[-1] if running_mean is not None else jnp.shape(x)[-1]
        _check_features("batch_norm", x, features)
        expect_params("batch_norm", params, _affine_shapes(features, use_scale, use_bias))
        expect_params("batch_norm state", state, {"mean": (features,), "var": (features,)})
        dtype, x = x.dtype, _float32(x)  # statistics in float32 under a bfloat16 policy too
        if train:
            axes = tuple(range(jnp.ndim(x) - 1))
            mean = jnp.mean(x, axis=axes)
            if axis_name is not None:  # per-device code (shard_map): statistics over the global batch
                mean = lax.pmean(mean, axis_name)
            var = jnp.mean(jnp.square(x - mean), axis=axes)
            if axis_name is not None:
                var = lax.pmean(var, axis_name)
            state = {
                "mean": momentum * state["mean"] + (1.0 - momentum) * lax.stop_gradient(mean),
                "var": momentum * state["var"] + (1.0 - momentum) * lax.stop_gradient(var),
            }
        else:
            mean, var = state["mean"], state["var"]
        y = (x - mean) * lax.rsqrt(var + epsilon)
        return _scale_and_shift(y, params, use_scale, use_bias).astype(dtype), state

    return Layer(init, apply, "batch_norm")


def layer_norm(*, epsilon: float = 1e-5, use_scale: bool = True, use_bias: bool = True) -> Layer:
    """Normalises each example over its last axis (no state; same in training and evaluation).

    Shapes: ``x (..., features) -> y (same)``; params ``scale, bias (features,)``.
    """
    check_number("layer_norm", "epsilon", epsilon, positive=True, what="positive")
    check_bool("layer_norm", use_scale=use_scale, use_bias=use_bias)

    def init(key, input_shape):
        if len(input_shape) < 1:
            raise LayerError(f"layer_norm expects inputs of shape (..., features), got {tuple(input_shape)}")
        return input_shape, _affine_params(input_shape[-1], use_scale, use_bias), {}

    def apply(params, state, x, *, key=None, train=False):
        check_float("layer_norm", x)
        if isinstance(params, dict) and params:
            _check_features("layer_norm", x, jnp.shape(next(iter(params.values())))[-1])
        expect_params("layer_norm", params, _affine_shapes(jnp.shape(x)[-1], use_scale, use_bias))
        dtype, x = x.dtype, _float32(x)
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        y = (x - mean) * lax.rsqrt(var + epsilon)
        return _scale_and_shift(y, params, use_scale, use_bias).astype(dtype), state

    return Layer(init, apply, "layer_norm")


def rms_norm(*, epsilon: float = 1e-6, use_scale: bool = True) -> Layer:
    """Divides each example by the root mean square of its last axis (no centring, no bias).

    ``y = x / sqrt(mean(x**2) + epsilon) * scale``, computed in float32 whatever the input's
    dtype; the pre-norm of :func:`fundl.transformer_block`. No state; the same in training
    and evaluation.

    Shapes: ``x (..., features) -> y (same)``; params ``scale (features,)``, starting at 1.

    Example:
      >>> out_shape, params, _ = rms_norm().init(jax.random.key(0), (8, 16, 64))  # params["scale"] (64,)
    """
    if not epsilon > 0:
        raise LayerError(f"rms_norm: `epsilon` must be positive, got {epsilon!r}")

    def init(key, input_shape):
        if len(input_shape) < 1:
            raise LayerError(f"rms_norm expects inputs of shape (..., features), got {tuple(input_shape)}")
        return input_shape, _affine_params(input_shape[-1], use_scale, False), {}

    def apply(params, state, x, *, key=None, train=False):
        check_float("rms_norm", x)
        if isinstance(params, dict) and params:
            _check_features("rms_norm", x, jnp.shape(next(iter(params.values())))[-1])
        expect_params("rms_norm", params, _affine_shapes(jnp.shape(x)[-1], use_scale, False))
        dtype, x = x.dtype, _float32(x)
        y = x * lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + epsilon)
        return _scale_and_shift(y, params, use_scale, False).astype(dtype), state

    return Layer(init, apply, "rms_norm")
