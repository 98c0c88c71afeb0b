"""Smoke test of benchmarks/bench.py: a tiny run in a subprocess writes well-formed JSON rows.

It checks the form of the rows only, never the speeds or ratios (this machine is shared).
"""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quick_run_writes_rows(tmp_path):
    out = tmp_path / "rows.json"
    command = [
        sys.executable,
        os.path.join(ROOT, "benchmarks", "bench.py"),
        "--quick",
        "--rounds",
        "1",
        "--only",
        "mlp_digits",
        "--frameworks",
        "fundl,floor,scan_epoch",
        "--json",
        str(out),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(out.read_text())
    assert [(r["workload"], r["framework"]) for r in rows] == [
        ("mlp_digits", "fundl"),
        ("mlp_digits", "floor"),
        ("mlp_digits", "scan_epoch"),
    ]
    for row in rows:
        assert set(row) == {
            "workload",
            "framework",
            "examples_per_s",
            "compile_s",
            "ratio_vs_floor",
            "compile_vs_floor",
        }
        assert (
            row["examples_per_s"] > 0
            and row["compile_s"] > 0
            and row["ratio_vs_floor"] > 0
            and row["compile_vs_floor"] > 0
        )
    floor = next(r for r in rows if r["framework"] == "floor")
    assert floor["ratio_vs_floor"] == floor["compile_vs_floor"] == 1.0
    assert "mlp_digits" in done.stdout


def test_unknown_names_are_refused(tmp_path):
    command = [sys.executable, os.path.join(ROOT, "benchmarks", "bench.py"), "--only", "mlp_digit"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode != 0 and "unknown workload mlp_digit" in done.stderr and "mlp_digits" in done.stderr
