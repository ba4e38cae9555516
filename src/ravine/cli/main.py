"""The ``ravine`` command line.

torch and matplotlib are imported inside the commands, so ``ravine --help`` stays instant, and
options are checked before those imports, so a typo fails at once. Bad input of any kind
(unknown option or name, invalid value, unusable file, full disk, too little memory) prints
one line on stderr and exits with status 2, never a traceback; :mod:`ravine.cli.errors` holds
the mapping of every failure to its line and exit code.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ravine import limits
from ravine.cli import errors
from ravine.cli.errors import EXIT_USAGE, Interrupted, UsageFailure

try:  # recent typer vendors its own click; older releases use click itself
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - depends on the installed typer
    from click import exceptions as click_exceptions

app = typer.Typer(
    name="ravine",
    help="Choose, compare, tune and debug how neural networks are optimized.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

__all__ = ["EXIT_USAGE", "UsageFailure", "app", "main"]


class _Escaped(Exception):
    """Carries a command's exception past typer, which would turn Ctrl-C into a silent exit
    130 and an EOFError into "Aborted!", to :func:`main`'s boundary."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error


def _guarded(command):
    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (SystemExit, typer.Exit, click_exceptions.ClickException):
            raise
        except BaseException as error:
            raise _Escaped(error) from error

    return run


def command(function):
    """``@app.command()`` with the error boundary around the command's body."""
    return app.command()(_guarded(function))


def _check_count(
    option: str, value: int | None, low: int, high: int = limits.MAX_INT, why: str = " (64 bits)"
) -> None:
    """Refuse an integer option outside ``[low, high]`` before anything heavy is imported."""
    if value is None:
        return
    if value < low:
        raise UsageFailure(f"{option} must be an integer >= {low}, got {value}")
    if value > high:
        raise UsageFailure(f"{option} must be <= {high:,}{why}, got {limits.format_count(value)}")


def _check_run_folder(path: Path) -> None:
    """The folder a probe or landscape reads exists (checked before torch is imported)."""
    _check_path("the run folder", path)
    if not path.exists():
        raise UsageFailure(f"run folder {path} does not exist")
    if not path.is_dir():
        raise UsageFailure(f"{path} is not a folder")


def _check_path(option: str, path: Path) -> None:
    text = os.fspath(path)
    if not text or "\0" in text:
        raise UsageFailure(f"{option} {text!r} is not a usable path")
    try:
        os.fsencode(text)
    except UnicodeError:
        raise UsageFailure(f"{option} {text!r} cannot be a file name on this system") from None


def _check_output(out: Path, option: str = "--out") -> None:
    """The output folder can be created and written: not a file, not under a file, writable."""
    _check_path(option, out)
    if out.exists() and not out.is_dir():
        raise UsageFailure(f"{option} {out} exists and is not a folder")
    parent = out
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise UsageFailure(f"{option} {out}: {parent} is a file, not a folder")
    if parent.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise UsageFailure(
            f"{option} {out}: cannot write in {parent} (permission denied or read-only)"
        )
    errors.note_output(out)


_DEVICE_HELP = "cpu, cuda, cuda:N, mps or auto (the best available)."
# --report, on every command that writes a folder (`ravine report FOLDER` makes the same page).
ReportFlag = Annotated[
    bool,
    typer.Option("--report", help="Also write report.html into the folder (see ravine report)."),
]
_COMMAND_LINE: list[str] = []  # what main() was called with: the resume command repeats it


def _print_version(shown: bool) -> None:
    if shown:
        from ravine import __version__

        print(f"ravine {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version; exit."
        ),
    ] = False,
) -> None:
    """Choose, compare, tune and debug how neural networks are optimized."""


