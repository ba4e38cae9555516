"""ravine probe --instruments / --examples: chosen instruments only, a line per instrument,
bad values refused in one line (exit 2) before torch is imported."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ravine.cli.main import main
from ravine.cli.probe import INSTRUMENTS, parse_instruments


def test_cli_names_are_the_instruments():
    from ravine.probe.instruments import INSTRUMENTS as LIBRARY

    assert LIBRARY == INSTRUMENTS
    assert parse_instruments("all") == INSTRUMENTS
    assert parse_instruments(" trace, spectrum,trace ") == ("trace", "spectrum")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("probe") / "run"
    argv = ["train", "--dataset", "spirals", "--model", "mlp", "--width", "8", "--epochs", "1"]
    argv += ["--out", str(folder)]
    assert main(argv) == 0
    return folder


def test_chosen_instruments_only(run, capsys):
    argv = ["probe", str(run), "--instruments", "spectrum,trace,blocks", "--examples", "100"]
    assert main([*argv, "--k", "2"]) == 0
    out = capsys.readouterr().out
    for name in ("spectrum:", "trace:", "blocks:", "top eigenvalues", "layer "):
        assert name in out
    report = json.loads((run / "probe.json").read_text())
    assert report["instruments"] == ["spectrum", "trace", "blocks"]  # in the fixed order
    assert report["examples"] == 100 and len(report["top_eigenvalues"]) == 2
    assert "findings" not in report and "condition_positive" not in report
    assert set(report["blocks"]) == {"hidden0.linear", "hidden1.linear", "head"}
    # Cauchy interlacing: each layer's block spectrum lies within the whole Hessian's
    lowest, highest = report["bottom_eigenvalues"][0], report["top_eigenvalues"][0]
    for block in report["blocks"].values():
        assert lowest - 1e-6 <= block["bottom_eigenvalue"] <= block["top_eigenvalue"]
        assert block["top_eigenvalue"] <= highest + 1e-6
    assert report["hvps"] > 0
    # The blocks' traces add up to the whole trace (each a Hutchinson estimate, so loosely).
    total = sum(b["trace"] for b in report["blocks"].values())
    errors = (sum(b["trace_stderr"] ** 2 for b in report["blocks"].values())
              + report["trace_stderr"] ** 2) ** 0.5  # fmt: skip
    assert abs(total - report["trace"]) < 5 * errors + 1e-6


def test_the_noise_instrument_reads_the_noise_at_the_runs_batch(run, capsys):
    import torch

    from ravine.probe.signals import gradient_noise
    from ravine.train.build import loss_function
    from ravine.train.run import load_run

    assert main(["probe", str(run), "--instruments", "noise", "--examples", "120"]) == 0
    out = capsys.readouterr().out
    assert "noise:" in out and "gradient noise" in out
    report = json.loads((run / "probe.json").read_text())
    assert report["instruments"] == ["noise"]
    # the same numbers as the library's, on the same examples, at the run's batch size
    loaded = load_run(run)
    loaded.model.eval()
    splits = loaded.splits
    x, y = loaded.inputs(splits.x_train[:120]), splits.y_train[:120]
    direct = gradient_noise(
        loaded.model, loss_function(splits.dataset), (x, y), batch_size=loaded.config.batch_size
    )
    noise = report["noise"]
    assert noise["batch_size"] == loaded.config.batch_size and noise["probe_size"] == 120
    for key in ("noise_trace", "grad_norm", "norm_test", "loss"):
        assert noise[key] == pytest.approx(getattr(direct, key), rel=1e-5), key
    assert torch.is_grad_enabled()
    assert main(["report", str(run)]) == 0  # the report says it in words too
    assert "gradient noise" in (run / "report.html").read_text()


def test_bad_instruments_exit_2_in_one_line_before_torch():
    code = (
        "import sys\nfrom ravine.cli.main import main\n"
        "rc = main(['probe', 'nowhere', '--instruments', 'spectrum,hessian'])\n"
        "print(rc, 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.split() == ["2", "False"], done.stderr
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and "--instruments must be 'all' or names from gradients" in err[0]
    assert "got hessian" in err[0]


def test_library_rejects_unknown_instruments():
    import torch

    from ravine.probe.instruments import run_instruments

    model = torch.nn.Linear(2, 2)
    x, y = torch.zeros(3, 2), torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"instruments must name at least one of .*\['x'\]"):
        run_instruments(model, torch.nn.functional.cross_entropy, x, y, instruments=["x"])
    with pytest.raises(ValueError, match="k must be a positive integer, got 0"):
        run_instruments(model, torch.nn.functional.cross_entropy, x, y, k=0)


def test_a_later_probe_of_fewer_instruments_leaves_no_stale_figure_or_finding(run):
    """Full probe, then trace only: the figures whose instruments did not run go, and the
    report states only what was measured (never 'nothing flagged' for unrun gradients)."""
    from ravine.report.folder import _probe_lines

    assert main(["probe", str(run), "--examples", "100", "--k", "2"]) == 0
    assert (run / "probe-spectrum.png").is_file() and (run / "probe-gradient-flow.png").is_file()
    assert main(["probe", str(run), "--examples", "100", "--instruments", "trace"]) == 0
    assert not (run / "probe-spectrum.png").exists()
    assert not (run / "probe-gradient-flow.png").exists()
    lines = _probe_lines(run)
    assert any(line.startswith("trace ") for line in lines)
    assert not any("no vanishing" in line or "point:" in line for line in lines)


def test_the_gradients_instrument_leaves_batch_norm_statistics_alone():
    """Batch-norm running statistics are what the curvature instruments see: running the
    gradients instrument first (train mode) must not change them, or the trace."""
    import torch
    from torch import nn

    from ravine.probe.instruments import run_instruments

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    model.eval()
    x, y = torch.randn(64, 4) * 3 + 1, torch.randint(0, 3, (64,))
    loss = nn.functional.cross_entropy
    before = {k: b.clone() for k, b in model.named_buffers()}
    torch.manual_seed(1)
    alone = run_instruments(model, loss, x, y, instruments=("trace",))["report"]["trace"]
    torch.manual_seed(1)
    both = run_instruments(model, loss, x, y, instruments=("gradients", "trace"), batch_size=16)
    for key, buffer in model.named_buffers():
        assert torch.equal(buffer, before[key]), key
    assert both["report"]["trace"] == pytest.approx(alone, rel=1e-12)
