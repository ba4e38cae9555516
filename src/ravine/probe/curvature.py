"""Curvature of a loss: Hessian-vector products, extreme eigenvalues, trace, density, saddles.

Everything here works matrix-free on a :class:`HessianOperator`, the map ``v -> H v`` for the
Hessian ``H`` of a loss with respect to a flat vector of parameters. The operator is built from
an ``nn.Module`` + loss function + data (the loss summed or averaged over mini-batches), or
from a plain function ``f(x)`` of a tensor (the analytic problems of :mod:`ravine.problems`).
Curvature cost is counted in HVPs (``op.num_hvps``): the first product builds the gradient and
its graph (a forward and a backward pass), each later one is one more backward pass over it
(one batch; see ``reuse_graph``), and every estimator returns how many it used.

>>> import torch
>>> from ravine.probe.curvature import HessianOperator, top_eigenvalues
>>> op = HessianOperator.from_function(lambda x: x[0] ** 2 - x[1] ** 2, torch.zeros(2))
>>> res = top_eigenvalues(op, 2)
>>> [round(float(v), 6) for v in res.eigenvalues], res.num_hvps
([2.0, -2.0], 2)

Estimators:

=====================  ===============================================  ======================
function               what                                             method
=====================  ===============================================  ======================
top_eigenvalues        k largest eigenpairs                             (block) Lanczos, full
bottom_eigenvalues     k smallest (most negative) eigenpairs            reorthogonalization
hessian_trace          ``tr H`` with its standard error                 Hutchinson (Rademacher)
hessian_diagonal       ``diag H`` with per-entry standard errors        Hutchinson (Rademacher)
block_curvature        top eigenvalues and trace of each parameter's    Lanczos, Hutchinson on
                       (or layer's) Hessian block                       ``block_operator``
spectral_density       smoothed eigenvalue density                      stochastic Lanczos
                                                                        quadrature (SLQ)
condition_number       ``lambda_max / lambda_min``, positive part,      Lanczos
                       negative mass
saddle_report          gradient norm, extreme curvature, escape         Lanczos
                       direction, minimum / saddle / flat
=====================  ===============================================  ======================
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vmap

__all__ = [
    "BlockCurvature",
    "ConditionEstimate",
    "DiagonalEstimate",
    "EigenResult",
    "HessianOperator",
    "SaddleReport",
    "SpectralDensity",
    "TraceEstimate",
    "block_curvature",
    "block_operator",
    "bottom_eigenvalues",
    "condition_number",
    "hessian_diagonal",
    "hessian_operator",
    "hessian_trace",
    "hvp",
    "lanczos",
    "saddle_report",
    "spectral_density",
    "top_eigenvalues",
]

Method = Literal["jvp", "double_backward"]


def _generator(generator: torch.Generator | int | None) -> torch.Generator | None:
    if isinstance(generator, int) and not isinstance(generator, bool):
        return torch.Generator().manual_seed(generator)
    return generator


def _positive_int(value: object, arg: str, owner: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}: {arg} must be a positive integer, got {value!r}")
    return value


def _positive_float(value: object, arg: str, owner: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{owner}: {arg} must be a positive number, got {value!r}")
    return float(value)


# ----------------------------------------------------------------------------- the operator


class HessianOperator:
    """The Hessian ``H = nabla^2 L(theta)`` of a loss at a point, as the linear map ``v -> H v``.

    ``theta`` is a flat vector of ``dim`` numbers (a model's trainable parameters concatenated
    in ``named_parameters`` order, or the flattened point of an analytic function). The loss is
    a weighted sum over batches,

    .. math::
        L(\\theta) = \\sum_b w_b \\, \\ell(\\theta; \\text{batch}_b), \\qquad
        H v = \\sum_b w_b \\, \\nabla^2 \\ell(\\theta; \\text{batch}_b) \\, v,

    so a data set too large for one forward pass is processed in mini-batches, exactly (the
    Hessian of the full-data loss, not a stochastic one). Each product is reverse-over-reverse
    (``method="double_backward"``, the default: ``autograd.grad`` of ``g . v`` on the graph of
    ``g = nabla L``, one backward per column) or forward-over-reverse (``"jvp"``:
    ``torch.func.jvp`` of ``torch.func.grad``, Pearlmutter's R-operator; it recomputes the
    gradient for every product, and not every op has forward-mode AD; a block's columns are
    one vectorized pass, ``torch.func.vmap`` of ``chunk_size`` columns at a time).
    ``num_hvps`` counts the products of ``dim``-vectors computed (a block of ``p`` vectors
    counts ``p``), whatever the number of batches.

    ``reuse_graph`` keeps each batch's gradient graph (one forward + backward, as PyHessian
    does for one batch) so that every later product is one backward pass over it: about half
    the cost of rebuilding it, at the memory of the batch's activations for the operator's
    lifetime. Default: reuse when the data is one batch (a caller who split the data into
    mini-batches did it to bound memory); ``True`` keeps every batch's graph.

    Build one with :meth:`from_module` or :meth:`from_function` (or :func:`hessian_operator`).

    Args:
      loss: ``loss(theta, batch) -> scalar`` for a flat ``theta`` of shape ``(dim,)``.
      point: the flat point ``theta``, ``(dim,)`` floating; it fixes dtype and device.
      batches: ``(batch, weight)`` pairs; ``batch`` is passed to ``loss`` as is.
      unflatten: maps a ``(dim,)`` vector to the user's view of it (parameter dict, shaped x).
      method: ``"double_backward"`` or ``"jvp"``.
      reuse_graph: keep the gradient graphs between products (``double_backward`` only).
      chunk_size: columns of a block computed in one vectorized pass by ``"jvp"``, and the
        probes per block of the Hutchinson estimators (memory ~ chunk_size x one product's).

    Reference: B. A. Pearlmutter, "Fast exact multiplication by the Hessian", Neural
    Computation 6(1), 1994.
    """

    def __init__(
        self,
        loss: Callable[[Tensor, Any], Tensor],
        point: Tensor,
        batches: Sequence[tuple[Any, float]],
        *,
        unflatten: Callable[[Tensor], Any] | None = None,
        method: Method = "double_backward",
        reuse_graph: bool | None = None,
        chunk_size: int = 32,
        blocks: Mapping[str, slice] | None = None,
    ) -> None:
        owner = "HessianOperator"
        if not isinstance(point, Tensor) or point.ndim != 1 or not point.is_floating_point():
            raise ValueError(f"{owner}: point must be a 1-D floating tensor")
        if method not in ("jvp", "double_backward"):
            raise ValueError(f"{owner}: method must be 'jvp' or 'double_backward', got {method!r}")
        if len(batches) == 0:
            raise ValueError(f"{owner}: batches must not be empty")
        if not (reuse_graph is None or isinstance(reuse_graph, bool)):
            raise ValueError(
                f"{owner}: reuse_graph must be None, True or False, got {reuse_graph!r}"
            )
        self._loss = loss
        self.point = point.detach()
        self._batches = list(batches)
        self._unflatten = unflatten
        self.method = method
        self.reuse_graph = len(self._batches) == 1 if reuse_graph is None else reuse_graph
        self.chunk_size = _positive_int(chunk_size, "chunk_size", owner)
        self.blocks = dict(blocks) if blocks is not None else {"x": slice(0, self.dim)}
        self.num_hvps = 0
        # batch index -> v -> H_b v on the gradient graph at ``point``; valid for one point.
        self._pullbacks: dict[int, Callable[[Tensor], Tensor]] = {}
        self._cached_point: Tensor | None = None

    # -- constructors ---------------------------------------------------------------------

    @classmethod
    def from_module(
        cls,
        model: nn.Module,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        data: Any,
        *,
        batch_size: int | None = None,
        reduction: Literal["mean", "sum"] = "mean",
        dtype: torch.dtype | None = None,
        method: Method = "double_backward",
        reuse_graph: bool | None = None,
        chunk_size: int = 32,
    ) -> HessianOperator:
        """The Hessian of ``loss_fn(model(inputs), targets)`` w.r.t. ``model``'s trainable params.

        ``data`` is one batch ``(inputs, targets)`` (two tensors), an iterable of such batches
        (a ``DataLoader``), or a :class:`ravine.problems.Dataset` (its training split).
        ``batch_size`` splits a single batch or a Dataset into mini-batches. With
        ``reduction="mean"`` (``loss_fn`` averaging over its batch, like ``F.cross_entropy``)
        batch ``b`` of ``n_b`` of ``N`` examples weighs ``n_b / N``: the loss is the mean over
        the whole data set, however it is split. ``"sum"`` adds the batch losses.

        ``dtype`` (e.g. ``torch.float64``) casts copies of the parameters, buffers and floating
        data; the model itself is untouched. The model runs in its current mode: call
        ``model.eval()`` first for BatchNorm/Dropout to be deterministic (and in train mode
        BatchNorm's running statistics would be updated by every HVP). ``reuse_graph`` and
        ``chunk_size``: see :class:`HessianOperator`. The operator's ``blocks`` map each
        parameter name to its slice of ``theta`` (for :func:`block_curvature`).
        """
        owner = "HessianOperator.from_module"
        if not isinstance(model, nn.Module):
            raise ValueError(f"{owner}: model must be an nn.Module, got {type(model).__name__}")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"{owner}: reduction must be 'mean' or 'sum', got {reduction!r}")
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not trainable:
            raise ValueError(f"{owner}: model has no trainable parameters")

        def cast(t: Tensor) -> Tensor:
            t = t.detach()
            return t.to(dtype) if dtype is not None and t.is_floating_point() else t

        # Frozen parameters and buffers are constants of the loss, not coordinates of theta.
        constants = {n: cast(p) for n, p in model.named_parameters() if not p.requires_grad}
        constants.update({n: cast(b) for n, b in model.named_buffers()})
        names = [n for n, _ in trainable]
        shapes = [p.shape for _, p in trainable]
        sizes = [p.numel() for _, p in trainable]
        point = torch.cat([cast(p).reshape(-1) for _, p in trainable])

        def unflatten(theta: Tensor) -> dict[str, Tensor]:
            parts = torch.split(theta, sizes)
            return {n: t.view(s) for n, t, s in zip(names, parts, shapes, strict=True)}

        raw = _as_batches(data, batch_size, owner)
        raw = [(cast(x), cast(y)) for x, y in raw]
        total = sum(len(x) for x, _ in raw)
        weights = [len(x) / total if reduction == "mean" else 1.0 for x, _ in raw]

        def loss(theta: Tensor, batch: tuple[Tensor, Tensor]) -> Tensor:
            inputs, targets = batch
            out = functional_call(model, {**unflatten(theta), **constants}, (inputs,))
            return loss_fn(out, targets)

        offsets = [0, *torch.tensor(sizes).cumsum(0).tolist()]
        blocks = {n: slice(a, b) for n, a, b in zip(names, offsets, offsets[1:], strict=False)}
        return cls(loss, point, list(zip(raw, weights, strict=True)), unflatten=unflatten,
                   method=method, reuse_graph=reuse_graph, chunk_size=chunk_size,
                   blocks=blocks)  # fmt: skip

    @classmethod
    def from_function(
        cls,
        f: Callable[[Tensor], Tensor],
        x: Tensor,
        *,
        dtype: torch.dtype | None = None,
        method: Method = "double_backward",
    ) -> HessianOperator:
        """The Hessian of a scalar function ``f`` at the point ``x`` (any shape, flattened).

        ``f`` receives a tensor shaped like ``x``: the analytic problems of
        :mod:`ravine.problems`, which map ``(..., dim)`` to ``(...)``, work with ``x`` of shape
        ``(dim,)``. ``unflatten`` reshapes a direction back to ``x``'s shape.
        """
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise ValueError("HessianOperator.from_function: x must be a floating tensor")
        shape = x.shape
        point = x.detach().reshape(-1)
        if dtype is not None:
            point = point.to(dtype)

        def loss(theta: Tensor, _batch: Any) -> Tensor:
            return f(theta.view(shape)).reshape(())

        return cls(loss, point, [(None, 1.0)], unflatten=lambda v: v.view(shape), method=method)

    # -- the products ---------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return self.point.numel()

    @property
    def dtype(self) -> torch.dtype:
        return self.point.dtype

    @property
    def device(self) -> torch.device:
        return self.point.device

    def __repr__(self) -> str:
        return (
            f"HessianOperator(dim={self.dim}, dtype={self.dtype}, batches={len(self._batches)}, "
            f"method={self.method!r}, num_hvps={self.num_hvps})"
        )

    def matvec(self, v: Tensor) -> Tensor:
        """``H v`` for ``v`` of shape ``(dim,)``, or ``H V`` for a block ``V`` of ``(dim, p)``."""
        if not isinstance(v, Tensor) or v.shape[0] != self.dim or v.ndim not in (1, 2):
            raise ValueError(
                f"HessianOperator.matvec: v must have shape ({self.dim},) or ({self.dim}, p), "
                f"got {tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__}"
            )
        block = v.to(self.dtype).reshape(self.dim, -1)
        out = None
        for index, (_, weight) in enumerate(self._batches):
            part = self._batch_hvp(index, block)
            out = weight * part if out is None else out.add_(part, alpha=weight)
        self.num_hvps += block.shape[1]
        return out.reshape(v.shape)

    __call__ = matvec

    def _pullback(self, index: int) -> Callable[[Tensor], Tensor]:
        """``v -> H_b v`` for batch ``index``: one forward + backward builds the gradient and
        its graph; each call is one more backward pass over that graph (PyHessian's product,
        on a flat ``theta``)."""
        if self._cached_point is not self.point:  # a new point invalidates every graph
            self._pullbacks.clear()
            self._cached_point = self.point
        product = self._pullbacks.get(index)
        if product is None:
            batch = self._batches[index][0]
            with torch.enable_grad():
                t = self.point.clone().requires_grad_(True)
                (g,) = torch.autograd.grad(
                    self._loss(t, batch), t, create_graph=True, allow_unused=True
                )

            def product(u: Tensor) -> Tensor:
                if g is None or not g.requires_grad:  # a loss at most linear in theta
                    return torch.zeros_like(u)
                with torch.enable_grad():
                    (hv,) = torch.autograd.grad(
                        g, t, grad_outputs=u, retain_graph=True, allow_unused=True
                    )
                return torch.zeros_like(u) if hv is None else hv.detach()

            if self.reuse_graph:
                self._pullbacks[index] = product
        return product

    def _batch_hvp(self, index: int, block: Tensor) -> Tensor:
        if self.method == "double_backward":
            # One backward per column: on CPU a vmap over the columns (torch.func.vjp) or
            # autograd's is_grads_batched measured no faster per vector (33-41 ms against 36
            # ms on the MLP 64-128-128-10, all digits): the products are already matrix-matrix.
            # Each column contiguous (a column of a (dim, p) block strides by p, and autograd's
            # backward over it measured 20-30% slower per vector); the result is (dim, p) too.
            product = self._pullback(index)
            return torch.stack([product(u) for u in block.T.contiguous()]).T
        x = self.point
        batch = self._batches[index][0]
        g = grad(lambda t: self._loss(t, batch))
        with warnings.catch_warnings():
            # torch.func.jvp scripts a helper on first use, and torch 2.13 warns that
            # torch.jit.script is deprecated; vmap warns when an op lacks a batching rule
            # and falls back to a loop (still correct). torch's internals, nothing to fix.
            warnings.filterwarnings(
                "ignore", message=".*torch.jit.script.*", category=DeprecationWarning
            )
            warnings.filterwarnings("ignore", message=".*performance drop.*")

            def column(u: Tensor) -> Tensor:
                return jvp(g, (x,), (u,))[1]

            if block.shape[1] == 1:
                return column(block[:, 0]).detach()[:, None]
            cols = vmap(column, chunk_size=self.chunk_size)(block.T.contiguous())
        return cols.T.detach()

    def loss_and_gradient(self) -> tuple[Tensor, Tensor]:
        """The loss ``L(theta)`` and its gradient ``(dim,)`` (not counted as HVPs)."""
        total = torch.zeros((), dtype=self.dtype, device=self.device)
        gradient = torch.zeros_like(self.point)
        for batch, weight in self._batches:
            with torch.enable_grad():
                t = self.point.clone().requires_grad_(True)
                value = self._loss(t, batch)
                (g,) = torch.autograd.grad(value, t, allow_unused=True)
            total += weight * value.detach()
            if g is not None:
                gradient += weight * g
        return total, gradient

    def dense(self) -> Tensor:
        """The full ``(dim, dim)`` Hessian, one HVP per column: for small problems and tests."""
        return self.matvec(torch.eye(self.dim, dtype=self.dtype, device=self.device))

    def unflatten(self, v: Tensor) -> Any:
        """A flat ``(dim,)`` vector in the user's view: parameter-name dict, or ``x``'s shape."""
        return v if self._unflatten is None else self._unflatten(v)


def _as_batches(data: Any, batch_size: int | None, owner: str) -> list[tuple[Tensor, Tensor]]:
    from ravine.problems.data import Dataset  # probe sits above problems

    if isinstance(data, Dataset):
        data = (data.x_train, data.y_train)
    if (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and all(isinstance(t, Tensor) for t in data)
    ):
        x, y = data
        if len(x) != len(y):
            raise ValueError(f"{owner}: inputs and targets differ in length: {len(x)}, {len(y)}")
        if batch_size is None:
            batches = [(x, y)]
        else:
            size = _positive_int(batch_size, "batch_size", owner)
            batches = list(zip(x.split(size), y.split(size), strict=True))
    elif isinstance(data, Iterable) and not isinstance(data, (Tensor, str, Mapping)):
        batches = [tuple(b) for b in data]
        if any(len(b) != 2 for b in batches):
            raise ValueError(f"{owner}: every batch must be an (inputs, targets) pair")
    else:
        raise ValueError(
            f"{owner}: data must be (inputs, targets), an iterable of such batches, or a Dataset; "
            f"got {type(data).__name__}"
        )
    if not batches or sum(len(x) for x, _ in batches) == 0:
        raise ValueError(f"{owner}: data is empty")
    return batches  # type: ignore[return-value]


def hessian_operator(
    model_or_f: nn.Module | Callable[[Tensor], Tensor],
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    data: Any = None,
    *,
    x: Tensor | None = None,
    **kwargs: Any,
) -> HessianOperator:
    """:meth:`HessianOperator.from_module` for a module, :meth:`~HessianOperator.from_function`
    for a function of ``x``; ``kwargs`` go to the chosen constructor."""
    if isinstance(model_or_f, nn.Module):
        if loss_fn is None or data is None:
            raise ValueError("hessian_operator: a module needs loss_fn and data")
        return HessianOperator.from_module(model_or_f, loss_fn, data, **kwargs)
    if not callable(model_or_f):
        raise ValueError("hessian_operator: expected an nn.Module or a callable f(x)")
    if x is None:
        raise ValueError("hessian_operator: a function f needs the point x=")
    return HessianOperator.from_function(model_or_f, x, **kwargs)


def hvp(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    data: Any,
    v: Tensor,
    **kwargs: Any,
) -> Tensor:
    """One Hessian-vector product ``H v`` (flat), building the operator for it.

    For more than one product build :class:`HessianOperator` once: it holds the data, the
    casts and the HVP count. ``kwargs`` go to :meth:`HessianOperator.from_module`.
    """
    return HessianOperator.from_module(model, loss_fn, data, **kwargs).matvec(v)


# ----------------------------------------------------------------------------- Lanczos


@dataclass(frozen=True)
class LanczosResult:
    """An orthonormal Krylov basis ``Q`` (``(dim, m)``), ``HQ`` and ``T = Q^T H Q``.

    ``remainder`` is ``(I - QQ^T) H B`` for the last block ``B`` of ``Q`` (``(dim, p)``): the
    part of its products outside the basis, which the next block is made of. ``HQ - QT`` is
    zero (to rounding) but in those ``p`` columns, so a Ritz pair ``(theta, Q s)`` has the
    residual ``||H Q s - theta Q s|| = ||remainder s_last||``, ``s_last`` the last ``p``
    entries of ``s``: an ``O(dim p)`` check instead of two ``O(dim m)`` products.
    """

    basis: Tensor
    h_basis: Tensor
    t: Tensor
    num_hvps: int
    exhausted: bool  # the basis spans an invariant subspace (or all of R^dim): T is exact
    remainder: Tensor


def _independent(w: Tensor, before: Tensor, scale: float) -> Tensor:
    """The columns of ``w``, already orthogonal to the basis, made orthonormal to each other;
    dependent ones dropped. ``before``: each column's norm before it was projected.

    A remainder at rounding level means the Krylov space is invariant: it is dropped rather
    than amplified into a spurious direction.
    """
    eps = torch.finfo(w.dtype).eps
    kept: list[Tensor] = []
    for j in range(w.shape[1]):
        col = w[:, j]
        for _ in range(2 if kept else 0):
            for k in kept:
                col = col - k * (k @ col)
        norm = float(col.norm())
        if norm > 100 * eps * max(float(before[j]), scale) * math.sqrt(w.shape[0]) and norm > 0:
            kept.append(col / norm)
    if not kept:
        return w.new_zeros(w.shape[0], 0)
    return torch.stack(kept, dim=1)


def _project_out(w: Tensor, q: Tensor, first: Tensor | None = None) -> Tensor:
    """``(I - QQ^T) w`` by classical Gram-Schmidt twice ("twice is enough", Giraud et al.
    2005), which keeps the basis orthogonal to working precision: what lets Lanczos skip the
    ghost copies of converged eigenvalues that plain three-term Lanczos produces. ``first``:
    ``Q^T w`` when the caller has it already."""
    if q.shape[1] == 0:
        return w
    w = w - q @ (q.T @ w if first is None else first)
    return w - q @ (q.T @ w)


def _orthonormalize(w: Tensor, q: Tensor, scale: float) -> Tensor:
    """Columns of ``w`` made orthonormal to ``q`` and to each other; dependent ones dropped."""
    return _independent(_project_out(w, q), w.norm(dim=0), scale)


def lanczos(
    op: HessianOperator | Callable[[Tensor], Tensor],
    num_steps: int,
    *,
    dim: int | None = None,
    start: Tensor | None = None,
    block_size: int = 1,
    generator: torch.Generator | int | None = None,
    restart: bool = True,
    stop: Callable[[LanczosResult], bool] | None = None,
) -> LanczosResult:
    """(Block) Lanczos with full reorthogonalization: a Krylov basis and the projected Hessian.

    Builds an orthonormal basis ``Q`` of ``span{V, HV, H^2 V, ...}`` block by block and the
    Rayleigh quotient ``T = Q^T H Q`` (tridiagonal for ``block_size=1``, banded otherwise,
    computed in full from the stored ``HQ`` so rounding does not make it drift). The
    eigenvalues of ``T`` (Ritz values) approximate the extreme eigenvalues of ``H`` first;
    ``num_steps`` blocks cost ``num_steps * block_size`` HVPs.

    Single-vector Lanczos cannot see an eigenvalue's multiplicity: the Krylov space of one
    vector holds one direction per distinct eigenvalue. When the space becomes invariant
    (exactly, as at a symmetric point like a zero initialization) and ``restart`` is true, a
    fresh random vector orthogonal to ``Q`` continues the basis, which recovers the missing
    copies; for near-repeated eigenvalues use ``block_size`` >= the multiplicity.

    Args:
      op: a :class:`HessianOperator`, or any symmetric ``v -> H v`` on ``(dim, p)`` blocks
        (then pass ``dim``).
      num_steps: maximum number of blocks (capped so the basis never exceeds ``dim``).
      start: starting block ``(dim,)`` or ``(dim, p)``; default Gaussian random.
      block_size: vectors per block when ``start`` is not given.
      generator: torch.Generator or int seed for the random vectors.
      restart: continue with a random vector when the Krylov space is exhausted early.
      stop: called after each block with the current result; True ends the iteration.

    Reference: C. Lanczos, "An iteration method for the solution of the eigenvalue problem
    of linear differential and integral operators", J. Res. Nat. Bur. Standards 45, 1950;
    G. H. Golub and R. Underwood, "The block Lanczos method for computing eigenvalues", 1977.
    """
    owner = "lanczos"
    num_steps = _positive_int(num_steps, "num_steps", owner)
    block_size = _positive_int(block_size, "block_size", owner)
    gen = _generator(generator)
    if isinstance(op, HessianOperator):
        n, dtype, device = op.dim, op.dtype, op.device
    else:
        if dim is None and start is None:
            raise ValueError(f"{owner}: pass dim= (or start=) with a plain callable op")
        n = dim if dim is not None else start.shape[0]  # type: ignore[union-attr]
        dtype = start.dtype if start is not None else torch.get_default_dtype()
        device = start.device if start is not None else torch.device("cpu")

    def randn(p: int) -> Tensor:
        return torch.randn(n, p, generator=gen, dtype=dtype).to(device)

    # Q and HQ are stored by rows, (capacity, dim), and used as the transposed views
    # ``rows[:m].T``: each basis vector is contiguous, so a projection or a Ritz vector reads
    # the m vectors in use and nothing else (a column slice of a (dim, capacity) buffer
    # strides over all of it: 5-10x the memory traffic, most of Lanczos's time besides its
    # HVPs). The buffers double when full (appending a block copies O(dim p)); unused rows
    # are never read, so they start uninitialized.
    rows_q = torch.empty(min(n, 64), n, dtype=dtype, device=device)
    rows_hq = torch.empty_like(rows_q)
    q, hq = rows_q[:0].T, rows_hq[:0].T
    block = randn(block_size) if start is None else start.to(dtype).reshape(n, -1)
    block = _orthonormalize(block, q, 0.0)
    counted = 0
    scale = 0.0
    exhausted = False
    remainder = q.new_zeros(n, 0)
    t = q.new_zeros(0, 0)
    for _ in range(num_steps):
        if block.shape[1] == 0:
            # Invariant subspace: T's eigenvalues are exact eigenvalues of H.
            if not restart or q.shape[1] >= n:
                exhausted = True
                break
            block = _orthonormalize(randn(1), q, 0.0)
            if block.shape[1] == 0:
                exhausted = True
                break
        block = block[:, : max(0, n - q.shape[1])]
        w = op(block)
        counted += block.shape[1]
        m, p = q.shape[1], block.shape[1]
        if m + p > rows_q.shape[0]:
            size = min(n, max(2 * rows_q.shape[0], m + p))
            rows_q = torch.cat([rows_q[:m], rows_q.new_empty(size - m, n)])
            rows_hq = torch.cat([rows_hq[:m], rows_hq.new_empty(size - m, n)])
        rows_q[m : m + p] = block.T
        rows_hq[m : m + p] = w.T
        q, hq = rows_q[: m + p].T, rows_hq[: m + p].T
        # T = Q^T H Q grows by the new block's rows and columns only (the old entries are
        # products of the same stored columns): O(dim m p) per step, not O(dim m^2). The
        # same numbers are the first Gram-Schmidt pass's coefficients.
        col = q.T @ w  # (m + p, p): Q^T H b
        side = col.clone()
        side[-p:] = (col[-p:] + col[-p:].T) / 2  # symmetric by construction
        t = torch.cat([torch.cat([t, side[:-p].T], dim=0), side], dim=1)
        t[-p:, :] = side.T
        before = w.norm(dim=0)
        scale = max(scale, float(before.max()))
        remainder = _project_out(w, q, first=col)
        result = LanczosResult(q, hq, t, counted, q.shape[1] >= n, remainder)
        if q.shape[1] >= n:
            return result
        if stop is not None and stop(result):
            return result
        block = _independent(remainder, before, scale)
    return LanczosResult(q, hq, t, counted, exhausted or q.shape[1] >= n, remainder)


@dataclass(frozen=True)
class EigenResult:
    """Eigenpairs from Lanczos.

    Attributes:
      eigenvalues: ``(k,)``, in the order asked for (largest first, or smallest first).
      eigenvectors: ``(dim, k)`` orthonormal columns (each defined up to sign).
      residuals: ``(k,)`` norms ``||H y - theta y||``, a bound on each eigenvalue's error.
      num_hvps: HVPs used.
      converged: every residual met the tolerance (or the Krylov space was exhausted).
    """

    eigenvalues: Tensor
    eigenvectors: Tensor
    residuals: Tensor
    num_hvps: int
    converged: bool


def _ritz(
    result: LanczosResult, k: int, which: str, eig: tuple[Tensor, Tensor] | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    theta, s = torch.linalg.eigh(result.t) if eig is None else eig
    idx = torch.arange(theta.numel())
    idx = idx.flip(0)[:k] if which == "largest" else idx[:k]
    s = s[:, idx]
    vectors = result.basis @ s
    residuals = (result.h_basis @ s - vectors * theta[idx]).norm(dim=0)
    return theta[idx], vectors, residuals


def _extreme(
    op: HessianOperator,
    k: int,
    which: str,
    tol: float,
    max_hvps: int | None,
    block_size: int,
    generator: torch.Generator | int | None,
    owner: str,
) -> EigenResult:
    k = _positive_int(k, "k", owner)
    tol = _positive_float(tol, "tol", owner)
    block_size = _positive_int(block_size, "block_size", owner)
    if not isinstance(op, HessianOperator):
        raise ValueError(f"{owner}: op must be a HessianOperator, got {type(op).__name__}")
    if k > op.dim:
        raise ValueError(f"{owner}: k must be <= dim = {op.dim}, got {k}")
    budget = max_hvps if max_hvps is not None else min(op.dim, max(300, 20 * k))
    budget = _positive_int(budget, "max_hvps", owner)

    def wanted(theta: Tensor) -> Tensor:
        idx = torch.arange(theta.numel())
        return idx.flip(0)[:k] if which == "largest" else idx[:k]

    def small_enough(res: Tensor, theta: Tensor) -> bool:
        # Residual relative to ||H|| (estimated by the largest Ritz value): eigenvalues near
        # zero get absolute accuracy tol * ||H||, the others relative accuracy tol.
        norm = float(theta.abs().max())
        return bool((res <= tol * max(norm, torch.finfo(op.dtype).tiny)).all())

    def stop(result: LanczosResult) -> bool:
        if result.basis.shape[1] < k:
            return False
        theta, s = torch.linalg.eigh(result.t)
        p = result.remainder.shape[1]
        # The residuals from the remainder (see LanczosResult): O(dim p), not O(dim m k).
        res = (result.remainder @ s[-p:, wanted(theta)]).norm(dim=0)
        return small_enough(res, theta)

    steps = max(1, math.ceil(budget / block_size))
    result = lanczos(op, steps, block_size=block_size, generator=generator, stop=stop)
    if result.basis.shape[1] < k:
        raise ValueError(
            f"{owner}: only {result.basis.shape[1]} Krylov vectors within max_hvps={budget}; "
            f"raise max_hvps to at least k = {k}"
        )
    eig = torch.linalg.eigh(result.t)
    theta, vectors, res = _ritz(result, k, which, eig)  # residuals from H Q s itself
    converged = result.exhausted or small_enough(res, eig[0])
    return EigenResult(theta, vectors, res, result.num_hvps, converged)


def top_eigenvalues(
    op: HessianOperator,
    k: int = 1,
    *,
    tol: float = 1e-6,
    max_hvps: int | None = None,
    block_size: int = 1,
    generator: torch.Generator | int | None = 0,
) -> EigenResult:
    """The ``k`` largest (algebraic) eigenvalues of ``H`` and their eigenvectors, by Lanczos.

    Lanczos with full reorthogonalization (:func:`lanczos`) until every wanted Ritz pair
    ``(theta, y)`` has

    .. math::
        \\| H y - \\theta y \\| \\le \\text{tol} \\cdot \\|H\\|,

    which bounds ``|theta - lambda|`` for the nearest eigenvalue ``lambda`` (and the error is
    usually far smaller, ``residual^2 / gap``). It needs several times fewer HVPs than the
    deflated power iteration of PyHessian (one eigenvalue at a time, each converging at the
    rate ``lambda_{i+1} / lambda_i``): see ``benchmarks/curvature_hvps.py``.

    .. warning::
       With ``block_size=1`` an eigenvalue repeated up to rounding (not exactly) may be
       reported once, the next eigenvalue taking the copy's place. Pass ``block_size`` >= the
       multiplicity you suspect.

    Args:
      op: the Hessian.
      k: how many eigenpairs.
      tol: residual tolerance relative to ``||H||``.
      max_hvps: HVP budget (default ``min(dim, max(300, 20 k))``); ``converged`` says if it
        sufficed.
      block_size: vectors per Lanczos block.
      generator: seed or generator of the random start (fixed by default: reproducible).

    Reference: Z. Yao, A. Gholami, K. Keutzer, M. Mahoney, "PyHessian: Neural networks through
    the lens of the Hessian", IEEE BigData 2020 (the power-iteration baseline); B. Ghorbani,
    S. Krishnan, Y. Xiao, "An investigation into neural net optimization via Hessian
    eigenvalue density", ICML 2019 (Lanczos for the Hessian).
    """
    return _extreme(op, k, "largest", tol, max_hvps, block_size, generator, "top_eigenvalues")


def bottom_eigenvalues(
    op: HessianOperator,
    k: int = 1,
    *,
    tol: float = 1e-6,
    max_hvps: int | None = None,
    block_size: int = 1,
    generator: torch.Generator | int | None = 0,
) -> EigenResult:
    """The ``k`` smallest (most negative) eigenvalues of ``H``, smallest first, by Lanczos.

    Same method and arguments as :func:`top_eigenvalues`, at the other end of the spectrum:
    the negative eigenvalues are the directions of descent at a saddle. No shift-and-invert
    is needed — Lanczos converges at both ends at once — but small negative eigenvalues under
    a large positive bulk converge more slowly (the rate depends on the gap relative to the
    spread ``lambda_max - lambda_min``).
    """
    return _extreme(op, k, "smallest", tol, max_hvps, block_size, generator, "bottom_eigenvalues")


# ----------------------------------------------------------------------------- trace, density


@dataclass(frozen=True)
class TraceEstimate:
    """``tr H``: the estimate, its standard error (0 when exact), HVPs used, per-probe samples."""

    trace: float
    stderr: float
    num_hvps: int
    samples: Tensor


def hessian_trace(
    op: HessianOperator,
    *,
    num_probes: int = 100,
    exact: bool = False,
    generator: torch.Generator | int | None = 0,
    method: Literal["hutchinson", "hutch++"] = "hutchinson",
) -> TraceEstimate:
    """Hutchinson's estimate of ``tr H`` from Rademacher probes, with its standard error.

    .. math::
        \\operatorname{tr} H = \\mathbb{E}_z [z^\\top H z], \\quad z_i \\in \\{-1, +1\\}
        \\text{ uniform}; \\qquad \\widehat{\\operatorname{tr}} = \\frac1m \\sum_{j=1}^m
        z_j^\\top H z_j, \\quad \\text{stderr} = \\frac{s}{\\sqrt m},

    ``s`` the sample standard deviation. Rademacher probes have the least variance among
    i.i.d. probes, ``2 (||H||_F^2 - sum_i H_ii^2)`` per sample: a diagonal Hessian is exact.
    ``exact=True`` instead sums ``e_i^T H e_i`` over the ``dim`` basis vectors (``dim``
    HVPs, stderr 0): for small problems and tests.

    ``method="hutch++"`` spends the same ``num_probes`` HVPs differently: a third sketch the
    top of the spectrum (``Q = orth(H S)``), a third take its trace exactly
    (``tr Q^T H Q``), and the last third run Hutchinson on the rest, ``(I - QQ^T) H (I -
    QQ^T)``. A network's Hessian has a few large outliers that dominate ``||H||_F``, hence
    Hutchinson's variance; removing them leaves a much smaller one (``samples`` are then the
    per-probe estimates of the whole trace). Needs ``num_probes >= 3``.

    Reference: M. F. Hutchinson, "A stochastic estimator of the trace of the influence matrix
    for Laplacian smoothing splines", 1989; PyHessian (Yao et al. 2020) for the Hessian.
    """
    owner = "hessian_trace"
    if exact:
        before = op.num_hvps
        diag = torch.diagonal(op.dense())
        return TraceEstimate(float(diag.sum()), 0.0, op.num_hvps - before, diag)
    num_probes = _positive_int(num_probes, "num_probes", owner)
    if method not in ("hutchinson", "hutch++"):
        raise ValueError(f"{owner}: method must be 'hutchinson' or 'hutch++', got {method!r}")
    if method == "hutch++":
        return _hutch_plus_plus(op, num_probes, _generator(generator), owner)
    z, hz = rademacher_products(op, num_probes, _generator(generator))
    s = (z * hz).sum(dim=0)  # (num_probes,): z_j^T H z_j
    stderr = float(s.std() / math.sqrt(num_probes)) if num_probes > 1 else math.inf
    return TraceEstimate(float(s.mean()), stderr, num_probes, s)


def _hutch_plus_plus(
    op: HessianOperator, num_probes: int, gen: torch.Generator | None, owner: str
) -> TraceEstimate:
    """Hutch++ (Meyer, Musco, Musco, Woodruff, SOSA 2021): see :func:`hessian_trace`."""
    if num_probes < 3:
        raise ValueError(f"{owner}: hutch++ needs num_probes >= 3, got {num_probes}")
    sketch = min(num_probes // 3, op.dim)
    rest = num_probes - 2 * sketch
    _, hs = rademacher_products(op, sketch, gen)
    q = torch.linalg.qr(hs).Q  # (dim, sketch): the sketched top of the spectrum
    hq = _products(op, q)
    low = float((q * hq).sum())  # tr(Q^T H Q), exact on that subspace
    g = torch.randint(0, 2, (op.dim, rest), generator=gen).to(op.dtype).to(op.device) * 2 - 1
    g = g - q @ (q.T @ g)  # (I - QQ^T) g
    samples = (g * _products(op, g)).sum(dim=0) + low  # (rest,): whole-trace estimates
    stderr = float(samples.std() / math.sqrt(rest)) if rest > 1 else math.inf
    return TraceEstimate(float(samples.mean()), stderr, 2 * sketch + rest, samples)


def _products(op: HessianOperator, block: Tensor) -> Tensor:
    """``H B`` in column blocks of ``op.chunk_size``."""
    return torch.cat([op(c) for c in block.split(op.chunk_size, dim=1)], dim=1)


def rademacher_products(
    op: HessianOperator, num_probes: int, gen: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """``(Z, H Z)`` for ``num_probes`` Rademacher columns, computed as blocks of
    ``op.chunk_size`` (one vectorized pass each) rather than one product at a time: the probes
    of every Hutchinson estimate (trace, diagonal, the training signals' per-block traces)."""
    # (int8 draws: a large model's (dim, probes) int64 table would be 8x the memory)
    z = torch.randint(0, 2, (op.dim, num_probes), generator=gen, dtype=torch.int8)
    z = z.to(op.device).to(op.dtype) * 2 - 1
    return z, _products(op, z)


@dataclass(frozen=True)
class DiagonalEstimate:
    """``diag H``: the estimate ``(dim,)``, its per-entry standard error, HVPs used."""

    diagonal: Tensor
    stderr: Tensor
    num_hvps: int


def hessian_diagonal(
    op: HessianOperator,
    *,
    num_probes: int = 100,
    exact: bool = False,
    generator: torch.Generator | int | None = 0,
) -> DiagonalEstimate:
    """Hutchinson's estimate of the Hessian's diagonal, ``E_z[z * H z]``, per coordinate.

    .. math::
        \\operatorname{diag} H = \\mathbb{E}_z [z \\odot H z], \\quad z_i \\in \\{-1, +1\\};
        \\qquad \\operatorname{Var}[(z \\odot Hz)_i] = \\sum_{j \\ne i} H_{ij}^2,

    so coordinates coupled weakly to the others converge fast, and a diagonal Hessian is
    exact from one probe. The standard error is per coordinate (sample std / sqrt(m)).
    ``exact=True`` reads the diagonal off ``dim`` HVPs instead (small problems, tests).
    ``op.unflatten(result.diagonal)`` gives it per parameter.

    Reference: C. Bekas, E. Kokiopoulou, Y. Saad, "An estimator for the diagonal of a
    matrix", Applied Numerical Mathematics 57, 2007; Z. Yao et al., "ADAHESSIAN", AAAI 2021.
    """
    owner = "hessian_diagonal"
    if exact:
        before = op.num_hvps
        diag = torch.diagonal(op.dense()).clone()
        return DiagonalEstimate(diag, torch.zeros_like(diag), op.num_hvps - before)
    num_probes = _positive_int(num_probes, "num_probes", owner)
    z, hz = rademacher_products(op, num_probes, _generator(generator))
    samples = z * hz  # (dim, num_probes)
    if num_probes > 1:
        stderr = samples.std(dim=1) / math.sqrt(num_probes)
    else:
        stderr = torch.full((op.dim,), math.inf, dtype=op.dtype, device=op.device)
    return DiagonalEstimate(samples.mean(dim=1), stderr, num_probes)


@dataclass(frozen=True)
class SpectralDensity:
    """An estimated eigenvalue density of ``H`` (normalized to integrate to 1).

    Attributes:
      grid: ``(num_points,)`` eigenvalue axis.
      density: ``(num_points,)`` Gaussian-smoothed density on the grid.
      nodes: ``(num_probes, m)`` Gauss quadrature nodes (Ritz values) per probe.
      weights: ``(num_probes, m)`` their weights; each row sums to 1 (zeros pad a probe
        whose Krylov space was exhausted before ``m`` steps).
      sigma: width of the Gaussian kernel.
      num_hvps: HVPs used.
    """

    grid: Tensor
    density: Tensor
    nodes: Tensor
    weights: Tensor
    sigma: float
    num_hvps: int

    def moment(self, j: int) -> float:
        """``E[lambda^j]`` under the (unsmoothed) quadrature: estimates ``tr(H^j) / dim``."""
        return float((self.weights * self.nodes**j).sum(dim=1).mean())

    def mass_below(self, threshold: float) -> float:
        """Fraction of eigenvalues below ``threshold`` (e.g. 0: the negative mass)."""
        return float((self.weights * (self.nodes < threshold)).sum(dim=1).mean())


def spectral_density(
    op: HessianOperator,
    *,
    num_probes: int = 10,
    num_steps: int = 80,
    num_points: int = 1000,
    sigma: float | None = None,
    generator: torch.Generator | int | None = 0,
) -> SpectralDensity:
    """Eigenvalue density of ``H`` by stochastic Lanczos quadrature (SLQ).

    For a unit Gaussian probe ``v``, ``m`` Lanczos steps give ``T = S diag(theta) S^T``, and
    ``(theta_i, w_i = S_{1i}^2)`` is the ``m``-point Gauss quadrature of the spectral measure
    of ``H`` seen from ``v``:

    .. math::
        v^\\top g(H) v \\approx \\sum_{i=1}^m w_i \\, g(\\theta_i), \\qquad
        \\phi(t) \\approx \\frac{1}{n_v} \\sum_{l=1}^{n_v} \\sum_{i=1}^m w^{(l)}_i \\,
        \\mathcal{N}(t; \\theta^{(l)}_i, \\sigma^2),

    exact for polynomials ``g`` of degree ``< 2m``; averaging over probes gives
    ``tr g(H) / dim`` in expectation. The density is on a grid spanning the nodes padded by
    ``5 sigma``, so it integrates to 1 up to the grid's resolution. Default
    ``sigma = 0.01 (max node - min node)`` (Ghorbani et al. use ``1e-5`` on a spectrum they
    rescale to ``[-1, 1]``, i.e. much the same resolution relative to the spread).

    Args:
      op: the Hessian.
      num_probes: independent Gaussian probes (variance of the estimate falls as 1/num_probes).
      num_steps: Lanczos steps per probe (HVPs per probe; capped at ``dim``).
      num_points: grid size.
      sigma: Gaussian broadening; default relative to the spread, as above.
      generator: seed or generator of the probes.

    Reference: B. Ghorbani, S. Krishnan, Y. Xiao, "An investigation into neural net
    optimization via Hessian eigenvalue density", ICML 2019; L. Lin, Y. Saad, C. Yang,
    "Approximating spectral densities of large matrices", SIAM Review 58(1), 2016.
    """
    owner = "spectral_density"
    num_probes = _positive_int(num_probes, "num_probes", owner)
    num_steps = _positive_int(num_steps, "num_steps", owner)
    num_points = _positive_int(num_points, "num_points", owner)
    gen = _generator(generator)
    m = min(num_steps, op.dim)
    nodes = torch.zeros(num_probes, m, dtype=op.dtype)
    weights = torch.zeros_like(nodes)
    starts = torch.randn(num_probes, op.dim, generator=gen, dtype=op.dtype).to(op.device)
    # Probes run in lockstep, a group's products as one block: bounded so the group's bases
    # (group x m x dim numbers) stay under 2^27 (1 GiB in float64).
    group = max(1, min(num_probes, op.chunk_size, 2**27 // (m * op.dim)))
    used = 0
    for first in range(0, num_probes, group):
        alpha, beta, lengths, hvps = _lockstep_lanczos(op, starts[first : first + group], m)
        used += hvps
        for j, r in enumerate(lengths):
            t = torch.diag(alpha[j, :r]) + torch.diag(beta[j, : r - 1], 1)
            theta, s = torch.linalg.eigh(t + torch.diag(beta[j, : r - 1], -1))
            nodes[first + j, :r] = theta.cpu()
            weights[first + j, :r] = s[0].square().cpu()  # basis[:, 0] = v / |v|
    lo, hi = float(nodes[weights > 0].min()), float(nodes[weights > 0].max())
    if sigma is None:
        sigma = 0.01 * (hi - lo) if hi > lo else 1e-3 * max(abs(hi), 1.0)
    sigma = _positive_float(sigma, "sigma", owner)
    grid = torch.linspace(lo - 5 * sigma, hi + 5 * sigma, num_points, dtype=op.dtype)
    z = (grid[:, None, None] - nodes[None]) / sigma
    kernel = torch.exp(-0.5 * z.square()) / (sigma * math.sqrt(2 * math.pi))
    density = (kernel * weights[None]).sum(dim=(1, 2)) / num_probes
    return SpectralDensity(grid, density, nodes, weights, sigma, used)


def _lockstep_lanczos(
    op: HessianOperator, starts: Tensor, m: int
) -> tuple[Tensor, Tensor, list[int], int]:
    """Lanczos from each row of ``starts`` ``(P, dim)``, all P runs advanced together: one
    block product per step for the runs still going. Full reorthogonalization (classical
    Gram-Schmidt twice) against each run's own basis, as :func:`lanczos`, but no restart: a
    run whose Krylov space is exhausted stops, its quadrature already exact.

    Returns ``(alpha (P, m), beta (P, m - 1), lengths, hvps)``: run ``j``'s tridiagonal
    ``T`` has ``alpha[j, :r]`` on the diagonal and ``beta[j, :r - 1]`` beside it.
    """
    p, n = starts.shape
    eps = torch.finfo(starts.dtype).eps
    basis = starts.new_zeros(p, m, n)
    alpha = starts.new_zeros(p, m)
    beta = starts.new_zeros(p, max(m - 1, 0))
    lengths = [m] * p
    live = torch.arange(p, device=starts.device)
    v = starts / starts.norm(dim=1, keepdim=True)
    scale, hvps = 0.0, 0
    for i in range(m):
        basis[live, i] = v
        w = op(v.T).T.contiguous()  # (live, dim)
        hvps += len(live)
        alpha[live, i] = (w * v).sum(dim=1)
        scale = max(scale, float(w.norm(dim=1).max()))
        if i + 1 == m:
            break
        before = w.norm(dim=1)
        # Each run against its own basis, a view (i + 1, dim): two matrix-vector products per
        # pass. A batched torch.bmm of (live, i + 1, dim) by (live, dim, 1) measured 5-8x
        # slower on CPU (and indexing the bases by ``live`` copied them).
        w = torch.stack(
            [_project_out(w[r], basis[j, : i + 1].T) for r, j in enumerate(live.tolist())]
        )
        norm = w.norm(dim=1)
        # A remainder at rounding level: the Krylov space is invariant (see _orthonormalize).
        floor = 100 * eps * torch.clamp(before, min=scale) * math.sqrt(n)
        going = norm > floor
        for j in live[~going].tolist():
            lengths[j] = i + 1
        beta[live[going], i] = norm[going]
        live, v = live[going], w[going] / norm[going, None]
        if len(live) == 0:
            break
    return alpha, beta, lengths, hvps


# ----------------------------------------------------------------------------- per block


def block_operator(op: HessianOperator, names: str | Sequence[str]) -> HessianOperator:
    """The Hessian of the loss w.r.t. some blocks of ``theta`` only, the others held fixed:
    the principal submatrix ``H_bb`` of ``op``'s Hessian (the rows and columns of the named
    blocks, in ``op.blocks`` order), as an operator of its own.

    Every estimator runs on it: ``top_eigenvalues(block_operator(op, "0.weight"))`` is the
    sharpest direction that moves only that layer's weights. Its products differentiate
    w.r.t. the block alone, so each costs a little less than one of ``op``'s.
    """
    owner = "block_operator"
    wanted = [names] if isinstance(names, str) else list(names)
    unknown = [n for n in wanted if n not in op.blocks]
    if not wanted or unknown:
        raise ValueError(
            f"{owner}: names must be blocks of the operator; unknown {unknown or wanted!r}, "
            f"valid: {', '.join(op.blocks)}"
        )
    chosen = [(n, sl) for n, sl in op.blocks.items() if n in wanted]
    point = op.point
    # theta = the fixed coordinates with the block's pieces slotted in, in order.
    edges, start = [], 0
    for _, sl in chosen:
        edges.append((start, sl))
        start += sl.stop - sl.start

    def loss(tb: Tensor, batch: Any) -> Tensor:
        pieces, cursor = [], 0
        for begin, sl in edges:
            pieces += [point[cursor : sl.start], tb[begin : begin + sl.stop - sl.start]]
            cursor = sl.stop
        pieces.append(point[cursor:])
        return op._loss(torch.cat(pieces), batch)

    sub_point = torch.cat([point[sl] for _, sl in chosen])
    blocks, begin = {}, 0
    for n, sl in chosen:
        blocks[n] = slice(begin, begin + sl.stop - sl.start)
        begin += sl.stop - sl.start
    return HessianOperator(
        loss, sub_point, op._batches, method=op.method, reuse_graph=op.reuse_graph,
        chunk_size=op.chunk_size, blocks=blocks,
    )  # fmt: skip


@dataclass(frozen=True)
class BlockCurvature:
    """Curvature of one parameter block (a named parameter, or a layer's parameters).

    Attributes:
      names: the parameters in the block.
      size: its number of coordinates.
      top: the block Hessian's largest eigenpairs (:class:`EigenResult`, eigenvectors in the
        block's coordinates).
      trace: ``tr H_bb``, the block's share of ``tr H`` (:class:`TraceEstimate`).
      bottom: its smallest eigenpairs when asked for (``bottom=True``), else None: a negative
        one is a direction within that layer along which the loss curves down.
    """

    names: tuple[str, ...]
    size: int
    top: EigenResult
    trace: TraceEstimate
    bottom: EigenResult | None = None


def block_curvature(
    op: HessianOperator,
    *,
    by: Literal["parameter", "layer"] = "parameter",
    k: int = 1,
    num_probes: int = 50,
    exact_below: int = 64,
    tol: float = 1e-6,
    bottom: bool = False,
    generator: torch.Generator | int | None = 0,
) -> dict[str, BlockCurvature]:
    """Top eigenvalues and trace of each diagonal block ``H_bb`` of the Hessian (and, with
    ``bottom=True``, its ``k`` smallest eigenvalues: which layer holds the negative curvature
    of a saddle).

    ``by="parameter"``: one block per named parameter (``"0.weight"``, ``"0.bias"``, ...);
    ``"layer"``: a module's parameters together (``"0"``, ``"2"``: the name before the last
    dot). The blocks' traces add up to ``tr H``; their top eigenvalues are each at most
    ``lambda_max(H)`` (Cauchy interlacing), and show which layer is sharpest, which a single
    spectrum of the whole network cannot. A block of at most ``exact_below`` coordinates gets
    its exact trace (``size`` HVPs), the others Hutchinson's (``num_probes`` HVPs). ``k`` is
    capped at each block's size. ``op.num_hvps`` does not count the blocks' products; each
    result's ``num_hvps`` does. A block's smallest eigenvalue is at least ``lambda_min(H)``
    (interlacing again), so a negative one bounds how negative the whole Hessian is.

    Returns a dict block name -> :class:`BlockCurvature`, in parameter order.
    """
    owner = "block_curvature"
    if by not in ("parameter", "layer"):
        raise ValueError(f"{owner}: by must be 'parameter' or 'layer', got {by!r}")
    k = _positive_int(k, "k", owner)
    num_probes = _positive_int(num_probes, "num_probes", owner)
    if isinstance(exact_below, bool) or not isinstance(exact_below, int) or exact_below < 0:
        raise ValueError(
            f"{owner}: exact_below must be a non-negative integer, got {exact_below!r}"
        )
    groups: dict[str, list[str]] = {}
    for name in op.blocks:
        key = name.rsplit(".", 1)[0] if by == "layer" and "." in name else name
        groups.setdefault(key, []).append(name)
    out = {}
    for key, names in groups.items():
        sub = block_operator(op, names)
        top = top_eigenvalues(sub, min(k, sub.dim), tol=tol, generator=generator)
        low = None
        if bottom:
            # The bottom of a layer's block is often a repeated 0 (a softmax layer's shift
            # invariance, dead units): one start vector finds one copy of a repeated
            # eigenvalue, a block of k finds k.
            kb = min(k, sub.dim)
            low = bottom_eigenvalues(sub, kb, tol=tol, block_size=kb, generator=generator)
        if sub.dim <= exact_below:
            trace = hessian_trace(sub, exact=True)
        else:
            trace = hessian_trace(sub, num_probes=num_probes, generator=generator)
        out[key] = BlockCurvature(tuple(names), sub.dim, top, trace, low)
    return out


# ----------------------------------------------------------------------------- conditioning


@dataclass(frozen=True)
class ConditionEstimate:
    """Conditioning of ``H``; see :func:`condition_number` for the definitions.

    Attributes:
      lambda_max, lambda_min: extreme (algebraic) eigenvalues.
      condition: ``lambda_max / lambda_min`` if ``H`` is positive definite, else ``inf``.
      smallest_positive: smallest eigenvalue above the zero threshold (``nan`` if none).
      condition_positive: ``lambda_max / smallest_positive``, the conditioning of the
        positive-curvature subspace (``nan`` if ``lambda_max`` is not positive).
      negative_ratio: ``|lambda_min| / lambda_max`` when ``lambda_min < 0``, else 0.
      negative_mass: fraction of the spectrum below ``-threshold`` (quadrature weights).
      threshold: eigenvalues with ``|lambda| <= threshold`` count as zero.
      exact: the Krylov space covered the spectrum, so the interior numbers are exact too.
      num_hvps: HVPs used.
    """

    lambda_max: float
    lambda_min: float
    condition: float
    smallest_positive: float
    condition_positive: float
    negative_ratio: float
    negative_mass: float
    threshold: float
    exact: bool
    num_hvps: int


def condition_number(
    op: HessianOperator,
    *,
    num_steps: int | None = None,
    rel_zero: float = 1e-6,
    generator: torch.Generator | int | None = 0,
) -> ConditionEstimate:
    """Condition number of ``H``, with what it means when ``H`` is indefinite.

    For a positive definite ``H``, ``kappa = lambda_max / lambda_min`` sets gradient descent's
    rate (``(kappa - 1)/(kappa + 1)`` per step at the best step size). Away from a minimum the
    Hessian of a network is indefinite and often singular, where ``max|lambda| / min|lambda|``
    is infinite or meaningless. This function then reports (``condition = inf``):

    - ``condition_positive = lambda_max / lambda_+``, ``lambda_+`` the smallest eigenvalue
      above ``threshold = rel_zero * max|lambda|``: the conditioning within the
      positive-curvature subspace, which is what a descent method faces there;
    - ``negative_ratio = |lambda_min| / lambda_max`` and ``negative_mass``, the fraction of
      eigenvalues below ``-threshold``: how much the point is a saddle.

    One Lanczos run of ``num_steps`` (default ``min(dim, 100)``) from a Gaussian start gives
    the extremes accurately. ``lambda_+`` is interior: it and ``negative_mass`` (the weight of
    the negative Ritz values, an SLQ estimate from one probe) are exact only when the run
    covers the spectrum (``exact``: ``num_steps = dim``, or an exhausted Krylov space); else
    ``lambda_+`` is an upper bound-ish estimate and the mass a one-probe estimate.

    .. warning::
       Near-zero eigenvalues decide ``lambda_+``: ``rel_zero`` should sit above the HVP's
       rounding (``~1e-6`` in float32, lower in float64).
    """
    owner = "condition_number"
    rel_zero = _positive_float(rel_zero, "rel_zero", owner)
    steps = _positive_int(
        num_steps if num_steps is not None else min(op.dim, 100), "num_steps", owner
    )
    steps = min(steps, op.dim)
    gen = _generator(generator)
    start = torch.randn(op.dim, generator=gen, dtype=op.dtype).to(op.device)
    res = lanczos(op, steps, start=start, restart=True, generator=gen)
    theta, s = torch.linalg.eigh(res.t)
    # Restarted blocks are not the Krylov space of ``start``: its weights only sum to < 1
    # then; renormalize so the mass is a fraction of what the basis saw.
    w = s[0].square()
    w = w / w.sum()
    lam_max, lam_min = float(theta[-1]), float(theta[0])
    threshold = rel_zero * max(abs(lam_max), abs(lam_min))
    positive = theta[theta > threshold]
    smallest_pos = float(positive.min()) if positive.numel() else math.nan
    condition = lam_max / lam_min if lam_min > threshold else math.inf
    cond_pos = lam_max / smallest_pos if positive.numel() else math.nan
    neg_ratio = abs(lam_min) / lam_max if lam_min < -threshold and lam_max > 0 else 0.0
    if lam_min < -threshold and lam_max <= 0:
        neg_ratio = math.inf
    exact = res.exhausted or res.basis.shape[1] >= op.dim
    if exact and res.basis.shape[1] >= op.dim:
        neg_mass = float((theta < -threshold).sum()) / op.dim  # all eigenvalues in hand
    else:
        neg_mass = float(w[theta < -threshold].sum())
    return ConditionEstimate(lam_max, lam_min, condition, smallest_pos, cond_pos, neg_ratio,
                             neg_mass, threshold, exact, res.num_hvps)  # fmt: skip


# ----------------------------------------------------------------------------- saddles

Kind = Literal["minimum", "saddle", "maximum", "flat", "not_critical"]


@dataclass(frozen=True)
class SaddleReport:
    """What the point looks like to second order; see :func:`saddle_report`.

    Attributes:
      kind: ``"minimum"``, ``"saddle"``, ``"maximum"``, ``"flat"`` or ``"not_critical"``.
      loss: the loss at the point.
      grad_norm: ``||nabla L||``.
      top: the largest eigenvalues, largest first.
      bottom: the smallest eigenvalues, most negative first.
      escape_direction: unit eigenvector of the most negative eigenvalue (flat ``(dim,)``;
        ``-escape_direction`` descends as well), or None when there is no negative curvature.
      escape: ``escape_direction`` in the user's view (parameter dict, or ``x``'s shape).
      predicted_decrease: second-order decrease ``|lambda_min| / 2 * t^2`` per unit ``t^2``
        along the escape direction (0 without negative curvature).
      num_hvps: HVPs used.
    """

    kind: Kind
    loss: float
    grad_norm: float
    top: Tensor
    bottom: Tensor
    escape_direction: Tensor | None
    escape: Any
    predicted_decrease: float
    num_hvps: int

    def __str__(self) -> str:
        return (
            f"{self.kind}: loss {self.loss:.6g}, |grad| {self.grad_norm:.3g}, "
            f"lambda_max {float(self.top[0]):.6g}, lambda_min {float(self.bottom[0]):.6g} "
            f"({self.num_hvps} HVPs)"
        )


def saddle_report(
    model_or_f: nn.Module | Callable[[Tensor], Tensor] | HessianOperator,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    data: Any = None,
    *,
    x: Tensor | None = None,
    k: int = 1,
    grad_tol: float = 1e-3,
    curvature_tol: float = 1e-6,
    rel_tol: float = 1e-3,
    tol: float = 1e-6,
    max_hvps: int | None = None,
    block_size: int = 1,
    dtype: torch.dtype | None = None,
    generator: torch.Generator | int | None = 0,
) -> SaddleReport:
    """Classify the current point as a minimum, saddle, maximum, flat region, or no critical point.

    Takes a module + ``loss_fn`` + ``data`` (as :meth:`HessianOperator.from_module`), a
    function ``f`` with the point ``x=`` (e.g. ``saddle_report(make_problem("saddle"),
    x=torch.zeros(2))``), or a ready :class:`HessianOperator`. With ``lambda_max``,
    ``lambda_min`` the extreme eigenvalues (Lanczos, ``k`` at each end) and the threshold
    ``eps = max(curvature_tol, rel_tol * max|lambda|)``:

    ==================  ==========================================================
    ``not_critical``    ``||grad|| > grad_tol``: the slope dominates, curvature is secondary
    ``flat``            ``max|lambda| <= curvature_tol``: second order sees nothing (a
                        degenerate saddle, plateau or minimum: e.g. a deep linear net at 0
                        with 3+ layers, the monkey saddle)
    ``saddle``          ``lambda_min < -eps < eps < lambda_max``: a direction of descent
    ``maximum``         ``lambda_max < -eps``
    ``minimum``         ``lambda_min >= -eps``: no negative curvature beyond rounding
                        (a positive semi-definite Hessian: a minimum or a flat valley)
    ==================  ==========================================================

    ``rel_tol`` keeps the HVP's rounding (``~1e-7 ||H||`` in float32) from reading as
    negative curvature; ``grad_tol`` is absolute, so scale it to your loss. The escape
    direction is the eigenvector of ``lambda_min``: a step ``t`` along it (either sign) from a
    critical point lowers the loss by about ``|lambda_min| t^2 / 2``.

    Reference: Y. Dauphin et al., "Identifying and attacking the saddle point problem in
    high-dimensional non-convex optimization", NeurIPS 2014; R. Ge, F. Huang, C. Jin, Y. Yuan,
    "Escaping from saddle points", COLT 2015 (strict saddles).
    """
    owner = "saddle_report"
    grad_tol = _positive_float(grad_tol, "grad_tol", owner)
    curvature_tol = _positive_float(curvature_tol, "curvature_tol", owner)
    rel_tol = _positive_float(rel_tol, "rel_tol", owner)
    if isinstance(model_or_f, HessianOperator):
        op = model_or_f
    elif isinstance(model_or_f, nn.Module):
        op = hessian_operator(model_or_f, loss_fn, data, dtype=dtype)
    else:
        op = hessian_operator(model_or_f, x=x, dtype=dtype)
    before = op.num_hvps
    loss, gradient = op.loss_and_gradient()
    k = min(_positive_int(k, "k", owner), op.dim)
    kw = {"tol": tol, "max_hvps": max_hvps, "block_size": block_size, "generator": generator}
    top = top_eigenvalues(op, k, **kw)
    bottom = bottom_eigenvalues(op, k, **kw)
    lam_max, lam_min = float(top.eigenvalues[0]), float(bottom.eigenvalues[0])
    scale = max(abs(lam_max), abs(lam_min))
    eps = max(curvature_tol, rel_tol * scale)
    grad_norm = float(gradient.norm())
    kind: Kind
    if grad_norm > grad_tol:
        kind = "not_critical"
    elif scale <= curvature_tol:
        kind = "flat"
    elif lam_max < -eps:
        kind = "maximum"
    elif lam_min < -eps:
        kind = "saddle"
    else:
        kind = "minimum"
    direction = None
    if lam_min < -eps:
        direction = bottom.eigenvectors[:, 0]
        # Fix the sign (largest component positive) so reports are reproducible.
        direction = direction * torch.sign(direction[direction.abs().argmax()])
    return SaddleReport(
        kind=kind,
        loss=float(loss),
        grad_norm=grad_norm,
        top=top.eigenvalues,
        bottom=bottom.eigenvalues,
        escape_direction=direction,
        escape=None if direction is None else op.unflatten(direction),
        predicted_decrease=abs(lam_min) / 2 if direction is not None else 0.0,
        num_hvps=op.num_hvps - before,
    )
