"""ravine.schedules against torch.optim.lr_scheduler, on resume, and on bad input."""

import doctest
import io
import math
import re

import pytest
import torch
from torch.optim import lr_scheduler as tl

from ravine import schedules
from ravine.schedules import (
    SCHEDULES,
    Constant,
    Cosine,
    CosineWarmRestarts,
    Exponential,
    LinearWarmup,
    OneCycle,
    Step,
    lr_sequence,
    make_schedule,
)

BASE_LRS = (0.1, 0.013)  # two param groups with different base lrs


def _optimizer(kind: str = "sgd") -> torch.optim.Optimizer:
    groups = [{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": lr} for lr in BASE_LRS]
    if kind == "adam":
        return torch.optim.Adam(groups, betas=(0.9, 0.999))
    return torch.optim.SGD(groups, momentum=0.9)


def _record(opt: torch.optim.Optimizer) -> list[tuple[float, float]]:
    """(lr, momentum or beta1) of every group: OneCycle cycles the second."""
    return [(g["lr"], g["betas"][0] if "betas" in g else g["momentum"]) for g in opt.param_groups]


def _run(make, steps: int, kind: str = "sgd") -> list[list[tuple[float, float]]]:
    opt = _optimizer(kind)
    sched = make(opt)
    out = []
    for _ in range(steps):
        out.append(_record(opt))
        opt.step()  # before sched.step(), or torch warns (an error under filterwarnings)
        sched.step()
    return out


# One row per schedule torch also has: (ravine factory, torch factory, steps, optimizer, exact).
# exact=False marks torch's chainable schedulers, which update group["lr"] from its previous
# value (lr *= gamma, or a ratio of cosines), so their rounding error accumulates step by step
# (measured: up to 1e-14 relative over these runs). ravine evaluates the closed form instead: the
# schedule as written in the paper, and what makes resume/composition/lr_at exact. Bitwise
# equality with the chainable sequence would mean adopting its drift, so the contract is:
# bitwise equal to torch's own closed form (its _get_closed_form_lr), and within 1e-12
# relative of the sequence its step() produces.
TORCH_CASES = [
    pytest.param(
        lambda o: Constant(o, factor=0.5),
        lambda o: tl.LambdaLR(o, lambda t: 0.5),
        300, "sgd", True, id="constant",
    ),
    pytest.param(
        lambda o: Step(o, step_size=30, gamma=0.1),
        lambda o: tl.StepLR(o, step_size=30, gamma=0.1),
        300, "sgd", False, id="step",
    ),
    pytest.param(
        lambda o: Exponential(o, gamma=0.98),
        lambda o: tl.ExponentialLR(o, gamma=0.98),
        300, "sgd", False, id="exponential",
    ),
    pytest.param(  # torch's cosine turns back up after T_max; ravine holds (tested below)
        lambda o: Cosine(o, t_max=300, eta_min=1e-3),
        lambda o: tl.CosineAnnealingLR(o, T_max=300, eta_min=1e-3),
        301, "sgd", False, id="cosine",
    ),
    pytest.param(
        lambda o: LinearWarmup(o, warmup_steps=50, start_factor=0.1),
        lambda o: tl.LinearLR(o, start_factor=0.1, end_factor=1.0, total_iters=50),
        300, "sgd", False, id="warmup",
    ),
    pytest.param(
        lambda o: LinearWarmup(o, warmup_steps=50, then=Cosine(o, t_max=250), start_factor=1 / 3),
        lambda o: tl.SequentialLR(
            o,
            [tl.LinearLR(o, start_factor=1 / 3, total_iters=50), tl.CosineAnnealingLR(o, 250)],
            milestones=[50],
        ),
        301, "sgd", False, id="warmup-then-cosine",
    ),
    pytest.param(
        lambda o: CosineWarmRestarts(o, t0=25, eta_min=1e-4),
        lambda o: tl.CosineAnnealingWarmRestarts(o, T_0=25, eta_min=1e-4),
        300, "sgd", True, id="sgdr-t_mult-1",
    ),
    pytest.param(
        lambda o: CosineWarmRestarts(o, t0=10, t_mult=2),
        lambda o: tl.CosineAnnealingWarmRestarts(o, T_0=10, T_mult=2),
        320, "adam", True, id="sgdr-t_mult-2",
    ),
    pytest.param(
        lambda o: OneCycle(o, total_steps=300, max_lr=[0.5, 0.05]),
        lambda o: tl.OneCycleLR(o, max_lr=[0.5, 0.05], total_steps=300),
        300, "sgd", True, id="onecycle-momentum",
    ),
    pytest.param(  # max_lr defaults to each group's lr
        lambda o: OneCycle(o, total_steps=257),
        lambda o: tl.OneCycleLR(o, max_lr=list(BASE_LRS), total_steps=257),
        257, "adam", True, id="onecycle-beta1",
    ),
    pytest.param(
        lambda o: OneCycle(
            o, 300, max_lr=0.4, pct_start=0.25, anneal_strategy="linear", three_phase=True,
            base_momentum=0.8, max_momentum=0.9,
        ),
        lambda o: tl.OneCycleLR(
            o, 0.4, total_steps=300, pct_start=0.25, anneal_strategy="linear",
            three_phase=True, base_momentum=0.8, max_momentum=0.9,
        ),
        300, "adam", True, id="onecycle-three-phase-linear",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("make", "make_torch", "steps", "kind", "exact"), TORCH_CASES)
def test_matches_torch(make, make_torch, steps, kind, exact):
    ours, theirs = _run(make, steps, kind), _run(make_torch, steps, kind)
    if exact:
        assert ours == theirs
        return
    for mine, ref in zip(ours, theirs, strict=True):
        for (lr, momentum), (ref_lr, ref_momentum) in zip(mine, ref, strict=True):
            assert math.isclose(lr, ref_lr, rel_tol=1e-12, abs_tol=0.0)
            assert momentum == ref_momentum
    # ...and the chainable scheduler's closed form, where torch has one, bit for bit
    ref_sched = make_torch(_optimizer(kind))
    if hasattr(ref_sched, "_get_closed_form_lr"):
        closed = []
        for t in range(steps):
            ref_sched.last_epoch = t
            closed.append(ref_sched._get_closed_form_lr())
        assert [[lr for lr, _ in rec] for rec in ours] == closed


RAVINE_CASES = [pytest.param(p.values[0], id=p.id) for p in TORCH_CASES] + [
    pytest.param(
        lambda o: LinearWarmup(o, warmup_steps=100, then=OneCycle(o, total_steps=150)),
        id="warmup-then-onecycle",
    ),
    pytest.param(
        lambda o: LinearWarmup(o, warmup_steps=30, then=CosineWarmRestarts(o, t0=7, t_mult=3)),
        id="warmup-then-sgdr",
    ),
]


@pytest.mark.parametrize("load_order", ["schedule_first", "optimizer_first"])
@pytest.mark.parametrize("make", RAVINE_CASES)
@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_resume_is_exact(make, kind, load_order):
    steps, k = 200, 77
    full = _run(make, steps, kind)

    opt = _optimizer(kind)
    sched = make(opt)
    head = []
    for _ in range(k):
        head.append(_record(opt))
        opt.step()
        sched.step()
    buffer = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, buffer)
    buffer.seek(0)
    # weights_only: a schedule's state is plain data, not objects holding the optimizer
    saved = torch.load(buffer, weights_only=True)

    opt = _optimizer(kind)
    if load_order == "schedule_first":  # the order torch's docs require
        sched = make(opt)
        opt.load_state_dict(saved["opt"])
    else:  # closed forms make the order irrelevant: load_state_dict rewrites the lrs
        opt.load_state_dict(saved["opt"])
        sched = make(opt)
    sched.load_state_dict(saved["sched"])
    tail = []
    for _ in range(steps - k):
        tail.append(_record(opt))
        opt.step()
        sched.step()
    assert head + tail == full


@pytest.mark.parametrize(
    ("t_mult", "restarts"), [(1, [0, 10, 20, 30, 40, 50]), (2, [0, 10, 30, 70, 150])]
)
def test_sgdr_restarts_and_eta_min(t_mult, restarts):
    eta_min = 0.01
    make = lambda o: CosineWarmRestarts(o, t0=10, t_mult=t_mult, eta_min=eta_min)  # noqa: E731
    lrs = lr_sequence(make, steps=restarts[-1] + 1, base_lr=0.1)
    # the lr only ever rises at a restart, and a restart returns it to the base lr
    assert [0] + [t for t in range(1, len(lrs)) if lrs[t] > lrs[t - 1]] == restarts
    assert [lrs[t] for t in restarts] == pytest.approx([0.1] * len(restarts), rel=1e-15)
    # eta_min is the floor; each cycle ends one step above it (the restart replaces eta_min)
    assert min(lrs) > eta_min
    for t in restarts[1:]:
        assert lrs[t - 1] - eta_min < 0.03 * (0.1 - eta_min)


def test_cosine_and_onecycle_hold_their_final_value():
    cosine = lr_sequence(lambda o: Cosine(o, t_max=10, eta_min=0.01), steps=30, base_lr=0.1)
    assert cosine[10:] == [0.01] * 20
    sched = OneCycle(_optimizer(), total_steps=20)  # torch's OneCycleLR raises past the cycle
    assert [sched.lr_at(t) for t in range(19, 40)] == [sched.lr_at(19)] * 21
    assert sched.momentum_at(39) == [0.95, 0.95]


def test_warmup_from_zero_and_default_hold():
    lrs = lr_sequence(lambda o: LinearWarmup(o, warmup_steps=4), steps=7, base_lr=0.1)
    assert lrs == [0.0, 0.025, 0.05, 0.07500000000000001, 0.1, 0.1, 0.1]


def test_lr_at_is_pure():
    opt = _optimizer()
    sched = OneCycle(opt, total_steps=50, max_lr=1.0)
    before = _record(opt)
    table = [sched.lr_at(t) for t in range(50)]
    momenta = [sched.momentum_at(t) for t in range(50)]
    assert _record(opt) == before and sched.last_epoch == 0
    stepped = _run(lambda o: OneCycle(o, total_steps=50, max_lr=1.0), 50)
    assert table == [[lr for lr, _ in rec] for rec in stepped]
    assert momenta == [[m for _, m in rec] for rec in stepped]


def test_lr_sequence_reads_instances_and_torch_factories():
    opt = _optimizer()
    sched = Step(opt, step_size=3, gamma=0.5)
    assert lr_sequence(sched, 10, group=1) == [
        rec[1][0] for rec in _run(lambda o: Step(o, 3, 0.5), 10)
    ]
    assert sched.last_epoch == 0
    ours = lr_sequence(lambda o: Step(o, step_size=3, gamma=0.5), 10, base_lr=0.1)
    assert ours == lr_sequence(lambda o: tl.StepLR(o, step_size=3, gamma=0.5), 10, base_lr=0.1)


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda ps: torch.optim.Adagrad(ps, lr=0.1),
        lambda ps: torch.optim.RMSprop(ps, lr=0.1, momentum=0.5),
        lambda ps: torch.optim.AdamW(ps, lr=0.1),
        lambda ps: torch.optim.Adam(ps, lr=torch.tensor(0.1), foreach=False),  # Tensor lr
    ],
    ids=["adagrad", "rmsprop", "adamw", "adam-tensor-lr"],
)
def test_drives_any_optimizer(make_optimizer):
    model = torch.nn.Linear(3, 1)
    opt = make_optimizer(model.parameters())
    lr_object = opt.param_groups[0]["lr"]
    sched = LinearWarmup(opt, warmup_steps=3, then=CosineWarmRestarts(opt, t0=4))
    for t in range(1, 10):
        opt.zero_grad()
        model(torch.randn(5, 3)).square().mean().backward()
        opt.step()
        sched.step()
        assert float(opt.param_groups[0]["lr"]) == pytest.approx(float(sched.lr_at(t)[0]), rel=1e-6)
    if isinstance(lr_object, torch.Tensor):  # updated in place, never rebound
        assert opt.param_groups[0]["lr"] is lr_object


