"""Elementwise activations (and softmax) as layers without params.

Each factory returns a layer that keeps the shape of its input, so activations slot into
:func:`fundl.serial` like any other layer: ``serial(dense(100), tanh(), dense(10))``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from fundl._core import Layer, check_axis, check_bool, check_float, check_number, stateless


def _activation(name: str, fn: Callable[[Any], Any]) -> Layer:
    def checked(x):
        check_float(name, x)
        return fn(x)

    return stateless(name, checked, lambda shape: shape)


def relu() -> Layer:
    """``max(x, 0)``."""
    return _activation("relu", jax.nn.relu)


def leaky_relu(negative_slope: float = 0.01) -> Layer:
    """``x`` where positive, ``negative_slope * x`` elsewhere."""
    check_number("leaky_relu", "negative_slope", negative_slope)
    return _activation("leaky_relu", lambda x: jax.nn.leaky_relu(x, negative_slope))


def elu() -> Layer:
    """``x`` where positive, ``exp(x) - 1`` elsewhere."""
    return _activation("elu", jax.nn.elu)


def gelu(approximate: bool = True) -> Layer:
    """The Gaussian error linear unit (tanh approximation by default)."""
    check_bool("gelu", approximate=approximate)
    return _activation("gelu", lambda x: jax.nn.gelu(x, approximate=approximate))


def silu() -> Layer:
    """``x * sigmoid(x)`` (also called swish)."""
    return _activation("silu", jax.nn.silu)


def sigmoid() -> Layer:
    """``1 / (1 + exp(-x))``."""
    return _activation("sigmoid", jax.nn.sigmoid)


def tanh() -> Layer:
    """The hyperbolic tangent."""
    return _activation("tanh", jnp.tanh)


def softplus() -> Layer:
    """``log(1 + exp(x))``, a smooth relu."""
    return _activation("softplus", jax.nn.softplus)


def softmax(axis: int = -1) -> Layer:
    """Normalises ``axis`` into probabilities. Train on logits instead: the losses take logits."""
    check_axis("softmax", axis=axis)
    return _activation("softmax", lambda x: jax.nn.softmax(x, axis=axis))


def log_softmax(axis: int = -1) -> Layer:
    """The logarithm of :func:`softmax`, computed stably."""
    check_axis("log_softmax", axis=axis)
    return _activation("log_softmax", lambda x: jax.nn.log_softmax(x, axis=axis))


def identity() -> Layer:
    """Returns its input unchanged (a placeholder in a model definition)."""
    return stateless("identity", lambda x: x, lambda shape: shape)
