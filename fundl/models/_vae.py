"""Variational autoencoders: an encoder to q(z|x), a decoder to p(x|z), the negative ELBO as the loss.

A VAE is trained by the same :func:`fundl.train.fit` as any model: its ``model`` is an
ordinary :class:`fundl.Layer` and :func:`neg_elbo_loss` is a loss function of the form
``fit`` takes. Per example, with ``q(z|x) = N(mean, diag(exp(log_var)))`` and the prior
``p(z) = N(0, I)``::

    neg_elbo(x) = -E_q[log p(x|z)] + KL(q(z|x) || p(z))
                =  reconstruction   + kl

The expectation is estimated with one sample ``z = mean + exp(log_var / 2) * eps``,
``eps ~ N(0, I)`` drawn from an explicit key (the reparameterization trick: ``z`` is a
differentiable function of ``mean`` and ``log_var``); the KL term is exact.

Example:
  >>> v = mlp_vae((8, 8), hidden=(128,), latent=2)
  >>> loss_fn = neg_elbo_loss(v)              # for fit(loss_fn, optimizer, train_state, data, ...)
  >>> images = sample_prior(v, params, jax.random.key(0), 16)   # (16, 8, 8) in [0, 1]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from fundl._combinators import apply_child, branch, check_entries, child_key, init_child, keep_nonempty, named, serial
from fundl._core import Array, EvalMode, Key, Layer, LayerError, Loss, Params, Shape, State, check_positive, check_sizes
from fundl.layers import conv2d, conv2d_transpose, dense, flatten, relu, reshape

PARTS = ["encoder", "decoder"]
LIKELIHOODS = ("bernoulli", "gaussian")
"""``"bernoulli"``: the decoder outputs logits, ``p(x|z) = Bernoulli(sigmoid(logits))``;
``"gaussian"``: the decoder outputs means, ``p(x|z) = N(mean, sigma^2 I)`` with a fixed sigma."""

_ENCODER_OUTPUT = (
    "vae: the encoder must output (mean, log_var), two arrays of shape (batch, latent={latent}); "
    "got output shape {got}: end the encoder with branch(named('mean', dense({latent})), "
    "named('log_var', dense({latent})))"
)
_DECODER_OUTPUT = (
    "vae: the decoder maps latents {z} to {out}, but a VAE reconstructs its inputs, of shape {x}: "
    "end the decoder with reshape({image})"
)
_CONV_SHAPE = (
    "conv_vae: the decoder cannot produce images of shape {image}: its {n} stride-2 upsamplings "
    "(one per entry of `channels`) make height and width multiples of {m}, got {h}x{w}: pad or crop "
    "the images to multiples of {m}, or use fewer `channels`"
)


class VAE(NamedTuple):
    """A variational autoencoder: the layer to train and the parts that sampling needs.

    Attributes:
      model: the layer to train: ``x (batch, *image) -> (out (batch, *image), mean (batch,
        latent), log_var (batch, latent))``, params ``{"encoder": ..., "decoder": ...}``.
        Given a ``key`` it decodes a sample ``z`` of q(z|x); without one, ``z = mean``.
      encoder: ``x (batch, *image) -> (mean, log_var)``, each ``(batch, latent)``.
      decoder: ``z (batch, latent) -> out (batch, *image)``: logits (Bernoulli) or means (Gaussian).
      latent: the size of ``z``.
      likelihood: one of :data:`LIKELIHOODS`, how ``out`` is read.
    """

    model: Layer
    encoder: Layer
    decoder: Layer
    latent: int
    likelihood: str


def _check_likelihood(kind: str, likelihood: str) -> None:
    if likelihood not in LIKELIHOODS:
        allowed = ", ".join(repr(name) for name in LIKELIHOODS)
        raise LayerError(f"{kind}: unknown likelihood {likelihood!r}; expected one of {allowed}")


def reparameterize(key: Key, mean: Array, log_var: Array) -> Array:
    """A sample of ``N(mean, exp(log_var))`` as a differentiable function of ``mean`` and ``log_var``.

    Args:
      key: the randomness; the same key gives the same ``z``.
      mean, log_var: ``(batch, latent)``.

    Returns:
      ``z = mean + exp(log_var / 2) * eps`` with ``eps ~ N(0, I)`` drawn from ``key``: ``(batch, latent)``.
    """
    eps = jax.random.normal(key, jnp.shape(mean), jnp.result_type(mean))
    return mean + jnp.exp(0.5 * log_var) * eps


def kl_standard_normal(mean: Array, log_var: Array) -> Array:
    """``KL(N(mean, diag(exp(log_var))) || N(0, I))`` per example, in closed form.

    Args:
      mean, log_var: ``(batch, latent)``.

    Returns:
      ``0.5 * sum(exp(log_var) + mean**2 - 1 - log_var)`` over the latent axis: ``(batch,)``, each >= 0.
    """
    return 0.5 * jnp.sum(jnp.exp(log_var) + jnp.square(mean) - 1.0 - log_var, axis=-1)


def reconstruction_nll(out: Array, x: Array, likelihood: str = "bernoulli", *, sigma: float = 0.1) -> Array:
    """``-log p(x|z)`` per example, summed over every non-batch axis.

    Args:
      out: the decoder's output ``(batch, *image)``: logits for ``"bernoulli"``, means for ``"gaussian"``.
      x: the inputs, same shape. For ``"bernoulli"`` they lie in [0, 1]; grey levels are
        taken as soft targets (the sigmoid cross-entropy), the usual choice for images.
      likelihood: one of :data:`LIKELIHOODS`.
      sigma: the Gaussian's fixed standard deviation (in the units of ``x``).

    Returns:
      ``(batch,)``: Bernoulli ``sum(-x log sigmoid(out) - (1 - x) log(1 - sigmoid(out)))``; Gaussian
      ``sum((x - out)**2 / (2 sigma**2) + log(sigma) + log(2 pi) / 2)``.
    """
    _check_likelihood("reconstruction_nll", likelihood)
    if jnp.shape(out) != jnp.shape(x):
        raise ValueError(
            f"reconstruction_nll expects inputs x of the decoder's output shape {jnp.shape(out)}, got {jnp.shape(x)}"
        )
    if likelihood == "bernoulli":
        per_value = optax.losses.sigmoid_binary_cross_entropy(out, x)
    else:
        per_value = 0.5 * jnp.square((x - out) / sigma) + math.log(sigma) + 0.5 * math.log(2 * math.pi)
    return jnp.sum(jnp.reshape(per_value, (jnp.shape(x)[0], -1)), axis=-1)


def vae(encoder: Layer, decoder: Layer, *, latent: int, likelihood: str = "bernoulli") -> VAE:
    """Joins an encoder and a decoder into a VAE whose model has params ``{"encoder", "decoder"}``.

    Init checks that the encoder outputs ``(mean, log_var)`` of shape ``(batch, latent)`` and
    that the decoder maps them back to the input shape. The noise of ``z`` uses the model
    key folded with ``"z"``; the encoder and decoder get their own keys (for dropout).

    Args:
      encoder: ``x (batch, *image) -> (mean, log_var)``, each ``(batch, latent)``.
      decoder: ``z (batch, latent) -> out (batch, *image)``.
      latent: the size of ``z`` (a positive int).
      likelihood: one of :data:`LIKELIHOODS`: what the decoder outputs (logits or means).

    Example:
      >>> encoder = serial(flatten(), dense(64), relu(), branch(named("mean", dense(2)), named("log_var", dense(2))))
      >>> v = vae(encoder, serial(dense(64), relu(), dense(64), reshape((8, 8))), latent=2)
    """
    check_positive("vae", latent=latent)
    _check_likelihood("vae", likelihood)
    for arg, layer in (("encoder", encoder), ("decoder", decoder)):
        if not isinstance(layer, Layer):
            raise LayerError(f"vae: `{arg}` must be a Layer, got {type(layer).__name__}")

    def init(key: Key, input_shape: Shape) -> tuple[Shape, Params, State]:
        z_shapes, enc_params, enc_state = init_child("encoder", encoder, key, input_shape)
        pair = isinstance(z_shapes, tuple) and len(z_shapes) == 2 and all(isinstance(s, tuple) for s in z_shapes)
        if not (pair and z_shapes[0] == z_shapes[1] and len(z_shapes[0]) == 2 and z_shapes[0][-1] == latent):
            raise LayerError(_ENCODER_OUTPUT.format(latent=latent, got=z_shapes))
        out_shape, dec_params, dec_state = init_child("decoder", decoder, key, z_shapes[0])
        if tuple(out_shape) != tuple(input_shape):
            raise LayerError(
                _DECODER_OUTPUT.format(z=z_shapes[0], out=out_shape, x=tuple(input_shape), image=tuple(input_shape[1:]))
            )
        params = keep_nonempty({"encoder": enc_params, "decoder": dec_params})
        state = keep_nonempty({"encoder": enc_state, "decoder": dec_state})
        return (tuple(out_shape), *z_shapes), params, state

    def apply(params, state, x, *, key=None, train=False):
        check_entries("vae", params, "params", PARTS)
        check_entries("vae", state, "state", PARTS)
        (mean, log_var), enc_state = apply_child("encoder", encoder, params, state, x, key, train)
        z = mean if key is None else reparameterize(child_key(key, "z"), mean, log_var)
        out, dec_state = apply_child("decoder", decoder, params, state, z, key, train)
        new_state = keep_nonempty({"encoder": enc_state, "decoder": dec_state})
        return (out, mean, log_var), new_state

    return VAE(Layer(init, apply, "vae"), encoder, decoder, latent, likelihood)


def _posterior(latent: int) -> Layer:
    """The encoder's two heads: ``h (batch, features) -> (mean, log_var)``, each ``(batch, latent)``."""
    return named("posterior", branch(named("mean", dense(latent)), named("log_var", dense(latent))))


