"""Many runs as one compiled program: ``fit_members`` trains a stack of train states with ``vmap``.

Because a fundl model is a pure function of its params, M independent runs (seeds, or
optimizer settings) are one function of M stacked train states: ``jax.vmap`` of the same
training step, a ``lax.scan`` over steps, and each member's batches gathered on the
device from the training data with the member's own data order. Each member keeps its own
initial params, step keys (``fold_in(key, step)`` of its own key) and data order
(``rng([seed, epoch])`` of its own seed): the rules of :func:`fundl.train.fit`, so a
member ends allclose to the separate run with the same seed and settings (vectorised
arithmetic may round differently, ~1e-7).

A member whose loss, metrics or new params stop being finite is frozen at its last good
state and reported; the others go on. On several devices the members are spread over
them (each device trains its share).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from fundl.distributed._mesh import DATA, MeshSpec, resolve_mesh
from fundl.train._data import Shuffled, eval_batch_size_for, num_examples
from fundl.train._loop import _budget, check_options
from fundl.train._progress import CompileTimer, ProgressReport
from fundl.train._state import TrainState
from fundl.train._step import EvalFn, LossFn, check_loss_output, default_eval_fn, train_step_fn, uses_convolution

Hyper = dict[str, jax.Array]


def fit_members(
    loss_fn: LossFn,
    optimizer_fn: Callable[[Hyper], optax.GradientTransformation],
    train_states: TrainState,
    hyper: Mapping[str, np.ndarray | jax.Array],
    train_data: Any,
    *,
    batch_size: int,
    data_seeds: np.ndarray,
    epochs: int | None = None,
    steps: int | None = None,
    eval_data: Mapping[str, Any] | None = None,
    eval_fn: EvalFn | None = None,
    eval_batch_size: int | None = None,
    mesh: MeshSpec = None,
    steps_per_call: int | str = "auto",
    quiet: bool = False,
) -> tuple[TrainState, dict[str, Any]]:
    """Trains M members at once; evaluates each on ``eval_data`` after every epoch.

    Args:
      loss_fn: ``(params, state, batch, key) -> (loss, (new_state, metrics))``.
      optimizer_fn: ``hyper -> optax optimizer``, called inside the compiled step with
        one member's hyperparameters (scalars), e.g. its learning rate.
      train_states: M train states stacked on a leading member axis.
      hyper: each hyperparameter's M values, ``{name: (M,)}`` (may be empty).
      train_data: in-memory data, shared by all members.
      batch_size: examples per step and member.
      data_seeds: ``(M,)`` each member's data-order seed.
      epochs, steps: the budget; give exactly one.
      eval_data: named evaluation splits, each seen whole by every member after each epoch.
      eval_fn: ``(params, state, batch) -> metrics``, as ``fit``'s: by default ``loss_fn``
        called with ``key=None, train=False``.
      mesh: devices to spread the members over (``None``: every device; M must divide by
        their number).
      steps_per_call: steps per compiled call, or ``"auto"`` (an epoch, except
        convolutions on the CPU, which run slower inside ``lax.scan`` there).
      quiet: no progress bar.

    Returns:
      The final stacked train states and the history: ``records`` (one per log or
      evaluation, each metric a list of M values), ``frozen`` (member index -> why), ``steps``,
      ``epochs``, ``wall_s``, ``compile_s``, ``members``.
    """
    seeds = [int(s) for s in np.asarray(data_seeds).ravel()]
    members = len(seeds)
    if jax.tree.leaves(train_states)[0].shape[0] != members:
        raise ValueError(f"train_states hold {jax.tree.leaves(train_states)[0].shape[0]} members, data_seeds {members}")
    orders = [Shuffled(train_data, batch_size, seed=seed) for seed in seeds]
    per_epoch = orders[0].steps_per_epoch
    total = _budget(epochs, steps, per_epoch)
    check_options(epochs=epochs, steps=steps, eval_batch_size=eval_batch_size, steps_per_call=steps_per_call)
    eval_data = dict(eval_data or {})
    for name, split in eval_data.items():
        num_examples(split, f"eval split {name!r}")
    eval_sizes = {name: eval_batch_size_for(split, eval_batch_size, batch_size) for name, split in eval_data.items()}
    mesh = resolve_mesh(mesh)
    if mesh is not None and members % mesh.size:
        raise ValueError(f"{members} members do not spread evenly over {mesh.size} devices: use a multiple of {mesh.size} members")

    # --- the compiled programs: one member's step, vmapped, scanned ---------------------------
    one = jax.tree.map(lambda a: a[0], train_states)
    first_batch = orders[0].batch(0, 0)
    traced_loss = check_loss_output(loss_fn, one, first_batch)

    def member_step(state: TrainState, hp: Hyper, alive: jax.Array, data: Any, indices: jax.Array):
        new, metrics = train_step_fn(loss_fn, optimizer_fn(hp))(state, jax.tree.map(lambda a: a[indices], data))
        finite = jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves((metrics, new.params))]))
        keep = alive & finite  # a member that stops being finite is frozen at its last good state
        return jax.tree.map(lambda n, o: jnp.where(keep, n, o), new, state), keep, metrics

    step = jax.vmap(member_step, in_axes=(0, 0, 0, None, 0))

    def run_steps(states, hp, alive, data, indices):  # indices: (n, M, B)
        def body(carry, idx):
            states, alive = carry
            states, alive, metrics = step(states, hp, alive, data, idx)
            return (states, alive), metrics

        (states, alive), metrics = lax.scan(body, (states, alive), indices)
        return states, alive, metrics

    member_sharding = None if mesh is None else NamedSharding(mesh, P(DATA))
    replicated = None if mesh is None else NamedSharding(mesh, P())
    index_sharding = None if mesh is None else NamedSharding(mesh, P(None, DATA))  # (steps, members, batch)
    layout: dict[str, Any] = {} if mesh is None else {"out_shardings": (member_sharding, member_sharding, index_sharding)}
    train_call = jax.jit(run_steps, donate_argnums=0, **layout)
    eval_call = _members_eval_call(eval_fn or default_eval_fn(loss_fn)) if eval_data else None

    per_call = _members_per_call(steps_per_call, uses_convolution(traced_loss), per_epoch)

    states = jax.tree.map(jnp.array, train_states)  # a copy: the calls donate it
    states = jax.device_put(states, member_sharding)
    hp = jax.device_put({k: jnp.asarray(v, jnp.float32) for k, v in hyper.items()}, member_sharding)
    alive = jax.device_put(jnp.ones((members,), bool), member_sharding)
    data = jax.device_put(orders[0].data, replicated)

    # --- the loop: an epoch (or less) per call, evaluations after each epoch -----------------------
    records: list[dict[str, Any]] = []
    frozen: dict[int, str] = {}
    step_no = int(np.asarray(one.step))
    progress = ProgressReport(total, math.ceil(total / per_epoch), quiet)
    progress.print(f"training {members} members for {total - step_no} steps as one program")
    clock = time.perf_counter()
    with CompileTimer() as timer:
        try:
            progress.start(step_no)
            while step_no < total:
                epoch, index = divmod(step_no, per_epoch)
                n = min(per_call, per_epoch - index, total - step_no)
                indices = np.stack([o.indices(epoch, index, n).reshape(n, batch_size) for o in orders], axis=1)
                states, alive, metrics = train_call(states, hp, alive, data, jax.device_put(indices, index_sharding))
                step_no += n
                metrics = jax.device_get(metrics)  # {name: (n, M)}
                _note_frozen(frozen, np.asarray(alive), metrics, step_no - n)
                progress.update(step_no, (step_no - 1) // per_epoch, float(np.nanmean(metrics["loss"][-1])), 0.0)
                if step_no % per_epoch == 0 or step_no == total:
                    record = {"step": step_no, "epoch": step_no / per_epoch, "split": "train",
                              **{k: np.mean(v, axis=0, dtype=np.float64).tolist() for k, v in metrics.items()}}
                    records.append(record)
                    for name, split in eval_data.items():
                        records.append({"step": step_no, "epoch": step_no / per_epoch, "split": name,
                                        **_evaluate(eval_call, states, split, eval_sizes[name])})
        finally:
            progress.close()
    wall = time.perf_counter() - clock
    history = {"records": records, "frozen": frozen, "steps": step_no, "epochs": step_no / per_epoch, "wall_s": wall,
               "compile_s": timer.seconds, "members": members, "steps_per_call": per_call}
    progress.print(f"done: {members} members x {step_no} steps in {wall:.1f} s ({timer.seconds:.1f} s compiling)")
    return states, history


def _members_per_call(option: int | str, convolution: bool, per_epoch: int) -> int:
    """Steps per compiled call: an epoch, or one step for convolutions on the CPU (slow inside ``lax.scan`` there)."""
    if option != "auto":
        return int(option)  # checked by check_options
    if jax.default_backend() == "cpu" and convolution:
        return 1
    return per_epoch


def _note_frozen(frozen: dict[int, str], alive: np.ndarray, metrics: dict[str, np.ndarray], first: int) -> None:
    """Records each member frozen in this call, naming the step where it stopped being finite."""
    for member in np.flatnonzero(~alive):
        if int(member) in frozen:
            continue
        bad = ~np.all([np.isfinite(v[:, member]) for v in metrics.values()], axis=0)
        step = first + int(np.flatnonzero(bad)[0]) + 1 if bad.any() else first + 1
        frozen[int(member)] = f"stopped being finite at step {step}: frozen at its last good state"


def _members_eval_call(eval_fn: Callable) -> Callable:
    """``eval_fn(params, state, batch)`` for every member at once: the params and state stacked, the batch shared."""
    return jax.jit(jax.vmap(eval_fn, in_axes=(0, 0, None)))


def evaluate_members(loss_fn: LossFn, train_states: TrainState, data: Any, *, batch_size: int,
                     eval_fn: EvalFn | None = None) -> dict[str, list[float]]:
    """Every member's exact metrics over ``data``, ``{metric: [one value a member]}``, as ``fit_members`` evaluates
    (``eval_fn``, or ``loss_fn`` in evaluation mode); the members' states are stacked on a leading axis."""
    return _evaluate(_members_eval_call(eval_fn or default_eval_fn(loss_fn)), train_states, data, batch_size)


def _evaluate(eval_call, states: TrainState, split: Any, batch_size: int) -> dict[str, list[float]]:
    """Exact means over a split for every member: each batch's metrics weighted by its size."""
    data = jax.tree.map(np.asarray, split)
    size = num_examples(data)
    sums: dict[str, np.ndarray] = {}
    for start in range(0, size, batch_size):
        stop = min(start + batch_size, size)
        metrics = jax.device_get(eval_call(states.params, states.state, jax.tree.map(lambda a: a[start:stop], data)))
        for name, values in metrics.items():
            sums[name] = sums.get(name, 0.0) + np.asarray(values, np.float64) * (stop - start)
    return {name: (total / size).tolist() for name, total in sums.items()}
