"""The train state: everything a training run needs to take its next step, and how the first one is made."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fundl._core import Key, Layer, Params, Shape, State

_PROGRESS_EVERY_S = 2.0


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
    """A short hash of the params' bytes, paths and dtypes: equal fingerprints, equal params.

    Params spread over several processes are gathered one array at a time (a collective:
    every process must call it), so the fingerprint is the same whatever the layout.
    """
    digest = hashlib.sha256()
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    for path, leaf in sorted(leaves, key=lambda item: jax.tree_util.keystr(item[0])):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            from jax.experimental import multihost_utils

            leaf = multihost_utils.process_allgather(leaf, tiled=True)
        array = np.asarray(jax.device_get(leaf))
        digest.update(jax.tree_util.keystr(path).encode())
        digest.update(str(array.dtype).encode() + str(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


# The initial state is computed once, so how fast its program runs hardly matters, but
# compiling it with LLVM's optimisations is most of a short run's start on XLA:CPU
# (threefry's rounds, once per initializer; measured in benchmarks/README.md). The values
# are the same up to float rounding (the dense and conv layers' bit for bit; normal draws
# and orthogonal recurrent kernels can differ in the last bits), and every run, resume and
# sweep makes its initial state this same way.
_QUICK_COMPILE: dict[str, Any] = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _initial_state_fn(
    model: Layer, input_shape: Shape, optimizer: optax.GradientTransformation
) -> Callable[[Any], TrainState]:
    def make(seed):
        init_key, train_key = jax.random.split(jax.random.key(seed))
        _, params, state = model.init(init_key, input_shape)
        return TrainState.create(params, state, optimizer, train_key)

    return make


def _compiled_once(fn: Callable, *example_args: Any) -> Callable:
    """``fn`` compiled for arguments like these; on the CPU without LLVM's slow optimisations."""
    options = _QUICK_COMPILE if jax.default_backend() == "cpu" else None
    return jax.jit(fn).lower(*example_args).compile(compiler_options=options)


def initial_train_state(
    model: Layer, input_shape: Shape, optimizer: optax.GradientTransformation, seed: int
) -> TrainState:
    """The train state at step 0: params from ``split(key(seed))[0]``, the training key the other half.

    The whole of it is made by one compiled program (made eagerly, every initializer of
    every layer would be compiled and run on its own: a large part of a short run).

    Example:
      >>> train_state = initial_train_state(model, (32, 64), optax.sgd(0.1), seed=0)
    """
    make = _initial_state_fn(model, input_shape, optimizer)
    if seed < 2**32:  # as a uint32 array, jax.random.key gives the key of the Python int
        return _compiled_once(make, np.uint32(seed))(np.uint32(seed))
    return jax.jit(make, static_argnums=0)(seed)


def initial_train_states(
    model: Layer,
    input_shape: Shape,
    optimizer: optax.GradientTransformation,
    seeds: Sequence[int],
    *,
    progress: Callable[[int], None] | None = None,
) -> TrainState:
    """:func:`initial_train_state` for each seed (below 2**32), stacked on a leading member axis.

    ``progress``: called with the number of states made so far, about every 2 seconds
    (tens of thousands of members take a while). The states are made and stacked on the
    host: for their shapes alone, stack ``jax.eval_shape`` of one (``Plan.abstract_carry``).
    """
    if max(seeds) >= 2**32:
        raise ValueError(f"the seeds of a sweep must be below 2**32, got {max(seeds)}")
    make = _compiled_once(
        _initial_state_fn(model, input_shape, optimizer), np.uint32(0)
    )  # compiled once, called per seed
    first = make(np.uint32(seeds[0]))
    leaves, tree = jax.tree.flatten(first)
    keys = [jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key) for leaf in leaves]
    columns: list[list[Any]] = [[] for _ in leaves]
    reported = time.monotonic()
    for made, seed in enumerate(seeds, start=1):
        state = first if made == 1 else make(np.uint32(seed))
        for column, leaf, key in zip(columns, jax.tree.leaves(state), keys):
            column.append(jax.random.key_data(leaf) if key else leaf)
        if progress is not None and time.monotonic() - reported > _PROGRESS_EVERY_S:
            progress(made)
            reported = time.monotonic()
    # stacked on the host: one concatenation of M arrays compiled for the device takes minutes for thousands
    stacked = [jax.device_put(np.stack(jax.device_get(column))) for column in columns]
    return jax.tree.unflatten(
        tree,
        [
            jax.random.wrap_key_data(array, impl=jax.random.key_impl(leaf)) if key else array
            for array, leaf, key in zip(stacked, leaves, keys)
        ],
    )
