"""Gradient health: record per-layer gradient, weight, update and activation statistics while
training any ``nn.Module``, and diagnose vanishing and exploding gradients from the record.

The classic failure: a deep sigmoid MLP with a naive init multiplies the backward signal by
``sigmoid'(z) * W`` once per layer (``sigmoid' <= 1/4``), so the first layers' gradients are
orders of magnitude smaller than the last layer's and the first layers barely learn (Glorot &
Bengio, 2010). Too large an init does the opposite: activations and gradients grow
geometrically with depth until a step throws the weights far away.

Usage from any training loop::

    with GradientMonitor(model, optimizer=opt) as monitor:
        for step, (x, y) in enumerate(batches):
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
            monitor.record(step)           # after backward (and after the step, for updates)
    for finding in diagnose(monitor.history):
        print(finding)

>>> import torch
>>> from torch import nn
>>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
>>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
>>> with GradientMonitor(model, optimizer=opt) as monitor:
...     opt.zero_grad()
...     model(torch.randn(16, 4)).square().mean().backward()
...     opt.step()
...     record = monitor.record(0)
>>> sorted(record.layers)
['0', '2']
>>> record.layers["0"].update_ratio > 0
True
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd

__all__ = [
    "DEAD_RELU_MAX",
    "EXPLODING_GROWTH",
    "EXPLODING_NORM",
    "EXPLODING_UPDATE_RATIO",
    "GRADIENT_FLOOR",
    "SATURATION_MAX",
    "VANISHING_RATIO",
    "Finding",
    "GradientHealthCallback",
    "GradientMonitor",
    "GradientRecord",
    "LayerStats",
    "activation_stats",
    "diagnose",
    "history_array",
    "unmonitored",
]

# --------------------------------------------------------------------------------------------
# Thresholds of diagnose(), and why
# --------------------------------------------------------------------------------------------

VANISHING_RATIO = 1e-3
"""A layer's gradient norm below this fraction of the last layer's is *vanishing*. Healthy
networks (variance-preserving init, or batch norm) keep every layer's gradient norm within
about one order of magnitude of the others; three orders of magnitude mean that, at a learning
rate that suits the last layer, that layer moves a thousand times more slowly."""

GRADIENT_FLOOR = 1e-8
"""A layer's gradient norm below this absolute floor is *vanishing* whatever the other layers
do: at float32 precision (``eps ~ 1e-7`` relative) such updates are lost against weights of
order one."""

EXPLODING_NORM = 1e3
"""A layer's gradient norm above this is *exploding*. Losses averaged over a batch (cross
entropy, MSE on standardized targets) give per-layer gradient norms of order 0.01-10 in a
healthy network; 1e3 means a step of any usual learning rate throws the weights far away."""

EXPLODING_GROWTH = 1e3
"""A gradient norm this many times larger than a reference is *exploding*: the first layer's
relative to the last layer's (growth backwards through the network), or a layer's relative to
its own value at the start (growth over the steps)."""

EXPLODING_UPDATE_RATIO = 1.0
"""An update-to-weight ratio ``||dw|| / ||w||`` above this is an *exploding update*: the step
changed the weights by more than their own size. A healthy ratio is around 1e-3 (1e-4-1e-2);
a ratio above 1 erases what the layer knew in one step."""

DEAD_RELU_MAX = 0.5
"""More than this fraction of a layer's ReLU units output exactly 0 for a whole batch: half the
layer no longer gets any gradient (*dying ReLU*, usually a large step or a negative bias)."""

SATURATION_MAX = 0.5
"""More than this fraction of a layer's sigmoid/tanh outputs sit in the flat tails (sigmoid
below 0.01 or above 0.99, tanh beyond +-0.99), where the derivative is below 0.01."""

# Activation modules whose statistics are recorded, and how they fail.
_RELU_LIKE = (nn.ReLU, nn.ReLU6)  # units die: output exactly 0
_SATURATING = (nn.Sigmoid, nn.Tanh)  # units saturate: flat tails
_ACTIVATIONS = (
    *_RELU_LIKE,
    *_SATURATING,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Softplus,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Hardsigmoid,
)
_SAMPLE_SIZE = 4096  # activation values kept per layer for histograms (memory O(layers))

_ADVICE = {
    "vanishing_gradients": (
        "use a variance-preserving init for the activation (Xavier with the sigmoid/tanh gain, "
        "He for ReLU), add batch norm, or switch sigmoid/tanh to a ReLU-family activation"
    ),
    "exploding_gradients": (
        "scale the init down (He/Xavier instead of N(0, 1)), clip gradients "
        "(max_grad_norm=...), lower the learning rate, or add batch norm"
    ),
    "exploding_updates": (
        "clip gradients (max_grad_norm=...) or lower the learning rate (warm it up)"
    ),
    "dead_relu": (
        "lower the learning rate, use bias='small_positive' or He init, or use leaky ReLU"
    ),
    "saturation": (
        "use Xavier init with the activation's gain, add batch norm before the activation, "
        "or use a non-saturating activation (ReLU family)"
    ),
}


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerStats:
    """Statistics of one Linear/conv layer at one record. ``None``: not available (no grad, no
    update seen yet, no forward pass since the last record, not that kind of activation)."""

    grad_norm: float | None  # ||dL/dW|| of the weight (before any clipping the optimizer does)
    weight_norm: float  # ||W|| after the step
    update_norm: float | None  # ||W_after - W_before|| across the optimizer step
    update_ratio: float | None  # update_norm / ||W_before||
    activation: str | None  # class name of the activation after the layer; None: its output
    act_mean: float | None  # mean of the activation (or layer output) over the batch
    act_std: float | None  # its standard deviation
    dead_fraction: float | None  # ReLU units exactly 0 for the whole batch (ReLU only)
    saturated_fraction: float | None  # sigmoid/tanh outputs in the flat tails (those only)


@dataclass(frozen=True)
class GradientRecord:
    """All layers' statistics at one training step, keyed by module path, input to output."""

    step: int
    layers: dict[str, LayerStats]


