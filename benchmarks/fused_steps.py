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
within each repeat; medians over the repeats.

Run::

    python benchmarks/fused_steps.py           # full run, about 1 minute on 2 vCPUs
    python benchmarks/fused_steps.py --quick   # smoke run

Measured here (2 vCPU, jax 0.10.2 CPU, 2026-11-27; medians of 3): TODO
"""

from __future__ import annotations

import argparse
import statistics

import jax
import optax

import fundl as fl
from fundl import train as T
from fit_throughput import Workload, digits_train, fit_speed, run_fit

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


def compare(w: Workload, repeats: int) -> dict[str, float | str | bool]:
    """Median speeds of both settings, their median paired ratio, the bit-identity check."""
    auto = run_fit(w, 1, "auto")[1]["steps_per_call_reason"]  # also the warm-up of "auto"
    run_fit(w, 1, 1), run_fit(w, 1, FUSED)  # warm-ups
    single, fused, ratios, compiles, identical = [], [], [], [], True
    for _ in range(repeats):
        (ts1, h1), (tsn, hn) = run_fit(w, w.epochs, 1), run_fit(w, w.epochs, FUSED)
        single.append(fit_speed(h1, w.batch_size))
        fused.append(fit_speed(hn, w.batch_size))
        ratios.append(fused[-1] / single[-1])
        compiles.append((h1["compile_s"], hn["compile_s"]))
        identical &= T.params_fingerprint(ts1.params) == T.params_fingerprint(tsn.params)
    return {
        "single": statistics.median(single), "fused": statistics.median(fused), "ratio": statistics.median(ratios),
        "compile_single": statistics.median(c[0] for c in compiles),
        "compile_fused": statistics.median(c[1] for c in compiles),
        "identical": identical, "auto": auto,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small budgets, for a smoke run")
    parser.add_argument("--repeats", type=int, default=3, help="timings per setting (median reported)")
    args = parser.parse_args()
    print(f"jax {jax.__version__}, backend {jax.default_backend()}; medians of {args.repeats}; "
          f"examples/s exclude compilation; fused = {FUSED} steps per call")
    print(f"{'model':<11} {'epochs':>6} {'1 step/call':>12} {'fused':>10} {'fused/1':>8} "
          f"{'compile s (1 / fused)':>22} {'bit-identical':>13}")
    notes = []
    for w in models(args.quick):
        r = compare(w, args.repeats)
        compile_s = f"{r['compile_single']:.2f} / {r['compile_fused']:.2f}"
        print(f"{w.name:<11} {w.epochs:>6} {r['single']:>12,.0f} {r['fused']:>10,.0f} {r['ratio']:>7.2f}x "
              f"{compile_s:>22} {'yes' if r['identical'] else 'NO':>13}")
        notes.append(f"{w.name}: fit chooses {r['auto']}")
    print("\n".join(notes))


if __name__ == "__main__":
    main()
