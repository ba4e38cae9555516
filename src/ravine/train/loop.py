"""The training run: epochs, evaluation, early stopping, pruning, checkpoints, resume.

:func:`train` runs one config as N >= 1 members (:mod:`ravine.train.trainer`: one network as
the plain module, several as one batched computation) and writes the run folder
(:mod:`ravine.train.outputs`). Determinism: every source of randomness draws from a generator
derived from a member's seed (initialization, data order, dropout, gradient noise), and all of
them are checkpointed, so on CPU a run is a function of its config, and a run killed and
resumed ends with the same parameters as one that was not.
"""

from __future__ import annotations

import dataclasses
import io
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
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
from ravine.train import budget, outputs
from ravine.train.build import (
    ensemble_metrics,
    loss_function,
    pin_data_file,
    prepare_data,
    seeds,
    split_dataset,
)
from ravine.train.config import ConfigError, TrainConfig, dump_toml
from ravine.train.devices import resolve_device
from ravine.train.stacked import METHODS
from ravine.train.trainer import (
    CHECKPOINT,
    Member,
    MembersResult,
    ResumeWarning,
    Trainer,
    TrainResult,
    restart_members,
    to_cpu,
    to_device,
)

#: ``on_epoch(epoch, metrics) -> members to stop``: ``metrics`` maps each member still training
#: to its epoch record (``train_loss``, ``val_loss``, ... as floats); the members returned
#: are pruned (a tuning study's pruner decides), stop costing compute, and keep their state.
EpochHook = Callable[[int, Mapping[int, Mapping[str, float]]], Sequence[int] | None]


