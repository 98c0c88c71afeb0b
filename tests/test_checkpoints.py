"""Checkpoints, exact resume, preemption, and an honest run directory (each promise a test that can fail)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

import fundl as fl
from fundl import runs
from fundl.cli import main
from fundl.runs import Checkpoints
from fundl.train import TrainState

QUIET = {"quiet": True, "echo": lambda _: None}
CLI = [sys.executable, "-m", "fundl.cli"]


def fingerprint(directory: Path) -> str:
    return json.loads((directory / "summary.json").read_text())["params_fingerprint"]


def status(directory: Path) -> dict:
    return json.loads((directory / "status.json").read_text())


def strict(path: Path):
    """Parses JSON refusing NaN and infinities, as strict readers do."""

    def refuse(constant):
        raise ValueError(f"{path} holds {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


# --- exact resume ------------------------------------------------------------------------------

STOPPING = [
    ("optimizer.schedule", "cosine"),
    ("early_stopping.metric", "validation/loss"),
    ("early_stopping.patience", 2),
    ("early_stopping.min_delta", 0.02),
]


def test_stop_inside_an_epoch_and_resume_equals_the_run_that_never_stopped(tmp_path):
    whole = runs.run("mlp_digits", STOPPING, out=str(tmp_path / "whole"), **QUIET)
    assert whole.history.stop_reason.startswith("early stopping")  # the hook's state matters below
    stopped = runs.run("mlp_digits", STOPPING, out=str(tmp_path / "stopped"), stop_after_steps=100, **QUIET)
    assert stopped.history.interrupted and stopped.history.steps == 100  # inside epoch 3 (38 steps each)
    assert (
        status(tmp_path / "stopped")["status"] == "interrupted" and not (tmp_path / "stopped" / "summary.json").exists()
    )
    resumed = runs.resume(str(tmp_path / "stopped"), **QUIET)
    assert fingerprint(tmp_path / "stopped") == fingerprint(tmp_path / "whole")
    assert resumed.history.stop_reason == whole.history.stop_reason and resumed.history.steps == whole.history.steps

    def evals(d):
        return [r for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines()) if r["split"] != "train"]

    assert evals(tmp_path / "stopped") == evals(tmp_path / "whole")
    assert status(tmp_path / "stopped")["status"] == "stopped_early"
    with pytest.raises(ValueError, match="has stopped early at step .*: there is nothing to resume"):
        runs.resume(str(tmp_path / "stopped"), **QUIET)


def test_resume_is_exact_for_a_cnn_with_batch_norm_and_dropout(tmp_path):
    settings = [("train.epochs", 2)]
    runs.run("cnn_digits", settings, out=str(tmp_path / "whole"), **QUIET)
    runs.run("cnn_digits", settings, out=str(tmp_path / "stopped"), stop_after_steps=30, **QUIET)
    runs.resume(str(tmp_path / "stopped"), **QUIET)
    assert fingerprint(tmp_path / "stopped") == fingerprint(tmp_path / "whole")


def test_an_adam_state_comes_back_bit_for_bit(tmp_path):
    model = fl.serial(fl.dense(16), fl.relu(), fl.dense(3))
    _, params, state = model.init(jax.random.key(0), (4, 5))
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2))
    train_state = TrainState.create(params, state, optimizer, jax.random.key(1))
    for i in range(5):  # several updates: moments and counts far from their initial values
        grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(i), p.shape), params)
        updates, opt_state = optimizer.update(grads, train_state.opt_state, train_state.params)
        train_state = train_state._replace(
            step=train_state.step + 1, params=optax.apply_updates(train_state.params, updates), opt_state=opt_state
        )
    checkpoints = Checkpoints(tmp_path, steps_per_epoch=10, run_id="r")
    checkpoints.save(5, train_state, {"hooks": [[{"best": 0.5, "waited": 1}]]}, {})
    checkpoints.wait()
    step, restored, extra = checkpoints.restore(jax.eval_shape(lambda: train_state))
    assert step == 5 and extra == {"hooks": [[{"best": 0.5, "waited": 1}]]}
    assert jax.tree.structure(restored) == jax.tree.structure(train_state)  # optax NamedTuples, not dicts
    for got, want in zip(
        jax.tree.leaves(restored._replace(key=jax.random.key_data(restored.key))),
        jax.tree.leaves(train_state._replace(key=jax.random.key_data(train_state.key))),
    ):
        assert got.dtype == want.dtype and np.array_equal(np.asarray(got), np.asarray(want))
    assert int(restored.opt_state[1][0].count) == 5
    checkpoints.close()


# --- preemption: signals and SIGKILL -----------------------------------------------------------


def _start(args, cwd):
    return subprocess.Popen([*CLI, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def checkpoint_steps(directory: Path) -> list[int]:
    return sorted(int(p.name.removesuffix(".ckpt")) for p in (directory / "checkpoints").glob("[0-9]*.ckpt"))


def _wait_for_checkpoint(directory: Path, after: int, process, timeout: float = 120) -> None:
    """Waits until a complete checkpoint later than ``after`` exists (or the process ended)."""
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if any(s > after for s in checkpoint_steps(directory)):
            return
        time.sleep(0.02)


def _kill(process) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.communicate()


LONG = ["--set", "train.epochs=40", "--set", "checkpoint.every_steps=10", "--set", "checkpoint.keep=2", "--quiet"]


def test_sigkill_at_any_moment_resumes_to_the_same_params(tmp_path):
    reference = runs.run(
        "mlp_digits",
        [("train.epochs", 40), ("checkpoint.every_steps", 10), ("checkpoint.keep", 2)],
        out=str(tmp_path / "reference"),
        **QUIET,
    )
    out = tmp_path / "killed"
    rng = np.random.default_rng(0)
    process = _start(["run", "mlp_digits", "--out", str(out), *LONG], tmp_path)
    kills = 0
    while True:
        latest = max(checkpoint_steps(out), default=-1)
        _wait_for_checkpoint(out, latest, process)
        time.sleep(rng.uniform(0, 0.15))  # somewhere in the next steps or saves
        if process.poll() is not None or kills == 12:
            break
        _kill(process)
        kills += 1
        process = _start(
            ["resume", str(out), "--quiet"], tmp_path
        )  # a killed save's temporary file is ignored and removed
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    assert kills >= 10
    assert fingerprint(out) == reference.summary["params_fingerprint"]
    assert not list((out / "checkpoints").glob(".*.tmp"))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_checkpoints_prints_one_line_and_resumes_exactly(tmp_path, signum):
    settings = ["--set", "train.epochs=60"]
    out = tmp_path / "run"
    process = _start(["run", "mlp_digits", "--out", str(out), "--quiet", *settings], tmp_path)
    _wait_for_checkpoint(out, 0, process)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 75, stderr
    assert "Traceback" not in stderr and "Traceback" not in stdout
    (line,) = [line for line in stdout.splitlines() if "resume" in line]
    assert f"interrupted by {signal.Signals(signum).name}" in line and f"fundl resume {out}" in line
    assert status(out)["status"] == "interrupted"
    assert main(["resume", str(out), "--quiet"]) == 0
    reference = runs.run("mlp_digits", [("train.epochs", 60)], out=str(tmp_path / "reference"), **QUIET)
    assert fingerprint(out) == reference.summary["params_fingerprint"]


def test_two_runs_started_at_once_on_one_out_directory(tmp_path):
    out = tmp_path / "shared"
    processes = [
        _start(["run", "mlp_digits", "--out", str(out), "--quiet", "--set", "train.epochs=2"], tmp_path)
        for _ in range(2)
    ]
    results = [(p.wait(timeout=120), p.communicate()) for p in processes]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    (loser,) = [err for code, (_, err) in results if code == 2]
    assert "another run has just claimed" in loser or "is not empty" in loser
    assert status(out)["status"] == "finished" and fingerprint(out)


# --- config errors leave nothing behind ----------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "train.epochs=-1"], "train.epochs must be a non-negative integer, got -1"),
        (["--set", "train.eval_every=0"], "train.eval_every must be a positive number of steps, got 0"),
        (
            ["--set", "train.steps_per_call=fast"],
            "train.steps_per_call must be a positive integer or \"auto\", got 'fast'",
        ),
        (["--set", "train.eval_batch_size=-3"], "train.eval_batch_size must be a positive integer"),
        (["--seed", "-1"], "seed must be an integer in [0, 2**63), got -1"),
        (["--seed", str(2**63)], f"seed must be an integer in [0, 2**63), got {2**63}"),
        (["--set", "checkpoint.every_steps=0"], "checkpoint.every_steps must be a positive integer"),
        (
            ["--set", "early_stopping.metric=val/loss"],
            "early_stopping.metric names an evaluated 'split/metric' (splits: validation)",
        ),
        (
            ["--set", "early_stopping.metric=test/loss"],
            "early_stopping.metric 'test/loss': the test split is scored once, after training, so that nothing is "
            "tuned on it, and is never evaluated during training; watch a metric evaluated during training instead: "
            "validation/accuracy, validation/loss",
        ),
        # a metric never evaluated during training (the README's old example) would silently keep no best checkpoint
        (
            ["--set", "checkpoint.best=test/accuracy"],
            "checkpoint.best 'test/accuracy': the test split is scored once, after training, so that nothing is "
            "tuned on it, and is never evaluated during training; watch a metric evaluated during training instead: "
            "train/loss, train/accuracy, train/learning_rate, validation/accuracy, validation/loss",
        ),
        (
            ["--set", "checkpoint.best=validation/acc"],
            "checkpoint.best 'validation/acc': split 'validation' does not report 'acc'; evaluated during training: ",
        ),
        (
            ["--set", "early_stopping.metric=validation/acuracy"],
            "early_stopping.metric 'validation/acuracy': split 'validation' does not report 'acuracy'; evaluated "
            "during training: validation/accuracy, validation/loss",
        ),
        # ranges, from one table: refused before the directory exists
        (
            ["--set", "optimizer.learning_rate=-0.1"],
            "optimizer.learning_rate must be a non-negative number, got -0.1 (a negative rate climbs the loss",
        ),
        (["--set", "optimizer.learning_rate=NaN"], "optimizer.learning_rate must be a finite number, got nan"),
        (["--set", "optimizer.learning_rate=Infinity"], "optimizer.learning_rate must be a finite number, got inf"),
        (
            ["--set", "optimizer.warmup_steps=-10"],
            "optimizer.warmup_steps must be a non-negative number of steps, got -10",
        ),
        (
            ["--set", "optimizer.clip_norm=-1"],
            "optimizer.clip_norm must be a positive number, got -1.0 (the largest global gradient norm kept: a "
            "negative one reverses the gradients",
        ),
        (["--set", "optimizer.momentum=1.5"], "optimizer.momentum must be in [0, 1), got 1.5"),
        (["--set", "optimizer.momentum=1"], "optimizer.momentum must be in [0, 1), got 1.0"),
        (
            ["--set", "optimizer.name=adamw", "--set", "optimizer.weight_decay=-0.01"],
            "optimizer.weight_decay must be a non-negative number, got -0.01",
        ),
        (["--set", "early_stopping.min_delta=-1"], "early_stopping.min_delta must be a non-negative number, got -1.0"),
        (["--set", "train.accumulate=0"], "train.accumulate must be a positive integer, got 0"),
        (
            ["--seeds", "0-1", "--sweep", "optimizer.learning_rate=0.1,-1"],
            "--sweep optimizer.learning_rate must be a non-negative number, got -1",
        ),
        (
            ["--seeds", "0-1", "--sweep", "optimizer.momentum=0.5,NaN"],
            "--sweep optimizer.momentum must be a finite number, got nan",
        ),
    ],
)
def test_config_errors_are_clear_and_leave_no_directory(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    assert main(["run", "mlp_digits", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fundl: error: ") and message in err
    assert not out.exists()


def test_out_at_a_file_or_an_unwritable_place_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["run", "mlp_digits", "--out", str(tmp_path / "file")]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.geteuid() != 0:  # root writes anywhere
        assert main(["run", "mlp_digits", "--out", str(locked / "run")]) == 2
        assert "fundl: error:" in capsys.readouterr().err


# --- broken, foreign and missing files ------------------------------------------------------------


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A run stopped at step 60 (checkpoints at 38 and 60), and another run's checkpoints."""
    root = tmp_path_factory.mktemp("interrupted")
    runs.run("mlp_digits", [("train.epochs", 3)], out=str(root / "run"), stop_after_steps=60, **QUIET)
    runs.run("mlp_digits", [("train.epochs", 3), ("seed", 1)], out=str(root / "other"), stop_after_steps=60, **QUIET)
    return root


