"""Milliseconds per optimizer step, and how far each is from the memory-bandwidth floor.

An optimizer step is elementwise: it must read the parameters, gradients and state once and
write the parameters and state once. The floor is those bytes divided by the copy bandwidth
measured in the same run (``dst.copy_(src)`` over the same total size). Every variant is timed
side by side in one process, with ``lr`` changed on every timed step (a compiled variant that
recompiled on it would show here), and the first step of compiled variants reported apart.

    python benchmarks/optim_step.py                      # CPU: 10M parameters in 200 tensors
    python benchmarks/optim_step.py --device cuda --params 200e6 --tensors 400
    python benchmarks/optim_step.py --optimizers adam,nadam --torch-compile
"""

from __future__ import annotations

import argparse
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


def time_steps(opt, steps: int, device: str) -> tuple[float, float]:
    """(first step seconds, fastest ms of the following steps), lr changed every step.

    The fastest, not the median: on a shared machine other processes only ever add time.
    """
    sync(device)
    start = time.perf_counter()
    opt.step()
    sync(device)
    first = time.perf_counter() - start
    opt.step()  # a second warm-up step (lazy state, autotuning)
    times = []
    for i in range(steps):
        for group in opt.param_groups:
            group["lr"] = 1e-3 * (1 + 0.01 * i)  # a schedule would do this
        sync(device)
        start = time.perf_counter()
        opt.step()
        sync(device)
        times.append(time.perf_counter() - start)
    return first, 1e3 * min(times)


def copy_bandwidth(total: int, device: str, repeats: int = 10) -> float:
    """Bytes per second of ``dst.copy_(src)`` (read + write) over ``total`` float32s."""
    src = torch.randn(total, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        dst.copy_(src)
        sync(device)
        times.append(time.perf_counter() - start)
    return 2 * 4 * total / min(times)


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
        out.append(("torch compile", lambda ps: _compiled_torch(torch_cls(ps, **hyper))))
    out += [
        ("ravine simple", lambda ps: ravine_cls(ps, **hyper, nonfinite="ignore")),
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
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    parser.add_argument("--torch-compile", action="store_true", help="also torch.compile(step)")
    args = parser.parse_args()
    total = int(args.params) // args.tensors * args.tensors
    bandwidth = copy_bandwidth(total, args.device)
    print(
        f"device {args.device}, {total / 1e6:.0f}M fp32 parameters in {args.tensors} tensors, "
        f"copy bandwidth {bandwidth / 1e9:.1f} GB/s, torch {torch.__version__}"
    )
    header = f"{'optimizer':<13} {'variant':<18} {'ms/step':>9} {'x floor':>8} {'first step':>11}"
    print(header)
    print("-" * len(header))
    for name in args.optimizers.split(","):
        *_, words = OPTIMIZERS[name]
        floor_ms = 1e3 * words * 4 * total / bandwidth
        for label, build in variants(name, args):
            params = make_params(total, args.tensors, args.device)
            opt = build(params)
            first, ms = time_steps(opt, args.steps, args.device)
            first_text = f"{first:.2f} s" if "compile" in label or label == "ravine flat" else ""
            print(f"{name:<13} {label:<18} {ms:9.2f} {ms / floor_ms:8.2f} {first_text:>11}")
            del opt, params
        print(f"{name:<13} {'(floor)':<18} {floor_ms:9.2f} {1.0:8.2f}")


if __name__ == "__main__":
    main()
