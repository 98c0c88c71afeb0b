"""Experiments: configs, run directories, saved train states, and the `fundl` command line."""

import json
import re
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest
from run_files import RUN_FILES

from fundl import losses, runs
from fundl.cli import main
from fundl.runs import DEFAULTS, ConfigError, override, parse_settings


def test_the_lecture_mlp_reaches_the_course_accuracy(tmp_path):
    done = runs.run("mlp_digits", out=str(tmp_path / "run"), quiet=True, echo=lambda _: None)
    assert done.summary["metrics"]["test"]["accuracy"] >= 0.96
    assert done.summary["steps"] == 15 * 38  # 1222 training images (305 held out for validation) in batches of 32


def test_the_relu_adam_variant_reaches_the_course_accuracy(tmp_path):
    settings = [("model", "relu2"), ("optimizer.name", "adam"), ("optimizer.learning_rate", 0.001)]
    done = runs.run("mlp_digits", settings, out=str(tmp_path / "run"), quiet=True, echo=lambda _: None)
    assert done.summary["metrics"]["test"]["accuracy"] >= 0.975


def test_a_run_directory_records_config_metrics_summary_and_train_state(tmp_path):
    directory = tmp_path / "run"
    done = runs.run(
        "mlp_digits", [("train.epochs", 2), ("seed", 4)], out=str(directory), quiet=True, echo=lambda _: None
    )
    assert {p.name for p in directory.iterdir()} == set(RUN_FILES)
    assert json.loads((directory / "status.json").read_text())["status"] == "finished"
    assert sorted(p.name for p in (directory / "checkpoints").iterdir()) == ["38.ckpt", "76.ckpt"]
    config = json.loads((directory / "config.json").read_text())
    assert config["seed"] == 4 and config["train"]["epochs"] == 2 and config["optimizer"]["name"] == "sgd"
    assert config == done.config and set(DEFAULTS) <= set(config)
    records = [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]
    # validation after every epoch, the test split once, at the end
    assert [(r["step"], r["split"]) for r in records] == [
        (38, "train"),
        (38, "validation"),
        (76, "train"),
        (76, "validation"),
        (76, "test"),
    ]
    assert records[0]["epoch"] == 1.0 and records[0]["learning_rate"] == 0.1 and "accuracy" in records[1]
    summary = json.loads((directory / "summary.json").read_text())
    assert {"steps", "epochs", "wall_s", "compile_s", "params_fingerprint", "metrics"} <= set(summary)
    assert summary["metrics"]["test"] == {k: v for k, v in records[-1].items() if k not in ("step", "epoch", "split")}
    assert summary["metrics"]["validation"] == {
        k: v for k, v in records[-2].items() if k not in ("step", "epoch", "split")
    }
    assert json.loads((directory / "environment.json").read_text())["example"] == "mlp_digits"


def test_load_run_gives_back_the_model_and_params(tmp_path):
    done = runs.run("mlp_digits", [("train.epochs", 2)], out=str(tmp_path / "run"), quiet=True, echo=lambda _: None)
    loaded = runs.load_run(tmp_path / "run")
    assert loaded.config == done.config
    jax.tree.map(np.testing.assert_array_equal, loaded.train_state.params, done.train_state.params)
    assert int(loaded.train_state.step) == 76
    np.testing.assert_array_equal(
        jax.random.key_data(loaded.train_state.key), jax.random.key_data(done.train_state.key)
    )
    for split, data in {**loaded.experiment.eval_data, **loaded.experiment.test_data}.items():  # validation and test
        logits, _ = loaded.experiment.model.apply(loaded.train_state.params, loaded.train_state.state, data["image"])
        np.testing.assert_allclose(
            losses.accuracy(logits, data["label"]), loaded.summary["metrics"][split]["accuracy"], rtol=1e-6
        )


