"""Looking at run directories after the fact: list, show, compare and plot them.

Everything here reads the plain JSON files a run writes (``config.json``,
``environment.json``, ``summary.json``, ``metrics.jsonl``) and returns strings or
plain data; nothing needs JAX, and matplotlib is imported only to draw a plot.

Example:
  >>> print(format_runs(list_runs("runs")))
  >>> print(compare_runs(["runs/a", "runs/b"]))
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fundl.runs._config import flat_keys
from fundl.runs._files import read_json

NOT_A_RUN = "{path} is not a fundl run directory: no config.json"
NO_RUNS_DIR = "{path} does not exist: nothing to list (`fundl run` writes its runs under runs/ unless --out says otherwise)"
HEADLINE_METRICS = ("accuracy", "loss")
DEFAULT_PLOT_METRICS = ("validation/accuracy", "test/accuracy", "train/loss")
_RECORD_KEYS = ("step", "epoch", "split")


# Reading one run.


def _run_directory(directory: str | os.PathLike) -> Path:
    """The run directory as a path, checked: it exists, is a directory and holds ``config.json``."""
    path = Path(directory)
    if not path.exists():
        raise FileNotFoundError(f"run directory {path} does not exist")
    if not path.is_dir():
        raise ValueError(f"{path} is not a directory: give a run directory (one that holds config.json)")
    if not (path / "config.json").is_file():
        raise ValueError(NOT_A_RUN.format(path=path))
    return path


def _read_object(path: Path) -> dict[str, Any]:
    value = read_json(path)
    if not isinstance(value, dict):
        raise ValueError(f"{path} should hold a JSON object, found {type(value).__name__}")
    return value


def _optional_object(path: Path) -> dict[str, Any] | None:
    return _read_object(path) if path.is_file() else None


def read_records(directory: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl`` (an empty list if the run has logged nothing yet)."""
    path = Path(directory) / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} line {number} is not valid JSON: {error}") from None
        if not isinstance(record, dict) or "step" not in record or "split" not in record:
            raise ValueError(f"{path} line {number} is not a metrics record (a JSON object with step and split)")
        records.append(record)
    return records


def _final_metrics(summary: dict[str, Any] | None, directory: Path) -> dict[str, dict[str, Any]]:
    """``{split: {metric: value}}``: the summary's, or for an unfinished run the last record of each split."""
    if summary is not None:
        return summary.get("metrics") or {}
    final: dict[str, dict[str, Any]] = {}
    for record in read_records(directory):
        final[record["split"]] = {k: v for k, v in record.items() if k not in _RECORD_KEYS}
    return final


def _status(directory: Path, summary: dict[str, Any] | None) -> str:
    """``status.json``'s word (``running``, ``finished``, ``stopped_early``, ``interrupted``,
    ``failed``); for a run directory older than status files, what the summary says."""
    status = _optional_object(directory / "status.json")
    if status is not None:
        return str(status.get("status"))
    if summary is None:
        return "incomplete"
    return "stopped_early" if summary.get("stop_reason") else "finished"


def _headline(metrics: dict[str, dict[str, Any]]) -> tuple[str, Any] | None:
    """The last split's accuracy, or else its loss: ``("test/accuracy", 0.97)``."""
    if not metrics:
        return None
    split, values = list(metrics.items())[-1]
    for name in HEADLINE_METRICS:
        if name in values:
            return f"{split}/{name}", values[name]
    return None


def _describe(directory: Path) -> dict[str, Any]:
    """One run as plain data (what ``fundl ls`` prints a line of)."""
    _read_object(directory / "config.json")  # a broken config is an error here too
    environment = _optional_object(directory / "environment.json") or {}
    summary = _optional_object(directory / "summary.json")
    metrics = _final_metrics(summary, directory)
    if summary is not None:
        steps = summary.get("steps")
    else:
        records = read_records(directory)
        steps = records[-1]["step"] if records else None
    return {
        "name": directory.name,
        "path": str(directory),
        "example": environment.get("example"),
        "status": _status(directory, summary),
        "steps": steps,
        "headline": _headline(metrics),
        "fingerprint": summary.get("params_fingerprint") if summary else None,
        "metrics": metrics,
    }


# Formatting.


def _number(value: Any) -> str:
    """Metrics as ``fundl run`` prints them (4 decimals), very small or large floats in ``g`` form."""
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    if value != value or value == 0 or 1e-3 <= abs(value) < 1e5:
        return f"{value:.4f}"
    return f"{value:.4g}"


