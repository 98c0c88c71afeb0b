"""Promises that were guarded only by luck: each test states one, so that a plausible one-line bug fails it.

(The optimizer state a finished run saves; the hooks' state a checkpoint restores when it is not
zero; FSDP on a dimension its size does not divide; a frozen sweep member; the loss under
bfloat16; which checkpoints keep-N keeps; gradient accumulation seen through SGD.)
"""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from child import run_python

import fundl as fl
from fundl import runs
from fundl.runs._checkpoints import _payload
from fundl.train import TrainState, classification_loss, fit, with_precision

QUIET = {"quiet": True, "echo": lambda _: None}


def records(directory: Path) -> list[dict]:
    return [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]


def test_the_final_state_a_run_saves_holds_its_optimizer_state(tmp_path):
    settings = [("train.epochs", 1), ("optimizer.name", "adam"), ("optimizer.learning_rate", 0.001)]
    done = runs.run("mlp_digits", settings, out=str(tmp_path / "adam"), **QUIET)
    loaded = runs.load_run(tmp_path / "adam").train_state
    saved, trained = jax.tree.leaves(loaded.opt_state), jax.tree.leaves(done.train_state.opt_state)
    assert len(saved) == len(trained) > 2  # Adam's count, and a first and second moment per param
    for a, b in zip(saved, trained):
        assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))
    assert int(loaded.opt_state[0].count) == 38 == int(loaded.step)
    assert all(float(jnp.abs(mu).max()) > 0 for mu in jax.tree.leaves(loaded.opt_state[0].mu))


def test_early_stoppings_patience_comes_back_mid_way_on_resume(tmp_path):
    patience, min_delta = 3, 0.02
    settings = [
        ("train.epochs", 12),
        ("train.eval_every", 7),
        ("early_stopping.metric", "validation/loss"),
        ("early_stopping.patience", patience),
        ("early_stopping.min_delta", min_delta),
    ]
    whole = runs.run("mlp_digits", settings, out=str(tmp_path / "whole"), **QUIET)
    assert whole.history.stop_reason.startswith("early stopping")
    # the evaluation after which the counter stands at patience - 1: the next non-improving one stops the run
    best, waited, counted = None, 0, []
    for r in (r for r in whole.history.records if r.split == "validation"):
        best, waited = (
            (r.metrics["loss"], 0) if best is None or best - r.metrics["loss"] > min_delta else (best, waited + 1)
        )
        counted.append((r.step, waited))
    step = [s for s, w in counted if w == patience - 1][-1]
    runs.run("mlp_digits", settings, out=str(tmp_path / "cut"), stop_after_steps=step, **QUIET)
    hooks = _payload(tmp_path / "cut" / "checkpoints" / f"{step}.ckpt")["hooks"][0]
    assert {"best": best, "waited": patience - 1} in hooks  # the checkpoint holds a counter that is not zero
    resumed = runs.resume(tmp_path / "cut", **QUIET)
    assert resumed.history.steps == whole.history.steps and resumed.history.stop_reason == whole.history.stop_reason
    assert resumed.summary["params_fingerprint"] == whole.summary["params_fingerprint"]


def test_fsdp_replicates_what_its_size_does_not_divide_and_trains_as_one_device():
    run_python(
        """
        import jax, numpy as np, optax
        import fundl as fl
        from jax.sharding import PartitionSpec as P
        from fundl.distributed import data_mesh
        from fundl.train import TrainState, classification_loss, fit
        data = fl.datasets.digits()["train"]
        model = fl.serial(fl.flatten(), fl.dense(33), fl.relu(), fl.dense(10))  # 33 and 10: 2 divides 10 only
        _, params, state = model.init(jax.random.key(0), (32, 8, 8))
        sgd = optax.sgd(0.1)
        start = TrainState.create(params, state, sgd, jax.random.key(1))
        train = lambda mesh: fit(classification_loss(model), sgd, start, data, batch_size=32, steps=20, mesh=mesh,
                                 quiet=True)[0]
        one = train(1)
        expected = {
            2: {"dense_0": (P("fsdp", None), P()), "dense_1": (P(None, "fsdp"), P("fsdp"))},
            4: {"dense_0": (P("fsdp", None), P()), "dense_1": (P(), P())},  # (33, 10): 4 divides neither
        }
        for size, specs in expected.items():
            sharded = train(data_mesh(8, fsdp=size))
            for name, (w, b) in specs.items():
                got = sharded.params[name]
                assert (got["w"].sharding.spec, got["b"].sharding.spec) == (w, b), (size, name, got["w"].sharding)
            for a, b in zip(jax.tree.leaves(sharded.params), jax.tree.leaves(one.params)):
                np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
        """,
        devices=8,
        timeout=300,
    )


