"""Data and checkpoints that outgrow one host: source-fed runs on several processes, sharded orbax checkpoints.

Multi-process runs are local processes on 127.0.0.1, each with fake CPU devices, each
killed by its own pid when the test ends. Every child prints a last line that the parent
checks, so a child that exits early cannot pass.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fundl import runs

CLI = [sys.executable, "-m", "fundl.cli"]
DONE = "CHILD BODY DONE"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    if devices:
        env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    return env


def _both(commands: list[list[str]], cwd: Path, timeout: int = 300) -> list[tuple[int, str, str]]:
    """Runs the processes of one multi-process job; kills any left by its pid."""
    children = [
        subprocess.Popen(command, env=_env(), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for command in commands
    ]
    try:
        outputs = [child.communicate(timeout=timeout) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                os.kill(child.pid, signal.SIGKILL)
                child.wait()
    return [(child.returncode, out, err) for child, (out, err) in zip(children, outputs)]


def _distributed(args: list[str], port: int) -> list[list[str]]:
    multi = ["--cpu-devices", "2", "--distributed", "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
    return [[*CLI, *args, *multi, "--process-id", str(i)] for i in range(2)]


def _python(code: str, devices: int, timeout: int = 300) -> str:
    """Runs ``code`` in a fresh process with ``devices`` fake CPU devices; its stdout, after checking it finished."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code) + f"\nprint({DONE!r})\n"],
        env=_env(devices),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0 and done.stdout.rstrip().endswith(DONE), done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    directory = tmp_path_factory.mktemp("records") / "mlp_digits"
    runs.pack("mlp_digits", [], str(directory), shards=2)
    return directory


COUNTING_EXAMPLE = '''
"""mlp_digits reading its training split through a source that counts the examples this process reads."""
from fundl.datasets import records
from fundl.examples import mlp_digits

CONFIG = {**mlp_digits.CONFIG, "records_dir": ""}


class Counting:
    def __init__(self, source):
        self.source, self.read_count = source, 0

    def __len__(self):
        return len(self.source)

    def __getitem__(self, index):
        self.read_count += 1
        return self.source[index]

    def read(self, indices):
        self.read_count += indices.size
        return self.source.read(indices)


def experiment(config):
    done = mlp_digits.experiment(config)
    return done._replace(train_data=Counting(records(config["records_dir"] + "/train")))
'''


def test_two_processes_each_read_only_their_rows_of_a_source(tmp_path, packed):
    example = tmp_path / "counting.py"
    example.write_text(COUNTING_EXAMPLE)
    script = tmp_path / "child.py"
    script.write_text(
        textwrap.dedent(f"""
        import sys
        from fundl import distributed
        distributed.use_cpu_devices(2)
        distributed.initialize("127.0.0.1:{{}}".format(sys.argv[1]), 2, int(sys.argv[2]))
        from fundl import runs
        settings = [("records_dir", "{packed}"), ("train.steps", 20), ("train.log_every", 5)]
        done = runs.run("{example}", settings, out="{tmp_path / "run"}", quiet=True, echo=lambda _: None)
        print("READ", done.experiment.train_data.read_count)
        print({DONE!r})
    """)
    )
    port = str(_free_port())
    results = _both([[sys.executable, str(script), port, str(i)] for i in range(2)], tmp_path)
    counts = []
    for code, out, err in results:
        assert code == 0 and out.rstrip().endswith(DONE), out + err
        counts.append(int(out.split("READ ")[1].split()[0]))
    # 20 steps of 32 examples: 16 rows a step each (and the first 256 examples each checks before training)
    first = 256 + 32  # the check of the first examples, and the first batch traced to check the loss
    assert [count - first for count in counts] == [20 * 16, 20 * 16], counts
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["run", "counting.py", "child.py"])
    one = runs.run(
        str(example),
        [("records_dir", str(packed)), ("train.steps", 20), ("train.log_every", 5)],
        out=str(tmp_path / "one"),
        quiet=True,
        echo=lambda _: None,
    )
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [r.step for r in one.history.records]
    for got, want in zip(lines, one.history.records):
        for name, value in want.metrics.items():
            assert got[name] == pytest.approx(value, rel=1e-5, abs=1e-6), (got["step"], got["split"], name)


def _latest(directory: Path) -> int:
    orbax = directory / "checkpoints" / "orbax"
    return max((int(p.name) for p in orbax.iterdir() if p.name.isdigit()), default=0) if orbax.is_dir() else 0


def _writing(directory: Path) -> bool:
    orbax = directory / "checkpoints" / "orbax"
    return orbax.is_dir() and any("tmp" in p.name for p in orbax.iterdir())


def _kill_when(command: list[str], ready, timeout: float = 240) -> None:
    """Starts ``command`` and SIGKILLs it (by its pid) as soon as ``ready()`` holds."""
    process = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + timeout
        while not ready():
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.time() < deadline, "the moment to kill never came"
            time.sleep(0.005)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


