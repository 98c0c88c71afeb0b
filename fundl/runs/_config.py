"""Experiment configs: nested dicts with a fixed set of keys, overridden by dotted paths.

Every run starts from :data:`DEFAULTS` merged with its example's ``CONFIG``; the keys that
exist then are the only ones that can be set (``train.epochs=3``), and a new value must
have the type of the default (an int is accepted where a float is expected). A typo is an
error that lists the valid keys, not a silently ignored setting.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from typing import Any

Config = dict[str, Any]

DEFAULTS: Config = {
    "seed": 0,
    "train": {
        "epochs": 10,
        "steps": None,  # a step budget instead of epochs
        "batch_size": 32,
        "eval_batch_size": None,  # default: a split of at most 8 MiB in one batch, else train.batch_size
        "eval_every": None,  # steps; default: once per epoch
        "log_every": None,  # steps; default: once per epoch
        "steps_per_call": "auto",
        "devices": None,  # data-parallel over this many devices; default: every visible device
        "fsdp": 1,  # > 1: shard params and optimizer state over a second mesh axis of this size
        "precision": "float32",  # or "bfloat16": compute in bfloat16, params and optimizer in float32
        "accumulate": 1,  # micro-batches per update (gradient accumulation); counts stay in updates
    },
    "checkpoint": {
        "every_epochs": 1,  # save the whole train state every this many epochs (None: only at the end)
        "every_steps": None,  # ... or every this many steps (the more frequent wins)
        "keep": 3,  # the latest checkpoints kept
        "best": None,  # also keep the best checkpoint by this "split/metric", e.g. "validation/accuracy"
        "best_mode": "max",  # or "min"
    },
    "early_stopping": {  # stop when an evaluated metric stops improving
        "metric": None,  # an evaluated "split/metric", e.g. "validation/loss"; None: no early stopping
        "mode": "min",  # or "max"
        "patience": 5,  # evaluations without improvement
        "min_delta": 0.0,  # the least change that counts as an improvement
    },
    "log": {"tensorboard": False},  # also write the logged scalars as TensorBoard event files
    "optimizer": {
        "name": "sgd",
        "learning_rate": 0.1,
        "schedule": "constant",  # or "cosine": decays to 0 over the run
        "warmup_steps": 0,
        "momentum": None,  # for sgd
        "weight_decay": None,  # for adamw
        "clip_norm": None,  # clip gradients to this global norm
    },
}


class ConfigError(ValueError):
    """An unknown config key or a value of the wrong type."""


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> Config:
    """A deep copy of ``base`` updated by ``update``, which may add keys (an example's own)."""
    merged = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def flat_keys(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train.epochs": 15, ...}``: every leaf of the config by its dotted path."""
    keys = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            keys.update(flat_keys(value, f"{prefix}{key}."))
        else:
            keys[f"{prefix}{key}"] = value
    return keys


def parse_value(text: str) -> Any:
    """A command-line value: JSON if it parses (``3``, ``0.1``, ``true``, ``null``), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


# Keys whose default does not show every type they take (None means "not set").
TYPES: dict[str, tuple[type, ...]] = {
    "train.steps": (int,),
    "train.eval_batch_size": (int,),
    "train.eval_every": (int,),
    "train.log_every": (int,),
    "train.steps_per_call": (str, int),
    "train.devices": (int,),
    "checkpoint.every_epochs": (int,),
    "checkpoint.every_steps": (int,),
    "checkpoint.best": (str,),
    "early_stopping.metric": (str,),
    "optimizer.momentum": (float,),
    "optimizer.weight_decay": (float,),
    "optimizer.clip_norm": (float,),
}


def _check_type(path: str, default: Any, value: Any) -> Any:
    """``value`` if it has the key's type (ints are accepted, and converted, for floats)."""
    if value is None:
        return value
    types = TYPES.get(path) or ((type(default),) if default is not None else None)
    if types is None:
        return value
    if float in types and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, types) and not (isinstance(value, bool) and bool not in types):
        return value
    names = " or ".join(t.__name__ for t in types)
    article = "an" if names[0] in "aeiou" else "a"
    shown = f" (default {default!r})" if default is not None else ""
    raise ConfigError(f"config key {path!r} expects {article} {names}{shown}, got {value!r}")


def override(config: Config, settings: Iterable[tuple[str, Any]]) -> Config:
    """``config`` with each ``(dotted_path, value)`` set; unknown paths and wrong types are errors."""
    config = copy.deepcopy(config)
    valid = flat_keys(config)
    for path, value in settings:
        if path not in valid:
            raise ConfigError(f"unknown config key {path!r}; valid keys: {', '.join(sorted(valid))}")
        *parents, leaf = path.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[leaf] = _check_type(path, valid[path], value)
    return config


def parse_settings(items: Iterable[str]) -> list[tuple[str, Any]]:
    """``["train.epochs=3", ...]`` from the command line, as ``[("train.epochs", 3), ...]``."""
    settings = []
    for item in items:
        path, sep, text = item.partition("=")
        if not sep or not path:
            raise ConfigError(f"expected key=value (e.g. train.epochs=3), got {item!r}")
        settings.append((path.strip(), parse_value(text.strip())))
    return settings
