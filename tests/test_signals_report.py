"""The training-signals dashboard (``ravine.report.signals``), ``ravine train --signals-every``
and the report's section: the figure from made-up records (gaps, one record, no trace), the
three files of a real run and what the report says of them."""

from __future__ import annotations

import base64
import html.parser
import json
import math
import re
import shutil

import numpy as np
import pytest

from ravine.cli.main import main
from ravine.folders import atomic_write_text
from ravine.report import signals as dashboard

PNG = b"\x89PNG\r\n\x1a\n"


class Page(html.parser.HTMLParser):
    """A report's images (alt -> bytes), text and code blocks."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.images: dict[str, bytes] = {}
        self.text: list[str] = []
        self.code: list[str] = []
        self._code = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images[attrs["alt"]] = base64.b64decode(attrs["src"].partition(",")[2])
        elif tag == "code":
            self._code = True
            self.code.append("")

    def handle_endtag(self, tag):
        if tag == "code":
            self._code = False

    def handle_data(self, data):
        self.text.append(data)
        if self._code:
            self.code[-1] += data


def page_of(path) -> Page:
    return Page(path.read_text(encoding="utf-8"))


def fake_records(n: int = 12, every: int = 5, batch: int = 64) -> list[dict]:
    """Records with every key ``TrainingSignals`` writes, values that move like a run's."""
    records = []
    for i in range(n):
        step = every * (i + 1)
        scale = 20.0 * (1 + i)  # the noise scale grows as the gradient shrinks
        records.append(
            {
                "step": step,
                "loss": 2.0 * math.exp(-step / 40) + 0.1,
                "loss_before": 2.0 * math.exp(-(step - 1) / 40) + 0.1,
                "grad_norm": 1.0 / (1 + i),
                "probe_size": 256,
                "batch_size": batch,
                "noise_trace": 30.0,
                "noise_scale": scale,
                "snr": batch / scale,
                "gsnr": 0.1,
                "norm_test": math.sqrt(scale / batch),
                "inner_product_test": 0.5 * math.sqrt(scale / batch),
                "orthogonality_test": 2.0 * math.sqrt(scale / batch),
                "suggested_batch_norm": scale / 0.81,
                "suggested_batch_inner_product": 0.25 * scale / 0.81,
                "suggested_batch_orthogonality": 4.0 * scale / 5.84**2,
                "alpha": [-0.5, 0.2, 1.5, 12.0][i % 4],
                "update_size": 0.1 / (1 + i),
                "distance": 0.3 * math.sqrt(1 + i),
                "trace": 50.0 - i if i % 3 == 0 else None,
                "trace_stderr": 2.0 if i % 3 == 0 else None,
                "blocks": {"0": {"distance": 0.2, "update_size": 0.05, "trace": None}},
            }
        )
    return records


@pytest.fixture
def drawn(monkeypatch):
    """The figures ``plot_signals`` saves, kept to look inside (then saved as usual)."""
    figures = []
    save = dashboard.save_figure

    def keep(fig, path):
        figures.append(fig)
        return save(fig, path)

    monkeypatch.setattr(dashboard, "save_figure", keep)
    return figures


def panel(fig, heading: str):
    """The axes whose key (or title) starts with ``heading``."""
    for ax in fig.axes:
        legend = ax.get_legend()
        title = legend.get_title().get_text() if legend else ax.get_title("left")
        if title.startswith(heading):
            return ax
    raise AssertionError(f"no panel {heading!r}")


def ydata(ax, label: str) -> np.ndarray:
    (line,) = [line for line in ax.get_lines() if line.get_label() == label]
    return np.asarray(line.get_ydata(), dtype=float)


def texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def test_missing_values_leave_gaps_not_zeros(tmp_path, drawn):
    records = fake_records()
    records[0].update(alpha=None, update_size=None, loss_before=None)  # no step seen yet
    records[4].update(loss=None, distance=None)
    records[6].update(noise_scale=None, snr=0.0)  # unbounded: the noise swamps the signal
    path = dashboard.plot_signals(records, tmp_path / "signals.png")
    assert path.read_bytes().startswith(PNG)
    (fig,) = drawn
    loss = ydata(panel(fig, "Probe-batch loss"), "after the update")
    assert np.isnan(loss[4]) and np.isfinite(np.delete(loss, 4)).all()
    moved = panel(fig, "Distance travelled")
    assert np.isnan(ydata(moved, "‖Δθ‖ of the last update")[0])
    assert np.isnan(ydata(moved, "‖θ − θ₀‖ from the init")[4])
    alpha = panel(fig, "Step size α")
    points = ydata(alpha, "α")
    assert len(points) == len(records) - 1 and 0.0 not in points  # the None is left out
    assert alpha.get_yscale() == "symlog"
    noise = panel(fig, "Gradient noise scale")
    assert np.isnan(ydata(noise, "B_simple = tr Σ / ‖G‖²")[6])
    assert len(ydata(noise, "unbounded: noise dominates")) == 1  # marked at the top instead
    assert ydata(noise, "training batch b = 64").tolist() == [64.0, 64.0]
    # The trace where it was measured (every third record), with its stderr band.
    trace = panel(fig, "Hessian trace")
    measured = [r["trace"] for r in records if r["trace"] is not None]
    assert ydata(trace, "estimate").tolist() == measured
    assert "at 4 of the 12 records" in trace.get_legend().get_title().get_text()