@command
def compare(
    opt: Annotated[
        list[str] | None,
        typer.Option(
            "--opt",
            "-o",
            help="Optimizer spec NAME[:key=value,...], repeatable, e.g. adam:lr=0.01,beta2=0.99. "
            "Default: sgd momentum nesterov adagrad rmsprop adam adamw nadam.",
        ),
    ] = None,
    problem: Annotated[
        list[str] | None,
        typer.Option(
            "--problem",
            "-p",
            help="Problem spec NAME[:key=value,...], repeatable, e.g. quadratic:condition_number=1000. "
            "Default: rosenbrock saddle quadratic.",
        ),
    ] = None,
    starts: Annotated[
        int, typer.Option(help="Random starting points per optimizer and problem.")
    ] = 8,
    steps: Annotated[
        int, typer.Option(help="Updates per run (at most 100,000,000: RAVINE_MAX_UPDATES).")
    ] = 1500,
    seed: Annotated[int, typer.Option(help="Seed of the starting points (below 2**44).")] = 0,
    out: Annotated[
        Path | None,
        typer.Option(help="Output folder. Default: ravine-runs/compare-<date>-<time>."),
    ] = None,
    plots: Annotated[bool, typer.Option(help="Draw trajectory and loss figures.")] = True,
    image_format: Annotated[
        str, typer.Option("--format", help="Figure format: png or svg.")
    ] = "png",
    replace: Annotated[
        bool,
        typer.Option(help="Replace what the output folder holds (another comparison or run)."),
    ] = False,
    write_report: ReportFlag = False,
) -> None:
    """Race optimizers on analytic problems from shared random starts; rank them.

    Prints one ranked table per problem (success rate, steps to the target, final loss,
    distance to the nearest minimum, divergences) and writes summary.csv, summary.json,
    runs.npz and, for 2-D problems, trajectories drawn over the contour map, plus loss
    curves, to the output folder.

    Examples:

      ravine compare

      ravine compare --opt sgd:lr=0.002 --opt adam:lr=0.02 --problem rosenbrock --steps 3000
    """
    _check_count("--starts", starts, 1)
    _check_count(
        "--steps", steps, 1, limits.max_updates(), " (RAVINE_MAX_UPDATES raises the limit)"
    )
    _check_count(
        "--seed", seed, 0, limits.MAX_COMPARE_SEED, " (starts are drawn from seed * 1_000_003)"
    )
    if image_format not in ("png", "svg"):
        raise UsageFailure(f"--format must be png or svg, got {image_format!r}")
    from ravine.arguments import parse_optimizer_spec  # torch-free: a typo fails at once

    for spec in opt or ():
        try:
            parse_optimizer_spec(spec)
        except ValueError as error:
            raise UsageFailure(str(error)) from None
    import time

    out = out or Path("ravine-runs") / time.strftime("compare-%Y%m%d-%H%M%S")
    _check_output(out)

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ravine.report.compare import summary_tables, write_compare_outputs
    from ravine.report.tables import print_table
    from ravine.study.compare import (
        DEFAULT_OPTIMIZERS,
        DEFAULT_PROBLEMS,
        CompareConfig,
        OptimizerSpec,
        run_compare,
    )

    try:
        config = CompareConfig(
            optimizers=tuple(OptimizerSpec.parse(s) for s in (opt or DEFAULT_OPTIMIZERS)),
            problems=tuple(problem or DEFAULT_PROBLEMS),
            starts=starts,
            steps=steps,
            seed=seed,
        )
    except (ValueError, TypeError) as error:
        raise UsageFailure(str(error)) from None
    with _claim(out, "compare", repr(config), replace=replace) as folder:
        console = Console()
        total = len(config.optimizers) * len(config.problems) * config.steps
        with Progress(
            TextColumn("[bold]compare"),
            BarColumn(),
            TextColumn("{task.completed:,}/{task.total:,} updates"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as progress:
            task = progress.add_task("compare", total=total)
            result = run_compare(config, on_progress=lambda n: progress.advance(task, n))
        for table in summary_tables(result):
            print_table(
                console, table, droppable=("div.", "dist", "best"), source=f"{out}/summary.csv"
            )
            console.print()
        written = write_compare_outputs(result, out, plots=plots, fmt=image_format)
        folder.finish()
    console.print(f"wrote {len(written)} files to {out}/")
    _after_run(out, write_report)


@command
def train(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="TOML run config (see configs/).")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Output folder. Default: ravine-runs/train-<dataset>-<model>-<optimizer>-"
            "<config hash>, so the same command resumes the same run."
        ),
    ] = None,
    dataset: Annotated[
        str | None, typer.Option(help="Built-in data set, e.g. digits, mnist1d.")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Model preset (e.g. mnist1d_cnn) or kind (mlp, cnn, ...).")
    ] = None,
    optimizer: Annotated[str | None, typer.Option(help="Optimizer name, e.g. nadam.")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate.")] = None,
    opt_arg: Annotated[
        list[str] | None,
        typer.Option(
            "--opt-arg",
            help="Any other optimizer hyperparameter KEY=VALUE, repeatable, e.g. "
            "betas=0.9,0.99 or beta2=0.99, weight_decay=1e-4, amsgrad=true, max_grad_norm=1.",
        ),
    ] = None,
    schedule: Annotated[str | None, typer.Option(help="Schedule name, e.g. cosine.")] = None,
    schedule_arg: Annotated[
        list[str] | None,
        typer.Option(
            "--schedule-arg",
            help="Schedule argument KEY=VALUE, repeatable, e.g. gamma=0.99 (exponential), "
            "warmup_steps=100 then=cosine (warmup). Lengths count updates.",
        ),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="Your own data: a .npz/.npy file, a .csv/.parquet table or a folder of "
            "images, one sub-folder per class (see README, 'Your own data').",
        ),
    ] = None,
    data_arg: Annotated[
        list[str] | None,
        typer.Option(
            "--data-arg",
            help="Data set argument KEY=VALUE, repeatable, e.g. root=~/mnist (mnist), "
            "label=COLUMN (--data tables), test_fraction=0.2.",
        ),
    ] = None,
    init: Annotated[str | None, typer.Option(help="Weight init scheme, e.g. he_normal.")] = None,
    activation: Annotated[str | None, typer.Option(help="Hidden activation.")] = None,
    depth: Annotated[int | None, typer.Option(help="Hidden layers (at most 10,000).")] = None,
    width: Annotated[
        int | None, typer.Option(help="Units per hidden layer (at most 1,000,000).")
    ] = None,
    batch_norm: Annotated[
        bool | None, typer.Option("--batch-norm/--no-batch-norm", help="Batch normalization.")
    ] = None,
    dropout: Annotated[float | None, typer.Option(help="Dropout probability.")] = None,
    epochs: Annotated[
        int | None,
        typer.Option(help="Passes over the training data (at most 100,000,000 updates in all)."),
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Examples per update.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of every random stream.")] = None,
    restarts: Annotated[
        int | None, typer.Option(help="Independent copies trained as one batched computation.")
    ] = None,
    snapshots: Annotated[
        int | None, typer.Option(help="Cosine cycles with a snapshot ensemble (0: off).")
    ] = None,
    grad_noise: Annotated[float | None, typer.Option(help="Annealed gradient noise eta.")] = None,
    early_stopping: Annotated[int | None, typer.Option(help="Patience in epochs (0: off).")] = None,
    keep_weights: Annotated[
        bool | None,
        typer.Option("--keep-weights", help="Save the weights of every epoch (trajectories)."),
    ] = None,
    curvature_every: Annotated[
        int,
        typer.Option(help="Record Hessian extremes every K updates; mark saddles (0: off)."),
    ] = 0,
    gradient_health: Annotated[
        bool,
        typer.Option(
            "--gradient-health", help="Watch per-layer gradients over the run; flag problems."
        ),
    ] = False,
    signals_every: Annotated[
        int,
        typer.Option(
            help="Every K updates, measure training signals on a fixed probe batch: gradient "
            "noise scale and SNR, batch-size tests, step size alpha, distance, Hessian trace; "
            "write signals.jsonl, signals.json and the signals.png dashboard (0: off)."
        ),
    ] = 0,
    threads: Annotated[
        int | None,
        typer.Option(help="Intra-op threads. Default: 1 for small networks, else torch's."),
    ] = None,
    tensorboard: Annotated[
        bool,
        typer.Option(
            "--tensorboard",
            help="Also write TensorBoard event files (scalars, histograms, hparams) into "
            "the run folder's tensorboard/.",
        ),
    ] = False,
    replace: Annotated[
        bool,
        typer.Option(
            "--replace",
            "--fresh",
            help="Replace the run the output folder holds (only once this run's config is "
            "valid); without it, a folder holding another run is refused.",
        ),
    ] = False,
    device: Annotated[str, typer.Option(help=_DEVICE_HELP)] = "auto",
    precision: Annotated[
        str | None,
        typer.Option(help="fp32, bf16 or fp16 (autocast; fp16 with a loss scale). Default fp32."),
    ] = None,
    compile_model: Annotated[
        bool, typer.Option("--compile", help="torch.compile the model (slower first updates).")
    ] = False,
    write_report: ReportFlag = False,
) -> None:
    """Train a network; resume automatically from the output folder's checkpoint.

    Flags override the config file. Writes config.toml, metrics.jsonl, steps.csv,
    checkpoint.pt, model.pt, summary.json and curves.png to the output folder. A run too
    large for this machine's memory, or of more than 100,000,000 updates, is refused up
    front (RAVINE_MEMORY_LIMIT, RAVINE_MAX_UPDATES). Exit status: 0 done, 1 diverged,
    2 bad input, 130 interrupted.

    Examples:

      ravine train --epochs 3

      ravine train --dataset mnist1d --model mnist1d_mlp --optimizer nadam --lr 2e-3 --epochs 2

      ravine train --restarts 8 --epochs 3
    """
    device = _check_device(device)
    _check_count("--depth", depth, 0, limits.MAX_DEPTH, "")
    _check_count("--width", width, 1, limits.MAX_WIDTH, "")
    _check_count("--curvature-every", curvature_every, 0)
    _check_count("--signals-every", signals_every, 0)
    _check_count("--threads", threads, 1, limits.MAX_THREADS, "")
    from ravine.train.config import ConfigError, check_arguments, check_paths, load_config

    model_args = {
        k: v
        for k, v in {
            "init": init,
            "activation": activation,
            "depth": depth,
            "width": width,
            "batch_norm": batch_norm,
            "dropout": dropout,
        }.items()
        if v is not None
    }
    pairs = {
        option: _split_pairs(values or [], option)
        for option, values in (
            ("--opt-arg", opt_arg),
            ("--schedule-arg", schedule_arg),
            ("--data-arg", data_arg),
        )
    }
    if data is not None and dataset is not None:
        raise UsageFailure(f"give --dataset {dataset} or --data {data}, not both")
    if data is not None:
        _check_path("--data", data)
    try:
        # The file, every flag and every KEY=VALUE are checked before torch is imported
        # (ravine.arguments holds what each registry accepts).
        run = load_config(
            config,
            dataset=dataset,
            model=model,
            optimizer=optimizer,
            model_args=model_args or None,
            schedule=schedule,
            epochs=epochs,
            batch_size=batch_size,
            seed=seed,
            restarts=restarts,
            snapshots=snapshots,
            grad_noise=grad_noise,
            early_stopping=early_stopping,
            keep_weights=keep_weights,
            precision=precision,
        )
        run = _with_pairs(run, config, lr, data, pairs)
        check_arguments(run)
        out = out or default_run_folder(run)
        _check_output(out)
        check_paths(run, out)
    except (ConfigError, ValueError) as error:
        raise UsageFailure(str(error)) from None
    if curvature_every and run.restarts > 1:
        raise UsageFailure(
            f"--curvature-every must be >= 0 and needs restarts = 1, got {curvature_every}"
        )
    if gradient_health and run.restarts > 1:
        raise UsageFailure("--gradient-health needs restarts = 1")
    if signals_every and run.restarts > 1:
        raise UsageFailure("--signals-every needs restarts = 1")
    if run.user:
        raise UsageFailure(
            "[user] records a model or data given from Python (ravine.train.train(model=, "
            "data=)); the command line trains built-in models and data"
        )
    if tensorboard:
        _check_tensorboard()
    run = _pinned(run)  # a file's SHA-256 joins the config: a resume with another is refused
    _preflight(run)  # the model, the optimizer, the data, the update count, the memory
    resolved = _resolve_device(device)
    from ravine.cli.study_options import threads_for

    with threads_for(run, run.restarts, threads):
        _run_training(
            run,
            out,
            curvature_every,
            gradient_health,
            signals_every=signals_every,
            replace=replace,
            tensorboard=tensorboard,
            device=resolved,
            compile_model=compile_model,
        )
    _after_run(out, write_report)


