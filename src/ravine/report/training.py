"""Figures of a training run: ``curves.png`` (loss and accuracy per epoch, each update's batch
loss, the learning rate, snapshot-cycle ends, the spread over restarts) and ``curvature.png``."""

from __future__ import annotations

import csv
import itertools
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ravine.report.axes import integer_ticks, key_beside, log_labels, symlog_for

_SPLITS = {  # colour, line style, what the number is
    "train": ("tab:blue", "-", "train (mean over the epoch's updates)"),
    "val": ("tab:orange", "--", "val (after each epoch)"),
    "test": ("tab:green", "-.", "test (after each epoch)"),
}


def read_steps(path: str | os.PathLike[str]) -> dict[str, list[float]]:
    """``steps.csv`` as columns (``step``, ``lr``, ``loss`` or ``loss_median`` / ``loss_min`` /
    ``loss_max`` for several members); empty when the file is missing or unreadable."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error):
        return {}
    columns: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            try:
                columns.setdefault(str(key), []).append(float(value))
            except (TypeError, ValueError):
                columns.setdefault(str(key), []).append(math.nan)
    return columns


def plot_training_curves(
    history: Sequence[dict[str, Any]],
    path: str | os.PathLike[str],
    *,
    title: str = "",
    steps: Mapping[str, Sequence[float]] | None = None,
    snapshots: int = 0,
) -> Path:
    """Loss (log scale) and, for classification, accuracy per epoch, one line per split; with
    ``steps`` (``read_steps``) also each update's batch loss and, when it changes, a panel of
    the learning rate per update; with ``snapshots`` the ends of the cosine cycles, where the
    snapshots are taken.

    ``history`` holds metrics.jsonl's records: ``train_loss``, ``test_loss``, optionally
    ``val_loss`` and the matching ``*_accuracy`` keys; records with ``per_member`` (several
    restarts) draw the median with a min-max band over the restarts. ``train`` is the mean of
    the loss over the epoch's updates (the weights change while it is measured); val and test
    are evaluated once after each epoch.
    """
    from matplotlib.figure import Figure

    history = list(history)
    steps = dict(steps or {})
    epochs = [float(r["epoch"]) for r in history]
    splits = [s for s in _SPLITS if history and f"{s}_loss" in history[0]]
    has_accuracy = bool(history) and "train_accuracy" in history[0]
    lr = [v for v in steps.get("lr", []) if math.isfinite(v)]
    lr_panel = len(lr) > 1 and max(lr) > min(lr) * (1 + 1e-9)
    members = len(history[0].get("per_member", {}).get("train_loss", [])) if history else 0

    mosaic = [["loss", "accuracy"] if has_accuracy else ["loss"]]
    if lr_panel:  # under the loss, on its epoch axis; the key takes the cell beside it
        mosaic.append(["lr", "key"] if has_accuracy else ["lr"])
    fig = Figure(
        figsize=(11.5 if has_accuracy else 7.0, 4.2 + (1.7 if lr_panel else 0)),
        layout="constrained",
    )
    axes = fig.subplot_mosaic(mosaic, height_ratios=[3, 1.1] if lr_panel else None)

    # Updates -> epochs, through the step each epoch ended on: per-update series share the
    # epoch axis (partial epochs and early stops included).
    ends = [(0.0, 0.0)] + [(float(r.get("step", 0)), float(r["epoch"])) for r in history]

    def to_epoch(step: float) -> float:
        for (s0, e0), (s1, e1) in itertools.pairwise(ends):
            if step <= s1:
                return e0 + (e1 - e0) * ((step - s0) / (s1 - s0) if s1 > s0 else 1.0)
        s0, e0 = ends[-2] if len(ends) > 1 else (0.0, 0.0)
        s1, e1 = ends[-1]
        return e1 + (step - s1) * ((e1 - e0) / (s1 - s0) if s1 > s0 else 0.0)

    update_x = [to_epoch(s) for s in steps.get("step", [])]
    loss_ax = axes["loss"]
    positive: list[float] = []
    batch = steps.get("loss", steps.get("loss_median"))
    if batch and update_x:
        if "loss_min" in steps and "loss_max" in steps:
            loss_ax.fill_between(
                update_x, steps["loss_min"], steps["loss_max"], color="0.6", alpha=0.2, lw=0
            )
            positive += [v for v in steps["loss_min"] + steps["loss_max"] if v > 0]
        label = "each update's batch" + (" (median, band: min-max)" if members > 1 else "")
        loss_ax.plot(update_x, batch, color="0.55", lw=0.6, alpha=0.8, label=label)
        positive += [v for v in batch if v > 0]
    for split in splits:
        color, line, label = _SPLITS[split]
        values = _draw_split(loss_ax, history, epochs, f"{split}_loss", color, line, label)
        positive += [v for v in values if v > 0]
        if has_accuracy:
            _draw_split(
                axes["accuracy"], history, epochs, f"{split}_accuracy", color, line, label, 100.0
            )
    positive = [v for v in positive if math.isfinite(v)]
    if positive:
        loss_ax.set_yscale("log")
        log_labels(loss_ax.yaxis, min(positive), max(positive))
    loss_ax.set_ylabel("loss")
    if has_accuracy:
        axes["accuracy"].set_ylabel("accuracy (%)")
    if lr_panel:
        lr_ax = axes["lr"]
        lr_ax.plot(update_x[: len(steps["lr"])], steps["lr"], color="tab:purple", lw=1.2)
        lr_ax.set_ylabel("learning rate")
        # Log only for a run spent mostly decades below its peak (exponential decay); a
        # cosine reads as a cosine on a linear axis.
        if sorted(lr)[len(lr) // 2] < max(lr) / 20:
            lr_ax.set_yscale("log")
        lr_ax.set_xlabel("epoch")
    last = max(epochs + update_x, default=1.0)
    cycles = []
    if snapshots and steps.get("step"):
        cycle = int(max(steps["step"])) // int(snapshots)
        cycles = [to_epoch(k * cycle) for k in range(1, int(snapshots) + 1)] if cycle else []
    key_ax = axes.pop("key", None)
    for name, ax in axes.items():
        for k, x in enumerate(cycles):
            label = "snapshot taken (end of a cosine cycle)" if k == 0 and name == "loss" else None
            ax.axvline(x, color="black", ls=":", lw=1.0, label=label)
        ax.set_xlim(0, max(last, 1.0))
        integer_ticks(ax.xaxis)
        ax.grid(alpha=0.3)
        if not lr_panel or name == "lr":
            ax.set_xlabel("epoch")
    handles = loss_ax.get_legend_handles_labels()[0]
    if key_ax is not None:
        key_ax.set_axis_off()
        key_ax.legend(handles=handles, loc="upper left", fontsize=8, frameon=False)
    else:
        key_beside(axes["accuracy"] if has_accuracy else loss_ax, handles)
    heading = title
    if members > 1:
        heading += f" (median of {members} restarts, band: min-max)"
    if lr and not lr_panel:
        heading += f"; lr {lr[0]:.3g}, constant"
    if heading:
        fig.suptitle(heading)
    return _save(fig, path)


def _draw_split(ax, history, epochs, key, color, line, label, scale=1.0) -> list[float]:
    """One split's metric per epoch: the median line, and over restarts a min-max band."""
    per_member = [r.get("per_member", {}).get(key) for r in history]
    values = [scale * float(r.get(key, math.nan)) for r in history]
    ax.plot(epochs, values, line, color=color, marker="o", ms=3.5, label=label)
    if all(isinstance(m, list) and m for m in per_member):
        low = [scale * min(_finite(m, math.nan)) for m in per_member]
        high = [scale * max(_finite(m, math.nan)) for m in per_member]
        ax.fill_between(epochs, low, high, color=color, alpha=0.18, lw=0)
        return values + low + high
    return values