def _cli_fingerprint(tmp_path, name, *args):
    out = tmp_path / name
    command = [
        sys.executable,
        "-m",
        "fundl.cli",
        "run",
        "mlp_digits",
        "--quiet",
        "--out",
        str(out),
        "--set",
        "train.epochs=2",
        *args,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"run directory: {out}" in result.stdout
    return json.loads((out / "summary.json").read_text())["params_fingerprint"]


def test_same_seed_in_fresh_processes_gives_identical_params_and_fusion_does_not_matter(tmp_path):
    first = _cli_fingerprint(tmp_path, "a", "--seed", "7")
    assert _cli_fingerprint(tmp_path, "b", "--seed", "7") == first
    assert _cli_fingerprint(tmp_path, "c", "--seed", "7", "--set", "train.steps_per_call=1") == first
    assert _cli_fingerprint(tmp_path, "d", "--seed", "8") != first


# --- configs ---------------------------------------------------------------------------


def test_overrides_set_dotted_keys_and_check_types():
    config = override(DEFAULTS, [("train.epochs", 3), ("optimizer.learning_rate", 1), ("optimizer.momentum", 0.9)])
    assert config["train"]["epochs"] == 3 and config["optimizer"]["learning_rate"] == 1.0
    assert isinstance(config["optimizer"]["learning_rate"], float) and DEFAULTS["train"]["epochs"] == 10
    assert parse_settings(["seed=3", "optimizer.name=adam", "train.steps=null"]) == [
        ("seed", 3),
        ("optimizer.name", "adam"),
        ("train.steps", None),
    ]


def test_config_errors_name_the_key_and_list_what_is_valid():
    with pytest.raises(ConfigError, match=r"unknown config key 'train.epoch'; valid keys: .*train.epochs"):
        override(DEFAULTS, [("train.epoch", 3)])
    with pytest.raises(ConfigError, match=r"config key 'train.epochs' expects an int \(default 10\), got 'many'"):
        override(DEFAULTS, [("train.epochs", "many")])
    with pytest.raises(ConfigError, match=r"'train.epochs' expects an int .* got 2.5"):
        override(DEFAULTS, [("train.epochs", 2.5)])
    with pytest.raises(ConfigError, match=r"expected key=value \(e.g. train.epochs=3\), got 'epochs'"):
        parse_settings(["epochs"])


def test_optimizer_errors_list_the_available_ones():
    config = override(DEFAULTS, [("optimizer.name", "adamx")])
    with pytest.raises(ConfigError, match=r"unknown optimizer 'adamx' \(optimizer.name\); available: sgd, adam, adamw"):
        runs.make_optimizer(config, 10)
    with pytest.raises(ConfigError, match="optimizer.momentum applies to sgd only"):
        runs.make_optimizer(override(DEFAULTS, [("optimizer.name", "adam"), ("optimizer.momentum", 0.9)]), 10)


def test_optimizer_schedules():
    config = override(
        DEFAULTS, [("optimizer.schedule", "cosine"), ("optimizer.warmup_steps", 10), ("optimizer.learning_rate", 1.0)]
    )
    _, schedule = runs.make_optimizer(config, 110)
    assert (
        float(schedule(0)) == 0.0
        and float(schedule(10)) == pytest.approx(1.0)
        and float(schedule(110)) == pytest.approx(0.0)
    )


# --- the command line and its errors ----------------------------------------------------------


def test_cli_errors_exit_with_a_message_and_leave_no_run_directory(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "mlp_digits", "--set", "train.epoch=3"]) == 2
    assert "fundl: error: unknown config key 'train.epoch'" in capsys.readouterr().err
    assert main(["run", "mlp_digits", "--set", "optimizer.name=adamx"]) == 2
    assert "unknown optimizer 'adamx'" in capsys.readouterr().err
    assert main(["run", "mlp_digits", "--set", "model=relu3"]) == 2
    assert "unknown model 'relu3' (key 'model'); available: tanh, relu2" in capsys.readouterr().err
    assert main(["run", "mlp_digits", "--set", "train.batch_size=5000"]) == 2
    assert "batch size 5000 is larger than train data, which has 1222 examples" in capsys.readouterr().err
    assert main(["run", "mlp_digit"]) == 2
    assert re.search(r"unknown example 'mlp_digit'; bundled examples: .*mlp_digits", capsys.readouterr().err)
    assert main(["run", "missing.py"]) == 2
    assert "example file missing.py does not exist" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_an_existing_run_is_never_overwritten(tmp_path, capsys):
    directory = tmp_path / "run"
    runs.run("mlp_digits", [("train.epochs", 1)], out=str(directory), quiet=True, echo=lambda _: None)
    before = {p: p.read_bytes() for p in directory.rglob("*") if p.is_file()}
    assert main(["run", "mlp_digits", "--out", str(directory), "--quiet"]) == 2
    assert f"--out {directory} is not empty" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in directory.rglob("*") if p.is_file()} == before


