"""The course's NumPy backpropagation lab in ``jax.numpy``: gradients written by hand, checked against ``jax.grad``.

Command: fundl run backprop_digits
Expected: about 10 s on a 2-core CPU; softmax logistic regression trained by per-example
SGD (batch size 1, learning rate 0.01, 10 epochs of 1,222 steps; a fifth of the training
images held out for validation): test accuracy about 0.96; the loss starts at ln 10 = 2.3026 (zero
weights) and ``grad_rel_diff`` stays below 1e-6 (float32).

The one-hidden-layer sigmoid network:
Command: fundl run backprop_digits --set model=sigmoid
Expected: about 13 s; test accuracy about 0.95 (32 sigmoid units; the first epoch is
spent leaving the plateau of the small initial weights: validation loss 2.31 after it).

As in the lab, the 64 pixels are standardised with the training split's statistics, the
weights start at zero (logistic regression) or small (uniform in +-0.01, the sigmoid
network's weights; biases zero), so every class starts at probability 1/10, and training
is stochastic gradient descent one example at a time.

**How the hand-written gradient drives ``fit``.** ``fit`` differentiates the loss it is
given with ``jax.value_and_grad``. Here that loss is :func:`hand_loss`'s function, a
``jax.custom_vjp`` whose backward rule is the hand-written backward pass
(:func:`cross_entropy_backward`, :func:`dense_backward`, :func:`sigmoid_backward`): JAX
does not differentiate the forward pass's operations, it calls that rule, so the update
SGD applies is the hand-written gradient. :func:`autodiff_loss` is the same forward pass
without the rule; at every evaluation the metric ``grad_rel_diff`` compares the two
gradients (see :func:`relative_difference`) on each evaluation batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from fundl.examples.mlp_digits import VALIDATION, standardize

import fundl as fl
from fundl.runs import ConfigError, Experiment

CONFIG = {
    "seed": 0,
    "model": "logreg",  # "logreg": softmax logistic regression; "sigmoid": one hidden sigmoid layer
    "hidden": 32,  # sigmoid: hidden units
    "init_scale": 0.01,  # sigmoid: weights start uniform in (-init_scale, init_scale)
    "train": {"epochs": 10, "batch_size": 1, "eval_batch_size": 305},  # one batch a split: grad_rel_diff is a true max
    "optimizer": {"name": "sgd", "learning_rate": 0.01},
}

CLASSES = 10
Params = dict[str, Any]
Cache = tuple[jax.Array, ...]


# --- The layers' forward and backward passes, by hand --------------------------------------


def dense_forward(p: Params, x: jax.Array) -> jax.Array:
    """``x (batch, n_in) @ w (n_in, n_out) + b (n_out,)``: ``(batch, n_out)``."""
    return x @ p["w"] + p["b"]


def dense_backward(p: Params, x: jax.Array, dy: jax.Array) -> tuple[Params, jax.Array]:
    """Given ``dL/dy (batch, n_out)``: ``({"w": dL/dw, "b": dL/db}, dL/dx (batch, n_in))``."""
    return {"w": x.T @ dy, "b": jnp.sum(dy, axis=0)}, dy @ p["w"].T


def sigmoid(z: jax.Array) -> jax.Array:
    """``1 / (1 + exp(-z))``, elementwise."""
    return 1.0 / (1.0 + jnp.exp(-z))


def sigmoid_backward(s: jax.Array, ds: jax.Array) -> jax.Array:
    """Given the output ``s = sigmoid(z)`` and ``dL/ds``: ``dL/dz = dL/ds * s * (1 - s)``."""
    return ds * s * (1.0 - s)


def log_softmax(z: jax.Array) -> jax.Array:
    """``z - log(sum(exp(z)))`` over the last axis, shifted by the max so that exp cannot overflow."""
    shifted = z - jnp.max(z, axis=-1, keepdims=True)
    return shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True))


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """The mean over the batch of ``-sum(targets * log_softmax(logits))``; both ``(batch, classes)``."""
    return -jnp.mean(jnp.sum(targets * log_softmax(logits), axis=-1))


def cross_entropy_backward(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(dL/dlogits, dL/dtargets)`` of :func:`cross_entropy`: ``(softmax - targets) / n`` and ``-log_softmax / n``."""
    n = logits.shape[0]
    return (jnp.exp(log_softmax(logits)) - targets) / n, -log_softmax(logits) / n


# --- The two models: forward keeps what backward needs -------------------------------------


class HandModel(NamedTuple):
    """A model with a hand-written backward pass.

    Attributes:
      init: ``(key, n_in) -> params``.
      forward: ``(params, x (batch, n_in)) -> (logits (batch, classes), cache)``.
      backward: ``(params, cache, dL/dlogits) -> (dL/dparams, dL/dx)``.
    """

    init: Callable[[jax.Array, int], Params]
    forward: Callable[[Params, jax.Array], tuple[jax.Array, Cache]]
    backward: Callable[[Params, Cache, jax.Array], tuple[Params, jax.Array]]


def logistic_regression() -> HandModel:
    """Softmax logistic regression ``logits = x @ w + b``, starting from zero weights."""

    def init(key, n_in):
        return {"w": jnp.zeros((n_in, CLASSES)), "b": jnp.zeros((CLASSES,))}

    def forward(params, x):
        return dense_forward(params, x), (x,)

    def backward(params, cache, dlogits):
        return dense_backward(params, cache[0], dlogits)

    return HandModel(init, forward, backward)


