"""Weight and bias initialization, and pre-initialization from a trained checkpoint.

Every variance-scaling scheme here is one formula, ``Var(W) = gain² / fan``, with a choice of
fan (fan_in, fan_out or their mean) and of distribution (normal, or uniform on ``[-a, a]`` with
``a = sqrt(3 Var)``). Xavier, He and LeCun differ only in that choice and in the default gain,
so the maths lives once in :func:`_variance_scaling_` and each named scheme reads like its paper.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from ravine import init
    >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    >>> report = init.apply(model, "he_normal", bias="zeros", generator=0)
    >>> report.weights
    ['0.weight', '2.weight']
    >>> bool((model[0].bias == 0).all())
    True
"""

from __future__ import annotations

import math
import os
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

__all__ = [
    "BIAS_STRATEGIES",
    "NONLINEARITIES",
    "SCHEMES",
    "InitReport",
    "LoadRecord",
    "apply",
    "calculate_gain",
    "compute_fans",
    "he_normal_",
    "he_uniform_",
    "lecun_normal_",
    "lecun_uniform_",
    "load_pretrained",
    "orthogonal_",
    "xavier_normal_",
    "xavier_uniform_",
]

GeneratorLike = torch.Generator | int | None

# --------------------------------------------------------------------------------------------
# Gains
# --------------------------------------------------------------------------------------------

# E[gelu(z)^2] for z ~ N(0, 1), in closed form (Stein's lemma twice):
#   E[z^2 Φ(z)^2] = E[Φ(z)^2] + 2 E[z Φ(z) φ(z)] = 1/3 + 1/(2π√3) ≈ 0.42522.
_GELU_SECOND_MOMENT = 1.0 / 3.0 + 1.0 / (2.0 * math.pi * math.sqrt(3.0))

NONLINEARITIES: tuple[str, ...] = (
    "linear",
    "sigmoid",
    "tanh",
    "relu",
    "leaky_relu",
    "selu",
    "gelu",
)
"""Names accepted by :func:`calculate_gain` and by ``nonlinearity=`` everywhere."""


def calculate_gain(nonlinearity: str, negative_slope: float = 0.01) -> float:
    r"""Return the recommended gain for a nonlinearity (the ``gain`` in ``Var(W) = gain² / fan``).

    ============== ==========================================================
    nonlinearity   gain
    ============== ==========================================================
    linear         :math:`1`
    sigmoid        :math:`1`
    tanh           :math:`5/3`
    relu           :math:`\sqrt{2}`
    leaky_relu     :math:`\sqrt{2 / (1 + \text{negative\_slope}^2)}`
    selu           :math:`3/4`
    gelu           :math:`1/\sqrt{E[\mathrm{gelu}(z)^2]} = (1/3 + 1/(2\pi\sqrt{3}))^{-1/2}
                   \approx 1.5335`
    ============== ==========================================================

    All values except ``gelu`` are those of :func:`torch.nn.init.calculate_gain`. torch defines
    no gain for GELU; ravine uses the one He et al.'s derivation gives: the forward pass keeps
    pre-activation variance ``q`` fixed when ``fan_in · Var(W) · E[f(z)²] = q``, and for ReLU
    ``E[f(z)²] = q/2`` gives the familiar ``gain² = 2``. GELU is not positively homogeneous, so
    the gain is exact at the unit-variance fixed point ``q = 1`` (z ~ N(0, 1)) that these
    schemes aim for; it sits between ReLU's √2 and tanh's 5/3.

    .. warning::
        As in torch, ``selu`` gives 3/4, which trades SELU's self-normalizing fixed point for
        steadier gradients. For self-normalizing networks (Klambauer et al., 2017) use
        ``lecun_normal`` with the default ``nonlinearity="linear"`` (``Var(W) = 1/fan_in``).

    Args:
        nonlinearity: one of :data:`NONLINEARITIES`.
        negative_slope: slope of ``leaky_relu`` for negative inputs (ignored otherwise).

    Raises:
        ValueError: unknown ``nonlinearity`` (the message lists the valid names) or a
            non-finite ``negative_slope``.

    Example:
        >>> from ravine.init import calculate_gain
        >>> round(calculate_gain("relu") ** 2, 6)
        2.0
        >>> round(calculate_gain("leaky_relu", negative_slope=0.2), 4)
        1.3868
        >>> round(calculate_gain("gelu"), 4)
        1.5335

    Reference:
        He, Zhang, Ren & Sun, "Delving Deep into Rectifiers: Surpassing Human-Level Performance
        on ImageNet Classification", ICCV 2015.
    """
    _check_choice("nonlinearity", nonlinearity, NONLINEARITIES)
    if nonlinearity == "leaky_relu":
        _check_real("negative_slope", negative_slope)
        return math.sqrt(2.0 / (1.0 + negative_slope**2))
    return {
        "linear": 1.0,
        "sigmoid": 1.0,
        "tanh": 5.0 / 3.0,
        "relu": math.sqrt(2.0),
        "selu": 3.0 / 4.0,
        "gelu": 1.0 / math.sqrt(_GELU_SECOND_MOMENT),
    }[nonlinearity]


# --------------------------------------------------------------------------------------------
# Fans
# --------------------------------------------------------------------------------------------


