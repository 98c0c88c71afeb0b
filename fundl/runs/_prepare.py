"""From a config to what the loop trains: one function that checks everything before a run directory exists.

:func:`prepare` turns an example's config (and, for a sweep, its seeds and swept
settings) into a :class:`Plan`: the experiment, its loss under the precision policy,
the population (one run, or members), the loop's option records and each member's
config. Every check that can be made before training is made here, and a bad value is a
:class:`~fundl.runs.ConfigError` naming its key, so a failed start leaves nothing behind.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any, NamedTuple

import jax
import numpy as np
import optax

from fundl._core import Loss
from fundl._data import num_examples
from fundl.distributed import Placement, data_mesh
from fundl.runs._config import Config, ConfigError, override, parse_value
from fundl.runs._directory import RunDirectory
from fundl.runs._experiment import Experiment, total_steps
from fundl.runs._loggers import LOGGERS, check_loggers
from fundl.runs._optimizers import make_optimizer
from fundl.runs._pack import with_records
from fundl.runs._ranges import check_ranges, check_value
from fundl.runs._watched import check_watched, recorded_metrics
from fundl.train import (
    PRECISION_POLICIES,
    Budget,
    Evaluation,
    Execution,
    Hook,
    Input,
    Members,
    MemberStates,
    OneRun,
    TrainState,
    early_stopping,
    initial_train_state,
    initial_train_states,
    log_learning_rate,
    logger_hook,
    with_precision,
)

MAX_SEED = 2**63
MAX_MEMBERS = 100_000  # a sweep's members are listed, configured and initialised one by one on the host
SWEEPABLE = ("optimizer.learning_rate", "optimizer.momentum", "optimizer.weight_decay", "optimizer.clip_norm")
_MEMORY_SHARE = 0.25  # of the machine's memory, for the stacked train states of a sweep


class Plan(NamedTuple):
    """An experiment, checked and ready to train: everything but the directory.

    Attributes:
      config: the run's config (a sweep's shared one, before each member's seed and settings).
      experiment: what the example built from it.
      loss: the experiment's loss under the precision policy.
      population: one run (:class:`OneRun`, with its optimizer) or a sweep's :class:`Members`.
      members: each member's config (``None`` for a single run).
      sweep: the swept settings, ``{dotted_key: [values]}`` (empty for a single run or seeds only).
      budget, execution, evaluation, input: the loop's options.
      steps_per_epoch, total: the length of an epoch and of the run, in steps.
    """

    config: Config
    experiment: Experiment
    loss: Loss
    population: OneRun | Members
    members: list[Config] | None
    sweep: dict[str, list[Any]]
    budget: Budget
    execution: Execution
    evaluation: Evaluation
    input: Input
    steps_per_epoch: int
    total: int

    @property
    def configs(self) -> list[Config]:
        """Each lane's config: the run's, or each member's."""
        return self.members if self.members is not None else [self.config]

    @property
    def seeds(self) -> list[int]:
        return [c["seed"] for c in self.configs]

    def schedule(self, lane: int) -> optax.Schedule | None:
        """The learning-rate schedule of a lane (a member's, with its own rate); ``None`` if the example's own
        optimizer does not say."""
        return optimizer_of(self.experiment, self.configs[lane], self.total)[1]

    def initial_carry(self, echo: Callable[[str], None] | None = None) -> TrainState | MemberStates:
        """The train state at step 0 (a sweep's: every member's, stacked, with their settings).

        ``echo``: where a large sweep reports how far it got, every few seconds.
        """
        e = self.experiment
        if isinstance(self.population, OneRun):
            return initial_train_state(e.model, e.input_shape, self.population.optimizer, self.config["seed"])
        optimizer = optimizer_of(e, self.configs[0], self.total)[0]
        count = len(self.seeds)

        def progress(made: int) -> None:
            if echo is not None:
                echo(f"initial states: {made:,} of {count:,} members made")

        states = initial_train_states(e.model, e.input_shape, optimizer, self.seeds, progress=progress)
        return MemberStates.of(states, self.hyper())

    def abstract_carry(self) -> Any:
        """The shapes and dtypes of :meth:`initial_carry` (what a checkpoint is read into), without making it."""
        if isinstance(self.population, OneRun):
            return jax.eval_shape(self.initial_carry)
        e = self.experiment
        optimizer = optimizer_of(e, self.configs[0], self.total)[0]
        one = jax.eval_shape(lambda: initial_train_state(e.model, e.input_shape, optimizer, self.seeds[0]))
        stacked = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct((len(self.seeds), *leaf.shape), leaf.dtype), one)
        return jax.eval_shape(lambda states: MemberStates.of(states, self.hyper()), stacked)

    def hyper(self) -> dict[str, np.ndarray]:
        """Each swept setting's value for every member, ``{dotted_key: (M,)}``."""
        return {
            key: np.array([float(c["optimizer"][key.split(".", 1)[1]]) for c in self.configs]) for key in self.sweep
        }

    def settings(self, lane: int) -> dict[str, Any]:
        """A member's swept settings, ``{dotted_key: value}``."""
        return {key: self.configs[lane]["optimizer"][key.split(".", 1)[1]] for key in self.sweep}