def sigmoid_network(hidden: int, init_scale: float) -> HandModel:
    """``logits = sigmoid(x @ w1 + b1) @ w2 + b2``; weights uniform in ``+-init_scale``, biases zero."""

    def init(key, n_in):
        k1, k2 = jax.random.split(key)
        uniform = lambda k, shape: jax.random.uniform(k, shape, minval=-init_scale, maxval=init_scale)  # noqa: E731
        return {
            "hidden": {"w": uniform(k1, (n_in, hidden)), "b": jnp.zeros((hidden,))},
            "output": {"w": uniform(k2, (hidden, CLASSES)), "b": jnp.zeros((CLASSES,))},
        }

    def forward(params, x):
        h = sigmoid(dense_forward(params["hidden"], x))
        return dense_forward(params["output"], h), (x, h)

    def backward(params, cache, dlogits):
        x, h = cache
        output, dh = dense_backward(params["output"], h, dlogits)
        hidden, dx = dense_backward(params["hidden"], x, sigmoid_backward(h, dh))
        return {"hidden": hidden, "output": output}, dx

    return HandModel(init, forward, backward)


# --- The loss whose gradient is the hand-written one, and the check against jax.grad -------


def hand_loss(model: HandModel) -> Callable[[Params, jax.Array, jax.Array], jax.Array]:
    """``loss(params, x (batch, n_in), targets (batch, classes))``: the mean cross-entropy, differentiated by hand.

    A ``jax.custom_vjp``: ``jax.grad`` of it calls the hand-written backward pass (for
    ``params``, ``x`` and the one-hot ``targets`` alike) instead of differentiating the
    forward pass.
    """

    @jax.custom_vjp
    def loss(params, x, targets):
        return cross_entropy(model.forward(params, x)[0], targets)

    def forward(params, x, targets):
        logits, cache = model.forward(params, x)
        return cross_entropy(logits, targets), (params, cache, logits, targets)

    def backward(residuals, g):
        params, cache, logits, targets = residuals
        dlogits, dtargets = cross_entropy_backward(logits, targets)
        dparams, dx = model.backward(params, cache, g * dlogits)
        return dparams, dx, g * dtargets

    loss.defvjp(forward, backward)
    return loss


def autodiff_loss(model: HandModel) -> Callable[[Params, jax.Array, jax.Array], jax.Array]:
    """The same loss as :func:`hand_loss`, left to ``jax.grad`` to differentiate: the reference."""
    return lambda params, x, targets: cross_entropy(model.forward(params, x)[0], targets)


def relative_difference(a: Any, b: Any) -> jax.Array:
    """``max over leaves of max|a - b| / max|b|``: how far gradients ``a`` are from the reference ``b``.

    Each leaf's error is scaled by the reference's largest entry in that leaf (entry-by-entry
    ratios blow up where a gradient is near zero); a leaf that is zero throughout counts
    its absolute error.
    """

    def leaf(x, y):
        scale = jnp.max(jnp.abs(y))
        return jnp.max(jnp.abs(x - y)) / jnp.where(scale > 0, scale, 1.0)

    return jnp.max(jnp.stack(jax.tree.leaves(jax.tree.map(leaf, a, b))))


def one_hot(labels: jax.Array) -> jax.Array:
    """Integer labels ``(batch,)`` as one-hot targets ``(batch, 10)`` in the float dtype of JAX's default."""
    return jax.nn.one_hot(labels, CLASSES)


MODELS = {
    "logreg": lambda config: logistic_regression(),
    "sigmoid": lambda config: sigmoid_network(config["hidden"], config["init_scale"]),
}


def as_layer(model: HandModel) -> fl.Layer:
    """The hand model as a fundl layer: ``x (batch, n_in) -> logits (batch, 10)``, params from ``model.init``."""

    def init(key, input_shape):
        return (*input_shape[:-1], CLASSES), model.init(key, input_shape[-1]), {}

    def apply(params, state, x, *, key=None, train=False):
        return model.forward(params, x)[0], state

    return fl.Layer(init, apply, "hand_model")


def experiment(config: dict) -> Experiment:
    if config["model"] not in MODELS:
        raise ConfigError(f"unknown model {config['model']!r} (key 'model'); available: {', '.join(MODELS)}")
    model = MODELS[config["model"]](config)
    loss, reference = hand_loss(model), autodiff_loss(model)

    def loss_fn(params, state, batch, key):
        return loss(params, batch["image"], one_hot(batch["label"])), (state, {})

    def eval_fn(params, state, batch):
        x, targets = batch["image"], one_hot(batch["label"])
        logits, _ = model.forward(params, x)
        hand, auto = jax.grad(loss)(params, x, targets), jax.grad(reference)(params, x, targets)
        return {
            "loss": cross_entropy(logits, targets),
            "accuracy": jnp.mean(jnp.argmax(logits, axis=-1) == batch["label"]),
            "grad_rel_diff": relative_difference(hand, auto),
        }

    data = standardize(fl.datasets.digits(validation=VALIDATION))
    return Experiment(
        model=as_layer(model),
        input_shape=(config["train"]["batch_size"], data["train"]["image"].shape[1]),
        loss_fn=loss_fn,
        train_data=data["train"],
        eval_data={"validation": data["validation"]},
        test_data={"test": data["test"]},
        eval_fn=eval_fn,
    )
