"""Reading a ravine folder into what a report shows: its kind, configuration, tables, figures,
the instruments' findings in words, and the command that reproduces it.

The folder's CSV and JSON files are the source of truth: every table is read from them (never
recomputed), and every file is read through :func:`ravine.folders.read_verified`, so a file
damaged after ravine wrote it is refused by name instead of being reported.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import shlex
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ravine.folders import holder, read_verified

__all__ = [
    "REPORT_NAME",
    "Cell",
    "Figure",
    "FolderRecord",
    "ReportError",
    "Table",
    "finding_line",
    "read_folder",
]

REPORT_NAME = "report.html"
_FIGURE_TYPES = {".png": "image/png", ".svg": "image/svg+xml"}
_WIDE_FIGURES = ("signals",)  # dashboards of many panels: the page's whole width
# Per-epoch keys of metrics.jsonl that are bookkeeping, not curves.
_NOT_CURVES = ("epoch", "step", "seconds", "per_member", "diverged", "stopped")


class ReportError(ValueError):
    """A folder that cannot be reported: missing, not a ravine folder, or a file in it that
    cannot be read (the CLI prints the message on one line and exits 2)."""


@dataclass
class Cell:
    """One table cell: ``text`` is shown, ``exact`` is the value as the file holds it."""

    text: str
    exact: str
    numeric: bool = False


@dataclass
class Table:
    title: str
    source: str  # the file the rows come from
    columns: list[str]
    rows: list[list[Cell]]
    collapsed: bool = False  # long tables start folded


@dataclass
class Figure:
    name: str
    mime: str
    data: str  # base64

    @property
    def src(self) -> str:
        return f"data:{self.mime};base64,{self.data}"

    @property
    def wide(self) -> bool:
        """Shown across the page's whole width (a dashboard of many panels)."""
        return Path(self.name).stem in _WIDE_FIGURES


@dataclass
class FolderRecord:
    path: Path
    kind: str  # train, restarts, compare, tune, study
    title: str
    config_name: str = ""
    config_text: str = ""
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    findings: list[tuple[str, list[str]]] = field(default_factory=list)  # (instrument, lines)
    commands: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the commands need besides
    headline: dict[str, Any] = field(default_factory=dict)  # for the side-by-side table
    curves: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # name -> points

    @property
    def label(self) -> str:
        return self.path.name or str(self.path)


# --------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    try:
        return read_verified(path).decode("utf-8")
    except UnicodeDecodeError:
        raise ReportError(f"{path} is not UTF-8 text") from None
    except IsADirectoryError:
        raise ReportError(f"{path} is a folder, expected a file") from None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as error:
        raise ReportError(
            f"{path} is not valid JSON ({error.msg} at line {error.lineno})"
        ) from None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    records = []
    for number, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise ReportError(f"{path}: line {number} is not valid JSON") from None
        if not isinstance(record, dict):
            raise ReportError(f"{path}: line {number} is not a JSON object")
        records.append(record)
    return records


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    rows = list(csv.reader(io.StringIO(_read_text(path))))
    if not rows:
        raise ReportError(f"{path} is empty")
    header, body = rows[0], rows[1:]
    if any(len(row) != len(header) for row in body):
        raise ReportError(f"{path}: a row has another number of fields than the header")
    return header, body


def _expect(document: Any, kind: type, path: Path) -> Any:
    if not isinstance(document, kind):
        raise ReportError(f"{path} does not hold a JSON {kind.__name__} as ravine writes it")
    return document


# --------------------------------------------------------------------------------------------
# Cells and tables
# --------------------------------------------------------------------------------------------


def format_number(value: float) -> str:
    """Four significant digits, the way ravine's terminal tables print them."""
    if math.isnan(value):
        return "nan"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}"


def cell(value: Any) -> Cell:
    """A cell from a CSV string or a JSON value: numbers shown to four significant digits,
    with the exact value kept beside them."""
    if value is None:
        return Cell("", "")
    if isinstance(value, bool):
        return Cell(str(value), str(value))
    if isinstance(value, int | float):
        return Cell(format_number(float(value)), repr(value), numeric=True)
    text = str(value)
    if isinstance(value, str) and text not in ("True", "False"):
        try:
            number = float(text)
        except ValueError:
            pass
        else:
            if math.isfinite(number):
                return Cell(format_number(number), text, numeric=True)
    if isinstance(value, list | dict):
        text = json.dumps(value)
    return Cell(text, text)


