"""Synthetic ratings for recommender systems: a known low-rank model, so results have a floor.

Every user ``u`` and item ``i`` get latent factors and biases; the clean score is::

    score[u, i] = 2.5 + user_bias[u] + item_bias[i] + user_factors[u] . item_factors[i]

A rating is the score plus Gaussian noise, rounded to the nearest integer and clipped to
1..5. Users do not rate items at random: each user rates ``per_user`` items (on average)
drawn without replacement with probabilities proportional to ``exp(taste * score)``, so
what a user rated says something about what the user likes (as on MovieLens, where people
rate films they chose to watch). With ``taste=0`` the observed pairs are uniform.

Because the clean scores are known, so is the **noise floor**: the MAE of predicting each
rating by its clean score rounded and clipped the same way. For symmetric noise the
rounded clean score is the median of the rating's distribution, the best constant
prediction under absolute error, so no model beats the floor except by chance.

Example:
  >>> data = ratings(seed=0)
  >>> data.train["user"].shape, data.train["item"].shape, data.train["rating"].shape   # (n,) each
  >>> noise_floor(data)            # test MAE of the clean scores, about 0.3
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

SPLITS = ("train", "validation", "test")
MEAN_SCORE = 2.5  # the observed ratings average higher: users rate what they like
BIAS_STD = 0.5  # of user and of item biases
INTERACTION_STD = 1.0  # of the factors' dot product


class Ratings(NamedTuple):
    """Observed ratings split three ways, and the model that generated them.

    Attributes:
      train, validation, test: ``{"user": (n,) int32, "item": (n,) int32, "rating": (n,)
        float32 in 1..5}``; each observed (user, item) pair is in exactly one split.
      num_users, num_items: the id ranges, ``[0, num_users)`` and ``[0, num_items)``.
      scores: ``(num_users, num_items)`` float32, the clean scores (before noise, rounding
        and clipping) of every pair, observed or not.
    """

    train: dict[str, np.ndarray]
    validation: dict[str, np.ndarray]
    test: dict[str, np.ndarray]
    num_users: int
    num_items: int
    scores: np.ndarray


def to_rating(values: np.ndarray) -> np.ndarray:
    """Rounds to the nearest integer (halves up) and clips to 1..5, as float32."""
    return np.clip(np.floor(np.asarray(values, np.float64) + 0.5), 1, 5).astype(np.float32)


def _check_arguments(num_users, num_items, rank, per_user, noise, taste, fractions) -> None:
    for name, value in (("num_users", num_users), ("num_items", num_items), ("rank", rank), ("per_user", per_user)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"ratings: `{name}` must be a positive integer, got {value!r}")
    if per_user > num_items // 2:
        raise ValueError(
            f"ratings: `per_user` ({per_user}) can be at most half of "
            f"`num_items` ({num_items}): users rate 0.5x to 1.5x per_user items"
        )
    if noise < 0 or taste < 0:
        raise ValueError(f"ratings: `noise` and `taste` must be non-negative, got noise={noise}, taste={taste}")
    if len(fractions) != 3 or min(fractions) <= 0 or not np.isclose(sum(fractions), 1.0):
        raise ValueError(
            "ratings: `fractions` must be three positive numbers "
            f"(train, validation, test) summing to 1, got {fractions}"
        )


def _clean_scores(rng: np.random.Generator, num_users: int, num_items: int, rank: int) -> np.ndarray:
    """``(num_users, num_items)`` scores of the low-rank model with biases."""
    factor_std = (INTERACTION_STD**2 / rank) ** 0.25  # so that the dot product has std INTERACTION_STD
    user_factors = rng.normal(0, factor_std, (num_users, rank))
    item_factors = rng.normal(0, factor_std, (num_items, rank))
    user_bias = rng.normal(0, BIAS_STD, (num_users, 1))
    item_bias = rng.normal(0, BIAS_STD, (1, num_items))
    return MEAN_SCORE + user_bias + item_bias + user_factors @ item_factors.T


def _observed_pairs(
    rng: np.random.Generator, scores: np.ndarray, per_user: int, taste: float
) -> tuple[np.ndarray, np.ndarray]:
    """Each user's rated items: ``exp(taste * score)``-weighted draws without replacement.

    The Gumbel top-k trick: the ``k`` largest of ``taste * score + Gumbel noise`` are a draw
    of ``k`` items without replacement with those weights.
    """
    num_users, num_items = scores.shape
    counts = rng.integers(per_user // 2, per_user + per_user // 2 + 1, size=(num_users,))
    keys = taste * scores + rng.gumbel(size=scores.shape)
    order = np.argsort(-keys, axis=1, kind="stable")
    taken = np.arange(num_items)[None, :] < counts[:, None]  # the first counts[u] of each row
    users = np.repeat(np.arange(num_users), counts)
    return users, order[taken]


def ratings(
    num_users: int = 1000,
    num_items: int = 600,
    *,
    rank: int = 4,
    per_user: int = 150,
    noise: float = 0.4,
    taste: float = 1.5,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> Ratings:
    """Explicit ratings from a known low-rank model, split into train / validation / test.

    A pure function of its arguments (``np.random.default_rng(seed)``).

    Args:
      num_users, num_items: how many users and items.
      rank: the number of latent factors.
      per_user: each user rates between ``per_user // 2`` and ``1.5 * per_user`` items.
      noise: the standard deviation of the Gaussian noise added to the clean score.
      taste: how strongly users rate what they like (0: the rated items are uniform).
      fractions: of the observed pairs, the shares of train, validation and test.
      seed: the random seed.

    Returns:
      A :class:`Ratings`.
    """
    _check_arguments(num_users, num_items, rank, per_user, noise, taste, fractions)
    rng = np.random.default_rng(seed)
    scores = _clean_scores(rng, num_users, num_items, rank)
    users, items = _observed_pairs(rng, scores, per_user, taste)
    values = to_rating(scores[users, items] + rng.normal(0, noise, size=len(users)))
    order = rng.permutation(len(users))
    cuts = np.round(np.cumsum(fractions)[:2] * len(users)).astype(int)
    splits = {
        name: {"user": users[part].astype(np.int32), "item": items[part].astype(np.int32), "rating": values[part]}
        for name, part in zip(SPLITS, np.split(order, cuts))
    }
    return Ratings(**splits, num_users=num_users, num_items=num_items, scores=scores.astype(np.float32))


def _split(data: Ratings, split: str) -> dict[str, np.ndarray]:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return getattr(data, split)


def noise_floor(data: Ratings, split: str = "test", *, rounded: bool = True) -> float:
    """The MAE of predicting each rating of ``split`` by its clean score, rounded and clipped to 1..5.

    The best MAE a model can expect: see the module docstring. With ``rounded=False`` the
    clean scores are only clipped to [1, 5]: the MAE of a perfect model whose predictions
    are not rounded (higher, since a rating's median is an integer).
    """
    pairs = _split(data, split)
    scores = data.scores[pairs["user"], pairs["item"]]
    clean = to_rating(scores) if rounded else np.clip(scores, 1, 5)
    return float(np.mean(np.abs(pairs["rating"] - clean), dtype=np.float64))


def positives(data: Ratings, splits: tuple[str, ...] = SPLITS, *, threshold: float = 4) -> np.ndarray:
    """Implicit feedback: ``(num_users, num_items)`` bool, True where a rating >= ``threshold`` is in ``splits``."""
    mask = np.zeros((data.num_users, data.num_items), dtype=bool)
    for split in splits:
        pairs = _split(data, split)
        liked = pairs["rating"] >= threshold
        mask[pairs["user"][liked], pairs["item"][liked]] = True
    return mask


def positive_pairs(data: Ratings, split: str, *, threshold: float = 4) -> dict[str, np.ndarray]:
    """The (user, item) pairs of ``split`` rated >= ``threshold``: ``{"user": (n,), "item": (n,)}`` int32."""
    pairs = _split(data, split)
    liked = pairs["rating"] >= threshold
    return {"user": pairs["user"][liked], "item": pairs["item"][liked]}
