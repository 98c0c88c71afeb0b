"""Checks shared by the layer tests: shape agreement and gradients against finite differences."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.test_util import check_grads

import fundl


def random_input(shape, dtype=jnp.float32, seed=1):
    return jax.random.normal(jax.random.key(seed), shape, dtype)


def normal(shape, dtype=np.float32, seed=1):
    """Standard normal values from NumPy: unlike ``random_input``, no compilation for each new shape."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape).astype(dtype))


def quick_init(layer: fundl.Layer, input_shape, seed=0):
    """``layer.init`` as one program compiled without LLVM's slow passes (as ``fundl run`` does):
    eager initializers compile each shape's random draws apart, a second or more each."""
    shapes = []

    def make(key):
        out_shape, params, state = layer.init(key, input_shape)
        shapes.append(out_shape)
        return params, state

    key = jax.random.key(seed)
    options = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
    params, state = jax.jit(make).lower(key).compile(compiler_options=options)(key)
    return shapes[0], params, state


def as_shapes(shape):
    """A shape, or nested sequence of shapes, as nested tuples."""
    if all(isinstance(d, int) for d in shape):
        return tuple(shape)
    return tuple(as_shapes(s) for s in shape)


def assert_shape_agreement(layer: fundl.Layer, input_shape, *, train=False, x=None):
    """``init``'s predicted output shape equals the shape ``apply`` produces; state keeps its shapes."""
    out_shape, params, state = layer.init(jax.random.key(0), input_shape)
    x = random_input(input_shape) if x is None else x
    y, new_state = layer.apply(params, state, x, key=jax.random.key(2), train=train)
    assert as_shapes(out_shape) == jax.tree.map(jnp.shape, y), (out_shape, jax.tree.map(jnp.shape, y))
    assert jax.tree.map(jnp.shape, new_state) == jax.tree.map(jnp.shape, state)
    return out_shape, params, state, y


def assert_grads_match_finite_differences(layer: fundl.Layer, input_shape, *, train=False, key=None, x=None):
    """Forward- and reverse-mode gradients agree with finite differences, in float64.

    Differentiates w.r.t. the params and, when it is floating point, the input ``x``.
    """
    with jax.enable_x64(True):
        _, params, state = layer.init(jax.random.key(0), input_shape)
        params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
        state = jax.tree.map(lambda a: a.astype(jnp.float64), state)
        x = random_input(input_shape, jnp.float64) if x is None else x

        def f(params, x):
            return layer.apply(params, state, x, key=key, train=train)[0]

        if jnp.issubdtype(x.dtype, jnp.floating):
            check_grads(f, (params, x), order=1, modes=("fwd", "rev"), atol=1e-5, rtol=1e-5)
        else:
            check_grads(lambda p: f(p, x), (params,), order=1, modes=("fwd", "rev"), atol=1e-5, rtol=1e-5)


def np_params(params):
    return jax.tree.map(np.asarray, params)
