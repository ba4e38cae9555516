"""Member groups (``members=N``): row k of every stacked parameter is updated exactly as member
k's own optimizer would update that row alone.

One table drives the tests: every registered optimizer with N=4 members whose hyperparameters
differ, over stacked parameters of three shapes (one of them empty) plus a frozen one, checked
in float64 against 4 torch.optim optimizers (the ground truth, clipped by hand with
torch.nn.utils) and 4 ravine optimizers, on both engines.
"""

from __future__ import annotations

import copy
import doctest
import importlib
import io

import pytest
import torch
import torch._dynamo.testing

import ravine.optim as ro
from ravine import schedules
from ravine.optim.flat import FusedKernels

N = 4
SHAPES = [(3, 2), (4,), (0,)]
STEPS = 6
TOL = {"rtol": 1e-12, "atol": 1e-12}
LRS = [0.05, 0.02, 0.1, 0.03]
BETAS = ([0.9, 0.8, 0.95, 0.5], [0.999, 0.99, 0.9, 0.95])
EPS = [1e-8, 1e-6, 1e-3, 1e-10]
DECAY = [0.0, 0.1, 0.01, 0.05]

# registry name -> (torch class, per-member hyperparameters, shared hyperparameters)
MEMBERS = {
    "sgd": (
        torch.optim.SGD,
        {"lr": LRS, "momentum": [0.0, 0.9, 0.5, 0.7], "dampening": [0.1, 0.0, 0.3, 0.0]},
        {"weight_decay": 0.01},
    ),
    "momentum": (
        torch.optim.SGD,
        {"lr": LRS, "momentum": [0.9, 0.5, 0.8, 0.95], "weight_decay": DECAY},
        {},
    ),
    "nesterov": (
        torch.optim.SGD,
        {"lr": LRS, "momentum": [0.9, 0.5, 0.8, 0.95], "weight_decay": DECAY},
        {"nesterov": True},
    ),
    "adagrad": (
        torch.optim.Adagrad,
        {
            "lr": LRS,
            "lr_decay": [0.0, 0.01, 0.1, 0.001],
            "weight_decay": DECAY,
            "initial_accumulator_value": [0.0, 0.1, 1.0, 0.01],
            "eps": EPS,
        },
        {},
    ),
    "rmsprop": (
        torch.optim.RMSprop,
        {
            "lr": [0.01, 0.002, 0.005, 0.001],
            "alpha": [0.99, 0.9, 0.5, 0.95],
            "eps": EPS,
            "weight_decay": DECAY,
            "momentum": [0.0, 0.5, 0.9, 0.3],
        },
        {"centered": True},
    ),
    "adam": (
        torch.optim.Adam,
        {"lr": [0.01, 0.003, 0.02, 0.001], "betas": BETAS, "eps": EPS, "weight_decay": DECAY},
        {"amsgrad": True},
    ),
    "adamw": (
        torch.optim.AdamW,
        {"lr": [0.01, 0.003, 0.02, 0.001], "betas": BETAS, "eps": EPS, "weight_decay": DECAY},
        {},
    ),
    "nadam": (
        torch.optim.NAdam,
        {
            "lr": [0.01, 0.003, 0.02, 0.001],
            "betas": BETAS,
            "eps": EPS,
            "weight_decay": DECAY,
            "momentum_decay": [4e-3, 1e-2, 0.0, 0.1],
        },
        {},
    ),
}

# Clipping, per member (or one value for all), applied by hand to the references.
CLIPS = {
    "no-clip": {},
    "norm": {"max_grad_norm": [0.5, 1.0, 100.0, 0.2]},
    "value+norm": {"clip_value": [0.05, 0.5, 1.0, 10.0], "max_grad_norm": 0.3},
}


@pytest.fixture(autouse=True)
def _float64_scalars():
    # torch.optim keeps step counters (and NAdam's mu_product) in the default dtype.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _member(values, k):
    """Member k's value of a hyperparameter given per member (a list, or a pair of lists)."""
    if isinstance(values, tuple):
        return tuple(_member(v, k) for v in values)
    return values[k] if isinstance(values, list) else values


def _per_member_args(values):
    """The member optimizer's form: lists as tensors (a pair of lists as a pair of tensors)."""
    if isinstance(values, tuple):
        return tuple(_per_member_args(v) for v in values)
    return torch.tensor(values) if isinstance(values, list) else values


