"""Running an experiment, resuming it after an interruption, and loading it back.

``run`` checks everything it can before it creates the run directory (so a bad config
leaves nothing behind), trains with periodic checkpoints, and keeps ``status.json``
current. ``resume`` continues an interrupted run from its latest complete checkpoint
with the run's own config, budget and schedule, and ends bit-identical to the run that
never stopped. ``load_run`` brings a finished run back, verified.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import jax
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from fundl.distributed import Placement, data_mesh, describe_mesh
from fundl.plots import import_in_background, plot_curves
from fundl.runs._checkpoints import Checkpoints, preemption_signals
from fundl.runs._config import Config, ConfigError, flat_keys
from fundl.runs._experiment import Experiment, Run, budget, initial_train_state, load_example, resolve_config, test_metrics, total_steps
from fundl.runs._files import read_json, write_json
from fundl.runs._optimizers import make_optimizer
from fundl.runs._rundir import (
    EXAMPLE_FILE,
    METRICS_FILE,
    copy_example,
    create_run_directory,
    file_sha256,
    manifest,
    metrics_writer,
    read_status,
    truncate_metrics,
    write_status,
)
from fundl.runs._state_file import host_copy, restore_train_state, save_train_state
from fundl.train import (
    PRECISION_POLICIES,
    Event,
    Hook,
    LossFn,
    TrainState,
    check_options,
    early_stopping,
    fit,
    log_learning_rate,
    params_fingerprint,
    with_precision,
)
from fundl.train._checks import check_finite
from fundl.train._data import num_examples
from fundl.train._progress import format_metrics

TRAIN_STATE_FILE = "train_state.msgpack"
MAX_SEED = 2**63


class Prepared(NamedTuple):
    """An example's experiment, checked and ready to train: everything but the directory."""

    config: Config
    experiment: Experiment
    optimizer: optax.GradientTransformation
    schedule: optax.Schedule
    mesh: Mesh | None
    steps_per_epoch: int


def prepare(module: ModuleType, config: Config) -> Prepared:
    """Builds the experiment and makes every check ``fit`` would make, naming config keys."""
    seed = config["seed"]
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < MAX_SEED:
        raise ConfigError(f"seed must be an integer in [0, 2**63), got {seed!r}")
    experiment = module.experiment(config)
    optimizer, schedule = make_optimizer(config, total_steps(config, experiment))
    train = config["train"]
    try:
        check_options(**budget(config), eval_batch_size=train["eval_batch_size"], eval_every=train["eval_every"],
                      log_every=train["log_every"], steps_per_call=train["steps_per_call"], accumulate=train["accumulate"])
    except ValueError as error:
        raise ConfigError(f"train.{error}") from None
    if train["precision"] not in PRECISION_POLICIES:
        raise ConfigError(f"unknown train.precision {train['precision']!r}; available: {', '.join(PRECISION_POLICIES)}")
    if train["batch_size"] % train["accumulate"]:
        raise ConfigError(f"train.accumulate must divide train.batch_size={train['batch_size']}, got {train['accumulate']}")
    try:
        mesh = data_mesh(train["devices"], fsdp=train["fsdp"])
        Placement(mesh).check_batch_size(train["batch_size"], "training")
    except ValueError as error:
        raise ConfigError(f"train.devices={train['devices']}, train.fsdp={train['fsdp']}, train.batch_size={train['batch_size']}: {error}") from None
    _check_checkpoint_config(config["checkpoint"])
    _check_early_stopping_config(config["early_stopping"], experiment)
    _check_test_data(experiment)
    per_epoch = num_examples(experiment.train_data) // train["batch_size"]
    return Prepared(config, experiment, optimizer, schedule, mesh if mesh.size > 1 else None, per_epoch)


def _check_checkpoint_config(checkpoint: dict[str, Any]) -> None:
    for key in ("every_epochs", "every_steps", "keep"):
        value = checkpoint[key]
        if value is not None and value < 1:
            raise ConfigError(f"checkpoint.{key} must be a positive integer (or null), got {value!r}")
    if checkpoint["best_mode"] not in ("max", "min"):
        raise ConfigError(f"checkpoint.best_mode must be 'max' or 'min', got {checkpoint['best_mode']!r}")
    if checkpoint["best"] is not None and "/" not in checkpoint["best"]:
        raise ConfigError(f"checkpoint.best names a 'split/metric', e.g. 'test/accuracy'; got {checkpoint['best']!r}")


