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

from fundl._text import number
from fundl.runs._config import flat_keys
from fundl.runs._directory import RunDirectory
from fundl.runs._identity import IdentityError
from fundl.runs._lifecycle import way_forward
from fundl.train._history import final_metrics

NO_RUNS_DIR = (
    "{path} does not exist: nothing to list (`fundl run` writes its runs under runs/ unless --out says otherwise)"
)
HEADLINE_METRICS = ("accuracy", "loss")
DEFAULT_PLOT_METRICS = ("validation/accuracy", "test/accuracy", "train/loss")


# Reading one run.


def _final_metrics(files: RunDirectory, summary: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """``{split: {metric: value}}``: the summary's, or for an unfinished run the last record of each split
    (of member 0, for a sweep)."""
    if summary is not None:
        return summary.get("metrics") or {}
    records = files.records()
    return final_metrics(records, records[0].member if records else None)


def _headline(metrics: dict[str, dict[str, Any]]) -> tuple[str, Any] | None:
    """The last split's accuracy, or else its loss: ``("test/accuracy", 0.97)``."""
    if not metrics:
        return None
    split, values = list(metrics.items())[-1]
    for name in HEADLINE_METRICS:
        if name in values:
            return f"{split}/{name}", values[name]
    return None


def _describe(files: RunDirectory) -> dict[str, Any]:
    """One run as plain data (what ``fundl ls`` prints a line of); its files are checked against its sealed identity."""
    files.config()  # a broken config is an error here too
    environment = files.manifest()
    summary = files.summary()
    if files.is_sealed():
        run_id = files.verify()["run_id"]  # an edited config, example or sweep is an error naming the key and values
        if summary is not None and summary.get("run_id") != run_id:
            raise IdentityError(
                f"{files.path / files.SUMMARY} belongs to another run ({summary.get('run_id') or 'no run id'}), "
                f"not to {run_id}: copied from another run directory"
            )
    metrics = _final_metrics(files, summary)
    if summary is not None:
        steps = summary.get("steps")
    else:
        records = files.records()
        steps = records[-1].step if records else None
    sweep = environment.get("sweep")
    return {
        "name": files.path.name,
        "path": str(files.path),
        "example": environment.get("example"),
        "status": files.status().get("status") if files.is_sealed() else "unstarted",
        "steps": steps,
        "headline": _headline(metrics) or _best_setting(summary),
        "fingerprint": summary.get("params_fingerprint") if summary else None,
        "metrics": metrics,
        "members": sweep["members"] if sweep else None,
        "settings": (summary or {}).get("settings"),
    }


def _best_setting(summary: dict[str, Any] | None) -> tuple[str, Any] | None:
    """A sweep of several settings: the best setting's mean headline metric, ``("test/accuracy (lr=0.1)", 0.97)``."""
    settings = (summary or {}).get("settings") or []
    scored = []
    for setting in settings:
        headline = _headline({split: {k: v["mean"] for k, v in m.items()} for split, m in setting["metrics"].items()})
        if headline:
            scored.append((headline, setting["settings"]))
    if not scored:
        return None
    better = max if scored[0][0][0].endswith("accuracy") else min
    (name, value), named = better(scored, key=lambda item: item[0][1])
    short = ", ".join(f"{key.rsplit('.', 1)[-1]}={setting}" for key, setting in named.items())
    return f"{name} ({short})", value


# Formatting.


def _number(value: Any) -> str:
    """Metrics as ``fundl run`` prints them (4 decimals; very small or large floats as ``1.000e-05``; a confusion
    matrix by its shape); integers and text as they are."""
    if isinstance(value, (float, list)):
        return number(value).strip()
    return str(value)


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
      ``incomplete`` for an old directory without one; ``unstarted`` for one that stopped while
      starting and trained nothing; ``edited`` or ``unreadable`` for one whose files were
      changed after it started or are broken, with the ``problem``), ``steps``, ``headline``
      (``(split/metric, value)`` or ``None``), ``fingerprint`` and the final ``metrics``.
    """
    path = Path(directory)
    if not path.exists():
        raise FileNotFoundError(NO_RUNS_DIR.format(path=path))
    if not path.is_dir():
        raise ValueError(f"{path} is not a directory: give the directory that holds the run directories")
    found = sorted(p for p in path.iterdir() if p.is_dir() and RunDirectory.is_run(p))
    return [_describe_or_mark(RunDirectory(p)) for p in found]


def _describe_or_mark(files: RunDirectory) -> dict[str, Any]:
    """:func:`_describe`, or for a run whose files are broken or were edited, a line that says so (``problem``)."""
    try:
        return _describe(files)
    except (ValueError, OSError) as error:
        edited = isinstance(error, IdentityError)
        try:
            example = files.manifest().get("example")
        except (ValueError, OSError):
            example = None
        return {
            "name": files.path.name,
            "path": str(files.path),
            "example": example,
            "status": "edited" if edited else "unreadable",
            "steps": None,
            "headline": None,
            "fingerprint": None,
            "metrics": {},
            "members": None,
            "settings": None,
            "problem": str(error),
        }


def format_runs(runs: Sequence[dict[str, Any]]) -> str:
    """The lines of ``fundl ls``: a header, one aligned line per run of :func:`list_runs`, then what is wrong
    with the runs marked ``edited`` or ``unreadable``."""
    rows = [["NAME", "EXAMPLE", "STATUS", "STEPS", "METRIC", "FINGERPRINT"]]
    for run in runs:
        headline = run["headline"]
        rows.append(
            [
                run["name"],
                str(run["example"] or "-"),
                run["status"],
                "-" if run["steps"] is None else str(run["steps"]),
                f"{headline[0]} {_number(headline[1])}" if headline else "-",
                (run["fingerprint"] or "-")[:12],
            ]
        )
    problems = [f"{run['name']}: {run['problem']}" for run in runs if run.get("problem")]
    return "\n".join([*_table(rows), *([""] + problems if problems else [])])


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
    files = RunDirectory.open(directory)
    path = files.path
    config = files.config()
    environment = files.manifest()
    summary = files.summary()
    described = _describe(files)

    versions = environment.get("versions") or {}
    status = described["status"]
    if summary is not None:
        status += (
            f": {summary.get('steps')} steps, {summary.get('epochs')} epochs, {_seconds(summary.get('wall_s'))}"
            f" ({_seconds(summary.get('compile_s'))} compiling)"
        )
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
        ["next", way_forward(path, files.status(), files.checkpoint_steps())],
    ]
    lines = _table(rows)
    if not environment:
        lines.append("(no environment.json)")
    flat = flat_keys(config)
    lines += ["", "config", *_table([[key, _value(value)] for key, value in flat.items()], "  ")]
    source = "" if summary is not None else " (last logged: the run did not finish)"
    if described["settings"]:
        lines += ["", f"sweep: {described['members']} members, mean ± std over each setting's seeds"]
        for setting in described["settings"]:
            named = ", ".join(f"{k}={_value(v)}" for k, v in setting["settings"].items()) or "seeds"
            spread = {
                split: {k: f"{_number(v['mean'])} ± {v['std']:.4f}" for k, v in m.items()}
                for split, m in setting["metrics"].items()
            }
            lines += [f"  {named} ({len(setting['seeds'])} seeds)", *_metric_lines(spread, "    ")]
    else:
        lines += ["", f"metrics{source}", *_metric_lines(described["metrics"])]
    return "\n".join(lines)


# fundl compare


def compare_runs(directories: Sequence[str | os.PathLike]) -> str:
    """What ``fundl compare`` prints: final metrics side by side, the config keys that differ, the fingerprints."""
    if len(directories) < 2:
        raise ValueError(f"compare needs two or more run directories, got {len(directories)}")
    runs = [RunDirectory.open(d) for d in directories]
    labels = _labels([files.path for files in runs])
    described = [_describe(files) for files in runs]
    configs = [flat_keys(files.config()) for files in runs]

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
        lines += _table(
            [["config", *labels], *([k, *(_value(c[k]) if k in c else "-" for c in configs)] for k in differing)]
        )
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
    directories: Sequence[str | os.PathLike],
    metric: str | None = None,
    path: str | os.PathLike = "plot.png",
    *,
    x: str = "epoch",
) -> tuple[Path, str]:
    """Draws one metric of several runs against the epoch (or the step), one line per run, into a PNG.

    Args:
      directories: one or more run directories.
      metric: ``split/metric`` as logged in ``metrics.jsonl``, e.g. ``test/accuracy``;
        by default the first of ``validation/accuracy``, ``test/accuracy`` and ``train/loss`` that every run has.
      path: the PNG file to write.
      x: ``"epoch"`` or ``"step"``.

    Returns:
      The path written and the metric drawn.
    """
    if not directories:
        raise ValueError("plot needs at least one run directory")
    paths = [RunDirectory.open(d).path for d in directories]
    runs = [RunDirectory(p).records() for p in paths]
    logged = [{f"{r.split}/{k}" for r in records for k in r.metrics} for records in runs]
    everywhere = sorted(set.intersection(*logged))
    if metric is None:
        metric = next((m for m in DEFAULT_PLOT_METRICS if m in everywhere), None)
        if metric is None:
            raise ValueError(
                f"no default metric to plot ({' or '.join(DEFAULT_PLOT_METRICS)}); "
                f"choose one with --metric: {', '.join(everywhere) or 'none logged in every run'}"
            )
    elif metric not in everywhere:
        raise ValueError(
            f"unknown metric {metric!r} (want SPLIT/METRIC logged by every run); "
            f"available: {', '.join(everywhere) or 'none'}"
        )
    if x not in ("epoch", "step"):
        raise ValueError(f"x must be 'epoch' or 'step', got {x!r}")
    split, name = metric.split("/", 1)
    series = {
        label: [
            (r.epoch if x == "epoch" else r.step, r.metrics[name])
            for r in records
            if r.split == split and name in r.metrics and r.member in (None, 0)
        ]
        for label, records in zip(_labels(paths), runs)
    }
    from fundl.plots import plot_runs_metric  # matplotlib only when a plot is drawn

    plot_runs_metric(series, path, metric=metric, x=x)
    return Path(path), metric