def _finite(values: Sequence[Any], empty: float) -> list[float]:
    kept = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return kept or [empty]


def plot_curvature(
    records: Sequence[dict[str, Any]],
    episodes: Sequence[tuple[int, int, str]],
    path: str | os.PathLike[str],
    *,
    every: int = 1,
) -> Path:
    """Loss on the tracker's batch with saddle / flat episodes shaded, and the extreme
    Hessian eigenvalues, per step (records from ``CurvatureTracker.to_records()``).

    Each record is a measurement (a marker), taken every ``every`` updates; the eigenvalue
    axis is symmetric-log with its linear band just below the smallest magnitude measured, so
    a handful of points fill it instead of sitting on a mostly empty axis.
    """
    from matplotlib.figure import Figure

    steps = [r["step"] for r in records]
    fig = Figure(figsize=(9, 5.8), layout="constrained")
    loss_ax, eig_ax = fig.subplots(2, 1, sharex=True)
    loss_ax.plot(
        steps, [r["loss"] for r in records], "o-", color="black", lw=1.2, ms=3.5, label="loss"
    )
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
    losses = [r["loss"] for r in records if math.isfinite(r["loss"]) and r["loss"] > 0]
    if losses:
        loss_ax.set_yscale("log")
        log_labels(loss_ax.yaxis, min(losses), max(losses))
    loss_ax.set_ylabel("loss (tracker batch)")
    top = [r["top"] for r in records]
    bottom = [r["bottom"] for r in records]
    eig_ax.plot(steps, top, "o-", color="tab:blue", ms=3.5, label="largest eigenvalue")
    eig_ax.plot(steps, bottom, "s-", color="tab:green", ms=3.5, label="smallest eigenvalue")
    eig_ax.axhline(0, color="gray", lw=0.8)
    eig_ax.set_yscale("symlog", **symlog_for(top + bottom))
    finite = [v for v in top + bottom if math.isfinite(v)]
    if finite:
        low, high = min([*finite, 0.0]), max([*finite, 0.0])
        eig_ax.set_ylim(
            low * 2 if low < 0 else -symlog_for(finite)["linthresh"],
            high * 2 if high > 0 else symlog_for(finite)["linthresh"],
        )
    eig_ax.set_xlabel("update")
    eig_ax.set_ylabel("Hessian eigenvalue")
    for ax in (loss_ax, eig_ax):
        ax.grid(alpha=0.3)
        integer_ticks(ax.xaxis)
        key_beside(ax)
    fig.suptitle(f"Curvature during training, measured every {every} updates")
    fig.supxlabel(
        "smallest eigenvalue < 0: a direction of negative curvature (saddle-like); "
        "largest eigenvalue: the sharpness, which limits the stable learning rate (about 2 / λ)",
        fontsize=8,
        color="0.3",
    )
    return _save(fig, path)


