"""Figures for optimizer comparisons: paths over a problem's contour map (all optimizers on one
map, or one small panel per optimizer), and loss curves.

Figures are built on ``matplotlib.figure.Figure`` directly (Agg rendering, no pyplot, no global
state, no display needed) and matplotlib is imported inside the functions so that importing
``ravine.report`` stays cheap. Every optimizer keeps one colour across all figures
(``optimizer_color``). Diverged runs (NaN/Inf) never crash a plot: paths stop at their last
finite point, and loss statistics treat a diverged run as the worst run.

>>> import numpy as np, tempfile, pathlib
>>> from ravine.problems import make_problem
>>> path = pathlib.Path(tempfile.mkdtemp()) / "rosenbrock.png"
>>> traj = {"sgd": np.linspace([-1.5, 2.0], [1.0, 1.0], 50)[None]}  # (starts=1, steps+1=50, 2)
>>> plot_trajectories(make_problem("rosenbrock"), traj, path) == path
True
"""

from __future__ import annotations

import math
import os
import re
import textwrap
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ravine.folders import atomic_write
from ravine.report.axes import key_beside

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ravine.problems import AnalyticProblem

__all__ = [
    "OPTIMIZER_COLORS",
    "optimizer_color",
    "optimizer_colors",
    "optimizer_styles",
    "plot_loss_curves",
    "plot_trajectories",
    "plot_trajectory_grid",
]

# One fixed colour per well-known optimizer (matplotlib's tab10), so "adam" is red everywhere.
OPTIMIZER_COLORS: dict[str, str] = {
    "sgd": "#1f77b4",  # blue
    "momentum": "#ff7f0e",  # orange
    "nesterov": "#2ca02c",  # green
    "adagrad": "#9467bd",  # purple
    "rmsprop": "#8c564b",  # brown
    "adam": "#d62728",  # red
    "adamw": "#e377c2",  # pink
    "nadam": "#17becf",  # cyan
}
# Other names hash (crc32, stable across processes) into these; none is grey, the contour colour.
_FALLBACK_COLORS = (
    "#bcbd22",
    "#393b79",
    "#637939",
    "#8c6d31",
    "#843c39",
    "#7b4173",
    "#3182bd",
    "#e6550d",
    "#31a354",
    "#756bb1",
)
# One line style and marker per well-known optimizer as well, so paths that share a valley
# (Adam, AdamW and NAdam often do) stay apart by dash pattern and end marker, not colour alone.
OPTIMIZER_STYLES: dict[str, tuple[str, str]] = {
    "sgd": ("-", "o"),
    "momentum": ("-", "s"),
    "nesterov": ("--", "^"),
    "adagrad": ("-.", "D"),
    "rmsprop": (":", "v"),
    "adam": ("-", "P"),
    "adamw": ("--", "X"),
    "nadam": (":", "h"),
}
_FALLBACK_STYLES = (("-", "o"), ("--", "s"), ("-.", "^"), (":", "D"), ("--", "v"), ("-.", "P"))
_DPI = 150
# Marker styles, shared by the plot and its legend.
_START = {"marker": "o", "ms": 6, "color": "white", "mec": "black", "mew": 0.9}
_MINIMUM = {"marker": "*", "ms": 17, "color": "gold", "mec": "black", "mew": 1.0}
_SADDLE = {"marker": "X", "ms": 11, "color": "white", "mec": "black"}
_DIVERGED = {"marker": "x", "ms": 8, "mew": 2.0}
_END = {"ms": 6.5, "mec": "black", "mew": 0.8}  # + the optimizer's marker and colour
_EXIT = {"ms": 8, "mec": "black", "mew": 0.8}  # + a triangle pointing out of the map


# ----------------------------------------------------------------------------- colours


def _color_key(name: str) -> str:
    key = name.strip().lower()
    if key in OPTIMIZER_COLORS:
        return key
    # "adam(lr=0.01)", "adam lr=1e-2", "sgd_0.1" -> their leading word
    match = re.match(r"[a-z]+", key)
    return match.group(0) if match else key


def optimizer_color(name: str) -> str:
    """The colour of ``name`` in every figure: fixed for well-known optimizers (matched by
    the leading word, so "adam (lr=1e-2)" is Adam's red), a stable hash for other names."""
    key = _color_key(name)
    if key in OPTIMIZER_COLORS:
        return OPTIMIZER_COLORS[key]
    return _FALLBACK_COLORS[zlib.crc32(key.encode()) % len(_FALLBACK_COLORS)]


def optimizer_styles(names: Iterable[str]) -> dict[str, tuple[str, str]]:
    """(line style, marker) per name: fixed for well-known optimizers (by leading word), the
    first unused fallback for others (variants of one optimizer included), so two names in one
    figure share a style only when there are more names than styles."""
    used: set[tuple[str, str]] = set()
    styles: dict[str, tuple[str, str]] = {}
    for name in names:
        style = OPTIMIZER_STYLES.get(_color_key(name))
        if style is None or style in used:
            free = [s for s in (*_FALLBACK_STYLES, *OPTIMIZER_STYLES.values()) if s not in used]
            style = free[0] if free else _FALLBACK_STYLES[len(styles) % len(_FALLBACK_STYLES)]
        styles[name] = style
        used.add(style)
    return styles


def optimizer_colors(names: Iterable[str]) -> dict[str, str]:
    """Colours for the names in one figure: ``optimizer_color`` unless two names would share a
    colour (variants of one optimizer, hash collisions); later ones then take the next free
    fallback colour."""
    palette = list(OPTIMIZER_COLORS.values()) + list(_FALLBACK_COLORS)
    used: set[str] = set()
    colors: dict[str, str] = {}
    for name in names:
        color = optimizer_color(name)
        if color in used:
            start = _FALLBACK_COLORS.index(color) if color in _FALLBACK_COLORS else 0
            free = [c for c in _FALLBACK_COLORS[start:] + _FALLBACK_COLORS[:start] if c not in used]
            free = free or [c for c in palette if c not in used] or [color]
            color = free[0]
        colors[name] = color
        used.add(color)
    return colors


