"""Any optax optimizer in a run: an example's own optimizer trains and resumes bit-exactly, the schedules by name work
with a swept (traced) learning rate, and a learning rate never carries over to another optimizer."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from fundl.examples import mlp_digits

from fundl import cli, runs
from fundl.runs import ConfigError, make_optimizer, resolve_config
from fundl.runs._config import DEFAULT_RATES
from fundl.runs._identity import read_sealed, seal
from fundl.runs._optimizers import OPTIMIZERS, make_schedule


def optimizer_config(**settings):
    return resolve_config(mlp_digits, [(f"optimizer.{key}", value) for key, value in settings.items()])


# --- the learning rate belongs to its optimizer -------------------------------------------------------


def test_naming_another_optimizer_without_a_rate_takes_its_default_never_the_old_one():
    assert optimizer_config()["optimizer"]["learning_rate"] == 0.1  # mlp_digits: SGD 0.1
    assert optimizer_config(name="adam")["optimizer"]["learning_rate"] == DEFAULT_RATES["adam"] == 1e-3
    assert optimizer_config(name="lion")["optimizer"]["learning_rate"] == 1e-4
    assert optimizer_config(name="adam", learning_rate=0.01)["optimizer"]["learning_rate"] == 0.01
    assert optimizer_config(learning_rate=0.5)["optimizer"]["learning_rate"] == 0.5  # the same optimizer: kept
    momentum = resolve_config(mlp_digits, [("optimizer.momentum", 0.9)])
    switched = runs.override(momentum, [("optimizer.name", "adam")])  # sgd's momentum does not go to adam either
    assert switched["optimizer"]["momentum"] is None and switched["optimizer"]["learning_rate"] == 1e-3


def test_every_named_optimizer_has_a_documented_default_rate():
    assert set(DEFAULT_RATES) == set(OPTIMIZERS)
    config = resolve_config(mlp_digits, [("optimizer.learning_rate", None)])
    assert config["optimizer"]["learning_rate"] == 0.1


# --- schedules by name ------------------------------------------------------------------------------


SCHEDULES = {
    "constant": {},
    "cosine": {"warmup_steps": 10},
    "exponential": {"decay_rate": 0.01},
    "piecewise": {"decay_rate": 0.1, "boundaries": [40, 70], "warmup_steps": 10},
    "one_cycle": {"warmup_steps": 30},
}


@pytest.mark.parametrize("name", SCHEDULES)
def test_every_schedule_takes_a_swept_traced_rate(name):
    opt = {**optimizer_config(schedule=name, **SCHEDULES[name])["optimizer"]}
    steps = [0, 5, 10, 30, 45, 75, 99]

    def rates(lr):
        schedule = make_schedule({**opt, "learning_rate": lr}, 100)
        return jnp.stack([schedule(step) for step in steps])

    traced, eager = jax.jit(rates)(0.1), rates(0.1)
    np.testing.assert_allclose(traced, eager, rtol=1e-6)
    expected = {
        "constant": [0.1] * 7,
        "cosine": [0.0, 0.05, 0.1, None, None, None, 0.0],
        "exponential": [0.1, None, None, None, None, None, 0.1 * 0.01 ** (99 / 100)],
        "piecewise": [0.0, 0.05, 0.1, 0.1, 0.01, 0.001, 0.001],
        "one_cycle": [0.1 / 25, None, None, 0.1, None, None, None],
    }[name]
    for rate, want in zip(np.asarray(eager), expected):
        if want is not None:
            assert rate == pytest.approx(want, rel=1e-3, abs=1e-4)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"schedule": "exponential"}, "needs optimizer.decay_rate"),
        ({"schedule": "piecewise", "decay_rate": 0.1}, "needs optimizer.boundaries: a list of steps"),
        ({"schedule": "linear"}, "unknown schedule 'linear'"),
        ({"nesterov": True}, r"optimizer.nesterov applies to sgd with momentum \(e.g. optimizer.momentum=0.9\)"),
        ({"name": "adam", "nesterov": True}, "not to 'adam' \\(nadam is Adam with Nesterov momentum\\)"),
        ({"name": "adamw", "weight_decay_mask": "weights"}, "set optimizer.weight_decay too"),
        ({"weight_decay_mask": "biases"}, "unknown optimizer.weight_decay_mask 'biases'; available: all, weights"),
    ],
)
def test_optimizer_settings_that_do_not_fit_are_clear_errors(settings, message):
    with pytest.raises(ConfigError, match=message):
        make_optimizer(optimizer_config(**settings), 100)


def test_nesterov_is_optax_nesterov_and_the_mask_spares_biases_and_norm_scales():
    params = {"dense": {"w": jnp.ones((3, 2)), "b": jnp.ones(2)}, "norm": {"scale": jnp.ones(2)}}
    sgd, _ = make_optimizer(optimizer_config(momentum=0.9, nesterov=True), 100)
    grads = jax.tree.map(lambda p: 0.5 * p, params)
    want = optax.sgd(0.1, momentum=0.9, nesterov=True)
    assert jax.tree.all(
        jax.tree.map(
            lambda a, b: bool(jnp.all(a == b)),
            sgd.update(grads, sgd.init(params))[0],
            want.update(grads, want.init(params))[0],
        )
    )
    adamw, _ = make_optimizer(optimizer_config(name="adamw", weight_decay=0.5, weight_decay_mask="weights"), 100)
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = adamw.update(zero, adamw.init(params), params)  # zero gradients: only the decay moves params
    assert bool(jnp.all(updates["dense"]["w"] < 0)) and not jnp.any(updates["dense"]["b"])
    assert not jnp.any(updates["norm"]["scale"])


# --- an example's own optimizer -------------------------------------------------------------------


OWN_OPTIMIZER = """
import optax
from fundl.examples.mlp_digits import CONFIG, experiment as base

