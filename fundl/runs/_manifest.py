"""The manifest of a run: what ran, where, and from which code (``environment.json``)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def _git() -> dict[str, Any] | None:
    """The commit of fundl's checkout and whether it has uncommitted changes (None outside a checkout)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain"], capture_output=True, text=True, timeout=10
        )
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
    import jax

    packages = ("fundl", "jax", "jaxlib", "optax", "flax", "numpy", "rich", "matplotlib")
    return {
        "example": str(Path(example).resolve()) if Path(example).suffix == ".py" else example,
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
