"""Multi-head attention: self- and cross-attention, grouped-query heads, masks, rotary positions, a cache.

Each query vector is compared with every key vector; the softmax of the scaled dot products
weights the value vectors::

    q = x W_q, k = c W_k, v = c W_v          (c = x for self-attention, the context otherwise)
    a = softmax(q k^T / sqrt(head_dim) + masked)      y = (a v) W_o

split into ``num_heads`` heads of ``head_dim`` features that attend independently. With
``num_kv_heads < num_heads`` (grouped-query attention) each key/value head serves
``num_heads / num_kv_heads`` query heads. The attention itself is
``jax.nn.dot_product_attention`` (so an accelerator's fused kernel is used where
``implementation=`` asks for it), except when attention dropout is active in training (fused
kernels have no dropout) or the inputs are float64 (its softmax is float32): then the same
computation is written out here (:func:`attention_weights`). Either way the logits and the
softmax are computed in float32 at least, whatever the inputs' dtype (bfloat16 included).

Masks: ``causal=True`` lets position ``t`` attend to positions ``<= t`` only. A padding mask
is a keyword of ``apply``, as for the recurrent layers: ``mask (batch, S)``, True (or 1) where
a key/value position is real, or ``mask (batch, T, S)`` for any pattern. A query whose keys are
all masked out attends to all of them evenly (its output is meaningless, not NaN).

Cached decoding: inside :func:`fundl.init_cache` a causal self-attention layer's state is its
key/value cache (see :mod:`fundl.layers._decoding`).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from fundl._combinators import check_entries, child_key, init_child
from fundl._core import Array, Layer, LayerError, Shape, check_float, check_positive
from fundl.layers._decoding import cache_dtype, check_room, decode_index
from fundl.layers._dense import dense
from fundl.layers._positions import rotary_embedding

IMPLEMENTATIONS = (None, "xla", "cudnn")
LAYOUT = "(batch, time, features), or a pair (x (batch, T, features), context (batch, S, context_features))"
_MISSING_KEY = (
    "multi_head_attention needs a random key for attention dropout when train=True; "
    "call apply(params, state, x, key=key, train=True) (or pass train=False to evaluate)"
)
_NEG = -1e30  # the logit of a masked-out position: exp() gives 0 in float32, and a row of them is uniform


def _is_shape(s: Any) -> bool:
    return isinstance(s, (tuple, list)) and all(isinstance(d, int) for d in s)


def _split_shapes(input_shape: Shape) -> tuple[Shape, Shape | None]:
    """``(x_shape, context_shape or None)``, checked: both ``(batch, time, features)``, one batch size."""
    if _is_shape(input_shape):
        x_shape, context = tuple(input_shape), None
    elif isinstance(input_shape, (tuple, list)) and len(input_shape) == 2 and all(map(_is_shape, input_shape)):
        x_shape, context = (tuple(s) for s in input_shape)
    else:
        raise LayerError(f"multi_head_attention expects inputs of shape {LAYOUT}, got {input_shape}")
    for what, shape in (("x", x_shape), ("context", context)):
        if shape is not None and len(shape) != 3:
            raise LayerError(
                f"multi_head_attention expects {what} of shape (batch, time, features) (rank 3), got {shape}"
            )
    if context is not None and context[0] != x_shape[0]:
        raise LayerError(f"multi_head_attention expects x and context with one batch size, got {x_shape} and {context}")
    return x_shape, context


def _mask_array(mask: Any, batch: int, queries: int, keys: int) -> Array:
    """A padding mask ``(batch, S)`` or ``(batch, T, S)`` as booleans ``(batch, 1, T or 1, S)``."""
    shape = tuple(jnp.shape(mask))
    if shape == (batch, keys):
        return (jnp.asarray(mask) != 0)[:, None, None, :]
    if shape == (batch, queries, keys):
        return (jnp.asarray(mask) != 0)[:, None, :, :]
    raise LayerError(
        f"multi_head_attention expects a mask of shape (batch, S) = {(batch, keys)} or (batch, T, S) = "
        f"{(batch, queries, keys)}, got {shape}"
    )


def attention_weights(q: Array, k: Array, mask: Array | None, scale: float) -> Array:
    """Softmax attention probabilities in float32, grouped heads: ``(batch, kv_heads, group, T, S)``.

    Args:
      q: ``(batch, T, heads, head_dim)``.
      k: ``(batch, S, kv_heads, head_dim)``.
      mask: booleans broadcastable to ``(batch, 1, T, S)``, True where attention is allowed.
      scale: the logits' factor, usually ``head_dim ** -0.5``.
    """
    batch, time, heads, head_dim = jnp.shape(q)
    kv_heads = jnp.shape(k)[2]
    dtype = jnp.promote_types(q.dtype, jnp.float32)  # float32, or float64 under x64
    q = jnp.reshape(q, (batch, time, kv_heads, heads // kv_heads, head_dim)).astype(dtype)
    logits = jnp.einsum("btkgh,bskh->bkgts", q, k.astype(dtype)) * scale
    if mask is not None:
        logits = jnp.where(mask[:, :, None], logits, _NEG)
    return jax.nn.softmax(logits, axis=-1)


def _attend(q, k, v, mask, causal, *, rate: float, key, implementation) -> Array:
    """``(batch, T, heads, head_dim)``: fused, unless attention dropout is on or the inputs are float64."""
    if rate == 0.0 and q.dtype != jnp.float64:  # jax.nn.dot_product_attention computes float64's softmax in float32
        scale = jnp.shape(q)[-1] ** -0.5
        return jax.nn.dot_product_attention(
            q, k, v, mask=mask, is_causal=causal, scale=scale, implementation=implementation
        )
    return _attend_written_out(q, k, v, mask, causal, rate=rate, key=key)


def _attend_written_out(q, k, v, mask, causal, *, rate: float, key) -> Array:
    """What ``jax.nn.dot_product_attention`` computes, with dropout on the attention weights."""
    if causal:  # only asked for with T == S
        mask = _all_of([mask, jnp.tril(jnp.ones((jnp.shape(q)[1],) * 2, bool))[None, None]])
    probs = attention_weights(q, k, mask, jnp.shape(q)[-1] ** -0.5)
    if rate > 0.0:
        probs = jnp.where(jax.random.bernoulli(key, 1.0 - rate, jnp.shape(probs)), probs / (1.0 - rate), 0.0)
    return jnp.reshape(jnp.einsum("bkgts,bskh->btkgh", probs.astype(v.dtype), v), jnp.shape(q))


def _all_of(masks: list[Array | None]) -> Array | None:
    """The elementwise AND of the masks given (None: no mask)."""
    given = [m for m in masks if m is not None]
    return functools.reduce(jnp.logical_and, given) if given else None


def _check_options(num_heads, kv_heads, head_dim, out_features, dropout, implementation) -> None:
    """Refuse, naming the argument, options that no input shape could make right."""
    check_positive("multi_head_attention", num_heads=num_heads, num_kv_heads=kv_heads)
    for name, value in (("head_dim", head_dim), ("out_features", out_features)):
        if value is not None:
            check_positive("multi_head_attention", **{name: value})
    if num_heads % kv_heads:
        raise LayerError(
            f"multi_head_attention: num_kv_heads ({kv_heads}) must divide num_heads ({num_heads}), "
            f"e.g. num_kv_heads={max(d for d in range(1, kv_heads + 1) if num_heads % d == 0)}"
        )
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise LayerError(
            f"multi_head_attention: `dropout` is the probability of dropping and must be in [0, 1), got {dropout!r}"
        )
    if implementation not in IMPLEMENTATIONS:
        raise LayerError(
            f"multi_head_attention: `implementation` must be one of {IMPLEMENTATIONS}, got {implementation!r}"
        )


def _append_to_cache(state: dict, k: Array, v: Array, index: Array) -> tuple[Array, Array, dict]:
    """The cache with the new keys and values written at ``index``: all keys, all values, the new state."""
    time = jnp.shape(k)[1]
    check_room("multi_head_attention", index, time, jnp.shape(state["k"])[1])
    k = lax.dynamic_update_slice_in_dim(state["k"], k.astype(state["k"].dtype), index, axis=1)
    v = lax.dynamic_update_slice_in_dim(state["v"], v.astype(state["v"].dtype), index, axis=1)
    return k, v, {"k": k, "v": v, "index": index + time}


def multi_head_attention(  # noqa: C901  (counts the init and apply closures it returns; each reads alone)
    num_heads: int,
    *,
    num_kv_heads: int | None = None,
    head_dim: int | None = None,
    out_features: int | None = None,
    causal: bool = False,
    dropout: float = 0.0,
    rotary: bool = False,
    rotary_base: float = 10_000.0,
    use_bias: bool = False,
    implementation: str | None = None,
) -> Layer:
    """Multi-head scaled dot-product attention (see the module docstring for the equations).

    Shapes: self-attention ``x (batch, T, features) -> y (batch, T, out_features)``;
    cross-attention ``(x (batch, T, features), context (batch, S, context_features)) ->
    y (batch, T, out_features)``. Params (dense layers, ``w`` and with ``use_bias`` ``b``):
    ``query w (features, heads*head_dim)``, ``key``/``value w (context_features,
    kv_heads*head_dim)``, ``out w (heads*head_dim, out_features)``. ``apply`` also takes
    ``mask``, a padding mask ``(batch, S)`` or ``(batch, T, S)``, True where attention is allowed.

    Args:
      num_heads: query heads.
      num_kv_heads: key/value heads (grouped-query attention); must divide ``num_heads``.
        Default: ``num_heads``.
      head_dim: features per head. Default: ``features // num_heads``.
      out_features: the output width. Default: ``features``.
      causal: position ``t`` attends to positions ``<= t`` only (self-attention).
      dropout: the probability of dropping an attention weight in training (needs ``key``).
      rotary: rotate queries and keys by their positions (:func:`fundl.rotary_embedding`),
        for self-attention; ``head_dim`` must be even.
      rotary_base: the rotary wavelengths' base.
      use_bias: add biases in the four projections.
      implementation: passed to ``jax.nn.dot_product_attention``: None (XLA today), ``"xla"``
        or ``"cudnn"`` (NVIDIA GPUs; its docstring lists the shapes and dtypes cuDNN takes).

    Example:
      >>> layer = multi_head_attention(4, causal=True, rotary=True)
      >>> out_shape, params, state = layer.init(jax.random.key(0), (8, 64, 128))  # (8, 64, 128)
      >>> y, _ = layer.apply(params, state, x)                           # x (8, 64, 128)
      >>> y, _ = layer.apply(params, state, x, mask=lengths[:, None] > jnp.arange(64))
    """
    kv_heads = num_heads if num_kv_heads is None else num_kv_heads
    _check_options(num_heads, kv_heads, head_dim, out_features, dropout, implementation)

    def sizes(input_shape: Shape) -> tuple[Shape, Shape | None, int]:
        """The checked input shapes and the head size."""
        x_shape, context = _split_shapes(input_shape)
        features = x_shape[-1]
        if head_dim is None and features % num_heads:
            raise LayerError(
                f"multi_head_attention: num_heads ({num_heads}) must divide the input's features "
                f"({features}), or give head_dim; input shape {x_shape}"
            )
        size = head_dim or features // num_heads
        if rotary and size % 2:
            raise LayerError(f"multi_head_attention: rotary positions need an even head_dim, got {size}")
        for option, used in (("rotary positions are", rotary), ("a causal mask is", causal)):
            if used and context is not None:
                raise LayerError(
                    f"multi_head_attention: {option} for self-attention; this input is a pair (x, context)"
                )
        return x_shape, context, size

    def projections(features: int, size: int) -> dict[str, Layer]:
        widths = {
            "query": num_heads * size,
            "key": kv_heads * size,
            "value": kv_heads * size,
            "out": out_features or features,
        }
        return {name: dense(units, use_bias=use_bias) for name, units in widths.items()}

    def init(key, input_shape):
        x_shape, context, size = sizes(input_shape)
        layers = projections(x_shape[-1], size)
        inputs = {
            "query": x_shape,
            "key": context or x_shape,
            "value": context or x_shape,
            "out": (*x_shape[:-1], num_heads * size),
        }
        params = {name: init_child(name, layer, key, inputs[name])[1] for name, layer in layers.items()}
        state = {}
        dtype = cache_dtype()
        if dtype is not None and causal and context is None:  # inside init_cache: the key/value cache
            batch, max_len, _ = x_shape
            zeros = jnp.zeros((batch, max_len, kv_heads, size), dtype)
            state = {"k": zeros, "v": zeros, "index": jnp.zeros((), jnp.int32)}
        return (*x_shape[:-1], out_features or x_shape[-1]), params, state

    def apply(params, state, x, *, key=None, train=False, mask=None):
        x, context = x if isinstance(x, (tuple, list)) else (x, None)
        for value in (x, context):
            if value is not None:
                check_float("multi_head_attention", value)
        x_shape, _, size = sizes(tuple(jnp.shape(x)) if context is None else (jnp.shape(x), jnp.shape(context)))
        batch, time, features = x_shape
        layers = projections(features, size)
        check_entries("multi_head_attention", params, "params", list(layers))
        if train and dropout > 0 and key is None:
            raise LayerError(_MISSING_KEY)

        def project(name, value, heads=None):
            try:
                y, _ = layers[name].apply(params.get(name, {}), {}, value)
            except LayerError as error:
                raise error.within(name)
            return y if heads is None else jnp.reshape(y, (*jnp.shape(value)[:2], heads, size))

        source = x if context is None else context
        q, k, v = project("query", x, num_heads), project("key", source, kv_heads), project("value", source, kv_heads)
        index = decode_index(state)
        positions = index + jnp.arange(time)  # of the new tokens: from 0, or after those in the cache
        if rotary:
            q, k = rotary_embedding(q, positions, base=rotary_base), rotary_embedding(k, positions, base=rotary_base)
        decoding, order = bool(state), None  # order: the cache's causal mask
        if decoding:  # cached decoding: append the new keys and values to the cache, attend over all of it
            k, v, state = _append_to_cache(state, k, v, index)
            k, v = k.astype(q.dtype), v.astype(q.dtype)
            order = (positions[:, None] >= jnp.arange(jnp.shape(k)[1]))[None, None]  # also hides the empty slots
        padding = None if mask is None else _mask_array(mask, batch, time, jnp.shape(k)[1])
        out = _attend(
            q,
            k,
            v,
            _all_of([order, padding]),
            causal and not decoding,
            rate=dropout if train else 0.0,
            key=child_key(key, "dropout"),
            implementation=implementation,
        )
        return project("out", jnp.reshape(out, (batch, time, num_heads * size))), state

    return Layer(init, apply, "multi_head_attention")
