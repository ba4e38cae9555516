"""Every ravine optimizer against its torch.optim counterpart, in float64, over 100 steps.

One table drives the tests: adding an optimizer (or a configuration worth checking) is adding a
row. Each run has two param groups with their own hyperparameters, weight decay, a zero-size
parameter, a parameter whose gradient is None on some steps, and a state_dict save/load into a
fresh optimizer half-way.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch

import ravine.optim as ro

STEPS = 100
RTOL = 1e-10

# (id, ravine class, torch class, shared hyperparameters, hyperparameters of the second group)
CASES = [
    ("sgd", ro.SGD, torch.optim.SGD, {"lr": 0.05}, {"lr": 0.02, "weight_decay": 0.1}),
    (
        "sgd-momentum-dampening",
        ro.SGD,
        torch.optim.SGD,
        {"lr": 0.03, "momentum": 0.9, "dampening": 0.2, "weight_decay": 1e-2},
        {"momentum": 0.5},
    ),
    (
        "sgd-nesterov",
        ro.SGD,
        torch.optim.SGD,
        {"lr": 0.03, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-2},
        {"lr": 0.01},
    ),
    ("momentum", ro.Momentum, torch.optim.SGD, {"lr": 0.03, "momentum": 0.9}, {"lr": 0.01}),
    (
        "nesterov",
        ro.Nesterov,
        torch.optim.SGD,
        {"lr": 0.03, "momentum": 0.9, "nesterov": True},
        {"weight_decay": 0.05},
    ),
    (
        "adagrad",
        ro.Adagrad,
        torch.optim.Adagrad,
        {"lr": 0.1, "lr_decay": 0.01, "weight_decay": 1e-2, "initial_accumulator_value": 0.1},
        {"lr": 0.05, "eps": 1e-6},
    ),
    (
        "rmsprop",
        ro.RMSprop,
        torch.optim.RMSprop,
        {"lr": 0.01, "weight_decay": 1e-2},
        {"alpha": 0.9},
    ),
    (
        "rmsprop-centered-momentum",
        ro.RMSprop,
        torch.optim.RMSprop,
        {"lr": 0.005, "centered": True, "momentum": 0.5, "weight_decay": 1e-2},
        {"centered": False, "lr": 0.002},
    ),
    ("adam", ro.Adam, torch.optim.Adam, {"lr": 0.01, "weight_decay": 1e-2}, {"betas": (0.8, 0.99)}),
    (
        "adam-amsgrad-maximize",
        ro.Adam,
        torch.optim.Adam,
        {"lr": 0.01, "amsgrad": True, "maximize": True},
        {"eps": 1e-4, "weight_decay": 0.1},
    ),
    (
        "adam-decoupled",
        ro.Adam,
        torch.optim.Adam,
        {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True},
        {"lr": 0.003},
    ),
    ("adamw", ro.AdamW, torch.optim.AdamW, {"lr": 0.01, "weight_decay": 0.1}, {"amsgrad": True}),
    (
        "nadam",
        ro.NAdam,
        torch.optim.NAdam,
        {"lr": 0.01, "weight_decay": 1e-2},
        {"momentum_decay": 1e-2, "lr": 0.004},
    ),
    (
        "nadam-decoupled",
        ro.NAdam,
        torch.optim.NAdam,
        {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True},
        {"betas": (0.95, 0.98)},
    ),
]


def _make_params(seed: int) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(6, 4), (4,), (0,), (3, 2), (5,)]
    return [torch.nn.Parameter(torch.randn(s, generator=g, dtype=torch.float64)) for s in shapes]


def _loss(params: list[torch.Tensor], step: int) -> torch.Tensor:
    # A non-convex, non-separable function of every parameter, changing with the step like a
    # mini-batch loss would, so that a drifting update rule shows up quickly.
    w1, b1, empty, w2, b2 = params
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(8, 6, generator=g, dtype=torch.float64)
    hidden = torch.tanh(x @ w1 + b1)  # (8, 4)
    out = hidden[:, :3] @ w2  # (8, 2)
    return (out - 0.5).pow(2).mean() + torch.sin(b2).sum() * 0.1 + empty.sum()


def _groups(params, second):
    return [{"params": params[:2]}, {"params": params[2:], **second}]


def _step(opt, params, step):
    opt.zero_grad()
    _loss(params, step).backward()
    if step % 3 == 0:
        # A parameter that gets no gradient on some steps (None: it is not updated, and it
        # falls behind the others' step count), in both engines as in torch.optim.
        params[4].grad = None


def _reload(opt_cls, params, groups_second, hyper, opt):
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    fresh = opt_cls(_groups(params, groups_second), **hyper)
    fresh.load_state_dict(torch.load(buffer, weights_only=False))
    return fresh


@pytest.fixture(autouse=True)
def _float64_scalars():
    # torch.optim keeps step counters and NAdam's mu_product in the default dtype; float64 makes
    # the reference exact enough to compare at 1e-10.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.mark.parametrize("engine", ["simple", "flat"])
@pytest.mark.parametrize(
    ("ravine_cls", "torch_cls", "hyper", "second"),
    [pytest.param(*row[1:], id=row[0]) for row in CASES],
)
def test_matches_torch_optim_float64(ravine_cls, torch_cls, hyper, second, engine):
    ours, theirs = _make_params(0), _make_params(0)
    torch_hyper = dict(hyper)
    if ravine_cls in (ro.Momentum, ro.Nesterov):
        torch_hyper.setdefault("momentum", 0.9)
    # Eager flat engine here: compiling 28 float64 kernels would only test torch.compile.
    hyper = {**hyper, "engine": engine, "compile": False}
    opt_ours = ravine_cls(_groups(ours, second), **hyper)
    opt_theirs = torch_cls(_groups(theirs, second), **torch_hyper)
    for step in range(STEPS):
        if step == STEPS // 2:
            opt_ours = _reload(ravine_cls, ours, second, hyper, opt_ours)
            opt_theirs = _reload(torch_cls, theirs, second, torch_hyper, opt_theirs)
        _step(opt_ours, ours, step)
        _step(opt_theirs, theirs, step)
        opt_ours.step()
        opt_theirs.step()
    assert engine == "simple" or opt_ours._buckets, "the flat engine fell back"
    for a, b, start in zip(ours, theirs, _make_params(0), strict=True):
        assert a.numel() == 0 or not torch.equal(a, start)  # the run really moved
        torch.testing.assert_close(a, b, rtol=RTOL, atol=1e-12)
    _assert_same_state(opt_ours, opt_theirs)


def _assert_same_state(opt_ours, opt_theirs):
    ours = opt_ours.state_dict()["state"]
    theirs = opt_theirs.state_dict()["state"]
    # torch's plain SGD keeps no state at all; ravine always counts steps.
    assert set(theirs) <= set(ours)
    for index, state in theirs.items():
        assert set(ours[index]) - set(state) <= {"step"}
        for key, value in state.items():
            if value is None:
                continue
            torch.testing.assert_close(
                ours[index][key].to(torch.float64), value.to(torch.float64), rtol=RTOL, atol=1e-12
            )


@pytest.mark.parametrize(
    ("ravine_cls", "torch_cls", "hyper", "second"),
    [pytest.param(*row[1:], id=row[0]) for row in CASES],
)
def test_continues_from_a_torch_optim_state_dict(ravine_cls, torch_cls, hyper, second):
    """Switching from torch.optim mid-training keeps the trajectory: state keys are torch's."""
    ours, theirs = _make_params(1), _make_params(1)
    torch_hyper = dict(hyper)
    if ravine_cls in (ro.Momentum, ro.Nesterov):
        torch_hyper.setdefault("momentum", 0.9)
    reference = torch_cls(_groups(theirs, second), **torch_hyper)
    switched = torch_cls(_groups(ours, second), **torch_hyper)
    for step in range(40):
        if step == 20:
            state = copy.deepcopy(switched.state_dict())
            switched = ravine_cls(_groups(ours, second), **hyper)
            switched.load_state_dict(state)
        for opt, params in ((switched, ours), (reference, theirs)):
            _step(opt, params, step)
            opt.step()
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=1e-12)