def test_the_tests_are_drawn_against_their_thresholds(tmp_path, drawn):
    from ravine.probe.signals import INNER_PRODUCT_THETA, NORM_TEST_THETA, ORTHOGONALITY_NU

    dashboard.plot_signals(fake_records(), tmp_path / "signals.png")
    tests = panel(drawn[0], "Batch-size tests")
    shared = f"{NORM_TEST_THETA:g}: norm, inner-product"
    assert NORM_TEST_THETA == INNER_PRODUCT_THETA  # (else two lines, one per test)
    assert ydata(tests, shared)[0] == NORM_TEST_THETA
    assert ydata(tests, f"{ORTHOGONALITY_NU:g}: orthogonality")[0] == ORTHOGONALITY_NU
    assert ydata(tests, "norm test").tolist() == [r["norm_test"] for r in fake_records()]
    assert tests.get_yscale() == "log"


def test_one_record_and_no_trace(tmp_path, drawn):
    (record,) = fake_records(1)
    record.update(alpha=None, update_size=None, trace=None, trace_stderr=None)
    path = dashboard.plot_signals([record], tmp_path / "one.png", title="one record")
    assert path.read_bytes().startswith(PNG)
    fig = drawn[0]
    assert fig.get_suptitle() == "one record"
    assert "Hessian trace not measured in this run" in texts(panel(fig, "Hessian trace"))
    assert any("α not measured" in t for t in texts(panel(fig, "Step size α")))
    low, high = fig.axes[0].get_xlim()
    ticks = [t for t in fig.axes[0].get_xticks() if low <= t <= high]
    assert len(ticks) >= 2 and all(t == int(t) for t in ticks)  # whole updates, never 4.8


def test_every_value_missing_still_draws_and_no_record_is_refused(tmp_path, drawn):
    keys = [k for k in fake_records(1)[0] if k != "step"]
    empty = [{"step": s, **dict.fromkeys(keys)} for s in (3, 6)]
    assert dashboard.plot_signals(empty, tmp_path / "empty.png").read_bytes().startswith(PNG)
    assert "not measured" in texts(panel(drawn[0], "Distance travelled"))
    assert not drawn[0].axes[0].get_lines()  # no loss at all: nothing drawn, not a line at 0
    with pytest.raises(ValueError, match="no signal records"):
        dashboard.plot_signals([], tmp_path / "none.png")


# -- ravine train --signals-every ---------------------------------------------------------------


@pytest.fixture(scope="module")
def signals_run(tmp_path_factory):
    """``ravine train --epochs 1 --signals-every 5`` (23 updates of 64 digits) and what it
    printed."""
    out = tmp_path_factory.mktemp("signals") / "run"
    import io
    import sys

    capture = pytest.MonkeyPatch()
    printed = io.StringIO()
    capture.setattr(sys, "stdout", printed)
    try:
        code = main(["train", "--epochs", "1", "--signals-every", "5", "--out", str(out)])
    finally:
        capture.undo()
    assert code == 0, printed.getvalue()
    return out, printed.getvalue()


def test_signals_every_writes_three_consistent_files(signals_run):
    from ravine.probe.signals import diagnose_signals
    from ravine.report.signals import test_thresholds

    out, printed = signals_run
    records = [json.loads(line) for line in (out / "signals.jsonl").read_text().splitlines()]
    updates = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    assert [r["step"] for r in records] == list(range(5, updates + 1, 5))
    document = json.loads((out / "signals.json").read_text())
    assert {k: document[k] for k in ("every", "batch_size", "probe_size")} == {
        "every": 5,
        "batch_size": 64,
        "probe_size": 256,
    }
    assert {r["probe_size"] for r in records} == {256} and {r["batch_size"] for r in records} == {
        64
    }
    assert document["thresholds"] == test_thresholds()
    # The findings are diagnose_signals' of the written records, each printed on one line.
    expected = diagnose_signals(records, 64)
    assert [f["kind"] for f in document["findings"]] == [f.kind for f in expected]
    assert [f["step"] for f in document["findings"]] == [f.step for f in expected]
    for finding in document["findings"]:
        assert set(finding) == {"kind", "layer", "step", "value", "message", "advice"}
        assert any(
            line.startswith(finding["kind"]) and finding["advice"] in line
            for line in printed.splitlines()
        )
    if not expected:
        assert "training signals: nothing flagged" in printed
    assert (out / "signals.png").read_bytes().startswith(PNG)


