"""Tests for ravine.init.

The references are independent of the code under test: variances are written out by hand
per scheme, fans are counted by running the layer on all-ones weights, the GELU gain is
checked by quadrature, and torch.nn.init (same generator) is the reference where it has the
scheme. Statistical checks use tolerances of Z standard errors computed from the sample size.
"""

from __future__ import annotations

import doctest
import math
import re

import pytest
import torch
from torch import nn

import ravine.init as init

# Tolerance in standard errors. A two-sided normal tail beyond 5 SE has probability 5.7e-7,
# and every draw is seeded, so a failure means a wrong variance, not bad luck.
Z = 5.0

# Kurtosis E[w^4] / E[w^2]^2 of the two families. The estimator mean(w²) of Var(w) (mean known
# to be 0) has standard error Var · sqrt((kurtosis - 1) / n).
KURTOSIS = {"normal": 3.0, "uniform": 9.0 / 5.0}

GELU_GAIN2 = 1.0 / (1.0 / 3.0 + 1.0 / (2.0 * math.pi * math.sqrt(3.0)))


def _assert_close(actual, expected, *, rtol, atol):
    # torch.testing.assert_close costs ~1 s of imports on first use; this is all we need.
    diff = (actual.double() - expected.double()).abs()
    allowed = atol + rtol * expected.double().abs()
    assert actual.shape == expected.shape and bool((diff <= allowed).all()), (
        f"max abs difference {diff.max().item():.3g}"
    )


def _family(scheme: str) -> str:
    return "uniform" if scheme.endswith("uniform") else "normal"


# --------------------------------------------------------------------------------------------
# Variance of every scheme: one row per (scheme, options, theoretical variance(fan_in, fan_out))
# --------------------------------------------------------------------------------------------

VARIANCE_CASES = [
    ("xavier_uniform", {}, lambda fi, fo: 2.0 / (fi + fo)),
    ("xavier_normal", {}, lambda fi, fo: 2.0 / (fi + fo)),
    ("xavier_normal", {"nonlinearity": "tanh"}, lambda fi, fo: (5 / 3) ** 2 * 2.0 / (fi + fo)),
    ("xavier_uniform", {"gain": 0.5}, lambda fi, fo: 0.25 * 2.0 / (fi + fo)),
    ("he_normal", {}, lambda fi, fo: 2.0 / fi),
    ("he_normal", {"mode": "fan_out"}, lambda fi, fo: 2.0 / fo),
    ("he_uniform", {}, lambda fi, fo: 2.0 / fi),
    ("he_uniform", {"mode": "fan_out"}, lambda fi, fo: 2.0 / fo),
    (
        "he_normal",
        {"nonlinearity": "leaky_relu", "negative_slope": 0.2},
        lambda fi, fo: 2.0 / (1 + 0.2**2) / fi,
    ),
    (
        "he_uniform",
        {"nonlinearity": "leaky_relu", "negative_slope": 0.2, "mode": "fan_out"},
        lambda fi, fo: 2.0 / (1 + 0.2**2) / fo,
    ),
    ("he_normal", {"nonlinearity": "tanh"}, lambda fi, fo: (5 / 3) ** 2 / fi),
    ("he_normal", {"nonlinearity": "sigmoid"}, lambda fi, fo: 1.0 / fi),
    ("he_normal", {"nonlinearity": "linear"}, lambda fi, fo: 1.0 / fi),
    ("he_normal", {"nonlinearity": "selu"}, lambda fi, fo: (3 / 4) ** 2 / fi),
    ("he_uniform", {"nonlinearity": "gelu"}, lambda fi, fo: GELU_GAIN2 / fi),
    ("he_normal", {"gain": 3.0, "mode": "fan_out"}, lambda fi, fo: 9.0 / fo),
    ("lecun_normal", {}, lambda fi, fo: 1.0 / fi),
    ("lecun_uniform", {}, lambda fi, fo: 1.0 / fi),
    ("lecun_normal", {"nonlinearity": "tanh"}, lambda fi, fo: (5 / 3) ** 2 / fi),
]