# ----------------------------------------------------------------------------- trajectories


def plot_trajectories(
    problem: AnalyticProblem,
    trajectories: Mapping[str, Any],
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    max_starts: int | None = None,
    resolution: int = 300,
) -> Path:
    """Draw every optimizer's paths over one contour map of a 2-D ``problem``; save, return path.

    Best with few paths: ``max_starts=1`` gives the classic "SGD vs momentum vs Adam" figure.
    With up to 12 paths, dots along each path every ``k`` steps (``k`` a round number, the same
    for every path, given in the legend) show where an optimizer moves fast and where it
    crawls. Many paths (every start of many optimizers) are drawn thinner and fainter, with no
    step dots; ``plot_trajectory_grid`` gives each optimizer its own panel instead.

    Each optimizer has its colour, line style and end marker (``optimizer_styles``), and
    later paths are drawn thinner over earlier ones, so paths sharing a valley stay apart. A
    path that ends outside the map gets a triangle where it last crossed the edge; with one
    start, the key gives each path's distance to the nearest minimum (ends often pile up on
    it). The key sits beside the map, level with its top; the colour bar under it.

    Args:
      problem: a 2-D ``AnalyticProblem``; the map covers ``problem.bounds``.
      trajectories: ``{optimizer name: array (starts, steps + 1, 2)}`` (numpy or torch). A path
        stops at its first non-finite point (marked with an x when the run diverged) and at the
        first point far outside the box (the line runs off the edge).
      path: ``.png``, or ``.svg`` (then a ``.png`` is written next to it too). Parent folders
        are created; files are replaced atomically.
      title: defaults to ``problem.description``.
      max_starts: draw only the first ``max_starts`` starts of each optimizer.
      resolution: grid points per axis for the contour map.

    Levels are log-spaced in ``f - min_value`` when the map spans orders of magnitude
    (Rosenbrock, Beale), linear otherwise (Rastrigin, Ackley), and symmetric around the saddle
    value for problems unbounded below, where the dashed contour is the escape ``target``.
    """
    fig = _trajectories_figure(problem, trajectories, title, max_starts, resolution)
    return save_figure(fig, path)


