"""Probe and landscape reports of a run folder: what ``ravine probe`` and ``ravine landscape``
compute and write."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ravine.folders import atomic_write_text, forget, locked, recorded
from ravine.probe import interpolate, surface, trajectory
from ravine.probe.instruments import INSTRUMENTS, Progress, run_instruments
from ravine.report.folder import probe_lines
from ravine.train.build import loss_function
from ravine.train.config import ConfigError
from ravine.train.run import load_run, read_weights


def probe_run(
    run_dir: str | Path,
    *,
    examples: int = 1000,
    k: int = 5,
    instruments: Sequence[str] = INSTRUMENTS,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """The chosen instruments (:mod:`ravine.probe.instruments`) on a run's trained network, on
    ``examples`` training examples; writes ``probe.json`` and the figures they feed
    (``probe-gradient-flow.png``, ``probe-spectrum.png``), returns the report with its summary
    ``lines``. ``progress(name, "start" | "end", seconds, hvps)`` around each instrument.

    Holds the folder's lock throughout: a folder another process is writing is refused
    (:class:`ravine.folders.FolderInUseError`) before any work is done.
    """
    with locked(_existing_folder(run_dir)):
        return _probe_run(Path(run_dir), examples, k, instruments, progress)


def _probe_run(run_dir: Path, examples, k, instruments, progress) -> dict[str, Any]:
    from ravine.report.gradients import plot_gradient_profile

    run = load_run(run_dir)
    parameters = sum(p.numel() for p in run.model.parameters())
    if k > parameters and "spectrum" in instruments:
        raise ConfigError(
            f"k must be <= the network's {parameters:,} parameters (one eigenvalue each), got {k}"
        )
    splits = run.splits
    x = run.inputs(splits.x_train[:examples])
    y = splits.y_train[:examples]
    batch = run.config.batch_size
    results = run_instruments(
        run.model,
        loss_function(splits.dataset),
        x,
        y,
        instruments=instruments,
        k=k,
        batch_size=batch,
        progress=progress,
    )
    report = results["report"]
    out = Path(run_dir)
    atomic_write_text(out / "probe.json", json.dumps(_finite(report), indent=2))
    monitor = results["monitor"]
    if monitor is not None:
        where = f" ({report['kind'].replace('_', ' ')})" if "kind" in report else ""
        plot_gradient_profile(
            monitor,
            out / "probe-gradient-flow.png",
            title=f"Gradient flow through the trained network{where}",
            note=f"{len(monitor.history)} mini-batches of {batch} training examples, no updates "
            "between them",
        )
    if results["density"] is not None:
        _plot_density(
            results["density"],
            results["top"],
            results["bottom"],
            report,
            out / "probe-spectrum.png",
        )
    # A figure of an earlier probe whose instrument did not run this time would sit beside a
    # probe.json that no longer holds its numbers: ravine's own, so it goes.
    for name, drawn in (("probe-gradient-flow", monitor), ("probe-spectrum", results["density"])):
        if drawn is None:
            for suffix in (".png", ".svg"):
                if recorded(out / f"{name}{suffix}"):
                    forget(out / f"{name}{suffix}")
    report["lines"] = summary_lines(report)
    return report


def summary_lines(report: Mapping[str, Any]) -> list[str]:
    """What ``ravine probe`` prints: a line per instrument that ran (the report's words), then
    the Hessian-vector products spent."""
    lines = probe_lines(dict(report), header=False)
    if report["hvps"]:
        lines.append(f"{report['hvps']} Hessian-vector products")
    return lines


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


def _plot_density(density, top, bottom, report, path: Path) -> Path:
    """The spectral density (SLQ) with the Lanczos extremes marked (``top``/``bottom``: None
    when the spectrum was not asked for) and the numbers of the report that sum the spectrum
    up (trace, condition number, negative part) in the key, those that were measured."""
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
    tops = top.eigenvalues.tolist() if top is not None else []
    bottoms = bottom.eigenvalues.tolist() if bottom is not None else []
    for value in tops:
        ax.axvline(value, color="tab:red", alpha=0.6, lw=0.9)
    for value in bottoms:
        ax.axvline(value, color="tab:green", alpha=0.6, lw=0.9)
    ax.axvline(0.0, color="0.3", lw=0.8, ls=":")
    ax.set_yscale("log")
    ax.set_ylim(floor, peak * 3)
    ax.set_xlabel("Hessian eigenvalue")
    ax.set_ylabel("spectral density (SLQ)")
    ax.grid(alpha=0.3)
    lam_max = max(tops, default=float("nan"))
    handles = [
        Line2D([], [], color="tab:blue", lw=1.4, label="density (5 probes x 60 Lanczos steps)")
    ]
    stats = []
    if tops:
        handles += [
            Line2D([], [], color="tab:red", lw=0.9, label=f"top {len(tops)} (Lanczos)"),
            Line2D([], [], color="tab:green", lw=0.9, label=f"bottom {len(bottoms)}"),
        ]
        stats.append(f"λmax {lam_max:.4g}, λmin {min(bottoms, default=float('nan')):.4g}")
    if "trace" in report:
        stats.append(f"trace {report['trace']:.4g} ± {report['trace_stderr']:.2g} (Hutchinson)")
    if "condition_positive" in report:
        stats += [
            f"condition number {report['condition_positive']:.3g} (positive part)",
            f"negative eigenvalues: {report['negative_ratio']:.1%} of the spectrum",
        ]
    if "kind" in report:
        stats.append(f"gradient norm {report['grad_norm']:.3g}: {report['kind'].replace('_', ' ')}")
    key_beside(ax, handles, title="\n".join(stats), title_fontsize=8)
    fig.suptitle(f"Hessian spectrum of the trained network, {report['examples']} training examples")
    fig.supxlabel(
        "mass at 0: flat directions; mass below 0: negative curvature (saddle-like); "
        + (
            "top eigenvalues not measured (--instruments spectrum)"
            if not tops
            else f"gradient descent is stable for lr below about 2 / λmax = {2 / lam_max:.3g}"
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
