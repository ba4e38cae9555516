"""Training signals of a digits MLP, ravine side by side with Cockpit: what a recorded step
costs on top of a plain one, and how far the two libraries' numbers are apart.

Both watch the same run: an MLP 64-128-128-10 (``digits_mlp`` with two hidden layers, 26,122
parameters, float32) trained by SGD (lr 0.1) on one fixed batch of 128 digits training
examples, every step recorded. On a fixed batch, Cockpit's quantities (computed by BackPACK
in the training backward pass on the training batch) and ravine's (``TrainingSignals``, on
its probe batch, here the same 128 examples) describe the same points, so they can be
compared number by number:

- ``norm test``, ``inner-product test``, ``orthogonality test``: the radius each test needs at
  batch 128 (Cockpit's ``NormTest``/``InnerTest``/``OrthoTest``, the same definitions);
- ``alpha``: Cockpit fits a quadratic to the losses and directional derivatives at both ends
  of a step, weighted by their per-example variances; ravine takes the curvature from the two
  derivatives alone (exact for a quadratic), so the two agree only approximately;
- ``distance``, ``update size``: whole-network norms (Cockpit's per-parameter values combined);
- ``trace``: Cockpit's ``HessTrace`` is BackPACK's exact Hessian diagonal, ravine's a
  Hutchinson estimate (``--probes`` Rademacher vectors): its row gives the difference in units
  of ravine's standard error.

Timing rows: seconds per step of the plain loop, of ravine recording every step, and of
Cockpit recording every step, interleaved, best of ``--repeats``; ``overhead`` is a recorded
step's extra cost over a plain one, and the last column Cockpit's overhead over ravine's.

Cockpit is not one of ravine's dependencies, nor in an extra: its BackPACK asks for
torchvision, which pip would fetch to match the installed torch. Install it beside ravine
without dependencies (then its few small ones)::

    pip install --no-deps cockpit-for-pytorch backpack-for-pytorch einops unfoldNd json-tricks
    pip install pandas seaborn

Without it the script prints ravine's rows only.

    python benchmarks/signals.py                   # 20 steps, 3 repeats, 10 trace probes
    python benchmarks/signals.py --threads 1 --steps 40
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from ravine.probe.signals import TrainingSignals
from ravine.problems import PRESETS, build_model, load_dataset

try:
    import cockpit
    from backpack import extend
    from cockpit import quantities as cq
    from cockpit.utils import schedules
except ImportError:  # optional, see the module doc
    cockpit = None


def _model() -> nn.Module:
    data = load_dataset("digits")
    config = replace(PRESETS["digits_mlp"], depth=2, width=128)
    return build_model(config, data.input_shape, 10, generator=0)


def _batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    data = load_dataset("digits")
    return data.x_train[:n].float(), data.y_train[:n]


def plain(steps: int, x, y) -> tuple[float, nn.Module]:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    start = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return (time.perf_counter() - start) / steps, model


def ravine(steps: int, x, y, probes: int) -> tuple[float, list[dict]]:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    signals = TrainingSignals(
        F.cross_entropy, (x, y), every=1, batch_size=len(x), trace_probes=probes
    )
    signals.attach(model, opt)
    start = time.perf_counter()
    for step in range(1, steps + 1):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        signals(model, step)
    return (time.perf_counter() - start) / steps, signals.records


def run_cockpit(steps: int, x, y) -> tuple[float, dict]:
    model = extend(_model())
    loss_fn = extend(nn.CrossEntropyLoss(reduction="mean"))
    each = nn.CrossEntropyLoss(reduction="none")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    every = schedules.linear(1)
    tracked = [
        cq.NormTest(every), cq.InnerTest(every), cq.OrthoTest(every), cq.Alpha(every),
        cq.Distance(every), cq.UpdateSize(every), cq.HessTrace(every), cq.Loss(every),
    ]  # fmt: skip
    pit = cockpit.Cockpit(model.parameters(), quantities=tracked)
    start = time.perf_counter()
    # Cockpit's step k is the point before update k+1: it lines up with ravine's step k.
    for step in range(steps + 1):
        opt.zero_grad()
        out = model(x)
        loss = loss_fn(out, y)
        info = {"batch_size": len(x), "individual_losses": each(out, y), "loss": loss,
                "optimizer": opt}  # fmt: skip
        with pit(step, info=info):
            loss.backward(create_graph=pit.create_graph(step))
        if step < steps:
            opt.step()
    seconds = (time.perf_counter() - start) / (steps + 1)
    return seconds, pit.get_output()


def _norm(value) -> float:
    """Cockpit's per-parameter list of norms as one norm."""
    if isinstance(value, list | tuple):
        return math.sqrt(sum(float(v) ** 2 for v in value))
    return float(value)


