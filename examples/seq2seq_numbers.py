"""Translating numbers between English words and digits with an encoder-decoder GRU and attention.

Command: fundl run seq2seq_numbers
Expected: 50-90 s on 2 CPU cores; exact-match test accuracy (whole sequences right) 0.997-0.9995
greedy and the same with beam search (seeds 0, 1, 2), token accuracy 0.9998.
Without attention: fundl run seq2seq_numbers --set model.attention=false
(about 45 s; exact match 0.980-0.991 greedy, 0.986-0.992 beam; the course's simple model: 0.37).
Other way round: fundl run seq2seq_numbers --set data.direction=to_words
Then: fundl sample RUN_DIR --prompt "three hundred and twelve thousand and five"
(prints ``three hundred and twelve thousand and five -> 312005``).

The data needs no download: distinct random numbers from 1 to 999,999 (``data.seed``), split
by number into train, validation and test sets (``data.train`` / ``data.validation`` /
``data.test`` numbers), written in words ("three hundred and twelve thousand and five", one
token a word) and in digits ("312005", one token a digit). The model is trained with
teacher forcing; the training metrics are the token cross-entropy and token accuracy,
padding masked. Each evaluation also decodes the split, greedily and with beam search
(``decode.beam_width``), and reports the fraction of whole sequences that come out exactly
right (``exact_match``, ``beam_exact_match``). The run directory gets ``decode.json``: both
exact matches on the test split and a few sample translations.

``fundl sample`` translates the prompt with beam search (``decode.beam_width``) and returns
``" -> "`` and the translation (the command prints the prompt before it). Beam search is
deterministic, so ``--temperature``, ``--length`` and ``--seed`` are ignored.
"""

import json

import jax.numpy as jnp
import numpy as np

from fundl import losses
from fundl.datasets import TokenVocabulary, number_translation
from fundl.models import beam_decode, greedy_decode, seq2seq
from fundl.runs import ConfigError, Experiment, Run

CONFIG = {
    "seed": 0,
    "data": {
        "direction": "to_digits",  # "to_digits": words to digits; "to_words": digits to words
        "train": 20000,  # numbers in the training split
        "validation": 1000,  # numbers in the validation split
        "test": 2000,  # numbers in the test split
        "seed": 0,  # the seed that draws the numbers
    },
    "model": {
        "attention": True,  # the decoder attends over the encoder's states
        "embed": 32,  # the size of each token's embedding
        "hidden": 128,  # the GRUs' state size
    },
    "decode": {
        "beam_width": 4,  # beams of the beam search (evaluation and fundl sample)
        "samples": 10,  # sample translations written to decode.json
    },
    "train": {"epochs": 3, "batch_size": 64, "eval_batch_size": 1000},
    "optimizer": {"name": "adam", "learning_rate": 0.003, "schedule": "cosine", "clip_norm": 1.0},
}


def loss_function(model):
    """Token cross-entropy under teacher forcing, padding masked; token accuracy as the metric."""

    def loss_fn(params, state, batch, key, *, train=True):
        logits, state = model.apply(params, state, (batch["source"], batch["inputs"]), key=key, train=train)
        real = batch["targets"] != TokenVocabulary.pad_id
        loss = losses.softmax_cross_entropy(logits, batch["targets"], where=real)
        return loss, (state, {"accuracy": losses.accuracy(logits, batch["targets"], where=real)})

    return loss_fn


def exact_match(tokens, targets):
    """Per example: 1.0 where the decoded ``tokens (batch, T)`` equal the ``targets`` everywhere."""
    return jnp.all(tokens == targets, axis=-1).astype(jnp.float32)


def experiment(config: dict) -> Experiment:
    d, m = config["data"], config["model"]
    beam_width = config["decode"]["beam_width"]
    try:
        data = number_translation(d["train"], d["validation"], d["test"], seed=d["seed"], direction=d["direction"])
    except ValueError as error:
        raise ConfigError(f"data: {error}") from None
    s2s = seq2seq(len(data.source), len(data.target), embed=m["embed"], hidden=m["hidden"], attention=m["attention"])
    if not 1 <= beam_width <= len(data.target):
        raise ConfigError(
            f"decode.beam_width must be between 1 and {len(data.target)} (the target vocabulary), got {beam_width}"
        )
    target_length = data.train["targets"].shape[1]
    loss_fn = loss_function(s2s.model)

    def eval_fn(params, state, batch):
        loss, (_, metrics) = loss_fn(params, state, batch, None, train=False)
        greedy, _ = greedy_decode(s2s, params, batch["source"], target_length)
        beam, _ = beam_decode(s2s, params, batch["source"], target_length, beam_width)
        return {
            "loss": loss,
            **metrics,
            "exact_match": jnp.mean(exact_match(greedy, batch["targets"])),
            "beam_exact_match": jnp.mean(exact_match(beam, batch["targets"])),
        }

    def report(run: Run) -> None:
        params, test = run.train_state.params, data.test
        greedy = np.asarray(greedy_decode(s2s, params, test["source"], target_length)[0])
        beam = np.asarray(beam_decode(s2s, params, test["source"], target_length, beam_width)[0])
        samples = [
            {
                "source": data.source.decode(test["source"][i]),
                "target": data.target.decode(test["targets"][i]),
                "greedy": data.target.decode(greedy[i]),
                "beam": data.target.decode(beam[i]),
            }
            for i in range(min(config["decode"]["samples"], len(greedy)))
        ]
        results = {
            "split": "test",
            "examples": len(greedy),
            "beam_width": beam_width,
            "greedy_exact_match": float(np.mean(exact_match(greedy, test["targets"]))),
            "beam_exact_match": float(np.mean(exact_match(beam, test["targets"]))),
            "samples": samples,
        }
        (run.directory / "decode.json").write_text(json.dumps(results, indent=2) + "\n")

    def sample(run: Run, prompt: str, *, temperature: float, length: int, seed: int) -> str:
        del temperature, length, seed  # beam search is deterministic
        source = data.source.encode_text(prompt, data.train["source"].shape[1], where=f"prompt ({d['direction']})")
        out, _ = beam_decode(s2s, run.train_state.params, jnp.asarray(source), target_length, beam_width)
        return " -> " + data.target.decode(np.asarray(out[0]))

    return Experiment(
        model=s2s.model,
        input_shape=(
            (config["train"]["batch_size"], data.train["source"].shape[1]),
            (config["train"]["batch_size"], target_length),
        ),
        loss_fn=loss_fn,
        train_data=data.train,
        eval_data={"validation": data.validation},
        test_data={"test": data.test},
        eval_fn=eval_fn,
        report=report,
        sample=sample,
    )
