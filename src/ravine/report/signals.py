"""The training-signals dashboard: one figure per run of the quantities
:class:`ravine.probe.signals.TrainingSignals` records on its fixed probe batch every K updates
(Cockpit's one-screen idea: Schneider, Dangel & Hennig 2021).

Six panels over the updates: the probe-batch loss; the step size alpha along the update's
direction; the distance from the initialization and the update size; the gradient noise scale
against the training batch (the signal-to-noise ratio on the right axis); the three batch-size
tests' radii against their thresholds; the Hessian trace where it was measured. A value a
record does not have (``None``) leaves a gap, never a zero.

Built on ``matplotlib.figure.Figure`` (Agg, no pyplot); the file is replaced atomically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ravine.report.axes import key_above, log_labels
from ravine.report.plots import save_figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["noise_line", "plot_signals", "test_thresholds", "write_signals"]

# The three tests: record key, colour, name in the key.
_TESTS = (
    ("norm_test", "tab:blue", "norm test"),
    ("inner_product_test", "tab:orange", "inner-product test"),
    ("orthogonality_test", "tab:green", "orthogonality test"),
)


def test_thresholds() -> dict[str, float]:
    """The radius each test must not exceed to pass (record key -> threshold), from
    :mod:`ravine.probe.signals` (imported here: it imports torch)."""
    from ravine.probe.signals import INNER_PRODUCT_THETA, NORM_TEST_THETA, ORTHOGONALITY_NU

    return {
        "norm_test": float(NORM_TEST_THETA),
        "inner_product_test": float(INNER_PRODUCT_THETA),
        "orthogonality_test": float(ORTHOGONALITY_NU),
    }


test_thresholds.__test__ = False  # a helper, not a pytest test (its name starts with test_)


def plot_signals(
    records: Sequence[dict[str, Any]],
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
) -> Path:
    """Draw the dashboard of ``records`` (``TrainingSignals.to_records()``, or the lines of
    ``signals.jsonl``) to ``path`` (``.png``, or ``.svg`` with a ``.png`` beside it).

    Args:
        records: one dict per record step, with the keys ``TrainingSignals`` writes; any
            value may be ``None`` (not measured, or unbounded where the key says so).
        path: the file to write.
        title: the figure's title; by default what was measured, how often and on what.

    Returns the path written. Raises ``ValueError`` for no records.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    records = list(records)
    if not records:
        raise ValueError("no signal records: the run was shorter than --signals-every")
    steps = np.array([float(r["step"]) for r in records])
    fig = Figure(figsize=(16.0, 8.4), layout="constrained")
    fig.get_layout_engine().set(wspace=0.05)
    axes = fig.subplots(2, 3, sharex=True)
    (loss_ax, alpha_ax, move_ax), (noise_ax, tests_ax, trace_ax) = axes

    _loss_panel(loss_ax, steps, records)
    _alpha_panel(alpha_ax, steps, records)
    _movement_panel(move_ax, steps, records)
    _noise_panel(noise_ax, steps, records)
    _tests_panel(tests_ax, steps, records)
    _trace_panel(trace_ax, steps, records)

    low, high = float(steps.min()), float(steps.max())
    pad = max(1.0, 0.03 * (high - low))  # a single record still spans two whole numbers
    for ax in axes.flat:
        ax.set_xlim(low - pad, high + pad)
        # Whole updates, few enough for a narrow panel, at round numbers (5, 10, 15).
        ax.xaxis.set_major_locator(MaxNLocator(7, integer=True, steps=[1, 2, 5, 10]))
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("update")
    fig.suptitle(title if title is not None else _default_title(records, steps))
    return save_figure(fig, path)


def _default_title(records: Sequence[dict[str, Any]], steps: np.ndarray) -> str:
    every = int(np.min(np.diff(steps))) if len(steps) > 1 else int(steps[0])
    probe = _first(records, "probe_size")
    batch = _first(records, "batch_size")
    text = "Training signals, " + ("every update" if every == 1 else f"every {every} updates")
    if probe is not None:
        text += f", on a fixed probe batch of {int(probe)} examples"
    if batch is not None:
        text += f" (training batch {int(batch)})"
    return text


