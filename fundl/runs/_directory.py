"""The run directory: the one owner of a run's files, their names, and how they are read and written.

Files (all JSON is strict: a NaN or infinite metric is written as ``null``)::

    status.json          running / finished / stopped_early / interrupted / failed, with the reason and step
    config.json          the full resolved config
    environment.json     the manifest: example (and the hash of its copy), command, versions,
                         git commit, devices and mesh, XLA flags, precision, run id (and a sweep's members)
    example.py           a copy of the example's source; load_run and resume use it
    identity.json        the run's identity, sealed when it starts: run id, config, example's SHA-256, the
                         data's digests, a sweep's members (every reader checks the files against it)
    lock                 while a process writes the directory: who (fundl/runs/_lock.py)
    metrics.jsonl        one JSON object per log or evaluation (step, epoch, split, [member,] metrics)
    checkpoints/         periodic checkpoints (see fundl.runs.Checkpoints)
    summary.json         run id, steps, epochs, wall_s, compile_s, params_fingerprint, final metrics
    members.json         a sweep's members: seed, settings, final metrics, fingerprint, how each ended
    train_state.msgpack  the final train state, whole (a sweep's: every member's, stacked), with the run id
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

from fundl.runs._files import append_text, read_json, strict_json, write_atomic, write_json
from fundl.train._history import Record

STATUSES = ("running", "finished", "stopped_early", "interrupted", "failed")


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class RunDirectory:
    """A run directory, by path. :meth:`create` claims a new one; :meth:`open` checks an existing one."""

    CONFIG = "config.json"
    IDENTITY = "identity.json"
    LOCK = "lock"
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
        self._lock: Any = None  # the writer's lock, while this process writes the directory
        self.created = False  # whether this process made the directory (a failed start removes it again)

    def __repr__(self) -> str:
        return f"RunDirectory({str(self.path)!r})"

    def __truediv__(self, name: str) -> Path:
        """A file of the run that an example writes itself (``run.directory / "samples.png"``)."""
        return self.path / name

    # --- claiming and finding ----------------------------------------------------------------

    @classmethod
    def create(cls, name: str, out: str | os.PathLike | None = None) -> "RunDirectory":
        """A new run directory that no other run can share: ``out``, or ``runs/<name>-<timestamp>``.

        ``out`` may exist if it is empty, or if it holds only what a run that stopped while
        starting wrote (it was never sealed and trained nothing). The run takes the
        directory's lock (:mod:`fundl.runs._lock`) and then creates its ``status.json``
        exclusively: of two runs started at once on the same ``out``, one gets the directory
        and the other a ``FileExistsError``. The returned directory holds the lock until
        :meth:`release`.
        """
        from fundl.runs._lifecycle import only_start_files, remove_start_files
        from fundl.runs._lock import DirectoryInUse, DirectoryLock

        created = True
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
            if path.is_dir() and any(path.iterdir()) and not only_start_files(path):
                raise FileExistsError(f"--out {path} is not empty: {cls._holds(path)}")
            created = not path.exists()
            path.mkdir(parents=True, exist_ok=True)
        try:
            lock = DirectoryLock.acquire(path)
        except DirectoryInUse as error:
            raise FileExistsError(f"another run has just claimed {path} ({error}): choose another --out directory")
        try:
            if (path / cls.STATUS).exists():  # a start that trained nothing (checked again now that no one writes)
                if not only_start_files(path):
                    raise FileExistsError(f"--out {path} is not empty: {cls._holds(path)}")
                remove_start_files(path, remove_directory=False)
            fd = os.open(path / cls.STATUS, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            with os.fdopen(fd, "w") as file:
                file.write(
                    json.dumps({"status": "running", "step": 0, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n"
                )
        except BaseException:
            lock.release()
            raise
        directory = cls(path)
        directory._lock, directory.created = lock, created
        return directory

    @classmethod
    def _holds(cls, path: Path) -> str:
        """What a non-empty ``--out`` holds, and what to do instead."""
        if not cls.is_run(path):
            return "choose a new directory (it is not a fundl run directory)"
        status = cls(path).status().get("status")
        if status in ("finished", "stopped_early"):
            return f"it holds a run that has {status.replace('_', ' ')}: choose a new directory"
        return (
            f"it holds a run that has not finished ({status}): continue it with `fundl resume {path}`, "
            "or choose a new directory"
        )

    def claim(self) -> "RunDirectory":
        """Takes this directory's lock, as its one writer (``fundl resume``); an error naming the holder if another
        process writes it."""
        from fundl.runs._lock import DirectoryLock

        if self._lock is None:
            self._lock = DirectoryLock.acquire(self.path)
        return self

    def release(self) -> None:
        """Gives the directory's lock back (nothing if this process does not hold it)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

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

    # --- identity -------------------------------------------------------------------------------

    def seal(self, run_id: str, config: dict[str, Any], example_sha256: str, data: Any, sweep: Any) -> None:
        """Records the run's identity (see :mod:`fundl.runs._identity`): the last file a starting run writes."""
        from fundl.runs._identity import identity, seal

        seal(self.path, identity(run_id, config, example_sha256, data, sweep))

    def is_sealed(self) -> bool:
        return (self.path / self.IDENTITY).is_file()

    def verify(self, data: dict[str, str] | None = None) -> dict[str, Any]:
        """Checks the directory's files (and ``data``'s digests, if given) against the identity the run was sealed
        with; returns that identity. An :class:`~fundl.runs._identity.IdentityError` names the first difference."""
        from fundl.runs._identity import check, identity

        manifest = self.manifest()
        copy = self.path / self.EXAMPLE
        current = identity(
            str(manifest.get("run_id", "")),
            self.config(),
            file_sha256(copy) if copy.is_file() else "missing",
            data,
            manifest.get("sweep"),
        )
        return check(self.path, current, with_data=data is not None)

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
                append_text(path, _line(event.record))

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

    def truncate_records(self, step: int, drop_splits: Iterable[str] = ()) -> None:
        """Keeps the records of steps up to ``step`` (a resumed run logs the rest again), without those of
        ``drop_splits`` (the test splits, scored again when the resumed run ends); a torn last line goes too."""
        dropped = set(drop_splits)
        if (self.path / self.METRICS).is_file():
            self.write_records([r for r in self.records() if r.step <= step and r.split not in dropped])

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

    def save_final_state(self, tree: Any, run_id: str) -> str:
        """Writes the final train state (a host copy: the caller gathers it) with the run's id; returns the file's
        SHA-256."""
        from fundl.runs._state_file import save_train_state

        save_train_state(self.path / self.FINAL_STATE, tree, run_id=run_id)
        return file_sha256(self.path / self.FINAL_STATE)

    def load_final_state(self, like: Any, sha256: str | None, run_id: str) -> Any:
        """The final train state, checked against the SHA-256 its summary recorded and the run's id."""
        from fundl.runs._state_file import restore_train_state

        path = self.path / self.FINAL_STATE
        if path.is_file() and file_sha256(path) != sha256:
            raise ValueError(
                f"{path} is not the file this run saved (its SHA-256 "
                f"differs from {self.SUMMARY}'s): corrupted or replaced"
            )
        return restore_train_state(path, like, run_id=run_id)

    @property
    def checkpoints(self) -> Path:
        return self.path / self.CHECKPOINTS

    @property
    def curves(self) -> Path:
        return self.path / self.CURVES

    def checkpoint_steps(self) -> list[int]:
        """The steps of the complete checkpoints in ``checkpoints/`` (``<step>.ckpt``), oldest first."""
        if not self.checkpoints.is_dir():
            return []
        return sorted(int(p.name[: -len(".ckpt")]) for p in self.checkpoints.glob("[0-9]*.ckpt") if p.stem.isdigit())

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
