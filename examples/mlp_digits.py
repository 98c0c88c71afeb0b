"""The seed lecture's model, Dense(100) -> tanh -> Dense(10) -> softmax, on the 8x8 digits.

Command: python examples/mlp_digits.py
Expected: a second on a laptop CPU; prints the model summary and the accuracy of the
untrained model (about 0.1, chance level).
"""

import jax
import numpy as np

import fundl as fl
from fundl import losses


def mlp(hidden: int = 100, classes: int = 10) -> fl.Layer:
    """The lecture's Keras model written as a fundl model (the loss applies the softmax)."""
    return fl.serial(fl.dense(hidden), fl.tanh(), fl.dense(classes))


def standardize(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flattens images and scales each feature by the training split's mean and std."""
    train, test = train.reshape(len(train), -1), test.reshape(len(test), -1)
    mean, std = train.mean(0), train.std(0) + 1e-8
    return (train - mean) / std, (test - mean) / std


def main() -> None:
    data = fl.datasets.digits()
    x_train, x_test = standardize(data["train"]["image"], data["test"]["image"])
    model = mlp()
    print(fl.summary(model, x_train.shape))
    _, params, state = model.init(jax.random.key(0), x_train.shape)
    logits, _ = model.apply(params, state, x_test)
    print(f"untrained test accuracy: {float(losses.accuracy(logits, data['test']['label'])):.3f}")


if __name__ == "__main__":
    main()
