"""Transformers: a position-wise MLP, a pre-norm block and a stack of blocks, composed from fundl layers.

A block updates a residual stream ``x (batch, time, width)`` twice::

    x = x + dropout(attention(norm(x)))
    x = x + dropout(mlp(norm(x)))            mlp: dense(ratio * width) -> gelu -> dense(width)

and a transformer is ``num_layers`` blocks and a final norm. Both build their params with
:func:`fundl.serial` (names, keys and shapes as for any composition) and write their
``apply`` out, to pass the attention ``mask`` (``(batch, S)`` or ``(batch, T, S)``) down.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fundl._combinators import apply_child, check_entries, keep_nonempty, named, serial
from fundl._core import Layer, LayerError, check_positive
from fundl.layers._activations import gelu
from fundl.layers._attention import multi_head_attention
from fundl.layers._dense import dense
from fundl.layers._dropout import dropout as dropout_layer
from fundl.layers._norm import rms_norm


def feed_forward(ratio: int = 4, *, activation: Callable[[], Layer] = gelu) -> Layer:
    """The position-wise MLP of a transformer: ``dense(ratio * width) -> activation -> dense(width)``.

    Shapes: ``x (..., width) -> y (same)``; params ``up w (width, ratio*width), b``,
    ``down w (ratio*width, width), b``.

    Args:
      ratio: the hidden width over the input width.
      activation: a layer factory, e.g. ``fl.gelu`` (the default) or ``fl.relu``.
    """
    check_positive("feed_forward", ratio=ratio)

    def build(width: int) -> Layer:
        return serial(named("up", dense(ratio * width)), activation(), named("down", dense(width)))

    def init(key, input_shape):
        if len(input_shape) < 1:
            raise LayerError(f"feed_forward expects inputs of shape (..., width), got {tuple(input_shape)}")
        return build(input_shape[-1]).init(key, input_shape)

    def apply(params, state, x, *, key=None, train=False):
        return build(x.shape[-1]).apply(params, state, x, key=key, train=train)

    return Layer(init, apply, "feed_forward")


def _composed(kind: str, children: dict[str, Layer]) -> tuple[Any, Any]:
    """``init`` of the children in order (as ``serial``'s), and a check of the trees ``apply`` is given."""
    layers = serial(*(named(name, layer) for name, layer in children.items()))

    def init(key, input_shape):
        if len(input_shape) != 3 or not all(isinstance(d, int) for d in input_shape):
            raise LayerError(
                f"{kind} expects inputs of shape (batch, time, width) (self-attention), got {input_shape}"
                ": for cross-attention use multi_head_attention"
            )
        shape, params, state = layers.init(key, input_shape)
        if tuple(shape) != tuple(input_shape):
            raise LayerError(
                f"{kind}: its layers map {tuple(input_shape)} to {tuple(shape)}; "
                "the residual stream needs them to keep the width (leave out_features unset)"
            )
        return shape, params, state

    def check(params, state):
        check_entries(kind, params, "params", list(children))
        check_entries(kind, state, "state", list(children))

    return init, check


def transformer_block(
    num_heads: int,
    *,
    mlp_ratio: int = 4,
    causal: bool = False,
    dropout: float = 0.0,
    norm: Callable[[], Layer] = rms_norm,
    activation: Callable[[], Layer] = gelu,
    **attention: Any,
) -> Layer:
    """A pre-norm transformer block: attention then MLP, each inside a residual connection.

    Shapes: ``x (batch, time, width) -> y (same)``; params ``attention_norm``,
    ``attention`` (:func:`multi_head_attention`), ``mlp_norm``, ``mlp`` (:func:`feed_forward`).
    ``apply`` also takes the attention's ``mask``. ``dropout`` drops attention weights and
    both sublayers' outputs in training.

    Args:
      num_heads: attention heads.
      mlp_ratio: the MLP's hidden width over ``width``.
      causal: causal self-attention (a language model's).
      dropout: the probability of dropping, in training.
      norm: the normalisation layer's factory (``fl.rms_norm``, or ``fl.layer_norm``).
      activation: the MLP's activation's factory.
      **attention: more options of :func:`multi_head_attention` (``num_kv_heads``, ``rotary``, ...).

    Example:
      >>> block = transformer_block(4, causal=True, rotary=True)
      >>> out_shape, params, _ = block.init(jax.random.key(0), (8, 64, 128))   # (8, 64, 128)
    """
    children = {
        "attention_norm": norm(),
        "attention": multi_head_attention(num_heads, causal=causal, dropout=dropout, **attention),
        "attention_dropout": dropout_layer(dropout),
        "mlp_norm": norm(),
        "mlp": feed_forward(mlp_ratio, activation=activation),
        "mlp_dropout": dropout_layer(dropout),
    }
    init, check = _composed("transformer_block", children)

    def apply(params, state, x, *, key=None, train=False, mask=None):
        check(params, state)
        new_state = {}

        def run(name, h, **kwargs):
            h, new_state[name] = apply_child(name, children[name], params, state, h, key, train, **kwargs)
            return h

        x = x + run("attention_dropout", run("attention", run("attention_norm", x), mask=mask))
        x = x + run("mlp_dropout", run("mlp", run("mlp_norm", x)))
        return x, keep_nonempty(new_state)

    return Layer(init, apply, "transformer_block")


def transformer(num_layers: int, num_heads: int, *, norm: Callable[[], Layer] = rms_norm, **block: Any) -> Layer:
    """``num_layers`` pre-norm :func:`transformer_block` s and a final norm.

    Shapes: ``x (batch, time, width) -> y (same)``; params ``block_0 .. block_{n-1}``, ``norm``.
    ``apply`` also takes the attention ``mask``, given to every block.

    Args:
      num_layers: blocks.
      num_heads: attention heads per block.
      norm: the normalisation layer's factory.
      **block: the blocks' options (``causal``, ``dropout``, ``mlp_ratio``, ``rotary``, ...).

    Example: a causal language model over token ids,
      >>> model = serial(embedding(vocab, 128), transformer(4, 4, causal=True, rotary=True), dense(vocab))
    """
    check_positive("transformer", num_layers=num_layers)
    blocks = {f"block_{i}": transformer_block(num_heads, norm=norm, **block) for i in range(num_layers)}
    children = {**blocks, "norm": norm()}
    init, check = _composed("transformer", children)

    def apply(params, state, x, *, key=None, train=False, mask=None):
        check(params, state)
        new_state = {}
        for name, layer in children.items():
            masked = {"mask": mask} if name in blocks else {}
            x, new_state[name] = apply_child(name, layer, params, state, x, key, train, **masked)
        return x, keep_nonempty(new_state)

    return Layer(init, apply, "transformer")
