"""The Cloud TPU scripts in tpu/: their dry-run commands, their argument errors, and no network.

Every script runs under bash with a PATH whose first folder holds a fake `gcloud` (and `ssh`,
`scp`, `git`, `curl`, `wget`) that records that it was called: in dry-run mode none may be.
The oracle for quoting is bash itself: a printed line is run by bash with a `gcloud` that
writes out the arguments it received.
"""

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TPU = ROOT / "tpu"
BASH = shutil.which("bash")
SCRIPTS = ["create.sh", "setup.sh", "run.sh", "fetch.sh", "delete.sh"]
ZONE = "us-central2-b"
TARGET = ["--name", "fundl-tpu", "--zone", ZONE]
SSH = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "fundl-tpu", f"--zone={ZONE}", "--worker=all", "--command"]
IN_VENV = "cd ~/fundl && . ~/fundl-venv/bin/activate && "
AWKWARD = ["--set", 'optimizer.name=it\'s a "b" $HOME `c` \\d', "--out", "runs/my run!"]

# Fakes for every tool that could reach the network: each one notes its call and fails.
TRAP = '#!/bin/sh\necho "$0 $*" >> "{log}"\nexit 97\n'
# A gcloud that writes its arguments, one per line, to a file and succeeds.
RECORDER = '#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done >> "{log}"\necho ---- >> "{log}"\n'


def _tool(folder, name, text):
    path = folder / name
    path.write_text(text)
    path.chmod(0o755)


@pytest.fixture
def env(tmp_path):
    """A clean environment whose network tools are traps; fails the test if one was called."""
    fake_bin, log = tmp_path / "bin", tmp_path / "network-calls.log"
    fake_bin.mkdir()
    for name in ("gcloud", "ssh", "scp", "git", "curl", "wget"):
        _tool(fake_bin, name, TRAP.format(log=log))
    (tmp_path / "tmp").mkdir()
    environ = {
        key: value
        for key, value in os.environ.items()
        if key not in ("TPU_NAME", "TPU_ZONE", "TPU_TYPE", "GCP_PROJECT")
    }
    environ.update(PATH=f"{fake_bin}:{os.environ['PATH']}", TMPDIR=str(tmp_path / "tmp"))
    yield environ
    assert not log.exists(), f"a network tool was called: {log.read_text()}"


def script(name, *args, env, check=True):
    result = subprocess.run([BASH, str(TPU / name), *args], env=env, capture_output=True, text=True, timeout=10)
    if check:
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
    return result


def dry_run(name, *args, env):
    """The commands a script prints with --dry-run, each split as a POSIX shell would."""
    return [shlex.split(line) for line in script(name, "--dry-run", *args, env=env).stdout.splitlines()]


def as_bash_reads(line, tmp_path):
    """The argument vector bash passes to gcloud when `line` is pasted into it."""
    fake_bin, log = tmp_path / "echo-bin", tmp_path / "argv.log"
    fake_bin.mkdir(exist_ok=True)
    _tool(fake_bin, "gcloud", RECORDER.format(log=log))
    log.unlink(missing_ok=True)
    subprocess.run([BASH, "-c", line], env={"PATH": f"{fake_bin}:/usr/bin:/bin"}, check=True, timeout=10)
    return ["gcloud", *log.read_text().split("\n")[:-2]]


# --- create.sh ---------------------------------------------------------------------------------


def test_create_single_host_spot(env):
    out = script("create.sh", *TARGET, "--type", "v4-8", "--spot", "--dry-run", env=env).stdout
    assert out == (
        "gcloud compute tpus tpu-vm create fundl-tpu --zone=us-central2-b "
        "--accelerator-type=v4-8 --version=tpu-ubuntu2204-base --spot\n"
    )


def test_create_multi_host_from_environment(env):
    env.update(TPU_NAME="pod", TPU_ZONE="europe-west4-b", TPU_TYPE="v5litepod-16", GCP_PROJECT="my-project")
    assert dry_run("create.sh", env=env) == [
        [
            "gcloud",
            "compute",
            "tpus",
            "tpu-vm",
            "create",
            "pod",
            "--zone=europe-west4-b",
            "--accelerator-type=v5litepod-16",
            "--version=v2-alpha-tpuv5-lite",
            "--project=my-project",
        ]
    ]


