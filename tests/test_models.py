"""Tests for ravine.problems.models.

References are independent of the builder: parameter counts are written out layer by layer,
the MNIST-1D models are re-typed from the reference code and must compute the same function,
init variances are the schemes' formulas, and every vmapped forward is checked against each
copy's own eager forward (outputs and BatchNorm running statistics) in float64.
"""

from __future__ import annotations

import dataclasses
import doctest
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ravine.problems as problems
import ravine.problems.models as models
from ravine.problems.models import (
    ACTIVATIONS,
    MODEL_KINDS,
    PRESETS,
    ModelConfig,
    build_model,
    count_parameters,
    make_functional,
    pre_initialize,
    stack_models,
)

Z = 5.0  # tolerance in standard errors for the (seeded) variance checks


def _close(a, b, atol=1e-10):
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.allclose(a.double(), b.double(), atol=atol, rtol=0), (a - b).abs().max().item()


def _assert_variance(w: torch.Tensor, expected: float) -> None:
    # mean(w²) estimates Var(w) for zero-mean normal draws with standard error Var·sqrt(2/n).
    n = w.numel()
    got = w.detach().double().pow(2).mean().item()
    assert abs(got - expected) <= Z * expected * math.sqrt(2.0 / n), (got, expected)


# --------------------------------------------------------------------------------------------
# Shapes and structure
# --------------------------------------------------------------------------------------------

SHAPE_CASES = [
    (ModelConfig(kind="mlp"), (64,)),
    (ModelConfig(kind="mlp", depth=0), (64,)),
    (ModelConfig(kind="mlp", batch_norm=True, dropout=0.5), (1, 8, 8)),  # flattened
    (ModelConfig(kind="linear"), (3, 5)),
    (ModelConfig(kind="deep_linear", depth=4, width=7), (40,)),
    (ModelConfig(kind="cnn", depth=0), (40,)),  # (features,) -> (1, features)
    (ModelConfig(kind="cnn", depth=1, width=8, pooling="avg", batch_norm=True), (3, 40)),
    (ModelConfig(kind="cnn", depth=0, channels=(4, 4, 4), pooling="none", stride=2), (1, 8, 8)),
    (ModelConfig(kind="cnn", channels=(4, 6), readout="global_avg", dropout=0.2), (1, 28, 28)),
    (ModelConfig(kind="cnn", channels=(4,), kernel_size=(3,), padding=0), (2, 7, 9)),
]


@pytest.mark.parametrize(("config", "input_shape"), SHAPE_CASES)
def test_output_shape(config, input_shape):
    model = build_model(config, input_shape, 5, generator=0)
    assert model.training
    out = model(torch.randn(6, *input_shape))
    assert out.shape == (6, 5)
    # and the architecture does not depend on the batch size
    assert model.eval()(torch.randn(1, *input_shape)).shape == (1, 5)


def test_int_input_shape_is_features():
    model = build_model(ModelConfig(kind="linear"), 40, 3, generator=0)
    assert model(torch.zeros(2, 40)).shape == (2, 3)


def test_mlp_structure_and_names():
    cfg = ModelConfig(kind="mlp", depth=2, width=8, activation="gelu", batch_norm=True, dropout=0.1)
    model = build_model(cfg, (5,), 3, generator=0)
    assert [n for n, _ in model.named_children()] == ["flatten", "hidden0", "hidden1", "head"]
    assert [type(m) for m in model.hidden1] == [nn.Linear, nn.BatchNorm1d, nn.GELU, nn.Dropout]
    assert model.hidden1.dropout.p == 0.1
    assert "hidden0.norm.running_var" in model.state_dict()
    plain = build_model(dataclasses.replace(cfg, batch_norm=False, dropout=0.0), (5,), 3)
    assert [type(m) for m in plain.hidden1] == [nn.Linear, nn.GELU]
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.Dropout)) for m in plain.modules())


@pytest.mark.parametrize(
    ("activation", "module"),
    [
        ("relu", nn.ReLU),
        ("tanh", nn.Tanh),
        ("sigmoid", nn.Sigmoid),
        ("gelu", nn.GELU),
        ("leaky_relu", nn.LeakyReLU),
        ("identity", nn.Identity),
    ],
)
def test_activations(activation, module):
    model = build_model(ModelConfig(activation=activation, negative_slope=0.2), (4,), 2)
    assert isinstance(model.hidden0.act, module)
    if activation == "leaky_relu":
        assert model.hidden0.act.negative_slope == 0.2