def _seconds(value: Any) -> str:
    return f"{value:.1f} s" if isinstance(value, (int, float)) else "? s"


def _value(value: Any) -> str:
    """A config value: strings bare, everything else as JSON (``null``, ``true``, ``[64, 64]``)."""
    return value if isinstance(value, str) else json.dumps(value)


def _table(rows: Sequence[Sequence[str]], indent: str = "") -> list[str]:
    """Left-aligned columns, two spaces apart."""
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def _labels(directories: Sequence[Path]) -> list[str]:
    """Run names, or the paths as given where two runs share a name."""
    names = [d.name for d in directories]
    return names if len(set(names)) == len(names) else [str(d) for d in directories]


# fundl ls


def list_runs(directory: str | os.PathLike = "runs") -> list[dict[str, Any]]:
    """The runs directly under ``directory`` (the folders that hold a ``config.json``), sorted by name.

    Returns:
      One dict per run: ``name``, ``path``, ``example``, ``status`` (from ``status.json``:
      ``running``, ``finished``, ``stopped_early``, ``interrupted`` or ``failed``;
      ``incomplete`` for an old directory without one), ``steps``, ``headline``
      (``(split/metric, value)`` or ``None``), ``fingerprint`` and the final ``metrics``.
    """
    path = Path(directory)
    if not path.exists():
        raise FileNotFoundError(NO_RUNS_DIR.format(path=path))
    if not path.is_dir():
        raise ValueError(f"{path} is not a directory: give the directory that holds the run directories")
    found = sorted(p for p in path.iterdir() if p.is_dir() and (p / "config.json").is_file())
    return [_describe(p) for p in found]


def format_runs(runs: Sequence[dict[str, Any]]) -> str:
    """The lines of ``fundl ls``: a header, then one aligned line per run of :func:`list_runs`."""
    rows = [["NAME", "EXAMPLE", "STATUS", "STEPS", "METRIC", "FINGERPRINT"]]
    for run in runs:
        headline = run["headline"]
        rows.append([
            run["name"],
            str(run["example"] or "-"),
            run["status"],
            "-" if run["steps"] is None else str(run["steps"]),
            f"{headline[0]} {_number(headline[1])}" if headline else "-",
            (run["fingerprint"] or "-")[:12],
        ])
    return "\n".join(_table(rows))


# fundl show


def _devices(environment: dict[str, Any]) -> str:
    devices = environment.get("devices") or []
    shown = ", ".join(devices[:4]) + (f", ... ({len(devices)} in all)" if len(devices) > 4 else "")
    mesh = environment.get("mesh") or {}
    axes = mesh.get("axes") or {}
    layout = " x ".join(f"{axis} {size}" for axis, size in axes.items()) if axes else "none (one device)"
    backend = environment.get("backend", "?")
    return f"{len(devices)} {backend} device(s): {shown}; mesh: {layout}"


def _metric_lines(metrics: dict[str, dict[str, Any]], indent: str = "  ") -> list[str]:
    if not metrics:
        return [f"{indent}(none logged yet)"]
    width = max(len(split) for split in metrics) + 1
    return [
        f"{indent}{split + ':':<{width}} " + "  ".join(f"{k} {_number(v)}" for k, v in values.items())
        for split, values in metrics.items()
    ]


def show_run(directory: str | os.PathLike) -> str:
    """What ``fundl show`` prints: the run's status, environment, flattened config and final metrics."""
    path = _run_directory(directory)
    config = _read_object(path / "config.json")
    environment = _optional_object(path / "environment.json")
    summary = _optional_object(path / "summary.json")
    described = _describe(path)

    environment = environment or {}
    versions = environment.get("versions") or {}
    status = described["status"]
    if summary is not None:
        status += (f": {summary.get('steps')} steps, {summary.get('epochs')} epochs, {_seconds(summary.get('wall_s'))}"
                   f" ({_seconds(summary.get('compile_s'))} compiling)")
    elif described["steps"] is not None:
        status += f": logged up to step {described['steps']}"
    rows = [
        ["run", str(path)],
        ["example", str(environment.get("example", "-"))],
        ["status", status],
        *([["stopped", str(summary["stop_reason"])]] if summary and summary.get("stop_reason") else []),
        ["params", (summary or {}).get("params_fingerprint") or "-"],
        ["command", " ".join(environment.get("command") or ["-"])],
        ["versions", ", ".join(f"{k} {v}" for k, v in versions.items()) or "-"],
        ["devices", _devices(environment) if environment else "-"],
        ["precision", str(environment.get("precision", "-"))],
    ]
    lines = _table(rows)
    if not environment:
        lines.append("(no environment.json)")
    flat = flat_keys(config)
    lines += ["", "config", *_table([[key, _value(value)] for key, value in flat.items()], "  ")]
    source = "" if summary is not None else " (last logged: the run did not finish)"
    lines += ["", f"metrics{source}", *_metric_lines(described["metrics"])]
    return "\n".join(lines)