def optimizer_of(
    experiment: Experiment, config: Config, total: int
) -> tuple[optax.GradientTransformation, optax.Schedule | None]:
    """The run's optimizer and learning-rate schedule: the example's own if it gives them, else the config's."""
    schedule = experiment.schedule(config, total) if experiment.schedule is not None else None
    if experiment.optimizer is not None:
        return experiment.optimizer(config, total), schedule
    return make_optimizer(config, total, schedule)


def loop_options(config: Config, experiment: Experiment) -> tuple[Budget, Execution, Evaluation, Input]:
    """The loop's option records from a config: the one place where config keys become options."""
    train = config["train"]
    try:
        mesh = data_mesh(train["devices"], fsdp=train["fsdp"])
    except ValueError as error:
        raise ConfigError(f"train.devices={train['devices']}, train.fsdp={train['fsdp']}: {error}") from None
    try:
        budget = Budget(
            train["epochs"] if train["steps"] is None else None, train["steps"], train["eval_every"], train["log_every"]
        )
        evaluation = Evaluation(dict(experiment.eval_data or {}), train["eval_batch_size"])
        execution = Execution(mesh, accumulate=train["accumulate"], steps_per_call=train["steps_per_call"])
    except ValueError as error:
        raise ConfigError(f"train.{error}") from None
    if train["batch_size"] % train["accumulate"]:
        raise ConfigError(
            f"train.accumulate must divide train.batch_size={train['batch_size']}, got {train['accumulate']}"
        )
    try:
        reading = Input(workers=config["data"]["workers"], augment=experiment.augment)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"data.{error}") from None
    return budget, execution, evaluation, reading