def _hyper(name, clip):
    _, per_member, shared = MEMBERS[name]
    return {**per_member, **shared, **CLIPS[clip]}


def _torch_hyper(name, k):
    torch_cls, per_member, shared = MEMBERS[name]
    hyper = {key: _member(v, k) for key, v in {**per_member, **shared}.items()}
    if name in ("momentum", "nesterov"):
        hyper.setdefault("momentum", 0.9)
    return torch_cls, hyper


def _start(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(N, *s, generator=g) for s in SHAPES] + [torch.randn(N, 2, generator=g)]


def _loss(params, step, k):
    """Member k's loss on its own data at ``step``: weights (3, 2), bias (4,), empty, frozen."""
    w, b, empty, frozen = params
    g = torch.Generator().manual_seed(100 * step + k)
    x = torch.randn(5, 3, generator=g)
    hidden = torch.tanh(x @ w) + frozen  # (5, 2)
    return (
        (hidden - 0.3).pow(2).mean() + 0.1 * torch.sin(b).sum() + 0.05 * b.pow(2).sum()
    ) + empty.sum()


class Run:
    """A member optimizer over stacked parameters and, per member, a torch.optim optimizer and a
    ravine optimizer over that member's own copy, stepped in lockstep.

    ``ids[row]`` is the member that row holds (``keep_members`` reorders and drops rows); its
    data, hyperparameters and references follow it.
    """

    def __init__(self, name, engine, clip="no-clip", *, nonfinite="raise", guarded=False):
        start = _start()
        self.name, self.engine, self.clip = name, engine, CLIPS[clip]
        self.ids = list(range(N))
        self.stacked = [torch.nn.Parameter(t.clone()) for t in start]
        self.stacked[3].requires_grad_(False)  # frozen: never gets a gradient
        hyper = {k: _per_member_args(v) for k, v in _hyper(name, clip).items()}
        self.opt = ro.make_optimizer(
            name,
            self.stacked,
            members=N,
            engine=engine,
            compile=False,
            nonfinite=nonfinite,
            **hyper,
        )
        self.opt._force_guarded = guarded
        self.refs, self.ref_opts, self.ours, self.our_opts = [], [], [], []
        for k in range(N):
            torch_cls, torch_hyper = _torch_hyper(name, k)
            self.refs.append(_copy_of_member(start, k))
            self.ref_opts.append(torch_cls(self.refs[-1], **torch_hyper))
            self.ours.append(_copy_of_member(start, k))
            own = {key: _member(v, k) for key, v in _hyper(name, clip).items()}
            self.our_opts.append(
                ro.make_optimizer(name, self.ours[-1], engine=engine, compile=False, **own)
            )
        self.steps = 0

    def keep(self, rows):
        """``keep_members(rows)`` on the member optimizer; the pruned references stop."""
        self.opt.keep_members(torch.tensor(rows))
        self.ids = [self.ids[r] for r in rows]
        for name in ("refs", "ref_opts", "ours", "our_opts"):
            setattr(self, name, [getattr(self, name)[r] for r in rows])

    def step(self, *, poison=None, missing=False):
        """One step of everything; ``poison=(row, value)`` writes ``value`` into that row's
        gradient (its references then skip the step); ``missing``: parameter 1 gets no
        gradient (None)."""
        step = self.steps
        self.opt.zero_grad()
        losses = [_loss([p[r] for p in self.stacked], step, k) for r, k in enumerate(self.ids)]
        sum(losses).backward()
        if missing:
            self._drop_gradient(self.stacked[1])
        if poison is not None:
            self.stacked[0].grad[poison[0], 1, 0] = poison[1]
        self.opt.step()
        for row, k in enumerate(self.ids):
            for params, opt, clip in (
                (self.refs[row], self.ref_opts[row], True),
                (self.ours[row], self.our_opts[row], False),
            ):
                opt.zero_grad()
                _loss(params, step, k).backward()
                if missing:
                    self._drop_gradient(params[1])
                if poison is not None and poison[0] == row:
                    continue  # this member's step is refused
                if clip:
                    self._clip(params, k)
                opt.step()
        self.steps += 1

    @staticmethod
    def _drop_gradient(p):
        p.grad = None  # (both engines: not updated, as torch.optim does)

    def _clip(self, params, k):
        grads = [p for p in params if p.grad is not None]
        if "clip_value" in self.clip:
            torch.nn.utils.clip_grad_value_(grads, _member(self.clip["clip_value"], k))
        if "max_grad_norm" in self.clip:
            torch.nn.utils.clip_grad_norm_(grads, _member(self.clip["max_grad_norm"], k))

    def assert_matches(self):
        """Every row equals its member's references: parameters and state."""
        for row in range(len(self.ids)):
            for reference, opt in (
                (self.refs[row], self.ref_opts[row]),
                (self.ours[row], self.our_opts[row]),
            ):
                for p, q in zip(self.stacked, reference, strict=True):
                    torch.testing.assert_close(p[row], q, **TOL)
                    self._assert_state(self.opt.state.get(p, {}), opt.state.get(q, {}), row)

    @staticmethod
    def _assert_state(ours, theirs, row):
        # torch's SGD keeps no step (the ravine reference does); RMSprop without momentum keeps
        # no momentum buffer (a member group has one when any member has momentum); torch's
        # Adagrad makes state for the frozen parameter too, at step 0.
        if not ours and theirs.get("step") == 0:
            return
        for key, value in theirs.items():
            if value is None:
                continue
            mine = ours[key][row]
            torch.testing.assert_close(mine.to(value), value.reshape(mine.shape), **TOL)


