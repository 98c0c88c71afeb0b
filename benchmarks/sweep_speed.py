"""Sweeps against separate runs: N seeds of an example as one command vs N commands one after another.

    python benchmarks/sweep_speed.py [--examples mlp_digits cnn_digits rnn_digits] [--seeds 8 32]

Whole processes, as a user runs them: ``fundl run EXAMPLE --seeds 0-(N-1)`` against N
``fundl run EXAMPLE --seed S``, one after another, each with its start-up, tracing and
compilation. Both share one persistent compilation cache that starts empty, as on a first
day: the first separate run compiles, the others find its program there (the sweep's
vmapped program is its own). Also, in one Python process, ``fundl.runs.sweep`` against N
``fundl.runs.run`` calls: there the runs after the first reuse the first one's compiled
programs (equal definitions share them), so this is the least a separate run costs. Prints
the wall times and the speed-ups.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fundl import runs


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def command(root: Path, example: str, settings: list[str], *args: str) -> None:
    """``fundl run`` in a fresh process, with the benchmark's own compilation cache."""
    env = dict(os.environ, FUNDL_COMPILATION_CACHE=str(root / "cache"))
    out = root / f"run-{time.perf_counter_ns()}"
    argv = [sys.executable, "-m", "fundl", "run", example, *settings, *args, "--quiet", "--out", str(out)]
    subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", nargs="+", default=["mlp_digits", "cnn_digits", "rnn_digits"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[8, 32])
    parser.add_argument("--epochs", type=int, default=None, help="override each example's epochs (default: its own)")
    args = parser.parse_args()
    quiet = {"quiet": True, "echo": lambda _: None}
    for example in args.examples:
        settings = [("train.epochs", args.epochs)] if args.epochs else []
        flags = [f"--set=train.epochs={args.epochs}"] if args.epochs else []
        for count in args.seeds:
            root = Path(tempfile.mkdtemp())
            swept = timed(lambda: command(root, example, flags, "--seeds", f"0-{count - 1}"))
            separate = timed(lambda: [command(root, example, flags, "--seed", str(s)) for s in range(count)])
            in_process = timed(
                lambda: runs.sweep(example, settings, seeds=list(range(count)), out=str(root / "s"), **quiet)
            )
            calls = timed(
                lambda: [
                    runs.run(example, [*settings, ("seed", s)], out=str(root / f"r{s}"), **quiet) for s in range(count)
                ]
            )
            print(
                f"{example:<12} {count:>3} seeds: commands: separate {separate:7.1f} s, one sweep {swept:6.1f} s, "
                f"speed-up {separate / swept:5.1f}x; in one process: separate {calls:6.1f} s, one sweep "
                f"{in_process:6.1f} s, speed-up {calls / in_process:5.1f}x",
                flush=True,
            )


if __name__ == "__main__":
    main()
