"""An encoder-decoder GRU, with or without attention, and its greedy and beam-search decoders.

The encoder reads the source tokens (``embedding -> gru``, padding masked) and hands its
final state to the decoder, a second ``embedding -> gru`` that reads the target shifted
right (``<bos> y_1 .. y_n``, teacher forcing) and predicts ``y_1 .. y_n <eos>``. With
attention (Luong's "general" score), every decoder output ``h_t`` also looks at all encoder
outputs ``e_s``::

    a_ts = softmax_s(h_t · W e_s)        c_t = Σ_s a_ts e_s        o_t = tanh(W_c [h_t; c_t])

and the logits are ``dense(o_t)`` (``dense(h_t)`` without attention). Since ``o_t`` is not
fed back into the decoder, training runs the decoder over the whole target in one scan;
decoding steps the same layers one token at a time inside ``lax.scan``.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from fundl._combinators import check_entries, init_child
from fundl._core import Array, Layer, LayerError, Params
from fundl.layers import dense, embedding, gru

PAD, BOS, EOS = 0, 1, 2  # as in fundl.datasets' number_translation


class Seq2Seq(NamedTuple):
    """An encoder-decoder and its sizes (hashable: a static argument of the jitted decoders).

    Attributes:
      model: the layer to train: ``(source (batch, S) int, inputs (batch, T) int) ->
        logits (batch, T, target_size)``; params ``source_embed``, ``encoder``,
        ``target_embed``, ``decoder``, ``head``, and with attention ``score`` and ``combine``.
      source_size, target_size: the two vocabulary sizes (id 0 is padding, 1 ``<bos>``, 2 ``<eos>``).
      embed, hidden: the embedding and GRU sizes.
      attention: whether the decoder attends over the encoder outputs.
    """

    model: Layer
    source_size: int
    target_size: int
    embed: int
    hidden: int
    attention: bool


@functools.cache
def _layers(source_size: int, target_size: int, embed: int, hidden: int, attention: bool) -> dict[str, Layer]:
    layers = {
        "source_embed": embedding(source_size, embed),
        "encoder": gru(hidden, return_sequences=True, return_state=True),
        "target_embed": embedding(target_size, embed),
        "decoder": gru(hidden, return_sequences=True, return_state=True),
    }
    if attention:
        layers |= {"score": dense(hidden, use_bias=False), "combine": dense(hidden)}
    return layers | {"head": dense(target_size)}


def _check_pair(shape: Any) -> tuple[tuple[int, int], tuple[int, int]]:
    """Raises LayerError unless ``shape`` is ``((batch, S), (batch, T))``."""
    is_pair = lambda s: isinstance(s, (tuple, list)) and len(s) == 2  # noqa: E731
    if not (is_pair(shape) and all(is_pair(s) for s in shape)):
        raise LayerError(
            f"seq2seq expects a pair (source (batch, S), inputs (batch, T)) of int ids, got shapes {shape}"
        )
    (b1, s), (b2, t) = shape
    if b1 != b2:
        raise LayerError(f"seq2seq expects source and inputs with the same batch size, got shapes {shape}")
    return (b1, s), (b2, t)


def seq2seq(
    source_size: int, target_size: int, *, embed: int = 32, hidden: int = 128, attention: bool = True
) -> Seq2Seq:
    """An encoder-decoder GRU translating token sequences (see the module docstring).

    Example:
      >>> s2s = seq2seq(34, 13, hidden=64)
      >>> out_shape, params, _ = s2s.model.init(jax.random.key(0), ((32, 11), (32, 7)))  # (32, 7, 13)
      >>> logits, _ = s2s.model.apply(params, {}, (source, inputs))
    """
    layers = _layers(source_size, target_size, embed, hidden, attention)

    def init(key, input_shape):
        (batch, s_len), (_, t_len) = _check_pair(input_shape)
        ins = {
            "source_embed": (batch, s_len),
            "encoder": (batch, s_len, embed),
            "target_embed": (batch, t_len),
            "decoder": (batch, t_len, embed),
            "score": (batch, t_len, hidden),
            "combine": (batch, t_len, 2 * hidden),
            "head": (batch, t_len, hidden),
        }
        make = lambda key: {name: init_child(name, layer, key, ins[name])[1] for name, layer in layers.items()}  # noqa: E731
        params = jax.jit(make)(key)  # one compiled program: eager orthogonal inits cost seconds on a CPU
        return (batch, t_len, target_size), params, {}

    def apply(params, state, x, *, key=None, train=False):
        if not (isinstance(x, (tuple, list)) and len(x) == 2):
            raise LayerError(f"seq2seq expects a pair (source, inputs) of int ids, got {type(x).__name__}")
        _check_pair(tuple(jnp.shape(a) for a in x))
        check_entries("seq2seq", params, "params", list(layers))
        source, inputs = x
        encoded, carry = encode(s2s, params, source)  # s2s: assigned below, before any call
        logits, _ = decode_steps(s2s, params, encoded, inputs, carry)
        return logits, state

    s2s = Seq2Seq(Layer(init, apply, "seq2seq"), source_size, target_size, embed, hidden, attention)
    return s2s


class Encoded(NamedTuple):
    """The encoder's outputs ``(batch, S, hidden)`` and where the source is not padding ``(batch, S)``."""

    outputs: Array
    valid: Array


