"""Behaviour of the optimizers beyond torch parity: known minima, Nesterov's two forms,
clipping, NaN/Inf handling, validation and the name registry."""

from __future__ import annotations

import math

import pytest
import torch

import ravine.optim as ro


def rosenbrock(x: torch.Tensor) -> torch.Tensor:
    return (1 - x[..., 0]) ** 2 + 100 * (x[..., 1] - x[..., 0] ** 2) ** 2


def rotated_quadratic(dim: int, condition: float):
    """f(x) = 0.5 (x - x*)^T H (x - x*), H with eigenvalues log-spaced in [1, condition]."""
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    eig = torch.logspace(0, math.log10(condition), dim, dtype=torch.float64)
    hessian = q @ torch.diag(eig) @ q.T
    minimum = torch.randn(dim, generator=g, dtype=torch.float64)

    def f(x):
        d = x - minimum
        return 0.5 * torch.einsum("...i,ij,...j->...", d, hessian, d)

    return f, minimum


# name -> (Rosenbrock hyperparameters, quadratic hyperparameters). One row per optimizer.
CONVERGENCE = {
    "sgd": ({"lr": 2e-3}, {"lr": 0.05}),
    "momentum": ({"lr": 5e-4}, {"lr": 0.01}),
    "nesterov": ({"lr": 5e-4}, {"lr": 0.01}),
    "adagrad": ({"lr": 0.7}, {"lr": 0.5}),
    "rmsprop": ({"lr": 1e-3, "momentum": 0.9}, {"lr": 1e-3, "momentum": 0.9}),
    "adam": ({"lr": 0.02}, {"lr": 0.02}),
    "adamw": ({"lr": 0.02, "weight_decay": 0.0}, {"lr": 0.02, "weight_decay": 0.0}),
    "nadam": ({"lr": 0.01, "betas": (0.9, 0.99)}, {"lr": 0.02}),
}


def _minimize(name, f, start, steps, **hyper):
    x = torch.nn.Parameter(start.clone())
    opt = ro.make_optimizer(name, [x], **hyper)
    for _ in range(steps):
        opt.zero_grad()
        f(x).sum().backward()
        opt.step()
    return x.detach()


def test_every_registered_optimizer_has_a_convergence_row():
    assert set(CONVERGENCE) == set(ro.OPTIMIZERS)


@pytest.mark.parametrize("name", list(CONVERGENCE))
def test_reaches_rosenbrock_minimum(name):
    start = torch.tensor([[-1.2, 1.0], [-0.5, 1.5]], dtype=torch.float64)  # two starts at once
    x = _minimize(name, rosenbrock, start, 5000, **CONVERGENCE[name][0])
    distance = (x - 1).norm(dim=-1)
    assert (distance < 2e-2).all(), f"{name} ended at {x.tolist()}"


@pytest.mark.parametrize("name", list(CONVERGENCE))
def test_reaches_ill_conditioned_quadratic_minimum(name):
    f, minimum = rotated_quadratic(dim=4, condition=20.0)
    x = _minimize(name, f, torch.zeros(4, dtype=torch.float64), 3000, **CONVERGENCE[name][1])
    assert (x - minimum).norm() < 1e-3, f"{name} ended {float((x - minimum).norm()):.2e} away"


def test_nesterov_equals_sutskever_look_ahead_form():
    """torch's Nesterov iterates are Sutskever et al.'s look-ahead points theta_t + mu v_t."""
    f, _ = rotated_quadratic(dim=3, condition=10.0)
    lr, mu = 0.02, 0.9
    theta = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    velocity = torch.zeros(3, dtype=torch.float64)
    phi = torch.nn.Parameter(theta.clone())
    opt = ro.SGD([phi], lr=lr, momentum=mu, nesterov=True)
    for _ in range(50):
        look_ahead = (theta + mu * velocity).requires_grad_()
        (grad,) = torch.autograd.grad(f(look_ahead), look_ahead)
        velocity = mu * velocity - lr * grad
        theta = theta + velocity
        opt.zero_grad()
        f(phi).backward()
        opt.step()
        torch.testing.assert_close(phi.detach(), theta + mu * velocity, rtol=1e-12, atol=1e-12)


# -- clipping ---------------------------------------------------------------------------------


def _grads_like_model(seed):
    g = torch.Generator().manual_seed(seed)
    params = [
        torch.nn.Parameter(torch.randn(s, generator=g, dtype=torch.float64))
        for s in ((5, 3), (3,), (0,))
    ]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64) * 3
    return params