def _adagrad(_):
    return torch.optim.Adagrad([torch.nn.Parameter(torch.zeros(1))])


INVALID = [
    (lambda o: Constant(o, factor=-1.0), "factor", "-1.0"),
    (lambda o: Step(o, step_size=0), "step_size", "0"),
    (lambda o: Step(o, step_size=2.5), "step_size", "2.5"),
    (lambda o: Step(o, step_size=True), "step_size", "True"),
    (lambda o: Step(o, step_size=10, gamma=0.0), "gamma", "0.0"),
    (lambda o: Exponential(o, gamma=float("nan")), "gamma", "nan"),
    (lambda o: Exponential(o, gamma="0.9"), "gamma", "'0.9'"),
    (lambda o: Cosine(o, t_max=0), "t_max", "0"),
    (lambda o: Cosine(o, t_max=10, eta_min=-1e-3), "eta_min", "-0.001"),
    (lambda o: CosineWarmRestarts(o, t0=0), "t0", "0"),
    (lambda o: CosineWarmRestarts(o, t0=10, t_mult=0), "t_mult", "0"),
    (lambda o: CosineWarmRestarts(o, t0=10, t_mult=1.5), "t_mult", "1.5"),
    (lambda o: CosineWarmRestarts(o, t0=10, eta_min=float("inf")), "eta_min", "inf"),
    (lambda o: LinearWarmup(o, warmup_steps=0), "warmup_steps", "0"),
    (lambda o: LinearWarmup(o, warmup_steps=10, start_factor=1.5), "start_factor", "1.5"),
    (lambda o: LinearWarmup(o, 10, then=tl.StepLR(o, 5)), "then", "StepLR"),
    (lambda o: LinearWarmup(o, 10, then=Cosine(_optimizer(), 5)), "then", "Cosine"),
    (lambda o: OneCycle(o, total_steps=0), "total_steps", "0"),
    (lambda o: OneCycle(o, 100, max_lr=-1.0), "max_lr", "-1.0"),
    (lambda o: OneCycle(o, 100, max_lr=[0.1]), "max_lr", "[0.1]"),
    (lambda o: OneCycle(o, 100, pct_start=1.0), "pct_start", "1.0"),
    (lambda o: OneCycle(o, 3, pct_start=0.3), "pct_start", "0.3"),  # warm-up phase empty
    (lambda o: OneCycle(o, 100, pct_start=0.6, three_phase=True), "pct_start", "0.6"),
    (lambda o: OneCycle(o, 100, anneal_strategy="cosine"), "anneal_strategy", "'cosine'"),
    (lambda o: OneCycle(o, 100, div_factor=0.0), "div_factor", "0.0"),
    (lambda o: OneCycle(o, 100, final_div_factor=-1.0), "final_div_factor", "-1.0"),
    (lambda o: OneCycle(o, 100, base_momentum=0.99), "base_momentum", "0.99"),
    (lambda o: OneCycle(o, 100, max_momentum=1.5), "max_momentum", "1.5"),
    (lambda o: OneCycle(_adagrad(o), 100), "cycle_momentum", "Adagrad"),
]


