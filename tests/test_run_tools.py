"""fundl ls / show / compare / plot: checked against the files of real (short) runs."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import fundl
from fundl import runs
from fundl.cli import main
from fundl.runs._config import flat_keys as flatten_config

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A runs/ folder with three 2-epoch runs: ``a`` and ``b`` share a config, ``c`` has another seed and rate."""
    root = tmp_path_factory.mktemp("runs")
    settings = {
        "a": [("train.epochs", 2)],
        "b": [("train.epochs", 2)],
        "c": [("train.epochs", 2), ("seed", 1), ("optimizer.learning_rate", 0.05)],
    }
    for name, overrides in settings.items():
        runs.run("mlp_digits", overrides, out=str(root / name), quiet=True, echo=lambda _: None)
    (root / "notes").mkdir()  # not a run: no config.json
    (root / "notes.txt").write_text("not a run either")
    return root


def _files(directory):
    read = lambda name: json.loads((directory / name).read_text())  # noqa: E731
    return read("config.json"), read("environment.json"), read("summary.json")


def _cli(capsys, *argv):
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_ls_prints_one_aligned_line_per_run_sorted_by_name(root, capsys):
    status, out, err = _cli(capsys, "ls", str(root))
    assert status == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "EXAMPLE", "STATUS", "STEPS", "METRIC", "FINGERPRINT"]
    assert len(lines) == 4  # a, b, c; not notes/ or notes.txt
    for name, line in zip("abc", lines[1:]):
        _, environment, summary = _files(root / name)
        accuracy = summary["metrics"]["test"]["accuracy"]
        expected = [
            name,
            environment["example"],
            "finished",
            str(summary["steps"]),
            "test/accuracy",
            f"{accuracy:.4f}",
            summary["params_fingerprint"][:12],
        ]
        assert line.split() == expected
    starts = {line.index(line.split()[3]) for line in lines}  # the STEPS column lines up
    assert len(starts) == 1
    assert [r["name"] for r in runs.list_runs(root)] == ["a", "b", "c"]


def test_ls_tells_incomplete_and_stopped_runs_apart(root, tmp_path, capsys):
    shutil.copytree(root / "a", tmp_path / "cut", ignore=shutil.ignore_patterns("*.msgpack", "*.png"))
    (tmp_path / "cut" / "summary.json").unlink()
    (tmp_path / "cut" / "status.json").write_text(json.dumps({"status": "interrupted", "step": 60}))
    shutil.copytree(root / "a", tmp_path / "early", ignore=shutil.ignore_patterns("*.msgpack", "*.png"))
    summary = json.loads((tmp_path / "early" / "summary.json").read_text())
    summary["stop_reason"] = "loss is nan at step 50"
    (tmp_path / "early" / "summary.json").write_text(json.dumps(summary))
    (tmp_path / "early" / "status.json").write_text(json.dumps({"status": "failed", "step": 50}))
    shutil.copytree(root / "a", tmp_path / "old", ignore=shutil.ignore_patterns("*.msgpack", "*.png", "status.json"))
    (tmp_path / "old" / "summary.json").unlink()  # a run directory from before status files

    found = {r["name"]: r for r in runs.list_runs(tmp_path)}
    last_test = [json.loads(line) for line in (root / "a" / "metrics.jsonl").read_text().splitlines()][-1]
    assert found["cut"]["status"] == "interrupted" and found["old"]["status"] == "incomplete"
    assert found["cut"]["steps"] == last_test["step"]
    assert found["cut"]["headline"] == ("test/accuracy", last_test["accuracy"])
    assert found["cut"]["fingerprint"] is None
    assert found["early"]["status"] == "failed"

    status, out, _ = _cli(capsys, "ls", str(tmp_path))
    assert status == 0
    assert out.splitlines()[1].split()[:3] == ["cut", "mlp_digits", "interrupted"]
    assert out.splitlines()[1].split()[-1] == "-"
    assert "failed" in out.splitlines()[2]
    assert "stopped    loss is nan at step 50" in runs.show_run(tmp_path / "early")
    assert "metrics (last logged: the run did not finish)" in runs.show_run(tmp_path / "cut")