@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_standalone_clip_grad_norm_matches_torch(max_norm):
    ours, theirs = _grads_like_model(0), _grads_like_model(0)
    norm_ours = ro.clip_grad_norm_(ours, max_norm)
    norm_theirs = torch.nn.utils.clip_grad_norm_(theirs, max_norm)
    torch.testing.assert_close(norm_ours, norm_theirs, rtol=1e-14, atol=0)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-14, atol=0)


def test_standalone_clip_grad_value_matches_torch():
    ours, theirs = _grads_like_model(1), _grads_like_model(1)
    ro.clip_grad_value_(ours, 1.5)
    torch.nn.utils.clip_grad_value_(theirs, 1.5)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a.grad, b.grad)


@pytest.mark.parametrize(
    ("option", "torch_clip"),
    [
        ({"max_grad_norm": 0.7}, lambda ps: torch.nn.utils.clip_grad_norm_(ps, 0.7)),
        ({"clip_value": 0.4}, lambda ps: torch.nn.utils.clip_grad_value_(ps, 0.4)),
    ],
)
def test_in_optimizer_clipping_equals_clip_then_step(option, torch_clip):
    ours, theirs = _grads_like_model(2), _grads_like_model(2)
    raw = [p.grad.clone() for p in ours]
    opt_ours = ro.Adam([{"params": ours[:1]}, {"params": ours[1:]}], lr=0.1, **option)
    opt_theirs = torch.optim.Adam([{"params": theirs[:1]}, {"params": theirs[1:]}], lr=0.1)
    opt_ours.step()
    torch_clip(theirs)
    opt_theirs.step()
    for a, b, g in zip(ours, theirs, raw, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
        assert torch.equal(a.grad, g)  # p.grad is left as the raw gradient


# -- NaN / Inf --------------------------------------------------------------------------------


ENGINES = {"simple": {"engine": "simple"}, "flat": {"engine": "flat", "compile": False}}


def _poisoned_setup(name, nonfinite, guarded=False, engine="simple"):
    params = _grads_like_model(3)
    opt = ro.make_optimizer(name, params, lr=0.01, nonfinite=nonfinite, **ENGINES[engine])
    opt._force_guarded = guarded
    opt.step()  # one clean step so that state exists
    before_params = [p.detach().clone() for p in params]
    before_state = {
        i: {k: v.clone() for k, v in s.items()} for i, s in opt.state_dict()["state"].items()
    }
    params[0].grad[1, 2] = float("nan")
    params[1].grad[0] = float("inf")
    return params, opt, before_params, before_state


def _assert_unchanged(params, opt, before_params, before_state):
    for p, b in zip(params, before_params, strict=True):
        assert torch.equal(p.detach(), b)
    state = opt.state_dict()["state"]
    for i, s in before_state.items():
        for k, v in s.items():
            assert torch.equal(state[i][k].to(v.device), v), (i, k)


@pytest.mark.parametrize("name", ["adam", "rmsprop", "nadam"])
@pytest.mark.parametrize("engine", ["simple", "flat"])
def test_float16_gradients_above_256_do_not_overflow_the_second_moment(name, engine):
    # 300**2 overflows float16; (1 - beta2) * 300 * 300 does not.
    half = torch.nn.Parameter(torch.ones(3, dtype=torch.float16))
    full = torch.nn.Parameter(torch.ones(3))
    options = {"engine": engine, "compile": False}
    opt_half = ro.make_optimizer(name, [half], lr=1e-3, **options)
    opt_full = ro.make_optimizer(name, [full], lr=1e-3, **options)
    for step in range(3):
        grad = torch.tensor([300.0, 1000.0, 1.0]) if step == 0 else torch.full((3,), 0.1)
        half.grad, full.grad = grad.to(torch.float16), grad
        opt_half.step()
        opt_full.step()
    assert torch.isfinite(half).all()
    torch.testing.assert_close(half.float(), full.detach(), rtol=2e-3, atol=2e-3)


def test_finite_flags_agree_with_isfinite_everywhere():
    from ravine.optim._math import finite_flags

    g = torch.Generator().manual_seed(0)
    tensors, expected = [], []
    for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
        for bad in (None, float("nan"), float("inf"), float("-inf")):
            for position in (0, 17, 1000):  # the head, inside a vector lane, the tail
                t = torch.randn(1001, generator=g).to(dtype)
                if bad is not None:
                    t[position] = bad
                tensors.append(t)
                expected.append(bool(torch.isfinite(t).all()))
    # Finite extremes that a narrower type would overflow, a 0-dim and an empty tensor.
    tensors += [torch.tensor([1e300, -1e300], dtype=torch.float64), torch.tensor(3.0)]
    tensors += [torch.zeros(0), torch.tensor([float("nan"), float("nan")])]
    expected += [True, True, True, False]
    assert finite_flags(tensors).tolist() == expected
    assert finite_flags(tensors).dtype == torch.bool


@pytest.mark.parametrize("engine", list(ENGINES))
@pytest.mark.parametrize("name", list(ro.OPTIMIZERS))
@pytest.mark.parametrize("guarded", [False, True], ids=["host-branch", "sync-free"])
def test_nonfinite_skip_leaves_parameters_and_state_unchanged(name, guarded, engine):
    params, opt, before_params, before_state = _poisoned_setup(name, "skip", guarded, engine)
    opt.step()
    opt.step()
    _assert_unchanged(params, opt, before_params, before_state)
    assert opt.skipped_steps == 2
    for p in params:  # a clean step afterwards proceeds
        p.grad = torch.ones_like(p)
    opt.step()
    assert not torch.equal(params[0].detach(), before_params[0])
    assert all(torch.isfinite(p).all() for p in params)


@pytest.mark.parametrize("engine", list(ENGINES))
@pytest.mark.parametrize("name", ["sgd", "adam", "nadam"])
def test_nonfinite_raise_names_the_parameter_and_changes_nothing(name, engine):
    params, opt, before_params, before_state = _poisoned_setup(name, "raise", engine=engine)
    with pytest.raises(ro.NonFiniteGradientError, match=r"parameter #0 \(5, 3\): 1 NaN, 0 Inf"):
        opt.step()
    _assert_unchanged(params, opt, before_params, before_state)


@pytest.mark.parametrize("engine", list(ENGINES))
def test_nonfinite_raise_on_the_sync_free_path_raises_at_the_next_step(engine):
    params, opt, before_params, before_state = _poisoned_setup("adam", "raise", True, engine)
    opt.step()  # no host sync here: the step is refused on the device, the error comes next
    _assert_unchanged(params, opt, before_params, before_state)
    with pytest.raises(ro.NonFiniteGradientError, match=r"parameter #0 \(5, 3\), parameter #1"):
        opt.step()


@pytest.mark.parametrize("engine", list(ENGINES))
def test_momentum_dampening_first_step_refused_on_the_sync_free_path(engine):
    guarded, plain = _grads_like_model(4), _grads_like_model(4)
    hyper = {"lr": 0.1, "momentum": 0.9, "dampening": 0.5, **ENGINES[engine]}
    opt_guarded = ro.SGD(guarded, nonfinite="skip", **hyper)
    opt_guarded._force_guarded = True
    opt_plain = ro.SGD(plain, **hyper)
    clean = [p.grad.clone() for p in guarded]
    guarded[0].grad[0, 0] = float("nan")
    opt_guarded.step()
    for p, g in zip(guarded, clean, strict=True):
        p.grad = g.clone()
    for _ in range(3):
        opt_guarded.step()
        opt_plain.step()
    for a, b in zip(guarded, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=0)


@pytest.mark.parametrize("engine", list(ENGINES))
@pytest.mark.parametrize("name", list(ro.OPTIMIZERS))
def test_sync_free_path_equals_host_path_on_finite_gradients(name, engine):
    guarded, plain = _grads_like_model(5), _grads_like_model(5)
    hyper = {"lr": 0.01, "weight_decay": 0.01, **ENGINES[engine]}
    opt_guarded = ro.make_optimizer(name, guarded, **hyper)
    opt_guarded._force_guarded = True
    opt_plain = ro.make_optimizer(name, plain, **hyper)
    for _ in range(5):
        opt_guarded.step()
        opt_plain.step()
    for a, b in zip(guarded, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)


def test_nonfinite_ignore_behaves_like_torch():
    params = _grads_like_model(6)
    opt = ro.SGD(params, lr=0.1, nonfinite="ignore")
    params[0].grad[0, 0] = float("nan")
    opt.step()
    assert torch.isnan(params[0][0, 0])


# -- validation and names ---------------------------------------------------------------------

INVALID = [
    (ro.SGD, {"lr": -0.1}, "lr"),
    (ro.SGD, {"lr": float("nan")}, "lr"),
    (ro.SGD, {"momentum": 1.0}, "momentum"),
    (ro.SGD, {"nesterov": True}, "nesterov"),
    (ro.SGD, {"weight_decay": -1e-4}, "weight_decay"),
    (ro.Adam, {"betas": (0.9, 1.0)}, "beta2"),
    (ro.Adam, {"betas": (-0.1, 0.999)}, "beta1"),
    (ro.Adam, {"eps": 0.0}, "eps"),
    (ro.Adam, {"max_grad_norm": 0.0}, "max_grad_norm"),
    (ro.Adam, {"clip_value": -1.0}, "clip_value"),
    (ro.AdamW, {"decoupled_weight_decay": False}, "AdamW"),
    (ro.NAdam, {"momentum_decay": -1.0}, "momentum_decay"),
    (ro.RMSprop, {"alpha": 1.5}, "alpha"),
    (ro.Adagrad, {"lr_decay": -0.5}, "lr_decay"),
    (ro.Adagrad, {"initial_accumulator_value": -1.0}, "initial_accumulator_value"),
    (ro.Adam, {"nonfinite": "explode"}, "nonfinite"),
]


@pytest.mark.parametrize(("cls", "kwargs", "named"), INVALID)
def test_invalid_hyperparameters_raise_value_error_naming_them(cls, kwargs, named):
    with pytest.raises(ValueError, match=named):
        cls([torch.nn.Parameter(torch.zeros(2))], **kwargs)


def test_invalid_value_in_a_param_group_is_caught():
    w, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))
    with pytest.raises(ValueError, match=r"lr must be a finite number >= 0, got -1"):
        ro.Adam([{"params": [w]}, {"params": [b], "lr": -1}])


