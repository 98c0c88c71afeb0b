"""Running an experiment (one run, or a sweep of many), resuming it after an interruption, and loading it back.

``run`` checks everything it can before it creates the run directory (so a bad config
leaves nothing behind), trains with periodic checkpoints, and keeps ``status.json``
current. A sweep is a run whose population has many members: the same directory, the
same loop, the same checkpoints. ``resume`` continues an interrupted run or sweep from
its latest complete checkpoint with its own config, budget and schedule, and ends
bit-identical to one that never stopped. ``load_run`` brings a finished run back, verified.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from fundl.distributed import Placement, describe_mesh
from fundl.runs._checkpoints import Checkpoints
from fundl.runs._config import DEFAULTS, Config, ConfigError, flat_keys, merge, override
from fundl.runs._directory import RunDirectory
from fundl.runs._experiment import Run, load_example, resolve_config
from fundl.runs._identity import data_identity
from fundl.runs._lifecycle import RunSignals, StartInterrupted, abandoned_start, failed_training
from fundl.runs._manifest import manifest
from fundl.runs._outcome import history_after_training, record_outcome
from fundl.runs._prepare import Plan, lane_hooks, prepare
from fundl.train import Callbacks, Event, History, Hook, MemberEnd, Record, loop, params_fingerprint, score
from fundl.train._loggers import LoggerHook
from fundl.train._progress import verbosity

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # while training, each stops a run at a checkpoint


def say(line: str) -> None:
    """A run's own lines (its directory, its results), on stdout, flushed at once (a pipe shows them as they come)."""
    print(line, flush=True)


def run(
    example: str,
    settings: Iterable[tuple[str, Any]] = (),
    *,
    seeds: list[int] | None = None,
    sweep: dict[str, list[Any]] | None = None,
    out: str | None = None,
    verbose: int | str = 2,
    quiet: bool = False,
    echo: Callable[[str], None] = say,
    stop_after_steps: int | None = None,
) -> Run:
    """Runs an example (bundled name or file path) with config overrides; returns the run.

    Args:
      example: a bundled example's name or the path of an example file.
      settings: ``(dotted_key, value)`` config overrides.
      seeds, sweep: train a sweep instead: one member per (setting, seed), the settings
        ``{dotted_key: [values]}`` of the optimizer crossed with the seeds, all as one
        compiled program (see :func:`sweep`).
      out: the run directory (default ``runs/<name>-<timestamp>``); it must not exist or be empty.
      verbose: what training prints: ``0``/``"silent"``, ``1``/``"epochs"``, ``2``/``"bar"``
        (see :func:`fundl.train.fit`); ``quiet=True`` is ``verbose=0``.
      echo: where the few lines of a run go (its directory, its results; default: stdout).
      stop_after_steps: stop at this step as if preempted (a checkpoint is saved; resume
        with :func:`resume`).

    Example:
      >>> run("mlp_digits", [("train.epochs", 3)], quiet=True).summary["metrics"]["test"]
    """
    with RunSignals() as signals:
        try:
            module = load_example(example)
            config = resolve_config(module, settings)
            if stop_after_steps is not None and (not isinstance(stop_after_steps, int) or stop_after_steps < 1):
                raise ValueError(f"stop_after_steps must be a positive integer, got {stop_after_steps!r}")
            plan = prepare(module, config, seeds, sweep)
            writer = jax.process_index() == 0  # in a multi-process run, process 0 alone writes
            directory, run_id = _on_every_process(lambda: RunDirectory.create(Path(example).stem, out))
        except StartInterrupted as error:
            raise StartInterrupted(
                error.signal_name,
                f"interrupted by {error.signal_name} before the run directory was made: nothing was written",
            ) from None
        try:
            if directory is not None:  # process 0
                echo(f"run directory: {directory.path}")
                _start(directory, module, config, plan, example, run_id)
            carry = plan.initial_carry(echo if plan.members is not None else None)
            checkpoints = _checkpoints(plan, _checkpoint_directory(directory, out), run_id, stop_after_steps)
        except BaseException as error:
            if directory is None:
                raise
            directory.release()
            raise abandoned_start(directory, error) from None
        try:
            return _train(
                plan,
                directory if writer else None,
                checkpoints,
                carry,
                _hooks(plan, directory if writer else None),
                None,
                verbosity(verbose, quiet),
                echo,
                signals,
                run_id,
            )
        finally:
            if directory is not None:
                directory.release()


