"""Runs that cannot be fooled: a sealed identity, one way forward from every state, one writer, honest messages.

Each test states a promise of a run directory and tries to break it the way a careless (or
unlucky) user would: an edited config, a signal in the first second, two resumes at once, a
full disk, a torn file. It checks the message and that nothing was lost or corrupted.
"""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from child import ROOT, run_python

import fundl as fl
from fundl import runs
from fundl.cli import main
from fundl.runs import DirectoryInUse, DiskFull, IdentityError, RunAborted, _files

QUIET = {"quiet": True, "echo": lambda _: None}
CLI = [sys.executable, "-m", "fundl.cli"]
TWO = [("train.epochs", 2)]


def read(directory: Path, name: str):
    return json.loads((directory / name).read_text())


def fingerprint(directory: Path) -> str:
    return read(directory, "summary.json")["params_fingerprint"]


def positions(directory: Path) -> list[tuple[int, str]]:
    return [(r["step"], r["split"]) for r in map(json.loads, (directory / "metrics.jsonl").read_text().splitlines())]


# the records of a 2-epoch run stopped at step 50 and resumed: the log where it stopped, and each once
RESUMED_AT_50 = [(38, "train"), (38, "validation"), (50, "train"), (76, "train"), (76, "validation"), (76, "test")]


