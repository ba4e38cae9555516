"""Axis and key conventions shared by ravine's figures: whole-number ticks for counts (epochs,
steps), log axes that carry enough labels to be read, symlog axes that spend no decades on
nothing, and keys placed beside the axes, level with their top, never over the data.

matplotlib is imported inside the functions, as everywhere in ``ravine.report``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.axis import Axis
    from matplotlib.legend import Legend

__all__ = ["integer_ticks", "key_above", "key_beside", "log_labels", "symlog_for"]


def integer_ticks(axis: Axis) -> None:
    """Ticks at whole numbers only (epoch 1, 2, 3; never 1.25)."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=2))


def log_labels(axis: Axis, low: float, high: float) -> None:
    """Label a log axis spanning ``low``..``high`` so that it carries at least about four
    numbers: every decade when it spans many, 1-2-5 steps within a decade or two (a loss
    falling from 2 to 0.4 otherwise shows a single label), written plainly (0.5, 2, 1e-05)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    if not (low > 0 and high > low and math.isfinite(low) and math.isfinite(high)):
        return
    decades = math.log10(high / low)
    if decades > 4:
        return  # matplotlib's decade labels already read well
    if decades < 0.8:  # within a decade: evenly spaced round numbers (1.4, 1.6, 1.8, 2)
        axis.set_major_locator(MaxNLocator(6))
    else:
        subs = (1.0, 2.0, 3.0, 5.0) if decades < 2 else (1.0, 2.0, 5.0)
        axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    axis.set_minor_formatter(NullFormatter())


def symlog_for(values: Sequence[float]) -> dict[str, Any]:
    """``set_yscale("symlog", **kw)`` arguments for signed values (eigenvalues): the linear
    band around 0 just below the smallest magnitude shown, so the axis spends no empty decades
    between 1e-3 and the data."""
    magnitudes = [abs(v) for v in values if math.isfinite(v) and v != 0]
    if not magnitudes:
        return {"linthresh": 1.0}
    return {"linthresh": 10.0 ** math.floor(math.log10(min(magnitudes) / 2)), "linscale": 0.5}


def key_beside(ax: Axes, handles: Sequence[Any] | None = None, **kwargs: Any) -> Legend | None:
    """The key of ``ax`` to its right, its top level with the axes' top (inside the figure
    under constrained layout); None when there is nothing to explain."""
    if handles is None:
        handles = ax.get_legend_handles_labels()[0]
    if not handles:
        return None
    options = {
        "loc": "upper left",
        "bbox_to_anchor": (1.01, 1.0),
        "borderaxespad": 0.0,
        "fontsize": 8,
        "frameon": False,
        "alignment": "left",
        **kwargs,
    }
    return ax.legend(handles=list(handles), **options)


def key_above(ax: Axes, heading: str, ncol: int = 2, **kwargs: Any) -> Legend | None:
    """The key of ``ax`` over it, under ``heading`` (the panel's title, left-aligned): for a
    grid of panels, where a key beside each would take the width the data needs. Without
    entries, ``heading`` becomes the axes' title; returns None then."""
    handles = ax.get_legend_handles_labels()[0]
    if not handles:
        ax.set_title(heading, fontsize=10, loc="left")
        return None
    options = {
        "loc": "lower left",
        "bbox_to_anchor": (0.0, 1.0),
        "borderaxespad": 0.3,
        "fontsize": 8,
        "frameon": False,
        "alignment": "left",
        "ncol": min(ncol, len(handles)),
        "columnspacing": 1.2,
        "title": heading,
        "title_fontsize": 10,
        **kwargs,
    }
    return ax.legend(handles=list(handles), **options)
