"""Sweeps against separate runs: N seeds of an example as one program vs N runs one after another.

    python benchmarks/sweep_speed.py [--examples mlp_digits cnn_digits rnn_digits] [--seeds 8 32]

In one process, compile time included: ``fundl.runs.sweep`` with seeds 0..N-1 against N
calls of ``fundl.runs.run`` (each compiles its own program, as separate runs do). Prints
the wall times and the speed-up.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from fundl import runs


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", nargs="+", default=["mlp_digits", "cnn_digits", "rnn_digits"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[8, 32])
    parser.add_argument("--epochs", type=int, default=None, help="override each example's epochs (default: its own)")
    args = parser.parse_args()
    quiet = {"quiet": True, "echo": lambda _: None}
    for example in args.examples:
        settings = [("train.epochs", args.epochs)] if args.epochs else []
        for count in args.seeds:
            root = tempfile.mkdtemp()
            swept = timed(lambda: runs.sweep(example, settings, seeds=list(range(count)), out=f"{root}/sweep", **quiet))
            separate = timed(
                lambda: [runs.run(example, [*settings, ("seed", s)], out=f"{root}/{s}", **quiet) for s in range(count)]
            )
            print(
                f"{example:<12} {count:>3} seeds: separate runs {separate:7.1f} "
                f"s, one sweep {swept:6.1f} s, speed-up {separate / swept:5.1f}x",
                flush=True,
            )


if __name__ == "__main__":
    main()
