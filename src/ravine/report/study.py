"""Figures and tables of a study (``ravine study``): which optimizer trains each task best.

* ``study-curves-<task>.png``: the retrained best configuration of every optimizer, the
  validation value per epoch, median over the seeds with a min-max band, the target dashed.
* ``study-sensitivity-<task>.png``: the tuning trials' validation value against the learning
  rate, one curve per optimizer, the band spanning the seeds of each trial.
* ``study-profiles.png``: performance profiles over the tasks (Dolan & Moré 2002).
"""

from __future__ import annotations

import math
from pathlib import Path

from ravine.report.axes import integer_ticks, key_beside
from ravine.report.plots import optimizer_color, optimizer_styles, save_figure


def draw_study_figures(result) -> list[Path]:
    out = Path(result.out_dir)
    written = []
    for task_name in result.config.task_names:
        written.append(_curves(result, task_name, out / f"study-curves-{task_name}.png"))
        written.append(_sensitivity(result, task_name, out / f"study-sensitivity-{task_name}.png"))
    written.append(_profiles(result, out / "study-profiles.png"))
    return written


def study_tables(result):
    """One ranked rich table per task, then the overall ranking."""
    from rich.table import Table

    tables = []
    for task_name in result.config.task_names:
        spec = result.config.task(task_name)
        classification = spec.target_metric.endswith("accuracy")
        metric = "test_accuracy" if classification else "test_loss"
        cells = [result.cells[(task_name, o)] for o in result.config.optimizers]

        def key(cell, metric=metric, classification=classification):
            stats = cell.test.get(metric)
            if stats is None:
                return math.inf
            return -stats["mean"] if classification else stats["mean"]

        cells.sort(key=key)
        sign = ">=" if classification else "<="
        table = Table(
            title=f"{task_name} ({spec.description}); target {spec.target_metric} {sign} "
            f"{spec.target:g}",
            title_justify="left",
        )
        label = "test acc %" if classification else "test loss"
        for column in ("#", "optimizer", "tuned", label, "95% CI", "updates to target", "reached"):
            left = column in ("optimizer", "tuned")
            table.add_column(column, justify="left" if left else "right", no_wrap=True)
        scale = 100 if classification else 1
        for rank, cell in enumerate(cells, start=1):
            stats = cell.test.get(metric)
            if stats is None:
                shown, interval = "no valid configuration", ""
            else:
                low, high = stats["ci_low"], stats["ci_high"]
                if classification:  # an accuracy's interval stays inside [0, 1]
                    low, high = max(low, 0.0), min(high, 1.0)
                shown = f"{scale * stats['mean']:.4g} ± {scale * stats['std']:.2g}"
                interval = f"[{scale * low:.4g}, {scale * high:.4g}]"
            updates = cell.to_target.get("median_updates", math.inf)
            table.add_row(
                str(rank),
                cell.optimizer,
                " ".join(_short(k, v) for k, v in cell.tuned.items()),
                shown,
                interval,
                f"{updates:.0f}" if math.isfinite(updates) else "never",
                f"{cell.to_target.get('reached', 0)}/{cell.to_target.get('seeds', 0)}",
            )
        tables.append(table)
    # Short title and header: a title wider than this narrow table wraps onto five lines. What
    # the score means is in study-profiles.png and README.
    title = "overall ranking (1 = fastest on every task)"
    overall = Table(title=title, title_justify="left", min_width=len(title))
    for column in ("#", "optimizer", "profile score"):
        overall.add_column(column, justify="left" if column == "optimizer" else "right")
    for rank, name in enumerate(result.ranking(), start=1):
        overall.add_row(str(rank), name, f"{result.scores[name]:.3f}")
    tables.append(overall)
    return tables


def _short(name: str, value) -> str:
    short = {
        "one_minus_beta1": "1-b1",
        "one_minus_beta2": "1-b2",
        "one_minus_momentum": "1-mom",
        "one_minus_alpha": "1-alpha",
        "weight_decay": "wd",
    }.get(name, name)
    return f"{short}={value:.3g}" if isinstance(value, float) else f"{short}={value}"


# --------------------------------------------------------------------------------------------