def compute_fans(tensor: Tensor, *, transposed: bool = False, groups: int = 1) -> tuple[int, int]:
    r"""Return ``(fan_in, fan_out)`` of a Linear or convolution weight.

    For a weight of shape ``(out, in/groups, *kernel)`` (Linear: ``(out, in)``) with receptive
    field :math:`k = \prod \text{kernel}`:

    .. math::
        \text{fan\_in} = \frac{\text{in}}{\text{groups}} k, \qquad
        \text{fan\_out} = \frac{\text{out}}{\text{groups}} k

    i.e. the number of inputs that feed one output unit, and the number of outputs one input
    unit feeds. A transposed convolution stores its weight as ``(in, out/groups, *kernel)``, so
    ``transposed=True`` swaps the roles of the first two dimensions.

    .. warning::
        For ``groups=1`` this equals torch's private ``_calculate_fan_in_and_fan_out``. For
        grouped convolutions torch uses ``fan_out = out · k`` (and reads a transposed weight as
        if it were not), which overstates fan_out by ``groups`` — a depthwise conv's input
        channel only feeds ``k`` outputs. ravine counts the real connections.

    Args:
        tensor: a weight with at least 2 dimensions.
        transposed: the weight belongs to a ``ConvTranspose*d``.
        groups: the convolution's ``groups``; must divide the output (input, if transposed)
            channel dimension.

    Raises:
        ValueError: fewer than 2 dimensions, or ``groups`` that is not a positive divisor.

    Example:
        >>> import torch
        >>> from ravine.init import compute_fans
        >>> compute_fans(torch.empty(128, 64, 3, 3))  # Conv2d(64, 128, 3)
        (576, 1152)
        >>> compute_fans(torch.empty(32, 1, 3, 3), groups=32)  # depthwise Conv2d(32, 32, 3)
        (9, 9)
    """
    if tensor.dim() < 2:
        raise ValueError(
            f"fan_in/fan_out need a weight with at least 2 dimensions; got shape "
            f"{tuple(tensor.shape)}"
        )
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be a positive int; got {groups!r}")
    receptive = math.prod(tensor.shape[2:])
    if transposed:
        # (in, out/groups, *k): dim 0 is input channels, and each input feeds out/groups maps.
        grouped_in, per_group_out = tensor.shape[0], tensor.shape[1]
        if grouped_in % groups:
            raise ValueError(f"groups={groups} does not divide in_channels={grouped_in}")
        return grouped_in // groups * receptive, per_group_out * receptive
    grouped_out, per_group_in = tensor.shape[0], tensor.shape[1]
    if grouped_out % groups:
        raise ValueError(f"groups={groups} does not divide out_channels={grouped_out}")
    return per_group_in * receptive, grouped_out // groups * receptive


# --------------------------------------------------------------------------------------------
# Schemes
# --------------------------------------------------------------------------------------------

_MODES = ("fan_in", "fan_out")


def _variance_scaling_(
    tensor: Tensor,
    *,
    scale: float,
    fan: float,
    distribution: str,
    generator: GeneratorLike,
) -> Tensor:
    """Fill ``tensor`` with zero-mean samples of variance ``scale / fan`` — the one formula."""
    variance = scale / fan
    if distribution == "normal":
        std = math.sqrt(variance)
        return _fill_(tensor, lambda t, g: t.normal_(0.0, std, generator=g), generator)
    # U(-a, a) has variance a²/3.
    bound = math.sqrt(3.0 * variance)
    return _fill_(tensor, lambda t, g: t.uniform_(-bound, bound, generator=g), generator)


def _xavier_(tensor, distribution, *, gain, nonlinearity, negative_slope, generator, fans):
    g = _resolve_gain(gain, nonlinearity, negative_slope, default="linear")
    if _is_empty(tensor):
        return tensor
    fan_in, fan_out = _resolve_fans(tensor, fans)
    return _variance_scaling_(
        tensor,
        scale=2.0 * g * g,
        fan=fan_in + fan_out,
        distribution=distribution,
        generator=generator,
    )


def _he_(tensor, distribution, *, gain, nonlinearity, negative_slope, mode, generator, fans):
    g = _resolve_gain(gain, nonlinearity, negative_slope, default="relu")
    _check_choice("mode", mode, _MODES)
    if _is_empty(tensor):
        return tensor
    fan_in, fan_out = _resolve_fans(tensor, fans)
    fan = fan_in if mode == "fan_in" else fan_out
    return _variance_scaling_(
        tensor, scale=g * g, fan=fan, distribution=distribution, generator=generator
    )


def _lecun_(tensor, distribution, *, gain, nonlinearity, negative_slope, generator, fans):
    g = _resolve_gain(gain, nonlinearity, negative_slope, default="linear")
    if _is_empty(tensor):
        return tensor
    fan_in, _ = _resolve_fans(tensor, fans)
    return _variance_scaling_(
        tensor, scale=g * g, fan=fan_in, distribution=distribution, generator=generator
    )


def xavier_uniform_(
    tensor: Tensor,
    *,
    gain: float | None = None,
    nonlinearity: str | None = None,
    negative_slope: float = 0.01,
    generator: GeneratorLike = None,
    fans: tuple[int, int] | None = None,
) -> Tensor:
    r"""Fill ``tensor`` in place from the Xavier/Glorot uniform distribution.

    .. math::
        W \sim \mathcal{U}(-a, a), \quad
        a = \text{gain}\sqrt{\frac{6}{\text{fan\_in} + \text{fan\_out}}}, \quad
        \operatorname{Var}(W) = \frac{2\,\text{gain}^2}{\text{fan\_in} + \text{fan\_out}}

    Args:
        tensor: weight with at least 2 dimensions (Linear ``(out, in)``, Conv
            ``(out, in/groups, *kernel)``). Zero-element tensors are left as they are.
        gain: scale factor (> 0). Give either ``gain`` or ``nonlinearity``, not both.
        nonlinearity: name from :data:`NONLINEARITIES`; ``gain = calculate_gain(nonlinearity)``.
            Default: ``"linear"`` (gain 1, the paper's setting).
        negative_slope: slope for ``nonlinearity="leaky_relu"``.
        generator: a ``torch.Generator`` or an int seed, for reproducible draws. Samples are
            drawn on the generator's device and copied, so a seed gives the same weights on
            every device. ``None`` uses the global RNG on the tensor's device.
        fans: ``(fan_in, fan_out)`` to use instead of :func:`compute_fans` (``apply`` passes
            them for grouped and transposed convolutions).

    Returns:
        ``tensor``, filled.

    Example:
        >>> import torch
        >>> from ravine.init import xavier_uniform_
        >>> w = xavier_uniform_(torch.empty(300, 200), generator=0)
        >>> bool(w.abs().max() <= (6 / 500) ** 0.5)
        True

    Reference:
        Glorot & Bengio, "Understanding the difficulty of training deep feedforward neural
        networks", AISTATS 2010.
    """
    return _xavier_(
        tensor,
        "uniform",
        gain=gain,
        nonlinearity=nonlinearity,
        negative_slope=negative_slope,
        generator=generator,
        fans=fans,
    )


