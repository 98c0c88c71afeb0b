"""How long the command line takes to answer: ``fundl --help``, ``ls``, ``show``, ``compare``, ``list``, ``config``.

Each command runs as a whole process (``python -m fundl ...``: interpreter start, imports,
reading the files, printing), in turn, ``--repeats`` times (default 7); prints the median and
the fastest wall time of each. ``ls``, ``show`` and ``compare`` read a small run directory
that the script writes first (the JSON files a finished run leaves; nothing is trained).
The goal is under 0.5 s each: none of these commands needs JAX, whose import alone takes
seconds here.

``--source DIR`` times a checkout of fundl's source instead of the installed package (``DIR``
holds ``fundl/`` and ``examples/``), with the installed dependencies: Python starts without
its site hooks (``-S``, so that an editable install cannot point back at the working tree)
and finds ``DIR`` first. Compare two checkouts the same way, e.g. before and after a change::

    mkdir /tmp/before && git archive main | tar -x -C /tmp/before
    python benchmarks/cli_startup.py --source /tmp/before
    python benchmarks/cli_startup.py --source .

A command that a checkout does not have is reported as ``-``.
"""

from __future__ import annotations

import argparse
import json
import os
import site
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = {
    "--help": ["--help"],
    "ls": ["ls", "{runs}"],
    "show": ["show", "{run}"],
    "compare": ["compare", "{run}", "{run}"],
    "list": ["list"],
    "config mlp_digits": ["config", "mlp_digits"],
}


def write_run(run: Path) -> None:
    """The JSON files of a small finished run (what ``ls``, ``show`` and ``compare`` read)."""
    run.mkdir(parents=True)
    config = {"seed": 0, "model": "tanh", "hidden": 100, "train": {"epochs": 15, "batch_size": 32}}
    (run / "config.json").write_text(json.dumps(config))
    (run / "status.json").write_text(json.dumps({"status": "finished", "step": 570}))
    (run / "environment.json").write_text(json.dumps({"example": "mlp_digits", "command": ["fundl", "run"]}))
    metrics = {"test": {"loss": 0.11, "accuracy": 0.967}}
    summary = {"steps": 570, "epochs": 15.0, "wall_s": 3.0, "compile_s": 1.0, "params_fingerprint": "0" * 64}
    (run / "summary.json").write_text(json.dumps({**summary, "metrics": metrics}))
    lines = [json.dumps({"step": 38 * e, "epoch": float(e), "split": "train", "loss": 1.0 / e}) for e in range(1, 16)]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def overlay(source: Path, into: Path) -> Path:
    """A folder where ``fundl`` is ``source/fundl`` and ``fundl.examples`` is ``source/examples`` (as an install
    maps them), made of symbolic links."""
    package = into / "fundl"
    package.mkdir(parents=True)
    for entry in (source / "fundl").iterdir():
        (package / entry.name).symlink_to(entry.resolve())
    if (source / "examples").is_dir() and not (package / "examples").exists():
        (package / "examples").symlink_to((source / "examples").resolve())
    return into


def wall_time(command: list[str], argv: list[str], env: dict[str, str], cwd: str) -> float | None:
    """Seconds of one ``COMMAND ARGV`` process (``python -m fundl ARGV``) in ``cwd``; ``None`` if it fails."""
    start = time.perf_counter()
    done = subprocess.run([*command, *argv], capture_output=True, env=env, cwd=cwd)
    seconds = time.perf_counter() - start
    return seconds if done.returncode == 0 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="processes of each command (median reported)")
    parser.add_argument("--source", metavar="DIR", help="time the fundl package in DIR instead of the installed one")
    args = parser.parse_args()
    env = dict(os.environ)
    command = [sys.executable, "-m", "fundl"]
    with tempfile.TemporaryDirectory() as tmp:
        if args.source:
            tree = overlay(Path(args.source).resolve(), Path(tmp) / "source")
            env["PYTHONPATH"] = os.pathsep.join([str(tree), *site.getsitepackages()])
            command = [sys.executable, "-S", "-m", "fundl"]
        runs = Path(tmp) / "runs"
        write_run(runs / "a")
        values = {"runs": str(runs), "run": str(runs / "a")}
        commands = {name: [part.format(**values) for part in argv] for name, argv in COMMANDS.items()}
        times: dict[str, list[float]] = {name: [] for name in commands}
        failed: set[str] = set()
        for _ in range(args.repeats):  # in turn, so that drifts of the machine's speed hit every command
            for name, argv in commands.items():
                if name not in failed:
                    seconds = wall_time(command, argv, env, tmp)  # not here: `-m` puts the cwd on the path
                    if seconds is None:
                        failed.add(name)
                    else:
                        times[name].append(seconds)
    print(f"fundl from {args.source or 'the installed package'}; {args.repeats} processes each")
    print(f"load average {os.getloadavg()[0]:.2f} at the end (2 vCPUs: above 1, other work skews the times)")
    print(f"{'command':<20} {'median s':>9} {'fastest s':>10}")
    for name, seconds in times.items():
        if name in failed or not seconds:
            print(f"{name:<20} {'-':>9} {'-':>10}")
        else:
            print(f"{name:<20} {statistics.median(seconds):>9.3f} {min(seconds):>10.3f}")


if __name__ == "__main__":
    main()
