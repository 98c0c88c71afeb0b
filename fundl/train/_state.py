"""The train state: everything a training run needs to take its next step."""

from __future__ import annotations

import hashlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fundl._core import Key, Params, State


class TrainState(NamedTuple):
    """All that changes during training, as one pytree (saved whole by checkpoints).

    Attributes:
      step: int32 scalar, the number of optimizer updates done so far.
      params: the trainable parameters.
      state: the model's non-trainable state (batch-norm statistics).
      opt_state: the optax optimizer's state.
      key: the run's training key; step ``s`` uses ``fold_in(key, s)`` and nothing else,
        so a step's randomness depends only on the seed and the step number.
    """

    step: jax.Array
    params: Params
    state: State
    opt_state: optax.OptState
    key: Key

    @classmethod
    def create(cls, params: Params, state: State, optimizer: optax.GradientTransformation, key: Key) -> "TrainState":
        """A train state at step 0, with ``optimizer``'s initial state for ``params``."""
        return cls(jnp.zeros((), jnp.int32), params, state, optimizer.init(params), key)


def params_fingerprint(params: Any) -> str:
    """A short hash of the params' bytes, paths and dtypes: equal fingerprints, equal params."""
    digest = hashlib.sha256()
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    for path, leaf in sorted(leaves, key=lambda item: jax.tree_util.keystr(item[0])):
        array = np.asarray(jax.device_get(leaf))
        digest.update(jax.tree_util.keystr(path).encode())
        digest.update(str(array.dtype).encode() + str(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]
