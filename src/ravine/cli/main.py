"""The ``ravine`` command line.

torch and matplotlib are imported inside the commands, so ``ravine --help`` stays instant.
Bad input of any kind (unknown option or name, invalid value) prints one line on stderr and
exits with status 2, never a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

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

EXIT_USAGE = 2


class UsageFailure(Exception):
    """Bad input found by a command; ``main`` prints it on one line and exits 2."""


@app.callback()
def _root() -> None:
    """Choose, compare, tune and debug how neural networks are optimized."""


@app.command()
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
    starts: Annotated[int, typer.Option(help="Random starting points per optimizer and problem.")] = 8,
    steps: Annotated[int, typer.Option(help="Updates per run.")] = 1500,
    seed: Annotated[int, typer.Option(help="Seed of the starting points.")] = 0,
    out: Annotated[
        Path | None,
        typer.Option(help="Output folder. Default: ravine-runs/compare-<date>-<time>."),
    ] = None,
    plots: Annotated[bool, typer.Option(help="Draw trajectory and loss figures.")] = True,
    image_format: Annotated[
        str, typer.Option("--format", help="Figure format: png or svg.")
    ] = "png",
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
    if image_format not in ("png", "svg"):
        raise UsageFailure(f"--format must be png or svg, got {image_format!r}")
    import time

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ravine.report.compare import summary_tables, write_compare_outputs
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
    out = out or Path("ravine-runs") / time.strftime("compare-%Y%m%d-%H%M%S")

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
        console.print(table)
        console.print()
    written = write_compare_outputs(result, out, plots=plots, fmt=image_format)
    console.print(f"wrote {len(written)} files to {out}/")


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app and turn every kind of bad input into one line and exit 2."""
    try:
        app(args=argv, standalone_mode=False)
    except click_exceptions.NoArgsIsHelpError as shown:
        print(shown.format_message() if hasattr(shown, "format_message") else shown)
        return 0
    except click_exceptions.UsageError as error:
        command = error.ctx.command_path if error.ctx else "ravine"
        print(f"error: {error.format_message()} (see '{command} --help')", file=sys.stderr)
        return EXIT_USAGE
    except UsageFailure as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except click_exceptions.Abort:
        print("aborted", file=sys.stderr)
        return 130
    except click_exceptions.Exit as done:
        return done.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
