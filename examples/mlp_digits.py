"""The seed lecture's MLP, Dense(100) -> tanh -> Dense(10) -> softmax, on the 8x8 digits.

Command: fundl run mlp_digits
Expected: about 3 s on a laptop CPU (under 1 s of it training); test accuracy about 0.97.

The course's second model, two ReLU(100) layers trained with Adam:
Command: fundl run mlp_digits --set model=relu2 --set optimizer.name=adam --set optimizer.learning_rate=0.001
Expected: about 3 s; test accuracy about 0.98.

As in the course, each of the 64 pixels is standardised with the training split's mean
and standard deviation, and the model outputs logits: the softmax is part of the loss.
"""

import numpy as np

import fundl as fl
from fundl.runs import ConfigError, Experiment
from fundl.train import classification_loss

CONFIG = {
    "seed": 0,
    "model": "tanh",  # "tanh": the lecture's model; "relu2": two ReLU hidden layers
    "hidden": 100,
    "train": {"epochs": 15, "batch_size": 32},
    "optimizer": {"name": "sgd", "learning_rate": 0.1},
}

MODELS = {
    "tanh": lambda hidden: fl.serial(fl.dense(hidden), fl.tanh(), fl.dense(10)),
    "relu2": lambda hidden: fl.serial(fl.dense(hidden), fl.relu(), fl.dense(hidden), fl.relu(), fl.dense(10)),
}


def standardize(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flattens images to 64 features, scaled by the training split's mean and std."""
    train, test = train.reshape(len(train), -1), test.reshape(len(test), -1)
    mean, std = train.mean(0), train.std(0) + 1e-8
    return (train - mean) / std, (test - mean) / std


def experiment(config: dict) -> Experiment:
    if config["model"] not in MODELS:
        raise ConfigError(f"unknown model {config['model']!r} (key 'model'); available: {', '.join(MODELS)}")
    model = MODELS[config["model"]](config["hidden"])
    data = fl.datasets.digits()
    x_train, x_test = standardize(data["train"]["image"], data["test"]["image"])
    return Experiment(
        model=model,
        input_shape=(config["train"]["batch_size"], 64),
        loss_fn=classification_loss(model),
        train_data={"image": x_train, "label": data["train"]["label"]},
        eval_data={"test": {"image": x_test, "label": data["test"]["label"]}},
    )
