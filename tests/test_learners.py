"""Keras-level conveniences and data checks: evaluate, predict, history arrays, a validation
split, the data forms students have, the errors their mistakes get, lazy submodules."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from child import run_python

import fundl as fl
from fundl import losses
from fundl.datasets import train_validation_split
from fundl.train import (
    Record,
    TrainState,
    check_finite,
    check_opt_state,
    check_params,
    classification_loss,
    evaluate,
    fit,
    history_arrays,
    predict,
)

LECTURE = fl.serial(fl.flatten(), fl.dense(100), fl.tanh(), fl.dense(10))


@functools.cache
def digits():
    data = fl.datasets.digits()
    return data["train"], data["test"]


def start(model=LECTURE, optimizer=optax.sgd(0.1), shape=(32, 8, 8), seed=0):
    _, params, state = model.init(jax.random.key(seed), shape)
    return TrainState.create(params, state, optimizer, jax.random.key(seed + 1))


# --- evaluate, predict, history_arrays -------------------------------------------------


def test_evaluate_gives_exact_means_with_an_uneven_last_batch():
    _, test = digits()
    x, y = test["image"][:103], test["label"][:103]
    params = start().params
    loss_fn = classification_loss(LECTURE)
    got = evaluate(loss_fn, params, {}, (x, y), batch_size=25)  # 4 batches of 25 and one of 3
    logits = np.asarray(LECTURE.apply(params, {}, jnp.asarray(x))[0], np.float64)
    log_probs = logits - logits.max(-1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
    assert got.keys() == {"loss", "accuracy"}
    assert math.isclose(got["loss"], -log_probs[np.arange(103), y].mean(), rel_tol=1e-5)
    assert math.isclose(got["accuracy"], (logits.argmax(-1) == y).mean(), rel_tol=1e-6)
    assert evaluate(loss_fn, params, {}, test, batch_size=1000)["accuracy"] == pytest.approx(
        evaluate(loss_fn, params, {}, test, batch_size=7)["accuracy"], abs=1e-6
    )


def test_evaluate_checks_the_data_and_needs_a_train_keyword():
    _, test = digits()
    bad = {"image": test["image"], "label": np.where(np.arange(len(test["label"])) == 5, 10, test["label"])}
    with pytest.raises(ValueError, match=r"data: label 10 at index 5 is outside \[0, 10\)"):
        evaluate(classification_loss(LECTURE), start().params, {}, bad)
    with pytest.raises(ValueError, match="takes a `train` keyword"):
        evaluate(lambda p, s, b, k: (0.0, (s, {})), {}, {}, test)


def test_predict_matches_apply_on_the_whole_array():
    model = fl.serial(fl.flatten(), fl.dense(16), fl.batch_norm(), fl.dropout(0.5), fl.dense(10))
    _, params, state = model.init(jax.random.key(0), (1, 8, 8))
    x = digits()[1]["image"][:70]
    got = predict(model, params, state, x, batch_size=32)  # 32, 32, 6
    want, _ = model.apply(params, state, jnp.asarray(x))
    assert isinstance(got, np.ndarray) and got.shape == (70, 10)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    two = fl.fan_out(2)
    both = predict(fl.serial(fl.flatten(), two), {}, {}, x, batch_size=64)  # several outputs: a pytree
    assert isinstance(both, tuple) and [b.shape for b in both] == [(70, 64), (70, 64)]


def test_history_arrays_per_split_with_nan_for_missing_metrics():
    history = [
        Record(10, 1.0, "train", {"loss": 2.0, "accuracy": 0.5}),
        Record(10, 1.0, "validation", {"loss": 2.5, "accuracy": 0.4}),
        Record(20, 2.0, "train", {"loss": 1.0, "accuracy": 0.7, "lr": 0.1}),
        Record(20, 2.0, "validation", {"loss": 1.5, "accuracy": 0.6}),
    ]
    curves = history_arrays(history)
    assert list(curves) == ["train", "validation"]
    assert list(curves["train"]) == ["step", "epoch", "loss", "accuracy", "lr"]
    np.testing.assert_array_equal(curves["train"]["step"], [10, 20])
    assert curves["train"]["step"].dtype == np.int64
    np.testing.assert_array_equal(curves["validation"]["loss"], [2.5, 1.5])
    np.testing.assert_array_equal(curves["train"]["lr"], [np.nan, 0.1])


# --- the validation split ------------------------------------------------------------


def test_train_validation_split_is_reproducible_disjoint_and_sized():
    x, y = np.arange(50.0)[:, None] * np.ones((1, 3)), np.arange(50)
    (xt, yt), (xv, yv) = train_validation_split((x, y), 0.2, seed=3)
    assert (len(yt), len(yv)) == (40, 10) and xt.shape == (40, 3)
    assert set(yt).isdisjoint(yv) and set(yt) | set(yv) == set(range(50))
    np.testing.assert_array_equal(xv[:, 0], yv)  # rows stay together
    (_, yt2), (_, yv2) = train_validation_split((x, y), 0.2, seed=3)
    np.testing.assert_array_equal(yv, yv2)
    assert not np.array_equal(yv, train_validation_split((x, y), 0.2, seed=4)[1][1])
    assert yv.tolist() != list(range(40, 50))  # shuffled, unlike Keras ...
    keras = train_validation_split({"x": x, "y": y}, 0.2, shuffle=False)[1]
    assert keras["y"].tolist() == list(range(40, 50))  # ... unless asked


@pytest.mark.parametrize(
    "fraction, match",
    [
        (0.0, r"strictly between 0 and 1 \(e.g. 0.2\); got 0.0"),
        (1.0, "strictly between 0 and 1"),
        ("0.2", "strictly between 0 and 1"),
        (0.01, r"a fraction of 0.01 of 50 examples leaves the validation part empty: use a fraction of at least 0.02"),
        (0.995, r"leaves the training part empty: use a fraction of at most 0.98"),
    ],
)
def test_train_validation_split_errors(fraction, match):
    with pytest.raises(ValueError, match=match):
        train_validation_split((np.zeros((50, 2)), np.zeros(50)), fraction)


# --- data in the forms students have ---------------------------------------------------


@pytest.mark.parametrize("form", ["tuple", "xy dict"])
def test_the_lecture_model_trains_from_keras_style_data(form):
    train, test = digits()
    make = (lambda s: (s["image"], s["label"])) if form == "tuple" else (lambda s: {"x": s["image"], "y": s["label"]})
    loss_fn = classification_loss(LECTURE)
    trained, history = fit(loss_fn, optax.sgd(0.1), start(), make(train), batch_size=32, epochs=15, quiet=True)
    metrics = evaluate(loss_fn, trained.params, trained.state, make(test))
    assert metrics["accuracy"] >= 0.96, metrics
    logits = predict(LECTURE, trained.params, trained.state, test["image"])
    assert (logits.argmax(-1) == test["label"]).mean() == pytest.approx(metrics["accuracy"], abs=1e-6)


def test_batches_in_other_forms_are_an_error_listing_the_accepted_ones():
    loss_fn = classification_loss(LECTURE)
    params = start().params
    x, y = np.zeros((4, 8, 8), np.float32), np.zeros(4, np.int32)
    with pytest.raises(
        ValueError,
        match=r"a dict \{'image': x, 'label': y\}, a dict \{'x': x, 'y': y\}, or a tuple.*"
        r"keys \['inputs', 'targets'\].*classification_loss\(model, inputs='inputs', labels='targets'\)",
    ):
        loss_fn(params, {}, {"inputs": x, "targets": y}, None)
    with pytest.raises(ValueError, match="the batch is a tuple of length 3"):
        loss_fn(params, {}, (x, y, y), None)
    with pytest.raises(ValueError, match="the batch is a ndarray"):
        loss_fn(params, {}, x, None)
    named = classification_loss(LECTURE, inputs="pixels", labels="digit")
    assert np.isfinite(named(params, {}, {"pixels": x, "digit": y}, None)[0])


def test_one_hot_labels_are_refused_with_the_fix():
    logits = jnp.zeros((32, 10))
    one_hot = jax.nn.one_hot(jnp.arange(32) % 10, 10)
    with pytest.raises(
        TypeError, match=r"got float32 labels of shape \(32, 10\): these look one-hot; pass labels.argmax\(-1\)"
    ):
        losses.softmax_cross_entropy(logits, one_hot)
    with pytest.raises(ValueError, match=r"these look one-hot; pass labels.argmax\(-1\)"):
        losses.accuracy(logits, one_hot.astype(jnp.int32))
    with pytest.raises(TypeError, match=r"got float32 labels of shape \(32,\): cast with labels.astype\(jnp.int32\)"):
        losses.softmax_cross_entropy(logits, jnp.zeros(32))
    x = np.zeros((32, 8, 8), np.float32)
    with pytest.raises(
        ValueError,
        match=r"train data: labels must be integer classes, got float32 labels of shape \(32, 10\): these look one-hot",
    ):
        classification_loss(LECTURE).check_data((x, np.asarray(one_hot)), "train data")


@pytest.mark.filterwarnings("ignore:Python iterable type:DeprecationWarning")  # Shuffled's tree.map, before the check
def test_iterators_of_batches_are_refused_with_the_fix():
    train, _ = digits()
    batches = ((train["image"][i : i + 32], train["label"][i : i + 32]) for i in range(0, 320, 32))
    with pytest.raises(
        TypeError, match=r"train data is an iterator \(generator\): fit needs random access to the data.*np.concatenate"
    ):
        fit(classification_loss(LECTURE), optax.sgd(0.1), start(), batches, batch_size=32, epochs=1, quiet=True)
    with pytest.raises(TypeError, match=r"data is an iterator \(map\)"):
        evaluate(classification_loss(LECTURE), start().params, {}, map(lambda b: b, [train]))
    with pytest.raises(TypeError, match=r"a stream of batches \(range\)"):
        train_validation_split(range(10))


# --- values checked once on the host ---------------------------------------------------


def test_check_data_names_the_split_index_and_value():
    train, _ = digits()
    check = classification_loss(LECTURE).check_data
    check(train, "train data")  # clean data passes
    labels = train["label"].copy()
    labels[17] = -1
    with pytest.raises(ValueError, match=r"^train data: label -1 at index 17 is outside \[0, 10\)"):
        check({"image": train["image"], "label": labels}, "train data")
    labels[17], labels[3] = 1, 10
    with pytest.raises(ValueError, match=r"^test data: label 10 at index 3 is outside \[0, 10\)"):
        check((train["image"], labels), "test data")
    images = train["image"].copy()
    images[5, 2, 3] = np.nan
    with pytest.raises(ValueError, match=r"^train data: .* non-finite value nan at index 5 \(position \(5, 2, 3\)\)"):
        check((images, train["label"]), "train data")
    with pytest.raises(ValueError, match=r"each label needs the shape \(\); got labels of shape \(\d+, 1\)"):
        check((train["image"], train["label"][:, None]), "train data")


def test_out_of_range_labels_under_jit_give_nan_not_another_class():
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(4, 10)), jnp.float32)
    loss = jax.jit(losses.softmax_cross_entropy)
    accuracy = jax.jit(losses.accuracy)
    assert np.isfinite(loss(logits, jnp.array([0, 9, 3, 4])))
    for bad in (-1, 10):
        labels = jnp.array([0, bad, 3, 4])
        assert np.isnan(loss(logits, labels)) and np.isnan(accuracy(logits, labels))
        masked = jax.jit(lambda lg, lb: losses.softmax_cross_entropy(lg, lb, where=lb != bad))(logits, labels)
        assert np.isfinite(masked)  # a masked-out entry does not count


def test_check_finite_names_the_split_path_and_index():
    data = {"image": np.ones((6, 2), np.float32), "label": np.arange(6), "weight": np.ones(6)}
    check_finite(data, "train data")
    data["weight"][4] = np.inf
    with pytest.raises(
        ValueError, match=r"^train data: \['weight'\] has the non-finite value inf at index 4: drop or repair"
    ):
        check_finite(data, "train data")
    check_finite((np.ones(3, jnp.bfloat16), np.arange(3)), "x")


def test_check_params_refuses_integer_and_non_array_leaves():
    params = start().params
    check_params(params)
    bad = jax.tree.map(lambda p: p, params)
    bad["dense_1"]["b"] = jnp.zeros(10, jnp.int32)
    with pytest.raises(
        TypeError,
        match=r"params\['dense_1'\]\['b'\] is int32\[10\]: params are trained by gradients and must be floating-point",
    ):
        check_params(bad)
    with pytest.raises(TypeError, match=r"params\['scale'\] is a float \(0.5\)"):
        check_params({"scale": 0.5})


def test_check_opt_state_refuses_another_optimizers_state():
    params = start().params
    check_opt_state(optax.adam(1e-3), params, optax.adam(1e-2).init(params))  # same kind: fine
    with pytest.raises(
        ValueError,
        match=r"does not match optimizer.init\(params\): at opt_state\[0\]\.count expected nothing, got int32\[\]\. "
        r"It was made by another optimizer or for other params",
    ):
        check_opt_state(optax.sgd(0.1), params, optax.adam(1e-3).init(params))
    other = LECTURE.init(jax.random.key(0), (1, 4, 4))[1]
    with pytest.raises(
        ValueError,
        match=r"at opt_state\[0\]\.mu\['dense_0'\]\['w'\] expected float32\[16, 100\], got float32\[64, 100\]",
    ):
        check_opt_state(optax.adam(1e-3), other, optax.adam(1e-3).init(params))
    with pytest.raises(ValueError, match="expected the containers"):
        check_opt_state(optax.sgd(0.1, momentum=None), params, (optax.EmptyState(),))


# --- embedding ids, jit with train, lazy submodules ------------------------------------


def test_embedding_ids_out_of_range_under_jit_give_nan_rows():
    layer = fl.embedding(10, 3)
    _, params, state = layer.init(jax.random.key(0), (4,))
    lookup = jax.jit(lambda p, ids: layer.apply(p, {}, ids)[0])
    out = np.asarray(lookup(params, jnp.array([0, 9, 10, -1])))
    np.testing.assert_array_equal(out[:2], np.asarray(params["table"])[[0, 9]])
    assert np.isnan(out[2:]).all()  # neither clamped to row 9 nor wrapped to row 9
    grads = jax.jit(jax.grad(lambda p, ids: jnp.nansum(layer.apply(p, {}, ids)[0])))(params, jnp.array([1, 10, -1]))
    np.testing.assert_array_equal(np.asarray(grads["table"]).sum(1), [0, 3, 0, 0, 0, 0, 0, 0, 0, 0])
    with pytest.raises(fl.LayerError, match=r"token ids must lie in \[0, 10\), got values from -1 to 9"):
        layer.apply(params, state, jnp.array([-1, 9]))


def test_jit_of_apply_in_training_mode_with_static_train():
    model = fl.serial(fl.flatten(), fl.dense(16), fl.dropout(0.5), fl.batch_norm(), fl.dense(10))
    _, params, state = model.init(jax.random.key(0), (8, 8, 8))
    x, key = jnp.asarray(digits()[0]["image"][:8]), jax.random.key(1)
    with pytest.raises(jax.errors.TracerBoolConversionError):
        jax.jit(model.apply)(params, state, x, key=key, train=True)
    apply = jax.jit(model.apply, static_argnames="train")
    y, new_state = apply(params, state, x, key=key, train=True)
    y_eager, state_eager = model.apply(params, state, x, key=key, train=True)
    np.testing.assert_allclose(y, y_eager, rtol=1e-5, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), new_state, state_eager)
    y_eval, _ = apply(params, state, x, train=False)
    np.testing.assert_allclose(y_eval, model.apply(params, state, x)[0], rtol=1e-5, atol=1e-5)


def test_submodules_are_reachable_lazily_and_import_fundl_skips_flax_and_matplotlib_until_asked():
    code = (
        "import sys, fundl as fl\n"
        "heavy = [m for m in ('flax', 'matplotlib', 'fundl.train', 'fundl.models', 'fundl.runs') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert fl.train.fit and fl.models.mlp and fl.runs.run and fl.distributed.data_mesh and fl.plots.plot_curves\n"
        "assert 'matplotlib' not in sys.modules\n"
        "fl.plots.import_in_background().join()\n"  # what a run starts before training, for curves.png
        "assert 'matplotlib.figure' in sys.modules and 'matplotlib.pyplot' not in sys.modules\n"
        "assert {'train', 'models', 'runs', 'distributed'} <= set(dir(fl))\n"
        "try:\n    fl.no_such_thing\nexcept AttributeError as e:\n "
        "   assert \"no attribute 'no_such_thing'\" in str(e)\n"
        "import flax.linen as nn\n"
        "_, params, _ = fl.from_flax(nn.Dense(3)).init(__import__('jax').random.key(0), (2, 4))\n"
        "assert params['kernel'].shape == (4, 3)\n"
    )
    run_python(code)


def test_evaluate_on_four_fake_devices_matches_one_device():
    code = (
        "import jax, numpy as np, fundl as fl\n"
        "from fundl.train import classification_loss, evaluate\n"
        "assert jax.device_count() == 4\n"
        "model = fl.serial(fl.flatten(), fl.dense(10))\n"
        "_, params, state = model.init(jax.random.key(0), (1, 8, 8))\n"
        "test = fl.datasets.digits()['test']\n"
        "one = evaluate(classification_loss(model), params, state, test, batch_size=25, mesh=1)\n"
        "four = evaluate(classification_loss(model), "
        "params, state, test, batch_size=25, mesh=None)\n"  # 24 cut + 1 replicated
        "assert one.keys() == four.keys() and all(abs(one[k] - four[k]) < 1e-5 for k in one), (one, four)\n"
    )
    run_python(code, devices=4, timeout=120)