def _check_early_stopping_config(stopping: dict[str, Any], experiment: Experiment) -> None:
    if stopping["metric"] is None:
        return
    split = stopping["metric"].partition("/")[0]
    splits = sorted(experiment.eval_data or {})
    if split in (experiment.test_data or {}):
        raise ConfigError(f"early_stopping.metric {stopping['metric']!r}: the test split is scored once, after training, so that "
                          f"nothing is tuned on it; watch an evaluated split instead ({', '.join(splits)})")
    if "/" not in stopping["metric"] or split not in splits:
        raise ConfigError(f"early_stopping.metric names an evaluated 'split/metric' (splits: {', '.join(splits)}), got {stopping['metric']!r}")
    try:
        early_stopping(split, "x", mode=stopping["mode"], patience=stopping["patience"], min_delta=stopping["min_delta"])
    except ValueError as error:
        raise ConfigError(f"early_stopping: {error}") from None


def _check_test_data(experiment: Experiment) -> None:
    """The test splits, checked before training as ``fit`` checks its evaluation splits: an error now, not after training."""
    clash = sorted(set(experiment.test_data or {}) & {"train", *(experiment.eval_data or {})})
    if clash:
        raise ValueError(f"the experiment's test_data and eval_data (or the training metrics) both name split(s) {clash}: give each its own name")
    check_data = getattr(experiment.loss_fn, "check_data", check_finite)
    for name, split in (experiment.test_data or {}).items():
        num_examples(split, f"test split {name!r}")
        check_data(split, f"test split {name!r}")


def _hooks(prepared: Prepared, directory: Path | None) -> list[Hook]:
    """The run's hooks, always in this order: a checkpoint stores their states by position."""
    hooks = [*prepared.experiment.hooks, log_learning_rate(prepared.schedule)]
    stopping = prepared.config["early_stopping"]
    if stopping["metric"]:
        split, metric = stopping["metric"].split("/", 1)
        hooks.append(early_stopping(split, metric, mode=stopping["mode"], patience=stopping["patience"], min_delta=stopping["min_delta"]))
    if prepared.config["log"]["tensorboard"]:
        from fundl.runs._tensorboard import tensorboard_writer

        hooks.append(tensorboard_writer(directory / "tensorboard") if directory else lambda event: None)
    return [*hooks, metrics_writer(directory / METRICS_FILE)] if directory else hooks


def _checkpoints(prepared: Prepared, directory: Path, run_id: str, stop_after_steps: int | None) -> Checkpoints:
    c = prepared.config["checkpoint"]
    return Checkpoints(directory, steps_per_epoch=prepared.steps_per_epoch, every_steps=c["every_steps"], every_epochs=c["every_epochs"],
                       keep=c["keep"], best=c["best"], best_mode=c["best_mode"], stop_after_steps=stop_after_steps, run_id=run_id)


def run(
    example: str,
    settings: Iterable[tuple[str, Any]] = (),
    *,
    out: str | None = None,
    quiet: bool = False,
    echo: Callable[[str], None] = print,
    stop_after_steps: int | None = None,
) -> Run:
    """Runs an example (bundled name or file path) with config overrides; returns the run.

    Args:
      example: a bundled example's name or the path of an example file.
      settings: ``(dotted_key, value)`` config overrides.
      out: the run directory (default ``runs/<name>-<timestamp>``); it must not exist or be empty.
      quiet: no progress bar.
      echo: where the few lines of a run go.
      stop_after_steps: stop at this step as if preempted (a checkpoint is saved; resume
        with :func:`resume`).

    Example:
      >>> run("mlp_digits", [("train.epochs", 3)], quiet=True).summary["metrics"]["test"]
    """
    module = load_example(example)
    config = resolve_config(module, settings)
    if stop_after_steps is not None and (not isinstance(stop_after_steps, int) or stop_after_steps < 1):
        raise ValueError(f"stop_after_steps must be a positive integer, got {stop_after_steps!r}")
    prepared = prepare(module, config)
    writer = jax.process_index() == 0  # in a multi-process run, process 0 alone writes
    directory, run_id = _on_every_process(lambda: create_run_directory(Path(example).stem, out))
    if directory is not None:  # process 0
        echo(f"run directory: {directory}")
        write_json(directory / "config.json", config)
        sha = copy_example(module, directory)
        write_json(directory / "environment.json",
                   {"run_id": run_id, **manifest(example, sha, config["train"]["precision"], describe_mesh(prepared.mesh))})
    train_state = initial_train_state(config, prepared.experiment, prepared.optimizer)
    checkpoints = _checkpoints(prepared, _directory_for_checkpoints(directory, out), run_id, stop_after_steps)
    return _train(prepared, directory if writer else None, checkpoints, train_state, _hooks(prepared, directory if writer else None), quiet, echo)


