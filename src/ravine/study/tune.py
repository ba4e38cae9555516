"""Hyperparameter search with Optuna, trials trained N at a time as one batched computation.

``run_tune(config, out)`` asks Optuna for a batch of trials (``study.ask()``), trains them as
the members of one run (:func:`ravine.train.train` with ``members=``: each trial a member with
its own hyperparameters, all with the config's seed, so that trials differ only in what is
searched), reports every member's validation value each epoch so Optuna's pruner can stop it
inside the batch (a pruned member leaves the batch and stops costing compute), and tells
Optuna each trial's value: the best validation value over its epochs (retrospective
checkpoint selection, as the Deep Learning Tuning Playbook recommends).

The study lives in an Optuna RDB storage — SQLite in the output folder by default — the
single source of truth: kill the process at any moment and run the same command again, and
every finished trial is kept; the trials that were running are marked failed (``stale``) and
re-run with the same hyperparameters; nothing finished is computed twice. A failed trial (its
training diverged, or its batch raised) is recorded as failed and the study goes on.

Samplers: ``tpe`` (default; Optuna's multivariate TPE with the constant liar, which keeps a
batch of pending trials apart), ``qmc`` (scrambled Sobol points, the quasi-random search the
Tuning Playbook and AlgoPerf recommend), ``random`` and ``grid``. Pruners: ``none``,
``median`` and ``halving`` (asynchronous successive halving, which compares the trials of a
batch with each other), ``hyperband``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ravine.study.space import Range, describe, hyperparameters, resolve_space
from ravine.train.config import TrainConfig, dump_toml

SAMPLERS = ("tpe", "qmc", "random", "grid")
PRUNERS = ("none", "median", "halving", "hyperband")
METRICS = ("val_loss", "val_accuracy")
STUDY_DB = "study.db"
_STALE = "ravine_stale"  # user attr of a trial that was running when its process died
_OWNER = "ravine_owner"  # user attr: the output folder that runs the trial
RESULT = "ravine"  # user attr: what ravine records of a finished trial (epochs, seeds, ...)


def trial_record(trial) -> dict[str, Any]:
    """What ravine recorded of a trial when it finished (``{}`` before, or if it crashed)."""
    return trial.user_attrs.get(RESULT, {})


def trial_curve(trial) -> list[tuple[int, float]]:
    """The trial's validation value per epoch, ``[(epoch, value), ...]``.

    With a pruner the values are Optuna's intermediate values (reported each epoch, which the
    pruner reads); without one they are kept in the trial's record and written once when it
    finishes, since a report per trial and epoch is a storage transaction (64 trials x 20
    epochs took 3.7 s of SQLite on this CPU, a third of the batched training itself).
    """
    if trial.intermediate_values:
        return sorted(trial.intermediate_values.items())
    return [(int(epoch), float(value)) for epoch, value in trial_record(trial).get("curve", [])]


@dataclass(frozen=True)
class TuneConfig:
    """A tuning study of one optimizer on one training run. ``TuneConfig()`` tunes Adam's
    learning rate on the digits MLP."""

    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=20, val_fraction=0.2))
    space: Mapping[str, Range] = field(default_factory=dict)  # empty: lr alone
    trials: int = 32  # trials to finish (complete, pruned or failed)
    batch: int = 16  # trials trained together as one batched computation
    sampler: str = "tpe"
    pruner: str = "none"
    metric: str = "val_loss"  # the validation value a trial is judged by (best over epochs)
    seed: int = 0  # the sampler's seed
    seeds: int = 1  # networks per trial (seeds train.seed + j); its value is their mean
    grid_points: int = 8  # per searched quantity, with sampler = "grid"
    study_name: str = "ravine-tune"

    def __post_init__(self) -> None:
        for key, low in (
            ("trials", 1),
            ("batch", 1),
            ("seed", 0),
            ("seeds", 1),
            ("grid_points", 2),
        ):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{key} must be an integer >= {low}, got {value!r}")
        for key, valid in (("sampler", SAMPLERS), ("pruner", PRUNERS), ("metric", METRICS)):
            if getattr(self, key) not in valid:
                raise ValueError(f"unknown {key} {getattr(self, key)!r}; valid: {', '.join(valid)}")
        if self.train.val_fraction <= 0:
            raise ValueError(
                "tuning needs a validation split (train.val_fraction > 0): judging trials on "
                "the test split would leak it into the choice"
            )
        if self.train.restarts != 1:
            raise ValueError("tune trains one network per trial: set train.restarts = 1")
        space = resolve_space(self.train.optimizer, dict(self.space) or None)
        _check_values(self.train, space)
        object.__setattr__(self, "space", space)

    @property
    def direction(self) -> str:
        return "maximize" if self.metric.endswith("accuracy") else "minimize"

    def describe(self) -> str:
        """The study's identity as text: a rerun must match it to continue the study."""
        document = {
            "train": dump_toml(self.train.to_toml_tables()),
            "space": describe(self.space),
            "trials": self.trials,
            "sampler": self.sampler,
            "pruner": self.pruner,
            "metric": self.metric,
            "seed": self.seed,
            "seeds": self.seeds,
            "grid_points": self.grid_points,
            "study_name": self.study_name,
        }
        return json.dumps(document, indent=1, sort_keys=True)


