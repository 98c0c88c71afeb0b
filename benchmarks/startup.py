"""Whole processes: ``fundl run mlp_digits`` against the plain JAX script ``plain_digits.py``.

Both train the lecture's digits MLP for 15 epochs and evaluate the test split each epoch;
this times each as a whole process (interpreter start, imports, data, compilation, training,
writing): ``fundl run mlp_digits --quiet --out TMP`` and ``python benchmarks/plain_digits.py``,
in turn, ``--repeats`` times (default 5), each under ``/usr/bin/time -v``, and prints the
medians of wall time and max RSS and their ratios (fundl / plain).

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


def measure(command: list[str]) -> tuple[float, float]:
    """``(wall seconds, max RSS in MiB)`` of one process, from ``/usr/bin/time -v``."""
    done = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True)
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
    runs: dict[str, list[tuple[float, float]]] = {"fundl": [], "plain": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):  # in turn, so drifts of the machine's speed hit both
            runs["fundl"].append(measure([fundl, "run", "mlp_digits", "--quiet", "--out", os.path.join(tmp, f"run{i}")]))
            runs["plain"].append(measure(plain))
    print(f"median of {args.repeats} processes each; load average {os.getloadavg()[0]:.2f} at the end")
    print(f"{'':<28} {'wall s':>8} {'max RSS MiB':>12}")
    medians = {}
    for name, label in (("fundl", "fundl run mlp_digits"), ("plain", "plain_digits.py")):
        medians[name] = [statistics.median(column) for column in zip(*runs[name])]
        print(f"{label:<28} {medians[name][0]:>8.2f} {medians[name][1]:>12.0f}")
    wall_ratio = medians["fundl"][0] / medians["plain"][0]
    rss_ratio = medians["fundl"][1] / medians["plain"][1]
    print(f"{'fundl / plain':<28} {wall_ratio:>7.2f}x {rss_ratio:>11.2f}x")


if __name__ == "__main__":
    main()
