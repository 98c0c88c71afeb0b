"""Recurrent layers over ``(batch, time, features)`` inputs: simple_rnn, lstm, gru, bidirectional.

Each cell is a small step function over a **carry** (``h``, or ``(h, c)`` for the LSTM). One
``jax.lax.scan`` over time, shared by the cells, computes each step's input part ``x_t @ w + b``
and runs the cell on it. The carry is not layer state: each call
starts from zeros (or ``initial_state``); ``return_state=True`` returns the final carry.

Beyond the common contract, ``apply`` takes two keyword-only arguments that combinators never
pass and users give when they call the layer directly:

- ``mask (batch, time)``, bool or 0/1: where it is False the carry is kept and the output is
  zeros, so with right-padded sequences the final carry is each sequence's state after its
  last valid step (and a reversed layer starts at that step).
- ``initial_state``: the carry to start from, shaped like the final carry.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from fundl._combinators import check_entries, init_child
from fundl._core import (
    GLOROT_UNIFORM,
    ORTHOGONAL,
    ZEROS,
    Array,
    Initializer,
    Key,
    Layer,
    LayerError,
    Params,
    Shape,
    check_bool,
    check_float,
    check_initializer,
    check_number,
    check_positive,
    check_rank,
    expect_params,
)

LAYOUT = "(batch, time, features)"


class _Cell(NamedTuple):
    """One recurrent cell: how to make its params and the step that the shared scan runs."""

    kind: str  # "lstm": the layer's name and the first word of its messages
    hidden: int
    gates: int  # blocks of `hidden` columns in w, u and b
    paired: bool  # the carry is (h, c) rather than h
    extra: tuple[str, ...]  # params of shape (hidden,) beyond w, u, b (the GRU's b_hn)
    init_params: Callable[[Key, int], Params]  # (key, features) -> params
    step: Callable[[Params, Array, Any], Any]  # (params, x_t @ w + b, carry) -> new carry


class _Config(NamedTuple):
    """A cell and the options of the layer built around it."""

    cell: _Cell
    return_sequences: bool
    return_state: bool
    reverse: bool


def _rank_hint(shape: Shape) -> str:
    """A likely fix for an input that is not ``(batch, time, features)``."""
    if len(shape) == 2 and isinstance(shape[1], int):
        side = math.isqrt(shape[1])
        if side * side == shape[1]:
            return f"add reshape(({side}, {side})) before it to read {side} steps of {side} features"
        return f"add reshape((time, features)) before it, with time * features = {shape[1]}"
    if len(shape) > 3:
        return f"add reshape(({shape[1]}, -1)) before it to read {shape[1]} steps of the other axes flattened"
    return "each example must be a sequence of feature vectors"


def _shapes(tree: Any) -> Any:
    """The shape of an array, or nested tuples of shapes for tuples and lists of arrays."""
    return tuple(_shapes(t) for t in tree) if isinstance(tree, (tuple, list)) else tuple(jnp.shape(tree))


def _h(carry: Any) -> Array:
    return carry[0] if isinstance(carry, tuple) else carry


@functools.partial(jax.jit, static_argnames=("step", "reverse"))  # eager calls compile once per cell and shape
def _scan(step: Callable, params: Params, x: Array, carry: Any, valid: Array | None, reverse: bool):
    """Runs ``step`` over the time axis of ``x``; returns ``(outputs (batch, time, H), final carry)``.

    The input projection ``x_t @ w + b`` is computed inside the scan, one step at a time:
    computing it for all steps in one matmul before the scan (the textbook speed-up) made a
    training step slower on XLA:CPU, likely because the scan then slices, stores and
    differentiates a (time, batch, gates * H) array instead of (time, batch, features). The
    measurements are in benchmarks/README.md ("Measurements behind choices in the code").
    """
    w, b = params["w"], params["b"]

    def body(carry, inputs):
        x_t, valid_t = inputs  # (batch, features), (batch, 1) or None
        new = step(params, x_t @ w + b, carry)
        if valid_t is None:
            return new, _h(new)
        new = jax.tree.map(lambda n, old: jnp.where(valid_t, n, old), new, carry)
        return new, jnp.where(valid_t, _h(new), 0)

    steps = (jnp.swapaxes(x, 0, 1), None if valid is None else jnp.swapaxes(valid, 0, 1)[..., None])
    carry, ys = lax.scan(body, carry, steps, reverse=reverse)
    return jnp.swapaxes(ys, 0, 1), carry


def _build(config: _Config) -> Layer:
    """The layer shared by all cells: shapes, checks, initial carry and mask around :func:`_scan`."""
    cell = config.cell
    kind, hidden = cell.kind, cell.hidden
    what = "(h, c)" if cell.paired else "h"

    def carry_shape(batch: int) -> Shape:
        return ((batch, hidden), (batch, hidden)) if cell.paired else (batch, hidden)

    def output_shape(shape: Shape) -> Shape:
        check_rank(kind, shape, 3, LAYOUT, _rank_hint(shape))
        out = (shape[0], shape[1], hidden) if config.return_sequences else (shape[0], hidden)
        return (out, carry_shape(shape[0])) if config.return_state else out

    def init(key, input_shape):
        input_shape = tuple(input_shape)
        return output_shape(input_shape), cell.init_params(key, input_shape[-1]), {}

    def apply(params, state, x, *, key=None, train=False, mask=None, initial_state=None):
        output_shape(tuple(jnp.shape(x)))
        check_float(kind, x)
        batch, time, features = jnp.shape(x)
        w = params.get("w") if isinstance(params, dict) else None
        n_in = jnp.shape(w)[0] if w is not None and jnp.ndim(w) == 2 else features
        if n_in != features:
            raise LayerError(f"{kind} expects inputs with {n_in} features, got {features}: input shape {jnp.shape(x)}")
        n = cell.gates * hidden
        expected = {"w": (features, n), "u": (hidden, n), "b": (n,), **{name: (hidden,) for name in cell.extra}}
        arrays = expect_params(kind, params, expected)
        dtype = jnp.result_type(x, *arrays)
        params = {name: jnp.asarray(a, dtype) for name, a in zip(expected, arrays)}

        valid = None
        if mask is not None:
            if tuple(jnp.shape(mask)) != (batch, time):
                got = jnp.shape(mask)
                raise LayerError(f"{kind} expects a mask of shape (batch, time) = {(batch, time)}, got {got}")
            valid = jnp.asarray(mask) != 0
        if initial_state is None:
            zeros = jnp.zeros((batch, hidden), dtype)
            carry = (zeros, zeros) if cell.paired else zeros
        elif _shapes(initial_state) != carry_shape(batch):
            got = _shapes(initial_state)
            raise LayerError(f"{kind} expects initial_state {what} of shape {carry_shape(batch)}, got {got}")
        else:
            carry = tuple(initial_state) if cell.paired else initial_state
            carry = jax.tree.map(lambda a: jnp.asarray(a, dtype), carry)

        ys, carry = _scan(cell.step, params, jnp.asarray(x, dtype), carry, valid, config.reverse)
        y = ys if config.return_sequences else _h(carry)
        return ((y, carry) if config.return_state else y), state

    return Layer(init, apply, kind)


def _gate_params(key: Key, features: int, hidden: int, gates: int, w_init, u_init, b_init) -> Params:
    """``w (features, gates*H)``, ``u (H, gates*H)``, ``b (gates*H,)``; each gate's block of w and u drawn apart."""
    w_key, u_key, b_key = jax.random.split(key, 3)

    def blocks(key, rows, init):
        return jnp.concatenate([init(k, (rows, hidden), jnp.float32) for k in jax.random.split(key, gates)], axis=1)

    return {
        "w": blocks(w_key, features, w_init),
        "u": blocks(u_key, hidden, u_init),
        "b": b_init(b_key, (gates * hidden,), jnp.float32),
    }


