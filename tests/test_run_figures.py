"""Figures of runs (curves, restarts, curvature, probe): what a reader needs is on them."""

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import ravine.report.plots as plots
from ravine.report.probe import DENSITY_FLOOR, _plot_density
from ravine.report.restarts import MIN_BINS, plot_restart_losses
from ravine.report.training import plot_curvature, plot_training_curves, read_steps


@pytest.fixture
def figures(monkeypatch):
    """Keep each figure instead of saving it, to look inside."""
    kept = []

    def keep(fig, path):
        fig.draw_without_rendering()  # the layout engine runs, as when saving
        kept.append(fig)
        return Path(path)

    monkeypatch.setattr(plots, "save_figure", keep)
    return kept


def _history(epochs=3, members=0):
    records = []
    for e in range(1, epochs + 1):
        record = {"epoch": e, "step": 10 * e, "lr": 0.1}
        for split, offset in (("train", 0.0), ("test", 0.1)):
            record[f"{split}_loss"] = 2.0 / e + offset
            record[f"{split}_accuracy"] = 0.5 + 0.1 * e
            if members:
                per = record.setdefault("per_member", {})
                per[f"{split}_loss"] = [2.0 / e + offset + 0.05 * k for k in range(members)]
                per[f"{split}_accuracy"] = [0.5 + 0.1 * e - 0.01 * k for k in range(members)]
        records.append(record)
    return records


def _steps(n=30, cosine=True):
    step = list(range(1, n + 1))
    lr = [0.05 * (1 + math.cos(math.pi * ((s - 1) % 15) / 15)) if cosine else 0.1 for s in step]
    return {"step": step, "lr": lr, "loss": [2.5 * 0.95**s for s in step]}


def _integer_ticks(ax):
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    return len(ticks) >= 2 and all(float(t).is_integer() for t in ticks)


def _inside(inner, outer):
    return inner.x0 >= outer.x0 - 1 and inner.x1 <= outer.x1 + 1 and inner.y1 <= outer.y1 + 1


