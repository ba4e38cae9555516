"""Maths shared by the update rules, so that each rule reads like its paper.

Every function here is pure: tensors in, new tensors out, nothing modified in place. The
arithmetic works whether ``step`` is a Python number (the usual path, no device sync) or a
0-dim tensor on the parameters' device (the sync-free guarded path, see ``engine.py``).
"""

from __future__ import annotations

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


def global_norm(tensors: Sequence[Tensor]) -> Tensor:
    """The 2-norm of all ``tensors`` seen as one vector, as a 0-dim tensor (no host sync).

    Norms are accumulated in float32 or wider so that bf16 gradients do not overflow the sum.
    """
    if not tensors:
        return torch.zeros(())
    device = tensors[0].device
    norms = [torch.linalg.vector_norm(t, dtype=_accumulation_dtype(t.dtype)) for t in tensors]
    return torch.linalg.vector_norm(torch.stack([n.to(device) for n in norms]))


def clip_coefficient(total_norm: Tensor, max_norm: float) -> Tensor:
    """``min(max_norm / (total_norm + 1e-6), 1)``, the factor torch.nn.utils.clip_grad_norm_ uses.

    Kept as a tensor and applied unconditionally: branching on ``total_norm > max_norm`` would
    force a device-to-host sync on every step.
    """
    return torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)


def finite_flags(tensors: Sequence[Tensor]) -> Tensor:
    """``(len(tensors),)`` bool tensor: True where a tensor has no NaN or ±Inf (no host sync).

    Read through ``aminmax``: NaN propagates to both extremes and an infinity is one of them,
    so the two extremes being finite is exact, and one reduction pass costs a fraction of
    ``isfinite(t).all()``, which writes and rereads a full-size boolean mask (20x slower on
    a CPU).
    """
    if not tensors:
        return torch.ones(0, dtype=torch.bool)
    device = tensors[0].device
    flags = [
        # Checked on the tensor's own device and in its own dtype, then gathered: no cast that
        # could overflow a finite float64 extreme, no float64 on a device without it.
        torch.isfinite(torch.stack(torch.aminmax(t))).to(device)
        if t.numel()
        else torch.ones(2, dtype=torch.bool, device=device)
        for t in tensors
    ]
    return torch.stack(flags).all(dim=1)  # (n, 2): min and max of each tensor finite


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32