def test_options_override_environment(env):
    env.update(TPU_NAME="from-env", TPU_ZONE="us-east1-d", TPU_TYPE="v6e-8")
    [command] = dry_run("create.sh", "--name=from-flag", "--type", "v4-32", env=env)
    assert command[5:8] == ["from-flag", "--zone=us-east1-d", "--accelerator-type=v4-32"]


@pytest.mark.parametrize(
    "accelerator, version",
    [
        ("v2-8", "tpu-ubuntu2204-base"),
        ("v3-8", "tpu-ubuntu2204-base"),
        ("v4-32", "tpu-ubuntu2204-base"),
        ("v5litepod-8", "v2-alpha-tpuv5-lite"),
        ("v5p-8", "v2-alpha-tpuv5"),
        ("v6e-8", "v2-alpha-tpuv6e"),
    ],
)
def test_create_picks_the_software_version(env, accelerator, version):
    [command] = dry_run("create.sh", *TARGET, "--type", accelerator, env=env)
    assert command[-1] == f"--version={version}"


def test_create_explicit_version_and_queued_resource(env):
    assert dry_run(
        "create.sh", *TARGET, "--type", "v6e-16", "--version", "v2-alpha-tpuv6e", "--queued", "--spot", env=env
    ) == [
        [
            "gcloud",
            "compute",
            "tpus",
            "queued-resources",
            "create",
            "fundl-tpu",
            "--node-id=fundl-tpu",
            f"--zone={ZONE}",
            "--accelerator-type=v6e-16",
            "--runtime-version=v2-alpha-tpuv6e",
            "--spot",
        ]
    ]


# --- setup.sh ----------------------------------------------------------------------------------


def test_setup_copies_this_checkout_to_every_worker(env):
    tarball = f"{env['TMPDIR']}/fundl-src-fundl-tpu.tar.gz"
    pack, copy, install = dry_run("setup.sh", *TARGET, env=env)
    assert pack == [
        "tar",
        "-czf",
        tarball,
        "--exclude=./.git",
        "--exclude=./.venv",
        "--exclude=./runs",
        "--exclude=__pycache__",
        "--exclude=*.egg-info",
        "-C",
        str(ROOT),
        ".",
    ]
    assert copy == [
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        "scp",
        tarball,
        "fundl-tpu:fundl-src.tar.gz",
        f"--zone={ZONE}",
        "--worker=all",
    ]
    assert install[:-1] == SSH
    steps = install[-1]
    assert steps.startswith("set -e; mkdir -p ~/fundl && tar -xzf ~/fundl-src.tar.gz -C ~/fundl && rm ")
    assert "|| PY=python3.11;" in steps and "install -y -qq $PY $PY-venv" in steps
    assert '~/fundl-venv/bin/pip install -q -U "jax[tpu]" -e ~/fundl;' in steps


def test_setup_from_a_git_repository(env, tmp_path):
    [install] = dry_run(
        "setup.sh", *TARGET, "--repo", "https://example.org/me/fundl.git", "--project", "p-123", env=env
    )
    assert install[:-2] == SSH and install[-1] == "--project=p-123"
    assert install[-2].startswith(
        "set -e; if [ -d ~/fundl/.git ]; then git -C ~/fundl pull --ff-only; "
        "else git clone https://example.org/me/fundl.git ~/fundl; fi; PY=python3;"
    )


def test_setup_from_another_checkout(env, tmp_path):
    checkout = tmp_path / "my fundl"
    (checkout / "fundl").mkdir(parents=True)
    (checkout / "pyproject.toml").touch()
    pack, _, _ = dry_run("setup.sh", *TARGET, "--source", str(checkout), env=env)
    assert pack[-3:] == ["-C", str(checkout), "."]


# --- run.sh ------------------------------------------------------------------------------------


def test_run_single_host(env):
    out = script(
        "run.sh",
        *TARGET,
        "--type",
        "v5litepod-8",
        "--dry-run",
        "--",
        "fundl",
        "run",
        "mlp_digits",
        "--set",
        "train.epochs=3",
        env=env,
    ).stdout
    assert out == (
        "gcloud compute tpus tpu-vm ssh fundl-tpu --zone=us-central2-b --worker=all --command "
        "'cd ~/fundl && . ~/fundl-venv/bin/activate && fundl run mlp_digits --set train.epochs=3'\n"
    )