def xavier_normal_(
    tensor: Tensor,
    *,
    gain: float | None = None,
    nonlinearity: str | None = None,
    negative_slope: float = 0.01,
    generator: GeneratorLike = None,
    fans: tuple[int, int] | None = None,
) -> Tensor:
    r"""Fill ``tensor`` in place from the Xavier/Glorot normal distribution.

    .. math::
        W \sim \mathcal{N}(0, \sigma^2), \quad
        \sigma^2 = \frac{2\,\text{gain}^2}{\text{fan\_in} + \text{fan\_out}}

    Args:
        tensor: weight with at least 2 dimensions. Zero-element tensors are left as they are.
        gain: scale factor (> 0). Give either ``gain`` or ``nonlinearity``, not both.
        nonlinearity: name from :data:`NONLINEARITIES`. Default: ``"linear"`` (gain 1).
        negative_slope: slope for ``nonlinearity="leaky_relu"``.
        generator: a ``torch.Generator`` or an int seed (see :func:`xavier_uniform_`).
        fans: ``(fan_in, fan_out)`` overriding :func:`compute_fans`.

    Returns:
        ``tensor``, filled.

    Example:
        >>> import torch
        >>> from ravine.init import xavier_normal_
        >>> w = xavier_normal_(torch.empty(1000, 1000), generator=0)
        >>> round(w.var().item() * 2000, 1)  # ≈ 2 / (fan_in + fan_out) · 2000
        2.0

    Reference:
        Glorot & Bengio, "Understanding the difficulty of training deep feedforward neural
        networks", AISTATS 2010.
    """
    return _xavier_(
        tensor,
        "normal",
        gain=gain,
        nonlinearity=nonlinearity,
        negative_slope=negative_slope,
        generator=generator,
        fans=fans,
    )


def he_normal_(
    tensor: Tensor,
    *,
    gain: float | None = None,
    nonlinearity: str | None = None,
    negative_slope: float = 0.01,
    mode: str = "fan_in",
    generator: GeneratorLike = None,
    fans: tuple[int, int] | None = None,
) -> Tensor:
    r"""Fill ``tensor`` in place from the He/Kaiming normal distribution.

    .. math::
        W \sim \mathcal{N}(0, \sigma^2), \quad \sigma^2 = \frac{\text{gain}^2}{\text{fan}},
        \quad \text{gain}^2 = 2 \text{ for ReLU}

    where fan is ``fan_in`` (``mode="fan_in"``: keeps the forward activations' variance) or
    ``fan_out`` (``mode="fan_out"``: keeps the backward gradients' variance).

    Args:
        tensor: weight with at least 2 dimensions. Zero-element tensors are left as they are.
        gain: scale factor (> 0). Give either ``gain`` or ``nonlinearity``, not both.
        nonlinearity: name from :data:`NONLINEARITIES`. Default: ``"relu"`` (gain √2).
        negative_slope: slope for ``nonlinearity="leaky_relu"``.
        mode: ``"fan_in"`` or ``"fan_out"``.
        generator: a ``torch.Generator`` or an int seed (see :func:`xavier_uniform_`).
        fans: ``(fan_in, fan_out)`` overriding :func:`compute_fans`.

    Returns:
        ``tensor``, filled.

    Example:
        >>> import torch
        >>> from ravine.init import he_normal_
        >>> w = he_normal_(torch.empty(64, 32, 3, 3), mode="fan_out", generator=0)
        >>> round(w.var().item() * 64 * 9, 1)  # ≈ 2 / fan_out · fan_out
        2.0

    Reference:
        He, Zhang, Ren & Sun, "Delving Deep into Rectifiers: Surpassing Human-Level Performance
        on ImageNet Classification", ICCV 2015.
    """
    return _he_(
        tensor,
        "normal",
        gain=gain,
        nonlinearity=nonlinearity,
        negative_slope=negative_slope,
        mode=mode,
        generator=generator,
        fans=fans,
    )


def he_uniform_(
    tensor: Tensor,
    *,
    gain: float | None = None,
    nonlinearity: str | None = None,
    negative_slope: float = 0.01,
    mode: str = "fan_in",
    generator: GeneratorLike = None,
    fans: tuple[int, int] | None = None,
) -> Tensor:
    r"""Fill ``tensor`` in place from the He/Kaiming uniform distribution.

    .. math::
        W \sim \mathcal{U}(-a, a), \quad a = \text{gain}\sqrt{\frac{3}{\text{fan}}}, \quad
        \operatorname{Var}(W) = \frac{\text{gain}^2}{\text{fan}}

    Args:
        tensor: weight with at least 2 dimensions. Zero-element tensors are left as they are.
        gain: scale factor (> 0). Give either ``gain`` or ``nonlinearity``, not both.
        nonlinearity: name from :data:`NONLINEARITIES`. Default: ``"relu"`` (gain √2).
        negative_slope: slope for ``nonlinearity="leaky_relu"``.
        mode: ``"fan_in"`` or ``"fan_out"``.
        generator: a ``torch.Generator`` or an int seed (see :func:`xavier_uniform_`).
        fans: ``(fan_in, fan_out)`` overriding :func:`compute_fans`.

    Returns:
        ``tensor``, filled.

    Example:
        >>> import torch
        >>> from ravine.init import he_uniform_
        >>> w = he_uniform_(torch.empty(100, 600), nonlinearity="leaky_relu",
        ...                 negative_slope=0.2, generator=0)
        >>> bool(w.abs().max() <= (2 / 1.04) ** 0.5 * (3 / 600) ** 0.5)
        True

    Reference:
        He, Zhang, Ren & Sun, "Delving Deep into Rectifiers: Surpassing Human-Level Performance
        on ImageNet Classification", ICCV 2015.
    """
    return _he_(
        tensor,
        "uniform",
        gain=gain,
        nonlinearity=nonlinearity,
        negative_slope=negative_slope,
        mode=mode,
        generator=generator,
        fans=fans,
    )


