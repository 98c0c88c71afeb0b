"""The run directory: the one owner of a run's files, their names, and how they are read and written.

Files (all JSON is strict: a NaN or infinite metric is written as ``null``)::

    status.json          running / finished / stopped_early / interrupted / failed, with the reason and step
    config.json          the full resolved config
    environment.json     the manifest: example (and the hash of its copy), command, versions,
                         git commit, devices and mesh, XLA flags, precision, run id (and a sweep's members)
    example.py           a copy of the example's source; load_run and resume use it
    metrics.jsonl        one JSON object per log or evaluation (step, epoch, split, [member,] metrics)
    checkpoints/         periodic checkpoints (see fundl.runs.Checkpoints)
    summary.json         steps, epochs, wall_s, compile_s, params_fingerprint, final metrics
    members.json         a sweep's members: seed, settings, final metrics, fingerprint, how each ended
    train_state.msgpack  the final train state, whole (a sweep's: every member's, stacked)
    curves.png           the metrics of every split against the epoch
    tensorboard/         event files, with log.tensorboard
    wandb/               an offline Weights & Biases run, with log.wandb

Nothing here starts JAX: the run tools (``fundl ls``, ``show``, ``compare``) read through
it at the speed of reading JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

from fundl.runs._files import read_json, strict_json, write_atomic, write_json
from fundl.train._history import Record

STATUSES = ("running", "finished", "stopped_early", "interrupted", "failed")


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class RunDirectory:
    """A run directory, by path. :meth:`create` claims a new one; :meth:`open` checks an existing one."""

    CONFIG = "config.json"
    ENVIRONMENT = "environment.json"
    EXAMPLE = "example.py"
    STATUS = "status.json"
    METRICS = "metrics.jsonl"
    CHECKPOINTS = "checkpoints"
    SUMMARY = "summary.json"
    MEMBERS = "members.json"
    FINAL_STATE = "train_state.msgpack"
    CURVES = "curves.png"
    TENSORBOARD = "tensorboard"

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDirectory({str(self.path)!r})"

    def __truediv__(self, name: str) -> Path:
        """A file of the run that an example writes itself (``run.directory / "samples.png"``)."""
        return self.path / name

    # --- claiming and finding ----------------------------------------------------------------

    @classmethod
    def create(cls, name: str, out: str | os.PathLike | None = None) -> "RunDirectory":
        """A new run directory that no other run can share: ``out``, or ``runs/<name>-<timestamp>``.

        ``out`` may exist if it is empty. The run claims the directory by creating its
        ``status.json`` exclusively, so of two runs started at once on the same ``out``,
        one gets the directory and the other a ``FileExistsError``.
        """
        if out is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            Path("runs").mkdir(exist_ok=True)
            for n in range(1, 1000):
                path = Path("runs") / (f"{name}-{stamp}" if n == 1 else f"{name}-{stamp}-{n}")
                try:
                    path.mkdir()
                    break
                except FileExistsError:
                    continue
        else:
            path = Path(out)
            if path.exists() and not path.is_dir():
                raise FileExistsError(f"--out {path} is a file, not a directory")
            if path.is_dir() and any(path.iterdir()):
                raise FileExistsError(f"--out {path} is not empty: choose a new directory (or `fundl resume {path}`)")
            path.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path / cls.STATUS, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            raise FileExistsError(f"another run has just claimed {path}: choose another --out directory") from None
        with os.fdopen(fd, "w") as file:
            file.write(
                json.dumps({"status": "running", "step": 0, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n"
            )
        return cls(path)

    @classmethod
    def is_run(cls, path: str | os.PathLike) -> bool:
        """Whether ``path`` is a run directory (it holds a ``config.json``)."""
        return (Path(path) / cls.CONFIG).is_file()

    @classmethod
    def open(cls, path: str | os.PathLike) -> "RunDirectory":
        """An existing run directory, checked: it exists, is a directory and holds ``config.json``."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"run directory {path} does not exist")
        if not path.is_dir():
            raise ValueError(f"{path} is not a directory: give a run directory (one that holds {cls.CONFIG})")
        if not cls.is_run(path):
            raise FileNotFoundError(f"{path} is not a fundl run directory: no {cls.CONFIG}")
        return cls(path)

    # --- config, manifest, example ---------------------------------------------------------------

    def write_config(self, config: dict[str, Any]) -> None:
        write_json(self.path / self.CONFIG, config)

    def config(self) -> dict[str, Any]:
        return self._object(self.CONFIG)

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        write_json(self.path / self.ENVIRONMENT, manifest)

    def manifest(self) -> dict[str, Any]:
        """``environment.json`` (an empty dict if it is missing)."""
        return self._optional(self.ENVIRONMENT) or {}

    def copy_example(self, module: ModuleType) -> str:
        """Copies the example's source into the run directory; returns its SHA-256."""
        if module.__file__ is None:
            raise ValueError(f"example {module.__name__} has no source file to copy")
        source = Path(module.__file__).read_bytes()
        write_atomic(self.path / self.EXAMPLE, source)
        return hashlib.sha256(source).hexdigest()

    def example(self) -> Path:
        """The run's copy of its example, checked against the manifest's SHA-256."""
        copy = self.path / self.EXAMPLE
        if not copy.is_file():
            raise FileNotFoundError(f"{copy} is missing: the run directory is incomplete")
        if file_sha256(copy) != self.manifest().get("example_sha256"):
            raise ValueError(
                f"{copy} differs from the example the run was started with (its SHA-256 is not the manifest's)"
            )
        return copy

    # --- status -------------------------------------------------------------------------------

    def set_status(self, status: str, step: int, reason: str | None = None) -> None:
        """Keeps ``status.json`` current: one of :data:`STATUSES`, the step, and why."""
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; one of {', '.join(STATUSES)}")
        write_json(
            self.path / self.STATUS,
            {"status": status, "step": step, "reason": reason, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        )

    def status(self) -> dict[str, Any]:
        """``status.json``; for a directory older than status files, what its summary says."""
        status = self._optional(self.STATUS)
        if status is not None:
            return status
        summary = self.summary()
        if summary is None:
            return {"status": "incomplete", "step": None}
        return {"status": "stopped_early" if summary.get("stop_reason") else "finished", "step": summary.get("steps")}

    # --- records ------------------------------------------------------------------------------

    def record_writer(self) -> Callable[[Any], None]:
        """A hook that appends the record of every log, evaluation and test to ``metrics.jsonl``."""
        path = self.path / self.METRICS

        def hook(event: Any) -> None:
            if event.kind in ("log", "eval", "test"):
                with path.open("a") as file:
                    file.write(_line(event.record))

        return hook

    def write_records(self, records: Iterable[Record]) -> None:
        write_atomic(self.path / self.METRICS, "".join(_line(r) for r in records).encode())

    def records(self) -> list[Record]:
        """Every record of the run, across resumptions (an empty list if it has logged nothing yet).

        A last line cut short (a process killed while writing it) is left out; any other
        line that is not a record is an error naming the file and the line.
        """
        path = self.path / self.METRICS
        if not path.is_file():
            return []
        text = path.read_text()
        lines = text.splitlines()
        records = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
                if not isinstance(value, dict) or "step" not in value or "split" not in value:
                    raise ValueError("not a metrics record (a JSON object with step and split)")
                records.append(Record.from_json(value))
            except (ValueError, TypeError) as error:
                if number == len(lines) and not text.endswith("\n"):
                    break  # torn by a kill: the resumed run writes it again
                raise ValueError(f"{path} line {number} is not a metrics record: {error}") from None
        return records

    def truncate_records(self, step: int) -> None:
        """Keeps the records of steps up to ``step`` (a resumed run logs the rest again)."""
        if (self.path / self.METRICS).is_file():
            self.write_records([r for r in self.records() if r.step <= step])

    # --- results ------------------------------------------------------------------------------

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json(self.path / self.SUMMARY, summary)

    def summary(self) -> dict[str, Any] | None:
        return self._optional(self.SUMMARY)

    def write_members(self, members: list[dict[str, Any]]) -> None:
        write_json(self.path / self.MEMBERS, members)

    def members(self) -> list[dict[str, Any]] | None:
        path = self.path / self.MEMBERS
        return read_json(path) if path.is_file() else None

    def save_final_state(self, tree: Any) -> str:
        """Writes the final train state (a host copy: the caller gathers it); returns the file's SHA-256."""
        from fundl.runs._state_file import save_train_state

        save_train_state(self.path / self.FINAL_STATE, tree)
        return file_sha256(self.path / self.FINAL_STATE)

    def load_final_state(self, like: Any, sha256: str | None) -> Any:
        """The final train state, checked against the SHA-256 its summary recorded."""
        from fundl.runs._state_file import restore_train_state

        path = self.path / self.FINAL_STATE
        if path.is_file() and file_sha256(path) != sha256:
            raise ValueError(
                f"{path} is not the file this run saved (its SHA-256 "
                f"differs from {self.SUMMARY}'s): corrupted or replaced"
            )
        return restore_train_state(path, like)

    @property
    def checkpoints(self) -> Path:
        return self.path / self.CHECKPOINTS

    @property
    def curves(self) -> Path:
        return self.path / self.CURVES

    def tensorboard(self, member: int | None = None) -> Path:
        return self.logs("tensorboard", member)

    def logs(self, logger: str, member: int | None = None) -> Path:
        """Where a logger (``tensorboard``, ``wandb``) writes: ``<logger>/``; a sweep member ``<logger>/member<i>/``."""
        return self.path / logger / ("" if member is None else f"member{member}")

    # --- reading JSON ---------------------------------------------------------------------------

    def _object(self, name: str) -> dict[str, Any]:
        value = read_json(self.path / name)
        if not isinstance(value, dict):
            raise ValueError(f"{self.path / name} should hold a JSON object, found {type(value).__name__}")
        return value

    def _optional(self, name: str) -> dict[str, Any] | None:
        return self._object(name) if (self.path / name).is_file() else None


def _line(record: Record) -> str:
    return json.dumps(strict_json(record.to_json()), allow_nan=False) + "\n"