def _copy_of_member(start, k):
    params = [torch.nn.Parameter(t[k].clone()) for t in start]
    params[3].requires_grad_(False)
    return params


def _cases():
    return [pytest.param(name, id=name) for name in ro.OPTIMIZERS]


def test_every_registered_optimizer_has_a_members_row():
    assert set(MEMBERS) == set(ro.OPTIMIZERS)


@pytest.mark.parametrize("clip", list(CLIPS))
@pytest.mark.parametrize("engine", ["simple", "flat"])
@pytest.mark.parametrize("name", _cases())
def test_members_equal_separate_optimizers(name, engine, clip):
    run = Run(name, engine, clip)
    for step in range(STEPS):
        run.step(missing=step == 2)
    run.assert_matches()
    start = _start()
    assert torch.equal(run.stacked[3], start[3])  # frozen: untouched
    assert not torch.equal(run.stacked[0], start[0])  # the run really moved
    assert engine == "simple" or run.opt._buckets, "the flat engine fell back"
    assert run.opt.state[run.stacked[0]]["step"].shape == (N,)


@pytest.mark.parametrize("engine", ["simple", "flat"])
@pytest.mark.parametrize("name", _cases())
def test_sync_free_path_equals_separate_optimizers(name, engine):
    # The accelerator's path (coefficients on the device, commit through torch.where) on CPU.
    run = Run(name, engine, "value+norm", nonfinite="skip", guarded=True)
    for _ in range(STEPS):
        run.step()
    run.assert_matches()
    assert run.opt.skipped_steps == 0


@pytest.mark.parametrize("guarded", [False, True], ids=["host-branch", "sync-free"])
@pytest.mark.parametrize("engine", ["simple", "flat"])
@pytest.mark.parametrize("name", _cases())
def test_nonfinite_gradient_refuses_only_that_member(name, engine, guarded):
    run = Run(name, engine, "norm", nonfinite="skip", guarded=guarded)
    for _ in range(2):
        run.step()
    before = [p.detach().clone() for p in run.stacked]
    state_before = copy.deepcopy(run.opt.state_dict()["state"])
    run.step(poison=(2, float("nan")))
    # Member 2's rows and state are exactly as they were, its step count did not advance.
    for p, b in zip(run.stacked, before, strict=True):
        assert torch.equal(p[2], b[2])
    state = run.opt.state_dict()["state"]
    for index, values in state_before.items():
        for key, value in values.items():
            assert torch.equal(state[index][key][2].to(value), value[2]), key
    assert run.opt.state[run.stacked[0]]["step"].tolist() == [3, 3, 2, 3]
    assert run.opt.refused_members.tolist() == [False, False, True, False]
    assert run.opt.skipped_steps == 1
    assert run.opt.skipped_steps_per_member.tolist() == [0, 0, 1, 0]
    run.assert_matches()  # the others took the step; member 2's references skipped it
    for _ in range(2):
        run.step()
    run.assert_matches()
    assert run.opt.refused_members.tolist() == [False] * N


