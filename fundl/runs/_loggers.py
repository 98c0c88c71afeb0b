"""The loggers a run can write to besides ``metrics.jsonl``: TensorBoard and Weights & Biases (offline).

Each is a :class:`fundl.train.Logger` made by name from ``log.<name>=true`` and written
into the run directory (a sweep's members each into their own), so nothing leaves the
machine: ``tensorboard --logdir RUN_DIR/tensorboard``; ``wandb sync RUN_DIR/wandb/offline-run-*``
to upload a W&B run later. Each needs its optional extra; without it the config check
says which to install, before anything is made.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fundl.runs._config import ConfigError

EXTRAS = {"tensorboard": ("tensorboardX", "tensorboard"), "wandb": ("wandb", "wandb")}


class TensorBoardLogger:
    """Scalars as TensorBoard event files in ``directory`` (tensorboardX)."""

    def __init__(self, directory: Path, name: str = "", config: dict[str, Any] | None = None):
        from tensorboardX import SummaryWriter

        self._writer = SummaryWriter(str(directory))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for tag, value in metrics.items():
            self._writer.add_scalar(tag, value, step)

    def close(self) -> None:
        self._writer.close()  # writes what the writer's thread still holds


class WandbLogger:
    """A Weights & Biases run in offline mode, under ``directory`` (``wandb sync`` uploads it later, if ever)."""

    def __init__(self, directory: Path, name: str = "", config: dict[str, Any] | None = None):
        import wandb

        directory.mkdir(parents=True, exist_ok=True)
        settings = wandb.Settings(silent=True, console="off", x_disable_stats=True, disable_git=True)
        self._run = wandb.init(
            mode="offline",
            dir=str(directory),
            project=os.environ.get("WANDB_PROJECT", "fundl"),
            name=name or None,
            config=config,
            reinit="create_new",  # a sweep's members are runs of their own, side by side
            settings=settings,
        )

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self._run.log(metrics, step=step)

    def close(self) -> None:
        self._run.finish()


LOGGERS: dict[str, Callable[..., Any]] = {"tensorboard": TensorBoardLogger, "wandb": WandbLogger}
"""The loggers by their ``log.<name>`` config key."""


def check_loggers(log: dict[str, Any]) -> list[str]:
    """The names of the loggers that ``log`` (the config's section) turns on; a missing extra is a ConfigError."""
    chosen = [name for name in LOGGERS if log.get(name)]
    for name in chosen:
        module, extra = EXTRAS[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"log.{name} needs the {module} package: pip install 'fundl[{extra}]'")
    return chosen