def train(
    config: TrainConfig,
    out_dir: str | Path | None,
    *,
    members: Sequence[Member] | None = None,
    replace: bool = False,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    on_epoch: EpochHook | None = None,
    stop_after_epoch: int | None = None,
    callbacks: Sequence[Callable[[nn.Module, int], None]] = (),
    device: str | torch.device | None = None,
    method: str = "auto",
    model: Callable[..., nn.Module] | None = None,
    data: Any = None,
    compile: bool = False,
    progress_every: int | None = None,
) -> TrainResult | MembersResult:
    """Train ``config`` into ``out_dir``; resume if the folder holds this run's checkpoint.

    Args:
        config: the run. ``restarts = N`` trains N members with seeds ``seed + k``.
        out_dir: the run folder (see :class:`ravine.folders.RunFolder`: a folder that holds
            another run is refused with :class:`ConfigError`). ``None``: train in memory, no
            files (a tuning study's batch of trials).
        members: the members to train, each a seed and its own optimizer hyperparameters
            (instead of ``config.restarts``); returns a :class:`MembersResult` even for one.
        replace: replace the run ``out_dir`` holds, only once this config is fully
            validated (data, model, optimizer and schedule built).
        on_progress: called with ``{"step", "total", "epoch", "loss"}`` every
            ``progress_every`` updates (the median member's loss: reading it is a host sync,
            so only when given) and ``{"step", "total", "epoch", "metrics"}`` after each epoch.
        on_epoch: after each epoch's evaluation, may prune members (see ``EpochHook``).
        stop_after_epoch: return after this epoch's checkpoint, as if killed (tests).
        callbacks: one-network runs only: ``callback(model, step)`` after every update; one
            with ``attach(model, optimizer)`` gets it once, before the first update; one with
            ``state_dict()`` / ``load_state_dict()`` is checkpointed with the run.
        device: where to train: ``"cpu"`` (the default), ``"cuda"``, ``"cuda:N"``, ``"mps"``
            or ``"auto"`` (the best available). Nothing is read back to the host during an
            epoch (losses and accuracy accumulate on the device), except for ``on_progress``.
            ``config.precision`` sets mixed precision (``"bf16"``, ``"fp16"``).
        method: ``"auto"``, ``"vmap"`` or ``"bmm"`` for several members (see
            :mod:`ravine.train.stacked`); ``"auto"`` trains one member as the plain module.
        model: your own network instead of the config's: a factory ``factory(seed)`` or
            ``factory()`` returning an ``nn.Module`` (see :mod:`ravine.train.user`). Several
            members need a model vmap can batch; that is checked before training starts.
        data: your own data instead of the config's data set: ``(x_train, y_train, x_test,
            y_test)`` tensors, or ``(train, test)`` each ``(x, y)``, a torch ``Dataset`` or a
            ``DataLoader``. The config's split, standardization and batch size apply. Both are
            recorded in config.toml by fingerprint: a folder resumes only with the same ones.
        compile: ``torch.compile`` the model's forward (the first updates compile it).
        progress_every: updates between ``on_progress`` loss reports (default 1 on the CPU,
            where reading a loss costs nothing, 25 on accelerators).

    A damaged checkpoint is never loaded: the run resumes from the previous one
    (``checkpoint.prev.pt``) if that is intact, with a :class:`ResumeWarning`.

    Example::

        >>> from ravine.train import TrainConfig, train
        >>> result = train(TrainConfig(epochs=3), "runs/digits")  # doctest: +SKIP
        >>> restarts = train(TrainConfig(restarts=8, epochs=5), "runs/restarts")  # doctest: +SKIP
        >>> restarts.summary["test_loss"]["median"], restarts.ensemble["accuracy"]  # doctest: +SKIP
    """
    if members is not None and config.restarts > 1:
        raise ConfigError("give either members or restarts > 1, not both")
    many = members is not None or config.restarts > 1
    members = list(members) if members is not None else restart_members(config)
    n = len(members)
    if n > 1 and config.snapshots:
        raise ConfigError("snapshots with several members is not supported; use restarts = 1")
    if n > 1 and config.keep_weights:
        raise ConfigError("keep_weights with several members is not supported; use restarts = 1")
    if n > 1 and callbacks:
        raise ConfigError("training callbacks watch one network; use restarts = 1")
    if method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    try:
        device = resolve_device(device)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if progress_every is not None and (
        isinstance(progress_every, bool)
        or not isinstance(progress_every, int)
        or progress_every < 1
    ):
        raise ConfigError(f"progress_every must be an integer >= 1, got {progress_every!r}")
    every = progress_every or (1 if device.type == "cpu" else 25)

    config = pin_data_file(config)  # from Python too, as the CLI records it
    config, splits, network = with_user_parts(config, model, data)
    config_text = dump_toml(config.to_toml_tables())
    # the update count and memory, before any work
    budget.check(config, splits, copies=n, network=network)
    trainer = Trainer(
        config,
        splits,
        members,
        method=method if n > 1 else "auto",
        device=device,
        compile=compile,
        model=model,
    )
    if config.snapshots and trainer.total < config.snapshots:
        raise ConfigError(f"snapshots={config.snapshots} needs at least that many updates")
    run = _Run(config, splits, trainer, callbacks, many, device)
    run.progress_every = every
    if out_dir is None:
        return run.go(None, stop_after_epoch, on_progress, on_epoch)
    out = Path(out_dir)
    # Only now, with everything validated: bad input leaves no folder behind, and a folder
    # to replace is emptied only for a run that can start.
    folder = claim_run_folder(out, config_text, replace=replace)
    try:
        run.resume(folder, config_text)
        return run.go(folder, stop_after_epoch, on_progress, on_epoch)
    finally:
        folder.release()