@pytest.mark.parametrize("engine", ["simple", "flat"])
def test_nonfinite_raise_names_the_members_and_changes_nothing(engine):
    run = Run("adam", engine)
    run.step()
    before = [p.detach().clone() for p in run.stacked]
    run.opt.zero_grad()
    sum(_loss([p[k] for p in run.stacked], 1, k) for k in range(N)).backward()
    run.stacked[0].grad[1, 0, 0] = float("inf")
    run.stacked[0].grad[3, 0, 1] = float("nan")
    with pytest.raises(
        ro.NonFiniteGradientError,
        match=r"in members 1, 3, step refused.*parameter #0 \(4, 3, 2\) member 1: 0 NaN, 1 Inf",
    ):
        run.opt.step()
    for p, b in zip(run.stacked, before, strict=True):
        assert torch.equal(p, b)
    assert run.opt.refused_members.tolist() == [False, True, False, True]


@pytest.mark.parametrize("engine", ["simple", "flat"])
def test_deferred_raise_on_the_sync_free_path_names_the_members(engine):
    run = Run("nadam", engine, guarded=True)
    run.step()
    before = [p.detach().clone() for p in run.stacked]
    run.opt.zero_grad()
    sum(_loss([p[k] for p in run.stacked], 1, k) for k in range(N)).backward()
    run.stacked[1].grad[2, 0] = float("nan")
    run.opt.step()  # refused on the device, for every member; the error comes next
    for p, b in zip(run.stacked, before, strict=True):
        assert torch.equal(p, b)
    assert run.opt.state[run.stacked[0]]["step"].tolist() == [1] * N
    with pytest.raises(ro.NonFiniteGradientError, match=r"of members 2 of parameter #1 \(4, 4\)"):
        run.opt.step()


@pytest.mark.parametrize("engine", ["simple", "flat"])
@pytest.mark.parametrize("name", _cases())
def test_keep_members_then_survivors_continue_as_if_nothing_happened(name, engine):
    run = Run(name, engine, "value+norm")
    for _ in range(3):
        run.step()
    params_before = list(run.stacked)
    run.keep([3, 1])
    assert all(p is q for p, q in zip(run.stacked, params_before, strict=True))  # rebound
    assert [p.shape[0] for p in run.stacked] == [2] * 4
    assert run.opt.members == 2 and run.opt.param_groups[0]["members"] == 2
    assert run.opt.state[run.stacked[0]]["step"].shape == (2,)
    assert run.opt.param_groups[0]["lr"].tolist() == [
        _member(_hyper(name, "no-clip")["lr"], k) for k in (3, 1)
    ]
    for _ in range(3):
        run.step()
    run.assert_matches()
    if engine == "flat":
        assert all(b.param.shape[-1] == 2 for b in run.opt._buckets)  # (D, N) storage


@pytest.mark.parametrize("engine", ["simple", "flat"])
def test_keep_members_carries_schedules_and_counters(engine):
    w = torch.nn.Parameter(torch.ones(N, 3))
    opt = ro.Adam(
        [w], members=N, lr=torch.tensor(LRS), nonfinite="skip", engine=engine, compile=False
    )
    sched = schedules.Cosine(opt, t_max=10)
    for step in range(3):
        w.grad = torch.ones(N, 3)
        if step == 1:
            w.grad[0, 0] = float("nan")
        opt.step()
        sched.step()
    opt.keep_members([0, 2])
    for _ in range(2):
        w.grad = torch.ones(2, 3)
        opt.step()
        sched.step()
    expected = [schedules.Cosine(_one_param_sgd(lr), t_max=10).lr_at(5)[0] for lr in (0.05, 0.1)]
    assert opt.param_groups[0]["lr"].tolist() == expected
    assert opt.param_groups[0]["initial_lr"].tolist() == [0.05, 0.1]
    assert opt.skipped_steps_per_member.tolist() == [1, 0]
    assert opt.state[w]["step"].tolist() == [4, 5]


def _one_param_sgd(lr):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr, momentum=0.9)


@pytest.mark.parametrize(
    ("index", "message"),
    [
        ([], "at least one"),
        ([0, 0], "distinct"),
        ([4], r"in \[0, 4\)"),
        ([-1], r"in \[0, 4\)"),
        (torch.tensor([True, False, True, True]), "1-D list or tensor of member indices"),
        ([[0, 1]], "1-D"),
    ],
)
def test_keep_members_rejects_bad_indices(index, message):
    opt = ro.SGD([torch.nn.Parameter(torch.zeros(N, 2))], members=N)
    with pytest.raises(ValueError, match=message):
        opt.keep_members(index)


