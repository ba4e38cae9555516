"""Probe and landscape reports of a run folder: what ``ravine probe`` and ``ravine landscape``
compute and write."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from ravine.folders import atomic_write_text, locked
from ravine.probe import (
    GradientMonitor,
    bottom_eigenvalues,
    condition_number,
    diagnose,
    hessian_operator,
    hessian_trace,
    interpolate,
    saddle_report,
    spectral_density,
    surface,
    top_eigenvalues,
    trajectory,
)
from ravine.train.build import loss_function
from ravine.train.config import ConfigError
from ravine.train.run import load_run, read_weights


def probe_run(run_dir: str | Path, *, examples: int = 1000, k: int = 5) -> dict[str, Any]:
    """Gradient health and curvature of a run's trained network on ``examples`` training
    examples; writes ``probe.json`` and two figures, returns the report.

    Holds the folder's lock throughout: a folder another process is writing is refused
    (:class:`ravine.folders.FolderInUseError`) before any work is done.
    """
    with locked(_existing_folder(run_dir)):
        return _probe_run(Path(run_dir), examples, k)


def _probe_run(run_dir: Path, examples: int, k: int) -> dict[str, Any]:
    from ravine.report.gradients import plot_gradient_profile

    run = load_run(run_dir)
    parameters = sum(p.numel() for p in run.model.parameters())
    if k > parameters:
        raise ConfigError(
            f"k must be <= the network's {parameters:,} parameters (one eigenvalue each), got {k}"
        )
    splits = run.splits
    x = run.inputs(splits.x_train[:examples])
    y = splits.y_train[:examples]
    loss_fn = loss_function(splits.dataset)
    model = run.model

    # Gradient health: a few mini-batches through the trained network, no updates.
    model.train()
    with GradientMonitor(model) as monitor:
        batch = run.config.batch_size
        for step, start in enumerate(range(0, len(x), batch)):
            model.zero_grad()
            loss_fn(model(x[start : start + batch]), y[start : start + batch]).backward()
            monitor.record(step)
            if step == 9:
                break
    model.eval()
    findings = diagnose(monitor)

    # Curvature on the same examples, in float64 so small eigenvalues mean something.
    op = hessian_operator(model, loss_fn, (x, y), dtype=torch.float64)
    top = top_eigenvalues(op, k=k)
    bottom = bottom_eigenvalues(op, k=k)
    trace = hessian_trace(op, num_probes=50)
    condition = condition_number(op)
    density = spectral_density(op, num_probes=5, num_steps=60)
    saddle = saddle_report(op, k=k)

    report = {
        "examples": len(x),
        "loss": saddle.loss,
        "grad_norm": saddle.grad_norm,
        "kind": saddle.kind,
        "top_eigenvalues": top.eigenvalues.tolist(),
        "bottom_eigenvalues": bottom.eigenvalues.tolist(),
        "trace": trace.trace,
        "trace_stderr": trace.stderr,
        "condition_positive": condition.condition_positive,
        "negative_ratio": condition.negative_ratio,
        "negative_mass": condition.negative_mass,
        "findings": [
            {
                "kind": f.kind,
                "layer": f.layer,
                "step": f.step,
                "message": f.message,
                "advice": f.advice,
            }
            for f in findings
        ],
        "hvps": op.num_hvps,
    }
    out = Path(run_dir)
    atomic_write_text(out / "probe.json", json.dumps(_finite(report), indent=2))
    plot_gradient_profile(
        monitor,
        out / "probe-gradient-flow.png",
        title=f"Gradient flow through the trained network ({saddle.kind.replace('_', ' ')})",
        note=f"{len(monitor.history)} mini-batches of {batch} training examples, no updates "
        "between them",
    )
    _plot_density(density, top, bottom, trace, condition, report, out / "probe-spectrum.png")

    lines = [
        f"point: {saddle.kind} (loss {saddle.loss:.4g}, gradient norm {saddle.grad_norm:.3g})",
        "top eigenvalues: " + ", ".join(f"{v:.4g}" for v in report["top_eigenvalues"]),
        "bottom eigenvalues: " + ", ".join(f"{v:.4g}" for v in report["bottom_eigenvalues"]),
        f"trace {trace.trace:.4g} ± {trace.stderr:.2g}; condition (positive part) "
        f"{condition.condition_positive:.3g}; negative eigenvalues {condition.negative_ratio:.1%}",
    ]
    lines += [f"{f.kind} at {f.layer}: {f.message}. {f.advice}" for f in findings] or [
        "gradients: no vanishing or exploding gradients, dead ReLUs or saturation flagged"
    ]
    report["lines"] = lines
    return report


def landscape_run(
    run_dir: str | Path, kind: str, *, resolution: int = 25, examples: int = 1000
) -> list[Path]:
    """Write ``landscape-<kind>.npz`` and ``.png`` for a run; returns the paths (the
    folder's lock held throughout, as :func:`probe_run`)."""
    with locked(_existing_folder(run_dir)):
        return _landscape_run(Path(run_dir), kind, resolution, examples)


def _landscape_run(run_dir: Path, kind: str, resolution: int, examples: int) -> list[Path]:
    from ravine.report.landscape import plot_interpolation, plot_surface, plot_trajectory

    run = load_run(run_dir)
    splits = run.splits
    data = {
        "train": (run.inputs(splits.x_train[:examples]), splits.y_train[:examples]),
        "test": (run.inputs(splits.x_test[:examples]), splits.y_test[:examples]),
    }
    loss_fn = loss_function(splits.dataset)
    out = Path(run_dir)
    npz, png = out / f"landscape-{kind}.npz", out / f"landscape-{kind}.png"
    if kind == "interp":
        curve = interpolate(run.model, run.initial_model(), run.model, loss_fn, data)
        curve.save(npz)
        plot_interpolation(curve, png, title="initialization -> trained", labels=("init", "end"))
    elif kind == "surface":
        grid = surface(run.model, loss_fn, data, resolution=resolution, generator=0)
        grid.save(npz)
        plot_surface(grid, png, title="filter-normalized random directions")
    else:
        files = run.epoch_weights()
        if len(files) < 3:
            raise ConfigError(
                f"{out} has {len(files)} saved epochs; a trajectory needs the weights of every "
                "epoch: train with --keep-weights"
            )
        checkpoints = [read_weights(f, run.model, "config.toml") for f in files]
        path = trajectory(run.model, checkpoints, loss_fn, data, resolution=resolution)
        path.save(npz)
        plot_trajectory(path, png, title="training trajectory on its top-2 PCA axes")
    return [npz, png]


def _existing_folder(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"run folder {path} does not exist")
    if not path.is_dir():
        raise ConfigError(f"{path} is not a folder")
    return path


def _plot_density(density, top, bottom, trace, condition, report, path: Path) -> Path:
    """The spectral density (SLQ) with the Lanczos extremes marked and the numbers that sum
    the spectrum up (trace, condition number, negative part) in the key."""
    import numpy as np
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    from ravine.report.axes import key_beside
    from ravine.report.plots import save_figure

    grid = density.grid.numpy()
    values = density.density.numpy()
    # The Gaussian smoothing of SLQ dips to 1e-12 between its nodes: clip at 1e-5 of the peak
    # (one eigenvalue of 10k parameters still shows) so the axis shows the spectrum's mass, not
    # the smoothing's troughs.
    peak = float(np.nanmax(values)) if np.isfinite(values).any() else 1.0
    floor = peak * DENSITY_FLOOR
    fig = Figure(figsize=(9.0, 4.2), layout="constrained")
    ax = fig.subplots()
    ax.fill_between(grid, floor, np.maximum(values, floor), color="tab:blue", alpha=0.15, lw=0)
    ax.plot(grid, np.maximum(values, floor), color="tab:blue", lw=1.4)
    for value in top.eigenvalues.tolist():
        ax.axvline(value, color="tab:red", alpha=0.6, lw=0.9)
    for value in bottom.eigenvalues.tolist():
        ax.axvline(value, color="tab:green", alpha=0.6, lw=0.9)
    ax.axvline(0.0, color="0.3", lw=0.8, ls=":")
    ax.set_yscale("log")
    ax.set_ylim(floor, peak * 3)
    ax.set_xlabel("Hessian eigenvalue")
    ax.set_ylabel("spectral density (SLQ)")
    ax.grid(alpha=0.3)
    lam_max = max(top.eigenvalues.tolist(), default=float("nan"))
    handles = [
        Line2D([], [], color="tab:blue", lw=1.4, label="density (5 probes x 60 Lanczos steps)"),
        Line2D([], [], color="tab:red", lw=0.9, label=f"top {len(top.eigenvalues)} (Lanczos)"),
        Line2D([], [], color="tab:green", lw=0.9, label=f"bottom {len(bottom.eigenvalues)}"),
    ]
    stats = [
        f"λmax {lam_max:.4g}, λmin {min(bottom.eigenvalues.tolist(), default=float('nan')):.4g}",
        f"trace {trace.trace:.4g} ± {trace.stderr:.2g} (Hutchinson)",
        f"condition number {condition.condition_positive:.3g} (positive part)",
        f"negative eigenvalues: {condition.negative_ratio:.1%} of the spectrum",
        f"gradient norm {report['grad_norm']:.3g}: {report['kind'].replace('_', ' ')}",
    ]
    key_beside(ax, handles, title="\n".join(stats), title_fontsize=8)
    fig.suptitle(f"Hessian spectrum of the trained network, {report['examples']} training examples")
    fig.supxlabel(
        "mass at 0: flat directions; mass below 0: negative curvature (saddle-like); "
        + (
            f"gradient descent is stable for lr below about 2 / λmax = {2 / lam_max:.3g}"
            if lam_max > 0
            else "no positive curvature found"
        ),
        fontsize=8,
        color="0.3",
    )
    return save_figure(fig, path)


# Density shown down to this fraction of its peak.
DENSITY_FLOOR = 1e-5


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value
