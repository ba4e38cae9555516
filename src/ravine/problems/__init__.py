"""Objectives to optimize: analytic test functions (learning tasks will join them here)."""

from ravine.problems.analytic import (
    PROBLEMS,
    Ackley,
    AnalyticProblem,
    Beale,
    Himmelblau,
    IllConditionedQuadratic,
    MonkeySaddle,
    Rastrigin,
    Rosenbrock,
    Saddle,
    make_problem,
)

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