# Weights of large layers, with fans written out by hand: (shape, fan_in, fan_out).
LAYERS = {
    "linear": ((500, 2000), 2000, 500),  # nn.Linear(2000, 500)
    "conv1d": ((256, 128, 7), 128 * 7, 256 * 7),  # nn.Conv1d(128, 256, 7)
    "conv2d": ((128, 64, 5, 5), 64 * 25, 128 * 25),  # nn.Conv2d(64, 128, 5)
}


def _case_id(case) -> str:
    scheme, kwargs, _ = case
    return scheme + "".join(f"-{k}={v}" for k, v in kwargs.items())


@pytest.mark.parametrize("layer", list(LAYERS))
@pytest.mark.parametrize("case", VARIANCE_CASES, ids=[_case_id(c) for c in VARIANCE_CASES])
def test_empirical_variance_matches_theory(case, layer):
    scheme, kwargs, variance = case
    shape, fan_in, fan_out = LAYERS[layer]
    weight = torch.empty(shape)
    init.SCHEMES[scheme](weight, generator=0, **kwargs)

    w = weight.double().flatten()
    n = w.numel()
    w2 = w * w
    mean, second, fourth = w.mean().item(), w2.mean().item(), (w2 * w2).mean().item()
    var = variance(fan_in, fan_out)
    family = _family(scheme)
    second_moment_se = var * math.sqrt((KURTOSIS[family] - 1.0) / n)
    assert abs(second - var) <= Z * second_moment_se
    assert abs(mean) <= Z * math.sqrt(var / n)
    # Sample kurtosis separates the families (3 vs 1.8) by dozens of standard errors.
    kurtosis = fourth / second**2
    assert kurtosis == pytest.approx(KURTOSIS[family], abs=0.2)
    if family == "uniform":
        bound = math.sqrt(3.0 * var)
        top = w.abs().max().item()
        assert top <= bound * (1 + 1e-6)
        # P(all n draws below bound·(1 - 1e-3)) = (1 - 1e-3)^n < e^-200: the bound is reached.
        assert top >= bound * (1 - 1e-3)


# --------------------------------------------------------------------------------------------
# Same draws as torch.nn.init where torch has the scheme
# --------------------------------------------------------------------------------------------

TORCH_REFERENCE = [
    ("xavier_uniform", {"gain": 1.5}, lambda t, g: nn.init.xavier_uniform_(t, 1.5, g)),
    ("xavier_normal", {}, lambda t, g: nn.init.xavier_normal_(t, generator=g)),
    (
        "he_normal",
        {"mode": "fan_out"},
        lambda t, g: nn.init.kaiming_normal_(t, mode="fan_out", nonlinearity="relu", generator=g),
    ),
    (
        "he_uniform",
        {"nonlinearity": "leaky_relu", "negative_slope": 0.1},
        lambda t, g: nn.init.kaiming_uniform_(t, a=0.1, nonlinearity="leaky_relu", generator=g),
    ),
    (
        "lecun_normal",
        {},
        lambda t, g: nn.init.kaiming_normal_(t, nonlinearity="linear", generator=g),
    ),
    (
        "lecun_uniform",
        {},
        lambda t, g: nn.init.kaiming_uniform_(t, nonlinearity="linear", generator=g),
    ),
]


@pytest.mark.parametrize("shape", [(30, 40), (16, 8, 3, 3)])
@pytest.mark.parametrize(
    "scheme, kwargs, reference", TORCH_REFERENCE, ids=[c[0] for c in TORCH_REFERENCE]
)
def test_matches_torch_nn_init_given_same_generator(scheme, kwargs, reference, shape):
    ours = init.SCHEMES[scheme](
        torch.empty(shape), generator=torch.Generator().manual_seed(7), **kwargs
    )
    theirs = reference(torch.empty(shape), torch.Generator().manual_seed(7))
    # Identical draws; the scale may differ in the last bit (sqrt(3·var) vs sqrt(3)·std).
    _assert_close(ours, theirs, rtol=1e-6, atol=0.0)