def test_deep_linear_has_no_activation_and_linear_has_no_hidden():
    deep = build_model(ModelConfig(kind="deep_linear", depth=3, width=4, dropout=0.1), (6,), 2)
    assert all(type(m) in (nn.Linear, nn.Dropout) for m in deep.hidden0)
    # a product of matrices: linear in its input
    x, y = torch.randn(3, 6), torch.randn(3, 6)
    deep.eval()
    _close(deep(x + y) - deep(y), deep(x) - deep(torch.zeros(1, 6)), atol=1e-5)
    lin = build_model(ModelConfig(kind="linear", batch_norm=True), (6,), 2)
    assert [n for n, _ in lin.named_children()] == ["flatten", "head"]


def test_cnn_dimensionality_and_blocks():
    cfg = ModelConfig(kind="cnn", depth=1, width=8, channels=(4, 5), batch_norm=True, dropout=0.1)
    one_d = build_model(cfg, (40,), 3, generator=0)
    assert isinstance(one_d.unsqueeze, nn.Unflatten)
    assert [type(m) for m in one_d.conv1] == [
        nn.Conv1d,
        nn.BatchNorm1d,
        nn.ReLU,
        nn.MaxPool1d,
        nn.Dropout,
    ]
    assert not hasattr(build_model(cfg, (2, 40), 3), "unsqueeze")
    two_d = build_model(dataclasses.replace(cfg, pooling="avg"), (1, 8, 8), 3)
    assert [type(m) for m in two_d.conv0][:2] == [nn.Conv2d, nn.BatchNorm2d]
    assert isinstance(two_d.conv0.pool, nn.AvgPool2d)
    assert two_d.conv1.conv.in_channels == 4 and two_d.conv1.conv.out_channels == 5
    # kernel 3 with default padding 1 keeps 8x8; two 2x2 pools give 2x2; flatten 5*2*2.
    assert two_d.hidden0.linear.in_features == 5 * 2 * 2
    gap = build_model(dataclasses.replace(cfg, readout="global_avg"), (1, 8, 8), 3)
    assert gap.hidden0.linear.in_features == 5


def test_no_bias():
    model = build_model(ModelConfig(kind="cnn", bias=False, batch_norm=True), (1, 8, 8), 3)
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            assert m.bias is None


# --------------------------------------------------------------------------------------------
# Presets: parameter counts by hand, and the MNIST-1D reference architectures
# --------------------------------------------------------------------------------------------

PRESET_COUNTS = {
    # (40*100 + 100) + (100*100 + 100) + (100*10 + 10)
    ("mnist1d_mlp", (40,)): 4100 + 10100 + 1010,
    # Conv1d(1,25,5): 125+25; Conv1d(25,25,3) twice: 1875+25; lengths 40->19->10->5; 125*10+10
    ("mnist1d_cnn", (40,)): 150 + 1900 + 1900 + 1260,
    ("mnist1d_linear", (40,)): 40 * 10 + 10,
    ("digits_mlp", (64,)): 64 * 128 + 128 + 128 * 10 + 10,
    # Conv2d(1,16,3): 144+16; Conv2d(16,32,3): 4608+32; 8->4->2 so 32*2*2=128 -> 10
    ("digits_cnn", (1, 8, 8)): 160 + 4640 + 128 * 10 + 10,
    ("deep_linear", (40,)): 40 * 64 + 64 * 64 + 64 * 64 + 64 * 10,
}


@pytest.mark.parametrize(("name", "shape"), list(PRESET_COUNTS))
def test_preset_parameter_counts(name, shape):
    model = build_model(PRESETS[name], shape, 10, generator=0)
    assert count_parameters(model) == PRESET_COUNTS[(name, shape)]
    assert model(torch.randn(2, *shape)).shape == (2, 10)


def test_presets_are_documented_configs():
    assert set(PRESETS) >= {"mnist1d_mlp", "mnist1d_cnn", "digits_mlp", "deep_linear"}
    assert all(isinstance(c, ModelConfig) for c in PRESETS.values())
    source = Path(models.__file__).read_text(encoding="utf-8")
    for name in PRESETS:
        assert source.count(name) >= 2, name  # defined and listed in the table