def compare(records: list[dict], output: dict) -> list[tuple[str, str]]:
    """Per quantity, the largest relative difference over the steps both recorded.

    Cockpit's output is ``{step: {quantity: value}}``, its step ``k`` the point before update
    ``k + 1``; its ``Alpha`` and ``UpdateSize`` at ``k`` are about that coming update. A ravine
    record at step ``k`` is the point after update ``k``, its alpha and update size about
    update ``k``: those two pair with Cockpit's step ``k - 1``, the rest with step ``k``.
    """
    pairs = {  # label: (Cockpit's quantity, ravine's key, Cockpit's step offset)
        "norm test": ("NormTest", "norm_test", 0),
        "inner-product test": ("InnerTest", "inner_product_test", 0),
        "orthogonality test": ("OrthoTest", "orthogonality_test", 0),
        "probe-batch loss": ("Loss", "loss", 0),
        "distance from init": ("Distance", "distance", 0),
        "update size": ("UpdateSize", "update_size", -1),
        "alpha": ("Alpha", "alpha", -1),
    }
    rows = []
    for label, (theirs, ours, offset) in pairs.items():
        diffs = []
        for record in records:
            value = output.get(record["step"] + offset, {}).get(theirs)
            mine = record.get(ours)
            if mine is None or value is None:
                continue
            value = _norm(value)
            diffs.append(abs(value - mine) / max(abs(value), abs(mine), 1e-12))
        rows.append((label, f"{max(diffs):.1e}" if diffs else "n/a"))
    # The trace: exact (Cockpit) against a Hutchinson estimate, in its standard errors.
    errors = []
    for record in records:
        value = output.get(record["step"], {}).get("HessTrace")
        if value is not None and record.get("trace") is not None and record.get("trace_stderr"):
            errors.append(abs(sum(map(float, value)) - record["trace"]) / record["trace_stderr"])
    median = f"{statistics.median(errors):.1f} standard errors (median)" if errors else "n/a"
    rows.append(("trace (exact vs Hutchinson)", median))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--examples", type=int, default=128)
    parser.add_argument("--probes", type=int, default=10, help="ravine's Hutchinson probes")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x, y = _batch(args.examples)
    times: dict[str, list[float]] = {"plain": [], "ravine": [], "Cockpit": []}
    records, output = [], {}
    plain(2, x, y)  # warm-up: first calls allocate
    for _ in range(args.repeats):  # interleaved: load changes hit every row alike
        times["plain"].append(plain(args.steps, x, y)[0])
        seconds, records = ravine(args.steps, x, y, args.probes)
        times["ravine"].append(seconds)
        if cockpit is not None:
            seconds, output = run_cockpit(args.steps, x, y)
            times["Cockpit"].append(seconds)
    best = {k: min(v) for k, v in times.items() if v}
    base = best["plain"]
    print(
        f"digits MLP 64-128-128-10, batch {args.examples}, {args.steps} steps, every step "
        f"recorded, {torch.get_num_threads()} threads, best of {args.repeats}"
    )
    print()
    print("| loop | ms per step | overhead ms | overhead vs ravine |")
    print("|---|---|---|---|")
    ours = best["ravine"] - base
    for name, seconds in best.items():
        extra = seconds - base
        ratio = "" if name == "plain" else f"{extra / ours:.2f}x" if ours > 0 else "n/a"
        label = {"plain": "plain SGD step", "ravine": f"ravine TrainingSignals "
                 f"(trace: {args.probes} probes)", "Cockpit": "Cockpit 1.0.2 (BackPACK; exact "
                 "Hessian diagonal)"}[name]  # fmt: skip
        print(f"| {label} | {1e3 * seconds:.2f} | {1e3 * extra:.2f} | {ratio} |")
    if cockpit is None:
        print("\n(Cockpit not installed: see this script's docstring)")
        return 0
    print()
    print("| quantity | largest relative difference, ravine vs Cockpit |")
    print("|---|---|")
    for label, value in compare(records, output):
        print(f"| {label} | {value} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
