"""The flat engine: a param group's parameters, gradients and state in contiguous storage, and
one fused pass per step over it.

For each param group and each (device, dtype) among its parameters, a :class:`FlatBucket`
holds one buffer for the parameters, one for the gradients and one per state tensor.
Parameters, ``.grad`` and ``optimizer.state[p][key]`` become views into them, so ``backward()``
accumulates straight into flat storage, ``state_dict()`` sees ordinary per-parameter tensors,
and one step is one pass over a few long vectors instead of a Python loop over tensors.

The pass runs every stage's elementwise half (``Transform.apply``) with the scalar half
(``Transform.coefficients``) computed once per bucket on the host and handed in as 0-dim
tensors, so that ``torch.compile`` fuses the whole chain into one kernel that a new ``lr``
does not recompile. Without compilation the same function runs eagerly on the flat buffers.

Anything that breaks the layout is repaired, never trusted: a ``.grad`` replaced by a new
tensor (``model.zero_grad()`` sets them to None and backward allocates new ones) is copied
in, a state tensor replaced by ``load_state_dict`` is copied in, a parameter whose ``.data``
was replaced, or that joins or leaves the set with gradients, rebuilds the buckets. What the
flat layout cannot express — parameters of one group at different step counts (one skipped
a step, or joined late) — runs on the simple engine from then on, with a warning.

Member groups (``members=N``, see ``members.py``) keep the member index innermost: each
buffer is ``(D, N)``, element j of every member side by side, and a parameter ``(N, ...)`` is
the transposed view of a block of rows, ``buffer[o : o + d].T``. Per-member coefficients are
then ``(1, N)`` tensors that broadcast in the same single fused pass over contiguous memory.
The parameters are not contiguous (their member stride is 1) but dense, and their gradients,
views with the same strides, obey autograd's layout contract. (Member-major ``(N, D)``
storage would give each parameter contiguous rows, but a block of columns is not dense:
backward then warns on every accumulation that the gradient breaks that contract.)
"""

from __future__ import annotations

import operator
import types
import warnings
from collections.abc import Callable, Mapping, Sequence
from itertools import repeat
from typing import Any

import torch
from torch import Tensor

from ravine.optim import members as M
from ravine.optim.transforms import Transform


