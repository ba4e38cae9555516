"""``ravine report``: one self-contained HTML page for ravine folders, and the ``--report``
option the other commands share."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ravine.cli import errors
from ravine.cli.main import UsageFailure, _check_path, command


@command
def report(
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="Folders written by ravine train, compare, tune or study (one or more)."
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            help="HTML file to write. Default: report.html inside the folder (one folder); "
            "ravine-runs/report-<date>-<time>.html for several."
        ),
    ] = None,
    replace: Annotated[
        bool,
        typer.Option(
            help="Overwrite an existing --out file (or a report.html ravine did not write)."
        ),
    ] = False,
) -> None:
    """Write one self-contained HTML report of a folder, or of several side by side.

    The page holds the configuration, the tables (read from the folder's CSV and JSON files),
    every figure (embedded: it opens without network access), the instruments' findings in
    words and the command that reproduces the run. Several folders get a table of their
    final metrics and their shared curves overlaid.

    Examples:

      ravine report ravine-runs/demo

      ravine report ravine-runs/run-a ravine-runs/run-b --out ravine-runs/a-vs-b.html
    """
    for path in paths:
        _check_path("the folder", path)
    if out is not None:
        _check_path("--out", out)
        if out.suffix.lower() not in (".html", ".htm"):
            raise UsageFailure(f"--out {out} must name an .html file")
    if out is None and len(paths) > 1:
        import time

        out = Path("ravine-runs") / time.strftime("report-%Y%m%d-%H%M%S.html")
    errors.note_output(out if out is not None else paths[0])
    written = write(paths, out, replace=replace)
    typer.echo(f"wrote {written}")


def write(paths: list[Path], out: Path | None, *, replace: bool = False) -> Path:
    """The report of ``paths`` into ``out`` (None: the one folder's report.html); bad folders
    and files end as one line (exit 2)."""
    from ravine.folders import FolderInUseError
    from ravine.report.folder import ReportError
    from ravine.report.html import write_folder_report, write_report

    try:
        if out is None:
            return write_folder_report(paths[0], replace=replace)
        return write_report(paths, out, replace=replace)
    except (ReportError, FolderInUseError) as error:
        raise UsageFailure(str(error)) from None


def after_run(folder: Path) -> None:
    """``--report``: the finished folder's report.html, and a line saying where it is."""
    typer.echo(f"wrote {write([folder], None)}")
