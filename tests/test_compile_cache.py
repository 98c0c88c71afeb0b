"""The compile cache hits for equal definitions: a rebuilt optimizer, loss or model (a notebook cell run again)
compiles nothing new; a changed one compiles again, never reusing a program that computes something else."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

import fundl as fl
from fundl import losses
from fundl.train import TrainState, classification_loss, evaluate, fit
from fundl.train._evaluate import _eval_batch
from fundl.train._structural import MAX_ARRAY_BYTES, Structural, structural_key


@functools.cache
def digits():
    data = fl.datasets.digits()
    return {"image": data["train"]["image"].reshape(-1, 64)[:320], "label": data["train"]["label"][:320]}


def model(hidden=24):
    return fl.serial(fl.dense(hidden), fl.tanh(), fl.dense(10))


def train(loss, optimizer, hidden=24):
    _, params, state = model(hidden).init(jax.random.key(0), (32, 64))
    train_state = TrainState.create(params, state, optimizer, jax.random.key(1))
    return fit(loss, optimizer, train_state, digits(), batch_size=32, epochs=1, verbose=0)


def compiled(history):
    return sum(history.traces.values())


def test_a_rebuilt_optimizer_loss_and_model_compile_nothing_new():
    first = train(classification_loss(model()), optax.sgd(0.1))
    again = train(classification_loss(model()), optax.sgd(0.1))  # every object new, every definition equal
    assert compiled(again[1]) == 0
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), first[0].params, again[0].params))


def test_a_changed_setting_compiles_again():
    train(classification_loss(model()), optax.sgd(0.1))
    assert compiled(train(classification_loss(model()), optax.sgd(0.05))[1]) > 0  # another rate
    assert compiled(train(classification_loss(model(25)), optax.sgd(0.1), hidden=25)[1]) > 0  # another model


CELL = """
def loss_fn(params, state, batch, key):
    logits, state = MODEL.apply(params, state, batch["image"])
    return SCALE * losses.softmax_cross_entropy(logits, batch["label"]), (state, {})
"""


def notebook_cell(namespace):
    """A notebook cell run (again) in ``namespace``: a new function object from the same source."""
    exec(CELL, namespace)
    return namespace["loss_fn"]


def test_a_function_defined_again_hits_and_one_reading_a_changed_global_does_not():
    namespace = {"MODEL": model(), "losses": losses, "SCALE": 1.0}
    train(notebook_cell(namespace), optax.sgd(0.1))
    assert compiled(train(notebook_cell(namespace), optax.sgd(0.1))[1]) == 0  # the cell run again
    namespace["SCALE"] = 2.0  # the function is the same code, the value it reads is not
    assert compiled(train(notebook_cell(namespace), optax.sgd(0.1))[1]) > 0


def test_evaluate_finds_its_compiled_function_again_for_a_rebuilt_loss():
    _, params, state = model().init(jax.random.key(0), (32, 64))
    evaluate(classification_loss(model()), params, state, digits(), batch_size=64)
    before = _eval_batch._cache_size()
    evaluate(classification_loss(model()), params, state, digits(), batch_size=64)
    assert _eval_batch._cache_size() == before


def test_structural_keys_decide_only_what_they_can():
    assert structural_key(0.0) != structural_key(-0.0)  # equal as numbers, not as computations
    assert structural_key(np.arange(3.0)) == structural_key(np.arange(3.0))
    assert structural_key(np.arange(3.0)) != structural_key(np.arange(3.0, dtype=np.float32))
    big = np.zeros(MAX_ARRAY_BYTES // 8 + 1)
    assert structural_key(big) == structural_key(big) and structural_key(big) != structural_key(big.copy())

    class Opaque:  # no __eq__ of its own: only itself is itself
        pass

    def closure(value):
        return lambda: value

    one = Opaque()
    assert Structural(closure(one)) == Structural(closure(one)) != Structural(closure(Opaque()))
    assert Structural(closure(2.0)) == Structural(closure(2.0)) != Structural(closure(3.0))
    cycle = []
    cycle.append(cycle)
    assert structural_key(cycle) == structural_key(cycle)  # terminates
