"""Hyperparameter validation: the message names the argument and the value (scikit-learn style).

Two layers, both run when a param group is added (at construction and by ``add_param_group``):

* each value on its own — a number, in its range, a flag that is a bool (``check_*``);
* what the values do to arithmetic in the dtype the update is computed in
  (:func:`check_arithmetic`): a value that passes the first layer can still round to 0 or
  overflow there, and then training breaks silently (``eps=1e-320`` is 0 in float32, so a zero
  gradient gives 0/0; ``weight_decay=1e300`` overflows to inf and every parameter turns NaN).

Per-member values (``members.py``) are checked member by member; the message names the member.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from ravine.optim.members import entries


def is_bool(value: Any) -> bool:
    """A Python bool or a numpy bool (not 0/1, None or a string)."""
    kind = type(value)
    return isinstance(value, bool) or (
        kind.__module__ == "numpy" and kind.__name__ in ("bool", "bool_")
    )


def check_flags(group: dict[str, Any], defaults: Mapping[str, Any]) -> None:
    """Every hyperparameter whose default is a bool must be one; stored as a Python bool."""
    for key, default in defaults.items():
        if isinstance(default, bool) and key in group:
            if not is_bool(group[key]):
                raise ValueError(f"{key} must be True or False, got {group[key]!r}")
            group[key] = bool(group[key])


def _of(member: int | None) -> str:
    return "" if member is None else f" (member {member})"


def _number(value: Any, key: str, member: int | None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        hint = ""
        if isinstance(value, Tensor | list | tuple):
            hint = "; one value per member needs members=N (see ravine.optim.members)"
        raise ValueError(f"{key} must be a number, got {value!r}{_of(member)}{hint}")
    return float(value)


def _entries(group: Mapping[str, Any], key: str) -> list[tuple[Any, int | None]]:
    # One value per member only in a member group; elsewhere a 1-element tensor is a number
    # (torch.optim accepts ``lr=torch.tensor(1e-3)``) and any other tensor is not.
    if group.get("members") is None:
        return [(_scalar(group[key]), None)]
    return entries(group[key])


def _scalar(value: Any) -> Any:
    real = isinstance(value, Tensor) and not value.is_complex() and value.dtype != torch.bool
    return value.item() if real and value.numel() == 1 else value


def check_nonnegative(group: Mapping[str, Any], key: str) -> None:
    for value, member in _entries(group, key):
        if not _number(value, key, member) >= 0 or math.isinf(value):
            raise ValueError(f"{key} must be a finite number >= 0, got {value!r}{_of(member)}")


def check_positive(group: Mapping[str, Any], key: str) -> None:
    for value, member in _entries(group, key):
        if not _number(value, key, member) > 0 or math.isinf(value):
            raise ValueError(f"{key} must be a finite number > 0, got {value!r}{_of(member)}")


def check_unit_interval(group: Mapping[str, Any], key: str, *, closed: bool = False) -> None:
    for value, member in _entries(group, key):
        number = _number(value, key, member)
        if not (0 <= number <= 1 if closed else 0 <= number < 1):
            interval = "[0, 1]" if closed else "[0, 1)"
            raise ValueError(f"{key} must be in {interval}, got {value!r}{_of(member)}")


def check_betas(group: Mapping[str, Any]) -> None:
    betas = group["betas"]
    if not isinstance(betas, tuple | list) or len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    for name, beta in zip(("beta1", "beta2"), betas, strict=True):
        key = f"betas[{name}]"
        check_unit_interval({key: beta, "members": group.get("members")}, key)


def paired(group: Mapping[str, Any], *keys: str) -> list[tuple[tuple[float, ...], int | None]]:
    """``(values of keys, member)`` side by side, member by member where any is per member
    (a number then stands for every member); one ``(values, None)`` otherwise."""
    columns = [_entries(group, key) for key in keys]
    n = max(len(c) for c in columns)
    if n == 1:
        return [(tuple(c[0][0] for c in columns), None)]
    return [(tuple(c[k if len(c) > 1 else 0][0] for c in columns), k) for k in range(n)]


def _numbers(group: Mapping[str, Any], *keys: str) -> list[tuple[tuple[float, ...], int | None]]:
    # What check_arithmetic reads: only numbers (a custom chain may leave a key unchecked).
    return [
        (values, member)
        for values, member in paired(group, *keys)
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    ]


def check_arithmetic(group: Mapping[str, Any], compute_dtype: Callable[[Tensor], torch.dtype]):
    """Refuse values that round to 0 or overflow in the dtype the update is computed in.

    ``compute_dtype(p)`` is the dtype of ``p``'s arithmetic (its own, or ``state_dtype``). The
    bounds, and why:

    * ``lr`` at most the compute dtype's largest finite value: the step forms ``lr * u``, and
      an adaptive ``u`` is of order 1.
    * ``eps`` not 0 after rounding to the dtype the numbers are held in (float32 or wider:
      coefficients are never kept in 16 bits). In 16-bit arithmetic a smaller ``eps`` still
      rounds away in the sum; ``_math.add_eps`` floors that sum instead, so Adam's default
      ``1e-8`` stays valid for float16 parameters.
    * ``weight_decay`` and ``lr * weight_decay`` finite in the compute dtype (``wd * param``
      and its step). Decoupled decay multiplies the parameters by ``1 - lr * weight_decay``
      each step (torch.optim's form): from 1 on that zeroes or flips their sign instead of
      decaying them, which no setting means, so ``lr * weight_decay`` must be below 1 there.
      Coupled (L2) decay goes through the rest of the rule (a preconditioner rescales it), so
      only finiteness is required of it.
    * ``clip_value`` at most the gradients' largest finite value: the clamp bound is formed in
      their dtype (beyond it, clipping means nothing; None turns it off).
    * ``max_grad_norm`` needs no bound: ``max_norm / norm`` may overflow to inf, and the
      clip coefficient ``min(that, 1)`` is then exactly 1 (no clipping), as meant.
    """
    params = [p for p in group["params"] if p.is_floating_point()]
    if not params:
        return
    compute = min({compute_dtype(p) for p in params}, key=lambda d: torch.finfo(d).max)
    grads = min({p.dtype for p in params}, key=lambda d: torch.finfo(d).max)
    big = torch.finfo(compute).max
    for (lr,), member in _numbers(group, "lr"):
        if lr > big:
            raise ValueError(
                f"lr={lr!r}{_of(member)} overflows {_name(compute)} (largest finite {big:.4g})"
            )
    if "eps" in group:
        _check_eps(group, torch.promote_types(compute, torch.float32))
    if "weight_decay" in group:
        _check_weight_decay(group, compute)
    if group.get("clip_value") is not None:
        largest = torch.finfo(grads).max
        for (clip,), member in _numbers(group, "clip_value"):
            if clip > largest:
                raise ValueError(
                    f"clip_value={clip!r}{_of(member)} is beyond {_name(grads)}'s range "
                    f"(largest finite {largest:.4g}); use clip_value=None for no clipping"
                )


def _check_eps(group: Mapping[str, Any], held: torch.dtype) -> None:
    for (eps,), member in _numbers(group, "eps"):
        if eps > 0 and torch.tensor(eps, dtype=torch.float64).to(held).item() == 0:
            tiny = torch.finfo(held).smallest_normal * torch.finfo(held).eps
            raise ValueError(
                f"eps={eps!r}{_of(member)} rounds to 0 in {_name(held)}; "
                f"use eps >= {tiny:.2g} (or larger)"
            )


def _check_weight_decay(group: Mapping[str, Any], compute: torch.dtype) -> None:
    big = torch.finfo(compute).max
    decoupled = bool(group.get("decoupled_weight_decay", False))
    for (lr, wd), member in _numbers(group, "lr", "weight_decay"):
        if wd > big or lr * wd > big:
            raise ValueError(
                f"weight_decay={wd!r}{_of(member)} overflows {_name(compute)} with lr={lr!r} "
                f"(largest finite {big:.4g})"
            )
        if decoupled and lr * wd >= 1:
            raise ValueError(
                f"lr * weight_decay must be < 1 with decoupled weight decay, got lr={lr!r}, "
                f"weight_decay={wd!r}{_of(member)} (product {lr * wd:.4g}): each step "
                "multiplies the parameters by 1 - lr * weight_decay, which would zero or "
                "flip them"
            )


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
