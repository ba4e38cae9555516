"""Milliseconds per optimizer step, and how far each is from the memory-bandwidth floor.

An optimizer step is elementwise: it must read the parameters, gradients and state once and
write the parameters and state once. Its floor is the time ``a += b`` takes to move as many bytes
(two words read, one written back), timed alongside. Every variant is timed side by side in
one process, the variants taking turns step by step, with ``lr`` changed on every timed step
(a compiled variant that recompiled on it would show here); the first step of compiled
variants is reported apart. ravine runs with ``nonfinite="ignore"``, as torch.optim does,
except in the "NaN?" rows: ravine's default, which refuses a step with NaN/Inf gradients.

"ravine default" is what a user who only changes the import gets (``engine="auto"``: the
flat engine, compiled from ``COMPILE_MIN_NUMEL`` parameters on); "torch default" is what
torch.optim picks without flags (the for-loop on CPU, foreach on GPU). The "new .grad" row
gives every step fresh gradient tensors, as ``zero_grad()`` (``set_to_none=True``) and a
backward pass do: the flat engine then copies them into its storage first.

    python benchmarks/optim_step.py                      # CPU: 10M parameters in 200 tensors
    python benchmarks/optim_step.py --device cuda --params 200e6 --tensors 400
    python benchmarks/optim_step.py --optimizers adam,nadam --torch-compile
    python benchmarks/optim_step.py --markdown           # the summary as README's table
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import ravine.optim as ro

# name -> (ravine class, torch class, hyperparameters, bytes moved per element / dtype size)
OPTIMIZERS = {
    "sgd": (ro.SGD, torch.optim.SGD, {"lr": 1e-3}, 3),
    "sgd-momentum": (ro.SGD, torch.optim.SGD, {"lr": 1e-3, "momentum": 0.9}, 5),
    "adagrad": (ro.Adagrad, torch.optim.Adagrad, {"lr": 1e-2}, 5),
    "rmsprop": (ro.RMSprop, torch.optim.RMSprop, {"lr": 1e-3}, 5),
    "adam": (ro.Adam, torch.optim.Adam, {"lr": 1e-3}, 7),
    "adamw": (ro.AdamW, torch.optim.AdamW, {"lr": 1e-3}, 7),
    "nadam": (ro.NAdam, torch.optim.NAdam, {"lr": 1e-3}, 7),
}

FLOOR = "(floor: a += b)"


def make_params(total: int, tensors: int, device: str) -> list[torch.nn.Parameter]:
    size = total // tensors
    params = []
    for _ in range(tensors):
        p = torch.nn.Parameter(torch.randn(size, device=device))
        p.grad = torch.randn(size, device=device) * 1e-2
        params.append(p)
    return params


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class FreshGradients:
    """An optimizer whose parameters get new gradient tensors before every step, outside the
    timed region (two sets, taking turns), as after ``zero_grad()`` and a backward pass."""

    def __init__(self, optimizer) -> None:
        self.optimizer = optimizer
        self.param_groups = optimizer.param_groups
        params = [p for group in self.param_groups for p in group["params"]]
        self.sets = [[p.grad.clone() for p in params] for _ in range(2)]
        self.params, self.turn = params, 0

    def prepare(self) -> None:
        self.turn ^= 1
        for p, grad in zip(self.params, self.sets[self.turn], strict=True):
            p.grad = grad

    def step(self) -> None:
        self.optimizer.step()


def time_interleaved(optimizers: dict, steps: int, device: str) -> dict[str, tuple]:
    """name -> (first step seconds, fastest ms, median ms), ``lr`` changed on every step.

    The variants take turns, one step each per round (in a rotating order), so that a burst of
    load on a shared machine hits all of them alike and the ratios between them hold even when
    the absolute times move. Each step starts with its data out of cache, as in training,
    where the backward pass between two steps has evicted it.
    """
    first = {}
    for name, opt in optimizers.items():
        _prepare(opt)
        sync(device)
        start = time.perf_counter()
        opt.step()
        sync(device)
        first[name] = time.perf_counter() - start
        _prepare(opt)
        opt.step()  # a second warm-up step (lazy state, autotuning)
    times: dict[str, list[float]] = {name: [] for name in optimizers}
    names = list(optimizers)
    for i in range(steps):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            opt = optimizers[name]
            for group in opt.param_groups:
                lr = 1e-3 * (1 + 0.01 * i)  # a schedule would do this
                if isinstance(group["lr"], torch.Tensor):
                    group["lr"].fill_(lr)  # (a compiled torch step reads lr as a tensor)
                else:
                    group["lr"] = lr
            _prepare(opt)
            sync(device)
            start = time.perf_counter()
            opt.step()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {
        name: (first[name], 1e3 * min(ts), 1e3 * statistics.median(ts))
        for name, ts in times.items()
    }


def _prepare(opt) -> None:
    if isinstance(opt, FreshGradients):
        opt.prepare()


class Floor:
    """The floor as one more contender: ``a += b`` over as many bytes as the step moves.

    Read two words, write one back where it was read, like a step, which writes only buffers
    it has read. (A ``copy_`` into a buffer it never read would also pay for the CPU reading
    the destination into cache before writing it, and overstate the floor.)
    """

    def __init__(self, words: int, total: int, device: str) -> None:
        elements = words * total // 3
        self.a = torch.randn(elements, device=device)
        self.b = torch.randn(elements, device=device)
        self.param_groups: list = []

    def step(self) -> None:
        self.a.add_(self.b)


def variants(name: str, args) -> list[tuple[str, callable]]:
    ravine_cls, torch_cls, hyper, _ = OPTIMIZERS[name]
    fused_ok = name in ("sgd", "sgd-momentum", "adagrad", "adam", "adamw")
    out = [
        ("torch for-loop", lambda ps: torch_cls(ps, **hyper, foreach=False)),
        ("torch foreach", lambda ps: torch_cls(ps, **hyper, foreach=True)),
    ]
    if fused_ok and not (name == "adagrad" and args.device != "cpu"):
        out.append(("torch fused", lambda ps: torch_cls(ps, **hyper, fused=True)))
    if args.torch_compile:
        # lr as a tensor, as torch advises for compiled steps: a float lr recompiles whenever
        # it changes, and after dynamo's limit the step runs eagerly.
        tensor_lr = {**hyper, "lr": torch.tensor(hyper["lr"])}
        out.append(("torch compile", lambda ps: _compiled_torch(torch_cls(ps, **tensor_lr))))
    out += [
        ("ravine default", lambda ps: ravine_cls(ps, **hyper, nonfinite="ignore")),
        # ravine's default refuses a step with NaN/Inf gradients: one more read of them.
        ("ravine default, NaN?", lambda ps: ravine_cls(ps, **hyper)),
        ("ravine default, new .grad", lambda ps: FreshGradients(ravine_cls(ps, **hyper))),
        ("ravine simple", lambda ps: ravine_cls(ps, **hyper, nonfinite="ignore", engine="simple")),
        (
            "ravine flat eager",
            lambda ps: ravine_cls(ps, **hyper, nonfinite="ignore", engine="flat", compile=False),
        ),
        ("ravine flat", lambda ps: ravine_cls(ps, **hyper, nonfinite="ignore", engine="flat")),
    ]
    return out


def _compiled_torch(opt):
    step = torch.compile(opt.step)
    opt.step = step  # type: ignore[method-assign]
    return opt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--params", type=float, default=10e6, help="total parameters")
    parser.add_argument("--tensors", type=int, default=200)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    parser.add_argument("--torch-compile", action="store_true", help="also torch.compile(step)")
    parser.add_argument("--markdown", action="store_true", help="the summary as a markdown table")
    args = parser.parse_args()
    unknown = sorted(set(args.optimizers.split(",")) - set(OPTIMIZERS))
    if unknown:
        parser.error(f"unknown optimizer(s) {', '.join(unknown)}; valid: {', '.join(OPTIMIZERS)}")
    total = int(args.params) // args.tensors * args.tensors
    print(
        f"device {args.device}, {total / 1e6:.0f}M fp32 parameters in {args.tensors} tensors, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.steps} "
        "interleaved steps per variant"
    )
    header = (
        f"{'optimizer':<13} {'variant':<26} {'fastest ms':>10} {'median ms':>10} "
        f"{'x floor':>8} {'first step':>11}"
    )
    print(header)
    print("-" * len(header))
    rows = []
    for name in args.optimizers.split(","):
        *_, words = OPTIMIZERS[name]
        contenders = {FLOOR: Floor(words, total, args.device)}
        for label, build in variants(name, args):
            contenders[label] = build(make_params(total, args.tensors, args.device))
        results = time_interleaved(contenders, args.steps, args.device)
        floor_ms = results.pop(FLOOR)[1]
        for label, (first, fastest, median) in results.items():
            first_text = f"{first:.2f} s" if label.startswith(("ravine", "torch compile")) else ""
            print(
                f"{name:<13} {label:<26} {fastest:10.2f} {median:10.2f} "
                f"{fastest / floor_ms:8.2f} {first_text:>11}"
            )
        print(f"{name:<13} {FLOOR:<26} {floor_ms:10.2f}")
        rows.append(_summary_row(name, results, floor_ms, args.device))
        del contenders
    print()
    print("ravine against torch (fastest step of each, measured side by side; x: how many times")
    print("faster than the torch column named, above 1 is faster):")
    _print_summary(rows, args.markdown)


def _summary_row(name: str, results: dict, floor_ms: float, device: str) -> dict:
    fastest = {label: r[1] for label, r in results.items()}
    torch_best = min((ms, label) for label, ms in fastest.items() if label.startswith("torch"))
    comparable = ("ravine default", "ravine simple", "ravine flat eager", "ravine flat")
    ravine_best = min((fastest[label], label) for label in comparable if label in fastest)
    return {
        "name": name,
        "torch default": fastest["torch foreach" if device != "cpu" else "torch for-loop"],
        "torch best": torch_best,
        "ravine default": fastest["ravine default"],
        "NaN?": fastest["ravine default, NaN?"],
        "new .grad": fastest["ravine default, new .grad"],
        "ravine best": ravine_best,
        "floor": floor_ms,
    }


def _print_summary(rows: list[dict], markdown: bool) -> None:
    columns = [
        "optimizer",
        "torch default",
        "torch best",
        "ravine default",
        "x default",
        "+ NaN check",
        "x default",
        "+ new .grad",
        "x default",
        "ravine fastest",
        "x best",
        "x floor",
    ]
    lines = []
    for r in rows:
        default, (best, best_label) = r["torch default"], r["torch best"]
        fastest, fastest_label = r["ravine best"]
        lines.append(
            [
                r["name"],
                f"{default:.2f}",
                f"{best:.2f} ({best_label.removeprefix('torch ')})",
                f"{r['ravine default']:.2f}",
                f"{default / r['ravine default']:.2f}x",
                f"{r['NaN?']:.2f}",
                f"{default / r['NaN?']:.2f}x",
                f"{r['new .grad']:.2f}",
                f"{default / r['new .grad']:.2f}x",
                f"{fastest:.2f} ({fastest_label.removeprefix('ravine ')})",
                f"{best / fastest:.2f}x",
                f"{r['ravine default'] / r['floor']:.2f}",
            ]
        )
    if markdown:
        print("| " + " | ".join(columns) + " |")
        print("|" + "---|" * len(columns))
        for line in lines:
            print("| " + " | ".join(line) + " |")
        return
    widths = [max(len(c), *(len(line[i]) for line in lines)) for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    for line in lines:
        print("  ".join(v.rjust(w) for v, w in zip(line, widths, strict=True)))


if __name__ == "__main__":
    main()
