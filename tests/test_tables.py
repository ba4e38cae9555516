"""Tables never cut a number: at 80 columns in a terminal they drop their least important
columns (saying so) or wrap; into a pipe they print whole. Checked on the tables compare,
train (restarts) and tune print."""

from __future__ import annotations

import csv
import re
from types import SimpleNamespace

import pytest

from ravine.cli.main import main

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
CUT = "…"


@pytest.fixture(params=["terminal", "pipe"])
def screen(request, monkeypatch):
    """COLUMNS=80, and stdout a terminal (FORCE_COLOR makes rich treat it as one) or a pipe."""
    monkeypatch.setenv("COLUMNS", "80")
    if request.param == "terminal":
        monkeypatch.setenv("FORCE_COLOR", "1")
    else:
        monkeypatch.delenv("FORCE_COLOR", raising=False)
        monkeypatch.setenv("TERM", "dumb")
    return request.param


def printed(capsys) -> list[str]:
    return ANSI.sub("", capsys.readouterr().out).splitlines()


def check_fits(lines: list[str], screen: str) -> None:
    assert not any(CUT in line for line in lines), "\n".join(lines)
    if screen == "terminal":  # (the lines after a table, paths and commands, are not wrapped)
        table = [line for line in lines if any(c in line for c in "┃│┏└┡")]
        assert table and max(len(line) for line in table) <= 80, "\n".join(lines)


def test_compare_table(screen, tmp_path, capsys):
    # README's second example, which printed "0.0…" at 80 columns and into a pipe.
    out = tmp_path / "c"
    argv = ["compare", "--opt", "adam:lr=0.01", "--opt", "adam:lr=0.1,beta2=0.99", "--problem",
            "quadratic:condition_number=1000", "--starts", "2", "--steps", "50", "--no-plots",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    lines = printed(capsys)
    check_fits(lines, screen)
    with open(out / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    text = "\n".join(lines)
    if screen == "pipe":  # whole: every median final loss as the table formats it
        assert all(f"{float(r['median_final_loss']):.3g}" in text for r in rows), text
    elif "not shown" in text:
        assert "all columns in" in text and "summary.csv" in text  # (the path may wrap)


def test_restarts_table(screen, capsys):
    from rich.console import Console

    from ravine.cli.main import _print_restarts

    stats = {"best": 0.000123456, "median": 1234.5678, "worst": -0.000987654, "std": 98765.4321}
    result = SimpleNamespace(
        restarts=8,
        method="bmm",
        summary={f"a_rather_long_metric_name_{i}_loss": stats for i in range(3)},
        ensemble=None,
        diverged=[],
        out_dir="runs/r",
    )
    _print_restarts(Console(), result)
    lines = printed(capsys)
    check_fits(lines, screen)
    if screen == "pipe":
        assert all(v in "\n".join(lines) for v in ("0.0001235", "1235", "-0.0009877", "9.877e+04"))


def test_tune_table(screen, tune_run, tmp_path, capsys):
    # Adam's whole published space: the widest table tune prints, printed as tune prints it
    # (the study read back from its folder; the report's tune.toml is its configuration).
    import optuna
    from rich.console import Console

    from ravine.cli.study_options import load_tune_config
    from ravine.report.folder import read_folder
    from ravine.report.tables import print_table
    from ravine.report.tune import tune_table

    toml = tmp_path / "tune.toml"
    toml.write_text(read_folder(tune_run).config_text)
    config = load_tune_config(toml, train_overrides={}, tune_overrides={})
    study = optuna.load_study(
        study_name=config.study_name, storage=f"sqlite:///{tune_run}/study.db"
    )
    table = tune_table(SimpleNamespace(study=study, config=config))
    print_table(Console(), table, droppable=("epochs",), source=f"{tune_run}/trials.csv")
    lines = printed(capsys)
    check_fits(lines, screen)
    assert len(table.columns) >= 7  # lr, the betas' distances from 1, eps, ...
