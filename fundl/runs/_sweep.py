"""Sweeps: many seeds and optimizer settings of one example trained as one compiled program.

``fundl run NAME --seeds 0-31 --sweep optimizer.learning_rate=0.01,0.03,0.1`` makes one
member per (setting, seed) pair, trains them all with :func:`fundl.train.fit_members`
(``vmap`` over the stacked train states) and writes one run directory: the base
config, ``members.json`` (each member's seed, settings, final metrics, fingerprint),
``summary.json`` (mean, std, min and max of every final metric, per split, over the
members that were not frozen by a NaN), the metrics
of every member in ``metrics.jsonl`` and ``curves.png`` with the spread as a band.

Only settings that live in the optimizer and change no shapes can be members: they are
passed into the compiled step as numbers. Anything else (a hidden size, the number of
layers, a dropout rate built into the model) needs its own run. The example's hooks and
early stopping act on single runs and are not run in a sweep (it says so).
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from fundl.distributed import describe_mesh
from fundl.plots import import_in_background, plot_member_curves
from fundl.runs._config import Config, ConfigError, override, parse_value
from fundl.runs._experiment import budget, initial_train_states, load_example, resolve_config, total_steps
from fundl.runs._files import strict_json, write_atomic, write_json
from fundl.runs._optimizers import make_optimizer
from fundl.runs._run import Prepared, prepare
from fundl.runs._rundir import copy_example, create_run_directory, manifest, write_status
from fundl.train import LossFn, TrainState, params_fingerprint, with_precision
from fundl.train._data import eval_batch_size_for
from fundl.train._members import evaluate_members, fit_members

SWEEPABLE = ("optimizer.learning_rate", "optimizer.momentum", "optimizer.weight_decay", "optimizer.clip_norm")
_MEMORY_SHARE = 0.25  # of the machine's memory, for the members of one chunk


class Sweep(NamedTuple):
    """A finished sweep: its directory, base config, members and their results."""

    directory: Path
    config: Config
    members: list[dict[str, Any]]
    summary: dict[str, Any]
    history: dict[str, Any]


def parse_seeds(text: str) -> list[int]:
    """``"0-31"``, ``"0,1,5"`` or ``"0-3,8"`` as a list of seeds."""
    seeds: list[int] = []
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        try:
            seeds += list(range(int(first), int(last) + 1)) if dash else [int(first)]
        except ValueError:
            raise ConfigError(f"--seeds takes ranges and lists of non-negative integers, e.g. 0-31 or 0,1,5; got {text!r}") from None
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


def _check_keys(sweep: dict[str, list[Any]], base: Config) -> None:
    for key in sweep:
        override(base, [(key, sweep[key][0])])  # an unknown key or a wrong type is the usual config error
        if key not in SWEEPABLE:
            raise ConfigError(
                f"--sweep {key}: only {', '.join(SWEEPABLE)} (and --seeds) can be members of one compiled program; "
                f"{key} changes the model, the data or the shapes, so run each value separately "
                f"(fundl run NAME --set {key}=VALUE)"
            )


def _member_configs(base: Config, seeds: list[int], sweep: dict[str, list[Any]]) -> list[Config]:
    keys = list(sweep)
    members = []
    for values in itertools.product(*(sweep[k] for k in keys)):
        for seed in seeds:
            members.append(override(base, [("seed", seed), *zip(keys, values)]))
    return members


def _with_numbers(config: Config, numbers: dict[str, Any]) -> Config:
    """``config`` with dotted keys set to (possibly traced) numbers, unchecked (inside the compiled step)."""
    config = {**config, "optimizer": dict(config["optimizer"])}
    for key, value in numbers.items():
        config["optimizer"][key.split(".", 1)[1]] = value
    return config


def _chunk_size(members: int, member_bytes: int, devices: int) -> int:
    """How many members train at once: all that fit a share of the memory, a multiple of the devices."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        memory = 8 << 30
    fit = max(devices, int(memory * _MEMORY_SHARE // max(member_bytes, 1)) // devices * devices)
    return min(members, fit)


def sweep(
    example: str,
    settings: Iterable[tuple[str, Any]] = (),
    *,
    seeds: list[int],
    sweep: dict[str, list[Any]] | None = None,
    out: str | None = None,
    quiet: bool = False,
    echo: Callable[[str], None] = print,
    chunk: int | None = None,
) -> Sweep:
    """Trains every (setting, seed) member of an example as one program; returns the sweep.

    Args:
      example: a bundled example's name or an example file.
      settings: config overrides shared by every member.
      seeds: the members' seeds.
      sweep: optimizer settings to cross with the seeds, ``{dotted_key: [values]}``.
      out: the run directory.
      chunk: members trained at once (default: as many as fit a quarter of the memory).

    Example:
      >>> sweep("mlp_digits", seeds=list(range(8))).summary["spread"]["test"]["accuracy"]
    """
    sweep = dict(sweep or {})
    module = load_example(example)
    base = resolve_config(module, settings)
    _check_keys(sweep, base)
    configs = _member_configs(base, seeds, sweep)
    prepared = prepare(module, base)
    for config in configs:
        make_optimizer(config, 1)  # each member's settings are checked before anything is made
    experiment, train = prepared.experiment, base["train"]
    if base["early_stopping"]["metric"]:
        raise ConfigError("early_stopping stops a single run; a sweep trains every member to the end: drop early_stopping.metric")
    if experiment.hooks:
        names = ", ".join(getattr(h, "__qualname__", type(h).__name__) for h in experiment.hooks)
        echo(f"note: the example's hooks ({names}) do not run in a sweep; its metrics are the loss function's own")
    total = total_steps(base, experiment)
    numbers = {key: np.array([float(c["optimizer"][key.split(".", 1)[1]]) for c in configs]) for key in sweep}
    loss_fn = with_precision(experiment.loss_fn, train["precision"])

    def optimizer_fn(hyper):
        return make_optimizer(_with_numbers(base, hyper), total)[0]

    states = initial_train_states([c["seed"] for c in configs], experiment, make_optimizer(configs[0], total)[0])
    devices = 1 if prepared.mesh is None else prepared.mesh.size
    member_bytes = 4 * sum(leaf.nbytes for leaf in jax.tree.leaves(states._replace(key=jax.random.key_data(states.key)))) // len(configs)
    size = chunk or _chunk_size(len(configs), member_bytes, devices)
    directory = create_run_directory(Path(example).stem, out)
    echo(f"run directory: {directory}")
    write_json(directory / "config.json", base)
    write_json(directory / "environment.json", {
        **manifest(example, copy_example(module, directory), train["precision"], describe_mesh(prepared.mesh)),
        "sweep": {"seeds": seeds, "settings": sweep, "members": len(configs), "chunk": size},
    })
    finals, histories = [], []
    import_in_background()  # for curves.png at the end: the import overlaps training
    try:
        for start in range(0, len(configs), size):
            part = slice(start, start + size)
            stacked = jax.tree.map(lambda leaf: leaf[part], states)
            final, history = fit_members(
                loss_fn, optimizer_fn, stacked, {k: v[part] for k, v in numbers.items()}, experiment.train_data,
                batch_size=train["batch_size"], data_seeds=np.array([c["seed"] for c in configs[part]]), **budget(base),
                eval_data=experiment.eval_data, eval_fn=experiment.eval_fn, eval_batch_size=train["eval_batch_size"],
                mesh=prepared.mesh if prepared.mesh is not None else 1, steps_per_call=train["steps_per_call"], quiet=quiet,
            )
            history["records"] += _test_records(prepared, loss_fn, final, history)
            finals.append(final)
            histories.append(history)
    except BaseException as error:
        write_status(directory, "failed", 0, f"{type(error).__name__}: {error}")
        raise
    return _record(directory, base, configs, sweep, finals, histories, size, echo)


def _test_records(prepared: Prepared, loss_fn: LossFn, final: TrainState, history: dict[str, Any]) -> list[dict[str, Any]]:
    """Every member's scores on the experiment's test splits (checked by ``prepare``), one record a split."""
    train, experiment = prepared.config["train"], prepared.experiment
    return [
        {"step": history["steps"], "epoch": history["epochs"], "split": name,
         **evaluate_members(loss_fn, final, split, batch_size=eval_batch_size_for(split, train["eval_batch_size"], train["batch_size"]),
                            eval_fn=experiment.eval_fn)}
        for name, split in (experiment.test_data or {}).items()
    ]


def _record(directory, base, configs, sweep, finals, histories, size, echo) -> Sweep:
    """Writes members.json, summary.json, metrics.jsonl and curves.png; prints the aggregate table."""
    members, records = [], []
    offset = 0
    for final, history in zip(finals, histories):
        count = history["members"]
        last = {r["split"]: r for r in history["records"]}
        for i in range(count):
            m = offset + i
            params = jax.tree.map(lambda a: a[i], final.params)
            members.append({
                "member": m, "seed": configs[m]["seed"],
                "settings": {k: configs[m]["optimizer"][k.split(".", 1)[1]] for k in sweep},
                "metrics": {split: {k: v[i] for k, v in r.items() if k not in ("step", "epoch", "split")} for split, r in last.items()},
                "params_fingerprint": params_fingerprint(params),
                "frozen": history["frozen"].get(i) and f"member {m} (seed {configs[m]['seed']}) {history['frozen'][i]}",
            })
        records += [{**r, "members": list(range(offset, offset + count))} for r in history["records"]]
        offset += count
    spread: dict[str, dict[str, dict[str, float]]] = {}
    healthy = [m for m in members if not m["frozen"]] or members  # the spread of the members that trained to the end
    for split in members[0]["metrics"]:
        for metric in members[0]["metrics"][split]:
            values = np.array([m["metrics"][split][metric] for m in healthy], np.float64)
            spread.setdefault(split, {})[metric] = {
                "mean": float(np.mean(values)), "std": float(np.std(values)), "min": float(np.min(values)), "max": float(np.max(values))
            }
    frozen = [m["frozen"] for m in members if m["frozen"]]
    summary = {
        "members": len(members), "chunk": size, "chunks": len(finals), "steps": histories[0]["steps"], "epochs": histories[0]["epochs"],
        "wall_s": sum(h["wall_s"] for h in histories), "compile_s": sum(h["compile_s"] for h in histories),
        "metrics": {split: {k: v["mean"] for k, v in metrics.items()} for split, metrics in spread.items()},
        "spread": spread, "frozen": frozen,
        "stop_reason": None,
    }
    write_json(directory / "members.json", members)
    write_json(directory / "summary.json", summary)
    write_atomic(directory / "metrics.jsonl", "".join(json.dumps(strict_json(r), allow_nan=False) + "\n" for r in records).encode())
    plot_member_curves(records, directory / "curves.png", title=directory.name)
    write_status(directory, "finished", summary["steps"])
    for split, metrics in spread.items():
        echo(f"{split}: " + "  ".join(f"{k} {v['mean']:.4f} ± {v['std']:.4f} [{v['min']:.4f}, {v['max']:.4f}]" for k, v in metrics.items()))
    for line in frozen:
        echo(line)
    echo(f"{len(members)} members; run directory: {directory}")
    return Sweep(directory, base, members, summary, {"records": records})
