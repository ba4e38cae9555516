"""Update-rule stages that chain, optax-style, into the named optimizers.

A stage maps an update direction ``u`` (it starts as the gradient) to a new direction. Its
maths comes in two halves, so that every engine runs the same formulas:

* :meth:`Transform.coefficients` — the scalar part (bias corrections, momentum schedules,
  ``1 - beta``): a function of the group's hyperparameters, the step count and the stage's
  scalar state, computed once per step on the host in double precision;
* :meth:`Transform.apply` — the elementwise part over tensors, reading numbers only from those
  coefficients and booleans only from :meth:`Transform.flags`.

The simple engine calls both per parameter. The flat engine calls ``coefficients`` once per
bucket and runs every stage's ``apply`` over contiguous storage in one compiled pass; since
numbers reach ``apply`` as tensors there, changing ``lr`` or ``betas`` never recompiles.

Rules every stage follows:

* Pure: return new tensors, never modify ``u``, ``param`` or state in place. The engine
  decides how new state is committed (rebinding, copying into flat storage, or
  ``torch.where`` for a refused step).
* Never store an input tensor as state without copying it: ``u`` may be ``param.grad`` itself.
* State keys use torch.optim's names (``exp_avg``, ``momentum_buffer``, ...) so that state
  dicts move between ravine and torch.optim. 0-dim state (NAdam's ``mu_product``) belongs to
  ``coefficients``; tensor state to ``apply``.
* ``step`` is the 1-based count of updates this parameter has received, a float or a 0-dim
  tensor (the sync-free path); ``coefficients`` touches it only with arithmetic operators.
* In a member group (``members.py``) hyperparameters and ``step`` may be ``(N,)`` tensors, one
  value per member, so ``coefficients`` uses only arithmetic that broadcasts, and the
  structure (``active``, ``flags``, which buffers ``init`` makes) is shared by the members: a
  stage is on when any member needs it, and its coefficients leave the others' rows as they
  would be without it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from ravine.optim._math import add_eps, bias_correction, first_moment, second_moment

Group = Mapping[str, Any]
State = Mapping[str, Tensor]
Scalar = float | Tensor
Coefficients = dict[str, Scalar]


class Transform:
    """One stage of an update rule. Subclasses override ``apply`` and usually ``coefficients``
    (and ``init`` if stateful, ``flags`` if the elementwise maths has variants)."""

    #: Group hyperparameters this stage reads, with their defaults.
    hyperparams: ClassVar[Mapping[str, Any]] = {}

    def active(self, group: Group) -> bool:
        """Whether this stage does anything for ``group`` (e.g. weight decay of 0 does not)."""
        return True

    def flags(self, group: Group) -> dict[str, bool]:
        """Booleans that select a variant of the elementwise maths (e.g. ``nesterov``)."""
        return {}

    def init(self, param: Tensor, group: Group) -> dict[str, Tensor]:
        """Initial state for ``param``; called once, before its first update."""
        return {}

    def coefficients(
        self, group: Group, step: Scalar, state: State
    ) -> tuple[Coefficients, dict[str, Tensor]]:
        """``(coefficients, new 0-dim state)`` for this step."""
        return {}, {}

    def apply(
        self, u: Tensor, param: Tensor, state: State, c: Mapping[str, Scalar], flags: Mapping
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """``(new u, new tensor state)``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class AddWeightDecay(Transform):
    """Coupled (L2) weight decay: ``u <- u + weight_decay * param``.

    Placed before a preconditioner, the decay is rescaled by it, which is why Adam + L2 is not
    AdamW (Loshchilov & Hutter 2019). Inactive when ``decoupled_weight_decay`` is set.
    """

    hyperparams: ClassVar[Mapping[str, Any]] = {
        "weight_decay": 0.0,
        "decoupled_weight_decay": False,
    }

    def active(self, group: Group) -> bool:
        return _any_nonzero(group["weight_decay"]) and not group.get(
            "decoupled_weight_decay", False
        )

    def coefficients(self, group, step, state):
        return {"weight_decay": group["weight_decay"]}, {}

    def apply(self, u, param, state, c, flags):
        return u + c["weight_decay"] * param, {}


