"""Records the final ``params_fingerprint`` of every bundled example at seed 0, and of a sweep's members.

A refactor of the training half must leave these unchanged, bit for bit. Run it before and after,
then compare the two files:

    python scripts/fingerprints.py --out before.json
    python scripts/fingerprints.py --out after.json --compare before.json

Each run is a fresh ``fundl run`` process with the persistent compilation cache off.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

RUNS = {
    "backprop_digits": ["backprop_digits"],
    "charlm": ["charlm"],
    "cnn_digits": ["cnn_digits"],
    "gan_digits": ["gan_digits"],
    "mlp_digits": ["mlp_digits"],
    "mlp_digits relu2 adam": [
        "mlp_digits",
        "--set",
        "model=relu2",
        "--set",
        "optimizer.name=adam",
        "--set",
        "optimizer.learning_rate=0.001",
    ],
    "recsys_explicit": ["recsys_explicit"],
    "recsys_triplet": ["recsys_triplet"],
    "rnn_digits": ["rnn_digits"],
    "seq2seq_numbers": ["seq2seq_numbers"],
    "vae_digits": ["vae_digits"],
    "sweep mlp_digits": ["mlp_digits", "--seeds", "0-3", "--sweep", "optimizer.learning_rate=0.05,0.1"],
    "mlp_digits accumulate 2, log every 7": ["mlp_digits", "--set", "train.accumulate=2", "--set", "train.log_every=7"],
    "sweep cnn_digits": ["cnn_digits", "--seeds", "0-1", "--set", "train.epochs=2"],
}


def fingerprints(args: list[str], directory: Path) -> list[str]:
    """The run's fingerprint, or each sweep member's, from a fresh process."""
    command = [
        sys.executable,
        "-m",
        "fundl",
        "run",
        *args,
        "--seed",
        "0",
        "--quiet",
        "--out",
        str(directory),
        "--no-compilation-cache",
    ]
    if "--seeds" in args:
        command.remove("--seed"), command.remove("0")
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    members = directory / "members.json"
    if members.exists():
        return [m["params_fingerprint"] for m in json.loads(members.read_text())]
    return [json.loads((directory / "summary.json").read_text())["params_fingerprint"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--compare", help="an earlier file: print each run as same or DIFFERENT")
    parser.add_argument("--only", nargs="*", help="the names of RUNS to record (default: all)")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, run_args) in enumerate(RUNS.items()):
            if args.only and name not in args.only:
                continue
            results[name] = fingerprints(run_args, Path(tmp) / str(i))
            print(name, *results[name], flush=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    if args.compare:
        before = json.loads(Path(args.compare).read_text())
        differ = [name for name in results if results[name] != before.get(name)]
        for name in results:
            print(f"{name:24s} {'DIFFERENT' if name in differ else 'same'}")
        sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
