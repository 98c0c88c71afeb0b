"""Experiment configs: nested dicts with a fixed set of keys, overridden by dotted paths.

Every run starts from :data:`DEFAULTS` merged with its example's ``CONFIG``; the keys that
exist then are the only ones that can be set (``train.epochs=3``), and a new value must
have the type of the default (an int is accepted where a float is expected). A typo is an
error that lists the valid keys, not a silently ignored setting.
"""

from __future__ import annotations

import copy
import difflib
import json
from collections.abc import Iterable, Mapping
from typing import Any

Config = dict[str, Any]

DEFAULTS: Config = {
    "seed": 0,  # the one seed of a run: initial params, dropout keys, data order
    "train": {
        "epochs": 10,  # passes over the training data
        "steps": None,  # a step budget instead of epochs
        "batch_size": 32,  # examples per update
        "eval_batch_size": None,  # default: a split of at most 8 MiB in one batch, else train.batch_size
        "eval_every": None,  # evaluate every this many steps; default: once per epoch
        "log_every": None,  # log the training metrics every this many steps; default: once per epoch
        "steps_per_call": "auto",  # steps per compiled call (one lax.scan), or "auto"
        "devices": None,  # data-parallel over this many devices; default: every visible device
        "fsdp": 1,  # > 1: shard params and optimizer state over a second mesh axis of this size
        "precision": "float32",  # "float32", or "bfloat16": compute in bfloat16, params and optimizer in float32
        "accumulate": 1,  # micro-batches per update (gradient accumulation); counts stay in updates
    },
    "checkpoint": {
        "every_epochs": 1,  # save the whole train state every this many epochs (None: only at the end)
        "every_steps": None,  # ... or every this many steps (the more frequent wins)
        "keep": 3,  # the latest checkpoints kept
        "best": None,  # also keep the best checkpoint by this "split/metric", e.g. "validation/accuracy"
        "best_mode": "max",  # "max" or "min": whether a larger or a smaller checkpoint.best is better
    },
    "early_stopping": {  # stop when an evaluated metric stops improving
        "metric": None,  # an evaluated "split/metric", e.g. "validation/loss"; None: no early stopping
        "mode": "min",  # "min" or "max": whether the metric should fall or rise
        "patience": 5,  # evaluations without improvement
        "min_delta": 0.0,  # the least change that counts as an improvement
    },
    "log": {
        "tensorboard": False,  # also write the logged metrics as TensorBoard event files (fundl[tensorboard])
        "wandb": False,  # also log them to a Weights & Biases run in offline mode, in the run directory (fundl[wandb])
    },
    "data": {
        "records": None,  # a directory written by `fundl data pack EXAMPLE DIR`: read every split from its files
        "workers": 0,  # processes that read (and augment) training batches ahead; 0: a thread
    },
    "optimizer": {
        "name": "sgd",  # the optax optimizer: sgd, adam, adamw, rmsprop, adagrad, adamax, nadam, radam, lamb, lion
        "learning_rate": None,  # the step size; None: the named optimizer's default (sgd 0.1, adam 1e-3, lion 1e-4)
        "schedule": "constant",  # constant, cosine (to 0), exponential, piecewise, one_cycle; after warmup_steps
        "warmup_steps": 0,  # the rate rises linearly from 0 over these first steps (one_cycle: its rising part)
        "decay_rate": None,  # exponential: the rate's factor over the whole run; piecewise: its factor at each boundary
        "boundaries": None,  # piecewise: the steps at which the rate is multiplied by decay_rate, e.g. [1000, 2000]
        "momentum": None,  # sgd's momentum, e.g. 0.9; None: plain SGD
        "nesterov": False,  # for sgd with momentum: Nesterov's momentum
        "weight_decay": None,  # for adamw and lamb (decoupled weight decay)
        "weight_decay_mask": "all",  # or "weights": decay only arrays of 2+ dimensions (not biases or norm scales)
        "clip_norm": None,  # clip gradients to this global norm
    },
}

DEFAULT_RATES: dict[str, float] = {
    "sgd": 0.1,
    "adam": 1e-3,
    "adamw": 1e-3,
    "rmsprop": 1e-3,
    "adagrad": 1e-2,
    "adamax": 2e-3,
    "nadam": 1e-3,
    "radam": 1e-3,
    "lamb": 1e-3,
    "lion": 1e-4,
}
"""Each named optimizer's learning rate when ``optimizer.learning_rate`` is not set for it."""

