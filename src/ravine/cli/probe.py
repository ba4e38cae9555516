"""``ravine probe``'s work: the chosen instruments on a run's trained network, a progress line
per instrument, then probe.json and the figures. Torch is imported only inside
:func:`probe_with_progress`, so the option checks here run before it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ravine.cli.errors import UsageFailure

# The names of ravine.probe.instruments.INSTRUMENTS (a test keeps the two equal): repeated
# here so that --instruments is checked before torch is imported.
INSTRUMENTS = ("gradients", "spectrum", "trace", "density", "condition", "blocks")


def parse_instruments(text: str) -> tuple[str, ...]:
    """``"spectrum,trace"`` -> ``("spectrum", "trace")``; ``"all"`` -> every instrument."""
    if text.strip() == "all":
        return INSTRUMENTS
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in INSTRUMENTS]
    if not names or unknown:
        raise UsageFailure(
            f"--instruments must be 'all' or names from {', '.join(INSTRUMENTS)}; "
            f"got {', '.join(unknown) if unknown else repr(text)}"
        )
    return tuple(dict.fromkeys(names))


def probe_with_progress(
    run_dir: Path, *, examples: int, k: int, instruments: tuple[str, ...], console
) -> list[str]:
    """Run the instruments on ``run_dir``'s network (the folder locked throughout), write
    ``probe.json`` and the figures the instruments feed; returns the summary lines."""
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from ravine.folders import atomic_write_text, locked
    from ravine.probe.instruments import run_instruments
    from ravine.report.probe import _existing_folder, _finite, _plot_density
    from ravine.train import ConfigError
    from ravine.train.build import loss_function
    from ravine.train.run import load_run

    with locked(_existing_folder(run_dir)):
        run = load_run(run_dir)
        parameters = sum(p.numel() for p in run.model.parameters())
        if k > parameters and "spectrum" in instruments:
            raise ConfigError(
                f"k must be <= the network's {parameters:,} parameters (one eigenvalue each), "
                f"got {k}"
            )
        splits = run.splits
        x = run.inputs(splits.x_train[:examples])
        y = splits.y_train[:examples]
        columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                   TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn())  # fmt: skip
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task("probing", total=len(instruments))
            last = {"t": 0.0, "hvps": 0}

            def progress(name: str, event: str, seconds: float, hvps: int) -> None:
                if event == "start":
                    bar.update(task, description=f"probing: {name}")
                    last.update(t=seconds, hvps=hvps)
                    return
                bar.advance(task)
                used = f", {hvps - last['hvps']} HVPs" if hvps > last["hvps"] else ""
                console.print(f"  {name}: {seconds - last['t']:.1f} s{used}")

            results = run_instruments(
                run.model, loss_function(splits.dataset), x, y, instruments=instruments, k=k,
                batch_size=run.config.batch_size, progress=progress,
            )  # fmt: skip
        report = results["report"]
        out = Path(run_dir)
        atomic_write_text(out / "probe.json", json.dumps(_finite(report), indent=2))
        if results["monitor"] is not None:
            from ravine.report.gradients import plot_gradient_flow

            plot_gradient_flow(results["monitor"], out / "probe-gradient-flow.png",
                               title="Gradient flow")  # fmt: skip
        if results["density"] is not None:
            top, bottom = results["top"] or _NoEigen(), results["bottom"] or _NoEigen()
            _plot_density(results["density"], top, bottom, out / "probe-spectrum.png")
    return _lines(report)


class _NoEigen:
    """No eigenvalue marks on the density figure when the spectrum was not asked for."""

    def __init__(self) -> None:
        import torch

        self.eigenvalues = torch.zeros(0)


def _lines(report: dict[str, Any]) -> list[str]:
    lines = []
    if "kind" in report:
        lines += [
            f"point: {report['kind']} (loss {report['loss']:.4g}, gradient norm "
            f"{report['grad_norm']:.3g})",
            "top eigenvalues: " + ", ".join(f"{v:.4g}" for v in report["top_eigenvalues"]),
            "bottom eigenvalues: " + ", ".join(f"{v:.4g}" for v in report["bottom_eigenvalues"]),
        ]
    if "trace" in report:
        lines.append(f"trace {report['trace']:.4g} ± {report['trace_stderr']:.2g}")
    if "condition_positive" in report:
        lines.append(
            f"condition (positive part) {report['condition_positive']:.3g}; negative "
            f"eigenvalues {report['negative_ratio']:.1%}"
        )
    for key, block in report.get("blocks", {}).items():
        lines.append(
            f"layer {key} ({block['size']:,} parameters): lambda_max "
            f"{block['top_eigenvalue']:.4g}, trace {block['trace']:.4g}"
        )
    if "findings" in report:
        lines += [
            f"{f['kind']} at {f['layer']}: {f['message']}. {f['advice']}"
            for f in report["findings"]
        ] or ["gradients: no vanishing or exploding gradients, dead ReLUs or saturation flagged"]
    lines.append(f"{report['hvps']} Hessian-vector products")
    return lines
