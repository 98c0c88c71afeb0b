"""Running test code in a fresh Python process, so that a test can only pass if its body ran to the end.

A child process that exits 0 proves little: a body that was never called (indented into a
function by a careless ``dedent``), a ``sys.exit(0)`` halfway, or an exception swallowed by
a runner all exit 0. :func:`run_python` appends a line printing :data:`DONE` after the code
and passes only if that line is the last one the child printed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DONE = "CHILD BODY RAN TO THE END"


def run_python(
    code: str,
    *,
    prelude: str = "",
    devices: int | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 300,
    cwd: str | os.PathLike | None = None,
) -> str:
    """Runs ``prelude`` then ``code`` (each dedented on its own) in a fresh Python; returns its stdout.

    Args:
      code: the test's body; it asserts what it checks.
      prelude: definitions shared by several bodies (dedented separately, so that the body can never
        end up inside the prelude's last function).
      devices: run on the CPU as this many (fake) devices.
      env: the environment (default: this process's).
      timeout: seconds.
      cwd: the working directory (default: the repository root).

    Raises:
      AssertionError: the child failed, or did not reach the end of ``code``.
    """
    source = "\n".join([textwrap.dedent(prelude), textwrap.dedent(code), f"print({DONE!r}, flush=True)", ""])
    environment = dict(os.environ if env is None else env)
    if devices is not None:
        environment["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
        environment["JAX_PLATFORMS"] = "cpu"
    done = subprocess.run(
        [sys.executable, "-c", source],
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT if cwd is None else cwd,
    )
    lines = done.stdout.rstrip("\n").splitlines()
    assert done.returncode == 0 and lines and lines[-1] == DONE, (
        f"the child exited {done.returncode} without finishing its body\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    )
    return "\n".join(lines[:-1]) + ("\n" if lines[:-1] else "")