def _check_values(train: TrainConfig, space: Mapping[str, Range]) -> None:
    """Build the optimizer once at each end of every range (and with every choice) on a
    throwaway parameter: a value the optimizer refuses fails here, before any trial runs."""
    import torch

    from ravine.optim import make_optimizer

    for name, r in space.items():
        for value in r.choices if r.choices is not None else (r.low, r.high):
            args, _ = hyperparameters(train.optimizer, {name: value}, train.optimizer_args)
            try:
                make_optimizer(train.optimizer, [torch.zeros(1, requires_grad=True)], **args)
            except (ValueError, TypeError) as error:
                raise ValueError(f"space {name}: {value!r} cannot be searched: {error}") from None


@dataclass
class TuneResult:
    """A finished (or resumed and finished) study."""

    out_dir: Path | None
    study: Any  # optuna.Study
    config: TuneConfig
    best_params: dict[str, Any]  # the searched names (lr, one_minus_beta2, ...)
    best_value: float
    best_optimizer_args: dict[str, Any]  # what the best trial gave the optimizer
    counts: dict[str, int]  # complete / pruned / failed
    importances: dict[str, float]
    seconds: float


# --------------------------------------------------------------------------------------------
# Optuna: samplers, pruners, the study
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet():
    """Optuna marks some of the samplers used here experimental (a warning on each use); the
    choice is deliberate and documented, so the warning is not passed on."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def make_sampler(config: TuneConfig):
    import optuna

    with _quiet():
        if config.sampler == "tpe":
            return optuna.samplers.TPESampler(
                seed=config.seed, multivariate=True, constant_liar=True
            )
        if config.sampler == "qmc":
            return optuna.samplers.QMCSampler(
                qmc_type="sobol", scramble=True, seed=config.seed, warn_asynchronous_seeding=False
            )
        if config.sampler == "random":
            return optuna.samplers.RandomSampler(seed=config.seed)
        return _GridSampler(_grid(config), seed=config.seed)


def _grid_sampler_class():
    import optuna

    class GridSampler(optuna.samplers.GridSampler):
        """Optuna's grid, minus its ``study.stop()`` once the grid is used up: that works only
        inside ``study.optimize``; here the loop asks exactly as many trials as the grid has."""

        def after_trial(self, study, trial, state, values) -> None:
            pass

    return GridSampler


def _GridSampler(grid, seed):
    return _grid_sampler_class()(grid, seed=seed)


def grid_size(config: TuneConfig) -> int:
    """How many distinct points the grid sampler has."""
    return math.prod(len(v) for v in _grid(config).values())


def make_pruner(config: TuneConfig):
    import optuna

    epochs = config.train.epochs
    if config.pruner == "none":
        return optuna.pruners.NopPruner()
    if config.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=min(5, config.batch), n_warmup_steps=1)
    if config.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=3)


def distributions(space: Mapping[str, Range]) -> dict[str, Any]:
    """The space as Optuna distributions (what ``study.ask`` samples)."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    result = {}
    for name, r in space.items():
        if r.choices is not None:
            result[name] = CategoricalDistribution(list(r.choices))
        elif r.integer:
            result[name] = IntDistribution(int(r.low), int(r.high), log=r.log)
        else:
            result[name] = FloatDistribution(float(r.low), float(r.high), log=r.log)
    return result