def draw_run_figures(result, config) -> list[Path]:
    """The figures of a finished training run, into its folder: ``curves.png`` and, for
    several members, ``restarts.png`` (the trainer writes data only; figures are drawn here).

    ``result`` is what :func:`ravine.train.train` returned, ``config`` its config.
    """
    from ravine.report.restarts import plot_restart_losses

    out = Path(result.out_dir)
    steps = read_steps(out / "steps.csv")
    snapshots = int(getattr(config, "snapshots", 0) or 0)
    if not hasattr(result, "members"):  # one network
        title = f"{config.dataset}: {config.model} ({config.optimizer})"
        curves = out / "curves.png"
        return [
            plot_training_curves(
                result.history, curves, title=title, steps=steps, snapshots=snapshots
            )
        ]
    n = len(result.members)
    title = f"{config.dataset}: {config.model}, {n} restarts ({config.optimizer})"
    written = [plot_training_curves(result.history, out / "curves.png", title=title, steps=steps)]
    splits = [
        s for s in ("train", "val", "test") if result.final and f"{s}_loss" in result.final[0]
    ]
    losses = {s: [m.get(f"{s}_loss", math.nan) for m in result.final] for s in splits}
    written.append(
        plot_restart_losses(losses, out / "restarts.png", diverged=result.diverged, title=title)
    )
    return written


def _save(fig, path) -> Path:
    from ravine.report.plots import save_figure

    return save_figure(fig, path)
