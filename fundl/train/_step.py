"""The pure training step, and the checks made of a loss function before it is compiled.

A loss function has the form ``loss_fn(params, state, batch, key) -> (loss, (new_state,
metrics))`` (see :class:`fundl.Loss`); the step differentiates it and applies one optax
update.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import optax
from jax import lax

from fundl._core import Batch, Key, LossFn, Metrics
from fundl.metrics import Accumulated
from fundl.train._state import TrainState

_LOSS_FORM = "loss_fn(params, state, batch, key) must return (loss, (new_state, metrics))"


def _describe(tree: Any) -> str:
    return str(jax.tree.map(lambda leaf: f"{leaf.dtype}{list(leaf.shape)}", tree))


def check_loss_output(loss_fn: LossFn, train_state: TrainState, batch: Batch) -> jex.ClosedJaxpr:
    """Traces ``loss_fn`` abstractly once; raises a clear error if its output has the wrong form.

    Returns the traced loss (a jaxpr), for what else ``fit`` asks of it (see :func:`uses_convolution`).
    """
    jaxpr, out = jax.make_jaxpr(loss_fn, return_shape=True)(
        train_state.params, train_state.state, batch, train_state.key
    )
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], tuple) and len(out[1]) == 2):
        raise ValueError(f"{_LOSS_FORM}; it returned {_describe(out)}")
    loss, (new_state, metrics) = out
    if not isinstance(loss, jax.ShapeDtypeStruct) or loss.shape != () or not jnp.issubdtype(loss.dtype, jnp.floating):
        raise ValueError(
            f"{_LOSS_FORM} with a float scalar loss; the loss returned was {_describe(loss)}: "
            "average the per-example losses, e.g. with jnp.mean"
        )
    expected_state = jax.eval_shape(lambda s: s, train_state.state)
    other_structure = jax.tree.structure(new_state) != jax.tree.structure(expected_state)  # type: ignore[operator]  # jaxlib has no stub for PyTreeDef
    if other_structure or _describe(new_state) != _describe(expected_state):
        raise ValueError(
            f"{_LOSS_FORM} where new_state has the structure of the model state {_describe(expected_state)}; "
            f"got {_describe(new_state)}"
        )
    if isinstance(metrics, dict) and (split := [k for k, m in metrics.items() if isinstance(m, Accumulated)]):
        raise ValueError(
            f"{_LOSS_FORM} where the training metrics are scalars (averaged over the steps since the last log); "
            f"{split} are whole-split metrics (fundl.metrics.Accumulated): return them in evaluation mode only "
            "(when train=False), e.g. `if not train: metrics |= precision_recall_f1(logits, labels)`"
        )
    if not isinstance(metrics, dict) or any(getattr(m, "shape", None) != () for m in metrics.values()):
        raise ValueError(f"{_LOSS_FORM} where metrics is a dict of scalars; got {_describe(metrics)}")
    return jaxpr


def train_step_fn(loss_fn: LossFn, optimizer: optax.GradientTransformation, accumulate: int = 1):
    """The pure training step ``(train_state, batch) -> (train_state, metrics)``.

    Args:
      loss_fn: ``(params, state, batch, key) -> (loss, (new_state, metrics))``.
      optimizer: the optax optimizer; one update per step.
      accumulate: cut each batch into this many micro-batches, run them one after the
        other (``lax.scan``, so only one micro-batch's activations are alive at a time)
        and average their gradients and metrics before the one update: the same update
        as the whole batch at once, up to float rounding. Micro-batch ``i`` holds rows
        ``i, i + accumulate, ...`` (each device keeps its own rows) and draws its
        randomness from ``fold_in(step_key, i)``.
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def gradients(train_state: TrainState, batch: Batch, key: Key):
        if accumulate == 1:
            (loss, (state, metrics)), grads = grad_fn(train_state.params, train_state.state, batch, key)
            return grads, state, {"loss": loss, **metrics}

        def micro_step(carry, micro):
            state, total = carry
            index, micro_batch = micro
            (loss, (state, metrics)), grads = grad_fn(
                train_state.params, state, micro_batch, jax.random.fold_in(key, index)
            )
            return (state, jax.tree.map(jnp.add, total, (grads, {"loss": loss, **metrics}))), None

        micro_batches = jax.tree.map(lambda a: jnp.swapaxes(a.reshape(-1, accumulate, *a.shape[1:]), 0, 1), batch)
        zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(lambda: gradients_like(train_state, micro_batches)))
        (state, total), _ = lax.scan(micro_step, (train_state.state, zeros), (jnp.arange(accumulate), micro_batches))
        grads, metrics = jax.tree.map(lambda t: t / accumulate, total)
        return grads, state, metrics

    def gradients_like(train_state, micro_batches):
        first = jax.tree.map(lambda a: a[0], micro_batches)
        (loss, (_, metrics)), grads = grad_fn(train_state.params, train_state.state, first, train_state.key)
        return grads, {"loss": loss, **metrics}

    def train_step(train_state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        key = jax.random.fold_in(train_state.key, train_state.step)
        grads, state, metrics = gradients(train_state, batch, key)
        updates, opt_state = optimizer.update(grads, train_state.opt_state, train_state.params)
        params = optax.apply_updates(train_state.params, updates)
        return TrainState(train_state.step + 1, params, state, opt_state, train_state.key), metrics

    return train_step


def uses_convolution(jaxpr: jex.ClosedJaxpr) -> bool:
    """True if the traced function contains a convolution (sub-jaxprs included)."""

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

    return walk(jaxpr.jaxpr)
