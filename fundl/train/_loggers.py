"""Where the metrics go besides the history: one small interface, and the hook that feeds it.

A :class:`Logger` takes the scalars of each log, evaluation and test score, by
``"split/metric"``, against the step; :func:`logger_hook` makes a hook of it for ``fit``.
``fundl.runs`` has loggers for TensorBoard and Weights & Biases (``log.tensorboard``,
``log.wandb``); one of one's own (a CSV file, a database, another tracker) is two methods.

Example:
  >>> class PrintLogger:
  ...     def log(self, step, metrics):
  ...         print(step, metrics)
  ...     def close(self):
  ...         pass
  >>> fit(..., hooks=[logger_hook(PrintLogger())])
"""

from __future__ import annotations

import math
from typing import Protocol

from fundl.train._hooks import Event

LOGGED = ("log", "eval", "test")  # the events whose records are logged


class Logger(Protocol):
    """Receives the logged metrics of a training."""

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """The finite scalar metrics of one record after ``step`` updates, by ``"split/metric"``."""

    def close(self) -> None:
        """Training and scoring are over: write out what is held, release files and processes."""


class LoggerHook:
    """A hook that sends every log, evaluation and test record to a :class:`Logger` (made by :func:`logger_hook`).

    ``close_at_end``: close the logger at the ``"end"`` event (``fit``); ``fundl.runs`` closes
    its loggers itself, after the test splits are scored.
    """

    def __init__(self, logger: Logger, close_at_end: bool = True):
        self.logger, self.close_at_end = logger, close_at_end

    def __call__(self, event: Event) -> None:
        if event.kind in LOGGED:
            record = event.record
            scalars = {
                f"{record.split}/{name}": float(value)
                for name, value in record.metrics.items()
                if isinstance(value, (int, float)) and math.isfinite(value)  # a confusion matrix is not a scalar
            }
            if scalars:
                self.logger.log(record.step, scalars)
        elif event.kind == "end" and self.close_at_end:
            self.logger.close()

    def close(self) -> None:
        self.logger.close()


def logger_hook(logger: Logger, *, close_at_end: bool = True) -> LoggerHook:
    """A hook for ``fit`` that sends each record's finite scalar metrics to ``logger`` (and closes it at the end)."""
    return LoggerHook(logger, close_at_end)
