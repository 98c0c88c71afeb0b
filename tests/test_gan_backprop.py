"""The GAN (one loss, two players, one fit) and the hand-written backprop lab: gradients, metrics, the examples."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from fundl.examples import backprop_digits as bp

import fundl as fl
from fundl import runs
from fundl.models import gan, gan_loss, gan_optimizer, gan_samples, mlp_gan, sample_quality
from fundl.train import TrainState, fit, initial_train_state


def quiet_run(example, settings, out):
    return runs.run(example, settings, out=str(out), quiet=True, echo=lambda _: None)


def is_zero(tree):
    return all(bool(jnp.all(leaf == 0)) for leaf in jax.tree.leaves(tree))


def close(a, b, rtol=1e-5, atol=1e-6):
    return all(np.allclose(x, y, rtol=rtol, atol=atol) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# --- GAN: the model and the loss's gradient structure --------------------------------------


@pytest.fixture(scope="module")
def small_gan():
    g = mlp_gan((8, 8), latent=4, generator_hidden=(16,), discriminator_hidden=(16,))
    _, params, state = g.model.init(jax.random.key(0), (5, 4))
    x = jax.random.uniform(jax.random.key(1), (5, 8, 8))
    return g, params, state, {"image": x}


def test_gan_model_shapes(small_gan):
    g, params, state, _ = small_gan
    assert set(params) == {"generator", "discriminator"} and state == {}
    assert fl.summary(g.model, (5, 4))  # the summary walks both players
    images = gan_samples(g, params, jax.random.key(2), 7)
    assert images.shape == (7, 8, 8) and bool(jnp.all((images >= 0) & (images <= 1)))
    out, _ = g.model.apply(params, state, jnp.zeros((3, 4)))
    assert out.shape == (3, 8, 8)


def test_gan_init_errors():
    g = fl.serial(fl.dense(64), fl.reshape((8, 8)))
    with pytest.raises(fl.LayerError, match=r"one logit per image.*got \(2, 8, 3\)"):
        gan(g, fl.dense(3), latent=4).model.init(jax.random.key(0), (2, 4))
    with pytest.raises(fl.LayerError, match=r"noise z, shape \(batch, latent=4\); got input shape \(2, 8, 8\)"):
        gan(g, fl.serial(fl.flatten(), fl.dense(1)), latent=4).model.init(jax.random.key(0), (2, 8, 8))


def test_gan_loss_each_term_reaches_only_its_player(small_gan):
    g, params, state, batch = small_gan
    key = jax.random.key(3)
    term_grad = lambda name: jax.grad(lambda p: gan_loss(g)(p, state, batch, key)[1][1][name])  # noqa: E731
    d_grads, g_grads = jax.jit(lambda p: (term_grad("d_loss")(p), term_grad("g_loss")(p)))(params)
    assert is_zero(d_grads["generator"]) and not is_zero(d_grads["discriminator"])
    assert is_zero(g_grads["discriminator"]) and not is_zero(g_grads["generator"])


def test_gan_loss_gradient_is_each_players_own(small_gan):
    """The one gradient equals, player by player, the gradient of that player's usual loss."""
    g, params, state, batch = small_gan
    key = jax.random.key(3)
    z = jax.random.normal(fl._combinators.child_key(key, "z"), (5, 4))  # the noise the loss draws
    gen = lambda gp: g.generator.apply(gp, {}, z)[0]  # noqa: E731
    disc = lambda dp, x: g.discriminator.apply(dp, {}, x)[0][:, 0]  # noqa: E731

    @jax.jit
    def gradients(params):
        fake = gen(params["generator"])

        def d_usual(dp):
            return jnp.mean(jax.nn.softplus(-disc(dp, batch["image"]))) + jnp.mean(jax.nn.softplus(disc(dp, fake)))

        g_usual = lambda gp: jnp.mean(jax.nn.softplus(-disc(params["discriminator"], gen(gp))))  # noqa: E731
        (loss, (new_state, metrics)), grads = jax.value_and_grad(gan_loss(g), has_aux=True)(params, state, batch, key)
        return (
            loss,
            new_state,
            metrics,
            grads,
            jax.grad(d_usual)(params["discriminator"]),
            jax.grad(g_usual)(params["generator"]),
        )

    loss, new_state, metrics, grads, d_grads, g_grads = gradients(params)
    assert np.isclose(loss, metrics["d_loss"] + metrics["g_loss"]) and new_state == {}
    assert close(grads["discriminator"], d_grads) and close(grads["generator"], g_grads)