def _with_pairs(run, config: Path | None, lr: float | None, data: Path | None, pairs: dict):
    """``run`` with ``--lr``, ``--data`` and the ``--opt-arg`` / ``--schedule-arg`` /
    ``--data-arg`` pairs applied over what the config file set (torch-free)."""
    import dataclasses

    from ravine import arguments
    from ravine.train.config import TrainConfig, file_fields

    # A flag that names another schedule or data set drops the file's arguments for the old one.
    written = file_fields(config)
    file_dataset = written.get("dataset", TrainConfig.dataset)
    changes: dict = {}
    if data is not None:
        kept = run.dataset_args if file_dataset == "file" else {}
        kept = {k: v for k, v in kept.items() if k not in ("path", "sha256")}
        changes.update(dataset="file", dataset_args={**kept, "path": os.fspath(data)})
    elif run.dataset != file_dataset:
        changes["dataset_args"] = {}
    if run.schedule != written.get("schedule"):
        changes["schedule_args"] = {}
    run = dataclasses.replace(run, **changes) if changes else run

    optimizer_args = {"lr": lr} if lr is not None else {}
    given = arguments.parse_optimizer_args(run.optimizer, pairs["--opt-arg"], run.optimizer_args)
    if lr is not None and "lr" in given:
        raise ValueError("--lr and --opt-arg lr=... both set the learning rate: give one")
    optimizer_args.update(given)
    schedule_args = {}
    if pairs["--schedule-arg"]:
        if run.schedule is None:
            raise ValueError("--schedule-arg needs a schedule: --schedule NAME")
        schedule_args = arguments.parse_schedule_args(run.schedule, pairs["--schedule-arg"])
    dataset_args = arguments.parse_dataset_args(run.dataset, pairs["--data-arg"])
    if not (optimizer_args or schedule_args or dataset_args):
        return run
    return dataclasses.replace(
        run,
        optimizer_args={**run.optimizer_args, **optimizer_args},
        schedule_args={**run.schedule_args, **schedule_args},
        dataset_args={**run.dataset_args, **dataset_args},
    )