@dataclass(frozen=True)
class Finding:
    """One problem :func:`diagnose` found: what, where it starts, how bad, what usually helps."""

    kind: str  # "vanishing_gradients", "exploding_gradients", "exploding_updates", ...
    layer: str  # module path of the layer where it starts
    step: int  # step of the first record that shows it
    value: float  # the offending quantity (a norm, ratio or fraction; see message)
    message: str  # one line: what was seen
    advice: str  # one line: what usually helps

    def __str__(self) -> str:
        return (
            f"{self.kind} at step {self.step}, layer {self.layer}: {self.message} -> {self.advice}"
        )


def activation_stats(output: Tensor, module: nn.Module | None = None) -> dict[str, float | None]:
    """Mean, std, dead-ReLU and saturation fractions of one activation output ``(batch, units,
    *spatial)``.

    A ReLU unit (a feature, or a conv channel) is dead when its output is exactly 0 for every
    example of the batch (and every spatial position). Saturation counts elements: sigmoid
    outputs below 0.01 or above 0.99, tanh outputs with ``|a| > 0.99``.

    >>> from torch import nn
    >>> a = torch.tensor([[0.0, 1.0, 0.0], [0.0, 2.0, 3.0]])
    >>> round(activation_stats(a, nn.ReLU())["dead_fraction"], 4)
    0.3333
    """
    with torch.no_grad():
        a = output.detach().float()
        n = a.numel()
        if n == 0:
            return dict.fromkeys(("act_mean", "act_std", "dead_fraction", "saturated_fraction"))
        nan = torch.tensor(math.nan)
        dead = saturated = nan
        if isinstance(module, _RELU_LIKE) and a.ndim >= 2:
            per_unit = a.transpose(0, 1).reshape(a.shape[1], -1)  # (units, batch * spatial)
            dead = (per_unit == 0).all(dim=1).float().mean()
        elif isinstance(module, nn.Sigmoid):
            saturated = ((a < 0.01) | (a > 0.99)).float().mean()
        elif isinstance(module, nn.Tanh):
            saturated = (a.abs() > 0.99).float().mean()
        std = a.std() if n > 1 else nan
        values = torch.stack([a.mean(), std, dead, saturated]).tolist()  # one conversion
        keys = ("act_mean", "act_std", "dead_fraction", "saturated_fraction")
        return {k: None if math.isnan(v) else v for k, v in zip(keys, values, strict=True)}


