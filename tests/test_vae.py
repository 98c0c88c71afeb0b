"""The VAE family: builders, the ELBO's terms against NumPy, reparameterization, sampling, the example."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from layer_checks import as_shapes, random_input
from run_files import RUN_FILES

import fundl as fl
from fundl._combinators import child_key
from fundl.cli import main
from fundl.models._vae import (
    conv_vae,
    decode,
    encode,
    kl_standard_normal,
    mlp_vae,
    neg_elbo_loss,
    reconstruction_nll,
    reparameterize,
    sample_prior,
    vae,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def np_kl(mean, log_var):
    """KL(N(mean, var) || N(0, 1)) per dimension, written as log(1/sd) + (var + mean^2)/2 - 1/2."""
    sd = np.exp(0.5 * log_var)
    return np.sum(-np.log(sd) + (sd**2 + mean**2) / 2 - 0.5, axis=-1)


def np_bernoulli_nll(logits, x):
    p = np_sigmoid(logits.astype(np.float64))
    return -np.sum((x * np.log(p) + (1 - x) * np.log(1 - p)).reshape(len(x), -1), axis=-1)


def np_gaussian_nll(mean, x, sigma):
    density = np.exp(-((x - mean) ** 2) / (2 * sigma**2)) / np.sqrt(2 * np.pi * sigma**2)
    return -np.sum(np.log(density).reshape(len(x), -1), axis=-1)


@pytest.mark.parametrize(
    "v, input_shape",
    [
        (mlp_vae((8, 8), (32, 16), 3), (4, 8, 8)),
        (mlp_vae((64,), (), 1, likelihood="gaussian"), (4, 64)),
        (conv_vae((8, 8, 1), (4, 8), 3), (4, 8, 8, 1)),
        (conv_vae((8, 16, 2), (4,), 2, kernel_size=4), (3, 8, 16, 2)),
    ],
    ids=["mlp", "mlp-linear-gaussian", "conv", "conv-one-stage"],
)
def test_builders_shapes_agree_for_the_model_its_encoder_and_its_decoder(v, input_shape):
    batch, latent = input_shape[0], v.latent
    out_shape, params, _ = v.model.init(jax.random.key(0), input_shape)
    assert out_shape == (input_shape, (batch, latent), (batch, latent))
    apply = jax.jit(v.model.apply, static_argnames="train")  # one compilation instead of one per operation
    for key in (None, jax.random.key(3)):  # the posterior mean, and a sample of q(z|x)
        (out, mean, log_var), _ = apply(params, {}, random_input(input_shape), key=key, train=key is not None)
        assert (out.shape, mean.shape, log_var.shape) == out_shape
    assert set(params) == {"encoder", "decoder"}
    assert set(params["encoder"]["posterior"]) == {"mean", "log_var"}
    for part, shape in ((v.encoder, input_shape), (v.decoder, (batch, latent))):
        part_shape, part_params, _ = part.init(jax.random.key(0), shape)
        assert as_shapes(part_shape) == jax.tree.map(
            jnp.shape, jax.jit(part.apply)(part_params, {}, random_input(shape))[0]
        )


def test_without_a_key_the_model_decodes_the_posterior_mean_and_with_one_a_sample():
    v = mlp_vae((8, 8), (16,), 2)
    _, params, state = v.model.init(jax.random.key(0), (5, 8, 8))
    x = jax.random.uniform(jax.random.key(1), (5, 8, 8))
    (out, mean, log_var), _ = v.model.apply(params, state, x)
    np.testing.assert_array_equal(out, v.decoder.apply(params["decoder"], {}, mean)[0])
    (sampled, _, _), _ = v.model.apply(params, state, x, key=jax.random.key(2), train=True)
    z = reparameterize(child_key(jax.random.key(2), "z"), mean, log_var)
    np.testing.assert_allclose(sampled, v.decoder.apply(params["decoder"], {}, z)[0], rtol=1e-6)
    assert not np.allclose(sampled, out)


def test_kl_matches_the_closed_form_and_is_never_negative():
    rng = np.random.default_rng(0)
    mean, log_var = rng.normal(size=(6, 4)).astype(np.float32), rng.normal(size=(6, 4)).astype(np.float32)
    np.testing.assert_allclose(kl_standard_normal(mean, log_var), np_kl(mean, log_var), rtol=1e-5)
    assert np.all(kl_standard_normal(np.zeros((2, 3)), np.zeros((2, 3))) == 0)  # q equals the prior
    mean, log_var = 5 * rng.normal(size=(1000, 8)), 4 * rng.normal(size=(1000, 8))
    assert np.all(np.asarray(kl_standard_normal(mean, log_var)) >= 0)


def test_reconstruction_terms_match_the_log_likelihoods_in_numpy():
    rng = np.random.default_rng(1)
    out = rng.normal(size=(3, 8, 8)).astype(np.float32)
    x = (rng.integers(0, 17, size=(3, 8, 8)) / 16).astype(np.float32)  # grey levels, like the digits
    np.testing.assert_allclose(reconstruction_nll(out, x), np_bernoulli_nll(out, x), rtol=1e-5)
    np.testing.assert_allclose(
        reconstruction_nll(out, x, "gaussian", sigma=0.3), np_gaussian_nll(out, x, 0.3), rtol=1e-5
    )
    with pytest.raises(ValueError, match=r"shape \(3, 8, 8\), got \(3, 64\)"):
        reconstruction_nll(out, x.reshape(3, 64))


def test_neg_elbo_loss_is_the_batch_mean_of_reconstruction_plus_kl_and_evaluation_is_deterministic():
    v = mlp_vae((8, 8), (16,), 2)
    _, params, state = v.model.init(jax.random.key(0), (6, 8, 8))
    batch = {"image": jax.random.uniform(jax.random.key(1), (6, 8, 8))}
    loss_fn = neg_elbo_loss(v)
    key = jax.random.key(4)
    loss, (new_state, metrics) = loss_fn(params, state, batch, key)
    (logits, mean, log_var), _ = v.model.apply(params, state, batch["image"], key=key, train=True)
    x = np.asarray(batch["image"])
    rec, kl = (
        np_bernoulli_nll(np.asarray(logits), x),
        np_kl(np.asarray(mean, np.float64), np.asarray(log_var, np.float64)),
    )
    np.testing.assert_allclose(loss, np.mean(rec + kl), rtol=1e-5)
    np.testing.assert_allclose([metrics["reconstruction"], metrics["kl"]], [rec.mean(), kl.mean()], rtol=1e-5)
    assert metrics["neg_elbo"] == loss and new_state == state

    evaluate = lambda: loss_fn(params, state, batch, None, train=False)[0]  # noqa: E731
    assert evaluate() == evaluate() == loss_fn(params, state, batch, jax.random.key(0), train=False)[0]
    assert evaluate() != loss  # a sample, not the posterior mean: the fixed key is a real key


def test_reparameterization_is_a_function_of_the_key_and_differentiable():
    mean, log_var = jnp.array([[0.5, -1.0, 2.0]]), jnp.array([[0.1, -0.7, 0.3]])
    z = reparameterize(jax.random.key(1), mean, log_var)
    np.testing.assert_array_equal(z, reparameterize(jax.random.key(1), mean, log_var))
    assert not np.allclose(z, reparameterize(jax.random.key(2), mean, log_var))
    eps = jax.random.normal(jax.random.key(1), (1, 3))
    np.testing.assert_allclose(z, mean + np.exp(log_var / 2) * eps, rtol=1e-6)

    with jax.enable_x64(True):
        m, lv = mean.astype(jnp.float64), log_var.astype(jnp.float64)
        f = lambda m, lv: jnp.sum(jnp.sin(reparameterize(jax.random.key(1), m, lv)))  # noqa: E731
        check_grads(f, (m, lv), order=2, modes=("fwd", "rev"), atol=1e-6, rtol=1e-6)
        grad_mean, grad_log_var = jax.grad(f, argnums=(0, 1))(m, lv)
        assert np.all(np.asarray(grad_mean) != 0) and np.all(np.asarray(grad_log_var) != 0)


def test_sampling_is_deterministic_for_a_key_and_gives_images_in_the_unit_interval():
    v = conv_vae((8, 8, 1), (4, 8), 3)
    _, params, state = v.model.init(jax.random.key(0), (2, 8, 8, 1))
    images = sample_prior(v, params, jax.random.key(5), 7, state=state)
    assert images.shape == (7, 8, 8, 1)
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    np.testing.assert_array_equal(images, sample_prior(v, params, jax.random.key(5), 7))
    assert not np.allclose(images, sample_prior(v, params, jax.random.key(6), 7))
    x = jax.random.uniform(jax.random.key(1), (2, 8, 8, 1))
    mean, _ = encode(v, params, x)
    (logits, _, _), _ = v.model.apply(params, state, x)
    np.testing.assert_allclose(decode(v, params, mean), jax.nn.sigmoid(logits), rtol=1e-6)


@pytest.mark.parametrize(
    "build",
    [
        lambda latent: mlp_vae((8, 8), (16,), latent),
        lambda latent: conv_vae((8, 8, 1), (4,), latent),
        lambda latent: vae(fl.serial(fl.dense(4), fl.fan_out(2)), fl.dense(4), latent=latent),
    ],
    ids=["mlp_vae", "conv_vae", "vae"],
)
@pytest.mark.parametrize("latent", [0, -3])
def test_a_latent_size_below_one_names_the_argument_and_value(build, latent):
    with pytest.raises(fl.LayerError, match=rf"`latent` must be a positive integer, got {latent}"):
        build(latent)


def test_errors_for_unknown_likelihoods_and_shapes_the_decoder_cannot_produce():
    with pytest.raises(ValueError, match=r"unknown likelihood 'poisson'; expected one of 'bernoulli', 'gaussian'"):
        mlp_vae((8, 8), (16,), 2, likelihood="poisson")
    with pytest.raises(ValueError, match=r"unknown likelihood 'Gaussian'; expected one of 'bernoulli', 'gaussian'"):
        conv_vae((8, 8, 1), (4,), 2, likelihood="Gaussian")
    with pytest.raises(fl.LayerError, match=r"cannot produce images of shape \(7, 7, 1\).*multiples of 4, got 7x7"):
        conv_vae((7, 7, 1), (4, 8), 2)
    with pytest.raises(fl.LayerError, match=r"\(height, width, channels\), got \(8, 8\).*e\.g\. \(8, 8, 1\)"):
        conv_vae((8, 8), (4,), 2)
    with pytest.raises(ValueError, match=r"`sigma` must be a positive number, got 0"):
        neg_elbo_loss(mlp_vae((8, 8), (16,), 2, likelihood="gaussian"), sigma=0)


def test_vae_checks_what_its_encoder_and_decoder_output():
    heads = fl.branch(fl.named("mean", fl.dense(2)), fl.named("log_var", fl.dense(2)))
    decoder = fl.serial(fl.dense(64), fl.reshape((8, 8)))
    with pytest.raises(
        fl.LayerError, match=r"encoder must output \(mean, log_var\).*latent=2.*got output shape \(4, 2\)"
    ):
        vae(fl.serial(fl.flatten(), fl.dense(2)), decoder, latent=2).model.init(jax.random.key(0), (4, 8, 8))
    with pytest.raises(fl.LayerError, match=r"latent=3"):
        vae(fl.serial(fl.flatten(), heads), decoder, latent=3).model.init(jax.random.key(0), (4, 8, 8))
    with pytest.raises(
        fl.LayerError,
        match=r"decoder maps latents \(4, 2\) to \(4, 64\).*inputs, of shape \(4, 8, 8\).*reshape\(\(8, 8\)\)",
    ):
        vae(fl.serial(fl.flatten(), heads), fl.dense(64), latent=2).model.init(jax.random.key(0), (4, 8, 8))
    with pytest.raises(
        fl.LayerError, match=r"to \(2, 8, 8, 1\), but a VAE reconstructs its inputs, of shape \(2, 16, 16, 1\)"
    ):
        conv_vae((8, 8, 1), (4,), 2).model.init(jax.random.key(0), (2, 16, 16, 1))  # images it was not built for


def test_params_that_do_not_match_the_vae_name_the_entry():
    v = mlp_vae((8, 8), (16,), 2)
    _, params, state = v.model.init(jax.random.key(0), (4, 8, 8))
    x = jnp.zeros((4, 8, 8))
    with pytest.raises(
        fl.LayerError,
        match=r"vae params have unexpected entries \['extra'\]; its children are \['encoder', 'decoder'\]",
    ):
        v.model.apply({**params, "extra": {}}, state, x)
    with pytest.raises(fl.LayerError, match=r"decoder: serial params have unexpected entries"):
        v.model.apply({**params, "decoder": {"stray": {}}}, state, x)


def test_fundl_run_vae_digits_tiny_lowers_the_held_out_neg_elbo_and_writes_its_pictures(tmp_path):
    out = tmp_path / "run"
    settings = ["train.steps=80", "train.eval_every=4", "train.eval_batch_size=270"]
    assert main(["run", "vae_digits", "--out", str(out), "--quiet", *[a for s in settings for a in ("--set", s)]]) == 0
    pictures = {"samples.png", "reconstructions.png", "latent.png"}
    expected = set(RUN_FILES)
    assert {p.name for p in out.iterdir()} == expected | pictures
    for name in pictures | {"curves.png"}:
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 2000, name

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    validation = [r for r in records if r["split"] == "validation"]
    assert [r["step"] for r in validation] == list(range(4, 81, 4))
    assert all({"neg_elbo", "reconstruction", "kl"} <= set(r) for r in records)
    assert [r["split"] for r in records if r["split"] not in ("train", "validation")] == ["test"]  # once, at the end
    assert all(r["kl"] >= 0 for r in records)
    assert validation[-1]["neg_elbo"] <= 0.7 * validation[0]["neg_elbo"], [r["neg_elbo"] for r in validation]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"]["test"]["neg_elbo"] == records[-1]["neg_elbo"] and records[-1]["step"] == 80
    assert json.loads((out / "config.json").read_text())["model"]["latent"] == 2
