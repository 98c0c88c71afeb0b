"""Sweeps: many seeds and optimizer settings as one compiled program, each member like its separate run."""

import json
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from fundl import runs
from fundl.runs import ConfigError

QUIET = {"quiet": True, "echo": lambda _: None}
SHORT = [("train.epochs", 5)]


def member_params(directory, member):
    """A member's final params are not saved whole; its fingerprint is, so compare those and metrics."""
    return json.loads((directory / "members.json").read_text())[member]


@pytest.fixture(scope="module")
def eight_seeds(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    done = runs.sweep("mlp_digits", SHORT, seeds=list(range(8)), out=str(root / "sweep"), **QUIET)
    return root, done


def test_each_member_of_an_8_seed_sweep_matches_its_separate_run(eight_seeds, tmp_path):
    root, done = eight_seeds
    assert [m["seed"] for m in done.members] == list(range(8))
    for seed in (0, 5):
        alone = runs.run("mlp_digits", [*SHORT, ("seed", seed)], out=str(tmp_path / f"s{seed}"), **QUIET)
        member = done.members[seed]
        for split, metrics in alone.summary["metrics"].items():
            for name, value in metrics.items():
                if name != "learning_rate":
                    assert member["metrics"][split][name] == pytest.approx(value, rel=1e-5, abs=1e-6), (split, name)
    # The final params themselves, through the sweep's stacked state:
    assert len({m["params_fingerprint"] for m in done.members}) == 8


def test_member_params_are_allclose_to_separate_fit(tmp_path):
    from fundl.train import fit

    module = runs.load_example("mlp_digits")
    config = runs.resolve_config(module, SHORT)
    experiment = module.experiment(config)
    optimizer, _ = runs.make_optimizer(config, 5 * 38)
    import jax.numpy as jnp

    from fundl.train import fit_members

    states = [runs.initial_train_state({**config, "seed": s}, experiment, optimizer) for s in (3, 4)]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *states)
    final, _ = fit_members(experiment.loss_fn, lambda hp: optimizer, stacked, {}, experiment.train_data, batch_size=32,
                           data_seeds=np.array([3, 4]), epochs=5, quiet=True)
    for i, seed in enumerate((3, 4)):
        alone, _ = fit(experiment.loss_fn, optimizer, states[i], experiment.train_data, batch_size=32, epochs=5, data_seed=seed, quiet=True)
        for a, b in zip(jax.tree.leaves(jax.tree.map(lambda x: x[i], final.params)), jax.tree.leaves(alone.params)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_the_same_sweep_twice_is_bit_identical_and_the_aggregate_matches_the_members(eight_seeds, tmp_path):
    root, done = eight_seeds
    again = runs.sweep("mlp_digits", SHORT, seeds=list(range(8)), out=str(tmp_path / "again"), **QUIET)
    assert [m["params_fingerprint"] for m in again.members] == [m["params_fingerprint"] for m in done.members]
    accuracies = np.array([m["metrics"]["test"]["accuracy"] for m in done.members])
    spread = done.summary["spread"]["test"]["accuracy"]
    assert spread["mean"] == pytest.approx(accuracies.mean()) and spread["std"] == pytest.approx(accuracies.std())
    assert (spread["min"], spread["max"]) == (accuracies.min(), accuracies.max())
    assert done.summary["metrics"]["test"]["accuracy"] == spread["mean"]  # fundl show / compare read these
    summary = json.loads((root / "sweep" / "summary.json").read_text())
    assert summary["members"] == 8 and summary["chunks"] == 1
    assert (root / "sweep" / "curves.png").stat().st_size > 5000
    assert re.search(rf"test:\s+accuracy {spread['mean']:.4f}", runs.show_run(root / "sweep"))


def test_learning_rates_crossed_with_seeds(tmp_path):
    rates = [0.01, 0.03, 0.1, 0.3]
    done = runs.sweep("mlp_digits", [("train.epochs", 2)], seeds=[0, 1], sweep={"optimizer.learning_rate": rates},
                      out=str(tmp_path / "sweep"), **QUIET)
    assert [(m["settings"]["optimizer.learning_rate"], m["seed"]) for m in done.members] == [(r, s) for r in rates for s in (0, 1)]
    for index in (1, 6):  # lr 0.01 seed 1, lr 0.3 seed 0
        member = done.members[index]
        alone = runs.run("mlp_digits", [("train.epochs", 2), ("seed", member["seed"]),
                                        ("optimizer.learning_rate", member["settings"]["optimizer.learning_rate"])],
                         out=str(tmp_path / f"alone{index}"), **QUIET)
        assert member["metrics"]["test"]["loss"] == pytest.approx(alone.summary["metrics"]["test"]["loss"], rel=1e-5)


def test_a_diverging_member_is_frozen_and_reported(tmp_path):
    lines = []
    done = runs.sweep("mlp_digits", [("train.epochs", 3)], seeds=[0], sweep={"optimizer.learning_rate": [0.1, 1e38, 0.05]},
                      out=str(tmp_path / "sweep"), quiet=True, echo=lines.append)
    diverged = done.members[1]
    assert diverged["frozen"].startswith("member 1 (seed 0) stopped being finite at step ")
    assert any("member 1 (seed 0) stopped being finite" in line for line in lines)
    for index in (0, 2):
        assert done.members[index]["frozen"] is None and done.members[index]["metrics"]["test"]["accuracy"] > 0.9
    summary = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    assert summary["frozen"] == [diverged["frozen"]]
    kept = [done.members[i]["metrics"]["test"]["accuracy"] for i in (0, 2)]
    assert summary["spread"]["test"]["accuracy"]["mean"] == pytest.approx(np.mean(kept))  # frozen members left out


def test_settings_that_change_the_model_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"--sweep hidden: only optimizer.learning_rate, .* run each value separately"):
        runs.sweep("mlp_digits", seeds=[0], sweep={"hidden": [32, 64]}, out=str(tmp_path / "x"), **QUIET)
    assert not (tmp_path / "x").exists()
    assert runs.parse_seeds("0-3,8") == [0, 1, 2, 3, 8]
    assert runs.parse_sweep(["optimizer.learning_rate=0.01,0.1"]) == {"optimizer.learning_rate": [0.01, 0.1]}
    with pytest.raises(ConfigError, match="--seeds takes ranges and lists"):
        runs.parse_seeds("a-b")


