"""Figures of gradient health (:mod:`ravine.probe.gradients`): the gradient-flow heatmap
(layers x steps, log10 gradient norm) and per-layer activation histograms.

Built on ``matplotlib.figure.Figure`` (Agg, no pyplot); files are replaced atomically.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ravine.probe.gradients import GradientMonitor, GradientRecord, LayerStats, history_array
from ravine.report.axes import log_labels
from ravine.report.plots import save_figure

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["plot_activation_histograms", "plot_gradient_flow", "plot_gradient_profile"]


def plot_gradient_flow(
    history: GradientMonitor | Iterable[GradientRecord],
    path: str | os.PathLike[str],
    *,
    title: str = "Gradient flow",
) -> Path:
    """Heatmap of log10 gradient norm, one row per layer (input at the top) and one column per
    record. Vanishing gradients show as a top-to-bottom colour ramp; exploding ones as bright
    rows or columns. Missing, zero or NaN norms are grey; infinite ones are marked with "x".

    Args:
        history: a :class:`GradientMonitor` or its ``history``.
        path: a ``.png`` (or ``.svg``, written with a ``.png`` beside it).
        title: figure title.

    Returns the path written.
    """
    from matplotlib.figure import Figure

    layers, steps, values = history_array(history, "grad_norm")
    if not steps:
        raise ValueError("history is empty: record at least one step before plotting")
    grid = np.asarray(values, dtype=float)  # (layers, records)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log10(grid)
    shown = np.ma.masked_invalid(logs)

    height = max(3.4, 0.32 * len(layers) + 2.0)
    fig = Figure(figsize=(8.0, height), layout="constrained")
    ax = fig.add_subplot()
    cmap = _cmap("viridis").with_extremes(bad="#d0d0d0")
    finite = logs[np.isfinite(logs)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (-1.0, 1.0)
    if vmax - vmin < 1:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    image = ax.imshow(
        shown, aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest"
    )
    rows, cols = np.nonzero(np.isinf(grid))
    if rows.size:
        ax.scatter(cols, rows, marker="x", color="red", s=20, label="Inf")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_yticks(range(len(layers)), layers, fontsize=8)
    ticks = _step_ticks(len(steps))
    ax.set_xticks(ticks, [str(steps[i]) for i in ticks], fontsize=8)
    ax.set_xlabel("update (the gradient before it)")
    ax.set_ylabel("layer (input at top)")
    ax.set_title(title)
    bar = fig.colorbar(image, ax=ax, pad=0.02)
    bar.set_label("log10 ‖∂L/∂W‖")
    fig.supxlabel(
        textwrap.fill(
            "each column: the weight gradient's norm before one update. Vanishing gradients: "
            "darker towards the input (top); exploding: bright rows or columns; grey: none",
            100,
        ),
        fontsize=8,
        color="0.3",
    )
    return save_figure(fig, path)


def plot_gradient_profile(
    history: GradientMonitor | Iterable[GradientRecord],
    path: str | os.PathLike[str],
    *,
    title: str = "Gradient flow through the layers",
    note: str = "",
) -> Path:
    """Per layer, input to output: the gradient norm and the weight norm (median over the
    records, bar: min to max), and their ratio, the relative size of a gradient step. For a
    few records of one network (``ravine probe``) this says more than a layers x steps
    heatmap: vanishing gradients fall towards the input (left), exploding ones rise.

    Args:
        history: a :class:`GradientMonitor` or its ``history``.
        path: a ``.png`` (or ``.svg``, written with a ``.png`` beside it).
        title: figure title.
        note: a line under the figure saying what the records are (which batches, whether
            the weights moved between them).

    Returns the path written.
    """
    from matplotlib.figure import Figure

    layers, steps, grads = history_array(history, "grad_norm")
    if not steps:
        raise ValueError("history is empty: record at least one step before plotting")
    _, _, weights = history_array(history, "weight_norm")
    grad = np.asarray(grads, dtype=float)  # (layers, records)
    weight = np.asarray(weights, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = grad / weight
    width = max(8.0, 1.1 * len(layers) + 3.5)
    fig = Figure(figsize=(width, 5.6), layout="constrained")
    norm_ax, ratio_ax = fig.subplots(2, 1, sharex=True, height_ratios=[1.4, 1])
    x = np.arange(len(layers))
    drawn = False
    for ax, values, label, style in (
        (norm_ax, grad, "gradient ‖∂L/∂W‖", ("tab:blue", "o")),
        (norm_ax, weight, "weights ‖W‖", ("0.45", "s")),
        (ratio_ax, ratio, "‖∂L/∂W‖ / ‖W‖", ("tab:purple", "D")),
    ):
        middle, low, high = _spread(values)
        ok = np.isfinite(middle) & (middle > 0)
        if not ok.any():
            continue
        drawn = True
        color, marker = style
        ax.errorbar(
            x[ok],
            middle[ok],
            yerr=[middle[ok] - low[ok], high[ok] - middle[ok]],
            color=color,
            marker=marker,
            ms=5,
            capsize=3,
            lw=1.4,
            label=label,
        )
    for ax, values in ((norm_ax, np.concatenate([grad, weight])), (ratio_ax, ratio)):
        positive = values[np.isfinite(values) & (values > 0)]
        if drawn and positive.size:
            ax.set_yscale("log")
            log_labels(ax.yaxis, float(positive.min()), float(positive.max()))
        ax.grid(alpha=0.3)
        ax.legend(
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            borderaxespad=0.0,
            fontsize=8,
            frameon=False,
        )
    norm_ax.set_ylabel("norm")
    ratio_ax.set_ylabel("relative gradient")
    ratio_ax.set_xticks(x, layers, fontsize=8, rotation=30 if len(layers) > 6 else 0)
    ratio_ax.set_xlabel("layer (input on the left)")
    fig.suptitle(title)
    caption = (note + "; " if note else "") + (
        f"median over {len(steps)} records, bar: min to max. Falling towards the input: "
        "vanishing gradients; rising: exploding"
    )
    fig.supxlabel(
        textwrap.fill(caption, int(13 * width)),
        fontsize=8,
        color="0.3",
    )
    return save_figure(fig, path)


def _spread(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(median, min, max) per row over its finite entries; NaN for a row with none."""
    out = np.full((3, len(values)), np.nan)
    for i, row in enumerate(values):
        row = row[np.isfinite(row)]
        if row.size:
            out[:, i] = np.median(row), row.min(), row.max()
    return out[0], out[1], out[2]