def with_user_parts(config: TrainConfig, model, data):
    """The config as the run records it, its splits, and (for a user model) one network built
    for the fingerprint and the memory estimate. A study of a user's task records its trials'
    config the same way (``ravine.study.tune``)."""
    from ravine.train import user

    if model is None and data is None:
        return config, prepare_data(config), None
    fingerprints = dict(config.user)
    changes: dict[str, Any] = {}
    if data is not None:
        try:
            dataset = user.user_dataset(data)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        fingerprints["data"] = user.data_fingerprint(dataset)
        changes.update(dataset=user.USER, dataset_args={})
        splits = split_dataset(config, dataset)
    else:
        splits = prepare_data(config)
    network = None
    if model is not None:
        try:
            network = user.build_user_model(model, config.seed, seeds(config.seed)["init"])
        except ValueError as error:
            raise ConfigError(str(error)) from None
        fingerprints["model"] = user.model_fingerprint(network)
        changes.update(model=user.USER, model_args={})
    return dataclasses.replace(config, user=fingerprints, **changes), splits, network


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


class _Run:
    """One run's epochs and bookkeeping around a :class:`Trainer`."""

    def __init__(self, config, splits, trainer: Trainer, callbacks, many: bool, device) -> None:
        self.config, self.splits, self.trainer = config, splits, trainer
        self.callbacks = list(callbacks)
        self.many = many  # report per member (MembersResult), even for one member
        self.device = device
        self.progress_every = 1
        self.val_name = splits.val_name
        self.x_train, self.y_train = splits.x_train.to(device), splits.y_train.to(device)
        self.held_out = {splits.val_name: (splits.x_val.to(device), splits.y_val.to(device))}
        if splits.val_name != "test":
            self.held_out["test"] = (splits.x_test.to(device), splits.y_test.to(device))
        n = trainer.n
        self.history: list[dict[str, Any]] = []
        self.step_log: list[tuple] = []
        self.snapshots: list[dict[str, Tensor]] = []
        self.retired: dict[int, dict[str, Any]] = {}  # member -> reason, epoch, step, state
        self.best: dict[str, Any] | None = None
        if config.early_stopping:
            self.best = {
                "loss": torch.full((n,), math.inf, device=device),
                "epoch": torch.zeros(n, dtype=torch.int64, device=device),
                "state": trainer.net.state(),
            }
        self.start_epoch, self.resumed_from = 0, None
        torch.manual_seed(seeds(trainer.members[0].seed)["dropout"])  # dropout: global generator
        for callback in self.callbacks:
            if hasattr(callback, "attach"):
                callback.attach(trainer.net.model, trainer.optimizer)

    # -- resume -----------------------------------------------------------------------------

    def resume(self, folder: RunFolder, config_text: str) -> None:
        out = folder.path
        state, note = load_latest_checkpoint(out / CHECKPOINT) if folder.resuming else (None, "")
        if note:
            warnings.warn(note, ResumeWarning, stacklevel=3)
        if state is None and folder.resuming and folder.owner.finished:
            raise ConfigError(
                f"{out} holds this run, finished, but its checkpoint is gone: there is nothing "
                "to resume and its results are intact; to train it again, replace it (--replace)"
            )
        if state is not None:
            if state.get("config") != config_text or "trainer" not in state:
                raise ConfigError(
                    f"{out}/{CHECKPOINT} was written by another run or an older ravine and "
                    "cannot be resumed; replace the run (--replace) or use another folder"
                )
            if state["trainer"] is None:  # every member had left
                self.trainer.retire_all()
            else:
                self.trainer.load_state_dict(state["trainer"])
            torch.set_rng_state(state["torch_rng"])
            if self.device.type == "cuda" and state.get("cuda_rng") is not None:
                torch.cuda.set_rng_state(state["cuda_rng"], self.device)
            self.history = state["history"]
            self.step_log = [tuple(s) for s in state["steps"]]
            self.snapshots = state["snapshots"]
            self.retired = {int(k): v for k, v in state["retired"].items()}
            if self.best is not None:
                self.best = to_device(state["best"], self.device)
            _load_callback_states(self.callbacks, state.get("callbacks", {}))
            self.start_epoch = self.resumed_from = state["epoch"]
        self.folder = folder
        folder.unfinish()
        atomic_write_text(out / "config.toml", config_text)

    # -- the epochs -------------------------------------------------------------------------

    def go(self, folder, stop_after_epoch, on_progress, on_epoch):
        config, trainer = self.config, self.trainer
        out = folder.path if folder is not None else None
        self.folder = folder
        if config.keep_weights and self.start_epoch == 0 and out is not None:
            _save_weights(
                out, trainer.net.model, 0
            )  # the initialization: where a trajectory starts
        cycle = trainer.total // config.snapshots if config.snapshots else 0
        started = time.perf_counter()
        seconds_before = self.history[-1]["seconds"] if self.history else 0.0
        total = trainer.total
        for epoch in range(self.start_epoch + 1, config.epochs + 1):
            if trainer.step >= total or trainer.n == 0 or self._stopped():
                break

            def on_step(losses: Tensor, epoch: int = epoch) -> None:
                if trainer.step % self.progress_every and trainer.step != total:
                    return
                loss = outputs.median(losses.view(-1).tolist())  # a host sync: every K updates
                on_progress({"step": trainer.step, "total": total, "epoch": epoch, "loss": loss})

            def after_update(step: int) -> None:
                if cycle and step % cycle == 0:
                    self.snapshots.append(trainer.net.state())
                for callback in self.callbacks:
                    callback(trainer.net.model, step)

            ids = list(trainer.ids)  # the members that train this epoch
            stats = trainer.run_epoch(
                self.x_train,
                self.y_train,
                on_step=on_step if on_progress is not None else None,
                after_update=after_update if (cycle or self.callbacks) else None,
            )
            trainer.check_finite()  # a step refused on the device raises here at the latest
            record, per_row = self._record(epoch, ids, stats)
            record["seconds"] = seconds_before + time.perf_counter() - started
            self.history.append(record)
            self._retire(epoch, ids, per_row, on_epoch)
            if on_progress is not None:
                on_progress(
                    {"step": trainer.step, "total": total, "epoch": epoch, "metrics": record}
                )
            last = (
                epoch == config.epochs or trainer.step >= total or trainer.n == 0 or self._stopped()
            )
            if out is not None:
                if config.keep_weights:
                    _save_weights(out, trainer.net.model, epoch)
                if epoch % config.checkpoint_every == 0 or last:
                    save_checkpoint(self._checkpoint(epoch), out / CHECKPOINT, keep_previous=True)
                    outputs.write_logs(
                        out, self.history, self.step_log, 1 if not self.trainer.stacked else 2
                    )
            if stop_after_epoch is not None and epoch >= stop_after_epoch and not last:
                return self._partial()
        result = self._finish()
        if folder is not None:
            folder.finish()
        return result

    def _stopped(self) -> bool:
        # A one-network run that early stopping stopped stays stopped (also after a resume).
        return not self.trainer.stacked and bool(self.retired)

    def _record(self, epoch: int, ids: list[int], stats) -> tuple[dict, dict[str, Tensor]]:
        trainer = self.trainer
        n_all = len(trainer.members)
        first = trainer.step - len(stats["lrs"]) + 1
        for i, (row, lr) in enumerate(zip(stats["losses"].tolist(), stats["lrs"], strict=True)):
            if trainer.stacked:
                self.step_log.append(
                    (first + i, lr, outputs.median(row), *outputs.value_range(row))
                )
            else:
                self.step_log.append((first + i, row[0], lr))
        seen = stats["seen"]
        per_row: dict[str, Tensor] = {"train_loss": stats["loss_sum"] / seen}
        if trainer.task == "classification":
            per_row["train_accuracy"] = stats["correct"].double() / seen
        for name, (x, y) in self.held_out.items():
            for key, value in trainer.metrics(trainer.outputs(x), y).items():
                per_row[f"{name}_{key}"] = value
        record: dict[str, Any] = {"epoch": epoch, "step": trainer.step}
        if not trainer.stacked:
            record.update({k: float(v[0]) for k, v in per_row.items()})
            record["lr"] = trainer.lr()
            return record, per_row
        # The keys of a one-network record hold the median over the members that trained
        # this epoch and have not diverged, so anything reading one run's metrics reads these;
        # "per_member" holds every member's value (None for NaN/Inf and for a member that
        # had left: its one-member run would have no such epoch).
        diverged_rows = set(trainer.diverged) if trainer.retire_diverged else set()
        record["per_member"] = {}
        for key, value in per_row.items():
            values: list[float | None] = [None] * n_all
            for row, v in zip(range(len(ids)), value.tolist(), strict=True):
                values[ids[row]] = v
            record["per_member"][key] = outputs.strict_json(values)
            kept = [v for row, v in enumerate(value.tolist()) if row not in diverged_rows]
            record[key] = outputs.median(kept)
        record["diverged"] = sorted(
            [m for m, r in self.retired.items() if r["reason"] == "diverged"]
            + [ids[r] for r in diverged_rows]
        )
        if self.config.early_stopping:
            record["stopped"] = sorted(
                m for m, r in self.retired.items() if r["reason"] == "stopped"
            )
        record["lr"] = trainer.lr()
        return record, per_row

    def _retire(self, epoch: int, ids: list[int], per_row: dict[str, Tensor], on_epoch) -> None:
        """Members leave: diverged, early-stopped, pruned; the batch shrinks to the rest."""
        trainer, config = self.trainer, self.config
        leaving: dict[int, str] = {}  # row -> reason
        diverged = set(trainer.diverged)
        if trainer.stacked and trainer.retire_diverged:
            leaving.update({row: "diverged" for row in diverged})
        val_loss = per_row[f"{self.val_name}_loss"]
        if self.best is not None:
            improved = val_loss < self.best["loss"]
            self.best["loss"] = torch.where(improved, val_loss, self.best["loss"])
            self.best["epoch"] = torch.where(improved, epoch, self.best["epoch"])
            self.best["state"] = _keep_improved(self.best["state"], trainer.net.state(), improved)
            patience_out = (epoch - self.best["epoch"] >= config.early_stopping).tolist()
            for row, out in enumerate(patience_out):
                if out and row not in leaving:
                    leaving[row] = "stopped"
        if on_epoch is not None:
            live = {
                ids[row]: {k: float(v[row]) for k, v in per_row.items()}
                for row in range(len(ids))
                if row not in leaving
            }
            for member in on_epoch(epoch, live) or ():
                leaving.setdefault(ids.index(member), "pruned")
        if not leaving:
            return
        current = trainer.net.state()
        for row, reason in leaving.items():
            state = self.best["state"] if reason == "stopped" and self.best is not None else current
            self.retired[ids[row]] = {
                "reason": reason,
                "epoch": epoch,
                "step": trainer.step,
                "diverged_at_step": int(trainer.diverged_step[row]) if row in diverged else None,
                "best_epoch": int(self.best["epoch"][row]) if self.best is not None else None,
                "state": _rows(state, row) if trainer.stacked else state,
            }
        if trainer.stacked:
            rows = [r for r in range(len(ids)) if r not in leaving]
            if rows:
                trainer.keep(rows)
                if self.best is not None:
                    self.best = _take(self.best, rows)
            else:
                trainer.retire_all()

    def _checkpoint(self, epoch: int) -> dict[str, Any]:
        return {
            "config": dump_toml(self.config.to_toml_tables()),
            "epoch": epoch,
            "trainer": self.trainer.state_dict() if self.trainer.n else None,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device)
            if self.device.type == "cuda"
            else None,
            "history": self.history,
            "steps": [list(s) for s in self.step_log],
            "snapshots": self.snapshots,
            "retired": {str(k): to_cpu(v) for k, v in self.retired.items()},
            "best": to_cpu(self.best) if self.best is not None else None,
            "callbacks": _callback_states(self.callbacks),
        }

    # -- the end ----------------------------------------------------------------------------

    def _final_states(self):
        """Each member's final state, in member order: retired ones as they left; the others
        at their best held-out epoch with early stopping, else as they are."""
        trainer = self.trainer
        live = {}
        if trainer.n:
            source = self.best["state"] if self.best is not None else trainer.net.state()
            for row, member in enumerate(trainer.ids):
                live[member] = _rows(source, row) if trainer.stacked else source
        states = []
        for member in range(len(trainer.members)):
            states.append(self.retired[member]["state"] if member in self.retired else live[member])
        return states

    def _partial(self):
        trainer = self.trainer
        if not self.many:
            return TrainResult(
                self.folder.path if self.folder else None,
                trainer.net.model,
                self.history,
                {},
                None,
                trainer.step,
                self.resumed_from,
            )
        params, buffers = _stack(self._final_states(), trainer)
        return MembersResult(
            self.folder.path if self.folder else None,
            trainer.architecture,
            trainer.members,
            params,
            buffers,
            self.history,
            [],
            {},
            None,
            [],
            {},
            trainer.step,
            trainer.method,
            self.resumed_from,
        )

    def _finish(self):
        trainer, config, splits = self.trainer, self.config, self.splits
        out = self.folder.path if self.folder is not None else None
        states = self._final_states()
        if not self.many:
            model = trainer.net.model
            model.load_state_dict(states[0])
            final = {}
            for name in dict.fromkeys((self.val_name, "test")):
                x, y = self.held_out[name]
                final.update(
                    {
                        f"{name}_{k}": float(v[0])
                        for k, v in trainer.metrics(trainer.outputs(x), y).items()
                    }
                )
            ensemble = self._snapshot_ensemble(model) if self.snapshots else None
            if out is not None:
                outputs.write_logs(out, self.history, self.step_log, 1)
                outputs.write_single(
                    out,
                    config,
                    model.state_dict(),
                    splits.standardizer,
                    self.history,
                    final,
                    ensemble,
                )
            return TrainResult(
                out, model, self.history, final, ensemble, trainer.step, self.resumed_from
            )

        params, buffers = _stack(states, trainer)
        evaluator = _evaluator(trainer, params, buffers)
        n = len(trainer.members)
        diverged = [m for m, r in self.retired.items() if r["reason"] == "diverged"]
        for k in range(n):  # the parameters themselves may have overflowed without a NaN grad
            if k not in diverged and not all(bool(p[k].isfinite().all()) for p in params.values()):
                diverged.append(k)
        diverged.sort()
        final_metrics: dict[str, Tensor] = {}
        test_outputs = None
        for name, (x, y) in {"train": (self.x_train, self.y_train), **self.held_out}.items():
            out_x = evaluator(x)
            if name == "test":
                test_outputs = out_x
            for key, value in trainer.metrics(out_x, y).items():
                final_metrics[f"{name}_{key}"] = value
        final = [{key: float(values[k]) for key, values in final_metrics.items()} for k in range(n)]
        healthy = [k for k in range(n) if k not in diverged]
        summary = outputs.summarize(final, healthy, f"{self.val_name}_loss")
        ensemble = None
        if healthy and test_outputs is not None:
            members = [test_outputs[k] for k in healthy]
            ensemble = ensemble_metrics(
                members, self.held_out["test"][1], loss_function(splits.dataset)
            )
            ensemble["members"] = len(members)
        retired = {m: {k: v for k, v in r.items() if k != "state"} for m, r in self.retired.items()}
        result = MembersResult(
            out,
            trainer.architecture,
            trainer.members,
            {k: v.detach().cpu() for k, v in params.items()},
            {k: v.cpu() for k, v in buffers.items()},
            self.history,
            final,
            summary,
            ensemble,
            diverged,
            retired,
            trainer.step,
            trainer.method,
            self.resumed_from,
        )
        if out is not None:
            outputs.write_logs(out, self.history, self.step_log, 2)
            outputs.write_members(
                out, config, result, splits.standardizer, self._member_rows(result)
            )
        return result

    def _member_rows(self, result: MembersResult) -> list[dict]:
        rows = []
        for k, metrics in enumerate(result.final):
            left = self.retired.get(k, {})
            row: dict[str, Any] = {
                "member": k,
                "seed": result.members[k].seed,
                "diverged": k in result.diverged,
                "diverged_at_step": left.get("diverged_at_step"),
            }
            if self.best is not None:
                row["best_epoch"] = left.get("best_epoch", self._live_best_epoch(k))
            row.update({key: v if math.isfinite(v) else None for key, v in metrics.items()})
            rows.append(row)
        return rows

    def _live_best_epoch(self, member: int) -> int | None:
        ids = self.trainer.ids
        return int(self.best["epoch"][ids.index(member)]) if member in ids else None

    def _snapshot_ensemble(self, model: nn.Module) -> dict[str, float]:
        x_test, y_test = self.held_out["test"]
        loss_fn = loss_function(self.splits.dataset)
        current = {k: v.clone() for k, v in model.state_dict().items()}
        outs, singles = [], []
        for state in self.snapshots:
            out = self.trainer.outputs(x_test, state)
            outs.append(out[0])
            singles.append({k: float(v[0]) for k, v in self.trainer.metrics(out, y_test).items()})
        model.load_state_dict(current)
        metrics = {f"ensemble_{k}": v for k, v in ensemble_metrics(outs, y_test, loss_fn).items()}
        metrics["members"] = len(self.snapshots)
        for key in singles[0]:
            pick = max if key == "accuracy" else min
            metrics[f"best_member_{key}"] = pick(s[key] for s in singles)
        return metrics


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _keep_improved(best, current, improved: Tensor):
    """Per row: ``current`` where ``improved``, else ``best`` (stacked or one state dict)."""
    if isinstance(best, tuple):
        return tuple(
            {
                k: torch.where(improved.view(-1, *[1] * (v.dim() - 1)), current_part[k], v)
                for k, v in best_part.items()
            }
            for best_part, current_part in zip(best, current, strict=True)
        )
    return current if bool(improved[0]) else best


