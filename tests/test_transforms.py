"""A model's apply, and a loss built from it, compose with every JAX transformation."""

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np

import fundl as fl
from fundl import losses

MODEL = fl.serial(fl.dense(16), fl.batch_norm(), fl.tanh(), fl.dropout(0.2), fl.dense(3))


def setup():
    _, params, state = MODEL.init(jax.random.key(0), (8, 5))
    x = jax.random.normal(jax.random.key(1), (8, 5))
    y = jnp.array([0, 1, 2, 0, 1, 2, 0, 1])
    return params, state, x, y


def loss(params, state, x, y):
    logits, _ = MODEL.apply(params, state, x)  # evaluation mode: examples stay independent
    return losses.softmax_cross_entropy(logits, y)


def allclose(a, b, **kw):
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, **{"rtol": 1e-6, "atol": 1e-6, **kw}), a, b)


def test_jit_matches_the_plain_call():
    params, state, x, _ = setup()
    plain = MODEL.apply(params, state, x, key=jax.random.key(3), train=True)
    jitted = jax.jit(MODEL.apply, static_argnames="train")(params, state, x, key=jax.random.key(3), train=True)
    allclose(plain, jitted)


def test_grad_matches_a_hand_derived_gradient_of_the_last_layer():
    params, state, x, y = setup()
    grads = jax.grad(loss)(params, state, x, y)
    # d loss / d logits = (softmax - onehot) / batch, and logits = h @ w + b.
    features = fl.serial(*[fl.dense(16), fl.batch_norm(), fl.tanh()])
    h, _ = features.apply({"dense_0": params["dense_0"], "batch_norm_0": params["batch_norm_0"]}, state, x)
    logits, _ = MODEL.apply(params, state, x)
    delta = (jax.nn.softmax(logits) - jax.nn.one_hot(y, 3)) / 8
    allclose(grads["dense_1"]["w"], h.T @ delta, atol=1e-6)
    allclose(grads["dense_1"]["b"], delta.sum(0))


def test_vmap_gives_per_example_gradients():
    params, state, x, y = setup()

    def example_loss(params, xi, yi):
        return loss(params, state, xi[None], yi[None])

    per_example = jax.vmap(jax.grad(example_loss), in_axes=(None, 0, 0))(params, x, y)
    for i in range(len(x)):
        one = jax.grad(example_loss)(params, x[i], y[i])
        allclose(jax.tree.map(lambda g: g[i], per_example), one)
    # Their mean is the batch gradient.
    allclose(jax.tree.map(lambda g: g.mean(0), per_example), jax.grad(loss)(params, state, x, y))


def test_checkpoint_rematerialisation_gives_the_same_gradient():
    params, state, x, y = setup()
    allclose(jax.grad(jax.checkpoint(loss))(params, state, x, y), jax.grad(loss)(params, state, x, y))


def test_eval_shape_matches_the_real_shapes():
    params, state, x, _ = setup()
    abstract = jax.eval_shape(lambda p, s, x: MODEL.apply(p, s, x, train=False), params, state, x)
    real = MODEL.apply(params, state, x)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), abstract) == jax.tree.map(lambda a: (a.shape, a.dtype), real)


PMAP_SCRIPT = textwrap.dedent(
    """
    import jax
    jax.config.update("jax_num_cpu_devices", 4)
    import jax.numpy as jnp, numpy as np
    import fundl as fl
    from fundl import losses

    model = fl.serial(fl.dense(16), fl.tanh(), fl.dense(3))
    _, params, state = model.init(jax.random.key(0), (8, 5))
    x = jax.random.normal(jax.random.key(1), (8, 5))
    y = jnp.arange(8) % 3

    def loss(params, x, y):
        return losses.softmax_cross_entropy(model.apply(params, state, x)[0], y)

    def step(params, x, y):
        return jax.lax.pmean(jax.grad(loss)(params, x, y), "data")

    assert jax.device_count() == 4
    shard = lambda a: a.reshape(4, 2, *a.shape[1:])
    logits = jax.pmap(lambda x: model.apply(params, state, x)[0])(shard(x))
    grads = jax.pmap(step, axis_name="data", in_axes=(None, 0, 0))(params, shard(x), shard(y))
    np.testing.assert_allclose(logits.reshape(8, 3), model.apply(params, state, x)[0], rtol=1e-6, atol=1e-6)
    expected = jax.grad(loss)(params, x, y)
    jax.tree.map(lambda g, e: np.testing.assert_allclose(g[0], e, rtol=1e-5, atol=1e-6), grads, expected)
    print("pmap ok")
    """
)


def test_pmap_over_four_devices_matches_one_device():
    result = subprocess.run([sys.executable, "-c", PMAP_SCRIPT], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "pmap ok" in result.stdout
