"""Figures for optimizer comparisons: paths over a problem's contour map, and loss curves.

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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ravine.problems import AnalyticProblem

__all__ = [
    "OPTIMIZER_COLORS",
    "optimizer_color",
    "optimizer_colors",
    "plot_loss_curves",
    "plot_trajectories",
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
_DPI = 150
# Marker styles, shared by the plot and its legend.
_START = {"marker": "o", "ms": 6, "color": "white", "mec": "black", "mew": 0.9}
_MINIMUM = {"marker": "*", "ms": 17, "color": "gold", "mec": "black", "mew": 1.0}
_SADDLE = {"marker": "X", "ms": 11, "color": "white", "mec": "black"}
_DIVERGED = {"marker": "x", "ms": 8, "mew": 2.0}


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
    """Draw each optimizer's paths over the contour map of a 2-D ``problem``; save and return path.

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
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    if problem.dim != 2:
        raise ValueError(f"problem must be 2-D to plot trajectories, got dim={problem.dim}")
    if max_starts is not None and (isinstance(max_starts, bool) or int(max_starts) < 1):
        raise ValueError(f"max_starts must be a positive integer or None, got {max_starts!r}")
    if int(resolution) < 2:
        raise ValueError(f"resolution must be >= 2, got {resolution!r}")
    paths = {
        str(name): _as_trajectories(str(name), value, max_starts)
        for name, value in trajectories.items()
    }
    colors = optimizer_colors(paths)
    (x_lo, x_hi), (y_lo, y_hi) = problem.bounds
    lo, hi = np.array([x_lo, y_lo]), np.array([x_hi, y_hi])

    fig = Figure(figsize=(7.6, 5.6), layout="constrained")
    ax = fig.add_subplot()
    _draw_contours(fig, ax, problem, int(resolution))

    handles: list[Any] = []
    any_diverged = False
    for name, runs in paths.items():  # runs: (starts, steps + 1, 2)
        color = colors[name]
        diverged = 0
        for run in runs:
            xy, stopped = _clip_path(run, lo, hi)
            if len(xy) == 0:
                continue
            ax.plot(xy[:, 0], xy[:, 1], color=color, lw=1.4, alpha=0.85, zorder=3)
            ax.plot(*xy[-1], "o", ms=3.5, color=color, zorder=4)
            ax.plot(*xy[0], ls="", zorder=5, **_START)
            if stopped:
                diverged += 1
                ax.plot(*xy[-1], ls="", color=color, zorder=5, **_DIVERGED)
        any_diverged |= diverged > 0
        label = name if not diverged else f"{name} ({diverged}/{len(runs)} diverged)"
        handles.append(Line2D([], [], color=color, lw=2, marker="o", ms=3.5, label=label))
    if paths:
        n = max(len(runs) for runs in paths.values())
        handles.insert(0, Line2D([], [], ls="", label=f"start ({n} per optimizer)", **_START))

    minima = problem.minima.numpy()  # (k, 2)
    if len(minima):
        ax.plot(minima[:, 0], minima[:, 1], ls="", zorder=6, **_MINIMUM)
        label = "global minimum" if len(minima) == 1 else "global minima"
        handles.append(Line2D([], [], ls="", label=label, **_MINIMUM))
    saddles = problem.saddle_points.numpy()  # (s, 2)
    if len(saddles):
        ax.plot(saddles[:, 0], saddles[:, 1], ls="", zorder=6, **_SADDLE)
        handles.append(Line2D([], [], ls="", label="saddle point", **_SADDLE))
    if problem.escape:
        label = f"escaped: f < {problem.target:g}"
        handles.append(Line2D([], [], color="black", lw=1.2, ls="--", label=label))
    if any_diverged:
        label = "diverged (last finite point)"
        handles.append(Line2D([], [], ls="", color="black", label=label, **_DIVERGED))

    ax.set_xlim(x_lo, x_hi)
    ax.set_ylim(y_lo, y_hi)
    if 1 / 3 <= (y_hi - y_lo) / (x_hi - x_lo) <= 3:
        ax.set_aspect("equal")
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    ax.set_title(
        textwrap.fill(title if title is not None else problem.description, 60), fontsize=11
    )
    if handles:
        fig.legend(handles=handles, loc="outside right upper", fontsize=9, frameon=False)
    return _save(fig, path)


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