# fundl compare


def compare_runs(directories: Sequence[str | os.PathLike]) -> str:
    """What ``fundl compare`` prints: final metrics side by side, the config keys that differ, the fingerprints."""
    if len(directories) < 2:
        raise ValueError(f"compare needs two or more run directories, got {len(directories)}")
    paths = [_run_directory(d) for d in directories]
    labels = _labels(paths)
    described = [_describe(p) for p in paths]
    configs = [flat_keys(_read_object(p / "config.json")) for p in paths]

    names = list(dict.fromkeys(f"{s}/{m}" for run in described for s, values in run["metrics"].items() for m in values))
    rows = [["metric", *labels]]
    for name in names:
        split, metric = name.split("/", 1)
        rows.append([name, *(_number(run["metrics"].get(split, {}).get(metric, "-")) for run in described)])
    rows.append(["steps", *("-" if run["steps"] is None else str(run["steps"]) for run in described)])
    lines = _table(rows)

    keys = list(dict.fromkeys(key for config in configs for key in config))
    differing = [k for k in keys if len({json.dumps(c[k]) if k in c else "<missing>" for c in configs}) > 1]
    lines.append("")
    if differing:
        lines += _table([["config", *labels], *([k, *(_value(c[k]) if k in c else "-" for c in configs)] for k in differing)])
    else:
        lines.append("config: identical")

    fingerprints = [run["fingerprint"] for run in described]
    lines.append("")
    if None not in fingerprints and len(set(fingerprints)) == 1:
        lines.append(f"params fingerprints: identical ({fingerprints[0]})")
    else:
        unfinished = [label for label, f in zip(labels, fingerprints) if f is None]
        verdict = "unknown for unfinished runs" if unfinished else "differ"
        lines.append(f"params fingerprints: {verdict}")
        lines += _table([[label, f or "- (no summary.json)"] for label, f in zip(labels, fingerprints)], "  ")
    return "\n".join(lines)


# fundl plot


def plot_runs(
    directories: Sequence[str | os.PathLike], metric: str | None = None, path: str | os.PathLike = "plot.png"
) -> tuple[Path, str]:
    """Draws one metric of several runs against the step, one line per run, into a PNG.

    Args:
      directories: one or more run directories.
      metric: ``split/metric`` as logged in ``metrics.jsonl``, e.g. ``test/accuracy``;
        by default the first of ``validation/accuracy``, ``test/accuracy`` and ``train/loss`` that every run has.
      path: the PNG file to write.

    Returns:
      The path written and the metric drawn.
    """
    if not directories:
        raise ValueError("plot needs at least one run directory")
    paths = [_run_directory(d) for d in directories]
    runs = [read_records(p) for p in paths]
    logged = [{f"{r['split']}/{k}" for r in records for k in r if k not in _RECORD_KEYS} for records in runs]
    everywhere = sorted(set.intersection(*logged))
    if metric is None:
        metric = next((m for m in DEFAULT_PLOT_METRICS if m in everywhere), None)
        if metric is None:
            raise ValueError(f"no default metric to plot ({' or '.join(DEFAULT_PLOT_METRICS)}); "
                             f"choose one with --metric: {', '.join(everywhere) or 'none logged in every run'}")
    elif metric not in everywhere:
        raise ValueError(f"unknown metric {metric!r} (want SPLIT/METRIC logged by every run); "
                         f"available: {', '.join(everywhere) or 'none'}")
    split, name = metric.split("/", 1)
    series = {
        label: [(r["step"], r[name]) for r in records if r["split"] == split and name in r]
        for label, records in zip(_labels(paths), runs)
    }
    from fundl.plots import plot_runs_metric  # matplotlib only when a plot is drawn

    plot_runs_metric(series, path, metric=metric)
    return Path(path), metric
