"""Writing run files safely: a file is either complete or absent, never half-written."""

from __future__ import annotations

import errno
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

FULL = (errno.ENOSPC, errno.EDQUOT)  # a full disk, or a full quota


class DiskFull(OSError):
    """A file could not be written for lack of space: the message names the file (and, from a run, the way on)."""

    def __init__(self, path: str | os.PathLike | None, advice: str = "", code: int = errno.ENOSPC):
        super().__init__(code, os.strerror(code), None if path is None else str(path))
        self.advice = advice

    def __str__(self) -> str:
        where = f" writing {self.filename}" if self.filename else ""
        return f"{(self.strerror or 'no space left').lower()}{where}" + (f": {self.advice}" if self.advice else "")


def _write(file: BinaryIO, data: bytes, path: str | os.PathLike) -> None:
    """Writes ``data`` whole to ``file``, open at ``path`` (the one place bytes reach a run file; tests make it fail
    as a full disk would)."""
    file.write(data)
    file.flush()


def append_text(path: str | os.PathLike, text: str) -> None:
    """Appends ``text`` to ``path`` (a full disk is a :class:`DiskFull` naming the file)."""
    try:
        with open(path, "ab") as file:
            _write(file, text.encode(), path)
    except OSError as error:
        if error.errno in FULL and not isinstance(error, DiskFull):
            raise DiskFull(path, code=error.errno) from None
        raise


def write_atomic(path: str | os.PathLike, data: bytes, *, sync_directory: bool = True) -> None:
    """Writes ``data`` to a temporary file beside ``path``, syncs it, then renames it over ``path``.

    ``sync_directory=False`` skips syncing the directory after the rename: after a power
    cut the rename may then be lost (the old file, complete, is found), never half-done.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        if error.errno in FULL:
            raise DiskFull(path, code=error.errno) from None
        raise
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as file:
            _write(file, data, tmp)
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno in FULL and not isinstance(error, DiskFull):
            raise DiskFull(path, code=error.errno) from None
        raise
    if not sync_directory:
        return
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def strict_json(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by ``None``, so that it is valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def write_json(path: str | os.PathLike, value: Any) -> None:
    """Writes ``value`` as indented, strictly valid JSON (a NaN becomes ``null``), atomically."""
    write_atomic(path, (json.dumps(strict_json(value), indent=2, allow_nan=False) + "\n").encode())


def read_json(path: str | os.PathLike) -> Any:
    """Reads a JSON file, with an error that names the file if it is missing or broken."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {path.parent} a fundl run directory?")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
