"""``ravine probe``'s work: the chosen instruments on a run's trained network, a progress line
per instrument, then probe.json and the figures. Torch is imported only inside
:func:`probe_with_progress`, so the option checks here run before it."""

from __future__ import annotations

from pathlib import Path

from ravine.cli.errors import UsageFailure

# The names of ravine.probe.instruments.INSTRUMENTS (a test keeps the two equal): repeated
# here so that --instruments is checked before torch is imported.
INSTRUMENTS = ("gradients", "noise", "spectrum", "trace", "density", "condition", "blocks")


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
    """:func:`ravine.report.probe.probe_run` with a rich progress bar over the instruments and
    a line as each ends (its seconds and Hessian-vector products); returns the summary lines."""
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from ravine.report.probe import probe_run

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

        report = probe_run(
            run_dir, examples=examples, k=k, instruments=instruments, progress=progress
        )
    return report["lines"]