def _copy(interrupted, tmp_path, name="run") -> Path:
    import shutil

    shutil.copytree(interrupted / name, tmp_path / name)
    return tmp_path / name


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_checkpoint_is_an_error_never_a_restart(interrupted, tmp_path, damage):
    run = _copy(interrupted, tmp_path)
    target = run / "checkpoints" / "60.ckpt"
    data = bytearray(target.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x10
    else:
        data = data[: len(data) // 2]
    target.write_bytes(bytes(data))
    before = {p: p.read_bytes() for p in (run / "checkpoints").rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match="checkpoints/60.ckpt is corrupted or truncated"):
        runs.resume(str(run), **QUIET)
    assert {p: p.read_bytes() for p in (run / "checkpoints").rglob("*") if p.is_file()} == before
    assert status(run)["status"] == "interrupted"


def test_a_checkpoint_from_another_run_is_refused(interrupted, tmp_path):
    import shutil

    run = _copy(interrupted, tmp_path)
    shutil.rmtree(run / "checkpoints")
    shutil.copytree(interrupted / "other" / "checkpoints", run / "checkpoints")
    with pytest.raises(ValueError, match="was written by another run"):
        runs.resume(str(run), **QUIET)


def test_missing_run_directories_and_files_are_clear_errors(interrupted, tmp_path):
    with pytest.raises(FileNotFoundError, match="run directory .*nowhere does not exist"):
        runs.resume(str(tmp_path / "nowhere"), **QUIET)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="is not a fundl run directory: no config.json"):
        runs.resume(str(tmp_path / "empty"), **QUIET)
    with pytest.raises(ValueError, match=r"has not finished \(status: interrupted\): continue it with `fundl resume"):
        runs.load_run(str(interrupted / "run"))


def test_a_killed_save_is_ignored_and_cleaned_up(interrupted, tmp_path):
    run = _copy(interrupted, tmp_path)
    half = run / "checkpoints" / ".80.ckpt.k2j4h1.tmp"
    half.write_bytes(b"half written")
    done = runs.resume(str(run), **QUIET)
    assert done.history.steps == 3 * 38 and not half.exists()


# --- load_run verifies what it loads ------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("finished")
    runs.run("mlp_digits", [("train.epochs", 1)], out=str(root / "a"), **QUIET)
    runs.run("mlp_digits", [("train.epochs", 1), ("seed", 1)], out=str(root / "b"), **QUIET)
    return root


def test_load_run_refuses_changed_files(finished, tmp_path):
    import shutil

    a = _copy(finished, tmp_path, "a")
    state = a / "train_state.msgpack"
    data = bytearray(state.read_bytes())
    data[-5] ^= 0x01
    state.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="train_state.msgpack is not the file this run saved"):
        runs.load_run(str(a))
    shutil.copy(finished / "b" / "train_state.msgpack", state)
    with pytest.raises(ValueError, match="not the file this run saved"):
        runs.load_run(str(a))
    shutil.copy(finished / "a" / "train_state.msgpack", state)
    config = json.loads((a / "config.json").read_text())
    (a / "config.json").write_text(json.dumps({**config, "hiden": 10}))
    with pytest.raises(ValueError, match=r"config.json: hiden is 10, but the run was started without hiden"):
        runs.load_run(str(a))
    (a / "config.json").write_text(json.dumps(config))
    (a / "example.py").write_text((a / "example.py").read_text() + "\n# edited\n")
    with pytest.raises(ValueError, match="example.py differs from the example the run was started with"):
        runs.load_run(str(a))