def test_unknown_optimizer_lists_valid_names():
    with pytest.raises(ValueError, match="unknown optimizer 'adamax'; valid: sgd, momentum"):
        ro.optimizer_class("adamax")


def test_parse_optimizer_spec():
    assert ro.parse_optimizer_spec("adam") == ("adam", {})
    assert ro.parse_optimizer_spec("Adam:lr=0.01,beta2=0.99,amsgrad=true") == (
        "adam",
        {"lr": 0.01, "amsgrad": True, "betas": (0.9, 0.99)},
    )
    assert ro.parse_optimizer_spec("sgd:lr=1e-2,momentum=0.9,nesterov=true")[1] == {
        "lr": 0.01,
        "momentum": 0.9,
        "nesterov": True,
    }
    assert ro.parse_optimizer_spec("rmsprop:max_grad_norm=none")[1] == {"max_grad_norm": None}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("adam:lr", "not key=value"),
        ("adam:learning_rate=0.1", "unknown hyperparameter 'learning_rate'.*valid: lr, betas"),
        ("sgd:beta1=0.9", "no betas"),
        ("adam:lr=fast", "must be a number"),
        ("lion:lr=1", "unknown optimizer 'lion'"),
        ("adam:betas=0.9,beta2=0.99", "as beta1=...,beta2=..."),
    ],
)
def test_parse_optimizer_spec_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        ro.parse_optimizer_spec(spec)


def test_make_optimizer_rejects_unknown_hyperparameter():
    with pytest.raises(ValueError, match="unknown hyperparameter 'betas' for optimizer 'sgd'"):
        ro.make_optimizer("sgd", [torch.nn.Parameter(torch.zeros(1))], betas=(0.9, 0.99))


def test_frozen_parameter_and_empty_step_are_harmless():
    frozen = torch.nn.Parameter(torch.ones(3), requires_grad=False)
    live = torch.nn.Parameter(torch.ones(3))
    opt = ro.Adam([frozen, live], lr=0.1)
    assert opt.step() is None  # no gradients at all: nothing happens
    live.grad = torch.ones(3)
    opt.step()
    assert torch.equal(frozen, torch.ones(3))
    assert opt.state[frozen] == {}
    assert (live < 1).all()


def test_step_with_closure_returns_the_loss():
    w = torch.nn.Parameter(torch.tensor([3.0]))
    opt = ro.SGD([w], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (w**2).sum()
        loss.backward()
        return loss

    assert float(opt.step(closure).detach()) == 9.0
    torch.testing.assert_close(w.detach(), torch.tensor([2.4]))
