"""How fundl writes numbers and metrics for people: fixed decimals, so that columns line up.

Used by the training lines, a run's last lines and the run tools alike (nothing here needs JAX).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

WIDTH = 7  # "0.1234" and "-1.2345" take up to 7 characters: numbers in a column line up


def number(value: Any) -> str:
    """A metric value: 4 decimals (``0.9700``, never ``0.97`` or ``1``), very small or large ones as ``1.000e-05``.

    Right-aligned in :data:`WIDTH` characters; a value that is not a number (a string, a
    confusion matrix) is written as it is (a nested list as its shape, ``[10x10]``).
    """
    if isinstance(value, list):
        return f"[{'x'.join(str(n) for n in _shape(value))}]"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    value = float(value)
    if not math.isfinite(value):
        return f"{value:>{WIDTH}}"
    if value == 0 or 1e-3 <= abs(value) < 1e5:
        return f"{value:>{WIDTH}.4f}"
    return f"{value:.3e}"


def _shape(value: Any) -> list[int]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        value = value[0] if value else None
    return shape


def loss_first(names: Iterable[str]) -> list[str]:
    """The metric names in their order, but ``loss`` first."""
    return sorted(names, key=lambda name: name != "loss")  # a stable sort: the others keep their order


def metrics_text(metrics: Mapping[str, Any]) -> str:
    """``loss  0.0983  accuracy  0.9704  learning_rate 1.000e-05``: names and :func:`number` values, loss first."""
    return "  ".join(f"{name} {number(metrics[name])}" for name in loss_first(metrics))