def table_from_csv(path: Path, title: str) -> Table:
    header, body = _read_csv(path)
    rows = [[cell(value) for value in row] for row in body]
    return Table(title, path.name, header, rows, collapsed=len(rows) > 30)


def table_from_records(records: list[dict[str, Any]], title: str, source: str) -> Table:
    columns = list(dict.fromkeys(k for r in records for k in r))
    rows = [[cell(r.get(c)) for c in columns] for r in records]
    return Table(title, source, columns, rows, collapsed=len(rows) > 30)


def table_from_mapping(mapping: dict[str, Any], title: str, source: str) -> Table:
    rows = [[Cell(str(k), str(k)), cell(v)] for k, v in mapping.items()]
    return Table(title, source, ["", "value"], rows)


# --------------------------------------------------------------------------------------------
# The folder
# --------------------------------------------------------------------------------------------


def read_folder(path: str | Path) -> FolderRecord:
    """Everything a report shows of the ravine folder ``path`` (see the module doc);
    :class:`ReportError` (or :class:`DamagedFileError`) when it cannot be read."""
    path = Path(path)
    if not path.exists():
        raise ReportError(f"no such folder: {path}")
    if not path.is_dir():
        raise ReportError(
            f"{path} is not a folder (give a ravine run, compare, tune or study folder)"
        )
    owner = holder(path)
    kind = (
        owner.kind if owner is not None else ("train" if (path / "config.toml").is_file() else "")
    )
    if kind == "train" and (path / "restarts.json").is_file():
        kind = "restarts"
    readers = {
        "train": _train,
        "restarts": _restarts,
        "compare": _compare,
        "tune": _tune,
        "study": _study,
    }
    if kind not in readers:
        what = f"a {kind!r} folder" if kind else "not a folder ravine wrote (no .ravine/owner.json)"
        raise ReportError(f"{path} is {what}; give a train, compare, tune or study folder")
    record = FolderRecord(path=path, kind=kind, title="")
    readers[kind](record, owner.config if owner is not None else "")
    if owner is not None and not owner.finished:
        record.notes.append("this run had not finished when the report was written")
    record.figures = _figures(path)
    return record


def _figures(path: Path) -> list[Figure]:
    figures = []
    entries = sorted(path.iterdir())
    vector = {e.stem for e in entries if e.suffix.lower() == ".svg"}
    for entry in entries:
        mime = _FIGURE_TYPES.get(entry.suffix.lower())
        if mime is None or not entry.is_file() or entry.name.startswith("."):
            continue
        if entry.suffix.lower() == ".png" and entry.stem in vector:
            continue  # drawn both ways (--format svg): the vector one, once
        data = read_verified(entry)
        figures.append(Figure(entry.name, mime, base64.b64encode(data).decode("ascii")))
    return figures


def _quote(path: Path) -> str:
    return shlex.quote(str(path))


# -- train ------------------------------------------------------------------------------------


def _metrics_curves(record: FolderRecord, metrics: list[dict[str, Any]]) -> None:
    for key in dict.fromkeys(k for m in metrics for k in m):
        if key in _NOT_CURVES or key == "lr":
            continue
        points = [
            (float(m["epoch"]), float(m[key]))
            for m in metrics
            if isinstance(m.get(key), int | float) and "epoch" in m
        ]
        if points:
            record.curves[key] = points


def _epoch_table(metrics: list[dict[str, Any]], source: str) -> Table:
    shown = [
        {k: v for k, v in m.items() if k not in ("per_member", "diverged", "stopped")}
        for m in metrics
    ]
    return table_from_records(shown, "Per epoch", source)