def test_orthogonal_matches_torch_given_same_generator():
    ours = init.orthogonal_(torch.empty(40, 60), gain=2.0, generator=3)
    theirs = nn.init.orthogonal_(torch.empty(40, 60), 2.0, torch.Generator().manual_seed(3))
    # ravine's QR runs in float64, torch's in float32: equal up to float32 rounding.
    _assert_close(ours, theirs, rtol=0.0, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Orthogonal
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(200, 500), (500, 200), (300, 300), (64, 32, 3, 3)], ids=str)
@pytest.mark.parametrize(
    "kwargs, gain", [({}, 1.0), ({"gain": 2.0}, 2.0), ({"nonlinearity": "relu"}, math.sqrt(2))]
)
def test_orthogonal_rows_are_orthonormal_times_gain(shape, kwargs, gain):
    w = init.orthogonal_(torch.empty(shape), generator=1, **kwargs)
    m = w.reshape(shape[0], -1).double()
    rows, cols = m.shape
    gram = m @ m.T if rows <= cols else m.T @ m
    # float32 storage: entries carry ~6e-8 relative error, summed over <= 500 terms.
    _assert_close(
        gram, gain**2 * torch.eye(min(rows, cols), dtype=torch.float64), rtol=0, atol=1e-5
    )


def test_orthogonal_is_not_always_the_same_matrix():
    a = init.orthogonal_(torch.empty(5, 5), generator=1)
    b = init.orthogonal_(torch.empty(5, 5), generator=2)
    assert not torch.allclose(a, b)


# --------------------------------------------------------------------------------------------
# Gains and fans
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, slope",
    [("linear", None), ("sigmoid", None), ("tanh", None), ("relu", None), ("selu", None)]
    + [("leaky_relu", s) for s in (0.01, 0.2, 1.0)],
)
def test_gain_matches_torch(name, slope):
    ours = init.calculate_gain(name) if slope is None else init.calculate_gain(name, slope)
    theirs = nn.init.calculate_gain(name, slope)
    assert ours == pytest.approx(theirs, rel=1e-12)


@pytest.mark.parametrize(
    "name, fn",
    [
        ("relu", torch.relu),
        ("leaky_relu", lambda z: nn.functional.leaky_relu(z, 0.01)),
        ("gelu", nn.functional.gelu),
    ],
)
def test_rectifier_gains_preserve_second_moment(name, fn):
    # He et al.'s condition: gain² · E[f(z)²] = 1 for z ~ N(0, 1), here by quadrature.
    z = torch.linspace(-12.0, 12.0, 400_001, dtype=torch.float64)
    density = torch.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    second_moment = torch.trapezoid(fn(z) ** 2 * density, z).item()
    assert init.calculate_gain(name) ** 2 * second_moment == pytest.approx(1.0, abs=1e-9)


FAN_MODULES = [
    (nn.Linear(20, 10), (20,)),
    (nn.Conv1d(4, 8, 3), (4, 11)),
    (nn.Conv2d(3, 16, (3, 5)), (3, 11, 11)),
    (nn.Conv2d(8, 16, 3, groups=4), (8, 11, 11)),
    (nn.Conv2d(6, 6, 3, groups=6), (6, 11, 11)),  # depthwise
    (nn.Conv3d(2, 4, 2), (2, 6, 6, 6)),
    (nn.ConvTranspose2d(8, 4, 3), (8, 11, 11)),
    (nn.ConvTranspose1d(6, 4, 5, groups=2), (6, 15)),
]


@pytest.mark.parametrize("module", [m for m, _ in FAN_MODULES], ids=lambda m: repr(m))
def test_compute_fans_counts_connections(module):
    # Ground truth by running the layer: with all-ones weights, no bias and all-ones input, an
    # interior output equals the number of inputs feeding it (fan_in), and the gradient of the
    # summed output at an interior input counts the outputs it feeds (fan_out).
    in_shape = dict(FAN_MODULES)[module]
    with torch.no_grad():
        module.weight.fill_(1.0)
        if module.bias is not None:
            module.bias.zero_()
    x = torch.ones(1, *in_shape, dtype=torch.float32, requires_grad=True)
    y = module(x)
    y.sum().backward()
    transposed = isinstance(module, nn.modules.conv._ConvTransposeNd)
    fans = init.compute_fans(
        module.weight, transposed=transposed, groups=getattr(module, "groups", 1)
    )
    assert fans == (int(y.max().item()), int(x.grad.max().item()))