# --------------------------------------------------------------------------------------------
# The monitor
# --------------------------------------------------------------------------------------------

_PAUSED: contextvars.ContextVar[bool] = contextvars.ContextVar("ravine_unmonitored", default=False)


@contextlib.contextmanager
def unmonitored() -> Iterator[None]:
    """Forward passes inside are not seen by any :class:`GradientMonitor`.

    Instruments that run the model on a probe batch of their own during training (curvature
    tracking, training signals) wrap their passes in this: the monitor's activation statistics
    are the training batch's, and its hooks, which read numbers off the outputs, must not run
    inside ``torch.func`` transforms, whose tensors have no storage to read.
    """
    token = _PAUSED.set(True)
    try:
        yield
    finally:
        _PAUSED.reset(token)


class GradientMonitor:
    """Record per-layer gradient health of ``model`` from any training loop.

    Layers are the model's ``nn.Linear`` and convolution modules, named by module path
    (``"hidden0.linear"``). Forward hooks compute each layer's activation statistics under
    ``no_grad`` on every forward pass: the statistics of the first activation module that
    follows the layer (before the next layer), else of the layer's own output. :meth:`record`
    then reads gradient and weight norms and the update across the optimizer step.

    The update ``W_after - W_before`` needs ``W_before``: with ``optimizer`` given (here or to
    :meth:`record`), a step pre-hook snapshots the weights just before each step, so the
    update is exactly that of the last step. Without one, ``W_before`` is the weights at the
    previous record (at construction for the first), which is the step's update when you record
    every step. The snapshot costs one copy of the weights; a record stores O(layers) floats,
    plus one small activation sample per layer for the most recent forward
    (:attr:`activation_samples`).

    Use as a context manager (or call :meth:`remove`) to take the hooks off the model.

    Args:
        model: any module with at least one Linear or convolution layer.
        optimizer: an optimizer that steps the model's weights (optional, see above).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.model = model
        self.layers: dict[str, nn.Module] = {
            name: m for name, m in model.named_modules() if isinstance(m, (nn.Linear, _ConvNd))
        }
        if not self.layers:
            raise ValueError("model has no Linear or convolution layer to monitor")
        self.history: list[GradientRecord] = []
        self.activation_samples: dict[str, Tensor] = {}  # layer -> (<= 4096,) latest values
        self._act: dict[str, dict[str, float | str | None]] = {}
        self._before: dict[str, Tensor] = self._snapshot()
        self._handles: list = []
        self._optimizers: set[int] = set()
        self._hook_modules()
        if optimizer is not None:
            self.watch(optimizer)

    # -- hooks --------------------------------------------------------------------------------

    def _hook_modules(self) -> None:
        owner = None  # the most recent layer in module order: activations report to it
        for name, module in self.model.named_modules():
            if name in self.layers:
                owner = name
                hook = self._make_hook(name, module, is_layer=True)
            elif owner is not None and isinstance(module, _ACTIVATIONS):
                hook = self._make_hook(owner, module, is_layer=False)
            else:
                continue
            self._handles.append(module.register_forward_hook(hook))

    def _make_hook(self, owner: str, module: nn.Module, *, is_layer: bool):
        def hook(mod: nn.Module, inputs, output) -> None:
            if not isinstance(output, Tensor) or _PAUSED.get():
                return
            if not is_layer and self._act.get(owner, {}).get("activation") is not None:
                return  # a second activation after the same layer: keep the first
            stats: dict[str, float | str | None] = dict(activation_stats(output, module))
            stats["activation"] = None if is_layer else type(module).__name__
            self._act[owner] = stats
            with torch.no_grad():
                flat = output.detach().reshape(-1)
                stride = max(1, flat.numel() // _SAMPLE_SIZE)
                self.activation_samples[owner] = flat[::stride][:_SAMPLE_SIZE].float().clone()

        return hook

    def watch(self, optimizer: torch.optim.Optimizer) -> None:
        """Snapshot the weights before each ``optimizer.step()`` (idempotent)."""
        if id(optimizer) in self._optimizers:
            return
        self._optimizers.add(id(optimizer))
        self._handles.append(
            optimizer.register_step_pre_hook(lambda opt, args, kwargs: self._take_snapshot())
        )

    def _snapshot(self) -> dict[str, Tensor]:
        with torch.no_grad():
            return {name: m.weight.detach().clone() for name, m in self.layers.items()}

    def _take_snapshot(self) -> None:
        self._before = self._snapshot()

    def remove(self) -> None:
        """Take every hook off the model and the optimizers; the history stays."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._optimizers.clear()

    def __enter__(self) -> GradientMonitor:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    # -- recording ----------------------------------------------------------------------------

    def record(self, step: int, optimizer: torch.optim.Optimizer | None = None) -> GradientRecord:
        """Append and return the statistics of every layer at ``step``.

        Call after ``backward()`` (gradient norms are read from ``.grad``), and after
        ``optimizer.step()`` to see that step's update. Passing ``optimizer`` watches it from
        now on (see the class docstring).
        """
        if optimizer is not None:
            self.watch(optimizer)
        names = list(self.layers)
        with torch.no_grad():
            rows = []  # per layer: (has_grad, grad, weight, has_before, update, before) norms
            for name in names:
                w = self.layers[name].weight.detach()
                g = self.layers[name].weight.grad
                before = self._before.get(name)
                ok = before is not None and before.shape == w.shape
                zero = torch.zeros((), device=w.device)  # (on the weights' device: one stack)
                rows.append(
                    torch.stack(
                        [
                            torch.tensor(float(g is not None), device=w.device),
                            zero if g is None else g.detach().float().norm(),
                            w.float().norm(),
                            torch.tensor(float(ok), device=w.device),
                            (w - before).float().norm() if ok else zero,
                            before.float().norm() if ok else zero,
                        ]
                    )
                )
            table = torch.stack(rows).tolist()  # one conversion: (layers, 6)
        layers: dict[str, LayerStats] = {}
        for name, (has_grad, grad, weight, has_before, update, w0) in zip(
            names, table, strict=True
        ):
            ratio = None
            if has_before:
                ratio = update / w0 if w0 > 0 else (math.inf if update > 0 else 0.0)
            act = self._act.get(name, {})
            layers[name] = LayerStats(
                grad_norm=grad if has_grad else None,
                weight_norm=weight,
                update_norm=update if has_before else None,
                update_ratio=ratio,
                activation=act.get("activation"),  # type: ignore[arg-type]
                act_mean=act.get("act_mean"),  # type: ignore[arg-type]
                act_std=act.get("act_std"),  # type: ignore[arg-type]
                dead_fraction=act.get("dead_fraction"),  # type: ignore[arg-type]
                saturated_fraction=act.get("saturated_fraction"),  # type: ignore[arg-type]
            )
        self._before = self._snapshot()  # fallback W_before for the next record
        self._act = {}
        rec = GradientRecord(step=int(step), layers=layers)
        self.history.append(rec)
        return rec