def _train_common(record: FolderRecord) -> list[dict[str, Any]]:
    path = record.path
    record.config_name = "config.toml"
    record.config_text = (
        _read_text(path / "config.toml") if (path / "config.toml").is_file() else ""
    )
    metrics = _read_jsonl(path / "metrics.jsonl") if (path / "metrics.jsonl").is_file() else []
    _metrics_curves(record, metrics)
    command = ["ravine", "train", "--config", str(path / "config.toml"), "--out", "NEW_FOLDER"]
    if (path / "gradient-health.json").is_file():
        command.append("--gradient-health")
    every = _curvature_every(path)
    if every:
        command += ["--curvature-every", str(every)]
    if (path / "signals.json").is_file():
        signals = _expect(_read_json(path / "signals.json"), dict, path / "signals.json")
        if isinstance(signals.get("every"), int):
            command += ["--signals-every", str(signals["every"])]
    if (path / "tensorboard").is_dir():
        command.append("--tensorboard")
    record.commands.append(shlex.join(command))
    return metrics


def _curvature_every(path: Path) -> int:
    file = path / "curvature.jsonl"
    if not file.is_file():
        return 0
    steps = [r.get("step") for r in _read_jsonl(file)]
    steps = [s for s in steps if isinstance(s, int)]
    if len(steps) >= 2:
        return steps[1] - steps[0]
    return steps[0] if steps else 0


def _train(record: FolderRecord, _owner_config: str) -> None:
    path = record.path
    metrics = _train_common(record)
    summary = {}
    if (path / "summary.json").is_file():
        summary = _expect(_read_json(path / "summary.json"), dict, path / "summary.json")
        final = summary.get("final") or {}
        record.tables.append(table_from_mapping(final, "Final metrics", "summary.json"))
        record.headline.update(final)
        if summary.get("ensemble"):
            record.tables.append(
                table_from_mapping(summary["ensemble"], "Snapshot ensemble", "summary.json")
            )
        for key in ("epochs", "seconds"):
            if key in summary:
                record.headline[key] = summary[key]
    if metrics:
        record.tables.append(_epoch_table(metrics, "metrics.jsonl"))
    record.title = _train_title(record.config_text, "training run")
    _instruments(record)


def _train_title(config_text: str, what: str) -> str:
    from ravine.train.config import tomllib

    try:
        tables = tomllib.loads(config_text) if config_text else {}
    except tomllib.TOMLDecodeError:
        return what
    data = (tables.get("data") or {}).get("name", "?")
    model = tables.get("model") or {}
    model_name = model.get("preset") or model.get("kind") or "model"
    optimizer = (tables.get("optimizer") or {}).get("name", "?")
    return f"{what}: {data}, {model_name}, {optimizer}"


def _restarts(record: FolderRecord, _owner_config: str) -> None:
    path = record.path
    metrics = _train_common(record)
    report = _expect(_read_json(path / "restarts.json"), dict, path / "restarts.json")
    summary = report.get("summary") or {}
    rows = []
    for metric, stats in summary.items():
        if isinstance(stats, dict) and "median" in stats:
            rows.append(
                {"metric": metric, **{k: stats.get(k) for k in ("best", "median", "worst", "std")}}
            )
            record.headline[metric] = stats["median"]
    record.tables.append(table_from_records(rows, "Over the restarts", "restarts.json"))
    if report.get("ensemble"):
        record.tables.append(
            table_from_mapping(report["ensemble"], "Ensemble of the restarts", "restarts.json")
        )
    if (path / "restarts.csv").is_file():
        record.tables.append(table_from_csv(path / "restarts.csv", "Each restart"))
    if metrics:
        record.tables.append(_epoch_table(metrics, "metrics.jsonl (medians over the restarts)"))
    n = report.get("members", "?")
    record.headline["restarts"] = n
    record.title = _train_title(record.config_text, f"{n} restarts")
    lines = [f"{n} restarts trained as one batched computation ({report.get('method', '?')})."]
    if "best_member" in summary:
        lines.append(
            f"best restart: {summary['best_member']} (selected by {summary.get('selected_by')})"
        )
    for metric, stats in summary.items():
        if isinstance(stats, dict) and "median" in stats and metric.endswith("loss"):
            lines.append(
                f"{metric}: median {stats['median']:.4g}, from {stats['best']:.4g} to "
                f"{stats['worst']:.4g} (std {stats['std']:.2g})"
            )
    diverged = report.get("diverged") or []
    lines.append(
        f"diverged: {', '.join(map(str, diverged))}" if diverged else "no restart diverged"
    )
    record.findings.append(("restarts", lines))