OPTIMIZER_OWN = ("learning_rate", "momentum", "nesterov", "weight_decay", "weight_decay_mask")
"""The optimizer settings that belong to the optimizer they were set with: a later layer of the config (the
example's ``CONFIG``, then ``--set``) that names another optimizer without them brings them back to their defaults,
so ``--set optimizer.name=adam`` trains with Adam's default rate, never with SGD's."""


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
    "data.records": (str,),
    "early_stopping.metric": (str,),
    "optimizer.learning_rate": (float,),
    "optimizer.decay_rate": (float,),
    "optimizer.boundaries": (list,),
    "optimizer.momentum": (float,),
    "optimizer.weight_decay": (float,),
    "optimizer.clip_norm": (float,),
}


def type_name(path: str, default: Any) -> str:
    """The type a key takes, as ``fundl config`` shows it: ``int``, ``str or int``, ``float or null`` (unset)."""
    types = TYPES.get(path) or ((type(default),) if default is not None else ())
    names = " or ".join(t.__name__ for t in types) or "any"
    return f"{names} or null" if default is None else names


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


def unknown_key(path: str, valid: Iterable[str]) -> ConfigError:
    """The error for a key not in the config: the closest keys, then every key (``fundl config`` explains them)."""
    valid = sorted(valid)
    close = difflib.get_close_matches(path, valid, n=3, cutoff=0.75)
    hint = f"; did you mean {' or '.join(repr(key) for key in close)}?" if close else ""
    return ConfigError(
        f"unknown config key {path!r}; valid keys: {', '.join(valid)}{hint} "
        "(`fundl config EXAMPLE` lists every key with its type and meaning)"
    )


def override(config: Config, settings: Iterable[tuple[str, Any]]) -> Config:
    """``config`` with each ``(dotted_path, value)`` set; unknown paths and wrong types are errors.

    Setting ``optimizer.name`` to another optimizer without its own settings (:data:`OPTIMIZER_OWN`)
    brings those back to their defaults: the learning rate becomes the new optimizer's default.
    """
    config = copy.deepcopy(config)
    valid = flat_keys(config)
    settings = list(settings)
    for path, value in settings:
        if path not in valid:
            raise unknown_key(path, valid)
        *parents, leaf = path.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[leaf] = _check_type(path, valid[path], value)
    return own_optimizer_settings(valid, config, {path for path, _ in settings})


def own_optimizer_settings(before: Mapping[str, Any], config: Config, set_here: Iterable[str]) -> Config:
    """``config`` (changed in place) after a layer that set the keys ``set_here`` over ``before`` (flat keys):
    if the layer named another optimizer, the old one's own settings that the layer did not set go back to
    their defaults; then an unset learning rate becomes the optimizer's default (:data:`DEFAULT_RATES`)."""
    optimizer = config.get("optimizer")
    if not isinstance(optimizer, dict) or "name" not in optimizer:
        return config
    if before.get("optimizer.name", optimizer["name"]) != optimizer["name"]:
        for key in OPTIMIZER_OWN:
            if f"optimizer.{key}" not in set_here and key in optimizer:
                optimizer[key] = copy.deepcopy(DEFAULTS["optimizer"][key])
    if optimizer.get("learning_rate", 0) is None and optimizer["name"] in DEFAULT_RATES:
        optimizer["learning_rate"] = DEFAULT_RATES[optimizer["name"]]
    return config


def resolve(example_config: Mapping[str, Any], settings: Iterable[tuple[str, Any]] = ()) -> Config:
    """:data:`DEFAULTS`, then an example's ``CONFIG`` (which may add keys of its own), then ``settings``."""
    merged = merge(DEFAULTS, example_config)
    merged = own_optimizer_settings(flat_keys(DEFAULTS), merged, flat_keys(example_config))
    return override(merged, settings)


def parse_settings(items: Iterable[str]) -> list[tuple[str, Any]]:
    """``["train.epochs=3", ...]`` from the command line, as ``[("train.epochs", 3), ...]``."""
    settings = []
    for item in items:
        path, sep, text = item.partition("=")
        if not sep or not path:
            raise ConfigError(f"expected key=value (e.g. train.epochs=3), got {item!r}")
        settings.append((path.strip(), parse_value(text.strip())))
    return settings
