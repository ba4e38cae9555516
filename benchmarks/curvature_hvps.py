"""HVPs for the top-5 Hessian eigenvalues of a digits MLP: Lanczos vs deflated power iteration.

The baseline is PyHessian's method (Yao et al. 2020, ``hessian.eigenvalues``): power iteration
for one eigenvalue at a time, each new iterate Gram-Schmidt-deflated against the eigenvectors
already found, stopped when the Rayleigh quotient changes by < ``tol`` relative. Lanczos is
:func:`ravine.probe.curvature.top_eigenvalues` (full reorthogonalization, residual stopping
rule). Both are scored against a tight Lanczos reference (residual 1e-10 ||H||), in float64,
on the full digits training split; the model is the ``digits_mlp`` preset at initialization.

    python benchmarks/curvature_hvps.py                  # k = 5, tol = 1e-3, seeds 0,1,2
    python benchmarks/curvature_hvps.py --k 10 --seeds 0
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from ravine.probe.curvature import HessianOperator, lanczos, top_eigenvalues
from ravine.problems import PRESETS, build_model, load_dataset


def power_iteration(op: HessianOperator, k: int, tol: float, max_iter: int, seed: int):
    """PyHessian's deflated power iteration; returns (eigenvalues, HVPs used)."""
    gen = torch.Generator().manual_seed(seed)
    found: list[torch.Tensor] = []
    values: list[float] = []
    before = op.num_hvps

    def deflate(v: torch.Tensor) -> torch.Tensor:
        for u in found:
            v = v - (u @ v) * u
        return v / v.norm()

    for _ in range(k):
        v = deflate(torch.randn(op.dim, generator=gen, dtype=op.dtype))
        value = None
        for _ in range(max_iter):
            hv = op(v)
            new = float(v @ hv)
            v = deflate(hv)
            if value is not None and abs(value - new) / (abs(value) + 1e-6) < tol:
                value = new
                break
            value = new
        found.append(v)
        values.append(value)  # type: ignore[arg-type]
    return torch.tensor(values, dtype=op.dtype), op.num_hvps - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--max-iter", type=int, default=1000, help="power iterations per value")
    parser.add_argument("--seeds", default="0,1,2", help="model/start seeds")
    args = parser.parse_args()

    data = load_dataset("digits")
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        model = build_model(PRESETS["digits_mlp"], (64,), 10, generator=seed)
        op = HessianOperator.from_module(model, F.cross_entropy, data, dtype=torch.float64)
        ref = top_eigenvalues(op, args.k, tol=1e-10, max_hvps=2000, generator=1000 + seed)
        exact = ref.eigenvalues
        # Power iteration finds the largest |lambda|: check they are the largest lambda here.
        bottom = float(torch.linalg.eigvalsh(ref_t(op, seed)).min())
        assert abs(bottom) < float(exact[-1]), "top-|lambda| differs from top-lambda"

        lz = top_eigenvalues(op, args.k, tol=args.tol, generator=seed)
        pw, pw_hvps = power_iteration(op, args.k, args.tol, args.max_iter, seed)
        for name, values, hvps in (("lanczos", lz.eigenvalues, lz.num_hvps),
                                   ("power (PyHessian)", pw, pw_hvps)):  # fmt: skip
            err = float(((values - exact).abs() / exact.abs()).max())
            rows.append((seed, name, hvps, err))
        print(f"seed {seed}: dim {op.dim}, top-{args.k} = {[round(float(v), 5) for v in exact]}")

    print(f"\nHVPs for the top-{args.k} eigenvalues to {args.tol:g} relative (digits_mlp, float64)")
    print(f"{'seed':>4}  {'method':<18} {'HVPs':>6}  {'max rel err':>11}")
    for seed, name, hvps, err in rows:
        print(f"{seed:>4}  {name:<18} {hvps:>6}  {err:>11.2e}")
    for seed in sorted({r[0] for r in rows}):
        lz_h, pw_h = (r[2] for r in rows if r[0] == seed)
        print(f"seed {seed}: Lanczos / power = {lz_h / pw_h:.3f}")


def ref_t(op: HessianOperator, seed: int) -> torch.Tensor:
    """Ritz values of a 60-step Lanczos run: enough to locate lambda_min for the sanity check."""
    return lanczos(op, 60, generator=seed).t


if __name__ == "__main__":
    main()