def _directory_for_checkpoints(directory: Path | None, out: str | None) -> Path:
    """Every process saves its part of a checkpoint into the same directory (process 0's)."""
    if directory is not None:
        return Path(directory)
    if out is None:
        raise ValueError("a multi-process run needs --out, so that every process knows the run directory")
    return Path(out)


def resume(directory: str | os.PathLike, *, quiet: bool = False, echo: Callable[[str], None] = print) -> Run:
    """Continues an interrupted run from its latest complete checkpoint, exactly.

    The run's own config, example (the copy in the run directory), budget and schedule
    are used; the train state, the data position and the hooks' state come back from the
    checkpoint, so the run ends with the same ``params_fingerprint`` as one that never
    stopped.

    Raises:
      FileNotFoundError: not a run directory, or no complete checkpoint in it.
      ValueError: the run has finished, or its files do not match each other.
    """
    directory = Path(directory)
    status = _read_run(directory)["status"]
    if status["status"] in ("finished", "stopped_early"):
        raise ValueError(f"{directory} has {status['status'].replace('_', ' ')} at step {status['step']}: there is nothing to resume")
    module, config = _verified_example(directory)
    prepared = prepare(module, config)
    checkpoints = _checkpoints(prepared, directory, read_json(directory / "environment.json").get("run_id", ""), None)
    like = jax.eval_shape(lambda: initial_train_state(config, prepared.experiment, prepared.optimizer))
    try:
        step, train_state, hook_states = checkpoints.restore(like)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{directory} has no complete checkpoint to resume from (it stopped before its first one): start it again with "
            f"`fundl run`"
        ) from None
    writer = jax.process_index() == 0
    hooks = _hooks(prepared, directory if writer else None)
    if len(hook_states) != len(hooks):
        raise ValueError(f"the checkpoint of {directory} holds the state of {len(hook_states)} hooks, the example now has {len(hooks)}")
    for hook, state in zip(hooks, hook_states):
        if state is not None:
            load_state_dict = getattr(hook, "load_state_dict", None)
            if load_state_dict is None:
                raise ValueError(f"the checkpoint of {directory} holds a state for hook {hook!r}, which has no load_state_dict method")
            load_state_dict(state)
    if writer:
        truncate_metrics(directory / METRICS_FILE, step)
        echo(f"resuming {directory} from step {step}")
    return _train(prepared, directory if writer else None, checkpoints, train_state, hooks, quiet, echo)


