"""``fit``: the one training loop every fundl model trains with."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import jax
import numpy as np
import optax

from fundl.distributed._mesh import MeshSpec, describe_mesh, resolve_mesh
from fundl.distributed._placement import Placement
from fundl.train._checks import check_finite, check_opt_state, check_params
from fundl.train._compiled import abstract, compiled_functions
from fundl.train._data import Shuffled, eval_batch_size_for, num_examples
from fundl.train._hooks import Hook
from fundl.train._plan import CallPlan
from fundl.train._progress import CompileTimer, ProgressReport
from fundl.train._records import CheckpointSaves, InFlight, Recorder
from fundl.train._state import TrainState
from fundl.train._step import (
    EvalFn,
    LossFn,
    check_loss_output,
    default_eval_fn,
    train_step_fn,
    uses_convolution,
)

_MAX_FUSED_BYTES = 64 * 2**20  # the most batch data one fused call takes to the device
_MAX_RESIDENT_BYTES = 1 << 30  # training data up to this size is kept on each device and gathered there


class Checkpointer(Protocol):
    """What ``fit`` asks of a checkpointer: when to save, saving, and whether to stop now."""

    def next_step(self, step: int) -> int | None:
        """The first step after ``step`` at which a checkpoint is due, if any."""

    def save(self, step: int, train_state: TrainState, hook_states: list[Any], metrics: dict[str, float]) -> None:
        """Saves the train state after ``step`` steps and the ``state_dict()`` of each hook
        (``None`` for hooks without one); ``metrics`` are the latest evaluations, by
        ``"split/metric"``. Must not keep references to ``train_state``'s buffers, which
        the next step reuses."""

    def interrupted(self, step: int) -> str | None:
        """A reason to stop training now (a signal arrived, a step limit was reached), or ``None``."""


def fit(
    loss_fn: LossFn,
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
    step_fn: Callable[[TrainState, Any], tuple[TrainState, dict[str, Any]]] | None = None,
    checkpoint: Checkpointer | None = None,
    quiet: bool = False,
    strict: bool = False,
) -> tuple[TrainState, dict[str, Any]]:
    """Trains until ``epochs`` (or ``steps``) are done or a hook stops it.

    Starts from ``train_state.step`` (the budget counts from step 0), so a restored
    train state resumes exactly where it stopped: the data order of each epoch depends only on ``(data_seed, epoch)`` and the
    randomness of each step only on the train state's key and the step number.

    Args:
      loss_fn: ``(params, state, batch, key) -> (loss, (new_state, metrics))``.
      optimizer: any optax ``GradientTransformation`` (schedules included).
      train_state: where to start, e.g. ``TrainState.create(params, state, optimizer, key)``.
      train_data: a pytree of arrays with a leading example axis, e.g.
        ``{"image": (n, 8, 8), "label": (n,)}``; each epoch uses ``n // batch_size``
        full batches in a fresh order.
      batch_size: training examples per step.
      epochs, steps: the training budget; give exactly one.
      eval_data: named evaluation splits, e.g. ``{"test": data}``. Each evaluation sees
        every example exactly once (the last batch may be smaller), so the metrics are
        exact means over the split.
      eval_fn: ``(params, state, batch) -> metrics``; by default ``loss_fn`` called with
        ``key=None, train=False``.
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
        visible device, an int the first that many (``1``: one device, no mesh), or a
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
        step of :func:`fundl.distributed.shard_map_step`; ``loss_fn`` still checks the
        batches and evaluates.
      checkpoint: where and when to save the train state and the hooks' state during
        training (see :class:`Checkpointer`; ``fundl.runs`` gives one that writes
        a verified file per step). It may also ask ``fit`` to stop early, as if preempted: the
        run then logs the training metrics, skips the evaluation, saves a checkpoint and
        returns with ``history["interrupted"]`` set. Never saved: a state with a
        non-finite loss (the last good checkpoint is kept).
      quiet: no progress bar and no printed lines.
      strict: an unexpected recompilation is an error instead of a warning.

    Returns:
      The final train state, and the history as plain data: ``records`` (one dict per
      log and evaluation), ``stop_reason`` (``None`` if the budget was used up),
      ``steps``, ``epochs``, ``wall_s``, ``compile_s``, ``steps_per_call`` and how it was
      chosen, the ``mesh`` (axes, devices, processes), the number of ``traces`` of each
      compiled function, ``nonfinite`` (a NaN or infinity stopped training) and
      ``interrupted`` (the checkpointer asked to stop).
    """
    # --- Set up: devices, data, budget, schedule of logs and evaluations ----------------
    check_options(epochs=epochs, steps=steps, eval_batch_size=eval_batch_size, eval_every=eval_every, log_every=log_every,
                  steps_per_call=steps_per_call, max_in_flight=max_in_flight, accumulate=accumulate)
    placement = Placement(resolve_mesh(mesh))
    num_examples(train_data, "train data")  # first: a clear error for an iterator instead of arrays
    train = Shuffled(train_data, batch_size, seed=data_seed)
    placement.check_batch_size(batch_size, "training")
    if batch_size % accumulate:
        raise ValueError(f"accumulate must be a positive integer that divides the batch size {batch_size}, got {accumulate!r}")
    rows = placement.local_rows(batch_size)  # this process's share of every global batch
    per_epoch = train.steps_per_epoch
    total = _budget(epochs, steps, per_epoch)
    eval_data = dict(eval_data or {})
    for name, split in eval_data.items():
        if name == "train":
            raise ValueError('eval split name "train" is taken by the training metrics; name it e.g. "train_eval"')
        num_examples(split, f"eval split {name!r}")  # a larger batch size is fine: one batch holds the split
    eval_sizes = {name: eval_batch_size_for(split, eval_batch_size, batch_size) for name, split in eval_data.items()}
    eval_every = _interval("eval_every", eval_every, per_epoch)
    log_every = _interval("log_every", log_every, per_epoch)
    hooks = list(hooks)

    # --- The data, params and optimizer state, checked once on the host -----------------
    check_params(train_state.params)
    if step_fn is None:
        check_opt_state(optimizer, train_state.params, train_state.opt_state)
    check_data = getattr(loss_fn, "check_data", check_finite)  # labels in range, finite inputs
    for name, split in {"train data": train.data, **{f"eval split {n!r}": s for n, s in eval_data.items()}}.items():
        check_data(split, name)

    # --- The compiled functions, checked before they are compiled ------------------------
    first_batch = train.batch(0, 0)
    traced_loss = check_loss_output(loss_fn, train_state, first_batch)
    eval_fn_given = eval_fn
    eval_fn = eval_fn or (default_eval_fn(loss_fn) if eval_data else None)
    train_step = step_fn or train_step_fn(loss_fn, optimizer, accumulate)
    first_checkpoint = checkpoint.next_step(0) if checkpoint else None
    intervals = [every for every in (eval_every, log_every, first_checkpoint) if every]
    fused, how = _steps_per_call(steps_per_call, uses_convolution(traced_loss), first_batch, train, *intervals)
    resident = placement.resident(train.data) if train.data_bytes <= _MAX_RESIDENT_BYTES else None
    key = (loss_fn, optimizer, accumulate, step_fn, eval_fn_given or loss_fn, placement.mesh, resident is not None, strict, fused,
           abstract(train_state), abstract(first_batch), tuple(abstract(split) for split in eval_data.values()), tuple(eval_sizes.values()))
    shardings = placement.state_shardings(train_state)
    compiled = compiled_functions(key, train_step, eval_fn, state_shardings=shardings,
                                  replicated=getattr(placement, "replicated", None), strict=strict,
                                  eval_shapes=_eval_shapes(eval_data, eval_sizes, placement.shards))
    traces_before = {name: guard.traces for name, guard in compiled.guards.items()}

    plan = CallPlan(total, per_epoch, eval_every, log_every, fused, checkpoint.next_step if checkpoint else None, bool(eval_data))
    feed = BatchFeed(train, placement, plan, batch_size, rows, resident)
    evaluate = Evaluation(compiled.evaluate, eval_data, placement, eval_sizes)

    # --- The loop: dispatch a call, prepare the next one, read back older results ---------
    # The compiled steps reuse (donate) the train state's buffers: work on a copy, so that
    # the caller's arrays stay valid.
    train_state = placement.place_state(train_state)
    step = start = int(train_state.step)
    progress = ProgressReport(total, math.ceil(total / per_epoch), quiet)
    where = "" if placement.mesh is None else f" on {placement.shards} devices {describe_mesh(placement.mesh)['axes']}"
    progress.print(f"training {total - start} steps from step {start}{where}")  # how many per call: history["steps_per_call_reason"]
    interrupted = False
    clock = time.perf_counter()
    with CompileTimer() as timer, placement.context():
        recorder = Recorder(hooks, progress, per_epoch, stop_on_nan=stop_on_nan,
                            speed=lambda done: (done - start) * batch_size / max(time.perf_counter() - clock - timer.seconds, 1e-9))
        in_flight = InFlight(recorder.steps_done, on_log=lambda done: recorder.log(done, None))
        save = CheckpointSaves(checkpoint, recorder)
        try:
            progress.start(step)
            upcoming = feed.call(step) if step < total else None
            while upcoming is not None and recorder.stop_reason is None:
                n, batches = upcoming
                train_state, metrics = (compiled.fused if n > 1 else compiled.single)(train_state, resident, batches)
                step += n
                if checkpoint and (reason := checkpoint.interrupted(step)):
                    interrupted = True
                    recorder.stop(reason)
                # With no hooks to show the state to, a boundary that needs no state (an epoch end, a log) need not
                # wait for the device: a log is written when this call's metrics come back, and the next call goes on.
                passing = not hooks and plan.is_boundary(step) and not plan.needs_state(step) and recorder.stop_reason is None
                in_flight.add(step - n, n, metrics, log_after=passing and plan.log_due(step))
                upcoming = feed.call(step) if step < total and recorder.stop_reason is None else None  # overlaps the running call
                in_flight.drain(keep=max_in_flight)
                if (plan.is_boundary(step) and not passing) or recorder.stop_reason:
                    in_flight.drain()
                    record_boundary(recorder, plan, evaluate, step, train_state, interrupted=interrupted)
                    if step % per_epoch == 0:
                        recorder.emit("epoch_end", {"step": step, "epoch": step / per_epoch}, train_state)
                    if plan.checkpoint_due(step) or interrupted:
                        save(step, train_state)
            in_flight.drain()
            if not recorder.records or recorder.records[-1]["step"] != step:  # no step ran, or the last boundary was not reached
                record_boundary(recorder, plan, evaluate, step, train_state, interrupted=interrupted)
            save(step, train_state)
            recorder.emit("end", {"step": step, "epoch": step / per_epoch}, train_state)
        finally:
            progress.close()
    wall = time.perf_counter() - clock
    stop_reason = recorder.stop_reason
    history = {
        "records": recorder.records,
        "stop_reason": stop_reason,
        "steps": step,
        "epochs": step / per_epoch,
        "wall_s": wall,
        "compile_s": timer.seconds,
        "steps_per_call": fused,
        "steps_per_call_reason": how,
        "mesh": describe_mesh(placement.mesh),
        "traces": {name: guard.traces - traces_before[name] for name, guard in compiled.guards.items()},
        "nonfinite": recorder.nonfinite,
        "interrupted": interrupted,
    }
    progress.print(f"done: {step} steps in {wall:.1f} s ({timer.seconds:.1f} s compiling)" + (f"; stopped: {stop_reason}" if stop_reason else ""))
    return train_state, history


def _is_count(value: Any, least: int) -> bool:
    """An integer (Python or NumPy, not a bool) of at least ``least``."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)) and bool(value >= least)


