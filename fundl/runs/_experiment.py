"""Experiments: a config plus a seed fully determine a run, recorded in a run directory.

An **example** is a Python module with a ``CONFIG`` dict (its own keys on top of
:data:`~fundl.runs.DEFAULTS`) and a function ``experiment(config) -> Experiment``. Running
it creates a run directory holding::

    config.json        the full resolved config
    environment.json   the example, command, versions and devices
    metrics.jsonl      one JSON object per log or evaluation (step, epoch, split, metrics)
    summary.json       steps, epochs, wall_s, compile_s, params_fingerprint, final metrics
    curves.png         the metrics of every split against the training step
    train_state.msgpack  the final train state, whole (params, state, optimizer state, key)
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import os
import pkgutil
import platform
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from fundl._core import Layer, Shape
from fundl.distributed import Placement, data_mesh, describe_mesh
from fundl.plots import plot_curves
from fundl.runs._checkpoint import restore_train_state, save_train_state
from fundl.runs._config import DEFAULTS, Config, ConfigError, merge, override
from fundl.runs._files import read_json, write_json
from fundl.runs._optimizers import make_optimizer
from fundl.train import (
    PRECISION_POLICIES,
    EvalFn,
    Event,
    Hook,
    LossFn,
    TrainState,
    fit,
    log_learning_rate,
    params_fingerprint,
    with_precision,
)
from fundl.train._data import check_batch_size, num_examples

TRAIN_STATE_FILE = "train_state.msgpack"


class Experiment(NamedTuple):
    """What an example gives ``fundl run``: a model, its data and its loss.

    Attributes:
      model: the model to train.
      input_shape: the shape of one training batch's model input, batch axis included.
      loss_fn: ``(params, state, batch, key) -> (loss, (new_state, metrics))``.
      train_data: a pytree of arrays with a leading example axis.
      eval_data: named evaluation splits, e.g. ``{"test": ...}``.
      eval_fn: ``(params, state, batch) -> metrics``, if ``loss_fn`` takes no ``train`` keyword.
      hooks: extra hooks for ``fit``.
      report: called with the finished :class:`Run`, e.g. to draw pictures into its directory.
      sample: ``sample(run, prompt, temperature=..., length=..., seed=...) -> str`` for
        generative examples, used by ``fundl sample RUN_DIR``.
    """

    model: Layer
    input_shape: Shape
    loss_fn: LossFn
    train_data: Any
    eval_data: dict[str, Any] | None = None
    eval_fn: EvalFn | None = None
    hooks: Sequence[Hook] = ()
    report: Callable[["Run"], None] | None = None
    sample: Callable[..., str] | None = None


class Run(NamedTuple):
    """A finished (or loaded) run: its directory, config, experiment, final train state and results."""

    directory: Path
    config: Config
    experiment: Experiment
    train_state: TrainState
    history: dict[str, Any] | None
    summary: dict[str, Any]


def bundled_examples() -> list[str]:
    """The names of the examples that ship with fundl (``fundl run NAME``)."""
    import fundl.examples

    return sorted(m.name for m in pkgutil.iter_modules(fundl.examples.__path__) if not m.name.startswith("_"))


def load_example(name_or_path: str) -> ModuleType:
    """Imports a bundled example by name, or an example file by path; checks its form."""
    path = Path(name_or_path)
    if path.suffix == ".py" or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"example file {path} does not exist")
        spec = importlib.util.spec_from_file_location(f"fundl_example_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        available = bundled_examples()
        if name_or_path not in available:
            raise ValueError(f"unknown example {name_or_path!r}; bundled examples: {', '.join(available)} (or give a path to a .py file)")
        module = importlib.import_module(f"fundl.examples.{name_or_path}")
    if not isinstance(getattr(module, "CONFIG", None), dict) or not callable(getattr(module, "experiment", None)):
        raise ValueError(f"example {name_or_path!r} must define a CONFIG dict and a function experiment(config) -> Experiment")
    return module


def resolve_config(module: ModuleType, settings: Iterable[tuple[str, Any]] = ()) -> Config:
    """DEFAULTS, then the example's CONFIG, then the ``(dotted_key, value)`` settings."""
    return override(merge(DEFAULTS, module.CONFIG), settings)


def _budget(config: Config) -> dict[str, int]:
    steps = config["train"]["steps"]
    return {"steps": steps} if steps is not None else {"epochs": config["train"]["epochs"]}