def _pinned(run):
    """``run`` with the SHA-256 of the file (or image folder) ``[data] path`` names."""
    if run.dataset != "file":
        return run
    from ravine.train import ConfigError
    from ravine.train.build import pin_data_file

    try:
        return pin_data_file(run)
    except ConfigError as error:
        raise UsageFailure(str(error)) from None


def _check_device(name: str) -> str:
    """The device name, checked without torch (whether the machine has it: _resolve_device)."""
    from ravine.train.devices import check_device_name  # torch-free

    try:
        return check_device_name(name, "--device")
    except ValueError as error:
        raise UsageFailure(str(error)) from None


def _resolve_device(name: str):
    from ravine.train.devices import resolve_device

    try:
        return resolve_device(name, "--device")
    except ValueError as error:
        raise UsageFailure(str(error)) from None


def _claim(out: Path, kind: str, config: str, *, replace: bool):
    """Take ``out`` for a run of ``kind`` (see ravine.folders.RunFolder), or one line."""
    from ravine.folders import FolderInUseError, FolderTakenError, RunFolder

    try:
        return RunFolder.claim(out, kind, config, replace=replace)
    except (FolderTakenError, FolderInUseError) as error:  # (OSErrors: the boundary words them)
        raise UsageFailure(str(error)) from None


