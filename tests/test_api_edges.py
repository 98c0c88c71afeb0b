"""Habits from elsewhere get a clear message at the API's edge: what was passed, what was expected, and the fix."""

import functools

import jax
import jax.numpy as jnp
import optax
import pytest

import fundl as fl
from fundl.train import TrainState, classification_loss, evaluate, fit, fit_members, predict

OPTIMIZER = optax.sgd(0.1)
MODEL = fl.serial(fl.flatten(), fl.dense(10))


@functools.cache
def digits():
    data = fl.datasets.digits()
    return data["train"]["image"], data["train"]["label"]


def state_of(model, shape=(32, 8, 8)):
    _, params, state = model.init(jax.random.key(0), shape)
    return TrainState.create(params, state, OPTIMIZER, jax.random.key(1))


def train(model=MODEL, data=None, **options):
    options = {"batch_size": 32, "epochs": 1, "verbose": 0, **options}
    return fit(classification_loss(model), OPTIMIZER, state_of(model), digits() if data is None else data, **options)


def test_python_lists_as_data_say_so_briefly():
    x, y = digits()
    with pytest.raises(TypeError, match=r"train data holds Python lists of numbers \(\[0\] is a list of 1527 lists\)"):
        train(data=(x.tolist(), y.tolist()))
    with pytest.raises(TypeError) as error:
        train(data={"image": x, "label": y.tolist()})
    assert "['label'] is a list of 1527 ints" in str(error.value) and "np.asarray" in str(error.value)
    assert len(str(error.value)) < 300


def test_eval_data_given_as_one_split_asks_for_named_splits():
    with pytest.raises(TypeError, match=r"eval_data names its splits: a dict like eval_data=\{'validation': \(x_val"):
        train(eval_data=digits())


def test_a_model_where_the_loss_goes_says_how_to_make_the_loss():
    with pytest.raises(TypeError, match=r"got a model \(an \(init, apply\) Layer\): .*classification_loss\(model\)"):
        fit(MODEL, OPTIMIZER, state_of(MODEL), digits(), batch_size=32, epochs=1)
    with pytest.raises(TypeError, match=r"got a model .*classification_loss\(model\)"):
        evaluate(MODEL, state_of(MODEL).params, {}, digits())


def test_params_where_the_train_state_goes_say_how_to_make_one():
    params = state_of(MODEL).params
    with pytest.raises(TypeError, match=r"fit's train_state takes a TrainState .* got a dict \(it looks like the "):
        fit(classification_loss(MODEL), OPTIMIZER, params, digits(), batch_size=32, epochs=1)
    with pytest.raises(TypeError, match=r"TrainState.create\(params, state, optimizer, key=jax.random.key\(1\)\)"):
        fit_members(
            classification_loss(MODEL), lambda h: OPTIMIZER, params, None, digits(), batch_size=32, data_seeds=[0]
        )
    with pytest.raises(TypeError, match=r"it looks like fit's \(train_state, history\): unpack it"):
        fit(classification_loss(MODEL), OPTIMIZER, train(), digits(), batch_size=32, epochs=1)


def test_a_loss_passed_to_predict_points_at_evaluate():
    with pytest.raises(TypeError, match=r"predict takes the model, .* got a Loss: .* use evaluate\(loss, params"):
        predict(classification_loss(MODEL), state_of(MODEL).params, {}, digits()[0])


def test_unflattened_images_blame_the_missing_flatten_not_the_labels():
    model = fl.serial(fl.dense(10))
    with pytest.raises(ValueError) as error:
        train(model)
    message = str(error.value)
    assert "the model gives (8,) sets of 10 logits for each example" in message
    assert "put fl.flatten() before the first dense layer" in message and "labels need" not in message


SOFTMAX = "this model's output is already a probability distribution: its last operation is a softmax"


def own_softmax(x):
    return jnp.exp(x) / jnp.sum(jnp.exp(x), axis=-1, keepdims=True)


@pytest.mark.parametrize(
    "last",
    [
        fl.softmax(),
        fl.Layer(lambda key, shape: (shape, {}, {}), lambda p, s, x, **kw: (jax.nn.softmax(x), s)),
        fl.Layer(lambda key, shape: (shape, {}, {}), jax.jit(lambda p, s, x, **kw: (own_softmax(x), s))),
    ],
    ids=["fl.softmax", "jax.nn.softmax", "by hand, jitted"],
)
def test_a_final_softmax_before_classification_loss_is_refused_with_the_fix(last):
    with pytest.raises(ValueError, match=SOFTMAX) as error:
        train(fl.serial(fl.flatten(), fl.dense(10), last))
    assert "Remove the final softmax() layer" in str(error.value)


def test_logits_and_log_probabilities_are_fine():
    for last in (fl.identity(), fl.log_softmax()):
        train(fl.serial(fl.flatten(), fl.dense(10), last), epochs=0)