def _instruments(record: FolderRecord) -> None:
    """The findings of the instruments that ran on this folder, in words."""
    path = record.path
    if (path / "gradient-health.json").is_file():
        found = _expect(
            _read_json(path / "gradient-health.json"), list, path / "gradient-health.json"
        )
        lines = [
            f"{f.get('kind')} at {f.get('layer')} from step {f.get('step')}: "
            f"{f.get('message')}. {f.get('advice')}"
            for f in found
            if isinstance(f, dict)
        ]
        record.findings.append(
            (
                "gradient health during training",
                lines
                or [
                    "nothing flagged: no vanishing or "
                    "exploding gradients, dead ReLUs or saturated units"
                ],
            )
        )
    if (path / "curvature.jsonl").is_file():
        record.findings.append(("curvature during training", _curvature_lines(path)))
    if (path / "signals.json").is_file():
        record.findings.append(("training signals", _signals_lines(path)))
    if (path / "probe.json").is_file():
        record.findings.append(("probe of the trained network", _probe_lines(path)))
        probe = _read_json(path / "probe.json")
        command = ["ravine", "probe", "NEW_FOLDER", "--examples", str(probe.get("examples"))]
        command += ["--k", str(len(probe.get("top_eigenvalues") or []) or 5)]
        if isinstance(probe.get("instruments"), list):
            command += ["--instruments", ",".join(map(str, probe["instruments"]))]
        record.commands.append(shlex.join(command))
    for kind in ("interp", "surface", "trajectory"):
        file = path / f"landscape-{kind}.npz"
        if file.is_file():
            lines, resolution = _landscape_lines(file, kind)
            record.findings.append((f"loss landscape ({kind})", lines))
            command = ["ravine", "landscape", "NEW_FOLDER", "--kind", kind]
            if resolution:
                command += ["--resolution", str(resolution)]
            record.commands.append(shlex.join(command))


def _curvature_lines(path: Path) -> list[str]:
    records = _read_jsonl(path / "curvature.jsonl")
    if not records:
        return ["no curvature record was taken (the run was shorter than --curvature-every)"]
    tops = [r["top"] for r in records if isinstance(r.get("top"), int | float)]
    bottoms = [r["bottom"] for r in records if isinstance(r.get("bottom"), int | float)]
    kinds: dict[str, int] = {}
    for r in records:
        kinds[str(r.get("kind"))] = kinds.get(str(r.get("kind")), 0) + 1
    lines = [f"{len(records)} records, steps {records[0].get('step')} to {records[-1].get('step')}"]
    if tops:
        lines.append(
            f"top Hessian eigenvalue from {tops[0]:.4g} to {tops[-1]:.4g} (largest {max(tops):.4g})"
        )
    if bottoms:
        lines.append(
            f"bottom eigenvalue from {bottoms[0]:.4g} to {bottoms[-1]:.4g} "
            f"(most negative {min(bottoms):.4g})"
        )
    lines.append("points: " + ", ".join(f"{k} x{v}" for k, v in kinds.items()))
    return lines


def finding_line(finding: dict[str, Any]) -> str:
    """One finding (a record of ``signals.json``) in one line: what, where, from when, what
    helps."""
    where = f" at {finding['layer']}" if finding.get("layer") else ""
    message = str(finding.get("message", "")).rstrip(". ")
    return (
        f"{finding.get('kind')}{where} from step {finding.get('step')}: {message}. "
        f"{finding.get('advice', '')}".rstrip()
    )


_SIGNAL_TESTS = {  # record key: (name, the key of the batch it suggests)
    "norm_test": ("norm", "suggested_batch_norm"),
    "inner_product_test": ("inner product", "suggested_batch_inner_product"),
    "orthogonality_test": ("orthogonality", "suggested_batch_orthogonality"),
}


