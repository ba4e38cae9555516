"""Drop-in for torch.optim, measured as a PyTorch user meets it.

* torch's own optimizer test matrix (``optim_db`` in the torch wheel: every CPU configuration
  of SGD, Adagrad, RMSprop, Adam, AdamW and NAdam, implementation flags included), each
  constructed with exactly torch's keyword arguments, stepped with the same gradients on
  both engines, parameters and state compared, state dicts moved both ways;
* torch's signatures (positional order included), param-group keys, tensor ``lr`` and betas;
* what each implementation flag does (``foreach``, ``fused``, ``capturable``,
  ``differentiable``), and the clear errors where one cannot be honoured;
* torch's ``zero_grad`` semantics on flat storage and per-parameter step counts in state
  dicts, in both directions;
* the default engine (which one, when it compiles, and the log line when it does);
* copies (deepcopy, pickle) step as the original.
"""

from __future__ import annotations

import copy
import inspect
import io
import logging
import sys
import types
import unittest

import pytest
import torch
import torch._dynamo.testing

import ravine.optim as ro
from ravine.optim.engine import COMPILE_MIN_NUMEL
from ravine.optim.flat import FusedKernels

PAIRS = {
    "SGD": (ro.SGD, torch.optim.SGD),
    "Adagrad": (ro.Adagrad, torch.optim.Adagrad),
    "RMSprop": (ro.RMSprop, torch.optim.RMSprop),
    "Adam": (ro.Adam, torch.optim.Adam),
    "AdamW": (ro.AdamW, torch.optim.AdamW),
    "NAdam": (ro.NAdam, torch.optim.NAdam),
}
SHAPES = [(5, 3), (4,), (0,), (2, 2)]
STEPS = 4  # two, then state dicts cross over, then two more
TOL = {"rtol": 1e-13, "atol": 1e-15}


@pytest.fixture(autouse=True)
def _float64_default():
    # torch keeps step counts, and NAdam's mu_product, in the default dtype: in float32 torch
    # itself would drift 1e-10 from a float64 computation.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


# -- torch's optim_db --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def optim_db_configs() -> dict[str, list[tuple[str, dict]]]:
    """name -> [(description, kwargs)]: what torch's own tests construct on CPU, flags included
    (``_get_optim_inputs_including_global_cliquey_kwargs``: each configuration with every flag
    False, then with each supported flag True)."""
    try:
        import expecttest  # noqa: F401
    except ImportError:
        # torch.testing._internal imports it only to subclass its TestCase; this suite does
        # not use that class, so a stand-in spares a dependency.
        stub = types.ModuleType("expecttest")
        stub.TestCase = unittest.TestCase
        stub.ACCEPT = False
        sys.modules["expecttest"] = stub
    from torch.testing._internal.common_optimizers import (
        _get_optim_inputs_including_global_cliquey_kwargs,
        optim_db,
    )

    configs: dict[str, list[tuple[str, dict]]] = {}
    for info in optim_db:
        name = info.optim_cls.__name__
        if name in PAIRS:
            inputs = _get_optim_inputs_including_global_cliquey_kwargs("cpu", torch.float64, info)
            configs[name] = [(i.desc, i.kwargs) for i in inputs]
    return configs


def test_optim_db_holds_every_configuration(optim_db_configs):
    # 108 in torch 2.13: a matrix that lost rows (an import change, a filter) would pass quietly.
    assert set(optim_db_configs) == set(PAIRS)
    assert sum(map(len, optim_db_configs.values())) >= 108


def _grads(step: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return [torch.randn(s, generator=g) for s in SHAPES]


def _start() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(12345)
    return [torch.randn(s, generator=g) for s in SHAPES]


def _leaves() -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(t.clone()) for t in _start()]


def _step(opt, params, step):
    for p, g in zip(params, _grads(step), strict=True):
        p.grad = g
    if step == 1:
        params[3].grad = None  # no gradient on this step: not updated, one step behind
    opt.step()