def test_ls_of_an_empty_folder_says_so(tmp_path, capsys):
    assert _cli(capsys, "ls", str(tmp_path))[1] == f"no run directories in {tmp_path}\n"


def test_show_prints_the_flat_config_environment_and_final_metrics(root, capsys):
    config, environment, summary = _files(root / "c")
    status, out, err = _cli(capsys, "show", str(root / "c"))
    assert status == 0 and err == ""
    lines = out.splitlines()
    fields = {line.split()[0]: line.split(None, 1)[1] for line in lines[:8]}
    assert fields["example"] == "mlp_digits"
    assert fields["params"] == summary["params_fingerprint"]
    assert fields["status"].startswith(f"finished: {summary['steps']} steps, {summary['epochs']} epochs")
    assert f"jax {environment['versions']['jax']}" in fields["versions"]
    assert fields["devices"].startswith(f"{len(environment['devices'])} cpu device(s)")
    assert fields["precision"] == "float32"

    config_lines = lines[lines.index("config") + 1 : lines.index("metrics") - 1]
    shown = dict(line.split() for line in config_lines)
    flat = flatten_config(config)
    assert shown == {k: v if isinstance(v, str) else json.dumps(v) for k, v in flat.items()}
    assert shown["seed"] == "1" and shown["optimizer.learning_rate"] == "0.05" and shown["train.steps"] == "null"

    metric_lines = lines[lines.index("metrics") + 1 :]
    assert [line.split()[0] for line in metric_lines] == [f"{split}:" for split in summary["metrics"]]
    for line, values in zip(metric_lines, summary["metrics"].values()):
        assert line.split()[1:] == [t for k, v in values.items() for t in (k, f"{v:.4f}")]


def _sections(out):
    return [section.splitlines() for section in out.split("\n\n")]


def test_compare_puts_metrics_side_by_side_and_lists_the_config_that_differs(root, capsys):
    status, out, err = _cli(capsys, "compare", str(root / "a"), str(root / "c"))
    assert status == 0 and err == ""
    metrics, differing, fingerprints = _sections(out.rstrip("\n"))
    summaries = [_files(root / name)[2] for name in "ac"]
    assert metrics[0].split() == ["metric", "a", "c"]
    rows = {line.split()[0]: line.split()[1:] for line in metrics[1:]}
    for split, values in summaries[0]["metrics"].items():
        for metric in values:
            assert rows[f"{split}/{metric}"] == [f"{s['metrics'][split][metric]:.4f}" for s in summaries]
    assert rows["steps"] == [str(s["steps"]) for s in summaries]
    assert [line.split() for line in differing] == [
        ["config", "a", "c"],
        ["seed", "0", "1"],
        ["optimizer.learning_rate", "0.1", "0.05"],
    ]
    assert fingerprints[0] == "params fingerprints: differ"
    assert fingerprints[1].split() == ["a", summaries[0]["params_fingerprint"]]


def test_compare_reports_identical_fingerprints_for_the_same_config_in_two_directories(root, capsys):
    status, out, _ = _cli(capsys, "compare", str(root / "a"), str(root / "b"), str(root / "c"))
    assert status == 0
    metrics, differing, fingerprints = _sections(out.rstrip("\n"))
    assert metrics[0].split() == ["metric", "a", "b", "c"]
    assert differing[1].split() == ["seed", "0", "0", "1"]

    out = runs.compare_runs([root / "a", root / "b"])
    fingerprint = _files(root / "a")[2]["params_fingerprint"]
    assert fingerprint == _files(root / "b")[2]["params_fingerprint"]
    assert _sections(out)[1:] == [["config: identical"], [f"params fingerprints: identical ({fingerprint})"]]


def _assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 5_000