def _grid(config: TuneConfig) -> dict[str, list[Any]]:
    import numpy as np

    grid = {}
    for name, r in config.space.items():
        if r.choices is not None:
            grid[name] = list(r.choices)
        elif r.integer:
            points = np.unique(
                np.round(
                    np.geomspace(r.low, r.high, config.grid_points)
                    if r.log
                    else np.linspace(r.low, r.high, config.grid_points)
                )
            )
            grid[name] = [int(p) for p in points]
        else:
            space = np.geomspace if r.log else np.linspace
            grid[name] = [float(p) for p in space(r.low, r.high, config.grid_points)]
    return grid


def storage_url(out: Path | None, storage: str | None) -> str:
    """``storage`` as given (any SQLAlchemy URL), else SQLite in the output folder."""
    if storage:
        return storage
    if out is None:
        raise ValueError("a study needs an output folder or a storage URL")
    return f"sqlite:///{(out / STUDY_DB).resolve()}"


def rdb_storage(url: str):
    """Optuna's RDB storage of ``url``; SQLite in write-ahead-log mode with normal syncing.

    WAL + ``synchronous=NORMAL`` cannot corrupt the database or lose a committed trial when
    the process is killed (only a power cut can drop the last few commits); it saves a disk
    flush per report, which otherwise costs more than training a small network's epoch.
    """
    import optuna

    sqlite = url.startswith("sqlite")
    storage = optuna.storages.RDBStorage(
        url, engine_kwargs={"connect_args": {"timeout": 60}} if sqlite else None
    )
    if sqlite:
        from sqlalchemy import event

        def pragmas(connection, _record) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        event.listen(storage.engine, "connect", pragmas)
        storage.engine.dispose()  # connections made before the listener: reopened with it
    return storage


