"""Benchmark: a 51x51 filter-normalized loss surface, ravine side by side with loss-landscapes.

The model is an MLP 64-128-128-10 (``digits_mlp`` with two hidden layers) after 30 full-batch
Adam steps (trained, so that its biases are not zero: loss-landscapes' filter normalization
divides by them), evaluated on all 1,797 digits (train + test) in float32. Rows, per thread
count, interleaved, best of ``--repeats``:

- loss-landscapes 3.0.6 ``random_plane(model, Loss(...), steps=51, normalization="filter")``,
  the real package: in-place steps along one direction, one forward pass per point;
- ravine on loss-landscapes' own points: the same directions (drawn with its code from the same
  seed) and the same 2,601 points through :func:`ravine.probe.landscape.evaluate_points`;
  ``max |dloss|`` is against loss-landscapes' values;
- ravine's :func:`surface` (its own filter-normalized directions, the default call), and the
  general ``vmap`` path (``fold_first_linear=False``), both scored against:
- a plain loop: copy each point's weights into the model, one forward pass.

loss-landscapes runs unpatched on torch 2.13. Its grid has a quirk the benchmark follows:
even columns step along the second direction before evaluating, odd ones after, so their
points are offset by one step (``j + 1 - steps/2`` vs ``j - steps/2``). Without the package
installed (``pip install -e ".[benchmarks]"``) its rows say so.

Run: ``python benchmarks/landscape.py [--resolution 51] [--repeats 3] [--threads 1,2]
[--markdown]`` (``--markdown``: also README's table)
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from ravine.probe.landscape import evaluate_points, random_directions, surface
from ravine.problems import PRESETS, build_model, load_dataset

try:
    import loss_landscapes
    import loss_landscapes.metrics
    from loss_landscapes.model_interface.model_parameters import orthogonal_to, rand_u_like
    from loss_landscapes.model_interface.model_wrapper import wrap_model
except ImportError:  # optional: the benchmarks extra
    loss_landscapes = None


@torch.no_grad()
def loop_surface(model, loss_fn, x, y, d1, d2, alphas, betas) -> np.ndarray:
    """The plain baseline: load each grid point's parameters into the model, one forward each."""
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


def loss_landscapes_plane(model, x, y, steps: int, seed: int) -> np.ndarray:
    torch.manual_seed(seed)
    metric = loss_landscapes.metrics.Loss(F.cross_entropy, x, y)
    return np.array(
        loss_landscapes.random_plane(
            model, metric, distance=1, steps=steps, normalization="filter", deepcopy_model=True
        )
    )