def _apply(s2s: Seq2Seq, name: str, params: Params, x: Any, **kwargs) -> Any:
    layer = _layers(s2s.source_size, s2s.target_size, s2s.embed, s2s.hidden, s2s.attention)[name]
    try:
        return layer.apply(params.get(name, {}), {}, x, **kwargs)[0]
    except LayerError as error:
        raise error.within(name)


def encode(s2s: Seq2Seq, params: Params, source: Array) -> tuple[Encoded, Array]:
    """Reads ``source (batch, S)`` ids; returns the :class:`Encoded` source and the final state ``(batch, hidden)``."""
    valid = source != PAD
    x = _apply(s2s, "source_embed", params, source)
    outputs, carry = _apply(s2s, "encoder", params, x, mask=valid)
    return Encoded(outputs, valid), carry


def attend(s2s: Seq2Seq, params: Params, encoded: Encoded, h: Array) -> Array:
    """Luong attention: the decoder outputs ``h (batch, T, hidden)`` -> ``tanh(W_c [h; context])``."""
    scores = jnp.einsum("bth,bsh->bts", _apply(s2s, "score", params, h), encoded.outputs)
    scores = jnp.where(encoded.valid[:, None, :], scores, -1e9)  # padding gets no weight
    context = jnp.einsum("bts,bsh->bth", jax.nn.softmax(scores, axis=-1), encoded.outputs)
    return jnp.tanh(_apply(s2s, "combine", params, jnp.concatenate([h, context], axis=-1)))


def decode_steps(s2s: Seq2Seq, params: Params, encoded: Encoded, inputs: Array, carry: Array) -> tuple[Array, Array]:
    """Runs the decoder over ``inputs (batch, T)`` from ``carry (batch, hidden)``.

    Returns ``logits (batch, T, target_size)`` and the decoder's final state. Teacher
    forcing calls it once with the whole shifted target; decoding calls it with ``T = 1``.
    """
    x = _apply(s2s, "target_embed", params, inputs)
    h, carry = _apply(s2s, "decoder", params, x, initial_state=carry)
    if s2s.attention:
        h = attend(s2s, params, encoded, h)
    return _apply(s2s, "head", params, h), carry


def _next_log_probs(s2s: Seq2Seq, params: Params, encoded: Encoded, tokens: Array, carry: Array):
    """One decoder step: ``tokens (rows,)`` -> ``log p(next) (rows, target_size)`` and the new state."""
    logits, carry = decode_steps(s2s, params, encoded, tokens[:, None], carry)
    return jax.nn.log_softmax(logits[:, 0]), carry