def open_study(config: TuneConfig, url: str):
    """Create the study in ``url``'s storage, or load it to continue; ``ValueError`` if the
    storage holds a study of that name with another configuration, or cannot be reached."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        storage = rdb_storage(url)
        study = optuna.create_study(
            storage=storage,
            study_name=config.study_name,
            sampler=make_sampler(config),
            pruner=make_pruner(config),
            direction=config.direction,
            load_if_exists=True,
        )
    except Exception as error:  # SQLAlchemy raises many kinds: unreachable, auth, bad URL
        if isinstance(error, ValueError) and "direction" in str(error):
            raise ValueError(
                f"storage {_safe(url)} holds study {config.study_name!r} with another "
                "direction; choose another --study-name"
            ) from None
        raise ValueError(
            f"cannot open the study storage {_safe(url)}: {_one_line(error)}"
        ) from None
    identity = config.describe()
    recorded = study.user_attrs.get("ravine_config")
    if recorded is None:
        study.set_user_attr("ravine_config", identity)
    elif recorded != identity:
        raise ValueError(
            f"storage {_safe(url)} holds study {config.study_name!r} with another configuration; "
            "rerun it with its own settings, choose another --study-name, or replace it"
        )
    return study


# --------------------------------------------------------------------------------------------
# The study loop
# --------------------------------------------------------------------------------------------


def run_tune(
    config: TuneConfig,
    out_dir: str | Path | None,
    *,
    storage: str | None = None,
    executor: Any = None,
    replace: bool = False,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    model: Callable[..., Any] | None = None,
    data: Any = None,
) -> TuneResult:
    """Run (or continue) the study until ``config.trials`` trials have finished.

    ``model`` and ``data``: a user's network factory and data instead of the config's, as
    ``ravine.train.train`` takes them (``ravine.train.user``). The study's identity then holds
    their fingerprints, so continuing it with another model or other data is refused.

    ``out_dir`` belongs to the study (:class:`ravine.folders.RunFolder`, kind ``"tune"``): a
    folder holding another run is refused (``ValueError``) unless ``replace``; the same study
    continues in it. ``storage``: any SQLAlchemy URL instead of SQLite in the folder.

    ``executor`` runs batches of trials (default: :class:`ravine.study.executors.Local`, in
    this process; :class:`ravine.study.executors.Ray` on a Ray cluster). ``on_progress`` gets
    ``{"finished", "total", "running", "best"}`` after every batch and ``{"epoch", "epochs"}``
    within one (from the local executor).
    """
    from ravine.folders import RunFolder

    started = time.perf_counter()
    parts = None
    if model is not None or data is not None:
        from ravine.train.loop import with_user_parts

        recorded, _, _ = with_user_parts(config.train, model, data)
        config = dataclasses.replace(config, train=recorded)
        parts = (model, data)
    out = Path(out_dir) if out_dir is not None else None
    if out is None:
        return _run(config, None, storage, executor, on_progress, started, parts)
    with RunFolder.claim(out, "tune", config.describe(), replace=replace) as folder:
        if not folder.resuming:
            (out / STUDY_DB).unlink(missing_ok=True)  # (replace=True: the old study goes too)
        result = _run(config, out, storage, executor, on_progress, started, parts)
        folder.finish()
        return result


def _run(config, out, storage, executor, on_progress, started, parts=None) -> TuneResult:
    from ravine.study.executors import Local

    url = storage_url(out, storage)
    study = open_study(config, url)
    owner = str(out.resolve()) if out is not None else "memory"
    _recover_stale(study, owner)
    executor = executor or Local()
    distros = distributions(config.space)

    def finished() -> int:
        return sum(1 for t in study.get_trials(deepcopy=False) if _counts(t))

    def report() -> None:
        if on_progress is not None:
            on_progress({"finished": finished(), "total": config.trials, "best": _best(study)})

    budget = config.trials if config.sampler != "grid" else min(config.trials, grid_size(config))
    report()
    pending: list[Any] = []  # batches in flight (futures of the executor)
    while True:
        done = finished()
        running = sum(len(job.numbers) for job in pending)
        room = budget - done - running
        while room > 0 and len(pending) < executor.parallel:
            size = min(config.batch, room)
            with _quiet():
                trials = [study.ask(distros) for _ in range(size)]
            for trial in trials:
                trial.set_user_attr(_OWNER, owner)
            job = BatchJob(
                url=url,
                study_name=config.study_name,
                config=config,
                numbers=[t.number for t in trials],
                trial_ids=[t._trial_id for t in trials],
                params=[dict(t.params) for t in trials],
                parts=parts,
            )
            pending.append(executor.submit(job, study, on_progress))
            room -= size
        if not pending:
            break
        job = executor.wait(pending)
        pending.remove(job)
        report()
    counts = _tally(study)
    best = study.best_trial if counts["complete"] else None
    best_args = (
        hyperparameters(config.train.optimizer, best.params, config.train.optimizer_args)[0]
        if best is not None
        else {}
    )
    result = TuneResult(
        out,
        study,
        config,
        dict(best.params) if best else {},
        float(best.value) if best else math.nan,
        best_args,
        counts,
        importances(study) if counts["complete"] >= 2 else {},
        time.perf_counter() - started,
    )
    if out is not None:
        write_tune_outputs(result)
    return result


@dataclass
class BatchJob:
    """One batch of trials, everything a worker needs to train and tell them."""

    url: str
    study_name: str
    config: TuneConfig
    numbers: list[int]
    trial_ids: list[int]
    params: list[dict[str, Any]]
    parts: tuple[Any, Any] | None = None  # a user's (model factory, data), or None


def evaluate_batch(job: BatchJob, study=None, on_progress=None) -> list[str]:
    """Train the batch's trials as members of one run, report each epoch, prune, tell.

    Runs in the driver (local executor, ``study`` given) or in a worker (Ray: the study is
    loaded from the storage). Returns each trial's final state name.
    """
    import optuna
    from optuna.trial import TrialState

    from ravine.train import ConfigError, Member, train

    if study is None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.load_study(
            study_name=job.study_name,
            storage=rdb_storage(job.url),
            sampler=make_sampler(job.config),
            pruner=make_pruner(job.config),
        )
    config = job.config
    trials = [optuna.trial.Trial(study, trial_id) for trial_id in job.trial_ids]
    members, owner = [], []  # owner[m]: the trial member m belongs to
    for k, point in enumerate(job.params):
        args, _ = hyperparameters(config.train.optimizer, point, config.train.optimizer_args)
        for j in range(config.seeds):
            members.append(Member(config.train.seed + j, args))
            owner.append(k)
    key, sign = config.metric, (1 if config.direction == "minimize" else -1)
    best = [math.inf] * len(trials)  # of the trial's mean over its seeds, sign-adjusted
    member_best = [math.inf] * len(members)
    check_pruning = config.pruner != "none"
    curves: list[list[list[float]]] = [[] for _ in trials]

    def on_epoch(epoch: int, metrics: Mapping[int, Mapping[str, float]]) -> list[int]:
        values: dict[int, list[float]] = {}
        for m, record in metrics.items():
            values.setdefault(owner[m], []).append(record[key])
            if math.isfinite(record[key]):
                member_best[m] = min(member_best[m], sign * record[key])
        reported = []
        for k, seeds in values.items():
            if not all(math.isfinite(v) for v in seeds):
                continue  # a diverging member: it leaves as diverged, not pruned
            value = sum(seeds) / len(seeds)
            best[k] = min(best[k], sign * value)
            if check_pruning:
                trials[k].report(value, epoch)
            else:  # nothing reads it before the trial ends: one write then (trial_curve)
                curves[k].append([epoch, value])
            reported.append(k)
        # Only once the whole batch has reported: a pruner that compares trials at a rung
        # (successive halving) then sees every trial of the batch, not just those before.
        pruned = []
        for k in reported if check_pruning else ():
            if trials[k].should_prune():
                pruned += [m for m, t in enumerate(owner) if t == k and m in metrics]
        if on_progress is not None:
            on_progress({"epoch": epoch, "epochs": config.train.epochs})
        return pruned

    states = []
    try:
        model, data = job.parts or (None, None)
        result = train(
            config.train, None, members=members, on_epoch=on_epoch, model=model, data=data
        )
    except ConfigError:
        for trial in trials:
            study.tell(trial, state=TrialState.FAIL)
        raise
    except Exception as error:
        for trial in trials:
            trial.set_user_attr(RESULT, {"error": _one_line(error)})
            study.tell(trial, state=TrialState.FAIL)
        return ["FAIL"] * len(trials)
    for k, trial in enumerate(trials):
        mine = [m for m, t in enumerate(owner) if t == k]
        left = result.retired.get(mine[0], {})
        diverged = any(m in result.diverged for m in mine) or not math.isfinite(best[k])
        record: dict[str, Any] = {
            "epochs": left.get("epoch", len(result.history)),
            "seed_values": [sign * member_best[m] for m in mine],
            "diverged": diverged,
        }
        if not check_pruning:
            record["curve"] = curves[k]
        for name in ("val_loss", "val_accuracy", "train_loss"):
            finals = [result.final[m].get(name, math.nan) for m in mine]
            if all(math.isfinite(v) for v in finals):
                record[f"final_{name}"] = sum(finals) / len(finals)
        trial.set_user_attr(RESULT, record)  # one write to the storage per trial
        if diverged:
            study.tell(trial, state=TrialState.FAIL)
            states.append("FAIL")
        elif left.get("reason") == "pruned":
            study.tell(trial, state=TrialState.PRUNED)
            states.append("PRUNED")
        else:
            study.tell(trial, sign * best[k])
            states.append("COMPLETE")
    return states


def _recover_stale(study, owner: str) -> None:
    """Trials this folder was running when its process died: failed, and asked again."""
    from optuna.trial import TrialState

    storage = study._storage
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.user_attrs.get(_OWNER) != owner:
            continue  # another process's trial (a shared storage)
        storage.set_trial_user_attr(trial._trial_id, _STALE, True)
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        study.enqueue_trial(dict(trial.params))


def _counts(trial) -> bool:
    """Whether a trial counts towards the budget (finished, and not lost to a crash)."""
    from optuna.trial import TrialState

    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and not trial.user_attrs.get(_STALE)


def _tally(study) -> dict[str, int]:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    return {
        "complete": sum(t.state == TrialState.COMPLETE for t in trials),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "failed": sum(t.state == TrialState.FAIL and not t.user_attrs.get(_STALE) for t in trials),
        "stale": sum(bool(t.user_attrs.get(_STALE)) for t in trials),
    }


def _best(study) -> float | None:
    try:
        return float(study.best_value)
    except ValueError:
        return None


def importances(study) -> dict[str, float]:
    """Optuna's parameter importances (PED-ANOVA in Optuna 5), {} when they cannot be told."""
    import warnings

    import optuna

    names = list(study.best_trial.params)
    if len(names) == 1:
        return {names[0]: 1.0}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # experimental-feature and small-sample warnings
            return dict(optuna.importance.get_param_importances(study))
    except (ValueError, RuntimeError, ZeroDivisionError):
        return {}


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------


