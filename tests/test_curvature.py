"""ravine.probe.curvature against the dense Hessian (torch.autograd.functional.hessian, float64)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ravine.probe.curvature import (
    HessianOperator,
    bottom_eigenvalues,
    condition_number,
    hessian_operator,
    hessian_trace,
    hvp,
    lanczos,
    saddle_report,
    spectral_density,
    top_eigenvalues,
)
from ravine.problems import load_dataset, make_problem

RTOL = 1e-6


def _net_and_data(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    x = torch.randn(30, 4, generator=gen)
    y = torch.randint(0, 3, (30,), generator=gen)
    return model, x, y


def _reference_hessian(model, x, y) -> torch.Tensor:
    """Dense Hessian of the same net written out by hand on a flat float64 vector: independent
    of functional_call, batching and the HVP code."""
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    flat = torch.cat([p.detach().double().reshape(-1) for p in model.parameters()])

    def loss(theta):
        w1, b1, w2, b2 = (t.view(s) for t, s in zip(theta.split(sizes), shapes, strict=True))
        out = torch.tanh(x.double() @ w1.T + b1) @ w2.T + b2
        return F.cross_entropy(out, y)

    return torch.autograd.functional.hessian(loss, flat)


@pytest.fixture(scope="module")
def net():
    model, x, y = _net_and_data()
    op = HessianOperator.from_module(model, F.cross_entropy, (x, y), dtype=torch.float64)
    h = _reference_hessian(model, x, y)
    return model, x, y, op, h, torch.linalg.eigvalsh(h)


def _close(a, b, rtol=RTOL, scale=None):
    scale = scale if scale is not None else b.abs().max()
    assert (a - b).abs().max() <= rtol * scale, (a, b)


@pytest.mark.parametrize("method", ["double_backward", "jvp"])
@pytest.mark.parametrize("batch_size", [None, 7])
def test_hvp_matches_dense_hessian(net, method, batch_size):
    model, x, y, _, h, _ = net
    op = HessianOperator.from_module(
        model, F.cross_entropy, (x, y), dtype=torch.float64, method=method, batch_size=batch_size
    )
    v = torch.randn(op.dim, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    _close(op(v), h @ v, 1e-10)
    _close(op(v[:, 0]), h @ v[:, 0], 1e-10)
    assert op.num_hvps == 4  # a block of p vectors counts p
    _close(hvp(model, F.cross_entropy, (x, y), v[:, 0], dtype=torch.float64), h @ v[:, 0], 1e-10)


def test_dataloader_batches_and_sum_reduction(net):
    model, x, y, _, h, _ = net
    batches = list(zip(x.split(10), y.split(10), strict=True))
    op = HessianOperator.from_module(
        model, F.cross_entropy, batches, dtype=torch.float64, reduction="sum"
    )
    _close(op.dense(), 3 * h, 1e-10)  # three equal batches, each loss a mean over 10


def test_frozen_parameter_is_a_constant(net):
    model, x, y, _, h, _ = net
    model[2].bias.requires_grad_(False)
    try:
        op = HessianOperator.from_module(model, F.cross_entropy, (x, y), dtype=torch.float64)
        assert op.dim == h.shape[0] - 3
        _close(op.dense(), h[:-3, :-3], 1e-10)
        assert set(op.unflatten(op.point)) == {"0.weight", "0.bias", "2.weight"}
    finally:
        model[2].bias.requires_grad_(True)


@pytest.mark.parametrize("k", [1, 5])
def test_top_and_bottom_eigenvalues(net, k):
    *_, op, h, evals = net
    top = top_eigenvalues(op, k)
    bottom = bottom_eigenvalues(op, k)
    scale = evals.abs().max()
    _close(top.eigenvalues, evals.flip(0)[:k], scale=scale)
    _close(bottom.eigenvalues, evals[:k], scale=scale)
    for res in (top, bottom):
        assert res.converged
        assert res.num_hvps < op.dim  # Lanczos stopped before building the whole space
        vecs = res.eigenvectors
        _close(vecs.T @ vecs, torch.eye(k, dtype=vecs.dtype), 1e-8, scale=1.0)
        _close(h @ vecs, vecs * res.eigenvalues, 1e-5, scale=scale)


def test_lanczos_full_space_is_exact(net):
    *_, op, _, evals = net
    res = lanczos(op, op.dim, generator=3)
    assert res.exhausted and res.basis.shape[1] == op.dim
    _close(torch.linalg.eigvalsh(res.t), evals, scale=evals.abs().max())


@pytest.mark.parametrize("block_size", [1, 3])
def test_lanczos_remainder_gives_the_ritz_residuals(net, block_size):
    """``H Q - Q T`` lives in the last block's columns: the residual of every Ritz pair, read
    off the remainder, equals ``||H y - theta y||`` computed with the dense Hessian."""
    *_, op, h, _ = net
    res = lanczos(op, 4, block_size=block_size, generator=5)
    q = res.basis
    _close(q.T @ q, torch.eye(q.shape[1], dtype=q.dtype), 1e-10, scale=1.0)
    _close(res.t, q.T @ h @ q, 1e-10, scale=h.abs().max())
    theta, s = torch.linalg.eigh(res.t)
    p = res.remainder.shape[1]
    cheap = (res.remainder @ s[-p:]).norm(dim=0)
    y = q @ s
    exact = (h @ y - y * theta).norm(dim=0)
    _close(cheap, exact, 1e-9, scale=h.abs().max())
    assert exact.max() > 1e-3 * h.abs().max()  # not converged yet: the check has teeth


def test_trace_exact_and_hutchinson(net):
    *_, op, h, _ = net
    exact = hessian_trace(op, exact=True)
    assert math.isclose(exact.trace, float(h.trace()), rel_tol=RTOL)
    assert exact.num_hvps == op.dim and exact.stderr == 0.0
    est = hessian_trace(op, num_probes=300, generator=0)
    assert est.num_hvps == 300 and est.stderr > 0
    assert abs(est.trace - float(h.trace())) < 4 * est.stderr


def test_hutchinson_exact_on_diagonal_hessian():
    f = lambda x: (torch.arange(1.0, 6.0, dtype=x.dtype) * x.square()).sum()  # noqa: E731
    op = HessianOperator.from_function(f, torch.zeros(5, dtype=torch.float64))
    est = hessian_trace(op, num_probes=3)
    assert est.trace == pytest.approx(30.0) and est.stderr == pytest.approx(0.0, abs=1e-12)


def test_spectral_density(net):
    *_, op, _, evals = net
    dens = spectral_density(op, num_probes=40, num_steps=8, generator=0)
    assert torch.trapezoid(dens.density, dens.grid).item() == pytest.approx(1.0, abs=1e-3)
    assert torch.allclose(dens.weights.sum(1), torch.ones(40, dtype=dens.weights.dtype))
    # Each probe's moments are unbiased estimates of tr(H^j)/dim (exact quadrature for
    # j < 2m): the probe average matches the dense spectrum within a few standard errors.
    for j in (1, 2, 3):
        per_probe = (dens.weights * dens.nodes**j).sum(1)
        stderr = per_probe.std() / math.sqrt(len(per_probe))
        assert abs(per_probe.mean() - (evals**j).mean()) < 4 * stderr
        assert dens.moment(j) == pytest.approx(float(per_probe.mean()))


def test_slq_is_gauss_quadrature(net):
    """One probe, m steps: sum_i w_i theta_i^j = v^T H^j v / |v|^2 exactly for j < 2m."""
    *_, op, h, _ = net
    m = 4
    v = torch.randn(op.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    res = lanczos(op, m, start=v, restart=False)
    theta, s = torch.linalg.eigh(res.t)
    w = s[0].square()
    u = v / v.norm()
    for j in range(2 * m):
        exact = u @ torch.linalg.matrix_power(h, j) @ u
        assert float((w * theta**j).sum()) == pytest.approx(float(exact), rel=1e-6, abs=1e-12)


def test_condition_number_indefinite(net):
    *_, op, _, evals = net
    cond = condition_number(op, num_steps=op.dim)
    assert cond.exact and math.isinf(cond.condition)
    assert cond.lambda_max == pytest.approx(float(evals[-1]), rel=RTOL)
    assert cond.lambda_min == pytest.approx(float(evals[0]), rel=RTOL)
    positive = evals[evals > cond.threshold]
    assert cond.smallest_positive == pytest.approx(float(positive.min()), rel=1e-5)
    assert cond.condition_positive == pytest.approx(float(evals[-1] / positive.min()), rel=1e-5)
    assert cond.negative_mass == pytest.approx(float((evals < -cond.threshold).double().mean()))
    assert cond.negative_ratio == pytest.approx(float(-evals[0] / evals[-1]), rel=RTOL)


def test_condition_number_positive_definite():
    a = torch.randn(12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    spd = a @ a.T + 0.1 * torch.eye(12, dtype=torch.float64)
    op = HessianOperator.from_function(lambda x: 0.5 * x @ spd @ x, torch.zeros(12).double())
    evals = torch.linalg.eigvalsh(spd)
    cond = condition_number(op)
    assert cond.condition == pytest.approx(float(evals[-1] / evals[0]), rel=RTOL)
    assert cond.negative_mass == 0.0 and cond.negative_ratio == 0.0


def test_saddle_of_x2_minus_y2():
    report = saddle_report(make_problem("saddle"), x=torch.zeros(2, dtype=torch.float64), k=2)
    assert report.kind == "saddle" and report.grad_norm == 0.0
    _close(report.top, torch.tensor([2.0, -2.0], dtype=torch.float64), scale=2.0)
    _close(report.bottom, torch.tensor([-2.0, 2.0], dtype=torch.float64), scale=2.0)
    _close(report.escape_direction.abs(), torch.tensor([0.0, 1.0], dtype=torch.float64), 1e-8, 1)
    assert report.predicted_decrease == pytest.approx(1.0)


def test_analytic_minimum_flat_and_not_critical():
    rosen = make_problem("rosenbrock")
    assert saddle_report(rosen, x=rosen.minima[0].double()).kind == "minimum"
    assert saddle_report(rosen, x=torch.zeros(2).double()).kind == "not_critical"
    monkey = make_problem("monkey_saddle")  # gradient and Hessian vanish at 0
    report = saddle_report(monkey, x=torch.zeros(2).double())
    assert report.kind == "flat" and report.escape_direction is None


def _deep_linear(hidden: int):
    data = load_dataset("deep_linear", n_train=64, input_dim=4, output_dim=3, seed=0)
    model = nn.Sequential(nn.Linear(4, hidden, bias=False), nn.Linear(hidden, 3, bias=False))
    for p in model.parameters():
        nn.init.zeros_(p)

    def loss_fn(out, y):  # 1/2 mean_n ||y - f(x)||^2, the loss of Saxe et al.
        return 0.5 * (out - y).square().sum(1).mean()

    return model, loss_fn, data, data.extras["singular_values"].double()


def test_deep_linear_saddle_at_zero():
    model, loss_fn, data, s = _deep_linear(hidden=1)
    report = saddle_report(model, loss_fn, data, k=3, dtype=torch.float64)
    assert report.kind == "saddle" and report.grad_norm < 1e-12
    # Hessian [[0, B], [B^T, 0]] with B = -teacher: eigenvalues +-s_i (and 4 + 3 - 6 = 1 zero).
    _close(report.top, s, scale=s.max())
    _close(report.bottom, -s, scale=s.max())
    op = hessian_operator(model, loss_fn, data, dtype=torch.float64)
    dense = torch.linalg.eigvalsh(op.dense())
    _close(dense[:3], -s, scale=s.max())
    assert set(report.escape) == {"0.weight", "1.weight"}


def test_deep_linear_repeated_eigenvalues_need_a_block():
    model, loss_fn, data, s = _deep_linear(hidden=2)  # each +-s_i once per hidden unit
    op = hessian_operator(model, loss_fn, data, dtype=torch.float64)
    res = top_eigenvalues(op, 4, block_size=2)
    _close(res.eigenvalues, s[:2].repeat_interleave(2), scale=s.max())
    # The documented caveat: one vector's Krylov space holds one copy of each eigenvalue, and
    # the distinct ones converge before the space is exhausted (which would restart it).
    res = top_eigenvalues(op, 3)
    _close(res.eigenvalues, s, scale=s.max())


def test_invalid_arguments(net):
    model, x, y, op, *_ = net
    with pytest.raises(ValueError, match="k must be"):
        top_eigenvalues(op, op.dim + 1)
    with pytest.raises(ValueError, match="tol"):
        bottom_eigenvalues(op, 1, tol=0.0)
    with pytest.raises(ValueError, match="data must be"):
        HessianOperator.from_module(model, F.cross_entropy, 3)
    with pytest.raises(ValueError, match="reduction"):
        HessianOperator.from_module(model, F.cross_entropy, (x, y), reduction="max")
    with pytest.raises(ValueError, match="v must have shape"):
        op(torch.zeros(op.dim + 1))
    with pytest.raises(ValueError, match="needs the point"):
        hessian_operator(lambda t: t.sum())
    with pytest.raises(ValueError, match="num_probes"):
        hessian_trace(op, num_probes=0)
