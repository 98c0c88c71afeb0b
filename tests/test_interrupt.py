"""Ctrl-C keeps the work: a first KeyboardInterrupt inside fit returns the state so far, marked interrupted, and
continuing it ends bit-identical to a training that never stopped; a second one aborts."""

import _thread
import functools
import signal
import threading

import jax
import numpy as np
import optax
import pytest

import fundl as fl
from fundl import runs
from fundl.train import TrainState, classification_loss, fit, fit_members, initial_train_states, params_fingerprint

MODEL = fl.serial(fl.dense(32), fl.relu(), fl.dropout(0.2), fl.dense(10))
LOSS = classification_loss(MODEL)
OPTIMIZER = optax.adam(1e-3)


@functools.cache
def digits():
    data = fl.datasets.digits(validation=0.2)
    flat = lambda split: {"image": split["image"].reshape(-1, 64), "label": split["label"]}  # noqa: E731
    return flat(data["train"]), flat(data["validation"])


def fresh():
    _, params, state = MODEL.init(jax.random.key(0), (32, 64))
    return TrainState.create(params, state, OPTIMIZER, jax.random.key(1))


def train(train_state, hooks=(), epochs=3):
    data, validation = digits()
    return fit(
        LOSS,
        OPTIMIZER,
        train_state,
        data,
        batch_size=32,
        epochs=epochs,
        eval_data={"validation": validation},
        hooks=hooks,
        verbose=0,
    )


def ctrl_c_from_a_thread():
    """What a Ctrl-C does, from another thread: ``_thread.interrupt_main()``; waits until it has been sent."""
    thread = threading.Thread(target=_thread.interrupt_main)
    thread.start()
    thread.join()


def at_step(step, action):
    def hook(event):
        if event.kind == "step" and event.record.step == step:
            action()

    return hook


def raise_keyboard_interrupt():
    raise KeyboardInterrupt


@functools.cache
def uninterrupted():
    return params_fingerprint(train(fresh())[0].params)


@pytest.mark.parametrize("interrupt", [raise_keyboard_interrupt, ctrl_c_from_a_thread], ids=["hook", "thread"])
def test_a_first_interrupt_returns_the_state_so_far_and_continuing_ends_bit_identical(interrupt):
    before = signal.getsignal(signal.SIGINT)
    partial, history = train(fresh(), hooks=[at_step(50, interrupt)])
    assert history.interrupted and "interrupted by" in history.stop_reason
    assert 50 <= history.steps < 114 and int(partial.step) == history.steps  # the calls in flight were finished
    assert history.records[-1].step == history.steps  # the steps done were logged
    assert signal.getsignal(signal.SIGINT) is before  # Python's own Ctrl-C is back

    continued, rest = train(partial)
    assert not rest.interrupted and rest.steps == 114
    assert params_fingerprint(continued.params) == uninterrupted()


def test_a_second_interrupt_aborts():
    def twice():
        ctrl_c_from_a_thread()
        ctrl_c_from_a_thread()

    with pytest.raises(KeyboardInterrupt):
        train(fresh(), hooks=[at_step(10, twice)])


def test_an_interrupted_population_returns_every_member_so_far():
    data, validation = digits()
    states = initial_train_states(MODEL, (32, 64), OPTIMIZER, [0, 1])
    carry, history = fit_members(
        LOSS,
        lambda hyper: OPTIMIZER,
        states,
        None,
        data,
        batch_size=32,
        data_seeds=[0, 1],
        epochs=2,
        hooks=lambda member: [at_step(20, raise_keyboard_interrupt)] if member == 1 else [],
        verbose=0,
    )
    assert history.interrupted and history.steps < 76
    assert np.asarray(carry.alive).all() and int(np.asarray(carry.states.step)[0]) == history.steps


EXAMPLE = """
import _thread, threading
from fundl.examples.mlp_digits import CONFIG, experiment as base

def experiment(config):
    def hook(event):
        if event.kind == "step" and event.record.step == 45:
            thread = threading.Thread(target=_thread.interrupt_main)
            thread.start()
            thread.join()
    return base(config)._replace(hooks=[hook])
"""


def test_an_interrupted_run_from_python_returns_with_a_checkpoint_and_resumes_exactly(tmp_path):
    path = tmp_path / "interrupting.py"
    path.write_text(EXAMPLE)
    settings = [("train.epochs", 3)]
    cut = runs.run(str(path), settings, out=str(tmp_path / "cut"), verbose=0, echo=lambda _: None)
    assert cut.history.interrupted and 45 <= cut.history.steps < 114
    assert runs.RunDirectory(tmp_path / "cut").status()["status"] == "interrupted"
    assert (tmp_path / "cut" / "checkpoints" / f"{cut.history.steps}.ckpt").is_file()

    whole = runs.run("mlp_digits", settings, out=str(tmp_path / "whole"), verbose=0, echo=lambda _: None)
    resumed = runs.resume(tmp_path / "cut", verbose=0, echo=lambda _: None)  # its hook fires no more: step 45 is done
    assert resumed.summary["params_fingerprint"] == whole.summary["params_fingerprint"]