def default_run_folder(run) -> Path:
    """``ravine-runs/train-<dataset>-<model>-<optimizer>-<hash of the config>``: the same
    command trains into (and so resumes) the same folder; another config gets another."""
    import hashlib

    from ravine.train.config import dump_toml

    text = dump_toml(run.to_toml_tables())
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    name = f"train-{run.dataset}-{run.model}-{run.optimizer}-{digest}"
    return Path("ravine-runs") / "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _interrupted_message(out: Path) -> str:
    import shlex

    if not any(out.glob("*checkpoint.pt")):
        return f"interrupted before the first checkpoint; nothing of the run in {out} to keep"
    argv = [a for a in _COMMAND_LINE if a not in ("--replace", "--fresh")]
    if "--out" not in argv and not any(a.startswith("--out=") for a in argv):
        argv += ["--out", str(out)]
    return (
        f"interrupted; the last checkpoint is in {out}/ and this resumes it: "
        f"ravine {shlex.join(argv)}"
    )


def _split_pairs(pairs: list[str], option: str = "--opt-arg") -> list[tuple[str, str]]:
    split = []
    for pair in pairs:
        key, eq, raw = pair.partition("=")
        if not eq:
            raise UsageFailure(f"{option} {pair!r} is not KEY=VALUE")
        if not key.strip():
            raise UsageFailure(f"{option} {pair!r} has no KEY before the =")
        split.append((key.strip(), raw.strip()))
    return split


def _preflight(run) -> None:
    """Check what needs torch before any work: model, optimizer, data, size of the run."""
    import dataclasses

    import torch

    from ravine.optim import make_optimizer
    from ravine.problems import ModelConfig, load_dataset
    from ravine.train import ConfigError, budget
    from ravine.train.build import check_split, model_config, prepare_data

    try:
        fields = [f.name for f in dataclasses.fields(ModelConfig)]
        unknown = [key for key in run.model_args if key not in fields]
        if unknown:
            raise ConfigError(
                f"unknown key {unknown[0]!r} in [model]; valid: preset, pretrained, "
                f"{', '.join(fields)}"
            )
        model_config(run)
        try:
            make_optimizer(
                run.optimizer, [torch.nn.Parameter(torch.zeros(1))], **run.optimizer_args
            )
        except (ValueError, TypeError) as error:
            raise ConfigError(f"optimizer: {error}") from None
        if run.val_fraction:  # prepare_data fails obscurely when nothing is left to train on
            try:
                dataset = load_dataset(run.dataset, **run.dataset_args)
            except (TypeError, ValueError) as error:
                raise ConfigError(f"data: {error}") from None
            check_split(run, len(dataset.x_train))
        splits = prepare_data(run)
        budget.check(run, splits)
        if run.pretrained:
            _check_pretrained(run, splits)
    except ConfigError as error:
        raise UsageFailure(str(error)) from None


def _check_pretrained(run, splits) -> None:
    # The trainer would meet an unreadable file only after it built the model; a file a user
    # names can be broken in more ways than torch.load has exception types.
    from ravine.problems import build_model, pre_initialize
    from ravine.train import ConfigError
    from ravine.train.build import input_view, model_config

    mconfig = model_config(run)
    dataset = splits.dataset
    model = build_model(
        mconfig, input_view(mconfig, dataset), dataset.num_classes or dataset.y_train.shape[1]
    )
    try:
        record = pre_initialize(model, run.pretrained, strict=False)
    except Exception as error:
        detail = errors.one_line(str(error)) or type(error).__name__
        raise ConfigError(
            f"[model] pretrained: {run.pretrained} is not a checkpoint ravine can read ({detail})"
        ) from None
    if not record.loaded:
        raise ConfigError(f"[model] pretrained: nothing in {run.pretrained} matches the model")


