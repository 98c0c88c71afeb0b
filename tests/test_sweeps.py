"""Sweeps: many seeds and optimizer settings as one compiled program, each member like its separate run.

A sweep is a run whose population has many members: it gets what a run has (checkpoints,
exact resume, hooks, accumulation, logs and evaluations on a schedule, a mesh) and reports
per setting what a user chooses from.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from child import run_python

import fundl as fl
from fundl import runs
from fundl.runs import ConfigError
from fundl.train import (
    BestParams,
    TrainState,
    classification_loss,
    early_stopping,
    fit,
    fit_members,
    initial_train_states,
    params_fingerprint,
)

QUIET = {"quiet": True, "echo": lambda _: None}
SHORT = [("train.epochs", 5)]
CLI = [sys.executable, "-m", "fundl.cli"]


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
                assert member["metrics"][split][name] == pytest.approx(value, rel=1e-5, abs=1e-6), (split, name)
        # the member's train metrics are a run's: the mean since the last log (not the last batch)
        assert "learning_rate" in member["metrics"]["train"]
    assert len({m["params_fingerprint"] for m in done.members}) == 8


def test_a_members_final_params_load_back_and_the_sweep_lists_as_finished(eight_seeds):
    root, done = eight_seeds
    loaded = runs.load_run(root / "sweep", member=3)
    assert params_fingerprint(loaded.train_state.params) == done.members[3]["params_fingerprint"]
    assert loaded.config["seed"] == 3
    with pytest.raises(ValueError, match="is a sweep of 8 members: give the member to load, 0 to 7"):
        runs.load_run(root / "sweep")
    (listed,) = runs.list_runs(root)
    assert listed["status"] == "finished" and listed["headline"][0] == "test/accuracy"
    assert (
        "finished" in runs.compare_runs([root / "sweep", root / "sweep"]) or True
    )  # compare reads a sweep without error
    assert re.search(r"sweep: 8 members", runs.show_run(root / "sweep"))


def test_member_params_are_allclose_to_separate_fit():
    module = runs.load_example("mlp_digits")
    config = runs.resolve_config(module, SHORT)
    experiment = module.experiment(config)
    optimizer = optax.sgd(0.1)
    states = initial_train_states(experiment.model, experiment.input_shape, optimizer, [3, 4])
    final, history = fit_members(
        experiment.loss_fn,
        lambda hp: optimizer,
        states,
        {},
        experiment.train_data,
        batch_size=32,
        data_seeds=[3, 4],
        epochs=5,
        quiet=True,
    )
    assert history.members == (fl.train.MemberEnd(), fl.train.MemberEnd())
    for i in range(2):
        one = jax.tree.map(lambda x: x[i], states)
        alone, _ = fit(
            experiment.loss_fn,
            optimizer,
            one,
            experiment.train_data,
            batch_size=32,
            epochs=5,
            data_seed=3 + i,
            quiet=True,
        )
        for a, b in zip(
            jax.tree.leaves(jax.tree.map(lambda x: x[i], final.states.params)), jax.tree.leaves(alone.params)
        ):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def _digits_setup():
    data = fl.datasets.digits(validation=0.2)
    model = fl.serial(fl.flatten(), fl.dense(32), fl.relu(), fl.dense(10))
    return data, model, classification_loss(model)


def test_members_get_what_runs_have_accumulation_schedules_early_stopping_and_best_params():
    """Each member, with accumulation, logs and evaluations off the epoch, early stopping and best params, ends
    where its separate fit ends (<= 1e-5); a member that stops is frozen while the others go on."""
    data, model, loss = _digits_setup()
    rates = [0.0, 0.1]

    def optimizer_fn(hyper):
        return optax.sgd(hyper["lr"])

    def hooks(member):
        return [early_stopping("validation", "loss", patience=3), BestParams("validation", "accuracy", mode="max")]

    options = dict(
        batch_size=32,
        epochs=6,
        eval_every=19,
        log_every=7,
        accumulate=2,
        eval_data={"validation": data["validation"]},
        quiet=True,
    )
    states = initial_train_states(model, (32, 8, 8), optax.sgd(0.1), [0, 1])
    member_hooks = {m: hooks(m) for m in range(2)}
    final, history = fit_members(
        loss,
        optimizer_fn,
        states,
        {"lr": np.array(rates)},
        data["train"],
        data_seeds=[0, 1],
        hooks=lambda m: member_hooks[m],
        **options,
    )
    ends = history.members
    assert ends[0].stop_reason and ends[0].stop_reason.startswith("early stopping")  # a rate of 0 stops early ...
    assert ends[1].stop_reason is None and history.steps == 6 * 38  # ... the other trains to the end
    assert not bool(final.alive[0]) and bool(final.alive[1])
    for m, rate in enumerate(rates):
        alone_hooks = hooks(m)
        one = jax.tree.map(lambda x: x[m], states)
        alone, alone_history = fit(loss, optax.sgd(rate), one, data["train"], data_seed=m, hooks=alone_hooks, **options)
        member_records = [r._replace(member=None) for r in history.records if r.member == m]
        assert [r.step for r in member_records] == [r.step for r in alone_history.records]
        for got, want in zip(member_records, alone_history.records):
            for name, value in want.metrics.items():
                assert got.metrics[name] == pytest.approx(value, rel=1e-5, abs=1e-6), (m, got.step, got.split, name)
        for a, b in zip(
            jax.tree.leaves(jax.tree.map(lambda x: x[m], final.states.params)), jax.tree.leaves(alone.params)
        ):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
        best, alone_best = member_hooks[m][1], alone_hooks[1]
        assert best.step == alone_best.step and best.value == pytest.approx(alone_best.value, abs=1e-6)
        for a, b in zip(jax.tree.leaves(best.params), jax.tree.leaves(alone_best.params)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_a_frozen_member_stays_frozen_while_the_others_train(tmp_path):
    lines = []
    done = runs.sweep(
        "mlp_digits",
        [("train.epochs", 3)],
        seeds=[0],
        sweep={"optimizer.learning_rate": [0.1, 1e38, 0.05]},
        out=str(tmp_path / "sweep"),
        quiet=True,
        echo=lines.append,
    )
    diverged = done.members[1]
    assert re.fullmatch(
        r"member 1 \(seed 0, optimizer.learning_rate=1e\+38\) \w+ became (nan|inf|-inf) at step (\d+): "
        r"frozen at its last good state",
        diverged["frozen"],
    )
    step = int(re.search(r"at step (\d+)", diverged["frozen"]).group(1))
    assert any("member 1 (seed 0, optimizer.learning_rate=1e+38)" in line for line in lines)
    for index in (0, 2):
        assert done.members[index]["frozen"] is None and done.members[index]["metrics"]["test"]["accuracy"] > 0.9
    # frozen at its last good state: the params of the same member trained alone for one step less
    alone = runs.run(
        "mlp_digits",
        [("train.steps", step - 1), ("optimizer.learning_rate", 1e38)],
        out=str(tmp_path / "alone"),
        **QUIET,
    )
    frozen = runs.load_run(tmp_path / "sweep", member=1).train_state
    assert int(frozen.step) == step - 1  # the whole state is frozen, its step counter too, while the others go on
    for a, b in zip(jax.tree.leaves(frozen.params), jax.tree.leaves(alone.train_state.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5)
    assert int(runs.load_run(tmp_path / "sweep", member=0).train_state.step) == 3 * 38
    summary = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    assert summary["frozen"] == [diverged["frozen"]]
    assert [s["settings"]["optimizer.learning_rate"] for s in summary["settings"]] == [0.1, 1e38, 0.05]
    assert summary["settings"][1]["frozen"] == 1


def test_every_member_going_nonfinite_fails_the_sweep(tmp_path):
    done = subprocess.run(
        [
            *CLI,
            "run",
            "mlp_digits",
            "--seeds",
            "0-1",
            "--set",
            "optimizer.learning_rate=1e38",
            "--set",
            "train.epochs=2",
            "--out",
            str(tmp_path / "s"),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 3, done.stderr
    assert json.loads((tmp_path / "s" / "status.json").read_text())["status"] == "failed"


def test_learning_rates_crossed_with_seeds_report_per_setting(tmp_path):
    rates = [0.01, 0.3]
    lines = []
    done = runs.sweep(
        "mlp_digits",
        [("train.epochs", 2), ("optimizer.schedule", "cosine")],
        seeds=[0, 1],
        sweep={"optimizer.learning_rate": rates},
        out=str(tmp_path / "sweep"),
        quiet=True,
        echo=lines.append,
    )
    assert [(m["settings"]["optimizer.learning_rate"], m["seed"]) for m in done.members] == [
        (r, s) for r in rates for s in (0, 1)
    ]
    member = done.members[3]  # lr 0.3, seed 1, under a cosine schedule
    alone = runs.run(
        "mlp_digits",
        [("train.epochs", 2), ("seed", 1), ("optimizer.schedule", "cosine"), ("optimizer.learning_rate", 0.3)],
        out=str(tmp_path / "alone"),
        **QUIET,
    )
    assert member["metrics"]["test"]["loss"] == pytest.approx(alone.summary["metrics"]["test"]["loss"], rel=1e-5)
    settings = done.summary["settings"]
    assert [s["settings"] for s in settings] == [{"optimizer.learning_rate": r} for r in rates]
    for setting, members in zip(
        settings, ([0, 1], [2, 3])
    ):  # the spread over the seeds of one setting, never across rates
        accuracies = [done.members[m]["metrics"]["test"]["accuracy"] for m in members]
        assert setting["metrics"]["test"]["accuracy"]["mean"] == pytest.approx(np.mean(accuracies))
        assert setting["metrics"]["test"]["accuracy"]["std"] == pytest.approx(np.std(accuracies))
    assert any(line.startswith("optimizer.learning_rate=0.3: 2 seeds") for line in lines)
    assert done.summary["metrics"] == {}  # no mean across different rates


def test_the_same_sweep_twice_is_bit_identical_and_the_aggregate_matches_the_members(eight_seeds, tmp_path):
    root, done = eight_seeds
    again = runs.sweep("mlp_digits", SHORT, seeds=list(range(8)), out=str(tmp_path / "again"), **QUIET)
    assert [m["params_fingerprint"] for m in again.members] == [m["params_fingerprint"] for m in done.members]
    accuracies = np.array([m["metrics"]["test"]["accuracy"] for m in done.members])
    (setting,) = done.summary["settings"]
    spread = setting["metrics"]["test"]["accuracy"]
    assert spread["mean"] == pytest.approx(accuracies.mean()) and spread["std"] == pytest.approx(accuracies.std())
    assert (spread["min"], spread["max"]) == (accuracies.min(), accuracies.max())
    assert done.summary["metrics"]["test"]["accuracy"] == spread["mean"]  # fundl show / compare read these
    assert (root / "sweep" / "curves.png").stat().st_size > 5000
    records = [json.loads(line) for line in (root / "sweep" / "metrics.jsonl").read_text().splitlines()]
    assert {r["member"] for r in records} == set(range(8))


def test_what_cannot_work_per_member_is_refused_before_the_directory_exists(tmp_path):
    with pytest.raises(
        ConfigError, match=r"--sweep hidden: only optimizer.learning_rate, .* run each value separately"
    ):
        runs.sweep("mlp_digits", seeds=[0], sweep={"hidden": [32, 64]}, out=str(tmp_path / "x"), **QUIET)
    with pytest.raises(ConfigError, match="checkpoint.best keeps the checkpoint of one run's best evaluation"):
        runs.sweep(
            "mlp_digits", [("checkpoint.best", "validation/accuracy")], seeds=[0, 1], out=str(tmp_path / "x"), **QUIET
        )
    with pytest.raises(
        ConfigError, match=r"a sweep of 100000 members needs about .* GiB .* sweep at most \d+ members at once"
    ):
        runs.sweep("mlp_digits", [("hidden", 4096)], seeds=list(range(100_000)), out=str(tmp_path / "x"), **QUIET)
    with pytest.raises(ConfigError, match="a sweep of 200,000 members: at most 100,000 train as one program"):
        runs.sweep(
            "mlp_digits",
            seeds=[0, 1],
            sweep={"optimizer.learning_rate": [0.1] * 100_000},
            out=str(tmp_path / "x"),
            **QUIET,
        )
    with pytest.raises(ConfigError, match="a sweep trains at most 100,000 members as one program"):
        runs.parse_seeds("0-100000000")
    assert not (tmp_path / "x").exists()
    assert runs.parse_seeds("0-3,8") == [0, 1, 2, 3, 8]
    assert runs.parse_sweep(["optimizer.learning_rate=0.01,0.1"]) == {"optimizer.learning_rate": [0.01, 0.1]}
    with pytest.raises(ConfigError, match="--seeds takes ranges and lists"):
        runs.parse_seeds("a-b")


def test_the_command_line_sweep(tmp_path):
    done = subprocess.run(
        [
            *CLI,
            "run",
            "mlp_digits",
            "--seeds",
            "0-1",
            "--sweep",
            "optimizer.learning_rate=0.05,0.1",
            "--set",
            "train.epochs=1",
            "--out",
            str(tmp_path / "s"),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "test: loss " in done.stdout and "±" in done.stdout and "4 members" in done.stdout


def test_a_sweep_evaluates_with_the_experiments_eval_fn_as_its_runs_do(tmp_path):
    # backprop_digits' loss function takes no `train` keyword: only its eval_fn can evaluate (and reports grad_rel_diff)
    done = runs.sweep("backprop_digits", [("train.epochs", 1)], seeds=[0, 1], out=str(tmp_path / "sweep"), **QUIET)
    alone = runs.run("backprop_digits", [("train.epochs", 1), ("seed", 1)], out=str(tmp_path / "alone"), **QUIET)
    for split in ("validation", "test"):
        assert (
            set(done.members[1]["metrics"][split])
            == set(alone.summary["metrics"][split])
            >= {"loss", "accuracy", "grad_rel_diff"}
        )
        assert done.members[1]["metrics"][split]["accuracy"] == pytest.approx(
            alone.summary["metrics"][split]["accuracy"], abs=1e-6
        )


# --- interrupted and resumed ------------------------------------------------------------------------

SWEEP16 = [
    "mlp_digits",
    "--seeds",
    "0-7",
    "--sweep",
    "optimizer.learning_rate=0.05,0.2",
    "--set",
    "train.epochs=4",
    "--set",
    "checkpoint.every_steps=10",
    "--quiet",
]


def _latest_checkpoint(directory: Path) -> int:
    steps = [int(p.stem) for p in (directory / "checkpoints").glob("*.ckpt") if p.stem.isdigit()]
    return max(steps, default=0)


def _kill_after_checkpoint(command: list[str], directory: Path, beyond: int) -> int:
    """Starts ``command``, SIGKILLs it by its pid once a checkpoint after step ``beyond`` exists; returns that step."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while _latest_checkpoint(directory) <= beyond:
            assert process.poll() is None, "the sweep ended before it could be killed"
            assert time.time() < deadline, "no new checkpoint within 240 s"
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
    return _latest_checkpoint(directory)


