"""Data and checkpoints at scale: source-fed training against memory, a large dataset's memory, sharded saves.

    python benchmarks/data_scale.py [--only throughput,augment,rss,checkpoint] [--big-gib 2.0]

- throughput: the 784-512-512-10 MLP at batch 128 on MNIST-sized data (60,000 x 784), fed
  from memory (kept on the device) and from ArrayRecord files (a thread, and 2 workers);
  examples/s and the ratio to memory.
- augment: a CNN on 28x28 images whose random shifts run in 2 worker processes, against the
  same CNN fed from memory without augmentation (the device's own pace): the ratio is the
  share of time the device is busy.
- rss: training from an on-disk dataset of ``--big-gib`` GiB (written by another process) in
  a fresh process: its peak resident memory (``ru_maxrss``), against the same training from
  2,560 examples in memory (what JAX, the program and the loop take with next to no data).
- checkpoint: a ~300 MB train state cut over 2 devices (FSDP) saved with orbax while
  training goes on: how long a save blocks the loop, and a restore's time; fundl's own
  file format on the same state, for comparison.

Each part runs in its own process (``--part``), so their memory and threads do not mix.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _mlp_data(n: int, features: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.int32)
    centers = rng.normal(size=(10, features)).astype(np.float32)
    images = (centers[labels] + rng.normal(size=(n, features)).astype(np.float32)).astype(np.float32)
    return {"image": images, "label": labels}


def throughput() -> dict[str, float]:
    import jax
    import optax

    import fundl as fl
    from fundl.datasets import records, write_records
    from fundl.train import TrainState, classification_loss, fit

    data = _mlp_data(60_000, 784)
    directory = Path(tempfile.mkdtemp()) / "mnist-like"
    write_records(directory, data, shards=8)
    model = fl.serial(fl.dense(512), fl.relu(), fl.dense(512), fl.relu(), fl.dense(10))
    optimizer = optax.adam(1e-3)
    _, params, state = model.init(jax.random.key(0), (128, 784))
    start = TrainState.create(params, state, optimizer, jax.random.key(1))
    loss = classification_loss(model)
    out = {}
    for name, train, workers in (
        ("memory", data, 0),
        ("records", records(directory), 0),
        ("records_2_workers", records(directory), 2),
    ):
        fit(loss, optimizer, start, train, batch_size=128, steps=20, quiet=True, workers=workers)  # compile, start
        _, history = fit(loss, optimizer, start, train, batch_size=128, epochs=2, quiet=True, workers=workers)
        out[name] = history.steps * 128 / (history.wall_s - history.compile_s)
    return out


def augment() -> dict[str, float]:
    import jax
    import optax

    from fundl.datasets import RandomShift, records, write_records
    from fundl.models import lenet
    from fundl.train import TrainState, classification_loss, fit

    data = _mlp_data(6_400, 28 * 28)
    data["image"] = data["image"].reshape(-1, 28, 28, 1)
    directory = Path(tempfile.mkdtemp()) / "images"
    write_records(directory, data, shards=4)
    model = lenet(10, channels=[16, 32], hidden=64)
    optimizer = optax.adam(1e-3)
    _, params, state = model.init(jax.random.key(0), (64, 28, 28, 1))
    start = TrainState.create(params, state, optimizer, jax.random.key(1))
    loss = classification_loss(model)
    out = {}
    for name, train, options in (
        ("memory", data, {}),
        ("records_shift_2_workers", records(directory), {"augment": RandomShift(2), "workers": 2}),
    ):
        fit(loss, optimizer, start, train, batch_size=64, steps=10, quiet=True, **options)
        _, history = fit(loss, optimizer, start, train, batch_size=64, epochs=2, quiet=True, **options)
        out[name] = history.steps * 64 / (history.wall_s - history.compile_s)
    return out


def write_big(gib: float, directory: str) -> dict[str, float]:
    """Writes ``gib`` GiB of 784-feature examples as records (its own process: its memory is not the trainer's)."""
    from fundl.datasets import write_records

    features = 784
    n = int(gib * 2**30 / (features * 4 + 4))

    def examples():
        rng = np.random.default_rng(0)
        for _ in range(n):
            yield {"image": rng.normal(size=(features,)).astype(np.float32), "label": np.int32(rng.integers(10))}

    t = time.perf_counter()
    write_records(directory, examples(), shards=16, count=n)
    size = sum(p.stat().st_size for p in Path(directory).glob("*.array_record")) / 2**30
    return {"dataset_gib": size, "examples": n, "write_s": time.perf_counter() - t}


def rss(directory: str | None) -> dict[str, float]:
    """Peak resident memory of a fresh process training 2,000 steps from the records in ``directory``, or (None)
    from 2,560 examples in memory: the same process with next to no data, what JAX and the program take."""
    import jax
    import optax

    import fundl as fl
    from fundl.datasets import records
    from fundl.train import TrainState, classification_loss, fit

    model = fl.serial(fl.dense(256), fl.relu(), fl.dense(10))
    optimizer = optax.sgd(0.01)
    _, params, state = model.init(jax.random.key(0), (256, 784))
    start = TrainState.create(params, state, optimizer, jax.random.key(1))
    t = time.perf_counter()
    source = records(directory) if directory else _mlp_data(2560, 784)
    opened = time.perf_counter() - t
    _, history = fit(classification_loss(model), optimizer, start, source, batch_size=256, steps=2000, quiet=True)
    return {
        "open_and_verify_s": opened,
        "train_steps_per_s": history.steps / (history.wall_s - history.compile_s),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10,  # KiB on Linux
    }


def _part(name: str, *args: str, env: dict[str, str] | None = None) -> dict[str, float] | None:
    """Runs one part in a fresh process; its result, or None (after printing why) if it failed."""
    done = subprocess.run(
        [sys.executable, __file__, "--part", name, *args],
        capture_output=True,
        text=True,
        env=env or dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    if done.returncode:
        print(f"{name}: failed\n{done.stderr[-3000:]}")
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def rss_parts(gib: float) -> dict[str, float] | None:
    """Writes the big dataset in one process, then trains from it in another and from memory in a third."""
    directory = str(Path(tempfile.mkdtemp()) / "big")
    written = _part("write-big", "--big-gib", str(gib), "--dir", directory)
    from_files = written and _part("rss", "--dir", directory)
    in_memory = from_files and _part("rss")
    if not (written and from_files and in_memory):
        return None
    return {
        **written,
        **from_files,
        "in_memory_peak_rss_mib": in_memory["peak_rss_mib"],
        "added_by_the_source_mib": from_files["peak_rss_mib"] - in_memory["peak_rss_mib"],
    }


def checkpoint() -> dict[str, float]:
    import jax
    import optax

    import fundl as fl
    from fundl.distributed import Placement, data_mesh
    from fundl.runs import Checkpoints
    from fundl.train import TrainState

    assert jax.device_count() == 2, "run with 2 CPU devices (the script sets XLA_FLAGS for this part)"
    model = fl.serial(fl.dense(4096), fl.relu(), fl.dense(4096), fl.relu(), fl.dense(1024))  # ~25M params
    optimizer = optax.adam(1e-3)
    _, params, state = model.init(jax.random.key(0), (8, 1024))
    train_state = TrainState.create(params, state, optimizer, jax.random.key(1))
    placement = Placement(data_mesh(2, fsdp=2))
    train_state = placement.place_state(train_state)
    size = sum(leaf.nbytes for leaf in jax.tree.leaves(jax.tree.map(jax.random.key_data, train_state.key))) + sum(
        leaf.nbytes for leaf in jax.tree.leaves((train_state.params, train_state.opt_state))
    )
    out: dict[str, float] = {"state_mib": size / 2**20}
    for kind in ("orbax", "file"):
        directory = Path(tempfile.mkdtemp())
        checkpoints = Checkpoints(directory, steps_per_epoch=1, run_id="bench", format=kind)
        blocking = []
        for step in range(1, 4):
            t = time.perf_counter()
            checkpoints.save(step, train_state, {"hooks": [[]], "members": [[None, False]]}, {})
            blocking.append(time.perf_counter() - t)
            t = time.perf_counter()
            checkpoints.wait()  # the write, in the background: training would go on here
            out[f"{kind}_write_s"] = time.perf_counter() - t + blocking[-1]
        out[f"{kind}_blocking_ms"] = 1e3 * float(np.median(blocking))
        like = jax.eval_shape(lambda: train_state)
        t = time.perf_counter()
        _, restored, _ = checkpoints.restore(like, shardings=placement.state_shardings(like))
        jax.block_until_ready(restored)
        out[f"{kind}_restore_s"] = time.perf_counter() - t
        checkpoints.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="throughput,augment,rss,checkpoint")
    parser.add_argument("--big-gib", type=float, default=2.0)
    parser.add_argument("--part", help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:
        result = {
            "throughput": throughput,
            "augment": augment,
            "checkpoint": checkpoint,
            "write-big": lambda: write_big(args.big_gib, args.dir),
            "rss": lambda: rss(args.dir),
        }[args.part]()
        print(json.dumps(result))
        return
    for part in args.only.split(","):
        if part == "rss":
            result = rss_parts(args.big_gib)
        else:
            env = dict(os.environ, PYTHONPATH=str(ROOT))
            if part == "checkpoint":
                env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
            result = _part(part, env=env)
        if result is None:
            continue
        print(f"{part}: " + ", ".join(f"{k} {v:,.3g}" for k, v in result.items()), flush=True)
        if part in ("throughput", "augment"):
            base = result["memory"]
            print(
                "  ratios to memory: " + ", ".join(f"{k} {v / base:.2f}x" for k, v in result.items() if k != "memory")
            )


if __name__ == "__main__":
    main()