def prepare(
    module: ModuleType, config: Config, seeds: list[int] | None = None, sweep: dict[str, list[Any]] | None = None
) -> Plan:
    """Builds the experiment and makes every check the loop would make, naming config keys.

    Args:
      module: the example.
      config: its resolved config.
      seeds, sweep: for a sweep, the members' seeds and swept settings (crossed: every
        setting with every seed); ``None`` for a single run.
    """
    sweep = dict(sweep or {})
    _check_seed(config["seed"])
    check_ranges(config)
    experiment = module.experiment(config)
    if config["data"]["records"] is not None:
        experiment = with_records(experiment, config["data"]["records"])
    total = total_steps(config, experiment)
    members = None if seeds is None and not sweep else _members(experiment, config, total, seeds, sweep)
    for c in members[:: len(members) // _settings(sweep)] if members is not None else [config]:
        optimizer_of(experiment, c, total)  # each setting is checked before anything is made (not each seed)
    if sweep:
        _check_sweepable(experiment, config, total, sweep)
    train = config["train"]
    if train["precision"] not in PRECISION_POLICIES:
        raise ConfigError(f"unknown train.precision {train['precision']!r}; available: {', '.join(PRECISION_POLICIES)}")
    budget, execution, evaluation, reading = loop_options(config, experiment)
    placement = Placement(execution.mesh, None if members is None else len(members))
    try:
        placement.check_batch_size(train["batch_size"], "training")
    except ValueError as error:
        raise ConfigError(
            f"train.devices={train['devices']}, train.fsdp={train['fsdp']}, "
            f"train.batch_size={train['batch_size']}: {error}"
        ) from None
    _check_checkpoint_config(config["checkpoint"], members is not None)
    check_loggers(config["log"])
    _check_early_stopping_config(config["early_stopping"])
    loss = with_precision(Loss.of(experiment.loss_fn, experiment.eval_fn), train["precision"])
    _check_test_data(experiment, loss)
    _check_watched_metrics(config, experiment, loss)
    per_epoch = num_examples(experiment.train_data) // train["batch_size"]
    if members is None:
        population: OneRun | Members = OneRun(optimizer_of(experiment, config, total)[0])
    else:
        if jax.process_count() > 1:
            raise ConfigError("a sweep trains in one process: run its members separately across processes")
        population = Members(_optimizer_fn(config, total, experiment), len(members))
    return Plan(
        config, experiment, loss, population, members, sweep, budget, execution, evaluation, reading, per_epoch, total
    )


def lane_hooks(plan: Plan, lane: int, writer: Hook | None, files: RunDirectory | None) -> list[Hook]:
    """A lane's hooks, always in this order: a checkpoint stores their states by position.

    A sweep's members each get their own deep copy of the example's hooks (so a stateful
    hook, such as early stopping, acts on its member alone), their own schedule and their
    own loggers (``log.*``; ``files``: the run directory they write into, ``None`` on the
    processes that do not write, which get placeholders in their place).
    """
    own = plan.experiment.hooks if plan.members is None else copy.deepcopy(list(plan.experiment.hooks))
    schedule = plan.schedule(lane)
    hooks: list[Hook] = [*own, *([log_learning_rate(schedule)] if schedule is not None else [])]
    stopping = plan.config["early_stopping"]
    if stopping["metric"]:
        split, metric = stopping["metric"].split("/", 1)
        hooks.append(
            early_stopping(
                split, metric, mode=stopping["mode"], patience=stopping["patience"], min_delta=stopping["min_delta"]
            )
        )
    member = lane if plan.members is not None else None
    for name in check_loggers(plan.config["log"]):
        if files is None:
            hooks.append(lambda event: None)
            continue
        who = files.path.name + ("" if member is None else f"-member{member}")
        logger = LOGGERS[name](files.logs(name, member), name=who, config=plan.configs[lane])
        hooks.append(logger_hook(logger, close_at_end=False))  # closed by the run, after its test splits
    return [*hooks, writer] if writer else hooks


# --- sweeps -------------------------------------------------------------------------------------


def parse_seeds(text: str) -> list[int]:
    """``"0-31"``, ``"0,1,5"`` or ``"0-3,8"`` as a list of seeds (at most :data:`MAX_MEMBERS`)."""
    seeds: list[int] = []
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        try:
            span = range(int(first), int(last) + 1) if dash else range(int(first), int(first) + 1)
        except ValueError:
            raise ConfigError(
                f"--seeds takes ranges and lists of non-negative integers, e.g. 0-31 or 0,1,5; got {text!r}"
            ) from None
        if len(seeds) + len(span) > MAX_MEMBERS:
            raise ConfigError(
                f"--seeds {text}: a sweep trains at most {MAX_MEMBERS:,} "
                "members as one program; split it into several sweeps"
            )
        seeds += span
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ConfigError(f"--seeds needs distinct non-negative seeds, got {text!r}")
    return seeds


def parse_sweep(items: Iterable[str]) -> dict[str, list[Any]]:
    """``["optimizer.learning_rate=0.01,0.1"]`` as ``{"optimizer.learning_rate": [0.01, 0.1]}``."""
    sweep: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise ConfigError(f"--sweep takes KEY=V1,V2,... (e.g. optimizer.learning_rate=0.01,0.1), got {item!r}")
        sweep[key.strip()] = [parse_value(v.strip()) for v in values.split(",")]
    return sweep


def _member_configs(base: Config, seeds: list[int], sweep: dict[str, list[Any]]) -> list[Config]:
    """One config per (setting, seed): the settings in order, each crossed with every seed."""
    for key in sweep:
        override(base, [(key, sweep[key][0])])  # an unknown key or a wrong type is the usual config error
        if key not in SWEEPABLE:
            raise ConfigError(
                f"--sweep {key}: only {', '.join(SWEEPABLE)} (and --seeds) can be members of one compiled program; "
                f"{key} changes the model, the data or the shapes, so run each value separately "
                f"(fundl run NAME --set {key}=VALUE)"
            )
        if any(value is None for value in sweep[key]):
            raise ConfigError(
                f"--sweep {key}: every value must be a number (null turns the setting off: run it separately)"
            )
    keys = list(sweep)
    settings = [override(base, list(zip(keys, values))) for values in itertools.product(*(sweep[k] for k in keys))]
    # one checked config per setting; its members differ in the seed alone (and share the setting's sections,
    # which nothing changes): tens of thousands of members are made in a moment, not a deep copy each
    return [{**setting, "seed": seed} for setting in settings for seed in seeds]


def _optimizer_fn(base: Config, total: int, experiment: Experiment) -> Any:
    """``hyper -> optimizer``: the run's optimizer with the swept settings as (traced) numbers."""

    def optimizer_fn(hyper: dict[str, Any]) -> optax.GradientTransformation:
        config = {**base, "optimizer": dict(base["optimizer"])}
        for key, value in hyper.items():
            config["optimizer"][key.split(".", 1)[1]] = value
        return optimizer_of(experiment, config, total)[0]

    return optimizer_fn


def _check_sweepable(experiment: Experiment, config: Config, total: int, sweep: dict[str, list[Any]]) -> None:
    """The swept settings enter the compiled step as traced numbers: an optimizer (or schedule) that looks at them
    in Python cannot take them. Traced once, abstractly, before anything is made."""
    params = jax.eval_shape(lambda: experiment.model.init(jax.random.key(0), experiment.input_shape)[1])
    optimizer_fn = _optimizer_fn(config, total, experiment)

    def one_update(hyper: dict[str, Any], params: Any) -> Any:
        optimizer = optimizer_fn(hyper)
        return optimizer.update(params, optimizer.init(params), params)

    hyper = {key: jax.ShapeDtypeStruct((), np.float32) for key in sweep}
    try:
        jax.eval_shape(one_update, hyper, params)
    except jax.errors.JAXTypeError as error:  # a tracer in an `if`, `float()` or a Python range check
        own = "the example's own optimizer or schedule" if experiment.optimizer or experiment.schedule else "it"
        raise ConfigError(
            f"--sweep {', '.join(sweep)}: swept settings enter the compiled step as traced numbers, and {own} "
            f"uses them as Python values ({type(error).__name__}); run each value separately "
            f"(fundl run NAME --set {next(iter(sweep))}=VALUE) or use them as optax does (arithmetic, no `if`)"
        ) from None


def _settings(sweep: dict[str, list[Any]]) -> int:
    """How many settings a sweep crosses with its seeds."""
    return math.prod(len(values) for values in sweep.values())


def _members(
    experiment: Experiment, config: Config, total: int, seeds: list[int] | None, sweep: dict[str, list[Any]]
) -> list[Config]:
    """Every member's config (each setting crossed with each seed), checked: their number, memory, seeds, values."""
    seeds = seeds or [config["seed"]]
    count = len(seeds) * _settings(sweep)
    if count > MAX_MEMBERS:
        raise ConfigError(
            f"a sweep of {count:,} members: at most {MAX_MEMBERS:,} train as one program; split it into several sweeps"
        )
    _check_memory(experiment, config, total, count)
    members = _member_configs(config, seeds, sweep)
    for c in members:
        _check_seed(c["seed"])
    for key, values in sweep.items():  # each swept value once, not once per member
        for value in values:
            check_value(key, value, "--sweep ")
    return members


def _check_memory(experiment: Experiment, config: Config, total: int, members: int) -> None:
    """A sweep's stacked train states must fit a share of the machine's memory: refused before anything is made."""
    params, state = jax.eval_shape(lambda: experiment.model.init(jax.random.key(0), experiment.input_shape)[1:])
    opt_state = jax.eval_shape(optimizer_of(experiment, config, total)[0].init, params)
    member_bytes = 4 * sum(
        leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves((params, state, opt_state))
    )  # with updates
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        memory = 8 << 30
    if members * member_bytes > memory * _MEMORY_SHARE:
        most = int(memory * _MEMORY_SHARE // max(member_bytes, 1))
        raise ConfigError(
            f"a sweep of {members} members needs about {members * member_bytes / 2**30:.1f} GiB for its train states "
            f"(params, optimizer state and their updates), more than a quarter of this machine's memory: "
            f"sweep at most {most} members at once"
        )


# --- checks ---------------------------------------------------------------------------------------


def _check_seed(seed: Any) -> None:
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < MAX_SEED:
        raise ConfigError(f"seed must be an integer in [0, 2**63), got {seed!r}")


def _check_checkpoint_config(checkpoint: dict[str, Any], sweep: bool) -> None:
    for key in ("every_epochs", "every_steps", "keep"):
        value = checkpoint[key]
        if value is not None and value < 1:
            raise ConfigError(f"checkpoint.{key} must be a positive integer (or null), got {value!r}")
    if checkpoint["best_mode"] not in ("max", "min"):
        raise ConfigError(f"checkpoint.best_mode must be 'max' or 'min', got {checkpoint['best_mode']!r}")
    if checkpoint["best"] is not None and sweep:
        raise ConfigError(
            "checkpoint.best keeps the checkpoint of one run's best evaluation; a sweep's checkpoints hold every "
            "member at one step, so it cannot: drop checkpoint.best (each member's metrics are in metrics.jsonl)"
        )


def _check_early_stopping_config(stopping: dict[str, Any]) -> None:
    if stopping["metric"] is None:
        return
    try:
        early_stopping("x", "x", mode=stopping["mode"], patience=stopping["patience"], min_delta=stopping["min_delta"])
    except ValueError as error:
        raise ConfigError(f"early_stopping: {error}") from None


def _check_watched_metrics(config: Config, experiment: Experiment, loss: Loss) -> None:
    """``checkpoint.best`` and ``early_stopping.metric`` must name a metric that training records."""
    watched = {
        "checkpoint.best": config["checkpoint"]["best"],
        "early_stopping.metric": config["early_stopping"]["metric"],
    }
    if not any(watched.values()):
        return
    recorded = recorded_metrics(
        loss,
        experiment.model,
        experiment.input_shape,
        experiment.train_data,
        experiment.eval_data or {},
        config["train"]["batch_size"],
        experiment.hooks,
    )
    tests = list(experiment.test_data or {})
    check_watched("checkpoint.best", watched["checkpoint.best"], recorded, tests, train=True)
    check_watched("early_stopping.metric", watched["early_stopping.metric"], recorded, tests, train=False)


def _check_test_data(experiment: Experiment, loss: Loss) -> None:
    """The test splits, checked before training as the loop checks its evaluation splits: an error now, not later."""
    clash = sorted(set(experiment.test_data or {}) & {"train", *(experiment.eval_data or {})})
    if clash:
        raise ValueError(
            "the experiment's test_data and eval_data (or the training "
            f"metrics) both name split(s) {clash}: give each its own name"
        )
    for name, split in (experiment.test_data or {}).items():
        num_examples(split, f"test split {name!r}")
        loss.check(split, f"test split {name!r}")
