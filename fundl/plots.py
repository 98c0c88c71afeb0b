"""Pictures of training, as matplotlib figures: shown inline in a notebook, written to a file when given a path.

Every function returns a ``matplotlib.figure.Figure`` (a notebook cell that ends with one
shows it; ``fig.savefig`` writes it again in any format) and, with ``path``, also writes it
as a PNG. Nothing here uses pyplot's global state or opens a window, and matplotlib is
imported when the first picture is drawn, not with this module.

Example:
  >>> train_state, history = fit(...)
  >>> fl.plots.plot_curves(history)                       # in a notebook: the curves, inline
  >>> fl.plots.plot_curves(history, "curves.png", x="step")
  >>> fl.plots.plot_curves("runs/mlp_digits-20261127-221519")  # a run directory's metrics.jsonl
"""

from __future__ import annotations

import functools
import math
import os
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from fundl.train import History, Record

AXES = ("epoch", "step")


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


@functools.cache
def _figure_class() -> type:
    """A matplotlib ``Figure`` that a notebook shows inline by itself (its ``_repr_png_``), without pyplot."""
    import io

    from matplotlib.figure import Figure

    class InlineFigure(Figure):
        def _repr_png_(self) -> bytes:
            buffer = io.BytesIO()
            self.savefig(buffer, format="png", dpi=100)
            return buffer.getvalue()

    return InlineFigure


def _figure(**kwargs: Any) -> Figure:
    """A new figure (matplotlib is imported here, on the first picture)."""
    return _figure_class()(**kwargs)


def _done(fig: Figure, path: str | os.PathLike | None) -> Figure:
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def _records(source: History | Sequence[Record] | str | os.PathLike) -> list[Record]:
    """The records of a history, a list of records, or a run directory (its ``metrics.jsonl``)."""
    if isinstance(source, (str, os.PathLike)):
        from fundl.runs._directory import RunDirectory

        return RunDirectory.open(source).records()
    records = getattr(source, "records", source)
    return list(records)


def _position(record: Record, x: str) -> float:
    if x not in AXES:
        raise ValueError(f"x must be one of {AXES}, got {x!r}")
    return record.epoch if x == "epoch" else record.step


def _panels(records: Sequence[Record], splits: Sequence[str]) -> tuple[list[list[str]], dict[str, float]]:
    """The metrics to draw, one panel each (metrics whose every curve is the same share a panel: ``loss`` and
    ``neg_elbo``), and the constants left out (a learning rate that never changed)."""
    names = [
        name
        for name in dict.fromkeys(k for r in records for k in r.metrics)
        if all(isinstance(r.metrics[name], (int, float)) for r in records if name in r.metrics)  # scalars only
    ]
    constants: dict[str, float] = {}
    panels: dict[tuple, list[str]] = {}
    for name in names:
        values = tuple(
            (r.split, r.step, float(r.metrics[name])) for split in splits for r in records if name in r.metrics
            if r.split == split
        )  # fmt: skip
        if name == "learning_rate" and len({v for _, _, v in values}) == 1:
            constants[name] = values[0][2]
            continue
        panels.setdefault(values, []).append(name)
    return list(panels.values()), constants


def plot_curves(
    history: History | Sequence[Record] | str | os.PathLike,
    path: str | os.PathLike | None = None,
    *,
    x: str = "epoch",
    title: str = "",
    member: int | None = None,
) -> Figure:
    """Training curves: one panel per metric (loss, accuracy, ...), one line per split, against the epoch.

    A metric that is the same curve as another (a VAE's ``loss`` and ``neg_elbo``) shares its
    panel, and a learning rate that never changed is named in the title instead of drawn.

    Args:
      history: ``fit``'s :class:`~fundl.train.History`, its records, or a run directory.
      path: also write the figure there, as a PNG.
      x: ``"epoch"`` (default) or ``"step"``.
      title: drawn above the panels.
      member: in a sweep's records, the member to draw (see :func:`plot_member_curves` for all).

    Returns:
      The matplotlib ``Figure`` (a notebook shows it inline).
    """
    records = [r for r in _records(history) if r.member == member]
    splits = list(dict.fromkeys(r.split for r in records))
    panels, constants = _panels(records, splits)
    cols = min(len(panels), 3) or 1
    rows = math.ceil(len(panels) / cols) or 1
    width, height = 4.5 * cols, 3.2 * rows
    fig = _figure(figsize=(width, height))
    # Fixed margins in inches: a layout engine would cost as long as drawing the figure.
    top = 0.65 if title or constants else 0.35
    fig.subplots_adjust(
        left=0.65 / width, right=1 - 0.15 / width, bottom=0.5 / height, top=1 - top / height, wspace=0.3, hspace=0.55
    )
    for i, names in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        for split in splits:
            points = [
                (_position(r, x), r.metrics[names[0]]) for r in records if r.split == split and names[0] in r.metrics
            ]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o" if len(points) < 30 else None, markersize=3, label=split)
        ax.set_title(" = ".join(names))
        ax.set_xlabel(x)
        ax.grid(alpha=0.3)
        ax.legend()
    notes = ", ".join(f"{name.replace('_', ' ')} {value:g} throughout" for name, value in constants.items())
    if title or notes:
        fig.suptitle(f"{title} ({notes})" if title and notes else title or notes)
    return _done(fig, path)


