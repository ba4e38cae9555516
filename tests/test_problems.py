"""Analytic problems: values, derivatives and curvature at the known minima, against textbook
formulas and finite differences. Driven by one table: adding a problem is adding a row."""

import dataclasses
import doctest
import math

import pytest
import torch
from torch.autograd.functional import hessian

import ravine.problems.analytic as analytic
from ravine.problems import PROBLEMS, AnalyticProblem, make_problem


def _rosenbrock(x):
    return sum(100 * (x[i + 1] - x[i] ** 2) ** 2 + (1 - x[i]) ** 2 for i in range(len(x) - 1))


def _beale(x):
    a, b = x
    return (1.5 - a + a * b) ** 2 + (2.25 - a + a * b**2) ** 2 + (2.625 - a + a * b**3) ** 2


def _himmelblau(x):
    a, b = x
    return (a**2 + b - 11) ** 2 + (a + b**2 - 7) ** 2


def _rastrigin(x):
    return 10 * len(x) + sum(v**2 - 10 * math.cos(2 * math.pi * v) for v in x)


def _ackley(x):
    n = len(x)
    r = math.sqrt(sum(v**2 for v in x) / n)
    c = sum(math.cos(2 * math.pi * v) for v in x) / n
    return -20 * math.exp(-0.2 * r) - math.exp(c) + 20 + math.e


def _quadratic(problem):
    h = problem.hessian.tolist()

    def f(x):
        d = [v - 1.0 for v in x]
        return 0.5 * sum(d[i] * h[i][j] * d[j] for i in range(len(d)) for j in range(len(d)))

    return f


# (registry name, kwargs, textbook formula on a list of floats; a callable of the problem when
# the formula depends on its instance)
CASES = [
    ("rosenbrock", {}, _rosenbrock),
    ("rosenbrock", {"dim": 5}, _rosenbrock),
    ("beale", {}, _beale),
    ("himmelblau", {}, _himmelblau),
    ("rastrigin", {}, _rastrigin),
    ("rastrigin", {"dim": 4}, _rastrigin),
    ("ackley", {}, _ackley),
    ("ackley", {"dim": 3}, _ackley),
    ("saddle", {}, lambda x: x[0] ** 2 - x[1] ** 2),
    ("monkey_saddle", {}, lambda x: x[0] ** 3 - 3 * x[0] * x[1] ** 2),
    ("quadratic", {}, _quadratic),
    ("quadratic", {"dim": 5, "condition_number": 1e4}, _quadratic),
    ("quadratic", {"rotate": False, "condition_number": 10.0}, _quadratic),
    ("quadratic", {"rotate": 0.3}, _quadratic),
]
IDS = [name + "".join(f"-{k}={v}" for k, v in kw.items()) for name, kw, _ in CASES]
BOUNDED = [(n, kw) for n, kw, _ in CASES if not PROBLEMS[n]().escape]
BOUNDED_IDS = [i for i, (n, _, _) in zip(IDS, CASES, strict=True) if not PROBLEMS[n]().escape]


def _reference(problem, formula):
    return formula(problem) if formula is _quadratic else formula


def test_every_registered_problem_has_a_row():
    assert {name for name, _, _ in CASES} == set(PROBLEMS)
    for name, factory in PROBLEMS.items():
        problem = factory()
        assert isinstance(problem, AnalyticProblem)
        assert problem.name == name
        assert problem.description and "\n" not in problem.description


def test_module_docstring_example_runs():
    failures, tried = doctest.testmod(analytic)
    assert tried > 0 and failures == 0


