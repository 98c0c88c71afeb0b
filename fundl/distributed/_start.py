"""Process start-up: joining a multi-host run, fake CPU devices, the persistent compilation cache.

Everything here must happen before JAX starts computing, so it is what a command line
or a launch script calls first.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import jax

_RESOLVE_TIMEOUT_S = 10.0


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def check_coordinator(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) split and checked: a port in 1-65535, a host that resolves (within 10 s).

    Raises:
      ValueError: naming what is wrong with the address.
    """
    host, sep, port_text = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"the coordinator address must be HOST:PORT (e.g. 10.0.0.2:12345), got {address!r}")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"the coordinator port must be in 1-65535, got {port} (in {address!r})")
    found: list[Exception | None] = []

    def resolve() -> None:
        try:
            socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            found.append(None)
        except OSError as error:
            found.append(error)

    thread = threading.Thread(target=resolve, daemon=True)
    thread.start()
    thread.join(_RESOLVE_TIMEOUT_S)
    if not found:
        raise ValueError(f"the coordinator host {host!r} did not resolve within {_RESOLVE_TIMEOUT_S:.0f} s")
    if found[0] is not None:
        raise ValueError(
            f"the coordinator host {host!r} does not resolve ({found[0]}): give process 0's host name or IP address"
        )
    return host, port


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    timeout_s: int = 300,
    echo: Callable[[str], None] | None = _stderr,
) -> None:
    """Joins this process to a multi-process JAX run; call it before anything else uses JAX.

    On Cloud TPU pods (and SLURM and other clusters JAX knows) every argument can be left
    out: JAX finds them. On other machines give all three; process 0 runs the coordinator
    at ``coordinator_address`` (``host:port``) and every process must arrive within
    ``timeout_s`` seconds. The address is checked first (a port in 1-65535, a host that
    resolves), and before it waits this process says (through ``echo``, default stderr)
    whom it waits for and for how long.

    Raises:
      ValueError: the arguments do not go together, or the coordinator address is wrong.
      RuntimeError: JAX has already started on this process, or the processes did not
        all arrive in time (the message names this process and the coordinator).

    Example:
      >>> fundl.distributed.initialize("127.0.0.1:12345", num_processes=2, process_id=0)
    """
    given = [coordinator_address is None, num_processes is None, process_id is None]
    if any(given) and not all(given):
        raise ValueError(
            "give all of coordinator_address, num_processes and process_id, or none of them (on a TPU pod "
            f"JAX finds them itself); got coordinator_address={coordinator_address!r}, "
            f"num_processes={num_processes!r}, process_id={process_id!r}"
        )
    if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"process_id must be in [0, {num_processes}), got {process_id}")
    if coordinator_address is not None:
        check_coordinator(coordinator_address)
    if jax.distributed.is_initialized():
        raise RuntimeError(
            "this process has already joined a multi-process run (jax.distributed.initialize was called)"
        )
    if echo is not None:
        if process_id is None:
            echo(
                "joining the multi-process run JAX detects for this cluster: "
                f"waiting up to {timeout_s} s for every process"
            )
        elif process_id == 0:
            others = num_processes - 1 if num_processes is not None else "the other"
            echo(
                f"process 0 of {num_processes}: coordinating at {coordinator_address}; waiting up to {timeout_s} s "
                f"for the {others} other process(es) to join"
            )
        else:
            echo(
                f"process {process_id} of {num_processes}: joining the coordinator (process 0) at "
                f"{coordinator_address}; waiting up to {timeout_s} s for it and the other processes"
            )
    if coordinator_address is not None and process_id:  # JAX aborts the process when the coordinator never answers
        host, port = check_coordinator(coordinator_address)
        left = _wait_for_coordinator(host, port, timeout_s, echo)
        if left is None:
            raise RuntimeError(
                f"process {process_id} of {num_processes}: the coordinator (process 0) at {coordinator_address} did "
                f"not answer within {timeout_s} s: start process 0 with --process-id 0 and the same --coordinator"
            )
        timeout_s = max(int(left), 1)
    try:
        jax.distributed.initialize(coordinator_address, num_processes, process_id, initialization_timeout=timeout_s)
    except Exception as error:  # JAX raises RuntimeError or XlaRuntimeError, with gRPC detail
        if "before any JAX" in str(error):
            raise RuntimeError(
                "fundl.distributed.initialize must be called before JAX "
                "starts (before any array is made or device listed)"
            ) from None
        who = "this process" if process_id is None else f"process {process_id} of {num_processes}"
        where = coordinator_address or "the address JAX detected for this cluster"
        raise RuntimeError(
            f"{who} could not join the multi-process run at {where} within {timeout_s} s: is every worker "
            f"started with the same coordinator and process count, and is process 0 reachable? ({error})"
        ) from None


def _wait_for_coordinator(host: str, port: int, timeout_s: float, echo: Callable[[str], None] | None) -> float | None:
    """Waits until ``host:port`` accepts a connection; the seconds left of ``timeout_s`` (``None``: it never did)."""
    start = time.monotonic()
    told = start
    while (waited := time.monotonic() - start) < timeout_s:
        try:
            with socket.create_connection((host, port), timeout=min(2.0, timeout_s - waited)):
                return timeout_s - (time.monotonic() - start)
        except OSError:
            pass
        if echo is not None and time.monotonic() - told >= 30:
            echo(f"still waiting for the coordinator at {host}:{port} ({timeout_s - waited:.0f} s left)")
            told = time.monotonic()
        time.sleep(0.25)
    return None


def use_cpu_devices(count: int) -> None:
    """Makes JAX run on the CPU as ``count`` devices (fake devices, for laptops and CI).

    Call it before JAX starts. Fake devices share the same cores: use them to check
    multi-device code, never to measure speed.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"the number of CPU devices must be a positive integer, got {count!r}")
    try:
        jax.config.update("jax_num_cpu_devices", count)  # raises once JAX has started
        jax.config.update("jax_platforms", "cpu")
    except RuntimeError:
        raise RuntimeError(
            f"cannot make {count} CPU devices: JAX has already started in this process (set them before any array "
            "is made or device listed, or start Python with XLA_FLAGS=--xla_force_host_platform_device_count=N)"
        ) from None


def use_persistent_cache(directory: Path | str | None) -> str | None:
    """Turns on JAX's persistent compilation cache in ``directory`` (``None``: leave it off).

    A later process that compiles the same program (a repeated run) loads it from there
    instead of compiling. Every program is cached, however quick its compilation.
    """
    if directory is None:
        return None
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return str(directory)