def test_gan_optimizer_is_one_optimizer_per_player(small_gan):
    """Two Adams by top-level key equal one Adam over the whole tree (Adam is elementwise)."""
    _, params, _, _ = small_gan
    grads = [jax.tree.map(lambda p, i=i: jnp.sin(p * (i + 1)) + 0.1, params) for i in range(3)]

    @jax.jit
    def three_steps(params):
        results = []
        for opt in (gan_optimizer(optax.adam(0.01), optax.adam(0.01)), optax.adam(0.01)):
            p, s = params, opt.init(params)
            for grad in grads:
                updates, s = opt.update(grad, s, p)
                p = optax.apply_updates(p, updates)
            results.append(p)
        mixed = gan_optimizer(optax.sgd(1.0), optax.sgd(0.0))  # the discriminator's rate is zero
        return results, mixed.update(grads[0], mixed.init(params), params)[0]

    results, updates = three_steps(params)
    assert close(*results, rtol=1e-6, atol=1e-7)
    assert is_zero(updates["discriminator"]) and not is_zero(updates["generator"])
    with pytest.raises(ValueError, match=r"top-level keys \['generator', 'discriminator'\].*got \['dense_0'\]"):
        gan_optimizer(optax.sgd(1.0), optax.sgd(1.0)).init({"dense_0": {"w": jnp.zeros(2)}})


def test_gan_optimizer_alternate_takes_turns(small_gan):
    """Through fit: the discriminator moves on steps 1 and 3, the generator on step 2."""
    g, params, state, batch = small_gan
    opt = gan_optimizer(optax.adam(0.01), optax.adam(0.01), alternate=True)
    seen = [params]
    keep = lambda event: seen.append(jax.device_get(event.train_state.params)) if event.kind == "log" else None  # noqa: E731
    fit(
        gan_loss(g),
        opt,
        TrainState.create(params, state, opt, jax.random.key(4)),
        batch,
        batch_size=5,
        steps=3,
        log_every=1,
        hooks=[keep],
        quiet=True,
    )
    moved = [{name: not close(a[name], b[name], rtol=0, atol=0) for name in a} for a, b in zip(seen, seen[1:])]
    assert moved == [
        {"generator": False, "discriminator": True},
        {"generator": True, "discriminator": False},
        {"generator": False, "discriminator": True},
    ]


# --- The quality metric on hand-made cases -------------------------------------------------


def test_sample_quality_hand_made():
    uniform = sample_quality(np.eye(10)[np.arange(100) % 10])
    assert uniform["mean_max_prob"] == 1.0 and math.isclose(uniform["class_entropy"], math.log(10))
    collapsed = sample_quality(np.tile([0.1, 0.7, 0.2], (6, 1)))
    assert math.isclose(collapsed["mean_max_prob"], 0.7) and collapsed["class_entropy"] == 0.0
    assert collapsed["class_counts"] == [0, 6, 0]
    probs = np.array([[0.5, 0.3, 0.2], [1.0, 0, 0], [0, 1.0, 0], [0.25, 0.25, 0.5]])  # classes 0, 0, 1, 2
    mixed = sample_quality(probs)
    assert math.isclose(mixed["mean_max_prob"], 0.75)
    assert math.isclose(mixed["class_entropy"], -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))
    with pytest.raises(ValueError, match=r"\(n, classes\).*got \(10,\)"):
        sample_quality(np.ones(10))


def test_gan_example_runs(tmp_path):
    settings = [("train.epochs", 2), ("judge.epochs", 0), ("judge.samples", 95)]  # an untrained judge: files only
    done = quiet_run("gan_digits", settings, tmp_path / "run")
    directory = done.directory
    for name in ("samples.png", "samples_by_epoch.png", "gan_quality.json", "classifier/summary.json"):
        assert (directory / name).stat().st_size > 0, name
    assert np.load(directory / "samples_by_epoch.npy").shape == (2, 10, 8, 8)
    quality = json.loads((directory / "gan_quality.json").read_text())
    assert sum(quality["class_counts"]) == 95 and 0 < quality["mean_max_prob"] <= 1
    assert 0 <= quality["class_entropy"] <= math.log(10) + 1e-9
    test = done.summary["metrics"]["test"]
    assert all(math.isfinite(v) for v in test.values())
    assert test["d_real"] > test["d_fake"]  # the discriminator has learnt something in 46 steps


# --- Backprop by hand ----------------------------------------------------------------------

MODELS = {"logreg": bp.logistic_regression(), "sigmoid": bp.sigmoid_network(7, 0.5)}


