"""The entry points of the one loop: ``fit`` trains one run, ``fit_members`` a population of them.

Both take the same keywords, pack them into the loop's option records
(:mod:`fundl.train._options`) and call :func:`fundl.train.loop`; a single run is a
population of one, trained without ``vmap``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import optax

from fundl._core import EvalFn, Loss
from fundl.distributed import MeshSpec
from fundl.train._edges import check_train_state, eval_splits
from fundl.train._history import History
from fundl.train._hooks import Hook
from fundl.train._loop import loop
from fundl.train._options import Budget, Callbacks, Checkpointer, Evaluation, Execution, Input
from fundl.train._population import Hyper, Members, MemberStates, OneRun, StepFn
from fundl.train._progress import verbosity
from fundl.train._state import TrainState


def fit(
    loss_fn: Loss | Callable[..., Any],
    optimizer: optax.GradientTransformation,
    train_state: TrainState,
    train_data: Any,
    *,
    batch_size: int,
    epochs: int | None = None,
    steps: int | None = None,
    eval_data: Mapping[str, Any] | None = None,
    eval_fn: EvalFn | None = None,
    eval_batch_size: int | None = None,
    eval_every: int | None = None,
    log_every: int | None = None,
    hooks: Sequence[Hook] = (),
    stop_on_nan: bool = True,
    data_seed: int = 0,
    steps_per_call: int | str = "auto",
    max_in_flight: int = 2,
    mesh: MeshSpec = None,
    accumulate: int = 1,
    step_fn: StepFn | None = None,
    checkpoint: Checkpointer | None = None,
    workers: int = 0,
    augment: Callable[[Any, Any], Any] | None = None,
    verbose: int | str = 2,
    quiet: bool = False,
    strict: bool = False,
) -> tuple[TrainState, History]:
    """Trains until ``epochs`` (or ``steps``) are done or a hook stops it.

    Starts from ``train_state.step`` (the budget counts from step 0), so a restored
    train state resumes exactly where it stopped: the data order of each epoch depends
    only on ``(data_seed, epoch)`` and the randomness of each step only on the train
    state's key and the step number.

    Args:
      loss_fn: a :class:`~fundl.Loss` (e.g. ``classification_loss(model)``), or a plain
        ``(params, state, batch, key) -> (loss, (new_state, metrics))``.
      optimizer: any optax ``GradientTransformation`` (schedules included).
      train_state: where to start, e.g. ``TrainState.create(params, state, optimizer, key)``.
      train_data: a pytree of arrays with a leading example axis, e.g.
        ``{"image": (n, 8, 8), "label": (n,)}``, or a source of examples (anything with
        ``__len__`` and ``__getitem__``, e.g. ``fundl.datasets.records(path)``, read lazily,
        each process only its rows); each epoch uses ``n // batch_size`` full batches in a
        fresh order. The same data in memory or as a source trains to the same params.
      batch_size: training examples per step.
      epochs, steps: the training budget; give exactly one.
      eval_data: named evaluation splits, e.g. ``{"validation": data}``. Each evaluation
        sees every example exactly once (the last batch may be smaller), so the metrics
        are exact means over the split.
      eval_fn: ``(params, state, batch) -> metrics``; by default the loss's own evaluation
        (a plain function with a ``train`` keyword: called with ``key=None, train=False``).
      eval_batch_size: evaluation batch size (default: the whole split in one batch when
        its arrays take at most 8 MiB, one call and one compiled shape; else ``batch_size``).
      eval_every, log_every: in steps (default: once per epoch). Training metrics are
        logged as means over the steps since the last log, as split ``"train"``.
      hooks: callables ``hook(event) -> None | reason`` (see :class:`Event`).
      stop_on_nan: stop at the first non-finite loss or metric, naming step and metric.
      data_seed: seed of the data order.
      steps_per_call: training steps per compiled call: an int, or ``"auto"`` (one
        ``lax.scan`` over many steps, except for convolutions on the CPU, which run 4-12x
        slower inside a scan there). The params are bit-identical either way, except for
        convolutions on XLA:CPU, whose gradients round differently inside a scan (~1e-7).
      max_in_flight: calls dispatched ahead of the results read back. Keep it small
        with many fake CPU devices: XLA:CPU can deadlock with many collective calls queued.
      mesh: the devices to train on, data-parallel: ``None`` (the default) means every
        visible device, an int the first that many (``1``: one device), or a
        ``jax.sharding.Mesh`` with a ``"data"`` axis and optionally an ``"fsdp"`` axis
        (see :func:`fundl.distributed.data_mesh`). Each global batch (the same rows as on
        one device) is cut along its example axis over the mesh, the train state is
        replicated (or cut over ``"fsdp"``), and in a multi-process run each process
        feeds only its own rows. The batch size must divide by the number of devices.
      accumulate: cut each batch into this many micro-batches and average their
        gradients before the one optimizer update (gradient accumulation): ``batch_size``
        is the batch of one update, and steps, budgets, logs and evaluations all count
        optimizer updates.
      step_fn: the pure step ``(train_state, batch) -> (train_state, metrics)`` to use
        instead of ``train_step_fn(loss_fn, optimizer, accumulate)``, e.g. the per-device
        step of :func:`fundl.train.shard_map_step`; the loss still checks the batches
        and evaluates.
      checkpoint: where and when to save the train state and the hooks' state during
        training (see :class:`Checkpointer`; ``fundl.runs`` gives one that writes
        a verified file per step). It may also ask ``fit`` to stop early, as if preempted: the
        run then logs the training metrics, skips the evaluation, saves a checkpoint and
        returns with ``history.interrupted`` set. Never saved: a state with a
        non-finite loss (the last good checkpoint is kept).
      workers: processes that read (and augment) batches from the host ahead of the loop
        (grain, the extra ``fundl[data]``); 0 (the default) reads on a thread.
      augment: ``augment(example, rng) -> example``, applied to each training example as it
        is read, with ``rng = np.random.default_rng([data_seed, epoch, index])``.
      verbose: what is printed: ``0`` or ``"silent"`` nothing; ``1`` or ``"epochs"`` one line
        per log or evaluation (on stdout); ``2`` or ``"bar"`` (the default) those lines and a
        live progress bar (on stderr; in a notebook it needs ``ipywidgets``, and where output
        is not a terminal it is a plain progress line every 10 s).
      quiet: ``True`` is ``verbose=0``.
      strict: an unexpected recompilation is an error instead of a warning.

    Ctrl-C (or "interrupt the kernel" in a notebook) stops training cleanly: ``fit`` finishes
    the call in flight, logs, saves a checkpoint if ``checkpoint`` is given, and returns the
    train state and history so far, with ``history.interrupted`` set and the reason in
    ``history.stop_reason``; ``fit`` called again with that train state continues exactly
    (bit-identical to a training that never stopped). A second Ctrl-C aborts at once. A
    ``KeyboardInterrupt`` raised by a hook counts as the first Ctrl-C.

    Returns:
      The final train state, and the :class:`History`: ``records`` (one :class:`Record`
      per log and evaluation), ``stop_reason`` (``None`` if the budget was used up),
      ``steps``, ``epochs``, ``wall_s``, ``compile_s``, ``steps_per_call`` and how it was
      chosen, the ``mesh`` (axes, devices, processes), the number of ``traces`` of each
      compiled function, ``nonfinite`` (a NaN or infinity stopped training) and
      ``interrupted`` (Ctrl-C, or the checkpointer asked to stop: resumable).
    """
    check_train_state(train_state)
    return loop(
        OneRun(optimizer, step_fn),
        Loss.of(loss_fn, eval_fn),
        train_state,
        train_data,
        batch_size=batch_size,
        data_seeds=[data_seed],
        budget=Budget(epochs, steps, eval_every, log_every),
        execution=Execution.on(
            mesh, accumulate=accumulate, steps_per_call=steps_per_call, max_in_flight=max_in_flight, strict=strict
        ),
        evaluation=Evaluation(eval_splits(eval_data), eval_batch_size),
        callbacks=Callbacks(tuple(hooks), stop_on_nan, checkpoint, verbosity(verbose, quiet)),
        input=Input(workers, augment),
    )


def fit_members(
    loss_fn: Loss | Callable[..., Any],
    optimizer_fn: Callable[[Hyper], optax.GradientTransformation],
    train_states: TrainState | MemberStates,
    hyper: Mapping[str, np.ndarray | Any] | None,
    train_data: Any,
    *,
    batch_size: int,
    data_seeds: Sequence[int] | np.ndarray,
    epochs: int | None = None,
    steps: int | None = None,
    eval_data: Mapping[str, Any] | None = None,
    eval_fn: EvalFn | None = None,
    eval_batch_size: int | None = None,
    eval_every: int | None = None,
    log_every: int | None = None,
    hooks: Callable[[int], Sequence[Hook]] | None = None,
    steps_per_call: int | str = "auto",
    max_in_flight: int = 2,
    mesh: MeshSpec = None,
    accumulate: int = 1,
    checkpoint: Checkpointer | None = None,
    workers: int = 0,
    augment: Callable[[Any, Any], Any] | None = None,
    verbose: int | str = 2,
    quiet: bool = False,
    strict: bool = False,
) -> tuple[MemberStates, History]:
    """Trains ``M`` members as one compiled program: ``vmap`` of the step over stacked train states.

    Every option means what it means for :func:`fit`, per member: each member has its own
    params, step keys, data order (``data_seeds``) and optimizer settings (``hyper``), and
    ends allclose to its separate ``fit`` (vectorised arithmetic may round differently,
    ~1e-7). A member whose loss, metrics or params stop being finite, or that one of its
    hooks stops, is frozen at its state then; the others go on. Training ends when the
    budget is used up or every member has stopped.

    Args:
      loss_fn: as :func:`fit`'s.
      optimizer_fn: ``hyper -> optax optimizer``, called inside the compiled step with
        one member's settings (traced scalars), e.g. ``lambda h: optax.sgd(h["lr"])``.
      train_states: ``M`` train states stacked on a leading member axis (e.g. from
        :func:`initial_train_states`), or the :class:`MemberStates` a previous call returned.
      hyper: each setting's ``M`` values, ``{name: (M,)}`` (``None`` or empty: no settings).
      train_data: in-memory data, shared by all members.
      batch_size: examples per step and member.
      data_seeds: ``(M,)`` each member's data-order seed.
      hooks: ``member -> that member's hooks`` (fresh instances for each member).
      mesh: the devices. Without an ``fsdp`` axis and with ``M`` a multiple of the devices,
        the members are spread over them; otherwise each member is laid out as its
        separate run would be.

    Returns:
      The final :class:`MemberStates` (``states``: the stacked train states; ``alive``: who
      still trained at the end) and the :class:`History`, whose records carry their
      ``member`` and whose ``members`` say how each member ended.
    """
    if not isinstance(train_states, MemberStates):
        check_train_state(train_states, "fit_members' train_states")
    carry = train_states if isinstance(train_states, MemberStates) else MemberStates.of(train_states, dict(hyper or {}))
    seeds = [int(seed) for seed in np.asarray(data_seeds).ravel()]
    if len(carry.alive) != len(seeds):
        raise ValueError(
            f"train_states hold {len(carry.alive)} members, data_seeds {len(seeds)}: give one data seed a member"
        )
    return loop(
        Members(optimizer_fn, len(seeds)),
        Loss.of(loss_fn, eval_fn),
        carry,
        train_data,
        batch_size=batch_size,
        data_seeds=seeds,
        budget=Budget(epochs, steps, eval_every, log_every),
        execution=Execution.on(
            mesh, accumulate=accumulate, steps_per_call=steps_per_call, max_in_flight=max_in_flight, strict=strict
        ),
        evaluation=Evaluation(eval_splits(eval_data), eval_batch_size),
        callbacks=Callbacks(hooks or (), True, checkpoint, verbosity(verbose, quiet)),
        input=Input(workers, augment),
    )
