"""Metrics that are not means: F1, precision, recall, ROC AUC and the confusion matrix of a split, exact (equal to
scikit-learn's on the digits test split, whatever the batch size) through the one evaluator."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn import metrics as sk

import fundl as fl
from fundl import losses
from fundl.metrics import Accumulated, binary_auc, precision_recall_f1
from fundl.train import (
    TrainState,
    classification_loss,
    evaluate,
    fit,
    fit_members,
    initial_train_states,
    predict,
)

MODEL = fl.serial(fl.flatten(), fl.dense(32), fl.relu(), fl.dense(10))
ALL = ("precision", "recall", "f1", "roc_auc", "confusion_matrix")
LOSS = classification_loss(MODEL, metrics=ALL)
OPTIMIZER = optax.adam(3e-3)


@functools.cache
def data():
    return fl.datasets.digits(validation=0.2)


@functools.cache
def trained():
    _, params, state = MODEL.init(jax.random.key(0), (32, 8, 8))
    train_state = TrainState.create(params, state, OPTIMIZER, jax.random.key(1))
    d = data()
    return fit(
        LOSS, OPTIMIZER, train_state, d["train"], batch_size=32, epochs=2, eval_data={"test": d["test"]}, verbose=0
    )


def scikit_learn(params, state):
    test = data()["test"]
    logits = predict(MODEL, params, state, test["image"])
    truth, predicted, probabilities = test["label"], logits.argmax(-1), np.asarray(jax.nn.softmax(logits))
    return {
        "precision": sk.precision_score(truth, predicted, average="macro", zero_division=0),
        "recall": sk.recall_score(truth, predicted, average="macro", zero_division=0),
        "f1": sk.f1_score(truth, predicted, average="macro", zero_division=0),
        "roc_auc": sk.roc_auc_score(truth, probabilities, multi_class="ovr", average="macro"),
        "confusion_matrix": sk.confusion_matrix(truth, predicted, labels=range(10)),
    }


@pytest.mark.parametrize("batch_size", [7, 64, 270])  # 270: the whole test split in one batch
def test_split_metrics_equal_scikit_learns_on_the_digits_test_split_whatever_the_batch_size(batch_size):
    train_state, _ = trained()
    ours = evaluate(LOSS, train_state.params, train_state.state, data()["test"], batch_size=batch_size)
    theirs = scikit_learn(train_state.params, train_state.state)
    assert 0.3 < theirs["f1"] < 0.99  # a model that has learnt something, not everything
    for name in ("precision", "recall", "f1", "roc_auc"):
        assert ours[name] == pytest.approx(theirs[name], abs=1e-12), name
    np.testing.assert_array_equal(ours["confusion_matrix"], theirs["confusion_matrix"])
    assert ours["confusion_matrix"].dtype == np.int64 and ours["confusion_matrix"].sum() == 270


def test_fit_records_the_split_metrics_of_each_evaluation_and_not_of_the_training_steps():
    train_state, history = trained()
    last = {r.split: r.metrics for r in history.records}
    theirs = scikit_learn(train_state.params, train_state.state)
    assert last["test"]["f1"] == pytest.approx(theirs["f1"], abs=1e-12)
    assert last["test"]["confusion_matrix"] == theirs["confusion_matrix"].tolist()  # records keep plain lists
    assert set(last["train"]) == {"loss", "accuracy"}  # per-step metrics stay means


def test_a_populations_members_each_get_their_own_split_metrics():
    d = data()
    states = initial_train_states(MODEL, (32, 8, 8), OPTIMIZER, [0, 1])
    carry, history = fit_members(
        LOSS,
        lambda hyper: OPTIMIZER,
        states,
        None,
        d["train"],
        batch_size=32,
        data_seeds=[0, 1],
        epochs=1,
        eval_data={"test": d["test"]},
        verbose=0,
    )
    for member in (0, 1):
        record = [r for r in history.records if r.split == "test" and r.member == member][-1]
        params = jax.tree.map(lambda leaf: leaf[member], carry.states.params)
        theirs = scikit_learn(params, {})
        assert record.metrics["roc_auc"] == pytest.approx(theirs["roc_auc"], abs=1e-9)
        assert record.metrics["confusion_matrix"] == theirs["confusion_matrix"].tolist()


def test_binary_auc_counts_ties_half_as_scikit_learn_does():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 200).astype(np.float32)  # many ties
    labels = rng.integers(0, 2, 200)
    assert binary_auc(scores, labels == 1) == pytest.approx(sk.roc_auc_score(labels, scores), abs=1e-12)
    assert np.isnan(binary_auc(scores, np.zeros(200, bool)))  # no positives: undefined


def test_a_split_metric_in_the_training_metrics_is_a_clear_error():
    def loss_fn(params, state, batch, key):
        logits, state = MODEL.apply(params, state, batch["image"])
        return losses.softmax_cross_entropy(logits, batch["label"]), (
            state,
            precision_recall_f1(logits, batch["label"]),
        )

    _, params, state = MODEL.init(jax.random.key(0), (32, 8, 8))
    with pytest.raises(ValueError, match=r"\['f1', 'precision', 'recall'\] are whole-split metrics .* train=False"):
        fit(loss_fn, OPTIMIZER, TrainState.create(params, state, OPTIMIZER, jax.random.key(1)), data()["train"],
            batch_size=32, epochs=1, verbose=0)  # fmt: skip


def test_accumulated_is_a_pytree_that_jit_returns():
    out = jax.jit(lambda x: {"s": Accumulated(jnp.sum(x), float)})(jnp.ones(3))
    assert isinstance(out["s"], Accumulated) and float(out["s"].stats) == 3.0
    with pytest.raises(ValueError, match="combine must be one of"):
        Accumulated(1, float, "mean")
    with pytest.raises(ValueError, match=r"unknown metric\(s\) \['auc'\]; available: precision, recall, f1"):
        classification_loss(MODEL, metrics=("auc",))