class _ReferenceConvBase(nn.Module):
    """ConvBase from github.com/greydanus/mnist1d (notebooks/models.py), re-typed."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 25, 5, stride=2, padding=1)
        self.conv2 = nn.Conv1d(25, 25, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(25, 25, 3, stride=2, padding=1)
        self.linear = nn.Linear(125, 10)

    def forward(self, x):
        x = x.view(-1, 1, x.shape[-1])
        h = self.conv3(self.conv2(self.conv1(x).relu()).relu()).relu()
        return self.linear(h.view(h.shape[0], -1))


class _ReferenceMLP(nn.Module):
    """MLPBase from the same file, without its skip connection (see the preset's comment)."""

    def __init__(self):
        super().__init__()
        self.linear1, self.linear2, self.linear3 = (
            nn.Linear(40, 100),
            nn.Linear(100, 100),
            nn.Linear(100, 10),
        )

    def forward(self, x):
        return self.linear3(self.linear2(self.linear1(x).relu()).relu())


@pytest.mark.parametrize(
    ("name", "reference"), [("mnist1d_cnn", _ReferenceConvBase), ("mnist1d_mlp", _ReferenceMLP)]
)
def test_mnist1d_presets_compute_the_reference_function(name, reference):
    ours = build_model(PRESETS[name], (40,), 10, generator=0).double()
    ref = reference().double()
    ref_params, our_params = list(ref.parameters()), list(ours.parameters())
    assert [p.shape for p in ref_params] == [p.shape for p in our_params]
    with torch.no_grad():
        for r, o in zip(ref_params, our_params, strict=True):
            r.copy_(o)
    x = torch.randn(7, 40, dtype=torch.float64)
    _close(ours(x), ref(x))


# --------------------------------------------------------------------------------------------
# Initialization goes through ravine.init with the activation's gain
# --------------------------------------------------------------------------------------------


def test_he_normal_mlp_std_and_zero_bias():
    cfg = ModelConfig(kind="mlp", depth=2, width=400, init="he_normal", bias_init="zeros")
    model = build_model(cfg, (300,), 200, generator=0)
    for layer, fan_in in (
        (model.hidden0.linear, 300),
        (model.hidden1.linear, 400),
        (model.head, 400),
    ):
        _assert_variance(layer.weight, 2.0 / fan_in)
        assert bool((layer.bias == 0).all())


@pytest.mark.parametrize(
    ("activation", "gain2"),
    [("tanh", (5 / 3) ** 2), ("identity", 1.0), ("sigmoid", 1.0), ("leaky_relu", 2 / (1 + 0.2**2))],
)
def test_xavier_gain_matches_activation(activation, gain2):
    cfg = ModelConfig(
        depth=1, width=300, activation=activation, negative_slope=0.2, init="xavier_normal"
    )
    model = build_model(cfg, (500,), 10, generator=1)
    _assert_variance(model.hidden0.linear.weight, gain2 * 2.0 / (500 + 300))


def test_cnn_fan_in_includes_receptive_field():
    cfg = ModelConfig(kind="cnn", channels=(64, 128), kernel_size=(3, 5), init="he_normal", depth=0)
    model = build_model(cfg, (16, 32), 3, generator=0)
    _assert_variance(model.conv0.conv.weight, 2.0 / (16 * 3))
    _assert_variance(model.conv1.conv.weight, 2.0 / (64 * 5))


def test_deep_linear_orthogonal_and_bias_strategies():
    model = build_model(PRESETS["deep_linear"], (64,), 64, generator=0)
    w = model.hidden1.linear.weight
    _close(w @ w.T, torch.eye(64), atol=1e-5)
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Linear))
    pos = build_model(ModelConfig(bias_init="constant", bias_value=0.3), (4,), 2, generator=0)
    assert bool((pos.hidden0.linear.bias == 0.3).all()) and bool((pos.head.bias == 0.3).all())


def test_batch_norm_starts_at_identity():
    model = build_model(ModelConfig(batch_norm=True, width=6), (4,), 2, generator=0)
    norm = model.hidden0.norm
    assert bool((norm.weight == 1).all()) and bool((norm.bias == 0).all())
    assert bool((norm.running_mean == 0).all()) and bool((norm.running_var == 1).all())


def test_default_init_is_torchs():
    model = build_model(PRESETS["mnist1d_mlp"], (40,), 10, generator=0)
    bound = 1 / math.sqrt(40)  # torch's Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    w, b = model.hidden0.linear.weight.detach(), model.hidden0.linear.bias.detach()
    assert float(w.abs().max()) <= bound and float(w.abs().max()) > 0.9 * bound
    assert float(b.abs().max()) <= bound and float(b.abs().min()) > 0


# --------------------------------------------------------------------------------------------
# Train / eval behaviour
# --------------------------------------------------------------------------------------------


