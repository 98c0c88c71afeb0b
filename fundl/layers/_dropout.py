"""Dropout: the one layer whose output depends on a random key."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fundl._core import Layer, LayerError, check_float

_MISSING_KEY = (
    "dropout needs a random key when train=True; call apply(params, state, x, key=key, train=True) "
    "(or pass train=False to evaluate)"
)


def _like(x) -> dict:
    """Draw the mask with the input's sharding on a mesh with ``Explicit`` axes (where an
    unsharded mask is a type error); threefry gives the same bits however they are cut."""
    sharding = getattr(jax.typeof(x), "sharding", None) if hasattr(jax, "typeof") else None
    explicit = sharding is not None and bool(getattr(sharding.mesh, "explicit_axes", ()))
    return {"out_sharding": sharding} if explicit else {}


def dropout(rate: float) -> Layer:
    """Zeroes each input element with probability ``rate`` while training.

    Kept elements are scaled by ``1 / (1 - rate)`` so the expected output equals the input;
    with ``train=False`` the layer is the identity and needs no key. The mask is a pure
    function of ``key``: the same key drops the same elements, on one device or with the
    batch cut over a mesh (per-device code under ``shard_map`` must give each device its
    own key, e.g. ``fold_in(key, lax.axis_index("data"))``).

    Args:
      rate: probability of *dropping* an element, in ``[0, 1)``.
    """
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
        raise LayerError(f"dropout: `rate` is the probability of dropping and must be in [0, 1), got {rate!r}")

    def init(key, input_shape):
        return input_shape, {}, {}

    def apply(params, state, x, *, key=None, train=False):
        check_float("dropout", x)
        if not train or rate == 0.0:
            return x, state
        if key is None:
            raise LayerError(_MISSING_KEY)
        keep = jax.random.bernoulli(key, 1.0 - rate, jnp.shape(x), **_like(x))
        return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x)), state

    return Layer(init, apply, "dropout")
