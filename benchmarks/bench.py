"""Training throughput of ``fundl.train.fit`` against hand-written JAX loops and peer libraries.

Seven workloads on synthetic data (float32, Adam 1e-3; ``--only`` picks some):

| name             | model                                           | batch |
|------------------|-------------------------------------------------|------:|
| mlp_digits       | MLP 64-128-128-10 relu                          |    32 |
| mlp_digits_b256  | the same                                        |   256 |
| mlp_mnist        | MLP 784-512-512-10 relu                         |   128 |
| cnn_mnist        | 28x28x1 conv32-pool-conv64-pool-128-10          |   128 |
| lstm             | LSTM T=50, 32 -> 128, last h -> dense 10        |    64 |
| vae              | VAE 784-512-(20)-512-784, Bernoulli, -ELBO      |   128 |
| gpt              | GPT, 128 tokens, T=64, 4 blocks of width 128,   |    32 |
|                  | 4 heads, MLP 512, learned positions, RMS norm   |       |

Contenders (``--frameworks`` picks some):

* ``fundl``: ``fit(..., quiet=True)`` on host NumPy data (its defaults: ``steps_per_call="auto"``);
* ``floor``: a hand-written ``jax.jit`` step (the same fundl model and loss, an optax update,
  returning the loss and its metrics as ``fit``'s step does) called once per step over
  pre-made device batches: the cost of the model and optimizer alone;
* ``floor_donated``: the same step with the train-state buffers donated;
* ``scan_epoch``: one hand-written ``lax.scan`` over an epoch of stacked device batches per call;
* peers, when importable (``pip install -e .[bench]``), each as its users write it, fed the
  same pre-sliced host NumPy batches: ``flax_nnx`` (``nnx.jit`` + ``nnx.Optimizer``),
  ``flax_linen`` (``TrainState`` + ``jax.jit``), ``equinox`` (``eqx.filter_jit``), ``keras``
  (Keras 3 on JAX, ``model.fit``; not the GPT). See ``peers.py``.

Method: one process; every contender warms up (compiles) once, then all are timed back to
back in each of ``--rounds`` interleaved rounds of the same number of epochs, a different one
first each round; reported are medians over the rounds. ``ratio_vs_floor`` is paired:
examples/s over the floor's examples/s *of the same round*, then the median. Examples/s never
include compilation: ``fit``'s speed is ``steps * batch / (wall_s - compile_s)`` as it reports
them (compile_s from ``jax.monitoring`` duration events; ``fit`` keeps its compiled functions,
so only its first call compiles); the hand-written steps are compiled ahead with
``lower().compile()``.

Compile time: a single compilation swings by 15-25% here, and the first one in a process
also pays JAX's one-time start-up, so each round ends by compiling fundl and the
hand-written loops afresh, one after the other, in the same rotating order (fundl: one
epoch of ``fit`` with a new loss-function object, so that it keeps no program; its
``compile_s``, tracing included; the hand-written ones: a new ``jax.jit`` of a new step
function, traced, lowered and compiled). ``compile_s`` is the median of those and
``compile_vs_floor`` the median of the per-round ratios to the floor's. Peers keep their
programs out of reach: theirs is the warm-up epoch's compilation (the same
``jax.monitoring`` events), with no ratio. ``--quick`` reports every contender's warm-up
compilation (and fundl's and the hand-written loops' ratios of those to the floor's).

Run::

    python benchmarks/bench.py                       # full run, ~15 min on 2 vCPUs (~9 min without the peers)
    python benchmarks/bench.py --quick               # < 2 min quiet (1 min 52 s measured)
    python benchmarks/bench.py --only lstm,vae --frameworks fundl,floor --json out.json

``--json PATH`` writes a list of rows ``{workload, framework, examples_per_s, compile_s,
ratio_vs_floor, compile_vs_floor}``. The machine's speed drifts and other jobs skew timings:
the first and last lines say how many CPUs other jobs kept busy; compare ratios within one run.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

import fundl as fl
from fundl import train as T
from fundl.models import gpt, mlp_vae, neg_elbo_loss

Run = Callable[[int], tuple[float, float]]  # run(epochs) -> (seconds without compilation, compile seconds)
Recompile = Callable[[], float]  # compiles the contender's program afresh; returns the seconds it took
HAND_WRITTEN = ("floor", "floor_donated", "scan_epoch")
PEERS = ("flax_nnx", "flax_linen", "equinox", "keras")
FRAMEWORKS = ("fundl", *HAND_WRITTEN, *PEERS)
LR = 1e-3


@dataclass(frozen=True)
class Workload:
    """A model family, its sizes, batch size and synthetic data; peers build the same model from it."""

    name: str
    kind: str  # "mlp", "cnn", "lstm", "vae" or "gpt"
    batch: int
    input_shape: tuple[int, ...]  # one example's shape
    hidden: tuple[int, ...]  # mlp: widths; cnn: (conv1, conv2, dense); lstm: (hidden,); vae: (hidden, latent);
    # gpt: (layers, heads, width), with `classes` tokens
    steps: tuple[int, int]  # steps per epoch (the synthetic data's size) with --quick, and without
    classes: int = 10

    def data(self, steps_per_epoch: int, seed: int = 0) -> dict[str, np.ndarray]:
        """``steps_per_epoch * batch`` synthetic examples: ``image`` and (not for the VAE) ``label``."""
        rng = np.random.default_rng(seed)
        n = steps_per_epoch * self.batch
        if self.kind == "vae":  # pixel intensities in [0, 1], as the Bernoulli likelihood reads them
            return {"image": rng.random((n, *self.input_shape), dtype=np.float32)}
        if self.kind == "gpt":  # token ids and the next token at each position
            return {
                "image": rng.integers(0, self.classes, (n, *self.input_shape), dtype=np.int32),
                "label": rng.integers(0, self.classes, (n, *self.input_shape), dtype=np.int32),
            }
        return {
            "image": rng.standard_normal((n, *self.input_shape), dtype=np.float32),
            "label": rng.integers(0, self.classes, n, dtype=np.int32),
        }

    def fundl_model(self) -> tuple[fl.Layer, T.LossFn]:
        """The fundl model and its loss function."""
        if self.kind == "vae":
            hidden, latent = self.hidden
            v = mlp_vae(self.input_shape, hidden=(hidden,), latent=latent)
            return v.model, neg_elbo_loss(v)
        if self.kind == "gpt":
            depth, heads, width = self.hidden
            model = gpt(self.classes, depth, heads, width, self.input_shape[0], positions="learned").model  # as peers
            return model, T.classification_loss(model)
        if self.kind == "mlp":
            layers = [layer for h in self.hidden for layer in (fl.dense(h), fl.relu())]
        elif self.kind == "cnn":
            c1, c2, d = self.hidden
            layers = [
                fl.conv2d(c1, (3, 3)),
                fl.relu(),
                fl.max_pool((2, 2)),
                fl.conv2d(c2, (3, 3)),
                fl.relu(),
                fl.max_pool((2, 2)),
                fl.flatten(),
                fl.dense(d),
                fl.relu(),
            ]
        else:
            layers = [fl.lstm(self.hidden[0])]
        model = fl.serial(*layers, fl.dense(self.classes))
        return model, T.classification_loss(model)


WORKLOADS = {
    w.name: w
    for w in [
        Workload("mlp_digits", "mlp", 32, (64,), (128, 128), (5, 50)),
        Workload("mlp_digits_b256", "mlp", 256, (64,), (128, 128), (5, 50)),
        Workload("mlp_mnist", "mlp", 128, (784,), (512, 512), (5, 50)),
        Workload(
            "cnn_mnist", "cnn", 128, (28, 28, 1), (32, 64, 128), (2, 20)
        ),  # ~0.2 s per step: 10 steps a round read +-7%
        Workload("lstm", "lstm", 64, (50, 32), (128,), (3, 20)),
        Workload("vae", "vae", 128, (784,), (512, 20), (5, 50)),
        Workload("gpt", "gpt", 32, (64,), (4, 4, 128), (3, 20), classes=128),
    ]
}


_FRESH = itertools.count()  # makes each of fundl's fresh compilations a new definition


@functools.cache
def fundl_setup(w: Workload) -> tuple[T.LossFn, Any, Any]:
    """The loss function and initial params and state, made once per workload (init runs op by op)."""
    model, loss_fn = w.fundl_model()
    _, params, state = model.init(jax.random.key(0), (w.batch, *w.input_shape))
    return loss_fn, params, state


def fundl_run(w: Workload, data: dict[str, np.ndarray]) -> tuple[Run, Recompile]:
    """``fit`` from the same initial train state every time; only its first call compiles (fit keeps its programs)."""
    loss_fn, params, state = fundl_setup(w)
    optimizer = optax.adam(LR)

    def train(fn: T.LossFn, epochs: int) -> T.History:
        train_state = T.TrainState.create(params, state, optimizer, jax.random.key(1))
        return T.fit(fn, optimizer, train_state, data, batch_size=w.batch, epochs=epochs, quiet=True)[1]

    def run(epochs: int) -> tuple[float, float]:
        hist = train(loss_fn, epochs)
        return hist.wall_s - hist.compile_s, hist.compile_s

    def recompile() -> float:
        """One epoch with a loss function of a new definition, so that ``fit`` compiles afresh: it keeps its
        programs by what the loss computes, and a default never seen before makes a definition of its own."""
        fresh = next(_FRESH)
        return train(lambda *args, _fresh=fresh, **kwargs: loss_fn(*args, **kwargs), 1).compile_s

    return run, recompile


def hand_written_run(w: Workload, data: dict[str, np.ndarray], variant: str) -> tuple[Run, Recompile]:
    """The floor (``"floor"``, ``"floor_donated"``) or one ``lax.scan`` per epoch (``"scan_epoch"``).

    The train state is ``(params, model_state, opt_state, key, step)``; each step's key is
    ``fold_in(key, step)``; each step returns what ``fit``'s step returns, the loss and the
    loss function's metrics (the classifiers' accuracy; dropping it would let XLA skip
    computing it). Batches are made on the device once, before any timing.
    """
    loss_fn, params, state = fundl_setup(w)
    optimizer = optax.adam(LR)
    start = (params, state, optimizer.init(params), jax.random.PRNGKey(1), jnp.zeros((), jnp.int32))

    def step(ts, batch):
        params, state, opt_state, key, i = ts
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, (state, metrics)), grads = grad_fn(params, state, batch, jax.random.fold_in(key, i))
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), state, opt_state, key, i + 1), {"loss": loss, **metrics}

    steps = len(next(iter(data.values()))) // w.batch
    epoch = jax.device_put({k: v.reshape(steps, w.batch, *v.shape[1:]) for k, v in data.items()})
    batches = [jax.tree.map(lambda a, i=i: a[i], epoch) for i in range(steps)]
    donate = (0,) if variant != "floor" else ()
    example = epoch if variant == "scan_epoch" else batches[0]

    def build() -> tuple[Any, float]:
        """A new jitted function, traced, lowered and compiled: the program and the seconds that took."""
        fresh_step = lambda ts, batch: step(ts, batch)  # noqa: E731  (new each time: lax.scan keeps the traces of the functions it has seen)
        body = (lambda ts, epoch: lax.scan(fresh_step, ts, epoch)) if variant == "scan_epoch" else fresh_step
        t0 = time.perf_counter()
        compiled = jax.jit(body, donate_argnums=donate).lower(start, example).compile()
        return compiled, time.perf_counter() - t0

    compiled, compile_s = build()

    def run(epochs: int) -> tuple[float, float]:
        ts = jax.tree.map(jnp.copy, start) if donate else start  # donation consumes its input
        jax.block_until_ready(ts)
        t0 = time.perf_counter()
        for _ in range(epochs):
            if variant == "scan_epoch":
                ts, _ = compiled(ts, epoch)
            else:
                for batch in batches:
                    ts, _ = compiled(ts, batch)
        jax.block_until_ready(ts)
        return time.perf_counter() - t0, compile_s

    return run, lambda: build()[1]


class CompileTimer:
    """Seconds JAX spends tracing, lowering and compiling while active (``jax.monitoring`` events)."""

    EVENTS = (
        "/jax/core/compile/jaxpr_trace_duration",
        "/jax/core/compile/jaxpr_to_mlir_module_duration",
        "/jax/core/compile/backend_compile_duration",
    )

    def __init__(self) -> None:
        self.seconds = 0.0

    def _listen(self, event: str, duration: float, **_: Any) -> None:
        self.seconds += duration if event in self.EVENTS else 0.0

    def __enter__(self) -> CompileTimer:
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def __exit__(self, *exc: Any) -> None:
        jax.monitoring.unregister_event_duration_listener(self._listen)


def timed(epoch_fn: Callable[[int], None]) -> Run:
    """A peer's ``run``: ``epoch_fn(epochs)`` trains and blocks; the first call's compile time is kept."""
    first: list[float] = []

    def run(epochs: int) -> tuple[float, float]:
        with CompileTimer() as timer:
            t0 = time.perf_counter()
            epoch_fn(epochs)
            wall = time.perf_counter() - t0
        first.append(timer.seconds)
        return wall - timer.seconds, first[0]

    return run


def contenders(
    w: Workload, data: dict[str, np.ndarray], names: list[str]
) -> tuple[dict[str, Run], dict[str, Recompile], list[str]]:
    """The runs to time for ``w``, fresh compilations of fundl and the hand-written loops, notes on peers skipped."""
    runs: dict[str, Run] = {}
    recompiles: dict[str, Recompile] = {}
    notes: list[str] = []
    for name in names:
        if name == "fundl":
            runs[name], recompiles[name] = fundl_run(w, data)
        elif name in HAND_WRITTEN:
            runs[name], recompiles[name] = hand_written_run(w, data, name)
        else:
            from peers import peer_run  # next to this file; imports its library lazily

            made = peer_run(name, w, data, LR)
            if isinstance(made, str):
                notes.append(f"{w.name}: {name} skipped: {made}")
            else:
                runs[name] = timed(made)
    return runs, recompiles, notes


def measure(w: Workload, names: list[str], rounds: int, target_s: float, quick: bool) -> tuple[list[dict], list[str]]:
    """Warm-up, then ``rounds`` interleaved rounds; one row per contender (medians, paired ratios)."""
    steps_per_epoch = w.steps[0 if quick else 1]
    data = w.data(steps_per_epoch)
    notes = []
    if quick and w.kind == "cnn" and "scan_epoch" in names:  # ~10 s per scanned epoch here
        names = [n for n in names if n != "scan_epoch"]
        notes.append(
            f"{w.name}: scan_epoch skipped with --quick (convolutions inside lax.scan are 4-12x slower on XLA:CPU)"
        )
    runs, recompiles, skipped = contenders(w, data, names)
    notes += skipped
    if quick:  # a smoke run: the warm-up's compilations stand, fresh ones would double its time
        recompiles = {}
    compile_s: dict[str, list[float]] = {name: [] for name in runs}
    compile_ratios: dict[str, list[float]] = {name: [] for name in runs}
    epoch_s = {}
    for name, run in runs.items():
        epoch_s[name], compiled = run(1)  # warm-up: compiles, fills caches
        if name not in recompiles:  # a peer (or --quick): its warm-up's compilation is the one measured
            compile_s[name].append(compiled)
    for name in runs if quick else ():
        if name in ("fundl", *HAND_WRITTEN):
            compile_ratios[name].append(compile_s[name][0] / compile_s["floor"][0])
    epochs = max(1, min(1000, math.ceil(target_s / max(epoch_s["floor"], 1e-9))))
    speeds: dict[str, list[float]] = {name: [] for name in runs}
    ratios: dict[str, list[float]] = {name: [] for name in runs}
    examples = epochs * steps_per_epoch * w.batch
    for r in range(rounds):
        this_round = {}
        for name in _rotated(list(runs), r):  # a different contender first each round: none always follows the same one
            seconds, _ = runs[name](epochs)  # fit keeps its compiled functions: later calls compile nothing
            this_round[name] = examples / seconds
        for name, speed in this_round.items():
            speeds[name].append(speed)
            if "floor" in this_round:
                ratios[name].append(speed / this_round["floor"])
        fresh = {
            name: recompiles[name]() for name in _rotated(list(recompiles), r)
        }  # one fresh compilation each, in turn
        for name, seconds in fresh.items():
            compile_s[name].append(seconds)
            compile_ratios[name].append(seconds / fresh["floor"])
    rows = [
        {
            "workload": w.name,
            "framework": name,
            "examples_per_s": statistics.median(speeds[name]),
            "compile_s": statistics.median(compile_s[name]),
            "ratio_vs_floor": statistics.median(ratios[name]) if ratios[name] else None,
            "compile_vs_floor": statistics.median(compile_ratios[name]) if compile_ratios[name] else None,
        }
        for name in runs
    ]
    notes.append(f"{w.name}: {epochs} epochs of {steps_per_epoch} steps per round")
    return rows, notes


def _rotated(names: list[str], r: int) -> list[str]:
    """``names`` starting at its ``r``-th (cyclically): round ``r``'s order."""
    r = r % len(names) if names else 0
    return names[r:] + names[:r]


