"""Why ``fit``'s ``steps_per_call="auto"`` fuses MLP steps but not convolutions on the CPU.

Times ``fit`` with ``steps_per_call=1`` (one jitted step per call) against
``steps_per_call=47`` (one digits epoch per ``lax.scan`` call) for two models on the digits
training split, and checks that both give bit-identical params
(``fundl.train.params_fingerprint``):

* the digits MLP: 64-100 tanh-10, SGD 0.1, batch 32;
* a small LeNet-style CNN on 8x8x1 images: conv2d(16, 3x3) relu max_pool(2x2)
  conv2d(32, 3x3) relu max_pool(2x2) flatten dense(10), Adam 1e-3, batch 32.

Speeds are examples/s with compilation excluded (``wall_s - compile_s`` of each run, after
a one-epoch warm-up run of each setting); ratios are fused speed / per-step speed, paired
within each repeat; medians over the repeats. The last column, "bare jit", is the same
ratio for the compiled step alone (``jax.jit`` of ``train_step_fn`` with donation vs a
``lax.scan`` of it over a device-resident epoch, after a warm-up epoch of each), without
``fit``'s per-call work: it is what the "auto" rule is really about.

Run::

    python benchmarks/fused_steps.py           # full run, about 1 minute on 2 vCPUs
    python benchmarks/fused_steps.py --quick   # smoke run, about 15 s

Measured here (2 vCPU, nothing else running, jax 0.10.2 CPU, 2026-11-27; medians of 3),
fused speed / per-step speed:

    digits MLP, 100 epochs:  fit 5.16x (202k -> 997k ex/s), bare jit 1.67x; bit-identical
    digits CNN, 10 epochs:   fit 0.26x (41.0k -> 10.8k ex/s), bare jit 0.25x (4x slower);
                             NOT bit-identical: params differ by up to 2e-7

The MLP gain through ``fit`` is mostly ``fit``'s own per-step cost (the bare step gains
1.7x); convolutions inside ``lax.scan`` are ~4x slower here, not ~12x, and their
gradients come out rounded differently (forward passes match bit for bit).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import optax
from jax import lax

import fundl as fl
from fundl import train as T
from fit_throughput import Workload, digits_train, fit_speed, footer, header, run_fit

FUSED = 47  # digits steps per epoch at batch 32: one epoch per lax.scan call


def models(quick: bool) -> list[Workload]:
    mlp = fl.serial(fl.dense(100), fl.tanh(), fl.dense(10))
    cnn = fl.serial(
        fl.conv2d(16, (3, 3)), fl.relu(), fl.max_pool((2, 2)),
        fl.conv2d(32, (3, 3)), fl.relu(), fl.max_pool((2, 2)),
        fl.flatten(), fl.dense(10),
    )
    return [
        Workload("digits MLP", mlp, optax.sgd(0.1), digits_train(flat=True), 32, 10 if quick else 100),
        Workload("digits CNN", cnn, optax.adam(1e-3), digits_train(flat=False), 32, 2 if quick else 10),
    ]


def bare_ratio(w: Workload, epochs: int) -> float:
    """Fused / per-step speed of the compiled step alone: no fit loop, one device-resident epoch."""
    step = T.train_step_fn(T.classification_loss(w.model), w.optimizer)
    single = jax.jit(step, donate_argnums=0)
    fused = jax.jit(lambda state, batches: lax.scan(step, state, batches), donate_argnums=0)
    rows = FUSED * w.batch_size
    epoch = jax.device_put({k: v[:rows].reshape(FUSED, w.batch_size, *v.shape[1:]) for k, v in w.data.items()})
    batches = [jax.tree.map(lambda a, i=i: a[i], epoch) for i in range(FUSED)]
    state = T.TrainState.create(*w.init(), w.optimizer, jax.random.key(1))

    def seconds(run, epochs: int) -> float:
        nonlocal state
        start = time.perf_counter()
        for _ in range(epochs):
            state = run(state)
        jax.block_until_ready(state)
        return time.perf_counter() - start

    def per_step(state):
        for batch in batches:
            state = single(state, batch)[0]
        return state

    def per_epoch(state):
        return fused(state, epoch)[0]

    seconds(per_step, 1)  # compiles; and first runs are slower still, so a whole epoch
    seconds(per_epoch, 1)
    return seconds(per_step, epochs) / seconds(per_epoch, epochs)


def largest_difference(a, b) -> float:
    """The largest absolute difference between two params pytrees of the same structure."""
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def compare(w: Workload, repeats: int) -> dict[str, float | str | bool]:
    """Median speeds of both settings, their median paired ratios, and whether the params match."""
    auto = run_fit(w, 1, "auto")[1]["steps_per_call_reason"]  # also the warm-up of "auto"
    for option in (1, FUSED):
        run_fit(w, 1, option)  # warm-up
    runs, identical, gap = [], True, 0.0
    for _ in range(repeats):
        (ts1, h1), (tsn, hn) = run_fit(w, w.epochs, 1), run_fit(w, w.epochs, FUSED)
        single, fused = fit_speed(h1, w.batch_size), fit_speed(hn, w.batch_size)
        runs.append((single, fused, fused / single, h1["compile_s"], hn["compile_s"], bare_ratio(w, w.epochs)))
        identical &= T.params_fingerprint(ts1.params) == T.params_fingerprint(tsn.params)
        gap = max(gap, largest_difference(ts1.params, tsn.params))
    names = ("single", "fused", "ratio", "compile_single", "compile_fused", "bare_ratio")
    medians = {name: statistics.median(column) for name, column in zip(names, zip(*runs))}
    return {**medians, "identical": identical, "gap": gap, "auto": auto}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small budgets, for a smoke run")
    parser.add_argument("--repeats", type=int, default=3, help="timings per setting (median reported)")
    args = parser.parse_args()
    print(header(f"medians of {args.repeats}; examples/s exclude compilation; fused = {FUSED} steps per call"))
    print(f"{'model':<11} {'epochs':>6} {'1 step/call':>12} {'fused':>10} {'fused/1':>8} "
          f"{'compile s (1 / fused)':>22} {'bit-identical':>13} {'bare jit fused/1':>16}")
    notes = []
    for w in models(args.quick):
        r = compare(w, args.repeats)
        compile_s = f"{r['compile_single']:.2f} / {r['compile_fused']:.2f}"
        print(f"{w.name:<11} {w.epochs:>6} {r['single']:>12,.0f} {r['fused']:>10,.0f} {r['ratio']:>7.2f}x "
              f"{compile_s:>22} {'yes' if r['identical'] else 'NO':>13} {r['bare_ratio']:>15.2f}x")
        speed = f"{r['ratio']:.1f}x faster" if r["ratio"] >= 1 else f"{1 / r['ratio']:.1f}x slower"
        same = "bit-identical params" if r["identical"] else f"params differ by up to {r['gap']:.1e}"
        notes.append(f"{w.name}: fused is {speed}, {same}; fit chooses {r['auto']}")
    print("\n".join(notes))
    print(footer())


if __name__ == "__main__":
    main()
