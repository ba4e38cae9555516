"""Training signals against independent references: per-sample gradients against a loop of
single-example backward passes, the noise statistics against the dense per-example gradient
matrix and against a problem whose noise is known, alpha against the closed form of gradient
descent on a quadratic, the Hessian trace per block against the dense Hessian."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from ravine.probe.signals import (
    INNER_PRODUCT_THETA,
    NORM_TEST_THETA,
    ORTHOGONALITY_NU,
    TrainingSignals,
    diagnose_signals,
    gradient_noise,
    per_sample_gradients,
    step_alpha,
)
from ravine.problems import load_dataset
from ravine.train import TrainConfig, train


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 7), nn.Tanh(), nn.Linear(7, 3)).double()


def _batch(n: int = 40, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=gen, dtype=torch.float64), torch.randint(
        0, 3, (n,), generator=gen
    )


def _loop_gradients(model: nn.Module, loss_fn, x, y) -> torch.Tensor:
    """(n, dim): one ordinary backward pass per example."""
    rows = []
    for xi, yi in zip(x, y, strict=True):
        model.zero_grad()
        loss_fn(model(xi[None]), yi[None]).backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    return torch.stack(rows)


# --------------------------------------------------------------------------------------------
# Per-sample gradients
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [None, 7])
def test_per_sample_gradients_match_a_loop_of_single_examples(chunk_size):
    model, (x, y) = _mlp(), _batch()
    grads = per_sample_gradients(model, F.cross_entropy, (x, y), chunk_size=chunk_size)
    flat = torch.cat([g.flatten(1) for g in grads.values()], dim=1)
    torch.testing.assert_close(flat, _loop_gradients(model, F.cross_entropy, x, y))


class _Branchy(nn.Module):
    """Data-dependent control flow, which vmap cannot batch."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(6, 3).double()

    def forward(self, x):
        out = self.linear(x)
        return out if float(x.sum()) > 0 else -out


def test_a_model_vmap_cannot_run_falls_back_to_a_loop_with_the_same_values():
    torch.manual_seed(0)
    model, (x, y) = _Branchy(), _batch()
    with pytest.warns(RuntimeWarning, match="one example at a time"):
        grads = per_sample_gradients(model, F.cross_entropy, (x, y))
    flat = torch.cat([g.flatten(1) for g in grads.values()], dim=1)
    torch.testing.assert_close(flat, _loop_gradients(model, F.cross_entropy, x, y))


# --------------------------------------------------------------------------------------------
# Noise statistics
# --------------------------------------------------------------------------------------------


def test_noise_statistics_match_the_dense_per_example_gradients():
    model, (x, y) = _mlp(), _batch(n=50)
    b = 8
    noise = gradient_noise(model, F.cross_entropy, (x, y), batch_size=b, chunk_size=9)
    g = _loop_gradients(model, F.cross_entropy, x, y)  # (n, dim), float64
    n = len(g)
    mean = g.mean(0)
    cov = torch.cov(g.T)  # (dim, dim), ddof 1
    trace = float(torch.trace(cov))
    g2 = float(mean @ mean)
    signal = g2 - trace / n
    dots = g @ mean
    perp = g - dots[:, None] * mean[None] / g2
    assert noise.probe_size == n and noise.batch_size == b
    assert noise.grad_norm == pytest.approx(math.sqrt(g2), rel=1e-10)
    assert noise.noise_trace == pytest.approx(trace, rel=1e-10)
    if signal > 0:
        assert noise.noise_scale == pytest.approx(trace / signal, rel=1e-9)
    assert noise.snr == pytest.approx(max(b * signal / trace, 0.0), rel=1e-9, abs=1e-12)
    assert noise.norm_test == pytest.approx(math.sqrt(trace / (b * g2)), rel=1e-10)
    var_dots = float(dots.var())
    assert noise.inner_product_test == pytest.approx(math.sqrt(var_dots / (b * g2**2)), rel=1e-9)
    orth = float(perp.square().sum(1).sum()) / (n - 1)
    assert noise.orthogonality_test == pytest.approx(math.sqrt(orth / (b * g2)), rel=1e-9)
    assert noise.suggested_batch_norm == pytest.approx(trace / (NORM_TEST_THETA**2 * g2))
    assert noise.suggested_batch_inner_product == pytest.approx(
        var_dots / (INNER_PRODUCT_THETA**2 * g2**2), rel=1e-9
    )
    assert noise.suggested_batch_orthogonality == pytest.approx(
        orth / (ORTHOGONALITY_NU**2 * g2), rel=1e-9
    )
    var = g.var(0)
    ok = var > 0
    assert noise.gsnr == pytest.approx(float((mean[ok] ** 2 / var[ok]).mean()), rel=1e-9)
    with torch.no_grad():
        losses = torch.stack(
            [F.cross_entropy(model(xi[None]), yi[None]) for xi, yi in zip(x, y, strict=True)]
        )
    assert noise.loss == pytest.approx(float(losses.mean()), rel=1e-12)
    assert noise.loss_std == pytest.approx(float(losses.std()), rel=1e-9)


