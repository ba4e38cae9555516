"""Curvature during training: every k updates, the extreme Hessian eigenvalues on a fixed
batch, so saddle and flat-region episodes can be marked on the loss curve.

    tracker = CurvatureTracker(loss_fn, (x, y), every=50)
    ravine.train.train(config, out, callbacks=[tracker])  # or call tracker(model, step)
    tracker.episodes()  # [(first_step, last_step, "saddle"), ...]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ravine.probe.curvature import saddle_report
from ravine.probe.gradients import unmonitored


@dataclass(frozen=True)
class CurvatureRecord:
    """One look at the Hessian on the tracker's batch."""

    step: int
    loss: float
    grad_norm: float
    top: float  # largest eigenvalue
    bottom: float  # smallest eigenvalue (negative: a direction of descent through curvature)
    kind: str  # saddle_report's classification: minimum, saddle, flat, maximum, not_critical


class CurvatureTracker:
    """Record curvature every ``every`` updates on one fixed batch ``data = (x, y)``.

    The batch stays fixed so that changes come from the weights, not the sample. The model is
    evaluated in eval mode (batch-norm statistics and dropout must not move while the Hessian
    is probed) and put back in the mode it was in. Each record costs a few dozen
    Hessian-vector products (Lanczos for one eigenvalue at each end, ``max_hvps`` at most).

    A point counts as a saddle when the gradient is small (``grad_tol``) and the smallest
    eigenvalue is clearly negative, as a flat region when both ends of the spectrum are near
    zero (see :func:`ravine.probe.curvature.saddle_report` for the thresholds).
    """

    def __init__(
        self,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        data: tuple[Tensor, Tensor],
        *,
        every: int = 50,
        grad_tol: float = 1e-3,
        max_hvps: int = 60,
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive integer, got {every!r}")
        self.loss_fn, self.data, self.every = loss_fn, data, every
        self.grad_tol, self.max_hvps = grad_tol, max_hvps
        self.records: list[CurvatureRecord] = []

    def __call__(self, model: nn.Module, step: int) -> None:
        if step % self.every:
            return
        was_training = model.training
        model.eval()
        # The batch follows the model to its device (a run on a GPU, the batch from the host).
        device = next(model.parameters()).device
        data = tuple(t.to(device) if torch.is_tensor(t) else t for t in self.data)
        try:
            with unmonitored():  # (a gradient monitor's statistics are the training batch's)
                report = saddle_report(
                    model,
                    self.loss_fn,
                    data,
                    k=1,
                    grad_tol=self.grad_tol,
                    max_hvps=self.max_hvps,
                    dtype=torch.float64,
                )
        finally:
            model.train(was_training)
        self.records.append(
            CurvatureRecord(
                step=step,
                loss=float(report.loss),
                grad_norm=float(report.grad_norm),
                top=float(report.top[0]),
                bottom=float(report.bottom[0]),
                kind=str(report.kind),
            )
        )

    def episodes(self, kinds: tuple[str, ...] = ("saddle", "flat")) -> list[tuple[int, int, str]]:
        """Runs of consecutive records of one of ``kinds``: ``(first step, last step, kind)``."""
        spans: list[tuple[int, int, str]] = []
        for record in self.records:
            if record.kind not in kinds:
                continue
            if spans and spans[-1][2] == record.kind and spans[-1][1] == record.step - self.every:
                spans[-1] = (spans[-1][0], record.step, record.kind)
            else:
                spans.append((record.step, record.step, record.kind))
        return spans

    def to_records(self) -> list[dict[str, Any]]:
        return [asdict(r) for r in self.records]

    # The training loop checkpoints these, so a resumed run keeps what it recorded before.
    def state_dict(self) -> dict[str, Any]:
        return {"records": self.to_records()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.records = [CurvatureRecord(**r) for r in state["records"]]
