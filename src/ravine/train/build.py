"""What a run is built from: its data splits, model, loss and schedule, derived from its config.

Everything here is a function of the config (and the seeds it derives), so a run, a resumed
run and a probe of a finished run all see the same data and the same initialization.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ravine.problems import PRESETS, Dataset, ModelConfig, load_dataset
from ravine.problems import standardize as fit_standardizer
from ravine.schedules import CosineWarmRestarts, make_schedule
from ravine.train.config import ConfigError, TrainConfig


@dataclass
class Splits:
    """The data a run trains and evaluates on, after splitting and standardization."""

    dataset: Dataset
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor  # the held-out split early stopping watches: validation, or test
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    standardizer: Any  # ravine.problems.Standardizer or None
    val_name: str  # "val" or "test"


def seeds(seed: int) -> dict[str, int]:
    """The seed of each random stream of run ``seed``; disjoint across consecutive seeds, so
    restart k of a batched run (seed + k) draws exactly what a sequential run with that seed
    draws."""
    return {"init": 4 * seed, "data": 4 * seed + 1, "dropout": 4 * seed + 2, "noise": 4 * seed + 3}


def model_config(config: TrainConfig) -> ModelConfig:
    """The ModelConfig of a run: a preset or a kind, with ``model_args`` applied."""
    try:
        base = PRESETS[config.model] if config.model in PRESETS else ModelConfig(kind=config.model)
        return dataclasses.replace(base, **config.model_args)
    except TypeError as error:
        raise ConfigError(f"model: {error}") from None
    except ValueError as error:
        if "kind" in str(error):
            raise ConfigError(
                f"unknown model {config.model!r}; valid: presets {', '.join(PRESETS)} "
                f"or kinds mlp, cnn, linear, deep_linear"
            ) from None
        raise ConfigError(f"model: {error}") from None


def pin_data_file(config: TrainConfig) -> TrainConfig:
    """``config`` with the SHA-256 of the file (or image folder) ``[data] path`` names, so the
    run's config.toml records which content it trained on and a resume on a changed file is
    refused; ``ConfigError`` when a recorded ``sha256`` no longer matches."""
    if config.dataset != "file" or "path" not in config.dataset_args:
        return config
    from ravine.problems.files import digest

    path = config.dataset_args["path"]
    try:
        sha = digest(path)
    except (OSError, ValueError) as error:
        raise ConfigError(str(error)) from None
    pinned = config.dataset_args.get("sha256")
    if pinned is not None and pinned != sha:
        raise ConfigError(
            f"[data] path: {path} has changed since sha256 = {pinned!r} was recorded (now "
            f"{sha}); remove sha256 to train on the file as it is now"
        )
    return dataclasses.replace(config, dataset_args={**config.dataset_args, "sha256": sha})


def prepare_data(config: TrainConfig) -> Splits:
    """Load the data set, hold out a validation split, standardize on the training split.

    The last few results are kept (keyed by what they depend on): a study builds the same
    data for every batch of trials. The tensors are shared, so they are never modified.
    """
    key = (
        config.dataset,
        repr(sorted(config.dataset_args.items())),
        config.standardize,
        config.val_fraction,
        config.seed if config.val_fraction > 0 else None,
    )
    splits = _PREPARED.get(key)
    if splits is None:
        splits = _prepare_data(config)
        _PREPARED[key] = splits
        while len(_PREPARED) > 4:
            _PREPARED.pop(next(iter(_PREPARED)))
    return splits


_PREPARED: dict[tuple, Splits] = {}


def check_split(config: TrainConfig, n_examples: int) -> None:
    """``ConfigError`` unless holding out ``val_fraction`` of ``n_examples`` (as
    :func:`prepare_data` does: at least one) leaves training examples."""
    held_out = max(1, round(config.val_fraction * n_examples)) if config.val_fraction else 0
    if n_examples - held_out < 1:
        raise ConfigError(
            f"val_fraction={config.val_fraction!r} holds out {held_out:,} of the "
            f"{n_examples:,} training examples, leaving none to train on"
        )


def _prepare_data(config: TrainConfig) -> Splits:
    try:
        dataset = load_dataset(config.dataset, **config.dataset_args)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"data: {error}") from None
    return split_dataset(config, dataset)


def split_dataset(config: TrainConfig, dataset: Dataset) -> Splits:
    """``dataset``'s splits as ``config`` asks: a validation split held out (drawn from
    ``config.seed``), features standardized on the training rows (a user's data goes here too)."""
    x_train, y_train = dataset.x_train, dataset.y_train
    x_test, y_test = dataset.x_test, dataset.y_test
    x_val, y_val, val_name = x_test, y_test, "test"
    check_split(config, len(x_train))
    if config.val_fraction > 0:
        order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(config.seed))
        n_val = max(1, round(config.val_fraction * len(x_train)))
        val, keep = order[:n_val], order[n_val:]
        x_val, y_val, x_train, y_train = x_train[val], y_train[val], x_train[keep], y_train[keep]
        val_name = "val"
    standardizer = None
    if config.standardize:
        # Fitted on the training rows only: statistics of held-out data must not leak in.
        train_only = dataclasses.replace(dataset, x_train=x_train, y_train=y_train)
        _, standardizer = fit_standardizer(train_only)
        x_train, x_val, x_test = (standardizer.transform(x) for x in (x_train, x_val, x_test))
    return Splits(dataset, x_train, y_train, x_val, y_val, x_test, y_test, standardizer, val_name)