def test_compute_fans_hand_values():
    assert init.compute_fans(torch.empty(1000, 2000)) == (2000, 1000)
    assert init.compute_fans(torch.empty(128, 64, 5, 5)) == (1600, 3200)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        init.compute_fans(torch.empty(10))
    with pytest.raises(ValueError, match="groups=3"):
        init.compute_fans(torch.empty(16, 2, 3), groups=3)


def test_apply_uses_grouped_fans():
    # Depthwise conv: fan_in = fan_out = 9, so xavier's variance is 2/18 (torch would use 2/(9+C·9)).
    conv = nn.Conv2d(512, 512, 3, groups=512, bias=False)
    init.apply(conv, "xavier_normal", generator=0)
    w = conv.weight.detach().double()
    var = 2.0 / 18.0
    assert abs(w.pow(2).mean().item() - var) <= Z * var * math.sqrt(2.0 / w.numel())


# --------------------------------------------------------------------------------------------
# apply() over a model
# --------------------------------------------------------------------------------------------


def _sentinel(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(7.0)
    return model


def test_apply_mlp_touches_linear_layers_and_resets_norms():
    mlp = _sentinel(
        nn.Sequential(
            nn.Linear(10, 20),
            nn.ReLU(),
            nn.Linear(20, 20, bias=False),
            nn.LayerNorm(20),
            nn.Linear(20, 5),
        )
    )
    report = init.apply(mlp, "he_normal", bias="zeros", generator=0)
    assert report.weights == ["0.weight", "2.weight", "4.weight"]
    assert report.biases == ["0.bias", "4.bias"]
    assert report.norms == ["3"]
    assert report.skipped == {}
    for i in (0, 2, 4):
        assert not (mlp[i].weight == 7.0).any()
    assert (mlp[0].bias == 0).all() and (mlp[4].bias == 0).all()
    assert (mlp[3].weight == 1).all() and (mlp[3].bias == 0).all()
    assert "3 weights" in str(report)


class _CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, groups=8)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.head = nn.Linear(4, 2)
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        x = self.up(self.dw(torch.relu(self.bn(self.conv(x)))))
        return self.head(x.mean(dim=(2, 3))) * self.scale


def test_apply_cnn_touches_convs_and_reports_the_rest():
    cnn = _sentinel(_CNN())
    cnn.bn.running_mean.fill_(5.0)
    cnn.bn.num_batches_tracked.fill_(3)
    report = init.apply(cnn, "he_uniform", bias="small_positive", mode="fan_out", generator=0)
    assert report.weights == ["conv.weight", "dw.weight", "up.weight", "head.weight"]
    assert report.biases == ["conv.bias", "dw.bias", "up.bias", "head.bias"]
    assert report.norms == ["bn"]
    assert set(report.skipped) == {"emb.weight", "scale"}
    assert "embedding" in report.skipped["emb.weight"]
    assert (cnn.emb.weight == 7.0).all() and (cnn.scale == 7.0).all()
    assert (cnn.bn.weight == 1).all() and (cnn.bn.bias == 0).all()
    assert (cnn.bn.running_mean == 0).all() and cnn.bn.num_batches_tracked.item() == 0
    assert torch.allclose(cnn.head.bias, torch.full((2,), 0.01))
    # dw: fan_out = 8/8 · 9 = 9, so the he_uniform bound is sqrt(2)·sqrt(3/9).
    assert cnn.dw.weight.abs().max() <= math.sqrt(2 * 3 / 9) * (1 + 1e-6)
    assert torch.isfinite(cnn(torch.randn(2, 3, 8, 8))).all()