def _train(prepared: Prepared, directory: Path | None, checkpoints: Checkpoints, train_state: TrainState, hooks: list[Hook],
           quiet: bool, echo: Callable[[str], None]) -> Run:
    """Trains with checkpoints and preemption signals; records the outcome (``directory``: process 0 only)."""
    config, experiment = prepared.config, prepared.experiment
    train = config["train"]
    loss_fn = with_precision(experiment.loss_fn, train["precision"])
    if directory:
        write_status(directory, "running", int(train_state.step))
        import_in_background()  # for curves.png at the end: the import overlaps training
    try:
        with preemption_signals(checkpoints):
            train_state, history = fit(
                loss_fn,
                prepared.optimizer,
                train_state,
                experiment.train_data,
                **budget(config),
                batch_size=train["batch_size"],
                eval_data=experiment.eval_data,
                eval_fn=experiment.eval_fn,
                eval_batch_size=train["eval_batch_size"],
                eval_every=train["eval_every"],
                log_every=train["log_every"],
                hooks=hooks,
                data_seed=config["seed"],
                steps_per_call=train["steps_per_call"],
                mesh=prepared.mesh if prepared.mesh is not None else 1,
                accumulate=train["accumulate"],
                checkpoint=checkpoints,
                quiet=quiet or not directory,
            )
        checkpoints.wait()
        if not (history["interrupted"] or history["nonfinite"]):
            _score_test_splits(prepared, loss_fn, train_state, history, hooks)
    except BaseException as error:
        checkpoints.wait()
        if directory:
            step = checkpoints.steps()[-1] if checkpoints.steps() else 0
            reason = "aborted (a second Ctrl-C)" if isinstance(error, KeyboardInterrupt) else f"{type(error).__name__}: {error}"
            write_status(directory, "interrupted" if isinstance(error, KeyboardInterrupt) else "failed", step, reason)
        raise
    finally:
        checkpoints.close()
    return _record(prepared, directory, train_state, history, echo)


def _score_test_splits(prepared: Prepared, loss_fn: LossFn, train_state: TrainState, history: dict[str, Any], hooks: list[Hook]) -> None:
    """Scores the experiment's test splits once, with the final params: a record each in the history, and a
    ``"test"`` event to the hooks (``metrics.jsonl`` is written by one)."""
    train = prepared.config["train"]
    scores = test_metrics(prepared.experiment, loss_fn, train_state.params, train_state.state, batch_size=train["batch_size"],
                          eval_batch_size=train["eval_batch_size"], mesh=prepared.mesh if prepared.mesh is not None else 1)
    step = history["steps"]
    records = [{"step": step, "epoch": step / prepared.steps_per_epoch, "split": name, **metrics} for name, metrics in scores.items()]
    for record in records:
        for hook in hooks:
            hook(Event("test", record, train_state))
    history["records"] += records


def _record(prepared: Prepared, directory: Path | None, train_state: TrainState, history: dict[str, Any], echo) -> Run:
    """Writes the outcome: status, and for a run that ended well the final state, summary, plots."""
    if jax.process_count() > 1:  # every process takes part in gathering the state; process 0 writes it
        train_state = _gather(train_state)
    summary = _summary(history, train_state)
    finished = Run(directory, prepared.config, prepared.experiment, train_state, history, summary)
    step = history["steps"]
    if directory:
        if history["interrupted"]:
            write_status(directory, "interrupted", step, history["stop_reason"])
            echo(f"{history['stop_reason']}: checkpoint at step {step}; continue with: fundl resume {directory}")
        else:
            ended_well = not history["nonfinite"]
            if ended_well:
                save_train_state(directory / TRAIN_STATE_FILE, train_state)
                summary["train_state_sha256"] = file_sha256(directory / TRAIN_STATE_FILE)
            write_json(directory / "summary.json", summary)
            plot_curves(_all_records(directory), directory / "curves.png", title=directory.name)
            if ended_well and prepared.experiment.report is not None:
                prepared.experiment.report(finished)
            for split, metrics in summary["metrics"].items():
                echo(f"{split}: {format_metrics(metrics)}")
            status = "failed" if history["nonfinite"] else "stopped_early" if history["stop_reason"] else "finished"
            write_status(directory, status, step, history["stop_reason"])
            if history["nonfinite"]:
                echo(f"failed: {history['stop_reason']}; the last good checkpoint is kept in {directory / 'checkpoints'}")
            echo(f"run directory: {directory}")
    if jax.process_count() > 1:
        echo(f"process {jax.process_index()}: params {summary['params_fingerprint']}")
        multihost_utils.sync_global_devices("fundl run finished")  # no process leaves before process 0 has written
    return finished


def _all_records(directory: Path) -> list[dict[str, Any]]:
    """Every record of the run, across resumptions, from ``metrics.jsonl``."""
    import json

    path = directory / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _on_every_process(create: Callable[[], Path]) -> tuple[Path | None, str]:
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


def _gather(train_state: TrainState) -> TrainState:
    """The whole train state as host arrays on every process (a collective: all must call it)."""
    host = host_copy(train_state)
    return host._replace(key=jax.random.wrap_key_data(host.key, impl=jax.random.key_impl(train_state.key)))


