"""Training signals: what gradient noise, the step and curvature say while a network trains
(the quantities of Cockpit, Schneider, Dangel & Hennig 2021), from per-sample gradients that
``torch.func`` computes (``vmap`` of ``grad``) instead of a backpropagation extension.

Every ``every`` updates, on one fixed probe batch (so that changes come from the weights, not
from the sample), :class:`TrainingSignals` records:

* gradient noise: the trace of the per-example gradient covariance, the simple gradient noise
  scale ``B_simple`` (McCandlish et al. 2018: the batch size at which the batch gradient's
  noise equals its signal), the step's signal-to-noise ratio at the training batch size, and
  the mean per-parameter GSNR;
* batch-size tests: the norm test (Byrd et al. 2012) and the inner-product and orthogonality
  tests (Bollapragada et al. 2018), each as the radius it needs to pass at the training batch
  size and the batch size it suggests at its threshold;
* alpha: where the last step landed on the local quadratic along its own direction (0: at the
  minimum, -1: it barely moved, +1: as high on the other side, above 1: higher than it
  started, i.e. overshooting; below -1: the step went uphill from its start), and whether
  the step was a descent direction on the probe batch;
* the Hessian trace (Hutchinson), whole and per block;
* the distance from the initialization and the size of the last update, whole and per block.

:func:`diagnose_signals` turns the records into findings with advice, the
:class:`~ravine.probe.gradients.Finding` records of gradient health.

    signals = TrainingSignals(F.cross_entropy, (x[:256], y[:256]), every=20, batch_size=64)
    ravine.train.train(config, out, callbacks=[signals])   # or call signals(model, step)
    signals.findings()  # e.g. "steps overshoot ... -> lower the learning rate"

Notation (``n`` probe examples with gradients ``g_i``, their mean ``gbar``, training batch
``b``): ``tr S = sum_i ||g_i - gbar||^2 / (n - 1)`` is the trace of the per-example gradient
covariance; ``|G|^2 = ||gbar||^2 - tr S / n`` is the unbiased estimate of the squared norm of
the true gradient. The loss must be a mean over examples (``F.cross_entropy``,
``F.mse_loss``, the defaults), so that the batch gradient is the mean of the per-sample ones
(a warning says when it is not).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap

from ravine.probe.curvature import HessianOperator, rademacher_products
from ravine.probe.gradients import Finding, unmonitored

__all__ = [
    "INNER_PRODUCT_THETA",
    "LARGE_BATCH_SNR",
    "LOSS_RISE",
    "NOISY_SNR",
    "NORM_TEST_THETA",
    "ORTHOGONALITY_NU",
    "OVERSHOOT_ALPHA",
    "STALL_FALL",
    "UNDERSHOOT_ALPHA",
    "GradientNoise",
    "TrainingSignals",
    "diagnose_signals",
    "gradient_noise",
    "per_sample_gradients",
    "step_alpha",
]

# --------------------------------------------------------------------------------------------
# Thresholds, and why
# --------------------------------------------------------------------------------------------

NORM_TEST_THETA = 0.9
"""The norm test passes at batch ``b`` when the variance of the batch gradient is at most
``theta^2 ||gbar||^2``, i.e. ``tr S / b <= theta^2 ||gbar||^2``. Byrd et al. (2012) ran
``theta`` of 0.5-0.9; Bollapragada et al. (2018) use 0.9."""

INNER_PRODUCT_THETA = 0.9
"""The inner-product test passes when ``Var_i(g_i . gbar) / b <= theta^2 ||gbar||^4``: the
batch gradient makes an acute angle with the true one with high probability. 0.9 as in
Bollapragada, Byrd & Nocedal (2018)."""

ORTHOGONALITY_NU = 5.84
"""The orthogonality test passes when the per-example gradients' components orthogonal to
``gbar`` have ``E ||g_i^perp||^2 / b <= nu^2 ||gbar||^2``: the batch gradient's angle to the
true one has a tangent of at most about ``nu``, so 5.84 (the value of Bollapragada, Byrd &
Nocedal 2018) allows up to ``arctan 5.84 = 80.3`` degrees."""

NOISY_SNR = 0.1
"""A step whose signal-to-noise ratio ``b |G|^2 / tr S`` is below this (batch ``b`` ten times
smaller than the noise scale) is mostly noise: in McCandlish et al.'s model, each at its best
learning rate, such a step makes about ``SNR / (1 + SNR)`` of the progress of a noiseless one.
It is flagged only where the probe loss has also stopped falling: late in a healthy run the
signal shrinks toward the minimum and the SNR with it, which is no problem while the loss
still falls."""

LARGE_BATCH_SNR = 10.0
"""Above this SNR (batch ten times the noise scale) an example buys little: the step is
already nearly noiseless, and smaller batches with more updates reach the same loss with
fewer examples (McCandlish et al. 2018, the critical batch size)."""

OVERSHOOT_ALPHA = 1.0
"""alpha above 1: on the local quadratic along the step, the step ended higher than it
started (past the mirror point of the start)."""

UNDERSHOOT_ALPHA = -0.9
"""alpha below -0.9: the step covered less than a tenth of the way to the minimum along its
own direction."""

LOSS_RISE = 1e-3
"""An update raised the probe-batch loss when the loss after it exceeds the loss before it
(same batch, so no sampling noise between the two) by more than this fraction; the margin
keeps float rounding near a minimum from counting. When most updates do, the run climbs: a
direct observation, which catches what alpha's quadratic can miss (a ReLU network's loss is
nearly piecewise linear along a long step, so its slopes can look tame while it diverges)."""

STALL_FALL = 0.1
"""The probe loss has stalled when it fell by less than this fraction over the second half of
the records: then noise is what holds it up, and ``noisy_gradients`` is worth a word."""

_MIN_RECORDS = 3  # a finding needs at least this many records that show the quantity
_PER_SAMPLE_BUDGET = 1 << 24  # numbers of per-sample gradients held at once (64 MB in fp32)

_ADVICE = {
    "noisy_gradients": (
        "batch too small for this noise level: a decaying learning rate (cosine, steps) "
        "averages the noise out as training settles; a batch nearer the noise scale does it "
        "per update, at more examples each"
    ),
    "batch_larger_than_needed": (
        "a smaller batch with more updates (and a learning rate retuned for it) would reach "
        "the same loss with fewer examples"
    ),
    "overshooting": "steps overshoot: lower the learning rate (or warm it up, or clip)",
    "loss_rising": (
        "the learning rate is too large for this region: lower it (or warm it up, or clip "
        "gradients)"
    ),
    "undershooting": (
        "steps are short along their own direction: if the loss falls slowly, try a larger "
        "learning rate"
    ),
}


# --------------------------------------------------------------------------------------------
# Per-sample gradients and what they say about noise
# --------------------------------------------------------------------------------------------


def _trainable(model: nn.Module) -> dict[str, Tensor]:
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("model has no trainable parameters")
    return params


def _constants(model: nn.Module) -> dict[str, Tensor]:
    constants = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    constants.update({n: b.detach() for n, b in model.named_buffers()})
    return constants


def _check_batch(data: Any, owner: str) -> tuple[Tensor, Tensor]:
    if (
        not isinstance(data, tuple | list)
        or len(data) != 2
        or not all(isinstance(t, Tensor) for t in data)
    ):
        raise ValueError(f"{owner}: data must be a pair of tensors (inputs, targets)")
    x, y = data
    if len(x) != len(y):
        raise ValueError(f"{owner}: inputs and targets differ in length ({len(x)} vs {len(y)})")
    if len(x) < 2:
        raise ValueError(f"{owner}: the probe batch needs at least 2 examples, got {len(x)}")
    return x, y


def _sample_function(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor]):
    """``(params, x_i, y_i) -> (grad, loss)`` of one example's loss, for ``vmap``."""
    constants = _constants(model)

    def one(params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        out = functional_call(model, {**params, **constants}, (x.unsqueeze(0),))
        return loss_fn(out, y.unsqueeze(0))

    return grad_and_value(one)


def _chunks(model: nn.Module, loss_fn, params, x: Tensor, y: Tensor, chunk: int | None):
    """Yield ``(per-sample grads {name: (c, *shape)}, per-sample losses (c,))`` chunk by chunk:
    ``vmap`` where the model allows it, else one example at a time (with a warning)."""
    dim = sum(p.numel() for p in params.values())
    chunk = chunk or max(1, min(len(x), _PER_SAMPLE_BUDGET // max(dim, 1)))
    batched = vmap(_sample_function(model, loss_fn), in_dims=(None, 0, 0))
    looped = False
    for start in range(0, len(x), chunk):
        xs, ys = x[start : start + chunk], y[start : start + chunk]
        if not looped:
            try:
                yield batched(params, xs, ys)
                continue
            except RuntimeError as error:  # an op without a batching rule, .item(), ...
                looped = True
                warnings.warn(
                    f"per-sample gradients: vmap failed on this model ({error}); computing "
                    "them one example at a time (slower, same values)",
                    RuntimeWarning,
                    stacklevel=3,
                )
        yield _looped(model, loss_fn, params, xs, ys)


def _looped(model: nn.Module, loss_fn, params: dict[str, Tensor], x: Tensor, y: Tensor):
    """Per-sample gradients by plain autograd, one example at a time: for models that
    ``vmap`` cannot run (data-dependent control flow, ``.item()``)."""
    constants = _constants(model)
    grads, losses = [], []
    for xi, yi in zip(x, y, strict=True):
        leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
        out = functional_call(model, {**leaves, **constants}, (xi.unsqueeze(0),))
        value = loss_fn(out, yi.unsqueeze(0))
        grads.append(torch.autograd.grad(value, list(leaves.values()), allow_unused=True))
        losses.append(value.detach())
    stacked = {
        k: torch.stack([torch.zeros_like(v) if g[i] is None else g[i] for g in grads])
        for i, (k, v) in enumerate(params.items())
    }
    return stacked, torch.stack(losses)


def per_sample_gradients(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    data: tuple[Tensor, Tensor],
    *,
    chunk_size: int | None = None,
) -> dict[str, Tensor]:
    """The gradient of each example's loss, ``{parameter name: (n, *shape)}``, for the
    model's trainable parameters, with ``torch.func.vmap`` over ``grad`` (models whose ops
    ``vmap`` cannot batch fall back to a loop over the examples).

    The model runs in its current mode; call ``model.eval()`` first where batch norm must not
    use the batch's statistics (a one-example batch has none) and dropout must be off.

    >>> model = nn.Linear(3, 2)
    >>> g = per_sample_gradients(model, nn.functional.cross_entropy,
    ...                          (torch.randn(5, 3), torch.tensor([0, 1, 0, 1, 1])))
    >>> tuple(g["weight"].shape)
    (5, 2, 3)
    """
    x, y = _check_batch(data, "per_sample_gradients")
    params = _trainable(model)
    parts = [g for g, _ in _chunks(model, loss_fn, params, x, y, chunk_size)]
    return {n: torch.cat([p[n] for p in parts]) for n in params}


@dataclass(frozen=True)
class GradientNoise:
    """What ``n`` per-example gradients at one point say about the gradient's noise, and what
    that means at the training batch size ``batch_size`` (see the module doc for notation).

    ``None`` marks a quantity without a finite value: ``noise_scale`` and the suggested batch
    sizes when the signal ``|G|^2`` (or ``||gbar||^2``) is not above zero, ``snr`` when there
    is no noise at all.
    """

    loss: float  # mean loss over the probe batch
    loss_std: float  # standard deviation of the per-example losses
    grad_norm: float  # ||gbar||
    probe_size: int  # n
    batch_size: int  # b
    noise_trace: float  # tr S, per example
    noise_scale: float | None  # B_simple = tr S / |G|^2, in examples
    snr: float | None  # b |G|^2 / tr S = b / B_simple (0 when |G|^2 <= 0)
    gsnr: float | None  # mean over parameters of gbar_j^2 / Var_i(g_ij) (Liu et al. 2020)
    norm_test: float | None  # sqrt(tr S / (b ||gbar||^2)): passes when <= NORM_TEST_THETA
    inner_product_test: float | None  # sqrt(Var(g_i . gbar) / (b ||gbar||^4))
    orthogonality_test: float | None  # sqrt(E||g_i^perp||^2 / (b ||gbar||^2))
    suggested_batch_norm: float | None  # tr S / (theta^2 ||gbar||^2)
    suggested_batch_inner_product: float | None
    suggested_batch_orthogonality: float | None


def _noise_from_sums(
    *,
    n: int,
    b: int,
    g2: float,
    spread: float,
    along: float,
    loss: float,
    loss_std: float,
    gsnr: float | None,
) -> GradientNoise:
    """The statistics from ``g2 = ||gbar||^2`` and the centred sums ``spread = sum_i ||g_i -
    gbar||^2`` and ``along = sum_i ((g_i - gbar) . gbar)^2`` over the probe batch."""
    trace = spread / (n - 1)
    signal = g2 - trace / n
    noise_scale = trace / signal if signal > 0 else None
    snr = None if trace == 0 else max(b * signal / trace, 0.0)
    if g2 > 0:
        inner_var = along / (n - 1)  # g_i . gbar - ||gbar||^2 = (g_i - gbar) . gbar
        orth = max(spread - along / g2, 0.0) / (n - 1)  # g_i^perp = (g_i - gbar)^perp
        tests = (
            math.sqrt(trace / (b * g2)),
            math.sqrt(inner_var / (b * g2 * g2)),
            math.sqrt(orth / (b * g2)),
        )
        suggested = (
            trace / (NORM_TEST_THETA**2 * g2),
            inner_var / (INNER_PRODUCT_THETA**2 * g2 * g2),
            orth / (ORTHOGONALITY_NU**2 * g2),
        )
    else:
        tests = suggested = (None, None, None)
    return GradientNoise(
        loss=loss,
        loss_std=loss_std,
        grad_norm=math.sqrt(g2),
        probe_size=n,
        batch_size=b,
        noise_trace=trace,
        noise_scale=noise_scale,
        snr=snr,
        gsnr=gsnr,
        norm_test=tests[0],
        inner_product_test=tests[1],
        orthogonality_test=tests[2],
        suggested_batch_norm=suggested[0],
        suggested_batch_inner_product=suggested[1],
        suggested_batch_orthogonality=suggested[2],
    )


def _noise_and_mean(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    params: dict[str, Tensor],
    x: Tensor,
    y: Tensor,
    batch_size: int,
    chunk_size: int | None,
) -> tuple[GradientNoise, dict[str, Tensor]]:
    """:class:`GradientNoise` at ``params``, and the mean gradient ``gbar``.

    ``gbar`` comes first, from one ordinary backward pass, so that the per-sample pass can
    stream: each chunk's gradients are centred on ``gbar`` and add to ``sum ||g_i - gbar||^2``,
    ``sum ((g_i - gbar) . gbar)^2`` and the per-parameter variances, and no more than a chunk
    of per-sample gradients is ever held. Centred sums lose nothing to cancellation when the
    noise is small against the signal, so they stay in the model's precision (float32).
    """
    n = len(x)
    leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
    out = functional_call(model, {**leaves, **_constants(model)}, (x,))
    grads = torch.autograd.grad(loss_fn(out, y), list(leaves.values()))
    mean = {k: g.detach() for k, g in zip(leaves, grads, strict=True)}
    flat_mean = {k: m.reshape(-1) for k, m in mean.items()}
    g2 = sum(float(m.double().square().sum()) for m in flat_mean.values())
    along = crossed = 0.0
    squares = {k: torch.zeros_like(m) for k, m in flat_mean.items()}  # sum_i (g_ij - gbar_j)^2
    shift = {k: torch.zeros_like(m) for k, m in flat_mean.items()}  # sum_i (g_ij - gbar_j)
    losses = []
    for chunk, loss in _chunks(model, loss_fn, params, x, y, chunk_size):
        dots = torch.zeros(len(loss), dtype=loss.dtype, device=loss.device)  # (g_i - gbar).gbar
        for k, g in chunk.items():
            centred = g.flatten(1) - flat_mean[k]  # (chunk, numel)
            dots += centred @ flat_mean[k]
            shift[k] += centred.sum(0)
            squares[k] += centred.square_().sum(0)
        along += float(dots.double().square().sum())
        crossed += float(dots.double().sum())
        losses.append(loss.detach().double())
    spread = sum(float(v.double().sum()) for v in squares.values())
    _check_mean_loss(n, g2, spread, crossed, shift)
    per_example = torch.cat(losses)
    gsnr_values = []
    for k, m in flat_mean.items():
        var = squares[k] / (n - 1)
        ok = var > 0
        gsnr_values.append(m[ok].square() / var[ok])
    gsnr_all = torch.cat(gsnr_values).double()
    noise = _noise_from_sums(
        n=n,
        b=batch_size,
        g2=g2,
        spread=spread,
        along=along,
        loss=float(per_example.mean()),
        loss_std=float(per_example.std()),
        gsnr=float(gsnr_all.mean()) if gsnr_all.numel() else None,
    )
    return noise, mean


def _check_mean_loss(
    n: int, g2: float, spread: float, crossed: float, shift: dict[str, Tensor]
) -> None:
    """Warn when the per-example gradients' mean is not the batch gradient: ``loss_fn`` then
    does not average over the examples (``reduction="sum"``), and every quantity is off by the
    batch size. ``shift`` is ``sum_i (g_i - gbar)``, zero up to rounding for a mean."""
    drift = math.sqrt(sum(float(v.double().square().sum()) for v in shift.values())) / n
    # sum_i ||g_i||^2 = spread + 2 sum_i (g_i - gbar) . gbar + n ||gbar||^2
    typical = math.sqrt(max(spread + 2 * crossed + n * g2, 0.0) / n)
    if math.isfinite(drift) and drift > 1e-3 * (typical + math.sqrt(g2)):
        warnings.warn(
            "the mean of the per-example gradients is not the batch gradient: loss_fn must "
            "average over the examples (reduction='mean'), or the noise statistics are off",
            RuntimeWarning,
            stacklevel=4,
        )


def gradient_noise(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    data: tuple[Tensor, Tensor],
    *,
    batch_size: int,
    chunk_size: int | None = None,
) -> GradientNoise:
    """Gradient noise at the model's current weights, from the per-example gradients of the
    ``n`` examples of ``data``, read at the training batch size ``batch_size``.

    The simple noise scale ``B_simple = tr S / |G|^2`` is the batch size at which the batch
    gradient's noise (``tr S / b``) equals its signal: a batch much smaller is mostly noise,
    one much larger gains little per example (McCandlish, Kaplan, Amodei et al., "An
    Empirical Model of Large-Batch Training", 2018; their ``B_noise`` also weighs the noise
    by the Hessian). The tests' radii are those of Byrd et al. (2012) and Bollapragada, Byrd &
    Nocedal (2018), computed from the probe batch's per-example covariance and scaled to
    ``batch_size`` (Cockpit reads them at its own batch, ``b = n``). The model runs in its
    current mode (see :func:`per_sample_gradients`). NaN or Inf (a diverged network) come
    back as None, like the quantities without a finite value.
    """
    owner = "gradient_noise"
    x, y = _check_batch(data, owner)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"{owner}: batch_size must be a positive integer, got {batch_size!r}")
    noise, _ = _noise_and_mean(model, loss_fn, _trainable(model), x, y, batch_size, chunk_size)
    return GradientNoise(**_finite(asdict(noise)))


# --------------------------------------------------------------------------------------------
# alpha: the step on the local quadratic
# --------------------------------------------------------------------------------------------


def step_alpha(length: float, slope_before: float, slope_after: float) -> float | None:
    """Where a step of ``length`` landed on the quadratic along its own direction, from the
    directional derivatives at its start and end (``g . d / |d|`` before and after the step).

    The quadratic's curvature along the step is the secant ``(slope_after - slope_before) /
    length``; its minimum lies ``s* = -slope_before / curvature`` from the start (negative: the
    minimum is behind the start, the step went uphill). alpha is ``length / s* - 1``: 0 at the
    minimum, -1 at the start, +1 at the start's mirror image (as high as the start), above 1
    higher than the start; below -1 for a step that went uphill from its start. This is
    Cockpit's alpha (Schneider et al. 2021, ``2 t / alpha_bar - 1``), which fits the same
    quadratic to noisy values from two batches; measured on one batch at both ends, the
    derivatives are exact and determine it. As in Cockpit, a step along which the loss is not
    convex is -1, and so is a step of length 0 (it did not move).

    Returns None where no quadratic describes the step: it starts at the minimum along its
    direction (``slope_before == 0``), or a number is not finite (a diverged network).

    >>> step_alpha(1.0, -2.0, 0.0)   # the gradient at the end is orthogonal: the minimum
    0.0
    >>> step_alpha(1.0, -2.0, 2.0)   # the slope reversed: as high on the other side
    1.0
    """
    if not all(math.isfinite(v) for v in (length, slope_before, slope_after)):
        return None
    if length == 0:
        return -1.0
    curvature = (slope_after - slope_before) / length
    if curvature <= 0:
        return -1.0
    if slope_before == 0:
        return None
    return length / (-slope_before / curvature) - 1


# --------------------------------------------------------------------------------------------
# The training callback
# --------------------------------------------------------------------------------------------


def _flat(params: Mapping[str, Tensor]) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params.values()]).clone()