def test_the_report_tells_the_signals_and_shows_the_dashboard(signals_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(signals_run[0], copy, ignore=shutil.ignore_patterns("*.pt", "lock"))
    assert main(["report", str(copy)]) == 0
    report = copy / "report.html"
    page = page_of(report)
    assert page.images["signals.png"] == (copy / "signals.png").read_bytes()
    assert '<figure class="wide"><img' in report.read_text()  # the dashboard spans the page
    text = " ".join(page.text)
    records = [json.loads(line) for line in (copy / "signals.jsonl").read_text().splitlines()]
    assert "training signals" in text
    assert f"{len(records)} records, steps 5 to {records[-1]['step']}, every 5 updates" in text
    assert "on a fixed probe batch of 256 examples (training batch 64)" in text
    command = next(c for c in page.code if c.startswith("ravine train"))
    assert command.endswith("--signals-every 5")

    # Made-up records, written as ravine writes files: a failing norm test, the noise
    # swamping the signal at the last record, and a finding.
    made = fake_records(3)
    made[-1].update(noise_scale=None, snr=0.0, norm_test=2.0, suggested_batch_norm=316.0)
    atomic_write_text(copy / "signals.jsonl", "".join(json.dumps(r) + "\n" for r in made))
    document = json.loads((copy / "signals.json").read_text())
    document["findings"] = [
        {"kind": "noisy_gradients", "layer": "network", "step": 10, "value": 0.05,
         "message": "signal-to-noise 0.05 at batch 64", "advice": "use a larger batch"}
    ]  # fmt: skip
    atomic_write_text(copy / "signals.json", json.dumps(document))
    assert main(["report", str(copy)]) == 0
    text = " ".join(page_of(report).text)
    assert (
        "noisy_gradients at network from step 10: signal-to-noise 0.05 at batch 64. use a" in text
    )
    assert "at step 15: the gradient noise swamps the mean gradient" in text
    assert "norm 2 > 0.9: fails, passes at a batch of 316" in text
    assert re.search(r"orthogonality [0-9.]+ <= 5.84: passes", text)
    assert "Hessian trace 50 at step 5 (one record)" in text


def test_a_run_shorter_than_k_writes_no_records_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--epochs", "1", "--batch-size", "512", "--signals-every", "1000"]
    assert main([*argv, "--out", "run"]) == 0
    assert "training signals: no record (the run had fewer than 1000 updates)" in (
        capsys.readouterr().out
    )
    assert (tmp_path / "run" / "signals.jsonl").read_text() == ""
    assert json.loads((tmp_path / "run" / "signals.json").read_text())["findings"] == []
    assert not (tmp_path / "run" / "signals.png").exists()  # nothing to draw
    assert main(["report", "run"]) == 0
    text = (tmp_path / "run" / "report.html").read_text()
    assert "no record was taken (every 1000 updates" in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--signals-every", "-1"], "--signals-every must be an integer >= 0, got -1"),
        (["--signals-every", str(2**63)], "--signals-every must be <= 9,223,372,036,854,775,807"),
        (["--signals-every", "5", "--restarts", "2"], "--signals-every needs restarts = 1"),
    ],
)
def test_bad_signals_every_is_one_line_and_exit_2(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert not (tmp_path / "ravine-runs").exists()  # refused before anything was written


def test_uphill_steps_are_drawn_apart_from_downhill_ones(tmp_path, drawn):
    records = fake_records()
    for i, record in enumerate(records):
        record["descent"] = i % 3 != 0  # every third step went uphill on the probe batch
        if not record["descent"]:
            record["alpha"] = -2.5  # below -1: what Cockpit's alpha gives an uphill step
    dashboard.plot_signals(records, tmp_path / "signals.png")
    (fig,) = drawn
    alpha = panel(fig, "Step size α")
    assert ydata(alpha, "α of an uphill step").tolist() == [-2.5] * 4
    assert -2.5 not in ydata(alpha, "α").tolist() and len(ydata(alpha, "α")) == 8
