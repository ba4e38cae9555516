"""The named optimizers: torch.optim's signatures and defaults over ravine's chains.

Each class only fixes a chain of stages (``transforms.py``) and validates its hyperparameters;
the maths lives in the stages and the engine runs them. Switching from torch.optim is changing
an import: the signatures (positional order and torch's implementation flags included),
defaults, param-group keys and state-dict keys are torch's, and ``lr`` (and ``betas``) may be
1-element tensors, as in torch. torch's implementation flags choose how a step is computed,
never what; in ravine:

* ``foreach``, ``fused``: None or False change nothing; True selects the flat engine (a fused
  pass over flat storage: the same numbers). ``engine="simple"`` with it, or both True, is
  refused.
* ``differentiable=True``: the step is recorded by autograd (as in torch), on the simple
  engine, which the default engine then is; ``engine="flat"`` with it is refused.
* ``capturable=True``: refused (CUDA-graph capture of a step is not supported); False is the
  default and changes nothing.
* ``maximize``: as in torch.

Every optimizer also accepts, beyond torch's arguments:

* ``max_grad_norm``: clip the global gradient norm (over all parameters of the optimizer)
  before the update, like ``torch.nn.utils.clip_grad_norm_``.
* ``clip_value``: clip each gradient element to ``[-clip_value, clip_value]``.
* ``decoupled_weight_decay``: apply ``weight_decay`` as AdamW does (outside the
  preconditioner) instead of as an L2 term added to the gradient.
* ``nonfinite``: ``"raise"`` (default), ``"skip"`` or ``"ignore"`` a step with NaN/Inf
  gradients (see ``engine.py``).
* ``engine``: ``"auto"`` (default: the flat engine, compiled from ``COMPILE_MIN_NUMEL``
  parameters on; the simple engine where a step must be differentiable), ``"simple"`` (per
  tensor, eager: the reference) or ``"flat"`` (contiguous storage, one fused pass per step,
  compiled unless ``compile=False``; see ``flat.py``).
* ``state_dtype``: e.g. ``torch.float32`` for bf16 parameters: state kept, and the update
  computed, in that dtype.
* ``members``: N stacked copies of a network trained as one (``members.py``): every parameter
  ``(N, ...)``, and every numeric hyperparameter a number or N numbers (``betas``: a pair
  whose entries may each be either), e.g.
  ``Adam(params, members=4, lr=torch.tensor([1e-3, 3e-3, 1e-2, 3e-2]))``.

Values that pass the range checks but would break the arithmetic in the parameters' dtype
(an ``eps`` that rounds to 0, an overflowing ``lr * weight_decay``, ...) are refused too; see
``validation.check_arithmetic``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from ravine.optim import transforms as T
from ravine.optim.engine import ChainOptimizer
from ravine.optim.validation import (
    check_betas,
    check_nonnegative,
    check_positive,
    check_unit_interval,
    paired,
)


class SGD(ChainOptimizer):
    """Stochastic gradient descent, with optional heavy-ball or Nesterov momentum.

    .. math::
        b_t = \\mu b_{t-1} + (1-\\tau) g_t \\ (b_1 = g_1), \\qquad
        \\theta_t = \\theta_{t-1} - \\eta\\, d_t, \\quad
        d_t = g_t \\ (\\mu = 0), \\ b_t \\ \\text{(heavy ball)}, \\ g_t + \\mu b_t \\ \\text{(Nesterov)}

    Full-batch gradient descent is SGD whose batch is the whole data set.

    .. warning::
       Nesterov here is torch's practical form. Sutskever et al. (2013) write it as a
       look-ahead: :math:`v_t = \\mu v_{t-1} - \\eta \\nabla f(\\theta_{t-1} + \\mu v_{t-1})`,
       :math:`\\theta_t = \\theta_{t-1} + v_t`. Substituting
       :math:`\\phi_t = \\theta_t + \\mu v_t` (track the look-ahead point instead of
       :math:`\\theta`) gives :math:`\\phi_t = \\phi_{t-1} - \\eta (g_t + \\mu b_t)` with
       :math:`b_t = \\mu b_{t-1} + g_t` and :math:`g_t = \\nabla f(\\phi_{t-1})`, which is this
       update with dampening 0: the two forms produce the same iterates, shifted by
       :math:`\\mu v_t` (tested in ``tests/test_optim_rules.py``).

    Args:
        params: parameters or param-group dicts.
        lr: learning rate :math:`\\eta` (default 1e-3, torch's).
        momentum: :math:`\\mu` (default 0: plain SGD; see :class:`Momentum` for 0.9).
        dampening: :math:`\\tau`, scales new gradients into the buffer (default 0).
        weight_decay: L2 penalty coefficient (default 0).
        nesterov: Nesterov momentum; needs ``momentum > 0`` and ``dampening == 0``.

    Example::

        >>> import torch, ravine
        >>> model = torch.nn.Linear(4, 1)
        >>> opt = ravine.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)

    References: Robbins & Monro (1951); Polyak (1964); Nesterov (1983); Sutskever et al. (2013).
    """

    chain = (T.AddWeightDecay(), T.HeavyBall(), T.AddDecoupledWeightDecay())

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
        max_grad_norm: float | None = None,
        clip_value: float | None = None,
        members: int | None = None,
        nonfinite: str = "raise",
        engine: str = "auto",
        compile: bool | None = None,
        state_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            params,
            self.chain,
            nonfinite=nonfinite,
            engine=engine,
            compile=compile,
            state_dtype=state_dtype,
            **_hyperparams(locals()),
        )

    def validate_group(self, group: Mapping[str, Any]) -> None:
        super().validate_group(group)
        check_unit_interval(group, "momentum")
        check_unit_interval(group, "dampening", closed=True)
        check_nonnegative(group, "weight_decay")
        if not group["nesterov"]:
            return
        for (momentum, dampening), member in paired(group, "momentum", "dampening"):
            if momentum <= 0 or dampening != 0:
                who = "" if member is None else f" (member {member})"
                raise ValueError(
                    "nesterov=True requires momentum > 0 and dampening == 0, got "
                    f"momentum={momentum!r}, dampening={dampening!r}{who}"
                )


class Momentum(SGD):
    """SGD with heavy-ball momentum, :math:`\\mu = 0.9` by default (Polyak 1964).

    The same rule as ``SGD(momentum=0.9)``; a name of its own so that comparisons and configs
    can say ``momentum``. See :class:`SGD` for the update and arguments.

    Example::

        >>> import torch, ravine
        >>> opt = ravine.optim.Momentum(torch.nn.Linear(4, 1).parameters(), lr=0.01)
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, momentum: float = 0.9, **kwargs):
        super().__init__(params, lr=lr, momentum=momentum, **kwargs)