def _curves(result, task_name: str, path: Path) -> Path:
    from matplotlib.figure import Figure

    spec = result.config.task(task_name)
    classification = spec.target_metric.endswith("accuracy")
    fig = Figure(figsize=(7.2, 4.2), layout="constrained")
    ax = fig.subplots()
    lows = []  # the lowest value of each band after its first epoch (epoch 1 may start low)
    for optimizer in result.config.optimizers:
        cell = result.cells[(task_name, optimizer)]
        if not cell.curves:
            continue
        epochs = cell.curves["epochs"]
        rows = cell.curves["values"]  # [epoch][seed]
        med, lo, hi = [], [], []
        for values in rows:
            finite = sorted(v for v in values if v is not None and math.isfinite(v))
            if not finite:
                med.append(math.nan), lo.append(math.nan), hi.append(math.nan)
                continue
            med.append(
                finite[len(finite) // 2]
                if len(finite) % 2
                else 0.5 * (finite[len(finite) // 2 - 1] + finite[len(finite) // 2])
            )
            lo.append(finite[0])
            hi.append(finite[-1])
        color = optimizer_color(optimizer)
        scale = 100 if classification else 1
        lows += [scale * v for v in lo[1:] if math.isfinite(v)]
        line = optimizer_styles(result.config.optimizers)[optimizer][0]
        ax.plot(epochs, [scale * v for v in med], color=color, ls=line, lw=1.5, label=optimizer)
        # Light bands: several optimizers overlap here, and dense bands turn into one mud.
        ax.fill_between(
            epochs, [scale * v for v in lo], [scale * v for v in hi], color=color, alpha=0.07, lw=0
        )
    target = spec.target * (100 if classification else 1)
    ax.axhline(target, color="black", ls="--", lw=0.9, label=f"target {target:g}")
    if classification:
        ax.set_ylabel("validation accuracy (%)")
        # From a little below the target (or the lowest band) to 100: the race near the top.
        ax.set_ylim(max(0.0, min(target, min(lows, default=target)) - 3), 100.5)
    else:
        ax.set_yscale("log")
        ax.set_ylabel("validation loss")
    ax.set_xlabel("epoch")
    integer_ticks(ax.xaxis)
    ax.grid(alpha=0.3)
    key_beside(ax)  # beside, not over the race near the top
    ax.set_title(
        f"{task_name}: best configuration of each optimizer, median and range over "
        f"{result.config.seeds} seeds",
        fontsize=10,
    )
    return save_figure(fig, path)


def _sensitivity(result, task_name: str, path: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.2, 4.2), layout="constrained")
    ax = fig.subplots()
    values_seen = []
    for optimizer in result.config.optimizers:
        cell = result.cells[(task_name, optimizer)]
        points = sorted(
            (row["params"]["lr"], row["value"], min(row["seed_values"]), max(row["seed_values"]))
            for row in cell.sensitivity
            if "lr" in row["params"]
        )
        if not points:
            continue
        lrs, values, lo, hi = zip(*points, strict=True)
        values_seen += list(values)
        color = optimizer_color(optimizer)
        line, marker = optimizer_styles(result.config.optimizers)[optimizer]
        ax.plot(lrs, values, ls=line, marker=marker, color=color, ms=4, lw=1.2, label=optimizer)
        if result.config.tune_seeds > 1:
            ax.fill_between(lrs, lo, hi, color=color, alpha=0.15, lw=0)
    ax.set_xscale("log")
    finite = [v for v in values_seen if math.isfinite(v) and v > 0]
    if finite and max(finite) / min(finite) > 20:
        ax.set_yscale("log")
    metric = result.config.tune_config(task_name, result.config.optimizers[0]).metric
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel(f"{metric} (best epoch, mean over seeds)")
    ax.grid(alpha=0.3)
    key_beside(ax)
    band = f"; band: the {result.config.tune_seeds} seeds" if result.config.tune_seeds > 1 else ""
    ax.set_title(f"{task_name}: learning-rate sensitivity of the tuning trials{band}", fontsize=10)
    return save_figure(fig, path)


def _profiles(result, path: Path) -> Path:
    from matplotlib.figure import Figure

    from ravine.study.study import TAU_MAX

    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.subplots()
    n = len(result.config.optimizers)
    for i, optimizer in enumerate(result.ranking()):
        steps = result.profiles[optimizer]
        taus = [t for t, _ in steps]
        rhos = [r for _, r in steps]
        # A small vertical offset keeps optimizers with equal profiles apart.
        offset = (i - (n - 1) / 2) * 0.006
        ax.step(
            taus,
            [r + offset for r in rhos],
            where="post",
            color=optimizer_color(optimizer),
            ls=optimizer_styles(result.config.optimizers)[optimizer][0],
            lw=1.6,
            label=f"{optimizer} ({result.scores[optimizer]:.2f})",
        )
    ax.set_xlim(1, TAU_MAX)
    ax.set_ylim(-0.03, 1.05)
    ax.set_xlabel("τ: updates to target / the fastest optimizer's")
    ax.set_ylabel("fraction of tasks within τ")
    ax.grid(alpha=0.3)
    key_beside(ax, title="optimizer (score)", title_fontsize=8)
    if all(r == 0 for steps in result.profiles.values() for _, r in steps):
        # A flat line at 0 reads like a drawing error; say what it means.
        ax.text(
            0.5,
            0.5,
            "no optimizer reached the target on any task:\nevery profile is 0",
            ha="center",
            va="center",
            transform=ax.transAxes,
            fontsize=9,
            color="0.3",
        )
    n_tasks = len(result.config.tasks)
    ax.set_title(
        f"performance profiles over {n_tasks} task{'s' if n_tasks != 1 else ''} "
        "(higher and further left is better)",
        fontsize=10,
    )
    return save_figure(fig, path)
