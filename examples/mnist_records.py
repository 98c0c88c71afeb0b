"""A CNN trained from ArrayRecord files on disk, read lazily with random shifts in worker processes.

Command: fundl run mnist_records
Expected: about 30 s on a 2-core laptop CPU (the two worker processes take a few seconds to start);
test accuracy about 0.98 on the 8x8 digits (validation about 0.97).

The data is never held in memory: on its first run the example packs its images into
ArrayRecord shards under ``data.dir`` (``fundl.datasets.write_records``: one record per
example, a ``metadata.json`` with the fields and every shard's SHA-256), then trains from
them (``fundl.datasets.records``). Each process reads only its rows of each batch, in the
order rule of every fundl run, and ``data.workers`` processes read, decode and shift the
images (up to ``data.shift`` pixels, drawn per example, so a resumed run sees the same
images) ahead of the training step. With ``data.mnist=DIR`` (a folder with the four
standard MNIST IDX files; nothing is downloaded) it packs and trains on MNIST's 28x28
images instead. The records directory can live on a shared disk or bucket mount that every
host of a pod reads (see tpu/README.md).
"""

import os
import shutil
from pathlib import Path

import numpy as np

import fundl as fl
from fundl.datasets import RandomShift, records, write_records
from fundl.models import lenet
from fundl.runs import Experiment
from fundl.train import classification_loss

CONFIG = {
    "seed": 0,
    "data": {
        "dir": "~/.cache/fundl/records",  # where the packed shards live (one folder per dataset and split)
        "mnist": None,  # a folder with MNIST's IDX files; None: the bundled 8x8 digits
        "shards": 4,  # ArrayRecord files per split
        "shift": 1,  # random shifts of up to this many pixels, in the workers
        "workers": 2,
    },
    "model": {
        "channels": [16, 32],  # the two conv stages' channels (3x3 convolutions, batch norm, 2x2 max pooling)
        "hidden": 64,  # the dense layer before the 10 logits
    },
    "train": {"epochs": 20, "batch_size": 32},
    "optimizer": {"name": "adam", "learning_rate": 0.003, "schedule": "cosine"},
}


def _splits(data: dict) -> dict[str, dict[str, np.ndarray]]:
    """The dataset's splits in memory, once, to pack: images ``(n, h, w, 1)`` in [0, 1] float32, int32 labels."""
    if data["mnist"] is not None:
        raw = fl.datasets.mnist(data["mnist"])
        train, validation = fl.datasets.train_validation_split(raw["train"], 1 / 6, seed=0)
        scale = 255.0
    else:
        raw = fl.datasets.digits(validation=0.2)
        train, validation = raw["train"], raw["validation"]
        scale = 1.0  # the bundled digits are in [0, 1] already
    splits = {"train": train, "validation": validation, "test": raw["test"]}
    return {
        name: {
            "image": (split["image"][..., None] / scale).astype(np.float32),
            "label": split["label"].astype(np.int32),
        }
        for name, split in splits.items()
    }


def packed(data: dict) -> Path:
    """The records directory of this dataset, packed on first use (into a temporary folder, then renamed)."""
    name = "mnist" if data["mnist"] is not None else "digits"
    directory = Path(data["dir"]).expanduser() / f"{name}-{data['shards']}-shards"
    if not (directory / "test" / "metadata.json").is_file():
        partial = directory.with_name(f"{directory.name}.partial-{os.getpid()}")  # each process of a run its own
        for split, arrays in _splits(data).items():
            write_records(partial / split, arrays, shards=data["shards"], overwrite=True)
        try:
            partial.rename(directory)
        except OSError:  # another process packed it first
            shutil.rmtree(partial)
    return directory


def experiment(config: dict) -> Experiment:
    data, m = config["data"], config["model"]
    directory = packed(data)
    train, validation, test = (records(directory / split) for split in ("train", "validation", "test"))
    image_shape = train.element_spec["image"][0]
    model = lenet(10, channels=m["channels"], hidden=m["hidden"], use_batch_norm=True, dropout_rate=0.25)
    return Experiment(
        model=model,
        input_shape=(config["train"]["batch_size"], *image_shape),
        loss_fn=classification_loss(model),
        train_data=train,
        eval_data={"validation": validation},
        test_data={"test": test},
        augment=RandomShift(data["shift"]) if data["shift"] else None,
    )