def lecun_normal_(
    tensor: Tensor,
    *,
    gain: float | None = None,
    nonlinearity: str | None = None,
    negative_slope: float = 0.01,
    generator: GeneratorLike = None,
    fans: tuple[int, int] | None = None,
) -> Tensor:
    r"""Fill ``tensor`` in place from the LeCun normal distribution.

    .. math::
        W \sim \mathcal{N}(0, \sigma^2), \quad \sigma^2 = \frac{\text{gain}^2}{\text{fan\_in}}

    With the default gain 1 this is the initialization self-normalizing (SELU) networks need.

    .. warning::
        Keras' ``lecun_normal`` draws from a normal truncated at 2σ and rescaled; this one is
        the untruncated normal of the paper, like torch's ``kaiming_normal_(nonlinearity=
        "linear")``.

    Args:
        tensor: weight with at least 2 dimensions. Zero-element tensors are left as they are.
        gain: scale factor (> 0). Give either ``gain`` or ``nonlinearity``, not both.
        nonlinearity: name from :data:`NONLINEARITIES`. Default: ``"linear"`` (gain 1).
        negative_slope: slope for ``nonlinearity="leaky_relu"``.
        generator: a ``torch.Generator`` or an int seed (see :func:`xavier_uniform_`).
        fans: ``(fan_in, fan_out)`` overriding :func:`compute_fans`.

    Returns:
        ``tensor``, filled.

    Example:
        >>> import torch
        >>> from ravine.init import lecun_normal_
        >>> w = lecun_normal_(torch.empty(500, 400), generator=0)
        >>> round(w.var().item() * 400, 1)  # ≈ 1 / fan_in · fan_in
        1.0

    Reference:
        LeCun, Bottou, Orr & Müller, "Efficient BackProp", in Neural Networks: Tricks of the
        Trade, 1998.
    """
    return _lecun_(
        tensor,
        "normal",
        gain=gain,
        nonlinearity=nonlinearity,
        negative_slope=negative_slope,
        generator=generator,
        fans=fans,
    )


def lecun_uniform_(
    tensor: Tensor,
    *,
    gain: float | None = None,
    nonlinearity: str | None = None,
    negative_slope: float = 0.01,
    generator: GeneratorLike = None,
    fans: tuple[int, int] | None = None,
) -> Tensor:
    r"""Fill ``tensor`` in place from the LeCun uniform distribution.

    .. math::
        W \sim \mathcal{U}(-a, a), \quad a = \text{gain}\sqrt{\frac{3}{\text{fan\_in}}}, \quad
        \operatorname{Var}(W) = \frac{\text{gain}^2}{\text{fan\_in}}

    Args:
        tensor: weight with at least 2 dimensions. Zero-element tensors are left as they are.
        gain: scale factor (> 0). Give either ``gain`` or ``nonlinearity``, not both.
        nonlinearity: name from :data:`NONLINEARITIES`. Default: ``"linear"`` (gain 1).
        negative_slope: slope for ``nonlinearity="leaky_relu"``.
        generator: a ``torch.Generator`` or an int seed (see :func:`xavier_uniform_`).
        fans: ``(fan_in, fan_out)`` overriding :func:`compute_fans`.

    Returns:
        ``tensor``, filled.

    Example:
        >>> import torch
        >>> from ravine.init import lecun_uniform_
        >>> w = lecun_uniform_(torch.empty(10, 300), generator=0)
        >>> bool(w.abs().max() <= 0.1)  # a = sqrt(3 / 300)
        True

    Reference:
        LeCun, Bottou, Orr & Müller, "Efficient BackProp", in Neural Networks: Tricks of the
        Trade, 1998.
    """
    return _lecun_(
        tensor,
        "uniform",
        gain=gain,
        nonlinearity=nonlinearity,
        negative_slope=negative_slope,
        generator=generator,
        fans=fans,
    )


