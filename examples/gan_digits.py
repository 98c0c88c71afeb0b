"""A GAN with dense players on the 8x8 digits, trained by the one ``fit``.

Command: fundl run gan_digits
Expected: about 40 s on a busy 2-core CPU (the GAN's 200 epochs 15 s, the judge's
training 10 s, the rest start-up, compilation and pictures); a CNN classifier trained on
the real digits (the judge) labels 1,000 generated images with mean max-probability
about 0.81 and a histogram of predicted classes of entropy about 2.2 nats (ln 10 = 2.30
when the ten classes are equally frequent; a generator that collapsed to one mode scores 0).

**Two players, one loss, one gradient.** ``fit`` takes one gradient of one scalar loss
per step and applies one optax optimizer. The params are ``{"generator": ...,
"discriminator": ...}`` and :func:`fundl.models.gan_loss` is the sum of the players'
losses, each cut with ``lax.stop_gradient`` so that it reaches only its own player: the
discriminator's term sees the generated images stopped, the generator's term sees the
discriminator's params stopped. The one gradient is then each player's own gradient,
side by side. **The players are updated simultaneously, from the same point**: the
generator's step uses the gradient against the discriminator *before* that
discriminator's update of the same step (the classic loop updates D, then computes G's
gradient against the new D).

**Alternating without changing fit.** Give ``fit`` the optimizer
``gan_optimizer(g_opt, d_opt, alternate=True)``: it updates the discriminator on even
steps and the generator on odd steps (``optax.transforms.conditionally_mask`` leaves the
resting player's params and optimizer state alone). Each step's gradient is taken at the
params left by the previous step, so the generator's gradient is taken against the
discriminator just updated: true alternation, at two ``fit`` steps (each computing both
gradients, one of them unused) per round. ``fundl run`` cannot do this today: it builds
the optimizer from the config's ``optimizer.*`` keys, and an ``Experiment`` has no field
for an optimizer of its own (e.g. ``gan_optimizer(optax.adam(2e-4, b1=0.5), ...)``).

**The optimizer here.** One RMSprop(2e-4) over the whole params tree. RMSprop (like Adam)
works element by element, so one instance over ``{"generator", "discriminator"}`` is
exactly one per player with the same settings. Measured at 100 epochs, seeds 0-2: Adam
with the config's fixed b1 = 0.9 dropped modes (class entropy 1.7-1.9); RMSprop, which
has no momentum, reached 2.1-2.2, as did Adam(2e-4, b1=0.5) per player through ``fit``
directly (2.0-2.2, and 2.26 alternating for 200 epochs, seed 0).

Besides the usual files the run directory gets ``samples.png`` (100 generated images,
each titled with the judge's class and probability), ``samples_by_epoch.png`` (the same
ten noise vectors decoded after about ten evenly spaced epochs, one row each),
``samples_by_epoch.npy`` (those images after every epoch, ``(epochs, 10, 8, 8)``),
``gan_quality.json`` (the judge's scores) and ``classifier/``, the judge's own run
directory (``cnn_digits`` with this run's seed).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
from fundl.examples.mlp_digits import VALIDATION

import fundl as fl
from fundl.models import GAN, gan_loss, gan_samples, mlp_gan, sample_quality
from fundl.runs import Experiment, Run, run as run_example
from fundl.train import Event

CONFIG = {
    "seed": 0,
    "model": {
        "latent": 16,  # the size of the generator's noise vector
        "generator_hidden": [128, 256],  # the generator's hidden layers
        "discriminator_hidden": [256, 128],  # the discriminator's hidden layers
    },
    "train": {"epochs": 200, "batch_size": 64},
    "optimizer": {"name": "rmsprop", "learning_rate": 0.0002},
    # 200 short epochs (23 steps): a checkpoint per epoch would cost more than the training
    "checkpoint": {"every_epochs": 50},
    "judge": {
        "samples": 1000,  # generated images the classifier labels
        "epochs": 15,  # of the cnn_digits classifier, trained on the real digits
        "min_mean_max_prob": 0.8,  # acceptance: the classifier's mean top probability on the samples
        "min_class_entropy": 2.0,  # acceptance: the entropy of the samples' predicted classes (ln 10 = 2.30 at most)
    },
}

PROGRESS_SAMPLES = 10  # images per epoch in samples_by_epoch


class EpochSamples:
    """Hook: at every epoch end, keeps the images generated from one fixed noise, ``(10, 8, 8)``.

    Its ``frames`` are its state (``state_dict``), so a resumed run keeps the epochs it had.
    """

    def __init__(self, g: GAN, key: jax.Array):
        self._sample = jax.jit(lambda params, state: gan_samples(g, params, key, PROGRESS_SAMPLES, state=state))
        self.frames: list[np.ndarray] = []

    def __call__(self, event: Event) -> None:
        if event.kind == "epoch_end":
            self.frames.append(np.asarray(self._sample(event.train_state.params, event.train_state.state)))

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"frames": np.stack(self.frames) if self.frames else np.zeros((0, PROGRESS_SAMPLES, 8, 8), np.float32)}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.frames = list(np.asarray(state["frames"]))


def draw_mosaic(
    images: np.ndarray,
    path: Path,
    *,
    title: str,
    row_labels: list[str] | None = None,
    cell_labels: list[str] | None = None,
) -> None:
    """Draws ``images (rows, columns, height, width)`` in [0, 1] as one picture, grey on white.

    One ``imshow`` of the whole mosaic (a figure with one axes per image takes seconds for
    a hundred images); ``row_labels`` go on the left, ``cell_labels`` (row by row) above each image.
    """
    from matplotlib.figure import Figure

    rows, columns, height, width = images.shape
    top = 4 if cell_labels else 1  # white space above each image, room for its label
    padded = np.pad(images, ((0, 0), (0, 0), (top, 1), (1, 1)))
    cell_h, cell_w = height + top + 1, width + 2
    mosaic = padded.transpose(0, 2, 1, 3).reshape(rows * cell_h, columns * cell_w)
    fig = Figure(
        figsize=(0.09 * mosaic.shape[1] + (1.0 if row_labels else 0.2), 0.09 * mosaic.shape[0] + 0.5),
        layout="constrained",
    )
    ax = fig.add_subplot()
    ax.imshow(mosaic, cmap="gray_r", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([cell_h * (r + 0.5) for r in range(rows)] if row_labels else [], labels=row_labels or [])
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    for i, label in enumerate(cell_labels or []):
        r, c = divmod(i, columns)
        ax.text(c * cell_w + 0.5, r * cell_h + top - 0.7, label, fontsize=7, color="tab:blue", va="bottom")
    ax.set_title(title)
    fig.savefig(path, dpi=100, bbox_inches="tight")


def draw_progress(frames: list[np.ndarray], run: Run) -> None:
    """``samples_by_epoch.npy`` (every epoch) and ``samples_by_epoch.png`` (about ten rows, the last epoch included)."""
    if not frames:
        return
    np.save(run.directory / "samples_by_epoch.npy", np.stack(frames))
    epochs = sorted({int(round(e)) for e in np.linspace(1, len(frames), min(10, len(frames)))})
    draw_mosaic(
        np.stack([frames[e - 1] for e in epochs]),
        run.directory / "samples_by_epoch.png",
        title="the same noise after each epoch shown",
        row_labels=[f"epoch {e}" for e in epochs],
    )


def judge(run: Run, g: GAN) -> dict:
    """Trains the ``cnn_digits`` classifier on the real digits and scores generated images with it."""
    config, j = run.config, run.config["judge"]
    classifier = run_example(
        "cnn_digits",
        [("seed", config["seed"]), ("train.epochs", j["epochs"])],
        out=str(run.directory / "classifier"),
        quiet=True,
        echo=lambda _: None,
    )
    model, params, state = classifier.experiment.model, classifier.train_state.params, classifier.train_state.state
    images = gan_samples(
        g,
        run.train_state.params,
        jax.random.fold_in(jax.random.key(config["seed"]), 2),
        j["samples"],
        state=run.train_state.state,
    )
    logits, _ = jax.jit(lambda x: model.apply(params, state, x))(images[..., None])
    probs = np.asarray(jax.nn.softmax(logits))
    quality = sample_quality(probs)
    quality.update(
        samples=j["samples"],
        classifier_test_accuracy=classifier.summary["metrics"]["test"]["accuracy"],
        passed=quality["mean_max_prob"] >= j["min_mean_max_prob"]
        and quality["class_entropy"] >= j["min_class_entropy"],
    )
    shown = np.asarray(images[:100])
    rows = -(-len(shown) // 10)
    grid = np.concatenate(
        [shown, np.zeros((rows * 10 - len(shown), 8, 8), shown.dtype)]
    )  # blank cells fill the last row
    labels = [f"{c} {p:.2f}" for c, p in zip(probs.argmax(1)[:100], probs.max(1)[:100])]
    draw_mosaic(
        grid.reshape(rows, 10, 8, 8),
        run.directory / "samples.png",
        cell_labels=labels,
        title="generated digits, each with the classifier's class and probability",
    )
    return quality


def experiment(config: dict) -> Experiment:
    m = config["model"]
    g = mlp_gan(
        (8, 8), m["latent"], generator_hidden=m["generator_hidden"], discriminator_hidden=m["discriminator_hidden"]
    )
    data = fl.datasets.digits(validation=VALIDATION)
    progress = EpochSamples(g, jax.random.fold_in(jax.random.key(config["seed"]), 1))

    def report(run: Run) -> None:
        draw_progress(progress.frames, run)
        quality = judge(run, g)
        (run.directory / "gan_quality.json").write_text(json.dumps(quality, indent=2) + "\n")
        print(
            f"gan quality: mean max-probability {quality['mean_max_prob']:.3f}, class entropy "
            f"{quality['class_entropy']:.3f} nats (ln 10 = 2.303), classes {quality['class_counts']}"
        )

    return Experiment(
        model=g.model,
        input_shape=(config["train"]["batch_size"], m["latent"]),
        loss_fn=gan_loss(g),
        train_data={"image": data["train"]["image"]},
        eval_data={"validation": {"image": data["validation"]["image"]}},
        test_data={"test": {"image": data["test"]["image"]}},
        hooks=[progress],
        report=report,
    )
