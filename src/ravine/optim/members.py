"""Members: N copies of one network, stacked ``(N, ...)``, updated by one optimizer as N.

A param group with ``members=N`` holds parameters whose leading dimension is N: row k of each
is member k's copy. Any numeric hyperparameter may then be a number (every member) or N
numbers (a 1-D tensor or a sequence, one per member); ``betas`` is a pair whose entries may
each be either. Row k is updated exactly as an optimizer with member k's hyperparameters would
update that row alone: per-member step counts (``state[p]["step"]`` is ``(N,)``), clipping by
value and by member k's own global norm (over row k of every parameter of the optimizer), and
NaN/Inf refusal per member.

The API, on any ravine optimizer (both engines):

* build: ``make_optimizer(name, params, members=N, lr=torch.tensor([...]), ...)`` (or the
  class itself), or ``"members": N`` in the param-group dicts; every group must say the same
  N. Per-member values are stored in the groups as ``(N,)`` float64 host tensors, which a
  schedule (``ravine.schedules``) updates in place.
* ``optimizer.members``: N (None for an ordinary optimizer).
* ``optimizer.refused_members``: ``(N,)`` bool, the members whose gradient held NaN/Inf on
  the last checked step: with ``nonfinite="skip"`` exactly their rows, state and step counts
  were left unchanged; with ``"raise"`` the whole step was refused and the error names them.
  On an accelerator it is a device tensor, written without a host sync.
* ``optimizer.skipped_steps_per_member``: ``(N,)`` refusals per member;
  ``optimizer.skipped_steps`` counts the steps on which any member was refused.
* ``optimizer.keep_members(index)``: prune to the members ``index`` (in that order), in place:
  parameters are rebound (``p.data = p.data[index]``, the caller's Parameter objects stay the
  same objects), and so are their gradients, all state, step counts, per-member
  hyperparameters (``initial_lr`` included) and counters; the survivors continue exactly.
* ``state_dict()`` / ``load_state_dict()``, deepcopy and pickle carry all of it.

Example::

    >>> import torch, ravine
    >>> w = torch.nn.Parameter(torch.zeros(3, 5))  # (members, weights)
    >>> opt = ravine.optim.make_optimizer(
    ...     "adam", [w], members=3, lr=torch.tensor([1e-3, 1e-2, 1e-1]),
    ...     betas=([0.9, 0.8, 0.7], 0.999), max_grad_norm=1.0, nonfinite="skip")
    >>> w.grad = torch.ones(3, 5)
    >>> w.grad[1, 0] = float("nan")
    >>> _ = opt.step()
    >>> opt.refused_members, opt.state[w]["step"]
    (tensor([False,  True, False]), tensor([1., 0., 1.]))
    >>> opt.keep_members([2, 0])
    >>> w.shape, opt.param_groups[0]["lr"]
    (torch.Size([2, 5]), tensor([0.1000, 0.0010], dtype=torch.float64))

How the maths stays written once: a stage's ``coefficients()`` is ordinary arithmetic, so fed
``(N,)`` float64 hyperparameters and an ``(N,)`` step it returns ``(N,)`` coefficients; the
engine shapes them to broadcast over the rows (``(N, 1, ..., 1)`` per tensor, ``(1, N)`` over
the flat engine's ``(D, N)`` storage) and the same ``apply()`` runs. Structure is shared: a
flag (``amsgrad``, ``nesterov``, ...) is one bool for all members, and a stage is on when any
member needs it, with coefficients that leave the other members' rows as they would be
without it. Coefficient tensors are in the compute dtype (a broadcast tensor takes part in
type promotion), so in 16-bit arithmetic they round where a scalar's float32 digits would not.

.. warning:: torch's own ``lr_scheduler`` classes write a tensor lr with ``fill_`` (one
   number for all members); use ``ravine.schedules``, which gives member k the schedule of
   base lr ``lr[k]``.

This module holds the bookkeeping: normalizing and reading per-member values, shaping them
over a tensor, moving them to a device without a host sync, and indexing them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

#: Hyperparameters that are numbers or off (None) rather than flags.
OPTIONAL_NUMBERS = ("max_grad_norm", "clip_value")


def numeric_keys(defaults: Mapping[str, Any]) -> tuple[str, ...]:
    """The hyperparameters that may be given per member (``betas`` is handled on its own)."""
    return tuple(
        key
        for key, value in defaults.items()
        if key in OPTIONAL_NUMBERS
        or (isinstance(value, int | float) and not isinstance(value, bool))
    )


def check_members(value: Any) -> int | None:
    """``members`` as given: None, or an int >= 1."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"members must be None or an integer >= 1, got {value!r}")
    return value


def check_leading_dimension(group: Mapping[str, Any], n: int) -> None:
    names = group.get("param_names")
    for i, p in enumerate(group["params"]):
        if p.dim() == 0 or p.shape[0] != n:
            name = names[i] if names else f"#{i}"
            raise ValueError(
                f"members={n}: every parameter of the group needs leading dimension {n} "
                f"(one row per member); parameter {name} has shape {tuple(p.shape)}"
            )


def normalize(group: dict[str, Any], keys: Iterable[str], n: int) -> None:
    """Per-member values of ``group`` as ``(N,)`` float64 host tensors, in place.

    Numbers stay numbers. The tensors are the group's own (copied from what was given), so
    that indexing them (:func:`take`) or a schedule writing into them touches nothing else.
    """
    for key in keys:
        if group.get(key) is not None:
            group[key] = _per_member(group[key], key, n)
    if "betas" in group:
        betas = group["betas"]
        if not isinstance(betas, tuple | list) or len(betas) != 2:
            raise ValueError(
                f"betas must be a pair (beta1, beta2), each a number or {n} numbers (one per "
                f"member), got {betas!r}"
            )
        group["betas"] = tuple(
            _per_member(b, name, n) for b, name in zip(betas, ("beta1", "beta2"), strict=True)
        )


