"""Whole processes: ``fundl run mlp_digits`` against the plain JAX script ``plain_digits.py``.

Both train the lecture's digits MLP for 15 epochs, evaluate a validation split each epoch
and the test split at the end; this times each as a whole process (interpreter start,
imports, data, compilation, training, writing), in turn, ``--repeats`` times (default 5),
each under ``/usr/bin/time -v``: ``fundl run mlp_digits --quiet --out TMP`` with a cold
compilation cache (an empty cache directory each time, as on a first run), the same with
a warm one (a repeated run), and ``python benchmarks/plain_digits.py``. Prints the medians
of wall time and max RSS and their ratios to the plain script's.

Run::

    python benchmarks/startup.py              # ~1 minute on 2 vCPUs
    python benchmarks/startup.py --repeats 3
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def measure(command: list[str], cache: str | None = None) -> tuple[float, float]:
    """``(wall seconds, max RSS in MiB)`` of one process, from ``/usr/bin/time -v``; ``cache``: the compile cache."""
    env = {**os.environ, "FUNDL_COMPILATION_CACHE": cache} if cache else None
    done = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"startup.py: {' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", done.stderr)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    hours, minutes, seconds = wall.groups()
    return int(hours or 0) * 3600 + int(minutes) * 60 + float(seconds), int(rss.group(1)) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="processes of each (medians reported)")
    args = parser.parse_args()
    if not os.path.exists("/usr/bin/time"):
        raise SystemExit("startup.py needs GNU time at /usr/bin/time (Debian: apt-get install time)")
    fundl = shutil.which("fundl") or os.path.join(os.path.dirname(sys.executable), "fundl")
    plain = [sys.executable, os.path.join(HERE, "plain_digits.py")]
    labels = {"cold": "fundl run, cold cache", "warm": "fundl run, warm cache", "plain": "plain_digits.py"}
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in labels}
    with tempfile.TemporaryDirectory() as tmp:
        run = lambda name: [fundl, "run", "mlp_digits", "--quiet", "--out", os.path.join(tmp, name)]  # noqa: E731
        warm = os.path.join(tmp, "warm-cache")
        measure(run("warm-up"), cache=warm)  # fills the warm cache
        for i in range(args.repeats):  # in turn, so drifts of the machine's speed hit all three
            runs["cold"].append(measure(run(f"cold{i}"), cache=os.path.join(tmp, f"cold-cache{i}")))
            runs["warm"].append(measure(run(f"warm{i}"), cache=warm))
            runs["plain"].append(measure(plain))
    print(f"median of {args.repeats} processes each; load average {os.getloadavg()[0]:.2f} at the end")
    print(f"{'':<24} {'wall s':>8} {'max RSS MiB':>12} {'wall / plain':>13} {'RSS / plain':>12}")
    medians = {name: [statistics.median(column) for column in zip(*rows)] for name, rows in runs.items()}
    for name, label in labels.items():
        wall, rss = medians[name]
        print(
            f"{label:<24} {wall:>8.2f} {rss:>12.0f} "
            f"{wall / medians['plain'][0]:>12.2f}x {rss / medians['plain'][1]:>11.2f}x"
        )


if __name__ == "__main__":
    main()