def test_apply_initializes_a_tied_weight_once():
    a, b = nn.Linear(6, 6), nn.Linear(6, 6)
    b.weight = a.weight
    report = init.apply(nn.Sequential(a, b), "xavier_uniform", generator=0)
    assert report.weights == ["0.weight"]
    assert report.biases == ["0.bias", "1.bias"]


@pytest.mark.parametrize(
    "bias, bias_value, expected",
    [
        ("zeros", None, 0.0),
        ("constant", 0.3, 0.3),
        ("constant", -1.0, -1.0),
        ("small_positive", None, 0.01),
        ("small_positive", 0.05, 0.05),
    ],
)
def test_bias_strategies(bias, bias_value, expected):
    mlp = _sentinel(nn.Sequential(nn.Linear(3, 4), nn.Conv1d(4, 2, 1)))
    report = init.apply(mlp, "lecun_normal", bias=bias, bias_value=bias_value, generator=0)
    assert report.biases == ["0.bias", "1.bias"]
    for layer in mlp:
        assert torch.equal(layer.bias, torch.full_like(layer.bias, expected))


def test_default_bias_and_default_scheme_leave_tensors_alone():
    mlp = _sentinel(nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)))
    report = init.apply(mlp, "he_normal", bias="default", generator=0)
    assert all((layer.bias == 7.0).all() for layer in mlp)
    assert report.skipped == {"0.bias": "bias='default'", "1.bias": "bias='default'"}

    mlp = _sentinel(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)))
    report = init.apply(mlp, "default", bias="constant", bias_value=0.5, reset_norms=False)
    assert (mlp[0].weight == 7.0).all() and (mlp[0].bias == 0.5).all()
    assert (mlp[1].weight == 7.0).all()
    assert report.weights == [] and report.norms == []
    assert report.skipped["0.weight"] == "scheme='default'"
    assert report.skipped["1.weight"] == "reset_norms=False"


def test_apply_skips_uninitialized_lazy_modules():
    model = nn.Sequential(nn.LazyLinear(4), nn.Linear(4, 2))
    report = init.apply(model, "he_normal", generator=0)
    assert report.weights == ["1.weight"]
    assert set(report.skipped) == {"0.weight", "0.bias"}


def test_apply_keeps_dtype_and_handles_empty_tensors():
    model = nn.Sequential(nn.Linear(8, 8).double(), nn.Linear(8, 8).half())
    init.apply(model, "orthogonal", generator=0)
    assert model[0].weight.dtype == torch.float64 and model[1].weight.dtype == torch.float16
    assert torch.allclose(model[0].weight @ model[0].weight.T, torch.eye(8, dtype=torch.float64))
    for scheme in init.SCHEMES:
        empty = torch.empty(0, 5)
        assert init.SCHEMES[scheme](empty, generator=0) is empty


# --------------------------------------------------------------------------------------------
# Reproducibility
# --------------------------------------------------------------------------------------------


def _mlp_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 5)
    )


@pytest.mark.parametrize("scheme", [s for s in init.SCHEMES if s != "default"])
def test_apply_is_reproducible_given_a_seed(scheme):
    torch.manual_seed(1)
    a = _mlp_cnn()
    torch.manual_seed(2)  # different construction-time weights: apply must overwrite them all
    b = _mlp_cnn()
    rng_before = torch.get_rng_state()
    init.apply(a, scheme, generator=123)
    init.apply(b, scheme, generator=torch.Generator().manual_seed(123))
    assert torch.equal(torch.get_rng_state(), rng_before)  # global RNG not consumed
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    init.apply(b, scheme, generator=124)
    assert not torch.equal(a[0].weight, b[0].weight)


def test_global_rng_without_generator_follows_manual_seed():
    a, b = _mlp_cnn(), _mlp_cnn()
    torch.manual_seed(5)
    init.apply(a, "he_normal")
    torch.manual_seed(5)
    init.apply(b, "he_normal")
    assert torch.equal(a[3].weight, b[3].weight)


# --------------------------------------------------------------------------------------------
# Behaviour: forward signal through a deep network
# --------------------------------------------------------------------------------------------

WIDTH, DEPTH = 256, 20