def test_batch_norm_train_and_eval():
    model = build_model(ModelConfig(batch_norm=True, width=8), (4,), 3, generator=0)
    x = torch.randn(32, 4) * 3 + 2
    model(x)
    assert not bool((model.hidden0.norm.running_mean == 0).all())  # stats updated in train
    assert int(model.hidden0.norm.num_batches_tracked) == 1
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    one = model(x[:1])
    _close(one, model(x)[:1], atol=1e-6)  # eval: an example's output ignores its batch
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_dropout_train_and_eval():
    model = build_model(ModelConfig(dropout=0.5, width=64), (4,), 3, generator=0)
    x = torch.randn(8, 4)
    torch.manual_seed(0)
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


# --------------------------------------------------------------------------------------------
# Determinism and the global RNG
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config", [ModelConfig(batch_norm=True), PRESETS["mnist1d_cnn"], PRESETS["mnist1d_mlp"]]
)
def test_same_seed_same_model_and_global_rng_untouched(config):
    state = torch.get_rng_state()
    a = build_model(config, (40,), 10, generator=123)
    b = build_model(config, (40,), 10, generator=torch.Generator().manual_seed(123))
    c = build_model(config, (40,), 10, generator=124)
    assert torch.equal(torch.get_rng_state(), state)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["head.weight"], sc["head.weight"])


def test_no_generator_uses_global_rng_reproducibly():
    torch.manual_seed(5)
    a = build_model(PRESETS["digits_mlp"], (64,), 10)
    torch.manual_seed(5)
    b = build_model(PRESETS["digits_mlp"], (64,), 10)
    assert torch.equal(a.head.weight, b.head.weight)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "rnn"}, r"kind 'rnn'; valid: mlp, cnn, linear, deep_linear"),
        ({"depth": -1}, r"depth=-1"),
        ({"depth": 1.5}, r"depth=1.5"),
        ({"depth": True}, r"depth=True"),
        ({"width": 0}, r"width=0"),
        ({"activation": "swish"}, r"activation 'swish'; valid: relu, tanh"),
        ({"init": "he"}, r"init 'he'; valid: .*he_normal"),
        ({"bias_init": "ones"}, r"bias_init 'ones'; valid: zeros"),
        ({"bias_init": "constant"}, r"bias_value"),
        ({"bias_value": 0.1}, r"bias_value"),
        ({"batch_norm": 1}, r"batch_norm=1"),
        ({"bias": "yes"}, r"bias='yes'"),
        ({"dropout": 1.0}, r"dropout=1.0"),
        ({"dropout": -0.1}, r"dropout=-0.1"),
        ({"dropout": float("nan")}, r"dropout=nan"),
        ({"negative_slope": float("inf")}, r"negative_slope=inf"),
        ({"channels": ()}, r"channels=\(\)"),
        ({"channels": (4, 0)}, r"channels=\(4, 0\)"),
        ({"channels": 8}, r"channels=8"),
        ({"kernel_size": 0}, r"kernel_size=0"),
        ({"kernel_size": (3, 3, 3)}, r"one value per conv layer \(2.*kernel_size=\(3, 3, 3\)"),
        ({"stride": (1, 0)}, r"stride=\(1, 0\)"),
        ({"padding": -1}, r"padding=-1"),
        ({"pooling": "min"}, r"pooling 'min'; valid: none, max, avg"),
        ({"readout": "gap"}, r"readout 'gap'; valid: flatten, global_avg"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**kwargs)


def test_config_is_frozen_and_lists_become_tuples():
    cfg = ModelConfig(kind="cnn", channels=[4, 8], kernel_size=[3, 5])
    assert cfg.channels == (4, 8) and cfg.kernel_size == (3, 5)
    hash(cfg)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.depth = 3
    assert MODEL_KINDS == ("mlp", "cnn", "linear", "deep_linear")
    assert ACTIVATIONS == ("relu", "tanh", "sigmoid", "gelu", "leaky_relu", "identity")


@pytest.mark.parametrize(
    ("config", "shape", "outputs", "match"),
    [
        (ModelConfig(), (), 3, r"input_shape=\(\)"),
        (ModelConfig(), (4, 0), 3, r"input_shape=\(4, 0\)"),
        (ModelConfig(), "40", 3, r"input_shape='40'"),
        (ModelConfig(), (4,), 0, r"num_outputs=0"),
        (ModelConfig(kind="cnn"), (1, 2, 8, 8), 3, r"kind=\"cnn\".*\(1, 2, 8, 8\)"),
        (ModelConfig(kind="cnn", channels=(4, 4, 4)), (1, 4, 4), 3, r"too small.*conv layer 2"),
    ],
)
def test_build_validation(config, shape, outputs, match):
    with pytest.raises(ValueError, match=match):
        build_model(config, shape, outputs)