def test_curves_show_the_schedule_snapshots_and_whole_epochs(figures, tmp_path):
    plot_training_curves(_history(), tmp_path / "c.png", steps=_steps(), snapshots=2)
    (fig,) = figures
    axes = {ax.get_ylabel(): ax for ax in fig.axes if ax.get_ylabel()}
    assert {"loss", "accuracy (%)", "learning rate"} <= set(axes)
    assert all(_integer_ticks(ax) for ax in axes.values())  # epoch 1, 2, 3: never 1.25
    snapshot_lines = [line for line in axes["loss"].get_lines() if line.get_linestyle() == ":"]
    assert [line.get_xdata()[0] for line in snapshot_lines] == pytest.approx([1.5, 3.0])
    (legend,) = [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    assert _inside(legend.get_window_extent(), fig.bbox)
    labels = [t.get_text() for t in legend.get_texts()]
    assert "train (mean over the epoch's updates)" in labels
    assert len(axes["loss"].get_yticklabels()) >= 3  # a log axis that can be read


def test_curves_without_a_schedule_have_no_lr_panel_and_band_over_restarts(figures, tmp_path):
    steps = _steps(cosine=False) | {"loss_median": [1.0] * 30, "loss_min": [0.9] * 30}
    steps["loss_max"] = [1.1] * 30
    del steps["loss"]
    plot_training_curves(_history(members=4), tmp_path / "c.png", steps=steps)
    (fig,) = figures
    assert "learning rate" not in [ax.get_ylabel() for ax in fig.axes]
    assert "lr 0.1, constant" in fig.get_suptitle() and "4 restarts" in fig.get_suptitle()
    loss_ax = next(ax for ax in fig.axes if ax.get_ylabel() == "loss")
    assert len(loss_ax.collections) == 3  # bands: batch losses, train, test over restarts


def test_read_steps_reads_columns_and_tolerates_a_missing_file(tmp_path):
    (tmp_path / "steps.csv").write_text("step,loss,lr\n1,2.5,0.1\n2,nan,0.1\n")
    steps = read_steps(tmp_path / "steps.csv")
    assert steps["step"] == [1.0, 2.0] and math.isnan(steps["loss"][1])
    assert read_steps(tmp_path / "missing.csv") == {}


def test_restarts_draw_one_histogram_per_split_with_enough_bins(figures, tmp_path):
    losses = {"train": [0.41, 0.42, 0.43, 0.48], "test": [0.49, 0.49, 0.54, 0.56, math.nan]}
    plot_restart_losses(losses, tmp_path / "r.png", diverged=[4])
    (fig,) = figures
    hists = [ax for ax in fig.axes if ax.get_ylabel() == "restarts"]
    assert len(hists) == 2  # train and test apart, not overlaid as one histogram
    for ax, split in zip(hists, losses, strict=True):
        assert ax.get_title(loc="left").startswith(f"{split} (final weights, whole split)")
        assert len(ax.patches) >= MIN_BINS
    strip = next(ax for ax in fig.axes if ax.get_ylabel() == "final loss")
    assert len([t for t in strip.get_yticks() if 0.41 <= t <= 0.56]) >= 4
    assert "1 of 5 diverged" in fig.get_suptitle()


def test_curvature_has_a_title_keys_beside_and_no_empty_decades(figures, tmp_path):
    records = [{"step": s, "loss": 1.0 / s, "top": 5.0 + s, "bottom": -0.5} for s in (5, 10, 15)]
    plot_curvature(records, [(10, 10, "saddle")], tmp_path / "k.png", every=5)
    (fig,) = figures
    assert fig.get_suptitle().startswith("Curvature during training")
    loss_ax, eig_ax = (ax for ax in fig.axes if ax.get_ylabel())
    for ax in (loss_ax, eig_ax):
        assert ax.get_legend().get_window_extent().x0 >= ax.get_window_extent().x1  # beside
        assert _integer_ticks(ax)
    assert eig_ax.get_yscale() == "symlog" and eig_ax.get_ylim()[0] >= -1.0  # not -1e1...


def test_spectrum_clips_the_smoothing_and_states_trace_and_condition(figures, tmp_path):
    grid = torch.linspace(-1, 4, 200)
    density = SimpleNamespace(grid=grid, density=torch.exp(-(grid**2) * 20) * 10 + 1e-14)
    top = SimpleNamespace(eigenvalues=torch.tensor([3.5, 2.9]))
    bottom = SimpleNamespace(eigenvalues=torch.tensor([-0.1]))
    report = {
        "grad_norm": 0.3,
        "kind": "not_critical",
        "examples": 1000,
        "trace": 59.6,
        "trace_stderr": 1.7,
        "condition_positive": 1445.0,
        "negative_ratio": 0.03,
    }
    _plot_density(density, top, bottom, report, tmp_path / "s.png")
    (fig,) = figures
    (ax,) = fig.axes
    low, high = ax.get_ylim()
    assert math.log10(high / low) <= -math.log10(DENSITY_FLOOR) + 1  # not 14 decades
    key = ax.get_legend()
    assert "trace 59.6" in key.get_title().get_text()
    assert "condition number 1.44e+03" in key.get_title().get_text()
    assert key.get_window_extent().x0 >= ax.get_window_extent().x1
    assert "2 / λmax" in fig._supxlabel.get_text()


def test_gradient_profile_one_point_per_layer(tmp_path):
    from ravine.probe import GradientMonitor
    from ravine.report.gradients import plot_gradient_profile

    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    with GradientMonitor(model) as monitor:
        for step in range(3):
            model.zero_grad()
            model(torch.randn(16, 4)).pow(2).mean().backward()
            monitor.record(step)
    out = plot_gradient_profile(monitor, tmp_path / "g.png", note="3 batches")
    assert out.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="empty"):
        plot_gradient_profile([], tmp_path / "e.png")


def test_spectrum_without_the_eigenvalue_instrument_says_so(figures, tmp_path):
    """Density alone (probe --instruments density): no Lanczos marks, and no claim about
    positive curvature the spectrum instrument did not measure."""
    grid = torch.linspace(-1, 6, 200)
    density = SimpleNamespace(grid=grid, density=torch.exp(-((grid - 5) ** 2)) + 1e-14)
    _plot_density(density, None, None, {"examples": 100}, tmp_path / "d.png")
    (fig,) = figures
    caption = fig._supxlabel.get_text()
    assert "not measured" in caption and "no positive curvature" not in caption