def loss_landscapes_points(model, steps: int, seed: int):
    """loss-landscapes' directions (its code, the same seed) and its points as coefficients."""
    torch.manual_seed(seed)
    start = wrap_model(copy.deepcopy(model)).get_module_parameters()
    one = rand_u_like(start)
    two = orthogonal_to(one)
    for d in (one, two):
        d.filter_normalize_(start)
        d.mul_(((start.model_norm() / 1) / steps) / d.model_norm())
    names = [n for n, _ in model.named_parameters()]
    d1 = dict(zip(names, one.parameters, strict=True))
    d2 = dict(zip(names, two.parameters, strict=True))
    half = steps / 2
    coeffs = [
        (i - half, (j + 1 - half) if i % 2 == 0 else (j - half))
        for i in range(steps)
        for j in range(steps)
    ]
    return d1, d2, torch.tensor(coeffs, dtype=torch.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=51)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", default="1,2", help="thread counts, comma-separated")
    parser.add_argument("--chunk-size", type=int, default=None, help="default: ravine's")
    parser.add_argument("--markdown", action="store_true", help="also README's table")
    args = parser.parse_args()

    data = load_dataset("digits")
    x = torch.cat([data.x_train, data.x_test])
    y = torch.cat([data.y_train, data.y_test])
    model = build_model(replace(PRESETS["digits_mlp"], depth=2), (64,), 10, generator=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    for _ in range(30):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    d1, d2 = random_directions(model, generator=0)
    n = args.resolution
    axis = np.linspace(-1.0, 1.0, n)
    chunk = {} if args.chunk_size is None else {"chunk_size": args.chunk_size}
    base = {k: p.detach() for k, p in model.named_parameters()}

    def ravine_surface(fold):
        s = surface(model, F.cross_entropy, (x, y), directions=(d1, d2), resolution=n,
                    fold_first_linear=fold, **chunk)  # fmt: skip
        return s.loss["data"]

    fns = {
        "plain loop (copy each point's weights)": lambda: loop_surface(
            model, F.cross_entropy, x, y, d1, d2, axis, axis
        ),
        "ravine surface() (default)": lambda: ravine_surface(None),
        "ravine, general vmap path": lambda: ravine_surface(False),
    }
    ll_dirs = None
    if loss_landscapes is not None:
        ll_dirs = loss_landscapes_points(model, n, seed=0)
        fns["loss-landscapes random_plane"] = lambda: loss_landscapes_plane(model, x, y, n, 0)

        def ravine_on_ll():
            a, b, coeffs = ll_dirs
            loss, _ = evaluate_points(model, F.cross_entropy, x, y, base, [a, b], coeffs, **chunk)
            return loss.double().numpy().reshape(n, n)

        fns["ravine, loss-landscapes' points"] = ravine_on_ll

    print(
        f"{n}x{n} surface, MLP 64-128-128-10, {len(x)} examples, torch {torch.__version__}, "
        f"best of {args.repeats}, interleaved"
    )
    table: dict[int, tuple[dict, dict, float]] = {}  # threads -> best, errors, baseline
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        best, out = dict.fromkeys(fns, float("inf")), {}
        for _ in range(args.repeats):
            for key, fn in fns.items():
                start = time.perf_counter()
                out[key] = fn()
                best[key] = min(best[key], time.perf_counter() - start)
        ref = {
            "plain loop (copy each point's weights)": "plain loop (copy each point's weights)",
            "ravine surface() (default)": "plain loop (copy each point's weights)",
            "ravine, general vmap path": "plain loop (copy each point's weights)",
            "loss-landscapes random_plane": "loss-landscapes random_plane",
            "ravine, loss-landscapes' points": "loss-landscapes random_plane",
        }
        base_t = best.get("loss-landscapes random_plane", best[next(iter(fns))])
        base_name = "loss-landscapes" if loss_landscapes is not None else "loop"
        print(f"\n{threads} thread(s)")
        print(f"{'method':<40}{'seconds':>9}{'vs ' + base_name:>20}{'max |dloss|':>13}  against")
        for key, t in best.items():
            err = float(np.abs(out[key] - out[ref[key]]).max())
            print(f"{key:<40}{t:>9.3f}{base_t / t:>19.2f}x{err:>13.1e}  {ref[key]}")
        if loss_landscapes is None:
            print(f"{'loss-landscapes random_plane':<40}{'not installed':>9}")
        errors = {key: float(np.abs(out[key] - out[ref[key]]).max()) for key in best}
        table[threads] = (best, errors, base_t)
    if args.markdown:
        markdown(table, ref, base_name)


MARKDOWN = {  # README's names of the rows, in README's order
    "loss-landscapes random_plane": (
        "loss-landscapes `random_plane` (in-place steps, one forward per point)"
    ),
    "ravine, loss-landscapes' points": "ravine, `evaluate_points` on loss-landscapes' own points",
    "ravine surface() (default)": "ravine `surface()` (default: first layer folded, point by point)",
    "ravine, general vmap path": "ravine, general `vmap` path",
    "plain loop (copy each point's weights)": "plain loop (copy each point's weights, one forward)",
}


def markdown(table: dict, ref: dict, base_name: str) -> None:
    """README's table: seconds and the ratio to the baseline per thread count."""
    head = "| method |"
    for threads in table:
        head += f" {threads} thread{'s' if threads > 1 else ''} s | vs {base_name} |"
    print(f"\n{head} max \\|dloss\\| |\n{'|---' * (2 + 2 * len(table))}|")
    for key, name in MARKDOWN.items():
        if key not in next(iter(table.values()))[0]:
            continue
        line = f"| {name} |"
        for best, _, base_t in table.values():
            line += f" {best[key]:.3f} | {base_t / best[key]:.2f}x |"
        err = max(errors[key] for _, errors, _ in table.values())
        if ref[key] == key:
            shown = "(reference)"
        elif ref[key].startswith("plain loop"):
            shown = f"{err:.1e} vs loop"
        else:
            shown = f"{err:.1e}"
        print(f"{line} {shown} |")


if __name__ == "__main__":
    main()