class Nesterov(SGD):
    """SGD with Nesterov momentum, :math:`\\mu = 0.9` by default (Sutskever et al. 2013).

    The same rule as ``SGD(momentum=0.9, nesterov=True)``; see :class:`SGD` for the update and
    for its equivalence to the look-ahead form.

    Example::

        >>> import torch, ravine
        >>> opt = ravine.optim.Nesterov(torch.nn.Linear(4, 1).parameters(), lr=0.01)
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, momentum: float = 0.9, **kwargs):
        kwargs.setdefault("nesterov", True)
        super().__init__(params, lr=lr, momentum=momentum, **kwargs)


class Adagrad(ChainOptimizer):
    """AdaGrad: per-coordinate steps shrinking with the sum of squared gradients.

    .. math::
        s_t = s_{t-1} + g_t^2, \\qquad
        \\theta_t = \\theta_{t-1} - \\frac{\\eta}{1 + (t-1)\\,\\text{lr\\_decay}}
        \\frac{g_t}{\\sqrt{s_t} + \\epsilon}

    .. warning:: epsilon is added outside the square root, as in torch (optax adds it inside).

    Args:
        params: parameters or param-group dicts.
        lr: :math:`\\eta` (default 1e-2).
        lr_decay: :math:`1/t`-style decay of the step (default 0).
        weight_decay: L2 penalty coefficient (default 0).
        initial_accumulator_value: :math:`s_0` (default 0).
        eps: :math:`\\epsilon` (default 1e-10).

    Example::

        >>> import torch, ravine
        >>> opt = ravine.optim.Adagrad(torch.nn.Linear(4, 1).parameters(), lr=0.1)

    Reference: Duchi, Hazan & Singer (2011), Adaptive subgradient methods, JMLR 12.
    """

    chain = (T.AddWeightDecay(), T.ScaleByAdagrad(), T.AddDecoupledWeightDecay())

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-2,
        lr_decay: float = 0.0,
        weight_decay: float = 0.0,
        initial_accumulator_value: float = 0.0,
        eps: float = 1e-10,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
        max_grad_norm: float | None = None,
        clip_value: float | None = None,
        members: int | None = None,
        nonfinite: str = "raise",
        engine: str = "auto",
        compile: bool | None = None,
        state_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            params,
            self.chain,
            nonfinite=nonfinite,
            engine=engine,
            compile=compile,
            state_dtype=state_dtype,
            **_hyperparams(locals()),
        )

    def validate_group(self, group: Mapping[str, Any]) -> None:
        super().validate_group(group)
        for key in ("lr_decay", "weight_decay", "initial_accumulator_value"):
            check_nonnegative(group, key)
        check_positive(group, "eps")


class RMSprop(ChainOptimizer):
    """RMSprop: divide by a running root-mean-square of recent gradients.

    .. math::
        v_t = \\alpha v_{t-1} + (1-\\alpha) g_t^2, \\quad
        d_t = \\sqrt{v_t} + \\epsilon \\ \\ (\\text{centered: } \\sqrt{v_t - \\bar g_t^2} + \\epsilon,
        \\ \\bar g_t = \\alpha \\bar g_{t-1} + (1-\\alpha) g_t),

    .. math::
        \\theta_t = \\theta_{t-1} - \\eta\\, g_t / d_t
        \\quad \\text{or, with momentum,} \\quad
        b_t = \\mu b_{t-1} + g_t / d_t,\\ \\theta_t = \\theta_{t-1} - \\eta b_t

    .. warning:: epsilon is added outside the square root, as in torch (Keras adds it inside).

    Args:
        params: parameters or param-group dicts.
        lr: :math:`\\eta` (default 1e-2).
        alpha: decay rate :math:`\\alpha` of the square average (default 0.99).
        eps: :math:`\\epsilon` (default 1e-8).
        weight_decay: L2 penalty coefficient (default 0).
        momentum: :math:`\\mu` (default 0).
        centered: normalise by an estimate of the variance instead of the second moment.

    Example::

        >>> import torch, ravine
        >>> opt = ravine.optim.RMSprop(torch.nn.Linear(4, 1).parameters(), lr=1e-3, centered=True)

    References: Hinton, Srivastava & Swersky (2012), Neural Networks for ML, lecture 6e;
    Graves (2013), Generating sequences with recurrent neural networks (centered form).
    """

    chain = (T.AddWeightDecay(), T.ScaleByRMS(), T.AddDecoupledWeightDecay())

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        centered: bool = False,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        *,
        decoupled_weight_decay: bool = False,
        max_grad_norm: float | None = None,
        clip_value: float | None = None,
        members: int | None = None,
        nonfinite: str = "raise",
        engine: str = "auto",
        compile: bool | None = None,
        state_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            params,
            self.chain,
            nonfinite=nonfinite,
            engine=engine,
            compile=compile,
            state_dtype=state_dtype,
            **_hyperparams(locals()),
        )

    def validate_group(self, group: Mapping[str, Any]) -> None:
        super().validate_group(group)
        check_unit_interval(group, "alpha")
        check_unit_interval(group, "momentum")
        check_positive(group, "eps")
        check_nonnegative(group, "weight_decay")


class Adam(ChainOptimizer):
    """Adam: momentum on the gradient, scaled by a running RMS, both bias-corrected.

    .. math::
        m_t = \\beta_1 m_{t-1} + (1-\\beta_1) g_t, \\quad
        v_t = \\beta_2 v_{t-1} + (1-\\beta_2) g_t^2, \\quad
        \\theta_t = \\theta_{t-1} - \\eta \\frac{m_t / (1-\\beta_1^t)}
        {\\sqrt{v_t / (1-\\beta_2^t)} + \\epsilon}

    With ``amsgrad`` the denominator uses the running maximum of :math:`v_t` (Reddi et al.
    2018). ``weight_decay`` is an L2 term added to :math:`g_t` unless
    ``decoupled_weight_decay=True`` (then this is :class:`AdamW`).

    .. warning:: epsilon is added after the square root and the bias correction, as in torch
       and the paper; some implementations add it inside the root or before correcting.

    Args:
        params: parameters or param-group dicts.
        lr: :math:`\\eta` (default 1e-3).
        betas: :math:`(\\beta_1, \\beta_2)` (default (0.9, 0.999)).
        eps: :math:`\\epsilon` (default 1e-8).
        weight_decay: weight decay coefficient (default 0).
        amsgrad: use the AMSGrad maximum of second moments.

    Example::

        >>> import torch, ravine
        >>> opt = ravine.optim.Adam(torch.nn.Linear(4, 1).parameters(), lr=3e-4)

    Reference: Kingma & Ba (2015), Adam: A method for stochastic optimization, ICLR.
    """

    chain = (T.AddWeightDecay(), T.ScaleByAdam(), T.AddDecoupledWeightDecay())

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
        max_grad_norm: float | None = None,
        clip_value: float | None = None,
        members: int | None = None,
        nonfinite: str = "raise",
        engine: str = "auto",
        compile: bool | None = None,
        state_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            params,
            self.chain,
            nonfinite=nonfinite,
            engine=engine,
            compile=compile,
            state_dtype=state_dtype,
            **_hyperparams(locals()),
        )

    def validate_group(self, group: Mapping[str, Any]) -> None:
        super().validate_group(group)
        check_betas(group)
        check_positive(group, "eps")
        check_nonnegative(group, "weight_decay")


class AdamW(Adam):
    """Adam with decoupled weight decay: the decay is not rescaled by the preconditioner.

    .. math::
        \\theta_t = \\theta_{t-1} - \\eta \\left(\\frac{\\hat m_t}{\\sqrt{\\hat v_t} + \\epsilon}
        + \\lambda \\theta_{t-1}\\right)

    with :math:`\\hat m_t, \\hat v_t` Adam's bias-corrected moments and :math:`\\lambda` =
    ``weight_decay`` (default 1e-2, torch's). Note that the decay is multiplied by ``lr``, as in
    torch; the paper's schedule multiplier :math:`\\eta_t` plays that role there.

    Example::

        >>> import torch, ravine
        >>> opt = ravine.optim.AdamW(torch.nn.Linear(4, 1).parameters(), lr=1e-3, weight_decay=0.05)

    Reference: Loshchilov & Hutter (2019), Decoupled weight decay regularization, ICLR.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        **kwargs: Any,
    ) -> None:
        if kwargs.pop("decoupled_weight_decay", True) is not True:
            raise ValueError("AdamW always decouples weight decay; use Adam for an L2 penalty")
        super().__init__(
            params, lr, betas, eps, weight_decay, amsgrad, decoupled_weight_decay=True, **kwargs
        )


