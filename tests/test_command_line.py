"""A command line that answers at once: fundl config explains every key, and the commands that only read files
start no JAX (their speed is measured by benchmarks/cli_startup.py, not here)."""

import importlib
import json
import re
import subprocess
import sys

import pytest
from fundl.examples import mlp_digits

import fundl
from fundl import cli
from fundl.runs import resolve_config
from fundl.runs._config import flat_keys, resolve
from fundl.runs._describe import NO_MEANING, bundled_examples, comments, config_rows, example_config, example_file


def test_fundl_config_lists_every_key_of_an_example_with_its_type_value_and_meaning(capsys):
    assert cli.main(["config", "mlp_digits"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in lines[3:]}
    assert set(rows) == set(flat_keys(resolve_config(mlp_digits)))  # every key, nothing else
    assert rows["train.epochs"].split()[1:4] == ["int", "15", "passes"]
    assert "float or null" in rows["optimizer.learning_rate"] and " 0.1 " in rows["optimizer.learning_rate"]
    assert '"tanh": the lecture\'s model' in rows["model"] and "units of each hidden layer" in rows["hidden"]
    assert NO_MEANING not in "\n".join(lines)

    assert cli.main(["config", "mlp_digits", "--set", "optimizer.name=adam"]) == 0
    adam = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[3:]}
    assert adam["optimizer.name"].split()[:3] == ["optimizer.name", "str", "adam"]
    assert re.match(r"optimizer.learning_rate +float or null +0.001 ", adam["optimizer.learning_rate"])  # Adam's own


@pytest.mark.parametrize("name", bundled_examples())
def test_every_key_of_every_bundled_example_has_a_meaning(name):
    path = example_file(name)
    assert example_config(path) == importlib.import_module(f"fundl.examples.{name}").CONFIG  # read without importing
    rows = config_rows(resolve(example_config(path)), comments(path.read_text(), "CONFIG"))
    missing = [key for key, _, _, meaning in rows if meaning == NO_MEANING]
    assert not missing, f"{name}: comment these keys in its CONFIG: {missing}"


def test_an_unknown_key_suggests_the_close_ones_and_points_at_fundl_config(capsys):
    assert cli.main(["config", "mlp_digits", "--set", "train.epoch=3"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'train.epoch'; valid keys: " in err and "; did you mean 'train.epochs'? " in err
    assert "(`fundl config EXAMPLE` lists every key with its type and meaning)" in err


def test_the_package_re_exports_lazily_and_still_lists_its_names():
    assert {"dense", "serial", "train", "runs", "datasets"} <= set(dir(fundl)) and "dense" in fundl.__all__
    assert fundl.dense.__module__ == "fundl.layers._dense"
    with pytest.raises(AttributeError, match="module 'fundl' has no attribute 'dense2'"):
        fundl.dense2  # noqa: B018


READ_ONLY = """
import json, sys
from fundl import cli
for argv in ARGV:
    assert cli.main(argv) == 0, argv
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("jax", "jaxlib", "optax", "flax", "matplotlib"))))
"""


def test_the_commands_that_only_read_files_start_no_jax(tmp_path):
    run = tmp_path / "runs" / "a"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"seed": 0}))
    (run / "status.json").write_text(json.dumps({"status": "finished", "step": 1}))
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "epoch": 1.0, "split": "train", "loss": 0.5}) + "\n")
    argv = [
        ["ls", str(tmp_path / "runs")],
        ["show", str(run)],
        ["compare", str(run), str(run)],
        ["list"],
        ["config", "mlp_digits"],
        ["config"],
    ]
    script = READ_ONLY.replace("ARGV", repr(argv))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == []  # none of them imported JAX (or optax, flax, matplotlib)
    help_ = subprocess.run([sys.executable, "-m", "fundl", "--help"], capture_output=True, text=True, timeout=60)
    assert help_.returncode == 0 and "config" in help_.stdout
