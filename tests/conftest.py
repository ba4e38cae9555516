"""Fixtures shared by several test modules: small real runs, made once per session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def watched_run(tmp_path_factory):
    """One tiny training run with the outputs the report and TensorBoard tests read: gradient
    health, TensorBoard events and its report.html (curvature: see ``curvature_tracker``,
    whose Lanczos records cost seconds each on a real network)."""
    from ravine.cli.main import main

    out = tmp_path_factory.mktemp("watched") / "run"
    argv = ["train", "--epochs", "2", "--batch-size", "128", "--out", str(out),
            "--gradient-health", "--tensorboard", "--report"]  # fmt: skip
    assert main(argv) == 0
    return out


@pytest.fixture(scope="session")
def restarts_run(tmp_path_factory):
    """Three restarts, one epoch, with TensorBoard events."""
    from ravine.cli.main import main

    out = tmp_path_factory.mktemp("restarts") / "run"
    argv = ["train", "--epochs", "1", "--batch-size", "128", "--restarts", "3", "--out", str(out),
            "--tensorboard"]  # fmt: skip
    assert main(argv) == 0
    return out


@pytest.fixture(scope="session")
def compare_run(tmp_path_factory):
    """A small comparison: two optimizers, two problems, two starts (no figures: the
    training run's cover those)."""
    from ravine.cli.main import main

    out = tmp_path_factory.mktemp("compare") / "run"
    argv = ["compare", "--opt", "sgd", "--opt", "adam", "--problem", "rosenbrock", "--problem",
            "saddle", "--starts", "2", "--steps", "30", "--no-plots", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert not (out / "report.html").exists()  # only with --report
    return out


@pytest.fixture(scope="session")
def curvature_tracker():
    """A CurvatureTracker that recorded three steps of a 13-parameter network (the records a
    ``--curvature-every 1`` run would hold, at a fraction of a real network's cost)."""
    import torch

    from ravine.probe import CurvatureTracker

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
    x, y = torch.randn(16, 2), torch.randn(16, 1)
    tracker = CurvatureTracker(torch.nn.functional.mse_loss, (x, y), every=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in (1, 2, 3):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        tracker(model, step)
    return tracker


TUNE_ARGV = ["tune", "--space", "all", "--trials", "2", "--batch", "2", "--epochs", "1",
             "--batch-size", "256", "--tensorboard"]  # fmt: skip


@pytest.fixture(scope="session")
def tune_run(tmp_path_factory):
    """A tiny tuning study over Adam's whole published space, with TensorBoard events; the
    same command again (``TUNE_ARGV + ["--out", folder]``) reports it again without training."""
    from ravine.cli.main import main

    out = tmp_path_factory.mktemp("tune") / "study"
    assert main([*TUNE_ARGV, "--out", str(out)]) == 0
    return out
