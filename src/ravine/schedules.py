r"""Learning-rate schedules: drop-in ``torch.optim.lr_scheduler.LRScheduler`` subclasses.

Every schedule here is a closed form: the learning rate of param group :math:`i` at step
:math:`t` is a function of its base lr :math:`\eta_i` (the group's lr when the schedule was
built) and :math:`t` alone, read by :meth:`Schedule.lr_at`. torch's chainable schedulers instead
update ``group["lr"]`` from its previous value. The closed form is why

* resuming is exact from the step count alone, in whichever order the optimizer and the
  schedule are loaded;
* schedules compose: :class:`LinearWarmup` hands over to any other schedule at an offset;
* a schedule can be read without stepping it (:func:`lr_sequence`, for plots);
* float error does not accumulate over long runs.

A group's lr may be a 1-D tensor, one lr per member (``members=N`` in a ravine optimizer,
see ``ravine.optim.members``): its base lr is then that tensor, every formula applies
elementwise, member k's lrs are the schedule's lrs for base lr ``lr[k]`` exactly, and the
group's lr tensor is updated in place. Base lrs of such groups are read from the group's
``initial_lr``, so an optimizer's ``keep_members`` carries over to its schedules.

Each schedule's lrs equal torch's closed form of the same schedule bit for bit, and the
sequence torch's chainable ``step()`` produces to within float rounding (``tests/test_schedules.py``).

Example::

    >>> import torch
    >>> from ravine.schedules import CosineWarmRestarts
    >>> model = torch.nn.Linear(4, 1)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    >>> sched = CosineWarmRestarts(opt, t0=10, t_mult=2, eta_min=0.0)
    >>> for step in range(30):
    ...     opt.zero_grad()
    ...     model(torch.randn(8, 4)).pow(2).mean().backward()
    ...     opt.step()
    ...     sched.step()
    >>> sched.last_epoch, round(sched.get_last_lr()[0], 6)  # 30 = 10 + 20: a restart
    (30, 0.1)
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

__all__ = [
    "SCHEDULES",
    "Constant",
    "Cosine",
    "CosineWarmRestarts",
    "Exponential",
    "LinearWarmup",
    "OneCycle",
    "Schedule",
    "Step",
    "lr_sequence",
    "make_schedule",
]


# ---------------------------------------------------------------------------------------------
# validation: scikit-learn style, the message names the argument and the value


def _check_int(name: str, value: Any, minimum: int) -> int:
    # bool is an Integral; t0=True is a mistake, not 1
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return int(value)


def _check_float(name: str, value: Any, requirement: str, ok: Callable[[float], bool]) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or not ok(value)
    ):
        raise ValueError(f"{name} must be {requirement}, got {value!r}")
    return float(value)


def _per_group(
    name: str, value: Any, optimizer: Optimizer, requirement: str, ok: Callable[[float], bool]
) -> list[float]:
    n = len(optimizer.param_groups)
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != n:
            raise ValueError(
                f"{name} must be a number or one per param group ({n}), got {len(value)} values: {value!r}"
            )
        return [_check_float(name, v, requirement, ok) for v in value]
    return [_check_float(name, value, requirement, ok)] * n


def _set_group_value(group: dict[str, Any], key: str, value: Any) -> None:
    # a Tensor lr (capturable/compiled optimizers, per-member lrs) is updated in place, never
    # rebound: whoever holds it sees the new value
    current = group[key]
    if isinstance(current, torch.Tensor) and current.dim() > 0:
        current.copy_(value)
    elif isinstance(current, torch.Tensor):
        current.fill_(float(value))
    else:
        group[key] = value


def _copy(value: Any) -> Any:
    return value.clone() if isinstance(value, torch.Tensor) else value


def _per_member(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() > 0


def _cosine(base_lr: float, eta_min: float, t: float, period: float) -> float:
    # torch's operation order, so the result matches its closed form bit for bit
    return eta_min + (base_lr - eta_min) * (1 + math.cos(math.pi * t / period)) / 2


# ---------------------------------------------------------------------------------------------


class Schedule(LRScheduler):
    """Base class: an ``LRScheduler`` whose lrs are a closed-form function of the step.

    A subclass implements :meth:`_lrs` (the lr of every param group at a step, from
    ``self.base_lrs``) and, for hyperparameters other than lr, :meth:`_on_step`. Stepping,
    ``get_last_lr()`` and ``state_dict()`` are torch's.

    ``load_state_dict`` also writes the loaded step's lrs into the optimizer, so resuming is
    exact whether the optimizer or the schedule is loaded first.
    """

    def lr_at(self, step: int) -> list[float]:
        """The lr of every param group at ``step``; pure: changes neither schedule nor optimizer.

        A group with one lr per member gets a tensor of them."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step!r}")
        return self._lrs(step)

    def _base_lrs(self) -> list[Any]:
        # Per-member base lrs are read from the groups' initial_lr, where the optimizer's
        # keep_members shrinks them (self.base_lrs holds torch's copies from the start).
        return [
            group["initial_lr"] if _per_member(base) and "initial_lr" in group else base
            for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True)
        ]

    def step(self, epoch: int | None = None) -> None:
        groups = self.optimizer.param_groups
        if epoch is not None or not any(_per_member(g["lr"]) for g in groups):
            return super().step(epoch)
        # torch writes a tensor lr with fill_ (one number); a per-member lr is copied in.
        self._step_count += 1
        self.last_epoch += 1
        for group, lr in zip(groups, self.get_lr(), strict=True):
            _set_group_value(group, "lr", lr)
        self._last_lr = [
            g["lr"].clone() if isinstance(g["lr"], torch.Tensor) else g["lr"] for g in groups
        ]

    def _lrs(self, step: int) -> list[float]:
        raise NotImplementedError

    def _on_step(self, step: int) -> None:
        """Set hyperparameters other than lr (OneCycle's momentum) for ``step``."""

    def get_lr(self) -> list[float]:
        # Reads base_lrs and the step, never group["lr"], so no warning is needed when called
        # outside step() (torch warns because its chainable forms would advance the schedule).
        self._on_step(self.last_epoch)
        return self._lrs(self.last_epoch)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        groups = self.optimizer.param_groups
        for group, lr in zip(groups, self._lrs(self.last_epoch), strict=True):
            _set_group_value(group, "lr", lr)
        self._on_step(self.last_epoch)
        self._last_lr = [
            g["lr"].clone() if isinstance(g["lr"], torch.Tensor) else g["lr"] for g in groups
        ]


