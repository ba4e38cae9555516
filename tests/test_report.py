"""``ravine report``: the HTML page shows the folder's own numbers and figures, compares
folders side by side, and refuses bad input with one line (exit 2) without overwriting."""

from __future__ import annotations

import base64
import csv
import html.parser
import json
import math
import shutil

import pytest

from ravine.cli.main import main
from ravine.folders import forget, recorded


class Page(html.parser.HTMLParser):
    """The parts of a report a test checks: images, numeric cells, text, code blocks."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.images: dict[str, bytes] = {}  # alt -> decoded bytes
        self.cells: list[tuple[str, str]] = []  # (exact value, shown text)
        self.code: list[str] = []
        self.scripts = 0
        self.external: list[str] = []
        self._cell: str | None = None
        self._code = False
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("src", "href"):
            value = attrs.get(key) or ""
            if value.startswith(("http:", "https:", "//")):
                self.external.append(value)
        if tag == "img":
            head, _, data = attrs["src"].partition(",")
            assert head.startswith("data:image/") and head.endswith(";base64")
            self.images[attrs["alt"]] = base64.b64decode(data)
        elif tag == "td" and "data-value" in attrs:
            self._cell = attrs["data-value"]
            self.cells.append((self._cell, ""))
        elif tag == "code":
            self._code = True
            self.code.append("")
        elif tag == "script":
            self.scripts += 1

    def handle_endtag(self, tag):
        if tag == "td":
            self._cell = None
        elif tag == "code":
            self._code = False

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            exact, shown = self.cells[-1]
            self.cells[-1] = (exact, shown + data)
        if self._code:
            self.code[-1] += data


def page_of(path) -> Page:
    return Page(path.read_text(encoding="utf-8"))


def shown_matches(exact: str, shown: str) -> bool:
    """The shown text is the exact value to four significant digits."""
    value, text = float(exact), float(shown)
    return math.isclose(value, text, rel_tol=5e-4, abs_tol=0)


def test_train_report_shows_the_folders_numbers_and_figures(watched_run):
    report = watched_run / "report.html"
    assert recorded(report)  # --report wrote it into the folder's checksummed manifest
    page = page_of(report)
    # Every figure of the folder, byte for byte, and nothing from the network.
    figures = {p.name: p.read_bytes() for p in watched_run.glob("*.png")}
    assert {"curves.png", "gradient-flow.png"} <= set(figures)
    assert page.images == figures
    assert not page.external and page.scripts == 0
    # Every per-epoch number of metrics.jsonl and every final metric of summary.json.
    exact = {e for e, _ in page.cells}
    for line in (watched_run / "metrics.jsonl").read_text().splitlines():
        for key, value in json.loads(line).items():
            if isinstance(value, float) and key != "seconds":
                assert repr(value) in exact, key
    final = json.loads((watched_run / "summary.json").read_text())["final"]
    assert all(repr(v) in exact for v in final.values())
    assert all(shown_matches(e, s) for e, s in page.cells)
    text = " ".join(page.text)
    assert "gradient health during training" in text and "nothing flagged" in text
    assert "epochs = 2" in text  # the configuration
    command = next(c for c in page.code if c.startswith("ravine train"))
    assert f"--config {watched_run}/config.toml" in command
    assert "--gradient-health --tensorboard" in command


def test_curvature_records_are_told_in_words(watched_run, curvature_tracker, tmp_path):
    from ravine.cli.main import _write_curvature

    copy = tmp_path / "run"
    shutil.copytree(watched_run, copy, ignore=shutil.ignore_patterns("*.pt", "lock"))
    _write_curvature(curvature_tracker, copy)  # what --curvature-every 1 writes
    assert main(["report", str(copy)]) == 0
    page = page_of(copy / "report.html")
    text = " ".join(page.text)
    records = curvature_tracker.to_records()
    assert "3 records, steps 1 to 3" in text
    assert (
        f"top Hessian eigenvalue from {records[0]['top']:.4g} to {records[-1]['top']:.4g}" in text
    )
    assert "curvature.png" in page.images
    assert "--curvature-every 1" in next(c for c in page.code if c.startswith("ravine train"))


def test_compare_report_tables_equal_summary_csv(compare_run, capsys):
    assert main(["report", str(compare_run)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {compare_run}/report.html"
    page = page_of(compare_run / "report.html")
    with open(compare_run / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    numbers = [
        row[key] for row in rows for key in ("median_final_loss", "best_final_loss") if row[key]
    ]
    assert numbers and set(numbers) <= {e for e, _ in page.cells}
    assert not page.images  # drawn with --no-plots
    command = next(c for c in page.code if c.startswith("ravine compare"))
    assert "--opt sgd:lr=" in command and "--problem saddle --starts 2 --steps 30" in command


def test_several_folders_side_by_side(watched_run, restarts_run, tmp_path, capsys):
    out = tmp_path / "both.html"
    assert main(["report", str(watched_run), str(restarts_run), "--out", str(out)]) == 0
    page = page_of(out)
    assert "curves overlaid" in page.images
    final = json.loads((watched_run / "summary.json").read_text())["final"]
    medians = json.loads((restarts_run / "restarts.json").read_text())["summary"]
    exact = {e for e, _ in page.cells}
    assert repr(final["test_loss"]) in exact and repr(medians["test_loss"]["median"]) in exact
    # Both folders' own figures are there too (each under its own name).
    assert len(page.images) == 1 + len(
        set(p.name for p in watched_run.glob("*.png")) | {"restarts.png"}
    )
    # An existing file is never overwritten without --replace.
    before = out.read_bytes()
    assert main(["report", str(watched_run), str(restarts_run), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {out} exists; choose another --out or replace it (--replace)"]
    assert out.read_bytes() == before
    assert main(["report", str(watched_run), "--out", str(out), "--replace"]) == 0
    assert not (tmp_path / ".ravine").exists()  # a file of its own: no manifest beside it


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp / "missing", "no such folder: {path}"),
        (lambda tmp: (tmp / "notes.txt").write_text("x") and tmp / "notes.txt", "is not a folder"),
        (lambda tmp: tmp, "is not a folder ravine wrote"),
    ],
)
def test_bad_folders_are_one_line_exit_2(make, message, tmp_path, capsys):
    path = make(tmp_path)
    assert main(["report", str(path)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and message.format(path=path) in line


def test_damaged_file_is_refused_by_name(watched_run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(watched_run, copy, ignore=shutil.ignore_patterns("*.pt", "lock"))
    metrics = copy / "metrics.jsonl"
    metrics.write_text(metrics.read_text().replace("0.", "9.", 1))
    assert main(["report", str(copy)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"{metrics} is damaged" in line


def test_a_report_html_the_user_wrote_is_kept(compare_run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(compare_run, copy, ignore=shutil.ignore_patterns("lock"))
    mine = copy / "report.html"
    forget(mine)  # whatever ravine wrote there is gone from the folder and its manifest
    mine.write_text("my notes")  # not in the manifest: the user's file
    assert main(["report", str(copy)]) == 2
    assert "ravine did not write it" in capsys.readouterr().err
    assert mine.read_text() == "my notes"
    assert main(["report", str(copy), "--replace"]) == 0
    assert recorded(mine)


def test_landscape_report_option_adds_its_findings(watched_run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(watched_run, copy, ignore=shutil.ignore_patterns("lock"))
    argv = ["landscape", str(copy), "--kind", "surface", "--resolution", "3", "--examples", "32",
            "--report"]  # fmt: skip
    assert main(argv) == 0
    assert f"wrote {copy}/report.html" in capsys.readouterr().out
    page = page_of(copy / "report.html")
    assert "landscape-surface.png" in page.images
    assert "ravine landscape NEW_FOLDER --kind surface --resolution 3" in page.code
    import numpy as np

    loss = np.load(copy / "landscape-surface.npz")["loss/train"]
    text = " ".join(page.text)
    assert f"train: loss {loss[1, 1]:.4g} at the centre, from {loss.min():.4g}" in text


def test_tune_report_reproduces_the_study(tune_run, tmp_path, capsys):
    from ravine.cli.study_options import load_tune_config
    from ravine.folders import holder

    assert main(["report", str(tune_run)]) == 0
    page = page_of(tune_run / "report.html")
    with open(tune_run / "trials.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    exact = {e for e, _ in page.cells}
    assert {r["value"] for r in rows} | {r["param_lr"] for r in rows} <= exact
    # The configuration shown, saved as tune.toml, is the very study the folder holds.
    (config,) = [t for t in page.text if t.startswith("[data]")]
    saved = tmp_path / "tune.toml"
    saved.write_text(config)
    loaded = load_tune_config(saved, train_overrides={}, tune_overrides={})
    assert loaded.describe() == holder(tune_run).config
    assert "ravine tune --config tune.toml --out NEW_FOLDER" in page.code
