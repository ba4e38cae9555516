"""Optimizers x analytic problems x random starts: the study behind ``ravine compare``.

Every optimizer sees the same random starts on a problem (drawn from one seed per problem), so
differences in the table come from the update rules, not from luck of the draw. The starts of
one (optimizer, problem) pair run as one batched tensor ``(starts, dim)``: the update rules are
elementwise, so each row evolves exactly as it would alone. Global-norm clipping is the one
option that couples coordinates; with it, each start gets its own optimizer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ravine import limits
from ravine.optim import make_optimizer, parse_optimizer_spec
from ravine.problems import AnalyticProblem, make_problem

DEFAULT_OPTIMIZERS = (
    "sgd",
    "momentum",
    "nesterov",
    "adagrad",
    "rmsprop",
    "adam",
    "adamw",
    "nadam",
)
DEFAULT_PROBLEMS = ("rosenbrock", "saddle", "quadratic")

#: Hyperparameters the comparison starts from, one set per optimizer for every problem; a
#: ``--opt name:key=value`` spec overrides them key by key. Step sizes are chosen so that each
#: rule is stable on Rosenbrock's valley (gradients up to ~1e3 in the start box), which also
#: keeps plain gradient descent below 2/L on the condition-number-100 quadratic.
COMPARE_DEFAULTS: Mapping[str, Mapping[str, Any]] = {
    "sgd": {"lr": 1e-3},
    "momentum": {"lr": 1e-3, "momentum": 0.9},
    "nesterov": {"lr": 1e-3, "momentum": 0.9},
    "adagrad": {"lr": 0.5},
    "rmsprop": {"lr": 1e-2},
    "adam": {"lr": 0.05},
    "adamw": {"lr": 0.05, "weight_decay": 1e-2},
    "nadam": {"lr": 0.05},
}


@dataclass(frozen=True)
class OptimizerSpec:
    """One contestant: a registered optimizer, its hyperparameters, and its label in tables."""

    name: str
    hyperparams: Mapping[str, Any]
    label: str

    @classmethod
    def parse(cls, spec: str) -> OptimizerSpec:
        """``"adam:lr=0.01"`` -> Adam with the comparison defaults, ``lr`` overridden."""
        name, overrides = parse_optimizer_spec(spec)
        hyperparams = {**COMPARE_DEFAULTS.get(name, {}), **overrides}
        label = name
        if overrides:
            label += "(" + ",".join(f"{k}={_short(v)}" for k, v in overrides.items()) + ")"
        return cls(name, hyperparams, label)


@dataclass(frozen=True)
class CompareConfig:
    """What to compare. Every field has a default: ``CompareConfig()`` is the default study."""

    optimizers: tuple[OptimizerSpec, ...] = field(
        default_factory=lambda: tuple(OptimizerSpec.parse(n) for n in DEFAULT_OPTIMIZERS)
    )
    problems: tuple[str, ...] = DEFAULT_PROBLEMS  # problem specs: "quadratic:condition_number=1e3"
    starts: int = 8  # random starting points per (optimizer, problem), shared by all optimizers
    steps: int = 1500  # updates per run
    seed: int = 0  # seeds the starting points

    def __post_init__(self) -> None:
        if not self.optimizers:
            raise ValueError("optimizers must name at least one optimizer")
        if not self.problems:
            raise ValueError("problems must name at least one problem")
        for key, low, high in (
            ("starts", 1, limits.MAX_INT),
            ("steps", 1, limits.max_updates()),
            ("seed", 0, limits.MAX_COMPARE_SEED),
        ):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{key} must be an integer >= {low}, got {value!r}")
            if value > high:
                why = {
                    "steps": " (set RAVINE_MAX_UPDATES to go past it)",
                    "seed": " (the starts are drawn with seed * 1_000_003 + problem, in 64 bits)",
                }.get(key, " (64 bits)")
                raise ValueError(f"{key} must be <= {high:,}{why}, got {value!r}")
        labels = [o.label for o in self.optimizers]
        duplicates = sorted({x for x in labels if labels.count(x) > 1})
        if duplicates:
            raise ValueError(f"optimizers lists {', '.join(duplicates)} more than once")
        # Fail before any work starts: build each optimizer once on a throwaway parameter.
        dims = [parse_problem_spec(spec).dim for spec in self.problems]
        # Every run's positions and losses are kept, in float64: (starts, steps + 1, dim + 1).
        needed = (
            8 * len(self.optimizers) * self.starts * (self.steps + 1) * sum(d + 1 for d in dims)
        )
        available = limits.memory_limit()
        if available is not None and needed > available:
            raise ValueError(
                f"{self.starts:,} starts x {self.steps:,} steps x {len(self.optimizers)} "
                f"optimizers x {len(dims)} problems keep about {limits.format_bytes(needed)} of "
                f"trajectories; this machine has {limits.format_bytes(available)} "
                "(use fewer starts or steps; RAVINE_MEMORY_LIMIT overrides the limit)"
            )
        probe = torch.nn.Parameter(torch.zeros(1))
        for opt in self.optimizers:
            make_optimizer(opt.name, [probe], **opt.hyperparams)


@dataclass
class Run:
    """One optimizer on one problem from every start: the raw record and its per-start metrics."""

    optimizer: str  # the spec's label
    problem: str
    positions: np.ndarray  # (starts, steps + 1, dim), position before each update and at the end
    losses: np.ndarray  # (starts, steps + 1), loss at those positions
    target: float  # loss that counts as reached (escaped, for unbounded problems)
    escape: bool  # unbounded problem: reaching the target once (escaping) is the goal
    distance: np.ndarray  # (starts,), final distance to the nearest known minimum (NaN: none)

    @property
    def steps_to_target(self) -> np.ndarray:
        """(starts,) first step whose loss is at or below the target; ``inf`` if never."""
        reached = self.losses <= self.target  # NaN compares False
        first = reached.argmax(axis=1).astype(float)
        first[~reached.any(axis=1)] = math.inf
        return first

    @property
    def steps_to_success(self) -> np.ndarray:
        """(starts,) how many steps a successful start needed, ``inf`` for the others: for
        bounded problems the first step from which the loss stays at or below the target to
        the end (a run that touches the tolerance at step 754 and bounces back out has not
        succeeded there), for unbounded ones the step it escaped. The table's *steps* is the
        median of this, so it is finite only when at least half the starts succeeded and
        never contradicts the *success* count."""
        if self.escape:
            return np.where(self.success, self.steps_to_target, math.inf)
        above = ~(self.losses <= self.target)  # NaN counts as above
        # Index of the last step above the target, + 1: from there on the run stays below.
        last_above = np.where(
            above.any(axis=1), above.shape[1] - 1 - above[:, ::-1].argmax(axis=1), -1
        )
        return np.where(self.success, (last_above + 1).astype(float), math.inf)

    @property
    def diverged(self) -> np.ndarray:
        """(starts,) the run produced NaN/Inf (before reaching the target)."""
        bad = ~np.isfinite(self.losses)
        first_bad = np.where(bad.any(axis=1), bad.argmax(axis=1), math.inf)
        return first_bad < self.steps_to_target

    @property
    def final_loss(self) -> np.ndarray:
        return self.losses[:, -1]

    @property
    def success(self) -> np.ndarray:
        """(starts,) reached the target and, for bounded problems, still there at the end."""
        reached = np.isfinite(self.steps_to_target) & ~self.diverged
        if self.escape:
            return reached
        return reached & (self.final_loss <= self.target)


@dataclass(frozen=True)
class Summary:
    """One row of the ranked table."""

    problem: str
    rank: int
    optimizer: str
    successes: int
    starts: int
    median_steps: float  # median of steps_to_success over all starts (inf: under half succeeded)
    median_final_loss: float
    best_final_loss: float
    median_distance: float  # NaN when the problem has no minima
    diverged: int
    escape: bool  # "steps to escape" rather than "steps to tolerance"

    @property
    def success_rate(self) -> float:
        return self.successes / self.starts


@dataclass
class CompareResult:
    config: CompareConfig
    problems: dict[str, AnalyticProblem]  # by spec
    runs: list[Run]
    summary: list[Summary]  # ranked within each problem, problems in config order

    def runs_for(self, problem: str) -> list[Run]:
        return [r for r in self.runs if r.problem == problem]


def parse_problem_spec(spec: str) -> AnalyticProblem:
    """``"quadratic:condition_number=1000,dim=2"`` -> the problem (``ValueError`` if invalid)."""
    name, _, rest = spec.partition(":")
    kwargs: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, raw = item.partition("=")
        if not eq:
            raise ValueError(f"problem option {item!r} in {spec!r} is not key=value")
        kwargs[key.strip()] = _number(raw.strip(), key.strip())
    return make_problem(name, **kwargs)


def run_compare(
    config: CompareConfig, on_progress: Callable[[int], None] | None = None
) -> CompareResult:
    """Run every optimizer on every problem from ``config.starts`` shared random starts.

    ``on_progress(n)`` is called as work completes, with the number of updates just done (the
    total is ``len(optimizers) * len(problems) * steps``).
    """
    problems = {spec: parse_problem_spec(spec) for spec in config.problems}
    runs = []
    for index, (spec, problem) in enumerate(problems.items()):
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + index)
        starts = problem.sample_starts(config.starts, generator, dtype=torch.float64)
        for opt in config.optimizers:
            runs.append(_run(opt, spec, problem, starts, config.steps, on_progress))
    summary = [row for spec in problems for row in _rank(problems[spec], spec, runs)]
    return CompareResult(config, problems, runs, summary)


def _run(
    opt: OptimizerSpec,
    spec: str,
    problem: AnalyticProblem,
    starts: torch.Tensor,
    steps: int,
    on_progress: Callable[[int], None] | None,
) -> Run:
    # Diverging starts are an outcome to report, not an error: they are marked in the table,
    # and since the rules are elementwise a NaN row cannot leak into the others.
    coupled = opt.hyperparams.get("max_grad_norm") is not None
    rows = [starts[i : i + 1] for i in range(len(starts))] if coupled else [starts]
    params = [torch.nn.Parameter(r.clone()) for r in rows]
    optimizers = [
        make_optimizer(opt.name, [p], **{**opt.hyperparams, "nonfinite": "ignore"}) for p in params
    ]
    positions = torch.empty(len(starts), steps + 1, problem.dim, dtype=torch.float64)
    losses = torch.empty(len(starts), steps + 1, dtype=torch.float64)
    report_every = max(1, steps // 20)
    for t in range(steps + 1):
        x = torch.cat(params) if coupled else params[0]
        positions[:, t] = x.detach()
        with torch.enable_grad():
            loss = problem(x)  # (starts,)
        losses[:, t] = loss.detach()
        if t == steps:
            break
        for o in optimizers:
            o.zero_grad(set_to_none=True)
        loss.sum().backward()
        for o in optimizers:
            o.step()
        if on_progress is not None and (t + 1) % report_every == 0:
            on_progress(report_every)
    if on_progress is not None:
        on_progress(steps - (steps // report_every) * report_every)
    final = positions[:, -1]
    distance = problem.distance_to_minimum(final)
    return Run(
        optimizer=opt.label,
        problem=spec,
        positions=positions.numpy(),
        losses=losses.numpy(),
        target=problem.target,
        escape=problem.escape,
        distance=distance.numpy(),
    )


def _rank(problem: AnalyticProblem, spec: str, runs: Sequence[Run]) -> list[Summary]:
    rows = []
    for run in (r for r in runs if r.problem == spec):
        rows.append(
            dict(
                problem=spec,
                optimizer=run.optimizer,
                successes=int(run.success.sum()),
                starts=len(run.success),
                median_steps=float(np.median(run.steps_to_success)),
                median_final_loss=_median_finite(run.final_loss),
                best_final_loss=_min_finite(run.final_loss),
                median_distance=_median_finite(run.distance),
                diverged=int(run.diverged.sum()),
                escape=problem.escape,
            )
        )

    # Most successes first; then fastest to the target; then lowest typical final loss.
    def key(row):
        loss = row["median_final_loss"]
        return (-row["successes"], row["median_steps"], math.inf if math.isnan(loss) else loss)

    rows.sort(key=key)
    return [Summary(rank=i + 1, **row) for i, row in enumerate(rows)]


def _median_finite(values: np.ndarray) -> float:
    # Diverged starts are counted in their own column; they must not turn the median into NaN.
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else math.nan


def _min_finite(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.min()) if finite.size else math.nan


def _number(raw: str, key: str) -> int | float:
    for convert in (int, float):
        try:
            return convert(raw)
        except ValueError:
            pass
    raise ValueError(f"value of {key!r} must be a number, got {raw!r}")


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return "/".join(_short(v) for v in value)
    return str(value).lower() if isinstance(value, bool) else str(value)