def check_options(
    *,
    epochs: int | None = None,
    steps: int | None = None,
    eval_batch_size: int | None = None,
    eval_every: int | None = None,
    log_every: int | None = None,
    steps_per_call: int | str = "auto",
    max_in_flight: int = 2,
    accumulate: int = 1,
) -> None:
    """Checks the options of :func:`fit` that need no data; a ``ValueError`` names the first bad one.

    ``fit`` calls it first; ``fundl run`` calls it before it creates a run directory.
    """
    _budget(epochs, steps, 1)
    if eval_batch_size is not None and not _is_count(eval_batch_size, 1):
        raise ValueError(f"eval_batch_size must be a positive integer (or None for the training batch size), got {eval_batch_size!r}")
    _interval("eval_every", eval_every, 1)
    _interval("log_every", log_every, 1)
    if steps_per_call != "auto" and not _is_count(steps_per_call, 1):
        raise ValueError(f'steps_per_call must be a positive integer or "auto", got {steps_per_call!r}')
    if not _is_count(max_in_flight, 1):
        raise ValueError(f"max_in_flight must be a positive integer, got {max_in_flight!r}")
    if not _is_count(accumulate, 1):
        raise ValueError(f"accumulate must be a positive integer that divides the batch size, got {accumulate!r}")