def mlp_vae(
    image_shape: Sequence[int], hidden: Sequence[int] = (256, 128), latent: int = 2, *, likelihood: str = "bernoulli"
) -> VAE:
    """A VAE with dense encoder and decoder, mirror images of each other.

    Encoder: flatten -> (dense(h) -> relu per ``hidden``) -> ``posterior`` (mean and log_var
    heads). Decoder: (dense(h) -> relu per reversed ``hidden``) -> dense -> reshape(image_shape).

    Args:
      image_shape: one example's shape without the batch axis, e.g. ``(8, 8)``.
      hidden: the encoder's hidden widths (the decoder uses them in reverse).
      latent: the size of ``z``.
      likelihood: one of :data:`LIKELIHOODS`.

    Example:
      >>> v = mlp_vae((8, 8), hidden=(128,), latent=2)
      >>> (logits, mean, log_var), _ = v.model.apply(params, state, x, key=key)  # x (32, 8, 8)
    """
    image_shape, hidden = tuple(image_shape), tuple(hidden)
    check_positive("mlp_vae", latent=latent)
    check_sizes("mlp_vae", image_shape=image_shape)
    _check_likelihood("mlp_vae", likelihood)
    if hidden:
        check_sizes("mlp_vae", hidden=hidden)
    encoder = serial(flatten(), *[layer for h in hidden for layer in (dense(h), relu())], _posterior(latent))
    decoder = serial(
        *[layer for h in reversed(hidden) for layer in (dense(h), relu())],
        dense(math.prod(image_shape)),
        reshape(image_shape),
    )
    return vae(encoder, decoder, latent=latent, likelihood=likelihood)


