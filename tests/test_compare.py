"""The compare study: metrics against known answers, batching, ranking and its output files."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

import ravine.optim as ro
from ravine.problems import make_problem
from ravine.report.compare import write_compare_outputs
from ravine.study.compare import CompareConfig, OptimizerSpec, run_compare


def _config(optimizers, problems, **kwargs):
    return CompareConfig(
        optimizers=tuple(OptimizerSpec.parse(s) for s in optimizers),
        problems=tuple(problems),
        **kwargs,
    )


def test_gradient_descent_with_lr_one_over_curvature_solves_a_round_quadratic_in_one_step():
    # condition_number=1: f = 0.5 |x - x*|^2, so x - 1.0 * grad = x* exactly after one update.
    result = run_compare(_config(["sgd:lr=1.0"], ["quadratic:condition_number=1"], steps=5))
    (run,) = result.runs
    assert run.steps_to_target.tolist() == [1.0] * 8
    assert run.success.all()
    np.testing.assert_allclose(run.distance, 0.0, atol=1e-12)
    assert run.losses[:, 0].min() > run.target  # the starts were not already solved


def test_every_optimizer_sees_the_same_starts_and_they_depend_on_the_seed():
    result = run_compare(_config(["sgd", "adam"], ["rosenbrock"], steps=3, starts=4))
    first, second = (run.positions[:, 0] for run in result.runs)
    np.testing.assert_array_equal(first, second)
    other = run_compare(_config(["sgd"], ["rosenbrock"], steps=3, starts=4, seed=1))
    assert not np.array_equal(first, other.runs[0].positions[:, 0])


@pytest.mark.parametrize("spec", ["nadam:lr=0.01", "momentum:lr=0.001,max_grad_norm=5"])
def test_batched_starts_evolve_exactly_as_single_runs(spec):
    """Batching starts into one tensor (or, with global-norm clipping, one optimizer each)
    must not couple them: each row equals the same optimizer run alone from that start."""
    problem = make_problem("rosenbrock")
    result = run_compare(_config([spec], ["rosenbrock"], steps=50, starts=3))
    batched = result.runs[0].positions
    name, hyper = ro.parse_optimizer_spec(spec)
    for row in range(3):
        x = torch.nn.Parameter(torch.tensor(batched[row, 0]))
        opt = ro.make_optimizer(name, [x], **hyper)
        for t in range(50):
            opt.zero_grad()
            problem(x).backward()
            opt.step()
            np.testing.assert_allclose(batched[row, t + 1], x.detach().numpy(), rtol=1e-13)


def test_divergence_is_counted_and_ranked_last():
    result = run_compare(_config(["sgd:lr=0.5", "adam:lr=0.02"], ["rosenbrock"], steps=200))
    by_name = {row.optimizer: row for row in result.summary}
    assert by_name["sgd(lr=0.5)"].diverged == 8
    assert by_name["sgd(lr=0.5)"].successes == 0
    assert by_name["sgd(lr=0.5)"].rank == 2
    assert math.isnan(by_name["sgd(lr=0.5)"].median_final_loss)


def test_saddle_escape_is_measured():
    # Plain GD escapes x^2 - y^2 only at the rate |y| grows, (1 + 2 lr)^t; from |y| <= 1e-2
    # with lr=1e-3 that takes thousands of steps. Adam's normalised steps leave at once.
    result = run_compare(_config(["sgd", "adam:lr=0.05"], ["saddle"], steps=300))
    by_name = {row.optimizer: row for row in result.summary}
    assert by_name["adam(lr=0.05)"].successes == 8 and by_name["adam(lr=0.05)"].rank == 1
    assert by_name["sgd"].successes == 0
    assert by_name["adam(lr=0.05)"].median_steps < 100
    assert math.isnan(by_name["adam(lr=0.05)"].median_distance)  # no minimum to be near


def test_ranking_puts_more_successes_first_then_fewer_steps():
    result = run_compare(
        _config(["sgd:lr=0.0001", "sgd:lr=0.006", "sgd:lr=0.015"], ["quadratic"], steps=2000)
    )
    ranked = [row.optimizer for row in result.summary]
    assert ranked == ["sgd(lr=0.015)", "sgd(lr=0.006)", "sgd(lr=0.0001)"]
    successes = [row.successes for row in result.summary]
    assert successes[0] == 8 and successes[-1] == 0


def test_defaults_and_overrides_merge():
    spec = OptimizerSpec.parse("adam:beta2=0.99")
    assert spec.hyperparams["lr"] == 0.05  # the comparison's default for adam
    assert spec.hyperparams["betas"] == (0.9, 0.99)
    assert spec.label == "adam(betas=0.9/0.99)"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"optimizers": ["adam", "adam"]}, "more than once"),
        ({"optimizers": ["adam:lr=-1"]}, "lr must be a finite number >= 0"),
        ({"problems": ["everest"]}, "unknown problem 'everest'"),
        ({"problems": ["quadratic:condition_number=0.5"]}, "condition_number"),
        ({"starts": 0}, "starts must be an integer >= 1, got 0"),
        ({"steps": 2.5}, "steps must be an integer"),
    ],
)
def test_invalid_configs_fail_before_any_work(kwargs, message):
    optimizers = kwargs.pop("optimizers", ["sgd"])
    problems = kwargs.pop("problems", ["rosenbrock"])
    with pytest.raises(ValueError, match=message):
        _config(optimizers, problems, **kwargs)


def test_outputs_are_written_and_agree_with_the_result(tmp_path):
    result = run_compare(_config(["sgd", "adam"], ["rosenbrock", "rastrigin:dim=3"], steps=20))
    written = write_compare_outputs(result, tmp_path)
    names = sorted(p.name for p in written)
    assert names == sorted(
        [
            "summary.csv",
            "summary.json",
            "runs.npz",
            "01-rosenbrock-trajectories.png",
            "01-rosenbrock-grid.png",
            "01-rosenbrock-loss.png",
            "02-rastrigin_dim_3-loss.png",  # 3-D: no contour map, loss curves only
        ]
    )
    for path in written:
        assert path.stat().st_size > 0
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(tmp_path / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["problem"], r["optimizer"]) for r in rows] == [
        (s.problem, s.optimizer) for s in result.summary
    ]
    document = json.loads((tmp_path / "summary.json").read_text())
    assert document["config"]["steps"] == 20
    assert len(document["runs"]) == 4
    arrays = np.load(tmp_path / "runs.npz")
    np.testing.assert_array_equal(arrays["rosenbrock/adam/losses"], result.runs[1].losses)
    assert arrays["rastrigin:dim=3/sgd/positions"].shape == (8, 21, 3)


def test_steps_count_only_successes_so_they_never_contradict_the_success_column():
    # RMSprop on the quadratic touches the tolerance, then oscillates back out: 0/8 successes
    # once printed "steps 754". A bounded run's steps are those after which it stays below.
    from ravine.study.compare import Run

    losses = np.array([[1.0, 1e-7, 1.0, 1e-7, 1e-8], [1.0, 1e-7, 1.0, 1e-7, 1.0]])
    run = Run("rmsprop", "q", np.zeros((2, 5, 2)), losses, 1e-6, False, np.zeros(2))
    assert run.steps_to_target.tolist() == [1.0, 1.0]
    assert run.steps_to_success.tolist() == [3.0, math.inf]
    escaping = np.array([[0.0, -0.5, -2.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    escape = Run("adam", "s", np.zeros((2, 5, 2)), escaping, -1.0, True, np.zeros(2))
    assert escape.steps_to_success.tolist() == [2.0, math.inf]  # escaping once is enough
    result = run_compare(_config(["rmsprop", "sgd:lr=0.006"], ["quadratic"], steps=800))
    for row in result.summary:
        assert math.isfinite(row.median_steps) == (row.successes * 2 >= row.starts), row