def test_a_source_fed_sharded_run_killed_three_times_resumes_to_the_same_params(tmp_path, packed):
    """Mid-epoch, while an orbax checkpoint is being written, and again later: each resume ends where the
    uninterrupted run does (the data position is the step, the order rule gives the rest)."""
    args = [
        "mlp_digits",
        "--cpu-devices",
        "2",
        "--set",
        "train.fsdp=2",
        "--set",
        f"data.records={packed}",
        "--set",
        "train.epochs=3",
        "--set",
        "checkpoint.every_steps=10",
        "--quiet",
    ]
    whole = subprocess.run(
        [*CLI, "run", *args, "--out", str(tmp_path / "whole")], env=_env(), capture_output=True, text=True, timeout=300
    )
    assert whole.returncode == 0, whole.stderr
    killed = tmp_path / "killed"
    _kill_when([*CLI, "run", *args, "--out", str(killed)], lambda: _latest(killed) >= 10)  # mid-epoch 1 (38 steps)
    first = _latest(killed)
    resume = [*CLI, "resume", str(killed), "--cpu-devices", "2", "--quiet"]
    _kill_when(resume, lambda: _writing(killed) and _latest(killed) > first)  # while a checkpoint is written
    second = _latest(killed)
    _kill_when(resume, lambda: _latest(killed) >= second + 20)
    done = subprocess.run(resume, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    fingerprint = lambda d: json.loads((d / "summary.json").read_text())["params_fingerprint"]  # noqa: E731
    assert fingerprint(killed) == fingerprint(tmp_path / "whole")
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["final_state"] == {
        "checkpoint": 114
    }  # sharded: the final state is the last checkpoint, not gathered
    loaded = runs.load_run(tmp_path / "whole")
    from fundl.train import params_fingerprint

    assert params_fingerprint(loaded.train_state.params) == fingerprint(tmp_path / "whole")


RESTORE = """
import json, jax, numpy as np, optax
from fundl import runs
from fundl.distributed import Placement, data_mesh
from fundl.runs import Checkpoints
from fundl.train import TrainState, fit, initial_train_state, params_fingerprint
assert jax.device_count() == {devices}
module = runs.load_example("mlp_digits")
config = runs.resolve_config(module)
experiment = module.experiment(config)
optimizer = optax.sgd(0.1)
start = initial_train_state(experiment.model, experiment.input_shape, optimizer, 0)
like = jax.eval_shape(lambda: start)
mesh = data_mesh({devices}, fsdp={fsdp})
checkpoints = Checkpoints("{directory}", steps_per_epoch=38, run_id=json.load(open("{run}/environment.json"))["run_id"])
step, restored, _ = checkpoints.restore(like, shardings=Placement(mesh).state_shardings(like))
assert step == 20
print("FINGERPRINT", params_fingerprint(restored.params))
host = jax.device_get(jax.tree.map(lambda leaf: leaf, restored._replace(key=jax.random.key_data(restored.key))))
np.savez("{out}", *jax.tree.leaves(host))
# a few SGD steps after the restore, against the run that never stopped (one device)
common = dict(batch_size=32, steps=25, quiet=True)
after, _ = fit(experiment.loss_fn, optimizer, restored, experiment.train_data, mesh=mesh, **common)
straight, _ = fit(experiment.loss_fn, optimizer, start, experiment.train_data, mesh=1, **common)
for a, b in zip(jax.tree.leaves(after.params), jax.tree.leaves(straight.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
"""


def test_an_fsdp_run_over_two_processes_writes_its_own_shards_and_restores_on_any_mesh(tmp_path):
    args = [
        "mlp_digits",
        "--set",
        "train.fsdp=2",
        "--set",
        "train.epochs=1",
        "--set",
        "checkpoint.every_steps=10",
        "--quiet",
    ]
    stopped = tmp_path / "stopped"
    results = _both(
        _distributed(["run", *args, "--out", str(stopped), "--stop-after-steps", "20"], _free_port()), tmp_path
    )
    fingerprints = set()
    for code, out, err in results:
        assert code == 75, out + err
        fingerprints.add(out.split("params ")[1].split()[0])
    assert len(fingerprints) == 1  # both processes hold the same params (each its shards)
    saved = stopped / "checkpoints" / "orbax" / "20" / "state"
    assert sorted(p.name for p in saved.iterdir() if p.name.startswith("ocdbt.process_")) == [
        "ocdbt.process_0",
        "ocdbt.process_1",
    ]  # each process wrote its own shards
    (fingerprint,) = fingerprints
    leaves = {}
    for devices, fsdp in ((4, 2), (8, 2), (1, 1)):
        out = tmp_path / f"restored{devices}.npz"
        code = RESTORE.format(devices=devices, fsdp=fsdp, directory=stopped / "checkpoints", run=stopped, out=out)
        printed = _python(code, devices)
        assert f"FINGERPRINT {fingerprint}" in printed
        with __import__("numpy").load(out) as saved_leaves:
            leaves[devices] = [saved_leaves[k] for k in sorted(saved_leaves.files, key=lambda k: int(k.split("_")[1]))]
    import numpy as np

    for devices in (4, 8):  # params and optimizer state, exactly as saved
        assert all(np.array_equal(a, b) for a, b in zip(leaves[devices], leaves[1]))
    # resumed on the same mesh: the final params of the run that never stopped
    whole = tmp_path / "whole"
    results = _both(_distributed(["run", *args, "--out", str(whole)], _free_port()), tmp_path)
    assert all(code == 0 for code, _, _ in results), results
    resume = ["resume", str(stopped), "--quiet"]
    results = _both(_distributed(resume, _free_port()), tmp_path)
    assert all(code == 0 for code, _, _ in results), results
    fingerprint = lambda d: json.loads((d / "summary.json").read_text())["params_fingerprint"]  # noqa: E731
    assert fingerprint(stopped) == fingerprint(whole)
