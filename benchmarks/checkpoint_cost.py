"""What checkpoints cost: one save, and training mlp_digits with a checkpoint every epoch vs none.

    python benchmarks/checkpoint_cost.py [--rounds 5]

Prints the time a save blocks training and the time until it is on disk, for the digits
MLP and a 784-512-512-10 MLP (Adam state included), then the steady throughput of `fit`
on mlp_digits (15 epochs, 705 steps) with and without per-epoch checkpoints, in
interleaved rounds in this one process, medians, and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import jax
import optax

import fundl as fl
from fundl import runs
from fundl.runs import Checkpoints
from fundl.train import TrainState, fit, initial_train_state


def save_cost(widths: tuple[int, ...], saves: int = 10) -> tuple[float, float, int]:
    """Median ms a save blocks, median ms until written, and the state's bytes."""
    layers = []
    for width in widths[1:-1]:
        layers += [fl.dense(width), fl.relu()]
    model = fl.serial(*layers, fl.dense(widths[-1]))
    _, params, state = model.init(jax.random.key(0), (4, widths[0]))
    optimizer = optax.adam(1e-3)
    train_state = TrainState.create(params, state, optimizer, jax.random.key(1))
    checkpoints = Checkpoints(tempfile.mkdtemp(), steps_per_epoch=1, run_id="bench")
    checkpoints.save(0, train_state, [None], {})
    checkpoints.wait()
    blocking, written = [], []
    for step in range(1, saves + 1):
        start = time.perf_counter()
        checkpoints.save(step, train_state, {"hooks": [[None]]}, {})
        blocking.append(time.perf_counter() - start)
        checkpoints.wait()
        written.append(time.perf_counter() - start)
    checkpoints.close()
    size = sum(leaf.nbytes for leaf in jax.tree.leaves(train_state._replace(key=jax.random.key_data(train_state.key))))
    return 1e3 * statistics.median(blocking), 1e3 * statistics.median(written), size


def training_seconds(every_epoch: bool) -> float:
    """Steady training seconds (wall minus compilation) of mlp_digits' 15 epochs."""
    module = runs.load_example("mlp_digits")
    config = runs.resolve_config(module)
    experiment = module.experiment(config)
    optimizer, _ = runs.make_optimizer(config, 705)
    checkpoint = (
        Checkpoints(tempfile.mkdtemp(), steps_per_epoch=47, every_epochs=1, run_id="bench") if every_epoch else None
    )
    start = initial_train_state(experiment.model, experiment.input_shape, optimizer, config["seed"])
    _, history = fit(
        experiment.loss_fn,
        optimizer,
        start,
        experiment.train_data,
        batch_size=32,
        epochs=15,
        eval_data=experiment.eval_data,
        data_seed=0,
        checkpoint=checkpoint,
        quiet=True,
    )
    if checkpoint is not None:
        checkpoint.close()  # every save on disk: its cost counts
    return history.wall_s - history.compile_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    for name, widths in (("digits MLP 64-100-10", (64, 100, 10)), ("MLP 784-512-512-10", (784, 512, 512, 10))):
        blocking, written, size = save_cost(widths)
        print(
            f"save, {name} + Adam ({size / 2**20:.2f} MiB): blocks "
            f"training {blocking:.2f} ms, on disk after {written:.2f} ms"
        )
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.rounds):
        for every_epoch in (False, True):
            times[every_epoch].append(training_seconds(every_epoch))
    none, every = statistics.median(times[False]), statistics.median(times[True])
    print(
        f"mlp_digits, 705 steps: no checkpoints {705 * 32 / none:,.0f} "
        f"ex/s, a checkpoint every epoch {705 * 32 / every:,.0f} ex/s, "
        f"ratio {none / every:.3f} (median of {args.rounds} interleaved rounds)"
    )


if __name__ == "__main__":
    main()