def test_keep_members_needs_members():
    with pytest.raises(ValueError, match="keep_members needs member groups"):
        ro.SGD([torch.nn.Parameter(torch.zeros(N, 2))]).keep_members([0])


@pytest.mark.parametrize("engine", ["simple", "flat"])
def test_state_dict_round_trip_mid_run_continues_identically(engine):
    run, resumed = Run("nadam", engine, "norm"), Run("nadam", engine, "norm")
    for _ in range(3):
        run.step()
        resumed.step()
    buffer = io.BytesIO()
    torch.save(copy.deepcopy(resumed.opt.state_dict()), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    assert saved["param_groups"][0]["members"] == N
    assert saved["param_groups"][0]["lr"].shape == (N,)
    assert saved["state"][0]["step"].shape == (N,)
    hyper = {k: _per_member_args(v) for k, v in _hyper("nadam", "norm").items()}
    resumed.opt = ro.NAdam(
        resumed.stacked, members=N, lr=1.0, engine=engine, compile=False, **_without_lr(hyper)
    )
    resumed.opt.load_state_dict(saved)
    assert resumed.opt.param_groups[0]["lr"].tolist() == MEMBERS["nadam"][1]["lr"]
    assert resumed.opt.state[resumed.stacked[0]]["mu_product"].dtype == torch.float64
    for _ in range(3):
        run.step()
        resumed.step()
    for p, q in zip(run.stacked, resumed.stacked, strict=True):
        assert torch.equal(p, q)
    resumed.assert_matches()


def _without_lr(hyper):
    return {k: v for k, v in hyper.items() if k != "lr"}


@pytest.mark.parametrize("engine", ["simple", "flat"])
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copied_member_optimizer_steps_like_the_original(how, engine):
    run = Run("nadam", engine, "norm", nonfinite="skip")
    run.step()
    run.step(poison=(1, float("inf")))
    if how == "deepcopy":
        clone = copy.deepcopy(run.opt)  # (its parameters are copies too)
    else:
        buffer = io.BytesIO()
        torch.save(run.opt, buffer)
        buffer.seek(0)
        clone = torch.load(buffer, weights_only=False)
    assert clone.members == N and list(map(type, clone.transforms)) == list(
        map(type, run.opt.transforms)
    )
    assert torch.equal(clone.skipped_steps_per_member, run.opt.skipped_steps_per_member)
    for opt in (run.opt, clone):
        for p in opt.param_groups[0]["params"]:
            if p.requires_grad:
                p.grad = torch.full_like(p, 0.5)
        opt.step()
    copies = clone.param_groups[0]["params"]
    for p, q in zip(run.stacked, copies, strict=True):
        assert p is not q and torch.equal(p, q)
    assert torch.equal(clone.state[copies[0]]["step"], run.opt.state[run.stacked[0]]["step"])


# -- flat engine ------------------------------------------------------------------------------


def test_flat_member_layout_keeps_the_member_index_innermost():
    params = [torch.nn.Parameter(t.clone()) for t in _start()[:3]]
    opt = ro.Adam(params, members=N, lr=torch.tensor(LRS), engine="flat", compile=False)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    (bucket,) = opt._buckets
    width = 3 * 2 + 4
    assert bucket.param.shape == bucket.grad.shape == bucket.state["exp_avg"].shape == (width, N)
    size = bucket.param.element_size()
    for p, offset in zip(params[:2], (0, 6), strict=True):
        assert p.data_ptr() == bucket.param.data_ptr() + offset * N * size
        assert p.grad.data_ptr() == bucket.grad.data_ptr() + offset * N * size
        assert p[1].data_ptr() == p.data_ptr() + size  # members side by side
        assert p.stride() == p.grad.stride() == opt.state[p]["exp_avg"].stride()
        ptr = opt.state[p]["exp_avg"].data_ptr()
        assert ptr == bucket.state["exp_avg"].data_ptr() + offset * N * size
    # Dense views whose gradients share their strides: backward accumulates into them without
    # autograd's layout-contract warning (an error under this suite's filterwarnings).
    grads = [p.grad for p in params]
    sum((p * torch.arange(p.numel()).view_as(p)).sum() for p in params).backward()
    assert all(p.grad is g for p, g in zip(params, grads, strict=True))


def test_flat_member_step_without_gradient_stays_flat_and_correct():
    run = Run("adam", "flat")
    run.step()
    buckets = run.opt._buckets
    run.step(missing=True)  # parameter 1 gets no gradient: not updated, one step behind...
    run.step()  # ...and back, at its own count, in the same flat storage (no fallback)
    assert run.opt._buckets is buckets
    steps = [run.opt.state[p]["step"].tolist() for p in run.stacked[:3]]
    assert steps == [[3.0] * N, [2.0] * N, [3.0] * N]
    run.assert_matches()


def test_changing_member_values_does_not_recompile_the_flat_kernel():
    counter = torch._dynamo.testing.CompileCounter()
    params = [torch.nn.Parameter(t.clone()) for t in _start()[:2]]
    reference = [torch.nn.Parameter(t.clone()) for t in _start()[:2]]
    hyper = {"lr": torch.tensor(LRS), "betas": (torch.tensor(BETAS[0]), 0.99), "eps": 1e-8}
    opt = ro.Adam(params, members=N, engine="flat", weight_decay=torch.tensor(DECAY), **hyper)
    opt._kernels = FusedKernels(compile=True, backend=counter)
    simple = ro.Adam(
        reference,
        members=N,
        weight_decay=torch.tensor(DECAY),
        engine="simple",
        **copy.deepcopy(hyper),
    )
    for step in range(6):
        for o, ps in ((opt, params), (simple, reference)):
            group = o.param_groups[0]
            group["lr"].mul_(0.9)  # in place, as a schedule does
            if step == 2:  # rebound to new tensors, numbers, per-member again
                group["betas"] = (0.85, torch.tensor([0.99, 0.98, 0.97, 0.999]))
                group["eps"] = torch.tensor(EPS)
            if step == 4:
                group["weight_decay"] = 0.02
            for p in ps:
                p.grad = torch.full_like(p, 0.1 * (step + 1))
            o.step()
    assert counter.frame_count == 1
    for p, q in zip(params, reference, strict=True):
        torch.testing.assert_close(p, q, **TOL)


@pytest.mark.slow  # inductor compiles a C++ kernel (~5 s cold)
@pytest.mark.parametrize("guarded", [False, True], ids=["host-branch", "sync-free"])
def test_inductor_compiled_member_kernels_equal_the_simple_engine(guarded):
    # What users run: inductor's kernel over (D, N) storage with (1, N) coefficients.
    torch.set_default_dtype(torch.float32)
    start = [torch.randn(N, 7, 5), torch.randn(N, 5), torch.randn(N, 0)]
    hyper = {
        "members": N,
        "lr": torch.tensor([0.01, 0.02, 0.005, 0.03]),
        "betas": (torch.tensor(BETAS[0]), 0.999),
        "max_grad_norm": torch.tensor([0.5, 1.0, 2.0, 3.0]),
        "nonfinite": "skip",
    }
    runs = {}
    for engine in ("simple", "flat"):
        params = [torch.nn.Parameter(t.clone()) for t in start]
        opt = ro.AdamW(params, engine=engine, **copy.deepcopy(hyper))
        opt._force_guarded = guarded
        for step in range(8):
            g = torch.Generator().manual_seed(step)
            for p in params:
                p.grad = torch.randn(p.shape, generator=g)
            if step == 3:
                params[0].grad[1, 0, 0] = float("nan")
            opt.step()
        assert opt._kernels.compiling, "torch.compile failed; the flat engine ran eagerly"
        assert opt.state[params[0]]["step"].tolist() == [8, 7, 8, 8]
        runs[engine] = params
    for a, b in zip(runs["simple"], runs["flat"], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


# -- schedules --------------------------------------------------------------------------------

SCHEDULE_ARGS = {
    "constant": {"factor": 0.5},
    "step": {"step_size": 3, "gamma": 0.5},
    "exponential": {"gamma": 0.9},
    "cosine": {"t_max": 7, "eta_min": 1e-4},
    "warmup": {"warmup_steps": 3, "then": {"name": "cosine", "t_max": 5}},
    "cosine_warm_restarts": {"t0": 2, "t_mult": 2},
    "onecycle": {"total_steps": 10},
}


def test_every_schedule_has_a_member_row():
    assert set(SCHEDULE_ARGS) == set(schedules.SCHEDULES)


def _momentum(group):
    """OneCycle cycles beta1, or momentum where there are no betas."""
    return group["betas"][0] if "betas" in group else group["momentum"]


@pytest.mark.parametrize("kind", ["adam", "sgd"])
@pytest.mark.parametrize("name", list(SCHEDULE_ARGS))
def test_schedules_give_each_member_its_scalar_schedule(name, kind):
    lrs = [0.1, 0.013, 0.5]
    w = torch.nn.Parameter(torch.zeros(3, 2))
    if kind == "adam":
        opt = ro.Adam([w], members=3, lr=lrs, betas=([0.9] * 3, 0.999))
        singles = [ro.Adam([torch.nn.Parameter(torch.zeros(2))], lr=lr) for lr in lrs]
    else:
        opt = ro.SGD([w], members=3, lr=lrs, momentum=[0.9, 0.5, 0.0])
        singles = [
            ro.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr, momentum=m)
            for lr, m in zip(lrs, (0.9, 0.5, 0.0), strict=True)
        ]
    lr_tensor = opt.param_groups[0]["lr"]
    sched = schedules.make_schedule(name, opt, **SCHEDULE_ARGS[name])
    single_scheds = [schedules.make_schedule(name, o, **SCHEDULE_ARGS[name]) for o in singles]
    for step in range(12):
        group = opt.param_groups[0]
        assert group["lr"] is lr_tensor  # updated in place
        assert group["lr"].tolist() == [o.param_groups[0]["lr"] for o in singles], step
        assert sched.get_last_lr()[0].tolist() == [s.get_last_lr()[0] for s in single_scheds]
        assert sched.lr_at(step)[0].tolist() == [s.lr_at(step)[0] for s in single_scheds]
        assert _momentum(group).tolist() == [_momentum(o.param_groups[0]) for o in singles], step
        w.grad = torch.ones(3, 2)
        opt.step()
        sched.step()
        for o, s in zip(singles, single_scheds, strict=True):
            o.param_groups[0]["params"][0].grad = torch.ones(2)
            o.step()
            s.step()


def test_schedule_state_round_trip_with_member_lrs():
    def build():
        w = torch.nn.Parameter(torch.zeros(3, 2))
        opt = ro.SGD([w], members=3, lr=torch.tensor([0.1, 0.2, 0.3]), momentum=0.9)
        return w, opt, schedules.OneCycle(opt, total_steps=20)

    w, opt, sched = build()
    for _ in range(5):
        w.grad = torch.ones(3, 2)
        opt.step()
        sched.step()
    saved_opt, saved_sched = copy.deepcopy(opt.state_dict()), copy.deepcopy(sched.state_dict())
    w2, opt2, sched2 = build()
    w2.data.copy_(w.data)
    sched2.load_state_dict(saved_sched)
    opt2.load_state_dict(saved_opt)
    for o, s, p in ((opt, sched, w), (opt2, sched2, w2)):
        for _ in range(4):
            p.grad = torch.ones(3, 2)
            o.step()
            s.step()
    assert torch.equal(opt.param_groups[0]["lr"], opt2.param_groups[0]["lr"])
    assert torch.equal(w, w2)


# -- construction and validation --------------------------------------------------------------


def test_make_optimizer_and_spec_build_member_optimizers():
    w = torch.nn.Parameter(torch.zeros(N, 2))
    opt = ro.make_optimizer("adam", [w], members=N, lr=torch.tensor(LRS))
    assert opt.members == N and opt.param_groups[0]["lr"].dtype == torch.float64
    assert opt.param_groups[0]["lr"].tolist() == LRS
    assert ro.parse_optimizer_spec("adam:members=4,lr=0.01") == ("adam", {"members": 4, "lr": 0.01})
    assert "members" in ro.hyperparameter_names("momentum")


def test_per_member_values_as_lists_tensors_and_numbers():
    w = torch.nn.Parameter(torch.zeros(N, 2))
    given = torch.tensor(LRS, dtype=torch.float32)
    opt = ro.Adam([w], members=N, lr=given, betas=([0.9, 0.8, 0.7, 0.6], 0.99), eps=1e-6)
    group = opt.param_groups[0]
    assert group["lr"] is not given and group["lr"].dtype == torch.float64  # the group's own
    assert group["betas"][0].tolist() == [0.9, 0.8, 0.7, 0.6] and group["betas"][1] == 0.99
    assert group["eps"] == 1e-6
    assert ro.Adam([w], members=N, lr=torch.tensor(0.01)).param_groups[0]["lr"] == 0.01


def test_member_groups_in_param_group_dicts():
    a, b = torch.nn.Parameter(torch.zeros(N, 2)), torch.nn.Parameter(torch.zeros(N))
    opt = ro.SGD(
        [{"params": [a], "members": N, "lr": LRS}, {"params": [b], "members": N, "lr": 0.1}],
        momentum=0.9,
    )
    assert opt.members == N
    a.grad, b.grad = torch.ones(N, 2), torch.ones(N)
    opt.step()
    torch.testing.assert_close(a[:, 0], -torch.tensor(LRS))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"members": 0}, r"members must be None or an integer >= 1, got 0"),
        ({"members": True}, "members must be None or an integer"),
        ({"members": 3}, r"members=3: .*leading dimension 3.*parameter #0 has shape \(4, 2\)"),
        ({"members": N, "lr": [0.1, 0.2]}, r"lr must be a number or 4 numbers.*got a tensor"),
        ({"members": N, "lr": [0.1, -0.2, 0.1, 0.1]}, r"lr must be .* got -0.2 \(member 1\)"),
        ({"members": N, "lr": ["a", "b", "c", "d"]}, "lr must be a number or 4 numbers"),
        ({"members": N, "betas": ([0.9] * 4, [0.9, 0.9, 1.0, 0.9])}, r"beta2.*\(member 2\)"),
        ({"members": N, "betas": (0.9,)}, r"betas must be a pair"),
        ({"members": N, "eps": [1e-8, 0.0, 1e-8, 1e-8]}, r"eps must be .*> 0.*\(member 1\)"),
        ({"members": N, "amsgrad": [True] * 4}, "amsgrad must be True or False"),
        ({"members": N, "max_grad_norm": [1.0, 1.0, 1.0, 0.0]}, r"max_grad_norm.*\(member 3\)"),
        ({"lr": torch.tensor(LRS)}, "lr must be a number.*one value per member needs members=N"),
    ],
)
def test_invalid_member_values_name_the_argument_and_member(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ro.Adam([torch.nn.Parameter(torch.zeros(N, 2))], **kwargs)


def test_nesterov_is_checked_per_member():
    with pytest.raises(ValueError, match=r"nesterov=True requires .*momentum=0.0.*\(member 2\)"):
        ro.SGD(
            [torch.nn.Parameter(torch.zeros(N, 2))],
            members=N,
            momentum=[0.9, 0.9, 0.0, 0.9],
            nesterov=True,
        )


def test_param_groups_must_agree_on_members():
    a, b = torch.nn.Parameter(torch.zeros(N, 2)), torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="members must be the same in every param group"):
        ro.Adam([{"params": [a], "members": N}, {"params": [b]}])
    opt = ro.Adam([a], members=N)
    with pytest.raises(ValueError, match="members must be the same"):
        opt.add_param_group({"params": [b], "members": None})
    with pytest.raises(ValueError, match=r"members=4: .*parameter #0 has shape \(3,\)"):
        opt.add_param_group({"params": [b]})  # (members=N from the defaults)
    assert len(opt.param_groups) == 1  # the refused groups are not kept


