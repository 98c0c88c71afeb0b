"""The code keeps its habits without anyone remembering them: ruff's format, lint and import order pass, and mypy
finds no type errors."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_format_leaves_everything_as_it_is():
    done = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", str(ROOT)], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 0, done.stdout + done.stderr  # fix with: ruff format .


def test_ruff_finds_nothing():
    done = subprocess.run([sys.executable, "-m", "ruff", "check", str(ROOT)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr  # ruff is in the test extra: pip install -e ".[test]"


def test_mypy_finds_nothing():
    pytest.importorskip("mypy")  # mypy is in the test extra: pip install -e ".[test]"
    config = str(ROOT / "pyproject.toml")
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", config, "fundl"], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_package_ships_its_type_information():
    assert (ROOT / "fundl" / "py.typed").is_file()