def _start(directory: RunDirectory, module: ModuleType, config: Config, plan: Plan, example: str, run_id: str) -> None:
    """Writes what a run is before it trains, and seals its identity last (a directory without it trained nothing)."""
    directory.write_config(config)
    sha = directory.copy_example(module)
    population = (
        None
        if plan.members is None
        else {"seeds": sorted(set(plan.seeds)), "settings": plan.sweep, "members": len(plan.members)}
    )
    directory.write_manifest(
        {
            "run_id": run_id,
            **manifest(example, sha, config["train"]["precision"], describe_mesh(plan.execution.mesh)),
            **({} if population is None else {"sweep": population}),
            **({} if plan.experiment.data_record is None else {"data": dict(plan.experiment.data_record)}),
        }
    )
    directory.seal(run_id, config, sha, data_identity(plan.experiment), population)


def sweep(
    example: str,
    settings: Iterable[tuple[str, Any]] = (),
    *,
    seeds: list[int],
    sweep: dict[str, list[Any]] | None = None,
    out: str | None = None,
    verbose: int | str = 2,
    quiet: bool = False,
    echo: Callable[[str], None] = say,
    stop_after_steps: int | None = None,
) -> Run:
    """Trains every (setting, seed) member of an example as one compiled program; returns the run.

    Because a model is a pure function of its params, ``M`` runs are one function of ``M``
    stacked train states: the loop steps them with ``vmap``. Each member has its own seed
    (initial params, step keys, data order) and optimizer settings, and ends allclose to
    its separate run. Only settings that live in the optimizer and change no shapes can be
    members (:data:`SWEEPABLE`): they enter the compiled step as numbers. Anything else (a
    hidden size, the number of layers) needs its own run.

    The run directory holds what a run's does, for every member: ``metrics.jsonl`` (each
    record with its ``member``), checkpoints (``fundl resume`` continues a sweep exactly),
    ``train_state.msgpack`` (every member's final state; ``load_run(dir, member=i)``),
    ``members.json`` (each member's seed, settings, final metrics, fingerprint and how it
    ended) and ``summary.json`` (mean, std, min and max of every final metric over the
    seeds of each setting, leaving out members frozen by a NaN).

    Args:
      example: a bundled example's name or an example file.
      settings: config overrides shared by every member.
      seeds: the members' seeds.
      sweep: optimizer settings to cross with the seeds, ``{dotted_key: [values]}``.
      out: the run directory.

    Example:
      >>> sweep("mlp_digits", seeds=list(range(8))).summary["settings"][0]["metrics"]["test"]["accuracy"]
    """
    return run(
        example,
        settings,
        seeds=seeds,
        sweep=sweep or {},
        out=out,
        verbose=verbose,
        quiet=quiet,
        echo=echo,
        stop_after_steps=stop_after_steps,
    )


def resume(
    directory: str | os.PathLike, *, verbose: int | str = 2, quiet: bool = False, echo: Callable[[str], None] = say
) -> Run:
    """Continues an interrupted run or sweep from its latest complete checkpoint, exactly.

    The run's own config, example (the copy in the run directory), budget and schedule
    are used; the train state, the data position, the hooks' state (and a sweep's
    members' ends) come back from the checkpoint, so the run ends with the same
    ``params_fingerprint`` as one that never stopped.

    Raises:
      FileNotFoundError: not a run directory, or no complete checkpoint in it.
      ValueError: the run has finished, or its files do not match each other.
    """
    files = RunDirectory.open(directory)
    writer = jax.process_index() == 0
    with RunSignals() as signals:
        if writer:
            files.claim()  # one writer at a time: an error naming the process that writes it now
        try:
            try:
                plan, run_id, step, carry, extra, checkpoints = _restore(files)
                hooks = _hooks(plan, files if writer else None)
                if "hooks" in extra:  # (a run resumed from step 0 starts with fresh hooks)
                    _load_hook_states(files.path, hooks, extra["hooks"])
                ends = [MemberEnd(reason, bool(nonfinite)) for reason, nonfinite in extra.get("members", [])] or None
                if writer:
                    files.truncate_records(step, drop_splits=plan.experiment.test_data or {})
                    start = f"from step {step}" if step else "from step 0 (no checkpoint was saved)"
                    echo(f"resuming {files.path} {start}")
            except StartInterrupted as error:
                raise StartInterrupted(
                    error.signal_name,
                    f"interrupted by {error.signal_name} before training resumed: nothing was lost; "
                    f"`fundl resume {files.path}` continues it",
                ) from None
            return _train(
                plan,
                files if writer else None,
                checkpoints,
                carry,
                hooks,
                ends,
                verbosity(verbose, quiet),
                echo,
                signals,
                run_id,
            )
        finally:
            files.release()