def test_build_type_errors():
    with pytest.raises(TypeError, match="ModelConfig"):
        build_model({"kind": "mlp"}, (4,), 2)
    with pytest.raises(TypeError, match="generator"):
        build_model(ModelConfig(), (4,), 2, generator="0")


# --------------------------------------------------------------------------------------------
# pre_initialize and count_parameters
# --------------------------------------------------------------------------------------------


def test_pre_initialize_round_trip_through_a_file(tmp_path):
    cfg = dataclasses.replace(PRESETS["digits_cnn"], batch_norm=True)
    trained = build_model(cfg, (1, 8, 8), 10, generator=0)
    trained(torch.randn(16, 1, 8, 8))  # non-trivial running stats
    path = tmp_path / "run.pt"
    torch.save({"model": trained.state_dict(), "step": 7, "config": {"lr": 0.1}}, path)
    fresh = build_model(cfg, (1, 8, 8), 10, generator=1)
    record = pre_initialize(fresh, path)
    assert record.complete and len(record.loaded) == len(trained.state_dict())
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in trained.state_dict().items())

    plain = tmp_path / "plain.pt"
    torch.save(trained.state_dict(), plain)
    assert pre_initialize(build_model(cfg, (1, 8, 8), 10, generator=2), plain).complete


def test_pre_initialize_strict_by_default():
    trained = build_model(PRESETS["digits_mlp"], (64,), 10, generator=0)
    other = build_model(PRESETS["digits_mlp"], (64,), 5, generator=1)  # new head
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match=r"head\.weight"):
        pre_initialize(other, {"model": trained.state_dict()})
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in before.items())
    record = pre_initialize(other, trained, strict=False)
    assert record.loaded == ["hidden0.linear.weight", "hidden0.linear.bias"]
    assert set(record.shape_mismatched) == {"head.weight", "head.bias"}


def test_count_parameters():
    model = build_model(ModelConfig(depth=1, width=3), (2,), 1, generator=0)
    assert count_parameters(model) == (2 * 3 + 3) + (3 + 1)
    model.head.weight.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == (2 * 3 + 3) + 1
    tied = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    tied[1].weight = tied[0].weight
    assert count_parameters(tied) == 9 + 3 + 3


# --------------------------------------------------------------------------------------------
# stack_models / make_functional under vmap
# --------------------------------------------------------------------------------------------

N = 3


def _copies(config, shape, n=N):
    return [build_model(config, shape, 4, generator=s).double() for s in range(n)]


def test_stack_models_shapes_and_errors():
    copies = _copies(ModelConfig(batch_norm=True, width=5), (3,))
    params, buffers = stack_models(copies)
    assert list(params) == [n for n, _ in copies[0].named_parameters()]
    assert params["hidden0.linear.weight"].shape == (N, 5, 3)
    assert buffers["hidden0.norm.num_batches_tracked"].shape == (N,)
    assert not params["head.weight"].requires_grad
    _close(params["head.bias"][1], copies[1].head.bias.detach())
    with pytest.raises(ValueError, match="at least one"):
        stack_models([])
    with pytest.raises(ValueError, match=r"models\[1\]\.head\.weight"):
        other = build_model(ModelConfig(batch_norm=True, width=5), (3,), 6).double()
        stack_models([copies[0], other])
    with pytest.raises(ValueError, match=r"models\[1\] has parameters"):
        stack_models([copies[0], build_model(ModelConfig(width=5), (3,), 4)])


VMAP_CASES = [
    (ModelConfig(batch_norm=True, width=6), (5,)),
    (ModelConfig(kind="cnn", depth=1, width=6, channels=(3, 4), batch_norm=True), (2, 6, 6)),
    (ModelConfig(kind="cnn", depth=0, channels=(3,), batch_norm=True, readout="global_avg"), (12,)),
    (ModelConfig(kind="deep_linear", depth=2, width=6), (5,)),
]