def random_problem(model, dtype):
    """Params of ``model``'s shapes (random, not the zero start), inputs ``(6, 64)`` and one-hot targets, as NumPy."""
    rng = np.random.default_rng(0)
    shapes = jax.eval_shape(lambda key: model.init(key, 64), jax.random.key(0))
    params = jax.tree.map(lambda p: (0.3 * rng.standard_normal(p.shape)).astype(dtype), shapes)
    x = rng.standard_normal((6, 64)).astype(dtype)
    targets = np.eye(10, dtype=dtype)[[0, 3, 9, 3, 1, 5]]
    return params, x, targets


def hand_and_autodiff(model, params, x, targets):
    """Both gradients (params, x and targets) and their relative difference, in one compiled call."""
    grads = lambda loss: jax.grad(loss, argnums=(0, 1, 2))(params, x, targets)  # noqa: E731
    hand, auto = grads(bp.hand_loss(model)), grads(bp.autodiff_loss(model))
    return hand, auto, bp.relative_difference(hand, auto)


@pytest.mark.parametrize("name", MODELS)
def test_hand_gradients_match_jax_grad_float64(name):
    model = MODELS[name]
    with jax.enable_x64(True):
        hand, auto, difference = jax.jit(hand_and_autodiff, static_argnums=0)(
            model, *random_problem(model, jnp.float64)
        )
        assert {leaf.dtype for leaf in jax.tree.leaves(hand)} == {jnp.dtype(jnp.float64)}
        assert not is_zero(hand[1]) and not is_zero(hand[2])  # the inputs' and targets' gradients are checked too
        assert float(difference) < 1e-12  # well within 1e-5: equal to rounding


@pytest.mark.parametrize("name", MODELS)
def test_hand_gradients_match_jax_grad_float32(name):
    model = MODELS[name]
    _, _, difference = jax.jit(hand_and_autodiff, static_argnums=0)(model, *random_problem(model, jnp.float32))
    assert float(difference) < 1e-5


def test_the_hand_written_backward_is_what_grad_returns():
    """A backward pass that doubles its gradients doubles what jax.grad (hence fit) gets."""
    model = MODELS["sigmoid"]
    doubled = model._replace(backward=lambda p, c, d: jax.tree.map(lambda g: 2 * g, model.backward(p, c, d)))
    twice, once, _ = jax.jit(hand_and_autodiff, static_argnums=0)(doubled, *random_problem(model, jnp.float32))
    assert close(twice[0], jax.tree.map(lambda g: 2 * g, once[0]))


def test_hand_forward_matches_jax_nn():
    z = jnp.array([[-100.0, -1.0, 0.0, 2.0, 100.0]])
    assert np.allclose(bp.sigmoid(z), jax.nn.sigmoid(z)) and np.allclose(bp.log_softmax(z), jax.nn.log_softmax(z))
    targets = jax.nn.one_hot(jnp.array([3]), 5)
    assert np.isclose(bp.cross_entropy(z, targets), optax.softmax_cross_entropy(z, targets)[0])


@pytest.mark.parametrize("model", ["logreg", "sigmoid"])
def test_initial_loss_is_ln_10(model):
    module = runs.load_example("backprop_digits")
    config = runs.resolve_config(module, [("model", model)])
    experiment = module.experiment(config)
    train_state = initial_train_state(experiment.model, experiment.input_shape, optax.sgd(0.01), config["seed"])
    loss, _ = jax.jit(experiment.loss_fn)(train_state.params, train_state.state, experiment.train_data, None)
    assert abs(float(loss) - math.log(10)) < 1e-3


def test_unknown_backprop_model():
    with pytest.raises(runs.ConfigError, match="unknown model 'relu'.*logreg, sigmoid"):
        bp.experiment(runs.resolve_config(bp, [("model", "relu")]))


@pytest.mark.parametrize("model", ["logreg", "sigmoid"])
def test_backprop_example_runs(tmp_path, model):
    settings = [("model", model), ("train.epochs", 1), ("optimizer.learning_rate", 0.1)]  # past the sigmoid plateau
    done = quiet_run("backprop_digits", settings, tmp_path / "run")
    train, test = done.summary["metrics"]["train"], done.summary["metrics"]["test"]
    assert done.summary["steps"] == 1222  # batch size 1: one step per training example (305 held out for validation)
    assert train["loss"] < math.log(10) - 0.01 and test["loss"] < math.log(10) - 0.01  # it learns from ln 10
    assert 0 <= test["grad_rel_diff"] < 1e-5 and math.isfinite(test["accuracy"])