def _restore(files: RunDirectory) -> tuple[Plan, str, int, Any, dict[str, Any], Checkpoints]:
    """A run directory's plan, checked against its sealed identity, and the state to go on from: its latest
    complete checkpoint, or step 0 if it saved none (a run's start is a function of its config)."""
    status = files.status()
    if status["status"] in ("finished", "stopped_early"):
        raise ValueError(
            f"{files.path} has {status['status'].replace('_', ' ')} "
            f"at step {status['step']}: there is nothing to resume"
        )
    module, config, _ = _verified_example(files)
    plan = prepare(module, config, *_sweep_of(files.manifest().get("sweep")))
    run_id = files.verify(data_identity(plan.experiment))["run_id"]
    checkpoints = _checkpoints(plan, files.checkpoints, run_id, None)
    if not checkpoints.steps():
        return plan, run_id, 0, plan.initial_carry(), {}, checkpoints
    like = plan.abstract_carry()
    placement = Placement(plan.execution.mesh, None if plan.members is None else len(plan.members))
    step, carry, extra = checkpoints.restore(like, shardings=placement.state_shardings(like))
    return plan, run_id, step, carry, extra, checkpoints


def _sweep_of(swept: dict[str, Any] | None) -> tuple[list[int] | None, dict[str, list[Any]] | None]:
    """The seeds and settings a sweep's manifest recorded (``None`` for a single run)."""
    if swept is None:
        return None, None
    return list(swept["seeds"]), {key: list(values) for key, values in swept["settings"].items()}


def _load_hook_states(path: Path, hooks: list[list[Hook]], states: list[list[Any]]) -> None:
    """Gives each hook back the state a checkpoint saved, by lane and position."""
    if [len(h) for h in hooks] != [len(s) for s in states]:
        raise ValueError(
            f"the checkpoint of {path} holds the state of {[len(s) for s in states]} hooks, "
            f"the example now has {[len(h) for h in hooks]}"
        )
    for lane_hooks_, lane_states in zip(hooks, states):
        for hook, state in zip(lane_hooks_, lane_states):
            if state is None:
                continue
            load_state_dict = getattr(hook, "load_state_dict", None)
            if load_state_dict is None:
                raise ValueError(
                    f"the checkpoint of {path} holds a state for hook {hook!r}, which has no load_state_dict method"
                )
            load_state_dict(state)


def _hooks(plan: Plan, files: RunDirectory | None) -> list[list[Hook]]:
    """Each lane's hooks (the record writer and loggers' files on the writing process, the same number of
    hooks on every process: a checkpoint holds their states by position)."""
    writer = files.record_writer() if files else _no_records
    return [lane_hooks(plan, lane, writer, files) for lane in range(len(plan.configs))]


def _no_records(event: Event) -> None:
    """The record writer's place on a process that does not write (all but process 0)."""


def _checkpoints(plan: Plan, directory: Path, run_id: str, stop_after_steps: int | None) -> Checkpoints:
    c = plan.config["checkpoint"]
    return Checkpoints(
        directory,
        steps_per_epoch=plan.steps_per_epoch,
        every_steps=c["every_steps"],
        every_epochs=c["every_epochs"],
        keep=c["keep"],
        best=c["best"],
        best_mode=c["best_mode"],
        stop_after_steps=stop_after_steps,
        run_id=run_id,
    )


def _checkpoint_directory(directory: RunDirectory | None, out: str | None) -> Path:
    """Every process saves its part of a checkpoint into the same directory (process 0's)."""
    if directory is not None:
        return directory.checkpoints
    if out is None:
        raise ValueError("a multi-process run needs --out, so that every process knows the run directory")
    return RunDirectory(out).checkpoints