def test_run_multi_host_adds_distributed(env):
    env.update(TPU_NAME="fundl-tpu", TPU_ZONE=ZONE, TPU_TYPE="v4-32")
    out = script("run.sh", "--dry-run", "fundl", "run", "cnn_digits", "--seed", "3", env=env).stdout
    assert out == (
        "gcloud compute tpus tpu-vm ssh fundl-tpu --zone=us-central2-b --worker=all --command "
        "'cd ~/fundl && . ~/fundl-venv/bin/activate && fundl run cnn_digits --seed 3 --distributed'\n"
    )


@pytest.mark.parametrize(
    "accelerator, command, expected",
    [
        ("v4-32", ["fundl", "run", "x", "--distributed"], "fundl run x --distributed"),  # not twice
        ("v4-32", ["fundl", "list"], "fundl list"),  # only `fundl run` takes --distributed
        ("v4-8", ["fundl", "run", "x", "--devices", "1"], "fundl run x --devices 1"),
    ],
)
def test_run_distributed_only_where_needed(env, accelerator, command, expected):
    [ssh] = dry_run("run.sh", *TARGET, "--type", accelerator, "--", *command, env=env)
    assert ssh[-1] == IN_VENV + expected


def test_run_quotes_awkward_arguments(env, tmp_path):
    command = ["fundl", "run", "my example.py", *AWKWARD]
    [line] = script("run.sh", *TARGET, "--type", "v4-16", "--dry-run", "--", *command, env=env).stdout.splitlines()
    argv = as_bash_reads(line, tmp_path)  # what bash passes gcloud when the line is pasted
    assert argv[:-1] == SSH and argv[-1].startswith(IN_VENV)
    remote = argv[-1].removeprefix(IN_VENV)  # and what the worker's shell makes of the command
    words = subprocess.run([BASH, "-c", f"printf '%s\\0' {remote}"], capture_output=True, text=True, check=True)
    assert words.stdout.split("\0")[:-1] == [*command, "--distributed"]


# --- fetch.sh and delete.sh --------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, source, destination",
    [
        (["runs/mlp_digits-20260101-120000/"], "fundl-tpu:fundl/runs/mlp_digits-20260101-120000", "."),
        (["/mnt/bucket/runs/a", "my runs"], "fundl-tpu:/mnt/bucket/runs/a", "my runs"),
    ],
)
def test_fetch_from_worker_0(env, tmp_path, args, source, destination):
    [line] = script("fetch.sh", *TARGET, "--dry-run", *args, env=env).stdout.splitlines()
    assert as_bash_reads(line, tmp_path) == [
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        "scp",
        source,
        destination,
        f"--zone={ZONE}",
        "--worker=0",
        "--recurse",
    ]


def test_delete(env):
    assert script("delete.sh", *TARGET, "--dry-run", env=env).stdout == (
        "gcloud compute tpus tpu-vm delete fundl-tpu --zone=us-central2-b --quiet\n"
    )
    assert dry_run("delete.sh", *TARGET, "--queued", "--project", "p-123", env=env) == [
        [
            "gcloud",
            "compute",
            "tpus",
            "queued-resources",
            "delete",
            "fundl-tpu",
            f"--zone={ZONE}",
            "--force",
            "--quiet",
            "--project=p-123",
        ]
    ]


# --- every script -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SCRIPTS)
def test_help(env, name):
    out = script(name, "--help", env=env).stdout
    assert out.startswith(f"Usage: tpu/{name} ")
    assert "--dry-run" in out and "$TPU_NAME" in out and "$TPU_ZONE" in out


@pytest.mark.parametrize(
    "name, args",
    [
        ("create.sh", [*TARGET, "--type", "v4-8", "--spot"]),
        ("run.sh", [*TARGET, "--type", "v4-32", "--", "fundl", "run", "x", *AWKWARD]),
        ("fetch.sh", [*TARGET, "runs/x", "my runs"]),
        ("delete.sh", [*TARGET, "--project", "p-123"]),
    ],
)
def test_without_dry_run_the_printed_commands_run(env, tmp_path, name, args):
    lines = script(name, "--dry-run", *args, env=env).stdout.splitlines()
    log = tmp_path / "gcloud.log"
    _tool(Path(env["PATH"].split(":")[0]), "gcloud", RECORDER.format(log=log))
    result = script(name, *args, env=env, check=False)
    assert result.returncode == 0 and result.stdout == ""
    assert result.stderr == "".join(f"+ {line}\n" for line in lines)
    calls = [["gcloud", *call.strip("\n").split("\n")] for call in log.read_text().split("----\n")[:-1]]
    assert calls == [shlex.split(line) for line in lines]


