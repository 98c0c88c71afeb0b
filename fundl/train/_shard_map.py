"""An opt-in per-device training step under ``jax.shard_map``, for code written per device.

``fit`` needs none of this: its one ``jax.jit`` step over a mesh is data-parallel as it
is. This step is for users who write per-device code (their own collectives, per-device
randomness). Its gradient rule, with ``shard_map``'s default ``check_vma=True``:
differentiating a per-device loss with respect to replicated params already *sums* the
gradient over the devices, so the global mean's gradient is the gradient of
``pmean(loss)``. The old ``pmean(grads)`` idiom would return ``N`` times the gradient
(Adam, being scale-invariant, hides the mistake; SGD does not).
"""

from __future__ import annotations

from typing import Any

import jax
import optax
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P

from fundl._core import LossFn, Metrics
from fundl.distributed._mesh import DATA
from fundl.train._state import TrainState


def shard_map_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, mesh: Mesh):
    """The pure step ``(train_state, batch) -> (train_state, metrics)`` as per-device code.

    Each device sees its slice of the batch (cut along ``"data"``) and the replicated train
    state; its randomness is ``fold_in(fold_in(key, step), axis_index("data"))``, so each
    device draws its own dropout masks. The loss is averaged over the devices with
    ``pmean`` *before* differentiating (see the module docstring); batch-norm layers see
    only their slice unless built with ``batch_norm(axis_name="data")``, and their new
    state is averaged over the devices. Metrics are averaged over the devices.

    Example:
      >>> mesh = fundl.distributed.data_mesh()
      >>> fit(loss_fn, optimizer, train_state, data, batch_size=64, mesh=mesh,
      ...     step_fn=shard_map_step(loss_fn, optimizer, mesh))
    """
    if tuple(mesh.axis_names) != (DATA,):
        raise ValueError(f"shard_map_step takes a mesh with the one axis {DATA!r}, got axes {mesh.axis_names}")

    def per_device(train_state: TrainState, batch: Any) -> tuple[TrainState, Metrics]:
        key = jax.random.fold_in(jax.random.fold_in(train_state.key, train_state.step), lax.axis_index(DATA))

        def mean_loss(params):
            loss, (state, metrics) = loss_fn(params, train_state.state, batch, key)
            return lax.pmean(loss, DATA), (state, metrics)  # differentiate the mean, not pmean(grads)

        (loss, (state, metrics)), grads = jax.value_and_grad(mean_loss, has_aux=True)(train_state.params)
        updates, opt_state = optimizer.update(grads, train_state.opt_state, train_state.params)
        params = optax.apply_updates(train_state.params, updates)
        state, metrics = lax.pmean((state, metrics), DATA)
        return TrainState(train_state.step + 1, params, state, opt_state, train_state.key), {"loss": loss, **metrics}

    return jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(DATA)), out_specs=(P(), P()))