class Constant(Schedule):
    r"""Hold every group's lr at its base lr times a constant factor.

    .. math::
        \eta_t = \text{factor} \cdot \eta_0

    Args:
        optimizer: any ``torch.optim.Optimizer``; each group's lr is its base lr :math:`\eta_0`.
        factor: multiplier on the base lrs (default 1: the base lrs unchanged).

    Example::

        >>> from ravine.schedules import Constant, lr_sequence
        >>> lr_sequence(lambda opt: Constant(opt, factor=0.5), steps=3)
        [0.5, 0.5, 0.5]

    .. warning::
       torch's ``ConstantLR(factor, total_iters)`` applies ``factor`` only for
       ``total_iters`` steps, then returns to the base lr; this one holds it forever
       (torch's ``LambdaLR(opt, lambda t: factor)``).

    References: the baseline every other schedule is compared against.
    """

    def __init__(self, optimizer: Optimizer, factor: float = 1.0) -> None:
        self.factor = _check_float("factor", factor, "a finite number >= 0", lambda v: v >= 0)
        super().__init__(optimizer)

    def _lrs(self, step: int) -> list[float]:
        return [base_lr * self.factor for base_lr in self._base_lrs()]


class Step(Schedule):
    r"""Multiply the lr by ``gamma`` every ``step_size`` steps.

    .. math::
        \eta_t = \eta_0 \, \gamma^{\lfloor t / \text{step\_size} \rfloor}

    Args:
        optimizer: any ``torch.optim.Optimizer``; each group's lr is its base lr :math:`\eta_0`.
        step_size: number of steps between decays (a positive integer).
        gamma: multiplicative factor :math:`\gamma > 0` per decay (default 0.1).

    Example::

        >>> from ravine.schedules import Step, lr_sequence
        >>> lr_sequence(lambda opt: Step(opt, step_size=2, gamma=0.5), steps=6)
        [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]

    References: He et al., "Deep Residual Learning for Image Recognition", CVPR 2016
    (lr divided by 10 at fixed points), https://arxiv.org/abs/1512.03385.
    """

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1) -> None:
        self.step_size = _check_int("step_size", step_size, 1)
        self.gamma = _check_float("gamma", gamma, "a finite number > 0", lambda v: v > 0)
        super().__init__(optimizer)

    def _lrs(self, step: int) -> list[float]:
        return [base_lr * self.gamma ** (step // self.step_size) for base_lr in self._base_lrs()]


class Exponential(Schedule):
    r"""Multiply the lr by ``gamma`` every step.

    .. math::
        \eta_t = \eta_0 \, \gamma^{t}

    Args:
        optimizer: any ``torch.optim.Optimizer``; each group's lr is its base lr :math:`\eta_0`.
        gamma: multiplicative factor :math:`\gamma > 0` per step; :math:`\gamma > 1` grows the
            lr (an lr range test).

    Example::

        >>> from ravine.schedules import Exponential, lr_sequence
        >>> lr_sequence(lambda opt: Exponential(opt, gamma=0.5), steps=4)
        [1.0, 0.5, 0.25, 0.125]

    References: Bengio, "Practical Recommendations for Gradient-Based Training of Deep
    Architectures", 2012, https://arxiv.org/abs/1206.5533.
    """

    def __init__(self, optimizer: Optimizer, gamma: float) -> None:
        self.gamma = _check_float("gamma", gamma, "a finite number > 0", lambda v: v > 0)
        super().__init__(optimizer)

    def _lrs(self, step: int) -> list[float]:
        return [base_lr * self.gamma**step for base_lr in self._base_lrs()]


class Cosine(Schedule):
    r"""Anneal the lr from its base value to ``eta_min`` along half a cosine, then hold it.

    .. math::
        \eta_t = \eta_{\min} + \tfrac12 (\eta_0 - \eta_{\min})
        \left(1 + \cos\left(\pi \, \frac{\min(t, T)}{T}\right)\right)

    Args:
        optimizer: any ``torch.optim.Optimizer``; each group's lr is its base lr :math:`\eta_0`.
        t_max: :math:`T`, the number of steps to reach ``eta_min`` (a positive integer).
        eta_min: final lr :math:`\eta_{\min} \ge 0` (default 0).

    Example::

        >>> from ravine.schedules import Cosine, lr_sequence
        >>> [round(lr, 4) for lr in lr_sequence(lambda opt: Cosine(opt, t_max=4), steps=6)]
        [1.0, 0.8536, 0.5, 0.1464, 0.0, 0.0]

    .. warning::
       torch's ``CosineAnnealingLR`` keeps following the cosine after ``T_max``, so the lr
       climbs back up; this schedule holds ``eta_min``. Up to ``t_max`` the two agree. For
       restarts, use :class:`CosineWarmRestarts`.

    References: Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts",
    ICLR 2017, https://arxiv.org/abs/1608.03983.
    """

    def __init__(self, optimizer: Optimizer, t_max: int, eta_min: float = 0.0) -> None:
        self.t_max = _check_int("t_max", t_max, 1)
        self.eta_min = _check_float("eta_min", eta_min, "a finite number >= 0", lambda v: v >= 0)
        super().__init__(optimizer)

    def _lrs(self, step: int) -> list[float]:
        t = min(step, self.t_max)
        return [_cosine(base_lr, self.eta_min, t, self.t_max) for base_lr in self._base_lrs()]


class CosineWarmRestarts(Schedule):
    r"""Cosine annealing with warm restarts (SGDR): anneal, jump back to the base lr, repeat.

    .. math::
        \eta_t = \eta_{\min} + \tfrac12 (\eta_0 - \eta_{\min})
        \left(1 + \cos\left(\pi \, \frac{T_{cur}}{T_i}\right)\right)

    where cycle :math:`i` lasts :math:`T_i = t_0 \, t_{mult}^{\,i}` steps and :math:`T_{cur}` counts
    the steps since the last restart. Restarts fall at :math:`t_0, t_0 + t_0 t_{mult}, \dots`.

    Args:
        optimizer: any ``torch.optim.Optimizer``; each group's lr is its base lr :math:`\eta_0`.
        t0: length of the first cycle, in steps (a positive integer).
        t_mult: factor by which each cycle is longer than the last (an integer >= 1, default 1).
        eta_min: lr at the end of every cycle, :math:`\eta_{\min} \ge 0` (default 0).

    Example::

        >>> from ravine.schedules import CosineWarmRestarts, lr_sequence
        >>> lrs = lr_sequence(lambda opt: CosineWarmRestarts(opt, t0=2, t_mult=2), steps=7)
        >>> [round(lr, 4) for lr in lrs]
        [1.0, 0.5, 1.0, 0.8536, 0.5, 0.1464, 1.0]

    References: Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts",
    ICLR 2017, https://arxiv.org/abs/1608.03983.
    """

    def __init__(
        self, optimizer: Optimizer, t0: int, t_mult: int = 1, eta_min: float = 0.0
    ) -> None:
        self.t0 = _check_int("t0", t0, 1)
        self.t_mult = _check_int("t_mult", t_mult, 1)
        self.eta_min = _check_float("eta_min", eta_min, "a finite number >= 0", lambda v: v >= 0)
        super().__init__(optimizer)

    def cycle(self, step: int) -> tuple[int, int]:
        """``(T_cur, T_i)`` at ``step``: steps since the last restart, length of this cycle."""
        if self.t_mult == 1:
            return step % self.t0, self.t0
        # cycles grow geometrically, so this loops O(log step) times
        t_cur, t_i = step, self.t0
        while t_cur >= t_i:
            t_cur -= t_i
            t_i *= self.t_mult
        return t_cur, t_i

    def _lrs(self, step: int) -> list[float]:
        t_cur, t_i = self.cycle(step)
        return [_cosine(base_lr, self.eta_min, t_cur, t_i) for base_lr in self._base_lrs()]


class LinearWarmup(Schedule):
    r"""Ramp the lr linearly up to its base value over ``warmup_steps``, then hand over.

    .. math::
        \eta_t = \begin{cases}
            \eta_0 \left(s + (1 - s)\, t / W\right) & t < W \\
            \text{then}(t - W) & t \ge W
        \end{cases}

    with :math:`s` = ``start_factor`` and :math:`W` = ``warmup_steps``. The follow-on schedule
    starts from its own step 0 when warm-up ends; without one the lr holds at :math:`\eta_0`.

    Args:
        optimizer: any ``torch.optim.Optimizer``; each group's lr is its base lr :math:`\eta_0`.
        warmup_steps: :math:`W`, the number of warm-up steps (a positive integer).
        then: the ravine schedule to run after warm-up, built on the same optimizer *before*
            this one (default None: hold the base lrs). Step only the warm-up; it drives ``then``.
        start_factor: :math:`s \in [0, 1]`, the fraction of the base lr at step 0 (default 0).

    Example::

        >>> from ravine.schedules import Cosine, LinearWarmup, lr_sequence
        >>> def factory(opt):
        ...     return LinearWarmup(opt, warmup_steps=4, then=Cosine(opt, t_max=2))
        >>> lr_sequence(factory, steps=8)
        [0.0, 0.25, 0.5, 0.75, 1.0, 0.5, 0.0, 0.0]

    .. warning::
       Equivalent to torch's ``LinearLR(start_factor=s, end_factor=1, total_iters=W)``
       followed by ``then`` via ``SequentialLR(milestones=[W])``, except that
       ``start_factor=0`` is allowed here (torch's chainable form divides by it).

    References: Goyal et al., "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour",
    2017, https://arxiv.org/abs/1706.02677.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_steps: int,
        then: Schedule | None = None,
        start_factor: float = 0.0,
    ) -> None:
        self.warmup_steps = _check_int("warmup_steps", warmup_steps, 1)
        self.start_factor = _check_float(
            "start_factor", start_factor, "a number in [0, 1]", lambda v: 0 <= v <= 1
        )
        if then is not None and not isinstance(then, Schedule):
            # torch's chainable schedulers read group["lr"], which warm-up owns; only a closed
            # form can be evaluated at an offset
            raise ValueError(f"then must be a ravine schedule or None, got {then!r}")
        if then is not None and then.optimizer is not optimizer:
            raise ValueError(f"then must be built on the same optimizer, got {then!r}")
        self.then = then
        super().__init__(optimizer)

    def _lrs(self, step: int) -> list[float]:
        if step >= self.warmup_steps:
            if self.then is None:
                return [_copy(base_lr) for base_lr in self._base_lrs()]
            return self.then._lrs(step - self.warmup_steps)
        # torch LinearLR's closed-form operation order, for bitwise agreement
        frac = self.start_factor + (1.0 - self.start_factor) * step / self.warmup_steps
        return [base_lr * frac for base_lr in self._base_lrs()]

    def _on_step(self, step: int) -> None:
        if self.then is not None and step >= self.warmup_steps:
            self.then._on_step(step - self.warmup_steps)

    def state_dict(self) -> dict[str, Any]:
        # nest the follow-on schedule's state; the object itself holds the optimizer
        state = super().state_dict()
        state["then"] = None if self.then is None else self.then.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)  # the caller's dict is left as it was
        then_state = state.pop("then", None)
        if self.then is not None and then_state is not None:
            self.then.load_state_dict(then_state)
        super().load_state_dict({**state, "then": self.then})


class OneCycle(Schedule):
    r"""The 1cycle policy: lr up to a peak and down far below the start; momentum the reverse.

    With peak :math:`\eta_{\max}`, start :math:`\eta_s = \eta_{\max} / \text{div\_factor}`, end
    :math:`\eta_e = \eta_s / \text{final\_div\_factor}` and :math:`P` = ``pct_start`` of the
    ``total_steps`` :math:`N`, the lr moves between these points along ``anneal_strategy``:

    .. math::
        \text{cos}(a, b, p) = b + \tfrac12 (a - b)(1 + \cos \pi p), \qquad
        \text{linear}(a, b, p) = a + (b - a)\, p

    * two phases: :math:`\eta_s \to \eta_{\max}` over steps :math:`[0, PN - 1]`, then
      :math:`\eta_{\max} \to \eta_e` over :math:`[PN - 1, N - 1]`;
    * ``three_phase``: :math:`\eta_s \to \eta_{\max} \to \eta_s` symmetrically, then
      :math:`\eta_s \to \eta_e`.

    Momentum (or Adam's :math:`\beta_1`) moves inversely, ``max_momentum`` :math:`\to`
    ``base_momentum`` :math:`\to` ``max_momentum``. After step :math:`N - 1` both hold their
    final values.

    Args:
        optimizer: any ``torch.optim.Optimizer``.
        total_steps: :math:`N`, the length of the cycle (a positive integer).
        max_lr: peak lr, one number or one per param group (default None: each group's base lr,
            i.e. its lr when the schedule is built).
        pct_start: :math:`P`, the fraction of the cycle spent raising the lr (default 0.3).
        anneal_strategy: ``"cos"`` (default) or ``"linear"``.
        cycle_momentum: cycle the groups' ``momentum``, or ``betas[0]`` where they have
            ``betas`` (default True; needs an optimizer with one of them).
        base_momentum: momentum at the lr peak, number or one per group (default 0.85).
        max_momentum: momentum at the start and end, number or one per group (default 0.95).
        div_factor: :math:`\eta_{\max} / \eta_s` (default 25).
        final_div_factor: :math:`\eta_s / \eta_e` (default 1e4).
        three_phase: use the three-phase form of the original paper (default False: fastai's
            two phases).

    Example::

        >>> from ravine.schedules import OneCycle, lr_sequence
        >>> lrs = lr_sequence(lambda opt: OneCycle(opt, total_steps=10, div_factor=10.0), steps=10)
        >>> [round(lr, 4) for lr in lrs]
        [0.1, 0.55, 1.0, 0.9505, 0.8117, 0.6113, 0.3887, 0.1883, 0.0495, 0.0]

    .. warning::
       torch's ``OneCycleLR`` requires ``max_lr`` and raises after ``total_steps`` steps; here
       ``max_lr`` defaults to the groups' lrs and the schedule holds its final values. With
       ``max_lr`` given, the two agree bit for bit over the cycle.

    References: Smith, "A disciplined approach to neural network hyper-parameters: Part 1",
    2018, https://arxiv.org/abs/1803.09820; Smith & Topin, "Super-Convergence", 2018,
    https://arxiv.org/abs/1708.07120.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        *,
        max_lr: float | Sequence[float] | None = None,
        pct_start: float = 0.3,
        anneal_strategy: str = "cos",
        cycle_momentum: bool = True,
        base_momentum: float | Sequence[float] = 0.85,
        max_momentum: float | Sequence[float] = 0.95,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        three_phase: bool = False,
    ) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(optimizer).__name__} is not an Optimizer")
        self.total_steps = _check_int("total_steps", total_steps, 1)
        positive = ("a finite number > 0", lambda v: v > 0)
        self.max_lrs = (
            None if max_lr is None else _per_group("max_lr", max_lr, optimizer, *positive)
        )
        self.pct_start = _check_float(
            "pct_start", pct_start, "a number in (0, 1)", lambda v: 0 < v < 1
        )
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
        self.anneal_strategy = anneal_strategy
        self.div_factor = _check_float("div_factor", div_factor, *positive)
        self.final_div_factor = _check_float("final_div_factor", final_div_factor, *positive)
        self.three_phase = bool(three_phase)

        # torch's phase boundaries (float, inclusive ends), so lrs match OneCycleLR bit for bit
        peak = float(self.pct_start * self.total_steps)
        if self.three_phase:
            self.phase_ends = [peak - 1, float(2 * self.pct_start * self.total_steps) - 2]
        else:
            self.phase_ends = [peak - 1]
        self.phase_ends.append(float(self.total_steps - 1))
        starts = [0.0, *self.phase_ends[:-1]]
        if any(end <= start for start, end in zip(starts, self.phase_ends, strict=True)):
            raise ValueError(
                f"pct_start must leave every phase of the cycle at least one step, got {pct_start!r} "
                f"with total_steps={self.total_steps}, three_phase={self.three_phase}"
            )

        self.cycle_momentum = bool(cycle_momentum)
        unit = ("a number in [0, 1]", lambda v: 0 <= v <= 1)
        self.base_momentums = _per_group("base_momentum", base_momentum, optimizer, *unit)
        self.max_momentums = _per_group("max_momentum", max_momentum, optimizer, *unit)
        for lo, hi in zip(self.base_momentums, self.max_momentums, strict=True):
            if lo > hi:
                raise ValueError(
                    f"base_momentum must be <= max_momentum, got {base_momentum!r} > {max_momentum!r}"
                )
        if self.cycle_momentum and any(
            "momentum" not in g and "betas" not in g for g in optimizer.param_groups
        ):
            raise ValueError(
                f"cycle_momentum=True needs an optimizer with 'momentum' or 'betas'; "
                f"{type(optimizer).__name__} has neither, pass cycle_momentum=False"
            )
        super().__init__(optimizer)

    def _phase(self, step: float) -> tuple[int, float]:
        """``(phase, fraction of it done)`` at ``step``, holding the end past the cycle."""
        step = min(step, self.total_steps - 1)
        start = 0.0
        for i, end in enumerate(self.phase_ends):
            if step <= end or i == len(self.phase_ends) - 1:
                return i, (step - start) / (end - start)
            start = end
        raise AssertionError("unreachable")

    def _anneal(self, start: float, end: float, pct: float) -> float:
        # torch's operation order, for bitwise agreement
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def _lrs(self, step: int) -> list[float]:
        phase, pct = self._phase(step)
        # each phase runs between two of the points (start, peak, end)
        path = ((0, 1), (1, 0), (0, 2)) if self.three_phase else ((0, 1), (1, 2))
        a, b = path[phase]
        lrs = []
        for peak in self.max_lrs if self.max_lrs is not None else self._base_lrs():
            start = peak / self.div_factor
            points = (start, peak, start / self.final_div_factor)
            lrs.append(self._anneal(points[a], points[b], pct))
        return lrs

    def momentum_at(self, step: int) -> list[float]:
        """The cycled momentum (or beta1) of every param group at ``step``; pure."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step!r}")
        phase, pct = self._phase(step)
        out = []
        for lo, hi in zip(self.base_momentums, self.max_momentums, strict=True):
            path = ((hi, lo), (lo, hi), (hi, hi)) if self.three_phase else ((hi, lo), (lo, hi))
            out.append(self._anneal(*path[phase], pct))
        return out

    def _on_step(self, step: int) -> None:
        if not self.cycle_momentum:
            return
        for group, m in zip(self.optimizer.param_groups, self.momentum_at(step), strict=True):
            if "betas" in group:
                beta1, *rest = group["betas"]
                if _per_member(beta1):  # every member cycles alike, in place
                    beta1.fill_(m)
                    m = beta1
                group["betas"] = (m, *rest)
            elif _per_member(group["momentum"]):
                group["momentum"].fill_(m)
            else:
                group["momentum"] = m


# ---------------------------------------------------------------------------------------------


def lr_sequence(
    schedule: LRScheduler | Callable[[Optimizer], LRScheduler],
    steps: int,
    *,
    group: int = 0,
    base_lr: float = 1.0,
) -> list[float]:
    """The lr of one param group at steps ``0 .. steps-1``, for plots and inspection.

    Args:
        schedule: a ravine :class:`Schedule`, read through its closed form without stepping it
            or touching its optimizer; or a factory ``optimizer -> scheduler`` (ravine or torch),
            called on a throwaway one-parameter SGD whose lr is ``base_lr``.
        steps: number of steps (an integer >= 0).
        group: which param group (default 0).
        base_lr: the throwaway optimizer's lr (default 1: the sequence is the multiplier).

    Example::

        >>> from ravine.schedules import Step, lr_sequence
        >>> lr_sequence(lambda opt: Step(opt, step_size=2, gamma=0.5), steps=4, base_lr=0.1)
        [0.1, 0.1, 0.05, 0.05]
    """
    steps = _check_int("steps", steps, 0)
    if not isinstance(schedule, LRScheduler):
        param = torch.zeros(1, requires_grad=True)
        # a momentum entry (even 0) lets OneCycle's default cycle_momentum=True run
        schedule = schedule(torch.optim.SGD([param], lr=base_lr, momentum=0.0))
    if isinstance(schedule, Schedule):
        return [float(schedule.lr_at(t)[group]) for t in range(steps)]
    out = []  # a torch scheduler on the throwaway optimizer: stepping it is harmless
    for _ in range(steps):
        out.append(float(schedule.get_last_lr()[group]))
        schedule.optimizer.step()  # before scheduler.step(), or torch warns
        schedule.step()
    return out


SCHEDULES: dict[str, type[Schedule]] = {
    "constant": Constant,
    "step": Step,
    "exponential": Exponential,
    "cosine": Cosine,
    "warmup": LinearWarmup,
    "cosine_warm_restarts": CosineWarmRestarts,
    "onecycle": OneCycle,
}


def make_schedule(name: str, optimizer: Optimizer, **kwargs: Any) -> Schedule:
    """Build the schedule registered as ``name`` in :data:`SCHEDULES` on ``optimizer``.

    ``then`` (for ``"warmup"``) may be a mapping ``{"name": ..., **kwargs}``, as a config file
    would nest it; it is built on the same optimizer first.

    Example::

        >>> import torch
        >>> from ravine.schedules import make_schedule
        >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        >>> sched = make_schedule("warmup", opt, warmup_steps=5, then={"name": "cosine", "t_max": 95})
        >>> type(sched.then).__name__
        'Cosine'

    Raises:
        ValueError: for an unknown name (listing the valid ones) or arguments the schedule
            does not take (listing the ones it does).
    """
    cls = SCHEDULES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"unknown schedule {name!r}; valid names: {', '.join(SCHEDULES)}")
    signature = inspect.signature(cls)
    try:
        signature.bind(optimizer, **kwargs)
    except TypeError as err:
        accepted = ", ".join(p for p in signature.parameters if p != "optimizer")
        raise ValueError(
            f"invalid arguments for schedule {name!r} ({err}); it accepts: {accepted}"
        ) from None
    then = kwargs.get("then")
    if isinstance(then, Mapping):
        then = dict(then)
        then_name = then.pop("name", None)
        if then_name is None:
            raise ValueError(
                f"then must name its schedule, e.g. {{'name': 'cosine', ...}}, got {kwargs['then']!r}"
            )
        kwargs["then"] = make_schedule(then_name, optimizer, **then)
    return cls(optimizer, **kwargs)
