"""Recurrent models: a sequence classifier and a character-level language model that samples."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from fundl._combinators import named, serial
from fundl._core import Array, Key, Layer, LayerError, Params
from fundl.layers import bidirectional as make_bidirectional, dense, embedding, gru, lstm, simple_rnn

CELLS = {"lstm": lstm, "gru": gru, "simple_rnn": simple_rnn}


def _cell(kind: str):
    if kind not in CELLS:
        raise LayerError(f"unknown recurrent cell {kind!r}; available: {', '.join(CELLS)}")
    return CELLS[kind]


def rnn_classifier(classes: int, *, hidden: int = 64, cell: str = "lstm", bidirectional: bool = False) -> Layer:
    """Reads a sequence and classifies it from the final hidden state.

    Shapes: ``x (batch, time, features) -> logits (batch, classes)``; params ``rnn``
    (the recurrent layer) and ``head`` (a dense layer).

    Example: digits read row by row, 8 steps of 8 pixels,
      >>> model = serial(reshape((8, 8)), rnn_classifier(10, hidden=64))
    """
    rnn = _cell(cell)(hidden)
    return serial(named("rnn", make_bidirectional(rnn) if bidirectional else rnn), named("head", dense(classes)))


class CharLM(NamedTuple):
    """A character-level language model: embedding -> recurrent layer -> dense over the vocabulary.

    Attributes:
      model: the layer to train: ``ids (batch, time) int -> logits (batch, time, vocab_size)``,
        params ``{"embed", "rnn", "head"}``; the logits at ``t`` predict character ``t + 1``.
      vocab_size: the number of distinct characters.
      cell: ``"lstm"``, ``"gru"`` or ``"simple_rnn"``.
      hidden: the recurrent layer's size.
    """

    model: Layer
    vocab_size: int
    cell: str
    hidden: int


def char_lm(vocab_size: int, *, embed: int = 32, hidden: int = 128, cell: str = "lstm") -> CharLM:
    """A character-level language model (see :class:`CharLM`).

    Example:
      >>> lm = char_lm(len(vocabulary), hidden=128)
      >>> logits, _ = lm.model.apply(params, {}, ids)   # ids (batch, time)
    """
    rnn = _cell(cell)(hidden, return_sequences=True)
    model = serial(named("embed", embedding(vocab_size, embed)), named("rnn", rnn), named("head", dense(vocab_size)))
    return CharLM(model, vocab_size, cell, hidden)


@functools.partial(jax.jit, static_argnames=("lm", "length"))
def generate(lm: CharLM, params: Params, prompt: Array, key: Key, temperature: float, length: int) -> Array:
    """Samples ``length`` characters that continue ``prompt``, one at a time.

    The prompt is read once; then each new character is drawn from
    ``softmax(logits / temperature)`` with the key ``fold_in(key, i)`` and fed back, the
    recurrent carry passed from step to step. The same key gives the same text.

    Args:
      lm: the language model.
      params: its params (``train_state.params``).
      prompt: ``(prompt_length,)`` int ids, at least one.
      key: the sampling key.
      temperature: below 1 sharpens the distribution, above 1 flattens it.
      length: how many ids to generate.

    Returns:
      ``(length,)`` int ids.
    """
    embed = embedding(lm.vocab_size, jnp.shape(params["embed"]["table"])[-1])
    rnn = _cell(lm.cell)(lm.hidden, return_sequences=True, return_state=True)
    head = dense(lm.vocab_size)

    def read(ids, carry):
        """Feeds ``ids (1, time)``; returns the logits after the last one and the new carry."""
        x, _ = embed.apply(params["embed"], {}, ids)
        (ys, carry), _ = rnn.apply(params["rnn"], {}, x, initial_state=carry)
        logits, _ = head.apply(params["head"], {}, ys[:, -1])
        return logits[0], carry

    logits, carry = read(prompt[None], None)

    def step(state, i):
        logits, carry = state
        token = jax.random.categorical(jax.random.fold_in(key, i), logits / temperature)
        return read(token[None, None], carry), token

    _, tokens = lax.scan(step, (logits, carry), jnp.arange(length))
    return tokens
