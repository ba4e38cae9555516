"""Benchmark: a 51x51 filter-normalized loss surface, batched (ravine) vs a point-by-point loop.

The model is an MLP 64-128-128-10 on all 1,797 digits (train + test). The loop baseline does
what ``loss_landscapes.random_plane`` does: for every grid point, write ``theta + a d1 + b d2``
into the model's parameters and run one forward pass. ravine evaluates chunks of grid points
in one vectorized pass (``vmap`` over ``functional_call``), with and without folding the first
layer's products (``x W^T``, ``x D1^T``, ``x D2^T`` computed once).

Run: ``python benchmarks/landscape.py [--resolution 51] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from ravine.probe.landscape import random_directions, surface
from ravine.problems import PRESETS, build_model, load_dataset


@torch.no_grad()
def loop_surface(model, loss_fn, x, y, d1, d2, alphas, betas) -> np.ndarray:
    """The baseline: load each grid point's parameters into the model, one forward each."""
    model.eval()
    params = dict(model.named_parameters())
    base = {k: p.detach().clone() for k, p in params.items()}
    out = np.empty((len(betas), len(alphas)))
    for j, b in enumerate(betas):
        for i, a in enumerate(alphas):
            for k, p in params.items():
                p.copy_(base[k] + a * d1[k] + b * d2[k])
            out[j, i] = loss_fn(model(x), y).item()
    for k, p in params.items():
        p.copy_(base[k])
    return out


def best_of(fn, repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=51)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk-size", type=int, default=32)
    args = parser.parse_args()

    data = load_dataset("digits")
    x = torch.cat([data.x_train, data.x_test])
    y = torch.cat([data.y_train, data.y_test])
    model = build_model(replace(PRESETS["digits_mlp"], depth=2), (64,), 10, generator=0)
    d1, d2 = random_directions(model, generator=0)
    n = args.resolution
    axis = np.linspace(-1.0, 1.0, n)

    rows = []
    t_loop, ref = best_of(
        lambda: loop_surface(model, F.cross_entropy, x, y, d1, d2, axis, axis), args.repeats
    )
    rows.append(("loop (one model per point)", t_loop, 0.0))
    for label, fold in (
        ("ravine batched (vmap)", False),
        ("ravine batched + fold 1st layer", True),
    ):
        t, s = best_of(
            lambda fold=fold: surface(
                model,
                F.cross_entropy,
                (x, y),
                directions=(d1, d2),
                resolution=n,
                chunk_size=args.chunk_size,
                fold_first_linear=fold,
            ),
            args.repeats,
        )
        rows.append((label, t, float(np.abs(s.loss["data"] - ref).max())))

    print(
        f"{n}x{n} surface, MLP 64-128-128-10, {len(x)} examples, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, best of {args.repeats}"
    )
    print(f"{'method':<34}{'seconds':>9}{'vs loop':>9}{'max |dloss|':>13}")
    for label, t, err in rows:
        print(f"{label:<34}{t:>9.3f}{t_loop / t:>8.2f}x{err:>13.1e}")


if __name__ == "__main__":
    main()
