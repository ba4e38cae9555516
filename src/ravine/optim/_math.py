"""Maths shared by the update rules, so that each rule reads like its paper.

Every function here is pure: tensors in, new tensors out, nothing modified in place. The
arithmetic works whether ``step`` is a Python number (the usual path, no device sync) or a
0-dim tensor on the parameters' device (the sync-free guarded path, see ``engine.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def first_moment(average: Tensor, value: Tensor, one_minus_beta: float | Tensor) -> Tensor:
    """``beta * average + (1 - beta) * value``, as ``lerp`` like torch.optim (bit-level parity)."""
    return torch.lerp(average, value, one_minus_beta)


def second_moment(
    average: Tensor, value: Tensor, beta: float | Tensor, one_minus_beta: float | Tensor
) -> Tensor:
    """``beta * average + (1 - beta) * value**2``.

    One ``lerp`` towards ``value**2`` (two passes, not four). In float16 ``value**2``
    overflows from ``|value| > 256`` and a stored infinity later turns into NaN, so there
    ``(1 - beta) * value`` is formed before the second factor, as torch.optim's ``addcmul``.
    """
    if value.dtype == torch.float16:
        return torch.addcmul(average * beta, value * one_minus_beta, value)
    return torch.lerp(average, value * value, one_minus_beta)


def bias_correction(beta: float, step: float | Tensor) -> float | Tensor:
    """``1 - beta**step``: the factor that un-biases a moment average started at zero."""
    return 1 - beta**step


def global_norm(tensors: Sequence[Tensor], members: int | None = None) -> Tensor:
    """The 2-norm of all ``tensors`` seen as one vector, as a 0-dim tensor (no host sync).

    With ``members=N`` the tensors are stacked ``(N, ...)`` and the result is ``(N,)``: member
    k's norm over row k of every tensor, what ``global_norm`` of member k's tensors alone gives.
    Norms are accumulated in float32 or wider so that bf16 gradients do not overflow the sum.
    """
    if not tensors:
        return torch.zeros(() if members is None else (members,))
    device = tensors[0].device
    if members is None:
        norms = [torch.linalg.vector_norm(t, dtype=_accumulation_dtype(t.dtype)) for t in tensors]
        return torch.linalg.vector_norm(torch.stack([n.to(device) for n in norms]))
    norms = [
        torch.linalg.vector_norm(rows(t, members), dim=1, dtype=_accumulation_dtype(t.dtype))
        for t in tensors
    ]
    return torch.linalg.vector_norm(torch.stack([n.to(device) for n in norms]), dim=0)


def rows(t: Tensor, members: int) -> Tensor:
    """``t`` ``(N, ...)`` as ``(N, elements per member)``; a view wherever the rows allow it."""
    return t.reshape(members, t.numel() // members)


def clip_coefficient(total_norm: Tensor, max_norm: float) -> Tensor:
    """``min(max_norm / (total_norm + 1e-6), 1)``, the factor torch.nn.utils.clip_grad_norm_ uses.

    Kept as a tensor and applied unconditionally: branching on ``total_norm > max_norm`` would
    force a device-to-host sync on every step.
    """
    return torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)


def finite_flags(tensors: Sequence[Tensor], members: int | None = None) -> Tensor:
    """``(len(tensors),)`` bool tensor: True where a tensor has no NaN or ±Inf (no host sync).

    With ``members=N`` (stacked ``(N, ...)`` tensors), ``(len(tensors), N)``: per member row.

    Read through ``aminmax``: NaN propagates to both extremes and an infinity is one of them,
    so the two extremes being finite is exact, and one reduction pass costs a fraction of
    ``isfinite(t).all()``, which writes and rereads a full-size boolean mask (20x slower on
    a CPU).
    """
    shape = (2,) if members is None else (2, members)
    if not tensors:
        return torch.ones((0, *shape[1:]), dtype=torch.bool)
    device = tensors[0].device
    flags = [
        # Checked on the tensor's own device and in its own dtype, then gathered: no cast that
        # could overflow a finite float64 extreme, no float64 on a device without it.
        torch.isfinite(torch.stack(_extremes(t, members))).to(device)
        if t.numel()
        else torch.ones(shape, dtype=torch.bool, device=device)
        for t in tensors
    ]
    return torch.stack(flags).all(dim=1)  # (n, 2[, N]): min and max of each tensor (row) finite


def all_finite(tensors: Sequence[Tensor]) -> bool:
    """Whether no tensor holds NaN or ±Inf, read on the host (it waits for the device).

    One sum per tensor: a NaN or an infinity makes a sum NaN or infinite, so a finite sum
    proves every element finite, in one reduction pass and a couple of kernel calls (a
    fraction of :func:`finite_flags`' for small tensors). A sum that overflowed although
    every element is finite gets the exact check.
    """
    sums = [t.sum(dtype=_accumulation_dtype(t.dtype)) for t in tensors if t.numel()]
    if not sums:
        return True
    total = sums[0] if len(sums) == 1 else torch.stack([s.to(sums[0].device) for s in sums]).sum()
    if math.isfinite(total.item()):
        return True
    return bool(finite_flags(tensors).all())


def _extremes(t: Tensor, members: int | None) -> tuple[Tensor, Tensor]:
    if members is None:
        return torch.aminmax(t)
    if t.dim() == 1:  # one element per member: the element is both extremes
        return t, t
    # Per member: amin and amax over every other dimension, in the tensor's own strides (no
    # reshape, which copies a member-innermost view). Two reductions, because aminmax along a
    # dimension is an order of magnitude slower on the CPU (8.7 ms against 2 x 0.3 ms for
    # 64 x 24k float32); both propagate NaN as aminmax does.
    dims = tuple(range(1, t.dim()))
    return torch.amin(t, dim=dims), torch.amax(t, dim=dims)


def add_eps(denominator: Tensor, eps: float | Tensor) -> Tensor:
    """``denominator + eps``, the divisor of an adaptive step, never 0.

    In 16-bit types an ``eps`` below the smallest subnormal (float16: ``2**-24``, so Adam's
    default 1e-8) rounds away, and a gradient that is exactly zero turns into ``0/0 = NaN``
    (torch.optim does the same). There the sum is floored at that smallest subnormal: a value
    changes only where it was 0, that is, where the step would have divided by zero.
    """
    total = denominator + eps
    if total.dtype in (torch.float16, torch.bfloat16):
        return total.clamp_min(_SMALLEST_SUBNORMAL[total.dtype])
    return total


_SMALLEST_SUBNORMAL = {
    dtype: torch.finfo(dtype).smallest_normal * torch.finfo(dtype).eps
    for dtype in (torch.float16, torch.bfloat16)
}


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32