def test_cli_runs_an_example_file_by_path(tmp_path, capsys):
    example = tmp_path / "tiny.py"
    example.write_text(
        "import fundl as fl\n"
        "from fundl.runs import Experiment\n"
        "from fundl.train import classification_loss\n"
        "CONFIG = {'train': {'epochs': 1, 'batch_size': 64}}\n"
        "def experiment(config):\n"
        "    data = fl.datasets.digits()\n"
        "    model = fl.serial(fl.flatten(), fl.dense(10))\n"
        "    return Experiment(model, (64, 8, 8), classification_loss(model), data['train'], {'test': data['test']})\n"
    )
    assert main(["run", str(example), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert "test: loss " in capsys.readouterr().out  # the results, on stdout (loss first, then accuracy)
    assert runs.load_run(tmp_path / "run").config["train"]["batch_size"] == 64


def _example_with_test_data(tmp_path, test_data: str):
    example = tmp_path / "held_out.py"
    example.write_text(
        "import numpy as np\n"
        "import fundl as fl\n"
        "from fundl.runs import Experiment\n"
        "from fundl.train import classification_loss\n"
        "CONFIG = {'train': {'epochs': 1, 'batch_size': 64}}\n"
        "def experiment(config):\n"
        "    data = fl.datasets.digits(validation=0.2)\n"
        "    model = fl.serial(fl.flatten(), fl.dense(10))\n"
        "    return Experiment(model, (64, 8, 8), classification_loss(model), "
        "data['train'], {'validation': data['validation']},\n"
        f"                      test_data={test_data})\n"
    )
    return str(example)


def test_a_bad_test_split_is_an_error_before_the_run_directory_is_made(tmp_path):
    bad_label = (
        "{'test': {'image': data['test']['image'], 'label': np.where(np.arange(270) == 3, 10, data['test']['label'])}}"
    )
    with pytest.raises(ValueError, match=r"test split 'test'.*index 3.*10"):
        runs.run(_example_with_test_data(tmp_path, bad_label), out=str(tmp_path / "a"), quiet=True, echo=lambda _: None)
    with pytest.raises(ValueError, match=r"test_data and eval_data .* both name split\(s\) \['validation'\]"):
        runs.run(
            _example_with_test_data(tmp_path, "{'validation': data['test']}"),
            out=str(tmp_path / "b"),
            quiet=True,
            echo=lambda _: None,
        )
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_an_interrupted_run_scores_its_test_split_only_when_resumed_to_the_end(tmp_path):
    example = _example_with_test_data(tmp_path, "{'test': data['test']}")
    stopped = runs.run(
        example, [("train.epochs", 2)], out=str(tmp_path / "run"), quiet=True, echo=lambda _: None, stop_after_steps=19
    )
    assert "test" not in stopped.summary["metrics"] and "validation" in stopped.summary["metrics"]
    done = runs.resume(str(tmp_path / "run"), quiet=True, echo=lambda _: None)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["split"]) for r in records if r["split"] != "train"] == [
        (19, "validation"),
        (38, "validation"),
        (38, "test"),
    ]
    assert done.summary["metrics"]["test"]["accuracy"] > 0.5  # a linear model after 2 epochs; chance is 0.1


def test_a_saved_train_state_that_does_not_match_is_a_clear_error(tmp_path):
    import fundl as fl
    from fundl.train import TrainState

    optimizer = optax.sgd(0.1)

    def make(width):
        return TrainState.create(*fl.dense(width).init(jax.random.key(0), (2, 3))[1:], optimizer, jax.random.key(1))

    runs.save_train_state(tmp_path / "ts.msgpack", make(4))
    with pytest.raises(
        ValueError,
        match=r"does not match this model and optimizer at \.params\['b'\]: expected float32\[5\], found float32\[4\]",
    ):
        runs.restore_train_state(tmp_path / "ts.msgpack", make(5))
    with pytest.raises(FileNotFoundError, match="no saved train state at"):
        runs.restore_train_state(tmp_path / "nothing.msgpack", make(4))


def _scalars(directory):
    """``{tag: [(step, value), ...]}`` read back from TensorBoard event files (TFRecord framing)."""
    import struct

    from tensorboardX.proto import event_pb2

    found = {}
    for path in directory.glob("events.out.tfevents.*"):
        data = path.read_bytes()
        while data:
            (length,) = struct.unpack("<Q", data[:8])
            event = event_pb2.Event.FromString(data[12 : 12 + length])
            data = data[12 + length + 4 :]
            for value in event.summary.value:
                found.setdefault(value.tag, []).append((event.step, value.simple_value))
    return found


def test_tensorboard_event_files_hold_the_logged_scalars(tmp_path):
    done = runs.run(
        "mlp_digits",
        [("train.epochs", 2), ("log.tensorboard", True)],
        out=str(tmp_path / "run"),
        quiet=True,
        echo=lambda _: None,
    )
    scalars = _scalars(tmp_path / "run" / "tensorboard")
    assert {"train/loss", "train/accuracy", "train/learning_rate", "validation/loss", "validation/accuracy"} <= set(
        scalars
    )
    assert [step for step, _ in scalars["validation/accuracy"]] == [38, 76]
    assert scalars["validation/accuracy"][-1][1] == pytest.approx(
        done.summary["metrics"]["validation"]["accuracy"], rel=1e-6
    )