def input_view(config: ModelConfig, dataset: Dataset) -> tuple[int, ...]:
    """The per-example shape the model sees: images for a 2-D CNN when the data has them."""
    if config.kind == "cnn" and dataset.image_shape is not None:
        return tuple(dataset.image_shape)
    return tuple(dataset.input_shape)


def loss_function(dataset: Dataset) -> Callable[[Tensor, Tensor], Tensor]:
    return nn.functional.cross_entropy if dataset.task == "classification" else _mse


def _mse(output: Tensor, target: Tensor) -> Tensor:
    return nn.functional.mse_loss(output, target)


def total_steps(config: TrainConfig, n_train: int) -> tuple[int, int]:
    """``(steps_per_epoch, total_steps)``."""
    per_epoch = math.ceil(n_train / config.batch_size)
    total = per_epoch * config.epochs
    return per_epoch, min(total, config.max_steps) if config.max_steps else total


def make_run_schedule(config: TrainConfig, optimizer: torch.optim.Optimizer, total: int):
    """The run's schedule, with lengths that were left out filled in from the step budget."""
    if config.snapshots:
        return CosineWarmRestarts(optimizer, t0=total // config.snapshots)
    if config.schedule is None:
        return None
    args = dict(config.schedule_args)
    defaults = {"cosine": "t_max", "onecycle": "total_steps"}
    if config.schedule in defaults:
        args.setdefault(defaults[config.schedule], total)
    try:
        return make_schedule(config.schedule, optimizer, **args)
    except ValueError as error:
        raise ConfigError(f"schedule: {error}") from None


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, loss_fn, batch: int = 4096) -> dict:
    """Mean loss (and accuracy for classification) over ``(x, y)`` in eval mode."""
    was_training = model.training
    model.eval()
    outputs = torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)])
    model.train(was_training)
    metrics = {"loss": float(loss_fn(outputs, y))}
    if y.dtype == torch.int64:
        metrics["accuracy"] = float((outputs.argmax(dim=1) == y).float().mean())
    return metrics


@torch.no_grad()
def ensemble_metrics(models_outputs: list[Tensor], y: Tensor, loss_fn) -> dict:
    """Average the members' softmax outputs (classification) or outputs (regression)."""
    if y.dtype == torch.int64:
        probs = torch.stack([o.softmax(dim=1) for o in models_outputs]).mean(dim=0)
        return {
            "loss": float(nn.functional.nll_loss(probs.clamp_min(1e-12).log(), y)),
            "accuracy": float((probs.argmax(dim=1) == y).float().mean()),
        }
    mean = torch.stack(models_outputs).mean(dim=0)
    return {"loss": float(loss_fn(mean, y))}