def _trajectories_figure(
    problem: AnalyticProblem,
    trajectories: Mapping[str, Any],
    title: str | None,
    max_starts: int | None,
    resolution: int,
) -> Figure:
    """The figure ``plot_trajectories`` saves."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    paths = _check_trajectories(problem, trajectories, max_starts, resolution)
    colors = optimizer_colors(paths)
    styles = optimizer_styles(paths)
    n_lines = sum(len(runs) for runs in paths.values())
    stride = _dot_stride(paths) if n_lines <= _MAX_DOTTED_LINES else None

    fig = Figure(figsize=(9.2, 6.4), layout="constrained")
    ax = fig.add_subplot()
    contours = _contour_map(problem, int(resolution))
    # Colour bar under the map, so the key can sit beside it, level with its top edge.
    _add_colorbar(fig, _draw_map(ax, contours), ax, contours, location="bottom", shrink=0.7)

    handles: list[Any] = []
    marks = _Marks()
    for order, (name, runs) in enumerate(paths.items()):
        color = colors[name]
        # Offset drawing order: each later path is drawn thinner on top of the earlier ones, so
        # paths that share a valley show as a striped cable instead of one line.
        widen = 1.8 * (len(paths) - 1 - order) / max(len(paths) - 1, 1) if n_lines <= 16 else 0
        drawn = _draw_runs(
            ax,
            problem,
            runs,
            color,
            stride=stride,
            crowd=n_lines,
            style=styles[name],
            widen=widen,
            zorder=3 + order / 100,
        )
        marks.add(drawn)
        label = name if not drawn.diverged else f"{name} ({drawn.diverged}/{len(runs)} diverged)"
        if drawn.exits:
            label += (
                f" ({drawn.exits}/{len(runs)} left the map)"
                if len(runs) > 1
                else (" (left the map)")
            )
        elif len(runs) == 1 and not drawn.diverged:
            label += _distance_note(problem, runs[0])
        line, marker = styles[name]
        handles.append(
            Line2D([], [], color=color, lw=2, ls=line, marker=marker, label=label, **_END)
        )
    _draw_landmarks(ax, problem)

    n_starts = max((len(runs) for runs in paths.values()), default=0)
    handles = [
        *_start_handle(n_starts, "start" if n_starts == 1 else f"start ({n_starts} per optimizer)"),
        *handles,
        *_landmark_handles(problem, marks=marks, stride=stride),
    ]
    _frame(ax, problem)
    # An equal-aspect map shrinks inside its slot; anchored left, the key beside it stays in
    # the figure (centred, it was pushed past the right edge).
    ax.set_anchor("W")
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    ax.set_title(
        textwrap.fill(title if title is not None else problem.description, 60), fontsize=11
    )
    key_beside(
        ax,
        handles,
        bbox_to_anchor=(1.02, 1.0),
        fontsize=9,
        title="marker: where each path ends"
        + (
            "\nnumber: its distance to the minimum" if n_starts == 1 and len(problem.minima) else ""
        ),
        title_fontsize=8,
    )
    return fig


def plot_trajectory_grid(
    problem: AnalyticProblem,
    trajectories: Mapping[str, Any],
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    columns: int = 4,
    max_starts: int | None = None,
    resolution: int = 200,
) -> Path:
    """Small multiples: one panel per optimizer with its paths from every start; save, return path.

    Panels follow the dict's order, ``columns`` to a row, over the same contour map (computed
    once) with shared axes, so runs compare at a glance: 8 optimizers make a 2 x 4 grid. Each
    panel is titled with the optimizer's name in its colour and how many of its runs reached
    ``problem.target`` (escaped, for problems unbounded below), counted as ``ravine compare``
    counts successes: bounded runs must still be there at the last step, and a run that turns
    non-finite first counts as diverged. Starts, minima, saddle points and diverged endpoints
    are marked as in ``plot_trajectories``; one colour bar and one legend serve every panel.

    Args:
      problem: a 2-D ``AnalyticProblem``; every panel covers ``problem.bounds``.
      trajectories: ``{optimizer name: array (starts, steps + 1, 2)}`` (numpy or torch).
      path: ``.png``, or ``.svg`` (then a ``.png`` is written next to it too).
      title: figure title; defaults to ``problem.description``.
      columns: panels per row (fewer when there are fewer optimizers).
      max_starts: draw (and count) only the first ``max_starts`` starts of each optimizer.
      resolution: grid points per axis for the contour map.

    >>> import numpy as np, tempfile, pathlib
    >>> from ravine.problems import make_problem
    >>> line = np.linspace([-1.5, 2.0], [1.0, 1.0], 50)[None]  # (starts=1, steps+1=50, 2)
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "grid.png"
    >>> plot_trajectory_grid(make_problem("rosenbrock"), {"sgd": line, "adam": line}, out) == out
    True
    """
    fig = _trajectory_grid_figure(
        problem,
        trajectories,
        title=title,
        columns=columns,
        max_starts=max_starts,
        resolution=resolution,
    )
    return save_figure(fig, path)


def _trajectory_grid_figure(
    problem: AnalyticProblem,
    trajectories: Mapping[str, Any],
    *,
    title: str | None,
    columns: int,
    max_starts: int | None,
    resolution: int,
) -> Figure:
    """The figure ``plot_trajectory_grid`` saves; its panels are the axes with a left title."""
    from matplotlib.figure import Figure

    if isinstance(columns, bool) or not isinstance(columns, int) or columns < 1:
        raise ValueError(f"columns must be a positive integer, got {columns!r}")
    paths = _check_trajectories(problem, trajectories, max_starts, resolution)
    colors = optimizer_colors(paths)
    n_panels = max(len(paths), 1)  # no optimizers: the bare map
    n_cols = min(columns, n_panels)
    n_rows = math.ceil(n_panels / n_cols)
    (x_lo, x_hi), (y_lo, y_hi) = problem.bounds
    panel_w = 2.6  # inches
    panel_h = panel_w * min(max((y_hi - y_lo) / (x_hi - x_lo), 0.5), 1.5)
    fig = Figure(figsize=(n_cols * panel_w + 1.3, n_rows * panel_h + 1.1), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, sharex=True, sharey=True, squeeze=False)
    contours = _contour_map(problem, int(resolution))

    drawn = None
    for ax in axes.flat[:n_panels]:
        drawn = _draw_map(ax, contours, lw=0.35)
        _draw_landmarks(ax, problem, ms=0.7)
        _frame(ax, problem)
        ax.tick_params(labelsize=8)
    marks = _Marks()
    for ax, (name, runs) in zip(axes.flat, paths.items(), strict=False):
        color = colors[name]
        marks.add(_draw_runs(ax, problem, runs, color, stride=None, crowd=len(runs), ms=0.75))
        ax.set_title(name, loc="left", color=color, fontsize=10, fontweight="bold")
        ax.set_title(_outcome(problem, runs), loc="right", fontsize=8, color="0.25")
    for ax in axes.flat[n_panels:]:
        ax.set_axis_off()
    for column in range(n_cols):  # x labels under the lowest panel of each column
        bottom = axes[(n_panels - 1 - column) // n_cols, column]
        bottom.xaxis.set_tick_params(labelbottom=True)
        bottom.set_xlabel("$x_1$", fontsize=9)
    for ax in axes[:, 0]:
        ax.set_ylabel("$x_2$", fontsize=9)
    _add_colorbar(fig, drawn, axes, contours, shrink=0.9 if n_rows > 1 else 0.8)

    n_starts = max((len(runs) for runs in paths.values()), default=0)
    handles = [
        *_start_handle(n_starts, "start"),
        *_end_handle(n_starts),
        *_landmark_handles(problem, marks=marks, stride=None),
    ]
    if handles:
        fig.legend(
            handles=handles,
            loc="outside lower center",
            ncols=len(handles),
            fontsize=9,
            frameon=False,
        )
    text = title if title is not None else problem.description
    fig.suptitle(textwrap.fill(text, max(35, 25 * n_cols)), fontsize=12)
    return fig


# Above this many paths in one overlay, step dots would bury the map: plain lines only.
_MAX_DOTTED_LINES = 12


def _check_trajectories(
    problem: AnalyticProblem,
    trajectories: Mapping[str, Any],
    max_starts: int | None,
    resolution: int,
) -> dict[str, np.ndarray]:
    """Validate the shared arguments; ``{name: float64 array (starts, steps + 1, 2)}``."""
    if problem.dim != 2:
        raise ValueError(f"problem must be 2-D to plot trajectories, got dim={problem.dim}")
    if max_starts is not None and (isinstance(max_starts, bool) or int(max_starts) < 1):
        raise ValueError(f"max_starts must be a positive integer or None, got {max_starts!r}")
    if int(resolution) < 2:
        raise ValueError(f"resolution must be >= 2, got {resolution!r}")
    return {
        str(name): _as_trajectories(str(name), value, max_starts)
        for name, value in trajectories.items()
    }


def _as_array(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # torch tensor, without importing torch here
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float64)


def _as_trajectories(name: str, value: Any, max_starts: int | None) -> np.ndarray:
    runs = _as_array(value)
    if runs.ndim == 2:  # one start: (steps + 1, 2)
        runs = runs[None]
    if runs.ndim != 3 or runs.shape[-1] != 2:
        raise ValueError(
            f"trajectories[{name!r}] must have shape (starts, steps + 1, 2), "
            f"got {tuple(runs.shape)}"
        )
    return runs if max_starts is None else runs[: int(max_starts)]


def _dot_stride(paths: Mapping[str, np.ndarray], most: int = 25) -> int:
    """Steps between dots on a path: the smallest round number (1, 2, 5, 10, 20, ...) that puts
    at most ``most`` dots on the longest path, so dots read as a clock, not as a blur."""
    steps = max((runs.shape[1] - 1 for runs in paths.values()), default=0)
    stride = 1
    while steps / stride > most:
        for factor in (2, 2.5, 2):  # 1 -> 2 -> 5 -> 10 -> 20 -> ...
            stride = round(stride * factor)
            if steps / stride <= most:
                break
    return stride


def _clip_path(xy: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, bool]:
    """Cut a path (steps + 1, 2) at its first non-finite point and where it first leaves a box
    twice the plot's size (moving that point onto the box edge so the line runs off the plot).
    Returns (points to draw, whether the path stopped on a non-finite value)."""
    finite = np.isfinite(xy).all(axis=1)
    stop = int(np.argmin(finite)) if not finite.all() else len(xy)
    xy = xy[:stop]
    margin = 0.5 * (hi - lo)
    outer_lo, outer_hi = lo - margin, hi + margin
    outside = ((xy < outer_lo) | (xy > outer_hi)).any(axis=1)
    if outside.any():
        k = int(np.argmax(outside))
        if k == 0:
            return xy[:0], False
        prev, cur = xy[k - 1], xy[k]
        step = cur - prev
        with np.errstate(divide="ignore", invalid="ignore"):
            t_hi = np.where(step > 0, (outer_hi - prev) / step, np.inf)
            t_lo = np.where(step < 0, (outer_lo - prev) / step, np.inf)
        t = float(min(t_hi.min(), t_lo.min(), 1.0))
        xy = np.concatenate([xy[:k], (prev + t * step)[None]])
        return xy, False
    return xy, stop < len(finite)


@dataclass
class _Drawn:
    """What ``_draw_runs`` marked for one optimizer, for the key."""

    diverged: int = 0  # runs that stopped on a non-finite value inside the map
    exits: int = 0  # runs whose last point lies outside the map


@dataclass
class _Marks:
    """What was marked on a whole figure: the key explains only what is there."""

    diverged: bool = False
    exits: bool = False

    def add(self, drawn: _Drawn) -> None:
        self.diverged |= drawn.diverged > 0
        self.exits |= drawn.exits > 0


def _draw_runs(
    ax: Axes,
    problem: AnalyticProblem,
    runs: np.ndarray,
    color: str,
    *,
    stride: int | None,
    crowd: int,
    ms: float = 1.0,
    style: tuple[str, str] = ("-", "o"),
    widen: float = 0.0,
    zorder: float = 3.0,
) -> _Drawn:
    """Draw one optimizer's paths (starts, steps + 1, 2): lines in ``style`` (line style,
    marker; dotted every ``stride`` steps), the end point in the marker, start markers, an x
    where a run diverged, and a triangle on the edge where a path ends outside the map. Lines
    get thinner and fainter as ``crowd`` (paths sharing the axes) grows, ``widen`` points wider
    for offset drawing order; ``ms`` scales the markers."""
    (x_lo, x_hi), (y_lo, y_hi) = problem.bounds
    lo, hi = np.array([x_lo, y_lo]), np.array([x_hi, y_hi])
    lw, alpha = (1.7, 0.95) if crowd <= 4 else (1.4, 0.85) if crowd <= 16 else (1.0, 0.6)
    line, marker = style
    dots = {} if stride is None else {"marker": "o", "ms": 3.2 * ms, "markevery": (stride, stride)}
    drawn = _Drawn()
    for run in runs:
        xy, stopped = _clip_path(run, lo, hi)
        if len(xy) == 0:
            continue
        ax.plot(
            xy[:, 0],
            xy[:, 1],
            color=color,
            lw=lw + widen,
            ls=line,
            alpha=alpha,
            zorder=zorder,
            **dots,
        )
        ax.plot(*xy[0], ls="", zorder=5, **_scaled(_START, ms))
        if stopped:
            drawn.diverged += 1
            ax.plot(*xy[-1], ls="", color=color, zorder=5, **_scaled(_DIVERGED, ms))
            continue
        exit_point = _exit_point(xy, lo, hi)
        if exit_point is None:
            # Above the minimum's star (zorder 6): many paths end on it.
            ax.plot(*xy[-1], ls="", marker=marker, color=color, zorder=7, **_scaled(_END, ms))
        else:
            drawn.exits += 1
            point, side = exit_point
            ax.plot(
                *point,
                ls="",
                marker=_EXIT_MARKER[side],
                color=color,
                zorder=6,
                clip_on=False,
                **_scaled(_EXIT, ms),
            )
    return drawn


def _distance_note(problem: AnalyticProblem, run: np.ndarray) -> str:
    """ ": ends 3e-09 from the minimum" for one path, so ends hidden under the minimum's star
    (several optimizers often finish on it) still read apart; "" without minima."""
    minima = problem.minima.numpy()  # (k, 2)
    finite = run[np.isfinite(run).all(axis=1)]
    if not len(minima) or not len(finite):
        return ""
    distance = float(np.linalg.norm(minima - finite[-1], axis=1).min())
    return f"  {distance:.0e}"


# Triangles pointing out of the map through the side a path left by.
_EXIT_MARKER = {"left": "<", "right": ">", "bottom": "v", "top": "^"}


def _exit_point(xy: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, str] | None:
    """Where a path whose last point is outside the box [lo, hi] last crossed its edge, and
    which side; None when the path ends inside (its end marker is then visible)."""
    inside = ((xy >= lo) & (xy <= hi)).all(axis=1)
    if inside[-1] or not inside.any():
        return None
    k = len(xy) - 1 - int(np.argmax(inside[::-1]))  # last point inside; k + 1 is outside
    prev, step = xy[k], xy[k + 1] - xy[k]
    best = (1.0, "right")
    for axis, (side_lo, side_hi) in enumerate((("left", "right"), ("bottom", "top"))):
        if step[axis] > 0:
            best = min(best, ((hi[axis] - prev[axis]) / step[axis], side_hi))
        elif step[axis] < 0:
            best = min(best, ((lo[axis] - prev[axis]) / step[axis], side_lo))
    t, side = best
    return np.clip(prev + t * step, lo, hi), side


def _outcome(problem: AnalyticProblem, runs: np.ndarray) -> str:
    """Panel caption like "7/8 reached, 1 diverged" ("escaped" on unbounded problems), counted
    as ``ravine.study`` counts them from the loss at each position: reached is at or below
    ``problem.target`` before any non-finite loss (and, for bounded problems, still there at
    the last step); diverged is a non-finite loss first, whether or not the path left the map."""
    import torch

    if len(runs) == 0 or runs.shape[1] == 0:
        return ""
    with torch.no_grad():
        f = problem(torch.from_numpy(runs)).numpy()  # (starts, steps + 1)
    hit = f <= problem.target  # NaN compares False; -inf (escaped for good) counts
    bad = ~np.isfinite(f)
    first_hit = np.where(hit.any(axis=1), hit.argmax(axis=1), np.inf)
    first_bad = np.where(bad.any(axis=1), bad.argmax(axis=1), np.inf)
    diverged = first_bad < first_hit
    reached = np.isfinite(first_hit) & ~diverged
    if not problem.escape:
        reached &= f[:, -1] <= problem.target
    text = f"{int(reached.sum())}/{len(runs)} {'escaped' if problem.escape else 'reached'}"
    return text + (f", {int(diverged.sum())} diverged" if diverged.any() else "")


def _scaled(style: dict[str, Any], factor: float) -> dict[str, Any]:
    """A marker style with its size and edge width scaled (smaller markers for small panels)."""
    return {k: v * factor if k in ("ms", "mew") else v for k, v in style.items()}


def _draw_landmarks(ax: Axes, problem: AnalyticProblem, *, ms: float = 1.0) -> None:
    minima = problem.minima.numpy()  # (k, 2)
    if len(minima):
        ax.plot(minima[:, 0], minima[:, 1], ls="", zorder=6, **_scaled(_MINIMUM, ms))
    saddles = problem.saddle_points.numpy()  # (s, 2)
    if len(saddles):
        ax.plot(saddles[:, 0], saddles[:, 1], ls="", zorder=6, **_scaled(_SADDLE, ms))


def _start_handle(n_starts: int, label: str) -> list[Any]:
    from matplotlib.lines import Line2D

    return [Line2D([], [], ls="", label=label, **_START)] if n_starts else []


def _end_handle(n_paths: int) -> list[Any]:
    from matplotlib.lines import Line2D

    style = {**_END, "marker": "o", "color": "0.55"}
    return [Line2D([], [], ls="", label="end (last step)", **style)] if n_paths else []


def _landmark_handles(problem: AnalyticProblem, *, marks: _Marks, stride: int | None) -> list[Any]:
    """Legend entries for what ``_draw_landmarks``, ``_draw_map`` and ``_draw_runs`` mark."""
    from matplotlib.lines import Line2D

    handles = []
    if len(problem.minima):
        label = "global minimum" if len(problem.minima) == 1 else "global minima"
        handles.append(Line2D([], [], ls="", label=label, **_MINIMUM))
    if len(problem.saddle_points):
        handles.append(Line2D([], [], ls="", label="saddle point", **_SADDLE))
    if problem.escape:
        label = f"escaped: f < {problem.target:g}"
        handles.append(Line2D([], [], color="black", lw=1.2, ls="--", label=label))
    if marks.diverged:
        label = "diverged (last finite point)"
        handles.append(Line2D([], [], ls="", color="black", label=label, **_DIVERGED))
    if marks.exits:
        label = "left the map here, ended outside"
        handles.append(Line2D([], [], ls="", marker=">", color="0.55", label=label, **_EXIT))
    if stride is not None and stride > 1:
        label = f"dots every {stride} steps"
        handles.append(Line2D([], [], ls="", marker="o", ms=3.2, color="0.3", label=label))
    return handles


def _frame(ax: Axes, problem: AnalyticProblem) -> None:
    (x_lo, x_hi), (y_lo, y_hi) = problem.bounds
    ax.set_xlim(x_lo, x_hi)
    ax.set_ylim(y_lo, y_hi)
    if 1 / 3 <= (y_hi - y_lo) / (x_hi - x_lo) <= 3:
        ax.set_aspect("equal")


@dataclass(frozen=True)
class _ContourMap:
    """A problem's contour map, computed once and drawn on any number of axes."""

    x: np.ndarray  # (resolution, resolution) grid coordinates
    y: np.ndarray  # (resolution, resolution)
    z: np.ndarray  # (resolution, resolution) f on the grid
    shown: np.ndarray  # (resolution, resolution) what the levels cut: f - f*, clipped
    levels: np.ndarray
    norm: Any  # a matplotlib Normalize, shared by every panel and the colour bar
    extend: str
    label: str  # colour bar label
    unbounded: bool  # unbounded below: a solid contour marks the saddle value 0
    escape_target: float | None  # dashed contour at the escape target, or None


