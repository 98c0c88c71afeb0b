"""Recommender systems: the synthetic ratings, the models and losses, the per-user AUC, both examples tiny."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fundl as fl
from fundl import runs
from fundl.datasets import Ratings, noise_floor, positive_pairs, positives, ratings, to_rating
from fundl.models import (
    deep_recommender,
    dot_recommender,
    mean_user_auc,
    per_user_auc,
    rating_loss,
    score_matrix,
    triplet_loss,
)

TINY_DATA = [("data.users", 120), ("data.items", 80), ("data.per_user", 30)]


def pair_ids(split, num_items):
    return split["user"].astype(np.int64) * num_items + split["item"]


# --- the generator ---------------------------------------------------------------------


def test_ratings_are_deterministic_integers_in_range_and_splits_are_disjoint():
    data = ratings(60, 40, per_user=10, seed=3)
    again, other = ratings(60, 40, per_user=10, seed=3), ratings(60, 40, per_user=10, seed=4)
    for name in ("train", "validation", "test"):
        for column in ("user", "item", "rating"):
            np.testing.assert_array_equal(getattr(data, name)[column], getattr(again, name)[column])
    assert not np.array_equal(data.train["rating"], other.train["rating"])
    ids = [pair_ids(getattr(data, name), 40) for name in ("train", "validation", "test")]
    everything = np.concatenate(ids)
    assert len(np.unique(everything)) == len(everything)  # no pair twice, in one split or across them
    cut80, cut90 = int(np.round(0.8 * len(everything))), int(np.round(0.9 * len(everything)))
    assert [len(i) for i in ids] == [cut80, cut90 - cut80, len(everything) - cut90]
    for split in (data.train, data.validation, data.test):
        assert (
            split["user"].dtype == np.int32 and split["item"].dtype == np.int32 and split["rating"].dtype == np.float32
        )
        assert set(np.unique(split["rating"])) <= {1.0, 2.0, 3.0, 4.0, 5.0}
        assert (
            split["user"].max() < 60 and split["item"].max() < 40 and min(split["user"].min(), split["item"].min()) >= 0
        )
    counts = np.bincount(everything // 40, minlength=60)
    assert counts.min() >= 5 and counts.max() <= 15  # per_user // 2 to 1.5 * per_user ratings each
    assert data.scores.shape == (60, 40)


def test_users_rate_what_they_like_when_taste_is_positive():
    picky, uniform = (
        ratings(200, 100, per_user=20, taste=2.0, seed=0),
        ratings(200, 100, per_user=20, taste=0.0, seed=0),
    )
    mean_score = lambda d: d.scores[d.train["user"], d.train["item"]].mean()  # noqa: E731
    assert mean_score(picky) > mean_score(uniform) + 0.5


def test_rounding_and_the_noise_floor_by_hand():
    np.testing.assert_array_equal(to_rating([2.5, 0.3, 7.0, 3.49]), [3, 1, 5, 3])
    scores = np.array([[1.4, 3.6], [4.7, 0.2]], np.float32)
    test = {
        "user": np.array([0, 0, 1, 1], np.int32),
        "item": np.array([0, 1, 0, 1], np.int32),
        "rating": np.array([2, 4, 3, 1], np.float32),
    }
    empty = {k: v[:0] for k, v in test.items()}
    data = Ratings(train=test, validation=empty, test=test, num_users=2, num_items=2, scores=scores)
    # clean ratings 1, 4, 5, 1 -> |2-1| + |4-4| + |3-5| + |1-1| = 3 over 4 ratings
    assert noise_floor(data) == pytest.approx(0.75)
    # unrounded: 1.4, 3.6, 4.7, 1.0 (clipped) -> 0.6 + 0.4 + 1.7 + 0 = 2.7
    assert noise_floor(data, rounded=False) == pytest.approx(0.675, abs=1e-6)
    np.testing.assert_array_equal(positives(data, ("test",)), [[False, True], [False, False]])
    assert positive_pairs(data, "test", threshold=2)["item"].tolist() == [0, 1, 0]
    with pytest.raises(ValueError, match="unknown split 'dev'; expected one of train, validation, test"):
        noise_floor(data, "dev")


def test_ratings_argument_errors():
    with pytest.raises(ValueError, match="`per_user` \\(30\\) can be at most half of `num_items` \\(40\\)"):
        ratings(10, 40, per_user=30)
    with pytest.raises(ValueError, match="`fractions` must be three positive numbers"):
        ratings(10, 40, per_user=5, fractions=(0.5, 0.5, 0.0))


# --- models and losses -------------------------------------------------------------------


def test_dot_recommender_is_the_dot_product_plus_biases():
    model = dot_recommender(5, 7, 3, offset=2.0)
    shape, params, _ = model.init(jax.random.key(0), ((4,), (4,)))
    assert shape == (4,)
    emb = params["embeddings"]
    assert emb["user"]["vector"]["table"].shape == (5, 3) and emb["item"]["bias"]["table"].shape == (7, 1)
    params = jax.tree.map(lambda t: t + jax.random.normal(jax.random.key(1), t.shape), params)  # non-zero biases
    users, items = np.array([0, 4, 2, 2]), np.array([6, 0, 3, 3])
    scores, _ = model.apply(params, {}, (jnp.asarray(users), jnp.asarray(items)))
    emb = params["embeddings"]
    u, i, bu, bi = (
        np.asarray(emb[s][p]["table"])
        for s, p in (("user", "vector"), ("item", "vector"), ("user", "bias"), ("item", "bias"))
    )
    np.testing.assert_allclose(scores, 2.0 + np.sum(u[users] * i[items], 1) + bu[users, 0] + bi[items, 0], rtol=1e-5)
    assert (
        "bias"
        not in dot_recommender(5, 7, 3, user_bias=False).init(jax.random.key(0), ((4,), (4,)))[1]["embeddings"]["user"]
    )
    with pytest.raises(fl.LayerError, match=r"dot_recommender expects a pair of id arrays of one shape"):
        model.init(jax.random.key(0), (4,))


def test_deep_recommender_shapes():
    model = deep_recommender(5, 7, 3, hidden=(8,), offset=1.0)
    shape, params, _ = model.init(jax.random.key(0), ((4,), (4,)))
    assert shape == (4,) and params["mlp"]["dense_0"]["w"].shape == (6, 8)
    assert score_matrix(model, params, {}, 5, 7).shape == (5, 7)


def test_rating_loss_is_mae_or_mse():
    model = dot_recommender(3, 3, 2, offset=3.0)
    _, params, state = model.init(jax.random.key(0), ((2,), (2,)))
    batch = {"user": jnp.array([0, 1]), "item": jnp.array([1, 2]), "rating": jnp.array([5.0, 1.0])}
    predicted = np.asarray(model.apply(params, state, (batch["user"], batch["item"]))[0])
    mae, (_, metrics) = rating_loss(model, "mae")(params, state, batch, None)
    mse, _ = rating_loss(model, "mse")(params, state, batch, None)
    assert (
        float(mae)
        == pytest.approx(np.mean(np.abs(predicted - [5, 1])), rel=1e-5)
        == pytest.approx(float(metrics["mae"]))
    )
    assert float(mse) == pytest.approx(np.mean((predicted - [5, 1]) ** 2), rel=1e-5)
    with pytest.raises(ValueError, match="unknown loss 'l1'; expected one of mae, mse"):
        rating_loss(model, "l1")


def test_triplet_loss_against_numpy():
    model = dot_recommender(6, 9, 4, user_bias=False, init_std=1.0)
    _, params, state = model.init(jax.random.key(2), ((5,), (5,)))
    users, items, negatives = np.array([0, 1, 5, 3, 3]), np.array([2, 8, 0, 4, 4]), np.array([1, 8, 7, 0, 6])
    batch = {"user": jnp.asarray(users), "item": jnp.asarray(items), "negative": jnp.asarray(negatives)}
    loss, (_, metrics) = triplet_loss(model, 9, margin=0.7)(params, state, batch, None, train=False)
    emb = params["embeddings"]
    u, v, b = (
        np.asarray(emb["user"]["vector"]["table"]),
        np.asarray(emb["item"]["vector"]["table"]),
        np.asarray(emb["item"]["bias"]["table"])[:, 0],
    )
    pos = np.sum(u[users] * v[items], 1) + b[items]
    neg = np.sum(u[users] * v[negatives], 1) + b[negatives]
    np.testing.assert_allclose(loss, np.mean(np.maximum(0.0, 0.7 - pos + neg)), rtol=1e-5)
    np.testing.assert_allclose(metrics["ordered"], np.mean(pos > neg))
    assert np.any(0.7 - pos + neg < 0)  # the hinge is active for some triplets and not others
    assert np.any(0.7 - pos + neg > 0)


def test_triplet_loss_draws_its_negatives_from_the_key():
    model = dot_recommender(6, 50, 4, user_bias=False, init_std=1.0)
    _, params, state = model.init(jax.random.key(0), ((64,), (64,)))
    batch = {"user": jnp.arange(64) % 6, "item": jnp.arange(64) % 50}
    loss_fn = jax.jit(triplet_loss(model, 50))
    a, b, c = (float(loss_fn(params, state, batch, jax.random.key(k))[0]) for k in (1, 1, 2))
    assert a == b != c
    with pytest.raises(
        ValueError, match=r'without a key \(evaluation\) the batch must carry its negative items as batch\["negative"\]'
    ):
        triplet_loss(model, 50)(params, state, batch, None)


# --- the per-user AUC --------------------------------------------------------------------


def brute_force_auc(scores, positives, negatives):
    result = []
    for s, p, n in zip(scores, positives, negatives):
        if not p.any() or not n.any():
            result.append(np.nan)
            continue
        diff = s[p][:, None] - s[n][None, :]
        result.append(np.mean((diff > 0) + 0.5 * (diff == 0)))
    return np.array(result)


def test_per_user_auc_matches_the_pairwise_count_ties_included():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, size=(40, 30)).astype(np.float32)  # many ties
    kind = rng.integers(0, 3, size=(40, 30))  # 0: positive, 1: negative, 2: ignored
    kind[0] = 1  # a user without positives
    auc = per_user_auc(scores, kind == 0, kind == 1)
    np.testing.assert_allclose(auc, brute_force_auc(scores, kind == 0, kind == 1), rtol=1e-6)
    assert np.isnan(auc[0]) and not np.isnan(auc[1:]).any()


def test_per_user_auc_of_random_and_perfect_scores():
    rng = np.random.default_rng(1)
    liked = rng.random((300, 100)) < 0.1
    assert mean_user_auc(rng.normal(size=liked.shape), liked, ~liked) == pytest.approx(0.5, abs=0.02)
    assert mean_user_auc(liked + rng.random(liked.shape) * 0.5, liked, ~liked) == 1.0
    assert mean_user_auc(-(liked + rng.random(liked.shape) * 0.5), liked, ~liked) == 0.0
    with pytest.raises(ValueError, match="cannot be both a positive and a negative"):
        per_user_auc(np.zeros((2, 3)), np.ones((2, 3), bool), np.ones((2, 3), bool))
    with pytest.raises(ValueError, match=r"one shape \(users, items\); got \(2, 3\), \(2, 3\), \(3, 2\)"):
        per_user_auc(np.zeros((2, 3)), np.ones((2, 3), bool), np.ones((3, 2), bool))


# --- both examples, tiny, through `fundl run` ----------------------------------------------


def quiet_run(example, settings, out):
    return runs.run(example, settings, out=str(out), quiet=True, echo=lambda _: None)


def train_losses(done):
    return [r.metrics["loss"] for r in done.history.records if r.split == "train"]


@pytest.mark.parametrize("kind", ["dot", "deep"])
def test_recsys_explicit_runs_and_learns(tmp_path, kind):
    done = quiet_run(
        "recsys_explicit",
        [*TINY_DATA, ("model.kind", kind), ("train.epochs", 3), ("train.batch_size", 64)],
        tmp_path / "run",
    )
    results = json.loads((tmp_path / "run" / "ratings.json").read_text())
    assert all(np.isfinite(v) for v in results.values())
    assert results["test_mae"] < results["test_mae_at_init"] and results["noise_floor"] > 0
    losses = train_losses(done)
    assert losses[-1] < losses[0]
    assert set(done.summary["metrics"]) == {"train", "validation", "test"}  # the test split scored once, at the end
    assert done.summary["metrics"]["test"]["mae"] == pytest.approx(
        results["test_mae_unrounded"], rel=1e-5
    )  # as report() measured it


def test_recsys_triplet_runs_and_learns(tmp_path):
    done = quiet_run("recsys_triplet", [*TINY_DATA, ("train.epochs", 3), ("train.batch_size", 64)], tmp_path / "run")
    results = json.loads((tmp_path / "run" / "ranking.json").read_text())
    assert 0.35 < results["mean_user_auc_at_init"] < 0.65
    assert results["mean_user_auc"] > results["mean_user_auc_at_init"] + 0.1
    assert results["users_evaluated"] > 50
    losses = train_losses(done)
    assert losses[-1] < losses[0] and np.isfinite(losses).all()
    assert "ordered" in done.summary["metrics"]["validation"]
