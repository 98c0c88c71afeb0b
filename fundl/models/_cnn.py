"""Convolutional classifiers."""

from __future__ import annotations

from collections.abc import Sequence

from fundl._combinators import serial
from fundl._core import Layer
from fundl.layers import batch_norm, conv2d, dense, dropout, flatten, max_pool, relu


def lenet(
    classes: int = 10,
    *,
    channels: Sequence[int] = (16, 32),
    hidden: int = 64,
    kernel_size: int = 3,
    use_batch_norm: bool = False,
    dropout_rate: float = 0.0,
) -> Layer:
    """A LeNet-style classifier: (conv -> [batch norm] -> relu -> 2x2 max pool) per channel count,
    then flatten -> [dropout] -> dense(hidden) -> relu -> [dropout] -> dense(classes).

    Shapes: ``x (batch, height, width, c_in) -> logits (batch, classes)``; each pooling
    halves height and width (rounding down), so 8x8 digits become 2x2 after two stages.
    With batch norm the model has state (running statistics), threaded through training.

    Example:
      >>> model = lenet(10, use_batch_norm=True, dropout_rate=0.25)
    """
    layers = []
    for c in channels:
        layers.append(conv2d(c, (kernel_size, kernel_size)))
        if use_batch_norm:
            layers.append(batch_norm())
        layers += [relu(), max_pool((2, 2))]
    layers.append(flatten())
    if dropout_rate:
        layers.append(dropout(dropout_rate))
    layers += [dense(hidden), relu()]
    if dropout_rate:
        layers.append(dropout(dropout_rate))
    layers.append(dense(classes))
    return serial(*layers)
