"""Learning tasks a study compares optimizers on: a training config and a validation target.

A task fixes everything but the optimizer: data, model, epochs, batch size and the validation
split the optimizers are tuned on. Its *target* (a validation accuracy to reach, or a loss to
get below) is what time-to-target and the performance profiles measure, as AlgoPerf does
with its per-workload targets; the values here are reachable by a well-tuned optimizer within
the epoch budget and missed by a badly tuned one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ravine.train.config import TrainConfig


@dataclass(frozen=True)
class Task:
    """One workload of a study."""

    name: str
    config: TrainConfig
    target: float  # the validation value to reach (see target_metric)
    target_metric: str = "val_accuracy"  # or "val_loss" (regression)
    description: str = ""
    notes: dict[str, Any] = field(default_factory=dict)
    # A user's own network and data, from Python (see ravine.train.user): the factory
    # (``factory(seed)`` or ``factory()``) replaces the config's model, the data (tensors,
    # Datasets or DataLoaders) its data set; the loss follows the targets (labels:
    # cross-entropy, floats: mean squared error). Runs record them by fingerprint.
    model: Callable[..., Any] | None = field(default=None, compare=False, repr=False)
    data: Any = field(default=None, compare=False, repr=False)

    def reached(self, value: float) -> bool:
        """Whether a validation value meets the target."""
        if self.target_metric.endswith("accuracy"):
            return value >= self.target
        return value <= self.target


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task(
            "digits_mlp",
            TrainConfig(
                dataset="digits", model="digits_mlp", epochs=20, batch_size=64, val_fraction=0.2
            ),
            target=0.96,
            description="8x8 handwritten digits, 64-128-10 ReLU MLP",
        ),
        Task(
            "spirals_mlp",
            TrainConfig(
                dataset="spirals",
                model="mlp",
                model_args={"depth": 3, "width": 64},
                epochs=30,
                batch_size=32,
                val_fraction=0.2,
            ),
            target=0.95,
            description="two interleaved spirals, 3 x 64 ReLU MLP",
        ),
        Task(
            "mnist1d_mlp",
            TrainConfig(
                dataset="mnist1d", model="mnist1d_mlp", epochs=30, batch_size=100, val_fraction=0.2
            ),
            target=0.55,
            description="MNIST-1D (Greydanus 2020), its reference MLP",
        ),
        Task(
            "mnist1d_cnn",
            TrainConfig(
                dataset="mnist1d", model="mnist1d_cnn", epochs=20, batch_size=100, val_fraction=0.2
            ),
            target=0.80,
            description="MNIST-1D, its reference CNN",
        ),
        Task(
            "teacher_student",
            TrainConfig(
                dataset="teacher_student",
                model="mlp",
                model_args={"depth": 2, "width": 64},
                epochs=30,
                batch_size=32,
                val_fraction=0.2,
            ),
            target=0.05,
            target_metric="val_loss",
            description="regression onto a random teacher network, 2 x 64 MLP",
        ),
        Task(
            "deep_linear",
            TrainConfig(
                dataset="deep_linear",
                model="deep_linear",
                epochs=30,
                batch_size=32,
                val_fraction=0.2,
            ),
            target=0.05,
            target_metric="val_loss",
            description="a deep linear network (Saxe et al. 2014): saddles, no nonlinearity",
        ),
    )
}
DEFAULT_TASKS = ("digits_mlp", "spirals_mlp")


def task(name: str) -> Task:
    """The built-in task ``name``; ``ValueError`` listing the valid names otherwise."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid: {', '.join(TASKS)}")
    return TASKS[name]