CONFIG = {**CONFIG, "train": {"epochs": 2, "batch_size": 32}}


def schedule(config, total_steps):
    return optax.warmup_cosine_decay_schedule(0.0, config["optimizer"]["learning_rate"], 10, total_steps)


def optimizer(config, total_steps):  # Adabelief is not one the config names
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adabelief(schedule(config, total_steps)))


def experiment(config):
    return base(config)._replace(optimizer=optimizer, schedule=schedule)
"""


def test_an_examples_own_optax_optimizer_trains_through_fundl_run_and_resumes_bit_exactly(tmp_path, capsys):
    example = tmp_path / "own_optimizer.py"
    example.write_text(OWN_OPTIMIZER)
    common = ["--no-compilation-cache", "--quiet", "--set", "optimizer.learning_rate=0.01"]
    assert cli.main(["run", str(example), "--out", str(tmp_path / "whole"), *common]) == 0
    assert cli.main(["run", str(example), "--out", str(tmp_path / "cut"), "--stop-after-steps", "45", *common]) == 75
    assert cli.main(["resume", str(tmp_path / "cut"), "--no-compilation-cache", "--quiet"]) == 0
    capsys.readouterr()
    whole, resumed = (json.loads((tmp_path / name / "summary.json").read_text()) for name in ("whole", "cut"))
    assert resumed["params_fingerprint"] == whole["params_fingerprint"]
    assert whole["metrics"]["test"]["accuracy"] > 0.9  # it trained
    rates = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    logged = [r["learning_rate"] for r in rates if r["split"] == "train"]  # the example's schedule is logged
    assert logged[0] == pytest.approx(0.01 * (1 + np.cos(np.pi * 27 / 66)) / 2, rel=1e-4)  # after step 38


OWN_PYTHON_RATE = """
import optax
from fundl.examples.mlp_digits import CONFIG, experiment as base


def optimizer(config, total_steps):
    rate = config["optimizer"]["learning_rate"]
    return optax.sgd(rate if rate < 0.5 else 0.5)  # a Python `if` on the rate: it cannot be swept


def experiment(config):
    return base(config)._replace(optimizer=optimizer)
"""


def test_a_sweep_refuses_an_optimizer_that_reads_the_swept_rate_in_python(tmp_path):
    example = tmp_path / "python_rate.py"
    example.write_text(OWN_PYTHON_RATE)
    with pytest.raises(ConfigError, match=r"--sweep optimizer.learning_rate: swept settings enter the compiled step"):
        runs.sweep(str(example), seeds=[0], sweep={"optimizer.learning_rate": [0.1, 0.2]}, out=str(tmp_path / "s"))
    assert not (tmp_path / "s").exists()  # refused before anything was made


def test_a_run_made_before_the_new_optimizer_keys_still_resumes(tmp_path):
    runs.run("mlp_digits", [("train.epochs", 1)], out=str(tmp_path / "old"), stop_after_steps=10, verbose=0,
             echo=lambda _: None)  # fmt: skip
    path = tmp_path / "old" / "config.json"
    config = json.loads(path.read_text())
    for key in ("decay_rate", "boundaries", "nesterov", "weight_decay_mask"):
        del config["optimizer"][key]  # as a run written before they existed
    del config["log"]["wandb"]
    path.write_text(json.dumps(config))
    old_keys = {"optimizer.decay_rate", "optimizer.boundaries", "optimizer.nesterov", "optimizer.weight_decay_mask"}
    sealed = read_sealed(tmp_path / "old")  # sealed by that older fundl: without the keys either
    seal(
        tmp_path / "old",
        {**sealed, "config": {k: v for k, v in sealed["config"].items() if k not in old_keys | {"log.wandb"}}},
    )
    done = runs.resume(tmp_path / "old", verbose=0, echo=lambda _: None)
    assert done.history.steps == 38 and done.config["optimizer"]["nesterov"] is False
