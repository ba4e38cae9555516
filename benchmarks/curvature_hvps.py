"""Hessian instruments of a digits MLP, ravine side by side with PyHessian: per-product time,
wall time, HVPs and error against an exact float64 reference.

The model is an MLP 64-128-128-10 (ReLU, He normal, ``digits_mlp`` with two hidden layers,
26,122 parameters) at initialization, the loss the mean cross-entropy over the digits training
split (1,437 examples) as one batch, everything in float64. Rows:

- one HVP: PyHessian's ``hessian_vector_product`` on the graph it keeps, against ravine's
  operator on its kept graph, one vector, and a block of 32 (one backward per column);
- top-1 / top-k eigenvalues: PyHessian's deflated power iteration (``hessian.eigenvalues``,
  its stopping rule: Rayleigh quotient changes < tol relative) against Lanczos
  (``top_eigenvalues``, residual < tol ||H||; ``ravine 1e-2``: Lanczos at tol 1e-2, which
  ends about as accurate as power iteration at 1e-3);
- trace: PyHessian's Hutchinson (``hessian.trace``, stops when the running mean changes < tol
  relative) against ``hessian_trace`` with as many probes as PyHessian used (the same
  estimator: equal accuracy in expectation), and ``ravine++``: ``method="hutch++"`` with the
  same number of HVPs (a third sketch the top of the spectrum, whose trace is then exact);
- density: PyHessian's SLQ (``hessian.density``, one Lanczos run per probe) against
  ``spectral_density`` (the probes' runs in lockstep, one block product per step), same probes
  and steps; scored by the quadrature's trace ``dim * mean_l sum_i w_i theta_i`` and its
  largest node against the exact trace and lambda_max.

The references are exact, not estimates: ``tr H`` in closed form (a ReLU MLP's Hessian
diagonal: within one layer the network is affine in the layer's parameters and ReLU has no
second derivative, so each diagonal block is ``sum_n a a^T (x) H_z``, with ``H_z`` propagated
back from the softmax's ``diag(p) - p p^T``; checked here against ravine's HVPs on sampled
coordinates), and the top eigenvalues from Lanczos run to residual 1e-10 ||H||.

PyHessian 0.1 calls ``torch.eig``, removed from torch 2.x, in ``density``: the benchmark
patches ``torch.eig`` with ``torch.linalg.eigh`` (T is symmetric) for that call, nothing else.
Without PyHessian installed (``pip install -e ".[benchmarks]"``) its columns say so.

    python benchmarks/curvature_hvps.py                 # k = 5, tol = 1e-3, seed 0, 3 repeats
    python benchmarks/curvature_hvps.py --threads 1 --seeds 0,1
    python benchmarks/curvature_hvps.py --repeats 2 --markdown   # also README's tables
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from ravine.probe.curvature import (
    HessianOperator,
    hessian_trace,
    spectral_density,
    top_eigenvalues,
)
from ravine.problems import PRESETS, build_model, load_dataset

try:
    from pyhessian import hessian as PyHessian
    from pyhessian.utils import hessian_vector_product as pyhessian_hvp
except ImportError:  # optional: the benchmarks extra
    PyHessian = None


@contextlib.contextmanager
def torch_eig_patch():
    """PyHessian's density calls torch.eig (gone since torch 2.0) on its symmetric T."""
    saved = getattr(torch, "eig", None)

    def eig(t: torch.Tensor, eigenvectors: bool = True):
        values, vectors = torch.linalg.eigh(t)
        return torch.stack([values, torch.zeros_like(values)], dim=1), vectors

    torch.eig = eig
    try:
        yield
    finally:
        if saved is None:
            del torch.eig
        else:
            torch.eig = saved


