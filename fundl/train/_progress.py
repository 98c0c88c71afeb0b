"""What training shows while it runs, and where it shows it.

Three levels of ``verbose`` (``fit``, ``fit_members``, ``fundl.runs.run``, ``fundl run --verbose``):

- ``0`` or ``"silent"``: nothing.
- ``1`` or ``"epochs"``: one line per log or evaluation (once per epoch by default) with the
  training metrics and every evaluated split's, e.g.
  ``step     47  epoch   1.00  train: loss  0.5123  accuracy  0.8612  validation: loss  0.3123 ...``.
- ``2`` or ``"bar"`` (the default): the same lines and a live progress bar (epoch, step,
  loss, examples/s, time left). In a terminal or a notebook (with ``ipywidgets``) it is
  rich's bar; where output is not a terminal (a file, a pipe, a notebook without
  ``ipywidgets``) it degrades to a plain progress line every :data:`PLAIN_EVERY_S` seconds.

Results (the metric lines) go to stdout; diagnostics (what is trained, how long it took,
why it stopped, the progress) go to stderr. Every line is flushed when it is written, so a
run or a sweep piped into a file shows as it goes.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.monitoring
import numpy as np

from fundl._text import loss_first, metrics_text, number
from fundl.train._history import Record

VERBOSITY = {"silent": 0, "epochs": 1, "bar": 2}
PLAIN_EVERY_S = 10.0  # seconds between two plain progress lines (output that is not a terminal)


def verbosity(verbose: int | str = 2, quiet: bool = False) -> int:
    """The level ``0``, ``1`` or ``2`` of ``verbose`` (an int or a name); ``quiet=True`` means ``0``."""
    if quiet:
        return 0
    if isinstance(verbose, str) and verbose in VERBOSITY:
        return VERBOSITY[verbose]
    if isinstance(verbose, (int, np.integer)) and not isinstance(verbose, bool) and 0 <= verbose <= 2:
        return int(verbose)
    raise ValueError(
        f"verbose must be 0, 1 or 2, or one of {', '.join(repr(name) for name in VERBOSITY)}; got {verbose!r}"
    )


def _write(stream: Any, text: str) -> None:
    stream.write(text + "\n")
    stream.flush()


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class PlainProgress:
    """Progress as plain lines on stderr, one every ``every_s`` seconds: for output that is not a terminal."""

    def __init__(self, total_steps: int, epochs: int, every_s: float | None = None):
        self.total, self.epochs = total_steps, epochs
        self.every_s = PLAIN_EVERY_S if every_s is None else every_s
        self._started = self._last = time.monotonic()
        self._first_step: int | None = None

    def start(self, step: int) -> None:
        self._first_step = step
        self._started = self._last = time.monotonic()

    def update(self, step: int, epoch: int, loss: float, examples_per_s: float) -> None:
        now = time.monotonic()
        if now - self._last < self.every_s:
            return
        self._last = now
        done = step - (self._first_step or 0)
        left = (self.total - step) * (now - self._started) / done if done > 0 else float("nan")
        eta = _duration(left) if np.isfinite(left) else "?"
        percent = 100 * step / max(self.total, 1)
        _write(
            sys.stderr,
            f"progress: step {step:>6}/{self.total} ({percent:3.0f}%)  epoch {min(epoch + 1, self.epochs)}/"
            f"{self.epochs}  loss {number(loss)}  {examples_per_s:,.0f} ex/s  {eta} left",
        )

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass


class RichProgress:
    """rich's live bar on stderr, in a terminal or a notebook; the metric lines are printed above it."""

    def __init__(self, total_steps: int, epochs: int, console: Any):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.epochs = epochs
        # Lines written to stdout go above the bar when both are the terminal; stdout redirected to a file
        # (or a notebook's output) is left alone, so the results land where they were sent.
        above = sys.stdout.isatty() and not console.is_jupyter
        self._bar = Progress(
            TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  {task.fields[speed]} ex/s"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
            redirect_stdout=above,
        )
        self._task = self._bar.add_task("train", total=total_steps, epoch=1, epochs=epochs, loss="-", speed="-")

    def start(self, step: int) -> None:
        self._bar.start()
        self._bar.update(self._task, completed=step)

    def update(self, step: int, epoch: int, loss: float, examples_per_s: float) -> None:
        self._bar.update(
            self._task,
            completed=step,
            epoch=min(epoch + 1, self.epochs),
            loss=number(loss).strip(),
            speed=f"{examples_per_s:,.0f}",
        )

    def refresh(self) -> None:
        self._bar.refresh()

    def close(self) -> None:
        self._bar.stop()