def _preactivation_second_moments(act, scheme=None, naive=False, **kwargs):
    """E[h²] of each layer's pre-activation h in a DEPTH-layer MLP fed x ~ N(0, I)."""
    g = torch.Generator().manual_seed(0)
    layers = nn.Sequential(*(nn.Linear(WIDTH, WIDTH) for _ in range(DEPTH))).double()
    if naive:
        with torch.no_grad():
            for layer in layers:
                layer.weight.normal_(0.0, 1.0, generator=g)
                layer.bias.zero_()
    else:
        init.apply(layers, scheme, bias="zeros", generator=g, **kwargs)
    x = torch.randn(128, WIDTH, generator=g, dtype=torch.float64)  # (batch, features)
    moments, saturated = [], []
    with torch.no_grad():
        for layer in layers:
            h = layer(x)
            x = act(h)
            moments.append(h.pow(2).mean().item())
            saturated.append((x.abs() > 0.99).double().mean().item())
    return moments, saturated


def test_relu_net_keeps_signal_with_he_and_explodes_with_naive_init():
    he, _ = _preactivation_second_moments(torch.relu, "he_normal")
    # He et al.: fan_in·Var(W)·E[relu(h)²] = 2·E[h²]/2, so E[h²] is preserved in expectation.
    # At finite width log E[h²] random-walks: each layer averages WIDTH units, half active,
    # with χ²₁ spread, so its log varies by ≈ 2·2/WIDTH per layer; after 20 layers the sd is
    # sqrt(80/256) ≈ 0.56 (0.54 measured over 40 seeds). A factor 8 is ≈ 3.7 sd.
    assert all(1 / 8 <= m / he[0] <= 8 for m in he)
    # N(0, 1) multiplies E[h²] by WIDTH/2 = 128 per layer: 128^19 ≈ 1e40 after 20 layers.
    naive, _ = _preactivation_second_moments(torch.relu, naive=True)
    assert naive[-1] / naive[0] > 1e30
    # Xavier's gain 1 ignores that ReLU halves the second moment: 2^-19 ≈ 2e-6.
    xavier, _ = _preactivation_second_moments(torch.relu, "xavier_normal")
    assert xavier[-1] / xavier[0] < 1e-4


def test_tanh_net_stays_unsaturated_with_matching_gain_and_saturates_with_naive_init():
    matched, sat = _preactivation_second_moments(torch.tanh, "xavier_normal", nonlinearity="tanh")
    # With gain 5/3 E[h²] is drawn to a fixed point q* ≈ 2 (tanh contracts, so finite-width
    # noise does not accumulate as it does for ReLU); 20 seeds gave 1.1 to 2.9.
    assert all(0.5 <= m <= 4.0 for m in matched)
    assert max(sat) < 0.25
    # N(0, 1): E[h²] ≈ WIDTH · E[tanh²] ≈ 250, and most units sit on the flat tails.
    naive, naive_sat = _preactivation_second_moments(torch.tanh, naive=True)
    assert min(naive[1:]) > 100
    assert min(naive_sat[1:]) > 0.75
    # Gain 1 lets the signal decay towards 0: tanh'(h) < 1 shrinks it a little every layer.
    decaying, _ = _preactivation_second_moments(torch.tanh, "xavier_normal")
    assert decaying[-1] < 0.1 * decaying[0]


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def test_unknown_names_list_the_valid_ones():
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="unknown scheme 'glorot'") as err:
        init.apply(model, "glorot")
    assert all(name in str(err.value) for name in init.SCHEMES)
    with pytest.raises(ValueError, match="unknown bias 'ones'") as err:
        init.apply(model, "he_normal", bias="ones")
    assert all(name in str(err.value) for name in init.BIAS_STRATEGIES)
    with pytest.raises(ValueError, match="unknown nonlinearity 'swish'") as err:
        init.apply(model, "he_normal", nonlinearity="swish")
    assert all(name in str(err.value) for name in init.NONLINEARITIES)
    with pytest.raises(ValueError, match=r"unknown mode 'fan_avg'; valid: fan_in, fan_out"):
        init.he_normal_(torch.empty(3, 3), mode="fan_avg")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"gain": -1.0}, "gain must be > 0; got gain=-1.0"),
        ({"gain": 0.0}, "gain must be > 0; got gain=0.0"),
        ({"gain": float("nan")}, "gain must be a finite number; got gain=nan"),
        ({"gain": 2.0, "nonlinearity": "relu"}, "gain or nonlinearity, not both"),
        (
            {"nonlinearity": "leaky_relu", "negative_slope": float("inf")},
            "negative_slope must be a finite number",
        ),
        ({"mode": "fan_out", "scheme": "xavier_normal"}, "mode only applies to"),
        ({"bias": "constant"}, "needs bias_value"),
        ({"bias": "small_positive", "bias_value": -0.1}, "bias_value > 0; got bias_value=-0.1"),
        ({"bias": "zeros", "bias_value": 1.0}, "bias_value is only used with"),
    ],
)
def test_bad_values_raise_naming_the_argument_and_leave_model_unchanged(kwargs, message):
    model = _sentinel(nn.Linear(3, 3))
    scheme = kwargs.pop("scheme", "he_normal")
    with pytest.raises(ValueError, match=re.escape(message)):
        init.apply(model, scheme, **kwargs)
    assert (model.weight == 7.0).all() and (model.bias == 7.0).all()