@torch.no_grad()
def relu_mlp_hessian_diagonal(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The exact diagonal of the mean cross-entropy's Hessian of a Flatten/Linear/ReLU stack."""
    leaves = [(n, m) for n, m in model.named_modules() if not list(m.children())]
    h, linears = x, []  # (name, module, input, relu mask of the output or None)
    for name, module in leaves:
        if isinstance(module, nn.Linear):
            linears.append([name, module, h, None])
            h = module(h)
        elif isinstance(module, nn.ReLU):
            linears[-1][3] = (h > 0).to(x.dtype)
            h = torch.relu(h)
        elif not isinstance(module, nn.Flatten):
            raise ValueError(f"not a Linear/ReLU MLP: {type(module).__name__}")
    p = torch.softmax(h, dim=1)
    hz = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]  # (N, out, out): softmax CE
    diag: dict[str, torch.Tensor] = {}
    for j in range(len(linears) - 1, -1, -1):
        name, layer, a, _ = linears[j]
        hdiag = torch.diagonal(hz, dim1=1, dim2=2)  # (N, out)
        diag[f"{name}.weight"] = hdiag.T @ a.square() / len(x)  # (out, in)
        diag[f"{name}.bias"] = hdiag.mean(0)
        if j:
            mask = linears[j - 1][3]  # relu' of the previous layer's output
            hz = layer.weight.T @ hz @ layer.weight
            if mask is not None:
                hz = hz * mask[:, :, None] * mask[:, None, :]
    return torch.cat([diag[k].reshape(-1) for k, _ in model.named_parameters()])


@contextlib.contextmanager
def counting_hvps():
    """Counts PyHessian's HVPs: its one-batch products all call ``hessian_vector_product``."""
    module = sys.modules["pyhessian.hessian"]  # the package's `hessian` is the class
    count = [0]
    original = module.hessian_vector_product

    def counted(*a, **kw):
        count[0] += 1
        return original(*a, **kw)

    module.hessian_vector_product = counted
    try:
        yield count
    finally:
        module.hessian_vector_product = original


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def best_of(fns: dict, repeats: int) -> tuple[dict, dict]:
    """Interleaved: each repeat runs every entry once, so load drifts hit them alike."""
    best, out = dict.fromkeys(fns, float("inf")), {}
    for _ in range(repeats):
        for key, fn in fns.items():
            t, out[key] = timed(fn)
            best[key] = min(best[key], t)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=5, help="top eigenvalues (the top-k row)")
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--seeds", default="0", help="model/probe seeds")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--examples", type=int, default=None, help="default: all 1,437")
    parser.add_argument("--steps", type=int, default=80, help="SLQ Lanczos steps")
    parser.add_argument("--probes", type=int, default=4, help="SLQ probes")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--markdown", action="store_true", help="also README's tables")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    data = load_dataset("digits")
    x, y = data.x_train[: args.examples].double(), data.y_train[: args.examples]
    rows: list[tuple] = []  # (seed, what, library, seconds, hvps, error)
    per_product: list[tuple] = []  # (seed, what, seconds)
    for seed in (int(s) for s in args.seeds.split(",")):
        bench_seed(seed, args, x, y, rows, per_product)
    report(args, rows, per_product)
    if args.markdown:
        markdown(args, rows, per_product)