# --------------------------------------------------------------------------------------------
# Diagnosis
# --------------------------------------------------------------------------------------------


def _records(history: GradientMonitor | Iterable[GradientRecord]) -> list[GradientRecord]:
    return list(history.history if isinstance(history, GradientMonitor) else history)


def history_array(
    history: GradientMonitor | Iterable[GradientRecord], field: str = "grad_norm"
) -> tuple[list[str], list[int], list[list[float]]]:
    """``(layers, steps, values)`` with ``values[i][t]`` the ``field`` of layer ``i`` at record
    ``t`` (NaN where missing). Layers are in model order, input first."""
    records = _records(history)
    if field not in LayerStats.__dataclass_fields__:
        raise ValueError(
            f"unknown field {field!r}; valid: {', '.join(LayerStats.__dataclass_fields__)}"
        )
    layers: list[str] = []
    for rec in records:
        layers.extend(name for name in rec.layers if name not in layers)
    values = []
    for name in layers:
        row = []
        for rec in records:
            stat = rec.layers.get(name)
            v = None if stat is None else getattr(stat, field)
            row.append(math.nan if v is None else float(v))
        values.append(row)
    return layers, [r.step for r in records], values


def _majority(flags: Sequence[bool]) -> bool:
    return sum(flags) * 2 > len(flags)


