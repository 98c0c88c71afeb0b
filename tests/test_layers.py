"""Dense, embedding, reshape, activation, dropout and normalisation layers.

Each layer is checked four ways: the shape ``init`` predicts is the shape ``apply``
produces; gradients agree with finite differences; outputs agree with an independent
reference (NumPy equations, and flax.linen with copied weights); bad input raises an
error that says where, what was expected and what was received.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from layer_checks import assert_grads_match_finite_differences, assert_shape_agreement, random_input

import fundl as fl
from fundl import LayerError

ACTIVATIONS = {
    "relu": (fl.relu(), lambda x: np.maximum(x, 0)),
    "leaky_relu": (fl.leaky_relu(0.1), lambda x: np.where(x > 0, x, 0.1 * x)),
    "elu": (fl.elu(), lambda x: np.where(x > 0, x, np.expm1(x))),
    "gelu": (fl.gelu(), lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))),
    "silu": (fl.silu(), lambda x: x / (1 + np.exp(-x))),
    "sigmoid": (fl.sigmoid(), lambda x: 1 / (1 + np.exp(-x))),
    "tanh": (fl.tanh(), np.tanh),
    "softplus": (fl.softplus(), lambda x: np.log1p(np.exp(x))),
    "softmax": (fl.softmax(), lambda x: np.exp(x) / np.exp(x).sum(-1, keepdims=True)),
    "log_softmax": (fl.log_softmax(), lambda x: x - np.log(np.exp(x).sum(-1, keepdims=True))),
    "identity": (fl.identity(), lambda x: x),
}


# --- shapes -------------------------------------------------------------------------


@pytest.mark.parametrize("input_shape", [(4, 3), (2, 5, 3), (3,)])
@pytest.mark.parametrize("units", [1, 7])
@pytest.mark.parametrize("use_bias", [True, False])
def test_dense_shapes(input_shape, units, use_bias):
    out_shape, params, _, _ = assert_shape_agreement(fl.dense(units, use_bias=use_bias), input_shape)
    assert out_shape == (*input_shape[:-1], units)
    assert set(params) == ({"w", "b"} if use_bias else {"w"})


@pytest.mark.parametrize("ids_shape", [(5,), (2, 6)])
def test_embedding_shapes(ids_shape):
    ids = jax.random.randint(jax.random.key(3), ids_shape, 0, 11)
    out_shape, *_ = assert_shape_agreement(fl.embedding(11, 4), ids_shape, x=ids)
    assert out_shape == (*ids_shape, 4)


@pytest.mark.parametrize(
    "layer, input_shape, expected",
    [
        (fl.flatten(), (2, 3, 4), (2, 12)),
        (fl.flatten(), (2, 5), (2, 5)),
        (fl.flatten(), (2, 3, 4, 5), (2, 60)),
        (fl.reshape((8, 8, 1)), (3, 64), (3, 8, 8, 1)),
        (fl.reshape((-1,)), (3, 4, 5), (3, 20)),
        (fl.reshape((2, -1, 2)), (3, 12), (3, 2, 3, 2)),
    ],
)
def test_reshape_layers_shapes(layer, input_shape, expected):
    out_shape, *_ = assert_shape_agreement(layer, input_shape)
    assert out_shape == expected


@pytest.mark.parametrize("name", ACTIVATIONS)
@pytest.mark.parametrize("input_shape", [(3, 4), (2, 3, 5)])
def test_activation_shapes(name, input_shape):
    assert_shape_agreement(ACTIVATIONS[name][0], input_shape)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("input_shape", [(8, 3), (4, 5, 5, 3)])
def test_norm_and_dropout_shapes(train, input_shape):
    for layer in (fl.batch_norm(), fl.layer_norm(), fl.dropout(0.3)):
        assert_shape_agreement(layer, input_shape, train=train)


# --- gradients against finite differences ---------------------------------------------


@pytest.mark.parametrize(
    "layer, input_shape, train",
    [
        (fl.dense(3), (4, 5), False),
        (fl.dense(3, use_bias=False), (2, 3, 5), False),
        (fl.batch_norm(), (6, 3), True),
        (fl.batch_norm(), (6, 3), False),
        (fl.layer_norm(), (4, 5), False),
        (fl.serial(fl.dense(4), fl.tanh(), fl.dense(2)), (3, 5), False),
        (fl.residual(fl.dense(5), fl.gelu()), (3, 5), False),
    ],
)
def test_gradients_match_finite_differences(layer, input_shape, train):
    assert_grads_match_finite_differences(layer, input_shape, train=train)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_gradients(name):
    assert_grads_match_finite_differences(ACTIVATIONS[name][0], (3, 4))


def test_embedding_gradient_wrt_table():
    ids = jnp.array([[0, 3, 3], [5, 1, 0]])
    assert_grads_match_finite_differences(fl.embedding(6, 4), ids.shape, x=ids)


def test_dropout_gradient_uses_the_same_mask():
    assert_grads_match_finite_differences(fl.dropout(0.5), (4, 6), train=True, key=jax.random.key(7))


# --- against independent references ----------------------------------------------------


def test_dense_matches_numpy_and_flax(key):
    _, params, state = fl.dense(7).init(key, (4, 5))
    params = {"w": params["w"], "b": random_input((7,), seed=4)}  # non-zero bias
    x = random_input((4, 5))
    y, _ = fl.dense(7).apply(params, state, x)
    np.testing.assert_allclose(y, np.asarray(x) @ np.asarray(params["w"]) + np.asarray(params["b"]), atol=1e-5)
    y_flax = nn.Dense(7).apply({"params": {"kernel": params["w"], "bias": params["b"]}}, x)
    np.testing.assert_allclose(y, y_flax, atol=1e-5)


def test_embedding_matches_flax(key):
    layer = fl.embedding(10, 3)
    _, params, state = layer.init(key, (2, 4))
    ids = jnp.array([[1, 9, 0, 1], [4, 4, 2, 7]])
    y, _ = layer.apply(params, state, ids)
    np.testing.assert_allclose(y, np.asarray(params["table"])[np.asarray(ids)], atol=0)
    y_flax = nn.Embed(10, 3).apply({"params": {"embedding": params["table"]}}, ids)
    np.testing.assert_allclose(y, y_flax, atol=1e-6)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activations_match_numpy(name):
    layer, reference = ACTIVATIONS[name]
    x = random_input((3, 5)) * 3
    y, _ = layer.apply({}, {}, x)
    np.testing.assert_allclose(y, reference(np.asarray(x, np.float64)), rtol=1e-5, atol=1e-5)


def _with_affine(params, features, seed):
    """Replaces the initial scale 1 / bias 0 by random values, so that they are tested too."""
    return {"scale": 1 + 0.1 * random_input((features,), seed=seed), "bias": random_input((features,), seed=seed + 1)}


def test_batch_norm_matches_numpy_and_flax(key):
    layer = fl.batch_norm(momentum=0.9, epsilon=1e-3)
    _, params, state = layer.init(key, (6, 4, 4, 3))
    params = _with_affine(params, 3, seed=5)
    x = 2 + 3 * random_input((6, 4, 4, 3))
    y, new_state = layer.apply(params, state, x, train=True)

    xs, scale, bias = np.asarray(x, np.float64), np.asarray(params["scale"]), np.asarray(params["bias"])
    mean, var = xs.mean(axis=(0, 1, 2)), xs.var(axis=(0, 1, 2))
    np.testing.assert_allclose(y, (xs - mean) / np.sqrt(var + 1e-3) * scale + bias, atol=1e-4)
    np.testing.assert_allclose(new_state["mean"], 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(new_state["var"], 0.9 + 0.1 * var, rtol=1e-5)

    flax_bn = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-3)
    variables = {"params": params, "batch_stats": state}
    y_flax, updates = flax_bn.apply(variables, x, mutable=["batch_stats"])
    np.testing.assert_allclose(y, y_flax, atol=1e-5)
    np.testing.assert_allclose(new_state["mean"], updates["batch_stats"]["mean"], atol=1e-5)
    np.testing.assert_allclose(new_state["var"], updates["batch_stats"]["var"], atol=1e-5)

    y_eval, eval_state = layer.apply(params, new_state, x, train=False)
    y_flax_eval = nn.BatchNorm(use_running_average=True, epsilon=1e-3).apply(
        {"params": params, "batch_stats": new_state}, x
    )
    np.testing.assert_allclose(y_eval, y_flax_eval, atol=1e-5)
    assert eval_state is new_state


def test_layer_norm_matches_numpy_and_flax(key):
    layer = fl.layer_norm(epsilon=1e-6)
    _, params, state = layer.init(key, (3, 2, 6))
    params = _with_affine(params, 6, seed=8)
    x = 1 + 2 * random_input((3, 2, 6))
    y, _ = layer.apply(params, state, x)
    xs = np.asarray(x, np.float64)
    normed = (xs - xs.mean(-1, keepdims=True)) / np.sqrt(xs.var(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(y, normed * np.asarray(params["scale"]) + np.asarray(params["bias"]), atol=1e-5)
    y_flax = nn.LayerNorm(epsilon=1e-6).apply({"params": params}, x)
    np.testing.assert_allclose(y, y_flax, atol=1e-5)


# --- batch norm and dropout behaviour --------------------------------------------------


def test_batch_norm_running_statistics_follow_the_documented_rule(key):
    layer = fl.batch_norm(momentum=0.8)
    _, params, state = layer.init(key, (16, 2))
    batches = [5 + 2 * random_input((16, 2), seed=s) for s in (1, 2, 3)]
    mean, var = np.zeros(2), np.ones(2)
    for x in batches:
        _, state = layer.apply(params, state, x, train=True)
        xs = np.asarray(x, np.float64)
        mean, var = 0.8 * mean + 0.2 * xs.mean(0), 0.8 * var + 0.2 * xs.var(0)
    np.testing.assert_allclose(state["mean"], mean, rtol=1e-5)
    np.testing.assert_allclose(state["var"], var, rtol=1e-5)


def test_batch_norm_train_uses_batch_statistics_and_eval_uses_running_ones(key):
    layer = fl.batch_norm()
    _, params, state = layer.init(key, (64, 3))
    x = 5 + 2 * random_input((64, 3))
    y_train, _ = layer.apply(params, state, x, train=True)
    np.testing.assert_allclose(np.mean(y_train, 0), 0, atol=1e-5)
    np.testing.assert_allclose(np.std(y_train, 0), 1, atol=1e-3)
    # The initial running statistics are mean 0, var 1: evaluation leaves x (almost) unchanged.
    y_eval, same_state = layer.apply(params, state, x, train=False)
    np.testing.assert_allclose(y_eval, x / np.sqrt(1 + 1e-5), rtol=1e-6)
    assert same_state is state


def test_dropout_keeps_the_expected_fraction_and_rescales():
    x = jnp.ones((200, 500))
    y, _ = fl.dropout(0.3).apply({}, {}, x, key=jax.random.key(1), train=True)
    kept = np.asarray(y) != 0
    assert abs(kept.mean() - 0.7) < 0.005
    np.testing.assert_allclose(np.asarray(y)[kept], 1 / 0.7, rtol=1e-6)


def test_dropout_mask_is_a_function_of_the_key():
    x = random_input((8, 32))
    layer = fl.dropout(0.5)
    a, _ = layer.apply({}, {}, x, key=jax.random.key(1), train=True)
    b, _ = layer.apply({}, {}, x, key=jax.random.key(1), train=True)
    c, _ = layer.apply({}, {}, x, key=jax.random.key(2), train=True)
    np.testing.assert_array_equal(a, b)
    assert np.any(np.asarray(a != c))


def test_dropout_in_evaluation_is_the_identity_and_needs_no_key():
    x = random_input((4, 6))
    y, _ = fl.dropout(0.5).apply({}, {}, x, train=False)
    np.testing.assert_array_equal(y, x)
    y0, _ = fl.dropout(0.0).apply({}, {}, x, train=True)
    np.testing.assert_array_equal(y0, x)


# --- errors ----------------------------------------------------------------------------


def test_dropout_in_training_without_a_key_is_an_error_naming_the_layer(key):
    model = fl.serial(fl.dense(4), fl.dropout(0.5))
    _, params, state = model.init(key, (2, 3))
    with pytest.raises(LayerError, match=r"dropout_0: dropout needs a random key when train=True.*key=key"):
        model.apply(params, state, jnp.ones((2, 3)), train=True)


def test_dense_on_unflattened_images_names_layer_shapes_and_fix(key):
    model = fl.serial(fl.dense(100), fl.tanh(), fl.dense(10))
    _, params, state = model.init(key, (32, 64))
    with pytest.raises(
        LayerError, match=r"dense_0: dense expects inputs of shape \(\.\.\., 64\), got \(32, 8, 8\): add flatten\(\)"
    ):
        model.apply(params, state, jnp.ones((32, 8, 8)))


def test_non_float_input_is_a_type_error_naming_layer_and_dtype(key):
    model = fl.serial(fl.dense(4))
    _, params, state = model.init(key, (2, 3))
    with pytest.raises(TypeError, match=r"dense_0: dense expects floating-point inputs, got int32.*astype"):
        model.apply(params, state, jnp.ones((2, 3), jnp.int32))
    with pytest.raises(TypeError, match="embedding expects integer token ids, got float32"):
        fl.embedding(5, 2).apply({"table": jnp.zeros((5, 2))}, {}, jnp.ones((3,)))


def test_embedding_ids_out_of_range_are_an_error_when_eager(key):
    layer = fl.embedding(5, 2)
    _, params, state = layer.init(key, (3,))
    with pytest.raises(LayerError, match=r"token ids must lie in \[0, 5\), got values from 0 to 5"):
        layer.apply(params, state, jnp.array([0, 5, 1]))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: fl.dense(0), "dense: `units` must be a positive integer"),
        (lambda: fl.dense(-3), "dense: `units` must be a positive integer, got -3"),
        (lambda: fl.dense(2.5), "dense: `units` must be a positive integer, got 2.5"),
        (lambda: fl.embedding(0, 3), "embedding: `vocab_size` must be a positive integer"),
        (lambda: fl.reshape((0, 2)), "reshape: `shape` must hold positive integers"),
        (lambda: fl.reshape((-1, -1)), "at most one -1"),
        (lambda: fl.dropout(1.0), r"dropout: `rate` .* must be in \[0, 1\), got 1.0"),
        (lambda: fl.dropout(-0.1), r"must be in \[0, 1\), got -0.1"),
        (lambda: fl.batch_norm(momentum=1.0), r"batch_norm: `momentum` must be in \[0, 1\)"),
        (lambda: fl.layer_norm(epsilon=0.0), "layer_norm: `epsilon` must be positive"),
    ],
)
def test_bad_layer_arguments_are_errors(make, match):
    with pytest.raises(LayerError, match=match):
        make()


# Wrong argument *types* (a tuple or float where an int is expected, a string for a flag): each is a LayerError
# naming the layer, the argument, what was expected and what was got, never a raw JAX or NumPy error later.
@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: fl.dense((32,)), r"dense: `units` must be a positive integer, got \(32,\) \(a tuple\): give one"),
        (lambda: fl.dense(32.0), r"dense: `units` must be a positive integer, got 32.0 \(a float\)"),
        (lambda: fl.dense(3, use_bias="yes"), r"dense: `use_bias` must be True or False, got 'yes' \(a str\)"),
        (lambda: fl.dense(3, w_init="glorot"), r"dense: `w_init` must be an initializer init\(key, shape, dtype\)"),
        (lambda: fl.embedding((10,), 4), r"embedding: `vocab_size` must be a positive integer, got \(10,\)"),
        (lambda: fl.simple_rnn((16,)), r"simple_rnn: `hidden` must be a positive integer, got \(16,\)"),
        (lambda: fl.lstm((16,)), r"lstm: `hidden` must be a positive integer, got \(16,\)"),
        (lambda: fl.gru("16"), r"gru: `hidden` must be a positive integer, got '16' \(a str\)"),
        (lambda: fl.lstm(4, return_sequences="yes"), "lstm: `return_sequences` must be True or False, got 'yes'"),
        (lambda: fl.lstm(4, forget_bias="1"), "lstm: `forget_bias` must be a number, got '1'"),
        (lambda: fl.conv2d((8,), 3), r"conv2d: `features` must be a positive integer, got \(8,\)"),
        (lambda: fl.conv2d_transpose(8.0, 3), "conv2d_transpose: `features` must be a positive integer, got 8.0"),
        (lambda: fl.conv2d(8, 3, padding=1.5), "conv2d: padding must be 'SAME', 'VALID', a non-negative int"),
        (lambda: fl.max_pool((2.0, 2)), r"max_pool: `window` must be a tuple of positive integers, got \(2.0, 2\)"),
        (lambda: fl.softmax(axis=1.0), r"softmax: `axis` must be an integer axis .* got 1.0 \(a float\)"),
        (lambda: fl.log_softmax(axis="x"), "log_softmax: `axis` must be an integer axis"),
        (lambda: fl.leaky_relu("x"), "leaky_relu: `negative_slope` must be a number, got 'x'"),
        (lambda: fl.gelu(approximate="x"), "gelu: `approximate` must be True or False"),
        (lambda: fl.batch_norm(momentum="x"), r"batch_norm: `momentum` must be in \[0, 1\), got 'x' \(a str\)"),
        (lambda: fl.batch_norm(use_scale=1), "batch_norm: `use_scale` must be True or False, got 1"),
        (lambda: fl.layer_norm(epsilon="x"), "layer_norm: `epsilon` must be positive, got 'x'"),
        (lambda: fl.reshape(4), r"reshape: `shape` must be a tuple .* for one dimension write \(4,\)"),
        (lambda: fl.models.mlp_vae((8, 8.0)), r"mlp_vae: `image_shape` must be a tuple of positive integers"),
    ],
)
def test_wrong_argument_types_are_clear_errors(make, match):
    with pytest.raises(LayerError, match=match):
        make()


def test_bidirectional_over_a_layer_that_is_not_a_sequence_layer_is_a_clear_error(key):
    layer = fl.bidirectional(fl.dense(3))
    _, params, state = layer.init(key, (2, 5, 4))
    with pytest.raises(LayerError, match="bidirectional expects a sequence layer that takes `mask`.* got dense"):
        layer.apply(params, state, jnp.ones((2, 5, 4)))


def test_reshape_that_cannot_hold_the_input_is_an_error(key):
    with pytest.raises(LayerError, match=r"reshape_0: reshape\(7, 7\) cannot hold an input of shape \(2, 64\)"):
        fl.serial(fl.reshape((7, 7))).init(key, (2, 64))


def test_norm_layers_check_the_feature_count(key):
    model = fl.serial(fl.batch_norm())
    _, params, state = model.init(key, (4, 3))
    with pytest.raises(
        LayerError,
        match=r"batch_norm_0: batch_norm expects inputs with 3 features on the last axis, got shape \(4, 5\)",
    ):
        model.apply(params, state, jnp.ones((4, 5)))
    with pytest.raises(LayerError, match="batch_norm expects inputs of shape \\(batch, ..., features\\), got \\(3,\\)"):
        fl.batch_norm().init(key, (3,))


def test_rms_norm_matches_numpy_and_flax(key):
    layer = fl.rms_norm(epsilon=1e-6)
    _, params, state = layer.init(key, (3, 2, 6))
    params = {"scale": 1 + 0.1 * random_input((6,), seed=8)}
    x = 1 + 2 * random_input((3, 2, 6))
    y, _ = layer.apply(params, state, x)
    xs = np.asarray(x, np.float64)
    normed = xs / np.sqrt((xs**2).mean(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(y, normed * np.asarray(params["scale"]), atol=1e-5)
    np.testing.assert_allclose(y, nn.RMSNorm(epsilon=1e-6).apply({"params": params}, x), atol=1e-5)
    assert_grads_match_finite_differences(layer, (4, 5))
    y16, _ = layer.apply(params, state, x.astype(jnp.bfloat16))
    assert y16.dtype == jnp.bfloat16
    expected = r"rms_norm expects inputs with 6 features on the last axis, got shape \(3, 4\)"
    with pytest.raises(LayerError, match=expected):
        layer.apply(params, state, jnp.ones((3, 4)))
