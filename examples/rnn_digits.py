"""An LSTM reads each 8x8 digit row by row (8 steps of 8 pixels) and classifies it.

Command: fundl run rnn_digits
Expected: about 10 s on a laptop CPU; test accuracy about 0.97.

The pixels are standardised as in mlp_digits; the class is read from the final hidden
state. ``model.cell`` picks the cell (lstm, gru, simple_rnn), ``model.bidirectional`` also
reads the rows bottom to top.
"""

from fundl.examples.mlp_digits import VALIDATION, standardize

import fundl as fl
from fundl.models import rnn_classifier
from fundl.runs import Experiment
from fundl.train import classification_loss

CONFIG = {
    "seed": 0,
    "model": {
        "cell": "lstm",  # the recurrent cell: lstm, gru or simple_rnn
        "hidden": 64,  # the recurrent state's size
        "bidirectional": False,  # also read the rows bottom to top
    },
    "train": {"epochs": 20, "batch_size": 32},
    "optimizer": {"name": "adam", "learning_rate": 0.003, "schedule": "cosine"},
}


def experiment(config: dict) -> Experiment:
    m = config["model"]
    model = rnn_classifier(10, hidden=m["hidden"], cell=m["cell"], bidirectional=m["bidirectional"])
    data = {
        name: {**split, "image": split["image"].reshape(-1, 8, 8)}
        for name, split in standardize(fl.datasets.digits(validation=VALIDATION)).items()
    }
    return Experiment(
        model=model,
        input_shape=(config["train"]["batch_size"], 8, 8),
        loss_fn=classification_loss(model),
        train_data=data["train"],
        eval_data={"validation": data["validation"]},
        test_data={"test": data["test"]},
    )
