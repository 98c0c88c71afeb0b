"""A reproducible split of in-memory data into a training and a validation part."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np


def train_validation_split(data: Any, fraction: float = 0.2, *, seed: int = 0, shuffle: bool = True) -> tuple[Any, Any]:
    """Holds out ``fraction`` of the examples of ``data`` for validation.

    The validation part is the last ``round(n * fraction)`` examples of the order
    ``np.random.default_rng(seed).permutation(n)``; the rest is the training part. Both
    keep the original order of their examples. The same ``seed`` gives the same split.

    Why shuffle (unlike Keras): Keras' ``validation_split`` takes the *last* fraction
    unshuffled, and data sets are often sorted (by class, by date of collection): the
    validation part then holds classes or kinds of example the training part never saw,
    and its scores say little. Pass ``shuffle=False`` to get Keras' split, e.g. for a
    time series, where validating on the most recent examples is what you want.

    Args:
      data: a pytree of arrays with a leading example axis ``(n, ...)``: a dict such as
        ``{"image": (n, 8, 8), "label": (n,)}``, or a tuple ``(x, y)``.
      fraction: the share of examples held out, strictly between 0 and 1.
      seed: seed of the permutation.
      shuffle: ``False`` holds out the last examples, in order, as Keras does.

    Returns:
      ``(train, validation)``, each with the structure of ``data`` and NumPy leaves
      ``(n - m, ...)`` and ``(m, ...)``, ``m = round(n * fraction)``.

    Example:
      >>> train, validation = train_validation_split(data["train"], 0.2, seed=0)
      >>> fit(loss_fn, optimizer, train_state, train, batch_size=32, epochs=15, eval_data={"validation": validation})
    """
    from fundl._data import num_examples

    n = num_examples(data, "data")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.floating)) or not 0 < fraction < 1:
        raise ValueError(
            "fraction is the share of examples held out for validation, "
            f"strictly between 0 and 1 (e.g. 0.2); got {fraction!r}"
        )
    held_out = round(n * fraction)
    if not 0 < held_out < n:
        side = "validation" if held_out == 0 else "training"
        least = "at least" if held_out == 0 else "at most"
        bound = 1 / n if held_out == 0 else 1 - 1 / n
        raise ValueError(
            f"a fraction of {fraction} of {n} examples leaves the {side} part empty: "
            f"use a fraction of {least} {bound:.3g}, or more data"
        )
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    train_rows, validation_rows = np.sort(order[: n - held_out]), np.sort(order[n - held_out :])
    data = jax.tree.map(np.asarray, data)
    return jax.tree.map(lambda a: a[train_rows], data), jax.tree.map(lambda a: a[validation_rows], data)
