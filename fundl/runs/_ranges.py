"""The values a config key can take: one table of ranges, checked before a run directory exists.

A key's type is checked when it is set (:func:`fundl.runs.override`); its range here, by
:func:`check_ranges`, for every numeric key at once: a key of :data:`RANGES` must lie in its
range, and no number anywhere in a config (an example's own keys included) may be NaN or
infinite. ``None`` ("not set") is always allowed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

from fundl.runs._config import ConfigError, flat_keys


class Range(NamedTuple):
    """The numbers a key accepts: ``low`` (inclusive unless ``low_open``) up to ``high`` (exclusive if ``high_open``).

    ``what`` says it in words for the error ("a positive integer"); ``why`` tells what a
    value outside would do, or how to choose one.
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    what: str = ""
    why: str = ""

    def holds(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)


COUNT = Range(1, what="a positive integer")
STEPS = Range(1, what="a positive number of steps")
NON_NEGATIVE = Range(0, what="a non-negative integer")

RANGES: dict[str, Range] = {
    "train.epochs": NON_NEGATIVE,
    "train.steps": NON_NEGATIVE,
    "train.batch_size": COUNT,
    "train.eval_batch_size": COUNT,
    "train.eval_every": STEPS,
    "train.log_every": STEPS,
    "train.devices": COUNT,
    "train.fsdp": COUNT,
    "train.accumulate": COUNT,
    "checkpoint.every_epochs": COUNT,
    "checkpoint.every_steps": COUNT,
    "checkpoint.keep": COUNT,
    "early_stopping.patience": Range(1, what="a positive number of evaluations"),
    "early_stopping.min_delta": Range(0, what="a non-negative number", why="the least improvement that counts"),
    "optimizer.learning_rate": Range(
        0, what="a non-negative number", why="a negative rate climbs the loss instead of descending it"
    ),
    "optimizer.warmup_steps": Range(
        0, what="a non-negative number of steps", why="the rate rises linearly from 0 over this many steps"
    ),
    "optimizer.momentum": Range(
        0, 1, high_open=True, what="in [0, 1)", why="at 1 or more a gradient is never forgotten and updates grow"
    ),
    "optimizer.weight_decay": Range(0, what="a non-negative number", why="a negative decay pushes weights to grow"),
    "optimizer.clip_norm": Range(
        0,
        low_open=True,
        what="a positive number",
        why="the largest global gradient norm kept: a negative one reverses the gradients, 0 zeroes them; "
        "null turns clipping off",
    ),
}


def check_ranges(config: Mapping[str, Any]) -> None:
    """Raises :class:`ConfigError` for the first value out of its range, or a number that is NaN or infinite."""
    for key, value in flat_keys(config).items():
        check_value(key, value)


def check_value(key: str, value: Any, option: str = "") -> None:
    """Raises :class:`ConfigError` if the number ``value`` of ``key`` is NaN, infinite or out of its range.

    ``option``: where the value was given, for the message (e.g. ``"--sweep "``).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{option}{key} must be a finite number, got {value!r}")
    allowed = RANGES.get(key)
    if allowed is not None and not allowed.holds(value):
        why = f" ({allowed.why})" if allowed.why else ""
        raise ConfigError(f"{option}{key} must be {allowed.what}, got {value!r}{why}")
