"""The benchmark scripts run and print their tables (tiny sizes: a smoke test, not a timing)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "args", "expected"),
    [
        (
            "optim_step.py",
            ["--params", "4e3", "--tensors", "4", "--steps", "2", "--optimizers", "adam"],
            "ravine against torch",
        ),
        ("restarts.py", ["--restarts", "2", "--epochs", "1", "--repeats", "1"], "speed-up"),
        ("tune.py", ["--trials", "2", "--epochs", "1", "--repeats", "1"], "speed-up"),
        (
            "curvature_hvps.py",
            ["--k", "2", "--examples", "64", "--repeats", "1", "--steps", "8", "--probes", "2"],
            "PyHessian",
        ),
        ("landscape.py", ["--resolution", "5", "--repeats", "1"], "vmap"),
        ("signals.py", ["--steps", "2", "--repeats", "1", "--probes", "2"], "TrainingSignals"),
        (
            "train_throughput.py",
            ["--cases", "digits-mlp-b256", "--epochs", "1", "--repeats", "1"],
            "loop / hand",
        ),
    ],
)
def test_benchmark_runs(script, args, expected):
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert expected in done.stdout


def test_optim_step_rejects_an_unknown_optimizer():
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "optim_step.py"), "--optimizers", "lion"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "unknown optimizer(s) lion; valid: sgd, sgd-momentum" in done.stderr
