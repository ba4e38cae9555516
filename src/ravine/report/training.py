"""Figures of a training run: loss and accuracy per epoch, train vs held-out."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def plot_training_curves(
    history: Sequence[dict[str, Any]], path: str | os.PathLike[str], *, title: str = ""
) -> Path:
    """Loss (log scale) and, for classification, accuracy per epoch; one line per split.

    ``history`` holds metrics.jsonl's records: ``train_loss``, ``test_loss``, optionally
    ``val_loss`` and the matching ``*_accuracy`` keys.
    """
    from matplotlib.figure import Figure

    epochs = [r["epoch"] for r in history]
    splits = [s for s in ("train", "val", "test") if history and f"{s}_loss" in history[0]]
    has_accuracy = bool(history) and "train_accuracy" in history[0]
    fig = Figure(figsize=(10 if has_accuracy else 5.5, 4), layout="constrained")
    axes = fig.subplots(1, 2 if has_accuracy else 1, squeeze=False)[0]
    styles = {"train": ("tab:blue", "-"), "val": ("tab:orange", "--"), "test": ("tab:green", "-.")}
    for split in splits:
        color, line = styles[split]
        axes[0].plot(epochs, [r[f"{split}_loss"] for r in history], line, color=color, label=split)
        if has_accuracy:
            values = [100 * r[f"{split}_accuracy"] for r in history]
            axes[1].plot(epochs, values, line, color=color, label=split)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("loss")
    if has_accuracy:
        axes[1].set_ylabel("accuracy (%)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    from ravine.report.plots import save_figure

    return save_figure(fig, path)


def plot_curvature(
    records: Sequence[dict[str, Any]],
    episodes: Sequence[tuple[int, int, str]],
    path: str | os.PathLike[str],
    *,
    every: int = 1,
) -> Path:
    """Loss on the tracker's batch with saddle / flat episodes shaded, and the extreme
    Hessian eigenvalues, per step (records from ``CurvatureTracker.to_records()``)."""
    from matplotlib.figure import Figure

    steps = [r["step"] for r in records]
    fig = Figure(figsize=(8, 5.5), layout="constrained")
    loss_ax, eig_ax = fig.subplots(2, 1, sharex=True)
    loss_ax.plot(steps, [r["loss"] for r in records], color="black", lw=1.2, label="loss")
    colors = {"saddle": "tab:red", "flat": "tab:orange"}
    labelled = set()
    for first, last, kind in episodes:
        for ax in (loss_ax, eig_ax):
            ax.axvspan(
                first - every / 2,
                last + every / 2,
                color=colors.get(kind, "tab:gray"),
                alpha=0.2,
                label=None if (kind in labelled or ax is eig_ax) else f"{kind} episode",
            )
        labelled.add(kind)
    loss_ax.set_yscale("log")
    loss_ax.set_ylabel("loss (tracker batch)")
    loss_ax.legend(loc="upper right")
    eig_ax.plot(steps, [r["top"] for r in records], color="tab:blue", label="largest eigenvalue")
    eig_ax.plot(
        steps, [r["bottom"] for r in records], color="tab:green", label="smallest eigenvalue"
    )
    eig_ax.axhline(0, color="gray", lw=0.8)
    eig_ax.set_yscale("symlog", linthresh=1e-3)
    eig_ax.margins(y=0.15)
    eig_ax.set_xlabel("step")
    eig_ax.set_ylabel("Hessian eigenvalue")
    eig_ax.legend(loc="upper right")
    for ax in (loss_ax, eig_ax):
        ax.grid(alpha=0.3)
    from ravine.report.plots import save_figure

    return save_figure(fig, path)


def draw_run_figures(result, config) -> list[Path]:
    """The figures of a finished training run, into its folder: ``curves.png`` and, for
    several members, ``restarts.png`` (the trainer writes data only; figures are drawn here).

    ``result`` is what :func:`ravine.train.train` returned, ``config`` its config.
    """
    import math

    from ravine.report.restarts import plot_restart_losses

    out = Path(result.out_dir)
    if not hasattr(result, "members"):  # one network
        title = f"{config.dataset}: {config.model}"
        return [plot_training_curves(result.history, out / "curves.png", title=title)]
    n = len(result.members)
    title = f"{config.dataset}: {config.model}, {n} restarts ({config.optimizer})"
    written = [plot_training_curves(result.history, out / "curves.png", title=f"{title}, medians")]
    splits = [
        s for s in ("train", "val", "test") if result.final and f"{s}_loss" in result.final[0]
    ]
    losses = {s: [m.get(f"{s}_loss", math.nan) for m in result.final] for s in splits}
    written.append(
        plot_restart_losses(losses, out / "restarts.png", diverged=result.diverged, title=title)
    )
    return written