@pytest.mark.parametrize(("name", "kwargs", "formula"), CASES, ids=IDS)
def test_matches_textbook_formula(name, kwargs, formula):
    problem = make_problem(name, **kwargs)
    reference = _reference(problem, formula)
    x = problem.sample_starts(16, torch.Generator().manual_seed(1), dtype=torch.float64)
    x = torch.cat([x, torch.randn(16, problem.dim, generator=torch.Generator().manual_seed(2))])
    expected = torch.tensor([reference(row) for row in x.tolist()], dtype=torch.float64)
    torch.testing.assert_close(problem(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("name", "kwargs"), BOUNDED, ids=BOUNDED_IDS)
def test_minima_value_gradient_and_curvature(name, kwargs):
    problem = make_problem(name, **kwargs)
    minima = problem.minima
    assert minima.dtype == torch.float64 and minima.ndim == 2 and minima.shape[1] == problem.dim
    assert minima.shape[0] >= 1
    assert problem.min_value is not None
    assert problem.target == pytest.approx(problem.min_value + problem.tol)
    assert not problem.escape
    for point in minima:
        assert problem(point).item() == pytest.approx(problem.min_value, abs=1e-12)
        x = point.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(problem(x), x)
        assert grad.abs().max().item() < 1e-9, grad
        h = hessian(problem, point)
        torch.testing.assert_close(h, h.T)
        eigenvalues = torch.linalg.eigvalsh(h)
        assert eigenvalues.min().item() >= -1e-9 * max(1.0, eigenvalues.abs().max().item())
    torch.testing.assert_close(
        problem.distance_to_minimum(minima), torch.zeros(len(minima), dtype=torch.float64)
    )


@pytest.mark.parametrize(("name", "kwargs"), BOUNDED, ids=BOUNDED_IDS)
def test_no_point_is_below_the_global_minimum(name, kwargs):
    problem = make_problem(name, **kwargs)
    lo, hi = torch.tensor(problem.bounds, dtype=torch.float64).unbind(-1)
    x = lo + (hi - lo) * torch.rand(
        20_000, problem.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    assert problem(x).min().item() >= problem.min_value - 1e-12


@pytest.mark.parametrize(("name", "kwargs", "formula"), CASES, ids=IDS)
def test_gradients_and_hessians_match_finite_differences(name, kwargs, formula):
    problem = make_problem(name, **kwargs)
    x = problem.sample_starts(4, torch.Generator().manual_seed(3), dtype=torch.float64)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(problem, (x,))
    assert torch.autograd.gradgradcheck(problem, (x,))


@pytest.mark.parametrize(("name", "kwargs", "formula"), CASES, ids=IDS)
def test_batch_shapes_and_dtypes(name, kwargs, formula):
    problem = make_problem(name, **kwargs)
    d = problem.dim
    g = torch.Generator().manual_seed(4)
    x64 = torch.randn(3, 4, d, generator=g, dtype=torch.float64)
    assert problem(x64).shape == (3, 4)
    assert problem(x64[0]).shape == (4,)
    assert problem(x64[0, 0]).shape == ()
    assert problem(torch.zeros(0, d)).shape == (0,)
    torch.testing.assert_close(problem(x64)[1], problem(x64[1]))
    y32 = problem(x64.float())
    assert y32.dtype == torch.float32
    torch.testing.assert_close(y32, problem(x64).float(), rtol=1e-4, atol=1e-4)
    assert problem.distance_to_minimum(x64).shape == (3, 4)
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., " + str(d)):
        problem(torch.zeros(5, d + 1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("name", "kwargs", "formula"), CASES, ids=IDS)
def test_cuda_matches_cpu(name, kwargs, formula):
    problem = make_problem(name, **kwargs)
    x = problem.sample_starts(8, torch.Generator().manual_seed(5), dtype=torch.float64)
    torch.testing.assert_close(problem(x.cuda()).cpu(), problem(x))
    assert problem.sample_starts(2, device="cuda").device.type == "cuda"


@pytest.mark.parametrize(("name", "kwargs", "formula"), CASES, ids=IDS)
def test_sample_starts_are_deterministic_and_in_region(name, kwargs, formula):
    problem = make_problem(name, **kwargs)
    a = problem.sample_starts(64, torch.Generator().manual_seed(7))
    b = problem.sample_starts(64, torch.Generator().manual_seed(7))
    c = problem.sample_starts(64, torch.Generator().manual_seed(8))
    assert a.shape == (64, problem.dim) and a.dtype == torch.get_default_dtype()
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.testing.assert_close(
        problem.sample_starts(64, torch.Generator().manual_seed(7), dtype=torch.float64).float(), a
    )
    assert problem.sample_starts(0).shape == (0, problem.dim)
    starts = problem.sample_starts(1000, torch.Generator().manual_seed(9), dtype=torch.float64)
    for box in (problem.start_bounds, problem.bounds):  # starts lie inside the plotting box too
        lo, hi = torch.tensor(box, dtype=torch.float64).unbind(-1)
        assert ((starts >= lo) & (starts <= hi)).all()
    assert len(problem.bounds) == len(problem.start_bounds) == problem.dim
    with pytest.raises(ValueError, match="n must be >= 0"):
        problem.sample_starts(-1)


@pytest.mark.parametrize("name", ["saddle", "monkey_saddle"])
def test_saddle_starts_sit_just_off_the_stable_manifold(name):
    problem = make_problem(name)
    starts = problem.sample_starts(1000, torch.Generator().manual_seed(0), dtype=torch.float64)
    x, y = starts.unbind(-1)
    assert ((y.abs() >= 1e-3) & (y.abs() <= 1e-2)).all()
    assert (y > 0).any() and (y < 0).any()
    lo, hi = problem.start_x
    assert ((x >= lo) & (x <= hi)).all()
    if name == "monkey_saddle":
        assert (x > 0).all()  # the positive x-axis is the ray that flows into the saddle


@pytest.mark.parametrize("name", ["saddle", "monkey_saddle"])
def test_saddles_are_unbounded_escape_problems(name):
    problem = make_problem(name)
    assert problem.escape and problem.min_value is None
    assert problem.target == -1.0
    assert problem.minima.shape == (0, 2)
    assert torch.isnan(problem.distance_to_minimum(torch.zeros(3, 2))).all()
    torch.testing.assert_close(problem.saddle_points, torch.zeros(1, 2, dtype=torch.float64))
    origin = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(problem(origin), origin)
    assert torch.equal(grad, torch.zeros(2, dtype=torch.float64))
    down = {"saddle": [0.0, 10.0], "monkey_saddle": [-10.0, 0.0]}[name]
    assert problem(torch.tensor(down)) < -99  # unbounded below
    assert make_problem(name, escape_below=-5.0).target == -5.0


def test_saddle_hessian_has_eigenvalues_plus_and_minus_two():
    h = hessian(make_problem("saddle"), torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(
        torch.linalg.eigvalsh(h), torch.tensor([-2.0, 2.0], dtype=torch.float64)
    )


def test_monkey_saddle_hessian_vanishes_at_the_saddle():
    h = hessian(make_problem("monkey_saddle"), torch.zeros(2, dtype=torch.float64))
    assert torch.equal(h, torch.zeros(2, 2, dtype=torch.float64))


@pytest.mark.parametrize("dim", [2, 3, 7])
@pytest.mark.parametrize("kappa", [1.0, 37.0, 100.0, 1e4])
@pytest.mark.parametrize("rotate", [True, False])
def test_quadratic_hessian_has_exact_condition_number(dim, kappa, rotate):
    problem = make_problem("quadratic", dim=dim, condition_number=kappa, rotate=rotate)
    h = hessian(problem, torch.randn(dim, dtype=torch.float64))  # constant: any point will do
    torch.testing.assert_close(h, problem.hessian, rtol=1e-13, atol=1e-12)
    eigenvalues = torch.linalg.eigvalsh(h)
    cond = (eigenvalues.max() / eigenvalues.min()).item()
    assert cond == pytest.approx(kappa, rel=1e-10)
    log_eigs = eigenvalues.log()
    expected = torch.linspace(0.0, math.log(kappa), dim, dtype=torch.float64)
    torch.testing.assert_close(log_eigs, expected, rtol=0, atol=1e-10)
    torch.testing.assert_close(problem.eigenvalues, expected.exp(), rtol=1e-14, atol=0)
    off_diagonal = (h - torch.diag(torch.diagonal(h))).abs().max().item()
    if rotate and kappa > 1:
        assert off_diagonal > 1e-3 * kappa  # eigenvectors are not the coordinate axes
    elif not rotate:
        assert off_diagonal == 0.0


def test_quadratic_rotation_angle_and_seed():
    angle = make_problem("quadratic", rotate=math.pi / 4, condition_number=9.0)
    h = angle.hessian
    torch.testing.assert_close(h, torch.tensor([[5.0, -4.0], [-4.0, 5.0]], dtype=torch.float64))
    a = make_problem("quadratic", dim=4, seed=1)
    assert torch.equal(a.hessian, make_problem("quadratic", dim=4, seed=1).hessian)
    assert not torch.allclose(a.hessian, make_problem("quadratic", dim=4, seed=2).hessian)
    assert make_problem("quadratic", dim=1, condition_number=1.0).hessian.item() == 1.0


def test_ackley_has_subgradient_zero_at_its_kink():
    problem = make_problem("ackley", dim=3)
    x = torch.zeros(3, requires_grad=True)  # float32 too
    value = problem(x)
    (grad,) = torch.autograd.grad(value, x)
    assert value.item() == 0.0 and torch.equal(grad, torch.zeros(3))
    # float32 keeps precision next to the minimum (no 20 + e - 20 - e cancellation)
    tiny = torch.full((3,), 1e-6)
    torch.testing.assert_close(problem(tiny).double(), problem(tiny.double()), rtol=1e-5, atol=0)


def test_himmelblau_has_four_distinct_minima():
    minima = make_problem("himmelblau").minima
    assert minima.shape == (4, 2)
    assert torch.cdist(minima, minima).add(torch.eye(4) * 10).min() > 1.0


def test_problems_are_frozen_and_comparable():
    problem = make_problem("quadratic", dim=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        problem.dim = 4
    assert problem == make_problem("quadratic", dim=3)
    assert hash(problem) == hash(make_problem("quadratic", dim=3))
    assert problem != make_problem("quadratic", dim=3, seed=1)


def test_make_problem_normalizes_names():
    assert isinstance(make_problem("Monkey-Saddle"), type(make_problem("monkey_saddle")))
    assert make_problem(" ROSENBROCK ", dim=3).dim == 3


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("nope", {}, r"unknown problem 'nope'; valid names: ackley, beale, himmelblau, "),
        ("rosenbrock", {"dim": 1}, r"rosenbrock: dim must be >= 2, got 1"),
        ("rastrigin", {"dim": 0}, r"rastrigin: dim must be >= 1, got 0"),
        ("ackley", {"dim": 2.5}, r"ackley: dim must be an integer"),
        ("beale", {"dim": 3}, r"beale: dim must be 2 \(a 2-D function\), got 3"),
        ("himmelblau", {"dim": 1}, r"himmelblau: dim must be 2"),
        ("saddle", {"dim": 3}, r"saddle: dim must be 2"),
        ("quadratic", {"condition_number": 0.5}, r"condition_number must be >= 1, got 0.5"),
        ("quadratic", {"condition_number": math.inf}, r"condition_number must be finite"),
        ("quadratic", {"dim": 1, "condition_number": 10.0}, r"condition_number must be 1 when"),
        ("quadratic", {"dim": 3, "rotate": 0.5}, r"rotate as an angle needs dim=2"),
        ("quadratic", {"seed": "a"}, r"seed must be an integer"),
        ("rosenbrock", {"tol": 0.0}, r"rosenbrock: tol must be > 0, got 0.0"),
        ("saddle", {"escape_below": 0.5}, r"escape_below must be < 0"),
        (
            "beale",
            {"condition_number": 3.0},
            r"beale: unknown argument\(s\) condition_number; "
            r"accepted: dim, tol",
        ),
    ],
)
def test_bad_names_and_values_raise_helpful_errors(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_problem(name, **kwargs)
