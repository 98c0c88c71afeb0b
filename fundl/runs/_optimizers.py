"""Optimizers from a config: a thin, checked mapping of names onto optax.

Every schedule here is written so that the learning rate may be a traced number (a sweep
trains its members' rates inside one compiled program): nothing looks at its value in Python.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import optax

from fundl.runs._config import DEFAULT_RATES, ConfigError

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
SCHEDULES = ("constant", "cosine", "exponential", "piecewise", "one_cycle")
DECAY_MASKS = ("all", "weights")


def make_schedule(opt: Mapping[str, Any], total_steps: int) -> optax.Schedule:
    """The learning rate per step that ``config["optimizer"]`` describes (its ``schedule`` after ``warmup_steps``).

    - ``constant``: the rate.
    - ``cosine``: cosine decay from the rate to 0 at the end of the run.
    - ``exponential``: decays smoothly by the factor ``decay_rate`` over the run.
    - ``piecewise``: multiplied by ``decay_rate`` at each step of ``boundaries``.
    - ``one_cycle``: rises from rate/25 to the rate over ``warmup_steps`` (default: 30% of
      the run), then falls to rate/250,000 by cosine (``optax.cosine_onecycle_schedule``).
    """
    name, lr, warmup = opt["schedule"], opt["learning_rate"], opt["warmup_steps"] or 0
    if name not in SCHEDULES:
        raise ConfigError(f"unknown schedule {name!r} (optimizer.schedule); available: {', '.join(SCHEDULES)}")
    decay = max(total_steps, warmup + 1) - warmup  # the steps after the warm-up
    if name == "one_cycle":
        start = warmup / max(total_steps, 1) if warmup else 0.3
        return optax.cosine_onecycle_schedule(max(total_steps, 2), lr, pct_start=min(start, 0.99))
    if name in ("exponential", "piecewise") and opt["decay_rate"] is None:
        raise ConfigError(
            f"optimizer.schedule={name!r} needs optimizer.decay_rate: the rate's factor "
            + ("over the whole run, e.g. 0.01" if name == "exponential" else "at each boundary, e.g. 0.1")
        )
    if name == "cosine":  # optax.warmup_cosine_decay_schedule's, but the rate may be traced (a sweep's)
        return optax.join_schedules(
            [optax.linear_schedule(0.0, lr, warmup), optax.cosine_decay_schedule(lr, decay)], [warmup]
        )
    after: optax.Schedule | None
    if name == "exponential":
        after = optax.exponential_decay(lr, decay, opt["decay_rate"])
    elif name == "piecewise":
        after = optax.piecewise_constant_schedule(lr, {step - warmup: opt["decay_rate"] for step in _boundaries(opt)})
    else:
        after = None
    if after is None:
        return optax.linear_schedule(0.0, lr, warmup) if warmup else optax.constant_schedule(lr)
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), after], [warmup]) if warmup else after


def _boundaries(opt: Mapping[str, Any]) -> list[int]:
    steps = opt["boundaries"]
    warmup = opt["warmup_steps"] or 0
    if not steps or not all(isinstance(s, int) and not isinstance(s, bool) and s > warmup for s in steps):
        raise ConfigError(
            "optimizer.schedule='piecewise' needs optimizer.boundaries: a list of steps after the warm-up "
            f"({warmup} steps), e.g. [1000, 2000]; got {steps!r}"
        )
    return sorted(steps)


def weights_only(params: Any) -> Any:
    """The weight-decay mask ``"weights"``: ``True`` for arrays of 2+ dimensions (kernels, embeddings), ``False``
    for biases and the scales and offsets of normalisation layers."""
    return jax.tree.map(lambda leaf: leaf.ndim >= 2, params)


def make_optimizer(
    config: Mapping[str, Any], total_steps: int, schedule: optax.Schedule | None = None
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optax optimizer and learning-rate schedule described by ``config["optimizer"]``.

    Args:
      config: a resolved config (its ``optimizer`` section is read).
      total_steps: the run's length, for schedules that end with it.
      schedule: the learning rate per step to use instead of the config's (an example's own).
    """
    opt = config["optimizer"]
    name = opt["name"]
    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {name!r} (optimizer.name); available: {', '.join(OPTIMIZERS)}")
    if opt["learning_rate"] is None:
        opt = {**opt, "learning_rate": DEFAULT_RATES[name]}
    constant = schedule is None and opt["schedule"] == "constant" and not opt["warmup_steps"]
    if schedule is None:
        schedule = make_schedule(opt, total_steps)
    kwargs = _keywords(name, opt)
    optimizer = OPTIMIZERS[name](opt["learning_rate"] if constant else schedule, **kwargs)
    if opt["clip_norm"] is not None:
        optimizer = optax.chain(optax.clip_by_global_norm(opt["clip_norm"]), optimizer)
    return optimizer, schedule


def _keywords(name: str, opt: Mapping[str, Any]) -> dict[str, Any]:
    """The optimizer's own settings, as optax keywords, each checked against the optimizer it applies to."""
    kwargs: dict[str, Any] = {}
    if opt["momentum"] is not None:
        if name != "sgd":
            raise ConfigError(f"optimizer.momentum applies to sgd only, not {name!r}: set optimizer.momentum=null")
        kwargs["momentum"] = opt["momentum"]
    if opt["nesterov"]:
        if name != "sgd" or opt["momentum"] is None:
            raise ConfigError(
                "optimizer.nesterov applies to sgd with momentum (e.g. optimizer.momentum=0.9)"
                + ("" if name == "sgd" else f", not to {name!r} (nadam is Adam with Nesterov momentum)")
            )
        kwargs["nesterov"] = True
    if opt["weight_decay"] is not None:
        if name not in ("adamw", "lamb"):
            raise ConfigError(f"optimizer.weight_decay applies to adamw and lamb only, not {name!r}")
        kwargs["weight_decay"] = opt["weight_decay"]
    if opt["weight_decay_mask"] not in DECAY_MASKS:
        raise ConfigError(
            f"unknown optimizer.weight_decay_mask {opt['weight_decay_mask']!r}; available: {', '.join(DECAY_MASKS)}"
        )
    if opt["weight_decay_mask"] == "weights":
        if opt["weight_decay"] is None:
            raise ConfigError(
                "optimizer.weight_decay_mask='weights' masks weight decay: set optimizer.weight_decay too"
            )
        kwargs["mask"] = weights_only
    return kwargs
