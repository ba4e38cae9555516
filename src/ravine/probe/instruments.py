"""The instruments of ``ravine probe``, chosen by name and run one after another on a network,
each reporting when it starts and ends (for a progress display), results as one JSON-ready dict.

    results = run_instruments(model, loss_fn, x, y, instruments=("spectrum", "trace"), k=3)
    results["report"]["top_eigenvalues"]

=============  ===============================================================  ==============
name           what                                                             cost
=============  ===============================================================  ==============
gradients      gradient health over up to 10 mini-batches (:mod:`.gradients`)   10 backward
noise          gradient noise scale, SNR, batch-size tests (:mod:`.signals`)    per-example
spectrum       top-k and bottom-k eigenvalues and the saddle classification     Lanczos
trace          Hutchinson trace, 50 Rademacher probes in blocks                 50 HVPs
density        SLQ eigenvalue density, 5 probes x 60 steps in lockstep          300 HVPs
condition      condition number (positive part, negative mass), 100 steps       100 HVPs
blocks         top/bottom eigenvalue and trace of each layer's Hessian block    per layer
=============  ===============================================================  ==============

Curvature runs in float64 on the examples given, as one batch, so every product reuses one
gradient graph.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ravine.probe.curvature import (
    block_curvature,
    condition_number,
    hessian_operator,
    hessian_trace,
    saddle_report,
    spectral_density,
)
from ravine.probe.gradients import GradientMonitor, diagnose
from ravine.probe.signals import gradient_noise

__all__ = ["INSTRUMENTS", "run_instruments"]

INSTRUMENTS = ("gradients", "noise", "spectrum", "trace", "density", "condition", "blocks")

# (instrument name, "start" | "end", seconds so far, HVPs so far)
Progress = Callable[[str, str, float, int], None]


def run_instruments(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    *,
    instruments: Sequence[str] = INSTRUMENTS,
    k: int = 5,
    batch_size: int = 128,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run the named instruments on ``model`` at its current weights, in :data:`INSTRUMENTS`
    order; ``progress(name, "start" | "end", seconds, hvps)`` is called around each.
    ``batch_size`` is the training batch: the gradient-health mini-batches, and the batch the
    noise instrument reads its signal-to-noise ratio and tests at.

    Returns ``{"report": JSON-ready dict, "monitor": GradientMonitor | None, "density":
    SpectralDensity | None, "top": EigenResult | None, "bottom": EigenResult | None}``; the
    report has ``examples``, ``instruments``, ``hvps``, ``seconds`` (per instrument) and each
    instrument's numbers (the keys ``probe.json`` has always had, plus ``blocks``).
    """
    owner = "run_instruments"
    names = list(instruments)
    unknown = [n for n in names if n not in INSTRUMENTS]
    if not names or unknown:
        raise ValueError(
            f"{owner}: instruments must name at least one of {', '.join(INSTRUMENTS)}; "
            f"got {unknown or names!r}"
        )
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"{owner}: k must be a positive integer, got {k!r}")
    chosen = [n for n in INSTRUMENTS if n in names]
    report: dict[str, Any] = {"examples": len(x), "instruments": chosen, "seconds": {}}
    out: dict[str, Any] = {"report": report, "monitor": None, "density": None, "top": None,
                           "bottom": None}  # fmt: skip
    op = None

    def curvature():
        nonlocal op
        if op is None:  # one operator, one kept graph, for every curvature instrument
            model.eval()
            op = hessian_operator(model, loss_fn, (x, y), dtype=torch.float64)
        return op

    began = time.perf_counter()
    for name in chosen:
        hvps = op.num_hvps if op is not None else 0
        if progress is not None:
            progress(name, "start", time.perf_counter() - began, hvps)
        start = time.perf_counter()
        if name == "gradients":
            # Train mode, as in training (dropout, batch statistics), but the running
            # statistics must not move: the curvature instruments read the network as it was.
            buffers = {k: b.clone() for k, b in model.named_buffers()}
            model.train()
            with GradientMonitor(model) as monitor:
                for step, first in enumerate(range(0, len(x), batch_size)):
                    model.zero_grad()
                    xb, yb = x[first : first + batch_size], y[first : first + batch_size]
                    loss_fn(model(xb), yb).backward()
                    monitor.record(step)
                    if step == 9:
                        break
            model.eval()
            with torch.no_grad():
                for key, buffer in model.named_buffers():
                    buffer.copy_(buffers[key])
            model.zero_grad(set_to_none=True)
            findings = diagnose(monitor)
            out["monitor"] = monitor
            report["findings"] = [
                {
                    "kind": f.kind,
                    "layer": f.layer,
                    "step": f.step,
                    "message": f.message,
                    "advice": f.advice,
                }
                for f in findings
            ]
        elif name == "noise":
            # Eval mode, as the curvature instruments: a one-example batch has no batch
            # statistics, and dropout would add noise that is not the data's.
            model.eval()
            noise = gradient_noise(model, loss_fn, (x, y), batch_size=batch_size)
            report["noise"] = dict(vars(noise))
        elif name == "spectrum":
            saddle = saddle_report(curvature(), k=min(k, curvature().dim))
            out["top"], out["bottom"] = _Eigen(saddle.top), _Eigen(saddle.bottom)
            report.update(
                loss=saddle.loss, grad_norm=saddle.grad_norm, kind=saddle.kind,
                top_eigenvalues=saddle.top.tolist(), bottom_eigenvalues=saddle.bottom.tolist(),
            )  # fmt: skip
        elif name == "trace":
            trace = hessian_trace(curvature(), num_probes=50)
            report.update(trace=trace.trace, trace_stderr=trace.stderr)
        elif name == "density":
            out["density"] = spectral_density(curvature(), num_probes=5, num_steps=60)
        elif name == "condition":
            cond = condition_number(curvature())
            report.update(
                condition_positive=cond.condition_positive,
                negative_ratio=cond.negative_ratio,
                negative_mass=cond.negative_mass,
            )
        else:  # blocks
            # A block's lambda_max to 1e-4 of ||H_bb||: enough to rank the layers, in fewer HVPs.
            blocks = block_curvature(
                curvature(), by="layer", k=1, num_probes=20, tol=1e-4, bottom=True
            )
            report["blocks"] = {
                key: {
                    "size": b.size,
                    "top_eigenvalue": float(b.top.eigenvalues[0]),
                    "bottom_eigenvalue": float(b.bottom.eigenvalues[0]),
                    "trace": b.trace.trace,
                    "trace_stderr": b.trace.stderr,
                    "hvps": b.top.num_hvps + b.bottom.num_hvps + b.trace.num_hvps,
                }
                for key, b in blocks.items()
            }
        report["seconds"][name] = time.perf_counter() - start
        if progress is not None:
            hvps = op.num_hvps if op is not None else 0
            # (the blocks' products run on their own block operators, counted there)
            hvps += sum(b["hvps"] for b in report.get("blocks", {}).values())
            progress(name, "end", time.perf_counter() - began, hvps)
    report["hvps"] = op.num_hvps if op is not None else 0
    if "blocks" in report:
        report["hvps"] += sum(b["hvps"] for b in report["blocks"].values())
    return out


class _Eigen:
    """The ``eigenvalues`` attribute the spectrum figure reads, from a saddle report."""

    def __init__(self, eigenvalues: Tensor) -> None:
        self.eigenvalues = eigenvalues