def _contour_map(problem: AnalyticProblem, resolution: int) -> _ContourMap | None:
    """Levels for ``problem`` on a ``resolution``-square grid; None for a flat or non-finite map."""
    import torch
    from matplotlib.colors import LogNorm, Normalize
    from matplotlib.ticker import MaxNLocator

    (x_lo, x_hi), (y_lo, y_hi) = problem.bounds
    gx, gy = np.meshgrid(np.linspace(x_lo, x_hi, resolution), np.linspace(y_lo, y_hi, resolution))
    with torch.no_grad():
        z = problem(torch.from_numpy(np.stack([gx, gy], axis=-1))).numpy()

    finite = z[np.isfinite(z)]
    if finite.size == 0 or np.ptp(finite) == 0:
        return None
    if problem.min_value is None:
        # Unbounded below: levels symmetric about the saddle value 0, clipped at the quantiles
        # so the far corners do not flatten the middle.
        span = float(np.quantile(np.abs(finite), 0.98)) or float(np.abs(finite).max())
        levels = MaxNLocator(20, symmetric=True).tick_values(-span, span)
        dashed = problem.target if -span < problem.target < span else None
        shown = np.clip(z, -span, span)
        norm = Normalize(-span, span)
        return _ContourMap(gx, gy, z, shown, levels, norm, "neither", "$f$", True, dashed)

    gap = np.where(np.isfinite(z), np.maximum(z - problem.min_value, 0.0), np.nan)
    top = float(np.nanquantile(gap, 0.99))
    bottom = float(np.nanquantile(gap, 0.002))
    bottom = max(bottom, top * 1e-6, np.finfo(np.float64).tiny)
    label = "$f - f^*$" if problem.min_value != 0 else "$f$"
    if top > 0 and top / bottom > 100:
        levels = 10.0 ** np.linspace(math.log10(bottom), math.log10(top), 18)
        shown = np.clip(gap, levels[0], None)
        norm = LogNorm(levels[0], levels[-1])
        return _ContourMap(
            gx, gy, z, shown, levels, norm, "max", label + " (log scale)", False, None
        )
    levels = MaxNLocator(15).tick_values(0.0, top if top > 0 else float(np.nanmax(gap)))
    norm = Normalize(levels[0], levels[-1])
    return _ContourMap(gx, gy, z, gap, levels, norm, "max", label, False, None)


