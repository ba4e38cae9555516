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

The step updates what torch.optim's updates: the parameters whose ``.grad`` is not None.
``zero_grad()`` (``set_to_none=True``, torch's default) sets them to None, backward allocates
fresh ones, and the step copies them in; ``zero_grad(set_to_none=False)`` zeroes the flat
buffer in place and backward accumulates straight into it. A parameter without a gradient on
a step keeps its values, state and step count, so counts may differ within a bucket: they
are kept per parameter (``state[p]["step"]`` is a view of one counter per parameter, what
torch's state dicts hold), and a step runs one fused pass per run of parameters that share a
count (:meth:`FlatBucket.segments`), one pass over everything in the usual case.

Anything else that breaks the layout is repaired, never trusted: a state tensor or counter
replaced by ``load_state_dict`` is copied in; a parameter whose ``.data`` was replaced, a
parameter's first gradient, or a parameter frozen with ``requires_grad_(False)`` (it leaves,
taking its data and state with it) rebuilds the buckets.

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

import logging
import operator
import time
import types
import warnings
from collections.abc import Callable, Mapping, Sequence
from itertools import repeat
from typing import Any

import torch
from torch import Tensor

from ravine.optim import members as M
from ravine.optim.transforms import Transform

logger = logging.getLogger("ravine.optim")


class FlatBucket:
    """Parameters of one group on one (device, dtype), their gradients and their state, flat.

    Which parameters a step updates is torch's rule: those with a gradient. A parameter whose
    ``.grad`` is None on a step (``zero_grad()`` sets them to None; backward gave it nothing)
    keeps its values, state and step count, while its neighbours in the buffers move on.
    Step counts (and 0-dim state such as NAdam's ``mu_product``) are kept per parameter,
    as torch keeps them, in one tensor of which ``state[p]["step"]`` is a view. Parameters
    that took the same steps form a *class* (:meth:`segments`): one step is one fused pass
    per run of consecutive parameters of one class, a single pass over everything as long as
    every parameter gets a gradient on every step.
    """

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
        self._chunks: dict[tuple, list] = {}
        # ``direct``: set by the engine each step where its pass only adds the gradients to the
        # parameters (plain SGD, eager): fresh gradients are then read where they are, not
        # copied in first (``fresh``).
        self.direct = self.fresh = False
        self.kernels: dict[tuple, Callable[..., None]] = {}  # (set by the engine, per structure)
        first = self.params[0]
        self.device, self.dtype = first.device, first.dtype
        self.on_cpu = self.device.type == "cpu"
        self.compute_dtype = state_dtype or first.dtype  # state and arithmetic
        rows = members or 1
        self.offsets, total = [], 0  # (in elements of one row)
        for p in self.params:
            self.offsets.append(total)
            total += p.numel() // rows
        self.bounds = [*self.offsets, total]  # parameter i is rows bounds[i]:bounds[i + 1]
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
        self._note_gradients()

        # Per-element state: the stages' initial values, overwritten by whatever the
        # parameters already have (a step taken by the simple engine, a loaded state dict).
        self.state: dict[str, Tensor] = {}
        initial_scalars: dict[str, Tensor] = {}
        like = self.param if self.compute_dtype == self.dtype else self.param.to(self.compute_dtype)
        if members is not None:
            like = self.member_rows(like)  # (N, D): the stages see one row per member
        init_group = group if members is None else M.shaped_group(group, like)
        for stage in stages:
            for key, value in stage.init(like, init_group).items():
                if value.dim() == 0:
                    initial_scalars[key] = value
                elif members is None:
                    self.state[key] = value
                else:
                    self.state[key] = value.T.contiguous()  # back to (D, N)
        # Counters, one row per parameter: (P,) or (P, N). On the host until a sync-free
        # step moves them to the device (``counters_on``).
        counts = [_step_count(state.get(p, {}), members) for p in self.params]
        self.steps = torch.tensor(counts, dtype=step_dtype)  # (P,) or (P, N)
        self.scalars: dict[str, Tensor] = {}
        for key, value in initial_scalars.items():
            column = value.detach().to("cpu", torch.float64).expand(self.steps.shape).clone()
            for i, p in enumerate(self.params):
                existing = state.get(p, {}).get(key)
                if isinstance(existing, Tensor):
                    column[i] = existing.detach().to("cpu", torch.float64)
            self.scalars[key] = column
        self._attach_state(state)
        self._classify()

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

    def chunks(self, rows: slice, size: int) -> list[tuple[Tensor, Tensor, dict[str, Tensor]]]:
        """``(param, grad, state)`` views of ``rows`` cut into contiguous pieces of about
        ``size`` elements (whole rows of a member bucket's ``(D, N)``, so that the ``(1, N)``
        coefficients apply), made once per bucket and range. On the CPU only: an
        accelerator runs each operation over the whole range at once."""
        key = (rows.start, rows.stop, size)
        cached = self._chunks.get(key)
        if cached is None:
            pieces = [rows]
            if self.device.type == "cpu":
                step = size if self.members is None else max(1, size // self.members)
                pieces = [
                    slice(lo, min(lo + step, rows.stop))
                    for lo in range(rows.start, rows.stop, step)
                ]
            cached = [
                (self.param[c], self.grad[c], {k: v[c] for k, v in self.state.items()})
                for c in pieces
            ]
            self._chunks[key] = cached
        return cached

    def _attach_state(self, state: dict[Tensor, dict[str, Any]]) -> None:
        """Make ``state[p][key]`` views into flat storage, copying in what is already there."""
        self.state_views = {key: self._views(flat) for key, flat in self.state.items()}
        for key, views in self.state_views.items():
            for p, view in zip(self.params, views, strict=True):
                existing = state.setdefault(p, {}).get(key)
                if isinstance(existing, Tensor) and existing.shape == p.shape:
                    view.copy_(existing)
                state[p][key] = view
        self._attach_counters(state)
        self._remember_layout()

    def _attach_counters(self, state: dict[Tensor, dict[str, Any]]) -> None:
        self.step_views = list(self.steps.unbind())
        self.scalar_views = {key: list(value.unbind()) for key, value in self.scalars.items()}
        for i, p in enumerate(self.params):
            p_state = state.setdefault(p, {})
            p_state["step"] = self.step_views[i]
            for key, views in self.scalar_views.items():
                p_state[key] = views[i]

    def counters_on(self, device: torch.device, state: dict[Tensor, dict[str, Any]]) -> None:
        """Keep the step counts and scalar state on ``device`` (the sync-free path commits
        them there through ``torch.where``, never reading them back)."""
        if self.steps.device == device:
            return
        self.steps = self.steps.to(device)
        self.scalars = {key: value.to(device) for key, value in self.scalars.items()}
        self.host_counts = None
        self._attach_counters(state)

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
        """Copy in gradients and state that were replaced since the last step, and note which
        parameters have a gradient this step.

        Identity checks first, mapped in C: on the usual step nothing was replaced and this
        costs a few pointer comparisons per parameter (it runs on every step).
        """
        grads = list(map(_GRAD, self.params))
        self.fresh = False
        if all(map(operator.is_, grads, self.grad_views)):
            self.present = None  # (every parameter has its gradient in place: the usual step)
        elif self.direct:
            # A pass that only adds the gradients (plain SGD) reads them where they are.
            for grad in grads:
                if grad is not None:
                    _check_dense(grad)
            self._note_gradients()
            self.fresh = True
        elif self._all_fresh(grads):
            # Fresh gradients for every parameter (after zero_grad(), torch's default): one
            # multi-tensor copy into the flat buffer instead of a copy per parameter.
            torch._foreach_copy_(self._flat_grad_views(), [g.reshape(-1) for g in grads])
            for p, view in zip(self.params, self.grad_views, strict=True):
                p.grad = view
            self.present = None
        else:
            for p, view in zip(self.params, self.grad_views, strict=True):
                grad = p.grad
                if grad is not None and grad is not view:
                    _check_dense(grad)
                    view.copy_(grad)
                    p.grad = view
            self._note_gradients()
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
        replaced = not all(
            map(operator.is_, map(dict.get, states, repeat("step")), self.step_views)
        ) or any(
            not all(map(operator.is_, map(dict.get, states, repeat(key)), views))
            for key, views in self.scalar_views.items()
        )
        if not replaced:
            return
        # A loaded state dict (or the simple engine) replaced counters: take their values.
        for i, p_state in enumerate(states):
            if p_state.get("step") is not self.step_views[i]:
                count = _step_count(p_state, self.members)
                self.steps[i] = torch.tensor(count, dtype=self.steps.dtype)
            for key, views in self.scalar_views.items():
                value = p_state.get(key)
                if value is not views[i] and isinstance(value, Tensor):
                    views[i].copy_(value.detach())
        self._attach_counters(state)
        self._classify()

    def _flat_grad_views(self) -> list[Tensor]:
        views = getattr(self, "_flat_views", None)
        if views is None:
            views = self._flat_views = [
                self.grad[a:b] for a, b in zip(self.bounds, self.bounds[1:], strict=False)
            ]
        return views

    def _all_fresh(self, grads: list[Tensor | None]) -> bool:
        """Every parameter has a gradient and none lives in this bucket's storage."""
        if self.members is not None or any(g is None for g in grads):
            return False
        for grad in grads:
            _check_dense(grad)
        base = self.grad.untyped_storage().data_ptr()
        return all(
            g.dtype == self.dtype
            and g.device == self.device
            and g.untyped_storage().data_ptr() != base
            for g in grads
        )

    def _note_gradients(self) -> None:
        present = [p.grad is not None for p in self.params]
        self.present = None if all(present) else present

    # -- which parameters a step updates -----------------------------------------------------

    def _classify(self) -> None:
        """Classes of parameters that took the same steps, from their counters' values (read
        on the host once, after a build or a load; later steps keep the classes up to date
        without reading anything back, see :meth:`advance`)."""
        keys = [
            tuple(tuple(v[i].reshape(-1).tolist()) for v in (self.steps, *self.scalars.values()))
            for i in range(len(self.params))
        ]
        self._set_classes(_relabel(keys))
        host = self.steps.device.type == "cpu" and self.members is None
        self.host_counts: list[float] | None = self.steps.tolist() if host else None

    def _set_classes(self, classes: list[int]) -> None:
        self.classes = classes
        self._version = getattr(self, "_version", 0) + 1

    def segments(self) -> list[tuple[int, int]]:
        """The ``(first, stop)`` parameter ranges this step updates: runs of consecutive
        parameters that have a gradient and took the same steps. All parameters of one range
        share their step count and scalar state, so one set of coefficients serves it."""
        key = (None if self.present is None else tuple(self.present), self._version)
        if key == self._segments_key:
            return self._segments
        present = self.present or [True] * len(self.params)
        segments: list[tuple[int, int]] = []
        for i, (here, cls) in enumerate(zip(present, self.classes, strict=True)):
            if not here:
                continue
            if segments and segments[-1][1] == i and self.classes[segments[-1][0]] == cls:
                segments[-1] = (segments[-1][0], i + 1)
            else:
                segments.append((i, i + 1))
        self._segments_key, self._segments = key, segments
        return segments

    _segments_key: tuple | None = None

    def present_grads(self) -> list[Tensor]:
        """The gradient buffer where this step has gradients, as few contiguous slices (the
        gradients themselves where they stay outside it, see ``direct``)."""
        if self.fresh:
            return [p.grad for p in self.present_params()]
        if self.present is None:
            return [self.grad]
        runs: list[list[int]] = []
        for i, here in enumerate(self.present):
            if here:
                if runs and runs[-1][1] == i:
                    runs[-1][1] = i + 1
                else:
                    runs.append([i, i + 1])
        return [self.grad[self.bounds[a] : self.bounds[b]] for a, b in runs]

    def present_params(self) -> list[Tensor]:
        if self.present is None:
            return self.params
        return [p for p, here in zip(self.params, self.present, strict=True) if here]

    def advance(self) -> None:
        """After a step: a parameter that had no gradient now lags those that had one."""
        if self.present is not None:
            self._set_classes(_relabel(list(zip(self.classes, self.present, strict=True))))

    def zero_grad(self) -> bool:
        """Zero the gradients in place where they are all still the flat views; False (and
        nothing done) otherwise."""
        if not all(map(operator.is_, map(_GRAD, self.params), self.grad_views)):
            return False
        self.grad.zero_()
        return True

    def release(self, p: Tensor, state: dict[Tensor, dict[str, Any]]) -> None:
        """``p`` leaves flat storage: its data, gradient and state become tensors of its own
        (so that the old buffers are freed once the bucket is gone)."""
        p.data = p.data.clone()
        if p.grad is not None:
            p.grad = p.grad.clone()
        p_state = state.get(p)
        for key, value in (p_state or {}).items():
            if isinstance(value, Tensor):
                p_state[key] = value.clone()


def _relabel(keys: Sequence[Any]) -> list[int]:
    """Small integers, equal where the keys are equal."""
    labels: dict[Any, int] = {}
    return [labels.setdefault(key, len(labels)) for key in keys]


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


def fused_update(
    stages: Sequence[Transform],
    flags: Sequence[Mapping[str, bool]],
    clip_value: bool,
    clip_scale: bool,
    maximize: bool,
    guarded: bool,
    compute_dtype: torch.dtype,
    in_place: bool = False,
) -> Callable[..., None]:
    """The step over one bucket, with the structure (stages, variants, options) baked in.

    Its arguments are tensors only — flat param, grad, state buffers, and the 0-dim
    coefficients — so a compiled version is reused whatever the hyperparameters' values.
    ``in_place`` (eager, unguarded, state in the parameters' dtype): the parameters are
    updated with one ``add_`` (a Python-float ``lr``) instead of a new tensor copied back.
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
        # (no conversion, not even a no-op call, when the dtypes agree)
        u = grad if grad.dtype == compute_dtype else grad.to(compute_dtype)
        weights = param if param.dtype == compute_dtype else param.to(compute_dtype)
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
        for key, value in new.items():
            if guarded:
                value = torch.where(finite, value, state[key])
            state[key].copy_(value)
        if in_place:
            param.add_(u, alpha=-lr)
            return
        updated = weights - lr * u
        if guarded:
            updated = torch.where(finite, updated, weights)
        param.copy_(updated)

    return update


class FusedKernels:
    """Compiled (or eager) ``fused_update`` functions, one per structure, built on first use.

    ``by_size``: compiling was decided by the model's size (the default engine), and then a
    pass that is a single ``add_`` (plain SGD: no stage) runs eagerly, where a compiler has
    nothing to fuse.
    """

    def __init__(self, compile: bool, backend: Any = "inductor", by_size: bool = False) -> None:
        self.compile = compile
        self.backend = backend
        self.by_size = by_size
        self._cache: dict[tuple, Callable[..., None]] = {}
        self.compile_failed = False

    @property
    def compiling(self) -> bool:
        return self.compile and not self.compile_failed

    def compiles(self, shape: tuple) -> bool:
        """Whether the pass of a chain of this shape (active stages and flags) is compiled."""
        return self.compiling and (bool(shape) or not self.by_size)

    def get(
        self, key: tuple, build: Callable[[], Callable[..., None]], compiled: bool = True
    ) -> Callable[..., None]:
        kernel = self._cache.get(key)
        if kernel is None:
            kernel = build()
            if compiled and self.compiling:
                stages = " -> ".join(t.__name__ for t, _ in key[0]) if key and key[0] else "step"
                kernel = _compiled(_with_own_code(kernel, (key, self.backend)), self, stages)
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


def _compiled(kernel: Callable[..., None], owner: FusedKernels, label: str) -> Callable[..., None]:
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
            param = args[0]
            logger.info(
                "ravine.optim: compiling the flat engine's fused step (%s; %s parameters, %s, "
                "%s) with torch.compile; this first step takes longer (about a second with a "
                "warm inductor cache, several cold), later steps and new hyperparameter values "
                "reuse it (compile=False turns it off)",
                label,
                f"{param.numel():,}",
                str(param.dtype).removeprefix("torch."),
                param.device,
            )
            start = time.perf_counter()
            with warnings.catch_warnings():
                # The compiler stack imports deprecated parts of torch on first use: a
                # warnings-as-errors setting must not turn that into a failed compile.
                warnings.simplefilter("ignore", DeprecationWarning)
                result = compiled(*args)
            warm = True
            logger.info("ravine.optim: compiled in %.1f s", time.perf_counter() - start)
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