def _summary(history: dict[str, Any], train_state: TrainState) -> dict[str, Any]:
    final: dict[str, dict[str, float]] = {}
    for record in history["records"]:
        final[record["split"]] = {k: v for k, v in record.items() if k not in ("step", "epoch", "split")}
    keys = ("steps", "epochs", "wall_s", "compile_s", "stop_reason", "steps_per_call", "steps_per_call_reason", "traces")
    return {
        **{k: history[k] for k in keys},
        "params_fingerprint": params_fingerprint(train_state.params),
        "metrics": final,
    }


# --- reading a run back ----------------------------------------------------------------------


def _read_run(directory: Path) -> dict[str, Any]:
    if not directory.is_dir():
        raise FileNotFoundError(f"run directory {directory} does not exist")
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{directory} is not a fundl run directory: no config.json")
    return {"status": read_status(directory)}


def _verified_example(directory: Path) -> tuple[ModuleType, Config]:
    """The run's own copy of its example, checked against the manifest, and its config, checked against the example."""
    environment = read_json(directory / "environment.json")
    copy = directory / EXAMPLE_FILE
    if not copy.is_file():
        raise FileNotFoundError(f"{copy} is missing: the run directory is incomplete")
    if file_sha256(copy) != environment.get("example_sha256"):
        raise ValueError(f"{copy} differs from the example the run was started with (its SHA-256 is not the manifest's)")
    module = load_example(str(copy))
    config = read_json(directory / "config.json")
    expected, got = flat_keys(resolve_config(module)), flat_keys(config)
    unknown, missing = sorted(set(got) - set(expected)), sorted(set(expected) - set(got))
    if unknown or missing:
        raise ValueError(f"{directory / 'config.json'} does not fit its example: unknown keys {unknown}, missing keys {missing}")
    return module, config


def load_run(directory: str | os.PathLike) -> Run:
    """Loads a finished run back, verified: its config, its example's experiment and its final train state.

    Raises:
      FileNotFoundError: a file of the run is missing.
      ValueError: the run did not finish, a file was changed or corrupted (the train
        state's hash or fingerprint is not the recorded one), or the config does not fit.

    Example:
      >>> done = load_run("runs/mlp_digits-20261127-101500")
      >>> logits, _ = done.experiment.model.apply(done.train_state.params, done.train_state.state, x)
    """
    directory = Path(directory)
    status = _read_run(directory)["status"]
    if status["status"] not in ("finished", "stopped_early"):
        hint = f": continue it with `fundl resume {directory}`" if status["status"] == "interrupted" else ""
        raise ValueError(f"{directory} has not finished (status: {status['status']}){hint}")
    module, config = _verified_example(directory)
    experiment = module.experiment(config)
    optimizer, _ = make_optimizer(config, total_steps(config, experiment))
    summary = read_json(directory / "summary.json")
    path = directory / TRAIN_STATE_FILE
    if path.is_file() and file_sha256(path) != summary.get("train_state_sha256"):
        raise ValueError(f"{path} is not the file this run saved (its SHA-256 differs from summary.json's): corrupted or replaced")
    like = jax.eval_shape(lambda: initial_train_state(config, experiment, optimizer))
    train_state = restore_train_state(path, like)
    if params_fingerprint(train_state.params) != summary["params_fingerprint"]:
        raise ValueError(f"{path} holds params whose fingerprint is not the one recorded in summary.json")
    return Run(directory, config, experiment, train_state, None, summary)


def sample(directory: str | os.PathLike, prompt: str = "", *, temperature: float = 1.0, length: int = 200, seed: int = 0) -> str:
    """Generates from a finished run of a generative example (what ``fundl sample`` does)."""
    loaded = load_run(directory)
    if loaded.experiment.sample is None:
        example = read_json(Path(directory) / "environment.json")["example"]
        raise ValueError(f"example {example!r} cannot sample: its experiment defines no `sample`")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if length < 1:
        raise ValueError(f"length must be at least 1, got {length}")
    return loaded.experiment.sample(loaded, prompt, temperature=temperature, length=length, seed=seed)