def busy_cpus(seconds: float = 0.5) -> float:
    """How many CPUs other jobs keep busy, from /proc/stat while this process sleeps (Linux; 0 elsewhere)."""
    try:

        def sample() -> tuple[int, int]:
            with open("/proc/stat") as stat:
                ticks = [int(t) for t in stat.readline().split()[1:]]
            return sum(ticks), ticks[3] + ticks[4]  # all, idle + iowait

        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except OSError:
        return 0.0
    return (1 - (idle1 - idle0) / max(total1 - total0, 1)) * (os.cpu_count() or 1)


def load_line(when: str) -> str:
    busy = busy_cpus()
    warn = " -- WARNING: other jobs are running, timings are noisy" if busy > 0.25 else ""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{when}: {busy:.2f} of {os.cpu_count()} CPUs busy with other jobs, load average {load:.2f}{warn}"


def table(rows: list[dict]) -> str:
    lines = [f"{'workload':<16} {'framework':<14} {'examples/s':>12} {'vs floor':>9} {'compile s':>9} {'vs floor':>9}"]
    for r in rows:
        ratio, compile_ratio = (
            ("" if x is None else f"{x:.2f}x") for x in (r["ratio_vs_floor"], r["compile_vs_floor"])
        )
        lines.append(
            f"{r['workload']:<16} {r['framework']:<14} {r['examples_per_s']:>12,.0f} {ratio:>9} "
            f"{r['compile_s']:>9.2f} {compile_ratio:>9}"
        )
    return "\n".join(lines)


