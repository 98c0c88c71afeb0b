"""TensorBoard event files for a run's logged scalars (the optional extra ``fundl[tensorboard]``)."""

from __future__ import annotations

import math
from pathlib import Path

from fundl.runs._config import ConfigError
from fundl.train import Event, Hook

_MISSING = "log.tensorboard needs the tensorboardX package: pip install 'fundl[tensorboard]'"


def tensorboard_writer(directory: Path) -> Hook:
    """A hook writing every logged and evaluated metric as a scalar ``split/metric`` against the step.

    View with ``tensorboard --logdir RUN_DIR/tensorboard``.
    """
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise ConfigError(_MISSING) from None
    writer = SummaryWriter(str(directory))

    def hook(event: Event) -> None:
        if event.kind == "end":
            writer.close()  # writes what the writer's thread still holds
        elif event.kind in ("log", "eval"):
            record = event.record
            for name, value in record.metrics.items():
                if math.isfinite(value):
                    writer.add_scalar(f"{record.split}/{name}", value, record.step)

    return hook