def trial_rows(study) -> list[dict[str, Any]]:
    """One row per trial: number, state, value, params, epochs, seconds, notes."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        seconds = (
            (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start
            else None
        )
        row: dict[str, Any] = {
            "number": t.number,
            "state": "STALE" if t.user_attrs.get(_STALE) else t.state.name,
            "value": t.value,
            **{f"param_{k}": v for k, v in t.params.items()},
            "epochs": trial_record(t).get("epochs"),
            "seconds": seconds,
            "diverged": bool(trial_record(t).get("diverged", False)),
            "error": trial_record(t).get("error"),
        }
        rows.append(row)
    return rows


def write_tune_outputs(result: TuneResult) -> None:
    """``trials.csv``, ``trials.json``, ``tune.json`` and ``best.toml`` (a run config that
    ``ravine train --config best.toml`` reproduces the best trial with)."""
    from ravine.folders import atomic_write_text
    from ravine.train.outputs import strict_json, write_csv

    out = result.out_dir
    study = result.study
    rows = trial_rows(study)
    curves = {
        t.number: [[step, value] for step, value in trial_curve(t)]
        for t in study.get_trials(deepcopy=False)
    }
    write_csv(out / "trials.csv", rows)
    document = {"trials": rows, "curves": {str(k): v for k, v in curves.items()}}
    atomic_write_text(out / "trials.json", json.dumps(strict_json(document), indent=1))
    summary = {
        "optimizer": result.config.train.optimizer,
        "metric": result.config.metric,
        "direction": result.config.direction,
        "space": describe(result.config.space),
        "sampler": result.config.sampler,
        "pruner": result.config.pruner,
        "counts": result.counts,
        "best_value": result.best_value,
        "best_params": result.best_params,
        "best_optimizer_args": {k: _plain(v) for k, v in result.best_optimizer_args.items()},
        "importances": result.importances,
        "seconds": result.seconds,
    }
    atomic_write_text(out / "tune.json", json.dumps(strict_json(summary), indent=2))
    if result.best_params:
        atomic_write_text(out / "best.toml", best_config_text(result))


def best_config_text(result: TuneResult) -> str:
    """The training config of the best trial, as TOML, with a header saying where it is from."""
    config = dataclasses.replace(result.config.train, optimizer_args=result.best_optimizer_args)
    head = (
        f"# The best of {result.counts['complete']} complete trials of a ravine tune study "
        f"({result.config.metric} {result.best_value:.6g}).\n"
        "# Reproduce it: ravine train --config best.toml\n\n"
    )
    return head + dump_toml(config.to_toml_tables())


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _safe(url: str) -> str:
    """``url`` without a password."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return scheme + sep + rest


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:300] or type(error).__name__