# The steps: (params, x_t @ w + b, carry) -> new carry. Module-level, so that the compiled
# scan is shared by all layers of a kind.


def _rnn_step(p: Params, xw_t: Array, h: Array) -> Array:
    return jnp.tanh(xw_t + h @ p["u"])


def _lstm_step(p: Params, xw_t: Array, carry: tuple[Array, Array]) -> tuple[Array, Array]:
    h, c = carry
    i, f, g, o = jnp.split(xw_t + h @ p["u"], 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    return jax.nn.sigmoid(o) * jnp.tanh(c), c


def _gru_step(p: Params, xw_t: Array, h: Array) -> Array:
    x_r, x_z, x_n = jnp.split(xw_t, 3, axis=-1)  # b_r, b_z, b_n are in xw_t already
    h_r, h_z, h_n = jnp.split(h @ p["u"], 3, axis=-1)
    r, z = jax.nn.sigmoid(x_r + h_r), jax.nn.sigmoid(x_z + h_z)
    n = jnp.tanh(x_n + r * (h_n + p["b_hn"]))
    return (1 - z) * n + z * h


def _check_args(kind: str, hidden: Any, sequences: Any, state: Any, reverse: Any, *inits: Any) -> None:
    """The arguments every recurrent layer takes, checked (a clear error naming the layer and the argument)."""
    check_positive(kind, hidden=hidden)
    check_bool(kind, return_sequences=sequences, return_state=state, reverse=reverse)
    check_initializer(kind, **dict(zip(("w_init", "u_init", "b_init"), inits)))


def simple_rnn(
    hidden: int,
    *,
    return_sequences: bool = False,
    return_state: bool = False,
    reverse: bool = False,
    w_init: Initializer = GLOROT_UNIFORM,
    u_init: Initializer = ORTHOGONAL,
    b_init: Initializer = ZEROS,
) -> Layer:
    """An Elman RNN: ``h_t = tanh(x_t w + h_{t-1} u + b)``, from ``h_{-1} = 0``.

    Shapes: ``x (batch, time, features) -> y (batch, hidden)`` (the final ``h``), or
    ``(batch, time, hidden)`` (every ``h_t``) with ``return_sequences``; params
    ``w (features, hidden)``, ``u (hidden, hidden)``, ``b (hidden,)``. The carry is ``h (batch, hidden)``.
    ``apply`` also takes ``mask (batch, time)`` and ``initial_state`` (see the module docstring).

    Args:
      hidden: size of the hidden state.
      return_sequences: return the output at every step rather than the final one.
      return_state: return ``(output, final_carry)``; init's output shape is then a pair too.
      reverse: read the sequence from the last step to the first; outputs keep the input's
        time order (output ``t`` is the state after reading steps ``T-1 .. t``).
      w_init, u_init, b_init: ``jax.nn.initializers`` for the input kernel, the recurrent
        kernel (orthogonal, per gate block) and the bias.

    Example:
      >>> out_shape, params, _ = simple_rnn(32).init(jax.random.key(0), (8, 20, 5))  # (8, 32)
    """
    _check_args("simple_rnn", hidden, return_sequences, return_state, reverse, w_init, u_init, b_init)
    init_params = lambda key, features: _gate_params(key, features, hidden, 1, w_init, u_init, b_init)  # noqa: E731
    cell = _Cell("simple_rnn", hidden, 1, False, (), init_params, _rnn_step)
    return _build(_Config(cell, return_sequences, return_state, reverse))


def lstm(
    hidden: int,
    *,
    return_sequences: bool = False,
    return_state: bool = False,
    reverse: bool = False,
    w_init: Initializer = GLOROT_UNIFORM,
    u_init: Initializer = ORTHOGONAL,
    b_init: Initializer = ZEROS,
    forget_bias: float = 1.0,
) -> Layer:
    """A long short-term memory layer, with gates ``[i, f, g, o]`` side by side on the last axis.

    With ``a = x_t w + h_{t-1} u + b`` split into four blocks ``a_i, a_f, a_g, a_o``::

        i = σ(a_i)   f = σ(a_f)   g = tanh(a_g)   o = σ(a_o)
        c_t = f ⊙ c_{t-1} + i ⊙ g        h_t = o ⊙ tanh(c_t)

    Shapes: ``x (batch, time, features) -> y (batch, hidden)`` or ``(batch, time, hidden)``
    with ``return_sequences``; params ``w (features, 4*hidden)``, ``u (hidden, 4*hidden)``,
    ``b (4*hidden,)``. The carry is ``(h, c)``, each ``(batch, hidden)`` (flax's LSTMCell
    orders it ``(c, h)``). The forget-gate block of ``b`` starts at ``forget_bias`` (1.0), so
    that the cell remembers by default early in training.

    Args:
      hidden: size of ``h`` and ``c``.
      return_sequences, return_state, reverse, w_init, u_init, b_init: as in :func:`simple_rnn`.
      forget_bias: added to the forget gate's bias at init (0.0 gives ``b_init`` alone).

    Example:
      >>> layer = lstm(64, return_sequences=True)
      >>> out_shape, params, _ = layer.init(jax.random.key(0), (8, 20, 5))  # (8, 20, 64)
      >>> y, _ = layer.apply(params, {}, x, mask=lengths[:, None] > jnp.arange(20))
    """
    _check_args("lstm", hidden, return_sequences, return_state, reverse, w_init, u_init, b_init)
    check_number("lstm", "forget_bias", forget_bias)

    def init_params(key, features):
        params = _gate_params(key, features, hidden, 4, w_init, u_init, b_init)
        params["b"] = params["b"].at[hidden : 2 * hidden].add(forget_bias)
        return params

    cell = _Cell("lstm", hidden, 4, True, (), init_params, _lstm_step)
    return _build(_Config(cell, return_sequences, return_state, reverse))


def gru(
    hidden: int,
    *,
    return_sequences: bool = False,
    return_state: bool = False,
    reverse: bool = False,
    w_init: Initializer = GLOROT_UNIFORM,
    u_init: Initializer = ORTHOGONAL,
    b_init: Initializer = ZEROS,
) -> Layer:
    """A gated recurrent unit, with gates ``[r, z, n]`` side by side on the last axis.

    In the form of ``flax.linen.GRUCell``, where the reset gate multiplies ``h u_n + b_hn``::

        r = σ(x_t w_r + h u_r + b_r)     z = σ(x_t w_z + h u_z + b_z)
        n = tanh(x_t w_n + b_n + r ⊙ (h u_n + b_hn))
        h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}

    Shapes: ``x (batch, time, features) -> y (batch, hidden)`` or ``(batch, time, hidden)``
    with ``return_sequences``; params ``w (features, 3*hidden)``, ``u (hidden, 3*hidden)``,
    ``b (3*hidden,)``, ``b_hn (hidden,)``. The carry is ``h (batch, hidden)``.

    Args:
      hidden: size of ``h``.
      return_sequences, return_state, reverse, w_init, u_init, b_init: as in :func:`simple_rnn`.

    Example:
      >>> out_shape, params, _ = gru(32, return_state=True).init(jax.random.key(0), (8, 20, 5))
      >>> # out_shape == ((8, 32), (8, 32))
    """
    _check_args("gru", hidden, return_sequences, return_state, reverse, w_init, u_init, b_init)

    def init_params(key, features):
        gate_key, b_hn_key = jax.random.split(key)
        params = _gate_params(gate_key, features, hidden, 3, w_init, u_init, b_init)
        return {**params, "b_hn": b_init(b_hn_key, (hidden,), jnp.float32)}

    cell = _Cell("gru", hidden, 3, False, ("b_hn",), init_params, _gru_step)
    return _build(_Config(cell, return_sequences, return_state, reverse))


def bidirectional(layer: Layer) -> Layer:
    """Runs a sequence layer forwards and backwards; concatenates the two outputs on the feature axis.

    The backward direction is ``layer`` with its own params applied to the time-reversed
    sequence (and mask), its outputs reversed back into the input's time order: the same as
    a ``reverse=True`` twin, for any layer over ``(batch, time, features)``.

    Shapes: ``x (batch, time, features) -> y (batch, 2*hidden)``, or ``(batch, time, 2*hidden)``
    when ``layer`` returns sequences; the first half is the forward output. Params
    ``{"forward": ..., "backward": ...}``, initialised from different keys. ``mask`` is passed
    to both; ``initial_state`` is a pair ``(forward_carry, backward_carry)``.

    Args:
      layer: a forward sequence layer with one output, e.g. ``lstm(64)`` (not ``reverse=True``
        or ``return_state=True``).

    Example:
      >>> layer = bidirectional(lstm(64, return_sequences=True))
      >>> out_shape, params, _ = layer.init(jax.random.key(0), (8, 20, 5))  # (8, 20, 128)
    """
    if not isinstance(layer, Layer):
        raise LayerError(f"bidirectional expects a recurrent layer such as lstm(64), got {layer!r}")
    names = ("forward", "backward")

    def init(key, input_shape):
        shapes, params = {}, {}
        for name in names:
            shapes[name], params[name], _ = init_child(name, layer, key, input_shape)
        out = shapes["forward"]
        if not all(isinstance(d, int) for d in out):
            raise LayerError(
                f"bidirectional expects a layer with one output (not return_state=True), got output shapes {out}"
            )
        *lead, hidden = out
        return (*lead, 2 * hidden), params, {}

    def apply(params, state, x, *, key=None, train=False, mask=None, initial_state=None):
        check_entries("bidirectional", params, "params", list(names))
        starts = (None, None) if initial_state is None else initial_state
        if not (isinstance(starts, (tuple, list)) and len(starts) == 2):
            pair = "a pair (forward carry, backward carry)"
            raise LayerError(f"bidirectional expects initial_state as {pair}, got {_shapes(starts)}")
        flip = lambda a: None if a is None else jnp.flip(a, axis=1)  # noqa: E731  the time axis
        ys = []
        for name, start in zip(names, starts):
            backward = name == "backward"
            try:
                y, _ = layer.apply(
                    params.get(name, {}),
                    {},
                    flip(x) if backward else x,
                    mask=flip(mask) if backward else mask,
                    initial_state=start,
                )
            except LayerError as error:
                raise error.within(name)
            except TypeError as error:
                if "mask" not in str(error) and "initial_state" not in str(error):
                    raise
                raise LayerError(
                    f"bidirectional expects a sequence layer that takes `mask` and `initial_state` (simple_rnn, lstm "
                    f"or gru), got {layer.name}: {error}"
                ) from None
            ys.append(flip(y) if backward and jnp.ndim(y) == 3 else y)
        return jnp.concatenate(ys, axis=-1), state

    return Layer(init, apply, "bidirectional")