def _total_steps(config: Config, experiment: Experiment) -> int:
    """The run's length in steps (for learning-rate schedules); checks the batch size first."""
    n, batch_size = num_examples(experiment.train_data, "train data"), config["train"]["batch_size"]
    check_batch_size(batch_size, n, "train data")
    budget = _budget(config)
    return budget["steps"] if "steps" in budget else budget["epochs"] * (n // batch_size)


def initial_train_state(config: Config, experiment: Experiment, optimizer) -> TrainState:
    """The train state at step 0: params from ``split(key(seed))[0]``, training key the other half."""
    init_key, train_key = jax.random.split(jax.random.key(config["seed"]))
    _, params, state = experiment.model.init(init_key, experiment.input_shape)
    return TrainState.create(params, state, optimizer, train_key)


def run_mesh(config: Config) -> Mesh | None:
    """The devices a run trains on (``train.devices``, ``train.fsdp``); ``None`` for one device."""
    train = config["train"]
    try:
        mesh = data_mesh(train["devices"], fsdp=train["fsdp"])
    except ValueError as error:
        raise ConfigError(f"train.devices={train['devices']}, train.fsdp={train['fsdp']}: {error}") from None
    return mesh if mesh.size > 1 else None


def _check_training(config: Config, mesh: Mesh | None) -> None:
    """The config checks ``fit`` would make, made before a run directory exists."""
    train = config["train"]
    if train["precision"] not in PRECISION_POLICIES:
        raise ConfigError(f"unknown train.precision {train['precision']!r}; available: {', '.join(PRECISION_POLICIES)}")
    if train["accumulate"] < 1 or train["batch_size"] % train["accumulate"]:
        raise ConfigError(
            f"train.accumulate must be a positive divisor of train.batch_size={train['batch_size']}, got {train['accumulate']}"
        )
    try:
        Placement(mesh).check_batch_size(train["batch_size"], "training")
    except ValueError as error:
        raise ConfigError(f"train.batch_size: {error}") from None


def _environment(example: str, config: Config, mesh: Mesh | None) -> dict[str, Any]:
    return {
        "example": str(Path(example).resolve()) if Path(example).suffix == ".py" else example,
        "command": sys.argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": {
            "python": platform.python_version(),
            **{name: importlib.metadata.version(name) for name in ("fundl", "jax", "jaxlib", "optax", "flax", "numpy")},
        },
        "platform": platform.platform(),
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "process_count": jax.process_count(),
        "mesh": describe_mesh(mesh),
        "precision": config["train"]["precision"],
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def _on_every_process(create: Callable[[], Path]) -> Path:
    """Runs ``create`` on process 0 only; every process learns whether it worked, so that
    a failure there stops them all instead of leaving the others waiting in a collective."""
    if jax.process_count() == 1:
        return create()
    error = None
    if jax.process_index() == 0:
        try:
            directory = create()
        except (OSError, ValueError) as caught:
            error = caught
    ok = multihost_utils.broadcast_one_to_all(np.int32(error is None))
    if error is not None:
        raise error
    if not int(ok):
        raise FileExistsError("process 0 could not create the run directory (its error says why)")
    return directory if jax.process_index() == 0 else None


def new_run_directory(name: str, out: str | None = None) -> Path:
    """``out``, or ``runs/<name>-<timestamp>``; never one that already holds a run."""
    if out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        directory, n = Path("runs") / f"{name}-{stamp}", 1
        while directory.exists():
            n += 1
            directory = Path("runs") / f"{name}-{stamp}-{n}"
    else:
        directory = Path(out)
        if (directory / "config.json").exists():
            raise FileExistsError(f"{directory} already holds a run; choose another --out directory")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _metrics_writer(path: Path) -> Hook:
    """Appends the record of every log and evaluation to ``metrics.jsonl``, one JSON object a line."""

    def hook(event: Event) -> None:
        if event.kind in ("log", "eval"):
            with path.open("a") as file:
                file.write(json.dumps(event.record) + "\n")

    return hook


def run(
    example: str,
    settings: Iterable[tuple[str, Any]] = (),
    *,
    out: str | None = None,
    quiet: bool = False,
    echo: Callable[[str], None] = print,
) -> Run:
    """Runs an example (bundled name or file path) with config overrides; returns the finished run.

    Example:
      >>> run("mlp_digits", [("train.epochs", 3)], quiet=True).summary["metrics"]["test"]
    """
    module = load_example(example)
    config = resolve_config(module, settings)
    name = Path(example).stem
    experiment = module.experiment(config)
    optimizer, schedule = make_optimizer(config, _total_steps(config, experiment))
    mesh = run_mesh(config)
    _check_training(config, mesh)
    writer = jax.process_index() == 0  # in a multi-process run, process 0 alone writes
    directory = _on_every_process(lambda: new_run_directory(name, out))  # only once the config is known to be good
    if writer:
        echo(f"run directory: {directory}")
        write_json(directory / "config.json", config)
        write_json(directory / "environment.json", _environment(example, config, mesh))

    train = config["train"]
    hooks = [*experiment.hooks, log_learning_rate(schedule)]
    train_state, history = fit(
        with_precision(experiment.loss_fn, train["precision"]),
        optimizer,
        initial_train_state(config, experiment, optimizer),
        experiment.train_data,
        **_budget(config),
        batch_size=train["batch_size"],
        eval_data=experiment.eval_data,
        eval_fn=experiment.eval_fn,
        eval_batch_size=train["eval_batch_size"],
        eval_every=train["eval_every"],
        log_every=train["log_every"],
        hooks=[*hooks, _metrics_writer(directory / "metrics.jsonl")] if writer else hooks,
        data_seed=config["seed"],
        steps_per_call=train["steps_per_call"],
        mesh=mesh if mesh is not None else 1,
        accumulate=train["accumulate"],
        quiet=quiet or not writer,
    )
    if jax.process_count() > 1:  # every process takes part in gathering the state; process 0 writes it
        train_state = _gather(train_state)
    summary = _summary(history, train_state)
    finished = Run(directory, config, experiment, train_state, history, summary)
    if writer:
        save_train_state(directory / TRAIN_STATE_FILE, train_state)
        write_json(directory / "summary.json", summary)
        plot_curves(history["records"], directory / "curves.png", title=name)
        if experiment.report is not None:
            experiment.report(finished)
        for split, metrics in summary["metrics"].items():
            echo(f"{split}: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        echo(f"run directory: {directory}")
    if jax.process_count() > 1:
        echo(f"process {jax.process_index()}: params {summary['params_fingerprint']}")
        multihost_utils.sync_global_devices("fundl run finished")  # no process leaves before process 0 has written
    return finished


def _gather(train_state: TrainState) -> TrainState:
    """The whole train state as host arrays on every process (a collective: all must call it)."""
    raw = train_state._replace(key=jax.random.key_data(train_state.key))
    host = jax.tree.map(np.asarray, multihost_utils.process_allgather(raw, tiled=True))
    return host._replace(key=jax.random.wrap_key_data(host.key, impl=jax.random.key_impl(train_state.key)))


def _summary(history: dict[str, Any], train_state: TrainState) -> dict[str, Any]:
    final: dict[str, dict[str, float]] = {}
    for record in history["records"]:
        final[record["split"]] = {k: v for k, v in record.items() if k not in ("step", "epoch", "split")}
    keys = ("steps", "epochs", "wall_s", "compile_s")
    return {
        **{k: history[k] for k in keys},
        "params_fingerprint": params_fingerprint(train_state.params),
        "metrics": final,
        "stop_reason": history["stop_reason"],
        "steps_per_call": history["steps_per_call"],
        "steps_per_call_reason": history["steps_per_call_reason"],
        "traces": history["traces"],
    }


def sample(directory: str, prompt: str = "", *, temperature: float = 1.0, length: int = 200, seed: int = 0) -> str:
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


def load_run(directory: str) -> Run:
    """Loads a run directory back: its config, the example's experiment (model, data, loss) and final train state.

    Example:
      >>> done = load_run("runs/mlp_digits-20261127-101500")
      >>> logits, _ = done.experiment.model.apply(done.train_state.params, done.train_state.state, x)
    """
    directory = Path(directory)
    config = read_json(directory / "config.json")
    module = load_example(read_json(directory / "environment.json")["example"])
    experiment = module.experiment(config)
    optimizer, _ = make_optimizer(config, _total_steps(config, experiment))
    like = jax.eval_shape(lambda: initial_train_state(config, experiment, optimizer))
    train_state = restore_train_state(directory / TRAIN_STATE_FILE, like)
    summary = read_json(directory / "summary.json")
    return Run(directory, config, experiment, train_state, None, summary)