def _draw_contours(fig: Figure, ax: Axes, problem: AnalyticProblem, resolution: int) -> None:
    import matplotlib
    import torch
    from matplotlib.colors import ListedColormap, LogNorm, Normalize
    from matplotlib.ticker import LogLocator, MaxNLocator

    (x_lo, x_hi), (y_lo, y_hi) = problem.bounds
    xs = np.linspace(x_lo, x_hi, resolution)
    ys = np.linspace(y_lo, y_hi, resolution)
    gx, gy = np.meshgrid(xs, ys)  # (resolution, resolution) each
    with torch.no_grad():
        grid = torch.from_numpy(np.stack([gx, gy], axis=-1))
        z = problem(grid).numpy()  # (resolution, resolution)
    # Pale greys only: the coloured paths must stay the loudest thing on the figure.
    cmap = ListedColormap(matplotlib.colormaps["Greys"](np.linspace(0.03, 0.5, 256)))
    line_kw = {"colors": "0.35", "linewidths": 0.5, "alpha": 0.7}

    finite = z[np.isfinite(z)]
    if finite.size == 0 or np.ptp(finite) == 0:
        return
    if problem.min_value is not None:
        gap = np.where(np.isfinite(z), np.maximum(z - problem.min_value, 0.0), np.nan)
        top = float(np.nanquantile(gap, 0.99))
        bottom = float(np.nanquantile(gap, 0.002))
        bottom = max(bottom, top * 1e-6, np.finfo(np.float64).tiny)
        if top > 0 and top / bottom > 100:
            exps = np.linspace(math.log10(bottom), math.log10(top), 18)
            levels = 10.0**exps
            filled = np.clip(gap, levels[0], None)
            cs = ax.contourf(gx, gy, filled, levels=levels, cmap=cmap, norm=LogNorm(), extend="max")
            ax.contour(gx, gy, filled, levels=levels, **line_kw)
            cbar = fig.colorbar(cs, ax=ax, shrink=0.8, pad=0.02)
            cbar.locator = LogLocator()
            cbar.update_ticks()
        else:
            levels = MaxNLocator(15).tick_values(0.0, top if top > 0 else float(np.nanmax(gap)))
            cs = ax.contourf(gx, gy, gap, levels=levels, cmap=cmap, extend="max")
            ax.contour(gx, gy, gap, levels=levels, **line_kw)
            cbar = fig.colorbar(cs, ax=ax, shrink=0.8, pad=0.02)
        label = "$f - f^*$" if problem.min_value != 0 else "$f$"
        cbar.set_label(label + (" (log scale)" if isinstance(cs.norm, LogNorm) else ""))
    else:
        # Unbounded below: levels symmetric about the saddle value 0, clipped at the quantiles
        # so the far corners do not flatten the middle.
        span = float(np.quantile(np.abs(finite), 0.98)) or float(np.abs(finite).max())
        levels = MaxNLocator(20, symmetric=True).tick_values(-span, span)
        shown = np.clip(z, -span, span)
        cs = ax.contourf(gx, gy, shown, levels=levels, cmap=cmap, norm=Normalize(-span, span))
        ax.contour(gx, gy, shown, levels=levels, **line_kw)
        ax.contour(gx, gy, z, levels=[0.0], colors="0.2", linewidths=1.0)
        if -span < problem.target < span:
            ax.contour(
                gx, gy, z, levels=[problem.target], colors="black", linewidths=1.2, linestyles="--"
            )
        cbar = fig.colorbar(cs, ax=ax, shrink=0.8, pad=0.02)
        cbar.set_label("$f$")


# ----------------------------------------------------------------------------- loss curves


