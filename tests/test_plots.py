"""Plots: files are written, are valid images, and bad runs (NaN, Inf, escapes) never crash."""

import doctest

import matplotlib.image
import numpy as np
import pytest
import torch
from matplotlib.colors import to_hex
from matplotlib.text import Text

import ravine.report.plots as plots
from ravine.problems import make_problem
from ravine.report import (
    OPTIMIZER_COLORS,
    optimizer_color,
    optimizer_colors,
    plot_loss_curves,
    plot_trajectories,
    plot_trajectory_grid,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
    assert image.shape[2] in (3, 4)
    assert image[..., :3].std() > 0.05  # not a blank canvas


def _paths(problem, starts=3, steps=40, seed=0):
    """Fake runs: straight lines from random starts towards the first minimum (or off along y
    for saddles), one that diverges to NaN, one that runs off to 1e30, and one with Inf."""
    x0 = problem.sample_starts(starts, torch.Generator().manual_seed(seed), dtype=torch.float64)
    x0 = x0.numpy()
    goal = problem.minima.numpy()[0] if len(problem.minima) else np.array([0.0, 3.0])
    t = np.linspace(0.0, 1.0, steps + 1)[None, :, None]
    good = x0[:, None, :] * (1 - t) + goal * t  # (starts, steps + 1, 2)
    nan = good.copy()
    nan[:, steps // 2 :] = np.nan
    nan[0, steps // 4, 1] = np.inf  # one run stops even earlier, on an Inf
    wild = good * np.geomspace(1.0, 1e30, steps + 1)[None, :, None]
    return {"sgd": good, "adam": nan, "momentum": wild, "my optimizer": torch.from_numpy(good)}


@pytest.mark.parametrize("name", ["rosenbrock", "himmelblau", "saddle"])
def test_plot_trajectories_writes_a_png(tmp_path, name):
    problem = make_problem(name)
    out = plot_trajectories(
        problem, _paths(problem), tmp_path / "sub" / f"{name}.png", resolution=60
    )
    assert out == tmp_path / "sub" / f"{name}.png"
    _assert_png(out)
    assert not list(out.parent.glob(".*tmp"))  # no temporary file left behind


def test_plot_trajectories_svg_also_writes_png_and_respects_options(tmp_path):
    problem = make_problem("quadratic")
    out = plot_trajectories(
        problem,
        _paths(problem, starts=5),
        tmp_path / "q.svg",
        title="custom",
        max_starts=2,
        resolution=40,
    )
    assert out.suffix == ".svg" and out.read_text().lstrip().startswith("<?xml")
    _assert_png(out.with_suffix(".png"))


def test_plot_trajectories_handles_all_nonfinite_and_empty_runs(tmp_path):
    problem = make_problem("monkey_saddle")
    runs = {"sgd": np.full((2, 5, 2), np.nan), "adam": np.zeros((0, 5, 2))}
    _assert_png(plot_trajectories(problem, runs, tmp_path / "m.png", resolution=40))
    _assert_png(plot_trajectories(problem, {}, tmp_path / "empty.png", resolution=40))


def test_plot_trajectories_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="must be 2-D"):
        plot_trajectories(make_problem("rastrigin", dim=3), {}, tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"trajectories\['sgd'\] must have shape"):
        plot_trajectories(make_problem("beale"), {"sgd": np.zeros((2, 5, 3))}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="max_starts"):
        plot_trajectories(make_problem("beale"), {}, tmp_path / "x.png", max_starts=0)
    with pytest.raises(ValueError, match=r"path must end in \.png or \.svg"):
        plot_trajectories(make_problem("beale"), {}, tmp_path / "x.jpg", resolution=20)


@pytest.mark.parametrize("name", ["rosenbrock", "saddle"])
def test_plot_trajectory_grid_writes_a_png(tmp_path, name):
    problem = make_problem(name)
    out = plot_trajectory_grid(problem, _paths(problem), tmp_path / f"{name}.png", resolution=40)
    assert out == tmp_path / f"{name}.png"
    _assert_png(out)
    assert not list(out.parent.glob(".*tmp"))


def test_trajectory_grid_has_one_panel_per_optimizer_in_order(tmp_path):
    problem = make_problem("quadratic")
    runs = _paths(problem, starts=4)  # 4 optimizers, one diverging to NaN, one running off
    fig = plots._trajectory_grid_figure(
        problem, runs, title=None, columns=3, max_starts=2, resolution=30
    )
    panels = [ax for ax in fig.axes if ax.get_title(loc="left")]
    assert [ax.get_title(loc="left") for ax in panels] == list(runs)
    colors = optimizer_colors(runs)
    for ax, name in zip(panels, runs, strict=True):  # the name is written in its colour
        (text,) = [t for t in ax.get_children() if isinstance(t, Text) and t.get_text() == name]
        assert to_hex(text.get_color()) == colors[name]
    assert all(ax.get_xlim() == panels[0].get_xlim() for ax in panels)  # shared limits
    hidden = [ax for ax in fig.axes if not ax.axison]
    assert len(hidden) == 2  # a 2 x 3 grid for 4 optimizers
    assert panels[0].get_title(loc="right") == "2/2 reached"
    assert panels[1].get_title(loc="right") == "0/2 reached, 2 diverged"


def test_plot_trajectory_grid_handles_empty_and_nonfinite_runs(tmp_path):
    problem = make_problem("monkey_saddle")
    runs = {"sgd": np.full((2, 5, 2), np.nan), "adam": np.zeros((0, 5, 2))}
    _assert_png(plot_trajectory_grid(problem, runs, tmp_path / "m.png", resolution=30))
    out = plot_trajectory_grid(problem, {}, tmp_path / "empty.svg", resolution=30)
    _assert_png(out.with_suffix(".png"))  # the bare map


def test_plot_trajectory_grid_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="columns"):
        plot_trajectory_grid(make_problem("beale"), {}, tmp_path / "x.png", columns=0)
    with pytest.raises(ValueError, match="must be 2-D"):
        plot_trajectory_grid(make_problem("rastrigin", dim=3), {}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="max_starts"):
        plot_trajectory_grid(make_problem("beale"), {}, tmp_path / "x.png", max_starts=0)


def test_outcome_counts_like_the_study():
    quadratic = make_problem("quadratic")
    goal = quadratic.minima.numpy()[0]
    t = np.linspace(0.0, 1.0, 11)[:, None]
    there = goal + (1 - t) * np.array([1.0, 1.0])  # (11, 2) ends on the minimum
    away = there.copy()
    away[-1] = goal + 1.0  # reached it, then left: not a success for a bounded problem
    nan = there.copy()
    nan[5:] = np.nan
    assert plots._outcome(quadratic, np.stack([there, away, nan])) == "1/3 reached, 1 diverged"
    saddle = make_problem("saddle")
    up = np.stack([np.zeros(11), np.geomspace(1e-3, 1e200, 11)], axis=1)  # f -> -inf, NaN
    stuck = np.zeros((11, 2))
    assert plots._outcome(saddle, np.stack([up, stuck])) == "1/2 escaped"


def test_overlay_dots_every_round_number_of_steps(tmp_path):
    assert plots._dot_stride({"sgd": np.zeros((1, 11, 2))}) == 1  # short: every step
    assert plots._dot_stride({"sgd": np.zeros((1, 1501, 2))}) == 100
    assert plots._dot_stride({"a": np.zeros((1, 201, 2)), "b": np.zeros((1, 51, 2))}) == 10
    problem = make_problem("rosenbrock")
    x0 = np.array([-1.5, 2.0])
    runs = {name: np.linspace(x0, [1.0, 1.0], 1501)[None] for name in OPTIMIZER_COLORS}
    out = plot_trajectories(problem, runs, tmp_path / "one.png", max_starts=1, resolution=40)
    _assert_png(out)


def test_clip_path_cuts_at_nonfinite_and_far_outside():
    lo, hi = np.array([0.0, 0.0]), np.array([1.0, 1.0])
    xy = np.array([[0.5, 0.5], [0.6, 0.6], [np.nan, 0.0], [0.5, 0.5]])
    kept, diverged = plots._clip_path(xy, lo, hi)
    assert diverged and kept.shape == (2, 2)
    xy = np.array([[0.5, 0.5], [0.5, 0.9], [0.5, 1e30], [np.nan, np.nan]])
    kept, diverged = plots._clip_path(xy, lo, hi)
    assert not diverged  # it left the plot before it blew up
    np.testing.assert_allclose(kept[-1], [0.5, 1.5])  # last point moved onto the outer box


def _losses(kind, starts=6, steps=50, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(steps + 1)
    if kind == "saddle":  # f starts near 0 and escapes towards -inf, then overflows to NaN
        y = 1e-3 * np.exp(0.3 * t)[None] * rng.uniform(0.5, 2.0, (starts, 1))
        good = 0.3 * np.exp(-0.2 * t)[None] - y**2
        bad = good.copy()
        bad[:, 45:] = -np.inf
        bad[:, 47:] = np.nan
    else:
        good = np.exp(-0.2 * t)[None] * rng.uniform(0.5, 2.0, (starts, 1))
        bad = good * np.exp(0.5 * t)[None]
        bad[: starts // 2, 30:] = np.inf
        bad[starts // 2 :, 40:] = np.nan
        good[0, -5:] = 0.0  # reached the minimum exactly: must not break the log axis
    return {"sgd": good, "adam": bad, "nadam": torch.from_numpy(good[0])}


@pytest.mark.parametrize(
    ("kind", "target", "log"),
    [
        ("bounded", 1e-6, True),
        ("bounded", None, False),
        ("saddle", -1.0, True),
        ("saddle", None, False),
    ],
)
def test_plot_loss_curves_writes_a_png(tmp_path, kind, target, log):
    out = plot_loss_curves("loss", _losses(kind), tmp_path / "loss.png", target=target, log=log)
    assert out == tmp_path / "loss.png"
    _assert_png(out)


def test_loss_axis_choice():
    assert plots._y_axis(np.array([1e-8, 1.0, 10.0]), 1e4, log=True)[0] == "log"
    assert plots._y_axis(np.array([-5.0, 1.0]), 1e4, log=True)[0] == "symlog"
    assert plots._y_axis(np.array([1e-8, 1.0]), 1e4, log=False)[0] == "linear"
    assert plots._y_axis(np.array([-1e-20, 0.0, 1.0]), 1e4, log=True)[0] == "log"  # rounding


@pytest.mark.parametrize("log", [True, False])
def test_loss_axis_follows_runs_escaping_far_below_zero(log):
    # Unbounded saddle: some runs escape to -1e17; the axis must reach them, not clip at -ref.
    scale, bottom, top, linthresh = plots._y_axis(np.array([-1e17, -1e4, -1.0, 0.3]), 1e3, log)
    assert scale == "symlog" and bottom <= -1e17 and top >= 0.3 and linthresh <= 0.1
    bottom = plots._y_axis(np.array([-1e300, 0.3]), 1e3, log)[1]
    assert bottom >= -2e3 * 10.0**plots._DEEPEST_DECADES  # not 300 decades of axis


def test_plot_loss_curves_with_runaway_escapes(tmp_path):
    t = np.arange(301)
    fast = -np.exp(0.13 * t)[None] * np.array([[1.0], [2.0]])  # down to about -1e17
    fast[1, -5:] = -np.inf  # overflowed
    slow = -(t**2.0)[None] * np.array([[0.1], [0.2]])
    losses = {"momentum": fast, "adam": slow, "sgd": np.full((2, 301), -1e-3)}
    _assert_png(plot_loss_curves("saddle", losses, tmp_path / "s.png", target=-1.0, log=False))


def test_nan_after_escaping_below_counts_as_escaped_not_diverged():
    arr = np.array([[1.0, -1e9, -np.inf, np.nan], [1.0, 2.0, np.nan, np.nan]])
    out = plots._nan_as_extreme(arr, ref=1e3)
    assert np.isneginf(out[0, 3]) and np.isposinf(out[1, 2:]).all()


def test_plot_loss_curves_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match=r"losses\['sgd'\] must have shape"):
        plot_loss_curves("t", {"sgd": np.zeros((2, 3, 4))}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="band"):
        plot_loss_curves("t", {}, tmp_path / "x.png", band=(60, 90))
    with pytest.raises(ValueError, match="target"):
        plot_loss_curves("t", {}, tmp_path / "x.png", target=float("nan"))


def test_colors_are_stable_and_distinct():
    known = list(OPTIMIZER_COLORS)
    assert [optimizer_color(n) for n in known] == list(OPTIMIZER_COLORS.values())
    assert len(set(OPTIMIZER_COLORS.values())) == len(known)
    assert optimizer_color("Adam (lr=1e-2)") == OPTIMIZER_COLORS["adam"]
    assert optimizer_color("adamw") == OPTIMIZER_COLORS["adamw"]
    assert optimizer_color("lion") == optimizer_color("lion")  # crc32, not salted hash()
    colors = optimizer_colors(["adam lr=1e-2", "adam lr=1e-3", "sgd", "lion", "lamb"])
    assert colors["adam lr=1e-2"] == OPTIMIZER_COLORS["adam"]
    assert len(set(colors.values())) == len(colors)


def test_module_docstring_example_runs():
    failures, tried = doctest.testmod(plots)
    assert tried > 0 and failures == 0


def _inside(inner, outer, slack=1.0):
    return (
        inner.x0 >= outer.x0 - slack
        and inner.x1 <= outer.x1 + slack
        and inner.y0 >= outer.y0 - slack
        and inner.y1 <= outer.y1 + slack
    )


def test_trajectory_key_sits_beside_the_map_and_marks_exits_and_ends(tmp_path):
    problem = make_problem("saddle")
    up = np.stack([np.zeros(41), np.linspace(0.01, -4.0, 41)], axis=1)  # leaves by the bottom
    stay = np.stack([np.linspace(-1.0, -0.1, 41), np.zeros(41)], axis=1)
    runs = {name: (up if i % 2 else stay)[None] for i, name in enumerate(OPTIMIZER_COLORS)}
    fig = plots._trajectories_figure(problem, runs, None, None, 30)
    fig.draw_without_rendering()  # runs the layout engine, as saving does
    (ax,) = [a for a in fig.axes if a.get_legend()]
    legend = ax.get_legend().get_window_extent()
    box = ax.get_window_extent()
    assert _inside(legend, fig.bbox)  # inside the figure, not cut off
    assert legend.x0 >= box.x1 and legend.y1 <= box.y1 + 1  # beside the map, level with its top
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "momentum (left the map)" in labels and "left the map here, ended outside" in labels
    exits = [line for line in ax.get_lines() if not line.get_clip_on()]  # drawn on the edge
    assert len(exits) == 4
    assert all(line.get_marker() == "v" and np.isclose(line.get_ydata()[0], -1.5) for line in exits)
    assert len(set(plots.optimizer_styles(OPTIMIZER_COLORS).values())) == len(OPTIMIZER_COLORS)


def test_grid_key_explains_ends(tmp_path):
    problem = make_problem("quadratic")
    fig = plots._trajectory_grid_figure(
        problem, _paths(problem), title=None, columns=4, max_starts=2, resolution=30
    )
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "start" in labels and "end (last step)" in labels


def test_loss_curves_draw_medians_then_one_panel_per_optimizer(tmp_path):
    out = plot_loss_curves("l", _losses("bounded"), tmp_path / "l.png", target=1e-6)
    _assert_png(out)
    image = matplotlib.image.imread(out)
    assert image.shape[0] > 1.2 * 4.6 * plots._DPI  # overview plus a row of panels
