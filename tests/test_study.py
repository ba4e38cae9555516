"""ravine study: the protocol (same budget, retrain on fresh seeds, test over seeds), the
statistics against independent formulas, performance profiles, resume, bad input."""

from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pytest
import torch
from scipy import stats

from ravine.cli.main import main
from ravine.study.study import Cell, StudyConfig, mean_and_interval, performance_profiles, run_study
from ravine.study.tasks import task
from ravine.train import load_checkpoint


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SMALL = StudyConfig(
    optimizers=("sgd", "adam"),
    tasks=("digits_mlp",),
    trials=3,
    batch=4,
    seeds=3,
    tune_seeds=2,
    epochs=3,
)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "s"
    return run_study(SMALL, out), out


def test_every_optimizer_gets_the_same_budget_and_is_retrained_on_fresh_seeds(study):
    result, out = study
    for optimizer in SMALL.optimizers:
        cell = result.cells[("digits_mlp", optimizer)]
        assert cell.trials["complete"] + cell.trials["pruned"] + cell.trials["failed"] == 3
        saved = load_checkpoint(out / "digits_mlp" / optimizer / "seeds" / "model.pt")
        assert saved["members"] == 3
        config = (out / "digits_mlp" / optimizer / "seeds" / "config.toml").read_text()
        assert "seed = 1000" in config and "restarts = 3" in config
        assert f"lr = {cell.tuned['lr']!r}" in config  # the tuned lr, retrained
    assert {"study.csv", "study.json", "study.db"} <= {p.name for p in out.iterdir()}


def test_test_statistics_and_time_to_target_from_the_seeds_own_records(study):
    result, out = study
    spec = task("digits_mlp")
    for optimizer in SMALL.optimizers:
        cell = result.cells[("digits_mlp", optimizer)]
        report = json.loads(
            (out / "digits_mlp" / optimizer / "seeds" / "restarts.json").read_text()
        )
        accuracies = [row["test_accuracy"] for row in report["per_member"]]
        mean, std = np.mean(accuracies), np.std(accuracies, ddof=1)
        half = stats.t.ppf(0.975, len(accuracies) - 1) * std / math.sqrt(len(accuracies))
        got = cell.test["test_accuracy"]
        assert got["mean"] == pytest.approx(mean) and got["std"] == pytest.approx(std)
        assert got["ci_low"] == pytest.approx(mean - half) and got["ci_high"] == pytest.approx(
            mean + half
        )
        lines = (
            (out / "digits_mlp" / optimizer / "seeds" / "metrics.jsonl").read_text().splitlines()
        )
        history = [json.loads(line) for line in lines]
        updates = []
        for k in range(3):
            hit = [h["step"] for h in history if h["per_member"]["val_accuracy"][k] >= spec.target]
            updates.append(hit[0] if hit else math.inf)
        assert cell.to_target["median_updates"] == statistics.median(updates)
        assert cell.to_target["reached"] == sum(math.isfinite(u) for u in updates)


def test_mean_and_interval_matches_scipy():
    values = [0.91, 0.93, 0.95, 0.92]
    low, high = stats.t.interval(0.95, 3, loc=np.mean(values), scale=stats.sem(values))
    got = mean_and_interval(values)
    assert got["ci_low"] == pytest.approx(low) and got["ci_high"] == pytest.approx(high)


