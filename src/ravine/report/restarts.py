"""Figures of a random-restarts run: how the restarts' final losses are distributed."""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

from ravine.report.axes import log_labels

# What a split's number is: the final weights evaluated on the whole split. curves.png's
# "train" is a different number (the mean over an epoch's updates while the weights move).
_MEANING = "final weights, whole split"
_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red")
MIN_BINS = 10


def histogram_bins(values: Sequence[float], least: int = MIN_BINS, most: int = 30) -> int:
    """Bins for ``len(values)`` restarts: about 2 per sqrt(n), never fewer than ``least`` (two or
    three wide bins hide the clusters a restarts run is looking for)."""
    return max(least, min(most, round(2 * math.sqrt(max(len(values), 1)))))


def plot_restart_losses(
    losses: Mapping[str, Sequence[float]],
    path: str | os.PathLike[str],
    *,
    diverged: Sequence[int] = (),
    title: str = "",
) -> Path:
    """A strip plot of the restarts' final losses per split, and one histogram per split.

    Restarts that land in minima of different depth show up as separate clusters. Each
    split's loss is its final weights evaluated on the whole split (not the running train
    loss of ``curves.png``). Diverged restarts (NaN/Inf losses, or listed in ``diverged``)
    cannot be drawn on a loss axis; they are counted in the title instead of being dropped.

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
    n_bad = len(
        {
            k
            for values in losses.values()
            for k, v in enumerate(values)
            if k in bad or not math.isfinite(v)
        }
    )
    everything = [v for values in kept.values() for v in values]
    rows = max(len(kept), 1)
    fig = Figure(figsize=(11, 1.6 + 1.5 * rows), layout="constrained")
    left, right = fig.subfigures(1, 2, width_ratios=[1, 1.25])
    strip = left.subplots()
    hists = right.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]

    log = bool(everything) and min(everything) > 0 and max(everything) / min(everything) > 10
    edges = None
    if everything:  # one set of bin edges, so that the splits' histograms compare
        low, high = min(everything), max(everything)
        count = histogram_bins(everything)
        if log:
            edges = [low * (high / low) ** (i / count) for i in range(count + 1)]
        else:
            width = (high - low) / count if high > low else max(abs(low), 1.0) * 0.01
            edges = [
                low - (width * count / 2 if high == low else 0) + i * width
                for i in range(count + 1)
            ]
    for i, (split, values) in enumerate(kept.items()):
        color = _COLORS[i % len(_COLORS)]
        # Deterministic jitter: spread the points across the column without an RNG.
        offsets = [0.3 * ((j * 0.618034) % 1.0 - 0.5) for j in range(len(values))]
        strip.scatter(
            [i + o for o in offsets], values, s=22, alpha=0.8, color=color, edgecolors="none"
        )
        ax = hists[i]
        if values:
            middle = statistics.median(values)
            strip.hlines(middle, i - 0.25, i + 0.25, color="black", linewidth=1.5)
            ax.hist(values, bins=edges, color=color, edgecolor="white", linewidth=0.5)
            ax.axvline(middle, color="black", lw=1.2)
        ax.set_title(f"{split} ({_MEANING}): {len(values)} restarts", loc="left", fontsize=9)
        ax.set_ylabel("restarts", fontsize=9)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    hists[-1].set_xlabel("final loss")
    strip.set_xticks(range(len(kept)), [f"{s}\n({_MEANING})" for s in kept], fontsize=9)
    strip.set_xlim(-0.6, len(kept) - 0.4)
    strip.set_ylabel("final loss")
    strip.set_title("each restart (bar: median)", fontsize=10)
    strip.grid(alpha=0.3)
    if log:
        strip.set_yscale("log")
        log_labels(strip.yaxis, min(everything), max(everything))
        for ax in hists:
            ax.set_xscale("log")
        log_labels(hists[-1].xaxis, min(everything), max(everything))
    else:
        strip.yaxis.set_major_locator(MaxNLocator(7))
        hists[-1].xaxis.set_major_locator(MaxNLocator(7))
    if not everything:
        hists[0].text(
            0.5,
            0.5,
            f"all {n} restarts diverged",
            ha="center",
            va="center",
            transform=hists[0].transAxes,
        )
    right.suptitle("distribution (black line: median)", fontsize=10)
    heading = title or "final loss of each restart"
    if n_bad:
        heading += f"; {n_bad} of {n} diverged (not drawn)"
    fig.suptitle(heading)
    fig.supxlabel(
        "each loss is the restart's final weights evaluated on the whole split; the train line "
        "of curves.png is the mean over each epoch's updates, measured while the weights moved",
        fontsize=8,
        color="0.3",
    )
    from ravine.report.plots import save_figure

    return save_figure(fig, path)