@functools.partial(jax.jit, static_argnames=("s2s", "length"))
def greedy_decode(s2s: Seq2Seq, params: Params, source: Array, length: int) -> tuple[Array, Array]:
    """Translates ``source (batch, S)`` by taking the most likely token at each step.

    Returns ``tokens (batch, length)``, ``<pad>`` after the first ``<eos>``, and each
    sequence's log-probability ``(batch,)`` (up to and including its ``<eos>``).
    """
    encoded, carry = encode(s2s, params, source)
    batch = jnp.shape(source)[0]

    def step(loop, _):
        token, carry, done, score = loop
        log_p, carry = _next_log_probs(s2s, params, encoded, token, carry)
        token = jnp.where(done, PAD, jnp.argmax(log_p, axis=-1))
        score = score + jnp.where(done, 0.0, jnp.take_along_axis(log_p, token[:, None], axis=-1)[:, 0])
        return (token, carry, done | (token == EOS), score), token

    start = (jnp.full((batch,), BOS), carry, jnp.zeros((batch,), bool), jnp.zeros((batch,)))
    (_, _, _, score), tokens = lax.scan(step, start, None, length=length)
    return tokens.T, score


@functools.partial(jax.jit, static_argnames=("s2s", "length", "beam_width"))
def beam_decode(s2s: Seq2Seq, params: Params, source: Array, length: int, beam_width: int) -> tuple[Array, Array]:
    """Translates ``source (batch, S)`` keeping the ``beam_width`` most likely prefixes at each step.

    Scores are summed log-probabilities (no length penalty); a finished beam (after
    ``<eos>``) can only be extended by ``<pad>``, at no cost. Width 1 is greedy decoding.

    Returns ``tokens (batch, length)`` of the best beam and its log-probability ``(batch,)``.
    """
    k, vocab = beam_width, s2s.target_size
    if not 1 <= k <= vocab:
        raise ValueError(f"beam_width must be between 1 and the target vocabulary size {vocab}, got {k}")
    encoded, carry = encode(s2s, params, source)
    batch = jnp.shape(source)[0]
    encoded = jax.tree.map(lambda a: jnp.repeat(a, k, axis=0), encoded)  # rows (batch * k): example-major
    carry = jnp.repeat(carry, k, axis=0)
    pad_only = jnp.full((vocab,), -jnp.inf).at[PAD].set(0.0)

    def regroup(a, parent):  # (batch * k, ...) rows -> the rows of each new beam's parent
        a = jnp.reshape(a, (batch, k, *jnp.shape(a)[1:]))
        a = jnp.take_along_axis(a, jnp.reshape(parent, (batch, k) + (1,) * (a.ndim - 2)), axis=1)
        return jnp.reshape(a, (batch * k, *jnp.shape(a)[2:]))

    def step(loop, t):
        token, carry, done, score, tokens = loop
        log_p, carry = _next_log_probs(s2s, params, encoded, token, carry)
        log_p = jnp.where(done[:, None], pad_only, log_p)
        total = jnp.reshape(score[:, None] + log_p, (batch, k * vocab))
        best, index = lax.top_k(total, k)  # (batch, k)
        parent, new = index // vocab, jnp.reshape(index % vocab, (-1,))
        tokens = regroup(tokens, parent).at[:, t].set(new)
        done = regroup(done, parent) | (new == EOS)
        return (new, regroup(carry, parent), done, jnp.reshape(best, (-1,)), tokens), None

    first = jnp.tile(jnp.where(jnp.arange(k) == 0, 0.0, -jnp.inf), batch)  # only one live beam at the start
    start = (
        jnp.full((batch * k,), BOS),
        carry,
        jnp.zeros((batch * k,), bool),
        first,
        jnp.zeros((batch * k, length), jnp.int32),
    )
    (_, _, _, score, tokens), _ = lax.scan(step, start, jnp.arange(length))
    best = jnp.arange(batch) * k  # top_k sorts: beam 0 of each example is its best
    return tokens[best], score[best]