class FlatBucket:
    """Parameters of one group on one (device, dtype), their gradients and their state, flat."""

    def __init__(
        self,
        params: Sequence[Tensor],
        group: Mapping[str, Any],
        stages: Sequence[Transform],
        state: dict[Tensor, dict[str, Any]],
        step_dtype: torch.dtype,
        *,
        state_dtype: torch.dtype | None = None,
        members: int | None = None,
    ) -> None:
        self.params = list(params)
        self.members = members
        steps = {_step_count(state.get(p, {}), members) for p in self.params}
        if len(steps) > 1:
            raise Unflattenable("parameters of one group are at different step counts")
        first = self.params[0]
        self.device, self.dtype = first.device, first.dtype
        self.compute_dtype = state_dtype or first.dtype  # state and arithmetic
        rows = members or 1
        self.offsets, total = [], 0  # (in elements of one row)
        for p in self.params:
            self.offsets.append(total)
            total += p.numel() // rows
        self.width = total
        self.numel = total * rows
        shape = (total,) if members is None else (total, members)
        self.param = torch.empty(shape, device=self.device, dtype=self.dtype)
        self.grad = torch.zeros(shape, device=self.device, dtype=self.dtype)
        for p, view in zip(self.params, self._views(self.param), strict=True):
            view.copy_(p.detach())
            p.data = view
        self.grad_views = self._views(self.grad)
        for p, view in zip(self.params, self.grad_views, strict=True):
            if p.grad is not None:
                _check_dense(p.grad)
                view.copy_(p.grad)
            p.grad = view

        # Per-element state: the stages' initial values, overwritten by whatever the
        # parameters already have (a step taken by the simple engine, a loaded state dict).
        self.state: dict[str, Tensor] = {}
        self.scalars: dict[str, Tensor] = {}
        self.step = torch.tensor(steps.pop(), dtype=step_dtype)  # () or (N,)
        started = bool((self.step > 0).any())
        like = self.param if self.compute_dtype == self.dtype else self.param.to(self.compute_dtype)
        if members is not None:
            like = self.member_rows(like)  # (N, D): the stages see one row per member
        init_group = group if members is None else M.shaped_group(group, like)
        for stage in stages:
            for key, value in stage.init(like, init_group).items():
                if value.dim() == 0:
                    self.scalars[key] = value if members is None else value.expand(rows).clone()
                elif members is None:
                    self.state[key] = value
                else:
                    self.state[key] = value.T.contiguous()  # back to (D, N)
        for p in self.params:
            for key, value in state.get(p, {}).items():
                if key in self.scalars and isinstance(value, Tensor):
                    self.scalars[key] = value.detach().to("cpu", torch.float64).clone()
        self._attach_state(state, started)

    def member_rows(self, flat: Tensor) -> Tensor:
        """A ``(D, N)`` buffer as ``(N, D)``: row k is member k (a view)."""
        return flat.T

    def _views(self, flat: Tensor) -> list[Tensor]:
        if self.members is not None:  # a block of rows of the (D, N) buffer, transposed
            n = self.members
            return [
                flat[o : o + p.numel() // n].T.view(p.shape)
                for p, o in zip(self.params, self.offsets, strict=True)
            ]
        return [
            flat[o : o + p.numel()].view_as(p)
            for p, o in zip(self.params, self.offsets, strict=True)
        ]

    def chunks(self, size: int) -> list[slice]:
        """Slices that cut the buffers into contiguous pieces of about ``size`` elements (whole
        rows of a member bucket's ``(D, N)``, so that the ``(1, N)`` coefficients apply)."""
        step = size if self.members is None else max(1, size // self.members)
        return [slice(start, start + step) for start in range(0, self.width, step)]

    def _attach_state(self, state: dict[Tensor, dict[str, Any]], started: bool) -> None:
        """Make ``state[p][key]`` views into flat storage, copying in what is already there."""
        self.state_views = {key: self._views(flat) for key, flat in self.state.items()}
        for key, views in self.state_views.items():
            for p, view in zip(self.params, views, strict=True):
                existing = state.setdefault(p, {}).get(key)
                if isinstance(existing, Tensor) and existing.shape == p.shape:
                    view.copy_(existing)
                state[p][key] = view
        for p in self.params:
            state.setdefault(p, {})
            state[p]["step"] = self.step
            for key, value in self.scalars.items():
                state[p][key] = value
        self._started = started
        self._remember_layout()

    def layout_intact(self) -> bool:
        """Whether every parameter still lives in the flat buffer (else the bucket is rebuilt)."""
        # One list comparison: this runs on every step. Zero-size tensors have no storage to
        # point into (data_ptr 0), so they are left out on both sides.
        return list(map(Tensor.data_ptr, self._sized)) == self._pointers

    def _remember_layout(self) -> None:
        size = self.param.element_size() * (self.members or 1)  # bytes per offset
        base = self.param.data_ptr()
        pairs = [(p, o) for p, o in zip(self.params, self.offsets, strict=True) if p.numel()]
        self._sized = [p for p, _ in pairs]
        self._pointers = [base + o * size for _, o in pairs]

    def sync(self, state: dict[Tensor, dict[str, Any]]) -> None:
        """Copy in gradients and state tensors that were replaced since the last step.

        Identity checks first, mapped in C: on the usual step nothing was replaced and this
        costs a few pointer comparisons per parameter (it runs on every step).
        """
        if not all(map(operator.is_, map(_GRAD, self.params), self.grad_views)):
            for p, view in zip(self.params, self.grad_views, strict=True):
                if p.grad is not view:
                    _check_dense(p.grad)
                    view.copy_(p.grad)
                    p.grad = view
        states = [state[p] for p in self.params]
        for key, views in self.state_views.items():
            if all(map(operator.is_, map(dict.get, states, repeat(key)), views)):
                continue
            for p_state, p, view in zip(states, self.params, views, strict=True):
                value = p_state.get(key)
                if value is not view:
                    if isinstance(value, Tensor) and value.shape == p.shape:
                        view.copy_(value)
                    p_state[key] = view
        # The step tensor is shared by the whole bucket and rebound together with any scalar
        # state, so one identity per parameter tells whether anyone replaced them.
        step = self.step
        if all(map(operator.is_, map(dict.get, states, repeat("step")), repeat(step))):
            return
        steps = {_step_count(p_state, self.members) for p_state in states}
        if len(steps) > 1:
            raise Unflattenable("parameters of one group are at different step counts")
        self.step = torch.tensor(steps.pop(), dtype=self.step.dtype)
        for key in self.scalars:
            value = states[0][key]
            self.scalars[key] = value.detach().to("cpu", torch.float64)
        for p_state in states:
            p_state["step"] = self.step
            p_state.update(self.scalars)

    def zero_grad(self) -> None:
        self.grad.zero_()


_GRAD = operator.attrgetter("grad")


def _check_dense(grad: Tensor) -> None:
    if grad.is_sparse or torch.is_complex(grad):
        raise ValueError("ravine optimizers do not support sparse or complex gradients")


def _step_count(state: Mapping[str, Any], members: int | None = None) -> float | tuple:
    """The step count, or one per member (a tuple, to compare and to build a tensor from)."""
    # No state: a parameter about to take its first step. State without a step: loaded from
    # torch's SGD, which counts none (at least one update happened; see engine.py).
    if "step" in state:
        if members is None:
            return float(state["step"])
        step = torch.as_tensor(state["step"], dtype=torch.float64)
        return tuple(step.expand(members).tolist())
    count = 1.0 if state else 0.0
    return count if members is None else (count,) * members


class Unflattenable(Exception):
    """This step cannot run on flat storage; the simple engine takes it."""


def fused_update(
    stages: Sequence[Transform],
    flags: Sequence[Mapping[str, bool]],
    clip_value: bool,
    clip_scale: bool,
    maximize: bool,
    guarded: bool,
    compute_dtype: torch.dtype,
) -> Callable[..., None]:
    """The step over one bucket, with the structure (stages, variants, options) baked in.

    Its arguments are tensors only — flat param, grad, state buffers, and the 0-dim
    coefficients — so a compiled version is reused whatever the hyperparameters' values.
    """

    def update(
        param: Tensor,
        grad: Tensor,
        state: dict[str, Tensor],
        coefficients: list[dict[str, Tensor]],
        lr: Tensor,
        clip: Tensor | None,
        scale: Tensor | None,
        finite: Tensor | None,
    ) -> None:
        u = grad.to(compute_dtype)
        weights = param.to(compute_dtype)  # no copy when the dtypes agree
        if clip_value:
            u = torch.clamp(u, -clip, clip)
        if clip_scale:
            u = u * scale
        if maximize:
            u = -u
        new: dict[str, Tensor] = {}
        view = {**state}
        for stage, stage_flags, c in zip(stages, flags, coefficients, strict=True):
            u, produced = stage.apply(u, weights, view, c, stage_flags)
            new.update(produced)
            view.update(produced)
        updated = weights - lr * u
        if guarded:
            updated = torch.where(finite, updated, weights)
            new = {k: torch.where(finite, v, state[k]) for k, v in new.items()}
        param.copy_(updated)
        for key, value in new.items():
            state[key].copy_(value)

    return update


class FusedKernels:
    """Compiled (or eager) ``fused_update`` functions, one per structure, built on first use."""

    def __init__(self, compile: bool, backend: Any = "inductor") -> None:
        self.compile = compile
        self.backend = backend
        self._cache: dict[tuple, Callable[..., None]] = {}
        self.compile_failed = False

    @property
    def compiling(self) -> bool:
        return self.compile and not self.compile_failed

    def get(self, key: tuple, build: Callable[[], Callable[..., None]]) -> Callable[..., None]:
        kernel = self._cache.get(key)
        if kernel is None:
            kernel = build()
            if self.compile and not self.compile_failed:
                kernel = _compiled(_with_own_code(kernel, (key, self.backend)), self)
            self._cache[key] = kernel
        return kernel


# Dynamo keeps its compiled graphs per code object and refuses an 8th recompilation of one
# (``recompile_limit``). Were every structure a variant of the one ``update`` inside
# ``fused_update``, the ninth optimizer configuration in a process (a sweep, a study) would
# fail to compile and run eagerly. So each structure gets its own copy of the code object,
# shared by every optimizer with that structure: dynamo's guards tell apart what differs
# between their stages (a custom stage's attributes), and optimizers whose stages pass the
# same guards start without compiling. The copies live as long as the process.
_CODE_BY_STRUCTURE: dict[tuple, types.CodeType] = {}


def _with_own_code(kernel: Callable[..., None], key: tuple) -> Callable[..., None]:
    code = _CODE_BY_STRUCTURE.get(key)
    if code is None:
        code = kernel.__code__.replace(co_name=f"{kernel.__name__}_{len(_CODE_BY_STRUCTURE)}")
        _CODE_BY_STRUCTURE[key] = code
    return types.FunctionType(
        code, kernel.__globals__, code.co_name, kernel.__defaults__, kernel.__closure__
    )


def _compiled(kernel: Callable[..., None], owner: FusedKernels) -> Callable[..., None]:
    # dynamic=None: the first bucket size is compiled static; a second size recompiles once
    # with a symbolic size that serves every size after it (param groups, rebuilt layouts).
    compiled = torch.compile(kernel, fullgraph=True, dynamic=None, backend=owner.backend)
    warm = False

    def run(*args: Any) -> None:
        nonlocal warm
        if owner.compile_failed:
            return kernel(*args)
        try:
            if warm:
                return compiled(*args)
            with warnings.catch_warnings():
                # The compiler stack imports deprecated parts of torch on first use: a
                # warnings-as-errors setting must not turn that into a failed compile.
                warnings.simplefilter("ignore", DeprecationWarning)
                result = compiled(*args)
            warm = True
            return result
        except Exception as error:  # no C++ toolchain, unsupported backend, ...
            owner.compile_failed = True
            warnings.warn(
                f"torch.compile failed ({type(error).__name__}: {error}); the flat engine "
                "continues without compilation",
                RuntimeWarning,
                stacklevel=4,
            )
            return kernel(*args)

    return run
