"""Values that pass a range check but would break the arithmetic in the parameters' dtype are
refused when the parameters are known (construction, add_param_group), with a message naming
the argument and the value; flags must be bools; every default still passes."""

from __future__ import annotations

import inspect
import re

import numpy as np
import pytest
import torch

import ravine.optim as ro

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
WITH_EPS = ["adagrad", "rmsprop", "adam", "adamw", "nadam"]
TORCH_CLASSES = {
    "sgd": torch.optim.SGD,
    "momentum": torch.optim.SGD,
    "nesterov": torch.optim.SGD,
    "adagrad": torch.optim.Adagrad,
    "rmsprop": torch.optim.RMSprop,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "nadam": torch.optim.NAdam,
}


def _param(dtype=torch.float32, shape=(3,)):
    return torch.nn.Parameter(torch.ones(shape, dtype=dtype))


@pytest.mark.parametrize("name", WITH_EPS)
def test_eps_that_rounds_to_zero_is_refused(name):
    with pytest.raises(
        ValueError, match=r"eps=1e-320 rounds to 0 in float32; use eps >= 1\.4e-45 \(or larger\)"
    ):
        ro.make_optimizer(name, [_param()], eps=1e-320)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_eps_of_16_bit_parameters_is_held_in_float32(dtype):
    with pytest.raises(ValueError, match=r"eps=1e-46 rounds to 0 in float32"):
        ro.Adam([_param(dtype)], eps=1e-46)
    ro.Adam([_param(dtype)], eps=1e-40)  # a float32 subnormal: kept (see add_eps)


def test_eps_that_float64_represents_is_kept():
    p = _param(torch.float64)
    opt = ro.Adam([p], eps=1e-320)
    p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.equal(p, torch.ones_like(p))  # 0 / (0 + 1e-320) = 0, no NaN


@pytest.mark.parametrize("engine", ["simple", "flat"])
@pytest.mark.parametrize("name", WITH_EPS)
def test_float16_default_eps_does_not_turn_a_zero_gradient_into_nan(name, engine):
    # Adam's eps=1e-8 is below float16's smallest subnormal (6e-8): torch.optim gives 0/0 here.
    p = _param(torch.float16)
    opt = ro.make_optimizer(name, [p], lr=1e-3, engine=engine, compile=False)
    for _ in range(2):
        p.grad = torch.tensor([0.0, 0.5, -0.25], dtype=torch.float16)
        opt.step()
    assert torch.isfinite(p).all()
    assert p[0] == 1.0 or name == "adamw"  # (AdamW still decays it)


def test_decoupled_weight_decay_must_keep_lr_times_decay_below_one():
    with pytest.raises(ValueError, match=r"weight_decay=1e\+300 overflows float32 with lr=0\.001"):
        ro.AdamW([_param()], weight_decay=1e300)
    with pytest.raises(ValueError, match=r"lr \* weight_decay must be < 1 .*weight_decay=1e\+300"):
        ro.AdamW([_param(torch.float64)], weight_decay=1e300)
    with pytest.raises(ValueError, match=r"lr=0\.5, weight_decay=2\.0 \(product 1\)"):
        ro.SGD([_param()], lr=0.5, weight_decay=2.0, decoupled_weight_decay=True)
    ro.Adam([_param()], lr=0.5, weight_decay=2.0)  # coupled (L2): only finiteness


def test_clip_value_beyond_the_gradients_range_is_refused():
    with pytest.raises(
        ValueError, match=r"clip_value=1e\+300 is beyond float32's range .*clip_value=None"
    ):
        ro.Adam([_param()], clip_value=1e300)
    p = _param(torch.float64)
    opt = ro.Adam([p], clip_value=1e300)  # within float64's range: fine
    p.grad = torch.ones_like(p)
    opt.step()
    assert torch.isfinite(p).all()


def test_huge_max_grad_norm_means_no_clipping():
    p, q = _param(), _param()
    ours, plain = ro.SGD([p], lr=0.1, max_grad_norm=1e300), ro.SGD([q], lr=0.1)
    for param, opt in ((p, ours), (q, plain)):
        param.grad = torch.full_like(param, 3.0)
        opt.step()
    assert torch.equal(p, q)


def test_lr_that_overflows_the_compute_dtype_is_refused():
    with pytest.raises(ValueError, match=r"lr=100000.0 overflows float16 \(largest finite 6.55"):
        ro.SGD([_param(torch.float16)], lr=1e5)
    ro.SGD([_param(torch.float16)], lr=1e5, state_dtype=torch.float32)  # computed in float32


def test_per_member_values_name_the_member():
    p = _param(shape=(3, 2))
    with pytest.raises(ValueError, match=r"eps=1e-320 \(member 2\) rounds to 0 in float32"):
        ro.Adam([p], members=3, eps=[1e-8, 1e-8, 1e-320])
    with pytest.raises(ValueError, match=r"lr \* weight_decay must be < 1.*\(member 1\)"):
        ro.AdamW([p], members=3, lr=[1e-3, 0.5, 1e-3], weight_decay=4.0)


def test_add_param_group_checks_against_the_new_parameters():
    opt = ro.SGD([_param(torch.float32)], lr=1e5)
    with pytest.raises(ValueError, match=r"lr=100000\.0 overflows float16"):
        opt.add_param_group({"params": [_param(torch.float16)]})
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize(
    ("name", "flag", "value"),
    [
        ("adam", "maximize", 2),
        ("sgd", "nesterov", None),
        ("adam", "amsgrad", "yes"),
        ("rmsprop", "centered", 1),
        ("nadam", "decoupled_weight_decay", 0),
        ("sgd", "maximize", torch.tensor(True)),
    ],
)
def test_flags_must_be_bools(name, flag, value):
    message = re.escape(f"{flag} must be True or False, got {value!r}")
    with pytest.raises(ValueError, match=message):
        ro.make_optimizer(name, [_param()], **{flag: value})


def test_numpy_bools_are_accepted_and_stored_as_bools():
    opt = ro.Adam([_param()], amsgrad=np.True_, maximize=np.bool_(False))
    assert opt.param_groups[0]["amsgrad"] is True and opt.param_groups[0]["maximize"] is False


def test_compile_must_be_a_bool():
    with pytest.raises(ValueError, match="compile must be True or False, got 'no'"):
        ro.Adam([_param()], engine="flat", compile="no")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", list(ro.OPTIMIZERS))
def test_defaults_pass_and_step_in_every_dtype(name, dtype):
    p = _param(dtype)
    opt = ro.make_optimizer(name, [p])
    p.grad = torch.tensor([0.0, 1.0, -1e-3], dtype=dtype)
    opt.step()
    assert torch.isfinite(p).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", list(ro.OPTIMIZERS))
def test_torch_default_values_are_accepted(name, dtype):
    ours = set(ro.hyperparameter_names(name))
    defaults = {
        key: p.default
        for key, p in inspect.signature(TORCH_CLASSES[name]).parameters.items()
        if key in ours and p.default is not inspect.Parameter.empty
    }
    assert {"lr", "maximize"} <= set(defaults)
    ro.make_optimizer(name, [_param(dtype)], **defaults)
