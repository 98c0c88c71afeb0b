"""The defaults users rely on, pinned: initial values, early stopping's min_delta, the NaN step, sampling."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fundl as fl
from fundl.models import char_lm, generate
from fundl.train import Event, Record, early_stopping, stop_on_nonfinite


@pytest.mark.parametrize(
    "layer, shape, fans",
    [
        (fl.dense(300), (8, 200), (200, 300)),
        (fl.conv2d(64, (3, 3)), (2, 16, 16, 32), (3 * 3 * 32, 3 * 3 * 64)),
    ],
)
def test_weights_are_glorot_uniform_and_biases_zero(layer, shape, fans):
    _, params, _ = layer.init(jax.random.key(0), shape)
    w, b = np.asarray(params["w"]), np.asarray(params["b"])
    assert not b.any()
    bound = np.sqrt(6.0 / sum(fans))  # glorot_uniform: U(-bound, bound), std bound / sqrt(3)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.95 * bound
    assert w.std() == pytest.approx(bound / np.sqrt(3), rel=0.03) and abs(w.mean()) < 0.02 * bound


def test_default_initializers_print_readably():
    shown = str(inspect.signature(fl.dense)) + str(inspect.signature(fl.conv2d)) + str(inspect.signature(fl.lstm))
    assert "w_init: 'Initializer' = initializers.glorot_uniform()" in shown and "initializers.orthogonal()" in shown
    assert "0x" not in shown and "<function" not in shown


def evaluation(value, step):
    return Event("eval", Record(step, 1.0, "test", {"loss": value}), None)


def test_early_stopping_counts_improvements_smaller_than_min_delta_as_none():
    hook = early_stopping("test", "loss", patience=2, min_delta=0.1)
    assert hook(evaluation(1.0, 1)) is None  # the first value is the best so far
    assert hook(evaluation(0.95, 2)) is None  # better, but by less than 0.1: waited 1
    reason = hook(evaluation(0.91, 3))  # again: waited 2 = patience
    assert reason == "early stopping: test loss has not improved on 1 for 2 evaluations"
    fresh = early_stopping("test", "loss", patience=2, min_delta=0.1)
    for step, value in enumerate([1.0, 0.85, 0.7, 0.55], 1):  # each better by more than 0.1
        assert fresh(evaluation(value, step)) is None
    with pytest.raises(ValueError, match="patience must be a positive integer, got 0"):
        early_stopping("test", "loss", patience=0)


def test_stop_on_nonfinite_names_the_step_and_metric():
    hook = stop_on_nonfinite()
    record = lambda step, loss: Event("step", Record(step, 0.1, "train", {"loss": loss, "accuracy": 0.5}), None)  # noqa: E731
    assert hook(record(7, 0.3)) is None
    assert hook(record(8, float("nan"))) == "loss became nan at step 8"
    assert hook(Event("step", Record(9, 0.1, "train", {"loss": 0.2, "accuracy": float("inf")}), None)) == (
        "accuracy became inf at step 9"
    )


def test_the_sampler_draws_a_fresh_key_for_every_character():
    lm = char_lm(20, embed=4, hidden=8)
    _, params, _ = lm.model.init(jax.random.key(0), (1, 5))
    params = jax.tree.map(jnp.zeros_like, params)  # uniform next-character distributions
    tokens = np.asarray(generate(lm, params, jnp.array([1, 2, 3]), jax.random.key(1), 1.0, 200))
    assert tokens.shape == (200,)
    # One key reused for every character would draw the same character from the same
    # (uniform) distribution every time; fresh keys draw about all 20.
    assert len(set(tokens.tolist())) >= 15
    again = np.asarray(generate(lm, params, jnp.array([1, 2, 3]), jax.random.key(1), 1.0, 200))
    assert (again == tokens).all()  # the same key: the same text