def test_a_16_member_sweep_killed_three_times_and_resumed_ends_as_the_uninterrupted_one(tmp_path):
    whole = subprocess.run(
        [*CLI, "run", *SWEEP16, "--out", str(tmp_path / "whole")], capture_output=True, text=True, timeout=600
    )
    assert whole.returncode == 0, whole.stderr
    killed = tmp_path / "killed"
    moment = _kill_after_checkpoint([*CLI, "run", *SWEEP16, "--out", str(killed)], killed, 0)
    for later in (moment + 25, moment + 60):  # then twice more, while resuming
        moment = _kill_after_checkpoint([*CLI, "resume", str(killed), "--quiet"], killed, later)
    assert json.loads((killed / "status.json").read_text())["status"] == "running"  # a SIGKILL leaves no word
    done = subprocess.run([*CLI, "resume", str(killed), "--quiet"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    members = lambda d: [m["params_fingerprint"] for m in json.loads((d / "members.json").read_text())]  # noqa: E731
    assert len(members(killed)) == 16 and members(killed) == members(tmp_path / "whole")
    records = lambda d: (d / "metrics.jsonl").read_text().splitlines()  # noqa: E731
    assert len(records(killed)) == len(records(tmp_path / "whole"))  # no duplicated records


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_a_first_ctrl_c_checkpoint_a_sweep_and_exit_75(tmp_path, signum):
    out = tmp_path / "s"
    process = subprocess.Popen(
        [*CLI, "run", *SWEEP16, "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.time() + 240
        while _latest_checkpoint(out) == 0:
            assert process.poll() is None and time.time() < deadline
            time.sleep(0.02)
        os.kill(process.pid, signum)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
    assert process.returncode == 75, stderr
    assert f"continue with: fundl resume {out}" in stdout
    assert json.loads((out / "status.json").read_text())["status"] == "interrupted"


def test_16_members_spread_over_8_devices_and_an_fsdp_mesh_agree_with_their_separate_runs():
    code = """
import jax, numpy as np, optax
import fundl as fl
from fundl.distributed import data_mesh
from fundl.train import classification_loss, fit, fit_members, initial_train_states
assert jax.device_count() == 8
data = fl.datasets.digits(validation=0.2)
model = fl.serial(fl.flatten(), fl.dense(64), fl.relu(), fl.dense(10))
loss = classification_loss(model)
opt = optax.sgd(0.1)
seeds = list(range(16))
states = initial_train_states(model, (32, 8, 8), opt, seeds)
common = dict(batch_size=32, epochs=1, eval_data={"validation": data["validation"]}, quiet=True)
spread, _ = fit_members(loss, lambda h: opt, states, {}, data["train"], data_seeds=seeds, mesh=None, **common)
one, _ = fit_members(loss, lambda h: opt, states, {}, data["train"], data_seeds=seeds, mesh=1, **common)
for a, b in zip(jax.tree.leaves(spread.states.params), jax.tree.leaves(one.states.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
mesh = data_mesh(8, fsdp=2)
few = [0, 1]
two = jax.tree.map(lambda x: x[:2], states)
sharded, _ = fit_members(loss, lambda h: opt, two, {}, data["train"], data_seeds=few, mesh=mesh,
                         **common)
for m in few:
    alone, _ = fit(loss, opt, jax.tree.map(lambda x: x[m], states), data["train"], data_seed=m, mesh=mesh, **common)
    member = jax.tree.map(lambda x: x[m], sharded.states.params)
    for a, b in zip(jax.tree.leaves(member), jax.tree.leaves(alone.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
"""
    run_python(code, devices=8, timeout=600)


def test_fit_members_refuses_a_mismatch_of_members_and_seeds():
    data, model, loss = _digits_setup()
    states = initial_train_states(model, (32, 8, 8), optax.sgd(0.1), [0, 1])
    with pytest.raises(ValueError, match="train_states hold 2 members, data_seeds 3"):
        fit_members(
            loss, lambda h: optax.sgd(0.1), states, {}, data["train"], batch_size=32, data_seeds=[0, 1, 2], epochs=1
        )
    assert isinstance(jax.tree.map(lambda x: x[0], states), TrainState)


def test_a_convolutional_sweep_on_the_cpu_steps_one_member_at_a_time_bit_identical_to_its_runs(tmp_path):
    """vmapped convolutions run as grouped convolutions on XLA:CPU (~2x slower per member): such a sweep takes one
    call per member instead, each on its slice of the stacked state, and each member ends exactly as its run."""
    done = runs.sweep("cnn_digits", [("train.epochs", 1)], seeds=[0, 1], out=str(tmp_path / "sweep"), **QUIET)
    assert "one call per member" in done.summary["steps_per_call_reason"]
    for seed in (0, 1):
        alone = runs.run("cnn_digits", [("train.epochs", 1), ("seed", seed)], out=str(tmp_path / f"s{seed}"), **QUIET)
        assert done.members[seed]["params_fingerprint"] == alone.summary["params_fingerprint"]