def diagnose(history: GradientMonitor | Iterable[GradientRecord]) -> list[Finding]:
    """Flag vanishing/exploding gradients, exploding updates, dead ReLUs and saturation.

    A condition is flagged when it holds in more than half of the records (so one noisy batch
    does not raise an alarm, and a problem present from the start does), except non-finite
    gradients and exploding updates, which are flagged at once: one such step already
    destroys the weights. Each finding names the layer and step where it starts
    and says what usually helps. Thresholds (module constants, each documented):

    - ``vanishing_gradients``: some layer's gradient norm is below :data:`VANISHING_RATIO`
      times the last layer's, or below :data:`GRADIENT_FLOOR`. The layer reported is the
      deepest one past the threshold (where the decay crosses it, going backwards).
    - ``exploding_gradients``: non-finite gradients; a gradient norm above
      :data:`EXPLODING_NORM`; the first layer's norm :data:`EXPLODING_GROWTH` times the last
      layer's; or a layer's norm :data:`EXPLODING_GROWTH` times its value at the start (the
      median of its first three records).
    - ``exploding_updates``: an update-to-weight ratio above :data:`EXPLODING_UPDATE_RATIO`
      (or a non-finite update).
    - ``dead_relu`` / ``saturation``: a layer's dead or saturated fraction above
      :data:`DEAD_RELU_MAX` / :data:`SATURATION_MAX`.

    Returns the findings, at most one per kind, ordered by step.
    """
    records = _records(history)
    if not records:
        return []
    findings: list[Finding] = []

    def first(kind: str, hits: list[tuple[int, str, float, str] | None]) -> None:
        # hits: per record, (step, layer, value, message) when the condition holds there
        if not _majority([h is not None for h in hits]):
            return
        step, layer, value, message = next(h for h in hits if h is not None)
        findings.append(Finding(kind, layer, step, value, message, _ADVICE[kind]))

    # -- vanishing: backwards from the output, the first layer past the ratio or the floor
    hits: list = []
    for rec in records:
        named = [(n, s.grad_norm) for n, s in rec.layers.items() if s.grad_norm is not None]
        hit = None
        if len(named) >= 1 and all(math.isfinite(g) for _, g in named):
            last_name, last = named[-1]
            for name, g in reversed(named):
                if g < GRADIENT_FLOOR:
                    hit = (rec.step, name, g, f"gradient norm {g:.2e} < floor {GRADIENT_FLOOR:g}")
                    break
                if last > 0 and g < VANISHING_RATIO * last:
                    msg = (
                        f"gradient norm {g:.2e} is {g / last:.1e} x the last layer's "
                        f"({last_name}: {last:.2e}); first layer: {named[0][1]:.2e}"
                    )
                    hit = (rec.step, name, g, msg)
                    break
        hits.append(hit)
    first("vanishing_gradients", hits)

    # -- exploding gradients
    nonfinite = [
        (rec.step, n, s.grad_norm)
        for rec in records
        for n, s in rec.layers.items()
        if s.grad_norm is not None and not math.isfinite(s.grad_norm)
    ]
    # Growth over steps is measured from the median of the first three records, so one small
    # gradient at the start (a lucky batch) is not taken for the baseline.
    initial: dict[str, float] = {}
    for name in records[0].layers:
        early = [r.layers[name].grad_norm for r in records[:3] if name in r.layers]
        early = sorted(g for g in early if g is not None)
        if early:
            initial[name] = early[len(early) // 2]
    if nonfinite:
        step, layer, g = nonfinite[0]
        findings.append(
            Finding(
                "exploding_gradients",
                layer,
                step,
                g,
                f"non-finite gradient norm {g}",
                _ADVICE["exploding_gradients"],
            )
        )
    else:
        hits = []
        for rec in records:
            named = [(n, s.grad_norm) for n, s in rec.layers.items() if s.grad_norm is not None]
            hit = None
            for name, g in named:
                if g > EXPLODING_NORM:
                    hit = (rec.step, name, g, f"gradient norm {g:.2e} > {EXPLODING_NORM:g}")
                    break
                g0 = initial.get(name)
                if g0 and g > EXPLODING_GROWTH * g0:
                    msg = f"gradient norm {g:.2e} grew {g / g0:.1e} x since the first steps"
                    hit = (rec.step, name, g, msg)
                    break
            if hit is None and len(named) >= 2 and named[-1][1] > 0:
                (name, g), last = named[0], named[-1][1]
                if g > EXPLODING_GROWTH * last:
                    msg = f"gradient norm {g:.2e} is {g / last:.1e} x the last layer's"
                    hit = (rec.step, name, g, msg)
            hits.append(hit)
        first("exploding_gradients", hits)

    # -- exploding updates: one is enough, the weights it replaced do not come back
    for rec in records:
        bad = [
            (name, st.update_ratio)
            for name, st in rec.layers.items()
            if st.update_ratio is not None
            and not (st.update_ratio <= EXPLODING_UPDATE_RATIO)  # NaN counts
        ]
        if bad:
            name, r = bad[0]
            msg = f"update-to-weight ratio {r:.2e} > {EXPLODING_UPDATE_RATIO:g}"
            findings.append(
                Finding("exploding_updates", name, rec.step, r, msg, _ADVICE["exploding_updates"])
            )
            break

    # -- dead ReLUs and saturation
    for kind, field, limit, what in (
        ("dead_relu", "dead_fraction", DEAD_RELU_MAX, "ReLU units dead for the whole batch"),
        ("saturation", "saturated_fraction", SATURATION_MAX, "activations saturated"),
    ):
        hits = []
        for rec in records:
            hit = None
            for name, s in rec.layers.items():
                f = getattr(s, field)
                if f is not None and f > limit:
                    hit = (rec.step, name, f, f"{f:.0%} of {what} (> {limit:.0%})")
                    break
            hits.append(hit)
        first(kind, hits)

    findings.sort(key=lambda f: f.step)
    return findings


class GradientHealthCallback:
    """A training-loop callback that watches gradient health over a whole run.

    ``ravine.train.train(config, out, callbacks=[health])`` attaches a :class:`GradientMonitor`
    to the model and optimizer before the first update and records every ``every`` updates;
    ``health.findings()`` then says whether, where and when gradients vanished or exploded.
    """

    def __init__(self, every: int = 1) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive integer, got {every!r}")
        self.every = every
        self.monitor: GradientMonitor | None = None
        # (records converted, the last of them, their columns, activation names): see state_dict
        self._converted: tuple[int, Any, dict[str, Tensor] | None, list[str]] = (0, None, None, [])

    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.monitor = GradientMonitor(model, optimizer)

    def __call__(self, model: nn.Module, step: int) -> None:
        if self.monitor is not None and step % self.every == 0:
            self.monitor.record(step)

    def findings(self) -> list[Finding]:
        return diagnose(self.monitor) if self.monitor is not None and self.monitor.history else []

    def finding_records(self) -> list[dict[str, Any]]:
        """:meth:`findings` as the JSON records of ``gradient-health.json``."""
        return [
            {
                "kind": f.kind,
                "layer": f.layer,
                "step": f.step,
                "message": f.message,
                "advice": f.advice,
            }
            for f in self.findings()
        ]

    # The training loop checkpoints these, so a resumed run keeps the history from before.
    # Column-wise, as tensors, converted incrementally: a record per update over a long run is
    # hundreds of thousands of numbers, and a checkpoint every epoch must not redo them all.
    def state_dict(self) -> dict[str, Any]:
        history = self.monitor.history if self.monitor is not None else []
        layers = list(self.monitor.layers) if self.monitor is not None else []
        done, last, columns, names = self._converted
        if done > len(history) or (done and history[done - 1] is not last):
            done, columns, names = 0, None, []  # the history was replaced: start over
        chunk = _history_columns(history[done:], layers, names)
        if columns is not None:
            chunk = {k: torch.cat([columns[k], v]) for k, v in chunk.items()}
        self._converted = (len(history), history[-1] if history else None, chunk, names)
        return {"layers": layers, "activation_names": list(names), "columns": chunk}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.monitor is None:
            raise RuntimeError("attach() the callback to a model before loading its state")
        names, layers = state["activation_names"], state["layers"]
        columns = {k: v.tolist() for k, v in state["columns"].items()}
        present = columns["present"]
        history = []
        for i, step in enumerate(columns["step"]):
            stats = {}
            for j, layer in enumerate(layers):
                if not present[i][j]:
                    continue
                values = {
                    f: None if columns[f"{f}_none"][i][j] else columns[f][i][j]
                    for f in _NUMERIC_FIELDS
                }
                activation = columns["activation"][i][j]
                values["activation"] = names[activation] if activation >= 0 else None
                stats[layer] = LayerStats(**values)
            history.append(GradientRecord(step=step, layers=stats))
        self.monitor.history = history


_NUMERIC_FIELDS = tuple(f.name for f in fields(LayerStats) if f.name != "activation")


def _history_columns(
    records: Sequence[GradientRecord], layers: list[str], names: list[str]
) -> dict[str, Tensor]:
    """``records`` as tensors of shape ``(records, layers)`` (``step``: ``(records,)``).

    ``names`` is the activation vocabulary, extended in place; ``activation`` holds indices
    into it (-1: None). Each numeric field comes with a ``<field>_none`` mask, so that None
    and NaN (a diverged run) both survive.
    """
    shape = (len(records), len(layers))
    stats = [[r.layers.get(k) for k in layers] for r in records]
    columns = {
        "step": torch.tensor([r.step for r in records], dtype=torch.int64),
        "present": torch.tensor([[x is not None for x in row] for row in stats]).reshape(shape),
    }
    for field in _NUMERIC_FIELDS:
        values = [[getattr(x, field, None) for x in row] for row in stats]
        columns[field] = torch.tensor(
            [[0.0 if v is None else v for v in row] for row in values], dtype=torch.float64
        ).reshape(shape)
        columns[f"{field}_none"] = torch.tensor(
            [[v is None for v in row] for row in values], dtype=torch.bool
        ).reshape(shape)
    for row in stats:
        for x in row:
            if x is not None and x.activation is not None and x.activation not in names:
                names.append(x.activation)
    code = {name: i for i, name in enumerate(names)}
    columns["activation"] = torch.tensor(
        [[code.get(getattr(x, "activation", None), -1) for x in row] for row in stats],
        dtype=torch.int64,
    ).reshape(shape)
    return columns
