"""Curvature tracked during training: the saddle of a deep linear network, and the wiring."""

from __future__ import annotations

import pytest
import torch

from ravine.probe import CurvatureTracker
from ravine.problems import ModelConfig, build_model, load_dataset
from ravine.train import TrainConfig, train


def test_deep_linear_network_starts_on_a_saddle_and_escapes():
    # Saxe et al. (2014): y = W2 W1 x at (nearly) zero weights is a saddle: tiny gradient,
    # Hessian eigenvalues +-s in pairs. Gradient descent lingers on a plateau, then escapes.
    data = load_dataset("deep_linear")
    config = ModelConfig(kind="deep_linear", depth=1, width=8, bias=False, init="default")
    model = build_model(config, data.input_shape, data.y_train.shape[1], generator=0)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1e-4)
    loss_fn = torch.nn.functional.mse_loss
    tracker = CurvatureTracker(loss_fn, (data.x_train, data.y_train), every=40)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(401):
        tracker(model, step)
        opt.zero_grad()
        loss_fn(model(data.x_train), data.y_train).backward()
        opt.step()
    first, last = tracker.records[0], tracker.records[-1]
    assert first.kind == "saddle" and first.bottom < -0.1 < 0.1 < first.top
    assert first.bottom == pytest.approx(-first.top, rel=1e-3)  # the +-s pairs
    assert last.kind != "saddle" and last.loss < 0.5 * first.loss
    (episode,) = tracker.episodes()
    assert episode[0] == 0 and episode[2] == "saddle" and episode[1] < 400


def test_tracker_runs_inside_the_training_loop(tmp_path):
    data = load_dataset("digits")
    tracker = CurvatureTracker(
        torch.nn.functional.cross_entropy, (data.x_train[:128], data.y_train[:128]), every=10
    )
    seen_modes = []

    def mode(model, step):
        seen_modes.append(model.training)

    config = TrainConfig(
        epochs=1, batch_size=128, model_args={"batch_norm": True}, standardize=False
    )
    result = train(config, tmp_path, callbacks=[tracker, mode])
    assert [r.step for r in tracker.records] == list(range(10, result.steps + 1, 10))
    assert all(seen_modes)  # the tracker put the model back in training mode
    assert all(r.top >= r.bottom for r in tracker.records)


def test_a_resumed_run_keeps_the_records_from_before_the_interruption(tmp_path):
    from ravine.probe.gradients import GradientHealthCallback

    data = load_dataset("digits")
    batch = (data.x_train[:64], data.y_train[:64])
    config = TrainConfig(epochs=2, batch_size=256, standardize=False)

    def instruments():
        tracker = CurvatureTracker(torch.nn.functional.cross_entropy, batch, every=3)
        return tracker, GradientHealthCallback(every=2)

    whole = instruments()
    train(config, tmp_path / "whole", callbacks=whole)
    killed = instruments()
    partial = train(config, tmp_path / "part", callbacks=killed, stop_after_epoch=1)
    resumed = instruments()  # a new process: fresh instruments, the checkpoint on disk
    result = train(config, tmp_path / "part", callbacks=resumed)
    assert result.resumed_from_epoch == 1 and partial.steps < result.steps

    assert [r.step for r in resumed[0].records] == [r.step for r in whole[0].records]
    assert len(whole[0].records) > len(killed[0].records) > 0
    for a, b in zip(resumed[0].records, whole[0].records, strict=True):
        assert a.loss == pytest.approx(b.loss, rel=1e-5)
    steps = [r.step for r in resumed[1].monitor.history]
    assert (
        steps == [r.step for r in whole[1].monitor.history] == list(range(2, result.steps + 1, 2))
    )
    first, again = whole[1].monitor.history[0], resumed[1].monitor.history[0]
    assert first.layers.keys() == again.layers.keys()
    for name, stats in first.layers.items():
        assert again.layers[name].grad_norm == pytest.approx(stats.grad_norm, rel=1e-6)


def test_every_must_be_positive():
    with pytest.raises(ValueError, match="every must be a positive integer, got 0"):
        CurvatureTracker(
            torch.nn.functional.mse_loss, (torch.zeros(1, 1), torch.zeros(1, 1)), every=0
        )