def plot_member_curves(
    history: History | Sequence[Record] | str | os.PathLike,
    path: str | os.PathLike | None = None,
    *,
    x: str = "epoch",
    title: str = "",
) -> Figure:
    """A sweep's curves: for every metric of every split, the members' mean against the epoch as a line, and the
    band from their min to their max.

    Args:
      history: a sweep's history or records (each with its ``member``), or its run directory.
      path: also write the figure there, as a PNG.
      x: ``"epoch"`` (default) or ``"step"``.

    Returns:
      The matplotlib ``Figure``.
    """
    records = _records(history)
    splits = list(dict.fromkeys(r.split for r in records))
    panels, _ = _panels(records, splits)
    fig = _figure(figsize=(4.5 * max(len(panels), 1), 3.4), layout="tight")
    for i, names in enumerate(panels):
        metric = names[0]
        ax = fig.add_subplot(1, max(len(panels), 1), i + 1)
        for split in splits:
            rows = [r for r in records if r.split == split and metric in r.metrics]
            if not rows:
                continue
            positions = sorted({_position(r, x) for r in rows})
            values = [np.array([r.metrics[metric] for r in rows if _position(r, x) == p], float) for p in positions]
            mean = np.array([np.nanmean(v) for v in values])
            low, high = np.array([np.nanmin(v) for v in values]), np.array([np.nanmax(v) for v in values])
            (line,) = ax.plot(positions, mean, marker="o" if len(positions) < 30 else None, markersize=3, label=split)
            if len(positions) > 1:
                ax.fill_between(positions, low, high, alpha=0.25)
            elif np.isfinite([mean, low, high]).all():  # a split scored once (the test split): the band is an error bar
                ax.errorbar(
                    positions, mean, yerr=[mean - low, high - mean], fmt="none", ecolor=line.get_color(), capsize=3
                )
        ax.set_xlabel(x)
        ax.set_title(" = ".join(names))
        ax.legend()
    fig.suptitle(f"{title + ': ' if title else ''}mean over members, band from min to max")
    return _done(fig, path)


def image_grid(
    images: np.ndarray,
    path: str | os.PathLike | None = None,
    *,
    columns: int = 10,
    title: str = "",
    labels: Sequence[str] | None = None,
) -> Figure:
    """Draws ``images (n, height, width)`` or ``(n, height, width, 1)`` in a grid, grey on white (values in [0, 1]).

    Returns:
      The matplotlib ``Figure`` (also written to ``path``, if given).
    """
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
    return _done(fig, path)


def scatter_2d(
    points: np.ndarray,
    labels: np.ndarray,
    path: str | os.PathLike | None = None,
    *,
    title: str = "",
    axis_labels: tuple[str, str] = ("z1", "z2"),
) -> Figure:
    """Scatters ``points (n, 2)`` coloured by integer ``labels (n,)``, one legend entry per class.

    Returns:
      The matplotlib ``Figure`` (also written to ``path``, if given).
    """
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
    return _done(fig, path)


def plot_runs_metric(
    series: Mapping[str, Sequence[tuple[float, float]]],
    path: str | os.PathLike | None = None,
    *,
    metric: str,
    x: str = "epoch",
) -> Figure:
    """One metric of several runs, one labelled line per run (what ``fundl plot`` draws).

    Args:
      series: ``{run name: [(x, value), ...]}``.
      path: also write the figure there, as a PNG.
      metric: the ``split/metric`` drawn, for the title and the y axis.
      x: what the points' first coordinate is, ``"epoch"`` or ``"step"`` (the x axis's label).

    Returns:
      The matplotlib ``Figure``.
    """
    fig = _figure(figsize=(6.5, 4), layout="constrained")
    ax = fig.add_subplot()
    for label, points in series.items():
        if points:
            xs, values = zip(*points)
            ax.plot(xs, values, marker="o" if len(points) < 30 else None, markersize=3, label=label)
    ax.set_title(metric)
    ax.set_xlabel(x)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _done(fig, path)
