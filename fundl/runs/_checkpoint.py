"""Saving and restoring a whole train state with flax's msgpack serialization."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import numpy as np

from fundl.runs._files import write_atomic
from fundl.train import TrainState


def _saveable(train_state: TrainState) -> TrainState:
    """The train state with its typed PRNG key as raw key data, which serializes."""
    return train_state._replace(key=jax.random.key_data(train_state.key))


def save_train_state(path: str | os.PathLike, train_state: TrainState) -> None:
    """Writes the whole train state (step, params, state, optimizer state, key) atomically."""
    write_atomic(path, flax.serialization.to_bytes(jax.device_get(_saveable(train_state))))


def restore_train_state(path: str | os.PathLike, like: TrainState) -> TrainState:
    """Reads a train state saved by :func:`save_train_state`.

    Args:
      path: the file.
      like: a train state of the same model and optimizer (arrays or
        ``jax.ShapeDtypeStruct``s, e.g. from ``jax.eval_shape``) giving the structure,
        shapes and dtypes to expect.

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: the file does not hold a train state shaped like ``like``; the
        message names the first entry that differs.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no saved train state at {path}")
    target = jax.eval_shape(_saveable, like)
    try:
        restored = flax.serialization.from_bytes(target, path.read_bytes())
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path} does not hold a train state of this model and optimizer: {error}") from None
    _check_like(path, restored, target)
    restored = jax.device_put(restored)
    return restored._replace(key=jax.random.wrap_key_data(restored.key))


def _types(tree: Any) -> dict[str, str]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(p): f"{np.dtype(leaf.dtype)}{list(np.shape(leaf))}" for p, leaf in leaves}


def _check_like(path: Path, restored: Any, target: Any) -> None:
    expected, got = _types(target), _types(restored)
    for name in dict.fromkeys([*expected, *got]):
        if expected.get(name) != got.get(name):
            raise ValueError(
                f"{path} does not match this model and optimizer at {name}: "
                f"expected {expected.get(name, 'nothing')}, found {got.get(name, 'nothing')}"
            )