def plot_activation_histograms(
    samples: GradientMonitor | Mapping[str, Tensor | np.ndarray],
    path: str | os.PathLike[str],
    *,
    bins: int = 40,
    title: str = "Activations per layer (last forward pass)",
) -> Path:
    """One histogram per layer of the activation values of the most recent forward pass.

    Saturated sigmoids pile up at 0 and 1, dead ReLUs as a spike at 0, exploding activations
    as an ever wider x range down the layers. Each panel's title gives the layer, mean and std,
    and, given a monitor with a record, the activation and its dead / saturated fraction.

    Args:
        samples: a :class:`GradientMonitor` (its ``activation_samples``) or a mapping from
            layer name to values.
        path: a ``.png`` (or ``.svg``, written with a ``.png`` beside it).
        bins: histogram bins per panel.
        title: figure title.

    Returns the path written.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    last = {}
    if isinstance(samples, GradientMonitor):
        last = samples.history[-1].layers if samples.history else {}
        samples = samples.activation_samples
    if not samples:
        raise ValueError("no activation samples: run a forward pass with the monitor attached")
    if not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive int, got {bins!r}")
    names = list(samples)
    ncols = min(4, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig = Figure(figsize=(3.0 * ncols, 2.3 * nrows + 0.6))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        values = np.asarray(samples[name], dtype=float).ravel()
        finite = values[np.isfinite(values)]
        if finite.size:
            ax.hist(finite, bins=bins, color="#1f77b4", edgecolor="white", linewidth=0.3)
            label = f"{_heading(name, last.get(name))}\nmean {finite.mean():.3g}, std {finite.std():.3g}"
        else:
            ax.text(0.5, 0.5, "no finite values", ha="center", va="center", transform=ax.transAxes)
            label = name
        ax.set_title(label, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.set_yticks([])
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def _heading(name: str, stats: LayerStats | None) -> str:
    """``"hidden0.linear -> ReLU (dead 12%)"``: the layer, its activation and how it fails."""
    if stats is None:
        return name
    if stats.activation is None:
        return f"{name} (output)"  # no activation module follows: the layer's own output
    text = f"{name} → {stats.activation}"
    if stats.dead_fraction is not None:
        text += f" (dead {stats.dead_fraction:.0%})"
    if stats.saturated_fraction is not None:
        text += f" (saturated {stats.saturated_fraction:.0%})"
    return text


def _cmap(name: str):
    import matplotlib

    return matplotlib.colormaps[name]


def _step_ticks(n: int, most: int = 10) -> list[int]:
    stride = max(1, math.ceil(n / most))
    return list(range(0, n, stride))
