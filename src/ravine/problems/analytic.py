"""Analytic test functions: small objectives with known minima for comparing optimizers.

Every problem is a frozen dataclass whose ``__call__`` maps points of shape ``(..., dim)`` to
losses of shape ``(...)`` with plain torch ops, so one call evaluates a whole batch of random
restarts, autograd gives gradients and Hessians, and any floating dtype or device works.

>>> import torch
>>> from ravine.problems import make_problem
>>> p = make_problem("rosenbrock")
>>> x = p.sample_starts(8, torch.Generator().manual_seed(0))  # (8, 2)
>>> p(x).shape
torch.Size([8])
>>> float(p(p.minima)[0]), p.target
(0.0, 1e-06)

Bounded problems count a run as "reached" when its loss falls below ``target = min_value + tol``.
The saddles (``escape = True``) are unbounded below: there ``target`` is an escape threshold and a
report says "steps to escape" instead of "steps to tolerance".
"""

from __future__ import annotations

import math
import operator
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ravine import limits

__all__ = [
    "PROBLEMS",
    "Ackley",
    "AnalyticProblem",
    "Beale",
    "Himmelblau",
    "IllConditionedQuadratic",
    "MonkeySaddle",
    "Rastrigin",
    "Rosenbrock",
    "Saddle",
    "make_problem",
]

Box = tuple[tuple[float, float], ...]  # one (lo, hi) per dimension


# ----------------------------------------------------------------------------- validation


def _as_int(value: object, arg: str, owner: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{owner}: {arg} must be an integer, got {value!r}")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{owner}: {arg} must be an integer, got {value!r}") from None