@pytest.mark.parametrize(("make", "arg", "value"), INVALID, ids=[f"{a}={v}" for _, a, v in INVALID])
def test_invalid_arguments_name_argument_and_value(make, arg, value):
    opt = _optimizer()
    with pytest.raises(ValueError, match=rf"^{arg}\b.*{re.escape(value)}"):
        make(opt)
    assert [g["lr"] for g in opt.param_groups] == list(BASE_LRS)  # nothing was changed


def test_inspection_rejects_bad_steps():
    with pytest.raises(ValueError, match=r"^step must be >= 0, got -1"):
        Constant(_optimizer()).lr_at(-1)
    with pytest.raises(ValueError, match=r"^steps must be an integer >= 0, got -1"):
        lr_sequence(lambda o: Constant(o), -1)


# the smallest arguments of every registered schedule; adding a schedule is adding a row
MINIMAL_KWARGS = {
    "constant": {},
    "step": {"step_size": 10},
    "exponential": {"gamma": 0.9},
    "cosine": {"t_max": 100},
    "warmup": {"warmup_steps": 10},
    "cosine_warm_restarts": {"t0": 10},
    "onecycle": {"total_steps": 100},
}


def test_registry_names_every_schedule():
    assert set(SCHEDULES) == set(MINIMAL_KWARGS)
    assert set(SCHEDULES.values()) | {schedules.Schedule} == {
        getattr(schedules, name)
        for name in schedules.__all__
        if isinstance(getattr(schedules, name), type)
    }