def _check_tensorboard() -> None:
    """--tensorboard needs the tensorboard package (the dev extra); say so before training."""
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        raise UsageFailure(
            "--tensorboard needs the tensorboard package: pip install tensorboard "
            '(or pip install -e ".[dev]")'
        )


def _run_training(
    run,
    out: Path,
    curvature_every: int = 0,
    gradient_health: bool = False,
    *,
    signals_every: int = 0,
    replace=False,
    device=None,
    compile_model: bool = False,
    tensorboard: bool = False,
) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ravine.folders import DamagedFileError, FolderInUseError, locked
    from ravine.optim import NonFiniteGradientError
    from ravine.report.training import draw_run_figures
    from ravine.train import ConfigError, train

    console = Console()
    if device is not None and device.type != "cpu":
        console.print(f"training on {device}")
    if compile_model:
        console.print("compiling the model with torch.compile: the first updates take longer")
    with Progress(
        TextColumn("[bold]train"),
        BarColumn(),
        TextColumn("step {task.completed}/{task.total}"),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("train", total=None, status="")

        def on_progress(info: dict) -> None:
            status = f"epoch {info['epoch']}"
            if "metrics" in info:
                m = info["metrics"]
                held = "val" if "val_loss" in m else "test"
                status += f"  {held} loss {m[f'{held}_loss']:.4f}"
                if f"{held}_accuracy" in m:
                    status += f"  acc {100 * m[f'{held}_accuracy']:.1f}%"
                progress.console.print(status)
            else:
                status += f"  loss {info['loss']:.4f}"
            progress.update(task, completed=info["step"], total=info["total"], status=status)

        logger = None
        try:
            tracker = _curvature_tracker(run, curvature_every) if curvature_every else None
            health = _gradient_health() if gradient_health else None
            signals = _training_signals(run, signals_every) if signals_every else None
            callbacks = [c for c in (tracker, health, signals) if c is not None]
            if tensorboard:  # hooked from above: train knows nothing of TensorBoard
                from ravine.report.tensorboard import TensorBoardLogger, run_hparams

                logger = TensorBoardLogger(out, hparams=run_hparams(run))
                if run.restarts == 1:
                    callbacks.append(logger)
            result = train(
                run,
                out,
                on_progress=on_progress,
                callbacks=callbacks,
                replace=replace,
                device=device,
                compile=compile_model,
                on_epoch=logger.on_epoch if logger is not None else None,
            )
            with locked(out):
                draw_run_figures(result, run)
                if tracker is not None:
                    _write_curvature(tracker, out)
                if health is not None:
                    _write_gradient_health(health, out, console)
                if signals is not None:
                    _write_signals(signals, out, console)
                if logger is not None:
                    logger.finish(
                        result, curvature=tracker, gradient_health=health, signals=signals
                    )
        except (ConfigError, DamagedFileError, FolderInUseError) as error:
            raise UsageFailure(str(error)) from None
        except KeyboardInterrupt:
            if logger is not None:  # the epochs so far stay readable; a resume appends
                with locked(out):
                    logger.close()
            raise Interrupted(_interrupted_message(out)) from None
        except NonFiniteGradientError as error:
            if logger is not None:
                with locked(out):
                    logger.close()
            console.print(f"training stopped: {error}")
            if any(out.glob("*checkpoint.pt")):
                console.print(f"the last good checkpoint is in {out}/")
            raise typer.Exit(1) from None
    if result.resumed_from_epoch:
        console.print(f"resumed from epoch {result.resumed_from_epoch}")
    if run.restarts > 1:
        _print_restarts(console, result)
    else:
        final = ", ".join(f"{k} {v:.4g}" for k, v in result.final.items())
        console.print(f"final: {final}")
    if run.restarts == 1 and result.ensemble:
        e = result.ensemble
        console.print(
            f"snapshot ensemble of {e['members']}: "
            + ", ".join(f"{k} {v:.4g}" for k, v in e.items() if k != "members")
        )
    console.print(f"wrote {out}/")


@command
def probe(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by ravine train.")],
    examples: Annotated[int, typer.Option(help="Training examples the probes use.")] = 1000,
    k: Annotated[
        int, typer.Option(help="Top and bottom Hessian eigenvalues to find (at most 1,000).")
    ] = 5,
    device: Annotated[str, typer.Option(help=_DEVICE_HELP)] = "auto",
    write_report: ReportFlag = False,
    instruments: Annotated[
        str,
        typer.Option(
            help="Comma-separated: gradients, noise (gradient noise scale, batch-size tests), "
            "spectrum, trace, density, condition, blocks (per-layer curvature); or all."
        ),
    ] = "all",
) -> None:
    """Gradient health, curvature and saddle report of a trained run.

    Writes probe.json, probe-spectrum.png (Hessian eigenvalue density, with density) and
    probe-gradient-flow.png (with gradients) into the run folder; a line per instrument as
    it finishes.

    Examples:

      ravine probe ravine-runs/digits

      ravine probe ravine-runs/digits --instruments spectrum,trace --examples 500
    """
    device = _check_device(device)
    from ravine.cli.probe import parse_instruments, probe_with_progress

    _check_count("--examples", examples, 1)
    _check_count("--k", k, 1, limits.MAX_EIGENVALUES, "")
    chosen = parse_instruments(instruments)
    _check_run_folder(run_dir)
    errors.note_output(run_dir)
    from rich.console import Console

    from ravine.folders import DamagedFileError, FolderInUseError
    from ravine.train import ConfigError
    from ravine.train.devices import using_device

    console = Console()
    resolved = _resolve_device(device)
    try:
        # (using_device: load_run puts the model and the data there)
        with using_device(resolved):
            lines = probe_with_progress(
                run_dir, examples=examples, k=k, instruments=chosen, console=console
            )
    except (ConfigError, DamagedFileError, FolderInUseError) as error:
        raise UsageFailure(str(error)) from None
    for line in lines:
        console.print(line)
    console.print(f"wrote probe.json (and the figures of the instruments that ran) to {run_dir}/")
    _after_run(run_dir, write_report)


@command
def landscape(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by ravine train.")],
    kind: Annotated[str, typer.Option(help="interp, surface or trajectory.")] = "surface",
    resolution: Annotated[int, typer.Option(help="Grid points per axis (2 to 1,000).")] = 25,
    examples: Annotated[int, typer.Option(help="Examples per split evaluated.")] = 1000,
    device: Annotated[str, typer.Option(help=_DEVICE_HELP)] = "auto",
    write_report: ReportFlag = False,
) -> None:
    """Loss landscape of a trained run: interpolation, surface, or trajectory.

    interp: the line from the initialization to the trained weights (Goodfellow et al. 2015);
    surface: two filter-normalized random directions around the trained weights (Li et al.
    2018), train and test; trajectory: the weights of every epoch on their top-2 PCA axes
    (train with --keep-weights). Writes landscape-KIND.npz and .png into the run folder.

    Examples:

      ravine landscape ravine-runs/digits --kind interp
    """
    device = _check_device(device)
    kinds = ("interp", "surface", "trajectory")
    if kind not in kinds:
        raise UsageFailure(f"unknown --kind {kind!r}; valid: {', '.join(kinds)}")
    _check_count("--resolution", resolution, 2, limits.MAX_RESOLUTION, "")
    _check_count("--examples", examples, 1)
    _check_run_folder(run_dir)
    errors.note_output(run_dir)
    from rich.console import Console

    from ravine.folders import DamagedFileError, FolderInUseError
    from ravine.report.probe import landscape_run
    from ravine.train import ConfigError
    from ravine.train.devices import using_device

    console = Console()
    resolved = _resolve_device(device)
    try:
        # (using_device: load_run puts the model and the data there)
        with console.status(f"landscape: {kind}"), using_device(resolved):
            written = landscape_run(run_dir, kind, resolution=resolution, examples=examples)
    except (ConfigError, DamagedFileError, FolderInUseError) as error:
        raise UsageFailure(str(error)) from None
    console.print(f"wrote {', '.join(p.name for p in written)} to {run_dir}/")
    _after_run(run_dir, write_report)


def _after_run(folder: Path, wanted: bool) -> None:
    if wanted:
        from ravine.cli.report import after_run

        after_run(folder)


def _probe_batch(run):
    """The fixed batch the training-time instruments measure on: the run's first 256
    training examples, shaped for its model, and the run's loss."""
    from ravine.train.build import input_view, loss_function, model_config, prepare_data

    splits = prepare_data(run)
    shape = input_view(model_config(run), splits.dataset)
    x = splits.x_train[:256].reshape(-1, *shape)
    return loss_function(splits.dataset), (x, splits.y_train[:256])


def _curvature_tracker(run, every: int):
    from ravine.probe import CurvatureTracker

    loss_fn, batch = _probe_batch(run)
    return CurvatureTracker(loss_fn, batch, every=every)


def _gradient_health():
    from ravine.probe.gradients import GradientHealthCallback

    return GradientHealthCallback()


def _training_signals(run, every: int):
    """The :class:`TrainingSignals` callback on the probe batch, read at the run's batch."""
    from ravine.probe.signals import TrainingSignals

    loss_fn, batch = _probe_batch(run)
    return TrainingSignals(loss_fn, batch, every=every, batch_size=run.batch_size)


def _write_signals(signals, out: Path, console) -> None:
    """The signals' files (see :func:`ravine.report.signals.write_signals`); a line per
    finding."""
    from ravine.report.folder import finding_line
    from ravine.report.signals import write_signals

    findings = write_signals(signals, out)
    for finding in findings:
        console.print(finding_line(finding), markup=False, highlight=False, soft_wrap=True)
    if not signals.records:
        console.print(
            f"training signals: no record (the run had fewer than {signals.every} updates)"
        )
    elif not findings:
        console.print("training signals: nothing flagged")


def _write_gradient_health(health, out: Path, console) -> None:
    import json

    from ravine.folders import atomic_write_text
    from ravine.report.gradients import plot_gradient_flow

    findings = health.findings()
    atomic_write_text(out / "gradient-health.json", json.dumps(health.finding_records(), indent=2))
    if health.monitor is not None and health.monitor.history:
        plot_gradient_flow(health.monitor, out / "gradient-flow.png", title="Gradient flow")
    for f in findings:
        console.print(f"{f.kind} at {f.layer} from step {f.step}: {f.message}. {f.advice}")
    if not findings:
        console.print("gradient health: nothing flagged")


def _write_curvature(tracker, out: Path) -> None:
    import json

    from ravine.folders import atomic_write_text
    from ravine.report.training import plot_curvature

    lines = "".join(json.dumps(r) + "\n" for r in tracker.to_records())
    atomic_write_text(out / "curvature.jsonl", lines)
    if tracker.records:
        plot_curvature(
            tracker.to_records(), tracker.episodes(), out / "curvature.png", every=tracker.every
        )


def _print_restarts(console, result) -> None:
    from rich.table import Table

    from ravine.report.tables import print_table

    table = Table(title=f"{result.restarts} restarts ({result.method})", title_justify="left")
    for column in ("metric", "best", "median", "worst", "std"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for metric, stats in result.summary.items():
        if isinstance(stats, dict) and "median" in stats:
            table.add_row(metric, *(f"{stats[k]:.4g}" for k in ("best", "median", "worst", "std")))
    print_table(console, table, droppable=("std",), source=f"{result.out_dir}/restarts.json")
    if result.ensemble:
        console.print(
            "ensemble of the restarts: "
            + ", ".join(f"{k} {v:.4g}" for k, v in result.ensemble.items())
        )
    if result.diverged:
        console.print(f"diverged restarts: {', '.join(map(str, result.diverged))}")
    console.print(f"final: per-restart metrics in {result.out_dir}/restarts.csv")


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app; every failure ends as one line and an exit code
    (:mod:`ravine.cli.errors`): 2 for what the user can fix, 1 for a diverged run or a bug,
    130 when interrupted."""
    _COMMAND_LINE[:] = sys.argv[1:] if argv is None else list(argv)
    errors.note_output("the output folder")
    _tolerate_unencodable_output()
    try:
        code = app(args=argv, prog_name="ravine", standalone_mode=False)
    except click_exceptions.NoArgsIsHelpError as shown:
        print(shown.format_message() if hasattr(shown, "format_message") else shown)
        return 0
    except typer.Exit as done:
        code = done.exit_code
    except _Escaped as escaped:
        if isinstance(escaped.error, BrokenPipeError):
            _silence_stdout()
        return errors.report(escaped.error)
    except (Exception, KeyboardInterrupt) as error:
        return errors.report(error)
    # In this mode a command's typer.Exit(code) comes back as the return value; typer turns
    # a Ctrl-C while it parses the command line into 130.
    if code == errors.EXIT_INTERRUPTED:
        return errors.report(KeyboardInterrupt())
    return code if isinstance(code, int) else 0


def _tolerate_unencodable_output() -> None:
    # A file name from undecodable bytes must not turn "wrote ... to <out>" into a crash.
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        with contextlib.suppress(ValueError, OSError):  # closed or exotic streams
            reconfigure(errors="backslashreplace")


def _silence_stdout() -> None:
    # The reader of stdout went away (`ravine compare | head`): stop Python from failing
    # again when it flushes stdout at exit.
    with contextlib.suppress(OSError, ValueError, AttributeError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


# Command groups in their own modules register on `app` when imported (after it exists).
from ravine.cli import report as _report  # noqa: E402, F401
from ravine.cli import study as _study  # noqa: E402, F401
from ravine.cli import tune as _tune  # noqa: E402, F401

if __name__ == "__main__":
    sys.exit(main())