def _train(
    plan: Plan,
    files: RunDirectory | None,
    checkpoints: Checkpoints,
    carry: Any,
    hooks: list[list[Hook]],
    ends: list[MemberEnd] | None,
    verbose: int,
    echo: Callable[[str], None],
    signals: RunSignals,
    run_id: str,
) -> Run:
    """Trains with checkpoints, stopping cleanly on SIGINT, SIGTERM or SIGHUP; records the outcome (``files``:
    process 0 only).

    A run resumed from a checkpoint taken after training ended (its budget spent, or every
    lane stopped) trains no more: it scores its test splits and writes its results.
    """
    population = plan.population
    step = population.step_count(carry)
    signals.training(checkpoints)  # from now on a signal stops the run at a checkpoint
    if files:
        files.set_status("running", step)
        from fundl.plots import import_in_background

        import_in_background()  # for curves.png at the end: the import overlaps training
    members = plan.members is not None
    try:
        if step >= plan.total or (ends and all(end.stop_reason for end in ends)):
            history = history_after_training(plan, files, carry, hooks, ends or [])
        else:
            carry, history = loop(
                population,
                plan.loss,
                carry,
                plan.experiment.train_data,
                batch_size=plan.config["train"]["batch_size"],
                data_seeds=plan.seeds,
                budget=plan.budget,
                execution=plan.execution,
                evaluation=plan.evaluation,
                input=plan.input,
                callbacks=Callbacks(
                    hooks[0] if not members else (lambda member: hooks[member]),
                    True,
                    checkpoints,
                    verbose if files else 0,
                    STOP_SIGNALS,
                ),
                ends=ends,
            )
        checkpoints.wait()
        signals.finishing()
        if not (history.interrupted or history.nonfinite):
            _score_test_splits(plan, carry, history, hooks)
        done = record_outcome(plan, files, carry, history, echo, run_id)
    except BaseException as error:
        try:
            checkpoints.wait()
        except BaseException:
            pass  # the error being handled says what went wrong
        raise failed_training(files, error, signals.phase == "finishing") from None
    finally:
        checkpoints.close()
        for hook in (hook for lane in hooks for hook in lane if isinstance(hook, LoggerHook)):
            hook.close()  # after the test splits' scores, which they log too
    if signals.deferred:
        echo(f"{signals.deferred} arrived while the results were written: they were written first")
    if jax.process_count() > 1:
        echo(f"process {jax.process_index()}: params {done.summary['params_fingerprint']}")
        multihost_utils.sync_global_devices("fundl run finished")  # no process leaves before process 0 has written
    return done


def _score_test_splits(plan: Plan, carry: Any, history: History, hooks: list[list[Hook]]) -> None:
    """Scores the experiment's test splits once, with the final params: a record each (a member's each) in the
    history, and a ``"test"`` event to the hooks (``metrics.jsonl`` is written by one)."""
    train_config = plan.config["train"]
    scores = score(
        plan.population,
        plan.loss,
        carry,
        plan.experiment.test_data or {},
        mesh=plan.execution.mesh,
        batch_size=train_config["batch_size"],
        eval_batch_size=train_config["eval_batch_size"],
    )
    step, members = history.steps, plan.members is not None
    for split, per_lane in scores.items():
        for lane, metrics in enumerate(per_lane):
            record = Record(step, step / plan.steps_per_epoch, split, metrics, lane if members else None)
            state = plan.population.train_state(carry, lane)
            for hook in hooks[lane]:
                hook(Event("test", record, state))
            history.records.append(record)


def _on_every_process(create: Callable[[], RunDirectory]) -> tuple[RunDirectory | None, str]:
    """Runs ``create`` on process 0 only and draws the run's id there; every process learns
    the id and whether it worked, so that a failure there stops them all instead of leaving
    the others waiting in a collective."""
    run_id = uuid.uuid4().hex[:16]
    if jax.process_count() == 1:
        return create(), run_id
    error = directory = None
    if jax.process_index() == 0:
        try:
            directory = create()
        except (OSError, ValueError) as caught:
            error = caught
    sent = np.frombuffer(f"{int(error is None)}{run_id}".encode(), np.uint8)
    message = bytes(np.asarray(multihost_utils.broadcast_one_to_all(sent), np.uint8)).decode()
    if error is not None:
        raise error
    if message[0] != "1":
        raise FileExistsError("process 0 could not create the run directory (its error says why)")
    return directory, message[1:]


# --- reading a run back ----------------------------------------------------------------------


def _verified_example(files: RunDirectory) -> tuple[ModuleType, Config, dict[str, Any]]:
    """The run's own copy of its example and its config, both checked against the identity the run was sealed with
    (and the config's keys against the example's); the sealed identity too."""
    sealed = files.verify()  # first: a directory that was never sealed trained nothing, and says so
    copy = files.example()
    config = files.config()
    module = load_example(str(copy))
    expected, got = flat_keys(resolve_config(module)), flat_keys(config)
    defaults = flat_keys(DEFAULTS)
    added = [key for key in set(expected) - set(got) if key in defaults]
    if added:  # a run made before these keys existed: their defaults change nothing it did
        config = merge(config, _unflat({key: defaults[key] for key in added}))
        got = flat_keys(config)
    unknown, missing = sorted(set(got) - set(expected)), sorted(set(expected) - set(got))
    if unknown or missing:
        raise ValueError(
            f"{files.path / files.CONFIG} does not fit its example: unknown keys {unknown}, missing keys {missing}"
        )
    return module, config, sealed