def _rows(state, row: int):
    params, buffers = state
    return (
        {k: v[row].clone() for k, v in params.items()},
        {k: v[row].clone() for k, v in buffers.items()},
    )


def _take(best: dict, rows: list[int]) -> dict:
    index = torch.tensor(rows, dtype=torch.long)
    params, buffers = best["state"]
    return {
        "loss": best["loss"][index.to(best["loss"].device)],
        "epoch": best["epoch"][index.to(best["epoch"].device)],
        "state": (
            {k: v[index.to(v.device)] for k, v in params.items()},
            {k: v[index.to(v.device)] for k, v in buffers.items()},
        ),
    }


def _stack(states, trainer: Trainer):
    """Per-member states -> stacked ``(N, ...)`` params and buffers."""
    if trainer.stacked:
        names_p = states[0][0].keys()
        names_b = states[0][1].keys()
        params = {k: torch.stack([s[0][k] for s in states]) for k in names_p}
        buffers = {k: torch.stack([s[1][k] for s in states]) for k in names_b}
        return params, buffers
    model = trainer.net.model
    param_names = {name for name, _ in model.named_parameters()}
    params = {k: v.detach().unsqueeze(0).clone() for k, v in states[0].items() if k in param_names}
    buffers = {k: v.unsqueeze(0).clone() for k, v in states[0].items() if k not in param_names}
    return params, buffers


def _evaluator(trainer: Trainer, params, buffers):
    if trainer.stacked:
        return lambda x: trainer.outputs(x, (params, buffers))
    state = {**{k: v[0] for k, v in params.items()}, **{k: v[0] for k, v in buffers.items()}}
    return lambda x: trainer.outputs(x, state)


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