# --- a NaN stops the run, keeps the last good checkpoint, and says where --------------------------

NAN_EXAMPLE = '''
"""Digits with one example whose loss is NaN (a pixel of -1: log1p(-1) = -inf), which epoch 0
leaves over and epoch 1 uses. The data itself is finite, so fit's checks let it through."""
import jax.numpy as jnp
import numpy as np
import fundl as fl
from fundl.runs import Experiment
from fundl.train import classification_loss

CONFIG = {"train": {"epochs": 3, "batch_size": 32}}

def poisoned(seed, n, batch):
    full = n // batch * batch
    first, second = (np.random.default_rng([seed, e]).permutation(n) for e in (0, 1))
    index = next(i for i in first[full:] if np.flatnonzero(second == i)[0] < full)
    return index, 47 + np.flatnonzero(second == index)[0] // batch + 1

def experiment(config):
    data = fl.datasets.digits()
    train = {k: v.copy() for k, v in data["train"].items()}
    index, _ = poisoned(config["seed"], len(train["label"]), 32)
    train["image"][index, 0, 0] = -1.0
    model = fl.serial(fl.flatten(), fl.dense(32), fl.tanh(), fl.dense(10))
    base = classification_loss(model)

    def loss_fn(params, state, batch, key, *, train=True):
        loss, aux = base(params, state, batch, key, train=train)
        return loss + 0.0 * jnp.sum(jnp.log1p(batch["image"])), aux

    return Experiment(model, (32, 8, 8), loss_fn, train, {"test": data["test"]})
'''


def test_a_nan_stop_names_the_step_keeps_the_last_good_checkpoint_and_fails(tmp_path):
    example = tmp_path / "poisoned.py"
    example.write_text(NAN_EXAMPLE)
    namespace: dict = {}
    exec(NAN_EXAMPLE, namespace)
    _, step = namespace["poisoned"](0, 1527, 32)
    out = tmp_path / "run"
    done = subprocess.run(
        [*CLI, "run", str(example), "--out", str(out), "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 3, done.stderr
    assert f"loss became nan at step {step}" in done.stdout
    assert status(out)["status"] == "failed" and f"at step {step}" in status(out)["reason"]
    assert checkpoint_steps(out) == [47]  # the last good one, before the NaN
    assert not (out / "train_state.msgpack").exists()
    for path in (out / "summary.json", out / "status.json"):
        strict(path)
    for line in (out / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"metrics.jsonl holds {c}"))
