"""ravine tune: search spaces, Optuna studies of batched trials, pruning, failures, resume."""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import subprocess
import sys
import textwrap

import optuna
import pytest
import torch

from ravine.cli.main import main
from ravine.study.space import DEFAULT_SPACES, Range, hyperparameters, parse_range, resolve_space
from ravine.study.tune import TuneConfig, run_tune, trial_curve
from ravine.train import TrainConfig, load_config, train

SMALL = TrainConfig(epochs=3, batch_size=128, val_fraction=0.2)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------
# Search spaces
# --------------------------------------------------------------------------------------------


def test_range_specs():
    assert parse_range("lr=1e-4:1e-1:log", "adam") == ("lr", Range(1e-4, 1e-1, log=True))
    assert parse_range("momentum=0.8:0.99", "sgd") == ("momentum", Range(0.8, 0.99))
    assert parse_range("lr", "adam") == ("lr", DEFAULT_SPACES["adam"]["lr"])
    assert parse_range("amsgrad=true,false", "adam") == ("amsgrad", Range(choices=(True, False)))
    assert resolve_space("adam", None) == {"lr": DEFAULT_SPACES["adam"]["lr"]}
    assert resolve_space("adamw", ["all"]) == dict(DEFAULT_SPACES["adamw"])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("lr=1e-1:1e-4:log", "empty range"),
        ("lr=0.1:0.1", "empty range"),
        ("lr=0:1e-1:log", "needs low > 0"),
        ("lr=-1:1:log", "needs low > 0"),
        ("lr=a:b", "not a number"),
        ("lr=1:2:cubic", "LOW:HIGH"),
        ("betas=0.9:0.99", "cannot be searched"),
        ("bogus=1:2", "cannot be searched for adam; valid: lr"),
        ("=1:2", "search name is missing"),
        ("weight_decay", "no published range"),
    ],
)
def test_malformed_specs_name_what_is_wrong(spec, message):
    with pytest.raises(ValueError, match=message):
        resolve_space("adam", [spec])


def test_decay_rates_are_searched_as_their_distance_from_one():
    args, _ = hyperparameters("adam", {"lr": 1e-3, "one_minus_beta2": 1e-3}, {"eps": 1e-6})
    assert args == {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-6}
    args, _ = hyperparameters("momentum", {"one_minus_momentum": 0.25})
    assert args == {"momentum": 0.75}
    with pytest.raises(ValueError, match="sets betas twice"):
        resolve_space("adam", ["beta1=0.8:0.9", "one_minus_beta1"])


def test_tune_config_validation():
    with pytest.raises(ValueError, match="unknown sampler 'cmaes'; valid: tpe, qmc, random, grid"):
        TuneConfig(train=SMALL, sampler="cmaes")
    with pytest.raises(ValueError, match="unknown pruner"):
        TuneConfig(train=SMALL, pruner="sometimes")
    with pytest.raises(ValueError, match="validation split"):
        TuneConfig(train=dataclasses.replace(SMALL, val_fraction=0.0))
    with pytest.raises(ValueError, match="trials must be an integer >= 1"):
        TuneConfig(train=SMALL, trials=0)


# --------------------------------------------------------------------------------------------
# Studies
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("tune") / "study"
    config = TuneConfig(
        train=SMALL,
        space=resolve_space("adam", ["lr=1e-3:3e-2:log", "one_minus_beta1"]),
        trials=6,
        batch=3,
        sampler="qmc",
    )
    return run_tune(config, out), out


def test_a_study_finishes_its_trials_and_writes_its_tables(study):
    result, out = study
    assert result.counts == {"complete": 6, "pruned": 0, "failed": 0, "stale": 0}
    assert {"study.db", "trials.csv", "trials.json", "tune.json", "best.toml"} <= {
        p.name for p in out.iterdir()
    }
    summary = json.loads((out / "tune.json").read_text())
    values = [t.value for t in result.study.trials]
    assert summary["best_value"] == pytest.approx(min(values))
    assert set(summary["importances"]) == {"lr", "one_minus_beta1"}
    document = json.loads((out / "trials.json").read_text())
    assert [len(c) for c in document["curves"].values()] == [3] * 6  # a value per epoch


def test_best_toml_reproduces_the_best_trial(study, tmp_path):
    """Trial k of a batch is the run ravine train makes of its hyperparameters."""
    result, out = study
    config = load_config(out / "best.toml")
    assert config.optimizer_args["lr"] == pytest.approx(result.best_params["lr"])
    run = train(config, tmp_path / "again")
    best_epoch = min(h["val_loss"] for h in run.history)
    assert best_epoch == pytest.approx(result.best_value, rel=1e-4)


def test_each_trial_is_its_own_run(study, tmp_path):
    result, _ = study
    trial = result.study.trials[4]
    args, _ = hyperparameters("adam", trial.params)
    run = train(dataclasses.replace(SMALL, optimizer_args=args), tmp_path / "trial4")
    curve = trial_curve(trial)  # kept in the trial's record: this study has no pruner
    assert not trial.intermediate_values and len(curve) == len(run.history)
    for epoch, value in curve:
        assert run.history[epoch - 1]["val_loss"] == pytest.approx(value, rel=1e-4)


