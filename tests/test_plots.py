"""Figures in Python: fundl.plots returns matplotlib figures (shown inline in a notebook) and writes them when given
a path; curves against epochs, one panel per metric, no duplicate panels, no panel for a constant learning rate."""

import json
import subprocess
import sys

import numpy as np
import pytest

from fundl import plots
from fundl.train import Record

PNG = b"\x89PNG\r\n\x1a\n"


def records(per_epoch=38, epochs=4, rate=lambda step: 0.1):
    out = []
    for epoch in range(1, epochs + 1):
        step = per_epoch * epoch
        loss = 1.0 / epoch
        out.append(Record(step, float(epoch), "train", {"loss": loss, "neg_elbo": loss, "learning_rate": rate(step)}))
        out.append(Record(step, float(epoch), "validation", {"loss": loss + 0.1, "neg_elbo": loss + 0.1, "kl": 0.5}))
    return out


def panels(fig):
    return [ax.get_title() for ax in fig.axes]


def test_curves_are_a_figure_one_panel_per_metric_against_epochs(tmp_path):
    fig = plots.plot_curves(records(), tmp_path / "curves.png", title="run")
    assert type(fig).__mro__[1].__name__ == "Figure"
    assert panels(fig) == ["loss = neg_elbo", "kl"]  # the same curve twice is one panel; a constant rate is none
    assert "learning rate 0.1 throughout" in fig.get_suptitle()
    ax = fig.axes[0]
    assert ax.get_xlabel() == "epoch" and list(ax.lines[0].get_xdata()) == [1.0, 2.0, 3.0, 4.0]
    assert [line.get_label() for line in ax.lines] == ["train", "validation"]
    assert (tmp_path / "curves.png").read_bytes().startswith(PNG)


def test_a_changing_learning_rate_gets_its_panel_and_steps_can_be_the_x_axis():
    fig = plots.plot_curves(records(rate=lambda step: 0.1 / step), x="step")
    assert "learning_rate" in panels(fig) and fig.axes[0].get_xlabel() == "step"
    assert list(fig.axes[0].lines[0].get_xdata()) == [38, 76, 114, 152]
    with pytest.raises(ValueError, match=r"x must be one of \('epoch', 'step'\), got 'time'"):
        plots.plot_curves(records(), x="time")


def test_a_figure_shows_itself_in_a_notebook_without_pyplot():
    assert plots.plot_curves(records())._repr_png_().startswith(PNG)  # what IPython displays for a cell's result


def test_curves_of_a_run_directory_and_of_a_sweeps_members(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "metrics.jsonl").write_text("".join(json.dumps(r.to_json()) + "\n" for r in records()))
    assert panels(plots.plot_curves(run)) == ["loss = neg_elbo", "kl"]
    members = [
        r._replace(member=m, metrics={**r.metrics, "loss": r.metrics["loss"] + m}) for r in records() for m in (0, 1)
    ]
    fig = plots.plot_member_curves(members, tmp_path / "members.png")
    assert panels(fig) == ["loss", "neg_elbo", "kl"] and (tmp_path / "members.png").is_file()


def test_pictures_return_figures_and_write_only_when_asked(tmp_path):
    fig = plots.image_grid(np.random.default_rng(0).random((12, 8, 8)), columns=6)
    assert len(fig.axes) == 12 and not list(tmp_path.iterdir())
    fig = plots.scatter_2d(np.zeros((10, 2)), np.arange(10) % 3, tmp_path / "latent.png")
    assert (tmp_path / "latent.png").read_bytes().startswith(PNG)


def test_importing_the_plots_module_imports_no_matplotlib():
    code = "import sys, fundl.plots; print('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout == "False\n"
