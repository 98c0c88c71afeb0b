"""Loggers behind one small interface: a logger of one's own through fit, and Weights & Biases in offline mode
through a run (no network; skipped when the wandb extra is not installed)."""

import functools

import jax
import optax
import pytest

import fundl as fl
from fundl import runs
from fundl.runs import ConfigError, _loggers as loggers
from fundl.train import TrainState, classification_loss, fit, logger_hook


class ListLogger:
    def __init__(self):
        self.logged, self.closed = [], False

    def log(self, step, metrics):
        self.logged.append((step, metrics))

    def close(self):
        self.closed = True


@functools.cache
def digits():
    data = fl.datasets.digits(validation=0.2)
    return data["train"], data["validation"]


def test_a_logger_of_ones_own_gets_every_log_and_evaluation_by_split_and_metric():
    model = fl.serial(fl.flatten(), fl.dense(10))
    optimizer = optax.sgd(0.1)
    _, params, state = model.init(jax.random.key(0), (32, 8, 8))
    logger = ListLogger()
    train, validation = digits()
    loss = classification_loss(model, metrics=("f1", "confusion_matrix"))
    _, history = fit(
        loss,
        optimizer,
        TrainState.create(params, state, optimizer, jax.random.key(1)),
        train,
        batch_size=32,
        epochs=2,
        eval_data={"validation": validation},
        hooks=[logger_hook(logger)],
        verbose=0,
    )
    assert [step for step, _ in logger.logged] == [38, 38, 76, 76]  # a log and an evaluation each epoch
    assert set(logger.logged[1][1]) == {"validation/loss", "validation/accuracy", "validation/f1"}  # scalars only
    assert logger.logged[-1][1]["validation/f1"] == history.records[-1].metrics["f1"]
    assert logger.closed


def test_a_logger_without_its_extra_is_refused_before_anything_is_made(tmp_path, monkeypatch):
    monkeypatch.setattr(loggers.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"log.wandb needs the wandb package: pip install 'fundl\[wandb\]'"):
        runs.run("mlp_digits", [("log.wandb", True)], out=str(tmp_path / "run"), verbose=0)
    assert not (tmp_path / "run").exists()


def test_a_run_logs_to_weights_and_biases_offline_in_its_directory(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")  # belt and braces: the logger asks for offline mode itself
    done = runs.run(
        "mlp_digits",
        [("train.epochs", 1), ("log.wandb", True)],
        out=str(tmp_path / "run"),
        verbose=0,
        echo=lambda _: None,
    )
    (offline,) = (tmp_path / "run" / "wandb" / "wandb").glob("offline-run-*")
    (log,) = offline.glob("*.wandb")
    data = log.read_bytes()  # W&B's record log: the keys and the values as JSON text
    for tag in ("train/loss", "train/learning_rate", "validation/accuracy", "test/accuracy"):
        assert tag.encode() in data, tag
    test_accuracy = done.summary["metrics"]["test"]["accuracy"]
    assert repr(test_accuracy).encode() in data  # the test split's score, logged after training