def _signals_lines(path: Path) -> list[str]:
    """signals.json's findings in words, then what signals.jsonl measured, at its last record."""
    from ravine.report.signals import test_thresholds

    document = _expect(_read_json(path / "signals.json"), dict, path / "signals.json")
    found = [f for f in document.get("findings") or [] if isinstance(f, dict)]
    lines = [finding_line(f) for f in found] or ["nothing flagged"]
    records = _read_jsonl(path / "signals.jsonl") if (path / "signals.jsonl").is_file() else []
    every, batch = document.get("every"), document.get("batch_size")
    setting = (
        "every update" if every == 1 else f"every {every} updates"
    ) + f" on a fixed probe batch of {document.get('probe_size')} examples (training batch {batch})"
    if not records:
        return [*lines, f"no record was taken ({setting}: the run was shorter)"]
    last = records[-1]
    lines.append(
        f"{len(records)} records, steps {records[0].get('step')} to {last.get('step')}, {setting}"
    )

    def num(value: Any, fmt: str = ".3g") -> str | None:
        return format(value, fmt) if isinstance(value, int | float) else None

    at = f"at step {last.get('step')}"
    if num(last.get("noise_scale")) is not None:
        lines.append(
            f"{at}: gradient noise scale {_examples(last['noise_scale'])} examples against the "
            f"training batch of {batch} (SNR {num(last.get('snr'))}; below 1, noise dominates "
            "each step)"
        )
    elif last.get("snr") is not None:
        lines.append(
            f"{at}: the gradient noise swamps the mean gradient (noise scale unbounded: the "
            "true gradient's estimate is not above zero; the tests below measure against the "
            "probe batch's own mean gradient, so they can still pass)"
        )
    thresholds = document.get("thresholds")
    if not isinstance(thresholds, dict) or not all(
        isinstance(thresholds.get(k), int | float) for k in _SIGNAL_TESTS
    ):
        thresholds = test_thresholds()  # (a signals.json from before they were written)
    tests = []
    for key, (name, suggested) in _SIGNAL_TESTS.items():
        radius = num(last.get(key))
        if radius is None:
            continue
        if last[key] <= thresholds[key]:
            tests.append(f"{name} {radius} <= {thresholds[key]:g}: passes")
            continue
        needed = _examples(last[suggested]) if num(last.get(suggested)) else None
        tests.append(
            f"{name} {radius} > {thresholds[key]:g}: fails"
            + (f", passes at a batch of {needed}" if needed else ", at any batch")
        )
    if tests:
        lines.append(f"batch-size tests {at}, radius at batch {batch}: " + ", ".join(tests))
    alphas = [
        r["alpha"]
        for r in records
        if isinstance(r.get("alpha"), int | float) and r.get("descent") is not False
    ]
    uphill = sum(1 for r in records if r.get("descent") is False)
    if alphas:
        lines.append(
            f"step size alpha: median {statistics.median(alphas):.3g} over {len(alphas)} "
            "downhill steps (0: the step lands at the minimum along its direction; -1: barely "
            "moved; above 1: overshooting)"
            + (f"; {uphill} steps went uphill on the probe batch" if uphill else "")
        )
    distance = num(last.get("distance"))
    if distance is not None:
        lines.append(f"{at}: the weights are {distance} from their initialization (norm)")
    traces = [
        (r.get("step"), r["trace"]) for r in records if isinstance(r.get("trace"), int | float)
    ]
    if len(traces) == 1:
        lines.append(f"Hessian trace {traces[0][1]:.4g} at step {traces[0][0]} (one record)")
    elif traces:
        lines.append(
            f"Hessian trace from {traces[0][1]:.4g} (step {traces[0][0]}) to {traces[-1][1]:.4g} "
            f"(step {traces[-1][0]}), {len(traces)} records"
        )
    return lines


def _examples(count: float) -> str:
    """A number of examples: whole and with thousands separated (7,810), three digits below
    100 (43.6)."""
    return f"{count:,.0f}" if abs(count) >= 100 else f"{count:.3g}"


def _probe_lines(path: Path) -> list[str]:
    return probe_lines(_expect(_read_json(path / "probe.json"), dict, path / "probe.json"))