def test_pruned_trials_stop_early_and_are_recorded(tmp_path):
    config = TuneConfig(
        train=dataclasses.replace(SMALL, epochs=6),
        space={"lr": Range(1e-5, 1e-1, log=True)},
        trials=9,
        batch=9,
        sampler="qmc",
        pruner="halving",
    )
    result = run_tune(config, tmp_path / "pruned")
    assert result.counts["pruned"] >= 3 and result.counts["complete"] >= 1
    for trial in result.study.trials:
        epochs = len(trial.intermediate_values)
        if trial.state == optuna.trial.TrialState.PRUNED:
            assert epochs < 6 and trial.user_attrs["ravine"]["epochs"] == epochs
        else:
            assert epochs == 6


def test_a_diverging_trial_fails_without_stopping_the_study(tmp_path):
    config = TuneConfig(
        train=dataclasses.replace(SMALL, optimizer="sgd", epochs=2),
        space={"lr": Range(choices=(0.05, 1e6))},
        trials=4,
        batch=4,
        sampler="grid",
    )
    result = run_tune(config, tmp_path / "diverging")
    states = {t.params["lr"]: t.state.name for t in result.study.trials}
    assert states == {0.05: "COMPLETE", 1e6: "FAIL"}
    failed = [t for t in result.study.trials if t.state.name == "FAIL"]
    assert all(t.user_attrs["ravine"]["diverged"] for t in failed)
    assert result.best_params == {"lr": 0.05}


_KILL_IN_SECOND_BATCH = textwrap.dedent(
    """
    import os, signal, sys
    import ravine.study.tune as tune
    real = tune.evaluate_batch
    calls = {"n": 0}
    def dying(job, study=None, on_progress=None):
        calls["n"] += 1
        if calls["n"] == 2:  # the second batch is running (asked, trials RUNNING): kill -9
            os.kill(os.getpid(), signal.SIGKILL)
        return real(job, study, on_progress)
    import ravine.study.executors as executors
    executors.evaluate_batch = dying
    from ravine.cli.main import main
    sys.exit(main(sys.argv[1:]))
    """
)


def test_kill_9_mid_study_then_the_same_command_continues_it(tmp_path):
    out = tmp_path / "study"
    argv = [
        "tune",
        "--trials",
        "6",
        "--batch",
        "2",
        "--epochs",
        "2",
        "--sampler",
        "random",
        "--out",
        str(out),
    ]
    child = subprocess.run(
        [sys.executable, "-c", _KILL_IN_SECOND_BATCH, *argv],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    storage = f"sqlite:///{out / 'study.db'}"
    before = optuna.load_study(study_name="ravine-tune", storage=storage).trials
    first = {t.number: (t.params, t.value) for t in before if t.state.name == "COMPLETE"}
    running = [t.params for t in before if t.state.name == "RUNNING"]
    assert len(first) == 2 and len(running) == 2

    assert main(argv) == 0
    after = optuna.load_study(study_name="ravine-tune", storage=storage).trials
    complete = [t for t in after if t.state.name == "COMPLETE"]
    assert len(complete) == 6  # the budget, and nothing finished was trained twice
    for number, (params, value) in first.items():
        assert after[number].params == params and after[number].value == value
    stale = [t for t in after if t.user_attrs.get("ravine_stale")]
    assert [t.params for t in stale] == running
    rerun = [t.params for t in complete if t.number > max(first)]
    assert all(p in rerun for p in running)  # the lost trials ran again, same hyperparameters


def test_a_rerun_with_another_configuration_is_refused(study, capsys):
    _, out = study
    assert main(["tune", "--trials", "7", "--out", str(out)]) == 2
    assert "holds another" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["tune", "--optimizer", "adamax"],
        ["tune", "--space", "lr=1e-1:1e-4:log"],
        ["tune", "--space", "lr=0:1:log"],
        ["tune", "--space", "lr=x"],
        ["tune", "--sampler", "cmaes"],
        ["tune", "--dataset", "imagenet"],
        ["tune", "--executor", "dask"],
        ["tune", "--trials", "0"],
        ["tune", "--storage", "postgresql://nobody@127.0.0.1:9/none", "--trials", "1"],
        ["tune", "--storage", "notaurl", "--trials", "1"],
    ],
)
def test_bad_input_gets_one_line_and_exit_2(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err


def test_the_cli_default_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["tune", "--trials", "4", "--batch", "4", "--epochs", "2"]) == 0
    printed = capsys.readouterr().out
    assert "4 complete, 0 pruned, 0 failed" in printed and "best: lr=" in printed
    (folder,) = (tmp_path / "ravine-runs").iterdir()
    figures = {p.name for p in folder.glob("*.png")}
    assert {"tune-history.png", "tune-sensitivity.png", "tune-curves.png"} <= figures
    assert main(["tune", "--trials", "4", "--batch", "4", "--epochs", "2"]) == 0  # done: a no-op
    assert math.isfinite(json.loads((folder / "tune.json").read_text())["best_value"])