def _draw_map(ax: Axes, contours: _ContourMap | None, *, lw: float = 0.5) -> Any:
    """Filled contours, contour lines and (unbounded problems) the saddle level and the dashed
    escape level on ``ax``, contour lines ``lw`` wide; returns the filled ``ContourSet`` for a colour bar (None: no map)."""
    import matplotlib
    from matplotlib.colors import ListedColormap

    if contours is None:
        return None
    m = contours
    # Pale greys only: the coloured paths must stay the loudest thing on the figure.
    cmap = ListedColormap(matplotlib.colormaps["Greys"](np.linspace(0.03, 0.5, 256)))
    filled = ax.contourf(
        m.x, m.y, m.shown, levels=m.levels, cmap=cmap, norm=m.norm, extend=m.extend
    )
    ax.contour(m.x, m.y, m.shown, levels=m.levels, colors="0.35", linewidths=lw, alpha=0.7)
    if m.unbounded:
        ax.contour(m.x, m.y, m.z, levels=[0.0], colors="0.2", linewidths=1.0)
    if m.escape_target is not None:
        ax.contour(
            m.x, m.y, m.z, levels=[m.escape_target], colors="black", linewidths=1.2, linestyles="--"
        )
    return filled


def _add_colorbar(
    fig: Figure,
    filled: Any,
    ax: Any,
    contours: _ContourMap | None,
    *,
    shrink: float = 0.8,
    location: str = "right",
) -> None:
    """One colour bar for ``filled`` next to ``ax`` (an axes or an array of them)."""
    from matplotlib.colors import LogNorm
    from matplotlib.ticker import LogLocator

    if filled is None or contours is None:
        return
    cbar = fig.colorbar(filled, ax=ax, shrink=shrink, pad=0.02, location=location)
    if isinstance(contours.norm, LogNorm):
        cbar.locator = LogLocator()
        cbar.update_ticks()
    cbar.set_label(contours.label)


