"""Loss landscapes: 1-D interpolation, 2-D filter-normalized surfaces, trajectory projection.

Every grid point is a parameter set ``theta + sum_k c_k d_k`` (a base point plus a linear
combination of directions). The points are evaluated *batched*: a chunk of coefficient rows
is turned into a chunk of parameter sets inside :func:`torch.func.vmap` and run through the
model with :func:`torch.func.functional_call` in one forward pass, in eval mode — not one
model at a time (DESIGN principle 5). The exception is a plain stack of Linear layers and
activations (an MLP), where the work the points share is done once (the first layer's
products) and the rest runs point by point, each point's activation in cache: on a CPU that
beat every batched form measured (see :func:`evaluate_points`).

Three views share that kernel:

- :func:`interpolate` — the loss along ``(1 - alpha) theta_a + alpha theta_b`` (Goodfellow,
  Vinyals & Saxe, "Qualitatively characterizing neural network optimization problems", 2015).
- :func:`surface` — the loss on the plane ``theta + alpha d1 + beta d2`` spanned by two
  filter-normalized random directions (Li, Xu, Taylor, Studer & Goldstein, "Visualizing the
  Loss Landscape of Neural Nets", 2018), or by any two directions given.
- :func:`trajectory` — a training path projected on the top two PCA directions of
  ``checkpoint - final`` (Li et al. 2018, section 7), with the surface on those axes.

Results are small dataclasses of numpy arrays (:class:`Interpolation`, :class:`Surface`) with
``save``/``load`` to ``.npz`` so the plots in :mod:`ravine.report.landscape` can be redrawn.

Example:
    >>> import torch
    >>> import torch.nn.functional as F
    >>> from ravine.problems import PRESETS, build_model
    >>> model = build_model(PRESETS["digits_mlp"], (64,), 10, generator=0)
    >>> x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
    >>> s = surface(model, F.cross_entropy, {"train": (x, y)}, resolution=5, generator=0)
    >>> s.loss["train"].shape
    (5, 5)
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from ravine.folders import atomic_write, read_verified

__all__ = [
    "PCA",
    "Interpolation",
    "Surface",
    "evaluate_points",
    "filter_normalize",
    "interpolate",
    "pca_directions",
    "random_directions",
    "surface",
    "trajectory",
]

LossFn = Callable[[Tensor, Tensor], Tensor]
Params = dict[str, Tensor]
Splits = Mapping[str, tuple[Tensor, Tensor]]
Ignore = Literal["biasbn", "none"]
_IGNORE = ("biasbn", "none")


# ----------------------------------------------------------------------------- results


@dataclass
class Interpolation:
    """Loss (and accuracy) along the line ``theta(alpha) = (1 - alpha) theta_a + alpha theta_b``.

    Attributes:
        alphas: ``(n,)`` interpolation coefficients; 0 is ``theta_a``, 1 is ``theta_b``.
        loss: split name -> ``(n,)`` mean loss at each alpha.
        accuracy: split name -> ``(n,)`` top-1 accuracy (only for classification outputs).
    """

    alphas: np.ndarray
    loss: dict[str, np.ndarray]
    accuracy: dict[str, np.ndarray] = field(default_factory=dict)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the arrays to ``path`` (``.npz``, atomically); read back with :meth:`load`."""
        return _save_npz(path, {"alphas": self.alphas, **_flatten(self.loss, self.accuracy)})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Interpolation:
        arrays = _load_npz(path)
        loss, accuracy = _unflatten(arrays)
        return cls(alphas=arrays["alphas"], loss=loss, accuracy=accuracy)


