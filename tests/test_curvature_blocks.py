"""Graph reuse, batched probes, per-block curvature and the Hessian diagonal, against the dense
float64 Hessian of a small net (written out by hand, independent of the operator's code)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ravine.probe.curvature import (
    HessianOperator,
    block_curvature,
    block_operator,
    hessian_diagonal,
    hessian_trace,
    lanczos,
    spectral_density,
    top_eigenvalues,
)


def _net():
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    x = torch.randn(30, 4, generator=gen)
    y = torch.randint(0, 3, (30,), generator=gen)
    return model, x, y


def _dense(model, x, y) -> torch.Tensor:
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    flat = torch.cat([p.detach().double().reshape(-1) for p in model.parameters()])

    def loss(theta):
        w1, b1, w2, b2 = (t.view(s) for t, s in zip(theta.split(sizes), shapes, strict=True))
        return F.cross_entropy(torch.tanh(x.double() @ w1.T + b1) @ w2.T + b2, y)

    return torch.autograd.functional.hessian(loss, flat)


@pytest.fixture(scope="module")
def net():
    model, x, y = _net()
    op = HessianOperator.from_module(model, F.cross_entropy, (x, y), dtype=torch.float64)
    return model, x, y, op, _dense(model, x, y)


# Coordinates of each parameter in the flat vector: 4x6 + 6 + 6x3 + 3 = 51.
SLICES = {"0.weight": slice(0, 24), "0.bias": slice(24, 30), "2.weight": slice(30, 48),
          "2.bias": slice(48, 51)}  # fmt: skip


@pytest.mark.parametrize("reuse", [True, False])
@pytest.mark.parametrize("chunk", [1, 4])
def test_reused_graph_and_vectorized_blocks_match_dense(net, reuse, chunk):
    model, x, y, _, h = net
    op = HessianOperator.from_module(
        model, F.cross_entropy, (x, y), dtype=torch.float64, reuse_graph=reuse, chunk_size=chunk
    )
    assert op.reuse_graph is reuse
    v = torch.randn(op.dim, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for _ in range(2):  # the second round runs on the kept graph when reuse is on
        assert torch.allclose(op(v), h @ v, rtol=0, atol=1e-12)
        assert torch.allclose(op(v[:, 0]), h @ v[:, 0], rtol=0, atol=1e-12)
    assert op.num_hvps == 20
    assert len(op._pullbacks) == (1 if reuse else 0)


def test_graph_reuse_defaults_and_new_point(net):
    model, x, y, op, _ = net
    assert op.reuse_graph  # one batch
    split = HessianOperator.from_module(model, F.cross_entropy, (x, y), batch_size=7)
    assert not split.reuse_graph  # mini-batches were asked for to bound memory
    moved = HessianOperator.from_module(model, F.cross_entropy, (x, y), dtype=torch.float64)
    e = torch.zeros(op.dim, dtype=torch.float64)
    e[0] = 1
    moved(e)
    moved.point = torch.zeros_like(moved.point)  # a new point must not use the old graph
    at_zero = _dense_at_zero(model, x, y)
    assert torch.allclose(moved(e), at_zero[:, 0], atol=1e-12)
    with pytest.raises(ValueError, match="reuse_graph"):
        HessianOperator(lambda t, b: t.sum(), torch.zeros(2), [(None, 1.0)], reuse_graph=1)


def _dense_at_zero(model, x, y):
    zero = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    for p in zero.parameters():
        nn.init.zeros_(p)
    return _dense(zero, x, y)


def test_trace_from_probe_blocks_is_the_mean_of_its_samples(net):
    *_, op, h = net
    est = hessian_trace(op, num_probes=70, generator=3)  # 70 = 32 + 32 + 6: three blocks
    gen = torch.Generator().manual_seed(3)
    z = torch.randint(0, 2, (op.dim, 70), generator=gen).double() * 2 - 1
    assert torch.allclose(est.samples, ((h @ z) * z).sum(0), atol=1e-10)
    assert est.num_hvps == 70


def test_lockstep_slq_equals_one_lanczos_per_probe(net):
    *_, op, _ = net
    dens = spectral_density(op, num_probes=5, num_steps=12, generator=0)
    gen = torch.Generator().manual_seed(0)
    starts = torch.randn(5, op.dim, generator=gen, dtype=torch.float64)
    for j in range(5):
        res = lanczos(op, 12, start=starts[j], restart=False)
        theta, s = torch.linalg.eigh(res.t)
        assert torch.allclose(dens.nodes[j], theta, atol=1e-9)
        assert torch.allclose(dens.weights[j], s[0].square(), atol=1e-9)
    assert dens.num_hvps == 60


def test_lockstep_slq_stops_an_exhausted_probe():
    # diag(1, 2, 2, 3): a probe's Krylov space has at most 3 directions, so 4 steps exhaust it.
    d = torch.tensor([1.0, 2.0, 2.0, 3.0], dtype=torch.float64)
    op = HessianOperator.from_function(lambda x: 0.5 * (d * x * x).sum(), torch.zeros(4).double())
    dens = spectral_density(op, num_probes=3, num_steps=4, generator=0)
    assert dens.num_hvps == 9  # 3 probes x 3 steps: the 4th product is never asked for
    assert (dens.weights[:, 3] == 0).all()
    assert torch.allclose(dens.weights.sum(1), torch.ones(3, dtype=torch.float64))
    assert dens.moment(1) == pytest.approx(float(d.mean()), rel=0.5)
    for j in range(3):  # the exact quadrature has nodes 1, 2, 3
        nodes = dens.nodes[j, :3]
        assert torch.allclose(nodes, torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))


def test_hessian_diagonal(net):
    *_, op, h = net
    exact = hessian_diagonal(op, exact=True)
    assert torch.allclose(exact.diagonal, torch.diagonal(h), atol=1e-12)
    est = hessian_diagonal(op, num_probes=400, generator=0)
    assert est.num_hvps == 400
    # Per coordinate: Var = sum_{j != i} H_ij^2, so the standard error is known exactly.
    sigma = ((h.square().sum(1) - torch.diagonal(h).square()) / 400).sqrt()
    assert torch.allclose(est.stderr, sigma, rtol=0.3, atol=1e-6)
    z = (est.diagonal - torch.diagonal(h)) / sigma.clamp(min=1e-12)
    assert z.abs().max() < 4.5 and z.square().mean() < 2.0
    assert set(op.unflatten(est.diagonal)) == set(SLICES)


def test_hessian_diagonal_exact_on_a_diagonal_hessian():
    d = torch.arange(1.0, 6.0, dtype=torch.float64)
    op = HessianOperator.from_function(lambda x: 0.5 * (d * x * x).sum(), torch.ones(5).double())
    est = hessian_diagonal(op, num_probes=2)
    assert torch.allclose(est.diagonal, d) and (est.stderr == 0).all()
    with pytest.raises(ValueError, match="num_probes must be a positive integer, got 0"):
        hessian_diagonal(op, num_probes=0)


def test_block_operator_is_the_principal_submatrix(net):
    *_, op, h = net
    assert op.blocks == SLICES
    for names in ("0.bias", ["0.weight", "2.bias"]):
        sub = block_operator(op, names)
        idx = torch.cat([torch.arange(SLICES[n].start, SLICES[n].stop)
                         for n in ([names] if isinstance(names, str) else names)])  # fmt: skip
        assert torch.allclose(sub.dense(), h[idx][:, idx], atol=1e-12)
    with pytest.raises(ValueError, match=r"unknown \['1.weight'\], valid: 0.weight, 0.bias"):
        block_operator(op, ["1.weight"])


@pytest.mark.parametrize("by", ["parameter", "layer"])
def test_block_curvature_against_dense_blocks(net, by):
    *_, op, h = net
    res = block_curvature(op, by=by, k=2, exact_below=20, num_probes=300, bottom=True)
    groups = (
        {n: [n] for n in SLICES} if by == "parameter" else
        {"0": ["0.weight", "0.bias"], "2": ["2.weight", "2.bias"]}
    )  # fmt: skip
    assert list(res) == list(groups)
    lam_min, lam_max = (float(v) for v in torch.linalg.eigvalsh(h)[[0, -1]])
    for key, names in groups.items():
        idx = torch.cat([torch.arange(SLICES[n].start, SLICES[n].stop) for n in names])
        block = h[idx][:, idx]
        evals = torch.linalg.eigvalsh(block).flip(0)
        got = res[key]
        assert got.names == tuple(names) and got.size == len(idx)
        scale = float(evals.abs().max())
        assert torch.allclose(got.top.eigenvalues, evals[: len(got.top.eigenvalues)],
                              atol=1e-6 * scale, rtol=0)  # fmt: skip
        assert float(got.top.eigenvalues[0]) <= lam_max + 1e-9  # Cauchy interlacing
        lowest = evals.flip(0)[: len(got.bottom.eigenvalues)]  # smallest first
        assert torch.allclose(got.bottom.eigenvalues, lowest, atol=1e-6 * scale, rtol=0)
        assert float(got.bottom.eigenvalues[0]) >= lam_min - 1e-9
        exact = float(block.trace())
        if got.size <= 20:
            assert got.trace.trace == pytest.approx(exact, rel=1e-10) and got.trace.stderr == 0
        else:
            assert abs(got.trace.trace - exact) < 4 * got.trace.stderr
    total = sum(b.trace.trace for b in res.values())
    assert math.isfinite(total)


def test_block_curvature_leaves_bottom_out_unless_asked(net):
    *_, op, _ = net
    assert all(b.bottom is None for b in block_curvature(op, by="layer").values())


def test_block_curvature_bad_arguments(net):
    *_, op, _ = net
    with pytest.raises(ValueError, match="by must be 'parameter' or 'layer', got 'row'"):
        block_curvature(op, by="row")
    with pytest.raises(ValueError, match="exact_below must be a non-negative integer, got -1"):
        block_curvature(op, exact_below=-1)


def test_top_eigenvalues_on_the_reused_graph_of_a_relu_mlp():
    # The benchmark's kind of model: ReLU MLP, all data one batch; Lanczos on the kept graph.
    gen = torch.Generator().manual_seed(2)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(40, 5, generator=gen), torch.randint(0, 3, (40,), generator=gen)
    op = HessianOperator.from_module(model, F.cross_entropy, (x, y), dtype=torch.float64)
    h = op.dense()
    fresh = HessianOperator.from_module(
        model, F.cross_entropy, (x, y), dtype=torch.float64, reuse_graph=False
    )
    assert torch.allclose(h, fresh.dense(), atol=1e-13)
    evals = torch.linalg.eigvalsh(h).flip(0)
    res = top_eigenvalues(op, 3)
    assert torch.allclose(res.eigenvalues, evals[:3], atol=1e-6 * float(evals.abs().max()))


def test_hutch_plus_plus_exact_on_low_rank_and_unbiased(net):
    # Rank 2: the sketch (3 probes) spans H's range, so the rest is 0 and the trace exact.
    gen = torch.Generator().manual_seed(4)
    a, b = torch.randn(10, generator=gen).double(), torch.randn(10, generator=gen).double()
    low = torch.outer(a, a) - 0.5 * torch.outer(b, b)
    op = HessianOperator.from_function(lambda x: 0.5 * x @ low @ x, torch.zeros(10).double())
    est = hessian_trace(op, num_probes=9, method="hutch++")
    assert est.trace == pytest.approx(float(low.trace()), rel=1e-10) and est.num_hvps == 9
    assert est.stderr == pytest.approx(0.0, abs=1e-10)
    *_, op, h = net
    plain = hessian_trace(op, num_probes=30, generator=1)
    plus = hessian_trace(op, num_probes=30, generator=1, method="hutch++")  # sketch of 10
    assert plus.num_hvps == 30
    assert abs(plus.trace - float(h.trace())) < 4 * plus.stderr
    assert plus.stderr < plain.stderr  # a few outliers carry most of ||H||_F here
    with pytest.raises(ValueError, match="hutch\\+\\+ needs num_probes >= 3, got 2"):
        hessian_trace(op, num_probes=2, method="hutch++")
    with pytest.raises(ValueError, match="method must be 'hutchinson' or 'hutch\\+\\+'"):
        hessian_trace(op, method="xtrace")