def bench_seed(seed: int, args, x, y, rows: list, per_product: list) -> None:
    model = build_model(replace(PRESETS["digits_mlp"], depth=2), (64,), 10, generator=seed)
    model = model.double().eval()

    def operator(model=model):
        return HessianOperator.from_module(model, F.cross_entropy, (x, y))

    op = operator()
    ref = top_eigenvalues(op, args.k, tol=1e-10, max_hvps=3000, generator=1000 + seed)
    exact_top = ref.eigenvalues
    diag = relu_mlp_hessian_diagonal(model, x, y)
    picks = torch.randperm(op.dim, generator=torch.Generator().manual_seed(seed))[:8]
    basis = torch.zeros(op.dim, 8, dtype=torch.float64)
    basis[picks, torch.arange(8)] = 1.0
    check = float((op(basis)[picks, torch.arange(8)] - diag[picks]).abs().max())
    assert check < 1e-10 * float(diag.abs().max()), f"closed-form diagonal off by {check}"
    exact_trace = float(diag.sum())
    print(
        f"seed {seed}: dim {op.dim}, {len(x)} examples, tr H = {exact_trace:.6g}, "
        f"top-{args.k} = {[round(float(v), 5) for v in exact_top]}"
    )

    # --- one product: each side on its kept graph
    v = torch.randn(op.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    block = torch.randn(op.dim, 32, dtype=torch.float64)
    fns = {
        "ravine, one vector": lambda: op(v),
        "ravine, block of 32 (per vector)": lambda: op(block),
    }
    if PyHessian is not None:
        torch.manual_seed(seed)
        ph = PyHessian(model, F.cross_entropy, data=(x, y), cuda=False)
        vs = list(op.unflatten(v).values())
        fns["PyHessian, one vector"] = lambda: pyhessian_hvp(ph.gradsH, ph.params, vs)
    best, _ = best_of(fns, 5 * args.repeats)
    best["ravine, block of 32 (per vector)"] /= 32
    per_product += [(seed, k, t) for k, t in best.items()]
    if PyHessian is None:
        per_product.append((seed, "PyHessian", None))

    # --- estimators: wall time from a fresh operator (graph build included)
    def rel(a, b):
        return abs(a - b) / abs(b)

    def ravine_top(k, tol=args.tol):
        r = top_eigenvalues(operator(), k, tol=tol, generator=seed)
        err = float(((r.eigenvalues - exact_top[:k]).abs() / exact_top[:k].abs()).max())
        return r.num_hvps, err

    def pyhessian_top(k):
        torch.manual_seed(seed)
        model.zero_grad(set_to_none=True)
        h = PyHessian(model, F.cross_entropy, data=(x, y), cuda=False)
        with counting_hvps() as count:
            values, _ = h.eigenvalues(maxIter=1000, tol=args.tol, top_n=k)
        got = torch.tensor(sorted(values, reverse=True), dtype=torch.float64)
        return count[0], float(((got - exact_top[:k]).abs() / exact_top[:k].abs()).max())

    fns = {
        ("top-1", "ravine"): lambda: ravine_top(1),
        (f"top-{args.k}", "ravine"): lambda: ravine_top(args.k),
    }
    # Lanczos's residual rule at tol 1e-3 ends ~1e-6 accurate; at 1e-2 it ends about as
    # accurate as power iteration at 1e-3 (the eigenvalue error is ~ residual^2 / gap).
    fns[("top-1", "ravine 1e-2")] = lambda: ravine_top(1, 1e-2)
    if PyHessian is not None:
        fns[("top-1", "PyHessian")] = lambda: pyhessian_top(1)
        fns[(f"top-{args.k}", "PyHessian")] = lambda: pyhessian_top(args.k)
    best, out = best_of(fns, args.repeats)
    for (what, lib), t in best.items():
        rows.append((seed, what, lib, t, *out[(what, lib)]))

    # trace: PyHessian first, to know how many probes its rule took
    probes = 100
    fns = {}
    if PyHessian is not None:

        def pyhessian_trace():
            torch.manual_seed(seed)
            model.zero_grad(set_to_none=True)
            h = PyHessian(model, F.cross_entropy, data=(x, y), cuda=False)
            samples = h.trace(maxIter=100, tol=args.tol)
            return len(samples), rel(sum(samples) / len(samples), exact_trace)

        probes = pyhessian_trace()[0]
        fns[("trace", "PyHessian")] = pyhessian_trace

    def ravine_trace():
        est = hessian_trace(operator(), num_probes=probes, generator=seed)
        return est.num_hvps, rel(est.trace, exact_trace)

    fns[("trace", "ravine")] = ravine_trace

    def ravine_hutch_plus_plus():
        est = hessian_trace(operator(), num_probes=probes, generator=seed, method="hutch++")
        return est.num_hvps, rel(est.trace, exact_trace)

    fns[("trace", "ravine++")] = ravine_hutch_plus_plus

    def score_density(nodes, weights):
        nodes, weights = torch.as_tensor(nodes), torch.as_tensor(weights)
        trace = op.dim * float((weights * nodes).sum(1).mean())
        return max(rel(trace, exact_trace), rel(float(nodes.max()), float(exact_top[0])))

    def ravine_density():
        d = spectral_density(operator(), num_probes=args.probes, num_steps=args.steps,
                             generator=seed)  # fmt: skip
        return d.num_hvps, score_density(d.nodes, d.weights)

    fns[("density", "ravine")] = ravine_density
    if PyHessian is not None:

        def pyhessian_density():
            torch.manual_seed(seed)
            model.zero_grad(set_to_none=True)
            h = PyHessian(model, F.cross_entropy, data=(x, y), cuda=False)
            with counting_hvps() as count, torch_eig_patch():
                nodes, weights = h.density(iter=args.steps, n_v=args.probes)
            return count[0], score_density(nodes, weights)

        fns[("density", "PyHessian")] = pyhessian_density
    best, out = best_of(fns, args.repeats)
    for (what, lib), t in best.items():
        rows.append((seed, what, lib, t, *out[(what, lib)]))
    model.zero_grad(set_to_none=True)


def report(args, rows: list, per_product: list) -> None:
    threads = torch.get_num_threads()
    print(
        f"\nper product (MLP 64-128-128-10, float64, {threads} threads, best of {5 * args.repeats})"
    )
    print(f"{'seed':>4}  {'':<34}{'ms':>8}")
    for seed, what, t in per_product:
        shown = "not installed" if t is None else f"{1e3 * t:8.2f}"
        print(f"{seed:>4}  {what:<34}{shown:>8}")
    print(
        f"\nestimators, wall time from a fresh operator, tol {args.tol:g}, best of {args.repeats}"
    )
    print(f"{'seed':>4}  {'what':<8}{'library':<13}{'seconds':>9}{'HVPs':>6}{'rel err':>10}")
    for seed, what, lib, t, hvps, err in rows:
        print(f"{seed:>4}  {what:<8}{lib:<13}{t:>9.3f}{hvps:>6}{err:>10.1e}")
    if PyHessian is None:
        print("PyHessian: not installed (pip install pyhessian, or the benchmarks extra)")
    for seed in sorted({r[0] for r in rows}):
        for what in dict.fromkeys(r[1] for r in rows):
            got = {r[2]: r[3] for r in rows if r[0] == seed and r[1] == what}
            for lib in (k for k in got if k.startswith("ravine")):
                if "PyHessian" in got:
                    print(f"seed {seed} {what}: PyHessian / {lib} wall time = "
                          f"{got['PyHessian'] / got[lib]:.2f}x")  # fmt: skip


def markdown(args, rows: list, per_product: list) -> None:
    """README's two tables (a seed column only with several seeds)."""
    seeds = len({r[0] for r in rows}) > 1
    lead = "| seed " if seeds else ""
    shown = {
        "ravine, one vector": "ravine, one vector (kept graph)",
        "PyHessian, one vector": "PyHessian, one vector (kept graph)",
    }
    print(f"\n{lead}| per product | ms |\n{'|---' * (2 + seeds)}|")
    for seed, what, t in per_product:
        cell = "not installed" if t is None else f"{1e3 * t:.2f}"
        print(f"{f'| {seed} ' if seeds else ''}| {shown.get(what, what)} | {cell} |")
    tol = f"{args.tol:.0e}".replace("e-0", "e-")
    library = {
        ("top-1", "ravine"): f"ravine (Lanczos, tol {tol})",
        ("top-1", "ravine 1e-2"): "ravine (Lanczos, tol 1e-2)",
        ("top-1", "PyHessian"): f"PyHessian (power iteration, tol {tol})",
        (f"top-{args.k}", "ravine"): f"ravine (Lanczos, tol {tol})",
        (f"top-{args.k}", "PyHessian"): "PyHessian (deflated power iteration)",
        ("trace", "PyHessian"): "PyHessian (Hutchinson, its stopping rule)",
        ("trace", "ravine"): "ravine (Hutchinson, as many probes)",
        ("trace", "ravine++"): "ravine (Hutch++, as many HVPs)",
        (
            "density",
            "ravine",
        ): f"ravine (SLQ, {args.probes} probes x {args.steps} steps in lockstep)",
        ("density", "PyHessian"): "PyHessian (SLQ, same probes and steps)",
    }
    order = ["top-1", f"top-{args.k}", "trace", "density"]
    print(f"\n{lead}| estimator | library | seconds | PyHessian / this | HVPs | rel. error |")
    print("|---" * (6 + seeds) + "|")
    for seed, what, lib, t, hvps, err in sorted(
        rows, key=lambda r: (r[0], order.index(r[1]), r[2] != "ravine", r[2] == "PyHessian")
    ):
        theirs = [r[3] for r in rows if r[0] == seed and r[1] == what and r[2] == "PyHessian"]
        ratio = "1.00x" if lib == "PyHessian" else (f"{theirs[0] / t:.2f}x" if theirs else "-")
        print(f"{f'| {seed} ' if seeds else ''}| {what} | {library[(what, lib)]} | {t:.3f} | "
              f"{ratio} | {hvps} | {err:.1e} |")  # fmt: skip


if __name__ == "__main__":
    main()