def live_display(total_steps: int, epochs: int) -> RichProgress | PlainProgress:
    """rich's bar where it can render (a terminal; a notebook with ``ipywidgets``), else plain periodic lines."""
    from rich.console import Console

    console = Console(stderr=True)
    if console.is_jupyter:
        renders = importlib.util.find_spec("ipywidgets") is not None  # rich draws its bar in a notebook widget
    else:
        renders = console.is_terminal and not console.is_dumb_terminal
    return RichProgress(total_steps, epochs, console) if renders else PlainProgress(total_steps, epochs)


class ProgressReport:
    """The lines, the diagnostics and the live display of one training, at a level of :func:`verbosity`.

    The records of one boundary (a log and the evaluations at the same step) are written as
    one line, when the boundary is over (:meth:`flush`) or the next one begins.
    """

    def __init__(self, total_steps: int, epochs: int, verbose: int | str = 2, *, quiet: bool = False):
        self.level = verbosity(verbose, quiet)
        self.epochs = epochs
        self._display = live_display(total_steps, epochs) if self.level >= 2 else None
        self._started = False
        self._pending: list[str] = []
        self._pending_step: tuple[int, float] | None = None
        self._members = 0  # a population's lines say how many members they summarise

    @property
    def quiet(self) -> bool:
        return self.level == 0

    def print(self, text: str) -> None:
        """A diagnostic line, on stderr."""
        if self.level:
            self.flush()
            _write(sys.stderr, text)

    def start(self, step: int) -> None:
        if self._display is not None and not self._started:
            self._display.start(step)
            self._started = True

    def update(self, step: int, epoch: int, loss: float, examples_per_s: float) -> None:
        if self._display is not None and self._started:
            self._display.update(step, epoch, loss, examples_per_s)

    def _add(self, step: int, epoch: float, segment: str) -> None:
        if self._pending_step is not None and self._pending_step[0] != step:
            self.flush()
        self._pending_step = (step, epoch)
        self._pending.append(segment)

    def record_line(self, record: Record) -> None:
        """A single run's log or evaluation, for the line of its step."""
        if self.level:
            self._add(record.step, record.epoch, f"{record.split}: {metrics_text(record.metrics)}")

    def population_line(self, records: Sequence[Record]) -> None:
        """The members' records of one split, as each metric's mean ± std: ``validation: accuracy 0.9621 ± 0.0074``."""
        if not self.level or not records:
            return
        first = records[0]
        names = loss_first(dict.fromkeys(name for record in records for name in record.metrics))
        spread = []
        for name in names:
            values = [r.metrics[name] for r in records if name in r.metrics]
            if all(isinstance(v, (int, float)) for v in values):
                column = np.array(values, np.float64)
                spread.append(f"{name} {number(float(np.mean(column)))} ± {number(float(np.std(column))).strip()}")
        self._members = len(records)
        self._add(first.step, first.epoch, f"{first.split}: {'  '.join(spread)}")

    def flush(self) -> None:
        """Writes the pending boundary's line to stdout: ``step     47  epoch   1.00  train: ...  validation: ...``."""
        if not self._pending or self._pending_step is None:
            return
        step, epoch = self._pending_step
        if self._display is not None and self._started:
            self._display.refresh()  # the bar shows this step before its line is printed
        members = f"  ({self._members} members: mean ± std)" if self._members else ""
        _write(sys.stdout, f"step {step:>6}  epoch {epoch:>6.2f}  " + "  ".join(self._pending) + members)
        self._pending, self._pending_step = [], None

    def close(self) -> None:
        self.flush()
        if self._display is not None and self._started:
            self._display.close()
            self._started = False


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
