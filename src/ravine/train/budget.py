"""What a training run will cost, worked out before it starts: updates and memory.

A run that cannot fit in memory, or asks for more updates than :func:`ravine.limits.max_updates`,
is refused with the estimate in the message, instead of failing after minutes of work or
running for years. The model is never built for this: :func:`ravine.problems.models.model_size`
counts its parameters from the config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ravine import limits
from ravine.problems.models import ModelSize, model_size
from ravine.train.build import Splits, input_view, model_config, total_steps
from ravine.train.config import ConfigError, TrainConfig

_FLOAT = 4  # bytes of a float32 parameter, gradient or activation
_EVAL_BATCH = 4096  # examples per forward pass in ravine.train.loop.evaluate


@dataclass(frozen=True)
class Budget:
    """The estimate for one run (all its restarts together)."""

    updates: int  # optimizer steps of each restart
    parameters: int  # scalar parameters of one network
    copies: int  # networks trained side by side (restarts)
    memory: int  # bytes, a generous estimate of the peak

    def describe(self) -> str:
        copies = f"{limits.format_count(self.copies)} x " if self.copies > 1 else ""
        return (
            f"{limits.format_count(self.updates)} updates of {copies}"
            f"{limits.format_count(self.parameters)} parameters, about "
            f"{limits.format_bytes(self.memory)} of memory"
        )


def estimate(
    config: TrainConfig, splits: Splits, copies: int | None = None, network=None
) -> Budget:
    """The :class:`Budget` of ``config`` on its prepared data (``loop.prepare_data``).
    ``network``: a user's model (:mod:`ravine.train.user`), already built; its activations
    are not known, and are counted as one value per parameter."""
    dataset = splits.dataset
    if network is not None:
        count = sum(p.numel() for p in network.parameters())
        size = ModelSize(count, count)
    else:
        mconfig = model_config(config)
        num_outputs = dataset.num_classes or dataset.y_train.shape[1]
        try:
            size = model_size(mconfig, input_view(mconfig, dataset), num_outputs)
        except ValueError as error:
            raise ConfigError(f"model: {error}") from None
    n_train = max(1, len(splits.x_train))
    _, updates = total_steps(config, n_train)
    copies = config.restarts if copies is None else copies
    # Per network: parameters, gradients, two optimizer moments, a copy per snapshot and the
    # best state early stopping keeps; restarts are built one by one, then stacked (one more).
    states = 4 + config.snapshots + (1 if config.early_stopping else 0) + (1 if copies > 1 else 0)
    batch = min(config.batch_size, n_train)
    evaluated = min(_EVAL_BATCH, max(len(splits.x_val), len(splits.x_test), 1))
    features = math.prod(dataset.input_shape)
    memory = (
        _FLOAT
        * copies
        * (
            size.parameters * states
            + 2 * batch * size.activations  # forward values kept for backward, and their gradients
            + evaluated * size.activations
            + batch * features  # the gathered mini-batch
        )
    )
    if copies > 1:
        memory += 8 * copies * n_train  # one int64 data order per restart and epoch
    return Budget(updates, size.parameters, copies, memory)


def check(config: TrainConfig, splits: Splits, copies: int | None = None, network=None) -> Budget:
    """:func:`estimate`, refusing (``ConfigError``) a run over the update or memory limit.
    ``copies``: networks trained side by side (default ``config.restarts``; a tuning batch's
    members)."""
    budget = estimate(config, splits, copies, network)
    if config.snapshots > budget.updates:
        raise ConfigError(
            f"snapshots={config.snapshots:,} needs at least that many updates; the run has "
            f"{budget.updates:,}"
        )
    most = limits.max_updates()
    if budget.updates > most:
        per_epoch = math.ceil(len(splits.x_train) / config.batch_size)
        raise ConfigError(
            f"the run asks for {limits.format_count(budget.updates)} updates "
            f"({config.epochs:,} epochs of {per_epoch:,}), "
            f"more than the limit of {limits.format_count(most)}; set max_steps or fewer "
            "epochs (RAVINE_MAX_UPDATES raises the limit)"
        )
    available = limits.memory_limit()
    if available is not None and budget.memory > available:
        raise ConfigError(
            f"the run needs {budget.describe()}; this machine has "
            f"{limits.format_bytes(available)} (use a smaller model, fewer restarts or "
            "smaller batches; RAVINE_MEMORY_LIMIT overrides the limit)"
        )
    return budget
