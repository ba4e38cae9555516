"""``ravine study``: optimizers x tasks x seeds, each tuned on validation, judged on test."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ravine.cli.main import ReportFlag, UsageFailure, command


@command
def study(
    optimizer: Annotated[
        list[str] | None,
        typer.Option(
            "--optimizer",
            "-o",
            help="Optimizer to compare, repeatable. Default: the mission's eight.",
        ),
    ] = None,
    task: Annotated[
        list[str] | None,
        typer.Option(
            "--task",
            "-t",
            help="Built-in task, repeatable (digits_mlp, spirals_mlp, "
            "mnist1d_mlp, mnist1d_cnn, teacher_student, deep_linear). Default: "
            "digits_mlp spirals_mlp.",
        ),
    ] = None,
    trials: Annotated[int, typer.Option(help="Tuning trials per task and optimizer.")] = 8,
    batch: Annotated[int, typer.Option(help="Trials trained together.")] = 16,
    seeds: Annotated[int, typer.Option(help="Seeds the best configuration is retrained with.")] = 5,
    tune_seeds: Annotated[int, typer.Option(help="Seeds per tuning trial.")] = 2,
    space: Annotated[
        list[str] | None,
        typer.Option(
            "--space",
            help="Searched quantity for every optimizer (see ravine tune "
            "--help), repeatable. Default: lr.",
        ),
    ] = None,
    sampler: Annotated[str, typer.Option(help="tpe, qmc, random or grid.")] = "qmc",
    pruner: Annotated[str, typer.Option(help="none, median, halving or hyperband.")] = "none",
    epochs: Annotated[
        int | None, typer.Option(help="Epochs of every task (default: its own).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the samplers.")] = 0,
    storage: Annotated[
        str | None, typer.Option(help="SQLAlchemy URL of the study storage.")
    ] = None,
    executor: Annotated[str, typer.Option(help="local or ray.")] = "local",
    address: Annotated[str | None, typer.Option(help="Ray cluster address.")] = None,
    parallel: Annotated[int | None, typer.Option(help="Batches in flight (ray).")] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Output folder. Default: ravine-runs/study-<config hash>, so the same "
            "command continues the same study."
        ),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(help="Intra-op threads. Default: 1 for small networks, else torch's."),
    ] = None,
    replace: Annotated[bool, typer.Option(help="Replace what the output folder holds.")] = False,
    write_report: ReportFlag = False,
) -> None:
    """Which optimizer trains each network best, and how sure are we?

    Every optimizer gets the same tuning budget per task on a validation split; its best
    configuration is retrained with fresh seeds and reported on the test split (mean, spread,
    95% confidence interval), with the updates it needs to reach the task's validation target;
    performance profiles rank the optimizers across tasks. Writes study.csv, study.json, a
    folder per task and optimizer (its trials and its seeds' run) and figures.

    Examples:

      ravine study

      ravine study --task mnist1d_mlp --optimizer adam --optimizer sgd --trials 16 --seeds 10
    """
    from ravine.cli.study_options import executor_of, threads_for
    from ravine.study.study import DEFAULT_OPTIMIZERS, StudyConfig
    from ravine.study.tasks import DEFAULT_TASKS

    try:
        config = StudyConfig(
            optimizers=tuple(optimizer or DEFAULT_OPTIMIZERS),
            tasks=tuple(task or DEFAULT_TASKS),
            trials=trials,
            batch=batch,
            seeds=seeds,
            tune_seeds=tune_seeds,
            space=tuple(space or ()),
            sampler=sampler,
            pruner=pruner,
            seed=seed,
            epochs=epochs,
        )
    except (ValueError, TypeError) as error:
        raise UsageFailure(str(error)) from None
    pool = executor_of(executor, address, parallel)
    out = out or _default_folder(config)
    first = config.task(config.task_names[0]).config
    with threads_for(first, min(config.batch, config.trials * config.tune_seeds), threads):
        _run(config, out, storage, pool, replace)
    if write_report:
        from ravine.cli.report import after_run

        after_run(out)


def _default_folder(config) -> Path:
    import hashlib

    digest = hashlib.sha256(config.describe().encode()).hexdigest()[:10]
    return Path("ravine-runs") / f"study-{digest}"


def _run(config, out: Path, storage, pool, replace: bool) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ravine.folders import DamagedFileError, FolderInUseError, locked
    from ravine.report.study import draw_study_figures, study_tables
    from ravine.report.tables import print_table
    from ravine.study.study import run_study
    from ravine.train import ConfigError

    console = Console()
    cells = len(config.cells())
    with Progress(
        TextColumn("[bold]study"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} task x optimizer"),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        bar = progress.add_task("study", total=cells, status="")

        def on_progress(info: dict) -> None:
            where = f"{info.get('task')}/{info.get('optimizer')}"
            if info.get("phase") == "tune" and "cell" in info:
                progress.update(bar, completed=info["cell"], status=f"{where}: tuning")
            elif info.get("phase") == "retrain":
                progress.update(
                    bar, status=f"{where}: retraining the best with {config.seeds} seeds"
                )
            elif "finished" in info:
                progress.update(bar, status=f"{where}: {info['finished']}/{info['total']} trials")
            elif "epoch" in info:
                status = progress.tasks[0].fields["status"].split("  epoch")[0]
                progress.update(bar, status=f"{status}  epoch {info['epoch']}/{info['epochs']}")

        try:
            result = run_study(
                config,
                out,
                storage=storage,
                executor=pool,
                replace=replace,
                on_progress=on_progress,
            )
        except (ConfigError, DamagedFileError, FolderInUseError, ValueError) as error:
            raise UsageFailure(str(error)) from None
    with locked(out):
        draw_study_figures(result)
    for table in study_tables(result):
        print_table(
            console, table, droppable=("95% CI", "tuned", "reached"), source=f"{out}/study.csv"
        )
        console.print()
    console.print(f"{cells} cells in {result.seconds:.0f} s; wrote {out}/", soft_wrap=True)
