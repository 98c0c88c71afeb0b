"""Explicit feedback: predict 1-5 ratings from user and item embeddings (synthetic ratings).

Command: fundl run recsys_explicit
Expected: about 17 s on a laptop CPU; test MAE about 0.32, against 0.90 for the untrained
model (which predicts about the mean training rating) and a noise floor of 0.29 (x1.11).

The deep variant, the two embeddings concatenated and fed to an MLP:
Command: fundl run recsys_explicit --set model.kind=deep
Expected: about 20 s; test MAE about 0.47 (it overfits: the dot product is the data's model).

The course's lab does this on MovieLens 100k; here the ratings come from
:func:`fundl.datasets.ratings`, a known rank-4 model with user and item biases plus
Gaussian noise, rounded and clipped to 1..5 (1000 users, 600 items, about 150,000
ratings, a quarter of all pairs, generated from ``data.seed``, nothing to download).
Because the clean scores are known, so is the **noise floor**: the test MAE of the clean
scores rounded and clipped the same way, which no model can expect to beat.

A rating is an integer, so the test MAE is that of the predictions rounded and clipped to
1..5 like the ratings and the floor. Unrounded predictions do worse (0.41 here) and cannot
get within 26 % of the floor even when perfect: their own floor, the clean scores clipped
but not rounded, is 0.36. The default loss is the MSE (``loss=mae`` also works): it fits
the mean rating, whose rounding is close to the median that the floor predicts.

Fit evaluates the validation split after every epoch; the test split is used once, at the
end, by ``report``, which prints and writes ``ratings.json``: the test MAE of the trained
model and of the model at its initial params, rounded and unrounded, and both floors.
"""

import json

import jax
import numpy as np
import optax

from fundl.datasets import noise_floor, ratings, to_rating
from fundl.models import deep_recommender, dot_recommender, rating_loss
from fundl.runs import ConfigError, Experiment, Run
from fundl.train import initial_train_state

CONFIG = {
    "seed": 0,
    "data": {
        "users": 1000,  # users of the synthetic ratings
        "items": 600,  # items of the synthetic ratings
        "rank": 4,  # latent factors of the model the ratings come from
        "per_user": 150,  # each user rates between per_user / 2 and 1.5 x per_user items
        "noise": 0.4,  # the standard deviation of the noise added to the clean scores
        "taste": 1.5,  # how strongly users rate what they like (0: the rated items are uniform)
        "seed": 0,  # the seed of the synthetic ratings
    },
    "model": {
        "kind": "dot",  # "dot": user and item embeddings' dot product plus biases; "deep": an MLP on both
        "features": 4,  # the size of each embedding
        "hidden": [64, 32],  # deep: the MLP's hidden layers
        "dropout": 0.0,  # deep: the dropout rate in the MLP
    },
    "loss": "mse",  # or "mae"
    "train": {"epochs": 20, "batch_size": 256},
    "optimizer": {"name": "adam", "learning_rate": 0.01, "schedule": "cosine"},
}


def generate(data: dict):
    return ratings(
        data["users"],
        data["items"],
        rank=data["rank"],
        per_user=data["per_user"],
        noise=data["noise"],
        taste=data["taste"],
        seed=data["seed"],
    )


def build_model(m: dict, num_users: int, num_items: int, offset: float):
    if m["kind"] == "dot":
        return dot_recommender(num_users, num_items, m["features"], offset=offset)
    if m["kind"] == "deep":
        return deep_recommender(
            num_users, num_items, m["features"], m["hidden"], offset=offset, dropout_rate=m["dropout"]
        )
    raise ConfigError(f"unknown model kind {m['kind']!r} (key 'model.kind'); available: dot, deep")


def predict(model, params, state, split: dict) -> np.ndarray:
    """``(n,)`` predicted ratings of a split's (user, item) pairs."""
    apply = jax.jit(lambda p, s, u, i: model.apply(p, s, (u, i), train=False)[0])
    return np.asarray(apply(params, state, split["user"], split["item"]))


def experiment(config: dict) -> Experiment:
    if config["loss"] not in ("mae", "mse"):
        raise ConfigError(f"unknown loss {config['loss']!r} (key 'loss'); available: mae, mse")
    data = generate(config["data"])
    offset = float(np.mean(data.train["rating"]))
    model = build_model(config["model"], data.num_users, data.num_items, offset)
    batch = (config["train"]["batch_size"],)

    def report(run: Run) -> None:
        test = data.test
        mae = lambda predicted: float(np.mean(np.abs(predicted - test["rating"]), dtype=np.float64))  # noqa: E731
        start = initial_train_state(
            run.experiment.model, run.experiment.input_shape, optax.identity(), run.config["seed"]
        )
        trained = predict(model, run.train_state.params, run.train_state.state, test)
        untrained = predict(model, start.params, start.state, test)
        results = {
            "test_mae": mae(to_rating(trained)),
            "test_mae_at_init": mae(to_rating(untrained)),
            "noise_floor": noise_floor(data, "test"),
            "test_mae_unrounded": mae(trained),
            "test_mae_unrounded_at_init": mae(untrained),
            "noise_floor_unrounded": noise_floor(data, "test", rounded=False),
            "test_ratings": len(test["rating"]),
        }
        results["mae_over_floor"] = results["test_mae"] / results["noise_floor"]
        results["mae_over_init"] = results["test_mae"] / results["test_mae_at_init"]
        (run.directory / "ratings.json").write_text(json.dumps(results, indent=2) + "\n")
        print(
            f"test MAE {results['test_mae']:.4f} (untrained {results['test_mae_at_init']:.4f}, noise floor "
            f"{results['noise_floor']:.4f}: x{results['mae_over_floor']:.3f}); unrounded predictions "
            f"{results['test_mae_unrounded']:.4f} (untrained {results['test_mae_unrounded_at_init']:.4f}, "
            f"floor {results['noise_floor_unrounded']:.4f})"
        )

    return Experiment(
        model=model,
        input_shape=(batch, batch),
        loss_fn=rating_loss(model, config["loss"]),
        train_data=data.train,
        eval_data={"validation": data.validation},
        test_data={"test": data.test},
        report=report,
    )
