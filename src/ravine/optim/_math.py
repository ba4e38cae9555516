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


def second_moment(average: Tensor, value: Tensor, one_minus_beta: float | Tensor) -> Tensor:
    """``beta * average + (1 - beta) * value**2``, as one ``lerp`` towards ``value**2``."""
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
    wide = torch.float32  # holds every bf16/fp16/fp32 value exactly; float64 stays float64
    for t in tensors:
        wide = torch.promote_types(wide, t.dtype)
    extremes = torch.stack(
        [
            torch.stack(torch.aminmax(t)).to(device, wide)
            if t.numel()
            else torch.zeros(2, device=device, dtype=wide)
            for t in tensors
        ]
    )  # (n, 2): min and max of each tensor
    return torch.isfinite(extremes).all(dim=1)


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32