def _assert_same(ours, theirs, opt_ours, opt_theirs, where):
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        torch.testing.assert_close(a, b, **TOL, msg=lambda m, i=i: f"{where}, param {i}: {m}")
    state_ours = opt_ours.state_dict()["state"]
    for index, state in opt_theirs.state_dict()["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                mine = state_ours[index][key]
                torch.testing.assert_close(
                    mine.to(value), value, **TOL, msg=lambda m, k=key: f"{where}, {k}: {m}"
                )


def _run_config(ravine_cls, torch_cls, kwargs, extra):
    """Construct with torch's kwargs (plus ``extra``: an engine), step both the same way, and
    cross the state dicts over half-way: torch continues from ravine's, ravine from torch's."""
    ours, theirs = _leaves(), _leaves()
    opt_ours = ravine_cls(ours, **copy.deepcopy(kwargs), **extra)
    opt_theirs = torch_cls(theirs, **copy.deepcopy(kwargs))
    for step in range(STEPS // 2):
        _step(opt_ours, ours, step)
        _step(opt_theirs, theirs, step)
    _assert_same(ours, theirs, opt_ours, opt_theirs, "before the cross-over")
    # torch from ravine's state dict, ravine from torch's, over copies of the parameters
    torch_resumed = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    ravine_resumed = [torch.nn.Parameter(p.detach().clone()) for p in theirs]
    opt_torch_resumed = torch_cls(torch_resumed, **copy.deepcopy(kwargs))
    opt_torch_resumed.load_state_dict(_saved(opt_ours))
    opt_ravine_resumed = ravine_cls(ravine_resumed, **copy.deepcopy(kwargs), **extra)
    opt_ravine_resumed.load_state_dict(_saved(opt_theirs))
    runs = [
        (ours, opt_ours),
        (theirs, opt_theirs),
        (torch_resumed, opt_torch_resumed),
        (ravine_resumed, opt_ravine_resumed),
    ]
    for step in range(STEPS // 2, STEPS):
        for params, opt in runs:
            _step(opt, params, step)
    _assert_same(ours, theirs, opt_ours, opt_theirs, "ravine")
    _assert_same(torch_resumed, theirs, opt_torch_resumed, opt_theirs, "torch from ravine's")
    _assert_same(ravine_resumed, theirs, opt_ravine_resumed, opt_theirs, "ravine from torch's")
    return opt_ours


def _saved(opt):
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def _run_differentiable(ravine_cls, torch_cls, kwargs):
    """differentiable=True: the update is recorded by autograd. Over non-leaf parameters (as
    torch's own differentiable tests use them), the values must equal torch's, and the
    gradient of the result with respect to the starting point must pass ``gradcheck``
    (finite differences). torch's own autograd through several of its steps is no
    reference: it fails where its in-place state updates overwrite what backward needs
    (Adam with amsgrad and weight decay, centered RMSprop), and its SGD detaches the first
    momentum buffer, dropping that path from the gradient. ravine's stages are pure, so
    autograd follows every step."""
    results = []
    for cls in (ravine_cls, torch_cls):
        params = [t.clone().requires_grad_(True).clone() for t in _start()]
        opt = _differentiable_run(cls, kwargs, params)
        results.append(([p.detach() for p in params], opt))
    (ours, opt), (theirs, _) = results
    assert opt.engine == "simple"
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, **TOL)
    _gradcheck(ravine_cls, kwargs)


def _differentiable_run(cls, kwargs, params):
    for p in params:
        if p.requires_grad and not p.is_leaf:
            p.retain_grad()  # (reading a non-leaf's None .grad would warn otherwise)
    opt = cls(params, **copy.deepcopy(kwargs))
    for step in range(STEPS):
        _step(opt, params, step)
    return opt


def _gradcheck(cls, kwargs):
    start = _start()
    inputs = [t.clone().requires_grad_(True) for t in start if t.numel()]

    def unrolled(*leaves):
        it = iter(leaves)
        params = [next(it).clone() if t.numel() else t.clone() for t in start]
        _differentiable_run(cls, kwargs, params)
        return tuple(p for p in params if p.numel())

    assert torch.autograd.gradcheck(unrolled, inputs, fast_mode=True)


@pytest.mark.parametrize("name", list(PAIRS))
def test_torch_optim_db_matrix_on_both_engines(name, optim_db_configs):
    ravine_cls, torch_cls = PAIRS[name]
    failures, ran = [], 0
    for desc, kwargs in optim_db_configs[name]:
        try:
            if kwargs.get("differentiable"):
                _run_differentiable(ravine_cls, torch_cls, kwargs)
                with pytest.raises(ValueError, match="differentiable=True needs engine='simple'"):
                    ravine_cls(_leaves(), **kwargs, engine="flat")
                ran += 1
                continue
            # Exactly torch's kwargs: the default engine (flat; a fused=True asks for it).
            opt = _run_config(ravine_cls, torch_cls, kwargs, {})
            assert opt.engine == "flat" and opt._buckets, "the default engine is flat storage"
            if kwargs.get("fused"):
                with pytest.raises(ValueError, match="fused=True asks for a fused"):
                    ravine_cls(_leaves(), **kwargs, engine="simple")
            else:
                _run_config(ravine_cls, torch_cls, kwargs, {"engine": "simple"})
            ran += 1
        except Exception as error:  # (all configurations run; every failure is reported)
            failures.append(f"{desc} {kwargs}: {type(error).__name__}: {error}")
    assert not failures, f"{len(failures)} of {ran + len(failures)} failed:\n" + "\n".join(failures)


# -- signatures, param groups, tensor hyperparameters --------------------------------------------


@pytest.mark.parametrize("name", list(PAIRS))
def test_signature_is_torchs_positional_order_included(name):
    ravine_cls, torch_cls = PAIRS[name]
    ours = inspect.signature(ravine_cls.__init__).parameters
    if name == "AdamW":  # (AdamW spells out its own arguments and passes the rest to Adam)
        ours = {**inspect.signature(ro.Adam.__init__).parameters, **ours}
    theirs = inspect.signature(torch_cls.__init__).parameters
    positional = [k for k, p in theirs.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert [k for k, p in ours.items() if p.kind is p.POSITIONAL_OR_KEYWORD][: len(positional)] == (
        positional
    )
    for key, parameter in theirs.items():
        assert key in ours, key
        if parameter.default is not parameter.empty:
            assert ours[key].default == parameter.default, key
        if parameter.kind is parameter.KEYWORD_ONLY:
            assert ours[key].kind in (parameter.KEYWORD_ONLY, parameter.VAR_KEYWORD), key


@pytest.mark.parametrize("name", list(PAIRS))
def test_param_groups_carry_torchs_keys_with_torchs_defaults(name):
    ravine_cls, torch_cls = PAIRS[name]
    ours = ravine_cls(_leaves()).param_groups[0]
    theirs = torch_cls(_leaves()).param_groups[0]
    for key, value in theirs.items():
        if key != "params":
            assert key in ours and ours[key] == value, key


def test_positional_flags_land_where_torch_puts_them():
    # RMSprop(params, lr, alpha, eps, weight_decay, momentum, centered, capturable, foreach,
    # maximize, differentiable); Adagrad's foreach follows eps.
    opt = ro.RMSprop(_leaves(), 0.01, 0.9, 1e-8, 0.0, 0.5, True, False, None, True)
    group = opt.param_groups[0]
    assert (group["centered"], group["capturable"], group["maximize"]) == (True, False, True)
    assert ro.Adagrad(_leaves(), 0.1, 0.0, 0.0, 0.0, 1e-10, True).engine == "flat"


@pytest.mark.parametrize("engine", ["simple", "flat"])
def test_tensor_lr_and_betas_match_torch_and_follow_a_scheduler(engine):
    ours, theirs = _leaves(), _leaves()
    hyper = {"lr": torch.tensor(0.01), "betas": (torch.tensor(0.8), torch.tensor(0.99))}
    opt_ours = ro.Adam(ours, **copy.deepcopy(hyper), engine=engine, compile=False)
    opt_theirs = torch.optim.Adam(theirs, **copy.deepcopy(hyper))
    assert isinstance(opt_ours.param_groups[0]["lr"], torch.Tensor)  # kept, as torch keeps it
    scheds = [
        torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5) for o in (opt_ours, opt_theirs)
    ]
    for step in range(6):
        for opt, params, sched in ((opt_ours, ours, scheds[0]), (opt_theirs, theirs, scheds[1])):
            for p, g in zip(params, _grads(step), strict=True):
                p.grad = g
            opt.step()
            sched.step()
    assert float(opt_ours.param_groups[0]["lr"]) == float(opt_theirs.param_groups[0]["lr"])
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, **TOL)


def test_a_tensor_lr_of_several_elements_is_refused_clearly():
    with pytest.raises(ValueError, match="lr must be a number"):
        ro.Adam(_leaves(), lr=torch.tensor([0.1, 0.2]))


# -- implementation flags ----------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["foreach", "fused"])
def test_foreach_and_fused_select_the_flat_engine_and_false_changes_nothing(flag):
    assert ro.Adam(_leaves(), **{flag: True}).engine == "flat"
    assert ro.Adam(_leaves(), **{flag: False}).engine == ro.Adam(_leaves()).engine
    assert ro.Adam(_leaves(), **{flag: False}, engine="simple").engine == "simple"
    with pytest.raises(ValueError, match=f"{flag}=True asks for a fused multi-tensor step"):
        ro.Adam(_leaves(), **{flag: True}, engine="simple")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fused": True, "foreach": True}, "fused=True and foreach=True cannot be set together"),
        ({"fused": True, "differentiable": True}, "fused=True does not support differentiable"),
        ({"capturable": True}, "capturable=True is not supported.*torch.optim"),
        ({"differentiable": True, "engine": "flat"}, "differentiable=True needs engine='simple'"),
        ({"fused": "yes"}, "fused must be None, True or False"),
        ({"differentiable": 1}, "differentiable must be True or False"),
    ],
)
def test_flags_that_cannot_be_honoured_are_refused_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ro.Adam(_leaves(), **kwargs)