class AddDecoupledWeightDecay(AddWeightDecay):
    """Decoupled weight decay (Loshchilov & Hutter 2019): ``u <- u + weight_decay * param``.

    Placed after the preconditioner, so with the final ``param - lr * u`` it equals
    torch.optim's ``param *= 1 - lr * weight_decay`` applied before the step.
    """

    def active(self, group: Group) -> bool:
        return _any_nonzero(group["weight_decay"]) and group.get("decoupled_weight_decay", False)


class HeavyBall(Transform):
    """Momentum as in torch.optim.SGD (Polyak 1964; Nesterov in Sutskever et al. 2013's form).

    .. math::
        b_t = \\mu b_{t-1} + (1 - \\tau) u_t \\quad (b_1 = u_1), \\qquad
        u \\leftarrow b_t \\ \\text{or, with nesterov,}\\ u_t + \\mu b_t

    The buffer starts at zero and the first step is selected by coefficients
    (:math:`b_1 = 0 \\cdot b_0 + 1 \\cdot u_1`), so no branch depends on the step. A member
    with :math:`\\mu = 0` among members with momentum gets :math:`b_t = u_t` (torch ignores
    dampening without momentum).
    """

    hyperparams: ClassVar[Mapping[str, Any]] = {
        "momentum": 0.0,
        "dampening": 0.0,
        "nesterov": False,
    }

    def active(self, group: Group) -> bool:
        return _any_nonzero(group["momentum"])

    def flags(self, group: Group) -> dict[str, bool]:
        return {"nesterov": bool(group["nesterov"])}

    def init(self, param, group):
        return {"momentum_buffer": torch.zeros_like(param)}

    def coefficients(self, group, step, state):
        first = _indicator(step == 1)  # torch starts the buffer at u itself, undampened
        momentum = group["momentum"]
        plain = _indicator(momentum == 0)  # (only a member can be here without momentum)
        return {
            "momentum": momentum,
            "keep": momentum * (1 - first),
            "take": 1 - (1 - first) * (1 - plain) * group["dampening"],
        }, {}

    def apply(self, u, param, state, c, flags):
        buffer = _state(state, "momentum_buffer", param) * c["keep"] + u * c["take"]
        if flags["nesterov"]:
            return u + c["momentum"] * buffer, {"momentum_buffer": buffer}
        return buffer, {"momentum_buffer": buffer}


class ScaleByAdagrad(Transform):
    """AdaGrad's preconditioner (Duchi et al. 2011) with torch's ``lr_decay``.

    .. math::
        s_t = s_{t-1} + u_t^2, \\qquad
        u \\leftarrow \\frac{u_t}{(\\sqrt{s_t} + \\epsilon)(1 + (t - 1)\\,\\text{lr\\_decay})}
    """

    hyperparams: ClassVar[Mapping[str, Any]] = {
        "lr_decay": 0.0,
        "initial_accumulator_value": 0.0,
        "eps": 1e-10,
    }

    def init(self, param, group):
        # (added, not filled: per member the value is an (N, 1, ..., 1) tensor)
        return {"sum": torch.zeros_like(param).add_(group["initial_accumulator_value"])}

    def coefficients(self, group, step, state):
        return {"eps": group["eps"], "decay": 1 / (1 + (step - 1) * group["lr_decay"])}, {}

    def apply(self, u, param, state, c, flags):
        total = state["sum"] + u * u
        return u / add_eps(total.sqrt(), c["eps"]) * c["decay"], {"sum": total}