# --------------------------------------------------------------------------------------------
# Panels
# --------------------------------------------------------------------------------------------


def _loss_panel(ax: Axes, steps: np.ndarray, records) -> None:
    loss = _series(records, "loss")
    before = _series(records, "loss_before")
    _line(ax, steps, loss, "o-", color="black", label="after the update")
    if np.isfinite(before).any():
        _line(ax, steps, before, "x", color="0.5", ms=5, label="before it (same batch)")
    if not _log_y(ax, np.concatenate([loss, before])):
        _no_data(ax, "no finite loss")
    ax.set_ylabel("loss")
    key_above(ax, "Probe-batch loss")


def _alpha_panel(ax: Axes, steps: np.ndarray, records) -> None:
    alpha = _series(records, "alpha")
    ok = np.isfinite(alpha)
    # A step that went uphill on the probe batch (the training batch's gradient disagreed):
    # hollow, since its alpha (below -1) speaks of noise, not of the step's length.
    uphill = np.array([r.get("descent") is False for r in records], dtype=bool) & ok
    down = ok & ~uphill
    if down.any():
        ax.plot(steps[down], alpha[down], "o", color="tab:purple", ms=3.5, alpha=0.6, label="α")
    if uphill.any():
        ax.plot(steps[uphill], alpha[uphill], "o", mfc="none", color="tab:purple", ms=3.5,
                alpha=0.6, label="α of an uphill step")  # fmt: skip
    if not ok.any():
        _no_data(ax, "α not measured (no step seen yet)")
    if ok.sum() > 2:
        ax.plot(
            steps,
            _running_median(alpha),
            "-",
            color="tab:purple",
            lw=1.8,
            label=f"running median of {_window(int(ok.sum()))}",
        )
    ax.axhline(0, color="tab:green", lw=1.0, label="0: the minimum along the step")
    ax.axhline(
        1, color="0.45", ls="--", lw=0.9, label="−1: barely moved, +1: as high on the far side"
    )
    ax.axhline(-1, color="0.45", ls="--", lw=0.9)
    # Linear in [-1, 1], where the readings are; logarithmic beyond (overshoots of 10 and more).
    ax.set_yscale("symlog", linthresh=1.0, linscale=2.0)
    finite = alpha[ok]
    top = max(2.0, 1.5 * float(finite.max())) if finite.size else 2.0
    bottom = min(-2.0, 1.5 * float(finite.min())) if finite.size else -2.0
    ax.set_ylim(bottom, top)
    _plain_symlog_ticks(ax, bottom, top)
    ax.set_ylabel("α (above 1: overshooting; below −1: uphill)")
    key_above(ax, "Step size α along the update (local quadratic)")


def _movement_panel(ax: Axes, steps: np.ndarray, records) -> None:
    distance = _series(records, "distance")
    update = _series(records, "update_size")
    _line(ax, steps, distance, "o-", color="tab:brown", label="‖θ − θ₀‖ from the init")
    _line(ax, steps, update, "s-", color="tab:cyan", label="‖Δθ‖ of the last update")
    if not _log_y(ax, np.concatenate([distance, update])):
        _no_data(ax, "not measured")
    ax.set_ylabel("norm in parameter space")
    key_above(ax, "Distance travelled and update size")


def _noise_panel(ax: Axes, steps: np.ndarray, records) -> None:
    from matplotlib.transforms import blended_transform_factory

    scale = _series(records, "noise_scale")
    snr = _series(records, "snr")
    batch = _first(records, "batch_size")
    _line(ax, steps, scale, "o-", color="tab:red", label="B_simple = tr Σ / ‖G‖²")
    # B_simple None with an SNR of 0: the noise swamps the mean gradient; marked at the top.
    unbounded = np.array([r.get("noise_scale") is None for r in records]) & (snr == 0)
    if unbounded.any():
        ax.plot(
            steps[unbounded],
            np.full(int(unbounded.sum()), 0.97),
            "^",
            color="tab:red",
            ms=7,
            transform=blended_transform_factory(ax.transData, ax.transAxes),
            clip_on=False,
            label="unbounded: noise dominates",
        )
    values = scale
    if batch is not None:
        b = float(batch)
        ax.axhline(b, color="black", ls="--", lw=1.0, label=f"training batch b = {int(b)}")
        values = np.append(values, b)
    drawn = _log_y(ax, values)
    if drawn and batch is not None:
        # The same curve read as the step's signal-to-noise ratio at batch b: b / B_simple.
        right = ax.secondary_yaxis("right", functions=(lambda v: b / np.maximum(v, 1e-300),) * 2)
        low, high = ax.get_ylim()
        log_labels(right.yaxis, b / high, b / low)
        right.set_ylabel("SNR at batch b = b / B_simple")
    if not drawn and not unbounded.any():
        _no_data(ax, "not measured")
    ax.set_ylabel("examples")
    key_above(ax, "Gradient noise scale against the training batch")


