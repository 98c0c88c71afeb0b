"""The seed lecture's MLP, Dense(100) -> tanh -> Dense(10) -> softmax, on the 8x8 digits.

Command: fundl run mlp_digits
Expected: about 3 s on a laptop CPU (under 1 s of it training); test accuracy about 0.97.

The course's second model, two ReLU(100) layers trained with Adam:
Command: fundl run mlp_digits --set model=relu2 --set optimizer.name=adam --set optimizer.learning_rate=0.001
Expected: about 3 s; test accuracy about 0.98.

As in the course (Keras' ``validation_split=0.2``), a fifth of the training images is
held out as a validation split, evaluated after every epoch; the test split is scored
once, at the end. Each of the 64 pixels is standardised with the training split's mean
and standard deviation, and the model outputs logits: the softmax is part of the loss.
"""

import numpy as np

import fundl as fl
from fundl.runs import ConfigError, Experiment
from fundl.train import classification_loss

CONFIG = {
    "seed": 0,
    "model": "tanh",  # "tanh": the lecture's model; "relu2": two ReLU hidden layers
    "hidden": 100,  # units of each hidden layer
    "train": {"epochs": 15, "batch_size": 32},
    "optimizer": {"name": "sgd", "learning_rate": 0.1},
}

VALIDATION = 0.2  # the share of the training images held out for validation

MODELS = {
    "tanh": lambda hidden: fl.serial(fl.dense(hidden), fl.tanh(), fl.dense(10)),
    "relu2": lambda hidden: fl.serial(fl.dense(hidden), fl.relu(), fl.dense(hidden), fl.relu(), fl.dense(10)),
}


def standardize(data: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, np.ndarray]]:
    """Each split's images flattened to 64 features and scaled by the training split's mean and std."""
    pixels = data["train"]["image"].reshape(len(data["train"]["image"]), -1)
    mean, std = pixels.mean(0), pixels.std(0) + 1e-8
    return {
        name: {**split, "image": (split["image"].reshape(len(split["image"]), -1) - mean) / std}
        for name, split in data.items()
    }


def experiment(config: dict) -> Experiment:
    if config["model"] not in MODELS:
        raise ConfigError(f"unknown model {config['model']!r} (key 'model'); available: {', '.join(MODELS)}")
    model = MODELS[config["model"]](config["hidden"])
    data = standardize(fl.datasets.digits(validation=VALIDATION))
    return Experiment(
        model=model,
        input_shape=(config["train"]["batch_size"], 64),
        loss_fn=classification_loss(model),
        train_data=data["train"],
        eval_data={"validation": data["validation"]},
        test_data={"test": data["test"]},
    )