class ScaleByRMS(Transform):
    """RMSprop's preconditioner (Hinton 2012), optionally centered (Graves 2013) with momentum.

    .. math::
        v_t = \\alpha v_{t-1} + (1 - \\alpha) u_t^2, \\quad
        d_t = \\sqrt{v_t - \\bar g_t^2} + \\epsilon \\ \\text{(centered)} \\ \\text{or}\\
        \\sqrt{v_t} + \\epsilon, \\quad
        u \\leftarrow u_t / d_t \\ \\text{or, with momentum,}\\ b_t = \\mu b_{t-1} + u_t / d_t
    """

    hyperparams: ClassVar[Mapping[str, Any]] = {
        "alpha": 0.99,
        "eps": 1e-8,
        "momentum": 0.0,
        "centered": False,
    }

    def flags(self, group: Group) -> dict[str, bool]:
        return {"centered": bool(group["centered"]), "momentum": _any_nonzero(group["momentum"])}

    def init(self, param, group):
        state = {"square_avg": torch.zeros_like(param)}
        if _any_nonzero(group["momentum"]):
            state["momentum_buffer"] = torch.zeros_like(param)
        if group["centered"]:
            state["grad_avg"] = torch.zeros_like(param)
        return state

    def coefficients(self, group, step, state):
        alpha = group["alpha"]
        return {
            "alpha": alpha,
            "one_minus_alpha": 1 - alpha,
            "eps": group["eps"],
            "momentum": group["momentum"],
        }, {}

    def apply(self, u, param, state, c, flags):
        new = {
            "square_avg": second_moment(state["square_avg"], u, c["alpha"], c["one_minus_alpha"])
        }
        if flags["centered"]:
            grad_avg = _state(state, "grad_avg", param)
            new["grad_avg"] = first_moment(grad_avg, u, c["one_minus_alpha"])
            variance = new["square_avg"] - new["grad_avg"] * new["grad_avg"]
            denom = add_eps(variance.sqrt(), c["eps"])
        else:
            denom = add_eps(new["square_avg"].sqrt(), c["eps"])
        if flags["momentum"]:
            previous = _state(state, "momentum_buffer", param)
            new["momentum_buffer"] = previous * c["momentum"] + u / denom
            return new["momentum_buffer"], new
        return u / denom, new


class ScaleByAdam(Transform):
    """Adam's bias-corrected preconditioner (Kingma & Ba 2015), optionally AMSGrad.

    .. math::
        m_t = \\beta_1 m_{t-1} + (1-\\beta_1) u_t, \\quad
        v_t = \\beta_2 v_{t-1} + (1-\\beta_2) u_t^2, \\quad
        u \\leftarrow \\frac{m_t / (1-\\beta_1^t)}{\\sqrt{\\hat v_t / (1-\\beta_2^t)} + \\epsilon}

    with :math:`\\hat v_t = v_t`, or :math:`\\max(\\hat v_{t-1}, v_t)` with AMSGrad
    (Reddi et al. 2018). Epsilon is added *outside* the square root, after bias correction.
    """

    hyperparams: ClassVar[Mapping[str, Any]] = {
        "betas": (0.9, 0.999),
        "eps": 1e-8,
        "amsgrad": False,
    }

    def flags(self, group: Group) -> dict[str, bool]:
        return {"amsgrad": bool(group["amsgrad"])}

    def init(self, param, group):
        state = {"exp_avg": torch.zeros_like(param), "exp_avg_sq": torch.zeros_like(param)}
        if group["amsgrad"]:
            state["max_exp_avg_sq"] = torch.zeros_like(param)
        return state

    def coefficients(self, group, step, state):
        beta1, beta2 = group["betas"]
        return {
            "one_minus_beta1": 1 - beta1,
            "beta2": beta2,
            "one_minus_beta2": 1 - beta2,
            "inv_bias_correction1": 1 / bias_correction(beta1, step),
            "inv_sqrt_bias_correction2": 1 / bias_correction(beta2, step) ** 0.5,
            "eps": group["eps"],
        }, {}

    def apply(self, u, param, state, c, flags):
        new = {
            "exp_avg": first_moment(state["exp_avg"], u, c["one_minus_beta1"]),
            "exp_avg_sq": second_moment(state["exp_avg_sq"], u, c["beta2"], c["one_minus_beta2"]),
        }
        second = new["exp_avg_sq"]
        if flags["amsgrad"]:
            second = torch.maximum(_state(state, "max_exp_avg_sq", param), second)
            new["max_exp_avg_sq"] = second
        denom = add_eps(second.sqrt() * c["inv_sqrt_bias_correction2"], c["eps"])
        return new["exp_avg"] / denom * c["inv_bias_correction1"], new


