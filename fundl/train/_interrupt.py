"""Ctrl-C during training keeps the work: the first one stops the loop cleanly, a second one aborts.

While the loop runs (in the main thread), :class:`Interrupts` holds the handlers of its
signals: SIGINT always (Ctrl-C in a terminal, "interrupt the kernel" in a notebook,
``_thread.interrupt_main()`` from another thread), and SIGTERM where a run asks for it
(``fundl run``: a preemption notice; and SIGHUP, a closed terminal). The first signal only records a reason; the loop
reads it after each compiled call and each boundary, finishes the calls in flight, logs, saves a checkpoint
if it has a checkpointer and returns the train state with ``history.interrupted`` set.
A second SIGINT raises :class:`Aborted` (a ``KeyboardInterrupt``) at once. A ``KeyboardInterrupt``
raised by a hook counts as the first one (see :class:`fundl.train._records.Recorder`).

``fit`` from the returned train state continues exactly where it stopped, so an
interrupted and continued training ends bit-identical to one that never stopped.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

STOP_SIGNALS: tuple[int, ...] = (signal.SIGINT,)
"""The signals ``fit`` stops on by default; ``fundl.runs`` adds SIGTERM."""


class Aborted(KeyboardInterrupt):
    """A second Ctrl-C while training was already stopping: abort now (nothing catches it on the way out)."""


class SignalHandlers:
    """Holds ``self._handle`` as the handler of ``self.signals`` while active, then gives the previous handlers
    back (in the main thread only: elsewhere Python cannot set handlers, and it does nothing)."""

    signals: tuple[int, ...] = ()

    def _handle(self, signum: int, frame: Any) -> None:
        raise NotImplementedError

    def __enter__(self) -> Any:
        self._previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


class Interrupts(SignalHandlers):
    """Holds the stop signals' handlers while training.

    Attributes:
      reason: why training should stop (``"interrupted by SIGINT (Ctrl-C)"``), or ``None``.
    """

    def __init__(self, signals: Sequence[int] = STOP_SIGNALS):
        self.signals = tuple(signals)
        self.reason: str | None = None

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.reason is not None:
            raise Aborted("aborted by a second Ctrl-C")
        if signum == getattr(signal, "SIGHUP", None):
            quiet_console()
        name = signal.Signals(signum).name
        self.reason = f"interrupted by {name}" + (" (Ctrl-C)" if signum == signal.SIGINT else "")


class _Quiet:
    """A console stream that a closed terminal cannot make fail (after SIGHUP, writes may raise EIO)."""

    def __init__(self, stream: Any):
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except (OSError, ValueError):
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except (OSError, ValueError):
            pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def quiet_console() -> None:
    """After SIGHUP (a closed terminal or SSH session) printing can no longer fail the run."""
    if not isinstance(sys.stdout, _Quiet):
        sys.stdout, sys.stderr = _Quiet(sys.stdout), _Quiet(sys.stderr)
