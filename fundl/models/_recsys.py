"""Recommender models from embeddings, their losses, and the per-user ROC AUC.

A recommender here is an ordinary :class:`fundl.Layer` that maps a pair of integer id
arrays ``(users (batch,), items (batch,))`` to one score per pair ``(batch,)``: a
predicted rating (explicit feedback) or a preference score (implicit feedback, where only
the order of a user's scores matters).

- :func:`dot_recommender`: ``offset + user_bias + item_bias + user_vector . item_vector``.
- :func:`deep_recommender`: the two embeddings concatenated, then an MLP.
- :func:`rating_loss`: MAE or MSE against observed ratings, for ``fit``.
- :func:`triplet_loss`: a margin loss on (user, positive item, sampled negative item).
- :func:`per_user_auc`: each user's ROC AUC of held-out positives against non-positives.

The ranking metrics (:func:`per_user_auc`, :func:`mean_user_auc`) may move to
``fundl.losses`` or a metrics module later.

Example:
  >>> model = dot_recommender(600, 400, features=8, offset=3.6)
  >>> _, params, state = model.init(jax.random.key(0), ((32,), (32,)))
  >>> scores, _ = model.apply(params, state, (users, items))      # (32,)
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.nn import initializers

from fundl import losses
from fundl._combinators import branch, fan_in_concat, named, parallel, serial
from fundl._core import EvalMode, Layer, LayerError, Loss, check_positive, stateless
from fundl.layers import embedding
from fundl.models._mlp import mlp

RATING_LOSSES = ("mae", "mse")

_NO_NEGATIVES = (
    "triplet_loss: without a key (evaluation) the batch must carry its negative items as "
    'batch["negative"] (batch,); got a batch with keys {keys}: precompute them, e.g. '
    "rng.integers(0, num_items, size=n), or pass a key"
)


def _pair_shape(kind: str, input_shape) -> tuple[int, ...]:
    """Checks that the input is ``((batch,), (batch,))`` and returns the batch shape."""
    ok = (
        isinstance(input_shape, (tuple, list))
        and len(input_shape) == 2
        and all(isinstance(s, (tuple, list)) for s in input_shape)
    )
    if not ok or tuple(input_shape[0]) != tuple(input_shape[1]):
        raise LayerError(
            f"{kind} expects a pair of id arrays of one shape, (users "
            f"(batch,), items (batch,)); got input shape {input_shape}"
        )
    return tuple(input_shape[0])


def _with_pair_check(kind: str, layer: Layer) -> Layer:
    def init(key, input_shape):
        _pair_shape(kind, input_shape)
        return layer.init(key, input_shape)

    return Layer(init, layer.apply, kind)


def dot_recommender(
    num_users: int,
    num_items: int,
    features: int,
    *,
    offset: float = 0.0,
    init_std: float = 0.1,
    user_bias: bool = True,
    item_bias: bool = True,
) -> Layer:
    """``offset + user_bias[u] + item_bias[i] + user_vector[u] . item_vector[i]``.

    Shapes: ``(users (batch,), items (batch,)) int -> scores (batch,)``. Params:
    ``embeddings/{user,item}/{vector,bias}/table``, of shapes ``(num_users, features)``,
    ``(num_users, 1)``, ``(num_items, features)``, ``(num_items, 1)``. The vectors start
    as ``N(0, init_std^2)`` and the biases at 0, so an untrained model predicts about
    ``offset`` (e.g. the mean training rating).

    Args:
      num_users, num_items: the id ranges.
      features: the embedding size.
      offset: a constant added to every score.
      init_std: the standard deviation of the initial embedding vectors.
      user_bias, item_bias: whether to learn a bias per user, per item. A ranking loss
        that compares two items of one user cannot learn a user bias: leave it out there.
    """
    check_positive("dot_recommender", num_users=num_users, num_items=num_items, features=features)

    def side(count: int, bias: bool) -> Layer:
        vector = named("vector", embedding(count, features, table_init=initializers.normal(init_std)))
        return (
            branch(vector, named("bias", embedding(count, 1, table_init=initializers.zeros)))
            if bias
            else branch(vector)
        )

    def score(pair):
        (user, *user_biases), (item, *item_biases) = pair
        total = offset + jnp.sum(user * item, axis=-1)
        return sum((b[..., 0] for b in (*user_biases, *item_biases)), total)

    sides = parallel(named("user", side(num_users, user_bias)), named("item", side(num_items, item_bias)))
    dot = stateless("dot", score, lambda shapes: tuple(shapes[0][0][:-1]))
    return _with_pair_check("dot_recommender", serial(named("embeddings", sides), dot))


def deep_recommender(
    num_users: int,
    num_items: int,
    features: int,
    hidden: Sequence[int] = (64, 32),
    *,
    offset: float = 0.0,
    init_std: float = 0.1,
    dropout_rate: float = 0.0,
) -> Layer:
    """The user and item embeddings concatenated, then an MLP to one score, plus ``offset``.

    Shapes: ``(users (batch,), items (batch,)) int -> scores (batch,)``. Params:
    ``embeddings/{user,item}/table`` and ``mlp/dense_0 ...``. The embeddings start as
    ``N(0, init_std^2)``, the MLP as fundl's dense layers.

    Args:
      num_users, num_items: the id ranges.
      features: the size of each embedding (the MLP sees ``2 * features``).
      hidden: the MLP's hidden widths (ReLU).
      offset: a constant added to every score.
      init_std: the standard deviation of the initial embeddings.
      dropout_rate: dropout between the MLP's hidden layers.
    """
    check_positive("deep_recommender", num_users=num_users, num_items=num_items, features=features)
    table_init = initializers.normal(init_std)
    user, item = (embedding(count, features, table_init=table_init) for count in (num_users, num_items))
    embeddings = named("embeddings", parallel(named("user", user), named("item", item)))
    head = stateless("score", lambda y: offset + y[..., 0], lambda shape: tuple(shape[:-1]))
    return _with_pair_check(
        "deep_recommender",
        serial(embeddings, fan_in_concat(), named("mlp", mlp([*hidden, 1], dropout_rate=dropout_rate)), head),
    )


def _split_key(key):
    return (None, None) if key is None else tuple(jax.random.split(key))


def rating_loss(model: Layer, loss: str = "mae") -> Loss:
    """The loss ``fit`` takes for explicit ratings: MAE or MSE of ``model``'s predictions.

    The batch is ``{"user": (batch,) int, "item": (batch,) int, "rating": (batch,) float}``;
    the metrics are ``mae`` and ``mse`` whichever loss is trained.
    """
    if loss not in RATING_LOSSES:
        raise ValueError(f"rating_loss: unknown loss {loss!r}; expected one of {', '.join(RATING_LOSSES)}")

    def loss_fn(params, state, batch, key, *, train=True):
        predicted, state = model.apply(params, state, (batch["user"], batch["item"]), key=key, train=train)
        metrics = {"mae": losses.mae(predicted, batch["rating"]), "mse": losses.mse(predicted, batch["rating"])}
        return metrics[loss], (state, metrics)

    return Loss(loss_fn, EvalMode(loss_fn))


def triplet_margin(positive_scores: jax.Array, negative_scores: jax.Array, margin: float = 1.0) -> jax.Array:
    """Mean of ``max(0, margin - positive + negative)`` over same-shaped score arrays."""
    return jnp.mean(jax.nn.relu(margin - positive_scores + negative_scores))


def triplet_loss(model: Layer, num_items: int, *, margin: float = 1.0) -> Loss:
    """The loss ``fit`` takes for implicit feedback: a margin between a liked and a random item.

    The batch is ``{"user": (batch,) int, "item": (batch,) int}``, each pair one positive.
    With a ``key`` (training) each pair's negative item is drawn uniformly from
    ``[0, num_items)`` inside the loss, so every step sees fresh negatives determined by
    its key alone (a drawn negative is occasionally one the user likes: the loss tolerates
    that noise). Without a key (evaluation) the batch must carry ``"negative" (batch,)``.
    Metrics: ``ordered``, the fraction of triplets whose positive scores above the negative.
    """
    check_positive("triplet_loss", num_items=num_items)

    def loss_fn(params, state, batch, key, *, train=True):
        users, items = batch["user"], batch["item"]
        negative_key, model_key = _split_key(key)
        if negative_key is not None:
            negatives = jax.random.randint(negative_key, users.shape, 0, num_items, dtype=items.dtype)
        elif "negative" in batch:
            negatives = batch["negative"]
        else:
            raise ValueError(_NO_NEGATIVES.format(keys=sorted(batch)))
        pair_keys = _split_key(model_key)
        positive, state = model.apply(params, state, (users, items), key=pair_keys[0], train=train)
        negative, state = model.apply(params, state, (users, negatives), key=pair_keys[1], train=train)
        metrics = {"ordered": jnp.mean((positive > negative).astype(jnp.float32))}
        return triplet_margin(positive, negative, margin), (state, metrics)

    return Loss(loss_fn, EvalMode(loss_fn))


def score_matrix(model: Layer, params, state, num_users: int, num_items: int) -> np.ndarray:
    """``(num_users, num_items)``: the model's score of every (user, item) pair, in evaluation mode."""
    users, items = np.meshgrid(
        np.arange(num_users, dtype=np.int32), np.arange(num_items, dtype=np.int32), indexing="ij"
    )
    apply = jax.jit(lambda p, s, u, i: model.apply(p, s, (u, i), train=False)[0])
    return np.asarray(apply(params, state, users.ravel(), items.ravel())).reshape(num_users, num_items)