def pick(text: str | None, allowed: tuple[str, ...], what: str) -> list[str]:
    """The comma-separated names in ``text`` (all of ``allowed`` if None), checked."""
    names = list(allowed) if text is None else [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise SystemExit(f"bench.py: unknown {what} {', '.join(unknown)}; expected some of {', '.join(allowed)}")
    return names


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and rounds: under 2 minutes")
    parser.add_argument("--rounds", type=int, help="interleaved timing rounds (default 5; 1 with --quick)")
    parser.add_argument("--only", help=f"comma-separated workloads, of: {', '.join(WORKLOADS)}")
    parser.add_argument("--frameworks", help=f"comma-separated contenders, of: {', '.join(FRAMEWORKS)}")
    parser.add_argument("--json", metavar="PATH", help="write the rows as a JSON list here")
    args = parser.parse_args(argv)
    workloads = pick(args.only, tuple(WORKLOADS), "workload")
    names = pick(args.frameworks, FRAMEWORKS, "framework")
    if "floor" not in names:
        names.insert(0, "floor")  # every ratio is against it
    rounds = args.rounds or (1 if args.quick else 5)
    target_s = 0.05 if args.quick else 1.0
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    print(
        f"jax {jax.__version__} {jax.default_backend()}, {os.cpu_count()} CPUs; "
        f"medians of {rounds} rounds, ratios paired per round, compilation excluded"
    )
    print(load_line("before"), flush=True)
    rows, notes = [], []
    for name in workloads:
        got, said = measure(WORKLOADS[name], names, rounds, target_s, args.quick)
        rows += got
        notes += said
        print(table(got).split("\n", 1)[1] if len(rows) > len(got) else table(got), flush=True)
    print("\n".join(notes))
    print(load_line("after"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