def _budget(epochs: int | None, steps: int | None, per_epoch: int) -> int:
    if (epochs is None) == (steps is None):
        raise ValueError(f"give exactly one training budget, epochs or steps; got epochs={epochs}, steps={steps}")
    value, name = (epochs, "epochs") if steps is None else (steps, "steps")
    if value is None or not _is_count(value, 0):
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value) * per_epoch if name == "epochs" else int(value)


def _interval(name: str, value: int | None, per_epoch: int) -> int:
    if value is None:
        return per_epoch
    if not _is_count(value, 1):
        raise ValueError(f"{name} must be a positive number of steps, got {value!r}")
    return int(value)


def _eval_shapes(eval_data: Mapping[str, Any], batch_sizes: Mapping[str, int], shards: int) -> int:
    """How many batch shapes evaluation compiles for: full batches, each split's last
    batch, and the few examples left over when the last batch does not cut evenly."""
    sizes = set()
    for name, split in eval_data.items():
        n, batch_size = num_examples(split), batch_sizes[name]
        for size in {min(batch_size, n), n % batch_size or min(batch_size, n)}:
            sizes |= {s for s in (size - size % shards, size % shards) if s}
    return max(len(sizes), 1)


def _steps_per_call(option, convolution: bool, batch, train, *intervals: int) -> tuple[int, str]:
    """How many steps each compiled call runs, and why (``convolution``: the model has one)."""
    if option != "auto":
        return int(option), f"{option} steps per call (set by steps_per_call)"
    if jax.default_backend() == "cpu" and convolution:
        return 1, "1 step per call (auto: convolutions run 4-12x slower inside lax.scan on XLA:CPU)"
    span = min(train.steps_per_epoch, *intervals)  # a call never crosses an epoch end, log, eval or checkpoint
    cap = max(1, _MAX_FUSED_BYTES // sum(leaf.nbytes for leaf in jax.tree.leaves(batch)))
    per_call = math.ceil(span / math.ceil(span / cap))  # the span in equal calls of at most `cap` steps
    return per_call, f"{per_call} steps per call (auto: one lax.scan per {per_call} steps)"


class BatchFeed(NamedTuple):
    """The input of each compiled call: this process's rows of its batches, placed on the devices."""

    train: Shuffled
    placement: Placement
    plan: CallPlan
    batch_size: int
    rows: slice
    resident: Any  # the training data on the device(s); None: the batches themselves are sent

    def call(self, step: int) -> tuple[int, Any]:
        """The size of the call after ``step`` steps, and its index array (or its batches)."""
        n = self.plan.call_size(step)
        epoch, index = divmod(step, self.plan.per_epoch)
        if self.resident is not None:
            return n, self.placement.batch(self.train.indices(epoch, index, n, self.rows), self.batch_size, stacked=n > 1)
        if n > 1:
            return n, self.placement.batch(self.train.batches(epoch, index, n, self.rows), self.batch_size, stacked=True)
        return n, self.placement.batch(self.train.batch(epoch, index, self.rows), self.batch_size)


class Evaluation(NamedTuple):
    """Every evaluation split's exact metrics for a train state: each batch's metrics weighted by its true size."""

    eval_call: Callable | None
    eval_data: Mapping[str, Any]
    placement: Placement
    batch_sizes: Mapping[str, int]  # by split

    def __call__(self, train_state: TrainState) -> dict[str, dict[str, float]]:
        if self.eval_call is None:
            return {}
        return {name: _exact_means(self.eval_call, train_state, self.placement.eval_batches(split, self.batch_sizes[name]))
                for name, split in self.eval_data.items()}


def _exact_means(eval_call: Callable, train_state: TrainState, batches) -> dict[str, float]:
    results = jax.device_get([(eval_call(train_state.params, train_state.state, batch), n) for batch, n in batches])
    total = sum(n for _, n in results)
    return {name: float(sum(float(m[name]) * n for m, n in results) / total) for name in results[0][0]}


def record_boundary(recorder: Recorder, plan: CallPlan, evaluate: Evaluation, step: int, train_state: TrainState, *,
                    interrupted: bool) -> None:
    """At a boundary after ``step`` steps: the training log and the evaluations that are due.

    Stopping early logs and evaluates where it stops; an interruption (to be resumed)
    evaluates only where the schedule says so, so that a resumed run sees the same evaluations.
    """
    stopping = recorder.stop_reason is not None
    if plan.log_due(step) or stopping:
        recorder.log(step, train_state)
    if plan.eval_due(step) or (stopping and not interrupted):
        for split, metrics in evaluate(train_state).items():
            recorder.evaluation(step, split, metrics, train_state)
