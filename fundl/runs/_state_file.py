"""A whole train state (or any pytree of arrays and keys) in one file: flax msgpack, written atomically."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import numpy as np

from fundl.distributed import host_copy, key_data, wrap_keys
from fundl.runs._files import write_atomic


def from_host(state_dict: Any, like: Any, where: str) -> Any:
    """A train state (or any tree) from its serialized state dict, checked against ``like`` (naming any difference)."""
    target = jax.eval_shape(key_data, like)
    try:
        restored = flax.serialization.from_state_dict(target, state_dict)
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{where} does not hold a train state of this model and optimizer: {error}") from None
    _check_like(where, restored, target)
    return wrap_keys(jax.device_put(restored), like)


def save_train_state(path: str | os.PathLike, train_state: Any, *, run_id: str | None = None) -> None:
    """Writes the whole train state (step, params, state, optimizer state, key) atomically.

    ``run_id``: the run the state belongs to, saved with it (a run directory's final state);
    :func:`restore_train_state` then refuses the file for any other run.
    """
    if run_id is None:
        write_atomic(path, flax.serialization.to_bytes(host_copy(train_state)))
        return
    state_dict = flax.serialization.to_state_dict(host_copy(train_state))
    write_atomic(path, flax.serialization.msgpack_serialize({"run_id": run_id, "train_state": state_dict}))


def restore_train_state(path: str | os.PathLike, like: Any, *, run_id: str | None = None) -> Any:
    """Reads a train state saved by :func:`save_train_state`.

    Args:
      path: the file.
      like: a train state of the same model and optimizer (arrays or
        ``jax.ShapeDtypeStruct``s, e.g. from ``jax.eval_shape``) giving the structure,
        shapes and dtypes to expect.
      run_id: the run the file must belong to (saved with ``run_id``).

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: the file does not hold a train state shaped like ``like`` (the
        message names the first entry that differs), or belongs to another run.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no saved train state at {path}")
    try:
        state_dict = flax.serialization.msgpack_restore(path.read_bytes())
    except Exception as error:  # msgpack raises several kinds for a broken file
        raise ValueError(f"{path} is not a saved train state: {type(error).__name__}: {error}") from None
    if run_id is not None:
        saved = state_dict.get("run_id") if isinstance(state_dict, dict) else None
        if saved != run_id:
            raise ValueError(
                f"{path} was saved by another run ({saved or 'it carries no run id'}), not by {run_id}: "
                "a final state copied from another run directory"
            )
        state_dict = state_dict["train_state"]
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
