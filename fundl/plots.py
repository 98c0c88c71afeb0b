"""Pictures of runs, drawn with matplotlib into PNG files (no window, no global pyplot state).

matplotlib is imported when a picture is drawn, not with this module.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from fundl.train import Record


def import_in_background() -> threading.Thread:
    """Starts importing matplotlib on a daemon thread, for a picture drawn later.

    The import takes about half a second; a run starts it before training, while the
    main thread mostly waits for XLA, so the picture at its end costs only the drawing.
    A later import of matplotlib waits for this one to finish (Python's import lock).
    """
    thread = threading.Thread(target=_import_matplotlib, name="fundl-import-matplotlib", daemon=True)
    thread.start()
    return thread


def _import_matplotlib() -> None:
    import matplotlib.backends.backend_agg  # noqa: F401  (what Figure.savefig draws PNGs with)
    import matplotlib.figure  # noqa: F401


def _figure(**kwargs: Any) -> Figure:
    """A new matplotlib figure (matplotlib is imported here, on the first picture)."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def plot_curves(records: Sequence[Record], path: str | os.PathLike, *, title: str = "") -> None:
    """One panel per metric (loss, accuracy, ...), one line per split, against the training step.

    Args:
      records: the history's records (``fit``'s ``history.records``, or a run directory's).
      path: the PNG file to write.
    """
    metrics = list(dict.fromkeys(k for r in records for k in r.metrics))
    splits = list(dict.fromkeys(r.split for r in records))
    cols = min(len(metrics), 3) or 1
    rows = math.ceil(len(metrics) / cols) or 1
    width, height = 4.5 * cols, 3.2 * rows
    fig = _figure(figsize=(width, height))
    # Fixed margins in inches: a layout engine would cost as long as drawing the figure.
    fig.subplots_adjust(
        left=0.65 / width,
        right=1 - 0.15 / width,
        bottom=0.5 / height,
        top=1 - (0.65 if title else 0.35) / height,
        wspace=0.3,
        hspace=0.55,
    )
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(rows, cols, i + 1)
        for split in splits:
            points = [(r.step, r.metrics[metric]) for r in records if r.split == split and metric in r.metrics]
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3, label=split)
        ax.set_title(metric)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=100)


def plot_member_curves(records: Sequence[Record], path: str | os.PathLike, *, title: str = "") -> None:
    """A sweep's curves: for every metric of every split, the members' mean against the step
    as a line, and the band from their min to their max.

    Args:
      records: a sweep's records, each with its ``member``.
      path: the PNG file to write.
    """
    metrics = sorted({k for r in records for k in r.metrics})
    fig = _figure(figsize=(4.5 * len(metrics), 3.4), layout="tight")
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), i + 1)
        for split in dict.fromkeys(r.split for r in records):
            rows = [r for r in records if r.split == split and metric in r.metrics]
            if not rows:
                continue
            steps = sorted({r.step for r in rows})
            values = [np.array([r.metrics[metric] for r in rows if r.step == s], float) for s in steps]
            mean = np.array([np.nanmean(v) for v in values])
            low, high = np.array([np.nanmin(v) for v in values]), np.array([np.nanmax(v) for v in values])
            (line,) = ax.plot(steps, mean, marker="o" if len(steps) < 30 else None, markersize=3, label=split)
            if len(steps) > 1:
                ax.fill_between(steps, low, high, alpha=0.25)
            elif np.isfinite([mean, low, high]).all():  # a split scored once (the test split): the band is an error bar
                ax.errorbar(steps, mean, yerr=[mean - low, high - mean], fmt="none", ecolor=line.get_color(), capsize=3)
        ax.set_xlabel("step")
        ax.set_title(metric)
        ax.legend()
    fig.suptitle(f"{title}: mean over members, band from min to max")
    fig.savefig(path, dpi=100)


def image_grid(
    images: np.ndarray,
    path: str | os.PathLike,
    *,
    columns: int = 10,
    title: str = "",
    labels: Sequence[str] | None = None,
) -> None:
    """Draws ``images (n, height, width)`` or ``(n, height, width, 1)`` in a grid, grey on white."""
    images = np.asarray(images)
    images = images[..., 0] if images.ndim == 4 else images
    n = len(images)
    rows = math.ceil(n / columns)
    fig = _figure(figsize=(columns * 0.9, rows * 0.9 + (0.4 if title else 0)), layout="constrained")
    for i, image in enumerate(images):
        ax = fig.add_subplot(rows, columns, i + 1)
        ax.imshow(image, cmap="gray_r", vmin=0.0, vmax=1.0)
        ax.set_axis_off()
        if labels is not None:
            ax.set_title(labels[i], fontsize=7)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=100)


def scatter_2d(
    points: np.ndarray,
    labels: np.ndarray,
    path: str | os.PathLike,
    *,
    title: str = "",
    axis_labels: tuple[str, str] = ("z1", "z2"),
) -> None:
    """Scatters ``points (n, 2)`` coloured by integer ``labels (n,)``, one legend entry per class."""
    from matplotlib import colormaps

    points, labels = np.asarray(points), np.asarray(labels)
    fig = _figure(figsize=(6, 5), layout="constrained")
    ax = fig.add_subplot()
    for c in np.unique(labels):
        chosen = labels == c
        color = colormaps["tab10"](int(c) % 10)
        ax.scatter(points[chosen, 0], points[chosen, 1], s=8, alpha=0.7, color=color, label=str(c))
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    ax.legend(markerscale=2, fontsize=8, loc="best")
    if title:
        ax.set_title(title)
    fig.savefig(path, dpi=100)


def plot_runs_metric(
    series: Mapping[str, Sequence[tuple[float, float]]], path: str | os.PathLike, *, metric: str
) -> None:
    """One metric of several runs against the training step, one labelled line per run.

    Args:
      series: ``{run name: [(step, value), ...]}``.
      path: the PNG file to write.
      metric: the ``split/metric`` drawn, for the title and the y axis.
    """
    fig = _figure(figsize=(6.5, 4), layout="constrained")
    ax = fig.add_subplot()
    for label, points in series.items():
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3, label=label)
    ax.set_title(metric)
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=100)