def test_bad_tensors_and_types():
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        init.orthogonal_(torch.empty(5))
    with pytest.raises(ValueError, match="floating-point"):
        init.he_normal_(torch.empty(3, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="fans must be"):
        init.xavier_normal_(torch.empty(3, 3), fans=(0, 3))
    with pytest.raises(TypeError, match="generator"):
        init.xavier_normal_(torch.empty(3, 3), generator="seed")
    with pytest.raises(TypeError, match=r"nn\.Module"):
        init.apply(torch.empty(3, 3), "he_normal")


# --------------------------------------------------------------------------------------------
# load_pretrained
# --------------------------------------------------------------------------------------------


def _net(head: int = 3, extra: bool = False) -> nn.Sequential:
    layers = [nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, head)]
    if extra:
        layers.append(nn.Linear(head, 2))
    return nn.Sequential(*layers)


def _trained() -> nn.Sequential:
    torch.manual_seed(0)
    net = _net()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_()
    net.train()
    net(torch.randn(16, 4))  # moves BatchNorm running stats off their defaults
    return net


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _bit_identical(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and torch.equal(
        a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)
    )


@pytest.mark.parametrize("wrapper", [None, "model", "state_dict"])
def test_load_from_file_copies_everything(tmp_path, wrapper):
    trained = _trained()
    sd = trained.state_dict()
    path = tmp_path / "ckpt.pt"
    payload = sd if wrapper is None else {wrapper: sd, "epoch": 3, "optimizer": {"lr": 0.1}}
    torch.save(payload, path)

    model = _net()
    record = init.load_pretrained(model, path, strict=True)
    assert record.complete
    assert record.loaded == list(sd)  # parameters and buffers, running stats included
    assert record.missing == record.unexpected == [] and record.shape_mismatched == {}
    for name, value in model.state_dict().items():
        assert _bit_identical(value, sd[name]), name


def test_load_partial_reports_exactly_what_was_not_loaded(tmp_path):
    trained = _trained()
    source = dict(trained.state_dict())
    source["extra.weight"] = torch.zeros(2)
    path = tmp_path / "sd.pt"
    torch.save(source, path)

    model = _net(head=5, extra=True)
    before = _snapshot(model)
    record = init.load_pretrained(model, str(path))
    assert record.loaded == [
        "0.weight",
        "0.bias",
        "1.weight",
        "1.bias",
        "1.running_mean",
        "1.running_var",
        "1.num_batches_tracked",
    ]
    assert record.missing == ["4.weight", "4.bias"]
    assert record.unexpected == ["extra.weight"]
    assert record.shape_mismatched == {"3.weight": ((5, 8), (3, 8)), "3.bias": ((5,), (3,))}
    assert not record.complete
    after = model.state_dict()
    for name in record.loaded:
        assert torch.equal(after[name], source[name]), name
    for name in [*record.missing, *record.shape_mismatched]:
        assert _bit_identical(after[name], before[name]), name
    assert "shape mismatch: 3.weight: model (5, 8), source (3, 8)" in str(record)


