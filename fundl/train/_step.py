"""The pure training and evaluation steps, and the checks made before they are compiled.

A **loss function** has the form::

    loss_fn(params, state, batch, key) -> (loss, (new_state, metrics))

where ``loss`` is a float scalar, ``new_state`` has the structure of ``state`` and
``metrics`` is a dict of float scalars. If it also takes a ``train`` keyword, evaluation
calls it as ``loss_fn(params, state, batch, None, train=False)``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import optax
from jax import lax

from fundl._core import Key, Params, State
from fundl.train._state import TrainState

Batch = Any
Metrics = dict[str, jax.Array]
LossFn = Callable[[Params, State, Batch, Key], tuple[jax.Array, tuple[State, Metrics]]]
EvalFn = Callable[[Params, State, Batch], Metrics]

_LOSS_FORM = "loss_fn(params, state, batch, key) must return (loss, (new_state, metrics))"
_NO_EVAL = (
    "evaluation needs either an eval_fn(params, state, batch) -> metrics, or a loss_fn that "
    "takes a `train` keyword (it is then called as loss_fn(params, state, batch, None, train=False))"
)


def _describe(tree: Any) -> str:
    return str(jax.tree.map(lambda leaf: f"{leaf.dtype}{list(leaf.shape)}", tree))


def check_loss_output(loss_fn: LossFn, train_state: TrainState, batch: Batch) -> None:
    """Traces ``loss_fn`` abstractly once; raises a clear error if its output has the wrong form."""
    out = jax.eval_shape(loss_fn, train_state.params, train_state.state, batch, train_state.key)
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], tuple) and len(out[1]) == 2):
        raise ValueError(f"{_LOSS_FORM}; it returned {_describe(out)}")
    loss, (new_state, metrics) = out
    if not isinstance(loss, jax.ShapeDtypeStruct) or loss.shape != () or not jnp.issubdtype(loss.dtype, jnp.floating):
        raise ValueError(
            f"{_LOSS_FORM} with a float scalar loss; the loss returned was {_describe(loss)}: "
            "average the per-example losses, e.g. with jnp.mean"
        )
    expected_state = jax.eval_shape(lambda s: s, train_state.state)
    if jax.tree.structure(new_state) != jax.tree.structure(expected_state) or _describe(new_state) != _describe(
        expected_state
    ):
        raise ValueError(
            f"{_LOSS_FORM} where new_state has the structure of the model state {_describe(expected_state)}; "
            f"got {_describe(new_state)}"
        )
    if not isinstance(metrics, dict) or any(getattr(m, "shape", None) != () for m in metrics.values()):
        raise ValueError(f"{_LOSS_FORM} where metrics is a dict of scalars; got {_describe(metrics)}")


def default_eval_fn(loss_fn: LossFn) -> EvalFn:
    """``loss_fn`` in evaluation mode, as an eval_fn; an error if it takes no ``train`` keyword."""
    try:
        takes_train = "train" in inspect.signature(loss_fn).parameters
    except (TypeError, ValueError):  # a callable without a signature
        takes_train = False
    if not takes_train:
        raise ValueError(_NO_EVAL)

    def eval_fn(params, state, batch):
        loss, (_, metrics) = loss_fn(params, state, batch, None, train=False)
        return {"loss": loss, **metrics}

    return eval_fn


def train_step_fn(loss_fn: LossFn, optimizer: optax.GradientTransformation):
    """The pure training step ``(train_state, batch) -> (train_state, metrics)``."""

    def train_step(train_state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        key = jax.random.fold_in(train_state.key, train_state.step)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, (state, metrics)), grads = grad_fn(train_state.params, train_state.state, batch, key)
        updates, opt_state = optimizer.update(grads, train_state.opt_state, train_state.params)
        params = optax.apply_updates(train_state.params, updates)
        return TrainState(train_state.step + 1, params, state, opt_state, train_state.key), {"loss": loss, **metrics}

    return train_step


def fused_steps_fn(train_step):
    """Several training steps in one call: ``lax.scan`` over batches stacked on a leading axis."""

    def fused_steps(train_state: TrainState, batches: Batch) -> tuple[TrainState, Metrics]:
        return lax.scan(train_step, train_state, batches)

    return fused_steps


def uses_convolution(fn: Callable, *args: Any) -> bool:
    """True if ``fn(*args)`` contains a convolution (looked for in its jaxpr, sub-jaxprs too)."""

    def walk(jaxpr: jex.Jaxpr) -> bool:
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "conv_general_dilated":
                return True
            for value in eqn.params.values():
                for sub in value if isinstance(value, (tuple, list)) else (value,):
                    if isinstance(sub, jex.ClosedJaxpr) and walk(sub.jaxpr):
                        return True
                    if isinstance(sub, jex.Jaxpr) and walk(sub):
                        return True
        return False

    return walk(jax.make_jaxpr(fn)(*args).jaxpr)