def orthogonal_(
    tensor: Tensor,
    *,
    gain: float | None = None,
    nonlinearity: str | None = None,
    negative_slope: float = 0.01,
    generator: GeneratorLike = None,
    fans: tuple[int, int] | None = None,
) -> Tensor:
    r"""Fill ``tensor`` in place with a (semi-)orthogonal matrix scaled by ``gain``.

    The weight is viewed as a ``rows × cols`` matrix (``rows = shape[0]``, the trailing
    dimensions flattened) and set to ``gain · Q``, where ``Q`` comes from the QR decomposition
    of a Gaussian matrix with the signs of ``diag(R)`` folded in, so ``Q`` is Haar-distributed:

    .. math::
        W W^\top = \text{gain}^2 I \ (\text{rows} \le \text{cols}), \qquad
        W^\top W = \text{gain}^2 I \ (\text{rows} > \text{cols}), \qquad
        \overline{W_{ij}^2} = \frac{\text{gain}^2}{\max(\text{rows}, \text{cols})}

    Every singular value equals ``gain``, so a deep linear network's input-output map neither
    shrinks nor stretches any direction at initialization. The QR runs in float64 so the result
    is orthogonal to float32 precision even for large layers.

    Args:
        tensor: weight with at least 2 dimensions. Zero-element tensors are left as they are.
        gain: scale factor (> 0). Give either ``gain`` or ``nonlinearity``, not both.
        nonlinearity: name from :data:`NONLINEARITIES`. Default: ``"linear"`` (gain 1).
        negative_slope: slope for ``nonlinearity="leaky_relu"``.
        generator: a ``torch.Generator`` or an int seed (see :func:`xavier_uniform_`).
        fans: ignored (orthogonality does not depend on fan); accepted so that every entry of
            :data:`SCHEMES` takes the same keywords.

    Returns:
        ``tensor``, filled.

    Example:
        >>> import torch
        >>> from ravine.init import orthogonal_
        >>> w = orthogonal_(torch.empty(3, 5), gain=2.0, generator=0)
        >>> torch.allclose(w @ w.T, 4 * torch.eye(3), atol=1e-5)
        True

    Reference:
        Saxe, McClelland & Ganguli, "Exact solutions to the nonlinear dynamics of learning in
        deep linear neural networks", ICLR 2014.
    """
    del fans
    g = _resolve_gain(gain, nonlinearity, negative_slope, default="linear")
    _check_matrix_like(tensor)
    if _is_empty(tensor):
        return tensor
    rows = tensor.shape[0]
    cols = tensor.numel() // rows
    generator = _as_generator(generator)
    device = generator.device if generator is not None else tensor.device
    gaussian = torch.empty((rows, cols), dtype=_sample_dtype(tensor), device=device)
    gaussian.normal_(0.0, 1.0, generator=generator)
    a = gaussian.double()
    if rows < cols:
        a = a.T  # QR needs tall input; transpose back afterwards
    q, r = torch.linalg.qr(a)  # reduced: q is (max, min) with orthonormal columns
    signs = torch.sign(torch.diagonal(r))
    signs[signs == 0] = 1.0  # a zero pivot (probability 0) must not zero a column
    q = q * signs
    if rows < cols:
        q = q.T
    with torch.no_grad():
        tensor.copy_((g * q).reshape(tensor.shape))
    return tensor


def _keep_default_(
    tensor: Tensor,
    *,
    gain: float | None = None,
    nonlinearity: str | None = None,
    negative_slope: float = 0.01,
    generator: GeneratorLike = None,
    fans: tuple[int, int] | None = None,
) -> Tensor:
    """The ``"default"`` scheme: leave the tensor as torch initialized it."""
    del generator, fans
    _resolve_gain(gain, nonlinearity, negative_slope, default="linear")  # still validate
    return tensor


SCHEMES: dict[str, Callable[..., Tensor]] = {
    "xavier_uniform": xavier_uniform_,
    "xavier_normal": xavier_normal_,
    "he_normal": he_normal_,
    "he_uniform": he_uniform_,
    "lecun_normal": lecun_normal_,
    "lecun_uniform": lecun_uniform_,
    "orthogonal": orthogonal_,
    "default": _keep_default_,
}
"""Weight schemes by name. Every callable takes ``(tensor, *, gain=None, nonlinearity=None,
negative_slope=0.01, generator=None, fans=None)`` and fills ``tensor`` in place; the ``he_*``
ones also take ``mode``. ``"default"`` leaves the tensor untouched."""

# Schemes whose fan can be chosen; apply() rejects `mode` for the others rather than ignore it.
_FAN_MODE_SCHEMES = ("he_normal", "he_uniform")

# --------------------------------------------------------------------------------------------
# Bias strategies
# --------------------------------------------------------------------------------------------

_SMALL_POSITIVE = 0.01


def _bias_zeros(bias: Tensor, value: float | None) -> None:
    bias.zero_()


def _bias_constant(bias: Tensor, value: float | None) -> None:
    bias.fill_(value)


def _bias_small_positive(bias: Tensor, value: float | None) -> None:
    bias.fill_(_SMALL_POSITIVE if value is None else value)


def _bias_default(bias: Tensor, value: float | None) -> None:
    pass


BIAS_STRATEGIES: dict[str, Callable[[Tensor, float | None], None]] = {
    "zeros": _bias_zeros,
    "constant": _bias_constant,
    "small_positive": _bias_small_positive,
    "default": _bias_default,
}
"""Bias strategies by name; each callable fills a bias in place given ``bias_value``.

- ``"zeros"``: 0 (the usual choice; no unit starts preferred).
- ``"constant"``: ``bias_value`` (required).
- ``"small_positive"``: ``bias_value`` or 0.01 — starts ReLU units in their active region so
  fewer of them are dead at initialization.
- ``"default"``: leave torch's ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (or whatever is there).
"""


def _check_bias_value(bias: str, bias_value: float | None) -> None:
    if bias == "constant":
        if bias_value is None:
            raise ValueError('bias="constant" needs bias_value (the constant); got None')
        _check_real("bias_value", bias_value)
    elif bias == "small_positive":
        if bias_value is not None:
            _check_real("bias_value", bias_value)
            if bias_value <= 0:
                raise ValueError(
                    f'bias="small_positive" needs bias_value > 0; got bias_value={bias_value!r}'
                )
    elif bias_value is not None:
        raise ValueError(
            f'bias_value is only used with bias="constant" or "small_positive"; '
            f"got bias={bias!r}, bias_value={bias_value!r}"
        )


# --------------------------------------------------------------------------------------------
# apply(): a whole model
# --------------------------------------------------------------------------------------------

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_TRANSPOSES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_NORMS = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
)