# ----------------------------------------------------------------------------- loss curves


def plot_loss_curves(
    title: str,
    losses: Mapping[str, Any],
    path: str | os.PathLike[str],
    *,
    target: float | None = None,
    log: bool = True,
    band: tuple[float, float] = (25.0, 75.0),
    ylabel: str = "loss",
    max_lines: int = 32,
) -> Path:
    """Loss per step: every optimizer's median across starts on one axes, then one small panel
    per optimizer with each of its starts; save, return path.

    One axes of overlapping translucent bands (eight optimizers) reads as a muddy area, and a
    per-step percentile band of spiky runs (Adam on Rosenbrock) shows spikes that are no run's
    path. So the overview draws medians only, each optimizer in its colour and line style, and
    each small panel draws that optimizer's starts as thin lines (a spike is then visibly one
    run's) with its median bold over the other optimizers' medians in grey. With more than
    ``max_lines`` starts, a panel draws the ``band`` percentiles instead of every start.

    Args:
      title: figure title.
      losses: ``{optimizer name: array (starts, steps + 1)}`` (numpy or torch; 1-D is one
        start). NaN or +Inf marks a diverged run and counts as the worst value, so a median
        line that leaves the top of the plot means most starts diverged; the key counts them.
      path: ``.png``, or ``.svg`` (then a ``.png`` is written next to it too).
      target: draws a dashed line at this loss (e.g. ``problem.target``).
      log: log-scale y when every value is >= 0 (pass ``loss - min_value``); values that are
        0 sit on the bottom edge. With negative values (saddles) it falls back to symlog.
        False: linear, except when runs escape to values more than 1e3 times the step-0
        magnitude below zero (problems unbounded below): symlog then, so the order in which
        runs escape stays readable rather than every curve leaving the bottom of the plot.
      band: lower and upper percentiles across starts drawn in a panel with more than
        ``max_lines`` starts; ``(0, 100)`` is min-max.
      ylabel: y-axis label.
      max_lines: most starts a panel draws one by one.
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    lo_pct, hi_pct = (float(b) for b in band)
    if not 0 <= lo_pct <= 50 <= hi_pct <= 100:
        raise ValueError(
            f"band must be (lower, upper) percentiles with lower <= 50 <= upper, got {band!r}"
        )
    if target is not None and not math.isfinite(float(target)):
        raise ValueError(f"target must be finite or None, got {target!r}")

    curves: dict[str, np.ndarray] = {}
    for name, value in losses.items():
        arr = _as_array(value)
        if arr.ndim == 1:
            arr = arr[None]
        if arr.ndim != 2 or arr.shape[1] == 0 or arr.shape[0] == 0:
            raise ValueError(
                f"losses[{name!r}] must have shape (starts, steps + 1), got {tuple(arr.shape)}"
            )
        curves[str(name)] = arr
    colors = optimizer_colors(curves)
    styles = optimizer_styles(curves)
    start_values = np.concatenate([a[:, 0] for a in curves.values()] or [np.zeros(0)])
    start_values = start_values[np.isfinite(start_values)]
    if target is not None:
        start_values = np.append(start_values, float(target))
    ref = 1e3 * (float(np.abs(start_values).max()) if start_values.size else 1.0)
    curves = {name: _nan_as_extreme(arr, ref) for name, arr in curves.items()}

    stats: dict[str, np.ndarray] = {}  # name -> (3, steps + 1): lower, median, upper
    with np.errstate(invalid="ignore", over="ignore"):
        for name, arr in curves.items():
            stats[name] = np.percentile(arr, [lo_pct, 50.0, hi_pct], axis=0, method="nearest")
    # Limits from what is drawn: every start where a panel draws them, else the band.
    shown = [a if len(a) <= max_lines else stats[n] for n, a in curves.items()]
    values = np.concatenate([s.ravel() for s in shown] or [np.zeros(0)])
    values = values[np.isfinite(values)]
    if target is not None:
        values = np.append(values, float(target))
    scale, bottom, top, linthresh = _y_axis(values, ref, log)

    panels = len(curves) > 1
    n_cols = min(4, max(len(curves), 1))
    n_rows = math.ceil(len(curves) / n_cols) if panels else 0
    fig = Figure(figsize=(11.0, 4.6 + 2.3 * n_rows), layout="constrained")
    top_fig, grid_fig = fig.subfigures(2, 1, height_ratios=[4.6, max(2.3 * n_rows, 1e-3)])
    ax = top_fig.add_subplot()
    grid = (
        grid_fig.subplots(n_rows, n_cols, sharex=True, sharey=True, squeeze=False)
        if panels
        else np.zeros((0, 0))
    )
    every_ax = [ax, *grid.flat]
    for a in every_ax:  # scale and limits first: autoscaling a diverged 1e300 would overflow
        _loss_scale(a, scale, bottom, top, linthresh, numticks=10 if a is ax else 5)
    n_steps = max((a.shape[1] - 1 for a in curves.values()), default=1) or 1

    handles: list[Any] = []
    medians = {n: _for_display(stats[n][1], scale, bottom, top) for n in curves}
    for order, (name, arr) in enumerate(curves.items()):
        steps = np.arange(arr.shape[1])
        diverged = int((~np.isfinite(arr) & (arr > 0)).any(axis=1).sum())
        label = name if not diverged else f"{name} ({diverged}/{len(arr)} diverged)"
        line = styles[name][0]
        # Offset drawing order, as on the trajectory map: medians that coincide stay visible.
        widen = 1.0 * (len(curves) - 1 - order) / max(len(curves) - 1, 1)
        ax.plot(
            steps,
            medians[name],
            color=colors[name],
            lw=1.6 + widen,
            ls=line,
            zorder=3 + order / 100,
        )
        handles.append(Line2D([], [], color=colors[name], lw=2, ls=line, label=label))
        if not panels:
            _draw_starts(ax, arr, stats[name], colors[name], scale, bottom, top, max_lines)
    for panel, (name, arr) in zip(grid.flat, curves.items(), strict=False):
        for other in curves:  # context: where the others' medians run
            if other != name:
                panel.plot(np.arange(len(medians[other])), medians[other], color="0.8", lw=0.9)
        _draw_starts(panel, arr, stats[name], colors[name], scale, bottom, top, max_lines)
        panel.plot(
            np.arange(arr.shape[1]), medians[name], color=colors[name], lw=2.0, ls=styles[name][0]
        )
        panel.set_title(name, loc="left", color=colors[name], fontsize=10, fontweight="bold")
    for panel in grid.flat[len(curves) :]:
        panel.set_axis_off()
    if target is not None:
        for a in every_ax[: 1 + len(curves) * panels]:
            a.axhline(float(target), color="black", ls="--", lw=1.0)
        handles.append(Line2D([], [], color="black", ls="--", lw=1.0, label=f"target {target:g}"))
    for a in every_ax:
        a.set_xlim(0, n_steps)
        a.grid(True, which="major", alpha=0.3)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(textwrap.fill(str(title), 90), fontsize=11)
    for column in range(n_cols if panels else 0):  # x labels under the lowest panel of each column
        bottom_panel = grid[(len(curves) - 1 - column) // n_cols, column]
        bottom_panel.xaxis.set_tick_params(labelbottom=True)
        bottom_panel.set_xlabel("step", fontsize=9)
    for a in grid[:, 0] if panels else ():
        a.set_ylabel(ylabel, fontsize=9)
    sizes = {len(a) for a in curves.values()}
    band_text = f"{lo_pct:g}-{hi_pct:g}th percentile band over the starts"
    if max(sizes, default=0) <= max_lines:
        what = "each start (thin)"
    elif min(sizes) > max_lines:
        what = band_text
    else:
        what = f"each start (thin; above {max_lines} starts the {band_text})"
    if not panels and curves:  # one optimizer: its starts are on the overview
        handles.insert(1, Line2D([], [], color=colors[next(iter(curves))], lw=0.6, label=what))
    if panels:
        grid_fig.suptitle(
            f"one panel per optimizer: {what}, its median (bold); grey: the other optimizers' "
            "medians",
            fontsize=9,
            color="0.25",
        )
    key_beside(ax, handles, fontsize=9, title="median over starts", title_fontsize=8)
    return save_figure(fig, path)


def _loss_scale(
    ax: Axes, scale: str, bottom: float, top: float, linthresh: float, numticks: int = 10
) -> None:
    """Scale and limits of a loss axis; ``numticks`` labels at most (small panels take fewer)."""
    from matplotlib.ticker import LogLocator

    if scale == "log":
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(numticks=numticks))
    elif scale == "symlog":
        ax.set_yscale("symlog", linthresh=linthresh)
        ax.yaxis.get_major_locator().set_params(numticks=numticks)  # every 2nd decade past ~18
    ax.set_ylim(bottom, top)


def _draw_starts(
    ax: Axes,
    runs: np.ndarray,
    stats: np.ndarray,
    color: str,
    scale: str,
    bottom: float,
    top: float,
    max_lines: int,
) -> None:
    """One optimizer's starts (starts, steps + 1) as thin lines, or its percentile band."""
    steps = np.arange(runs.shape[1])
    if len(runs) <= max_lines:
        for run in runs:
            ax.plot(steps, _for_display(run, scale, bottom, top), color=color, lw=0.6, alpha=0.45)
    else:
        lower, upper = (_for_display(s, scale, bottom, top) for s in (stats[0], stats[2]))
        ax.fill_between(steps, lower, upper, color=color, alpha=0.25, lw=0)


