"""The flat engine against the simple engine: same numbers, views into flat storage, repairs
and fallbacks, and no recompilation when hyperparameters change."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch._dynamo.testing

import ravine.optim as ro
from ravine.optim.flat import FusedKernels

SHAPES = [(7, 5), (5,), (0,), (3, 4, 2), (1,)]
HYPER = {"lr": 0.01, "weight_decay": 0.01, "max_grad_norm": 2.0}


def _model(seed: int) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g)) for s in SHAPES]


def _groups(params):
    return [{"params": params[:2]}, {"params": params[2:], "lr": 0.003}]


def _loss(params, step):
    g = torch.Generator().manual_seed(step)
    return sum((torch.randn(p.shape, generator=g) * p).sum() + p.pow(2).sum() for p in params)


def _run(opt, params, steps, *, set_to_none=False):
    for step in range(steps):
        if set_to_none:
            for p in params:
                p.grad = None  # what model.zero_grad() does
        else:
            opt.zero_grad(set_to_none=False)  # the flat engine zeroes its buffer in place
        _loss(params, step).backward()
        opt.step()


@pytest.mark.parametrize("name", list(ro.OPTIMIZERS))
def test_flat_equals_simple_float32_after_100_steps(name):
    simple, flat = _model(0), _model(0)
    opt_simple = ro.make_optimizer(name, _groups(simple), **HYPER, engine="simple")
    opt_flat = ro.make_optimizer(name, _groups(flat), **HYPER, engine="flat", compile=False)
    _run(opt_simple, simple, 100)
    _run(opt_flat, flat, 100)
    for a, b in zip(simple, flat, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)
    state_simple, state_flat = opt_simple.state_dict(), opt_flat.state_dict()
    for index, state in state_simple["state"].items():
        for key, value in state.items():
            torch.testing.assert_close(
                state_flat["state"][index][key].to(value), value, rtol=1e-6, atol=1e-6
            )


def test_parameters_gradients_and_state_are_views_into_flat_storage():
    params = _model(1)
    opt = ro.Adam(_groups(params), lr=0.01, engine="flat", compile=False)
    _run(opt, params, 2)
    first, second = opt._buckets
    assert first.params == params[:2] and second.params == params[2:]
    for bucket in opt._buckets:
        for p, offset in zip(bucket.params, bucket.offsets, strict=True):
            if p.numel() == 0:
                continue  # no storage to point into
            size = p.element_size()
            assert p.data_ptr() == bucket.param.data_ptr() + offset * size
            assert p.grad.data_ptr() == bucket.grad.data_ptr() + offset * size
            exp_avg = opt.state[p]["exp_avg"]
            assert exp_avg.data_ptr() == bucket.state["exp_avg"].data_ptr() + offset * size
    grads = {id(p): p.grad for p in params}
    _run(opt, params, 1)
    assert all(p.grad is grads[id(p)] for p in params)  # backward wrote into the views


def test_replaced_gradients_and_loaded_state_are_copied_in():
    reference, flat = _model(2), _model(2)
    opt_ref = ro.NAdam(_groups(reference), lr=0.01, engine="simple")
    opt_flat = ro.NAdam(_groups(flat), lr=0.01, engine="flat", compile=False)
    _run(opt_ref, reference, 5)
    _run(opt_flat, flat, 5, set_to_none=True)  # fresh .grad tensors every step: copied in
    for a, b in zip(reference, flat, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)
    saved_state = copy.deepcopy(opt_flat.state_dict())
    saved_params = [p.detach().clone() for p in flat]
    _run(opt_flat, flat, 3)  # wander off...
    for p, saved in zip(flat, saved_params, strict=True):
        p.data.copy_(saved)  # ...and come back to step 5: parameters in place, state loaded
    opt_flat.load_state_dict(saved_state)
    _run(opt_ref, reference, 5)
    _run(opt_flat, flat, 5)
    for a, b in zip(reference, flat, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)


def test_state_dicts_move_between_engines():
    simple, flat = _model(3), _model(3)
    opt_simple = ro.RMSprop(_groups(simple), lr=0.01, momentum=0.5, centered=True, engine="simple")
    _run(opt_simple, simple, 4)
    for p, q in zip(flat, simple, strict=True):
        p.data.copy_(q.data)
    opt_flat = ro.RMSprop(
        _groups(flat), lr=0.01, momentum=0.5, centered=True, engine="flat", compile=False
    )
    opt_flat.load_state_dict(copy.deepcopy(opt_simple.state_dict()))
    _run(opt_simple, simple, 6)
    _run(opt_flat, flat, 6)
    for a, b in zip(simple, flat, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)
    back = ro.RMSprop(_groups(_model(3)), lr=0.01, momentum=0.5, centered=True, engine="simple")
    back.load_state_dict(copy.deepcopy(opt_flat.state_dict()))  # and the other way
    assert back.state_dict()["state"][0]["step"] == 10


def test_missing_gradient_is_skipped_on_flat_storage_and_stays_correct():
    simple, flat = _model(4), _model(4)
    opt_simple = ro.Adam(simple, lr=0.01, engine="simple")
    opt_flat = ro.Adam(flat, lr=0.01, engine="flat", compile=False)
    for opt, params in ((opt_simple, simple), (opt_flat, flat)):
        _run(opt, params, 2)
    buckets = opt_flat._buckets
    for opt, params in ((opt_simple, simple), (opt_flat, flat)):
        opt.zero_grad()
        _loss(params, 7).backward()
        params[1].grad = None  # this parameter took no part in this step
    before = flat[1].detach().clone(), opt_flat.state[flat[1]]["exp_avg"].clone()
    opt_simple.step()
    opt_flat.step()  # the others are updated, this one is not: as torch.optim does
    assert torch.equal(flat[1], before[0]) and torch.equal(
        opt_flat.state[flat[1]]["exp_avg"], before[1]
    )
    _run(opt_simple, simple, 3)
    _run(opt_flat, flat, 3)  # counts now differ: parameter 1 is one step behind, still flat
    assert opt_flat._buckets is buckets  # no rebuild, no fallback (a warning would fail)
    assert [float(opt_flat.state[p]["step"]) for p in flat] == [6, 5, 6, 6, 6]
    for a, b in zip(simple, flat, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)
    for p, q in zip(simple, flat, strict=True):
        for key, value in opt_simple.state[p].items():
            torch.testing.assert_close(opt_flat.state[q][key], value, rtol=1e-6, atol=1e-6)


def test_freezing_a_parameter_later_rebuilds_the_layout():
    simple, flat = _model(5), _model(5)
    opt_simple = ro.SGD(simple, lr=0.01, momentum=0.9, engine="simple")
    opt_flat = ro.SGD(flat, lr=0.01, momentum=0.9, engine="flat", compile=False)
    _run(opt_simple, simple, 3)
    _run(opt_flat, flat, 3)
    for params in (simple, flat):
        params[0].requires_grad_(False)
        params[0].grad = None
    _run(opt_simple, simple, 3)
    _run(opt_flat, flat, 3)
    assert all(p is not flat[0] for p in opt_flat._buckets[0].params)
    for a, b in zip(simple, flat, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("guarded", [False, True], ids=["host-branch", "sync-free"])
def test_nonfinite_skip_on_the_flat_engine(guarded):
    params = _model(6)
    opt = ro.Adam(params, lr=0.01, nonfinite="skip", engine="flat", compile=False)
    opt._force_guarded = guarded
    _assert_poisoned_step_is_refused(opt, params, (3, (0, 0, 0)), float("inf"))


def _assert_poisoned_step_is_refused(opt, params, where, bad):
    _run(opt, params, 2)
    before = [p.detach().clone() for p in params]
    state_before = copy.deepcopy(opt.state_dict()["state"])
    opt.zero_grad()
    _loss(params, 9).backward()
    index, element = where
    params[index].grad[element] = bad
    opt.step()
    assert opt.skipped_steps == 1
    for p, b in zip(params, before, strict=True):
        assert torch.equal(p.detach(), b)
    state = opt.state_dict()["state"]
    for index, values in state_before.items():
        for key, value in values.items():
            assert torch.equal(torch.as_tensor(state[index][key]).to(value), value), key


def test_compiled_flat_engine_matches_and_does_not_recompile_when_lr_changes():
    counter = torch._dynamo.testing.CompileCounter()
    simple, flat = _model(7), _model(7)
    opt_simple = ro.Adam(simple, lr=0.01, betas=(0.9, 0.99), engine="simple")
    opt_flat = ro.Adam(flat, lr=0.01, betas=(0.9, 0.99), engine="flat")
    opt_flat._kernels = FusedKernels(compile=True, backend=counter)
    schedules = [
        torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=12)
        for opt in (opt_simple, opt_flat)
    ]  # changes lr and beta1 on every step
    for step in range(12):
        for opt, params, schedule in zip(
            (opt_simple, opt_flat), (simple, flat), schedules, strict=True
        ):
            opt.zero_grad()
            _loss(params, step).backward()
            opt.step()
            schedule.step()
    assert counter.frame_count == 1
    for a, b in zip(simple, flat, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)


@pytest.mark.slow  # inductor compiles a C++ kernel per optimizer (~5 s each, cold)
@pytest.mark.parametrize("name", list(ro.OPTIMIZERS))
def test_inductor_compiled_kernels_equal_the_simple_engine(name):
    # What users run: the kernels inductor generates, not the traced graph run eagerly.
    simple, flat = _model(5), _model(5)
    opt_simple = ro.make_optimizer(name, _groups(simple), **HYPER, engine="simple")
    opt_flat = ro.make_optimizer(name, _groups(flat), **HYPER, engine="flat")
    _run(opt_simple, simple, 20)
    _run(opt_flat, flat, 20)
    assert opt_flat._kernels.compiling, "torch.compile failed; the flat engine ran eagerly"
    for a, b in zip(simple, flat, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_inductor_compiled_sync_free_step_refuses_nonfinite_gradients():
    params = _model(6)
    opt = ro.Adam(params, lr=0.01, nonfinite="skip", engine="flat")
    opt._force_guarded = True  # the accelerator's path: commit through torch.where
    _assert_poisoned_step_is_refused(opt, params, (0, (1, 1)), float("nan"))
    assert opt._kernels.compiling


def test_every_structure_compiles_past_dynamos_recompile_limit():
    # Dynamo gives up on a code object after 8 variants; a sweep over optimizer settings in
    # one process must not fall back to eager from the ninth configuration on.
    counter = torch._dynamo.testing.CompileCounter()
    configs = [
        ("sgd", {}),
        ("sgd", {"weight_decay": 0.1}),
        ("momentum", {}),
        ("nesterov", {}),
        ("adagrad", {}),
        ("rmsprop", {}),
        ("rmsprop", {"centered": True}),
        ("rmsprop", {"momentum": 0.9}),
        ("adam", {}),
        ("adam", {"amsgrad": True}),
        ("adamw", {}),
        ("nadam", {}),
    ]
    for name, hyper in configs:
        params = _model(1)
        opt = ro.make_optimizer(name, params, lr=0.01, engine="flat", **hyper)
        opt._kernels = FusedKernels(compile=True, backend=counter)
        _run(opt, params, 2)
        assert not opt._kernels.compile_failed, (name, hyper)
    assert counter.frame_count == len(configs)


def test_buckets_of_different_sizes_share_one_kernel():
    counter = torch._dynamo.testing.CompileCounter()
    shapes = [(7, 5), (5,), (0,), (3, 4, 2), (6, 2)]
    simple, flat = ([torch.nn.Parameter(torch.randn(s)) for s in shapes] for _ in range(2))
    for a, b in zip(simple, flat, strict=True):
        b.data.copy_(a.data)
    opt_simple = ro.Adam([{"params": [p]} for p in simple], lr=0.01, engine="simple")
    opt_flat = ro.Adam([{"params": [p]} for p in flat], lr=0.01, engine="flat")
    opt_flat._kernels = FusedKernels(compile=True, backend=counter)
    _run(opt_simple, simple, 3)
    _run(opt_flat, flat, 3)
    # Four sizes: compiled static, then once more with a symbolic size; the empty bucket has
    # nothing to compute (its step count still advances).
    assert counter.frame_count == 2
    assert opt_flat.state[flat[2]]["step"] == 3
    for a, b in zip(simple, flat, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)


def test_unknown_engine_is_rejected():
    with pytest.raises(ValueError, match="engine must be one of auto, simple, flat; got 'fast'"):
        ro.Adam(_model(0), engine="fast")


def _bf16_run(engine, state_dtype, steps=30, name="adam"):
    g = torch.Generator().manual_seed(11)
    base = [torch.randn(s, generator=g) for s in ((40, 30), (30,))]
    params = [torch.nn.Parameter(b.clone().to(torch.bfloat16)) for b in base]
    opt = ro.make_optimizer(
        name, params, lr=0.01, state_dtype=state_dtype, engine=engine, compile=False
    )
    reference = [torch.nn.Parameter(b.clone()) for b in base]
    opt_reference = ro.make_optimizer(name, reference, lr=0.01, engine="simple")
    for _ in range(steps):
        grads = [torch.randn(b.shape, generator=g) for b in base]
        for p, q, grad in zip(params, reference, grads, strict=True):
            p.grad, q.grad = grad.to(torch.bfloat16), grad.clone()
        opt.step()
        opt_reference.step()
    return params, opt, reference


@pytest.mark.parametrize("engine", ["simple", "flat"])
def test_bf16_parameters_with_fp32_state(engine):
    params, opt, _ = _bf16_run(engine, torch.float32)
    assert all(p.dtype == torch.bfloat16 for p in params)
    for p in params:
        assert opt.state[p]["exp_avg"].dtype == torch.float32
        assert opt.state[p]["exp_avg_sq"].dtype == torch.float32
    # Same maths in both engines: the same bf16 result.
    other, _, _ = _bf16_run("flat" if engine == "simple" else "simple", torch.float32)
    for a, b in zip(params, other, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # The moments, fed the same bf16 gradients, stay closer to an fp32 run's in fp32 state.
    # (The parameters themselves are rounded to bf16 on every write: without fp32 master
    # weights their error is the same either way.)
    low, low_opt, _ = _bf16_run(engine, None)
    # The second moment an fp32 run computes from the same (bf16-rounded) gradients:
    g = torch.Generator().manual_seed(11)
    base = [torch.randn(s, generator=g) for s in ((40, 30), (30,))]
    reference_state = [torch.zeros_like(b) for b in base]
    for _ in range(30):
        grads = [torch.randn(b.shape, generator=g) for b in base]
        for i, grad in enumerate(grads):
            bf = grad.to(torch.bfloat16).float()
            reference_state[i] = 0.999 * reference_state[i] + 0.001 * bf * bf
    error_fp32 = sum(
        (opt.state[p]["exp_avg_sq"].float() - r).abs().sum()
        for p, r in zip(params, reference_state, strict=True)
    )
    error_bf16 = sum(
        (low_opt.state[p]["exp_avg_sq"].float() - r).abs().sum()
        for p, r in zip(low, reference_state, strict=True)
    )
    assert error_fp32 < 0.1 * error_bf16


def test_fp32_state_survives_a_state_dict_round_trip():
    params, opt, _ = _bf16_run("simple", torch.float32, steps=3)
    saved = copy.deepcopy(opt.state_dict())
    fresh = ro.Adam(params, lr=0.01, state_dtype=torch.float32)
    fresh.load_state_dict(saved)
    for p in params:
        assert torch.equal(fresh.state[p]["exp_avg"], opt.state[p]["exp_avg"])
        assert fresh.state[p]["exp_avg"].dtype == torch.float32


def test_invalid_state_dtype_is_rejected():
    with pytest.raises(ValueError, match=r"state_dtype must be a floating torch\.dtype"):
        ro.Adam(_model(0), state_dtype=torch.int32)


def test_a_parameter_joining_late_keeps_its_own_step_count():
    """Its first update must use bias correction 1, not the others' count (review finding)."""
    simple, flat = _model(8), _model(8)
    opt_simple = ro.Adam(simple, lr=0.1, engine="simple")
    opt_flat = ro.Adam(flat, lr=0.1, engine="flat", compile=False)
    for opt, params in ((opt_simple, simple), (opt_flat, flat)):
        opt.zero_grad()
        _loss(params, 0).backward()
        params[1].grad = None  # not used on the first step
        opt.step()
    assert opt_flat.state[flat[1]] == {}  # no state before its first update, as in torch
    _run(opt_simple, simple, 3)
    _run(opt_flat, flat, 3)  # it joins the flat storage at its own count (no fallback)
    assert any(p is flat[1] for p in opt_flat._buckets[0].params)
    for a, b in zip(simple, flat, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)
    assert opt_flat.state[flat[1]]["step"] == 3


