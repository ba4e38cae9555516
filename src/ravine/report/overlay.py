"""The side-by-side figure of several folders: each curve they share, one line per folder.

Drawn in memory for the HTML report (PNG bytes), never written into a run's folder.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence


def overlay_curves(
    series: Mapping[str, Mapping[str, Sequence[tuple[float, float]]]],
) -> bytes | None:
    """``series[curve][folder] = [(epoch, value), ...]`` -> a PNG with one panel per curve.

    Curves that only one folder has are left out (nothing to compare); None if none is left.
    """
    shared = {name: runs for name, runs in series.items() if len(runs) >= 2}
    if not shared:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    names = sorted(shared, key=_order)
    columns = min(3, len(names))
    rows = -(-len(names) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.4 * rows), squeeze=False)
    folders = list(dict.fromkeys(f for runs in shared.values() for f in runs))
    colors = {f: plt.get_cmap("tab10")(i % 10) for i, f in enumerate(folders)}
    for ax, name in zip(axes.flat, names, strict=False):
        values = []
        for folder, points in shared[name].items():
            x = [p[0] for p in points]
            y = [p[1] for p in points]
            values += y
            ax.plot(
                x,
                y,
                marker="o" if len(x) < 12 else None,
                ms=3,
                lw=1.6,
                color=colors[folder],
                label=folder,
            )
        positive = [v for v in values if v > 0]
        if (
            name.endswith("loss")
            and len(positive) == len(values)
            and max(values) > 10 * min(values)
        ):
            ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), frameon=False)
    fig.tight_layout(rect=(0, 0.06 + 0.02 * (len(labels) // 4), 1, 1))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def _order(name: str) -> tuple[int, str]:
    # Losses first, then accuracies, then the rest, each alphabetically.
    return (0 if name.endswith("loss") else 1 if name.endswith("accuracy") else 2, name)
