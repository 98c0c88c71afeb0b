"""A character-level language model (embedding -> LSTM -> dense) on numbers written in words.

Command: fundl run charlm
Expected: about 30 s on a laptop CPU; held-out perplexity per character about 1.31 and
next-character accuracy about 0.87 (an untrained model: perplexity about 22, close to
the vocabulary size, 20 characters).
Then: fundl sample RUN_DIR --prompt "three hundred and" --temperature 0.5

The default corpus needs no download: random numbers from 0 to 999,999 written out in
English words, one per line ("four hundred and twelve thousand and seven"), generated
from ``data.seed``. Any UTF-8 text file works instead: ``--set data.path=book.txt``. The
last ``data.held_out`` fraction of the text is held out: its first half is the validation
split, evaluated after every epoch, its second half the test split, scored once at the
end. The model learns to predict each character from the ones before it, in windows of
``data.length`` characters.
"""

import math

import jax
import numpy as np

from fundl import losses
from fundl.datasets import Vocabulary, numbers_text, read_text, sequences
from fundl.models import char_lm, generate
from fundl.runs import ConfigError, Experiment, Run
from fundl.train import derived_metric

CONFIG = {
    "seed": 0,
    "data": {
        "path": None,  # a text file to learn from; None: numbers written in words, generated
        "numbers": 5000,  # how many numbers the generated text writes out
        "seed": 0,  # the seed of the generated text
        "length": 64,  # characters per training sequence
        "held_out": 0.1,  # the share of the text held out, half for validation and half for test
    },
    "model": {
        "cell": "lstm",  # the recurrent cell: lstm, gru or simple_rnn
        "embed": 32,  # the size of each character's embedding
        "hidden": 128,  # the recurrent state's size
    },
    "train": {"epochs": 8, "batch_size": 64},
    "optimizer": {"name": "adam", "learning_rate": 0.003, "clip_norm": 1.0},
}


def corpus(data: dict) -> str:
    if data["path"] is not None:
        return read_text(data["path"])
    return numbers_text(data["numbers"], seed=data["seed"])


def experiment(config: dict) -> Experiment:
    data = config["data"]
    if not 0 < data["held_out"] < 1:
        raise ConfigError(f"data.held_out must be a fraction in (0, 1), got {data['held_out']}")
    text = corpus(data)
    vocabulary = Vocabulary(text)
    ids = vocabulary.encode(text)
    train_end = int(len(ids) * (1 - data["held_out"]))
    validation_end = (train_end + len(ids)) // 2
    train, validation, test = (
        sequences(part, data["length"])
        for part in (ids[:train_end], ids[train_end:validation_end], ids[validation_end:])
    )
    m = config["model"]
    lm = char_lm(len(vocabulary), embed=m["embed"], hidden=m["hidden"], cell=m["cell"])

    def loss_fn(params, state, batch, key, *, train=True):
        logits, state = lm.model.apply(params, state, batch["inputs"], key=key, train=train)
        loss = losses.softmax_cross_entropy(logits, batch["targets"])
        return loss, (state, {"accuracy": losses.accuracy(logits, batch["targets"])})

    def sample(run: Run, prompt: str, *, temperature: float, length: int, seed: int) -> str:
        context = vocabulary.encode(prompt or "\n")  # an empty prompt starts a new line
        tokens = generate(lm, run.train_state.params, context, jax.random.key(seed), temperature, length)
        return vocabulary.decode(np.asarray(tokens))

    return Experiment(
        model=lm.model,
        input_shape=(config["train"]["batch_size"], data["length"]),
        loss_fn=loss_fn,
        train_data=train,
        eval_data={"validation": validation},
        test_data={"test": test},
        hooks=[derived_metric("perplexity", lambda metrics: math.exp(metrics["loss"]))],
        sample=sample,
    )
