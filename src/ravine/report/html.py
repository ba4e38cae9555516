"""The HTML report: one self-contained page (figures inlined as base64, no script or style
from the network) for one ravine folder, or several side by side.

The page is rendered from the Jinja2 template ``templates/report.html.j2`` (autoescaped);
what it shows is read by :mod:`ravine.report.folder`. A folder's report is written into the
folder itself (``report.html``, atomically and checksummed, under the folder's lock); a
comparison of several folders goes to a file the caller names (atomically, beside no
manifest: it is not part of any run folder).
"""

from __future__ import annotations

import base64
import datetime
import os
from collections.abc import Sequence
from pathlib import Path

from ravine.folders import atomic_write_text, locked, recorded, write_standalone
from ravine.report.folder import (
    REPORT_NAME,
    Figure,
    FolderRecord,
    ReportError,
    Table,
    cell,
    read_folder,
)

__all__ = ["render_report", "write_folder_report", "write_report"]


def render_report(records: Sequence[FolderRecord]) -> str:
    """The HTML page of ``records`` (one folder, or several compared side by side)."""
    import jinja2

    import ravine

    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("ravine.report", "templates"),
        autoescape=jinja2.select_autoescape(("html", "j2")),
        undefined=jinja2.StrictUndefined,  # a typo in the template fails the tests, not a page
        trim_blocks=True,
        lstrip_blocks=True,
    )
    template = environment.get_template("report.html.j2")
    comparison = _comparison(records) if len(records) > 1 else None
    return template.render(
        records=records,
        comparison=comparison,
        created=datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        version=getattr(ravine, "__version__", ""),
    )


def _comparison(records: Sequence[FolderRecord]) -> dict:
    from ravine.report.overlay import overlay_curves

    labels = _labels(records)
    columns = list(dict.fromkeys(k for r in records for k in r.headline))
    rows = [
        [cell(label), *[cell(r.headline.get(c)) for c in columns]]
        for label, r in zip(labels, records, strict=True)
    ]
    series: dict[str, dict[str, list]] = {}
    for label, record in zip(labels, records, strict=True):
        for name, points in record.curves.items():
            series.setdefault(name, {})[label] = points
    png = overlay_curves(series)
    figure = Figure("curves overlaid", "image/png", base64.b64encode(png).decode()) if png else None
    return {
        "metrics": Table("Side by side", "each folder's final metrics", ["folder", *columns], rows),
        "figure": figure,
        "labels": labels,
        "differences": _differences(records, labels),
    }


def _differences(records: Sequence[FolderRecord], labels: Sequence[str]) -> Table | None:
    """The run settings in which training folders differ (what the comparison is about)."""
    from ravine.train.config import tomllib

    settings = {}
    for label, record in zip(labels, records, strict=True):
        if record.kind not in ("train", "restarts") or not record.config_text:
            continue
        try:
            tables = tomllib.loads(record.config_text)
        except tomllib.TOMLDecodeError:
            continue
        settings[label] = {
            f"{table}.{key}": value
            for table, values in tables.items()
            for key, value in values.items()
        }
    if len(settings) < 2:
        return None
    keys = sorted({k for values in settings.values() for k in values})
    differing = [k for k in keys if len({repr(v.get(k)) for v in settings.values()}) > 1]
    if not differing:
        return None
    rows = [[cell(label), *[cell(values.get(k)) for k in differing]]
            for label, values in settings.items()]  # fmt: skip
    return Table("Settings that differ", "each folder's config.toml", ["folder", *differing], rows)


def _labels(records: Sequence[FolderRecord]) -> list[str]:
    # Folder names, or more of the path where two folders share a name.
    names = [r.label for r in records]
    if len(set(names)) == len(names):
        return names
    return [str(r.path) for r in records]


def write_folder_report(folder: str | os.PathLike[str], *, replace: bool = False) -> Path:
    """Write ``folder``'s report into it as ``report.html`` and return its path.

    A ``report.html`` that ravine wrote is brought up to date; one ravine did not write (it is
    not in the folder's manifest) is kept unless ``replace``.
    """
    folder = Path(folder)
    record = read_folder(folder)
    target = folder / REPORT_NAME
    with locked(folder):
        if target.exists() and not replace and not recorded(target):
            raise ReportError(
                f"{target} exists and ravine did not write it; move it away or replace it "
                "(--replace)"
            )
        atomic_write_text(target, render_report([record]))
    return target


def write_report(
    folders: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], *, replace: bool = False
) -> Path:
    """Write the report of ``folders`` (side by side when several) to the file ``out``;
    an existing ``out`` is refused unless ``replace``."""
    out = Path(out)
    if out.is_dir():
        raise ReportError(f"--out {out} is a folder; name the HTML file to write")
    refusal = f"{out} exists; choose another --out or replace it (--replace)"
    if out.exists() and not replace:
        raise ReportError(refusal)  # before the work; write_standalone checks again
    records = [read_folder(f) for f in folders]
    page = render_report(records).encode("utf-8")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        return write_standalone(out, page, replace=replace)
    except FileExistsError:
        raise ReportError(refusal) from None
