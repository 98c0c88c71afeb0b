"""Checks made once on the host, before training, of what ``fit`` is given.

Under ``jit`` a bad value cannot raise an error: a NaN in the data, an integer param or an
optimizer state made for another optimizer would give wrong numbers without a word.
These checks look at the values (with NumPy) or the shapes once, and name the split,
the path and the index of the first bad entry.

Example:
  >>> check_params(train_state.params)
  >>> check_opt_state(optimizer, train_state.params, train_state.opt_state)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

_INTEGER_PARAM = (
    "params{path} is {got}: params are trained by gradients and must be floating-point arrays; "
    "make it one, e.g. params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params), or keep "
    "integer settings out of params (in the model's closure)"
)
_OTHER_OPTIMIZER = (
    "the optimizer state does not match optimizer.init(params): at opt_state{path} expected {expected}, "
    "got {got}. It was made by another optimizer or for other params: make it with the optimizer "
    "you train with, e.g. TrainState.create(params, state, optimizer, key) or optimizer.init(params)"
)


def _describe(leaf: Any) -> str:
    """``float32[784, 100]`` for an array (or a ShapeDtypeStruct), else the type and value."""
    if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
        return f"{leaf.dtype}{list(leaf.shape)}"
    return f"a {type(leaf).__name__} ({leaf!r})"


def check_params(params: Any) -> None:
    """Raises TypeError unless every leaf of ``params`` is a floating-point array.

    Raises:
      TypeError: naming the path of the first integer, boolean or non-array leaf.
    """
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if hasattr(leaf, "shape") and hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.inexact):
            continue
        raise TypeError(_INTEGER_PARAM.format(path=jax.tree_util.keystr(path), got=_describe(leaf)))


def check_opt_state(optimizer: optax.GradientTransformation, params: Any, opt_state: Any) -> None:
    """Raises ValueError unless ``opt_state`` has the structure, shapes and dtypes of ``optimizer.init(params)``.

    Nothing is computed: the expected state comes from ``jax.eval_shape``.

    Raises:
      ValueError: naming the first path where the states differ.
    """
    expected = jax.eval_shape(optimizer.init, params)
    want = jax.tree_util.tree_flatten_with_path(expected)[0]
    have = jax.tree_util.tree_flatten_with_path(opt_state)[0]
    for (want_path, want_leaf), (have_path, have_leaf) in zip(want, have):
        if want_path != have_path:
            raise ValueError(
                _OTHER_OPTIMIZER.format(
                    path=jax.tree_util.keystr(want_path), expected=_describe(want_leaf), got="nothing"
                )
            )
        if np.shape(have_leaf) != tuple(want_leaf.shape) or jnp.result_type(have_leaf) != want_leaf.dtype:
            raise ValueError(
                _OTHER_OPTIMIZER.format(
                    path=jax.tree_util.keystr(want_path), expected=_describe(want_leaf), got=_describe(have_leaf)
                )
            )
    if len(want) > len(have):
        path, leaf = want[len(have)]
        raise ValueError(
            _OTHER_OPTIMIZER.format(path=jax.tree_util.keystr(path), expected=_describe(leaf), got="nothing")
        )
    if len(have) > len(want):
        path, leaf = have[len(want)]
        raise ValueError(
            _OTHER_OPTIMIZER.format(path=jax.tree_util.keystr(path), expected="nothing", got=_describe(leaf))
        )
    if jax.tree.structure(expected) != jax.tree.structure(opt_state):  # type: ignore[operator]  # jaxlib has no stub for PyTreeDef
        raise ValueError(
            _OTHER_OPTIMIZER.format(
                path="",
                expected=f"the containers {jax.tree.structure(expected)}"[:300],
                got=f"{jax.tree.structure(opt_state)}"[:300],
            )
        )
