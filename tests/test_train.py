"""The training loop: determinism, resume after kill -9, early stopping, snapshots, noise."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ravine.optim import NonFiniteGradientError
from ravine.train import ConfigError, TrainConfig, load_checkpoint, load_config, train
from ravine.train.build import prepare_data
from ravine.train.config import dump_toml
from ravine.train.trainer import Member, Trainer

FAST = {"epochs": 3, "batch_size": 128}


def _params(result):
    return {k: v.clone() for k, v in result.model.state_dict().items()}


def _assert_same_params(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_a_run_is_a_function_of_its_config(tmp_path):
    config = TrainConfig(**FAST, model_args={"dropout": 0.2})
    first = train(config, tmp_path / "a")
    second = train(config, tmp_path / "b")
    _assert_same_params(_params(first), _params(second))
    other = train(TrainConfig(**FAST, model_args={"dropout": 0.2}, seed=1), tmp_path / "c")
    assert not torch.equal(_params(first)["head.weight"], _params(other)["head.weight"])


def test_outputs_of_a_run(tmp_path):
    result = train(TrainConfig(**FAST), tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"config.toml", "metrics.jsonl", "steps.csv", "checkpoint.pt", "model.pt"} <= names
    assert "summary.json" in names  # figures are drawn above the trainer (ravine.report)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    with open(tmp_path / "steps.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == result.steps == 3 * math.ceil(1437 / 128)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["final"]["test_accuracy"] == pytest.approx(result.final["test_accuracy"])
    assert 0.5 < result.final["test_accuracy"] <= 1.0
    saved = load_checkpoint(tmp_path / "model.pt")
    assert torch.equal(saved["model"]["head.weight"], result.model.state_dict()["head.weight"])
    assert saved["standardizer"] is not None


def test_resume_from_a_stopped_run_ends_with_the_same_parameters(tmp_path):
    config = TrainConfig(**FAST, schedule="cosine", grad_noise=0.01, model_args={"dropout": 0.1})
    whole = train(config, tmp_path / "whole")
    partial = train(config, tmp_path / "part", stop_after_epoch=1)
    assert partial.history[-1]["epoch"] == 1
    resumed = train(config, tmp_path / "part")
    assert resumed.resumed_from_epoch == 1
    _assert_same_params(_params(whole), _params(resumed))
    assert resumed.history == [
        {**h, "seconds": r["seconds"]} for h, r in zip(whole.history, resumed.history, strict=True)
    ]


def test_resume_after_kill_9_ends_with_the_same_parameters(tmp_path):
    """A real crash: SIGKILL the CLI once its first checkpoint exists, then run it again."""
    argv = [sys.executable, "-m", "ravine", "train", "--epochs", "8", "--seed", "3"]
    reference = tmp_path / "reference"
    subprocess.run([*argv, "--out", str(reference)], check=True, capture_output=True)

    crashed = tmp_path / "crashed"
    process = subprocess.Popen([*argv, "--out", str(crashed)], stdout=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (crashed / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    state = load_checkpoint(crashed / "checkpoint.pt")  # the atomic write left a whole file
    assert 1 <= state["epoch"] < 8, "the run should have been killed part way"

    subprocess.run([*argv, "--out", str(crashed)], check=True, capture_output=True)
    a = load_checkpoint(reference / "model.pt")["model"]
    b = load_checkpoint(crashed / "model.pt")["model"]
    _assert_same_params(a, b)


def test_resume_refuses_another_config(tmp_path):
    train(TrainConfig(**FAST), tmp_path, stop_after_epoch=1)
    with pytest.raises(ConfigError, match="holds another"):
        train(TrainConfig(**{**FAST, "epochs": 4}), tmp_path)


def test_early_stopping_returns_the_best_held_out_model(tmp_path):
    config = TrainConfig(
        epochs=40,
        batch_size=32,
        val_fraction=0.2,
        early_stopping=2,
        optimizer_args={"lr": 0.05},  # large enough that validation loss soon turns up
    )
    result = train(config, tmp_path)
    assert len(result.history) < 40
    best = min(result.history, key=lambda h: h["val_loss"])
    assert len(result.history) - best["epoch"] == 2
    assert result.final["val_loss"] == pytest.approx(best["val_loss"], rel=1e-6)
    assert "test_accuracy" in result.final


def test_snapshot_ensemble(tmp_path):
    config = TrainConfig(
        epochs=6,
        batch_size=64,
        snapshots=3,
        optimizer="sgd",
        optimizer_args={"lr": 0.1, "momentum": 0.9},
    )
    result = train(config, tmp_path)
    ensemble = result.ensemble
    assert ensemble["members"] == 3
    assert 0 < ensemble["ensemble_accuracy"] <= 1
    with open(tmp_path / "steps.csv") as handle:
        lrs = [float(row["lr"]) for row in csv.DictReader(handle)]
    cycle = math.ceil(result.steps / 3)
    # The cyclic cosine restarts at the base lr right after each cycle ends (SGDR).
    for end in (cycle, 2 * cycle):
        assert lrs[end - 1] == pytest.approx(0.1)
        assert lrs[end - 2] < 0.01


def test_gradient_noise_has_the_annealed_variance():
    config = TrainConfig(grad_noise=0.3, grad_noise_gamma=0.55)
    trainer = Trainer(config, prepare_data(config), [Member(0)])
    grads = [torch.zeros(400, 500), torch.zeros(400)]
    trainer.step = 99
    trainer._add_gradient_noise(grads)
    noise = torch.cat([g.flatten() for g in grads])
    expected = math.sqrt(0.3 / 100**0.55)
    # 200,400 samples: the std's standard error is expected / sqrt(2 n), about 0.16%.
    assert noise.std().item() == pytest.approx(expected, rel=0.01)


def test_pre_initialization_from_a_finished_run(tmp_path):
    first = train(TrainConfig(**FAST), tmp_path / "first")
    # lr = 0: the second run's parameters stay at its initialization, i.e. the first's end.
    second = train(
        TrainConfig(
            epochs=1, pretrained=str(tmp_path / "first" / "model.pt"), optimizer_args={"lr": 0.0}
        ),
        tmp_path / "second",
    )
    _assert_same_params(_params(first), _params(second))


def test_diverging_run_stops_with_a_clear_error(tmp_path):
    # Regression with a far too large step: the weights overflow within the first epoch.
    config = TrainConfig(
        dataset="teacher_student",
        model="mlp",
        epochs=3,
        optimizer="sgd",
        optimizer_args={"lr": 10.0},
    )
    with pytest.raises(NonFiniteGradientError, match=r"step refused \(parameters and state"):
        train(config, tmp_path)
    assert not (tmp_path / "model.pt").exists()  # no final model is written from a broken run


def test_config_file_round_trip_and_errors(tmp_path):
    config = TrainConfig(
        dataset="mnist1d",
        model="mnist1d_cnn",
        optimizer="nadam",
        optimizer_args={"lr": 2e-3, "betas": (0.9, 0.99)},
        schedule="cosine",
        schedule_args={"eta_min": 1e-5},
        epochs=7,
        seed=4,
        model_args={"batch_norm": True},
    )
    path = tmp_path / "run.toml"
    path.write_text(dump_toml(config.to_toml_tables()))
    assert load_config(path) == config
    nested = TrainConfig(
        schedule="warmup", schedule_args={"warmup_steps": 10, "then": {"name": "cosine"}}
    )
    nested_path = tmp_path / "nested.toml"
    nested_path.write_text(dump_toml(nested.to_toml_tables()))
    assert load_config(nested_path) == nested
    assert load_config(path, epochs=9, optimizer_args={"lr": 1.0}).optimizer_args == {
        "lr": 1.0,
        "betas": (0.9, 0.99),
    }

    bad_key = tmp_path / "bad.toml"
    bad_key.write_text("[training]\nepoch = 3\n")
    with pytest.raises(ConfigError, match=r"bad.toml: unknown key 'epoch' in \[training\]"):
        load_config(bad_key)
    bad_table = tmp_path / "table.toml"
    bad_table.write_text("[optimiser]\nname = 'adam'\n")
    with pytest.raises(ConfigError, match=r"unknown table \[optimiser\]; valid tables"):
        load_config(bad_table)
    bad_value = tmp_path / "value.toml"
    bad_value.write_text("[training]\nbatch_size = 0\n")
    with pytest.raises(ConfigError, match=r"value\.toml: batch_size must be an integer >= 1"):
        load_config(bad_value)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")


def test_shipped_configs_load():
    for path in sorted(Path(__file__).resolve().parents[1].joinpath("configs").glob("*.toml")):
        load_config(path)


def test_a_run_that_stopped_early_stays_stopped_when_resumed(tmp_path):
    config = TrainConfig(
        epochs=40, batch_size=32, val_fraction=0.2, early_stopping=2, optimizer_args={"lr": 0.05}
    )
    first = train(config, tmp_path)
    again = train(config, tmp_path)
    assert again.steps == first.steps
    _assert_same_params(_params(first), _params(again))


class _Opaque:  # pickles, but weights_only loading refuses it
    pass


class _UnsafeStateCallback:
    def __call__(self, model, step):
        pass

    def state_dict(self):
        return {"seen": _Opaque()}


def test_a_callback_state_that_would_make_the_checkpoint_unreadable_is_refused(tmp_path):
    with pytest.raises(TypeError, match="callback _UnsafeStateCallback: state_dict"):
        train(TrainConfig(**FAST), tmp_path, callbacks=[_UnsafeStateCallback()])