def test_plot_draws_the_chosen_metric_of_every_run_into_a_png(root, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, out, _ = _cli(capsys, "plot", str(root / "a"), str(root / "c"))
    assert status == 0 and out == "wrote plot.png: validation/accuracy of 2 run(s)\n"
    _assert_png(tmp_path / "plot.png")

    status, out, _ = _cli(capsys, "plot", *(str(root / n) for n in "abc"), "--metric", "train/loss", "-o", "loss.png")
    assert status == 0 and out == "wrote loss.png: train/loss of 3 run(s)\n"
    _assert_png(tmp_path / "loss.png")
    assert runs.plot_runs([root / "a"], path=tmp_path / "x.png") == (tmp_path / "x.png", "validation/accuracy")


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"fundl {fundl.__version__}\n"
    done = subprocess.run([sys.executable, "-m", "fundl", "--version"], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout) == (0, f"fundl {fundl.__version__}\n")


@pytest.fixture
def broken(root, tmp_path):
    """Copies of run ``a`` with one file broken each, and a folder that is not a run."""
    for name in ("config.json", "summary.json", "metrics.jsonl"):
        copy = tmp_path / name.replace(".", "_")
        shutil.copytree(root / "a", copy, ignore=shutil.ignore_patterns("*.msgpack", "*.png"))
        with (copy / name).open("a") as file:
            file.write("{oops\n")
    (tmp_path / "plain").mkdir()
    return tmp_path


@pytest.mark.parametrize(
    "argv, message",
    [
        (["ls", "{tmp}/missing"], "{tmp}/missing does not exist: nothing to list"),
        (["show", "{tmp}/missing"], "run directory {tmp}/missing does not exist"),
        (["show", "{tmp}/plain"], "{tmp}/plain is not a fundl run directory: no config.json"),
        (["show", "{tmp}/config_json"], "{tmp}/config_json/config.json is not valid JSON"),
        (["show", "{tmp}/summary_json"], "{tmp}/summary_json/summary.json is not valid JSON"),
        (["compare", "{a}"], "compare needs two or more run directories, got 1"),
        (["compare", "{a}", "{tmp}/plain"], "{tmp}/plain is not a fundl run directory: no config.json"),
        (["plot", "{tmp}/metrics_jsonl"], "{tmp}/metrics_jsonl/metrics.jsonl line 6 is not a metrics record"),
        (
            ["plot", "{a}", "--metric", "test/bleu"],
            "unknown metric 'test/bleu' (want SPLIT/METRIC logged by every run); "
            "available: test/accuracy, test/loss, train/accuracy, train/learning_rate, train/loss, "
            "validation/accuracy, validation/loss",
        ),
    ],
)
def test_errors_are_one_line_with_exit_status_2(root, broken, capsys, argv, message):
    fill = lambda text: text.format(tmp=broken, a=root / "a")  # noqa: E731
    status, out, err = _cli(capsys, *map(fill, argv))
    assert status == 2 and out == ""
    assert err.startswith(f"fundl: error: {fill(message)}")
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_ls_lists_every_run_and_marks_the_broken_ones(broken, capsys):
    status, out, err = _cli(capsys, "ls", str(broken))
    assert status == 0 and err == ""
    table, problems = out.split("\n\n")
    states = {line.split()[0]: line.split()[2] for line in table.splitlines()[1:]}
    assert states == {"config_json": "unreadable", "metrics_jsonl": "finished", "summary_json": "unreadable"}
    config, summary = problems.splitlines()
    assert config.startswith(f"config_json: {broken}/config_json/config.json is not valid JSON")
    assert summary.startswith(f"summary_json: {broken}/summary_json/summary.json is not valid JSON")


def test_the_readme_shows_these_commands_and_the_ls_header():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme[readme.index("### Run tools") :]
    commands = section.split("```bash\n")[1].split("```")[0].splitlines()
    assert [line.split()[:2] for line in commands] == [["fundl", c] for c in ("ls", "show", "compare", "plot")]
    example = section.split("```text\n")[1].split("```")[0].splitlines()
    assert example[0] == "$ fundl ls"
    assert example[1].split() == runs.format_runs([]).split()