def _blocks(names: list[str], sizes: list[int]) -> dict[str, list[slice]]:
    """Parameter block (the module that owns the parameter) -> its slices of the flat vector."""
    blocks: dict[str, list[slice]] = {}
    start = 0
    for name, size in zip(names, sizes, strict=True):
        owner = name.rsplit(".", 1)[0] if "." in name else name
        blocks.setdefault(owner, []).append(slice(start, start + size))
        start += size
    return blocks


class TrainingSignals:
    """Record the training signals (see the module doc) every ``every`` updates on one fixed
    probe batch ``data = (x, y)``, for a run trained with batches of ``batch_size``.

    Call after every update (``signals(model, step)``, what ``ravine.train.train`` does with a
    callback): a call one update before a record keeps a copy of the weights, a record
    compares them with the weights after the update. The model is evaluated in eval mode
    (batch norm uses its running statistics, dropout is off: a per-example gradient has no
    batch to take statistics from) and put back in the mode it was in.

    Each record costs one ordinary backward pass at the weights before the step and one at the
    weights after it, one vectorized per-example backward over the probe batch, and, every
    ``trace_every`` records, ``trace_probes`` Hessian-vector products for the Hutchinson
    trace (0: no trace).

    Args:
        loss_fn: ``loss_fn(outputs, targets)``, a mean over the examples.
        data: the probe batch ``(inputs, targets)``; it follows the model to its device.
        every: record every this many updates.
        batch_size: the training batch size that the noise quantities are read at.
        trace_every: measure the Hessian trace at every this many records.
        trace_probes: Rademacher probes of each trace estimate.
    """

    def __init__(
        self,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        data: tuple[Tensor, Tensor],
        *,
        every: int = 50,
        batch_size: int,
        trace_every: int = 1,
        trace_probes: int = 10,
    ) -> None:
        owner = "TrainingSignals"
        self.data = _check_batch(data, owner)
        for value, arg, low in (
            (every, "every", 1),
            (batch_size, "batch_size", 1),
            (trace_every, "trace_every", 1),
            (trace_probes, "trace_probes", 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                kind = "a positive integer" if low else "an integer >= 0"
                raise ValueError(f"{owner}: {arg} must be {kind}, got {value!r}")
        self.loss_fn = loss_fn
        self.every, self.batch_size = every, batch_size
        self.trace_every, self.trace_probes = trace_every, trace_probes
        self.records: list[dict[str, Any]] = []
        self._initial: Tensor | None = None  # flat weights at attach (or at the first call)
        self._before: Tensor | None = None  # flat weights one update before the next record
        self._before_step: int | None = None

    # -- the callback protocol ----------------------------------------------------------------

    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Remember the initial weights (the loop calls this before the first update)."""
        if self._initial is None:  # (host copies: no accelerator memory held between records)
            self._initial = _flat(_trainable(model)).cpu()
            self._before, self._before_step = self._initial.clone(), 0

    def __call__(self, model: nn.Module, step: int) -> None:
        if self._initial is None:
            self.attach(model)
        if step % self.every == 0:
            self.records.append(self._record(model, _trainable(model), step))
        if (step + 1) % self.every == 0:  # (every other update costs nothing)
            self._before, self._before_step = _flat(_trainable(model)).cpu(), step

    def findings(self) -> list[Finding]:
        return diagnose_signals(self.records, self.batch_size)

    def to_records(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.records]

    # The training loop checkpoints these, so a resumed run keeps its records, its initial
    # weights (the distance's origin) and the weights before a pending record.
    def state_dict(self) -> dict[str, Any]:
        return {
            "records": self.to_records(),
            "initial": self._initial,
            "before": self._before,
            "before_step": self._before_step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.records = [dict(r) for r in state["records"]]
        self._initial, self._before = state["initial"], state["before"]
        self._before_step = state["before_step"]

    # -- one record ---------------------------------------------------------------------------

    def _record(self, model: nn.Module, params: dict[str, Tensor], step: int) -> dict[str, Any]:
        was_training = model.training
        model.eval()
        # The batch follows the model to its device, floating inputs to its precision.
        first = next(iter(params.values()))
        x, y = (
            t.to(first.device, first.dtype) if t.is_floating_point() else t.to(first.device)
            for t in self.data
        )
        try:
            with torch.enable_grad(), unmonitored():  # (a gradient monitor sees training only)
                return self._measure(model, params, x, y, step)
        finally:
            model.train(was_training)

    def _measure(self, model, params, x, y, step: int) -> dict[str, Any]:
        names = list(params)
        sizes = [p.numel() for p in params.values()]
        shapes = [p.shape for p in params.values()]
        blocks = _blocks(names, sizes)
        now = _flat(params)
        noise, mean = _noise_and_mean(
            model, self.loss_fn, params, x, y, self.batch_size, chunk_size=None
        )
        g_now = torch.cat([mean[n].reshape(-1) for n in names])

        # alpha needs the step: the weights one update back, if this run kept them
        alpha = update = loss_before = slope0 = slope1 = None
        d = None
        if self._before is not None and self._before_step == step - 1:
            d = now - self._before.to(now.device)
            update = float(d.norm())
            parts = torch.split(self._before.to(now.device), sizes)
            before = {n: t.view(sh) for n, t, sh in zip(names, parts, shapes, strict=True)}
            leaves = {k: v.requires_grad_() for k, v in before.items()}
            out = functional_call(model, {**leaves, **_constants(model)}, (x,))
            value = self.loss_fn(out, y)
            g_before = torch.cat(
                [g.reshape(-1) for g in torch.autograd.grad(value, list(leaves.values()))]
            )
            loss_before = float(value.detach())
            if update > 0 and math.isfinite(update):
                slope0 = float(g_before.double() @ d.double()) / update
                slope1 = float(g_now.double() @ d.double()) / update
                alpha = step_alpha(update, slope0, slope1)
            elif update == 0:
                alpha = -1.0  # it did not move (a skipped step, a zero learning rate)

        origin = self._initial.to(now.device) if self._initial is not None else now
        away = now - origin
        trace = trace_stderr = None
        block_traces: dict[str, float] = {}
        record_index = len(self.records)
        if self.trace_probes and record_index % self.trace_every == 0:
            op = HessianOperator.from_module(model, self.loss_fn, (x, y))
            gen = torch.Generator().manual_seed(step)
            z, hz = rademacher_products(op, self.trace_probes, gen)
            zhz = z * hz  # (dim, probes): per-coordinate terms of z^T H z
            samples = zhz.sum(0).double()
            trace = float(samples.mean())
            trace_stderr = (
                float(samples.std() / math.sqrt(self.trace_probes))
                if self.trace_probes > 1
                else None
            )
            for name, parts in blocks.items():
                block_traces[name] = float(sum(zhz[s].sum() for s in parts)) / self.trace_probes

        def block_norm(v: Tensor | None, parts: list[slice]) -> float | None:
            if v is None:
                return None
            return math.sqrt(sum(float(v[s].double().square().sum()) for s in parts))

        record = asdict(noise)
        record.update(
            step=int(step),
            loss_before=loss_before,
            alpha=alpha,
            slope_before=slope0,  # the probe loss's slope along the step, at its start
            slope_after=slope1,  # ... and at its end
            descent=None if slope0 is None or not math.isfinite(slope0) else slope0 < 0,
            update_size=update,
            distance=float(away.norm()),
            trace=trace,
            trace_stderr=trace_stderr,
            blocks={
                name: {
                    "distance": block_norm(away, parts),
                    "update_size": block_norm(d, parts),
                    "trace": block_traces.get(name),
                }
                for name, parts in blocks.items()
            },
        )
        return _finite(record)


def _finite(record: dict[str, Any]) -> dict[str, Any]:
    """NaN/Inf become None: the records go to JSON, and a diverged run must not poison it."""

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        return v

    return {k: clean(v) for k, v in record.items()}


# --------------------------------------------------------------------------------------------
# Diagnosis
# --------------------------------------------------------------------------------------------


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def diagnose_signals(records: list[dict[str, Any]], batch_size: int) -> list[Finding]:
    """Findings from training-signal records, each when it holds in more than half of the
    records that measured it (at least three), so that one odd batch raises no alarm:

    - ``noisy_gradients``: SNR below :data:`NOISY_SNR` (the batch is far below the noise
      scale, or no signal is left) while the probe loss has stopped falling (by less than
      :data:`STALL_FALL` over the second half of the records);
    - ``batch_larger_than_needed``: SNR above :data:`LARGE_BATCH_SNR`;
    - ``overshooting``: a descent step's alpha above :data:`OVERSHOOT_ALPHA`;
    - ``undershooting``: a descent step's alpha below :data:`UNDERSHOOT_ALPHA`, where the step
      is mostly signal (SNR at least 1: with a noisy gradient short steps are what averages
      the noise, not a fault);
    - ``loss_rising``: the update raised the probe-batch loss (by more than
      :data:`LOSS_RISE` of it).

    alpha counts only steps that went downhill on the probe batch: a step that goes uphill
    there (the training batch's gradient disagrees with the probe batch's, common when the
    gradient is noisy) says something about noise, not about the step's length.

    Each finding names the first record's step that shows it and the median value over the
    records that do. Returns the findings ordered by step.
    """
    findings: list[Finding] = []

    def majority(kind: str, value: Callable[[dict], float | None], test, say) -> None:
        seen = [(r, v) for r in records if (v := value(r)) is not None]
        if len(seen) < _MIN_RECORDS:
            return
        hits = [(r, v) for r, v in seen if test(v)]
        if len(hits) * 2 <= len(seen):
            return
        median = _median([v for _, v in hits])
        message = say(median, [r for r, _ in hits], len(seen))
        step = hits[0][0]["step"]
        findings.append(Finding(kind, "network", step, median, message, _ADVICE[kind]))

    def noise_words(value: float, hits: list[dict], seen: int) -> str:
        scales = [r["noise_scale"] for r in hits if r.get("noise_scale") is not None]
        scale = (
            f"noise scale ~{_median(scales):,.0f} examples"
            if scales
            else "no signal above the noise"
        )
        return (
            f"signal-to-noise {value:.2g} at batch {batch_size} in {len(hits)} of {seen} "
            f"records ({scale})"
        )

    def descent_alpha(r: dict) -> float | None:
        return r.get("alpha") if r.get("descent") else None

    def signal_alpha(r: dict) -> float | None:
        snr = _snr(r)
        return descent_alpha(r) if snr is not None and snr >= 1 else None

    stall = _stall(records)
    if stall is not None:
        start, end = stall
        majority(
            "noisy_gradients",
            _snr,
            lambda v: v < NOISY_SNR,
            lambda v, hits, seen: (
                noise_words(v, hits, seen)
                + f", and the probe loss stalled ({start:.3g} to {end:.3g} over the second half)"
            ),
        )
    majority("batch_larger_than_needed", _snr, lambda v: v > LARGE_BATCH_SNR, noise_words)
    majority(
        "overshooting",
        descent_alpha,
        lambda v: v > OVERSHOOT_ALPHA,
        lambda v, hits, seen: (
            f"median alpha {v:.2f} > {OVERSHOOT_ALPHA:g} in {len(hits)} of "
            f"{seen} downhill steps: the loss along each rose past where it started"
        ),
    )
    majority(
        "undershooting",
        signal_alpha,
        lambda v: v < UNDERSHOOT_ALPHA,
        lambda v, hits, seen: (
            f"median alpha {v:.2f} < {UNDERSHOOT_ALPHA:g} in {len(hits)} of "
            f"{seen} downhill steps with a clear signal: each covered under a tenth of the way to "
            "the minimum along its direction"
        ),
    )

    def rise(r: dict) -> float | None:
        before, after = r.get("loss_before"), r.get("loss")
        return after / before if before and after is not None and before > 0 else None

    majority(
        "loss_rising",
        rise,
        lambda v: v > 1 + LOSS_RISE,
        lambda v, hits, seen: (
            f"the probe-batch loss rose across {len(hits)} of {seen} "
            f"recorded updates (median x{v:.3g})"
        ),
    )
    findings.sort(key=lambda f: f.step)
    return findings


def _stall(records: list[dict[str, Any]]) -> tuple[float, float] | None:
    """``(loss at the middle record, loss at the last)`` when the probe loss fell by less than
    :data:`STALL_FALL` over the second half of the records; None when it still falls."""
    losses = [r["loss"] for r in records if r.get("loss") is not None]
    if len(losses) < 2 * _MIN_RECORDS:
        return None
    middle, last = losses[len(losses) // 2], losses[-1]
    return (middle, last) if last > (1 - STALL_FALL) * middle else None


def _snr(record: dict[str, Any]) -> float | None:
    """A record's SNR; where it is None because there is no noise at all, infinite."""
    if record.get("snr") is not None:
        return record["snr"]
    if record.get("noise_trace") == 0 and record.get("grad_norm"):
        return math.inf
    return None
