"""The engine that runs any chain of update stages as a ``torch.optim.Optimizer``.

One ``step()``:

1. gradient pre-processing shared by every optimizer: ``maximize``, the NaN/Inf guard,
   clipping by value, clipping by global norm (one norm over every parameter the optimizer
   holds, the same as ``torch.nn.utils.clip_grad_norm_(model.parameters())``);
2. the optimizer's chain of stages (``transforms.py``) per parameter;
3. ``param <- param - lr * u``.

``p.grad`` is never modified: clipping and weight decay act on a copy, so what a user logs
after ``step()`` is the raw gradient.

NaN/Inf gradients (``nonfinite=``):

* ``"raise"`` (default): the step is refused, parameters and state are left as they were, and
  :class:`NonFiniteGradientError` names the offending parameters.
* ``"skip"``: the step is refused and counted in :attr:`ChainOptimizer.skipped_steps`.
* ``"ignore"``: no check (torch.optim's behaviour); saves one read of the gradients.

On CPU the check is a plain branch. On an accelerator, branching would force a host sync on
every step, so the update is computed unconditionally and committed through
``torch.where(finite, new, old)``: a non-finite step leaves parameters and state unchanged
without the host ever waiting. In ``"raise"`` mode the flag is copied to the host
asynchronously and the error is raised at the start of the next ``step()`` (or by
:meth:`ChainOptimizer.check_finite`), by which time the copy has long landed.

Members (``members=N`` in a param group, see ``members.py``): the group's parameters are N
stacked copies ``(N, ...)`` and row k is updated exactly as member k's own optimizer would
update it. Per member: hyperparameters (a number or N of them), step counts, clipping by
value and by member k's own global norm over all its rows, and the NaN/Inf guard — with
``"skip"`` only the members with a non-finite gradient are refused (their rows, state and step
counts unchanged; :attr:`ChainOptimizer.refused_members`), with ``"raise"`` the whole step is
refused and the error names the members. :meth:`ChainOptimizer.keep_members` prunes members.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ravine.optim import members as M
from ravine.optim._math import all_finite, clip_coefficient, finite_flags, global_norm, rows
from ravine.optim.flat import FlatBucket, FusedKernels, fused_update
from ravine.optim.transforms import Transform
from ravine.optim.validation import (
    check_arithmetic,
    check_betas,
    check_flags,
    check_nonnegative,
    check_positive,
    check_unit_interval,
    is_bool,
)

__all__ = [
    "COMMON_HYPERPARAMS",
    "COMPILE_MIN_NUMEL",
    "ENGINES",
    "NONFINITE_POLICIES",
    "TORCH_FLAGS",
    "ChainOptimizer",
    "NonFiniteGradientError",
    "check_betas",
    "check_nonnegative",
    "check_positive",
    "check_unit_interval",
    "default_engine",
]

NONFINITE_POLICIES = ("raise", "skip", "ignore")
ENGINES = ("auto", "simple", "flat")
#: From this many parameters on, the default engine compiles its fused pass: the first step
#: then takes about a second (warm inductor cache; several seconds cold), which the faster
#: steps repay within about a thousand (``benchmarks/optim_step.py``: at half a million
#: parameters, compiled Adam saves about 1 ms a step on a 2-core CPU). Below it the pass runs
#: eagerly.
COMPILE_MIN_NUMEL = 1 << 19
#: torch.optim's implementation flags, with torch's defaults. They choose how torch computes
#: a step, never what: ravine keeps them in the param groups (state dicts move both ways)
#: and maps them onto its engines, or refuses them with a reason (``_requested_engine``).
TORCH_FLAGS: Mapping[str, Any] = {
    "foreach": None,
    "fused": None,
    "capturable": False,
    "differentiable": False,
}
EAGER_CHUNK = 1 << 17  # elements per eager flat pass: its temporaries (512 KiB each) stay in cache

#: Hyperparameters every ravine optimizer understands, on top of its own.
COMMON_HYPERPARAMS: Mapping[str, Any] = {
    "lr": 1e-3,
    "maximize": False,
    "max_grad_norm": None,  # clip the global gradient norm to this (None: off)
    "clip_value": None,  # clip every gradient element to [-clip_value, clip_value] (None: off)
    "members": None,  # N: the group's parameters are N stacked copies (N, ...) (members.py)
}
_CPU = torch.device("cpu")
_TENSOR_OR_TUPLE = (Tensor, tuple)
#: ChainOptimizer attributes that pickling and deepcopy carry (see ``__getstate__``).
_PICKLED = (
    "transforms",
    "nonfinite",
    "engine",
    "state_dtype",
    "_numeric",
    "_flags",
    "_scalar_keys",
    "_members",
    "_member_skipped",
    "_refused",
    "_skipped_host",
    "_skipped_device",
    "_pending_check",
    "_force_guarded",
    "_number_keys",
)


class NonFiniteGradientError(FloatingPointError):
    """A gradient contained NaN or Inf; the step was refused and nothing was changed."""


class ChainOptimizer(torch.optim.Optimizer):
    """A ``torch.optim.Optimizer`` that runs a chain of update stages.

    The named optimizers (:class:`ravine.optim.Adam`, ...) are subclasses that fix the chain and
    spell out torch.optim's signature. Use this class directly to build your own rule::

        >>> import torch
        >>> from ravine.optim import ChainOptimizer, transforms
        >>> w = torch.nn.Parameter(torch.ones(3))
        >>> opt = ChainOptimizer([w], [transforms.HeavyBall(), transforms.AddDecoupledWeightDecay()],
        ...                      lr=0.1, momentum=0.9, weight_decay=1e-2, decoupled_weight_decay=True)
        >>> w.grad = torch.ones(3); _ = opt.step()

    Args:
        params: parameters or param-group dicts, as for any torch optimizer.
        transforms: the chain of stages, applied in order.
        nonfinite: what to do with a NaN/Inf gradient: ``"raise"``, ``"skip"`` or ``"ignore"``.
            In a member group, per member (see the module docstring).
        engine: ``"auto"`` (default: the flat engine wherever it can run the step, else the
            simple one; see :func:`default_engine`), ``"simple"`` (per tensor, the reference)
            or ``"flat"`` (contiguous storage, one fused pass).
        compile: compile the flat engine's pass with ``torch.compile``. None (default): with
            ``engine="flat"`` always, with ``engine="auto"`` from ``COMPILE_MIN_NUMEL``
            parameters on (a model too small to repay the compile runs eagerly).
        state_dtype: e.g. ``torch.float32`` for bf16/fp16 parameters: state is kept and the
            update computed in this dtype (None: the parameters' dtype).
        **hyperparams: defaults for the param groups; the stages' own defaults fill the rest.
            ``members=N`` makes every group a member group (or set it per group dict; all
            groups must agree): parameters ``(N, ...)``, and any numeric hyperparameter a
            number or N of them (a 1-D tensor or a sequence; ``betas`` a pair whose entries
            may each be either). Stored as ``(N,)`` float64 host tensors in the groups.
    """

    def __init__(
        self,
        params: Iterable[Any],
        transforms: Sequence[Transform],
        *,
        nonfinite: str = "raise",
        engine: str = "auto",
        compile: bool | None = None,
        state_dtype: torch.dtype | None = None,
        **hyperparams: Any,
    ) -> None:
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}")
        # torch.optim's implementation flags: group keys (state dicts carry them both ways)
        # that select an engine, or are refused with a reason; see ``_requested_engine``.
        flags = {key: hyperparams.pop(key) for key in TORCH_FLAGS if key in hyperparams}
        chosen, engine = engine, _requested_engine(engine, flags)
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(
                f"nonfinite must be one of {', '.join(NONFINITE_POLICIES)}; got {nonfinite!r}"
            )
        self.transforms = tuple(transforms)
        self.nonfinite = nonfinite
        defaults = dict(COMMON_HYPERPARAMS)
        defaults.update({key: TORCH_FLAGS[key] for key in flags})
        for stage in self.transforms:
            for key, value in stage.hyperparams.items():
                defaults.setdefault(key, value)
        unknown = set(hyperparams) - set(defaults)
        if unknown:
            raise TypeError(
                f"{type(self).__name__} got unexpected hyperparameter(s) "
                f"{', '.join(sorted(unknown))}; valid: {', '.join(sorted(defaults))}"
            )
        # (from the stages' own defaults: the values given may be per member)
        self._numeric = M.numeric_keys(defaults)
        self._number_keys = (*self._numeric, *(["betas"] if "betas" in defaults else []))
        self._flags = {k: v for k, v in defaults.items() if isinstance(v, bool)}
        self._scalar_keys = _scalar_state_keys(self.transforms, defaults)
        defaults.update(hyperparams)
        defaults.update(flags)
        if compile is not None and not is_bool(compile):
            raise ValueError(
                f"compile must be True or False, got {compile!r} (or None, the default: "
                "decided by the engine)"
            )
        self._members: int | None = None
        self._member_skipped: Tensor | None = None  # (N,) steps refused, per member
        self._refused: Tensor | None = None  # (N,) members refused on the last checked step
        self._skipped_host = 0
        self._skipped_device: Tensor | None = None
        self._pending_check: tuple[Tensor, Any, list] | None = None
        # Tests flip this to exercise the accelerator's sync-free path on CPU.
        self._force_guarded = False
        if state_dtype is not None and not (
            isinstance(state_dtype, torch.dtype) and state_dtype.is_floating_point
        ):
            raise ValueError(f"state_dtype must be a floating torch.dtype, got {state_dtype!r}")
        self.engine = engine
        # Low-precision parameters (bf16, fp16) keep their state, and do their arithmetic, in
        # this dtype; the parameters themselves are rounded once per step on the write.
        self.state_dtype = state_dtype
        self._buckets: list[FlatBucket] | None = None
        self._bucket_key: list | None = None
        self._bucket_members: list[list[Tensor]] | None = None
        self._kernels = FusedKernels(compile=False)
        super().__init__(params, defaults)
        # Chosen once the parameters are known (their kinds, sizes and device).
        params = [p for group in self.param_groups for p in group["params"]]
        if engine == "auto":
            engine = default_engine(params, self._differentiable, self._members)
        self.engine = engine
        if compile is None:  # by size where the default engine chose flat storage
            by_size = chosen == "auto" and self.engine == "flat"
            compile = not by_size or sum(p.numel() for p in params) >= COMPILE_MIN_NUMEL
            self._kernels.by_size = by_size
        self._kernels.compile = bool(compile)

    @property
    def _differentiable(self) -> bool:
        return bool(self.defaults.get("differentiable", False))

    def _values(self, group: Mapping[str, Any]) -> Mapping[str, Any]:
        """``group`` as the step reads it: a 1-element tensor hyperparameter (torch accepts
        ``lr=torch.tensor(1e-3)``, tensor betas, ...) as a Python float, read with ``item()``
        as torch.optim reads it. Member groups' per-member tensors, and tensors that
        require grad (``differentiable=True``: autograd follows them), stay tensors."""
        if group.get("members") is not None:
            return group
        values = None
        for key in self._number_keys:
            value = group.get(key)
            if isinstance(value, _TENSOR_OR_TUPLE):
                number = _host_number(value)
                if number is not value:
                    if values is None:
                        values = dict(group)
                    values[key] = number
        return group if values is None else values

    # -- param groups -----------------------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            self._prepare_group(group)
            self.validate_group(group)
            check_arithmetic(group, self._compute_dtype)
        except Exception:
            self.param_groups.pop()  # a refused group is not kept
            raise
        self._members = group["members"]

    def _prepare_group(self, group: dict[str, Any]) -> None:
        """Flags as bools; for a member group, its shape checked and per-member values
        normalized (``members.normalize``)."""
        check_flags(group, self._flags)
        own = {k: group[k] for k in TORCH_FLAGS if k in group and group[k] != self.defaults[k]}
        if own:  # a group's own implementation flag: the engine is the optimizer's
            if "differentiable" in own:
                raise ValueError(
                    "differentiable is set per optimizer (torch.optim reads it from the "
                    f"optimizer too): pass differentiable={own['differentiable']!r} to it"
                )
            _requested_engine(self.engine, own)
        n = M.check_members(group.get("members"))
        others = {g.get("members") for g in self.param_groups if g is not group}
        if others and others != {n}:
            raise ValueError(
                f"members must be the same in every param group, got {others.pop()!r} and {n!r}"
            )
        if n is not None:
            M.check_leading_dimension(group, n)
            M.normalize(group, self._numeric, n)

    def __getstate__(self) -> dict[str, Any]:
        # torch.optim keeps only defaults, state and param groups, which would leave a copy
        # without its chain. ravine's attributes travel too; compiled kernels and the flat
        # layout are rebuilt by the copy (its parameters are copies), and a deferred NaN
        # check is waited for, since its CUDA event cannot be copied.
        state = super().__getstate__()
        self._wait_for_pending_check()
        for key in _PICKLED:
            state[key] = self.__dict__[key]
        kernels = self._kernels
        state["_kernels"] = FusedKernels(kernels.compile, kernels.backend, kernels.by_size)
        state["_buckets"] = state["_bucket_key"] = state["_bucket_members"] = None
        return state

    def _wait_for_pending_check(self) -> None:
        if self._pending_check is not None and self._pending_check[1] is not None:
            flags, event, work = self._pending_check
            event.synchronize()
            self._pending_check = (flags, None, work)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # load_state_dict goes through here; a state dict saved by torch.optim (or an older
        # ravine) lacks ravine's own hyperparameters, which then take their defaults.
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)
        if "_members" in self.__dict__:  # (unpickling restores it with everything else)
            self._members = self.param_groups[0]["members"] if self.param_groups else None

    def validate_group(self, group: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` naming the hyperparameter if ``group`` holds an invalid value."""
        check_nonnegative(group, "lr")
        for key in ("max_grad_norm", "clip_value"):
            if group.get(key) is not None:
                check_positive(group, key)

    # -- the step ---------------------------------------------------------------------------

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one update; ``closure`` re-evaluates the loss, as in torch.optim.

        Parameters whose ``.grad`` is None are left as they are (values, state, step count).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # differentiable=True: the update is recorded by autograd, as torch.optim records it.
        with torch.set_grad_enabled(self._differentiable):
            self._step()
        return loss

    def _step(self) -> None:
        self.check_finite()
        if self.engine == "flat":
            self._flat_step()
            return
        work = [
            (group, [p for p in group["params"] if p.grad is not None])
            for group in self.param_groups
        ]
        grads = [p.grad for _, params in work for p in params]
        if not grads:
            return
        guarded = self.nonfinite != "ignore" and (
            self._force_guarded or any(g.device.type != "cpu" for g in grads)
        )
        for p in (p for _, params in work for p in params):
            _check_supported(p)  # (the flat engine checks as gradients enter its buffers)
        if self._members is not None:
            self._members_step(work, grads, guarded)
            return

        finite = flags = None
        if self.nonfinite != "ignore" and guarded:
            flags = finite_flags(grads)  # (n_grads,)
            finite = flags.all()
        elif self.nonfinite != "ignore" and not all_finite(grads):
            if self.nonfinite == "raise":
                raise NonFiniteGradientError(self._describe_nonfinite(work))
            self._skipped_host += 1
            return
        named = work
        work = [(self._values(group), params) for group, params in work]

        clip_values = [
            torch.clamp(g, -group["clip_value"], group["clip_value"])
            if group["clip_value"] is not None
            else g
            for group, params in work
            for g in (p.grad for p in params)
        ]
        total_norm = None
        if any(group["max_grad_norm"] is not None for group, _ in work):
            total_norm = global_norm(clip_values)

        index = 0
        for group, params in work:
            scale = None
            if group["max_grad_norm"] is not None:
                scale = clip_coefficient(total_norm, group["max_grad_norm"])
            # The chain's shape is a property of the group: worked out once, not per tensor.
            stages = [stage for stage in self.transforms if stage.active(group)]
            chain = [(stage, stage.flags(group)) for stage in stages]
            for p in params:
                grad = clip_values[index]
                index += 1
                if scale is not None:
                    grad = grad * scale.to(grad)
                if group["maximize"]:
                    grad = -grad
                self._update_parameter(p, grad, group, chain, finite if guarded else None)

        if guarded:
            self._after_guarded_step(finite, flags, named)

    def _members_step(self, work: list, grads: list[Tensor], guarded: bool) -> None:
        """The simple engine's step over member groups: row k as member k's own optimizer."""
        n = self._members
        finite, flags = self._member_finite(grads, work, guarded)
        clipped = [M.clamp(p.grad, group["clip_value"]) for group, params in work for p in params]
        norms = None
        if any(group["max_grad_norm"] is not None for group, _ in work):
            norms = global_norm(clipped, members=n)  # (N,): each member's own norm
        index = 0
        for group, params in work:
            scale = None
            if group["max_grad_norm"] is not None:
                max_norm = M.on_device(group["max_grad_norm"], norms.device)
                scale = clip_coefficient(norms, max_norm)  # (N,)
            chain = [(s, s.flags(group)) for s in self.transforms if s.active(group)]
            views: dict[torch.device, dict] = {}  # the group as coefficients() reads it
            for p in params:
                grad = clipped[index]
                index += 1
                if scale is not None:
                    grad = grad * M.column(scale, grad, grad.dtype)
                if group["maximize"]:
                    grad = -grad
                device = p.device if finite is not None else _CPU
                if device not in views:
                    views[device] = M.group_on(group, device)
                self._update_members(p, grad, views[device], chain, finite)
        if guarded:
            self._after_guarded_step(finite, flags, work)

    def _member_finite(
        self, tensors: list[Tensor], work: list, guarded: bool
    ) -> tuple[Tensor | None, Tensor | None]:
        """``(commit, flags)``: the ``(N,)`` mask of members whose rows this step updates (None:
        all of them) and the ``(len(tensors), N)`` finite flags (None: no check)."""
        if self.nonfinite == "ignore":
            return None, None
        n = self._members
        flags = finite_flags(tensors, members=n)
        finite = flags.all(dim=0)  # (N,)
        self._refused = ~finite
        if guarded:
            # No branch: "skip" refuses the members, "raise" the whole step (and raises later).
            return (finite.all().expand(n) if self.nonfinite == "raise" else finite), flags
        if bool(finite.all()):
            return None, flags
        if self.nonfinite == "raise":
            raise NonFiniteGradientError(self._describe_nonfinite(work))
        self._skipped_host += 1
        self._add_member_skips(~finite)
        return finite, flags  # the other members' rows are committed through torch.where

    def _update_members(
        self,
        p: Tensor,
        grad: Tensor,
        group: Mapping[str, Any],
        chain: list[tuple[Transform, dict[str, bool]]],
        commit: Tensor | None,
    ) -> None:
        """``_update_parameter`` for a member parameter ``(N, ...)``: the same stages, with
        ``(N,)`` coefficients shaped ``(N, 1, ..., 1)``; rows not in ``commit`` stay as
        they were."""
        state = self.state[p]
        target = p
        compute = self._compute_dtype(p)
        if compute != p.dtype:
            p, grad = p.detach().to(compute), grad.to(compute)
        n = p.shape[0]
        if "step" not in state:
            state["step"] = torch.full((n,), 1.0 if state else 0.0, dtype=_step_dtype())
            init_group = M.shaped_group(group, p)
            for stage, _ in chain:
                for key, value in stage.init(p, init_group).items():
                    state.setdefault(key, M.per_member_state(value, n))
        # Coefficients are worked out where the step count is: on the host, or on the device
        # when rows are committed without a host sync.
        device = p.device if commit is not None else _CPU
        wide = torch.float32 if device.type == "mps" else torch.float64
        previous = state["step"]
        step = previous.to(device, wide) + 1  # (N,)
        for key in self._scalar_keys & state.keys():
            state[key] = state[key].to(device)
        # In the compute dtype: (N, 1, ...) coefficients take part in type promotion (and
        # lerp takes no weight of another dtype). In 16 bits they round as the arithmetic on
        # them does anyway; for a scalar, 0-dim or Python, torch keeps float32 digits.
        dtype = compute
        u, new_state = grad, {}
        view = _ChainedState(state, new_state)
        for stage, flags in chain:
            coefficients, scalars = stage.coefficients(group, step, view)
            new_state.update(scalars)
            shaped = {k: M.column(v, p, dtype) for k, v in coefficients.items()}
            u, produced = stage.apply(u, p, view, shaped, flags)
            new_state.update(produced)
        updated = p - M.column(group["lr"], p, dtype) * u
        if commit is None:
            target.copy_(updated)
            state.update(new_state)
            state["step"] = step.to(previous.dtype)
            return
        keep = commit.to(p.device)
        target.copy_(torch.where(keep.view(-1, *[1] * (p.dim() - 1)), updated, p))
        for key, value in new_state.items():
            old = state.get(key)
            if old is None:  # (absent state means zeros to every stage, see transforms._state)
                old = torch.zeros_like(value)
            mask = commit.to(value.device).view(-1, *[1] * (value.dim() - 1))
            state[key] = torch.where(mask, value, old)
        state["step"] = torch.where(commit.to(device), step, previous.to(device, wide)).to(
            previous.dtype
        )

    # -- the flat engine --------------------------------------------------------------------

    def _flat_params(self, group: Mapping[str, Any]) -> list[Tensor]:
        """The parameters of ``group`` that live in flat storage: those with a gradient or with
        state (a parameter that skips a step stays). Never a parameter that has no state
        yet (torch.optim gives it none), nor one frozen (``requires_grad_(False)``) and
        without a gradient, which leaves the buffers."""
        state = self.state
        return [
            p
            for p in group["params"]
            if p.grad is not None or (p.requires_grad and p in state and state[p])
        ]

    def _flat_buckets(self) -> list[FlatBucket]:
        """The buckets for this step, built (or rebuilt) when the layout changed, each with
        its chain for this step (``bucket.chain``: the active stages and their flags)."""
        work, key = [], []
        for group in self.param_groups:
            chain = [
                (stage, stage.flags(group)) for stage in self.transforms if stage.active(group)
            ]
            shape = tuple((type(stage), tuple(flags.items())) for stage, flags in chain)
            work.append((group, self._flat_params(group), chain, shape))
            key.append((group, shape))
        param_lists = [params for _, params, _, _ in work]
        reusable = (
            self._buckets is not None
            and len(key) == len(self._bucket_key)
            and all(
                new[0] is old[0] and new[1] == old[1]
                for new, old in zip(key, self._bucket_key, strict=True)
            )
            and all(map(_same_tensors, param_lists, self._bucket_members))
        )
        if reusable and all(b.layout_intact() for b in self._buckets):
            for bucket in self._buckets:  # (their chains are this step's: the keys are equal)
                bucket.direct = self._direct(bucket)
                bucket.sync(self.state)
            return self._buckets
        if self._buckets is not None:  # who leaves gets storage of its own back
            staying = {id(p) for params in param_lists for p in params}
            for bucket in self._buckets:
                for p in bucket.params:
                    if id(p) not in staying:
                        bucket.release(p, self.state)
        buckets = []
        for group, params, chain, shape in work:
            by_kind: dict[tuple, list[Tensor]] = {}
            for p in params:
                by_kind.setdefault((p.device, p.dtype), []).append(p)
            for members in by_kind.values():
                bucket = FlatBucket(
                    members,
                    group,
                    [stage for stage, _ in chain],
                    self.state,
                    _step_dtype(),
                    state_dtype=self._compute_dtype(members[0]),
                    members=self._members,
                )
                bucket.group, bucket.chain, bucket.shape = group, chain, shape
                buckets.append(bucket)
        self._buckets, self._bucket_key, self._bucket_members = buckets, key, param_lists
        return buckets

    def _direct(self, bucket: FlatBucket) -> bool:
        """Whether ``bucket``'s pass is only ``param -= lr * grad`` this step (plain SGD,
        eager, unguarded, nothing to clip): then it reads fresh gradients where they are, one
        multi-tensor ``add_``, instead of copying them into flat storage first."""
        group = bucket.group
        return (
            not bucket.chain
            and bucket.members is None
            and bucket.compute_dtype == bucket.dtype
            and group["clip_value"] is None
            and group["max_grad_norm"] is None
            and not self._kernels.compiles(bucket.shape)
            and (self.nonfinite == "ignore" or (bucket.on_cpu and not self._force_guarded))
        )

    def _flat_step(self) -> None:
        buckets = self._flat_buckets()
        # What this step updates, per bucket: the parameters that have a gradient.
        live = [b for b in buckets if b.present is None or any(b.present)]
        if not live:
            return
        guarded = self.nonfinite != "ignore" and (
            self._force_guarded or not all(b.on_cpu for b in live)
        )
        work = [(b.group, b.present_params()) for b in live]
        slices = [(b, g) for b in live for g in b.present_grads()]
        if self._members is not None:
            self._flat_members_step(live, work, slices, guarded)
            return
        finite = flags = None
        if self.nonfinite != "ignore" and guarded:
            # One reduction per run of gradients; per parameter only where an error will name
            # them.
            per_param = self.nonfinite == "raise"
            tensors = [p.grad for _, ps in work for p in ps] if per_param else None
            flags = finite_flags(tensors or [g for _, g in slices])
            finite = flags.all()
        elif self.nonfinite != "ignore" and not all_finite([g for _, g in slices]):
            if self.nonfinite == "raise":
                raise NonFiniteGradientError(self._describe_nonfinite(work))
            self._skipped_host += 1
            return
        total_norm = None
        if any(b.group["max_grad_norm"] is not None for b in live):
            # (the kernel clips by value itself: a clipped copy is needed only for the norm)
            clipped = [
                torch.clamp(g, -b.group["clip_value"], b.group["clip_value"])
                if b.group["clip_value"] is not None
                else g
                for b, g in slices
            ]
            total_norm = global_norm(clipped)
        for bucket in buckets:
            self._flat_update(bucket, total_norm, finite)
        if guarded:
            # (flags name parameters only in "raise" mode, where they are per parameter)
            self._after_guarded_step(finite, flags, work)

    def _flat_members_step(
        self, buckets: list[FlatBucket], work: list, slices: list, guarded: bool
    ) -> None:
        # One reduction per run of gradients, over its (N, D) rows view, gives every member's
        # flags and norms; per parameter only where an error will name them.
        per_param = guarded and self.nonfinite == "raise"
        tensors = [p.grad for _, ps in work for p in ps] if per_param else None
        grads = [b.member_rows(g) for b, g in slices]
        finite, flags = self._member_finite(tensors or grads, work, guarded)
        norms = None
        if any(b.group["max_grad_norm"] is not None for b in buckets):
            clipped = [
                M.clamp(g, b.group["clip_value"]) for g, (b, _) in zip(grads, slices, strict=True)
            ]
            norms = global_norm(clipped, members=self._members)  # (N,)
        for bucket in self._buckets:
            self._flat_update(bucket, norms, finite)
        if guarded:
            self._after_guarded_step(finite, flags, work)

    def _flat_update(
        self, bucket: FlatBucket, total_norm: Tensor | None, finite: Tensor | None
    ) -> None:
        """One fused pass per segment of ``bucket`` (see ``FlatBucket.segments``): the
        parameters of a segment share their step count, so one set of coefficients."""
        segments = bucket.segments()
        if not segments:
            bucket.advance()
            return
        group, n = self._values(bucket.group), bucket.members
        stages = [stage for stage, _ in bucket.chain]
        flags = [stage_flags for _, stage_flags in bucket.chain]
        wide = torch.float32 if bucket.device.type == "mps" else torch.float64
        if finite is not None:
            bucket.counters_on(bucket.device, self.state)
            if n is not None:
                finite = finite.view(1, n)
        if n is not None:  # per-member values where the step count is
            group = M.group_on(group, bucket.device if finite is not None else _CPU)
        clip_value = group["clip_value"]
        scale = None
        if group["max_grad_norm"] is not None and n is not None:
            max_norm = M.on_device(group["max_grad_norm"], total_norm.device)
            scale = clip_coefficient(total_norm, max_norm)  # (N,)
            scale = M.pack([scale], n, bucket.device, bucket.compute_dtype, (1, n))[0]
        elif group["max_grad_norm"] is not None:
            scale = clip_coefficient(total_norm, group["max_grad_norm"]).to(
                bucket.device, bucket.compute_dtype
            )
        # Eagerly, the parameters are updated in place (``add_``: one pass, no temporary)
        # where nothing needs the old values; a compiled pass fuses its write anyway.
        compiled = self._kernels.compiles(bucket.shape)
        in_place = (
            n is None and not compiled and finite is None and bucket.compute_dtype == bucket.dtype
        )
        structure = (
            clip_value is not None,
            scale is not None,
            bool(group["maximize"]),
            finite is not None,
            bucket.compute_dtype,
            in_place,
        )
        cache_key = (structure, compiled, self._kernels)
        kernel = bucket.kernels.get(cache_key)
        if kernel is None:
            # Member kernels get their own code object (their coefficients are (1, N)).
            key = (bucket.shape, *structure, compiled)
            if n is not None:
                key = (*key, "members")
            build = lambda: fused_update(stages, flags, *structure)  # noqa: E731
            kernel = bucket.kernels[cache_key] = self._kernels.get(key, build, compiled)
        host = bucket.host_counts  # (a Python mirror of the host counts: no tensor reads)
        whole = len(segments) == 1 and segments[0] == (0, len(bucket.params))
        for first, stop in segments:
            if finite is None:
                (bucket.steps if whole else bucket.steps[first:stop]).add_(1)
                if host is not None:
                    step: float | Tensor = host[first] + 1
                    host[first:stop] = [step] * (stop - first)
                else:
                    counts = bucket.steps[first]
                    step = counts.item() if n is None else counts.to(torch.float64)
            else:
                bucket.host_counts = None  # (committed on the device: not read back)
                step = bucket.steps[first].to(wide) + 1
            committed = {k: v[first] for k, v in bucket.scalars.items()}
            scalars_view = dict(committed)  # (a refused step keeps the committed values)
            coefficients, new_scalars = [], {}
            for stage in stages:
                c, produced = stage.coefficients(group, step, scalars_view)
                coefficients.append(c)
                new_scalars.update(produced)
                scalars_view.update(produced)
            lo, hi = bucket.bounds[first], bucket.bounds[stop]
            if bucket.fresh and in_place:  # (direct: only add the gradients where they are)
                lr = float(group["lr"])
                params = bucket.params[first:stop]
                grads = [p.grad for p in params]
                torch._foreach_add_(params, grads, alpha=lr if group["maximize"] else -lr)
            elif hi > lo:  # (zero-size parameters: nothing to compute, the count advances)
                rows = slice(lo, hi)
                self._run_kernel(kernel, compiled, bucket, rows, group, coefficients, scale, finite)
            if finite is None:
                for key_, value in new_scalars.items():
                    bucket.scalars[key_][first:stop] = value
                continue
            mask = finite if n is None else finite.view(n)
            counts = bucket.steps[first:stop]
            counts.add_(mask.to(counts.dtype))
            for key_, value in new_scalars.items():
                kept = bucket.scalars[key_][first:stop]
                kept.copy_(torch.where(mask, value, committed[key_]))
        bucket.advance()

    def _run_kernel(
        self,
        kernel: Callable[..., None],
        compiled: bool,
        bucket: FlatBucket,
        rows: slice,
        group: Mapping[str, Any],
        coefficients: list[dict[str, Any]],
        scale: Tensor | None,
        finite: Tensor | None,
    ) -> None:
        n = bucket.members
        clip = group["clip_value"]
        if n is None and not compiled and finite is None:
            # Eager kernels are fastest with plain Python scalars (the coefficients are).
            lr, tensors = float(group["lr"]), coefficients
            if clip is not None:
                clip = float(clip)
        else:
            numbers = [group["lr"]] + [v for c in coefficients for v in c.values()]
            if clip is not None:
                numbers.append(clip)
            if n is not None:
                # (1, N) tensors, whatever is per member: new values never recompile.
                packed = M.pack(numbers, n, bucket.device, bucket.compute_dtype, (1, n))
            else:
                # A compiled kernel gets every number as a 0-dim tensor in the parameters'
                # dtype: values change every step (bias corrections, schedules) without
                # recompiling.
                packed = _pack(numbers, bucket)
            lr, rest = packed[0], packed[1:]
            tensors, i = [], 0
            for c in coefficients:
                tensors.append(dict(zip(c, rest[i : i + len(c)], strict=True)))
                i += len(c)
            clip = rest[i] if clip is not None else None
        whole = rows.start == 0 and rows.stop == bucket.width
        if compiled:
            if whole:
                param, grad, state = bucket.param, bucket.grad, bucket.state
            else:
                param, grad = bucket.param[rows], bucket.grad[rows]
                state = {k: v[rows] for k, v in bucket.state.items()}
            kernel(param, grad, state, tensors, lr, clip, scale, finite)
            return
        # Eagerly, each operation of the chain makes a temporary: over cache-sized chunks
        # they stay in cache and the allocator reuses them, instead of faulting in fresh
        # pages for every full-length temporary.
        for param, grad, state in bucket.chunks(rows, EAGER_CHUNK):
            kernel(param, grad, state, tensors, lr, clip, scale, finite)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset gradients, as torch.optim does: ``set_to_none=True`` (the default) makes them
        None, so that a parameter backward gives nothing to is not updated by the next step.

        With the flat engine, ``set_to_none=False`` zeroes the flat gradient buffer in place
        (one pass, and backward keeps accumulating straight into flat storage); with
        ``set_to_none=True``, backward's fresh gradients are copied in by the next step.
        """
        if self.engine != "flat" or self._buckets is None or set_to_none:
            return super().zero_grad(set_to_none=set_to_none)
        zeroed: set[int] = set()
        for bucket in self._buckets:
            if bucket.zero_grad():
                zeroed.update(map(id, bucket.params))
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None or id(p) in zeroed:
                    continue
                if p.grad.grad_fn is not None:
                    p.grad.detach_()
                else:
                    p.grad.requires_grad_(False)
                p.grad.zero_()
        return None

    def _update_parameter(
        self,
        p: Tensor,
        grad: Tensor,
        group: Mapping[str, Any],
        chain: list[tuple[Transform, dict[str, bool]]],
        finite: Tensor | None,
    ) -> None:
        state = self.state[p]
        target = p  # the tensor the result is written to
        compute = self._compute_dtype(p)
        if compute != p.dtype:
            p, grad = p.detach().to(compute), grad.to(compute)
        if "step" not in state:
            # State loaded from a torch.optim state dict keeps its buffers and only gains what
            # is missing. torch's SGD is the one that counts no steps; a buffer it saved means
            # at least one update happened, which is all HeavyBall's first-step rule needs.
            state["step"] = torch.tensor(1.0 if state else 0.0, dtype=_step_dtype())
            for stage, _ in chain:
                for key, value in stage.init(p, group).items():
                    state.setdefault(key, value)

        if finite is None:
            # Rebound, not incremented in place: the flat engine shares one step tensor
            # between the parameters of a bucket.
            state["step"] = state["step"] + 1
            step: float | Tensor = state["step"].item()  # host tensor: no device sync
        else:
            # float64 (where the device has it) so that beta**step is as exact as the host
            # path's Python float.
            wide = torch.float32 if p.device.type == "mps" else torch.float64
            step = state["step"].to(p.device, wide) + 1

        u, new_state = grad, {}
        view = _ChainedState(state, new_state)
        for stage, flags in chain:
            coefficients, scalars = stage.coefficients(group, step, view)
            new_state.update(scalars)
            u, produced = stage.apply(u, p, view, coefficients, flags)
            new_state.update(produced)

        if finite is None:
            lr = group["lr"]
            if target is not p:
                target.copy_(p - lr * u)
            elif isinstance(lr, Tensor):  # (differentiable=True: autograd follows lr too)
                p.sub_(lr * u)
            else:
                p.add_(u, alpha=-lr)
            state.update(new_state)
            return
        target.copy_(torch.where(finite, p - group["lr"] * u, p))
        for key, value in new_state.items():
            # Absent state means zeros to every stage (see transforms._state), so a refused
            # step that would have created a buffer leaves zeros in its place.
            old = state.get(key)
            if old is None:
                old = torch.zeros_like(value)
            state[key] = torch.where(finite, value, old)
        previous = state["step"].to(p.device)
        state["step"] = torch.where(finite, step.to(previous.dtype), previous)

    def _compute_dtype(self, p: Tensor) -> torch.dtype:
        """``state_dtype`` for parameters narrower than it, else the parameters' own dtype."""
        if self.state_dtype is None or not p.is_floating_point():
            return p.dtype
        wider = torch.finfo(self.state_dtype).bits > torch.finfo(p.dtype).bits
        return self.state_dtype if wider else p.dtype

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        # torch.optim casts loaded state to each parameter's dtype and device. Take back from
        # the source what that loses: 0-dim scalar state (NAdam's mu_product) lives on the
        # host in float64, and with state_dtype the per-element state keeps its precision.
        params = [p for group in self.param_groups for p in group["params"]]
        saved_ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        for index, p in zip(saved_ids, params, strict=True):
            compute = self._compute_dtype(p)
            for key, value in state_dict["state"].get(index, {}).items():
                if key == "step" or not isinstance(value, Tensor):
                    continue
                if not value.is_floating_point():
                    continue
                if key in self._scalar_keys:  # (0-dim, or (N,) in a member group)
                    self.state[p][key] = value.to("cpu", torch.float64)
                elif self.state_dtype is not None:
                    self.state[p][key] = value.to(p.device, compute)
        self._rebuild_flat()

    def _rebuild_flat(self) -> None:
        """Move the parameters into (new) flat storage now, not at the next step, so that the
        forward passes before it see them laid out as an uninterrupted run had them: member
        storage is ``(D, N)``, and a matmul over other strides may round differently. A
        resumed run, or the members left after ``keep_members``, then continue bit for bit."""
        self._buckets = None
        if self.engine == "flat":
            with torch.no_grad():
                self._flat_buckets()

    # -- members -------------------------------------------------------------------------

    @property
    def members(self) -> int | None:
        """N when the param groups are member groups (``members=N``), else None."""
        return self._members

    @property
    def refused_members(self) -> Tensor | None:
        """``(N,)`` bool: the members whose gradient held NaN/Inf on the last checked step.

        With ``nonfinite="skip"`` exactly their rows were left unchanged; with ``"raise"`` the
        whole step was refused and these are the members the error names. A device tensor on
        the sync-free path (reading it does not wait). None before the first checked step of
        a member optimizer, and with ``nonfinite="ignore"``.
        """
        return self._refused

    @property
    def skipped_steps_per_member(self) -> Tensor | None:
        """``(N,)`` int64: how many steps each member had refused (``nonfinite="skip"``), None
        until the first refusal. :attr:`skipped_steps` counts steps where any member was."""
        return self._member_skipped

    @torch.no_grad()
    def keep_members(self, index: Tensor | Sequence[int]) -> None:
        """Keep only the members ``index`` (kept member indices, in their new order), in place.

        Every parameter of the member groups is rebound to its kept rows (``p.data =
        p.data[index]``: the caller's Parameter objects stay the same objects, their data is a
        new, smaller tensor), and so are their gradients, every state tensor, the per-member
        step counts and hyperparameters (``initial_lr`` of a schedule included) and the
        per-member counters. The pruned members stop costing compute; the survivors continue
        exactly as if nothing had happened (the flat engine rebuilds its storage at the next
        step). A refused step's deferred error is raised first (:meth:`check_finite`).
        """
        n = self._members
        if n is None:
            raise ValueError("keep_members needs member groups (members=N)")
        index = _member_index(index, n)
        self.check_finite()
        for group in self.param_groups:
            for p in group["params"]:
                self._keep_rows(p, index, n)
            for key, value in group.items():
                if key not in ("params", "param_names"):
                    group[key] = M.take(value, index, n)
            group["members"] = len(index)
        self._member_skipped = M.take(self._member_skipped, index, n)
        self._refused = M.take(self._refused, index, n)
        self._members = len(index)
        self._rebuild_flat()

    def _keep_rows(self, p: Tensor, index: Tensor, n: int) -> None:
        grad = p.grad
        p.data = p.data[index.to(p.device)]  # before the grad, whose shape must match it
        if grad is not None:
            p.grad = grad[index.to(grad.device)]
        state = self.state.get(p)
        for key, value in (state or {}).items():
            state[key] = M.take(value, index, n)

    # -- NaN / Inf bookkeeping ---------------------------------------------------------------

    @property
    def skipped_steps(self) -> int:
        """How many steps were refused for NaN/Inf gradients (reading it syncs the device)."""
        skipped = self._skipped_host
        if self._skipped_device is not None:
            skipped += int(self._skipped_device.item())
        return skipped

    def check_finite(self) -> None:
        """Raise for a refused step whose check was deferred (guarded ``"raise"`` mode)."""
        if self._pending_check is None:
            return
        flags, event, work = self._pending_check
        self._pending_check = None
        if event is not None:
            event.synchronize()
        if bool(flags.all()):
            return
        where = ""
        if flags.dim() == 2:  # (params, N): a member optimizer names the members too
            where = f" of members {_listed((~flags.all(dim=0)).nonzero().flatten().tolist())}"
            flags = flags.all(dim=1)
        labels = [
            _param_label(group, p)
            for (group, p), ok in zip(
                ((g, p) for g, params in work for p in params), flags.tolist(), strict=True
            )
            if not ok
        ]
        raise NonFiniteGradientError(
            f"NaN or Inf in the gradients{where} of {', '.join(labels)}; that step was refused "
            "on the device (parameters and state unchanged)"
        )

    def _after_guarded_step(self, finite: Tensor, flags: Tensor, work: list) -> None:
        if self.nonfinite == "skip":
            refused = ~finite
            if refused.dim():  # members: each counts its own refusals
                self._add_member_skips(refused)
                refused = refused.any()
            refused = refused.to(torch.int64)
            self._skipped_device = (
                refused if self._skipped_device is None else self._skipped_device + refused
            )
            return
        # Copy the per-gradient flags to the host without waiting; they are read (and named
        # in the error) at the next step, when the copy has long finished.
        if flags.device.type == "cuda":
            host = torch.empty(flags.shape, dtype=torch.bool, pin_memory=True)
            host.copy_(flags, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self._pending_check = (host, event, work)
        else:
            self._pending_check = (flags.clone(), None, work)

    def _add_member_skips(self, refused: Tensor) -> None:
        counts = self._member_skipped
        if counts is None:
            counts = torch.zeros(refused.shape, dtype=torch.int64, device=refused.device)
        self._member_skipped = counts.to(refused.device) + refused.to(torch.int64)

    def _describe_nonfinite(self, work: list) -> str:
        bad, members = [], set()
        for group, params in work:
            for p in params:
                grad = rows(p.grad, self._members or 1)
                nans = torch.isnan(grad).sum(dim=1).tolist()
                infs = torch.isinf(grad).sum(dim=1).tolist()
                for k, (nan, inf) in enumerate(zip(nans, infs, strict=True)):
                    if nan or inf:
                        who = "" if self._members is None else f" member {k}"
                        bad.append(f"{_param_label(group, p)}{who}: {nan} NaN, {inf} Inf")
                        members.add(k)
        where = "" if self._members is None else f" in members {_listed(members)}"
        return (
            f"non-finite gradient{where}, step refused (parameters and state unchanged): "
            + "; ".join(bad)
            + ". Lower the learning rate, clip gradients (max_grad_norm=...), or pass "
            "nonfinite='skip' to skip such steps."
        )

    def __repr__(self) -> str:
        chain = " -> ".join(type(t).__name__ for t in self.transforms)
        return f"{type(self).__name__}({chain}, groups={len(self.param_groups)})"


class _ChainedState(Mapping):
    """State as a later stage sees it: this step's new values over the committed ones."""

    def __init__(self, committed: Mapping[str, Tensor], new: Mapping[str, Tensor]) -> None:
        self._committed, self._new = committed, new

    def __getitem__(self, key: str) -> Tensor:
        return self._new[key] if key in self._new else self._committed[key]

    def __iter__(self):
        return iter(set(self._committed) | set(self._new))

    def __len__(self) -> int:
        return len(set(self._committed) | set(self._new))


def _pack(numbers: list, bucket: FlatBucket) -> list[Tensor]:
    """Numbers (floats or 0-dim tensors) as 0-dim tensors on the bucket's device.

    At least float32: bf16 would round lr 1e-2 to 0.0100098 and beta2 0.999 to 1.0. The
    Python numbers travel in one pinned, non-blocking copy; a blocking host-to-device copy
    would synchronize the device on every step.
    """
    dtype = torch.promote_types(bucket.compute_dtype, torch.float32)
    floats = [float(n) for n in numbers if not isinstance(n, Tensor)]
    host = torch.tensor(floats, dtype=torch.float64).to(dtype)
    if bucket.device.type == "cuda":
        host = host.pin_memory()
    packed = iter(host.to(bucket.device, non_blocking=True).unbind()) if floats else iter(())
    return [n.to(bucket.device, dtype) if isinstance(n, Tensor) else next(packed) for n in numbers]


def _same_tensors(a: list[Tensor], b: list[Tensor]) -> bool:
    # Identity, compared in C (``==`` on tensors would compare values).
    return len(a) == len(b) and all(map(operator.is_, a, b))


def _check_supported(p: Tensor) -> None:
    if p.grad.is_sparse:
        raise ValueError("ravine optimizers do not support sparse gradients; use torch.optim here")
    if torch.is_complex(p):
        raise ValueError("ravine optimizers do not support complex parameters yet")


def _param_label(group: Mapping[str, Any], p: Tensor) -> str:
    names = group.get("param_names")
    for i, q in enumerate(group["params"]):
        if q is p:
            name = names[i] if names else f"#{i}"
            return f"parameter {name} {tuple(p.shape)}"
    return f"parameter {tuple(p.shape)}"


def _step_dtype() -> torch.dtype:
    # The same convention as torch.optim, so step tensors in state dicts match.
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _scalar_state_keys(transforms: Sequence[Transform], defaults: Mapping[str, Any]) -> set[str]:
    """The state keys that stages keep 0-dim (one per member in a member group)."""
    probe = torch.zeros(1)
    return {
        key
        for stage in transforms
        for key, value in stage.init(probe, defaults).items()
        if value.dim() == 0
    }


def _member_index(index: Tensor | Sequence[int], n: int) -> Tensor:
    """``index`` as a 1-D host long tensor of distinct members in ``[0, n)``."""
    index = torch.as_tensor(index)
    if index.numel() == 0:
        raise ValueError("keep_members needs at least one member index, got none")
    if index.dim() != 1 or index.dtype == torch.bool or index.is_floating_point():
        raise ValueError(
            f"keep_members takes a 1-D list or tensor of member indices, got {index!r}"
        )
    index = index.to("cpu", torch.long)
    values = index.tolist()
    if not values or min(values) < 0 or max(values) >= n or len(set(values)) != len(values):
        raise ValueError(
            f"keep_members needs distinct member indices in [0, {n}), at least one; got {values}"
        )
    return index


def _listed(members: Iterable[int]) -> str:
    return ", ".join(map(str, sorted(members)))


def default_engine(
    params: Sequence[Tensor], differentiable: bool = False, members: int | None = None
) -> str:
    """The engine ``engine="auto"`` runs: ``"flat"``, except

    * where the step must be recorded by autograd (``differentiable=True``), or a parameter
      is complex: only the simple engine handles those (it raises the clear error for
      complex parameters);
    * in member groups (``members=N``, ravine's own batched runs): there the simple engine
      keeps every parameter's ``(N, ...)`` layout, so member k's forward and backward compute
      bit for bit what a run of its own computes, whatever N and whoever left. The flat
      engine's ``(D, N)`` storage gives the model's matrix products other strides (and
      another rounding); ``engine="flat"`` still selects it, for speed.
    """
    if differentiable or members is not None or any(p.is_complex() for p in params):
        return "simple"
    return "flat"


def _requested_engine(engine: str, flags: Mapping[str, Any]) -> str:
    """The engine that ``engine=`` and torch's implementation flags ask for together.

    * ``foreach``/``fused``: None or False change nothing (ravine has neither of torch's
      implementations to turn off); True asks for a multi-tensor or fused step, which is the
      flat engine (the same numbers), so ``engine="simple"`` with it is refused. Both True
      together is refused, as torch refuses it.
    * ``differentiable=True``: the update is recorded by autograd; only the simple engine can
      (the flat one moves parameters into flat storage, which autograd cannot follow).
    * ``capturable=True`` (a step that CUDA graphs can capture) is refused: ravine works out
      each step's coefficients on the host, which a captured graph would freeze.
    """
    for key in ("foreach", "fused"):
        value = flags.get(key)
        if value is not None and not is_bool(value):
            raise ValueError(f"{key} must be None, True or False, got {value!r}")
    for key in ("capturable", "differentiable"):
        if key in flags and not is_bool(flags[key]):
            raise ValueError(f"{key} must be True or False, got {flags[key]!r}")
    if flags.get("capturable"):
        raise ValueError(
            "capturable=True is not supported: ravine computes each step's coefficients on the "
            "host, which a captured CUDA graph would freeze. Its steps already run without a "
            "host sync on accelerators (NaN/Inf check included); for CUDA-graph capture use "
            "torch.optim with capturable=True"
        )
    fast = [key for key in ("foreach", "fused") if flags.get(key)]
    if len(fast) == 2:
        raise ValueError("fused=True and foreach=True cannot be set together (as in torch.optim)")
    if flags.get("differentiable"):
        if fast:
            raise ValueError(
                f"{fast[0]}=True does not support differentiable=True (as in torch.optim): the "
                "differentiable step runs on the simple engine; drop one of them"
            )
        if engine == "flat":
            raise ValueError(
                "differentiable=True needs engine='simple' (or the default engine='auto'): the "
                "flat engine keeps parameters in flat storage, which autograd cannot follow"
            )
        return "simple" if engine == "auto" else engine
    if fast:
        if engine == "simple":
            raise ValueError(
                f"{fast[0]}=True asks for a fused multi-tensor step, which is ravine's flat "
                "engine; engine='simple' runs per tensor: drop one of them"
            )
        return "flat"
    return engine


def _host_number(value: Any) -> Any:
    """A 1-element tensor that needs no grad as a Python float (pairs entry by entry);
    anything else as it is."""
    if isinstance(value, Tensor):
        real = not value.is_complex() and value.dtype != torch.bool
        if value.numel() == 1 and real and not value.requires_grad:
            return value.item()
        return value
    if isinstance(value, tuple) and any(isinstance(v, Tensor) for v in value):
        numbers = tuple(_host_number(v) for v in value)
        return value if all(a is b for a, b in zip(numbers, value, strict=True)) else numbers
    return value
