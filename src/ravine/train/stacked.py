"""Batched forward passes: N members of one architecture as one computation.

The members' parameters and buffers are stacked into ``(N, ...)`` tensors
(:func:`ravine.problems.models.stack_models`). Two implementations of the batched forward:

* :func:`vmap_forward`: ``torch.func.vmap`` over ``torch.func.functional_call`` of the model
  (:func:`ravine.problems.models.make_functional`, batch norm's running statistics included).
  Any model.
* :func:`bmm_forward`: for MLP-like ``nn.Sequential`` models (Flatten, Linear, BatchNorm1d,
  elementwise activations, Dropout), the stacked layers as batched matmuls
  (``baddbmm(b, h, W^T)``, ``h: (members, batch, features)``) and batch norm as one
  ``F.batch_norm`` over ``members x features`` channels. The same operations as the
  sequential model's, without vmap's per-call overhead: 1.1x (64 members) to 1.8x (1 member)
  faster on the digits MLP (``benchmarks/restarts.py``).

Dropout: one call draws the masks of all members at once (``randomness="different"``), from
the global generator: reproducible, but not the masks N one-member runs would draw.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ravine.problems.models import make_functional

__all__ = [
    "METHODS",
    "Forward",
    "bmm_forward",
    "member_state_dict",
    "per_member_loss",
    "stacked_forward",
    "vmap_forward",
]

METHODS = ("auto", "vmap", "bmm")
"""How N > 1 members are computed (see the module doc); ``"auto"``: bmm where it applies."""


Forward = Callable[..., tuple[Tensor, dict[str, Tensor]]]


def vmap_forward(model: nn.Module) -> Forward:
    """``forward(params, buffers, x, training=, shared=) -> (out, new_buffers)`` via vmap.

    ``x``: ``(N, batch, ...)``, or ``(batch, ...)`` seen by every member when ``shared``.
    ``out``: ``(N, batch, outputs)``. ``buffers`` are not modified (see make_functional).
    """
    f = make_functional(model)

    def forward(params, buffers, x, *, training: bool, shared: bool = False):
        model.train(training)
        batched = torch.func.vmap(f, in_dims=(0, 0, None if shared else 0), randomness="different")
        return batched(params, buffers, x)

    return forward


# Modules that act elementwise and hold no state: the bmm path calls them on (N, B, F) as is.
_ELEMENTWISE = (
    nn.ReLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.GELU,
    nn.LeakyReLU,
    nn.ELU,
    nn.SiLU,
    nn.Softplus,
    nn.Identity,
)


def bmm_forward(model: nn.Module) -> Forward | None:
    """The same interface as :func:`vmap_forward` with stacked matmuls, or ``None`` when
    ``model`` is not an MLP-like ``nn.Sequential`` (Flatten, Linear, BatchNorm1d, Dropout,
    elementwise activations, nested Sequentials)."""
    plan = _bmm_plan(model)
    if plan is None:
        return None
    n_param = {name for name, _ in model.named_parameters()}
    used = {f"{prefix}.{key}" for _, prefix, layer in plan for key, _ in layer.named_parameters()}
    if used != n_param:
        return None

    def forward(params, buffers, x, *, training: bool, shared: bool = False):
        n = next(iter(params.values())).shape[0]
        # Clones take batch norm's in-place running-stat updates; the caller's stay untouched.
        new_buffers = {k: b.clone() for k, b in buffers.items()} if training else dict(buffers)
        h = x.expand(n, *x.shape) if shared else x  # (N, batch, ...)
        for op, prefix, layer in plan:
            if op == "flatten":
                h = h.flatten(2)
            elif op == "linear":
                # The flat engine stores members innermost (ravine.optim.members): one copy
                # to the (N, out, in) layout costs less than bmm's strided slow path.
                weight = params[f"{prefix}.weight"].contiguous().transpose(1, 2)  # (N, in, out)
                bias = params.get(f"{prefix}.bias")
                if bias is None:
                    h = torch.bmm(h, weight)
                else:
                    h = torch.baddbmm(bias.unsqueeze(1), h, weight)  # (N, batch, out)
            elif op == "batch_norm":
                h = _stacked_batch_norm(h, params, new_buffers, prefix, layer, training)
            elif op == "dropout":
                h = F.dropout(h, layer.p, training)
            else:
                h = layer(h)
        return h, new_buffers

    return forward


def _bmm_plan(model: nn.Module) -> list[tuple[str, str, nn.Module]] | None:
    if type(model) is not nn.Sequential:
        return None
    plan: list[tuple[str, str, nn.Module]] = []

    def visit(module: nn.Module, prefix: str) -> bool:
        for name, child in module.named_children():
            full = f"{prefix}{name}"
            if type(child) is nn.Sequential:
                if not visit(child, f"{full}."):
                    return False
            elif type(child) is nn.Linear:
                plan.append(("linear", full, child))
            elif type(child) is nn.BatchNorm1d and child.track_running_stats:
                if child.momentum is None:  # cumulative averaging: left to vmap (and its error)
                    return False
                plan.append(("batch_norm", full, child))
            elif type(child) is nn.Flatten and (child.start_dim, child.end_dim) == (1, -1):
                plan.append(("flatten", full, child))
            elif type(child) is nn.Dropout:
                plan.append(("dropout", full, child))
            elif type(child) in _ELEMENTWISE:
                plan.append(("elementwise", full, child))
            else:
                return False
        return True

    return plan if visit(model, "") else None


def _stacked_batch_norm(h, params, buffers, prefix, layer, training):
    # (N, B, C) -> (B, N*C): N*C independent channels, so the very kernel the sequential
    # BatchNorm1d runs normalizes each member's features over the batch, and updates the
    # flattened views of each member's running statistics in place.
    n, b, c = h.shape
    flat = h.transpose(0, 1).reshape(b, n * c)
    weight, bias = params.get(f"{prefix}.weight"), params.get(f"{prefix}.bias")
    if training:
        buffers[f"{prefix}.num_batches_tracked"].add_(1)
    out = F.batch_norm(
        flat,
        buffers[f"{prefix}.running_mean"].view(n * c),
        buffers[f"{prefix}.running_var"].view(n * c),
        None if weight is None else weight.reshape(n * c),
        None if bias is None else bias.reshape(n * c),
        training,
        layer.momentum,
        layer.eps,
    )
    return out.view(b, n, c).transpose(0, 1)


def per_member_loss(output: Tensor, target: Tensor, task: str) -> Tensor:
    """``(N,)`` mean loss of each member: cross-entropy or MSE, as ``loss_function`` computes
    it for one network. ``output``: ``(N, batch, outputs)``; ``target``: ``(N, batch[, k])``."""
    n, b = output.shape[:2]
    if task == "classification":
        losses = F.cross_entropy(output.flatten(0, 1), target.flatten(0, 1), reduction="none")
        return losses.view(n, b).mean(dim=1)
    return F.mse_loss(output, target, reduction="none").flatten(1).mean(dim=1)


def stacked_forward(model: nn.Module, method: str = "auto") -> tuple[Forward, str]:
    """The batched forward of ``model`` by ``method`` and the method it resolved to."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    forward = bmm_forward(model) if method in ("auto", "bmm") else None
    if method == "bmm" and forward is None:
        raise ValueError(
            "method 'bmm' needs an MLP-like nn.Sequential (use method 'vmap' or 'auto')"
        )
    if forward is not None:
        return forward, "bmm"
    return vmap_forward(model), "vmap"


def member_state_dict(
    model: nn.Module, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor], k: int
) -> dict[str, Tensor]:
    """Row ``k`` of stacked ``params`` / ``buffers`` as a state dict in ``model``'s key order."""
    rows = {**params, **buffers}
    return {name: rows[name][k].detach().clone() for name in model.state_dict()}