def test_every_registered_optimizer_has_a_parity_row():
    covered = {row[1] for row in CASES}
    assert set(ro.OPTIMIZERS.values()) <= covered


def test_lr_changed_between_steps_is_used_like_torch():
    ours, theirs = _make_params(2), _make_params(2)
    opt_ours = ro.Adam(ours, lr=0.01)
    opt_theirs = torch.optim.Adam(theirs, lr=0.01)
    sched_ours = torch.optim.lr_scheduler.StepLR(opt_ours, step_size=7, gamma=0.5)
    sched_theirs = torch.optim.lr_scheduler.StepLR(opt_theirs, step_size=7, gamma=0.5)
    for step in range(30):
        for opt, params, sched in (
            (opt_ours, ours, sched_ours),
            (opt_theirs, theirs, sched_theirs),
        ):
            _step(opt, params, step)
            opt.step()
            sched.step()
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=1e-12)


def _scaled_run(make, steps=10, poisoned_step=4):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    opt = make(model.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    g = torch.Generator().manual_seed(1)
    for step in range(steps):
        loss = model(torch.randn(16, 5, generator=g)).pow(2).mean()
        if step == poisoned_step:
            loss = loss * float("inf")  # the scaler must skip this step and halve its scale
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    return [p.detach() for p in model.parameters()], scaler.get_scale()


@pytest.mark.parametrize("engine", ["simple", "flat"])
def test_grad_scaler_unscales_and_skips_as_with_torch_optim(engine):
    expected, expected_scale = _scaled_run(lambda ps: torch.optim.Adam(ps, lr=1e-2))
    got, scale = _scaled_run(lambda ps: ro.Adam(ps, lr=1e-2, engine=engine, compile=False))
    assert scale == expected_scale == 2.0**9
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
