"""Generative adversarial networks trained by the one ``fit``: two players, one loss, one gradient.

A GAN's model is an ordinary :class:`fundl.Layer` with params ``{"generator": ...,
"discriminator": ...}``. ``fit`` takes one gradient of one scalar loss per step, so
:func:`gan_loss` adds the two players' losses, each written so that it reaches only its
own player's params (the non-saturating GAN, D's logits ``d(x)``, ``z ~ N(0, I)``)::

    loss = mean(softplus(-d(x))) + mean(softplus(d(stop_gradient(g(z)))))   # discriminator
         + mean(softplus(-d_frozen(g(z))))                                  # generator

where ``d_frozen`` is the discriminator with ``stop_gradient`` on its params. The one
gradient then holds exactly each player's own gradient: the discriminator's term gives
none to the generator and the generator's term none to the discriminator.
:func:`gan_optimizer` gives each player its own optax optimizer (``multi_transform``,
labelled by top-level key), and can make the players take turns.

Example:
  >>> g = mlp_gan((8, 8), latent=16)
  >>> _, params, state = g.model.init(jax.random.key(0), (64, 16))   # input: z (batch, latent)
  >>> optimizer = gan_optimizer(optax.adam(2e-4, b1=0.5), optax.adam(2e-4, b1=0.5))
  >>> fit(gan_loss(g), optimizer, TrainState.create(params, state, optimizer, key), data, ...)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from fundl._combinators import apply_child, check_entries, child_key, init_child, keep_nonempty, serial
from fundl._core import Array, EvalMode, Key, Layer, LayerError, Loss, Params, Shape, State, check_positive, check_sizes
from fundl.layers import dense, flatten, leaky_relu, reshape, sigmoid

PLAYERS = ["generator", "discriminator"]

_DISCRIMINATOR_OUTPUT = (
    "gan: the discriminator must output one logit per image, shape (batch,) or (batch, 1); got {got} "
    "for images {images}: end it with flatten() and dense(1)"
)


class GAN(NamedTuple):
    """A generative adversarial network: the layer to train and its two players.

    Attributes:
      model: the layer to train, params ``{"generator", "discriminator"}``; its input is
        the noise ``z (batch, latent)`` and its output the generated images ``(batch, *image)``.
      generator: ``z (batch, latent) -> images (batch, *image)``.
      discriminator: ``images (batch, *image) -> logits (batch, 1)`` (or ``(batch,)``):
        large for images it takes for real ones.
      latent: the size of ``z``.
    """

    model: Layer
    generator: Layer
    discriminator: Layer
    latent: int


def gan(generator: Layer, discriminator: Layer, *, latent: int) -> GAN:
    """Joins a generator and a discriminator into a GAN whose model has params ``{"generator", "discriminator"}``.

    Init (with the noise's shape ``(batch, latent)``) checks that the discriminator reads
    the generator's images and outputs one logit per image.

    Args:
      generator: ``z (batch, latent) -> images (batch, *image)``.
      discriminator: ``images (batch, *image) -> logits (batch, 1)``.
      latent: the size of ``z`` (a positive int).

    Example:
      >>> g = gan(serial(dense(64), sigmoid(), reshape((8, 8))), serial(flatten(), dense(1)), latent=8)
    """
    check_positive("gan", latent=latent)
    for arg, layer in (("generator", generator), ("discriminator", discriminator)):
        if not isinstance(layer, Layer):
            raise LayerError(f"gan: `{arg}` must be a Layer, got {type(layer).__name__}")

    def init(key: Key, input_shape: Shape) -> tuple[Shape, Params, State]:
        if len(input_shape) != 2 or input_shape[-1] != latent:
            raise LayerError(
                "gan: the model's input is the noise z, shape (batch, "
                f"latent={latent}); got input shape {tuple(input_shape)}"
            )
        images, g_params, g_state = init_child("generator", generator, key, input_shape)
        logits, d_params, d_state = init_child("discriminator", discriminator, key, images)
        if tuple(logits) not in ((images[0],), (images[0], 1)):
            raise LayerError(_DISCRIMINATOR_OUTPUT.format(got=tuple(logits), images=tuple(images)))
        params = keep_nonempty({"generator": g_params, "discriminator": d_params})
        return tuple(images), params, keep_nonempty({"generator": g_state, "discriminator": d_state})

    def apply(params, state, z, *, key=None, train=False):
        check_entries("gan", params, "params", PLAYERS)
        check_entries("gan", state, "state", PLAYERS)
        images, g_state = apply_child("generator", generator, params, state, z, key, train)
        return images, keep_nonempty({**state, "generator": g_state})

    return GAN(Layer(init, apply, "gan"), generator, discriminator, latent)


def mlp_gan(
    image_shape: Sequence[int],
    latent: int = 16,
    *,
    generator_hidden: Sequence[int] = (128, 256),
    discriminator_hidden: Sequence[int] = (256, 128),
    negative_slope: float = 0.2,
) -> GAN:
    """A GAN with dense players and leaky-ReLU hidden layers; images in [0, 1].

    Generator: (dense(h) -> leaky_relu per ``generator_hidden``) -> dense -> sigmoid ->
    reshape(image_shape). Discriminator: flatten -> (dense(h) -> leaky_relu per
    ``discriminator_hidden``) -> dense(1).

    Args:
      image_shape: one image's shape without the batch axis, e.g. ``(8, 8)``.
      latent: the size of the noise ``z``.
      generator_hidden, discriminator_hidden: the players' hidden widths.
      negative_slope: of the leaky ReLUs.
    """
    image_shape = tuple(image_shape)
    check_positive("mlp_gan", latent=latent)
    check_sizes("mlp_gan", image_shape=image_shape)
    for arg, widths in (("generator_hidden", generator_hidden), ("discriminator_hidden", discriminator_hidden)):
        if widths:
            check_sizes("mlp_gan", **{arg: tuple(widths)})
    block = lambda widths: [layer for h in widths for layer in (dense(h), leaky_relu(negative_slope))]  # noqa: E731
    generator = serial(*block(generator_hidden), dense(math.prod(image_shape)), sigmoid(), reshape(image_shape))
    discriminator = serial(flatten(), *block(discriminator_hidden), dense(1))
    return gan(generator, discriminator, latent=latent)


def gan_loss(g: GAN, *, inputs: str = "image") -> Loss:
    """Both players' non-saturating GAN losses as one loss for ``fit`` (see the module docstring).

    The noise ``z (batch, latent)`` comes from the step's key; evaluation (``key=None``)
    uses the fixed key ``jax.random.key(0)``. Metrics: ``d_loss`` and ``g_loss`` (the
    players' terms; the loss is their sum), ``d_real`` and ``d_fake`` (the
    discriminator's mean probability that real, and generated, images are real).

    Args:
      g: the GAN.
      inputs: the batch entry holding the real images, ``batch[inputs] (batch, *image)``.

    Example:
      >>> loss, (state, metrics) = gan_loss(g)(params, state, {"image": x}, key)
    """

    def loss_fn(params, state, batch, key, *, train=True):
        x = batch[inputs]
        key = jax.random.key(0) if key is None else key
        z = jax.random.normal(child_key(key, "z"), (jnp.shape(x)[0], g.latent), jnp.result_type(x))
        fake, g_state = apply_child("generator", g.generator, params, state, z, key, train)

        def discriminate(d_params, d_state, images):
            logits, d_state = apply_child(
                "discriminator",
                g.discriminator,
                {"discriminator": d_params},
                {"discriminator": d_state},
                images,
                key,
                train,
            )
            return jnp.reshape(logits, (-1,)), d_state

        d_params, d_state = params.get("discriminator", {}), state.get("discriminator", {})
        real_logits, d_state = discriminate(d_params, d_state, x)
        fake_logits, d_state = discriminate(d_params, d_state, lax.stop_gradient(fake))  # reaches D only
        frozen_logits, _ = discriminate(lax.stop_gradient(d_params), d_state, fake)  # reaches G only
        d_loss = jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))
        g_loss = jnp.mean(jax.nn.softplus(-frozen_logits))
        metrics = {
            "d_loss": d_loss,
            "g_loss": g_loss,
            "d_real": jnp.mean(jax.nn.sigmoid(real_logits)),
            "d_fake": jnp.mean(jax.nn.sigmoid(fake_logits)),
        }
        new_state = keep_nonempty({"generator": g_state, "discriminator": d_state})
        return d_loss + g_loss, (new_state, metrics)

    return Loss(loss_fn, EvalMode(loss_fn))


def gan_optimizer(
    generator: optax.GradientTransformation, discriminator: optax.GradientTransformation, *, alternate: bool = False
) -> optax.GradientTransformation:
    """One optax optimizer per player, for params ``{"generator": ..., "discriminator": ...}``.

    With ``alternate=True`` the players take turns: the discriminator is updated on even
    steps (0, 2, ...), the generator on odd steps, and the resting player's optimizer state
    stands still. Since each step's gradient is taken at the params left by the step
    before, the generator's gradient is then taken against the discriminator just
    updated, as in the usual alternating GAN loop, at the price of two ``fit`` steps per
    round (each computing both players' gradients).

    Example:
      >>> optimizer = gan_optimizer(optax.adam(2e-4, b1=0.5), optax.adam(2e-4, b1=0.5), alternate=True)
    """
    if alternate:
        generator = optax.transforms.conditionally_mask(generator, lambda step: step % 2 == 1)
        discriminator = optax.transforms.conditionally_mask(discriminator, lambda step: step % 2 == 0)

    def labels(params):
        if not isinstance(params, dict) or not set(params) <= set(PLAYERS):
            got = sorted(params) if isinstance(params, dict) else type(params).__name__
            raise ValueError(
                f"gan_optimizer expects params with the top-level keys {PLAYERS} (a GAN model's), got {got}"
            )
        return {name: jax.tree.map(lambda _: name, tree) for name, tree in params.items()}

    return optax.multi_transform({"generator": generator, "discriminator": discriminator}, labels)


def gan_samples(g: GAN, params: Params, key: Key, n: int, *, state: State | None = None) -> Array:
    """``n`` images from the generator for ``z ~ N(0, I)`` drawn from ``key``: ``(n, *image)``.

    ``params`` and ``state`` are the whole model's (as in the train state).

    Example:
      >>> images = gan_samples(g, train_state.params, jax.random.key(0), 100)
    """
    check_positive("gan_samples", n=n)
    images, _ = g.generator.apply(
        params["generator"], (state or {}).get("generator", {}), jax.random.normal(key, (n, g.latent))
    )
    return images


def sample_quality(probs: np.ndarray) -> dict[str, float | list[int]]:
    """How a classifier sees generated samples: confident (sharp) and varied (no mode collapse).

    Args:
      probs: the classifier's class probabilities for each sample, ``(n, classes)``.

    Returns:
      ``mean_max_prob``: the mean over samples of the largest class probability (1 when
      every sample is classified with certainty); ``class_entropy``: the entropy, in nats,
      of the histogram of predicted classes (``ln(classes)`` when they are equally
      frequent, 0 when every sample gets the same class); ``class_counts``: the histogram.

    Example:
      >>> sample_quality(np.eye(10)[np.arange(100) % 10])   # mean_max_prob 1.0, class_entropy ln 10
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) == 0:
        raise ValueError(
            f"sample_quality expects class probabilities of shape (n, classes) with n >= 1, got {probs.shape}"
        )
    counts = np.bincount(probs.argmax(axis=1), minlength=probs.shape[1])
    frequencies = counts[counts > 0] / len(probs)
    return {
        "mean_max_prob": float(probs.max(axis=1).mean()),
        "class_entropy": float(-np.sum(frequencies * np.log(frequencies))),
        "class_counts": counts.tolist(),
    }
