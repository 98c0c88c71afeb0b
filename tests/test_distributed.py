"""Data-parallel training on 8 fake CPU devices against one device (each check in a subprocess,
so the rest of the suite keeps one device), FSDP, the shard_map step, and two processes."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from child import run_python

import fundl as fl
from fundl import runs
from fundl.train import TrainState, fit, with_precision

ROOT = Path(__file__).resolve().parent.parent


def on_devices(n: int, code: str, prelude: str = "", timeout: int = 300) -> str:
    """Runs ``prelude`` and ``code`` in a fresh Python with ``n`` CPU devices; returns its stdout. The test
    fails unless ``code`` ran to its end (it asserts itself)."""
    return run_python(code, prelude=prelude, devices=n, timeout=timeout)


COMMON = """
import jax, jax.numpy as jnp, numpy as np, optax
import fundl as fl
from fundl.distributed import data_mesh, Placement
from fundl.train import TrainState, classification_loss, fit, shard_map_step
assert jax.device_count() == 8
data = fl.datasets.digits()
train = {"image": data["train"]["image"].reshape(-1, 64), "label": data["train"]["label"]}
test = {"image": data["test"]["image"].reshape(-1, 64), "label": data["test"]["label"]}

def start(model, optimizer):
    _, params, state = model.init(jax.random.key(0), (32, 64))
    return TrainState.create(params, state, optimizer, jax.random.key(1))

def run(model, optimizer, mesh, **kwargs):
    kwargs.setdefault("steps", 1)
    return fit(classification_loss(model), optimizer, start(model, optimizer), train, batch_size=32,
               mesh=mesh, quiet=True, **kwargs)

def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]

def close(a, b, rtol, atol=0.0):
    # each leaf of a within rtol of the largest magnitude of b's leaf, plus atol (a leaf that is zero in exact
    # arithmetic, such as the gradient of a bias followed by batch norm, is float32 rounding noise around 0)
    for x, y in zip(leaves(a), leaves(b), strict=True):
        scale = np.abs(y).max()
        assert np.abs(x - y).max() <= atol + rtol * scale, (np.abs(x - y).max(), scale)