@dataclass
class InitReport:
    """What :func:`apply` did to a model, by parameter / module name.

    Attributes:
        scheme: the weight scheme used.
        bias: the bias strategy used.
        weights: Linear/Conv weights filled by ``scheme``.
        biases: Linear/Conv biases set by ``bias``.
        norms: norm modules reset to the identity (weight 1, bias 0, fresh running stats).
        skipped: parameters left as they were -> why (embeddings, ``"default"`` scheme or bias,
            parameters of modules ``apply`` does not know, uninitialized lazy parameters).
    """

    scheme: str
    bias: str
    weights: list[str] = field(default_factory=list)
    biases: list[str] = field(default_factory=list)
    norms: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [
            f"init {self.scheme!r}, bias {self.bias!r}: {len(self.weights)} weights, "
            f"{len(self.biases)} biases, {len(self.norms)} norm layers reset, "
            f"{len(self.skipped)} parameters left as they were"
        ]
        lines += [f"  skipped {name}: {why}" for name, why in self.skipped.items()]
        return "\n".join(lines)


def apply(
    model: nn.Module,
    scheme: str,
    bias: str = "zeros",
    *,
    gain: float | None = None,
    nonlinearity: str | None = None,
    negative_slope: float = 0.01,
    mode: str | None = None,
    bias_value: float | None = None,
    reset_norms: bool = True,
    generator: GeneratorLike = None,
) -> InitReport:
    r"""Initialize every Linear and convolution layer of ``model`` in place.

    - ``nn.Linear``, ``nn.Conv{1,2,3}d`` and ``nn.ConvTranspose{1,2,3}d`` weights are filled
      by ``scheme`` (see :data:`SCHEMES` for the variance of each), with fans from
      :func:`compute_fans` — receptive field, groups and transposed layout included — and
      their biases are set by ``bias`` (see :data:`BIAS_STRATEGIES`).
    - Norm layers (BatchNorm, InstanceNorm, LayerNorm, GroupNorm, RMSNorm) are reset to the
      identity — weight 1, bias 0, running statistics cleared — when ``reset_norms`` is true,
      so a re-used model starts from a known state. ``bias`` does not apply to them.
    - ``nn.Embedding`` keeps torch's ``N(0, 1)``: an embedding row is a lookup, not a sum over
      fan_in inputs, so fan-based variance does not apply. It and any other parameter
      ``apply`` does not own (e.g. ``MultiheadAttention.in_proj_weight``, RNN weights) are
      listed in :attr:`InitReport.skipped` rather than silently guessed at.

    A weight shared by several modules is initialized once. Everything is validated before
    any tensor is touched, so a bad argument leaves the model unchanged.

    Args:
        model: the module to initialize.
        scheme: a key of :data:`SCHEMES`.
        bias: a key of :data:`BIAS_STRATEGIES`.
        gain: scale factor (> 0) overriding the scheme's default; give either ``gain`` or
            ``nonlinearity``, not both.
        nonlinearity: the activation that follows each layer (a name in
            :data:`NONLINEARITIES`); default: ``"relu"`` for ``he_*``, ``"linear"`` otherwise.
        negative_slope: slope for ``nonlinearity="leaky_relu"``.
        mode: ``"fan_in"`` (default) or ``"fan_out"``; ``he_*`` schemes only.
        bias_value: the constant for ``bias="constant"`` (required) or ``"small_positive"``
            (optional, > 0, default 0.01).
        reset_norms: reset norm layers to the identity.
        generator: a ``torch.Generator`` or an int seed. Modules are visited in
            ``named_modules()`` order and draw from it in turn, so the same seed gives the same
            model, on any device; the global RNG is not consumed. ``None`` uses the global RNG.

    Returns:
        An :class:`InitReport` naming what was initialized and what was left alone.

    Raises:
        ValueError: unknown ``scheme``, ``bias``, ``nonlinearity`` or ``mode`` (listing the
            valid names), a non-positive or non-finite ``gain``, both ``gain`` and
            ``nonlinearity``, ``mode`` with a scheme other than ``he_*``, or a missing or
            invalid ``bias_value``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from ravine import init
        >>> cnn = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
        ...                     nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
        >>> report = init.apply(cnn, "he_normal", bias="small_positive", mode="fan_out",
        ...                     generator=torch.Generator().manual_seed(0))
        >>> report.weights, report.norms
        (['0.weight', '4.weight'], ['1'])
        >>> cnn[4].bias[:3].tolist()
        [0.009999999776482582, 0.009999999776482582, 0.009999999776482582]

    References:
        Glorot & Bengio 2010; He et al. 2015; LeCun et al. 1998; Saxe et al. 2014 (see the
        scheme functions).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module; got {type(model).__name__}")
    _check_choice("scheme", scheme, tuple(SCHEMES))
    _check_choice("bias", bias, tuple(BIAS_STRATEGIES))
    scheme_kwargs: dict = {
        "gain": gain,
        "nonlinearity": nonlinearity,
        "negative_slope": negative_slope,
    }
    if mode is not None:
        if scheme not in _FAN_MODE_SCHEMES:
            raise ValueError(
                f"mode only applies to {list(_FAN_MODE_SCHEMES)}; got mode={mode!r} with "
                f"scheme={scheme!r}"
            )
        _check_choice("mode", mode, _MODES)
        scheme_kwargs["mode"] = mode
    default_nl = "relu" if scheme in _FAN_MODE_SCHEMES else "linear"
    _resolve_gain(gain, nonlinearity, negative_slope, default=default_nl)
    _check_bias_value(bias, bias_value)
    generator = _as_generator(generator)
    init_weight = SCHEMES[scheme]
    init_bias = BIAS_STRATEGIES[bias]

    report = InitReport(scheme=scheme, bias=bias)
    done: set[int] = set()  # ids of tensors already set: a tied weight is initialized once
    why_not: dict[int, str] = {}  # id -> reason, for the parameters left as they were
    with torch.no_grad():
        for mod_name, module in model.named_modules():
            prefix = f"{mod_name}." if mod_name else ""
            own = list(module.parameters(recurse=False))
            if any(_is_lazy(p) for p in own):
                # Shapes (hence fans) are unknown until the first forward pass.
                why_not.update((id(p), "uninitialized lazy module") for p in own)
            elif isinstance(module, (nn.Linear, *_CONVS, *_CONV_TRANSPOSES)):
                weight, b = module.weight, module.bias
                if scheme == "default":
                    why_not[id(weight)] = "scheme='default'"
                elif id(weight) not in done:
                    fans = compute_fans(
                        weight,
                        transposed=isinstance(module, _CONV_TRANSPOSES),
                        groups=getattr(module, "groups", 1),
                    )
                    init_weight(weight, generator=generator, fans=fans, **scheme_kwargs)
                    report.weights.append(prefix + "weight")
                    done.add(id(weight))
                if b is None:
                    pass
                elif bias == "default":
                    why_not[id(b)] = "bias='default'"
                elif id(b) not in done:
                    init_bias(b, bias_value)
                    report.biases.append(prefix + "bias")
                    done.add(id(b))
            elif isinstance(module, _NORMS):
                if not reset_norms:
                    why_not.update((id(p), "reset_norms=False") for p in own)
                    continue
                if hasattr(module, "reset_running_stats"):
                    module.reset_running_stats()  # a no-op without track_running_stats
                # The identity transform: weight 1, bias 0 (either may be absent).
                for p, value in (
                    (getattr(module, "weight", None), 1.0),
                    (getattr(module, "bias", None), 0.0),
                ):
                    if p is not None:
                        p.fill_(value)
                        done.add(id(p))
                report.norms.append(mod_name)
            elif isinstance(module, nn.Embedding):
                why_not[id(module.weight)] = "embedding: kept at torch's default N(0, 1)"
    for name, p in model.named_parameters():
        if id(p) not in done:
            report.skipped[name] = why_not.get(id(p), "not a Linear/Conv/norm parameter")
    return report


# --------------------------------------------------------------------------------------------
# load_pretrained(): pre-initialization from a trained model
# --------------------------------------------------------------------------------------------


@dataclass
class LoadRecord:
    """What :func:`load_pretrained` copied and what it could not, by state-dict name.

    Attributes:
        loaded: names whose values were copied into the model.
        missing: model entries absent from the source (left as they were).
        unexpected: source entries the model does not have (ignored).
        shape_mismatched: name -> (model's shape, source's shape); left as they were. The
            model's shape is None for an uninitialized lazy parameter.
    """

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatched: dict[str, tuple[tuple[int, ...] | None, tuple[int, ...]]] = field(
        default_factory=dict
    )

    @property
    def complete(self) -> bool:
        """True when every model entry was loaded and the source had nothing else."""
        return not (self.missing or self.unexpected or self.shape_mismatched)

    def problems(self) -> list[str]:
        """One line per entry that was not a clean match."""
        lines = [f"missing from source: {n}" for n in self.missing]
        lines += [f"not in model: {n}" for n in self.unexpected]
        lines += [
            f"shape mismatch: {n}: model {exp}, source {got}"
            for n, (exp, got) in self.shape_mismatched.items()
        ]
        return lines

    def __str__(self) -> str:
        head = (
            f"loaded {len(self.loaded)}, missing {len(self.missing)}, unexpected "
            f"{len(self.unexpected)}, shape mismatched {len(self.shape_mismatched)}"
        )
        return "\n".join([head, *(f"  {line}" for line in self.problems())])


def load_pretrained(
    model: nn.Module,
    source: str | os.PathLike | nn.Module | Mapping[str, Tensor],
    *,
    strict: bool = False,
    strip_prefix: str = "",
    add_prefix: str = "",
) -> LoadRecord:
    """Initialize ``model`` from a trained model's parameters and buffers, matched by name.

    Nothing is half-loaded silently: the whole source is checked against
    ``model.state_dict()`` before any tensor is copied. With ``strict=True`` any missing,
    unexpected or shape-mismatched entry raises and the model is left bit-for-bit unchanged;
    with ``strict=False`` every matching entry is copied and the returned record names each
    one that was not. Values are copied (never aliased) and cast to the model's dtype and
    device.

    Args:
        model: the module to initialize.
        source: a path to a file written by ``torch.save`` — a state dict, or a checkpoint
            dict whose ``"model"`` (else ``"state_dict"``) entry is one — or an ``nn.Module``,
            or a state-dict mapping (which may itself be such a checkpoint dict). Files are
            read with ``torch.load(..., weights_only=True, map_location="cpu")``.
        strict: raise ``ValueError`` unless source and model match exactly.
        strip_prefix: removed from the start of each source name that has it (e.g.
            ``"module."`` from a DistributedDataParallel checkpoint).
        add_prefix: then prepended to every source name (e.g. ``"backbone."`` to load a
            backbone checkpoint into a larger model).

    Returns:
        A :class:`LoadRecord`.

    Raises:
        ValueError: ``strict=True`` and the source does not match (the message lists every
            problem); a file that cannot be read with ``weights_only=True``; a source with
            non-tensor entries; two source names that collide after renaming.
        TypeError: ``source`` of an unsupported type.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from ravine.init import load_pretrained
        >>> trained = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> new = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 5))  # new head
        >>> record = load_pretrained(new, trained)
        >>> record.loaded
        ['0.weight', '0.bias']
        >>> record.shape_mismatched["2.weight"]
        ((5, 8), (3, 8))
        >>> torch.equal(new[0].weight, trained[0].weight)
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module; got {type(model).__name__}")
    if not isinstance(strip_prefix, str) or not isinstance(add_prefix, str):
        raise TypeError("strip_prefix and add_prefix must be strings")
    state = _rename(_read_state_dict(source), strip_prefix, add_prefix)
    # keep_vars: the live Parameters and buffers, so copy_ writes into the model itself.
    target = {k: v for k, v in model.state_dict(keep_vars=True).items() if isinstance(v, Tensor)}

    record = LoadRecord()
    for name, dst in target.items():
        if name not in state:
            record.missing.append(name)
        elif _is_lazy(dst) or tuple(dst.shape) != tuple(state[name].shape):
            got = tuple(state[name].shape)
            expected = None if _is_lazy(dst) else tuple(dst.shape)
            record.shape_mismatched[name] = (expected, got)
        else:
            record.loaded.append(name)
    record.unexpected = [name for name in state if name not in target]

    if strict and not record.complete:
        raise ValueError(
            "load_pretrained(strict=True): source does not match the model; nothing was "
            "loaded:\n  " + "\n  ".join(record.problems())
        )
    # Convert everything first: a cast that fails must fail before the first copy.
    staged = [
        (
            target[name],
            state[name].detach().to(device=target[name].device, dtype=target[name].dtype),
        )
        for name in record.loaded
    ]
    with torch.no_grad():
        for dst, src in staged:
            dst.copy_(src)
    return record


