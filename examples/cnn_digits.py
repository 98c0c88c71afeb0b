"""A LeNet-style CNN with batch norm and dropout on the 8x8 digits, read as 8x8x1 images.

Command: fundl run cnn_digits
Expected: about 8 s on a laptop CPU; test accuracy about 0.99.

Two stages of conv(3x3) -> batch norm -> relu -> 2x2 max pool (8x8 -> 4x4 -> 2x2), then
dropout -> dense(64) -> relu -> dropout -> dense(10). Batch norm keeps running statistics
in the model state: training normalises with each batch's statistics and updates them,
evaluation uses the running ones. Set ``model.batch_norm=false`` for the plain LeNet.
"""

from fundl.examples.mlp_digits import VALIDATION

import fundl as fl
from fundl.models import lenet
from fundl.runs import Experiment
from fundl.train import classification_loss

CONFIG = {
    "seed": 0,
    "model": {
        "channels": [16, 32],  # the channels of the two conv(3x3) stages
        "hidden": 64,  # units of the dense layer before the classes
        "batch_norm": True,  # batch norm after each convolution (false: the plain LeNet)
        "dropout": 0.25,  # the dropout rate before each dense layer
    },
    "train": {"epochs": 15, "batch_size": 32},
    "optimizer": {"name": "adam", "learning_rate": 0.003, "schedule": "cosine"},
}


def images(split: dict) -> dict:
    """Adds the channel axis: (n, 8, 8) -> (n, 8, 8, 1)."""
    return {"image": split["image"][..., None], "label": split["label"]}


def experiment(config: dict) -> Experiment:
    m = config["model"]
    model = lenet(
        10, channels=m["channels"], hidden=m["hidden"], use_batch_norm=m["batch_norm"], dropout_rate=m["dropout"]
    )
    data = fl.datasets.digits(validation=VALIDATION)
    return Experiment(
        model=model,
        input_shape=(config["train"]["batch_size"], 8, 8, 1),
        loss_fn=classification_loss(model),
        train_data=images(data["train"]),
        eval_data={"validation": images(data["validation"])},
        test_data={"test": images(data["test"])},
    )
