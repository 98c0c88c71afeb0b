"""The states a run directory can be left in, the one way forward from each, and the signals that end a run.

A run goes through three phases, and a signal means something different in each:

- **starting** (checks, making and sealing the directory, the first train state): SIGTERM,
  SIGHUP or Ctrl-C stops it at once (:class:`StartInterrupted`). Nothing was trained: an
  unsealed directory is removed again, a sealed one resumes from step 0.
- **training**: the first signal asks the loop to stop after the call in flight and save a
  checkpoint (exit 75, ``fundl resume`` continues exactly); a second Ctrl-C aborts at once
  (:class:`RunAborted`, exit 130), keeping the latest complete checkpoint.
- **finishing** (scoring the test splits, writing the results): a first signal waits until
  the results are written, so the status is true; a second signal (of any kind) aborts at
  once, leaving the run ``interrupted``, and ``fundl resume`` writes the results from the
  final checkpoint (without training or repeating a record).

SIGHUP (a closed terminal or SSH session) is SIGTERM's twin; after it, the console may be
gone, so printing to it can no longer fail the run. SIGKILL cannot be caught: the status
stays ``running``, and ``fundl resume`` continues from the latest checkpoint.

Every state, and its way forward (:func:`way_forward`, shown by ``fundl show``):

==============================  ===========================================================
no ``identity.json``            stopped while starting, nothing trained: ``fundl run --out DIR`` reuses it
held by a live process         in use: wait, or stop it (SIGTERM) and resume later
``running``, no process         killed (SIGKILL, a crash, power): ``fundl resume DIR``
``interrupted`` / ``failed``    ``fundl resume DIR`` (from the latest checkpoint, else from step 0)
``finished`` / ``stopped_early``  done: ``load_run(DIR)``, ``fundl show DIR``
==============================  ===========================================================
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

from fundl.runs._directory import RunDirectory
from fundl.runs._files import FULL, DiskFull
from fundl.runs._identity import is_sealed
from fundl.runs._lock import NAME as LOCK, describe_holder, holder
from fundl.train._interrupt import Aborted, SignalHandlers, quiet_console

START_FILES = (RunDirectory.STATUS, RunDirectory.CONFIG, RunDirectory.EXAMPLE, RunDirectory.ENVIRONMENT, LOCK)


class StartInterrupted(KeyboardInterrupt):
    """A signal (SIGTERM, SIGHUP, Ctrl-C) arrived before training started; ``message`` says what is left."""

    def __init__(self, signal_name: str, message: str = ""):
        super().__init__(message or f"interrupted by {signal_name} while starting")
        self.signal_name = signal_name

    @property
    def message(self) -> str:
        return str(self.args[0])


class RunAborted(Aborted):
    """A second Ctrl-C (or, while the results are written, a second signal of any kind) aborted the run at once;
    ``message`` says what was kept and how to go on."""

    def __init__(self, message: str = "", signal_name: str = "SIGINT"):
        super().__init__(message or f"aborted by a second {_said(signal_name)}")
        self.signal_name = signal_name

    @property
    def message(self) -> str:
        return str(self.args[0])


def _said(signal_name: str) -> str:
    return "Ctrl-C" if signal_name == "SIGINT" else signal_name


class RunSignals(SignalHandlers):
    """SIGTERM, SIGHUP and SIGINT for the whole life of a run (see the module's docstring).

    Use it as a context around everything a run or resume does; call :meth:`training`
    when the loop starts and :meth:`finishing` when it has returned. Handlers are
    installed only in the main thread (elsewhere signals keep their defaults).
    """

    signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def __init__(self) -> None:
        self.phase = "starting"
        self.received: list[str] = []
        self._finishing_from = 0  # the signals received before the results were written
        self._checkpoints: Any = None

    def training(self, checkpoints: Any) -> None:
        """The loop starts: a signal now asks ``checkpoints`` to stop the run with a checkpoint."""
        self._checkpoints = checkpoints
        self.phase = "training"
        if self.received:  # arrived while a start-up step could not be interrupted
            checkpoints.preemption = f"interrupted by {self.received[0]}"

    def finishing(self) -> None:
        """Training is over: a signal now waits for the results to be written."""
        self.phase = "finishing"
        self._finishing_from = len(self.received)

    @property
    def deferred(self) -> str | None:
        """The first signal that arrived while the results were written (they were written all the same)."""
        late = self.received[self._finishing_from :] if self.phase == "finishing" else []
        return late[0] if late else None

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        again = bool(self.received)
        self.received.append(name)
        if signum == signal.SIGHUP:
            quiet_console()
        if self.phase == "starting":
            raise StartInterrupted(name)
        if self.phase == "finishing":  # the first waits for the results; a second stops at once (resume rewrites them)
            if len(self.received) - self._finishing_from > 1 or (signum == signal.SIGINT and again):
                raise RunAborted(signal_name=name)
            print(f"{name}: writing the results first (a second signal stops at once)", file=sys.stderr)
            return
        if signum == signal.SIGINT and again:
            raise RunAborted(signal_name=name)
        if self._checkpoints is not None and not self._checkpoints.preemption:
            self._checkpoints.preemption = f"interrupted by {name}"
        else:
            print(f"{name}: already stopping at the next checkpoint (Ctrl-C twice aborts at once)", file=sys.stderr)


# --- the start files of an unsealed directory -----------------------------------------------------


def only_start_files(path: Path) -> bool:
    """Whether ``path`` holds nothing but what a run writes before it is sealed (so it trained nothing)."""
    if is_sealed(path):
        return False
    return all(p.name in START_FILES or (p.name.startswith(".") and p.name.endswith(".tmp")) for p in path.iterdir())


def remove_start_files(path: Path, remove_directory: bool) -> None:
    """Removes what an unsealed run wrote (and ``path`` itself if ``remove_directory`` and it is then empty)."""
    for p in list(path.iterdir()) if path.is_dir() else []:
        if p.name in START_FILES or (p.name.startswith(".") and p.name.endswith(".tmp")):
            p.unlink(missing_ok=True)
    if remove_directory:
        try:
            path.rmdir()
        except OSError:
            pass


# --- the way forward from each state ---------------------------------------------------------------


def way_forward(path: Path, status: dict[str, Any], checkpoint_steps: list[int]) -> str:
    """The one thing to do next with a run directory in this state, in a sentence."""
    if not is_sealed(path):
        return f"it stopped while starting and trained nothing: `fundl run --out {path}` reuses the directory"
    state = status.get("status")
    if state in ("finished", "stopped_early"):
        return f"done: load it with fundl.runs.load_run({str(path)!r})"
    writer = holder(path)
    if writer is not None:
        return f"in use ({describe_holder(writer)}): wait, or stop it with SIGTERM and resume it later"
    start = f"from step {checkpoint_steps[-1]}" if checkpoint_steps else "from step 0 (no checkpoint was saved)"
    if state == "failed" and "became" in str(status.get("reason")):
        return (
            "training stopped on a non-finite value; the last good checkpoint is kept "
            f"({start.removeprefix('from ')}): fix the cause (e.g. a lower learning rate) in a new run"
        )
    return f"`fundl resume {path}` continues it {start}"


# --- what a run leaves when it stops unexpectedly -----------------------------------------------------


def _resume_from(directory: Any) -> str:
    steps = directory.checkpoint_steps()
    return f"from step {steps[-1]}" if steps else "from step 0"


def _try_status(directory: Any, status: str, step: int, reason: str) -> None:
    """Writes the status if it can (on a full disk it may not: then ``fundl resume`` is still the way on)."""
    try:
        directory.set_status(status, step, reason)
    except OSError:
        pass


def abandoned_start(directory: Any, error: BaseException) -> BaseException:
    """What a start that failed or was interrupted leaves, and the error to raise instead of ``error``.

    An unsealed directory trained nothing and is removed again (its start files, and the
    directory itself if this run made it); a sealed one is left ``interrupted`` or ``failed``
    at step 0, and ``fundl resume`` starts it.
    """
    path = directory.path
    if not directory.is_sealed():
        remove_start_files(path, remove_directory=directory.created)
        left = f"{path} was removed" if not path.exists() else f"{path} was emptied"
        if isinstance(error, StartInterrupted):
            return StartInterrupted(
                error.signal_name, f"interrupted by {error.signal_name} while starting: nothing was trained, and {left}"
            )
        if isinstance(error, OSError) and error.errno in FULL:
            return DiskFull(
                error.filename, f"nothing was trained, and {left}: free some space and run it again", error.errno
            )
        return error
    way = f"`fundl resume {path}` starts it from step 0"
    if isinstance(error, StartInterrupted):
        reason = f"interrupted by {error.signal_name} before training started: nothing was trained"
        _try_status(directory, "interrupted", 0, reason)
        return StartInterrupted(error.signal_name, f"{reason}; {way}")
    if isinstance(error, OSError) and error.errno in FULL:
        error = DiskFull(error.filename, f"free some space, then {way}", error.errno)
    _try_status(directory, "failed", 0, f"{type(error).__name__}: {error}")
    return error


def failed_training(directory: Any, error: BaseException, finishing: bool) -> BaseException:
    """The status a run left by ``error`` during training (or while writing its results) gets, and the error to
    raise instead: one that says what was kept and how to go on."""
    steps = directory.checkpoint_steps() if directory is not None else []
    path = directory.path if directory is not None else "the run directory"
    way = f"`fundl resume {path}` continues {_resume_from(directory) if directory is not None else ''}".rstrip()
    step = steps[-1] if steps else 0
    if isinstance(error, KeyboardInterrupt):
        second = _said(getattr(error, "signal_name", "SIGINT"))  # the loop's Aborted: a second Ctrl-C
        what = f"aborted by a second {second}" if isinstance(error, Aborted) else "aborted by Ctrl-C"
        when = " while the results were written" if finishing else ""
        kept = f"the latest complete checkpoint (step {step}) is kept" if steps else "no checkpoint was saved yet"
        if directory is not None:
            _try_status(directory, "interrupted", step, f"{what}{when}")
        return RunAborted(f"{what}{when}; {kept}: {way}")
    if isinstance(error, OSError) and error.errno in FULL:
        error = DiskFull(error.filename, f"free some space, then {way}", error.errno)
    if directory is not None:
        _try_status(directory, "failed", step, f"{type(error).__name__}: {error}")
    return error