def plot_loss_curves(
    title: str,
    losses: Mapping[str, Any],
    path: str | os.PathLike[str],
    *,
    target: float | None = None,
    log: bool = True,
    band: tuple[float, float] = (10.0, 90.0),
    ylabel: str = "loss",
) -> Path:
    """Median loss per step across starts, with a percentile band, per optimizer; save it.

    Args:
      title: figure title.
      losses: ``{optimizer name: array (starts, steps + 1)}`` (numpy or torch; 1-D is one
        start). NaN or +Inf marks a diverged run and counts as the worst value, so a median
        line that leaves the top of the plot means most starts diverged; the legend counts them.
      path: ``.png``, or ``.svg`` (then a ``.png`` is written next to it too).
      target: draws a dashed line at this loss (e.g. ``problem.target``).
      log: log-scale y when every value is >= 0 (pass ``loss - min_value``); values that are
        0 sit on the bottom edge. With negative values (saddles) it falls back to symlog.
        False: linear.
      band: lower and upper percentiles across starts; ``(0, 100)`` is min-max.
      ylabel: y-axis label.
    """
    from matplotlib.figure import Figure

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
    values = np.concatenate([s.ravel() for s in stats.values()] or [np.zeros(0)])
    values = values[np.isfinite(values)]
    if target is not None:
        values = np.append(values, float(target))
    scale, bottom, top, linthresh = _y_axis(values, ref, log)

    fig = Figure(figsize=(7.6, 4.6), layout="constrained")
    ax = fig.add_subplot()
    # Scale and limits first: autoscaling over a diverged run's 1e300 would overflow.
    if scale == "log":
        ax.set_yscale("log")
    elif scale == "symlog":
        ax.set_yscale("symlog", linthresh=linthresh)
    ax.set_ylim(bottom, top)
    for name, arr in curves.items():
        lower, median, upper = (_for_display(s, scale, bottom, top) for s in stats[name])
        steps = np.arange(arr.shape[1])
        diverged = int((~np.isfinite(arr) & (arr > 0)).any(axis=1).sum())
        label = name if not diverged else f"{name} ({diverged}/{len(arr)} diverged)"
        ax.fill_between(steps, lower, upper, color=colors[name], alpha=0.18, lw=0)
        ax.plot(steps, median, color=colors[name], lw=1.8, label=label)
    if target is not None:
        ax.axhline(float(target), color="black", ls="--", lw=1.0, label=f"target {target:g}")
    ax.set_xlim(0, max((a.shape[1] - 1 for a in curves.values()), default=1) or 1)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="major", alpha=0.3)
    ax.set_title(textwrap.fill(str(title), 80), fontsize=11)
    band_name = "min-max" if (lo_pct, hi_pct) == (0.0, 100.0) else f"{lo_pct:g}-{hi_pct:g}th pct"
    if ax.get_legend_handles_labels()[0]:
        fig.legend(
            loc="outside right upper",
            fontsize=9,
            frameon=False,
            alignment="left",
            title=f"median over starts\nband: {band_name}",
            title_fontsize=8,
        )
    return _save(fig, path)


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

    The limits cover the values but stay within ``+/- ref`` (1e3 times the largest magnitude at
    step 0, or of the target): a run beyond that has diverged (or, on a saddle, escaped) and
    simply leaves the plot.
    """
    if values.size == 0:
        return ("log", 1e-3, 1.0, 1.0) if log else ("linear", 0.0, 1.0, 1.0)
    ref = ref or float(np.abs(values).max()) or 1.0
    values = values[np.abs(values) <= ref]
    if values.size == 0:
        return ("linear", -ref, ref, 1.0)
    lo, hi = float(values.min()), float(values.max())
    peak = max(abs(lo), abs(hi))
    if log and lo >= -1e-12 * peak and hi > 0:  # all >= 0 up to rounding noise: log scale
        lo = float(values[values > 0].min())
        return "log", lo / 2.0, hi * 2.0, 1.0
    if log and lo < 0:
        # symlog: linear within +/- linthresh around 0, log outside; 1e-4 of the range keeps
        # "stuck at the saddle value 0" readable without spending decades on rounding noise.
        linthresh = 10.0 ** math.floor(math.log10(1e-4 * peak))
        return "symlog", lo * 1.5, (hi * 1.5 if hi > 0 else linthresh), linthresh
    pad = 0.05 * (hi - lo) or 0.5 * (abs(hi) or 1.0)
    return "linear", lo - pad, hi + pad, 1.0


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


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == "":
        path, suffix = path.with_suffix(".png"), ".png"
    if suffix not in (".png", ".svg"):
        raise ValueError(f"path must end in .png or .svg, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    targets = [path] if suffix == ".png" else [path, path.with_suffix(".png")]
    for target in targets:
        tmp = target.with_name(f".{target.name}.tmp")
        try:
            fig.savefig(tmp, format=target.suffix[1:].lower(), dpi=_DPI)
            os.replace(tmp, target)  # atomic: a reader never sees half a file
        finally:
            tmp.unlink(missing_ok=True)
    return path