def test_the_loss_under_bfloat16_is_float32_and_the_bfloat16_computation():
    model = fl.serial(fl.flatten(), fl.dense(32), fl.tanh(), fl.dense(10))
    data = fl.datasets.digits()["train"]
    batch = {"image": data["image"][:64], "label": data["label"][:64]}
    _, params, state = model.init(jax.random.key(0), (64, 8, 8))
    loss = classification_loss(model)
    low, (_, metrics) = jax.jit(with_precision(loss, "bfloat16"))(params, state, batch, None)
    full, _ = jax.jit(loss)(params, state, batch, None)
    to16 = lambda tree: jax.tree.map(lambda a: a.astype(jnp.bfloat16), tree)  # noqa: E731
    by_hand, _ = jax.jit(loss)(to16(params), state, {**batch, "image": to16(batch["image"])}, None)
    assert low.dtype == jnp.float32 and all(m.dtype == jnp.float32 for m in metrics.values())
    assert float(low) == float(by_hand.astype(jnp.float32))  # the model computed in bfloat16, the loss given as float32
    assert 0 < abs(float(low) - float(full)) < 1e-2 * float(full)  # bfloat16's rounding, not another loss


def test_keep_n_keeps_the_latest_n_and_the_best(tmp_path):
    settings = [
        ("train.epochs", 3),
        ("checkpoint.every_steps", 10),
        ("checkpoint.keep", 2),
        ("checkpoint.best", "validation/accuracy"),
        ("checkpoint.best_mode", "min"),  # the worst accuracy: early in training, never among the latest
        ("train.eval_every", 19),
    ]
    runs.run("mlp_digits", settings, out=str(tmp_path / "run"), **QUIET)
    saved = sorted({*range(10, 115, 10), 38, 76, 114})  # every 10 steps, every epoch, and the end
    evals = [(r["step"], r["accuracy"]) for r in records(tmp_path / "run") if r["split"] == "validation"]
    scores = {s: [acc for step, acc in evals if step <= s][-1] for s in saved if s >= evals[0][0]}
    best = min(scores, key=lambda s: (scores[s], s))  # ties: the earliest (for "max": the latest)
    assert best not in saved[-2:]  # else the test could not tell "the best" from "the latest"
    kept = sorted(int(p.stem) for p in (tmp_path / "run" / "checkpoints").glob("*.ckpt"))
    assert kept == sorted({*saved[-2:], best})


def test_accumulated_micro_batches_equal_one_batch_through_sgd():
    """SGD applies the gradient as it is: a sum of micro-batch gradients instead of their mean would be 4x the step
    (Adam normalises the scale away, so it cannot tell)."""
    data = fl.datasets.digits()["train"]
    model = fl.serial(fl.flatten(), fl.dense(32), fl.tanh(), fl.dense(10))
    sgd = optax.sgd(0.5)
    _, params, state = model.init(jax.random.key(0), (32, 8, 8))
    start = TrainState.create(params, state, sgd, jax.random.key(1))
    common = dict(batch_size=32, steps=3, log_every=1, quiet=True)
    whole, h1 = fit(classification_loss(model), sgd, start, data, **common)
    micro, h4 = fit(classification_loss(model), sgd, start, data, accumulate=4, **common)
    moved = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(params)))
    assert moved > 1e-2  # the updates are large enough to show a scale error
    for a, b in zip(jax.tree.leaves(micro.params), jax.tree.leaves(whole.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert [r.metrics["loss"] for r in h4.records] == pytest.approx([r.metrics["loss"] for r in h1.records], rel=1e-5)