def _unflat(flat: dict[str, Any]) -> Config:
    """``{"a.b": 1}`` as ``{"a": {"b": 1}}``."""
    nested: Config = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = nested
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return nested


def load_run(directory: str | os.PathLike, member: int | None = None) -> Run:
    """Loads a finished run back, verified: its config, its example's experiment and its final train state.

    Args:
      directory: the run directory.
      member: for a sweep, the member to load (its index in ``members.json``); the run's
        ``config`` is then that member's (its seed and settings).

    Raises:
      FileNotFoundError: a file of the run is missing.
      ValueError: the run did not finish, a file was changed or corrupted (the train
        state's hash or fingerprint is not the recorded one), or the config does not fit.

    Example:
      >>> done = load_run("runs/mlp_digits-20261127-101500")
      >>> logits, _ = done.experiment.model.apply(done.train_state.params, done.train_state.state, x)
    """
    files = RunDirectory.open(directory)
    status = files.status()
    if status["status"] not in ("finished", "stopped_early"):
        hint = f": continue it with `fundl resume {files.path}`" if status["status"] == "interrupted" else ""
        raise ValueError(f"{files.path} has not finished (status: {status['status']}){hint}")
    module, config, _ = _verified_example(files)
    swept = files.manifest().get("sweep")
    try:
        plan = prepare(module, config, *_sweep_of(swept))
    except ConfigError as error:  # its devices are not all here: load it onto one (a checkpoint restores on any mesh)
        if "train.devices" not in str(error):
            raise
        plan = prepare(module, override(config, [("train.devices", 1), ("train.fsdp", 1)]), *_sweep_of(swept))
    run_id = files.verify(data_identity(plan.experiment))["run_id"]
    summary = files.summary()
    if summary is None:
        raise FileNotFoundError(f"{files.path / files.SUMMARY} is missing: the run directory is incomplete")
    if summary.get("run_id") != run_id:
        raise ValueError(
            f"{files.path / files.SUMMARY} belongs to another run ({summary.get('run_id') or 'it carries no run id'}), "
            f"not to {run_id}: copied from another run directory"
        )
    like = plan.abstract_carry()
    if "final_state" in summary:  # a sharded run's final state is its last checkpoint, each process's shards
        checkpoints = _checkpoints(plan, files.checkpoints, run_id, None)
        placement = Placement(plan.execution.mesh, None if plan.members is None else len(plan.members))
        _, carry, _ = checkpoints.restore(like, summary["final_state"]["checkpoint"], placement.state_shardings(like))
        checkpoints.close()
        final = carry if plan.members is None else carry.states
    else:
        final = files.load_final_state(
            like if plan.members is None else like.states, summary.get("train_state_sha256"), run_id
        )
    if plan.members is None:
        if member is not None:
            raise ValueError(f"{files.path} is a single run, not a sweep: load it without a member")
        if params_fingerprint(final.params) != summary["params_fingerprint"]:
            raise ValueError(
                f"{files.path / files.FINAL_STATE} holds params whose "
                "fingerprint is not the one recorded in summary.json"
            )
        return Run(files.path, config, plan.experiment, final, None, summary)
    members = files.members() or []
    if member is None or not 0 <= member < len(members):
        raise ValueError(
            f"{files.path} is a sweep of {len(members)} members: give the member to load, 0 to {len(members) - 1}"
        )
    state = jax.tree.map(lambda leaf: leaf[member], final)
    if params_fingerprint(state.params) != members[member]["params_fingerprint"]:
        raise ValueError(
            f"{files.path / files.FINAL_STATE} holds params for member {member} whose fingerprint is not members.json's"
        )
    return Run(files.path, plan.configs[member], plan.experiment, state, None, summary, members)


def sample(
    directory: str | os.PathLike, prompt: str = "", *, temperature: float = 1.0, length: int = 200, seed: int = 0
) -> str:
    """Generates from a finished run of a generative example (what ``fundl sample`` does)."""
    loaded = load_run(directory)
    if loaded.experiment.sample is None:
        example = RunDirectory.open(directory).manifest()["example"]
        raise ValueError(f"example {example!r} cannot sample: its experiment defines no `sample`")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if length < 1:
        raise ValueError(f"length must be at least 1, got {length}")
    return loaded.experiment.sample(loaded, prompt, temperature=temperature, length=length, seed=seed)
