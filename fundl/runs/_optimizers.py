"""Optimizers from a config: a thin, checked mapping of names onto optax."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import optax

from fundl.runs._config import ConfigError

# The optax optimizers a config can name: each takes a learning rate (or schedule) first.
OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "sgd": optax.sgd,
    "adam": optax.adam,
    "adamw": optax.adamw,
    "rmsprop": optax.rmsprop,
    "adagrad": optax.adagrad,
    "adamax": optax.adamax,
    "nadam": optax.nadam,
    "radam": optax.radam,
    "lamb": optax.lamb,
    "lion": optax.lion,
}
SCHEDULES = ("constant", "cosine")


def make_optimizer(config: Mapping[str, Any], total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optax optimizer and learning-rate schedule described by ``config["optimizer"]``."""
    opt = config["optimizer"]
    name = opt["name"]
    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {name!r} (optimizer.name); available: {', '.join(OPTIMIZERS)}")
    if opt["schedule"] not in SCHEDULES:
        raise ConfigError(
            f"unknown schedule {opt['schedule']!r} (optimizer.schedule); available: {', '.join(SCHEDULES)}"
        )
    lr, warmup = opt["learning_rate"], opt["warmup_steps"] or 0
    if opt["schedule"] == "cosine":  # optax.warmup_cosine_decay_schedule's, but the rate may be traced (a sweep's)
        decay = max(total_steps, warmup + 1) - warmup
        schedule = optax.join_schedules(
            [optax.linear_schedule(0.0, lr, warmup), optax.cosine_decay_schedule(lr, decay)], [warmup]
        )
    elif warmup:
        schedule = optax.linear_schedule(0.0, lr, warmup)
    else:
        schedule = optax.constant_schedule(lr)
    kwargs = {}
    if opt["momentum"] is not None:
        if name != "sgd":
            raise ConfigError(f"optimizer.momentum applies to sgd only, not {name!r}")
        kwargs["momentum"] = opt["momentum"]
    if opt["weight_decay"] is not None:
        if name not in ("adamw", "lamb"):
            raise ConfigError(f"optimizer.weight_decay applies to adamw and lamb only, not {name!r}")
        kwargs["weight_decay"] = opt["weight_decay"]
    constant = opt["schedule"] == "constant" and not warmup
    optimizer = OPTIMIZERS[name](lr if constant else schedule, **kwargs)
    if opt["clip_norm"] is not None:
        optimizer = optax.chain(optax.clip_by_global_norm(opt["clip_norm"]), optimizer)
    return optimizer, schedule
