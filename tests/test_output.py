"""Output that fits where it is read: verbosity levels, results on stdout and diagnostics on stderr, aligned
numbers, plain progress lines where output is not a terminal, lines that arrive as they are written, and a quiet
exit when the reader goes away."""

import functools
import io
import json
import os
import re
import subprocess
import sys
import textwrap

import jax
import optax
import pytest

import fundl as fl
from fundl import cli
from fundl._text import metrics_text, number
from fundl.train import TrainState, _progress as progress, classification_loss, fit

MODEL = fl.serial(fl.dense(16), fl.relu(), fl.dense(10))
LOSS = classification_loss(MODEL)


@functools.cache
def digits():
    data = fl.datasets.digits(validation=0.2)
    flat = lambda split: {"image": split["image"].reshape(-1, 64), "label": split["label"]}  # noqa: E731
    return flat(data["train"]), flat(data["validation"])


def train(**options):
    optimizer = optax.sgd(0.1)
    _, params, state = MODEL.init(jax.random.key(0), (32, 64))
    data, validation = digits()
    return fit(
        LOSS,
        optimizer,
        TrainState.create(params, state, optimizer, jax.random.key(1)),
        data,
        batch_size=32,
        epochs=2,
        eval_data={"validation": validation},
        **options,
    )


def test_numbers_have_fixed_decimals_and_line_up():
    assert number(1.0) == " 1.0000" and number(0.97) == " 0.9700" and number(12.5) == "12.5000"
    assert number(1e-5) == "1.000e-05" and number(0.0) == " 0.0000" and number(float("nan")) == "    nan"
    assert number([[1.0, 2.0], [3.0, 4.0]]) == "[2x2]"  # a confusion matrix is not spelled out
    assert metrics_text({"accuracy": 1.0, "loss": 0.5}) == "loss  0.5000  accuracy  1.0000"  # never "accuracy 1"


@pytest.mark.parametrize("verbose", [0, "silent", 1, "epochs", 2, "bar"])
def test_verbosity_takes_numbers_and_names(verbose):
    assert progress.verbosity(verbose) == {"silent": 0, "epochs": 1, "bar": 2}.get(verbose, verbose)


@pytest.mark.parametrize("verbose", [3, -1, "loud", True])
def test_a_bad_verbosity_is_a_clear_error(verbose):
    with pytest.raises(ValueError, match=r"verbose must be 0, 1 or 2, or one of 'silent', 'epochs', 'bar'"):
        train(verbose=verbose)


def test_each_level_prints_what_it_says_results_on_stdout_diagnostics_on_stderr(capfd, monkeypatch):
    monkeypatch.setattr(progress, "PLAIN_EVERY_S", 0.0)  # a plain progress line at every update
    train(verbose=0)
    assert capfd.readouterr() == ("", "")

    train(verbose=1)
    out, err = capfd.readouterr()
    lines = out.splitlines()
    assert len(lines) == 2  # one line per epoch: its training metrics and the validation split's
    assert lines[0].startswith("step     38  epoch   1.00  train: loss ") and "  validation: loss " in lines[0]
    values = re.findall(r"(?:loss|accuracy) +(\S+)", lines[1])
    assert len(values) == 4 and all(re.fullmatch(r"\d\.\d{4}", value) for value in values)  # 4 decimals each
    assert "training 76 steps" in err and "done: 76 steps" in err and "progress:" not in err

    train(verbose=2)  # captured output is not a terminal: the bar becomes plain lines, no control codes
    out, err = capfd.readouterr()
    assert len(out.splitlines()) == 2 and "progress: step     38/76 ( 50%)  epoch 1/2  loss " in err
    assert "\x1b" not in out + err and "\r" not in out + err


def test_a_sweep_piped_to_a_file_prints_each_line_as_it_comes(tmp_path):
    """The child prints its lines, then waits: they must reach the pipe before it ends."""
    script = textwrap.dedent(
        """
        import time
        from fundl import runs
        runs.sweep("mlp_digits", [("train.epochs", 1)], seeds=[0, 1], out=OUT, verbose=1)
        print("waiting", flush=True)
        time.sleep(60)
        """
    ).replace("OUT", repr(str(tmp_path / "sweep")))
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        lines = []
        while not lines or lines[-1] != "waiting\n":
            lines.append(child.stdout.readline())
            assert lines[-1], "the child ended without its lines"
        assert child.poll() is None  # still running: the lines came as they were written
    finally:
        child.kill()
        child.wait()
    text = "".join(lines)
    assert "validation: loss " in text and "(2 members: mean ± std)" in text and "test: loss " in text


def fake_run(path):
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"seed": 0, "train": {"epochs": 1}}))
    (path / "status.json").write_text(json.dumps({"status": "finished", "step": 1}))
    return path


class ClosedPipe(io.StringIO):
    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")


def test_a_closed_pipe_ends_the_command_quietly(tmp_path, monkeypatch, capsys):
    run = fake_run(tmp_path / "run")
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert cli.main(["show", str(run)]) == cli.EXIT_BROKEN_PIPE

    read, write = os.pipe()  # `fundl show RUN | head` where head has gone: the reading end is closed
    os.close(read)
    done = subprocess.run(
        [sys.executable, "-m", "fundl", "show", str(run)], stdout=write, stderr=subprocess.PIPE, text=True, timeout=60
    )
    os.close(write)
    assert done.returncode == cli.EXIT_BROKEN_PIPE and done.stderr == ""
