"""The one training loop, for a single run or a population of members.

``loop`` reads top to bottom: set up (devices, data order, budget, schedule), check what
it was given once on the host, make the compiled calls, then loop: dispatch a call,
prepare the next one, read older results back, and at each boundary (a log, an
evaluation, an epoch end, a checkpoint) do what is due. What differs between one run and
a population is the :mod:`~fundl.train._population`'s; everything else is written once.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from fundl._core import Loss
from fundl._data import eval_batch_size_for, num_examples
from fundl.distributed import Placement, describe_mesh
from fundl.train._checks import check_opt_state, check_params
from fundl.train._compiled import Program, abstract, compiled_functions
from fundl.train._evaluate import Evaluator, evaluation_of
from fundl.train._feed import BatchFeed
from fundl.train._history import History, MemberEnd, Record
from fundl.train._interrupt import Interrupts
from fundl.train._options import Budget, Callbacks, Evaluation, Execution, Input
from fundl.train._plan import CallPlan
from fundl.train._population import Members, OneRun
from fundl.train._progress import CompileTimer, ProgressReport
from fundl.train._reader import Reader
from fundl.train._records import CheckpointSaves, InFlight, Lane, Recorder
from fundl.train._step import check_loss_output, uses_convolution

_MAX_FUSED_BYTES = 64 * 2**20  # the most batch data one fused call takes to the device
# Batches read on the host (a source, data too large to keep on the device) are read, stacked and sent: three
# copies of a call's batches, two calls in flight. At 16 MiB a call the loop holds ~0.1 GiB of them.
_MAX_HOST_FED_BYTES = 16 * 2**20
_MAX_RESIDENT_BYTES = 1 << 30  # training data up to this size is kept on each device and gathered there


def loop(  # noqa: C901  (the loop reads best top to bottom in its sections; each piece it calls is tested alone)
    population: OneRun | Members,
    loss: Loss,
    carry: Any,
    train_data: Any,
    *,
    batch_size: int,
    data_seeds: Sequence[int],
    budget: Budget,
    execution: Execution,
    evaluation: Evaluation = Evaluation(),
    callbacks: Callbacks = Callbacks(),
    input: Input = Input(),
    ends: Sequence[MemberEnd] | None = None,
) -> tuple[Any, History]:
    """Trains ``carry`` (a train state, or a population's :class:`MemberStates`) until its budget is spent or it stops.

    ``ends``: each member's end as a checkpoint recorded it, when resuming a population
    (its stopped members stay stopped). See :func:`fundl.train.fit` for the rules.
    """
    # --- Set up: devices, data order, budget, schedule of logs and evaluations -----------
    placement = Placement(execution.mesh, population.size)
    if population.size is not None and placement.sharded and jax.process_count() > 1:
        raise ValueError("a population (sweep) trains in one process; run each member separately across processes")
    num_examples(train_data, "train data")  # first: a clear error for an iterator instead of arrays
    orders = population.orders(train_data, batch_size, data_seeds)
    placement.check_batch_size(batch_size, "training")
    if batch_size % execution.accumulate:
        raise ValueError(
            "accumulate must be a positive integer that divides the "
            f"batch size {batch_size}, got {execution.accumulate!r}"
        )
    rows = placement.local_rows(batch_size)  # this process's share of every global batch
    per_epoch = orders[0].steps_per_epoch
    total = budget.total(per_epoch)
    eval_every, log_every = budget.every(per_epoch)
    splits = dict(evaluation.splits)
    for name, split in splits.items():
        num_examples(split, f"eval split {name!r}")  # a larger batch size is fine: one batch holds the split
    eval_sizes = {name: eval_batch_size_for(split, evaluation.batch_size, batch_size) for name, split in splits.items()}

    # --- The data, params and optimizer state, checked once on the host -----------------
    one = population.train_state(carry)
    check_params(one.params)
    if isinstance(population, OneRun) and population.step_fn is None:
        check_opt_state(population.optimizer, one.params, one.opt_state)
    for name, split in {"train data": orders[0].data, **{f"eval split {n!r}": s for n, s in splits.items()}}.items():
        loss.check(split, name)  # labels in range, finite inputs: all in memory, a source's first examples

    # --- The compiled calls, checked before they are compiled ----------------------------
    first_batch = orders[0].batch(0, 0)
    traced_loss = check_loss_output(loss.fn, one, first_batch)
    if splits:
        evaluation_of(loss)  # an error that says how to evaluate, if the loss cannot
    checkpoint = callbacks.checkpoint
    first_checkpoint = checkpoint.next_step(0) if checkpoint else None
    intervals = [every for every in (eval_every, log_every, first_checkpoint) if every]
    convolution = uses_convolution(traced_loss)
    kept = orders[0].data_bytes <= _MAX_RESIDENT_BYTES and input.augment is None
    fused, how = _steps_per_call(
        execution.steps_per_call,
        convolution,
        first_batch,
        orders[0],
        population.lanes,
        *intervals,
        cap_bytes=_MAX_FUSED_BYTES if kept else _MAX_HOST_FED_BYTES,
    )
    if isinstance(population, Members) and fused == 1 and convolution and jax.default_backend() == "cpu":
        population = dataclasses.replace(population, vectorized=False)
        how += "; one call per member (vmapped convolutions run as slower grouped convolutions on XLA:CPU)"
    resident = placement.resident(orders[0].data) if kept else None
    program = Program(
        population,
        loss if splits else dataclasses.replace(loss, evaluate=None),
        execution.accumulate,
        placement,
        resident is not None,
        fused,
        execution.strict,
        _eval_shapes(splits, eval_sizes, placement.shards),
        abstract(carry),
        abstract(first_batch),
        tuple(abstract(split) for split in splits.values()),
    )
    compiled = compiled_functions(program, carry)
    traces_before = {name: guard.traces for name, guard in compiled.guards.items()}

    plan = CallPlan(
        total, per_epoch, eval_every, log_every, fused, checkpoint.next_step if checkpoint else None, bool(splits)
    )
    readers = (
        None
        if resident is not None
        else [
            Reader(order, rows, total, workers=input.workers, augment=input.augment, ahead=input.ahead)
            for order in orders
        ]
    )
    feed = BatchFeed(orders, placement, plan, batch_size, rows, resident, population.size is not None, readers)
    evaluate = Evaluator(compiled.evaluate, population, placement, splits, eval_sizes)

    # --- The loop: dispatch a call, prepare the next one, read back older results ---------
    # The compiled steps reuse (donate) the train state's buffers: work on a copy, so that
    # the caller's arrays stay valid.
    carry = placement.place_state(carry)
    step = start = population.step_count(carry)
    progress = ProgressReport(total, math.ceil(total / per_epoch), callbacks.verbose)
    where = (
        "" if not placement.sharded else f" on {placement.mesh.size} devices {describe_mesh(placement.mesh)['axes']}"
    )
    who = "" if population.size is None else f"{population.size} members "
    progress.print(
        f"training {who}{total - start} steps from step {start}{where}"
    )  # how many per call: history.steps_per_call_reason
    clock = time.perf_counter()
    with CompileTimer() as timer, placement.context(), Interrupts(callbacks.signals) as interrupts:
        recorder = Recorder(
            callbacks.lane_hooks(population.size),
            progress,
            per_epoch,
            members=population.size is not None,
            stop_on_nan=callbacks.stop_on_nan,
            speed=lambda done: (
                (done - start) * batch_size * population.lanes / max(time.perf_counter() - clock - timer.seconds, 1e-9)
            ),
        )
        if ends is not None:
            recorder.restore_ends(ends)
        in_flight = InFlight(
            lambda first, n, outputs: recorder.steps_done(first, *population.lane_metrics(outputs, n)),
            on_log=lambda done: recorder.log(done, lambda lane: None),
        )
        save = CheckpointSaves(checkpoint, recorder)
        frozen = set(recorder.stopped_lanes())  # a resumed population's stopped members are frozen in its carry

        def state_of(lane: int) -> Any:
            return population.train_state(carry, lane)

        try:
            progress.start(step)
            upcoming = feed.call(step) if step < total and recorder.stop_reason is None else None
            while upcoming is not None and recorder.stop_reason is None:
                if interrupts.reason:  # it came during a boundary (a hook, an evaluation): no further call
                    recorder.interrupt(interrupts.reason)
                    break
                n, batches = upcoming
                carry, outputs = (compiled.fused if n > 1 else compiled.single)(carry, resident, batches)
                step += n
                if reason := interrupts.reason or (checkpoint.interrupted(step) if checkpoint else None):
                    recorder.interrupt(reason)  # a first Ctrl-C, SIGTERM, a step limit: finish up, resumable
                # With no hooks to show the state to, a boundary that needs no state (an epoch end, a log) need not
                # wait for the device: a log is written when this call's metrics come back, and the next call goes on.
                passing = (
                    not recorder.hooks
                    and plan.is_boundary(step)
                    and not plan.needs_state(step)
                    and recorder.stop_reason is None
                )
                in_flight.add(step - n, n, outputs, log_after=passing and plan.log_due(step))
                upcoming = (
                    feed.call(step) if step < total and recorder.stop_reason is None else None
                )  # overlaps the running call
                in_flight.drain(keep=execution.max_in_flight)
                if (plan.is_boundary(step) and not passing) or recorder.stop_reason:
                    in_flight.drain()
                    record_boundary(recorder, plan, evaluate, step, carry, state_of)
                    if step % per_epoch == 0:
                        for index, lane in enumerate(recorder.lanes):
                            recorder.emit(
                                "epoch_end",
                                _position(recorder, step, lane),
                                state_of(index) if lane.hooks else None,
                                lane,
                            )
                    if (
                        stopped := set(recorder.stopped_lanes()) - frozen
                    ):  # members stopped by a hook (or frozen on the device)
                        carry = population.freeze(carry, sorted(stopped))
                        frozen |= stopped
                    if plan.checkpoint_due(step) or recorder.interrupted:
                        save(step, carry)
            in_flight.drain()
            if (
                not recorder.records or recorder.records[-1].step != step
            ):  # no step ran, or the last boundary was not reached
                record_boundary(recorder, plan, evaluate, step, carry, state_of)
            save(step, carry)
            for index, lane in enumerate(recorder.lanes):
                recorder.emit("end", _position(recorder, step, lane), state_of(index) if lane.hooks else None, lane)
        finally:
            feed.close()
            progress.close()
    wall = time.perf_counter() - clock
    history = History(
        records=recorder.records,
        steps=step,
        epochs=step / per_epoch,
        stop_reason=recorder.stop_reason,
        nonfinite=recorder.nonfinite,
        interrupted=recorder.interrupted,
        members=tuple(recorder.ends()),
        wall_s=wall,
        compile_s=timer.seconds,
        steps_per_call=fused,
        steps_per_call_reason=how,
        mesh=describe_mesh(placement.mesh),
        traces={name: guard.traces - traces_before[name] for name, guard in compiled.guards.items()},
    )
    why = f"; stopped: {history.stop_reason}" if history.stop_reason else ""
    progress.print(f"done: {who}{step} steps in {wall:.1f} s ({timer.seconds:.1f} s compiling){why}")
    if history.interrupted and checkpoint is None:
        progress.print(f"the train state returned continues from step {step}: give it back to fit to go on exactly")
    return carry, history


def _position(recorder: Recorder, step: int, lane: Lane) -> Record:
    """The record of an event that carries no metrics (an epoch end, the end)."""
    return Record(step, step / recorder.per_epoch, "train", {}, lane.member)


def _eval_shapes(splits: Mapping[str, Any], batch_sizes: Mapping[str, int], shards: int) -> int:
    """How many batch shapes evaluation compiles for: full batches, each split's last
    batch, and the few examples left over when the last batch does not cut evenly."""
    sizes = set()
    for name, split in splits.items():
        n, batch_size = num_examples(split), batch_sizes[name]
        for size in {min(batch_size, n), n % batch_size or min(batch_size, n)}:
            sizes |= {s for s in (size - size % shards, size % shards) if s}
    return max(len(sizes), 1)


def _steps_per_call(
    option: int | str, convolution: bool, batch: Any, train: Any, lanes: int, *intervals: int, cap_bytes: int
) -> tuple[int, str]:
    """How many steps each compiled call runs, and why (``convolution``: the model has one; ``cap_bytes``: the
    most batch data one call takes)."""
    if option != "auto":
        return int(option), f"{option} steps per call (set by steps_per_call)"
    if jax.default_backend() == "cpu" and convolution:
        return 1, "1 step per call (auto: convolutions run several times slower inside lax.scan on XLA:CPU)"
    span = min(train.steps_per_epoch, *intervals)  # a call never crosses an epoch end, log, eval or checkpoint
    cap = max(1, cap_bytes // (lanes * sum(np.asarray(leaf).nbytes for leaf in jax.tree.leaves(batch))))
    per_call = math.ceil(span / math.ceil(span / cap))  # the span in equal calls of at most `cap` steps
    return per_call, f"{per_call} steps per call (auto: one lax.scan per {per_call} steps)"


def record_boundary(
    recorder: Recorder, plan: CallPlan, evaluate: Callable, step: int, carry: Any, state_of: Callable[[int], Any]
) -> None:
    """At a boundary after ``step`` steps: the training logs and the evaluations that are due.

    Stopping early logs and evaluates where it stops; an interruption (to be resumed)
    evaluates only where the schedule says so, so that a resumed run sees the same evaluations.
    """
    stopping = recorder.stop_reason is not None
    if plan.log_due(step) or stopping:
        recorder.log(step, state_of)
    if plan.eval_due(step) or (stopping and not recorder.interrupted):
        for split, metrics in evaluate(carry).items():
            recorder.evaluation(step, split, metrics, state_of)
    recorder.progress.flush()  # the boundary's records, as one line