@pytest.mark.parametrize("name", sorted(MINIMAL_KWARGS))
def test_make_schedule(name):
    opt = _optimizer()
    sched = make_schedule(name, opt, **MINIMAL_KWARGS[name])
    assert type(sched) is SCHEDULES[name] and sched.optimizer is opt


def test_make_schedule_rejects_unknown_name_listing_valid_ones():
    with pytest.raises(ValueError, match="unknown schedule 'cosin'") as info:
        make_schedule("cosin", _optimizer(), t_max=10)
    assert all(name in str(info.value) for name in SCHEDULES)


def test_make_schedule_rejects_unknown_argument_listing_accepted_ones():
    with pytest.raises(ValueError, match=r"'cosine'.*accepts: t_max, eta_min$"):
        make_schedule("cosine", _optimizer(), T_max=10)


def test_make_schedule_builds_nested_then():
    opt = _optimizer()
    sched = make_schedule("warmup", opt, warmup_steps=5, then={"name": "cosine", "t_max": 20})
    assert isinstance(sched.then, Cosine) and sched.then.optimizer is opt
    other = _optimizer()
    reference = LinearWarmup(other, 5, then=Cosine(other, 20))
    assert [sched.lr_at(t) for t in range(30)] == [reference.lr_at(t) for t in range(30)]
    with pytest.raises(ValueError, match=r"^then must name its schedule"):
        make_schedule("warmup", opt, warmup_steps=5, then={"t_max": 20})


def test_docstring_examples_run():
    result = doctest.testmod(schedules, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