@dataclass
class Surface:
    """Loss (and accuracy) on the plane ``theta + alpha d1 + beta d2``.

    Attributes:
        alphas: ``(nx,)`` coefficients along ``d1`` (the x axis).
        betas: ``(ny,)`` coefficients along ``d2`` (the y axis).
        loss: split name -> ``(ny, nx)`` mean loss; ``loss[s][j, i]`` is at
            ``(alphas[i], betas[j])`` (the layout ``contour(alphas, betas, loss)`` expects).
        accuracy: split name -> ``(ny, nx)`` top-1 accuracy (classification outputs only).
        path: ``(T, 2)`` coordinates of a projected training path, or ``(0, 2)``.
        explained_variance: ``(2,)`` explained-variance ratios of the axes when they are PCA
            directions, else ``(0,)``.
    """

    alphas: np.ndarray
    betas: np.ndarray
    loss: dict[str, np.ndarray]
    accuracy: dict[str, np.ndarray] = field(default_factory=dict)
    path: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    explained_variance: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the arrays to ``path`` (``.npz``, atomically); read back with :meth:`load`."""
        arrays = {
            "alphas": self.alphas,
            "betas": self.betas,
            "path": self.path,
            "explained_variance": self.explained_variance,
        }
        return _save_npz(path, {**arrays, **_flatten(self.loss, self.accuracy)})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Surface:
        arrays = _load_npz(path)
        loss, accuracy = _unflatten(arrays)
        return cls(
            alphas=arrays["alphas"],
            betas=arrays["betas"],
            loss=loss,
            accuracy=accuracy,
            path=arrays["path"],
            explained_variance=arrays["explained_variance"],
        )


def _flatten(loss: Mapping[str, np.ndarray], accuracy: Mapping[str, np.ndarray]) -> dict:
    out = {f"loss/{k}": v for k, v in loss.items()}
    out.update({f"accuracy/{k}": v for k, v in accuracy.items()})
    return out


def _unflatten(arrays: Mapping[str, np.ndarray]) -> tuple[dict, dict]:
    loss = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("loss/")}
    acc = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("accuracy/")}
    return loss, acc


def _load_npz(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    # Checksum checked (a damaged file is refused by name), and no pickled objects.
    with np.load(io.BytesIO(read_verified(path)), allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _save_npz(path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray]) -> Path:
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    return atomic_write(path, lambda handle: np.savez(handle, **arrays))


# ----------------------------------------------------------------------------- directions


def _params(model: nn.Module) -> Params:
    return {k: p.detach() for k, p in model.named_parameters()}


def _check_ignore(ignore: object) -> None:
    if ignore not in _IGNORE:
        raise ValueError(f"ignore must be one of {_IGNORE}; got {ignore!r}")


def filter_normalize(
    direction: Mapping[str, Tensor], params: Mapping[str, Tensor], *, ignore: Ignore = "biasbn"
) -> Params:
    """Rescale each filter of ``direction`` to the norm of the same filter of ``params``.

    A *filter* is a slice along dim 0 of a parameter with two or more dimensions: a row of a
    ``Linear`` weight, an output channel of a conv kernel. After normalization
    ``||d[name][i]|| == ||params[name][i]||`` for every filter ``i`` (Li et al. 2018, eq. 1),
    so a step of 1 along the direction has the scale of the weights it moves, whatever the
    layer's width or the scale invariance batch norm introduces.

    Parameters with at most one dimension — biases and batch-norm weights/biases — are
    handled by ``ignore``:

    - ``"biasbn"`` (default, as in the paper's experiments): their direction entries are set
      to zero, so the surface does not move biases or batch-norm affine parameters.
    - ``"none"``: each such vector is normalized as one filter (its norm set to the
      parameter's norm). (The paper's code instead copies the parameter itself.)

    Buffers (batch-norm running statistics) are never directions: every grid point of a
    surface uses the base model's buffers, evaluated in eval mode.

    Args:
        direction: name -> tensor, the same names and shapes as ``params``.
        params: the weights the direction is anchored at.
        ignore: ``"biasbn"`` or ``"none"``, see above.

    Returns:
        A new dict; ``direction`` is not modified.
    """
    _check_ignore(ignore)
    out: Params = {}
    for name, w in params.items():
        d = direction[name]
        if d.shape != w.shape:
            raise ValueError(
                f"direction[{name!r}] has shape {tuple(d.shape)}, want {tuple(w.shape)}"
            )
        if w.dim() <= 1:
            if ignore == "biasbn":
                out[name] = torch.zeros_like(d)
            else:
                out[name] = d * (w.norm() / (d.norm() + 1e-10))
            continue
        dims = tuple(range(1, w.dim()))
        w_norm = torch.linalg.vector_norm(w, dim=dims, keepdim=True)
        d_norm = torch.linalg.vector_norm(d, dim=dims, keepdim=True)
        out[name] = d * (w_norm / (d_norm + 1e-10))
    return out


def random_directions(
    model: nn.Module | Mapping[str, Tensor],
    *,
    ignore: Ignore = "biasbn",
    generator: torch.Generator | int | None = None,
) -> tuple[Params, Params]:
    """Two Gaussian random directions, filter-normalized to ``model``'s weights.

    See :func:`filter_normalize` for ``ignore``. ``generator`` (a seed or a
    :class:`torch.Generator`) makes the directions reproducible.
    """
    _check_ignore(ignore)
    params = _params(model) if isinstance(model, nn.Module) else dict(model)
    gen = _generator(generator)
    dirs = []
    for _ in range(2):
        raw = {
            k: torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device)
            for k, p in params.items()
        }
        dirs.append(filter_normalize(raw, params, ignore=ignore))
    return dirs[0], dirs[1]


def _generator(generator: torch.Generator | int | None) -> torch.Generator:
    if isinstance(generator, torch.Generator):
        return generator
    gen = torch.Generator()
    if generator is None:
        gen.seed()
    else:
        gen.manual_seed(int(generator))
    return gen


# ----------------------------------------------------------------------------- the kernel


def _first_linear(model: nn.Module) -> tuple[str, nn.Linear, list[tuple[str, nn.Module]]] | None:
    """If ``model`` is a (nested) Sequential of ``Flatten*, Linear, rest...``, split it."""
    if not isinstance(model, nn.Sequential):
        return None
    leaves: list[tuple[str, nn.Module]] = []

    def walk(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            full = f"{prefix}{name}"
            if isinstance(child, nn.Sequential):
                walk(child, full + ".")
            else:
                leaves.append((full, child))

    walk(model, "")
    i = 0
    while i < len(leaves) and isinstance(leaves[i][1], nn.Flatten):
        i += 1
    if i == len(leaves) or type(leaves[i][1]) is not nn.Linear:
        return None
    # A leading Flatten must be (1, -1): a no-op on the 2-D inputs this path takes.
    if any(m.start_dim != 1 or m.end_dim != -1 for _, m in leaves[:i]):
        return None
    name, linear = leaves[i]
    return name, linear, leaves[i + 1 :]


def _sub(mapping: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    n = len(prefix) + 1
    return {k[n:]: v for k, v in mapping.items() if k.startswith(prefix + ".")}


@torch.no_grad()
def evaluate_points(
    model: nn.Module,
    loss_fn: LossFn,
    x: Tensor,
    y: Tensor,
    base: Mapping[str, Tensor],
    directions: Sequence[Mapping[str, Tensor]],
    coeffs: Tensor,
    *,
    buffers: Mapping[str, Tensor] | None = None,
    chunk_size: int = 32,
    fold_first_linear: bool | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Loss and accuracy of ``model`` at ``base + sum_k coeffs[n, k] directions[k]``, batched.

    Chunks of ``chunk_size`` points are evaluated in one vectorized forward pass
    (:func:`torch.func.vmap` over :func:`torch.func.functional_call`) in eval mode; the
    model's own parameters, buffers and mode are left as they were.

    Args:
        model: the architecture (its parameters are not read, except names and shapes).
        loss_fn: ``loss_fn(out, y)`` -> mean loss, e.g. ``F.cross_entropy``.
        x, y: the data (all of it is one batch).
        base: parameter name -> tensor, the origin.
        directions: ``k`` dicts like ``base``.
        coeffs: ``(N, k)`` coefficients.
        buffers: buffers to use (default: the model's own).
        chunk_size: grid points per forward pass (memory ~ chunk_size x activations).
        fold_first_linear: when the model starts with a ``Linear`` layer (a ``Sequential``,
            perhaps after ``Flatten``), compute its products once —
            ``x (W + sum c_k D_k)^T = x W^T + sum c_k x D_k^T`` — instead of per point.
            ``None`` (default): fold whenever the model allows it. A stack of Linear layers
            and elementwise activations then runs without vmap, each point's later layers
            one ``addmm`` each on an activation that stays in cache: on this CPU (digits MLP
            64-128-128-10, 51x51 grid) faster than loss-landscapes' loop and than the general
            vmap path at 1 and 2 threads (README's table from ``benchmarks/landscape.py``).

    Returns:
        ``(loss, accuracy)``, each ``(N,)``; accuracy is ``None`` unless the output is
        ``(batch, classes)`` with ``classes > 1`` and ``y`` holds integer labels.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1; got {chunk_size}")
    coeffs = torch.as_tensor(coeffs)
    if coeffs.dim() != 2 or coeffs.shape[1] != len(directions):
        raise ValueError(
            f"coeffs must be (N, {len(directions)}) for {len(directions)} directions; "
            f"got {tuple(coeffs.shape)}"
        )
    base = dict(base)
    names = list(base)
    buffers = dict(model.named_buffers()) if buffers is None else dict(buffers)
    dirs = [{k: d[k] for k in names} for d in directions]
    split = _first_linear(model) if fold_first_linear is not False else None
    if fold_first_linear is True and split is None:
        raise ValueError("fold_first_linear=True needs a Sequential model starting with Linear")
    if split is not None and x.dim() != 2:
        split = None
    classify = y.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8)

    layers = _plain_mlp(split) if split is not None else None
    if layers is not None:
        was_training = model.training
        model.eval()  # Dropout is the identity only in eval mode
        try:
            return _mlp_points(
                model, loss_fn, x, y, base, dirs, coeffs, layers, chunk_size, classify
            )
        finally:
            model.train(was_training)
    if split is not None:
        lname = split[0]
        wk, bk = f"{lname}.weight", f"{lname}.bias"
        has_bias = bk in base

        def first(p: Mapping[str, Tensor]) -> Tensor:
            return torch.nn.functional.linear(x, p[wk], p[bk] if has_bias else None)

        h0 = first(base)  # (n, width)
        hk = torch.stack([first(d) for d in dirs]) if dirs else h0.new_zeros((0, *h0.shape))
        tail = split[2]
        rest = [k for k in names if k not in (wk, bk)]

        def point(c: Tensor) -> Tensor:
            h = h0 + torch.tensordot(c, hk, dims=1)
            p = {k: base[k] + sum(c[j] * dirs[j][k] for j in range(len(dirs))) for k in rest}
            for mname, module in tail:
                h = torch.func.functional_call(
                    module, (_sub(p, mname), _sub(buffers, mname)), (h,), strict=True
                )
            return h

    else:

        def point(c: Tensor) -> Tensor:
            p = {k: base[k] + sum(c[j] * dirs[j][k] for j in range(len(dirs))) for k in names}
            return torch.func.functional_call(model, (p, buffers), (x,), strict=True)

    def score(c: Tensor) -> tuple[Tensor, Tensor]:
        out = point(c)
        loss = loss_fn(out, y)
        if classify and out.dim() == 2 and out.shape[1] > 1:
            acc = (out.argmax(dim=1) == y).float().mean()
        else:
            acc = loss.new_full((), float("nan"))
        return loss, acc

    was_training = model.training
    model.eval()
    try:
        batched = torch.func.vmap(score)
        coeffs = coeffs.to(dtype=next(iter(base.values())).dtype)
        losses, accs = [], []
        for start in range(0, coeffs.shape[0], chunk_size):
            loss, acc = batched(coeffs[start : start + chunk_size])
            losses.append(loss)
            accs.append(acc)
    finally:
        model.train(was_training)
    loss = torch.cat(losses) if losses else coeffs.new_zeros(0)
    acc = torch.cat(accs) if accs else coeffs.new_zeros(0)
    if acc.numel() and torch.isnan(acc).all():
        return loss, None
    return loss, acc


# Elementwise modules that act on each point's activations alone (eval mode: Dropout is the
# identity), so a stack of them and Linear layers can run as batched matrix products.
_ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.LeakyReLU, nn.ELU, nn.SiLU,
                nn.Softplus, nn.Identity, nn.Dropout)  # fmt: skip


def _plain_mlp(split: tuple[str, nn.Linear, list[tuple[str, nn.Module]]]):
    """``[(name, module), ...]`` from the first Linear on, if every later leaf is a Linear or
    an elementwise activation; else None (the general vmap path handles it)."""
    name, linear, tail = split
    for _, module in tail:
        if type(module) is not nn.Linear and not isinstance(module, _ELEMENTWISE):
            return None
    return [(name, linear), *tail]


def _mlp_points(model, loss_fn, x, y, base, dirs, coeffs, layers, chunk_size, classify):
    """:func:`evaluate_points` for a Linear/activation stack, without vmap. The first layer's
    products are computed once (``x W^T``, ``x D_k^T``), so a point's first activation is one
    ``addmm`` of them; each later Linear's weights ``W + sum_k c_k D_k`` for a chunk of points
    come from one small matrix product; then the points run one by one, each layer one
    ``addmm`` on a ``(n, width)`` activation, as loss-landscapes' loop does.

    Point by point, not as one ``(P, n, width)`` batch through ``baddbmm``: the batch (29 MB
    for 32 points of the digits MLP) falls out of cache between layers, and its batched
    products were 10-35% slower than the loop at 1 and 2 threads, while a point's activation
    (0.9 MB) stays in cache and a plain matrix product uses both threads well."""
    dtype = next(iter(base.values())).dtype
    coeffs = coeffs.to(dtype)
    k = len(dirs)
    n = x.shape[0]

    def stacked(key: str) -> tuple[Tensor, Tensor]:  # (numel,), (k, numel)
        b = base[key].reshape(-1)
        d = torch.stack([dd[key].reshape(-1) for dd in dirs]) if k else b.new_zeros(0, b.numel())
        return b, d

    plans = []
    for i, (name, module) in enumerate(layers):
        if type(module) is nn.Linear:
            w = stacked(f"{name}.weight")
            bias = stacked(f"{name}.bias") if f"{name}.bias" in base else None
            plans.append(("linear", module.out_features, module.in_features, w, bias, i == 0))
        else:
            plans.append(("act", module))
    _, width0, _, (w0, dw0), bias0, _ = plans[0]
    first = torch.nn.functional.linear
    h0 = first(x, w0.view(width0, -1), None if bias0 is None else bias0[0])  # (n, width)
    h0_flat = h0.reshape(1, -1)  # (1, n width)
    if k:
        hk = torch.stack([first(x, d.view(width0, -1)) for d in dw0])  # (k, n, width)
        if bias0 is not None:
            hk = hk + bias0[1][:, None, :]  # each direction moves the bias too
        hk_flat = hk.reshape(k, -1)

    def per_point(c: Tensor, value: Tensor, directions: Tensor) -> Tensor:
        # (P, numel): a chunk's values of one parameter, base + c @ directions
        return torch.addmm(value[None], c, directions) if k else value[None].expand(len(c), -1)

    losses, accs = [], []
    for start in range(0, coeffs.shape[0], chunk_size):
        c = coeffs[start : start + chunk_size]  # (P, k)
        steps = []  # ("act", module) or ("linear", weights (P, out, in), biases (P, out) | None)
        for plan in plans[1:]:
            if plan[0] == "act":
                steps.append(plan)
                continue
            _, out_f, in_f, w, bias, _ = plan
            weights = per_point(c, *w).view(-1, out_f, in_f)
            steps.append(("linear", weights, None if bias is None else per_point(c, *bias)))
        for j in range(c.shape[0]):
            h = torch.addmm(h0_flat, c[j : j + 1], hk_flat) if k else h0_flat.clone()
            h = h.view(n, width0)
            for kind, *step in steps:
                if kind == "act":
                    # h is this point's own temporary: ReLU in place saves a pass over memory.
                    h = torch.relu_(h) if type(step[0]) is nn.ReLU else step[0](h)
                elif step[1] is None:
                    h = h @ step[0][j].T
                else:
                    h = torch.addmm(step[1][j], h, step[0][j].T)
            losses.append(loss_fn(h, y))
            if classify and h.shape[-1] > 1:
                accs.append((h.argmax(dim=-1) == y).float().mean())  # as the vmap path
    loss = torch.stack(losses) if losses else coeffs.new_zeros(0)
    if not accs:
        return loss, None
    return loss, torch.stack(accs)


# ----------------------------------------------------------------------------- data


def _splits(data: object, n_examples: int | None) -> dict[str, tuple[Tensor, Tensor]]:
    if hasattr(data, "x_train") and hasattr(data, "x_test"):  # a ravine Dataset
        found = {"train": (data.x_train, data.y_train), "test": (data.x_test, data.y_test)}
    elif isinstance(data, Mapping):
        found = dict(data)
    elif isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], Tensor):
        found = {"data": (data[0], data[1])}
    else:
        raise TypeError(
            "data must be a Dataset, a mapping split -> (x, y), or an (x, y) pair; "
            f"got {type(data).__name__}"
        )
    if n_examples is not None:
        if n_examples < 1:
            raise ValueError(f"n_examples must be >= 1; got {n_examples}")
        found = {k: (x[:n_examples], y[:n_examples]) for k, (x, y) in found.items()}
    return found


# ----------------------------------------------------------------------------- views


def interpolate(
    model: nn.Module,
    start: nn.Module | Mapping[str, Tensor],
    end: nn.Module | Mapping[str, Tensor],
    loss_fn: LossFn,
    data: object,
    *,
    alphas: Sequence[float] | Tensor | None = None,
    n_examples: int | None = None,
    buffers: Literal["start", "end", "interpolate"] = "interpolate",
    chunk_size: int = 32,
) -> Interpolation:
    """Loss and accuracy along ``(1 - alpha) start + alpha end`` (Goodfellow et al. 2015).

    Typical uses: initialization -> solution (is there a monotone descent path?), or two
    solutions (is there a barrier between them?).

    Args:
        model: the architecture (a model of the same shape as ``start`` and ``end``).
        start, end: models or parameter dicts (state dicts are fine: only the parameter
            names are read; buffers, if present, feed ``buffers``).
        loss_fn: ``loss_fn(out, y)`` -> mean loss.
        data: a ravine ``Dataset`` (train and test splits), a mapping split -> ``(x, y)``,
            or one ``(x, y)`` pair.
        alphas: the coefficients; default 61 points over ``[-0.5, 1.5]``.
        n_examples: evaluate on the first ``n_examples`` of each split (the data budget).
        buffers: floating-point buffers (batch-norm running statistics) at each alpha:
            the ``start``'s, the ``end``'s, or linearly interpolated like the parameters.
        chunk_size: points per vectorized forward pass.
    """
    if buffers not in ("start", "end", "interpolate"):
        raise ValueError(f"buffers must be 'start', 'end' or 'interpolate'; got {buffers!r}")
    alphas_t = (
        torch.linspace(-0.5, 1.5, 61, dtype=torch.float64)
        if alphas is None
        else torch.as_tensor(alphas, dtype=torch.float64).reshape(-1)
    )
    names = [k for k, _ in model.named_parameters()]
    a_state = start.state_dict() if isinstance(start, nn.Module) else dict(start)
    b_state = end.state_dict() if isinstance(end, nn.Module) else dict(end)
    theta_a = {k: a_state[k].detach() for k in names}
    d = {k: b_state[k].detach() - theta_a[k] for k in names}
    own = dict(model.named_buffers())
    buf_a = {k: a_state.get(k, v) for k, v in own.items()}
    buf_b = {k: b_state.get(k, v) for k, v in own.items()}
    loss: dict[str, np.ndarray] = {}
    accuracy: dict[str, np.ndarray] = {}
    for split, (x, y) in _splits(data, n_examples).items():
        if buffers == "interpolate" and any(v.is_floating_point() for v in buf_a.values()):
            # Buffers differ per alpha: evaluate one alpha at a time through the same kernel.
            ls, acs = [], []
            for a in alphas_t.tolist():
                bufs = {
                    k: (1 - a) * v + a * buf_b[k] if v.is_floating_point() else v
                    for k, v in buf_a.items()
                }
                lo, ac = evaluate_points(
                    model, loss_fn, x, y, theta_a, [d], torch.tensor([[a]]), buffers=bufs
                )
                ls.append(lo)
                acs.append(ac)
            lo = torch.cat(ls)
            ac = None if acs[0] is None else torch.cat(acs)
        else:
            bufs = buf_b if buffers == "end" else buf_a
            lo, ac = evaluate_points(
                model,
                loss_fn,
                x,
                y,
                theta_a,
                [d],
                alphas_t[:, None],
                buffers=bufs,
                chunk_size=chunk_size,
            )
        loss[split] = lo.double().numpy()
        if ac is not None:
            accuracy[split] = ac.double().numpy()
    return Interpolation(alphas=alphas_t.numpy(), loss=loss, accuracy=accuracy)


def _grid(
    model: nn.Module,
    loss_fn: LossFn,
    splits: Mapping[str, tuple[Tensor, Tensor]],
    base: Params,
    d1: Params,
    d2: Params,
    alphas: Tensor,
    betas: Tensor,
    chunk_size: int,
    fold_first_linear: bool | None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    bb, aa = torch.meshgrid(betas, alphas, indexing="ij")  # (ny, nx)
    coeffs = torch.stack([aa.reshape(-1), bb.reshape(-1)], dim=1)
    loss, accuracy = {}, {}
    for split, (x, y) in splits.items():
        lo, ac = evaluate_points(
            model,
            loss_fn,
            x,
            y,
            base,
            [d1, d2],
            coeffs,
            chunk_size=chunk_size,
            fold_first_linear=fold_first_linear,
        )
        loss[split] = lo.double().reshape(aa.shape).numpy()
        if ac is not None:
            accuracy[split] = ac.double().reshape(aa.shape).numpy()
    return loss, accuracy


def _axis(span: tuple[float, float], resolution: int, arg: str) -> Tensor:
    if resolution < 2:
        raise ValueError(f"{arg} must be >= 2; got {resolution}")
    low, high = float(span[0]), float(span[1])
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"span must be finite (low, high) with low < high; got {span}")
    return torch.linspace(low, high, resolution, dtype=torch.float64)


def surface(
    model: nn.Module,
    loss_fn: LossFn,
    data: object,
    *,
    directions: tuple[Mapping[str, Tensor], Mapping[str, Tensor]] | None = None,
    resolution: int | tuple[int, int] = 25,
    span: tuple[float, float] = (-1.0, 1.0),
    n_examples: int | None = None,
    ignore: Ignore = "biasbn",
    generator: torch.Generator | int | None = None,
    chunk_size: int = 32,
    fold_first_linear: bool | None = None,
) -> Surface:
    """Loss on the plane ``theta + alpha d1 + beta d2`` around ``model``'s parameters.

    With ``directions=None`` the directions are Gaussian and filter-normalized
    (:func:`random_directions`, Li et al. 2018); pass the same ``directions`` (or the same
    ``generator`` seed) to compare surfaces, or give ``data`` several splits (e.g. a ravine
    ``Dataset``: train and test) to get each on the same axes.

    Args:
        model: the trained model (the origin); evaluated in eval mode, buffers as they are.
        loss_fn: ``loss_fn(out, y)`` -> mean loss.
        data: a ``Dataset``, a mapping split -> ``(x, y)``, or one ``(x, y)`` pair.
        directions: two direction dicts; default random filter-normalized ones.
        resolution: points per axis, or ``(nx, ny)``.
        span: ``(low, high)`` of both coefficients.
        n_examples: evaluate on the first ``n_examples`` of each split (the data budget).
        ignore: bias/batch-norm handling of random directions, see :func:`filter_normalize`.
        generator: seed or generator for the random directions.
        chunk_size: grid points per vectorized forward pass.
        fold_first_linear: see :func:`evaluate_points`.
    """
    nx, ny = (resolution, resolution) if isinstance(resolution, int) else resolution
    alphas, betas = _axis(span, nx, "resolution"), _axis(span, ny, "resolution")
    base = _params(model)
    if directions is None:
        d1, d2 = random_directions(base, ignore=ignore, generator=generator)
    else:
        d1, d2 = dict(directions[0]), dict(directions[1])
    loss, accuracy = _grid(
        model,
        loss_fn,
        _splits(data, n_examples),
        base,
        d1,
        d2,
        alphas,
        betas,
        chunk_size,
        fold_first_linear,
    )
    return Surface(alphas=alphas.numpy(), betas=betas.numpy(), loss=loss, accuracy=accuracy)


@dataclass
class PCA:
    """Top-2 PCA directions of a training path (see :func:`pca_directions`).

    Attributes:
        directions: ``(2, P)`` orthonormal directions in flat parameter space.
        coords: ``(T, 2)`` the checkpoints' coordinates ``(theta_t - final) . directions``.
        explained_variance: ``(2,)`` fraction of the path's variance along each direction.
    """

    directions: Tensor
    coords: Tensor
    explained_variance: Tensor


def _flat(checkpoint: Mapping[str, Tensor] | Tensor, names: Sequence[str] | None) -> Tensor:
    if isinstance(checkpoint, Tensor):
        return checkpoint.detach().reshape(-1)
    if names is None:
        raise TypeError("state-dict checkpoints need the model to name the parameters")
    return torch.cat([checkpoint[k].detach().reshape(-1) for k in names])


def pca_directions(
    checkpoints: Sequence[Mapping[str, Tensor] | Tensor],
    final: Mapping[str, Tensor] | Tensor | None = None,
    *,
    names: Sequence[str] | None = None,
) -> PCA:
    """PCA of the matrix ``[theta_t - final]`` of a training path (Li et al. 2018, sec. 7).

    Random directions are nearly orthogonal to a path in high dimension, so the path would
    look like a point; the top principal directions of the path's displacements capture
    most of its motion. The variance is that of the centered displacements (as in the
    paper, which used scikit-learn's PCA); coordinates are the plain projections of
    ``theta_t - final``, so ``final`` sits at the origin.

    Args:
        checkpoints: state dicts (with ``names``) or flat parameter vectors, oldest first.
        final: the origin; default the last checkpoint.
        names: the parameter names, in order, to flatten state dicts with.
    """
    if len(checkpoints) < 2:
        raise ValueError(f"checkpoints must hold at least 2 points; got {len(checkpoints)}")
    flats = torch.stack([_flat(c, names) for c in checkpoints]).double()
    origin = flats[-1] if final is None else _flat(final, names).double()
    m = flats - origin
    centered = m - m.mean(dim=0)
    _, s, vh = torch.linalg.svd(centered, full_matrices=False)
    total = (s**2).sum()
    k = min(2, vh.shape[0])
    dirs = vh[:k]
    if k < 2:  # a 2-point path: complete the basis with any orthogonal unit vector
        extra = torch.zeros_like(dirs[0])
        extra[int(dirs[0].abs().argmin())] = 1.0
        extra = extra - (extra @ dirs[0]) * dirs[0]
        dirs = torch.cat([dirs, (extra / extra.norm())[None]])
    ratio = (s[:2] ** 2) / total if total > 0 else torch.zeros(2, dtype=torch.float64)
    ratio = torch.cat([ratio, ratio.new_zeros(2 - ratio.numel())])
    return PCA(directions=dirs, coords=m @ dirs.T, explained_variance=ratio)


def trajectory(
    model: nn.Module,
    checkpoints: Sequence[Mapping[str, Tensor] | Tensor],
    loss_fn: LossFn,
    data: object,
    *,
    resolution: int = 25,
    margin: float = 0.3,
    n_examples: int | None = None,
    chunk_size: int = 32,
) -> Surface:
    """Project a training path on its top-2 PCA directions and evaluate the loss there.

    The origin is the last checkpoint (``model``'s parameters are replaced by it for the
    evaluation only — ``model`` is not modified). The axes span the path's coordinates plus
    ``margin`` of their range on each side; axes are in parameter-space units (the PCA
    directions are unit vectors), with the explained variance stored in the result.

    Args:
        model: the architecture; its buffers (eval-mode statistics) are used.
        checkpoints: state dicts or flat parameter vectors, oldest first.
        loss_fn, data, n_examples, chunk_size: as in :func:`surface`.
        resolution: points per axis.
        margin: extra room around the path, as a fraction of its extent.
    """
    named = list(model.named_parameters())
    names = [k for k, _ in named]
    pca = pca_directions(checkpoints, names=names)
    final = _flat(checkpoints[-1], names).double()

    def unflat(v: Tensor) -> Params:
        out, i = {}, 0
        for k, p in named:
            out[k] = v[i : i + p.numel()].reshape(p.shape).to(p.dtype)
            i += p.numel()
        return out

    base = unflat(final)
    d1, d2 = unflat(pca.directions[0]), unflat(pca.directions[1])
    axes = []
    for j in range(2):
        c = pca.coords[:, j]
        low, high = float(c.min()), float(c.max())
        width = max(high - low, 1e-3 * max(abs(low), abs(high), 1e-3))
        axes.append(_axis((low - margin * width, high + margin * width), resolution, "resolution"))
    loss, accuracy = _grid(
        model,
        loss_fn,
        _splits(data, n_examples),
        base,
        d1,
        d2,
        axes[0],
        axes[1],
        chunk_size,
        False,
    )
    return Surface(
        alphas=axes[0].numpy(),
        betas=axes[1].numpy(),
        loss=loss,
        accuracy=accuracy,
        path=pca.coords.numpy(),
        explained_variance=pca.explained_variance.numpy(),
    )
