"""A whole train state in one file (flax msgpack), and the host copies that checkpoints write."""

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


def host_copy(train_state: TrainState) -> TrainState:
    """The whole train state as fresh NumPy arrays (key as raw key data).

    A copy, never a view: the training step reuses (donates) the device buffers, and on
    the CPU a NumPy view of them would change under a writer. A state spread over several
    processes is gathered: then every process must call it (a collective).
    """
    raw = _saveable(train_state)
    if any(isinstance(leaf, jax.Array) and not leaf.is_fully_addressable for leaf in jax.tree.leaves(raw)):
        from jax.experimental import multihost_utils

        return jax.tree.map(np.asarray, multihost_utils.process_allgather(raw, tiled=True))
    return jax.tree.map(lambda leaf: np.array(leaf, copy=True), jax.device_get(raw))


def from_host(state_dict: Any, like: TrainState, where: str) -> TrainState:
    """A train state from its serialized state dict, checked against ``like`` (names the first difference)."""
    target = jax.eval_shape(_saveable, like)
    try:
        restored = flax.serialization.from_state_dict(target, state_dict)
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{where} does not hold a train state of this model and optimizer: {error}") from None
    _check_like(where, restored, target)
    impl = jax.random.key_impl(like.key) if isinstance(like.key, jax.Array) else None  # None: JAX's default
    return jax.device_put(restored)._replace(key=jax.random.wrap_key_data(restored.key, impl=impl))


def save_train_state(path: str | os.PathLike, train_state: TrainState) -> None:
    """Writes the whole train state (step, params, state, optimizer state, key) atomically."""
    write_atomic(path, flax.serialization.to_bytes(host_copy(train_state)))


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
    try:
        state_dict = flax.serialization.msgpack_restore(path.read_bytes())
    except Exception as error:  # msgpack raises several kinds for a broken file
        raise ValueError(f"{path} is not a saved train state: {type(error).__name__}: {error}") from None
    return from_host(state_dict, like, str(path))


def _types(tree: Any) -> dict[str, str]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(p): f"{np.dtype(leaf.dtype)}{list(np.shape(leaf))}" for p, leaf in leaves}


def _check_like(path: str, restored: Any, target: Any) -> None:
    expected, got = _types(target), _types(restored)
    for name in dict.fromkeys([*expected, *got]):
        if expected.get(name) != got.get(name):
            raise ValueError(
                f"{path} does not match this model and optimizer at {name}: "
                f"expected {expected.get(name, 'nothing')}, found {got.get(name, 'nothing')}"
            )