def _tests_panel(ax: Axes, steps: np.ndarray, records) -> None:
    thresholds = test_thresholds()
    values = []
    for key, color, name in _TESTS:
        radius = _series(records, key)
        _line(ax, steps, radius, "o-", color=color, ms=3, label=name)
        values.append(radius)
    # One line per distinct threshold (the norm and inner-product tests share theta).
    levels: dict[float, list[str]] = {}
    for key, _, name in _TESTS:
        levels.setdefault(thresholds[key], []).append(name.removesuffix(" test"))
    for level, names in levels.items():
        color = (
            next(c for k, c, _ in _TESTS if thresholds[k] == level) if len(names) == 1 else "0.3"
        )
        ax.axhline(level, color=color, ls="--", lw=1.0, label=f"{level:g}: {', '.join(names)}")
    if not _log_y(ax, np.concatenate([*values, list(levels)])):
        _no_data(ax, "not measured")
    ax.set_ylabel("radius at batch b")
    key_above(ax, "Batch-size tests: each passes on or below its threshold (dashed)")


def _trace_panel(ax: Axes, steps: np.ndarray, records) -> None:
    trace = _series(records, "trace")
    error = _series(records, "trace_stderr")
    ok = np.isfinite(trace)
    ax.set_ylabel("tr H")
    heading = "Hessian trace of the probe batch (Hutchinson)"
    if not ok.any():
        _no_data(ax, "Hessian trace not measured in this run")
        ax.set_yticks([])
        key_above(ax, heading)
        return
    x, t = steps[ok], trace[ok]
    band = np.where(np.isfinite(error[ok]), error[ok], 0.0)
    ax.plot(x, t, "o-", color="tab:olive", ms=3.5, label="estimate")
    if (band > 0).any() and len(x) > 1:
        ax.fill_between(
            x, t - band, t + band, color="tab:olive", alpha=0.25, lw=0, label="± one standard error"
        )
    elif (band > 0).any():  # one point: a band of no width; an error bar instead
        ax.errorbar(
            x, t, yerr=band, fmt="none", ecolor="tab:olive", capsize=4, label="± one standard error"
        )
    if ok.sum() < len(records):
        heading += f", at {ok.sum()} of the {len(records)} records"
    key_above(ax, heading)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _series(records, key: str) -> np.ndarray:
    """``key`` of every record as floats, NaN where missing or None (a gap in a line)."""
    out = np.full(len(records), np.nan)
    for i, record in enumerate(records):
        value = record.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[i] = float(value)
    return out


def _first(records, key: str) -> Any:
    return next((r[key] for r in records if r.get(key) is not None), None)


def _line(ax: Axes, x: np.ndarray, y: np.ndarray, fmt: str, *, ms: float = 3.5, **kw) -> None:
    """A line through the finite points, broken at the missing ones; nothing if none."""
    if np.isfinite(y).any():
        ax.plot(x, y, fmt, ms=ms, lw=1.3, **kw)


def _log_y(ax: Axes, values) -> bool:
    """A log y axis labelled by ``log_labels`` when there is a positive value to show."""
    values = np.asarray(values, dtype=float)
    positive = values[np.isfinite(values) & (values > 0)]
    if not positive.size:
        return False
    ax.set_yscale("log")
    low, high = float(positive.min()), float(positive.max())
    if high <= low:
        low, high = low / 2, high * 2
    log_labels(ax.yaxis, low, high)
    return True


