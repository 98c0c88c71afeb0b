"""One writer per run directory: a lock that a killed process cannot leave held.

``fundl run`` and ``fundl resume`` hold ``DIR/lock`` while they write the directory. The
lock is ``fcntl.flock`` on that file, taken without waiting: a second writer (another
resume, a resume while the run still trains) is refused at once with an error naming the
holder (its pid, host, command and start time, which the holder writes into the file).

Why ``flock`` and not a lock file made with ``O_EXCL``: the kernel releases a ``flock``
when its process ends, however it ends (SIGKILL, a crash), so there is never a stale lock
to detect or break; an ``O_EXCL`` file outlives a killed process, and whether it is stale
can only be guessed (a pid on another host cannot be checked). Across hosts: on Linux an
NFS client turns ``flock`` into an NFS byte-range lock that the server arbitrates (NFSv4
natively, NFSv3 through its lock manager), so two hosts sharing a run directory exclude
each other; if a holder's host dies, the server frees the lock when that client's lease
runs out (about 90 s on NFSv4). A file system mounted without locking (NFS ``nolock``)
makes the lock local to each host. (Not measured here: this machine has no NFS mount.)

The holder removes the file when it releases the lock; a new holder checks that the file
it locked is still the one at ``DIR/lock`` (not one its previous holder just removed).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from fundl.runs._directory import RunDirectory

NAME = RunDirectory.LOCK


class DirectoryInUse(OSError):
    """Another process writes this run directory (the message names it)."""


def _read_holder(path: Path) -> dict[str, Any]:
    try:
        holder = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def describe_holder(holder: dict[str, Any]) -> str:
    """``process 1234 on host h (fundl resume runs/x), since 2026-...``; what is known of it."""
    if not holder:
        return "another process"
    command = f" ({' '.join(holder['command'])})" if holder.get("command") else ""
    return f"process {holder.get('pid')} on {holder.get('host')}{command}, since {holder.get('started')}"


class DirectoryLock:
    """The writer's lock on a run directory (see the module's docstring).

    Example:
      >>> lock = DirectoryLock.acquire(Path("runs/x"))   # DirectoryInUse if another process holds it
      >>> ...; lock.release()
    """

    def __init__(self, path: Path, fd: int):
        self.path, self._fd = path, fd

    @classmethod
    def acquire(cls, directory: Path) -> "DirectoryLock":
        """Takes the lock of ``directory`` without waiting; :class:`DirectoryInUse` if another process holds it."""
        path = Path(directory) / NAME
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise DirectoryInUse(
                    f"{directory} is in use by {describe_holder(_read_holder(path))}: a run directory has one writer "
                    "at a time; wait for it to end (or stop it), then `fundl resume` it"
                ) from None
            try:
                current = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if current:
                break
            os.close(fd)  # its previous holder removed this file as we locked it: lock the new one
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": sys.argv,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        """Removes the lock file and releases the lock (once; later calls do nothing)."""
        if self._fd < 0:
            return
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = -1


def holder(directory: Path) -> dict[str, Any] | None:
    """Who holds ``directory``'s lock, as far as can be told without taking it.

    ``None`` when no process holds it: no lock file, or one left by a process of this host
    that is gone. A holder on another host is reported as it wrote itself (it cannot be checked).
    """
    path = Path(directory) / NAME
    if not path.is_file():
        return None
    found = _read_holder(path)
    if found.get("host") == socket.gethostname() and isinstance(found.get("pid"), int):
        try:
            os.kill(found["pid"], 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # another user's process: alive
    return found