def test_a_groups_own_flags_are_checked_against_the_optimizer():
    with pytest.raises(ValueError, match="capturable=True is not supported"):
        ro.Adam([{"params": _leaves(), "capturable": True}])
    with pytest.raises(ValueError, match="differentiable is set per optimizer"):
        ro.Adam([{"params": _leaves(), "differentiable": True}])
    opt = ro.Adam([{"params": _leaves(), "fused": True}])  # the default engine is flat
    assert opt.param_groups[0]["fused"] is True


def test_differentiable_step_lets_autograd_follow_lr():
    # Meta-learning: d(loss after a step) / d(lr), the reason torch has differentiable=True.
    grads = {}
    for cls in (ro.SGD, torch.optim.SGD):
        lr = torch.tensor(0.1, requires_grad=True)
        w = torch.ones(3, requires_grad=True).clone()
        opt = cls([w], lr=lr, momentum=0.9, differentiable=True)
        w.grad = torch.tensor([1.0, 2.0, 3.0])
        opt.step()
        (grads[cls],) = torch.autograd.grad(w.sum(), lr)
    assert grads[ro.SGD] == grads[torch.optim.SGD] == -6.0


# -- flat storage with torch's semantics -------------------------------------------------------


def _model_run(make, steps=20, skip=(3, 7, 8)):
    """A small network where one parameter gets no gradient on some steps (``zero_grad()``
    leaves it None): torch does not update it, and neither may any ravine engine."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    extra = torch.nn.Parameter(torch.randn(8))
    opt = make([*model.parameters(), extra])
    g = torch.Generator().manual_seed(1)
    for step in range(steps):
        opt.zero_grad()
        x = torch.randn(16, 6, generator=g)
        hidden = model[1](model[0](x))
        loss = model[2](hidden).pow(2).mean()
        if step not in skip:
            loss = loss + (hidden * extra).mean()
        loss.backward()
        if step in skip:
            assert extra.grad is None
        opt.step()
    return [*model.parameters(), extra], opt


@pytest.mark.parametrize("engine", ["simple", "flat"])
@pytest.mark.parametrize("name", ["SGD", "Adam", "NAdam", "Adagrad"])
def test_zero_grad_to_none_skips_the_parameter_as_torch_does(name, engine):
    ravine_cls, torch_cls = PAIRS[name]
    hyper = {"lr": 0.01, "momentum": 0.9} if name == "SGD" else {"lr": 0.01}
    expected, reference = _model_run(lambda ps: torch_cls(ps, **hyper))
    got, opt = _model_run(lambda ps: ravine_cls(ps, **hyper, engine=engine, compile=False))
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, **TOL)
    steps = [float(s["step"]) for s in opt.state_dict()["state"].values()]
    if name != "SGD":  # (torch's SGD counts no steps)
        assert steps == [float(s["step"]) for s in reference.state_dict()["state"].values()]
    assert steps[-1] == 17 and steps[0] == 20


@pytest.mark.parametrize("name", ["Adam", "NAdam", "RMSprop"])
def test_torch_resumes_exactly_from_a_flat_checkpoint_and_back(name):
    ravine_cls, torch_cls = PAIRS[name]
    # Ten steps, on three of which the last parameter got no gradient: counts 10 and 7.
    ref_params, reference = _model_run(lambda ps: torch_cls(ps, lr=0.01), steps=10)
    flat = {"engine": "flat", "compile": False}
    flat_params, opt_flat = _model_run(lambda ps: ravine_cls(ps, lr=0.01, **flat), steps=10)
    saved = _saved(opt_flat)
    # One tensor per parameter (distinct objects), as torch's own state dicts have them.
    steps = [s["step"] for s in saved["state"].values()]
    assert len({id(s) for s in steps}) == len(steps)
    assert [float(s) for s in steps] == [10.0] * 4 + [7.0]
    torch_from_flat = [torch.nn.Parameter(p.detach().clone()) for p in flat_params]
    opt_torch_from_flat = torch_cls(torch_from_flat, lr=0.01)
    opt_torch_from_flat.load_state_dict(saved)
    flat_from_torch = [torch.nn.Parameter(p.detach().clone()) for p in ref_params]
    opt_flat_from_torch = ravine_cls(flat_from_torch, lr=0.01, **flat)
    opt_flat_from_torch.load_state_dict(_saved(reference))
    runs = [
        (ref_params, reference),
        (flat_params, opt_flat),
        (torch_from_flat, opt_torch_from_flat),
        (flat_from_torch, opt_flat_from_torch),
    ]
    g = torch.Generator().manual_seed(5)
    for step in range(5):
        grads = [torch.randn(p.shape, generator=g) for p in ref_params]
        for params, opt in runs:
            for p, grad in zip(params, grads, strict=True):
                p.grad = None if (step == 2 and p is params[-1]) else grad.clone()
            opt.step()
    for params, opt in runs[1:]:
        _assert_same(params, ref_params, opt, reference, type(opt).__module__)


def test_zero_grad_keeping_tensors_zeroes_flat_storage_in_place():
    params = _leaves()
    opt = ro.Adam(params, engine="flat", compile=False)
    for step in range(2):
        _step(opt, params, step)
    views = [p.grad for p in params]
    opt.zero_grad(set_to_none=False)
    assert params[3].grad is None  # None stays None, as in torch
    assert all(p.grad is v and not v.any() for p, v in zip(params[:3], views[:3], strict=True))
    opt.zero_grad()
    assert all(p.grad is None for p in params)


# -- the default engine --------------------------------------------------------------------------


def test_the_default_engine_is_flat_and_compiles_only_large_models():
    small = ro.Adam(_leaves())
    assert (small.engine, small._kernels.compile) == ("flat", False)
    big = torch.nn.Parameter(torch.zeros(COMPILE_MIN_NUMEL, dtype=torch.float32))
    assert ro.Adam([big])._kernels.compile
    assert not ro.Adam([big], compile=False)._kernels.compile
    assert ro.Adam(_leaves(), engine="flat")._kernels.compile  # (an explicit flat compiles)
    assert ro.Adam(_leaves(), engine="simple").engine == "simple"
    assert ro.Adam(_leaves(), differentiable=True).engine == "simple"
    complex_param = torch.nn.Parameter(torch.zeros(2, dtype=torch.complex64))
    assert ro.Adam([complex_param]).engine == "simple"
    # Member groups keep their (N, ...) layout: member k computes what its own run does.
    stacked = torch.nn.Parameter(torch.zeros(3, 2))
    assert ro.Adam([stacked], members=3).engine == "simple"
    assert ro.Adam([stacked], members=3, engine="flat").engine == "flat"


def test_a_compile_is_announced_in_the_log(caplog):
    params = _leaves()
    opt = ro.Adam(params, engine="flat")
    opt._kernels = FusedKernels(compile=True, backend=torch._dynamo.testing.CompileCounter())
    with caplog.at_level(logging.INFO, logger="ravine.optim"):
        _step(opt, params, 0)
        _step(opt, params, 1)
    messages = [r.getMessage() for r in caplog.records if r.name == "ravine.optim"]
    assert len(messages) == 2, messages  # one compile (start and end), not one per step
    assert (
        "compiling the flat engine's fused step (ScaleByAdam; 23 parameters, float64, cpu)"
        in (messages[0])
    )
    assert messages[1].startswith("ravine.optim: compiled in ")


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize("engine", ["auto", "simple", "flat"])
def test_copies_step_identically(engine, how):
    params = _leaves()
    opt = ro.NAdam(params, lr=0.01, engine=engine, compile=False)
    for step in range(2):
        _step(opt, params, step)
    clone = copy.deepcopy(opt) if how == "deepcopy" else _unpickled(opt)
    copies = clone.param_groups[0]["params"]
    assert clone.engine == opt.engine
    for step in range(2, 5):
        _step(opt, params, step)
        _step(clone, copies, step)
    for a, b in zip(params, copies, strict=True):
        assert a is not b and torch.equal(a, b)
    states = [o.state_dict()["state"].values() for o in (opt, clone)]
    for a, b in zip(*states, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)


def _unpickled(opt):
    buffer = io.BytesIO()
    torch.save(opt, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)