def test_loaded_scalar_state_stays_on_the_host_in_float64():
    params = _model(9)
    opt = ro.NAdam(params, lr=0.01)
    _run(opt, params, 3)
    fresh = ro.NAdam(params, lr=0.01, state_dtype=torch.float32)
    fresh.load_state_dict(copy.deepcopy(opt.state_dict()))
    mu = fresh.state[params[0]]["mu_product"]
    assert mu.dtype == torch.float64 and mu.device.type == "cpu"
    assert mu == opt.state[params[0]]["mu_product"]


def test_deferred_error_on_the_flat_engine_names_only_the_bad_parameter():
    params = _model(10)
    opt = ro.Adam(params, lr=0.01, engine="flat", compile=False)
    opt._force_guarded = True  # the accelerator's sync-free path, exercised on CPU
    _run(opt, params, 1)
    opt.zero_grad()
    _loss(params, 1).backward()
    params[3].grad[0, 0, 0] = float("nan")
    opt.step()  # refused on the device; the error comes with the next step
    with pytest.raises(ro.NonFiniteGradientError, match=r"gradients of parameter #3 \(3, 4, 2\);"):
        opt.step()


@pytest.mark.parametrize("engine", ["simple", "flat"])
def test_sparse_gradients_get_a_clear_error(engine):
    w = torch.nn.Parameter(torch.zeros(4))
    opt = ro.SGD([w], lr=0.1, engine=engine, compile=False)
    indices, values = torch.tensor([[1]]), torch.tensor([2.0])
    w.grad = torch.sparse_coo_tensor(indices, values, (4,), check_invariants=True)
    with pytest.raises(ValueError, match="sparse"):
        opt.step()