def _read_state_dict(source) -> dict[str, Tensor]:
    if isinstance(source, (str, os.PathLike)):
        try:
            obj = torch.load(source, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise ValueError(
                f"could not read {os.fspath(source)!r} with torch.load(weights_only=True); "
                "save a state_dict (model.state_dict()) rather than a pickled module"
            ) from err
    else:
        obj = source
    if isinstance(obj, nn.Module):
        return dict(obj.state_dict())
    if not isinstance(obj, Mapping):
        raise TypeError(
            f"source must be a path, an nn.Module or a state-dict mapping; got {type(obj).__name__}"
        )
    for key in ("model", "state_dict"):
        if key in obj and isinstance(obj[key], (Mapping, nn.Module)):
            inner = obj[key]
            return dict(inner.state_dict() if isinstance(inner, nn.Module) else inner)
    bad = [k for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, Tensor))]
    if bad:
        shown = ", ".join(repr(k) for k in bad[:5]) + (" ..." if len(bad) > 5 else "")
        raise ValueError(
            f"source is not a state dict: {len(bad)} entries are not (str -> Tensor): {shown}; "
            'a checkpoint should keep its state dict under "model" or "state_dict"'
        )
    return dict(obj)


def _rename(state: dict[str, Tensor], strip_prefix: str, add_prefix: str) -> dict[str, Tensor]:
    if not (strip_prefix or add_prefix):
        return state
    renamed: dict[str, Tensor] = {}
    for name, value in state.items():
        new = name[len(strip_prefix) :] if strip_prefix and name.startswith(strip_prefix) else name
        new = add_prefix + new
        if new in renamed:
            raise ValueError(f"two source entries map to {new!r} after renaming")
        renamed[new] = value
    return renamed


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _check_choice(arg: str, value: object, valid: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in valid:
        raise ValueError(f"unknown {arg} {value!r}; valid: {', '.join(valid)}")


def _check_real(arg: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{arg} must be a finite number; got {arg}={value!r}")


def _resolve_gain(
    gain: float | None, nonlinearity: str | None, negative_slope: float, *, default: str
) -> float:
    if gain is not None:
        if nonlinearity is not None:
            raise ValueError(
                f"give gain or nonlinearity, not both; got gain={gain!r}, "
                f"nonlinearity={nonlinearity!r}"
            )
        _check_real("gain", gain)
        # gain 0 would make every unit identical (no symmetry breaking): use zeros_ for that.
        if gain <= 0:
            raise ValueError(f"gain must be > 0; got gain={gain!r}")
        return float(gain)
    return calculate_gain(default if nonlinearity is None else nonlinearity, negative_slope)


def _check_matrix_like(tensor: Tensor) -> None:
    if not isinstance(tensor, Tensor):
        raise TypeError(f"tensor must be a torch.Tensor; got {type(tensor).__name__}")
    if tensor.dim() < 2:
        raise ValueError(
            f"weight initialization needs a tensor with at least 2 dimensions; got shape "
            f"{tuple(tensor.shape)}"
        )
    if not tensor.is_floating_point():
        raise ValueError(f"can only initialize floating-point tensors; got {tensor.dtype}")


def _resolve_fans(tensor: Tensor, fans: tuple[int, int] | None) -> tuple[int, int]:
    _check_matrix_like(tensor)
    if fans is None:
        return compute_fans(tensor)
    if (
        not isinstance(fans, tuple)
        or len(fans) != 2
        or not all(isinstance(f, int) and not isinstance(f, bool) and f > 0 for f in fans)
    ):
        raise ValueError(f"fans must be a (fan_in, fan_out) pair of positive ints; got {fans!r}")
    return fans


def _is_empty(tensor: Tensor) -> bool:
    # Nothing to draw (and fan would be 0); meta tensors have no storage to fill.
    return tensor.numel() == 0 or tensor.is_meta


def _is_lazy(tensor: Tensor) -> bool:
    return isinstance(tensor, nn.parameter.UninitializedTensorMixin)


def _as_generator(generator: GeneratorLike) -> torch.Generator | None:
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, int) and not isinstance(generator, bool):
        return torch.Generator().manual_seed(generator)
    raise TypeError(
        f"generator must be a torch.Generator, an int seed or None; got {type(generator).__name__}"
    )


def _sample_dtype(tensor: Tensor) -> torch.dtype:
    # Draw in the tensor's own precision when the RNG kernels support it everywhere; half and
    # bfloat16 are drawn in float32 and rounded, which also keeps seeds device-independent.
    return tensor.dtype if tensor.dtype in (torch.float32, torch.float64) else torch.float32


def _fill_(
    tensor: Tensor, draw: Callable[[Tensor, torch.Generator | None], Tensor], generator
) -> Tensor:
    generator = _as_generator(generator)
    # Draw on the generator's device and copy: a CPU seed then gives the same weights on GPU.
    device = generator.device if generator is not None else tensor.device
    sample = torch.empty(tensor.shape, dtype=_sample_dtype(tensor), device=device)
    draw(sample, generator)
    with torch.no_grad():
        tensor.copy_(sample)
    return tensor
