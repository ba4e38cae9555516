"""``ravine tune``: search an optimizer's hyperparameters with Optuna, trials batched."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ravine.cli.main import ReportFlag, UsageFailure, command


@command
def tune(
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="TOML run config; a [tune] table sets the study."),
    ] = None,
    optimizer: Annotated[str | None, typer.Option(help="Optimizer to tune, e.g. adam.")] = None,
    dataset: Annotated[str | None, typer.Option(help="Built-in data set, e.g. digits.")] = None,
    model: Annotated[str | None, typer.Option(help="Model preset or kind.")] = None,
    data: Annotated[
        Path | None,
        typer.Option(help="Your own data file or image folder (see ravine train --help)."),
    ] = None,
    data_arg: Annotated[
        list[str] | None,
        typer.Option("--data-arg", help="Data set argument KEY=VALUE, repeatable."),
    ] = None,
    opt_arg: Annotated[
        list[str] | None,
        typer.Option(
            "--opt-arg", help="Fixed optimizer hyperparameter KEY=VALUE (not searched), repeatable."
        ),
    ] = None,
    schedule: Annotated[str | None, typer.Option(help="Schedule name, e.g. cosine.")] = None,
    schedule_arg: Annotated[
        list[str] | None,
        typer.Option("--schedule-arg", help="Schedule argument KEY=VALUE, repeatable."),
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs per trial.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Examples per update.")] = None,
    space: Annotated[
        list[str] | None,
        typer.Option(
            "--space",
            help="Searched quantity NAME[=LOW:HIGH[:log][:int] | =A,B,...], repeatable; a bare "
            "name takes its published range, 'all' the optimizer's whole published space. "
            "Default: lr.",
        ),
    ] = None,
    trials: Annotated[int | None, typer.Option(help="Trials to finish.")] = None,
    batch: Annotated[
        int | None, typer.Option(help="Trials trained together as one batched computation.")
    ] = None,
    sampler: Annotated[str | None, typer.Option(help="tpe, qmc, random or grid.")] = None,
    pruner: Annotated[str | None, typer.Option(help="none, median, halving or hyperband.")] = None,
    metric: Annotated[str | None, typer.Option(help="val_loss or val_accuracy.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the sampler.")] = None,
    storage: Annotated[
        str | None,
        typer.Option(help="SQLAlchemy URL of the study storage. Default: SQLite in --out."),
    ] = None,
    study_name: Annotated[
        str | None, typer.Option(help="Name of the study in the storage.")
    ] = None,
    executor: Annotated[str, typer.Option(help="local or ray.")] = "local",
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (with --executor ray).")
    ] = None,
    parallel: Annotated[
        int | None, typer.Option(help="Batches in flight at once (with --executor ray).")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Output folder. Default: ravine-runs/tune-<optimizer>-<dataset>-<config hash>, "
            "so the same command continues the same study."
        ),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(help="Intra-op threads. Default: 1 for small networks, else torch's."),
    ] = None,
    replace: Annotated[
        bool, typer.Option(help="Replace the study or run the output folder holds.")
    ] = False,
    tensorboard: Annotated[
        bool,
        typer.Option(
            "--tensorboard",
            help="Also write each trial's curve and hyperparameters as TensorBoard runs "
            "(tensorboard/trial-N/).",
        ),
    ] = False,
    write_report: ReportFlag = False,
) -> None:
    """Tune an optimizer's hyperparameters on a network: Optuna trials, N at a time.

    Each batch of trials trains as one batched computation (every trial a member with its own
    hyperparameters); a trial's value is its best validation loss over its epochs. The study
    lives in an Optuna storage (SQLite in the output folder): rerun the same command after a
    crash and it continues, finished trials kept. Writes trials.csv, trials.json, tune.json,
    best.toml (reproduce the best trial: ravine train --config best.toml) and figures.

    Examples:

      ravine tune

      ravine tune --optimizer sgd --space lr --space one_minus_momentum --trials 64

      ravine tune --space all --sampler qmc --pruner halving --epochs 30
    """
    from ravine.cli.main import _split_pairs
    from ravine.cli.study_options import executor_of, load_tune_config, threads_for

    if data is not None and dataset is not None:
        raise UsageFailure(f"give --dataset {dataset} or --data {data}, not both")
    tune_config = load_tune_config(
        config,
        train_overrides={
            "optimizer": optimizer,
            "dataset": dataset,
            "model": model,
            "schedule": schedule,
            "epochs": epochs,
            "batch_size": batch_size,
        },
        data=data,
        pairs={
            "--opt-arg": _split_pairs(opt_arg or [], "--opt-arg"),
            "--schedule-arg": _split_pairs(schedule_arg or [], "--schedule-arg"),
            "--data-arg": _split_pairs(data_arg or [], "--data-arg"),
        },
        tune_overrides={
            "space": space,
            "trials": trials,
            "batch": batch,
            "sampler": sampler,
            "pruner": pruner,
            "metric": metric,
            "seed": seed,
            "study_name": study_name,
        },
    )
    pool = executor_of(executor, address, parallel)  # validated before any work
    out = out or _default_folder(tune_config)
    if tensorboard:
        from ravine.cli.main import _check_tensorboard

        _check_tensorboard()
    with threads_for(tune_config.train, tune_config.batch, threads):
        _run(tune_config, out, storage, pool, replace)
    if tensorboard:
        from ravine.folders import locked
        from ravine.report.tensorboard import write_tune_events

        with locked(out):
            written = write_tune_events(out)
        typer.echo(f"wrote {written}/")
    if write_report:
        from ravine.cli.report import after_run

        after_run(out)


def _default_folder(config) -> Path:
    import hashlib

    digest = hashlib.sha256(config.describe().encode()).hexdigest()[:10]
    name = f"tune-{config.train.optimizer}-{config.train.dataset}-{digest}"
    return Path("ravine-runs") / "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _run(config, out: Path, storage, pool, replace: bool) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ravine.folders import DamagedFileError, FolderInUseError, locked
    from ravine.report.tables import print_table
    from ravine.report.tune import draw_tune_figures, tune_table
    from ravine.study.tune import run_tune
    from ravine.train import ConfigError

    console = Console()
    with Progress(
        TextColumn("[bold]tune"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} trials"),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("tune", total=config.trials, status="")

        def on_progress(info: dict) -> None:
            if "finished" in info:
                best = info["best"]
                status = f"best {config.metric} {best:.4g}" if best is not None else ""
                progress.update(task, completed=info["finished"], status=status)
            else:
                status = progress.tasks[0].fields["status"].split("  epoch")[0]
                progress.update(task, status=f"{status}  epoch {info['epoch']}/{info['epochs']}")

        try:
            result = run_tune(
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
        draw_tune_figures(result)
    print_table(console, tune_table(result), droppable=("epochs",), source=f"{out}/trials.csv")
    counts = result.counts
    console.print(
        f"{counts['complete']} complete, {counts['pruned']} pruned, {counts['failed']} failed"
        + (f" ({counts['stale']} lost to a crash, re-run)" if counts["stale"] else "")
        + f"; {result.seconds:.1f} s"
    )
    if result.best_params:
        best = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in result.best_optimizer_args.items()
            if k in _shown(result)
        )
        console.print(f"best: {best} ({config.metric} {result.best_value:.4g})", soft_wrap=True)
        console.print(f"reproduce it: ravine train --config {out}/best.toml", soft_wrap=True)
    console.print(f"wrote {out}/", soft_wrap=True)


def _shown(result) -> set[str]:
    from ravine.study.space import hyperparameters

    args, _ = hyperparameters(result.config.train.optimizer, result.best_params)
    return set(args)
