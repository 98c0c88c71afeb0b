"""flax.linen modules wrapped as fundl layers."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from layer_checks import assert_grads_match_finite_differences, assert_shape_agreement, random_input

import fundl as fl


def test_a_flax_module_becomes_a_params_subtree(key):
    model = fl.serial(fl.from_flax(nn.Dense(6)), fl.relu(), fl.dense(2))
    out_shape, params, state, y = assert_shape_agreement(model, (4, 3))
    assert out_shape == (4, 2) and state == {}
    assert jax.tree.map(jnp.shape, params["Dense_0"]) == {"kernel": (3, 6), "bias": (6,)}
    x = random_input((4, 3))
    hidden = nn.Dense(6).apply({"params": params["Dense_0"]}, x)
    expected = fl.dense(2).apply(params["dense_0"], {}, jax.nn.relu(hidden))[0]
    np.testing.assert_allclose(model.apply(params, state, x)[0], expected, rtol=1e-6)


def test_gradients_flow_through_the_flax_module():
    assert_grads_match_finite_differences(fl.serial(fl.from_flax(nn.Dense(3)), fl.tanh()), (2, 4))


def test_flax_batch_norm_state_is_threaded_and_updated(key):
    bn = fl.from_flax(nn.BatchNorm(momentum=0.5), train_args=lambda train: {"use_running_average": not train})
    model = fl.serial(fl.dense(3), bn)
    _, params, state = model.init(key, (8, 2))
    assert set(state["BatchNorm_0"]) == {"batch_stats"}
    x = 3 + random_input((8, 2))
    y, new_state = model.apply(params, state, x, train=True)
    np.testing.assert_allclose(np.mean(y, 0), 0, atol=1e-5)
    h = fl.dense(3).apply(params["dense_0"], {}, x)[0]
    np.testing.assert_allclose(new_state["BatchNorm_0"]["batch_stats"]["mean"], 0.5 * np.mean(h, 0), rtol=1e-5)
    _, eval_state = model.apply(params, new_state, x, train=False)
    jax.tree.map(np.testing.assert_array_equal, eval_state, new_state)


def test_flax_dropout_uses_the_fundl_key(key):
    layer = fl.from_flax(nn.Dropout(0.5), train_args=lambda train: {"deterministic": not train})
    _, params, state = layer.init(key, (4, 32))
    x = jnp.ones((4, 32))
    a, _ = layer.apply(params, state, x, key=jax.random.key(1), train=True)
    b, _ = layer.apply(params, state, x, key=jax.random.key(1), train=True)
    np.testing.assert_array_equal(a, b)
    assert 0 < np.mean(np.asarray(a) == 0) < 1
    np.testing.assert_array_equal(layer.apply(params, state, x)[0], x)


def test_flax_errors_become_layer_errors_with_a_path(key):
    model = fl.serial(fl.from_flax(nn.Dense(4)))
    _, params, state = model.init(key, (2, 3))
    params["Dense_0"]["kernel"] = jnp.ones((5, 4))
    with pytest.raises(fl.LayerError, match="Dense_0: flax module Dense:"):
        model.apply(params, state, jnp.ones((2, 3)))
