"""Update-rule stages that chain, optax-style, into the named optimizers.

A stage maps an update direction ``u`` (it starts as the gradient) to a new direction, reading
the hyperparameters of the parameter's group and its own state. The engine (``engine.py``)
runs the stages in order and finishes with ``param <- param - lr * u``.

Rules every stage follows, so that one engine can run any chain on any storage:

* Pure: return new tensors, never modify ``u``, ``param`` or state in place. The engine
  decides how new state is committed (rebinding, or ``torch.where`` for a guarded step).
* Never store an input tensor as state without copying it: ``u`` may be ``param.grad`` itself,
  which the next ``backward()`` overwrites.
* State keys use torch.optim's names (``exp_avg``, ``momentum_buffer``, ...) so that state
  dicts move between ravine and torch.optim.
* ``step`` is the 1-based count of updates this parameter has received, either a float or a
  0-dim tensor; only arithmetic operators touch it, so both work.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from ravine.optim._math import bias_correction, ema, ema_of_square

Group = Mapping[str, Any]
State = Mapping[str, Tensor]


class Transform:
    """One stage of an update rule. Subclasses override ``update`` (and ``init`` if stateful)."""

    #: Group hyperparameters this stage reads, with their defaults.
    hyperparams: ClassVar[Mapping[str, Any]] = {}

    def active(self, group: Group) -> bool:
        """Whether this stage does anything for ``group`` (e.g. weight decay of 0 does not)."""
        return True

    def init(self, param: Tensor, group: Group) -> dict[str, Tensor]:
        """Initial state for ``param``; called once, before its first update."""
        return {}

    def update(
        self, u: Tensor, param: Tensor, state: State, group: Group, step: float | Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
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
        return group["weight_decay"] != 0 and not group.get("decoupled_weight_decay", False)

    def update(self, u, param, state, group, step):
        return u + group["weight_decay"] * param, {}


class AddDecoupledWeightDecay(Transform):
    """Decoupled weight decay (Loshchilov & Hutter 2019): ``u <- u + weight_decay * param``.

    Placed after the preconditioner, so with the final ``param - lr * u`` it equals
    torch.optim's ``param *= 1 - lr * weight_decay`` applied before the step.
    """

    hyperparams: ClassVar[Mapping[str, Any]] = {
        "weight_decay": 0.0,
        "decoupled_weight_decay": False,
    }

    def active(self, group: Group) -> bool:
        return group["weight_decay"] != 0 and group.get("decoupled_weight_decay", False)

    def update(self, u, param, state, group, step):
        return u + group["weight_decay"] * param, {}


class HeavyBall(Transform):
    """Momentum as in torch.optim.SGD (Polyak 1964; Nesterov in Sutskever et al. 2013's form).

    .. math::
        b_t = \\mu b_{t-1} + (1 - \\tau) u_t \\quad (b_1 = u_1), \\qquad
        u \\leftarrow b_t \\ \\text{or, with nesterov,}\\ u_t + \\mu b_t
    """

    hyperparams: ClassVar[Mapping[str, Any]] = {
        "momentum": 0.0,
        "dampening": 0.0,
        "nesterov": False,
    }

    def active(self, group: Group) -> bool:
        return group["momentum"] != 0

    def update(self, u, param, state, group, step):
        momentum = group["momentum"]
        previous = state.get("momentum_buffer")
        if previous is None:
            # torch starts the buffer at the first gradient itself, not (1 - dampening) * it.
            buffer = u.clone()
        else:
            buffer = torch.add(previous * momentum, u, alpha=1 - group["dampening"])
            if isinstance(step, Tensor) and group["dampening"] != 0:
                # Guarded (sync-free) path: a refused first step left a zero buffer, and with
                # dampening the first real step must still start the buffer at u.
                buffer = torch.where(step == 1, u, buffer)
        if group["nesterov"]:
            return torch.add(u, buffer, alpha=momentum), {"momentum_buffer": buffer}
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
        return {"sum": torch.full_like(param, group["initial_accumulator_value"])}

    def update(self, u, param, state, group, step):
        total = torch.addcmul(state["sum"], u, u)
        scaled = u / (total.sqrt() + group["eps"])
        if group["lr_decay"] != 0:
            scaled = scaled / (1 + (step - 1) * group["lr_decay"])
        return scaled, {"sum": total}


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

    def init(self, param, group):
        state = {"square_avg": torch.zeros_like(param)}
        if group["momentum"] > 0:
            state["momentum_buffer"] = torch.zeros_like(param)
        if group["centered"]:
            state["grad_avg"] = torch.zeros_like(param)
        return state

    def update(self, u, param, state, group, step):
        alpha = group["alpha"]
        new = {"square_avg": ema_of_square(state["square_avg"], u, alpha)}
        if group["centered"]:
            new["grad_avg"] = ema(_state(state, "grad_avg", param), u, alpha)
            variance = torch.addcmul(new["square_avg"], new["grad_avg"], new["grad_avg"], value=-1)
            denom = variance.sqrt() + group["eps"]
        else:
            denom = new["square_avg"].sqrt() + group["eps"]
        if group["momentum"] > 0:
            previous = _state(state, "momentum_buffer", param)
            new["momentum_buffer"] = torch.addcdiv(previous * group["momentum"], u, denom)
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

    def init(self, param, group):
        state = {"exp_avg": torch.zeros_like(param), "exp_avg_sq": torch.zeros_like(param)}
        if group["amsgrad"]:
            state["max_exp_avg_sq"] = torch.zeros_like(param)
        return state

    def update(self, u, param, state, group, step):
        beta1, beta2 = group["betas"]
        new = {
            "exp_avg": ema(state["exp_avg"], u, beta1),
            "exp_avg_sq": ema_of_square(state["exp_avg_sq"], u, beta2),
        }
        second = new["exp_avg_sq"]
        if group["amsgrad"]:
            second = torch.maximum(_state(state, "max_exp_avg_sq", param), second)
            new["max_exp_avg_sq"] = second
        denom = second.sqrt() / bias_correction(beta2, step) ** 0.5 + group["eps"]
        return new["exp_avg"] / denom / bias_correction(beta1, step), new


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
            # A 0-dim tensor like torch's, so state dicts are interchangeable; float64 because
            # the product of hundreds of factors near 1 would lose digits in float32.
            "mu_product": torch.ones((), dtype=torch.float64, device=param.device),
            "exp_avg": torch.zeros_like(param),
            "exp_avg_sq": torch.zeros_like(param),
        }

    def update(self, u, param, state, group, step):
        beta1, beta2 = group["betas"]
        decay = group["momentum_decay"]
        mu = beta1 * (1.0 - 0.5 * 0.96 ** (step * decay))
        mu_next = beta1 * (1.0 - 0.5 * 0.96 ** ((step + 1) * decay))
        mu_product = state["mu_product"] * mu
        mu_product_next = mu_product * mu_next
        new = {
            "mu_product": mu_product,
            "exp_avg": ema(state["exp_avg"], u, beta1),
            "exp_avg_sq": ema_of_square(state["exp_avg_sq"], u, beta2),
        }
        denom = (new["exp_avg_sq"] / bias_correction(beta2, step)).sqrt() + group["eps"]
        current = u * _as_param_scalar((1.0 - mu) / (1.0 - mu_product), param)
        ahead = new["exp_avg"] * _as_param_scalar(mu_next / (1.0 - mu_product_next), param)
        return (current + ahead) / denom, new


def _state(state: State, key: str, param: Tensor) -> Tensor:
    # A hyperparameter may be switched on after the first step (e.g. momentum raised by a
    # schedule); the missing buffer then starts at zero, as torch would have initialised it.
    value = state.get(key)
    return torch.zeros_like(param) if value is None else value


def _as_param_scalar(value: float | Tensor, param: Tensor) -> float | Tensor:
    # 0-dim state tensors (mu_product) are float64 on the parameter's device; multiplying a
    # float32 tensor by them must not promote the update to float64.
    if isinstance(value, Tensor):
        return value.to(param.dtype)
    return value
