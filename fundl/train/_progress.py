"""What ``fit`` shows while it runs: a live progress bar and one line per evaluation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.monitoring
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from fundl.train._history import Record


def format_metrics(metrics: dict[str, Any]) -> str:
    """``accuracy 0.9704  loss 0.09827  learning_rate 1e-05``: 4 significant digits, never ``0.0000``."""
    return "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())


class ProgressReport:
    """A rich progress bar (epoch, step, loss, examples/s, ETA) and printed lines; silent if quiet."""

    def __init__(self, total_steps: int, epochs: int, quiet: bool = False, console: Console | None = None):
        self.quiet = quiet
        self.epochs = epochs
        self.console = console or Console(stderr=True)
        self._bar = Progress(
            TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  {task.fields[speed]} ex/s"),
            TimeRemainingColumn(),
            console=self.console,
            disable=quiet,
            transient=False,
        )
        self._task = self._bar.add_task("train", total=total_steps, epoch=1, epochs=epochs, loss="-", speed="-")
        self._started = False

    def print(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text, highlight=False, markup=False, soft_wrap=True)

    def start(self, step: int) -> None:
        if not self._started:
            self._bar.start()
            self._started = True
        self._bar.update(self._task, completed=step)

    def update(self, step: int, epoch: int, loss: float, examples_per_s: float) -> None:
        self._bar.update(
            self._task,
            completed=step,
            epoch=min(epoch + 1, self.epochs),
            loss=f"{loss:.4g}",
            speed=f"{examples_per_s:,.0f}",
        )

    def record_line(self, record: Record) -> None:
        """One line per log or evaluation: ``step 47  epoch 1.00  test: accuracy 0.96  loss 0.13``."""
        if self._started:
            self._bar.refresh()  # the bar shows this step before its line is printed
        member = "" if record.member is None else f"  member {record.member:>3}"
        self.print(
            f"step {record.step:>6}  epoch {record.epoch:>6.2f}{member} "
            f" {record.split:>10}: {format_metrics(record.metrics)}"
        )

    def population_line(self, records: Sequence[Record]) -> None:
        """One line for the members' records of one split: ``... validation: accuracy 0.9621 ± 0.0074 (16 members)``."""
        if self._started:
            self._bar.refresh()
        first = records[0]
        names = list(dict.fromkeys(name for record in records for name in record.metrics))
        spread = []
        for name in names:
            values = np.array([r.metrics[name] for r in records if name in r.metrics], np.float64)
            spread.append(f"{name} {np.mean(values):.4g} ± {np.std(values):.2g}")
        self.print(
            f"step {first.step:>6}  epoch {first.epoch:>6.2f}  "
            f"{first.split:>10}: {'  '.join(spread)}  ({len(records)} members)"
        )

    def close(self) -> None:
        if self._started:
            self._bar.stop()


class CompileTimer:
    """Sums the seconds JAX spends tracing, lowering and compiling while it is active.

    The figures come from JAX itself (``jax.monitoring`` duration events), so step time
    and compile time can be reported apart.
    """

    EVENTS = (
        "/jax/core/compile/jaxpr_trace_duration",
        "/jax/core/compile/jaxpr_to_mlir_module_duration",
        "/jax/core/compile/backend_compile_duration",
    )

    def __init__(self):
        self.seconds = 0.0

    def _listen(self, event: str, duration_secs: float, **_: Any) -> None:
        if event in self.EVENTS:
            self.seconds += duration_secs

    def __enter__(self) -> "CompileTimer":
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def __exit__(self, *exc: Any) -> None:
        jax.monitoring.unregister_event_duration_listener(self._listen)
