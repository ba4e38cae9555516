"""Figures and the table of a tuning study (``ravine tune``).

* ``tune-history.png``: every trial's value in the order it was asked, the best so far as a
  step line; pruned trials at their last reported value, failed ones on the top edge.
* ``tune-sensitivity.png``: trial value against each searched quantity — the learning-rate
  sensitivity curve practitioners draw by hand — with the best trial starred.
* ``tune-curves.png``: every trial's validation value per epoch, pruned trials in grey.
* ``tune-importance.png``: Optuna's parameter importances (two or more searched quantities).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ravine.report.axes import integer_ticks, key_beside
from ravine.report.plots import optimizer_color, save_figure
from ravine.study.tune import trial_curve, trial_record


def draw_tune_figures(result) -> list[Path]:
    """Every figure of a finished study into its folder; returns the paths."""
    out = Path(result.out_dir)
    trials = _trials(result.study)
    if not trials:
        return []
    color = optimizer_color(result.config.train.optimizer)
    written = [
        _history(trials, result, out / "tune-history.png", color),
        _sensitivity(trials, result, out / "tune-sensitivity.png", color),
        _curves(trials, result, out / "tune-curves.png", color),
    ]
    if len(result.importances) > 1:
        written.append(_importance(result, out / "tune-importance.png", color))
    return written


def tune_table(result, top: int = 10):
    """The best ``top`` complete trials as a rich table (whole numbers, never cut)."""
    from rich.table import Table

    complete = [t for t in _trials(result.study) if t["state"] == "COMPLETE"]
    complete.sort(key=lambda t: t["value"], reverse=result.config.direction == "maximize")
    names = list(result.config.space)
    table = Table(
        title=f"{result.config.train.optimizer} on {result.config.train.dataset}: best "
        f"{min(top, len(complete))} of {len(complete)} complete trials",
        title_justify="left",
    )
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("trial", justify="right", no_wrap=True)
    for name in names:
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column(result.config.metric, justify="right", no_wrap=True)
    table.add_column("epochs", justify="right", no_wrap=True)
    for rank, t in enumerate(complete[:top], start=1):
        cells = [_number(t["params"].get(n)) for n in names]
        table.add_row(str(rank), str(t["number"]), *cells, _number(t["value"]), str(t["epochs"]))
    return table


# --------------------------------------------------------------------------------------------


def _trials(study) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("ravine_stale"):
            continue
        curve = trial_curve(t)
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value,
                "params": dict(t.params),
                "curve": curve,
                "epochs": trial_record(t).get("epochs", len(curve)),
            }
        )
    return rows


def _number(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _log_axis(values: list[float]) -> bool:
    finite = [v for v in values if v is not None and math.isfinite(v) and v > 0]
    return len(finite) > 1 and max(finite) / min(finite) > 20


def _log_y(ax) -> None:
    """A log y axis that labels its minor ticks when it spans few decades (one or two labels
    say little)."""
    from matplotlib.ticker import LogFormatterSciNotation

    ax.set_yscale("log")
    ax.yaxis.set_minor_formatter(
        LogFormatterSciNotation(labelOnlyBase=False, minor_thresholds=(2, 0.4))
    )


def _history(trials, result, path: Path, color: str) -> Path:
    from matplotlib.figure import Figure

    maximize = result.config.direction == "maximize"
    fig = Figure(figsize=(6.8, 3.8), layout="constrained")
    ax = fig.subplots()
    complete = [t for t in trials if t["state"] == "COMPLETE"]
    pruned = [t for t in trials if t["state"] == "PRUNED" and t["curve"]]
    failed = [t for t in trials if t["state"] == "FAIL"]
    ax.scatter(
        [t["number"] for t in complete],
        [t["value"] for t in complete],
        s=22,
        color=color,
        label=f"complete ({len(complete)})",
        zorder=3,
    )
    if pruned:
        ax.scatter(
            [t["number"] for t in pruned],
            [t["curve"][-1][1] for t in pruned],
            s=22,
            marker="x",
            color="0.45",
            label=f"pruned ({len(pruned)}, last value)",
            zorder=2,
        )
    best, xs, ys = None, [], []
    for t in sorted(complete, key=lambda t: t["number"]):
        if best is None or (t["value"] > best if maximize else t["value"] < best):
            best = t["value"]
        xs.append(t["number"])
        ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", color="black", lw=1.2, label="best so far")
    values = [t["value"] for t in complete] + [t["curve"][-1][1] for t in pruned]
    if _log_axis(values):
        _log_y(ax)
    if failed:
        top = ax.get_ylim()[1]
        ax.scatter(
            [t["number"] for t in failed],
            [top] * len(failed),
            marker="v",
            color="tab:red",
            s=30,
            label=f"failed or diverged ({len(failed)})",
            clip_on=False,
            zorder=4,
        )
    ax.set_xlabel("trial (in the order Optuna asked for it)")
    ax.set_ylabel(f"{result.config.metric} (best epoch)")
    ax.grid(alpha=0.3)
    integer_ticks(ax.xaxis)  # trial 3, never trial 2.5
    key_beside(ax)
    pruning = "no pruning" if result.config.pruner == "none" else f"{result.config.pruner} pruner"
    ax.set_title(
        f"{result.config.train.optimizer}: {result.config.sampler} sampler, {pruning}, "
        f"batches of {result.config.batch}",
        fontsize=10,
    )
    return save_figure(fig, path)


def _sensitivity(trials, result, path: Path, color: str) -> Path:
    from matplotlib.figure import Figure

    names = list(result.config.space)
    fig = Figure(figsize=(4.2 * len(names), 3.8), layout="constrained")
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    complete = [t for t in trials if t["state"] == "COMPLETE"]
    values = [t["value"] for t in complete]
    best = result.best_params
    for ax, name in zip(axes, names, strict=True):
        spec = result.config.space[name]
        points = sorted((t["params"][name], t["value"]) for t in complete if name in t["params"])
        if spec.choices is None:
            xs, ys = zip(*points, strict=True) if points else ((), ())
            ax.plot(xs, ys, "o", color=color, ms=4, alpha=0.8)
            if len(names) == 1 and len(points) > 2:
                ax.plot(xs, ys, "-", color=color, lw=0.8, alpha=0.5)
            if spec.log:
                ax.set_xscale("log")
        else:
            labels = [str(c) for c in spec.choices]
            for t in complete:
                ax.plot(labels.index(str(t["params"][name])), t["value"], "o", color=color, ms=4)
            ax.set_xticks(range(len(labels)), labels)
        if name in best:
            x = (
                best[name]
                if spec.choices is None
                else [str(c) for c in spec.choices].index(str(best[name]))
            )
            ax.plot(
                [x],
                [result.best_value],
                "*",
                ms=14,
                color="gold",
                mec="black",
                zorder=4,
            )
        if _log_axis(values):
            _log_y(ax)
        ax.set_xlabel(name + (" (log scale)" if spec.log else ""))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"{result.config.metric} (best epoch)")
    # The key in the title: a legend inside a panel sat on the very points near the best.
    starred = ", ".join(f"{n} = {_number(v)}" for n, v in best.items())
    fig.suptitle(
        f"sensitivity of {result.config.train.optimizer} on {result.config.train.dataset} "
        f"({len(complete)} complete trials)"
        + (f"; star: the best trial, {starred}" if best else ""),
        fontsize=10,
    )
    return save_figure(fig, path)


def _curves(trials, result, path: Path, color: str) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.8, 3.8), layout="constrained")
    ax = fig.subplots()
    values = []
    best_number = None
    if result.best_params:
        best_number = result.study.best_trial.number
    for t in trials:
        if not t["curve"]:
            continue
        epochs, ys = zip(*t["curve"], strict=True)
        values += list(ys)
        if t["number"] == best_number:
            continue
        style = (
            {"color": "0.6", "lw": 0.8, "alpha": 0.7}
            if t["state"] == "PRUNED"
            else {"color": color, "lw": 0.8, "alpha": 0.5}
        )
        ax.plot(epochs, ys, **style)
    if best_number is not None:
        best = next(t for t in trials if t["number"] == best_number)
        epochs, ys = zip(*best["curve"], strict=True)
        ax.plot(epochs, ys, color="black", lw=1.8, label=f"best (trial {best_number})")
    ax.plot([], [], color=color, lw=0.8, label="complete")
    if any(t["state"] == "PRUNED" for t in trials):
        ax.plot([], [], color="0.6", lw=0.8, label="pruned (stopped early)")
    if _log_axis(values):
        _log_y(ax)
    ax.set_xlabel("epoch")
    ax.set_ylabel(result.config.metric)
    integer_ticks(ax.xaxis)
    ax.grid(alpha=0.3)
    key_beside(ax)
    ax.set_title("validation value of every trial per epoch (what the pruner sees)", fontsize=10)
    return save_figure(fig, path)


def _importance(result, path: Path, color: str) -> Path:
    from matplotlib.figure import Figure

    items = sorted(result.importances.items(), key=lambda kv: kv[1])
    fig = Figure(figsize=(5.6, 0.5 * len(items) + 1.4), layout="constrained")
    ax = fig.subplots()
    ax.barh([k for k, _ in items], [v for _, v in items], color=color)
    for i, (_, v) in enumerate(items):
        ax.text(v, i, f" {v:.2f}", va="center", fontsize=8)
    ax.set_xlim(0, max(v for _, v in items) * 1.2)
    ax.set_xlabel("importance (Optuna, normalized to sum 1)")
    ax.set_title("which searched quantity mattered most", fontsize=10)
    return save_figure(fig, path)
