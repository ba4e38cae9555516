"""What ``ravine compare`` leaves behind: ranked tables (terminal, CSV, JSON), arrays, figures."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ravine.folders import atomic_write, atomic_write_text

if TYPE_CHECKING:
    from rich.table import Table

    from ravine.study.compare import CompareResult, Summary

SUMMARY_COLUMNS = (
    "problem",
    "rank",
    "optimizer",
    "successes",
    "starts",
    "success_rate",
    "median_steps",
    "median_final_loss",
    "best_final_loss",
    "median_distance",
    "diverged",
)


def fmt(value: float) -> str:
    """A number as a table shows it: 3 significant digits, 'never' for inf, '-' for NaN."""
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if math.isinf(value):
            return "never" if value > 0 else "-inf"
        if value == int(value) and abs(value) < 1e6:
            return str(int(value))
        return f"{value:.3g}"
    return str(value)


def summary_tables(result: CompareResult) -> list[Table]:
    """One rich table per problem, best optimizer first."""
    from rich.table import Table

    tables = []
    for spec, problem in result.problems.items():
        rows = [s for s in result.summary if s.problem == spec]
        goal = (
            f"escape below {problem.target:g}"
            if problem.escape
            else f"loss within {problem.target - (problem.min_value or 0):.0e} of the minimum"
        )
        table = Table(
            title=f"{spec}: {problem.description}",
            caption=f"success: {goal}. steps: median over the starts of the step "
            + ("it escaped" if problem.escape else "from which it stayed there")
            + " (never: under half succeeded). final, best: "
            "median and best final loss."
            + ("" if problem.escape else " dist: median distance to the nearest minimum.")
            + f" div.: starts that diverged. {result.config.starts} starts, "
            f"{result.config.steps} steps each.",
            title_justify="left",
        )
        table.add_column("#", justify="right")
        table.add_column("optimizer", no_wrap=True)
        table.add_column("success", justify="right")
        table.add_column("steps", justify="right")
        table.add_column("final", justify="right")
        table.add_column("best", justify="right")
        if not problem.escape:
            table.add_column("dist", justify="right")
        table.add_column("div.", justify="right")
        for row in rows:
            cells = [
                str(row.rank),
                row.optimizer,
                f"{row.successes}/{row.starts}",
                fmt(round(row.median_steps) if math.isfinite(row.median_steps) else math.inf),
                fmt(row.median_final_loss),
                fmt(row.best_final_loss),
            ]
            if not problem.escape:
                cells.append(fmt(row.median_distance))
            cells.append(str(row.diverged) if row.diverged else "")
            table.add_row(*cells, style="bold" if row.rank == 1 else None)
        tables.append(table)
    return tables


def write_compare_outputs(
    result: CompareResult, out: str | os.PathLike[str], *, plots: bool = True, fmt: str = "png"
) -> list[Path]:
    """Write ``summary.csv``, ``summary.json``, ``runs.npz`` and, with ``plots``, one trajectory
    figure per 2-D problem and one loss-curve figure per problem. Returns the paths written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = [
        _write_csv(result, out / "summary.csv"),
        _write_json(result, out / "summary.json"),
        _write_arrays(result, out / "runs.npz"),
    ]
    if plots:
        written += _write_plots(result, out, fmt)
    return written


def _summary_record(row: Summary) -> dict[str, Any]:
    record = dataclasses.asdict(row)
    record["success_rate"] = row.success_rate
    return {k: _jsonable(record[k]) for k in SUMMARY_COLUMNS}


def _write_csv(result: CompareResult, path: Path) -> Path:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS)
    writer.writeheader()
    for row in result.summary:
        writer.writerow(_summary_record(row))
    return atomic_write_text(path, buffer.getvalue())


def _write_json(result: CompareResult, path: Path) -> Path:
    config = result.config
    document = {
        "config": {
            "optimizers": [
                {"label": o.label, "name": o.name, "hyperparams": _jsonable(dict(o.hyperparams))}
                for o in config.optimizers
            ],
            "problems": list(config.problems),
            "starts": config.starts,
            "steps": config.steps,
            "seed": config.seed,
        },
        "summary": [_summary_record(row) for row in result.summary],
        "runs": [
            {
                "problem": run.problem,
                "optimizer": run.optimizer,
                "target": run.target,
                "final_loss": _jsonable(run.final_loss.tolist()),
                "steps_to_target": _jsonable(run.steps_to_target.tolist()),
                "distance": _jsonable(run.distance.tolist()),
                "success": run.success.tolist(),
                "diverged": run.diverged.tolist(),
            }
            for run in result.runs
        ],
    }
    return atomic_write_text(path, json.dumps(document, indent=2))


def _write_arrays(result: CompareResult, path: Path) -> Path:
    arrays = {}
    for run in result.runs:
        arrays[f"{run.problem}/{run.optimizer}/positions"] = run.positions
        arrays[f"{run.problem}/{run.optimizer}/losses"] = run.losses
    return atomic_write(path, lambda handle: np.savez_compressed(handle, **arrays))


def _write_plots(result: CompareResult, out: Path, suffix: str) -> list[Path]:
    from ravine.report.plots import plot_loss_curves, plot_trajectories, plot_trajectory_grid

    written = []
    for index, (spec, problem) in enumerate(result.problems.items(), start=1):
        runs = result.runs_for(spec)
        stem = f"{index:02d}-{_slug(spec)}"
        if problem.dim == 2:
            paths = {run.optimizer: run.positions for run in runs}
            # One start per optimizer overlaid (the classic picture), then every start in one
            # panel per optimizer: 64 paths on one map would read as noise.
            written.append(
                plot_trajectories(
                    problem,
                    paths,
                    out / f"{stem}-trajectories.{suffix}",
                    title=f"{spec}: every optimizer from the same start",
                    max_starts=1,
                )
            )
            written.append(
                plot_trajectory_grid(
                    problem,
                    paths,
                    out / f"{stem}-grid.{suffix}",
                    title=f"{spec}: {result.config.starts} starts per optimizer",
                )
            )
        offset = 0.0 if problem.min_value is None else problem.min_value
        written.append(
            plot_loss_curves(
                f"{spec}: loss per step over {result.config.starts} starts",
                {run.optimizer: run.losses - offset for run in runs},
                out / f"{stem}-loss.{suffix}",
                target=problem.target - offset,
                log=not problem.escape,
                ylabel="loss" if offset == 0.0 else "loss - minimum",
            )
        )
    return written


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


def _jsonable(value: Any) -> Any:
    # JSON has no inf/NaN; null says "never reached" / "no minimum" without breaking parsers.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value