def _no_data(ax: Axes, text: str) -> None:
    """``text`` in the middle of an axes that has no values to show (and no y ticks)."""
    if not ax.get_lines() or all(line.get_label().startswith("_") for line in ax.get_lines()):
        ax.set_yticks([])
    ax.text(
        0.5,
        0.5,
        text,
        ha="center",
        va="center",
        transform=ax.transAxes,
        color="0.35",
        bbox={"facecolor": "white", "edgecolor": "none", "pad": 3},
    )


def _window(n: int) -> int:
    """Odd window of the running median: about a sixth of the records, at least 3."""
    width = max(3, n // 6)
    return width + 1 - width % 2


def _running_median(values: np.ndarray) -> np.ndarray:
    """Median over a centred window of the finite values' neighbours (NaN stays a gap)."""
    ok = np.flatnonzero(np.isfinite(values))
    out = np.full(len(values), np.nan)
    if not ok.size:
        return out
    half = _window(ok.size) // 2
    finite = values[ok]
    for j, i in enumerate(ok):
        out[i] = float(np.median(finite[max(0, j - half) : j + half + 1]))
    return out


def _plain_symlog_ticks(ax: Axes, bottom: float, top: float) -> None:
    """-1, 0, 1 and the decades beyond them, written as numbers (not ``-10^0``)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ticks = [0.0, -1.0, 1.0]
    for sign, limit in ((1.0, top), (-1.0, bottom)):
        decade = 10.0
        while decade <= abs(limit):
            ticks.append(sign * decade)
            decade *= 10
    ax.yaxis.set_major_locator(FixedLocator(sorted(ticks)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_locator(NullLocator())


def noise_line(noise: dict[str, Any]) -> str:
    """One line on the gradient noise at the trained weights (``probe.json``'s ``noise``, see
    :class:`ravine.probe.signals.GradientNoise`): the noise scale against the training batch.
    A value missing or of the wrong type (a file edited by hand) reads as "?"."""

    def number(key: str, fmt: str) -> str:
        value = noise.get(key)
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return format(value, fmt) if ok else "?"

    b, scale, snr = number("batch_size", "d"), noise.get("noise_scale"), noise.get("snr")
    if scale is None:
        return (
            f"gradient noise: no signal above the noise in {number('probe_size', 'd')} "
            f"examples (the gradient is mostly noise at batch {b}: a minimum, or too few "
            "examples to see it)"
        )
    if snr is None:  # every example's gradient the same: no noise at all
        return f"gradient noise: none (every example's gradient is the same), batch {b}"
    reading = "mostly noise" if isinstance(snr, int | float) and snr < 1 else "mostly signal"
    return (
        f"gradient noise scale {number('noise_scale', '.3g')} examples vs batch {b}: "
        f"signal-to-noise {number('snr', '.2g')} (the batch gradient is {reading}); the norm "
        f"test asks for batch {number('suggested_batch_norm', '.3g')}"
    )


def write_signals(signals: Any, out: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Write what a :class:`ravine.probe.signals.TrainingSignals` recorded into the folder
    ``out``, as ``ravine train --signals-every`` does: ``signals.jsonl`` (a record per line),
    ``signals.json`` (the settings, the tests' thresholds and the findings) and the
    ``signals.png`` dashboard (when there is a record). Returns the findings' JSON records."""
    import json
    import math

    from ravine.folders import atomic_write_text

    out = Path(out)
    records = signals.to_records()
    findings = [
        {
            "kind": f.kind,
            "layer": f.layer,
            "step": f.step,
            # (an unbounded value, inf, is no JSON number: its message says what it means)
            "value": float(f.value) if math.isfinite(f.value) else None,
            "message": f.message,
            "advice": f.advice,
        }
        for f in signals.findings()
    ]
    document = {
        "every": signals.every,
        "batch_size": signals.batch_size,
        "probe_size": len(signals.data[0]),
        "thresholds": test_thresholds(),  # what the tests' radii were judged against
        "findings": findings,
    }
    atomic_write_text(out / "signals.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    atomic_write_text(out / "signals.json", json.dumps(document, indent=2) + "\n")
    if records:
        plot_signals(records, out / "signals.png")
    return findings