class ScaleByNAdam(Transform):
    """NAdam's preconditioner (Dozat 2016) with torch's momentum-decay schedule.

    .. math::
        \\mu_t = \\beta_1 (1 - \\tfrac12 0.96^{t \\psi}), \\quad
        m_t = \\beta_1 m_{t-1} + (1-\\beta_1) u_t, \\quad
        v_t = \\beta_2 v_{t-1} + (1-\\beta_2) u_t^2,

    .. math::
        u \\leftarrow \\frac{1}{\\sqrt{v_t / (1-\\beta_2^t)} + \\epsilon}
        \\left(\\frac{(1-\\mu_t)\\, u_t}{1 - \\prod_{i \\le t} \\mu_i}
        + \\frac{\\mu_{t+1}\\, m_t}{1 - \\prod_{i \\le t+1} \\mu_i}\\right)

    where :math:`\\psi` is ``momentum_decay``. Note that :math:`m_t` is *not* bias-corrected by
    :math:`1-\\beta_1^t` here: the :math:`\\prod \\mu_i` products play that role.
    """

    hyperparams: ClassVar[Mapping[str, Any]] = {
        "betas": (0.9, 0.999),
        "eps": 1e-8,
        "momentum_decay": 4e-3,
    }

    def init(self, param, group):
        return {
            # On the host (as torch keeps it) but in float64 (torch: the default dtype): the
            # product of hundreds of factors near 1 needs the digits, and reading it must
            # not sync a device.
            "mu_product": torch.ones((), dtype=torch.float64),
            "exp_avg": torch.zeros_like(param),
            "exp_avg_sq": torch.zeros_like(param),
        }

    def coefficients(self, group, step, state):
        beta1, beta2 = group["betas"]
        decay = group["momentum_decay"]
        mu = beta1 * (1.0 - 0.5 * 0.96 ** (step * decay))
        mu_next = beta1 * (1.0 - 0.5 * 0.96 ** ((step + 1) * decay))
        mu_product = state["mu_product"] * mu
        coefficients = {
            "one_minus_beta1": 1 - beta1,
            "beta2": beta2,
            "one_minus_beta2": 1 - beta2,
            "inv_sqrt_bias_correction2": 1 / bias_correction(beta2, step) ** 0.5,
            "eps": group["eps"],
            "current": (1.0 - mu) / (1.0 - mu_product),
            "ahead": mu_next / (1.0 - mu_product * mu_next),
        }
        return coefficients, {"mu_product": mu_product}

    def apply(self, u, param, state, c, flags):
        new = {
            "exp_avg": first_moment(state["exp_avg"], u, c["one_minus_beta1"]),
            "exp_avg_sq": second_moment(state["exp_avg_sq"], u, c["beta2"], c["one_minus_beta2"]),
        }
        denom = add_eps(new["exp_avg_sq"].sqrt() * c["inv_sqrt_bias_correction2"], c["eps"])
        return (u * c["current"] + new["exp_avg"] * c["ahead"]) / denom, new


def _indicator(condition: bool | Tensor) -> Scalar:
    # 1.0 or 0.0, as a float or (sync-free path) a float64 tensor: float32 here would round
    # every coefficient it multiplies.
    if isinstance(condition, Tensor):
        return condition.to(torch.float64)
    return 1.0 if condition else 0.0


def _any_nonzero(value: Scalar) -> bool:
    # A number, or one per member (a host tensor: no device sync).
    if isinstance(value, Tensor):
        return bool(value.ne(0).any())
    return value != 0


def _state(state: State, key: str, param: Tensor) -> Tensor:
    # A variant may be switched on after the first step (e.g. centered, or momentum raised by
    # a schedule); the missing buffer then starts at zero, as torch would have initialised it.
    value = state.get(key)
    return torch.zeros_like(param) if value is None else value
