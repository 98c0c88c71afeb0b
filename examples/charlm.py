"""A character-level language model (embedding -> LSTM -> dense) on numbers written in words.

Command: fundl run charlm
Expected: about 30 s on a laptop CPU; held-out perplexity per character about 1.31 and
next-character accuracy about 0.87 (an untrained model: perplexity about 22, close to
the vocabulary size, 20 characters).
Then: fundl sample RUN_DIR --prompt "three hundred and" --temperature 0.5

The default corpus needs no download: random numbers from 0 to 999,999 written out in
English words, one per line ("four hundred and twelve thousand and seven"), generated
from ``data.seed``. ``--set data.corpus=stdlib`` reads Python's standard library instead
(its top-level modules, 4.7 MB on Python 3.11: the corpus of ``gpt_chars``, for comparing
the two models on equal terms), and any UTF-8 text file works too:
``--set data.path=book.txt``. A corpus read from disk is recorded in the run directory's
``environment.json`` (``data``: its SHA-256 and the Python version). The last ``data.held_out`` fraction
of the text is held out: its first half is the validation split, evaluated after every
epoch, its second half the test split, scored once at the end. The model learns to predict
each character from the ones before it, in windows of ``data.length`` characters.

On the stdlib corpus, ``--set data.corpus=stdlib --set train.epochs=7`` (7,224 steps, 9.5
CPU-minutes: about 5 min on 2 quiet vCPUs, 8 min on a loaded machine) reached a test loss of 1.37 nats per
character (perplexity 3.94), validation 1.48; ``gpt_chars``, a transformer trained for
12.2 CPU-minutes, 1.26 (see its docstring).
"""

import math

import jax
import numpy as np

from fundl import losses
from fundl.datasets import Corpus, Vocabulary, held_out_splits, numbers_text, read_text, stdlib_text
from fundl.models import char_lm, generate
from fundl.runs import ConfigError, Experiment, Run
from fundl.train import derived_metric

CONFIG = {
    "seed": 0,
    "data": {
        "corpus": "numbers",  # the text when no path is given: numbers (generated) or stdlib (Python's own modules)
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


CORPORA = ("numbers", "stdlib")


def corpus(data: dict) -> Corpus | str:
    """The text: a file (``data.path``), the standard library, or numbers in words (a pure function of the config)."""
    if data["path"] is not None:
        return Corpus.of(read_text(data["path"]), data["path"])
    if data["corpus"] not in CORPORA:
        raise ConfigError(f"data.corpus must be one of {', '.join(CORPORA)}, got {data['corpus']!r}")
    return stdlib_text() if data["corpus"] == "stdlib" else numbers_text(data["numbers"], seed=data["seed"])


def experiment(config: dict) -> Experiment:
    data = config["data"]
    if not 0 < data["held_out"] < 1:
        raise ConfigError(f"data.held_out must be a fraction in (0, 1), got {data['held_out']}")
    source = corpus(data)
    text = source.text if isinstance(source, Corpus) else source
    vocabulary = Vocabulary(text)
    train, validation, test = held_out_splits(vocabulary.encode(text), data["length"], data["held_out"])
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
        data_record=source.record() if isinstance(source, Corpus) else None,
        sample=sample,
    )