def test_performance_profiles_by_hand():
    config = StudyConfig(optimizers=("sgd", "adam"), tasks=("digits_mlp", "spirals_mlp"))
    cells = {
        ("digits_mlp", "sgd"): Cell(
            "digits_mlp", "sgd", {}, 0.0, {}, to_target={"median_updates": 100}
        ),
        ("digits_mlp", "adam"): Cell(
            "digits_mlp", "adam", {}, 0.0, {}, to_target={"median_updates": 200}
        ),
        ("spirals_mlp", "sgd"): Cell(
            "spirals_mlp", "sgd", {}, 0.0, {}, to_target={"median_updates": math.inf}
        ),
        ("spirals_mlp", "adam"): Cell(
            "spirals_mlp", "adam", {}, 0.0, {}, to_target={"median_updates": 50}
        ),
    }
    profiles, scores = performance_profiles(config, cells)
    # sgd: ratio 1 on digits, never on spirals -> rho = 1/2 on [1, 4]: area 1.5 / 3
    assert scores["sgd"] == pytest.approx(0.5)
    # adam: ratio 2 on digits, 1 on spirals -> rho = 1/2 on [1, 2), 1 on [2, 4]: (0.5 + 2) / 3
    assert scores["adam"] == pytest.approx(2.5 / 3)
    assert profiles["adam"] == [(1.0, 0.5), (2.0, 1.0), (4.0, 1.0)]


def test_a_rerun_continues_without_training_again(study):
    result, out = study
    import optuna

    storage = f"sqlite:///{out / 'study.db'}"
    before = {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(storage)}
    again = run_study(SMALL, out)
    after = {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(storage)}
    assert after == before == {"digits_mlp/sgd": 3, "digits_mlp/adam": 3}
    for key, cell in result.cells.items():
        assert again.cells[key].test == cell.test


@pytest.mark.parametrize(
    "argv",
    [
        ["study", "--task", "imagenet"],
        ["study", "--optimizer", "lion"],
        ["study", "--seeds", "1"],
        ["study", "--space", "lr=1:0.1"],
        ["study", "--optimizer", "sgd", "--optimizer", "sgd"],
    ],
)
def test_bad_input_gets_one_line_and_exit_2(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert not (tmp_path / "ravine-runs").exists()


def _own_task(shift: float = 0.0):
    """A user's task from Python: a network factory and tensors (two Gaussian blobs)."""
    from torch import nn

    from ravine.study.tasks import Task
    from ravine.train import TrainConfig

    g = torch.Generator().manual_seed(0)
    x = torch.randn(240, 4, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    x = x + shift
    data = (x[:160], y[:160], x[160:], y[160:])

    def factory():
        return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2))

    config = TrainConfig(epochs=3, batch_size=32, val_fraction=0.25)
    return Task("blobs", config, target=0.8, model=factory, data=data), factory, data


def test_a_study_of_your_own_network_and_data(tmp_path):
    """A Task with a model factory and tensors: tuned and retrained on them (each cell's seeds
    are the runs ``train(model=, data=)`` makes), recorded by fingerprint, and a rerun with
    other data is refused instead of mixing two studies."""
    import dataclasses

    from ravine.train import train

    own, factory, data = _own_task()
    config = StudyConfig(
        optimizers=("sgd", "adam"), tasks=(own,), trials=2, batch=2, seeds=2, tune_seeds=1
    )
    out = tmp_path / "own"
    result = run_study(config, out)
    for optimizer in config.optimizers:
        cell = result.cells[("blobs", optimizer)]
        assert cell.trials["complete"] == 2
        seeds = out / "blobs" / optimizer / "seeds"
        recorded = (seeds / "config.toml").read_text()
        assert "[user]" in recorded and 'model = "sha256:' in recorded
        alone = train(
            dataclasses.replace(
                own.config,
                optimizer=optimizer,
                optimizer_args={"lr": cell.tuned["lr"]},
                seed=1000,
            ),
            None,
            model=factory,
            data=data,
        )
        member0 = (seeds / "restarts.csv").read_text().splitlines()[1].split(",")
        assert member0[1] == "1000"
        assert float(member0[8]) == pytest.approx(alone.final["test_loss"], rel=1e-5)
    other, _, _ = _own_task(shift=0.5)
    with pytest.raises(ValueError, match=r"another configuration|holds another"):
        run_study(dataclasses.replace(config, tasks=(other,)), out)


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", ""])
def test_a_task_of_ones_own_needs_a_plain_name(name):
    own, _, _ = _own_task()
    import dataclasses

    with pytest.raises(ValueError, match="task's name"):
        StudyConfig(optimizers=("sgd",), tasks=(dataclasses.replace(own, name=name),))