class NAdam(ChainOptimizer):
    """NAdam: Adam with Nesterov momentum and a warming-up momentum schedule.

    .. math::
        \\mu_t = \\beta_1 \\left(1 - \\tfrac12\\, 0.96^{t\\psi}\\right), \\quad
        \\theta_t = \\theta_{t-1} - \\eta
        \\frac{\\frac{(1-\\mu_t) g_t}{1-\\prod_{i\\le t}\\mu_i}
        + \\frac{\\mu_{t+1} m_t}{1-\\prod_{i\\le t+1}\\mu_i}}
        {\\sqrt{v_t / (1-\\beta_2^t)} + \\epsilon}

    with :math:`m_t, v_t` Adam's moments (see :class:`Adam`) and :math:`\\psi` =
    ``momentum_decay``, as in torch.optim.NAdam.

    Args:
        params: parameters or param-group dicts.
        lr: :math:`\\eta` (default 2e-3).
        betas: :math:`(\\beta_1, \\beta_2)` (default (0.9, 0.999)).
        eps: :math:`\\epsilon` (default 1e-8), added outside the root.
        weight_decay: weight decay coefficient (default 0); L2 unless decoupled.
        momentum_decay: :math:`\\psi` (default 4e-3).
        decoupled_weight_decay: NAdamW-style decay.

    Example::

        >>> import torch, ravine
        >>> opt = ravine.optim.NAdam(torch.nn.Linear(4, 1).parameters(), lr=2e-3)

    Reference: Dozat (2016), Incorporating Nesterov momentum into Adam, ICLR workshop.
    """

    chain = (T.AddWeightDecay(), T.ScaleByNAdam(), T.AddDecoupledWeightDecay())

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum_decay: float = 4e-3,
        decoupled_weight_decay: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        max_grad_norm: float | None = None,
        clip_value: float | None = None,
        members: int | None = None,
        nonfinite: str = "raise",
        engine: str = "auto",
        compile: bool | None = None,
        state_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            params,
            self.chain,
            nonfinite=nonfinite,
            engine=engine,
            compile=compile,
            state_dtype=state_dtype,
            **_hyperparams(locals()),
        )

    def validate_group(self, group: Mapping[str, Any]) -> None:
        super().validate_group(group)
        check_betas(group)
        check_positive(group, "eps")
        check_nonnegative(group, "weight_decay")
        check_nonnegative(group, "momentum_decay")


def _hyperparams(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """A constructor's ``locals()`` minus what is not a group hyperparameter."""
    skip = {"self", "params", "nonfinite", "engine", "compile", "state_dtype", "__class__"}
    # (torch's implementation flags travel with the hyperparameters: they are group keys)
    hyperparams = {k: v for k, v in arguments.items() if k not in skip}
    if isinstance(hyperparams.get("betas"), list):
        hyperparams["betas"] = tuple(hyperparams["betas"])
    return hyperparams