@pytest.mark.parametrize("guarded", [False, True], ids=["host-branch", "sync-free"])
def test_nonfinite_skip_keeps_nadams_scalar_state_on_the_flat_engine(guarded):
    # A refused sync-free step used to commit NAdam's new mu_product (review finding).
    params = _model(6)
    opt = ro.NAdam(params, lr=0.01, nonfinite="skip", engine="flat", compile=False)
    opt._force_guarded = guarded
    _assert_poisoned_step_is_refused(opt, params, (3, (0, 0, 0)), float("nan"))


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize("engine", ["simple", "flat"])
def test_a_copied_optimizer_keeps_its_chain_and_steps_like_the_original(engine, how):
    # torch.optim's __getstate__ keeps only defaults, state and groups: a copy had no chain.
    params = _model(11)
    opt = ro.NAdam(_groups(params), lr=0.01, nonfinite="skip", engine=engine, compile=False)
    _run(opt, params, 2)
    if how == "deepcopy":
        clone = copy.deepcopy(opt)
    else:
        buffer = io.BytesIO()
        torch.save(opt, buffer)
        buffer.seek(0)
        clone = torch.load(buffer, weights_only=False)
    copies = [p for group in clone.param_groups for p in group["params"]]
    assert clone.engine == engine and clone.nonfinite == "skip"
    _run(opt, params, 3)
    _run(clone, copies, 3)
    for a, b in zip(params, copies, strict=True):
        assert a is not b and torch.equal(a, b)
