"""Your own model and data from Python: a factory and tensors, Datasets or DataLoaders train
exactly as the built-in preset on the built-in data, resume, are fingerprinted, and a model
that cannot be stacked is refused up front with why."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ravine.problems import PRESETS, build_model, load_dataset
from ravine.train import ConfigError, TrainConfig, train
from ravine.train.build import seeds
from ravine.train.config import tomllib
from ravine.train.run import load_run

CONFIG = TrainConfig(epochs=2, batch_size=128, optimizer_args={"lr": 3e-3})


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    d = load_dataset("digits")
    return d.x_train, d.y_train, d.x_test, d.y_test


def digits_mlp(seed: int) -> nn.Module:
    # The preset's architecture and initialization, built as a user would build any model.
    return build_model(PRESETS["digits_mlp"], (64,), 10, generator=seeds(seed)["init"])


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def preset_run():
    return train(CONFIG, None)


def test_a_user_factory_and_tensors_train_as_the_preset(digits, preset_run, tmp_path):
    result = train(CONFIG, tmp_path, model=digits_mlp, data=digits)
    _assert_same(preset_run.model.state_dict(), result.model.state_dict())
    assert result.final == preset_run.final
    recorded = tomllib.loads((tmp_path / "config.toml").read_text())
    assert recorded["model"]["preset"] == recorded["data"]["name"] == "user"
    assert recorded["user"]["model"].startswith("sha256:")
    assert recorded["user"]["data"].startswith("sha256:")


def test_a_dataset_and_a_dataloader_are_the_same_data(digits, preset_run):
    x, y, x_test, y_test = digits
    datasets = (TensorDataset(x, y), TensorDataset(x_test, y_test))
    loaders = tuple(DataLoader(d, batch_size=100) for d in datasets)  # read once, in order
    for data in (datasets, loaders, ((x, y), (x_test, y_test))):
        result = train(CONFIG, None, model=digits_mlp, data=data)
        _assert_same(preset_run.model.state_dict(), result.model.state_dict())


def test_a_factory_without_a_seed_draws_from_a_seeded_global_generator(digits):
    def plain():
        return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    config = dataclasses.replace(CONFIG, epochs=1)
    state = torch.get_rng_state()
    a = train(config, None, model=plain, data=digits).model.state_dict()
    assert torch.equal(torch.get_rng_state(), state)  # the caller's stream is untouched
    b = train(config, None, model=plain, data=digits).model.state_dict()
    _assert_same(a, b)
    c = train(dataclasses.replace(config, seed=1), None, model=plain, data=digits)
    assert not torch.equal(a["0.weight"], c.model.state_dict()["0.weight"])


def test_resume_equals_an_uninterrupted_run_and_refuses_other_parts(digits, tmp_path):
    config = dataclasses.replace(CONFIG, epochs=3, schedule="cosine")
    whole = train(config, tmp_path / "whole", model=digits_mlp, data=digits)
    train(config, tmp_path / "part", model=digits_mlp, data=digits, stop_after_epoch=1)
    other = (digits[0] + 1e-3, *digits[1:])
    with pytest.raises(ConfigError, match=r"user\.data"):
        train(config, tmp_path / "part", model=digits_mlp, data=other)

    def wider(seed):
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))

    with pytest.raises(ConfigError, match=r"user\.model"):
        train(config, tmp_path / "part", model=wider, data=digits)
    resumed = train(config, tmp_path / "part", model=digits_mlp, data=digits)
    assert resumed.resumed_from_epoch == 1
    _assert_same(whole.model.state_dict(), resumed.model.state_dict())


def test_a_run_of_a_user_model_loads_only_with_it(digits, tmp_path):
    train(dataclasses.replace(CONFIG, epochs=1), tmp_path, model=digits_mlp, data=digits)
    with pytest.raises(ConfigError, match=r"trained on a model given from Python.*load_run"):
        load_run(tmp_path)
    run = load_run(tmp_path, model=digits_mlp, data=digits)
    assert run.splits.dataset.name == "user" and run.input_shape == (64,)
    initial = run.initial_model()
    _assert_same(initial.state_dict(), digits_mlp(CONFIG.seed).state_dict())
    with pytest.raises(ConfigError, match="other data"):
        load_run(tmp_path, model=digits_mlp, data=(*digits[:2], digits[2][:-1], digits[3][:-1]))
    done = subprocess.run(
        [sys.executable, "-m", "ravine", "probe", str(tmp_path)], capture_output=True, text=True
    )
    assert done.returncode == 2 and "given from Python" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


class _Branching(nn.Module):
    """A forward that branches on a tensor's value: vmap cannot batch it."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(64, 10)

    def forward(self, x):
        out = self.layer(x)
        return out if out.sum() > 0 else -out


def test_a_model_that_cannot_be_stacked_is_refused_up_front(digits, tmp_path):
    config = dataclasses.replace(CONFIG, restarts=4)
    with pytest.raises(
        ConfigError,
        match=r"4 members of this model cannot train as one batched"
        r".*branches on a tensor's value.*restarts = 1",
    ):
        train(config, tmp_path, model=lambda seed: _Branching(), data=digits)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())  # refused before any work
    # The same model trains as one network, and a user's CNN batches (vmap) as restarts.
    train(dataclasses.replace(CONFIG, epochs=1, max_steps=2), None, model=_Branching, data=digits)

    def cnn(seed):
        return nn.Sequential(
            nn.Unflatten(1, (1, 8, 8)),
            nn.Conv2d(1, 4, 3),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(144, 10),
        )

    result = train(
        dataclasses.replace(config, restarts=2, max_steps=3), None, model=cnn, data=digits
    )
    assert result.method == "vmap" and result.diverged == []


def test_bad_user_parts_name_the_argument(digits):
    with pytest.raises(ConfigError, match=r"model: the factory must return an nn\.Module, got int"):
        train(CONFIG, None, model=lambda seed: 3, data=digits)
    with pytest.raises(ConfigError, match=r"data must be \(x_train, y_train, x_test, y_test\)"):
        train(CONFIG, None, data=digits[:3])
    with pytest.raises(ConfigError, match="data: train has 1437 inputs but 10 targets"):
        train(CONFIG, None, data=(digits[0], digits[1][:10], *digits[2:]))