def _nan_as_extreme(arr: np.ndarray, ref: float) -> np.ndarray:
    """NaN -> +Inf (a diverged run is the worst run), except after the run has already gone
    below ``-ref``: a run escaping to -Inf on an unbounded problem overflows into NaN
    (``-inf + inf``), and that is an escape, not a divergence."""
    nan = np.isnan(arr)
    if not nan.any():
        return arr
    escaped = np.maximum.accumulate(np.where(np.isnan(arr), False, arr < -ref), axis=1)
    return np.where(nan, np.where(escaped, -np.inf, np.inf), arr)


def _y_axis(values: np.ndarray, ref: float, log: bool) -> tuple[str, float, float, float]:
    """(scale, bottom, top, symlog linthresh) for the finite ``values`` to show.

    The limits cover the values but stay below ``ref`` (1e3 times the largest magnitude at
    step 0, or of the target): a run beyond that has diverged and simply leaves the plot.
    Values below ``-ref`` are runs escaping down a problem unbounded below, which is progress:
    the axis becomes symlog and reaches down to them (at most ``_DEEPEST_DECADES`` decades
    further), so how fast each run escapes stays readable instead of leaving the plot.
    """
    if values.size == 0:
        return ("log", 1e-3, 1.0, 1.0) if log else ("linear", 0.0, 1.0, 1.0)
    ref = ref or float(np.abs(values).max()) or 1.0
    deep = values[values < -ref]
    values = values[np.abs(values) <= ref]
    if values.size == 0:
        if deep.size == 0:
            return ("linear", -ref, ref, 1.0)
        values = np.array([-ref])
    lo, hi = float(values.min()), float(values.max())
    peak = max(abs(lo), abs(hi))
    if log and lo >= -1e-12 * peak and hi > 0 and deep.size == 0:  # >= 0 up to rounding: log
        lo = float(values[values > 0].min())
        return "log", lo / 2.0, hi * 2.0, 1.0
    if deep.size or (log and lo < 0):
        # symlog: linear within +/- linthresh around 0, log outside; 1e-4 of the range near the
        # start keeps "stuck at the saddle value 0" readable without spending decades on
        # rounding noise, and the escape target (about -1) a decade into the log part.
        linthresh = 10.0 ** math.floor(math.log10(1e-4 * peak))
        if deep.size:
            lo = max(float(deep.min()), -ref * 10.0**_DEEPEST_DECADES) * 2.0
        else:
            lo *= 1.5
        return "symlog", lo, (hi * 1.5 if hi > 0 else linthresh), linthresh
    pad = 0.05 * (hi - lo) or 0.5 * (abs(hi) or 1.0)
    return "linear", lo - pad, hi + pad, 1.0


