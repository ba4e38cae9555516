"""Figures of loss landscapes: surfaces (contour + 3-D), interpolation curves, trajectories.

Each function takes a result of :mod:`ravine.probe.landscape` (or one loaded back from its
``.npz``) and writes a PNG atomically. matplotlib is imported only when drawing (Agg, via
:class:`matplotlib.figure.Figure`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ravine.report.plots import save_figure

if TYPE_CHECKING:
    from ravine.probe.landscape import Interpolation, Surface

__all__ = ["plot_interpolation", "plot_surface", "plot_trajectory"]

_SPLIT_COLORS = {"train": "tab:blue", "test": "tab:orange", "data": "tab:blue"}


def _color(split: str, i: int) -> str:
    return _SPLIT_COLORS.get(split, ("tab:green", "tab:red", "tab:purple")[i % 3])


def _levels(z: np.ndarray, n: int = 20) -> np.ndarray:
    """Contour levels spaced in log(loss) when the loss is positive: minima stay readable."""
    finite = z[np.isfinite(z)]
    low, high = float(finite.min()), float(finite.max())
    if high <= low:
        return np.array([low - 1e-9, low + 1e-9])
    if low > 0:
        return np.geomspace(low, high, n)
    return np.linspace(low, high, n)


def _pick(surface: Surface, split: str | None) -> str:
    if split is None:
        return next(iter(surface.loss))
    if split not in surface.loss:
        raise ValueError(f"split must be one of {sorted(surface.loss)}; got {split!r}")
    return split


def plot_surface(
    surface: Surface,
    path: str | os.PathLike[str],
    *,
    splits: tuple[str, ...] | None = None,
    title: str = "",
    zmax: float | None = None,
) -> Path:
    """For each split: a filled contour (log-spaced levels) and a 3-D surface, side by side.

    Several splits (train, test) on the same axes share one colour scale so they compare.

    Args:
        surface: the result of :func:`ravine.probe.landscape.surface` (or ``trajectory``).
        path: the PNG to write.
        splits: which splits to draw (default all).
        title: figure title.
        zmax: clip the loss at this value (default: the largest finite value).
    """
    from matplotlib.figure import Figure

    names = list(surface.loss) if splits is None else [_pick(surface, s) for s in splits]
    fig = Figure(figsize=(11, 4.6 * len(names)), layout="constrained")
    everything = np.concatenate([surface.loss[s].ravel() for s in names])
    top = float(np.nanmax(everything[np.isfinite(everything)])) if zmax is None else zmax
    a, b = np.meshgrid(surface.alphas, surface.betas)
    for row, split in enumerate(names):
        z = np.clip(np.nan_to_num(surface.loss[split], nan=top, posinf=top), None, top)
        levels = _levels(np.clip(everything, None, top))
        ax = fig.add_subplot(len(names), 2, 2 * row + 1)
        filled = ax.contourf(a, b, z, levels=levels, cmap="viridis", extend="neither")
        ax.contour(a, b, z, levels=levels, colors="white", linewidths=0.4, alpha=0.5)
        ax.plot([0], [0], marker="*", color="red", markersize=12, linestyle="none")
        ax.set_xlabel(r"$\alpha$ (direction 1)")
        ax.set_ylabel(r"$\beta$ (direction 2)")
        ax.set_aspect("equal", adjustable="box")
        ax.set_title(f"{split} loss (contour, * = model)")
        fig.colorbar(filled, ax=ax, label="loss", format="%.3g")
        ax3 = fig.add_subplot(len(names), 2, 2 * row + 2, projection="3d")
        ax3.plot_surface(
            a, b, z, cmap="viridis", linewidth=0, antialiased=True, vmin=levels[0], vmax=levels[-1]
        )
        ax3.set_xlabel(r"$\alpha$")
        ax3.set_ylabel(r"$\beta$")
        ax3.set_zlabel("loss")
        ax3.set_title(f"{split} loss (surface)")
        ax3.view_init(elev=35, azim=-60)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_interpolation(
    interpolation: Interpolation,
    path: str | os.PathLike[str],
    *,
    title: str = "",
    labels: tuple[str, str] = ("start", "end"),
    log: bool = False,
) -> Path:
    """Loss (and accuracy, when present) along the interpolation, one line per split.

    Args:
        interpolation: the result of :func:`ravine.probe.landscape.interpolate`.
        path: the PNG to write.
        title: figure title.
        labels: names of the two end points (alpha 0 and 1), e.g. ``("init", "solution")``.
        log: log-scale loss axis.
    """
    from matplotlib.figure import Figure

    with_acc = bool(interpolation.accuracy)
    fig = Figure(figsize=(11 if with_acc else 6, 4), layout="constrained")
    axes = fig.subplots(1, 2 if with_acc else 1, squeeze=False)[0]
    alphas = interpolation.alphas
    for i, (split, loss) in enumerate(interpolation.loss.items()):
        axes[0].plot(alphas, loss, color=_color(split, i), label=split, linewidth=1.8)
        if split in interpolation.accuracy:
            axes[1].plot(
                alphas,
                interpolation.accuracy[split],
                color=_color(split, i),
                label=split,
                linewidth=1.8,
            )
    axes[0].set_ylabel("loss")
    if log:
        axes[0].set_yscale("log")
    if with_acc:
        axes[1].set_ylabel("accuracy")
        axes[1].set_ylim(-0.02, 1.02)
    for ax in axes:
        for x, name in zip((0.0, 1.0), labels, strict=True):
            ax.axvline(x, color="grey", linestyle="--", linewidth=0.8)
            ax.annotate(
                name,
                (x, 0.0),
                xycoords=("data", "axes fraction"),
                xytext=(3, 4),
                textcoords="offset points",
                color="grey",
            )
        ax.set_xlabel(
            rf"$\alpha$  ($\theta = (1-\alpha)\,\theta_{{{labels[0]}}}"
            rf" + \alpha\,\theta_{{{labels[1]}}}$)"
        )
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_trajectory(
    surface: Surface,
    path: str | os.PathLike[str],
    *,
    split: str | None = None,
    title: str = "",
) -> Path:
    """The training path over the loss contour on its PCA axes (explained variance labelled).

    Args:
        surface: the result of :func:`ravine.probe.landscape.trajectory`.
        path: the PNG to write.
        split: which split's loss to draw (default the first).
        title: figure title.
    """
    from matplotlib.figure import Figure

    split = _pick(surface, split)
    z = surface.loss[split]
    finite = z[np.isfinite(z)]
    top = float(finite.max())
    z = np.clip(np.nan_to_num(z, nan=top, posinf=top), None, top)
    levels = _levels(z)
    fig = Figure(figsize=(6.5, 5.5), layout="constrained")
    ax = fig.add_subplot()
    a, b = np.meshgrid(surface.alphas, surface.betas)
    filled = ax.contourf(a, b, z, levels=levels, cmap="viridis")
    lines = ax.contour(a, b, z, levels=levels[::2], colors="white", linewidths=0.5, alpha=0.6)
    ax.clabel(lines, fontsize=7, fmt="%.3g")
    fig.colorbar(filled, ax=ax, label=f"{split} loss", format="%.3g")
    p = surface.path
    if len(p):
        ax.plot(
            p[:, 0],
            p[:, 1],
            color="red",
            marker="o",
            markersize=3.5,
            linewidth=1.5,
            label="training path (a dot per saved epoch, numbered)",
        )
        if len(p) <= 30:  # number the saved epochs (0: the initialization) where they read
            for k, (x, y) in enumerate(p):
                ax.annotate(
                    str(k),
                    (x, y),
                    xytext=(4, 4),
                    textcoords="offset points",
                    fontsize=7,
                    color="white",
                    fontweight="bold",
                )
        ax.plot(
            p[0, 0],
            p[0, 1],
            marker="s",
            color="orange",
            markersize=8,
            linestyle="none",
            label="start",
        )
        ax.plot(
            p[-1, 0],
            p[-1, 1],
            marker="*",
            color="red",
            markersize=14,
            linestyle="none",
            label="end",
        )
        ax.legend(loc="best", fontsize=8)
    ev = surface.explained_variance
    if len(ev) == 2:
        ax.set_xlabel(f"1st PCA component: {100 * ev[0]:.1f}% of variance")
        ax.set_ylabel(f"2nd PCA component: {100 * ev[1]:.1f}% of variance")
    else:
        ax.set_xlabel("direction 1")
        ax.set_ylabel("direction 2")
    ax.set_title(title or "training path on its top-2 PCA directions")
    return save_figure(fig, path)