def conv_vae(
    image_shape: Sequence[int],
    channels: Sequence[int] = (16, 32),
    latent: int = 2,
    *,
    kernel_size: int = 3,
    likelihood: str = "bernoulli",
) -> VAE:
    """A convolutional VAE: stride-2 convolutions down, stride-2 transposed convolutions up.

    Encoder: (conv2d(c, stride 2) -> relu per ``channels``) -> flatten -> ``posterior``.
    Decoder: dense -> relu -> reshape to the smallest feature map -> (conv2d_transpose(c,
    stride 2) -> relu per reversed ``channels`` but the last) -> conv2d_transpose(image
    channels, stride 2). For 8x8x1 images and two channel counts: 8 -> 4 -> 2, then 2 -> 4 -> 8.

    Args:
      image_shape: ``(height, width, channels)``; height and width must be multiples of
        ``2 ** len(channels)`` for the decoder to produce them.
      channels: the encoder's channel counts (the decoder uses them in reverse).
      latent: the size of ``z``.
      kernel_size: of every convolution.
      likelihood: one of :data:`LIKELIHOODS`.
    """
    image_shape, channels = tuple(image_shape), tuple(channels)
    check_positive("conv_vae", latent=latent, kernel_size=kernel_size)
    _check_likelihood("conv_vae", likelihood)
    if not channels:
        raise LayerError("conv_vae: `channels` needs at least one channel count, e.g. (16, 32)")
    check_sizes("conv_vae", channels=channels)
    if len(image_shape) != 3:
        raise LayerError(
            "conv_vae: `image_shape` must be (height, width, channels), got "
            f"{image_shape}: add the channel axis, e.g. {(*image_shape, 1)}"
        )
    check_sizes("conv_vae", image_shape=image_shape)
    height, width, c_image = image_shape
    m = 2 ** len(channels)
    if height % m or width % m:
        raise LayerError(_CONV_SHAPE.format(image=image_shape, n=len(channels), m=m, h=height, w=width))
    down = [layer for c in channels for layer in (conv2d(c, kernel_size, strides=2), relu())]
    encoder = serial(*down, flatten(), _posterior(latent))
    small = (height // m, width // m, channels[-1])
    up = [layer for c in reversed(channels[:-1]) for layer in (conv2d_transpose(c, kernel_size, strides=2), relu())]
    decoder = serial(
        dense(math.prod(small)), relu(), reshape(small), *up, conv2d_transpose(c_image, kernel_size, strides=2)
    )
    return vae(encoder, decoder, latent=latent, likelihood=likelihood)


def neg_elbo_loss(v: VAE, *, sigma: float = 0.1, inputs: str = "image") -> Loss:
    """The negative ELBO, averaged over the batch, as a loss function for ``fit``.

    Metrics: ``neg_elbo`` (the loss), ``reconstruction`` and ``kl`` (batch means). Training
    draws ``z`` with the step's key. Evaluation (``key=None``) uses the fixed key
    ``jax.random.key(0)``: still a one-sample estimate of the ELBO, but the same number
    every time it is computed.

    Args:
      v: the VAE; its ``likelihood`` chooses the reconstruction term.
      sigma: the fixed standard deviation of the ``"gaussian"`` likelihood (in pixel units;
        0.1 for images in [0, 1]). Unused for ``"bernoulli"``.
      inputs: the batch entry holding ``x``, e.g. ``batch["image"] (batch, *image)``.

    Example:
      >>> loss, (state, metrics) = neg_elbo_loss(v)(params, state, {"image": x}, key)
    """
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0:
        raise ValueError(f"neg_elbo_loss: `sigma` must be a positive number, got {sigma!r}")

    def loss_fn(params, state, batch, key, *, train=True):
        x = batch[inputs]
        key = jax.random.key(0) if key is None else key
        (out, mean, log_var), new_state = v.model.apply(params, state, x, key=key, train=train)
        reconstruction = reconstruction_nll(out, x, v.likelihood, sigma=sigma)
        kl = kl_standard_normal(mean, log_var)
        neg_elbo = jnp.mean(reconstruction + kl)
        return neg_elbo, (
            new_state,
            {"neg_elbo": neg_elbo, "reconstruction": jnp.mean(reconstruction), "kl": jnp.mean(kl)},
        )

    return Loss(loss_fn, EvalMode(loss_fn))


def encode(v: VAE, params: Params, x: Array, *, state: State | None = None) -> tuple[Array, Array]:
    """The posterior's ``(mean, log_var)``, each ``(batch, latent)``, for inputs ``x (batch, *image)``.

    ``params`` and ``state`` are the whole model's (as in the train state).
    """
    (mean, log_var), _ = v.encoder.apply(params["encoder"], (state or {}).get("encoder", {}), x)
    return mean, log_var


def decode(v: VAE, params: Params, z: Array, *, state: State | None = None) -> Array:
    """The mean of ``p(x|z)`` for latents ``z (batch, latent)``: ``(batch, *image)``.

    ``sigmoid(logits)``, in [0, 1], for ``"bernoulli"``; the decoder's output as it is for
    ``"gaussian"``. ``params`` and ``state`` are the whole model's (as in the train state).
    """
    out, _ = v.decoder.apply(params["decoder"], (state or {}).get("decoder", {}), z)
    return jax.nn.sigmoid(out) if v.likelihood == "bernoulli" else out


def sample_prior(v: VAE, params: Params, key: Key, n: int, *, state: State | None = None) -> Array:
    """``n`` images decoded from ``z ~ N(0, I)``: ``(n, *image)``, the same for the same key.

    Each image is the mean of ``p(x|z)`` (see :func:`decode`), the usual picture of a sample.

    Example:
      >>> images = sample_prior(v, train_state.params, jax.random.key(0), 64)
    """
    check_positive("sample_prior", n=n)
    return decode(v, params, jax.random.normal(key, (n, v.latent)), state=state)