def snapshot(directory: Path) -> dict:
    return {p: p.read_bytes() for p in directory.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A finished 2-epoch run, another run (seed 1), and a run stopped at step 50 (checkpoints at 38 and 50)."""
    root = tmp_path_factory.mktemp("made")
    runs.run("mlp_digits", TWO, out=str(root / "done"), **QUIET)
    runs.run("mlp_digits", [*TWO, ("seed", 1)], out=str(root / "other"), **QUIET)
    runs.run("mlp_digits", TWO, out=str(root / "stopped"), stop_after_steps=50, **QUIET)
    return root


def copy(made: Path, tmp_path: Path, name: str) -> Path:
    shutil.copytree(made / name, tmp_path / name)
    return tmp_path / name


def edit_json(path: Path, change) -> None:
    value = json.loads(path.read_text())
    change(value)
    path.write_text(json.dumps(value))


# --- 1. a sealed identity --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, change, shown",
    [
        ("seed", lambda c: c.update(seed=1), "seed is 1, but the run was started with seed=0"),
        (
            "train.batch_size",
            lambda c: c["train"].update(batch_size=16),
            "train.batch_size is 16, but the run was started with train.batch_size=32",
        ),
        (
            "train.epochs",  # "extend a finished run": a new run, not an edit
            lambda c: c["train"].update(epochs=5),
            "train.epochs is 5, but the run was started with train.epochs=2",
        ),
    ],
)
def test_an_edited_config_is_refused_by_every_reader_naming_the_key_and_both_values(made, tmp_path, key, change, shown):
    done = copy(made, tmp_path, "done")
    edit_json(done / "config.json", change)
    before = snapshot(done)
    with pytest.raises(IdentityError, match=shown) as caught:
        runs.load_run(done)
    assert "start a new run (fundl run ... --set" in str(caught.value)
    for reader in (runs.show_run, lambda d: runs.compare_runs([d, made / "other"])):
        with pytest.raises(IdentityError, match=shown):
            reader(done)
    (listed,) = [r for r in runs.list_runs(tmp_path) if r["name"] == "done"]
    assert listed["status"] == "edited" and shown in listed["problem"]
    stopped = copy(made, tmp_path, "stopped")
    edit_json(stopped / "config.json", change)
    with pytest.raises(IdentityError, match=shown):
        runs.resume(stopped, **QUIET)
    assert snapshot(done) == before  # refused, never repaired or overwritten


def test_an_edited_sweep_or_identity_file_is_refused(tmp_path):
    sweep = tmp_path / "sweep"
    runs.sweep("mlp_digits", [("train.steps", 5)], seeds=[0, 1], out=str(sweep), **QUIET)
    pristine = snapshot(sweep)
    edit_json(sweep / "environment.json", lambda e: e["sweep"].update(seeds=[0, 2]))
    with pytest.raises(IdentityError, match=r"the sweep is .*\[0, 2\].*but the run was started as .*\[0, 1\]"):
        runs.load_run(sweep, member=1)
    (sweep / "environment.json").write_bytes(pristine[sweep / "environment.json"])
    edit_json(sweep / "identity.json", lambda i: i["identity"]["config"].update(seed=5))
    with pytest.raises(IdentityError, match="identity.json was edited or damaged"):
        runs.show_run(sweep)


def test_summary_and_final_state_copied_from_another_run_are_refused(made, tmp_path):
    done = copy(made, tmp_path, "done")
    for name in ("summary.json", "train_state.msgpack"):
        shutil.copy(made / "other" / name, done / name)
    for reader in (runs.load_run, runs.show_run):
        with pytest.raises(ValueError, match=r"summary.json belongs to another run \(\w+\), not to \w+"):
            reader(done)
    # the state alone, with the summary's record of it made to match: the state's own run id refuses it
    shutil.copy(made / "done" / "summary.json", done / "summary.json")
    sha = read(made / "other", "summary.json")["train_state_sha256"]
    edit_json(done / "summary.json", lambda s: s.update(train_state_sha256=sha))
    with pytest.raises(ValueError, match="train_state.msgpack was saved by another run"):
        runs.load_run(done)


def test_changed_data_is_refused(made, tmp_path, monkeypatch):
    done = copy(made, tmp_path, "done")
    digits = fl.datasets.digits

    def other_digits(**kwargs):
        data = digits(**kwargs)
        data["train"] = {**data["train"], "image": data["train"]["image"] * 0.5}
        return data

    monkeypatch.setattr(fl.datasets, "digits", other_digits)
    with pytest.raises(IdentityError, match="the example's 'train' data is not the data the run was started with"):
        runs.load_run(done)


# --- 2. every state has one true way forward --------------------------------------------------------------


def _signal_when(args: list[str], out: Path, appears: str, signum: int) -> tuple[int, str]:
    """Starts ``fundl run``, sends ``signum`` the moment ``out/appears`` exists; returns the exit status and stderr."""
    process = subprocess.Popen(
        [*CLI, "run", "mlp_digits", "--out", str(out), "--quiet", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 240
        while not (out / appears).exists():
            assert process.poll() is None and time.time() < deadline, process.communicate()
            time.sleep(0.001)
        os.kill(process.pid, signum)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode, stderr


def test_a_signal_in_the_first_moment_leaves_nothing_or_a_run_that_resumes_from_step_0(made, tmp_path):
    gone = tmp_path / "gone"
    code, stderr = _signal_when(["--set", "train.epochs=2"], gone, "status.json", signal.SIGTERM)
    assert code == 75 and "Traceback" not in stderr
    assert f"interrupted by SIGTERM while starting: nothing was trained, and {gone} was removed" in stderr
    assert not gone.exists()
    sealed = tmp_path / "sealed"
    code, stderr = _signal_when(["--set", "train.epochs=2"], sealed, "identity.json", signal.SIGINT)
    assert code == 75 and "second Ctrl-C" not in stderr and "checkpoint is kept" not in stderr
    assert (
        f"interrupted by SIGINT before training started: nothing was trained; `fundl resume {sealed}` starts it "
        "from step 0" in stderr
    )
    assert read(sealed, "status.json")["status"] == "interrupted"
    assert "from step 0" in runs.show_run(sealed)
    runs.resume(sealed, **QUIET)
    assert fingerprint(sealed) == fingerprint(made / "done")


def test_a_directory_left_while_starting_says_so_and_run_reuses_it(made, tmp_path):
    left = tmp_path / "left"  # what a SIGKILL between claiming and sealing leaves
    left.mkdir()
    (left / "status.json").write_text(json.dumps({"status": "running", "step": 0}))
    shutil.copy(made / "done" / "config.json", left / "config.json")
    with pytest.raises(IdentityError, match=f"trained nothing: `fundl run --out {left}` may reuse the directory"):
        runs.resume(left, **QUIET)
    assert f"`fundl run --out {left}` reuses the directory" in runs.show_run(left)
    (listed,) = runs.list_runs(tmp_path)
    assert listed["status"] == "unstarted"
    runs.run("mlp_digits", TWO, out=str(left), **QUIET)
    assert fingerprint(left) == fingerprint(made / "done")
    with pytest.raises(FileExistsError, match="it holds a run that has finished: choose a new directory"):
        runs.run("mlp_digits", TWO, out=str(left), **QUIET)
    with pytest.raises(FileExistsError, match=r"not finished \(interrupted\): continue it with `fundl resume"):
        runs.run("mlp_digits", TWO, out=str(made / "stopped"), **QUIET)


def _full_disk(monkeypatch, when) -> None:
    """Makes writing a run file fail as a full disk would, for the temporary files ``when(name)`` picks."""
    write = _files._write

    def full(file, data, path):
        if when(Path(path).name):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        write(file, data, path)

    monkeypatch.setattr(_files, "_write", full)


def test_a_full_disk_at_start_removes_the_directory_and_says_so(tmp_path, monkeypatch):
    _full_disk(monkeypatch, lambda name: name.startswith(".config.json"))
    out = tmp_path / "run"
    with pytest.raises(DiskFull) as caught:
        runs.run("mlp_digits", TWO, out=str(out), **QUIET)
    assert str(caught.value) == (
        f"no space left on device writing {out / 'config.json'}: nothing was trained, and {out} was removed: "
        "free some space and run it again"
    )
    assert not out.exists()


def test_a_full_disk_during_training_names_the_file_and_resume_continues_once_space_is_freed(made, tmp_path, capsys):
    out = tmp_path / "run"
    patch = pytest.MonkeyPatch()
    _full_disk(patch, lambda name: name.startswith(".76.ckpt"))  # the second checkpoint
    try:
        assert main(["run", "mlp_digits", "--out", str(out), "--quiet", "--set", "train.epochs=2"]) == 2
    finally:
        patch.undo()
    err = capsys.readouterr().err
    assert f"no space left on device writing {out / 'checkpoints' / '76.ckpt'}: free some space, then " in err
    assert f"`fundl resume {out}` continues from step 38" in err and "Traceback" not in err
    assert read(out, "status.json")["status"] == "failed"
    assert "from step 38" in runs.show_run(out)
    runs.resume(out, **QUIET)
    assert fingerprint(out) == fingerprint(made / "done")


ABORTING = '''
"""mlp_digits whose hook is Ctrl-C'd twice at step 20 of its first run: before any checkpoint."""
from pathlib import Path
from fundl.examples import mlp_digits
from fundl.runs import RunAborted

CONFIG = {**mlp_digits.CONFIG, "train": {"epochs": 2}}
FLAG = Path({flag!r})

def experiment(config):
    def abort(event):
        if event.kind == "step" and event.record.step == 20 and not FLAG.exists():
            FLAG.write_text("")
            raise RunAborted()
    return mlp_digits.experiment(config)._replace(hooks=[abort])
'''


def test_aborting_before_the_first_checkpoint_says_none_was_kept_and_resume_starts_again(made, tmp_path):
    example = tmp_path / "aborting.py"
    example.write_text(ABORTING.replace("{flag!r}", repr(str(tmp_path / "aborted-once"))))
    out = tmp_path / "run"
    with pytest.raises(RunAborted) as caught:
        runs.run(str(example), out=str(out), **QUIET)
    assert caught.value.message == (
        f"aborted by a second Ctrl-C; no checkpoint was saved yet: `fundl resume {out}` continues from step 0"
    )
    assert read(out, "status.json")["status"] == "interrupted"
    done = runs.resume(out, **QUIET)
    assert done.summary["params_fingerprint"] == fingerprint(made / "done")


# --- 3. one writer per run directory --------------------------------------------------------------------


def test_a_directory_held_by_a_live_process_is_refused_and_a_killed_holder_leaves_no_lock(made, tmp_path):
    stopped = copy(made, tmp_path, "stopped")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from fundl.runs._lock import DirectoryLock; "
            f"DirectoryLock.acquire(Path({str(stopped)!r})); print('held', flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        before = snapshot(stopped)
        with pytest.raises(DirectoryInUse, match=rf"{stopped} is in use by process {holder.pid} on "):
            runs.resume(stopped, **QUIET)
        assert snapshot(stopped) == before
        assert f"in use (process {holder.pid} on" in runs.show_run(stopped)
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    runs.resume(stopped, **QUIET)  # the kernel released a killed holder's lock
    assert fingerprint(stopped) == fingerprint(made / "done")
    assert not (stopped / "lock").exists()


def test_two_resumes_at_once_one_trains_the_other_is_refused(made, tmp_path):
    stopped = copy(made, tmp_path, "stopped")
    resumes = [
        subprocess.Popen(
            [*CLI, "resume", str(stopped), "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    try:
        results = [(p.wait(timeout=300), p.communicate()[1]) for p in resumes]
    finally:
        for p in resumes:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    (refused,) = [err for code, err in results if code == 2]
    assert "is in use by process" in refused or "there is nothing to resume" in refused  # (if the other had ended)
    assert fingerprint(stopped) == fingerprint(made / "done")
    assert positions(stopped) == RESUMED_AT_50  # one writer: no record twice


# --- the weak list: records, the checkpoint index, SIGHUP, final writes, fundl ls -------------------------


def test_torn_metrics_and_checkpoint_index_do_not_block_resume(made, tmp_path):
    stopped = tmp_path / "best"
    runs.run(
        "mlp_digits", [*TWO, ("checkpoint.best", "validation/accuracy")], out=str(stopped), stop_after_steps=50, **QUIET
    )
    with (stopped / "metrics.jsonl").open("a") as file:
        file.write('{"step": 51, "epoch": 1.3, "spl')  # a kill (or a full disk) in the middle of a line
    (stopped / "checkpoints" / "index.json").write_text('{"38": 0.9')
    done = runs.resume(stopped, **QUIET)
    assert done.summary["params_fingerprint"] == fingerprint(made / "done")
    assert positions(stopped) == RESUMED_AT_50
    assert set(json.loads((stopped / "checkpoints" / "index.json").read_text())) == {"38", "50", "76"}
    (stopped / "metrics.jsonl").write_text('{"step": 1}\n' + (stopped / "metrics.jsonl").read_text())
    with pytest.raises(ValueError, match=r"best/metrics.jsonl line 1 is not a metrics record"):  # not its last line
        runs.RunDirectory(stopped).records()


def test_resuming_a_run_interrupted_while_writing_its_results_duplicates_nothing(made, tmp_path, monkeypatch):
    import fundl.runs._run as run_module

    def aborted(*args, **kwargs):
        raise RunAborted()

    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(run_module, "record_outcome", aborted)
        with pytest.raises(RunAborted, match="while the results were written; the latest complete checkpoint "):
            runs.run("mlp_digits", TWO, out=str(out), **QUIET)
    assert read(out, "status.json")["status"] == "interrupted"
    done = runs.resume(out, **QUIET)
    assert done.history.steps == 76 and done.summary["params_fingerprint"] == fingerprint(made / "done")
    assert (out / "metrics.jsonl").read_text() == (made / "done" / "metrics.jsonl").read_text()
    assert done.summary["metrics"] == read(made / "done", "summary.json")["metrics"]


def test_an_early_stop_interrupted_while_writing_its_results_does_not_train_on_when_resumed(tmp_path, monkeypatch):
    import fundl.runs._run as run_module

    stopping = [
        ("train.epochs", 6),
        ("early_stopping.metric", "validation/loss"),
        ("early_stopping.min_delta", 0.5),
        ("early_stopping.patience", 1),
    ]
    whole = runs.run("mlp_digits", stopping, out=str(tmp_path / "whole"), **QUIET)
    assert whole.history.steps < 6 * 38  # stopped early

    def aborted(*args, **kwargs):
        raise RunAborted()

    with monkeypatch.context() as patch:
        patch.setattr(run_module, "record_outcome", aborted)
        with pytest.raises(RunAborted):
            runs.run("mlp_digits", stopping, out=str(tmp_path / "cut"), **QUIET)
    done = runs.resume(tmp_path / "cut", **QUIET)
    assert done.history.steps == whole.history.steps and done.history.stop_reason == whole.history.stop_reason
    assert read(tmp_path / "cut", "status.json")["status"] == "stopped_early"
    assert fingerprint(tmp_path / "cut") == whole.summary["params_fingerprint"]


def test_a_signal_during_the_final_writes_waits_for_them_and_a_second_stops_with_a_true_status(
    made, tmp_path, monkeypatch
):
    import fundl.runs._outcome as outcome

    draw = outcome._draw_curves
    sent: list[int] = []

    def signalled(*args):
        for signum in sent:
            os.kill(os.getpid(), signum)
        draw(*args)

    monkeypatch.setattr(outcome, "_draw_curves", signalled)
    sent[:] = [signal.SIGTERM]  # e.g. a scheduler's notice just as the run ends
    lines = []
    done = runs.run("mlp_digits", TWO, out=str(tmp_path / "one"), quiet=True, echo=lines.append)
    assert read(tmp_path / "one", "status.json")["status"] == "finished" and not done.history.interrupted
    assert "SIGTERM arrived while the results were written: they were written first" in lines
    assert fingerprint(tmp_path / "one") == fingerprint(made / "done")
    sent[:] = [signal.SIGHUP, signal.SIGTERM]  # a closed terminal, then a second signal: stop now
    with pytest.raises(RunAborted) as caught:
        runs.run("mlp_digits", TWO, out=str(tmp_path / "two"), **QUIET)
    assert caught.value.message == (
        "aborted by a second SIGTERM while the results were written; the latest complete checkpoint (step 76) is "
        f"kept: `fundl resume {tmp_path / 'two'}` continues from step 76"
    )
    status = read(tmp_path / "two", "status.json")
    assert status["status"] == "interrupted" and status["reason"].startswith("aborted by a second SIGTERM")
    monkeypatch.setattr(outcome, "_draw_curves", draw)
    runs.resume(tmp_path / "two", **QUIET)
    assert read(tmp_path / "two", "status.json")["status"] == "finished"
    assert fingerprint(tmp_path / "two") == fingerprint(made / "done")
    assert positions(tmp_path / "two") == positions(made / "done")


def test_one_ctrl_c_while_a_large_sweep_starts_says_so_and_it_resumes_from_step_0(tmp_path):
    out = tmp_path / "sweep"
    code, stderr = _signal_when(["--seeds", "0-1999", "--set", "train.steps=3"], out, "identity.json", signal.SIGINT)
    assert code == 75 and "second Ctrl-C" not in stderr, stderr
    assert f"interrupted by SIGINT before training started: nothing was trained; `fundl resume {out}` starts" in stderr
    assert read(out, "status.json")["status"] == "interrupted"


def test_sighup_checkpoints_and_exits_75(tmp_path):
    out = tmp_path / "run"
    code, stderr = _signal_when(["--set", "train.epochs=200"], out, "checkpoints/38.ckpt", signal.SIGHUP)
    assert code == 75, stderr
    status = read(out, "status.json")
    assert status["status"] == "interrupted" and status["reason"] == "interrupted by SIGHUP"


def test_ls_lists_every_run_and_marks_an_unreadable_one(made, tmp_path, capsys):
    for name in ("done", "other"):
        copy(made, tmp_path, name)
    (tmp_path / "other" / "config.json").write_text('{"seed": 0, "tra')
    assert main(["ls", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    done_line, other_line = out.splitlines()[1:3]
    assert done_line.split()[:3] == ["done", "mlp_digits", "finished"]
    assert other_line.split()[:3] == ["other", "mlp_digits", "unreadable"]  # its manifest still names the example
    assert f"other: {tmp_path / 'other' / 'config.json'} is not valid JSON" in out


# --- 6. hangs ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "coordinator, message",
    [
        ("no-such-host.invalid:1234", "the coordinator host 'no-such-host.invalid' does not resolve"),
        ("127.0.0.1:70000", "the coordinator port must be in 1-65535, got 70000"),
        ("127.0.0.1:0", "the coordinator port must be in 1-65535, got 0"),
        ("127.0.0.1", "the coordinator address must be HOST:PORT"),
    ],
)
def test_a_bad_coordinator_fails_at_once(coordinator, message, capsys):
    args = ["run", "mlp_digits", "--distributed", "--coordinator", coordinator, "--num-processes", "2"]
    start = time.time()
    assert main([*args, "--process-id", "1"]) == 2
    assert message in capsys.readouterr().err and time.time() - start < 30


def test_a_process_whose_coordinator_never_starts_says_whom_it_waits_for_and_gives_up():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    run_python(
        f"""
        import io, sys
        from fundl.distributed import initialize
        said = io.StringIO()
        try:
            initialize("127.0.0.1:{port}", 2, 1, timeout_s=2, echo=lambda line: print(line, file=said))
        except RuntimeError as error:
            assert "the coordinator (process 0) at 127.0.0.1:{port} did not answer within 2 s" in str(error), error
        else:
            raise AssertionError("no error")
        assert said.getvalue().startswith(
            "process 1 of 2: joining the coordinator (process 0) at 127.0.0.1:{port}; waiting up to 2 s"
        ), said.getvalue()
        """,
        timeout=120,
    )


def test_a_large_sweep_reports_progress_while_it_makes_its_initial_states(monkeypatch):
    import jax
    import numpy as np
    import optax

    from fundl.train import _state, initial_train_state

    monkeypatch.setattr(_state, "_PROGRESS_EVERY_S", 0.0)
    model = fl.serial(fl.flatten(), fl.dense(8), fl.relu(), fl.dense(10))
    seeds = list(range(3000))
    reported = []
    start = time.time()
    states = _state.initial_train_states(model, (32, 8, 8), optax.adam(1e-3), seeds, progress=reported.append)
    assert time.time() - start < 120  # stacking thousands of device arrays once took minutes
    assert len(reported) > 10 and reported == sorted(reported) and reported[-1] <= 3000
    for seed in (0, 1234, 2999):  # the stacked states are each seed's own, bit for bit
        alone = initial_train_state(model, (32, 8, 8), optax.adam(1e-3), seed)
        np.testing.assert_array_equal(jax.random.key_data(states.key)[seed], jax.random.key_data(alone.key))
        member = jax.tree.map(lambda x: x[seed], (states.params, states.opt_state))
        for a, b in zip(jax.tree.leaves(member), jax.tree.leaves((alone.params, alone.opt_state))):
            np.testing.assert_array_equal(a, b)


def test_the_helper_fails_a_child_that_did_not_finish_its_body():
    with pytest.raises(AssertionError, match="without finishing its body"):
        run_python("import sys\nsys.exit(0)\nprint('never')")
    with pytest.raises(AssertionError, match="without finishing its body"):
        run_python("raise SystemExit(3)", prelude="def unused():\n    pass\n")