# A loss axis reaches at most this many decades below -ref for runs escaping to -inf.
_DEEPEST_DECADES = 30


def _for_display(y: np.ndarray, scale: str, bottom: float, top: float) -> np.ndarray:
    """Map values beyond the limits (Inf included) just past the edge, so a diverged or escaped
    run visibly leaves the plot, and the renderer never sees 1e300; on a log axis values below
    the bottom (zeros included) sit on the bottom edge."""
    y = y.astype(np.float64, copy=True)
    if scale == "log":
        y[y > top] = top * 10.0
        y[y < bottom] = bottom
    else:
        span = top - bottom
        y[y > top] = top + span
        y[y < bottom] = bottom - span
    return y


# ----------------------------------------------------------------------------- saving


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Save ``fig`` atomically as PNG (or SVG plus a PNG beside it); every ravine figure."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == "":
        path, suffix = path.with_suffix(".png"), ".png"
    if suffix not in (".png", ".svg"):
        raise ValueError(f"path must end in .png or .svg, got {str(path)!r}")
    targets = [path] if suffix == ".png" else [path, path.with_suffix(".png")]
    for target in targets:
        # A unique temporary per write (a fixed name let two writers collide), checksummed.
        fmt = target.suffix[1:].lower()
        atomic_write(target, lambda handle, fmt=fmt: fig.savefig(handle, format=fmt, dpi=_DPI))
    return path