FLOAT32_EPS = float(np.finfo(np.float32).eps)
"""


def test_fit_on_8_devices_equals_one_device():
    on_devices(
        8,
        prelude=COMMON,
        code="""
    from jax.sharding import PartitionSpec as P
    model = fl.serial(fl.dense(32), fl.batch_norm(), fl.relu(), fl.dropout(0.3), fl.dense(10))
    lr = 0.1
    sgd = optax.sgd(lr)
    # Initial params: placed on all 8 devices, replicated, equal to one device's.
    placed, history = run(model, sgd, None, steps=0)
    assert history.mesh["axes"] == {"data": 8}
    for leaf in jax.tree.leaves(placed.params):
        assert leaf.sharding.spec == P() and len(leaf.sharding.device_set) == 8
    close(placed.params, start(model, sgd).params, 0)
    # One step (dropout and batch norm in it): the same loss and gradients.
    one, h1 = run(model, sgd, 1, log_every=1)
    eight, h8 = run(model, sgd, 8, log_every=1)
    assert h1.mesh["devices"] == 1 and h8.mesh["devices"] == 8
    assert abs(h1.records[0].metrics["loss"] - h8.records[0].metrics["loss"]) <= 1e-6 * h1.records[0].metrics["loss"]
    p0 = start(model, sgd).params
    grads = lambda p: jax.tree.map(lambda a, b: (np.asarray(a) - np.asarray(b)) / lr, p0, p)
    # dense_0's bias feeds batch norm: its gradient is 0 exactly, and float32 noise (~1e-7) on 8 devices
    close(grads(eight.params), grads(one.params), 1e-5, atol=1e-6)
    # 20 steps: params and batch-norm running statistics.
    one, _ = run(model, sgd, 1, steps=20)
    eight, _ = run(model, sgd, 8, steps=20)
    close(eight.params, one.params, 1e-5, atol=1e-6)  # dense_0's bias: 0 in exact arithmetic, float noise here
    close(eight.state, one.state, 1e-6)
    for leaf in jax.tree.leaves(eight):
        assert len(leaf.sharding.device_set) == 8 and leaf.sharding.is_fully_replicated
    # Evaluation is an exact mean however the split cuts: 270 = 96 + 4 | 96 + 4 | 64 + 6.
    _, e1 = run(model, sgd, 1, steps=5, eval_data={"test": test}, eval_batch_size=100)
    _, e8 = run(model, sgd, 8, steps=5, eval_data={"test": test}, eval_batch_size=100)
    assert e8.traces["eval_step"] == 4  # 96, 4, 64, 6 examples
    r1, r8 = e1.records[-1], e8.records[-1]
    # the same examples right: equal up to float32 rounding of the per-batch means (1/270 apart otherwise)
    assert r1.split == r8.split == "test" and abs(r1.metrics["accuracy"] - r8.metrics["accuracy"]) <= 4 * FLOAT32_EPS
    assert abs(r1.metrics["loss"] - r8.metrics["loss"]) < 1e-5 * r1.metrics["loss"]
    print("OK")
    """,
    )


def test_batches_and_dropout_masks_on_a_mesh():
    on_devices(
        8,
        prelude=COMMON,
        code="""
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    placement = Placement(data_mesh())
    batch = placement.batch({"image": train["image"][:32]}, 32)
    assert batch["image"].sharding.spec == P("data") and batch["image"].addressable_shards[0].data.shape == (4, 64)
    stacked = placement.batch({"image": train["image"][:64].reshape(2, 32, 64)}, 32, leading=1)
    assert stacked["image"].sharding.spec == P(None, "data")
    drop = fl.dropout(0.5)
    key = jax.random.key(3)
    x = np.ones((32, 64), np.float32)
    reference = np.asarray(drop.apply({}, {}, x, key=key, train=True)[0])
    # A fundl (Auto) mesh, and a mesh with JAX's Explicit axes (where an unsharded mask is a type error).
    for mesh in (data_mesh(), jax.make_mesh((8,), ("data",), (AxisType.Explicit,))):
        with jax.set_mesh(mesh):
            xs = jax.device_put(x, NamedSharding(mesh, P("data")))
            ks = jax.device_put(key, NamedSharding(mesh, P()))
            y = jax.jit(lambda x, k: drop.apply({}, {}, x, key=k, train=True)[0])(xs, ks)
        assert (np.asarray(y) == reference).all()
    # A global batch that does not cut into 8 pieces.
    model = fl.serial(fl.dense(10))
    try:
        sgd = optax.sgd(0.1)
        fit(classification_loss(model), sgd, start(model, sgd), train, batch_size=30, steps=1, quiet=True)
    except ValueError as error:
        assert "batch size 30 does not divide into the 8 data shards" in str(error) and "24 or 32" in str(error), error
    else:
        raise AssertionError("no error")
    print("OK")
    """,
    )


def test_fsdp_shards_params_and_matches_one_device():
    on_devices(
        8,
        prelude=COMMON,
        code="""
    from jax.sharding import PartitionSpec as P
    model = fl.serial(fl.dense(32), fl.relu(), fl.dense(10))
    sgd = optax.sgd(0.1)
    mesh = data_mesh(8, fsdp=2)
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2}
    one, _ = run(model, sgd, 1, steps=20)
    sharded, _ = run(model, sgd, mesh, steps=20)
    p = sharded.params
    assert p["dense_0"]["w"].sharding.spec == P("fsdp", None)  # (64, 32): cut along 64
    assert p["dense_0"]["b"].sharding.spec == P("fsdp")       # (32,)
    assert p["dense_1"]["w"].sharding.spec == P("fsdp", None)  # (32, 10): 2 divides both; the largest is cut
    assert p["dense_0"]["w"].addressable_shards[0].data.shape == (32, 32)
    close(sharded.params, one.params, 1e-5)
    # Adam's moments follow their params.
    _, history = run(model, optax.adam(1e-3), mesh, steps=2)
    adam, _ = run(model, optax.adam(1e-3), mesh, steps=2)
    mu = adam.opt_state[0].mu["dense_0"]["w"]
    assert mu.sharding.spec == P("fsdp", None)
    print("OK")
    """,
    )


def test_shard_map_step_gradients_equal_one_device_and_pmean_of_grads_would_not():
    on_devices(
        8,
        prelude=COMMON,
        code="""
    from jax import lax
    from jax.sharding import PartitionSpec as P
    model = fl.serial(fl.dense(32), fl.tanh(), fl.dense(10))
    lr = 1.0
    sgd = optax.sgd(lr)
    loss_fn = classification_loss(model)
    mesh = data_mesh()
    p0 = start(model, sgd).params
    grads = lambda p: jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), p0, p)  # lr = 1
    one, _ = run(model, sgd, 1)
    mapped, _ = run(model, sgd, mesh, step_fn=shard_map_step(loss_fn, sgd, mesh))
    close(grads(mapped.params), grads(one.params), 1e-6, atol=1e-7)

    # The old idiom, pmean of the per-device gradients, is 8 times the gradient under check_vma.
    def wrong_grads(params, batch):
        def per_device(params, batch):
            g = jax.grad(lambda p: loss_fn(p, {}, batch, None)[0])(params)
            return lax.pmean(g, "data")
        return jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P("data")), out_specs=P())(params, batch)

    batch = {k: v[np.random.default_rng([0, 0]).permutation(len(v))[:32]] for k, v in train.items()}
    wrong = jax.jit(wrong_grads)(p0, Placement(mesh).batch(batch, 32))
    right = grads(one.params)
    w_wrong, w_right = np.asarray(wrong["dense_0"]["w"]).ravel(), np.asarray(right["dense_0"]["w"]).ravel()
    ratio = w_wrong @ w_right / (w_right**2).sum()
    assert abs(ratio - 8) < 1e-3, ratio
    print("OK")
    """,
    )


def test_fundl_run_on_8_cpu_devices(tmp_path):
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "fundl.cli", "run", "mlp_digits", "--cpu-devices", "8", "--out", str(out), "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"]["test"]["accuracy"] >= 0.96
    mesh = json.loads((out / "environment.json").read_text())["mesh"]
    assert mesh["axes"] == {"data": 8} and mesh["devices"] == 8 and mesh["process_count"] == 1
    # An indivisible global batch: a clear error, and no run directory left behind.
    bad = tmp_path / "bad"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fundl.cli",
            "run",
            "mlp_digits",
            "--cpu-devices",
            "8",
            "--set",
            "train.batch_size=30",
            "--out",
            str(bad),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert (
        done.returncode == 2
        and "batch size 30 does not divide into the 8 data shards" in done.stderr
        and "24 or 32" in done.stderr
    )
    assert "Traceback" not in done.stderr and not bad.exists()


def test_cpu_devices_after_jax_started_is_a_clear_error():
    from fundl.distributed import use_cpu_devices

    jax.devices()
    with pytest.raises(RuntimeError, match="JAX has already started"):
        use_cpu_devices(8)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_one_run(tmp_path):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "fundl.cli",
        "run",
        "mlp_digits",
        "--set",
        "train.steps=20",
        "--set",
        "train.log_every=5",
        "--cpu-devices",
        "2",
        "--out",
        str(out),
        "--quiet",
        "--distributed",
        "--coordinator",
        f"127.0.0.1:{port}",
        "--num-processes",
        "2",
        "--process-id",
    ]
    children = [
        subprocess.Popen(
            [*command, str(i)], env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for i in range(2)
    ]
    try:
        outputs = [child.communicate(timeout=240) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                os.kill(child.pid, 9)
                child.wait()
    for child, (stdout, stderr) in zip(children, outputs):
        assert child.returncode == 0, stdout + stderr
    # One run directory, written by process 0 alone; the same losses as one process on one device.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    two = json.loads((out / "summary.json").read_text())
    assert json.loads((out / "environment.json").read_text())["mesh"]["process_count"] == 2
    single = runs.run(
        "mlp_digits",
        [("train.steps", 20), ("train.log_every", 5)],
        out=str(tmp_path / "one"),
        quiet=True,
        echo=lambda _: None,
    )
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    reference = single.history.records
    assert [r["step"] for r in lines] == [r.step for r in reference]
    for got, want in zip(lines, reference):
        assert got["loss"] == pytest.approx(want.metrics["loss"], rel=1e-5)
    assert two["metrics"]["test"]["accuracy"] == pytest.approx(single.summary["metrics"]["test"]["accuracy"], rel=1e-6)
    assert two["params_fingerprint"] != ""  # both processes gathered the same final state ...
    assert all(f"params {two['params_fingerprint']}" in stdout for stdout, _ in outputs)  # ... and printed it


# --- one device: precision policy and gradient accumulation --------------------------------


def test_bfloat16_policy_trains_mlp_digits_with_float32_params(tmp_path):
    done = runs.run(
        "mlp_digits", [("train.precision", "bfloat16")], out=str(tmp_path / "r"), quiet=True, echo=lambda _: None
    )
    assert done.summary["metrics"]["test"]["accuracy"] >= 0.95
    assert {leaf.dtype for leaf in jax.tree.leaves(done.train_state.params)} == {jnp.dtype("float32")}
    assert json.loads((tmp_path / "r" / "environment.json").read_text())["precision"] == "bfloat16"


def test_bfloat16_policy_computes_in_bfloat16():
    seen = []
    model = fl.serial(fl.dense(4))

    def loss_fn(params, state, batch, key, *, train=True):
        seen.append((params["dense_0"]["w"].dtype, batch["x"].dtype))
        y, state = model.apply(params, state, batch["x"])
        return jnp.mean(y), (state, {})

    _, params, state = model.init(jax.random.key(0), (2, 3))
    loss, _ = with_precision(loss_fn, "bfloat16")(params, state, {"x": np.ones((2, 3), np.float32)}, None)
    assert seen == [(jnp.bfloat16, jnp.bfloat16)] and loss.dtype == jnp.float32
    with pytest.raises(ValueError, match="unknown precision policy 'fp8'; available: float32, bfloat16"):
        with_precision(loss_fn, "fp8")


def test_accumulating_k_micro_batches_is_one_batch_of_k_times_b():
    data = fl.datasets.digits()["train"]
    model = fl.serial(fl.flatten(), fl.dense(32), fl.tanh(), fl.dense(10))
    optimizer = optax.adam(1e-2)
    _, params, state = model.init(jax.random.key(0), (32, 8, 8))
    start = TrainState.create(params, state, optimizer, jax.random.key(1))
    from fundl.train import classification_loss

    whole, h1 = fit(classification_loss(model), optimizer, start, data, batch_size=32, steps=3, log_every=1, quiet=True)
    micro, h4 = fit(
        classification_loss(model),
        optimizer,
        start,
        data,
        batch_size=32,
        steps=3,
        log_every=1,
        accumulate=4,
        quiet=True,
    )
    assert int(micro.step) == 3  # steps count optimizer updates
    for a, b in zip(jax.tree.leaves(micro.params), jax.tree.leaves(whole.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert [r.metrics["loss"] for r in h4.records] == pytest.approx([r.metrics["loss"] for r in h1.records], rel=1e-5)
    with pytest.raises(ValueError, match="accumulate must be a positive integer that divides the batch size 32, got 5"):
        fit(classification_loss(model), optimizer, start, data, batch_size=32, steps=1, accumulate=5, quiet=True)


# --- the README's multi-device section, executed --------------------------------------------


def _readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"## {title}")
    return text[start : text.index("\n## ", start + 1)]


def _blocks(section: str, language: str) -> list[str]:
    parts = section.split(f"```{language}\n")[1:]
    return [part.split("```")[0] for part in parts]


def test_readme_scale_section_python_runs_on_8_devices():
    (code,) = _blocks(_readme_section("Scale"), "python")
    stdout = on_devices(8, code)
    assert stdout.strip() == "{'data': 4, 'fsdp': 2} P(None, 'fsdp')"  # (64, 128): 128 is the largest


def test_readme_scale_section_commands_run(tmp_path):
    (block,) = _blocks(_readme_section("Scale"), "bash")
    commands = [line.split("#")[0].split() for line in block.splitlines() if line.strip()]
    assert len(commands) == 5 and all(c[:2] == ["fundl", "run"] for c in commands)
    for i, command in enumerate(commands):
        short = [
            sys.executable,
            "-m",
            "fundl.cli",
            *command[1:],
            "--set",
            "train.steps=4",
            "--quiet",
            "--out",
            str(tmp_path / str(i)),
        ]
        done = subprocess.run(short, capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert done.returncode == 0, (command, done.stderr)
        summary = json.loads((tmp_path / str(i) / "summary.json").read_text())
        assert summary["steps"] == 4


def test_a_run_stopped_on_one_device_resumes_on_eight(tmp_path):
    out = tmp_path / "run"
    runs.run("mlp_digits", [("train.epochs", 3)], out=str(out), stop_after_steps=60, quiet=True, echo=lambda _: None)
    done = subprocess.run(
        [sys.executable, "-m", "fundl.cli", "resume", str(out), "--cpu-devices", "8", "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 * 38 and summary["metrics"]["test"]["accuracy"] > 0.9
    whole = runs.run("mlp_digits", [("train.epochs", 3)], out=str(tmp_path / "whole"), quiet=True, echo=lambda _: None)
    assert summary["metrics"]["test"]["loss"] == pytest.approx(whole.summary["metrics"]["test"]["loss"], rel=1e-4)
