"""--tensorboard: the event files, read back with TensorBoard's own reader, hold the run's
history (metrics.jsonl, steps.csv), histograms, instruments' records and hparams."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ravine.folders import recorded


def events(folder) -> EventAccumulator:
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "histograms": 0})
    accumulator.Reload()
    return accumulator


def scalars(accumulator: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in accumulator.Scalars(tag)]


def as_float32(points) -> list[tuple[int, float]]:
    # Event files store scalars as float32.
    return [(int(step), float(np.float32(value))) for step, value in points]


def test_one_network_scalars_equal_its_history(watched_run):
    board = events(watched_run / "tensorboard")
    history = [
        json.loads(line) for line in (watched_run / "metrics.jsonl").read_text().splitlines()
    ]
    for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "lr"):
        assert scalars(board, f"epoch/{key}") == as_float32((r["epoch"], r[key]) for r in history)
    with open(watched_run / "steps.csv", newline="") as handle:
        steps = list(csv.DictReader(handle))
    assert scalars(board, "step/loss") == as_float32((r["step"], float(r["loss"])) for r in steps)
    assert scalars(board, "step/lr") == as_float32((r["step"], float(r["lr"])) for r in steps)
    assert [s for s, _ in scalars(board, "step/grad_norm")] == [int(r["step"]) for r in steps]
    final = json.loads((watched_run / "summary.json").read_text())["final"]
    assert scalars(board, "final/test_loss") == as_float32([(0, final["test_loss"])])
    # Gradient health was tracked: its per-layer records are there too.
    assert any(t.startswith("gradient_health/") for t in board.Tags()["scalars"])


def test_one_network_histograms_and_hparams(watched_run):
    import torch

    board = events(watched_run / "tensorboard")
    state = torch.load(watched_run / "model.pt", weights_only=True)["model"]
    names = [k for k in state if k.endswith(("weight", "bias"))]
    tags = board.Tags()["histograms"]
    assert {f"weights/{n}" for n in names} | {f"gradients/{n}" for n in names} == set(tags)
    last = board.Histograms(f"weights/{names[0]}")[-1]
    assert last.step == 2  # one per epoch
    assert last.histogram_value.num == state[names[0]].numel()
    np.testing.assert_allclose(last.histogram_value.sum, float(state[names[0]].sum()), rtol=1e-5)
    content = board.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(content)
    from tensorboard.plugins.hparams import plugin_data_pb2

    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert hparams["optimizer.name"].string_value == "adam"
    assert hparams["training.epochs"].number_value == 2
    # The closed event files belong to the run: in its checksummed manifest.
    assert all(recorded(p) for p in (watched_run / "tensorboard").glob("*tfevents*"))


def test_restarts_each_member_and_the_medians(restarts_run):
    history = [
        json.loads(line) for line in (restarts_run / "metrics.jsonl").read_text().splitlines()
    ]
    medians = events(restarts_run / "tensorboard")
    assert scalars(medians, "epoch/test_loss") == as_float32(
        (r["epoch"], r["test_loss"]) for r in history
    )
    for k in range(3):
        member = events(restarts_run / "tensorboard" / f"member-{k:02d}")
        assert scalars(member, "epoch/test_loss") == as_float32(
            (r["epoch"], r["per_member"]["test_loss"][k]) for r in history
        )
        assert any(t.startswith("weights/") for t in member.Tags()["histograms"])


def test_curvature_records(watched_run, curvature_tracker, tmp_path):
    from ravine.report.tensorboard import TensorBoardLogger

    class Result:  # what train() returns, as much as finish() reads of it
        history, final = [], {"test_loss": 0.5}

    logger = TensorBoardLogger(tmp_path, hparams={"optimizer.name": "sgd"})
    logger.finish(Result(), curvature=curvature_tracker)
    board = events(tmp_path / "tensorboard")
    records = curvature_tracker.to_records()
    for key in ("top", "bottom", "grad_norm"):
        assert scalars(board, f"curvature/{key}") == as_float32(
            (r["step"], r[key]) for r in records
        )


def test_training_signals_records(tmp_path):
    import torch

    from ravine.probe.signals import TrainingSignals
    from ravine.report.tensorboard import TensorBoardLogger

    class Result:  # what train() returns, as much as finish() reads of it
        history, final = [], {"test_loss": 0.5}

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
    x, y = torch.randn(16, 2), torch.randn(16, 1)
    signals = TrainingSignals(torch.nn.functional.mse_loss, (x, y), every=1, batch_size=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    signals.attach(model, optimizer)
    for step in (1, 2, 3):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x[:4]), y[:4]).backward()
        optimizer.step()
        signals(model, step)
    logger = TensorBoardLogger(tmp_path, hparams={"optimizer.name": "sgd"})
    logger.finish(Result(), signals=signals)
    board = events(tmp_path / "tensorboard")
    records = signals.to_records()
    for key in ("alpha", "noise_trace", "norm_test", "distance", "trace"):
        assert scalars(board, f"signals/{key}") == as_float32((r["step"], r[key]) for r in records)
    assert "signals/blocks" not in board.Tags()["scalars"]  # (not a number)


def test_tune_trials_as_runs(tune_run):
    document = json.loads((tune_run / "trials.json").read_text())
    assert len(document["trials"]) == 2
    for trial in document["trials"]:
        board = events(tune_run / "tensorboard" / f"trial-{trial['number']:04d}")
        curve = document["curves"][str(trial["number"])]
        assert scalars(board, "epoch/val_loss") == as_float32(curve)
        assert scalars(board, "final/val_loss") == as_float32([(0, trial["value"])])
        assert "_hparams_/session_start_info" in board.PluginTagToContent("hparams")


def test_a_resumed_run_reads_as_one_run(tmp_path):
    from ravine.report.tensorboard import TensorBoardLogger
    from ravine.train import TrainConfig, train

    config, out = TrainConfig(epochs=3, batch_size=512), tmp_path / "run"
    first = TensorBoardLogger(out)  # killed after epoch 1 ...
    train(config, out, callbacks=[first], on_epoch=first.on_epoch, stop_after_epoch=1)
    first.close()
    second = TensorBoardLogger(out)  # ... and the same command again
    result = train(config, out, callbacks=[second], on_epoch=second.on_epoch)
    second.finish(result)
    assert result.resumed_from_epoch == 1
    board = events(out / "tensorboard")
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert scalars(board, "epoch/test_loss") == as_float32(
        (r["epoch"], r["test_loss"]) for r in history
    )
    assert [s for s, _ in scalars(board, "step/grad_norm")] == list(range(1, result.steps + 1))
    assert [e.step for e in board.Histograms("weights/head.weight")] == [1, 2, 3]
