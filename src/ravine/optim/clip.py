"""Gradient clipping on a model's gradients, outside any optimizer.

The same operations the optimizers apply with ``max_grad_norm=`` / ``clip_value=``, for a
training loop that uses another optimizer or wants to log the norm. Unlike the in-optimizer
form, these modify ``p.grad`` in place, as ``torch.nn.utils.clip_grad_norm_`` does.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from ravine.optim._math import clip_coefficient, global_norm


def _grads(parameters: Iterable[Tensor] | Tensor) -> list[Tensor]:
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    return [p.grad for p in parameters if p.grad is not None]


@torch.no_grad()
def clip_grad_norm_(parameters: Iterable[Tensor] | Tensor, max_norm: float) -> Tensor:
    """Scale gradients so that their global 2-norm is at most ``max_norm``.

    .. math:: g \\leftarrow g \\cdot \\min\\left(1, \\frac{c}{\\lVert g \\rVert_2 + 10^{-6}}\\right)

    Returns the norm *before* clipping, as a 0-dim tensor (reading it syncs the device; the
    clipping itself does not).

    Example::

        >>> import torch, ravine
        >>> model = torch.nn.Linear(3, 1)
        >>> model(torch.ones(2, 3)).sum().backward()
        >>> norm = ravine.optim.clip_grad_norm_(model.parameters(), max_norm=1.0)

    Reference: Pascanu, Mikolov & Bengio (2013), On the difficulty of training RNNs.
    """
    if not max_norm > 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm!r}")
    grads = _grads(parameters)
    total = global_norm(grads)
    if grads:
        coefficient = clip_coefficient(total, float(max_norm))
        for g in grads:
            g.mul_(coefficient.to(g))
    return total


@torch.no_grad()
def clip_grad_value_(parameters: Iterable[Tensor] | Tensor, clip_value: float) -> None:
    """Clamp every gradient element to ``[-clip_value, clip_value]``, in place.

    Example::

        >>> import torch, ravine
        >>> w = torch.nn.Parameter(torch.zeros(2)); w.grad = torch.tensor([5.0, -0.1])
        >>> ravine.optim.clip_grad_value_([w], 1.0); w.grad
        tensor([ 1.0000, -0.1000])
    """
    if not clip_value > 0:
        raise ValueError(f"clip_value must be > 0, got {clip_value!r}")
    for g in _grads(parameters):
        g.clamp_(-clip_value, clip_value)