def test_strict_mismatch_raises_and_leaves_model_bit_identical(tmp_path):
    path = tmp_path / "sd.pt"
    torch.save(_trained().state_dict(), path)
    model = _net(head=5, extra=True)
    before = _snapshot(model)
    with pytest.raises(ValueError, match="nothing was loaded") as err:
        init.load_pretrained(model, path, strict=True)
    for problem in ("4.weight", "4.bias", "3.weight", "(5, 8)", "(3, 8)"):
        assert problem in str(err.value)
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(_bit_identical(after[k], before[k]) for k in before)


def test_strict_unexpected_key_alone_raises():
    source = dict(_trained().state_dict())
    source["stray"] = torch.ones(1)
    model = _net()
    before = _snapshot(model)
    with pytest.raises(ValueError, match="not in model: stray"):
        init.load_pretrained(model, source, strict=True)
    assert all(_bit_identical(model.state_dict()[k], v) for k, v in before.items())


def test_load_from_module_copies_without_aliasing():
    trained = _trained()
    model = _net()
    record = init.load_pretrained(model, trained)
    assert record.complete
    assert torch.equal(model[0].weight, trained[0].weight)
    with torch.no_grad():
        trained[0].weight.add_(1.0)
    assert not torch.equal(model[0].weight, trained[0].weight)
    assert model[0].weight.data_ptr() != trained[0].weight.data_ptr()


def test_load_casts_dtype_and_renames_prefixes():
    trained = _trained().double()
    ddp_style = {f"module.{k}": v for k, v in trained.state_dict().items()}
    model = _net()
    record = init.load_pretrained(model, ddp_style, strict=True, strip_prefix="module.")
    assert record.complete and model[0].weight.dtype == torch.float32
    assert torch.allclose(model[0].weight.double(), trained[0].weight)

    # A backbone checkpoint into a bigger model: names gain the submodule's prefix.
    bigger = nn.Module()
    bigger.backbone = _net()
    bigger.head = nn.Linear(3, 1)
    record = init.load_pretrained(bigger, trained, add_prefix="backbone.")
    assert record.missing == ["head.weight", "head.bias"] and record.unexpected == []
    assert torch.allclose(bigger.backbone[3].bias.double(), trained[3].bias)


def test_load_rejects_bad_sources(tmp_path):
    pickled = tmp_path / "module.pt"
    torch.save(nn.Linear(2, 2), pickled)  # a pickled module, not a state dict
    with pytest.raises(ValueError, match="weights_only=True"):
        init.load_pretrained(nn.Linear(2, 2), pickled)
    with pytest.raises(ValueError, match=r"not a state dict.*'epoch'"):
        init.load_pretrained(nn.Linear(2, 2), {"weight": torch.ones(2, 2), "epoch": 3})
    with pytest.raises(TypeError, match="source must be"):
        init.load_pretrained(nn.Linear(2, 2), [torch.ones(2, 2)])
    with pytest.raises(FileNotFoundError):
        init.load_pretrained(nn.Linear(2, 2), tmp_path / "missing.pt")


# --------------------------------------------------------------------------------------------
# Public surface
# --------------------------------------------------------------------------------------------


def test_documented_examples_run():
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = finder.find(init, "ravine.init")
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted > 20 and result.failed == 0


def test_exports_and_registries():
    assert set(init.__all__) <= set(dir(init))
    assert list(init.SCHEMES) == [
        "xavier_uniform",
        "xavier_normal",
        "he_normal",
        "he_uniform",
        "lecun_normal",
        "lecun_uniform",
        "orthogonal",
        "default",
    ]
    assert list(init.BIAS_STRATEGIES) == ["zeros", "constant", "small_positive", "default"]
    for fn in init.SCHEMES.values():
        assert callable(fn)
        assert fn.__doc__ and fn.__doc__.strip().splitlines()[0].endswith(".")
