"""The training loop: one network, mini-batches, evaluation each epoch, checkpoints, resume.

A run writes to its output folder::

    config.toml       the resolved config (a resumed run must match it)
    metrics.jsonl     one line per epoch: losses, accuracies, lr, wall time
    steps.csv         one line per update: loss and lr
    checkpoint.pt     the latest complete checkpoint (atomic), from which a killed run resumes
    model.pt          the final weights (plus the standardizer), for probes and pre-initialization
    summary.json      final metrics (and the snapshot ensemble's, when there is one)
    curves.png        train vs held-out loss and accuracy per epoch

Determinism: every source of randomness draws from a generator derived from ``config.seed``
(initialization, data order, dropout, gradient noise), and all of them are checkpointed, so
on CPU a run is a function of its config, and a run killed and resumed ends with the same
parameters as one that was not.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ravine.folders import (
    FolderTakenError,
    RunFolder,
    atomic_write_text,
    load_latest_checkpoint,
    save_checkpoint,
)
from ravine.optim import make_optimizer
from ravine.problems import PRESETS, Dataset, ModelConfig, build_model, load_dataset
from ravine.problems import standardize as fit_standardizer
from ravine.problems.models import pre_initialize
from ravine.schedules import CosineWarmRestarts, make_schedule
from ravine.train.config import ConfigError, TrainConfig, dump_toml

CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainResult:
    """What a finished run returns (everything is also on disk in ``out_dir``)."""

    out_dir: Path
    model: nn.Module
    history: list[dict[str, Any]]  # one record per epoch, as in metrics.jsonl
    final: dict[str, float]  # held-out and test metrics of the returned model
    ensemble: dict[str, float] | None  # snapshot ensemble's test metrics, when snapshots > 0
    steps: int  # updates done
    resumed_from_epoch: int | None  # the checkpoint's epoch, when the run resumed


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


def prepare_data(config: TrainConfig) -> Splits:
    """Load the data set, hold out a validation split, standardize on the training split."""
    try:
        dataset = load_dataset(config.dataset, **config.dataset_args)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"data: {error}") from None
    x_train, y_train = dataset.x_train, dataset.y_train
    x_test, y_test = dataset.x_test, dataset.y_test
    x_val, y_val, val_name = x_test, y_test, "test"
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


def train(
    config: TrainConfig,
    out_dir: str | Path,
    *,
    replace: bool = False,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    stop_after_epoch: int | None = None,
    callbacks: Sequence[Callable[[nn.Module, int], None]] = (),
) -> TrainResult:
    """Train one network as ``config`` says, writing to ``out_dir``; resume if it holds a
    checkpoint of the same config.

    ``out_dir`` belongs to this run (see :class:`ravine.folders.RunFolder`): a folder that
    holds another run is refused with :class:`ConfigError`, unless ``replace=True``, which
    removes that run's files once this config has been fully validated (data, model,
    optimizer and schedule built). A damaged checkpoint is never loaded: the run resumes from
    the previous one (``checkpoint.prev.pt``) if that is intact.

    ``on_progress`` gets ``{"step", "total", "epoch", "loss"}`` after each update and the
    epoch's metrics after each epoch. ``stop_after_epoch`` ends the run early (for tests and
    time-boxed sessions) as if it had been killed after that epoch's checkpoint.
    ``callbacks`` are called as ``callback(model, step)`` after every update (instruments such
    as :class:`ravine.probe.CurvatureTracker` hook in here); one with an ``attach(model,
    optimizer)`` method gets it called once, before the first update, and one with
    ``state_dict()`` / ``load_state_dict()`` is checkpointed with the run and restored when it
    resumes (so a resumed run's records cover the whole run).
    """
    if config.restarts > 1:
        raise ConfigError("train() runs one network; restarts > 1 go to train_restarts()")
    out = Path(out_dir)
    config_text = dump_toml(config.to_toml_tables())
    streams = seeds(config.seed)

    splits = prepare_data(config)
    mconfig = model_config(config)
    dataset = splits.dataset
    shape = input_view(mconfig, dataset)
    to_input = _reshaper(shape)
    num_outputs = dataset.num_classes or dataset.y_train.shape[1]
    model = build_model(mconfig, shape, num_outputs, generator=streams["init"])
    if config.pretrained:
        record = pre_initialize(model, config.pretrained, strict=False)
        if not record.loaded:
            raise ConfigError(f"pretrained: nothing in {config.pretrained} matches the model")
    loss_fn = loss_function(dataset)
    try:
        optimizer = make_optimizer(config.optimizer, model.parameters(), **config.optimizer_args)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"optimizer: {error}") from None
    per_epoch, total = total_steps(config, len(splits.x_train))
    if config.snapshots:
        # M whole cycles: the run ends where the M-th ends, at the lowest lr (the last few
        # updates of a budget that M does not divide are dropped rather than spent on the
        # first, largest-lr steps of a cycle that never finishes).
        if total < config.snapshots:
            raise ConfigError(f"snapshots={config.snapshots} needs at least that many updates")
        total = total // config.snapshots * config.snapshots
    schedule = make_run_schedule(config, optimizer, total)

    data_gen = torch.Generator().manual_seed(streams["data"])
    noise_gen = torch.Generator().manual_seed(streams["noise"])
    torch.manual_seed(streams["dropout"])  # dropout draws from the global generator
    for callback in callbacks:
        if hasattr(callback, "attach"):
            callback.attach(model, optimizer)
    history: list[dict[str, Any]] = []
    step_log: list[tuple[int, float, float]] = []  # (step, loss, lr)
    snapshots: list[dict[str, Tensor]] = []
    best = {"loss": math.inf, "epoch": 0, "state": None}
    start_epoch, step, resumed_from = 0, 0, None
    stopped_before = False

    # Only now, with everything validated: bad input leaves no folder behind, and a folder
    # to replace is emptied only for a run that can start.
    folder = claim_run_folder(out, config_text, replace=replace)
    try:
        checkpoint_path = out / CHECKPOINT
        state, note = load_latest_checkpoint(checkpoint_path) if folder.resuming else (None, "")
        if note:
            warnings.warn(note, ResumeWarning, stacklevel=2)
        if state is None and folder.resuming and folder.owner.finished:
            raise ConfigError(
                f"{out} holds this run, finished, but its checkpoint is gone: there is nothing "
                "to resume and its results are intact; to train it again, replace it (--replace)"
            )
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if schedule is not None:
                schedule.load_state_dict(state["schedule"])
            data_gen.set_state(state["data_gen"])
            noise_gen.set_state(state["noise_gen"])
            torch.set_rng_state(state["torch_rng"])
            history, step_log, snapshots = state["history"], state["steps"], state["snapshots"]
            best = state["best"]
            _load_callback_states(callbacks, state.get("callbacks", {}))
            start_epoch = resumed_from = state["epoch"]
            step = state["step"]
            # A run that had stopped early stays stopped (its checkpoint is its last epoch).
            stopped_before = bool(
                config.early_stopping and start_epoch - best["epoch"] >= config.early_stopping
            )
        folder.unfinish()
        atomic_write_text(out / "config.toml", config_text)

        if config.keep_weights and start_epoch == 0:
            _save_weights(out, model, 0)  # the initialization: where a trajectory starts
        cycle = total // config.snapshots if config.snapshots else 0
        started = time.perf_counter()
        seconds_before = history[-1]["seconds"] if history else 0.0  # wall time before a resume
        model.train()
        epoch = start_epoch
        stopped_early = stopped_before
        for epoch in range(start_epoch + 1, config.epochs + 1):
            if step >= total or stopped_early:
                break
            order = torch.randperm(len(splits.x_train), generator=data_gen)
            seen = correct = 0
            running = 0.0
            for i in range(per_epoch):
                if step >= total:
                    break
                index = order[i * config.batch_size : (i + 1) * config.batch_size]
                x, y = to_input(splits.x_train[index]), splits.y_train[index]
                optimizer.zero_grad()
                output = model(x)
                loss = loss_fn(output, y)
                loss.backward()
                if config.grad_noise:
                    _add_gradient_noise(model, config, step, noise_gen)
                optimizer.step()
                if schedule is not None:
                    schedule.step()
                step += 1
                value = float(loss.detach())
                step_log.append((step, value, optimizer.param_groups[0]["lr"]))
                running += value * len(index)
                seen += len(index)
                if y.dtype == torch.int64:
                    correct += int((output.detach().argmax(dim=1) == y).sum())
                if cycle and step % cycle == 0:
                    snapshots.append(_copy_state(model))
                for callback in callbacks:
                    callback(model, step)
                if on_progress is not None:
                    on_progress({"step": step, "total": total, "epoch": epoch, "loss": value})

            record: dict[str, Any] = {"epoch": epoch, "step": step, "train_loss": running / seen}
            if dataset.task == "classification":
                record["train_accuracy"] = correct / seen
            held_out = evaluate(model, to_input(splits.x_val), splits.y_val, loss_fn)
            record.update({f"{splits.val_name}_{k}": v for k, v in held_out.items()})
            if splits.val_name != "test":
                test = evaluate(model, to_input(splits.x_test), splits.y_test, loss_fn)
                record.update({f"test_{k}": v for k, v in test.items()})
            record["lr"] = optimizer.param_groups[0]["lr"]
            record["seconds"] = seconds_before + time.perf_counter() - started
            history.append(record)
            if held_out["loss"] < best["loss"]:
                best = {"loss": held_out["loss"], "epoch": epoch, "state": _copy_state(model)}
            if config.early_stopping and epoch - best["epoch"] >= config.early_stopping:
                stopped_early = True
            if on_progress is not None:
                on_progress({"step": step, "total": total, "epoch": epoch, "metrics": record})
            last = epoch == config.epochs or step >= total or stopped_early
            if config.keep_weights:
                _save_weights(out, model, epoch)
            if epoch % config.checkpoint_every == 0 or last:
                save_checkpoint(
                    {
                        "config": config_text,
                        "epoch": epoch,
                        "step": step,
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "schedule": schedule.state_dict() if schedule is not None else None,
                        "data_gen": data_gen.get_state(),
                        "noise_gen": noise_gen.get_state(),
                        "torch_rng": torch.get_rng_state(),
                        "history": history,
                        "steps": step_log,
                        "snapshots": snapshots,
                        "best": best,
                        "callbacks": _callback_states(callbacks),
                    },
                    checkpoint_path,
                    keep_previous=True,
                )
                _write_logs(out, history, step_log)
            if stop_after_epoch is not None and epoch >= stop_after_epoch and not last:
                return TrainResult(out, model, history, {}, None, step, resumed_from)

        if config.early_stopping and best["state"] is not None:
            # Early stopping hands back the best held-out model, not the last one.
            model.load_state_dict(best["state"])
        final = {
            f"{splits.val_name}_{k}": v
            for k, v in evaluate(model, to_input(splits.x_val), splits.y_val, loss_fn).items()
        }
        final.update(
            {
                f"test_{k}": v
                for k, v in evaluate(model, to_input(splits.x_test), splits.y_test, loss_fn).items()
            }
        )
        ensemble = None
        if snapshots:
            ensemble = _snapshot_ensemble(
                model, snapshots, to_input(splits.x_test), splits, loss_fn
            )
        _write_final(out, config, model, splits, history, step_log, final, ensemble)
        folder.finish()
        return TrainResult(out, model, history, final, ensemble, step, resumed_from)
    finally:
        folder.release()


class ResumeWarning(UserWarning):
    """A run resumed from an older checkpoint than its newest (which was damaged)."""


def claim_run_folder(out: Path, config_text: str, *, replace: bool = False) -> RunFolder:
    """Take ``out`` for the training run of ``config_text`` (see :class:`RunFolder`);
    ``ConfigError`` when it holds another run."""
    try:
        return RunFolder.claim(out, "train", config_text, replace=replace, describe=describe_change)
    except FolderTakenError as error:
        raise ConfigError(str(error)) from None


def describe_change(old: str, new: str) -> str:
    """The first keys in which two run configs (TOML text) differ, for a refusal message."""
    from ravine.train.config import tomllib

    try:
        before, after = (_flatten(tomllib.loads(text)) for text in (old, new))
    except tomllib.TOMLDecodeError:
        return "its config.toml is unreadable"
    changed = [k for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
    shown = [f"{k} = {_shown(before.get(k))} there, {_shown(after.get(k))} here" for k in changed]
    more = f", and {len(shown) - 3} more" if len(shown) > 3 else ""
    return "; ".join(shown[:3]) + more


def _flatten(tables: dict[str, Any]) -> dict[str, Any]:
    return {f"{t}.{k}": v for t, values in tables.items() for k, v in values.items()}


def _shown(value: Any) -> str:
    return "unset" if value is None else repr(value)


def _callback_keys(callbacks: Sequence[Any]) -> list[str]:
    # By class name (numbered when repeated): a resumed run may add or drop instruments.
    counts: dict[str, int] = {}
    keys = []
    for callback in callbacks:
        name = type(callback).__name__
        counts[name] = counts.get(name, 0) + 1
        keys.append(name if counts[name] == 1 else f"{name}#{counts[name]}")
    return keys


def _callback_states(callbacks: Sequence[Any]) -> dict[str, Any]:
    """What callbacks with a ``state_dict()`` have gathered so far, for the checkpoint.

    Each state must load back with ``torch.load(weights_only=True)`` (tensors, numbers,
    strings, lists, dicts): anything else would make the whole checkpoint unreadable at
    resume, model and optimizer included, so it is refused here, while the run can still
    be fixed.
    """
    states = {}
    for key, callback in zip(_callback_keys(callbacks), callbacks, strict=True):
        if not hasattr(callback, "state_dict"):
            continue
        state = callback.state_dict()
        buffer = io.BytesIO()
        torch.save(state, buffer)
        buffer.seek(0)
        try:
            torch.load(buffer, weights_only=True)
        except Exception as error:
            raise TypeError(
                f"callback {key}: state_dict() holds something a checkpoint cannot load back "
                f"safely (use tensors, numbers, strings, lists and dicts): {error}"
            ) from None
        states[key] = state
    return states


def _load_callback_states(callbacks: Sequence[Any], states: dict[str, Any]) -> None:
    for key, callback in zip(_callback_keys(callbacks), callbacks, strict=True):
        if key in states and hasattr(callback, "load_state_dict"):
            callback.load_state_dict(states[key])


def _save_weights(out: Path, model: nn.Module, epoch: int) -> None:
    save_checkpoint({"model": model.state_dict()}, out / "weights" / f"epoch-{epoch:04d}.pt")


def _reshaper(shape: tuple[int, ...]) -> Callable[[Tensor], Tensor]:
    return lambda x: x.reshape(len(x), *shape)


def _add_gradient_noise(model: nn.Module, config: TrainConfig, step: int, gen) -> None:
    # Neelakantan et al. (2015): g += N(0, sigma_t^2), sigma_t^2 = eta / (1 + t)^gamma.
    std = math.sqrt(config.grad_noise / (1 + step) ** config.grad_noise_gamma)
    for p in model.parameters():
        if p.grad is not None:
            p.grad.add_(torch.randn(p.grad.shape, generator=gen, dtype=p.grad.dtype) * std)


def _copy_state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _snapshot_ensemble(model, snapshots, x_test, splits, loss_fn) -> dict[str, float]:
    current = _copy_state(model)
    outputs, singles = [], []
    model.eval()
    with torch.no_grad():
        for state in snapshots:
            model.load_state_dict(state)
            outputs.append(model(x_test))
            singles.append(evaluate(model, x_test, splits.y_test, loss_fn))
    model.load_state_dict(current)
    model.train()
    metrics = {
        f"ensemble_{k}": v for k, v in ensemble_metrics(outputs, splits.y_test, loss_fn).items()
    }
    metrics["members"] = len(snapshots)
    for key in singles[0]:
        metrics[f"best_member_{key}"] = (
            max(s[key] for s in singles) if key == "accuracy" else min(s[key] for s in singles)
        )
    return metrics


def _write_logs(out: Path, history, step_log) -> None:
    # Rewritten whole from the checkpointed history, so a resumed run's logs have no
    # duplicated or missing lines.
    buffer = io.StringIO()
    for record in history:
        buffer.write(json.dumps(record) + "\n")
    atomic_write_text(out / "metrics.jsonl", buffer.getvalue())
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["step", "loss", "lr"])
    writer.writerows(step_log)
    atomic_write_text(out / "steps.csv", buffer.getvalue())


def _write_final(out, config, model, splits, history, step_log, final, ensemble) -> None:
    _write_logs(out, history, step_log)
    save_checkpoint(
        {
            "model": model.state_dict(),
            "standardizer": splits.standardizer.state_dict() if splits.standardizer else None,
            "config": dump_toml(config.to_toml_tables()),
        },
        out / "model.pt",
    )
    summary = {"final": final, "ensemble": ensemble, "epochs": len(history)}
    if history:
        summary["seconds"] = history[-1]["seconds"]
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    from ravine.report.training import plot_training_curves

    plot_training_curves(history, out / "curves.png", title=f"{config.dataset}: {config.model}")