def probe_lines(p: dict[str, Any], *, header: bool = True) -> list[str]:
    """``probe.json`` in words, a line per instrument that ran: the report's section and what
    ``ravine probe`` prints (``header=False``). A value missing or of the wrong type (an
    edited file) reads as "?"."""

    def num(value: Any, fmt: str = ".4g") -> str:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return format(value, fmt) if ok else "?"

    def values(key: str) -> str:
        listed = p.get(key)
        return ", ".join(num(v) for v in (listed if isinstance(listed, list) else []))

    # Only what the instruments that ran measured (probe --instruments may choose a few;
    # probe.json from before that option has every key).
    ran = p.get("instruments")
    ran = set(ran) if isinstance(ran, list) else {"gradients", "spectrum", "trace", "condition"}
    lines = (
        [f"on {p.get('examples')} training examples: {', '.join(sorted(ran))}"] if header else []
    )
    if "noise" in ran and isinstance(p.get("noise"), dict):
        from ravine.report.signals import noise_line

        lines.append(noise_line(p["noise"]))
    if "spectrum" in ran:
        lines += [
            f"point: {p.get('kind')} (loss {num(p.get('loss'))}, gradient norm "
            f"{num(p.get('grad_norm'), '.3g')})",
            f"top eigenvalues: {values('top_eigenvalues')}",
            f"bottom eigenvalues: {values('bottom_eigenvalues')}",
        ]
    if "trace" in ran:
        lines.append(f"trace {num(p.get('trace'))} ± {num(p.get('trace_stderr'), '.2g')}")
    if "condition" in ran:
        lines.append(
            f"condition number of the positive part {num(p.get('condition_positive'), '.3g')}; "
            f"negative eigenvalues {num(p.get('negative_ratio'), '.1%')} of the spectrum"
        )
    blocks = p.get("blocks")
    for key, block in (blocks if isinstance(blocks, dict) else {}).items():
        if isinstance(block, dict):
            size = block.get("size")
            low = block.get("bottom_eigenvalue")  # (a probe.json from before it was measured)
            lines.append(
                f"layer {key}"
                + (f" ({size:,} parameters)" if isinstance(size, int) else "")
                + f": lambda_max {num(block.get('top_eigenvalue'))}"
                + (f", lambda_min {num(low)}" if low is not None else "")
                + f", trace {num(block.get('trace'))}"
            )
    if "gradients" in ran:
        findings = [f for f in p.get("findings") or [] if isinstance(f, dict)]
        lines += [
            f"{f.get('kind')} at {f.get('layer')}: {f.get('message')}. {f.get('advice')}"
            for f in findings
        ] or ["gradients: no vanishing or exploding gradients, dead ReLUs or saturation flagged"]
    return lines