def test_the_command_line_sweep(tmp_path):
    done = subprocess.run([sys.executable, "-m", "fundl.cli", "run", "mlp_digits", "--seeds", "0-1", "--sweep",
                           "optimizer.learning_rate=0.05,0.1", "--set", "train.epochs=1", "--out", str(tmp_path / "s"), "--quiet"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "test: accuracy" in done.stdout and "±" in done.stdout and "4 members" in done.stdout


def test_16_members_spread_over_8_devices_agree_with_one_device():
    code = """
import json, jax, numpy as np
from fundl import runs
assert jax.device_count() == 8
import tempfile
quiet = {"quiet": True, "echo": lambda _: None}
one = runs.sweep("mlp_digits", [("train.epochs", 2), ("train.devices", 1)], seeds=list(range(16)), out=tempfile.mkdtemp() + "/a", **quiet)
many = runs.sweep("mlp_digits", [("train.epochs", 2)], seeds=list(range(16)), out=tempfile.mkdtemp() + "/b", **quiet)
for a, b in zip(one.members, many.members):
    for split in a["metrics"]:
        for k in a["metrics"][split]:
            assert abs(a["metrics"][split][k] - b["metrics"][split][k]) <= 1e-5 * max(1, abs(a["metrics"][split][k])), (split, k)
print("OK")
"""
    import os

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "OK" in done.stdout, done.stderr


def test_a_sweep_evaluates_with_the_experiments_eval_fn_as_its_runs_do(tmp_path):
    # backprop_digits' loss function takes no `train` keyword: only its eval_fn can evaluate (and reports grad_rel_diff)
    done = runs.sweep("backprop_digits", [("train.epochs", 1)], seeds=[0, 1], out=str(tmp_path / "sweep"), **QUIET)
    alone = runs.run("backprop_digits", [("train.epochs", 1), ("seed", 1)], out=str(tmp_path / "alone"), **QUIET)
    for split in ("validation", "test"):
        assert set(done.members[1]["metrics"][split]) == set(alone.summary["metrics"][split]) >= {"loss", "accuracy", "grad_rel_diff"}
        assert done.members[1]["metrics"][split]["accuracy"] == pytest.approx(alone.summary["metrics"][split]["accuracy"], abs=1e-6)