def _as_float(value: object, arg: str, owner: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{owner}: {arg} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{owner}: {arg} must be finite, got {value!r}")
    return value


# ----------------------------------------------------------------------------- base classes


@dataclass(frozen=True, kw_only=True)
class AnalyticProblem(ABC):
    """An objective ``f: R^dim -> R`` with known global minima (or none, when unbounded below).

    Attributes:
      name: registry name (``make_problem(name)`` builds it).
      dim: number of coordinates.
      escape: False for bounded problems ("steps to tolerance"), True for problems that are
        unbounded below, where reaching ``target`` means "escaped the saddle".
      minima: ``(k, dim)`` float64 tensor of all known global minima (``k = 0`` when unbounded).
      min_value: the global minimum value, or None when unbounded below.
      target: loss below which a run counts as reached (or escaped).
      bounds: plotting box, one ``(lo, hi)`` per dimension.
      start_bounds: box that contains every point ``sample_starts`` draws.
      saddle_points: ``(s, dim)`` float64 tensor of known saddle points worth marking on plots.
      description: one line for tables.
    """

    name: ClassVar[str]
    escape: ClassVar[bool] = False
    min_value: ClassVar[float | None] = 0.0
    two_d_only: ClassVar[bool] = False

    dim: int = 2  # number of coordinates; fixed to 2 for the 2-D functions

    def __post_init__(self) -> None:
        dim = _as_int(self.dim, "dim", self.name)
        if self.two_d_only and dim != 2:
            raise ValueError(f"{self.name}: dim must be 2 (a 2-D function), got {dim}")
        if dim < 1:
            raise ValueError(f"{self.name}: dim must be >= 1, got {dim}")
        if dim > limits.MAX_PROBLEM_DIM:
            raise ValueError(f"{self.name}: dim must be <= {limits.MAX_PROBLEM_DIM:,}, got {dim}")
        object.__setattr__(self, "dim", dim)

    # -- what each problem defines

    @abstractmethod
    def _value(self, x: Tensor) -> Tensor:
        """The formula. x: (..., dim) floating tensor -> (...)."""

    @property
    @abstractmethod
    def description(self) -> str: ...

    @property
    @abstractmethod
    def minima(self) -> Tensor: ...

    @property
    @abstractmethod
    def target(self) -> float: ...

    @property
    @abstractmethod
    def bounds(self) -> Box: ...

    @property
    def start_bounds(self) -> Box:
        return self.bounds

    @property
    def saddle_points(self) -> Tensor:
        return torch.empty(0, self.dim, dtype=torch.float64)

    # -- shared behaviour

    def __call__(self, x: Tensor) -> Tensor:
        """Loss at ``x`` of shape ``(..., dim)``; returns shape ``(...)`` in ``x``'s dtype."""
        return self._value(self._check_x(x))

    def sample_starts(
        self,
        n: int,
        generator: torch.Generator | None = None,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """``n`` random starting points, shape ``(n, dim)``, uniform in ``start_bounds``.

        Drawn in float64 on the CPU from ``generator`` (then cast), so the same seed gives the
        same starts whatever ``dtype`` and ``device`` are asked for.
        """
        n = self._check_n(n)
        lo, hi = torch.tensor(self.start_bounds, dtype=torch.float64).unbind(-1)  # (dim,) each
        u = torch.rand(n, self.dim, generator=generator, dtype=torch.float64)
        return (lo + (hi - lo) * u).to(dtype=dtype or torch.get_default_dtype(), device=device)

    def distance_to_minimum(self, x: Tensor) -> Tensor:
        """Euclidean distance from ``x`` ``(..., dim)`` to the nearest known minimum: ``(...)``.

        NaN when the problem has no minima (unbounded below).
        """
        x = self._check_x(x)
        minima = self.minima.to(dtype=x.dtype, device=x.device)  # (k, dim)
        if minima.shape[0] == 0:
            return torch.full(x.shape[:-1], math.nan, dtype=x.dtype, device=x.device)
        return (x.unsqueeze(-2) - minima).norm(dim=-1).amin(dim=-1)

    def _check_x(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            x = torch.as_tensor(x)
        if not x.is_floating_point():
            x = x.to(torch.get_default_dtype())
        if x.ndim == 0 or x.shape[-1] != self.dim:
            raise ValueError(
                f"{self.name}: x must have shape (..., {self.dim}), got {tuple(x.shape)}"
            )
        return x

    def _check_n(self, n: int) -> int:
        n = _as_int(n, "n", self.name)
        if n < 0:
            raise ValueError(f"{self.name}: n must be >= 0, got {n}")
        return n


@dataclass(frozen=True, kw_only=True)
class _Bounded(AnalyticProblem):
    """A problem with a known global minimum value; reached means ``f < min_value + tol``."""

    tol: float = 1e-6  # a run has reached the minimum once f(x) < min_value + tol

    def __post_init__(self) -> None:
        super().__post_init__()
        tol = _as_float(self.tol, "tol", self.name)
        if tol <= 0:
            raise ValueError(f"{self.name}: tol must be > 0, got {tol!r}")
        object.__setattr__(self, "tol", tol)

    @property
    def target(self) -> float:
        assert self.min_value is not None
        return self.min_value + self.tol


@dataclass(frozen=True, kw_only=True)
class _Escape(AnalyticProblem):
    """A saddle, unbounded below: a run has escaped once ``f < escape_below``.

    Starts lie near the saddle at the origin, a small distance off its stable manifold (the set
    of points gradient flow carries *into* the saddle), so the comparison shows who escapes and
    how fast.
    """

    escape: ClassVar[bool] = True
    min_value: ClassVar[float | None] = None
    two_d_only: ClassVar[bool] = True
    start_x: ClassVar[tuple[float, float]] = (-1.0, 1.0)  # along the stable manifold
    start_offset: ClassVar[tuple[float, float]] = (1e-3, 1e-2)  # |y|, drawn log-uniformly

    escape_below: float = -1.0  # a run has escaped once f(x) < escape_below (the saddle is 0)

    def __post_init__(self) -> None:
        super().__post_init__()
        value = _as_float(self.escape_below, "escape_below", self.name)
        if value >= 0:
            raise ValueError(
                f"{self.name}: escape_below must be < 0 (the saddle value), got {value!r}"
            )
        object.__setattr__(self, "escape_below", value)

    @property
    def target(self) -> float:
        return self.escape_below

    @property
    def minima(self) -> Tensor:
        return torch.empty(0, 2, dtype=torch.float64)

    @property
    def saddle_points(self) -> Tensor:
        return torch.zeros(1, 2, dtype=torch.float64)

    @property
    def bounds(self) -> Box:
        return ((-1.5, 1.5), (-1.5, 1.5))

    @property
    def start_bounds(self) -> Box:
        return (self.start_x, (-self.start_offset[1], self.start_offset[1]))

    def sample_starts(
        self,
        n: int,
        generator: torch.Generator | None = None,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """``n`` starts near the saddle: x uniform in ``start_x``, ``|y|`` log-uniform in
        ``start_offset`` with a random sign. Shape ``(n, 2)``; deterministic given ``generator``."""
        n = self._check_n(n)
        u = torch.rand(n, 3, generator=generator, dtype=torch.float64)
        (x_lo, x_hi), (y_lo, y_hi) = self.start_x, self.start_offset
        x = x_lo + (x_hi - x_lo) * u[:, 0]
        y = y_lo * (y_hi / y_lo) ** u[:, 1]
        y = torch.where(u[:, 2] < 0.5, -y, y)
        xy = torch.stack([x, y], dim=-1)
        return xy.to(dtype=dtype or torch.get_default_dtype(), device=device)


# ----------------------------------------------------------------------------- problems


@dataclass(frozen=True, kw_only=True)
class Rosenbrock(_Bounded):
    """Rosenbrock's curved valley (Rosenbrock 1960), n-dimensional, a = 1, b = 100.

    .. math::
        f(x) = \\sum_{i=1}^{n-1} 100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2

    Global minimum ``f(1, ..., 1) = 0``. The minimum sits at the end of a long, narrow,
    parabolic valley: finding the valley is easy, following it is slow, which is what separates
    plain gradient descent from momentum and adaptive methods. For 4 <= n <= 7 there is also a
    local minimum near ``(-1, 1, ..., 1)``.

    Starts: ``x_1`` in [-2, 2], the other coordinates in [-1, 3] (the classic box around the
    valley).

    Reference: H. H. Rosenbrock, "An automatic method for finding the greatest or least value
    of a function", The Computer Journal 3(3), 1960.
    """

    name: ClassVar[str] = "rosenbrock"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dim < 2:
            raise ValueError(f"rosenbrock: dim must be >= 2, got {self.dim}")

    def _value(self, x: Tensor) -> Tensor:
        head, tail = x[..., :-1], x[..., 1:]
        return (100.0 * (tail - head.square()).square() + (1.0 - head).square()).sum(-1)

    @property
    def description(self) -> str:
        return f"Rosenbrock valley, {self.dim}-D (a=1, b=100): narrow curved valley"

    @property
    def minima(self) -> Tensor:
        return torch.ones(1, self.dim, dtype=torch.float64)

    @property
    def start_bounds(self) -> Box:
        return ((-2.0, 2.0),) + ((-1.0, 3.0),) * (self.dim - 1)

    @property
    def bounds(self) -> Box:
        return ((-2.5, 2.5),) + ((-1.5, 3.5),) * (self.dim - 1)


@dataclass(frozen=True, kw_only=True)
class Beale(_Bounded):
    """Beale's function (Beale 1958), 2-D.

    .. math::
        f(x, y) = (1.5 - x + xy)^2 + (2.25 - x + xy^2)^2 + (2.625 - x + xy^3)^2

    Global minimum ``f(3, 0.5) = 0``. Flat plateaus (f is constant along ``x = 0``) next to
    walls that grow like ``x y^3``, so step sizes that suit one region blow up in another.

    Starts: [-2, 2]^2.

    Reference: E. M. L. Beale, "On an iterative method for finding a local minimum of a
    function of more than one variable", Tech. Rep. 25, Statistical Techniques Research Group,
    Princeton University, 1958.
    """

    name: ClassVar[str] = "beale"
    two_d_only: ClassVar[bool] = True

    def _value(self, x: Tensor) -> Tensor:
        a, b = x[..., 0], x[..., 1]
        return (
            (1.5 - a + a * b).square()
            + (2.25 - a + a * b.square()).square()
            + (2.625 - a + a * b.pow(3)).square()
        )

    @property
    def description(self) -> str:
        return "Beale, 2-D: flat plateaus next to steep x*y^3 walls"

    @property
    def minima(self) -> Tensor:
        return torch.tensor([[3.0, 0.5]], dtype=torch.float64)

    @property
    def start_bounds(self) -> Box:
        return ((-2.0, 2.0), (-2.0, 2.0))

    @property
    def bounds(self) -> Box:
        return ((-4.5, 4.5), (-4.5, 4.5))


# Himmelblau's minima other than (3, 2) have no closed form; these are Newton-refined in
# float64 (gradient ~1e-14 there).
_HIMMELBLAU_MINIMA = (
    (3.0, 2.0),
    (-2.805118086952745, 3.131312518250573),
    (-3.779310253377747, -3.2831859912861696),
    (3.5844283403304917, -1.8481265269644034),
)


@dataclass(frozen=True, kw_only=True)
class Himmelblau(_Bounded):
    """Himmelblau's function (Himmelblau 1972), 2-D, four global minima.

    .. math::
        f(x, y) = (x^2 + y - 11)^2 + (x + y^2 - 7)^2

    Global minima, all with ``f = 0``: (3, 2), (-2.805118, 3.131313), (-3.779310, -3.283186),
    (3.584428, -1.848127). Also a local maximum at (-0.270845, -0.923039) and four saddles, so
    which minimum a run ends in depends on where it starts (and on the optimizer).

    Starts: [-4, 4]^2.

    Reference: D. M. Himmelblau, "Applied Nonlinear Programming", McGraw-Hill, 1972.
    """

    name: ClassVar[str] = "himmelblau"
    two_d_only: ClassVar[bool] = True

    def _value(self, x: Tensor) -> Tensor:
        a, b = x[..., 0], x[..., 1]
        return (a.square() + b - 11.0).square() + (a + b.square() - 7.0).square()

    @property
    def description(self) -> str:
        return "Himmelblau, 2-D: four global minima"

    @property
    def minima(self) -> Tensor:
        return torch.tensor(_HIMMELBLAU_MINIMA, dtype=torch.float64)

    @property
    def start_bounds(self) -> Box:
        return ((-4.0, 4.0), (-4.0, 4.0))

    @property
    def bounds(self) -> Box:
        return ((-5.0, 5.0), (-5.0, 5.0))


@dataclass(frozen=True, kw_only=True)
class Rastrigin(_Bounded):
    """Rastrigin's function (Rastrigin 1974), n-dimensional, A = 10.

    .. math::
        f(x) = 10 n + \\sum_{i=1}^{n} (x_i^2 - 10 \\cos(2 \\pi x_i))
             = \\sum_{i=1}^{n} (x_i^2 + 20 \\sin^2(\\pi x_i))

    Global minimum ``f(0, ..., 0) = 0`` among ~10^n local minima near the integer lattice
    (the nearest have f close to 1). Evaluated in the sin^2 form, which is exact and keeps full
    precision near the minimum in float32.

    Starts: [-5.12, 5.12]^n (the standard domain). ``tol`` defaults to 1e-3: any value below it
    is in the global basin.

    Reference: L. A. Rastrigin, "Systems of Extremal Control", Nauka, Moscow, 1974.
    """

    name: ClassVar[str] = "rastrigin"

    tol: float = 1e-3

    def _value(self, x: Tensor) -> Tensor:
        return (x.square() + 20.0 * torch.sin(math.pi * x).square()).sum(-1)

    @property
    def description(self) -> str:
        return f"Rastrigin, {self.dim}-D (A=10): regular grid of local minima"

    @property
    def minima(self) -> Tensor:
        return torch.zeros(1, self.dim, dtype=torch.float64)

    @property
    def start_bounds(self) -> Box:
        return ((-5.12, 5.12),) * self.dim

    @property
    def bounds(self) -> Box:
        return ((-5.5, 5.5),) * self.dim


@dataclass(frozen=True, kw_only=True)
class Ackley(_Bounded):
    """Ackley's function (Ackley 1987), n-dimensional, a = 20, b = 0.2, c = 2 pi.

    .. math::
        f(x) = -20 \\exp\\Big(-0.2 \\sqrt{\\tfrac1n \\textstyle\\sum_i x_i^2}\\Big)
               - \\exp\\Big(\\tfrac1n \\textstyle\\sum_i \\cos(2 \\pi x_i)\\Big) + 20 + e

    Global minimum ``f(0, ..., 0) = 0``: a funnel covered in cosine ripples (local minima).
    Evaluated as ``-20 expm1(-0.2 r) - e expm1(-mean(2 sin^2(pi x)))``, which is exactly 0 at the
    origin and keeps precision near it in float32.

    .. warning::
        f is not differentiable at the minimum (a cone, ``f ~ 4 r`` nearby); autograd returns
        the subgradient 0 there. Constant-step methods hover at a distance ~ step size, so
        ``tol`` defaults to 1e-2 (the nearest local minima have f of about 3.6).

    Starts: [-5, 5]^n.

    Reference: D. H. Ackley, "A Connectionist Machine for Genetic Hillclimbing", Kluwer, 1987.
    """

    name: ClassVar[str] = "ackley"

    tol: float = 1e-2

    def _value(self, x: Tensor) -> Tensor:
        mean_sq = x.square().mean(-1)
        # sqrt has an infinite derivative at 0; route the origin through a constant branch so
        # autograd yields the subgradient 0 (and finite Hessians) instead of NaN.
        positive = mean_sq > 0
        safe = torch.where(positive, mean_sq, torch.ones_like(mean_sq))
        r = torch.where(positive, safe.sqrt(), torch.zeros_like(mean_sq))
        ripple = (2.0 * torch.sin(math.pi * x).square()).mean(-1)  # 1 - mean(cos(2 pi x))
        return -20.0 * torch.expm1(-0.2 * r) - math.e * torch.expm1(-ripple)

    @property
    def description(self) -> str:
        return f"Ackley, {self.dim}-D: rippled funnel, non-smooth at the minimum"

    @property
    def minima(self) -> Tensor:
        return torch.zeros(1, self.dim, dtype=torch.float64)

    @property
    def start_bounds(self) -> Box:
        return ((-5.0, 5.0),) * self.dim

    @property
    def bounds(self) -> Box:
        return ((-5.5, 5.5),) * self.dim


@dataclass(frozen=True, kw_only=True)
class Saddle(_Escape):
    """The classic saddle ``f(x, y) = x^2 - y^2`` (Dauphin et al. 2014), unbounded below.

    Hessian at the saddle (0, 0) is diag(2, -2). The x-axis is its stable manifold: starting
    on it, gradient descent converges to the saddle; starting a distance ``|y|`` off it, the
    ``y`` component grows geometrically and the run escapes. Starts: x in [-1, 1], ``|y|``
    log-uniform in [1e-3, 1e-2]. ``target = escape_below`` (default -1).

    Reference: Y. Dauphin, R. Pascanu, C. Gulcehre, K. Cho, S. Ganguli, Y. Bengio,
    "Identifying and attacking the saddle point problem in high-dimensional non-convex
    optimization", NeurIPS 2014.
    """

    name: ClassVar[str] = "saddle"

    def _value(self, x: Tensor) -> Tensor:
        return x[..., 0].square() - x[..., 1].square()

    @property
    def description(self) -> str:
        return "Saddle x^2 - y^2: strict saddle, unbounded below"


@dataclass(frozen=True, kw_only=True)
class MonkeySaddle(_Escape):
    """The monkey saddle ``f(x, y) = x^3 - 3 x y^2``, unbounded below (Dauphin et al. 2014).

    A degenerate saddle: gradient and Hessian both vanish at (0, 0), so second-order
    information cannot see the way down. f decreases along the three rays at angles 60, 180 and
    300 degrees; the positive x-axis is attracting (gradient flow ``x' = -3 x^2`` creeps into the
    saddle), so starts sit on x in [0.1, 1] with ``|y|`` log-uniform in [1e-3, 1e-2]: escape
    needs the tiny ``y`` to grow before ``x`` stalls. ``target = escape_below`` (default -1).

    Reference: Y. Dauphin et al., "Identifying and attacking the saddle point problem in
    high-dimensional non-convex optimization", NeurIPS 2014.
    """

    name: ClassVar[str] = "monkey_saddle"
    start_x: ClassVar[tuple[float, float]] = (0.1, 1.0)

    def _value(self, x: Tensor) -> Tensor:
        a, b = x[..., 0], x[..., 1]
        return a.pow(3) - 3.0 * a * b.square()

    @property
    def description(self) -> str:
        return "Monkey saddle x^3 - 3xy^2: degenerate (zero Hessian), unbounded below"


@dataclass(frozen=True, kw_only=True)
class IllConditionedQuadratic(_Bounded):
    """A convex quadratic whose Hessian has condition number exactly ``condition_number``.

    .. math::
        f(x) = \\tfrac12 (x - x^*)^T Q \\,\\mathrm{diag}(\\lambda)\\, Q^T (x - x^*),
        \\qquad \\lambda_i = \\kappa^{i/(n-1)},\\ i = 0, \\dots, n-1

    so the eigenvalues are log-spaced from 1 to ``kappa`` (both ends exact). The minimum is
    ``f(x*) = 0`` at ``x* = (1, ..., 1)``, away from the origin so that weight decay (which pulls
    towards 0) is not mistaken for progress. ``hessian`` and ``eigenvalues`` give the exact
    curvature. Starts: ``x*`` + [-2, 2]^n.

    .. warning::
        Rotation matters. With ``rotate=False`` the Hessian is diagonal and per-coordinate
        methods (Adagrad, RMSProp, Adam) are handed the perfect preconditioner for free, which
        flatters them; a rotated quadratic has the same spectrum, so gradient descent behaves
        identically, but its eigenvectors are not the coordinate axes.

    Args:
      dim: number of coordinates (``dim = 1`` needs ``condition_number = 1``).
      condition_number: ``kappa >= 1``, the ratio of largest to smallest Hessian eigenvalue.
      rotate: True for a random (Haar) rotation drawn from ``seed``; False for axis-aligned;
        a float is a rotation angle in radians (``dim = 2`` only).
      seed: seeds the random rotation when ``rotate=True``.
      tol: reached once ``f < tol``.

    Reference: the standard model of ill-conditioning, e.g. J. Nocedal and S. J. Wright,
    "Numerical Optimization", 2nd ed., Springer, 2006, section 3.3.
    """

    name: ClassVar[str] = "quadratic"

    condition_number: float = 100.0  # kappa: largest / smallest Hessian eigenvalue
    rotate: bool | float = True  # True: random rotation from `seed`; False: none; float: angle
    seed: int = 0  # seeds the random rotation (rotate=True)

    _rotation: Tensor = field(init=False, repr=False, compare=False)  # Q: (dim, dim) float64
    _eigenvalues: Tensor = field(init=False, repr=False, compare=False)  # lambda: (dim,) float64

    def __post_init__(self) -> None:
        super().__post_init__()
        n = self.dim
        kappa = _as_float(self.condition_number, "condition_number", self.name)
        if kappa < 1:
            raise ValueError(f"{self.name}: condition_number must be >= 1, got {kappa!r}")
        if n == 1 and kappa != 1:
            raise ValueError(
                f"{self.name}: condition_number must be 1 when dim=1 (one eigenvalue), "
                f"got {kappa!r}"
            )
        if n > limits.MAX_QUADRATIC_DIM:  # the rotation is a dense (dim, dim) matrix
            raise ValueError(
                f"{self.name}: dim must be <= {limits.MAX_QUADRATIC_DIM:,} (a dense dim x dim "
                f"rotation), got {n}"
            )
        seed = _as_int(self.seed, "seed", self.name)
        if not -(2**63) <= seed < 2**64:  # what torch's generators take
            raise ValueError(f"{self.name}: seed must be in [-2**63, 2**64), got {seed}")
        rotate = self.rotate
        if isinstance(rotate, bool):
            if rotate:
                g = torch.Generator().manual_seed(seed)
                q, r = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
                rotation = q * torch.sign(torch.diagonal(r))  # sign fix makes Q Haar-distributed
            else:
                rotation = torch.eye(n, dtype=torch.float64)
        else:
            angle = _as_float(rotate, "rotate", self.name)
            if n != 2:
                raise ValueError(
                    f"{self.name}: rotate as an angle needs dim=2, got dim={n}; "
                    "pass rotate=True for a random rotation"
                )
            c, s = math.cos(angle), math.sin(angle)
            rotation = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
            rotate = angle
        # kappa ** (i / (n - 1)) hits 1 and kappa exactly, so cond(H) == kappa to rounding.
        powers = torch.arange(n, dtype=torch.float64) / max(n - 1, 1)
        eigenvalues = kappa**powers
        object.__setattr__(self, "condition_number", kappa)
        object.__setattr__(self, "seed", seed)
        object.__setattr__(self, "rotate", rotate)
        object.__setattr__(self, "_rotation", rotation)
        object.__setattr__(self, "_eigenvalues", eigenvalues)

    def _value(self, x: Tensor) -> Tensor:
        z = (x - 1.0) @ self._rotation.to(x)  # (..., dim): coordinates in the eigenbasis
        return 0.5 * (self._eigenvalues.to(x) * z.square()).sum(-1)

    @property
    def hessian(self) -> Tensor:
        """``Q diag(lambda) Q^T``, float64 ``(dim, dim)``."""
        q = self._rotation
        return (q * self._eigenvalues) @ q.T

    @property
    def eigenvalues(self) -> Tensor:
        """Hessian eigenvalues, ascending, float64 ``(dim,)``."""
        return self._eigenvalues.clone()

    @property
    def description(self) -> str:
        if self.rotate is True:
            how = f"rotated (seed {self.seed})"
        elif self.rotate is False:
            how = "axis-aligned"
        else:
            how = f"rotated {math.degrees(self.rotate):g} deg"
        return f"Quadratic, {self.dim}-D, condition number {self.condition_number:g}, {how}"

    @property
    def minima(self) -> Tensor:
        return torch.ones(1, self.dim, dtype=torch.float64)

    @property
    def start_bounds(self) -> Box:
        return ((-1.0, 3.0),) * self.dim

    @property
    def bounds(self) -> Box:
        return ((-1.5, 3.5),) * self.dim


# ----------------------------------------------------------------------------- registry

PROBLEMS: dict[str, Callable[..., AnalyticProblem]] = {
    "rosenbrock": Rosenbrock,
    "beale": Beale,
    "himmelblau": Himmelblau,
    "rastrigin": Rastrigin,
    "ackley": Ackley,
    "saddle": Saddle,
    "monkey_saddle": MonkeySaddle,
    "quadratic": IllConditionedQuadratic,
}


def make_problem(name: str, **kwargs: object) -> AnalyticProblem:
    """Build a registered problem by name, e.g. ``make_problem("quadratic", condition_number=1e3)``.

    Names are case-insensitive and ``-`` reads as ``_``. Raises ValueError listing the valid
    names for an unknown name, the accepted arguments for an unknown argument, and naming the
    argument for a bad value.
    """
    key = name.strip().lower().replace("-", "_") if isinstance(name, str) else name
    factory = PROBLEMS.get(key)  # type: ignore[arg-type]
    if factory is None:
        raise ValueError(f"unknown problem {name!r}; valid names: {', '.join(sorted(PROBLEMS))}")
    if is_dataclass(factory):
        accepted = sorted(f.name for f in fields(factory) if f.init)
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise ValueError(
                f"{key}: unknown argument(s) {', '.join(unknown)}; accepted: {', '.join(accepted)}"
            )
    return factory(**kwargs)