def _landscape_lines(file: Path, kind: str) -> tuple[list[str], int]:
    import numpy as np

    try:
        data = np.load(io.BytesIO(read_verified(file)), allow_pickle=False)
        arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as error:
        raise ReportError(f"{file} is not a landscape ravine can read ({error})") from None
    alphas = arrays.get("alphas")
    lines = []
    for split in ("train", "test", "val"):
        loss = arrays.get(f"loss/{split}")
        if loss is None or alphas is None:
            continue
        if kind == "interp":
            at = {a: float(np.interp(a, alphas, loss)) for a in (0.0, 1.0)}
            inside = loss[(alphas >= 0) & (alphas <= 1)]
            barrier = float(inside.max() - max(at.values())) if inside.size else math.nan
            lines.append(
                f"{split}: loss {at[0.0]:.4g} at the initialization, {at[1.0]:.4g} at the "
                f"trained weights, lowest {float(loss.min()):.4g} at alpha "
                f"{float(alphas[int(loss.argmin())]):.3g}; "
                + ("no barrier on the way" if barrier <= 0 else f"a barrier of {barrier:.3g}")
            )
        else:
            centre = float(loss[loss.shape[0] // 2, loss.shape[1] // 2])
            lines.append(
                f"{split}: loss {centre:.4g} at the centre, from {float(loss.min()):.4g} to "
                f"{float(loss.max()):.4g} over the {loss.shape[0]}x{loss.shape[1]} grid"
            )
    variance = arrays.get("explained_variance")
    if variance is not None and variance.size:
        lines.append(
            "the PCA axes explain "
            + " and ".join(f"{v:.1%}" for v in variance)
            + " of the trajectory's variance"
        )
    resolution = len(alphas) if alphas is not None and kind != "interp" else 0
    return lines, resolution


# -- compare, tune, study ---------------------------------------------------------------------


def _compare(record: FolderRecord, _owner_config: str) -> None:
    path = record.path
    summary = _expect(_read_json(path / "summary.json"), dict, path / "summary.json")
    config = summary.get("config") or {}
    record.config_name = "summary.json (config)"
    record.config_text = json.dumps(config, indent=2)
    header, body = _read_csv(path / "summary.csv")
    if "problem" not in header:
        raise ReportError(f"{path / 'summary.csv'} has no problem column")
    at = header.index("problem")
    problems = list(dict.fromkeys(row[at] for row in body))
    columns = [c for c in header if c != "problem"]
    lines = []
    for problem in problems:
        rows = [
            [cell(v) for i, v in enumerate(row) if i != at] for row in body if row[at] == problem
        ]
        record.tables.append(Table(problem, "summary.csv", columns, rows))
        first = next(row for row in body if row[at] == problem)
        named = dict(zip(header, first, strict=True))
        lines.append(
            f"{problem}: {named.get('optimizer')} ranks first, {named.get('successes')}/"
            f"{named.get('starts')} starts reached the target, median final loss "
            f"{cell(named.get('median_final_loss')).text}"
        )
        record.headline[f"{problem}: first"] = named.get("optimizer")
    record.findings.append(("ranking", lines))
    record.title = f"comparison: {len(config.get('optimizers') or [])} optimizers on " + ", ".join(
        problems
    )
    command = ["ravine", "compare"]
    for spec in config.get("optimizers") or []:
        args = ",".join(f"{k}={v}" for k, v in (spec.get("hyperparams") or {}).items())
        command += ["--opt", f"{spec.get('name')}:{args}" if args else str(spec.get("name"))]
    for problem in config.get("problems") or []:
        command += ["--problem", str(problem)]
    for key in ("starts", "steps", "seed"):
        if key in config:
            command += [f"--{key}", str(config[key])]
    record.commands.append(shlex.join([*command, "--out", "NEW_FOLDER"]))


def _tune(record: FolderRecord, owner_config: str) -> None:
    path = record.path
    summary = _expect(_read_json(path / "tune.json"), dict, path / "tune.json")
    try:
        identity = json.loads(owner_config) if owner_config else {}
    except json.JSONDecodeError:
        identity = {}
    train_toml = identity.get("train", "")
    settings = {k: v for k, v in identity.items() if k not in ("train", "study_name")}
    record.config_name = "tune.toml (the run config and its [tune] table)"
    record.config_text = (
        train_toml
        + "\n[tune]\n"
        + "".join(f"{k} = {_toml_value(k, v)}\n" for k, v in settings.items() if k != "seeds")
    )
    record.tables.append(
        table_from_mapping(
            {
                "best value": summary.get("best_value"),
                **{f"best {k}": v for k, v in (summary.get("best_params") or {}).items()},
                **(summary.get("counts") or {}),
                "seconds": summary.get("seconds"),
            },
            f"Best of the study ({summary.get('metric')})",
            "tune.json",
        )
    )
    record.tables.append(table_from_csv(path / "trials.csv", "Trials"))
    record.title = f"tuning study: {summary.get('optimizer')}, {summary.get('space')}"
    counts = summary.get("counts") or {}
    best = ", ".join(f"{k}={cell(v).text}" for k, v in (summary.get("best_params") or {}).items())
    lines = [
        f"best {summary.get('metric')} {cell(summary.get('best_value')).text} with {best}",
        f"{counts.get('complete', 0)} complete, {counts.get('pruned', 0)} pruned, "
        f"{counts.get('failed', 0)} failed trials ({summary.get('sampler')} sampler, "
        f"{summary.get('pruner')} pruner)",
    ]
    importances = summary.get("importances") or {}
    if len(importances) > 1:
        lines.append("importance: " + ", ".join(f"{k} {v:.2f}" for k, v in importances.items()))
    record.findings.append(("search", lines))
    record.headline[f"best {summary.get('metric')}"] = summary.get("best_value")
    record.headline.update({f"best {k}": v for k, v in (summary.get("best_params") or {}).items()})
    record.headline["trials"] = sum(counts.get(k, 0) for k in ("complete", "pruned", "failed"))
    curves = _best_curve(path, summary)
    if curves:
        record.curves[f"best trial {summary.get('metric')}"] = curves
    record.commands.append("ravine tune --config tune.toml --out NEW_FOLDER")
    record.notes.append(
        "save the configuration below as tune.toml first; the folder does not record how many "
        "trials trained together (--batch), which steers which points the sampler asks for: "
        "add batch = N under [tune] to match the original"
    )
    if (path / "best.toml").is_file():
        record.commands.append(f"ravine train --config {_quote(path / 'best.toml')}")


def _toml_value(key: str, value: Any) -> str:
    if key == "space" and isinstance(value, str):
        specs = [s.strip() for s in value.split(", ") if s.strip()]
        inner = ", ".join(
            f"{name} = {json.dumps(rng)}" for name, _, rng in (s.partition("=") for s in specs)
        )
        return "{ " + inner + " }"
    return json.dumps(value)


def _best_curve(path: Path, summary: dict[str, Any]) -> list[tuple[float, float]]:
    trials = path / "trials.json"
    if not trials.is_file():
        return []
    document = _expect(_read_json(trials), dict, trials)
    best = summary.get("best_value")
    for trial in document.get("trials") or []:
        if trial.get("value") == best and best is not None:
            points = (document.get("curves") or {}).get(str(trial.get("number"))) or []
            return [(float(e), float(v)) for e, v in points if v is not None]
    return []


def _study(record: FolderRecord, _owner_config: str) -> None:
    path = record.path
    document = _expect(_read_json(path / "study.json"), dict, path / "study.json")
    config = document.get("config") or {}
    record.config_name = "study.json (config)"
    record.config_text = json.dumps(config, indent=2)
    record.tables.append(table_from_csv(path / "study.csv", "Optimizers x tasks"))
    header, body = _read_csv(path / "study.csv")
    named = [dict(zip(header, row, strict=True)) for row in body]
    lines = []
    for task in dict.fromkeys(r.get("task") for r in named):
        rows = [r for r in named if r.get("task") == task]
        best = max(rows, key=lambda r: _float(r.get("test_accuracy_mean")))
        lines.append(
            f"{task}: best test accuracy {cell(best.get('test_accuracy_mean')).text} "
            f"({best.get('optimizer')}); reached the target: "
            + ", ".join(f"{r.get('optimizer')} {r.get('reached_target')}" for r in rows)
        )
        for r in rows:
            record.headline[f"{task} {r.get('optimizer')} test acc"] = _float(
                r.get("test_accuracy_mean")
            )
    record.findings.append(("results", lines))
    # A task of one's own (from Python) is recorded as its whole record, not a name.
    tasks = [t if isinstance(t, str) else str(t.get("name")) for t in config.get("tasks") or []]
    record.title = "study: " + ", ".join(config.get("optimizers") or []) + " on " + ", ".join(tasks)
    command = ["ravine", "study"]
    for name in config.get("optimizers") or []:
        command += ["--optimizer", name]
    for name in tasks:
        command += ["--task", name]
    if any(not isinstance(t, str) for t in config.get("tasks") or []):
        command = ["#", "a", "study", "of", "tasks", "given", "from", "Python:", *command]
    for name in config.get("space") or []:
        command += ["--space", name]
    for key in ("trials", "batch", "seeds", "tune_seeds", "sampler", "pruner", "epochs", "seed"):
        if config.get(key) is not None:
            command += [f"--{key.replace('_', '-')}", str(config[key])]
    record.commands.append(shlex.join([*command, "--out", "NEW_FOLDER"]))


def _float(text: Any) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return -math.inf