@jax.jit
def _auc_rows(scores, positives, negatives):
    # Per row: sort the negatives' scores (the others pushed to +inf), then count for each
    # positive the negatives below it and those tied with it (a tie counts one half).
    sorted_negatives = jnp.sort(jnp.where(negatives, scores, jnp.inf), axis=1)
    below = jax.vmap(lambda row, q: jnp.searchsorted(row, q, side="left"))(sorted_negatives, scores)
    up_to = jax.vmap(lambda row, q: jnp.searchsorted(row, q, side="right"))(sorted_negatives, scores)
    wins = jnp.sum(jnp.where(positives, below + 0.5 * (up_to - below), 0.0), axis=1, dtype=jnp.float32)
    n_pos, n_neg = jnp.sum(positives, axis=1), jnp.sum(negatives, axis=1)
    return jnp.where((n_pos > 0) & (n_neg > 0), wins / jnp.maximum(n_pos * n_neg, 1), jnp.nan)


def per_user_auc(scores: np.ndarray, positives: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    """Each row's ROC AUC: the chance that a random positive outscores a random negative.

    Exact (ties count one half), computed for all rows at once by sorting.

    Args:
      scores: ``(users, items)`` finite float scores.
      positives: ``(users, items)`` bool, e.g. each user's held-out liked items.
      negatives: ``(users, items)`` bool, disjoint from ``positives``, e.g. the items a user
        likes nowhere. Items in neither are ignored.

    Returns:
      ``(users,)`` float32, NaN for a user with no positive or no negative.
    """
    scores, positives, negatives = np.asarray(scores), np.asarray(positives, bool), np.asarray(negatives, bool)
    if scores.ndim != 2 or positives.shape != scores.shape or negatives.shape != scores.shape:
        raise ValueError(
            f"per_user_auc expects scores, positives and negatives of one shape (users, items); "
            f"got {scores.shape}, {positives.shape}, {negatives.shape}"
        )
    if np.any(positives & negatives):
        raise ValueError(
            "per_user_auc: an item cannot be both a positive and a negative of a user; make the masks disjoint"
        )
    if not np.all(np.isfinite(scores)):
        raise ValueError("per_user_auc expects finite scores, got NaN or infinite values")
    return np.asarray(_auc_rows(scores.astype(np.float32), positives, negatives))


def mean_user_auc(scores: np.ndarray, positives: np.ndarray, negatives: np.ndarray) -> float:
    """The mean of :func:`per_user_auc` over the users for whom it is defined."""
    auc = per_user_auc(scores, positives, negatives)
    if np.all(np.isnan(auc)):
        raise ValueError("mean_user_auc: no user has both a positive and a negative")
    return float(np.nanmean(auc))