class _Centre(nn.Module):
    """Loss 1/2 ||w - z_i||^2 per example: g_i = w - z_i, so with z_i ~ N(mu, s^2 I) the
    per-example covariance is s^2 I and the true gradient w - mu."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())

    def forward(self, x):
        return self.w.expand(len(x), -1)


def _half_squares(out, z):
    return 0.5 * (out - z).square().sum(1).mean()


def test_noise_scale_on_a_problem_with_known_noise():
    d, n, s = 10, 4000, 0.5
    gen = torch.Generator().manual_seed(3)
    mu = torch.zeros(d, dtype=torch.float64)
    w = torch.full((d,), 0.1, dtype=torch.float64)  # true gradient w - mu, |G|^2 = 0.1
    z = mu + s * torch.randn(n, d, generator=gen, dtype=torch.float64)
    noise = gradient_noise(_Centre(w), _half_squares, (torch.zeros(n, 1), z), batch_size=32)
    true_trace, true_signal = s**2 * d, float((w - mu).square().sum())
    # tr S of n Gaussian samples: relative standard error sqrt(2 / (n d)) = 0.7 %
    assert noise.noise_trace == pytest.approx(true_trace, rel=5 * math.sqrt(2 / (n * d)))
    assert noise.noise_scale == pytest.approx(true_trace / true_signal, rel=0.1)
    assert noise.snr == pytest.approx(32 * true_signal / true_trace, rel=0.1)
    # mean per-parameter GSNR: each coordinate has signal 0.01 and variance 0.25
    assert noise.gsnr == pytest.approx(0.01 / 0.25, abs=0.02)


def test_without_signal_the_noise_scale_is_unbounded_and_the_snr_zero():
    d, n = 4, 200
    gen = torch.Generator().manual_seed(4)
    z = torch.randn(n, d, generator=gen, dtype=torch.float64)
    w = z.mean(0)  # gbar = 0 exactly: no signal
    noise = gradient_noise(_Centre(w), _half_squares, (torch.zeros(n, 1), z), batch_size=16)
    assert noise.noise_scale is None and noise.snr == 0.0
    assert noise.norm_test is None or noise.norm_test > 1e6


def test_gradient_noise_names_a_bad_argument():
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        gradient_noise(_mlp(), F.cross_entropy, _batch(), batch_size=0)
    with pytest.raises(ValueError, match="at least 2 examples"):
        gradient_noise(_mlp(), F.cross_entropy, _batch(n=1), batch_size=4)


# --------------------------------------------------------------------------------------------
# alpha
# --------------------------------------------------------------------------------------------


class _Quadratic(nn.Module):
    """f(theta) = 1/2 theta^T A theta for every example (no noise), A = diag(a)."""

    def __init__(self, theta: torch.Tensor) -> None:
        super().__init__()
        self.theta = nn.Parameter(theta.clone())

    def forward(self, x):
        return self.theta.expand(len(x), -1)


@pytest.mark.parametrize("lr", [0.05, 0.2, 0.3, 0.45])
def test_alpha_of_gradient_descent_on_a_quadratic_is_the_closed_form(lr):
    a = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    theta = torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)

    def loss_fn(out, _y):
        return 0.5 * (out * a * out).sum(1).mean()

    model = _Quadratic(theta)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    signals = TrainingSignals(loss_fn, (torch.zeros(4, 1), torch.zeros(4)), every=1, batch_size=4)
    signals.attach(model, opt)
    expected = []
    for step in range(1, 4):
        # closed form: along u = -A theta / |A theta| the minimum is s* = (g.g)/(g^T A g)|g|
        g = a * model.theta.detach()
        t = lr * float(g.norm())
        s_star = float(g @ g) / float(g @ (a * g)) * float(g.norm())
        expected.append((t - s_star) / abs(s_star))
        opt.zero_grad()
        loss_fn(model(torch.zeros(4, 1)), None).backward()
        opt.step()
        signals(model, step)
    got = [r["alpha"] for r in signals.records]
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)
    # one-dimensional reading of the same numbers: lr * a - 1 when the step is along one axis
    if lr == 0.45:
        assert max(got) > 0.5  # the stiff axis (lr a = 1.8) overshoots


def test_alpha_in_one_dimension_is_lr_times_curvature_minus_one():
    for lr_a in (0.25, 1.0, 1.5, 2.0, 3.0):
        x = 1.0
        slope0 = -abs(x)  # f = x^2 / 2 (a = 1): f'(x) . u with u = -sign(x)
        x_new = x - lr_a * x
        slope1 = x_new * (-1.0)
        assert step_alpha(abs(x - x_new), slope0, slope1) == pytest.approx(lr_a - 1)
    assert step_alpha(0.0, -1.0, -1.0) == -1.0  # did not move
    assert step_alpha(1.0, -1.0, -2.0) == -1.0  # concave and still falling: as Cockpit
    # uphill from the start: the minimum is 0.5 behind it, s* = -0.5: 1 / -0.5 - 1, as Cockpit
    assert step_alpha(1.0, 1.0, 3.0) == pytest.approx(-3.0)
    assert step_alpha(1.0, 1.0, 0.5) == -1.0  # concave: -1 whatever the slope, as Cockpit
    assert step_alpha(math.inf, -1.0, 1.0) is None and step_alpha(1.0, math.nan, 1.0) is None


def test_alpha_matches_cockpits_formula_on_random_steps():
    # Cockpit fits f(s) = w1 + w2 s + w3 s^2 to f(0), f(t), f'(0), f'(t) (exact on a quadratic)
    # and returns 2 t / alpha_bar - 1 with alpha_bar = -w2 / w3, the far side of the parabola
    gen = torch.Generator().manual_seed(5)
    for _ in range(50):
        t, a = (torch.rand(2, generator=gen, dtype=torch.float64) * 2 + 0.1).tolist()
        b = float(torch.randn(1, generator=gen, dtype=torch.float64))
        slope0, slope1 = b, b + 2 * a * t  # f(s) = a s^2 + b s + c
        assert step_alpha(t, slope0, slope1) == pytest.approx(2 * t / (-b / a) - 1, rel=1e-9)


# --------------------------------------------------------------------------------------------
# The callback: trace, distance, update size, modes, the training loop
# --------------------------------------------------------------------------------------------


def test_trace_per_block_matches_the_dense_hessian():
    model, (x, y) = _mlp(), _batch(n=30)
    signals = TrainingSignals(F.cross_entropy, (x, y), every=1, batch_size=8, trace_probes=400)
    signals.attach(model)
    signals(model, 1)
    record = signals.records[0]
    params = dict(model.named_parameters())
    names = list(params)
    flat = torch.cat([p.detach().reshape(-1) for p in params.values()])
    sizes = [p.numel() for p in params.values()]

    def loss_of(theta):
        parts = torch.split(theta, sizes)
        values = {n: t.view(params[n].shape) for n, t in zip(names, parts, strict=True)}
        return F.cross_entropy(torch.func.functional_call(model, values, (x,)), y)

    h = torch.autograd.functional.hessian(loss_of, flat)
    diag = torch.diagonal(h)
    bounds = torch.tensor([0, *sizes]).cumsum(0).tolist()
    dense = {}
    for i, name in enumerate(names):
        block = name.rsplit(".", 1)[0]
        dense[block] = dense.get(block, 0.0) + float(diag[bounds[i] : bounds[i + 1]].sum())
    # Rademacher variance per probe is 2 (||H||_F^2 - sum H_ii^2): 5 standard errors
    off = float(h.square().sum() - diag.square().sum())
    tol = 5 * math.sqrt(2 * off / 400)
    assert record["trace"] == pytest.approx(float(diag.sum()), abs=tol)
    for name, value in dense.items():
        assert record["blocks"][name]["trace"] == pytest.approx(value, abs=tol)


def test_distance_and_update_size_follow_the_weights():
    model, (x, y) = _mlp(), _batch()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    signals = TrainingSignals(F.cross_entropy, (x, y), every=3, batch_size=8, trace_probes=0)
    signals.attach(model, opt)
    start = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()
    before = None
    for step in range(1, 10):
        now = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()
        opt.zero_grad()
        F.cross_entropy(model(x[:8]), y[:8]).backward()
        opt.step()
        signals(model, step)
        if step % 3 == 0:
            after = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
            record = signals.records[-1]
            assert record["distance"] == pytest.approx(float((after - start).norm()))
            assert record["update_size"] == pytest.approx(float((after - now).norm()))
            assert record["trace"] is None
            first = model[0].weight.numel() + model[0].bias.numel()
            assert record["blocks"]["0"]["update_size"] == pytest.approx(
                float((after - now)[:first].norm())
            )
            before = record
    assert [r["step"] for r in signals.records] == [3, 6, 9] and before is not None


def test_records_use_eval_mode_and_leave_batch_norm_statistics_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5),
                          nn.Linear(8, 3)).double()  # fmt: skip
    x, y = _batch()
    model(x)  # running statistics away from their initial values
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    signals = TrainingSignals(F.cross_entropy, (x, y), every=1, batch_size=8)
    signals.attach(model)
    signals(model, 1)
    signals(model, 2)
    assert model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, stats[key]), key
    assert signals.records[0]["alpha"] == -1.0  # the weights did not move
    assert signals.records[0]["update_size"] == 0.0
    first, second = signals.records
    assert first["loss"] == second["loss"]  # deterministic: no dropout, no batch statistics


def test_records_inside_the_training_loop_survive_a_resume(tmp_path):
    data = load_dataset("digits")
    batch = (data.x_train[:64], data.y_train[:64])
    config = TrainConfig(epochs=2, batch_size=256, standardize=False)

    def make():
        return TrainingSignals(F.cross_entropy, batch, every=2, batch_size=256, trace_probes=4)

    whole = make()
    result = train(config, tmp_path / "whole", callbacks=[whole])
    assert [r["step"] for r in whole.records] == list(range(2, result.steps + 1, 2))
    assert all(r["alpha"] is not None and r["update_size"] > 0 for r in whole.records)
    killed = make()
    train(config, tmp_path / "part", callbacks=[killed], stop_after_epoch=1)
    resumed = make()  # a new process: the checkpoint on disk
    train(config, tmp_path / "part", callbacks=[resumed])
    assert len(whole.records) > len(killed.records) > 0
    assert [r["step"] for r in resumed.records] == [r["step"] for r in whole.records]
    for a, b in zip(resumed.records, whole.records, strict=True):
        assert a == b  # a resume is bit for bit the uninterrupted run


def test_arguments_are_checked():
    batch = (torch.zeros(4, 1), torch.zeros(4))
    with pytest.raises(ValueError, match="every must be a positive integer, got 0"):
        TrainingSignals(F.mse_loss, batch, every=0, batch_size=4)
    with pytest.raises(ValueError, match="trace_probes must be an integer >= 0, got -1"):
        TrainingSignals(F.mse_loss, batch, batch_size=4, trace_probes=-1)
    with pytest.raises(ValueError, match="pair of tensors"):
        TrainingSignals(F.mse_loss, torch.zeros(4), batch_size=4)


# --------------------------------------------------------------------------------------------
# Diagnosis
# --------------------------------------------------------------------------------------------


def _records(**columns) -> list[dict]:
    n = len(next(iter(columns.values())))
    return [{"step": 10 * (i + 1), **{k: v[i] for k, v in columns.items()}} for i in range(n)]


def test_diagnosis_flags_what_holds_in_most_records_and_nothing_else():
    stalled = [1.0, 0.9, 0.85, 0.84, 0.84, 0.83]  # fell by 1 % over the second half
    noisy = diagnose_signals(
        _records(snr=[0.02, 0.05, 0.5, 0.01, 0.02, 0.03], alpha=[0.1] * 6, loss=stalled), 32
    )
    assert [f.kind for f in noisy] == ["noisy_gradients"]
    assert noisy[0].step == 10 and "batch too small" in noisy[0].advice
    assert "stalled" in noisy[0].message
    # the same noise while the loss still falls (a healthy run nearing its minimum): no alarm
    falling = [1.0, 0.5, 0.2, 0.1, 0.05, 0.02]
    assert diagnose_signals(_records(snr=[0.01] * 6, alpha=[0.1] * 6, loss=falling), 32) == []
    down = [True] * 3
    over = diagnose_signals(_records(snr=[1.0] * 3, alpha=[1.5, 2.0, 0.2], descent=down), 32)
    assert [f.kind for f in over] == ["overshooting"]
    assert "lower the learning rate" in over[0].advice and over[0].value == pytest.approx(1.75)
    # steps that went uphill on the probe batch say nothing about the step's length
    uphill = _records(snr=[1.0] * 3, alpha=[-1.5, -2.0, -3.0], descent=[False] * 3)
    assert diagnose_signals(uphill, 32) == []
    short = diagnose_signals(_records(snr=[2.0] * 3, alpha=[-0.99, -0.95, -0.97], descent=down), 32)
    assert [f.kind for f in short] == ["undershooting"]
    # short steps of a noisy gradient are what averages the noise: no undershooting then
    noisy_short = _records(snr=[0.5] * 3, alpha=[-0.99, -0.95, -0.97], descent=down)
    assert diagnose_signals(noisy_short, 32) == []
    large = diagnose_signals(_records(snr=[20.0, 50.0, 30.0]), 4096)
    assert [f.kind for f in large] == ["batch_larger_than_needed"]
    assert diagnose_signals(_records(snr=[1.0, 2.0, 0.5], alpha=[0.0, 0.3, -0.2]), 32) == []
    assert diagnose_signals(_records(snr=[0.01, 0.01], alpha=[3.0, 3.0]), 32) == []  # too few
    assert diagnose_signals(_records(snr=[None] * 4, alpha=[None] * 4), 32) == []
    climbing = _records(loss=[2.0, 9.0, 1.0, 30.0], loss_before=[1.0, 3.0, 2.0, 10.0])
    (finding,) = diagnose_signals(climbing, 32)
    assert finding.kind == "loss_rising" and finding.step == 10 and finding.value == 3.0
    assert "lower it" in finding.advice
    # rounding near a minimum is no rise; falls in most records are none either
    flat = _records(loss=[1.00001, 0.5, 1.0, 0.2], loss_before=[1.0, 1.0, 1.0, 1.0])
    assert diagnose_signals(flat, 32) == []


def test_module_doctests():
    import doctest

    from ravine.probe import signals

    result = doctest.testmod(signals, raise_on_error=False)
    assert result.attempted >= 4 and result.failed == 0


def test_a_gradient_monitor_beside_the_signals_sees_the_training_batch_only():
    from ravine.probe import GradientMonitor

    def run(with_signals: bool):
        model, (x, y) = _mlp(), _batch()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        signals = TrainingSignals(F.cross_entropy, (x[:20], y[:20]), every=1, batch_size=8)
        signals.attach(model, opt)
        with GradientMonitor(model, opt) as monitor:
            for step in range(1, 4):
                opt.zero_grad()
                F.cross_entropy(model(x[20:28]), y[20:28]).backward()
                opt.step()
                monitor.record(step)
                if with_signals:  # its passes (vmap included) must not reach the hooks
                    signals(model, step)
        return monitor.history

    for a, b in zip(run(True), run(False), strict=True):
        assert a.layers == b.layers


def test_a_diverged_network_gives_clean_records_and_no_alpha_finding():
    import json

    model, (x, y) = _mlp(), _batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    signals = TrainingSignals(F.cross_entropy, (x, y), every=1, batch_size=8, trace_probes=2)
    signals.attach(model, opt)
    for step in range(1, 5):
        opt.zero_grad()
        F.cross_entropy(model(x[:8]), y[:8]).backward()
        opt.step()
        if step == 2:
            with torch.no_grad():
                model[0].weight[0, 0] = math.nan  # what a loop without NaN checks lets through
        signals(model, step)
    json.dumps(signals.to_records(), allow_nan=False)  # JSON-clean: NaN became None
    for record in signals.records[1:]:
        assert record["alpha"] is None and record["loss"] is None
    assert diagnose_signals(signals.records, 8) == []


def test_probe_data_follows_the_models_precision():
    model, (x, y) = _mlp(), _batch()  # a float64 model
    signals = TrainingSignals(F.cross_entropy, (x.float(), y), every=1, batch_size=8)
    signals.attach(model)
    signals(model, 1)
    with torch.no_grad():
        expected = float(F.cross_entropy(model(x.float().double()), y))
    assert signals.records[0]["loss"] == pytest.approx(expected, rel=1e-12)


def test_a_loss_summed_over_the_examples_is_warned_about():
    model, (x, y) = _mlp(), _batch()

    def summed(out, target):
        return F.cross_entropy(out, target, reduction="sum")

    with pytest.warns(RuntimeWarning, match="must average over the examples"):
        gradient_noise(model, summed, (x, y), batch_size=8)
