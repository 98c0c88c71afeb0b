"""The run directory: created exclusively, its status kept current, its manifest, its metrics log.

Files (all JSON is strict: a NaN or infinite metric is written as ``null``)::

    status.json        running / finished / stopped_early / interrupted / failed, with the reason and step
    config.json        the full resolved config
    environment.json   the manifest: example (and the hash of its copy), command, versions,
                       git commit, devices and mesh, XLA flags, precision
    example.py         a copy of the example's source; load_run and resume use it
    metrics.jsonl      one JSON object per log or evaluation (step, epoch, split, metrics)
    checkpoints/       periodic checkpoints: <step>.ckpt files
    summary.json       steps, epochs, wall_s, compile_s, params_fingerprint, final metrics
    train_state.msgpack  the final train state, whole
    curves.png         the metrics of every split against the training step
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import jax

from fundl.runs._files import read_json, strict_json, write_atomic, write_json
from fundl.train import Event, Hook

STATUS_FILE = "status.json"
EXAMPLE_FILE = "example.py"
METRICS_FILE = "metrics.jsonl"
STATUSES = ("running", "finished", "stopped_early", "interrupted", "failed")


def create_run_directory(name: str, out: str | None = None) -> Path:
    """A new run directory that no other run can share: ``out``, or ``runs/<name>-<timestamp>``.

    ``out`` may exist if it is empty. The run claims the directory by creating its
    ``status.json`` exclusively, so of two runs started at once on the same ``out``,
    one gets the directory and the other a ``FileExistsError``.
    """
    if out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        Path("runs").mkdir(exist_ok=True)
        for n in range(1, 1000):
            directory = Path("runs") / (f"{name}-{stamp}" if n == 1 else f"{name}-{stamp}-{n}")
            try:
                directory.mkdir()
                break
            except FileExistsError:
                continue
    else:
        directory = Path(out)
        if directory.exists() and not directory.is_dir():
            raise FileExistsError(f"--out {directory} is a file, not a directory")
        if directory.is_dir() and any(directory.iterdir()):
            raise FileExistsError(f"--out {directory} is not empty: choose a new directory (or `fundl resume {directory}`)")
        directory.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(directory / STATUS_FILE, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        raise FileExistsError(f"another run has just claimed {directory}: choose another --out directory") from None
    with os.fdopen(fd, "w") as file:
        file.write(json.dumps({"status": "running", "step": 0, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n")
    return directory


def write_status(directory: Path, status: str, step: int, reason: str | None = None, **details: Any) -> None:
    """Keeps ``status.json`` current: one of :data:`STATUSES`, the step, and why."""
    assert status in STATUSES, status
    record = {"status": status, "step": step, "reason": reason, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **details}
    write_json(directory / STATUS_FILE, record)


def read_status(directory: Path) -> dict[str, Any]:
    return read_json(directory / STATUS_FILE)


def copy_example(module: ModuleType, directory: Path) -> str:
    """Copies the example's source into the run directory; returns its SHA-256."""
    if module.__file__ is None:
        raise ValueError(f"example {module.__name__} has no source file to copy")
    source = Path(module.__file__).read_bytes()
    write_atomic(directory / EXAMPLE_FILE, source)
    return hashlib.sha256(source).hexdigest()


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _git() -> dict[str, Any] | None:
    """The commit of fundl's checkout and whether it has uncommitted changes (None outside a checkout)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if commit.returncode:
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def manifest(example: str, example_sha256: str, precision: str, mesh: dict[str, Any]) -> dict[str, Any]:
    """What ``environment.json`` records: enough to know what ran, where, and from which code."""
    packages = ("fundl", "jax", "jaxlib", "optax", "flax", "numpy", "rich", "matplotlib")
    return {
        "example": str(Path(example).resolve()) if Path(example).suffix == ".py" else example,
        "example_file": EXAMPLE_FILE,
        "example_sha256": example_sha256,
        "command": sys.argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": {"python": platform.python_version(), **{name: _version(name) for name in packages}},
        "git": _git(),
        "platform": platform.platform(),
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "process_count": jax.process_count(),
        "mesh": mesh,
        "precision": precision,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def metrics_writer(path: Path) -> Hook:
    """Appends the record of every log, evaluation and test to ``metrics.jsonl``, one JSON object a line."""

    def hook(event: Event) -> None:
        if event.kind in ("log", "eval", "test"):
            with path.open("a") as file:
                file.write(json.dumps(strict_json(event.record), allow_nan=False) + "\n")

    return hook


def truncate_metrics(path: Path, step: int) -> None:
    """Keeps the records of steps up to ``step`` (a resumed run logs the rest again)."""
    if path.is_file():
        kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        write_atomic(path, "".join(line + "\n" for line in kept).encode())
