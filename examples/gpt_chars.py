"""A character-level GPT (causal transformer) trained on Python's own standard library.

Command: fundl run gpt_chars
Expected: about 7 min on 2 vCPUs (one epoch: 1,032 steps of 32 windows of 128 characters,
0.39 s each; 12.2 CPU-minutes; peak memory 1.3 GB); test loss 1.26 nats per character
(perplexity 3.52), validation 1.36, next-character accuracy 0.66 (untrained: ln 166 = 5.1).
Measured 2026-12-07 on the 2-vCPU machine, nearly quiet: 7 min 4 s wall.
Then: fundl sample RUN_DIR --prompt "def " --temperature 0.8

Against the LSTM of ``charlm`` on the same corpus and splits, for about the same training
(``fundl run charlm --set data.corpus=stdlib --set train.epochs=7``: 7,224 steps of 64
windows of 64 characters, 9.5 CPU-minutes against the GPT's 12.2, measured on the same
machine): test loss 1.37 (perplexity 3.94), validation 1.48,
flat since its fifth epoch (1.49, 1.47, 1.48). With learned positions instead of rotary
(``--set model.positions=learned``) the GPT reached 1.33 test, 1.43 validation.

The default corpus needs no download: the top-level modules of the standard library of the
Python that runs it (``sysconfig.get_paths()["stdlib"]``, ``*.py`` sorted by name and
concatenated: 4.7 MB, 166 distinct characters on Python 3.11). Any UTF-8 text file works
instead: ``--set data.path=book.txt``. The corpus's SHA-256 and the Python version go to
the run directory's ``environment.json`` (as ``data``). As in ``charlm``, the last ``data.held_out`` fraction of
the text is held out: its first half is the validation split, its second half the test
split, scored once at the end. The model reads windows of ``data.length`` characters (its
context) and predicts each next character. ``fundl sample`` continues a prompt with a
key/value cache (``fundl.models.gpt_generate``), one character at a time.
"""

import math

import jax
import numpy as np

from fundl import losses
from fundl.datasets import Corpus, Vocabulary, held_out_splits, read_text, stdlib_text
from fundl.models import gpt, gpt_generate
from fundl.runs import ConfigError, Experiment, Run
from fundl.train import derived_metric

CONFIG = {
    "seed": 0,
    "data": {
        "path": None,  # a text file to learn from; None: Python's standard library (no download)
        "length": 128,  # characters per training window (the attention's context)
        "held_out": 0.1,  # the share of the text held out, half for validation and half for test
    },
    "model": {
        "layers": 4,  # transformer blocks
        "heads": 4,  # attention heads per block
        "width": 128,  # the features of each position, split among the heads
        "positions": "rotary",  # how positions are told apart: rotary, sinusoidal or learned
        "dropout": 0.0,  # the dropout rate in training (attention weights and residual branches)
    },
    "train": {"epochs": 1, "batch_size": 32, "eval_batch_size": 256},  # evaluation's attention in bounded memory
    "optimizer": {"name": "adam", "learning_rate": 0.002, "schedule": "cosine", "warmup_steps": 100, "clip_norm": 1.0},
    "sample": {"top_k": 0},  # 0: draw from every character
}


def corpus(data: dict) -> Corpus:
    return stdlib_text() if data["path"] is None else Corpus.of(read_text(data["path"]), data["path"])


def experiment(config: dict) -> Experiment:
    data, m = config["data"], config["model"]
    if not 0 < data["held_out"] < 1:
        raise ConfigError(f"data.held_out must be a fraction in (0, 1), got {data['held_out']}")
    source = corpus(data)
    vocabulary = Vocabulary(source.text)
    train, validation, test = held_out_splits(vocabulary.encode(source.text), data["length"], data["held_out"])
    lm = gpt(
        len(vocabulary),
        m["layers"],
        m["heads"],
        m["width"],
        data["length"],
        positions=m["positions"],
        dropout=m["dropout"],
    )

    def loss_fn(params, state, batch, key, *, train=True):
        logits, state = lm.model.apply(params, state, batch["inputs"], key=key, train=train)
        loss = losses.softmax_cross_entropy(logits, batch["targets"])
        return loss, (state, {"accuracy": losses.accuracy(logits, batch["targets"])})

    def sample(run: Run, prompt: str, *, temperature: float, length: int, seed: int) -> str:
        context = vocabulary.encode(prompt or "\n")  # an empty prompt starts a new line
        top_k = config["sample"]["top_k"] or None
        tokens = gpt_generate(
            lm, run.train_state.params, context, jax.random.key(seed), length, temperature=temperature, top_k=top_k
        )
        return vocabulary.decode(np.asarray(tokens))

    return Experiment(
        model=lm.model,
        input_shape=(config["train"]["batch_size"], data["length"]),
        loss_fn=loss_fn,
        train_data=train,
        eval_data={"validation": validation},
        test_data={"test": test},
        hooks=[derived_metric("perplexity", lambda record: math.exp(record["loss"]))],
        data_record=source.record(),
        sample=sample,
    )
