"""Gradient health, curvature tracking and training signals in a Lightning ``Trainer``.

::

    from ravine.integrations.lightning import RavineCallback

    callback = RavineCallback(curvature_every=50, loss_fn=torch.nn.functional.cross_entropy)
    lightning.Trainer(callbacks=[callback]).fit(module, train_loader)
    callback.findings()  # vanishing / exploding gradients, where and from which step

After every optimizer step (``trainer.global_step``) the callback records the same per-layer
statistics as ``ravine train --gradient-health`` (:class:`ravine.probe.gradients.
GradientHealthCallback`) and, every ``curvature_every`` steps, the extreme Hessian eigenvalues
on a fixed batch (:class:`ravine.probe.tracking.CurvatureTracker`; the first training batch
unless ``curvature_batch`` is given; the module's ``forward`` must map inputs to outputs), and,
every ``signals_every`` steps, the training signals of ``ravine train --signals-every``
(:class:`ravine.probe.signals.TrainingSignals`: gradient noise, batch-size tests, alpha,
Hessian trace, distance travelled; on the same kind of fixed batch, read at the training
batch's size). Each record goes to the Trainer's loggers (``ravine/grad_norm/<layer>``,
``ravine/update_ratio/<layer>``, ``ravine/curvature_top``, ``ravine/signals/alpha``, ...).
When fitting ends it writes the files ``ravine train`` writes, in ``out_dir`` (default: the
Trainer's ``log_dir``): ``gradient-health.json``, ``curvature.jsonl`` and ``signals.jsonl``,
``signals.json``, ``signals.png``. Its state travels in Lightning's checkpoints, so a resumed
fit keeps what was recorded before.

Requires the ``lightning`` extra: ``pip install "ravine[lightning]"``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor

try:
    import lightning.pytorch as pl
except ImportError as error:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        'ravine.integrations.lightning needs Lightning: pip install "ravine[lightning]"'
    ) from error

from ravine.folders import atomic_write_text
from ravine.probe.gradients import GradientHealthCallback
from ravine.probe.signals import TrainingSignals
from ravine.probe.tracking import CurvatureTracker

__all__ = ["RavineCallback"]

_CURVATURE_EXAMPLES = 256  # of the first batch, when no curvature batch is given


class RavineCallback(pl.Callback):
    """ravine's gradient health, curvature tracking and training signals as a Lightning
    callback.

    Args:
        gradient_health: record per-layer gradient health (every ``every`` steps).
        every: optimizer steps between gradient-health records.
        curvature_every: optimizer steps between curvature records (0: off).
        signals_every: optimizer steps between training-signal records (0: off).
        loss_fn: ``loss_fn(outputs, targets)``, a mean over the batch; needed for curvature
            and signals.
        curvature_batch: the fixed ``(x, y)`` batch curvature and signals are measured on
            (default: the first ``256`` examples of the first training batch).
        out_dir: where the JSON files go (default: the Trainer's ``log_dir``); ``None`` and
            no log_dir: nothing is written.
    """

    def __init__(
        self,
        *,
        gradient_health: bool = True,
        every: int = 1,
        curvature_every: int = 0,
        signals_every: int = 0,
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
        curvature_batch: tuple[Tensor, Tensor] | None = None,
        out_dir: str | Path | None = None,
    ) -> None:
        for name, value in (("curvature_every", curvature_every), ("signals_every", signals_every)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
            if value and loss_fn is None:
                raise ValueError(f"{name} > 0 needs loss_fn (outputs, targets) -> loss")
        self.health = GradientHealthCallback(every) if gradient_health else None
        self.curvature_every, self.loss_fn = curvature_every, loss_fn
        self.curvature_batch = curvature_batch
        self.tracker: CurvatureTracker | None = None
        self.signals_every = signals_every
        self.signals: TrainingSignals | None = None
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self._last_step = -1
        self._pending: dict[str, Any] | None = None  # state loaded before the fit attached us

    # -- the fit ------------------------------------------------------------------------------

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.health is not None and self.health.monitor is None:
            optimizer = trainer.optimizers[0] if trainer.optimizers else None
            self.health.attach(pl_module, optimizer)
        if self.curvature_every and self.tracker is None and self.curvature_batch is not None:
            self._start_tracker(self.curvature_batch, pl_module)
        if self._pending is not None:
            self._load(self._pending, pl_module)
            self._pending = None
        self._last_step = trainer.global_step

    def on_train_batch_start(self, trainer, pl_module, batch: Any, batch_idx: int) -> None:
        x, y = batch[0], batch[1]
        probe = self.curvature_batch or (x[:_CURVATURE_EXAMPLES], y[:_CURVATURE_EXAMPLES])
        if self.curvature_every and self.tracker is None:
            self._start_tracker(probe, pl_module)
        if self.signals_every and self.signals is None:  # before the first step: the init
            self._start_signals(probe, len(x), pl_module)
            self.signals.attach(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step  # optimizer steps so far (gradient accumulation: fewer)
        if step == self._last_step:
            return
        self._last_step = step
        metrics: dict[str, float] = {}
        if self.health is not None:
            before = len(self.health.monitor.history) if self.health.monitor else 0
            self.health(pl_module, step)
            if self.health.monitor is not None and len(self.health.monitor.history) > before:
                for layer, stats in self.health.monitor.history[-1].layers.items():
                    for key in ("grad_norm", "update_ratio"):
                        value = getattr(stats, key)
                        if value is not None:
                            metrics[f"ravine/{key}/{layer}"] = value
        if self.tracker is not None:
            before = len(self.tracker.records)
            self.tracker(pl_module, step)
            if len(self.tracker.records) > before:
                record = self.tracker.records[-1]
                metrics["ravine/curvature_top"] = record.top
                metrics["ravine/curvature_bottom"] = record.bottom
                metrics["ravine/curvature_grad_norm"] = record.grad_norm
        if self.signals is not None:
            before = len(self.signals.records)
            self.signals(pl_module, step)
            if len(self.signals.records) > before:
                for key, value in self.signals.records[-1].items():
                    if key not in ("step", "blocks") and isinstance(value, float):
                        metrics[f"ravine/signals/{key}"] = value
        if metrics:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        out = self.out_dir or (Path(trainer.log_dir) if trainer.log_dir else None)
        if out is None:
            return
        out.mkdir(parents=True, exist_ok=True)
        if self.health is not None:
            records = self.health.finding_records()
            atomic_write_text(out / "gradient-health.json", json.dumps(records, indent=2))
        if self.tracker is not None:
            lines = "".join(json.dumps(r) + "\n" for r in self.tracker.to_records())
            atomic_write_text(out / "curvature.jsonl", lines)
        if self.signals is not None:
            from ravine.report.signals import write_signals

            write_signals(self.signals, out)

    def findings(self):
        """Gradient problems found so far (:func:`ravine.probe.gradients.diagnose`), then the
        training signals' (:func:`ravine.probe.signals.diagnose_signals`)."""
        found = self.health.findings() if self.health is not None else []
        return found + (self.signals.findings() if self.signals is not None else [])

    def _start_tracker(self, batch: tuple[Tensor, Tensor], pl_module) -> None:
        x, y = (t.detach().to(pl_module.device) for t in batch)
        self.tracker = CurvatureTracker(self.loss_fn, (x, y), every=self.curvature_every)

    def _start_signals(self, batch: tuple[Tensor, Tensor], batch_size: int, pl_module) -> None:
        x, y = (t.detach().to(pl_module.device) for t in batch)
        self.signals = TrainingSignals(
            self.loss_fn, (x, y), every=self.signals_every, batch_size=batch_size
        )

    # -- Lightning checkpoints ------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        if self.health is not None and self.health.monitor is not None:
            state["health"] = self.health.state_dict()
        if self.tracker is not None:
            state["curvature"] = self.tracker.state_dict()
            state["curvature_batch"] = [t.cpu() for t in self.tracker.data]
        if self.signals is not None:
            state["signals"] = self.signals.state_dict()
            state["signals_batch"] = [t.cpu() for t in self.signals.data]
            state["signals_batch_size"] = self.signals.batch_size
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Lightning restores callbacks before on_fit_start, when there is no model yet.
        self._pending = state

    def _load(self, state: dict[str, Any], pl_module) -> None:
        if "health" in state and self.health is not None:
            self.health.load_state_dict(state["health"])
        if "curvature" in state and self.curvature_every:
            self._start_tracker(tuple(state["curvature_batch"]), pl_module)
            self.tracker.load_state_dict(state["curvature"])
        if "signals" in state and self.signals_every:
            batch = tuple(state["signals_batch"])
            self._start_signals(batch, state["signals_batch_size"], pl_module)
            self.signals.load_state_dict(state["signals"])
