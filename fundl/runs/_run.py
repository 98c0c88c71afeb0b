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
from fundl.runs._manifest import manifest
from fundl.runs._outcome import record_outcome
from fundl.runs._prepare import Plan, lane_hooks, prepare
from fundl.train import Callbacks, Event, History, Hook, MemberEnd, Record, loop, params_fingerprint, score
from fundl.train._loggers import LoggerHook
from fundl.train._progress import verbosity

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # a run stops cleanly on either: SIGTERM is a preemption notice


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
    module = load_example(example)
    config = resolve_config(module, settings)
    if stop_after_steps is not None and (not isinstance(stop_after_steps, int) or stop_after_steps < 1):
        raise ValueError(f"stop_after_steps must be a positive integer, got {stop_after_steps!r}")
    plan = prepare(module, config, seeds, sweep)
    writer = jax.process_index() == 0  # in a multi-process run, process 0 alone writes
    directory, run_id = _on_every_process(lambda: RunDirectory.create(Path(example).stem, out))
    if directory is not None:  # process 0
        echo(f"run directory: {directory.path}")
        directory.write_config(config)
        sha = directory.copy_example(module)
        population = (
            {}
            if plan.members is None
            else {"sweep": {"seeds": sorted(set(plan.seeds)), "settings": plan.sweep, "members": len(plan.members)}}
        )
        directory.write_manifest(
            {
                "run_id": run_id,
                **manifest(example, sha, config["train"]["precision"], describe_mesh(plan.execution.mesh)),
                **population,
            }
        )
    carry = plan.initial_carry()
    checkpoints = _checkpoints(plan, _checkpoint_directory(directory, out), run_id, stop_after_steps)
    return _train(
        plan,
        directory if writer else None,
        checkpoints,
        carry,
        _hooks(plan, directory if writer else None),
        None,
        verbosity(verbose, quiet),
        echo,
    )


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
    status = files.status()
    if status["status"] in ("finished", "stopped_early"):
        raise ValueError(
            f"{files.path} has {status['status'].replace('_', ' ')} "
            f"at step {status['step']}: there is nothing to resume"
        )
    module, config = _verified_example(files)
    environment = files.manifest()
    swept = environment.get("sweep")
    plan = prepare(module, config, *_sweep_of(swept))
    checkpoints = _checkpoints(plan, files.checkpoints, environment.get("run_id", ""), None)
    like = jax.eval_shape(plan.initial_carry)
    placement = Placement(plan.execution.mesh, None if plan.members is None else len(plan.members))
    try:
        step, carry, extra = checkpoints.restore(like, shardings=placement.state_shardings(like))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{files.path} has no complete checkpoint to resume from "
            "(it stopped before its first one): start it again with "
            f"`fundl run`"
        ) from None
    writer = jax.process_index() == 0
    hooks = _hooks(plan, files if writer else None)
    _load_hook_states(files.path, hooks, extra.get("hooks", []))
    if writer:
        files.truncate_records(step)
        echo(f"resuming {files.path} from step {step}")
    ends = [MemberEnd(reason, bool(nonfinite)) for reason, nonfinite in extra.get("members", [])] or None
    return _train(plan, files if writer else None, checkpoints, carry, hooks, ends, verbosity(verbose, quiet), echo)


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
) -> Run:
    """Trains with checkpoints, stopping cleanly on SIGINT or SIGTERM; records the outcome (``files``: process 0)."""
    population = plan.population
    if files:
        files.set_status("running", population.step_count(carry))
        from fundl.plots import import_in_background

        import_in_background()  # for curves.png at the end: the import overlaps training
    members = plan.members is not None
    try:
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
        if not (history.interrupted or history.nonfinite):
            _score_test_splits(plan, carry, history, hooks)
    except BaseException as error:
        checkpoints.wait()
        if files:
            step = checkpoints.steps()[-1] if checkpoints.steps() else 0
            reason = (
                "aborted (a second Ctrl-C)"
                if isinstance(error, KeyboardInterrupt)
                else f"{type(error).__name__}: {error}"
            )
            files.set_status("interrupted" if isinstance(error, KeyboardInterrupt) else "failed", step, reason)
        raise
    finally:
        checkpoints.close()
        for hook in (hook for lane in hooks for hook in lane if isinstance(hook, LoggerHook)):
            hook.close()  # after the test splits' scores, which they log too
    done = record_outcome(plan, files, carry, history, echo)
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


def _verified_example(files: RunDirectory) -> tuple[ModuleType, Config]:
    """The run's own copy of its example, checked against the manifest, and its config, checked against the example."""
    module = load_example(str(files.example()))
    config = files.config()
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
    return module, config


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
    module, config = _verified_example(files)
    swept = files.manifest().get("sweep")
    try:
        plan = prepare(module, config, *_sweep_of(swept))
    except ConfigError as error:  # its devices are not all here: load it onto one (a checkpoint restores on any mesh)
        if "train.devices" not in str(error):
            raise
        plan = prepare(module, override(config, [("train.devices", 1), ("train.fsdp", 1)]), *_sweep_of(swept))
    summary = files.summary()
    if summary is None:
        raise FileNotFoundError(f"{files.path / files.SUMMARY} is missing: the run directory is incomplete")
    like = jax.eval_shape(plan.initial_carry)
    if "final_state" in summary:  # a sharded run's final state is its last checkpoint, each process's shards
        checkpoints = _checkpoints(plan, files.checkpoints, files.manifest().get("run_id", ""), None)
        placement = Placement(plan.execution.mesh, None if plan.members is None else len(plan.members))
        _, carry, _ = checkpoints.restore(like, summary["final_state"]["checkpoint"], placement.state_shardings(like))
        checkpoints.close()
        final = carry if plan.members is None else carry.states
    else:
        final = files.load_final_state(like if plan.members is None else like.states, summary.get("train_state_sha256"))
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