def test_without_gcloud_the_error_says_so(env, tmp_path):
    (tmp_path / "empty").mkdir()
    result = subprocess.run(
        [BASH, str(TPU / "delete.sh"), *TARGET],
        env={"PATH": str(tmp_path / "empty")},
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert result.returncode == 127 and result.stdout == ""
    assert "gcloud is not installed" in result.stderr and "--dry-run" in result.stderr


NO_NAME = {"TPU_ZONE": ZONE, "TPU_TYPE": "v4-8"}
ERRORS = [
    ("create.sh", [], NO_NAME, "missing the TPU name: give --name NAME or set TPU_NAME"),
    ("create.sh", ["--name", "t"], {}, "missing the zone: give --zone ZONE"),
    ("create.sh", TARGET, {}, "missing the accelerator type: give --type TYPE"),
    ("create.sh", [*TARGET, "--type", "v4_8"], {}, "--type: expected GENERATION-SIZE"),
    ("create.sh", [*TARGET, "--type", "v7-8"], {}, "got 'v7-8'"),
    ("create.sh", [*TARGET, "--type", "v5e-8"], {}, "TPU v5e is written v5litepod-SIZE"),
    ("create.sh", [*TARGET, "--type", "v4-8", "--sopt"], {}, "unknown option '--sopt'"),
    ("create.sh", [*TARGET, "--type", "v4-8", "extra"], {}, "unexpected argument 'extra'"),
    ("create.sh", ["--name", "My_TPU", "--zone", ZONE, "--type", "v4-8"], {}, "--name: expected lowercase"),
    ("create.sh", ["--zone", "us-central2", "--name", "t", "--type", "v4-8"], {}, "--zone: expected a zone like"),
    ("create.sh", ["--zone", "--type", "v4-8"], {}, "--zone needs a value, e.g. --zone us-central2-b"),
    ("create.sh", [*TARGET, "--type", "v4-8", "--project", "My Project"], {}, "--project: expected a project ID"),
    ("create.sh", [*TARGET, "--type", "v4-8", "--version", "1 2"], {}, "--version: expected a TPU software version"),
    ("setup.sh", [*TARGET, "--repo", "u", "--source", "."], {}, "--source and --repo exclude each other"),
    ("setup.sh", [*TARGET, "--source", "/"], {}, "--source: expected a fundl checkout"),
    ("setup.sh", [*TARGET, "--repo", "fundl"], {}, "--repo: expected a git URL"),
    ("run.sh", [*TARGET, "--type", "v4-8"], {}, "missing the fundl command: e.g. tpu/run.sh -- fundl run"),
    ("run.sh", [*TARGET, "--type", "v4-8", "--", "python", "-m", "fundl"], {}, "must be a fundl command"),
    ("run.sh", [*TARGET, "--type", "v4-8", "--", "fundl"], {}, "missing the fundl subcommand"),
    ("run.sh", [*TARGET, "--", "fundl", "run", "x"], {}, "missing the accelerator type"),
    ("run.sh", [*TARGET, "--typo", "v4-8", "--", "fundl", "list"], {}, "unknown option '--typo'"),
    ("fetch.sh", TARGET, {}, "missing RUN_DIR"),
    ("fetch.sh", [*TARGET, "a", "b", "c"], {}, "too many arguments: expected RUN_DIR [LOCAL_DIR]"),
    ("fetch.sh", [*TARGET, "runs/my run"], {}, "RUN_DIR: expected a path"),
    ("fetch.sh", ["runs/x"], NO_NAME, "missing the TPU name"),
    ("delete.sh", ["--name", "t"], {}, "missing the zone"),
    ("delete.sh", [*TARGET, "--force"], {}, "unknown option '--force'"),
]


@pytest.mark.parametrize("name, args, variables, message", ERRORS)
def test_argument_errors(env, name, args, variables, message):
    env.update(variables)
    result = script(name, "--dry-run", *args, env=env, check=False)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(f"tpu/{name}: error: ")
    assert message in result.stderr