def _per_member(value: Any, key: str, n: int) -> Any:
    if isinstance(value, Tensor):
        if value.dim() == 0:
            return value.item()
        values = value.detach()
    elif isinstance(value, Sequence) and not isinstance(value, str):
        try:
            values = torch.tensor(list(value), dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(
                f"{key} must be a number or {n} numbers (one per member), got {value!r}"
            ) from None
    else:
        return value  # a number (or something invalid, which validation names)
    if values.dim() != 1 or len(values) != n or values.is_complex() or values.dtype == torch.bool:
        raise ValueError(
            f"{key} must be a number or {n} numbers (one per member), got {_describe(values)}"
        )
    return values.to("cpu", torch.float64).clone()


def _describe(values: Tensor) -> str:
    return f"a tensor of shape {tuple(values.shape)} and dtype {values.dtype}"


def entries(value: Any) -> list[tuple[Any, int | None]]:
    """``(value, member)`` pairs to validate: one ``(value, None)`` for a number, else one per
    member. Per-member entries are Python floats, so every check reads plain numbers."""
    if isinstance(value, Tensor) and value.dim() == 1:
        return list(zip(value.tolist(), range(len(value)), strict=True))
    return [(value, None)]


def is_per_member(value: Any) -> bool:
    return isinstance(value, Tensor) and value.dim() == 1


def on_device(value: Any, device: torch.device) -> Any:
    """``value`` (number, tensor or pair of them) with its tensors on ``device`` in float64,
    without a host sync: host tensors go to an accelerator through pinned memory."""
    if isinstance(value, tuple):
        return tuple(on_device(v, device) for v in value)
    if not isinstance(value, Tensor) or value.device == device:
        return value
    wide = torch.float32 if device.type == "mps" else torch.float64
    if value.device.type == "cpu" and device.type == "cuda":
        return value.to(wide).pin_memory().to(device, non_blocking=True)
    return value.to(device, wide)


def group_on(group: Mapping[str, Any], device: torch.device) -> dict:
    """A shallow copy of ``group`` whose per-member values live on ``device``: what the stages'
    ``coefficients()`` read when the step count is there too (the sync-free path)."""
    return {key: _moved(value, device) for key, value in group.items()}


def _moved(value: Any, device: torch.device) -> Any:
    if isinstance(value, Tensor) or (
        isinstance(value, tuple) and any(isinstance(v, Tensor) for v in value)
    ):
        return on_device(value, device)
    return value


def column(value: Any, like: Tensor, dtype: torch.dtype) -> Any:
    """A per-member value ``(N,)`` as ``(N, 1, ..., 1)`` in ``dtype`` on ``like``'s device,
    to broadcast over ``like`` ``(N, ...)``; a number is returned as it is."""
    if not isinstance(value, Tensor):
        return value
    return on_device(value, like.device).to(dtype).view(-1, *[1] * (like.dim() - 1))


def clamp(grad: Tensor, clip_value: Any) -> Tensor:
    """``grad`` clipped to ``[-clip_value, clip_value]`` row by row (None: as it is)."""
    if clip_value is None:
        return grad
    bound = column(clip_value, grad, grad.dtype)
    return torch.clamp(grad, -bound, bound)


def shaped_group(group: Mapping[str, Any], like: Tensor) -> dict:
    """``group`` with per-member values shaped over ``like``, for the stages' ``init()``
    (e.g. Adagrad's ``initial_accumulator_value``)."""
    return {
        key: column(value, like, like.dtype) if is_per_member(value) else value
        for key, value in group.items()
    }


def per_member_state(value: Tensor, n: int) -> Tensor:
    """Initial state for a member group: 0-dim scalar state (NAdam's ``mu_product``) becomes
    one value per member, ``(N,)``."""
    return value.expand(n).clone() if value.dim() == 0 else value


def pack(
    numbers: Sequence[Any], n: int, device: torch.device, dtype: torch.dtype, shape: tuple
) -> list:
    """Numbers and ``(N,)`` tensors as tensors of ``shape`` (N elements, e.g. ``(1, N)``) in
    ``dtype`` on ``device``.

    Always tensors of one shape, whatever is per member and whatever is not, so that a
    compiled kernel sees the same graph when values (or their per-member-ness) change. Host
    values travel in one pinned, non-blocking copy, as in the flat engine's ``_pack``.
    """
    host = [i for i, x in enumerate(numbers) if not isinstance(x, Tensor) or x.device.type == "cpu"]
    out: list[Any] = [None] * len(numbers)
    if host:
        stacked = torch.stack(
            [torch.as_tensor(numbers[i], dtype=torch.float64).expand(n) for i in host]
        ).to(dtype)
        if device.type == "cuda":
            stacked = stacked.pin_memory()
        moved = stacked.to(device, non_blocking=True)
        for i, row in zip(host, moved.unbind(), strict=True):
            out[i] = row.view(shape)
    for i, x in enumerate(numbers):
        if out[i] is None:
            out[i] = x.to(device, dtype).expand(n).reshape(shape)
    return out


def take(value: Any, index: Tensor, n: int) -> Any:
    """``value`` with only the kept members: rows ``index`` of a tensor whose leading
    dimension is ``n``; pairs entry by entry; anything else as it is."""
    if isinstance(value, tuple):
        return tuple(take(v, index, n) for v in value)
    if isinstance(value, Tensor) and value.dim() >= 1 and value.shape[0] == n:
        return value[index.to(value.device)]
    return value
