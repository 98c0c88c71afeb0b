"""A variational autoencoder with a 2-D latent space on the 8x8 digits, Bernoulli likelihood.

Command: fundl run vae_digits
Expected: about 14 s on a laptop CPU (6 s of it training); test neg_elbo about 24.3 nats
per image, of which kl about 2.5 (validation neg_elbo 40.0 after the first epoch, 24.7
at the end).

The convolutional variant (stride-2 convolutions down, transposed convolutions up):
Command: fundl run vae_digits --set model.kind=conv --set train.epochs=100
Expected: about 17 s (7 s of it training); test neg_elbo about 25.7 (validation: 43.9
after one epoch).

A fifth of the training images is held out for validation, evaluated after every epoch;
the test split is scored once, at the end. The pixels are the digits' grey levels in
[0, 1], read as soft Bernoulli targets; the best reconstruction term possible on the test
split (the pixels' own entropy) is 13.7.
Besides the usual files the run directory gets three pictures: ``samples.png`` (images
decoded from z ~ N(0, I)), ``reconstructions.png`` (test images, each row followed by
their reconstructions from the posterior mean) and ``latent.png`` (the test images'
posterior means coloured by digit; the first two principal components when
``model.latent`` > 2).
"""

import jax
import numpy as np
from fundl.examples.mlp_digits import VALIDATION

import fundl as fl
from fundl.models import conv_vae, decode, encode, mlp_vae, neg_elbo_loss, sample_prior
from fundl.plots import image_grid, scatter_2d
from fundl.runs import ConfigError, Experiment, Run

CONFIG = {
    "seed": 0,
    "model": {
        "kind": "mlp",  # "mlp" or "conv"
        "latent": 2,  # the size of the latent space
        "hidden": [256, 128],  # mlp: encoder widths (the decoder mirrors them)
        "channels": [16, 32],  # conv: encoder channels, each halving height and width
        "likelihood": "bernoulli",  # or "gaussian"
        "sigma": 0.1,  # the gaussian likelihood's fixed standard deviation
    },
    # 11 steps an epoch: the first evaluation (after one epoch) still sees most of the fall,
    # 38.7 there and 24.4 at the end. With batches of 32 the first epoch alone gets to 28.4.
    "train": {"epochs": 200, "batch_size": 128},
    "checkpoint": {"every_epochs": 20},  # 200 short epochs: a checkpoint every 220 steps
    "optimizer": {"name": "adam", "learning_rate": 0.001},
}


def project_2d(points: np.ndarray) -> tuple[np.ndarray, tuple[str, str]]:
    """``points (n, d)`` as ``(n, 2)``: as they are for d = 2, else the first two principal components."""
    if points.shape[1] == 2:
        return points, ("z1", "z2")
    centred = points - points.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T, ("PC1 of z", "PC2 of z")


def experiment(config: dict) -> Experiment:
    m = config["model"]
    data = fl.datasets.digits(validation=VALIDATION)
    if m["kind"] == "mlp":
        v = mlp_vae((8, 8), m["hidden"], m["latent"], likelihood=m["likelihood"])
        image = lambda split: {"image": split["image"]}  # noqa: E731  (n, 8, 8)
    elif m["kind"] == "conv":
        v = conv_vae((8, 8, 1), m["channels"], m["latent"], likelihood=m["likelihood"])
        image = lambda split: {"image": split["image"][..., None]}  # noqa: E731  (n, 8, 8, 1)
    else:
        raise ConfigError(f"unknown model kind {m['kind']!r} (key 'model.kind'); available: mlp, conv")
    train, test = image(data["train"]), image(data["test"])

    def report(run: Run) -> None:
        params, state = run.train_state.params, run.train_state.state
        key = jax.random.fold_in(jax.random.key(run.config["seed"]), 1)
        samples = sample_prior(v, params, key, 50, state=state)
        image_grid(np.asarray(samples), run.directory / "samples.png", title="decoded from z ~ N(0, I)")

        x = test["image"][:30]
        mean, _ = encode(v, params, x, state=state)
        inputs, outputs = (np.asarray(a).reshape(3, 10, 8, 8) for a in (x, decode(v, params, mean, state=state)))
        pairs = np.stack([inputs, outputs], axis=1).reshape(60, 8, 8)  # rows: inputs, outputs, inputs, ...
        image_grid(
            pairs,
            run.directory / "reconstructions.png",
            title="test images (odd rows), their reconstructions (even rows)",
        )

        mean, _ = encode(v, params, test["image"], state=state)
        points, axis_labels = project_2d(np.asarray(mean))
        scatter_2d(
            points,
            data["test"]["label"],
            run.directory / "latent.png",
            title="posterior means of the test digits",
            axis_labels=axis_labels,
        )

    return Experiment(
        model=v.model,
        input_shape=(config["train"]["batch_size"], *train["image"].shape[1:]),
        loss_fn=neg_elbo_loss(v, sigma=m["sigma"]),
        train_data=train,
        eval_data={"validation": image(data["validation"])},
        test_data={"test": test},
        report=report,
    )
