"""The lecture's digits MLP in plain JAX + optax, no fundl: the other side of ``startup.py``.

Does what ``fundl run mlp_digits`` does, by hand: reads the bundled digits file
(``fundl/datasets/digits.npz``) with NumPy only, holds out the last 20 % of
``np.random.default_rng(0).permutation(n)`` of the training split for validation,
standardises the 64 pixels with the training part's mean and std, and trains 64-100
tanh-10 with SGD 0.1, batch 32, 15 epochs, the data order of epoch ``e`` being
``np.random.default_rng([seed, e]).permutation(n)``, one ``jax.jit`` call per step;
evaluates the validation split (loss and accuracy) after each epoch and the test split
once at the end.

Run::

    python benchmarks/plain_digits.py            # prints one line per epoch; ~0.97 test accuracy at the end
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

DIGITS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fundl", "datasets", "digits.npz")


def load(path: str = DIGITS) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Standardised ``{"train": (x (1222, 64), y), "validation": (x (305, 64), y), "test": (x (270, 64), y)}``."""
    with np.load(path) as d:
        x_train = d["train_image"].reshape(-1, 64).astype(np.float32) / 16
        x_test = d["test_image"].reshape(-1, 64).astype(np.float32) / 16
        y_train, y_test = d["train_label"].astype(np.int32), d["test_label"].astype(np.int32)
    order = np.random.default_rng(0).permutation(len(y_train))
    kept, held_out = np.sort(order[: len(order) - 305]), np.sort(order[len(order) - 305 :])
    mean, std = x_train[kept].mean(0), x_train[kept].std(0) + 1e-8
    scale = lambda x: (x - mean) / std  # noqa: E731
    return {
        "train": (scale(x_train[kept]), y_train[kept]),
        "validation": (scale(x_train[held_out]), y_train[held_out]),
        "test": (scale(x_test), y_test),
    }


def init(key: jax.Array, sizes: tuple[int, ...] = (64, 100, 10)) -> list[dict[str, jax.Array]]:
    """Glorot-uniform weights and zero biases for each dense layer."""
    layers = []
    for k, (n_in, n_out) in zip(jax.random.split(key, len(sizes) - 1), zip(sizes, sizes[1:])):
        limit = np.sqrt(6 / (n_in + n_out))
        layers.append({"w": jax.random.uniform(k, (n_in, n_out), minval=-limit, maxval=limit), "b": jnp.zeros(n_out)})
    return layers


def logits(params: list[dict[str, jax.Array]], x: jax.Array) -> jax.Array:
    hidden = jnp.tanh(x @ params[0]["w"] + params[0]["b"])
    return hidden @ params[1]["w"] + params[1]["b"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data = load()
    (x_train, y_train), (x_validation, y_validation), (x_test, y_test) = data["train"], data["validation"], data["test"]
    params = init(jax.random.key(args.seed))
    optimizer = optax.sgd(0.1)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, x, y):
        def loss_fn(p):
            return optax.softmax_cross_entropy_with_integer_labels(logits(p, x), y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def evaluate(params, x, y):
        out = logits(params, x)
        return optax.softmax_cross_entropy_with_integer_labels(out, y).mean(), jnp.mean(jnp.argmax(out, -1) == y)

    batch, n = 32, len(y_train)
    for epoch in range(args.epochs):
        order = np.random.default_rng([args.seed, epoch]).permutation(n)
        for i in range(n // batch):
            rows = order[i * batch : (i + 1) * batch]
            params, opt_state, loss = step(params, opt_state, x_train[rows], y_train[rows])
        validation_loss, validation_accuracy = evaluate(params, x_validation, y_validation)
        print(
            f"epoch {epoch + 1}: train loss {float(loss):.4f}, validation loss {float(validation_loss):.4f}, "
            f"accuracy {float(validation_accuracy):.4f}"
        )
    print(f"test accuracy {float(evaluate(params, x_test, y_test)[1]):.4f}")


if __name__ == "__main__":
    main()
