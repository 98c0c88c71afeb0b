"""Multi-layer perceptrons."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from fundl._combinators import serial
from fundl._core import Layer
from fundl.layers import dense, dropout, relu


def mlp(features: Sequence[int], *, activation: Callable[[], Layer] = relu, dropout_rate: float = 0.0) -> Layer:
    """Dense layers of the given widths, with ``activation`` (and dropout) between them.

    The last layer has no activation: a classifier outputs logits for the loss.
    Params: ``dense_0 ... dense_{n-1}``.

    Example: the seed lecture's model, Dense(100) -> tanh -> Dense(10),
      >>> model = mlp([100, 10], activation=tanh)
    """
    if not features:
        raise ValueError("mlp needs at least one layer width, e.g. mlp([100, 10])")
    layers = []
    for width in features[:-1]:
        layers += [dense(width), activation()]
        if dropout_rate:
            layers.append(dropout(dropout_rate))
    return serial(*layers, dense(features[-1]))