@pytest.mark.parametrize("shared_batch", [True, False])
@pytest.mark.parametrize(("config", "shape"), VMAP_CASES)
def test_vmap_train_mode_matches_each_copy(config, shape, shared_batch):
    copies = _copies(config, shape)
    params, buffers = stack_models(copies)
    given = {k: v.clone() for k, v in buffers.items()}
    f = make_functional(copies[0])
    in_dims = (0, 0, None if shared_batch else 0)
    vf = torch.func.vmap(f, in_dims=in_dims)
    for step in range(2):  # the second step starts from the first step's running stats
        x = torch.randn(*(() if shared_batch else (N,)), 8, *shape, dtype=torch.float64) + step
        out, buffers_next = vf(params, buffers, x)
        for name, b in buffers.items():  # the caller's buffers are not mutated
            assert torch.equal(b, given[name])
        for i, model in enumerate(copies):
            _close(out[i], model(x if shared_batch else x[i]))
            for name, b in model.named_buffers():
                _close(buffers_next[name][i], b)
        buffers, given = buffers_next, {k: v.clone() for k, v in buffers_next.items()}
    counts = [b for name, b in buffers.items() if name.endswith("num_batches_tracked")]
    assert all(c.tolist() == [2] * N for c in counts) and len(counts) == config.batch_norm * (
        len(config.channels) * (config.kind == "cnn") + config.depth
    )


@pytest.mark.parametrize(("config", "shape"), VMAP_CASES[:2])
def test_vmap_eval_mode_matches_each_copy(config, shape):
    copies = _copies(config, shape)
    for model in copies:  # give each copy its own running statistics
        model(torch.randn(16, *shape, dtype=torch.float64) * (1 + model.head.bias[0].abs()))
        model.eval()
    params, buffers = stack_models(copies)
    x = torch.randn(5, *shape, dtype=torch.float64)
    out, new = torch.func.vmap(make_functional(copies[0]), in_dims=(0, 0, None))(params, buffers, x)
    for i, model in enumerate(copies):
        _close(out[i], model(x))
    assert all(torch.equal(new[k], buffers[k]) for k in buffers)


def test_vmap_grad_matches_each_copy():
    config, shape = VMAP_CASES[1]
    copies = _copies(config, shape)
    params, buffers = stack_models(copies)
    f = make_functional(copies[0])
    x = torch.randn(8, *shape, dtype=torch.float64)
    y = torch.randint(0, 4, (8,))

    def loss(p, b):
        out, new_b = f(p, b, x)
        return F.cross_entropy(out, y), new_b

    grads, _ = torch.func.vmap(torch.func.grad(loss, has_aux=True))(params, buffers)
    for i, model in enumerate(copies):
        F.cross_entropy(model(x), y).backward()
        for name, p in model.named_parameters():
            _close(grads[name][i], p.grad)


def test_vmap_dropout_needs_randomness_and_differs_per_copy():
    cfg = ModelConfig(dropout=0.5, width=32)
    model = build_model(cfg, (4,), 4, generator=0)
    params, buffers = stack_models([model] * N)  # identical copies
    f = make_functional(model)
    x = torch.randn(6, 4)
    with pytest.raises(RuntimeError, match="randomness"):
        torch.func.vmap(f, in_dims=(0, 0, None))(params, buffers, x)
    out, _ = torch.func.vmap(f, in_dims=(0, 0, None), randomness="different")(params, buffers, x)
    assert not torch.equal(out[0], out[1])
    model.eval()
    out, _ = torch.func.vmap(f, in_dims=(0, 0, None))(params, buffers, x)
    _close(out[0], model(x), atol=1e-6)
    _close(out[0], out[2], atol=0)


def test_make_functional_leaves_the_model_alone_and_runs_unbatched():
    model = build_model(ModelConfig(batch_norm=True, width=4), (3,), 2, generator=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = {k: torch.zeros_like(v) for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())
    out, new = make_functional(model)(params, buffers, torch.randn(5, 3))
    _close(out, torch.zeros(5, 2))
    assert int(new["hidden0.norm.num_batches_tracked"]) == 1
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with pytest.raises(RuntimeError, match=r"head\.weight"):  # strict: all tensors must be given
        make_functional(model)(
            {k: v for k, v in params.items() if k != "head.weight"}, buffers, torch.randn(5, 3)
        )
    with pytest.raises(TypeError, match=r"nn\.Module"):
        make_functional(lambda x: x)


# --------------------------------------------------------------------------------------------
# Exports and documented examples
# --------------------------------------------------------------------------------------------


def test_exports():
    for name in models.__all__:
        assert getattr(problems, name) is getattr(models, name)
        assert name in problems.__all__


def test_docstring_examples():
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(models, "ravine.problems.models"):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted >= 15 and result.failed == 0
