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
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=120)
    tmp.replace(path)
    return path
