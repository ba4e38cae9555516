"""Figures of a random-restarts run: how the restarts' final losses are distributed."""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path


def plot_restart_losses(
    losses: Mapping[str, Sequence[float]],
    path: str | os.PathLike[str],
    *,
    diverged: Sequence[int] = (),
    title: str = "",
) -> Path:
    """A strip plot of the restarts' final losses per split, and a histogram of them.

    Restarts that land in minima of different depth show up as separate clusters. Diverged
    restarts (NaN/Inf losses, or listed in ``diverged``) cannot be drawn on a loss axis; they
    are counted in the legend instead of being dropped silently.

    Args:
        losses: split name (``"train"``, ``"test"``, ...) -> one final loss per restart.
        path: the PNG to write (atomically).
        diverged: indices of diverged restarts.
        title: figure title.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    bad = set(diverged)
    kept = {
        split: [v for k, v in enumerate(values) if k not in bad and math.isfinite(v)]
        for split, values in losses.items()
    }
    n = max((len(v) for v in losses.values()), default=0)
    fig = Figure(figsize=(10, 4), layout="constrained")
    strip, hist = fig.subplots(1, 2)
    colors = ("tab:blue", "tab:orange", "tab:green", "tab:red")
    everything = [v for values in kept.values() for v in values]
    positive = all(v > 0 for v in everything)
    bins = None
    if everything:  # one set of bin edges, so that the splits' histograms compare
        low, high = min(everything), max(everything)
        count = min(30, max(5, len(everything) // 3))
        width = (high - low) / count if high > low else 1.0
        bins = [low + i * width for i in range(count + 1)]
    for i, (split, values) in enumerate(kept.items()):
        color = colors[i % len(colors)]
        # Deterministic jitter: spread the points across the column without an RNG.
        offsets = [0.3 * ((j * 0.618034) % 1.0 - 0.5) for j in range(len(values))]
        strip.scatter(
            [i + o for o in offsets], values, s=16, alpha=0.7, color=color, edgecolors="none"
        )
        if values:
            middle = statistics.median(values)
            strip.hlines(middle, i - 0.25, i + 0.25, color="black", linewidth=1.5)
            hist.hist(
                values,
                bins=bins,
                alpha=0.5,
                color=color,
                label=f"{split} ({len(values)})",
            )
    strip.set_xticks(range(len(kept)), list(kept))
    strip.set_ylabel("final loss")
    strip.set_title("per restart (bar: median)")
    hist.set_xlabel("final loss")
    hist.set_ylabel("restarts")
    hist.yaxis.set_major_locator(MaxNLocator(integer=True))
    if positive and any(kept.values()):
        strip.set_yscale("log")
    for ax in (strip, hist):
        ax.grid(alpha=0.3)
    if any(kept.values()):
        hist.legend(title=f"{len(bad)} of {n} diverged" if bad else None)
    else:
        hist.text(
            0.5,
            0.5,
            f"all {n} restarts diverged",
            ha="center",
            va="center",
            transform=hist.transAxes,
        )
    if title:
        fig.suptitle(title)
    from ravine.report.plots import save_figure

    return save_figure(fig, path)