@pytest.mark.parametrize("engine", ["simple", "flat"])
def test_bf16_members_keep_their_dtypes_and_agree_between_engines(engine):
    def run(engine, state_dtype):
        w = torch.nn.Parameter(torch.randn(N, 8, generator=torch.Generator().manual_seed(0)))
        w.data = w.data.to(torch.bfloat16)
        opt = ro.Adam(
            [w],
            members=N,
            lr=torch.tensor(LRS),
            engine=engine,
            compile=False,
            state_dtype=state_dtype,
        )
        for step in range(3):
            w.grad = torch.full_like(w, 0.1 * (step + 1))
            opt.step()
        return w, opt

    w, opt = run(engine, None)
    assert w.dtype == opt.state[w]["exp_avg"].dtype == torch.bfloat16
    other, _ = run("simple" if engine == "flat" else "flat", None)
    assert torch.equal(w, other)
    w32, opt32 = run(engine, torch.float32)
    assert opt32.state[w32]["exp_avg_sq"].dtype == torch.float32


@pytest.mark.parametrize("module", ["members", "engine", "optimizers", "clip"])
def test_documented_examples_run(module):
    # (float32, as a user runs them: the autouse fixture's float64 is restored here)
    torch.set_default_dtype(torch.float32)
    result = doctest.testmod(importlib.import_module(f"ravine.optim.{module}"))
    assert result.attempted and result.failed == 0
