"""Cached decoding: the key/value cache is layer state, made by :func:`init_cache`.

A model made of fundl layers decodes one token at a time with its ordinary ``apply``; only
its state differs. In training the state of attention and position layers is empty. The
state made by :func:`init_cache` holds, for every causal self-attention layer, the keys and
values of the tokens seen so far, and for every layer that needs it the number of those
tokens (``index``)::

    cache = init_cache(model, (batch, max_len))                # zeros, index 0
    logits, cache = model.apply(params, cache, prompt)         # (batch, P): P tokens in
    logits, cache = model.apply(params, cache, token[:, None]) # one more, O(max_len) work

Combinators thread state already, so any composition of these layers decodes; the cache is
a plain pytree (state in, state out) and the calls jit. All rows of a batch are at the same
position.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp

from fundl._core import Layer, LayerError, Shape, State, is_concrete

# The dtype of the caches the layers' ``init`` builds, or None outside :func:`init_cache`.
_CACHE_DTYPE: contextvars.ContextVar[Any] = contextvars.ContextVar("fundl_cache_dtype", default=None)


@contextlib.contextmanager
def _decoding(dtype: Any) -> Iterator[None]:
    token = _CACHE_DTYPE.set(jnp.dtype(dtype))
    try:
        yield
    finally:
        _CACHE_DTYPE.reset(token)


def cache_dtype() -> Any:
    """The dtype of the cache to build, when a layer's ``init`` runs inside :func:`init_cache`; else None."""
    return _CACHE_DTYPE.get()


def init_cache(model: Layer, input_shape: Shape, *, dtype: Any = jnp.float32) -> State:
    """The state of ``model`` for cached decoding of up to ``max_len`` tokens.

    ``input_shape`` is the model's input shape with the time axis at its longest:
    ``(batch, max_len)`` for token ids, ``(batch, max_len, features)`` for vectors. Every
    causal self-attention layer gets ``k`` and ``v`` of shape ``(batch, max_len, kv_heads,
    head_dim)`` in ``dtype`` and an ``index`` (int32 scalar, 0); every position layer an
    ``index``; other layers their initial state.

    Args:
      model: any layer or composition.
      input_shape: see above.
      dtype: the dtype the keys and values are stored in.

    Returns:
      The state to pass to ``model.apply`` instead of the training state.

    Example:
      >>> cache = init_cache(model, (1, 128))
      >>> logits, cache = model.apply(params, cache, prompt[None])   # prompt (P,) int
    """
    with _decoding(dtype):
        return jax.jit(lambda: model.init(jax.random.key(0), input_shape)[2])()  # the params are never computed


def decode_index(state: State) -> Any:
    """The number of tokens already in a layer's cache (0 outside cached decoding)."""
    return state["index"] if isinstance(state, dict) and "index" in state else 0


def check_room(kind: str, index: Any, new: int, max_len: int) -> None:
    """Raises LayerError if ``new`` more tokens do not fit after ``index`` (when the index is known)."""
    if is_concrete(index) and int(index) + new > max_len:
        raise LayerError(
            f"{kind}: the cache holds {max_len} positions, {int(index)} are used and {new} more were given: "
            "make a larger one with init_cache(model, (batch, max_len))"
        )
