"""Optimizers x tasks x seeds, judged as AlgoPerf and DeepOBS judge them.

For every task and every optimizer (a *cell*), ``run_study``:

1. tunes the optimizer on the task's validation split with the same budget as every other
   optimizer (an Optuna study of ``trials`` trials, :mod:`ravine.study.tune`; quasi-random
   Sobol points by default, the Tuning Playbook's and AlgoPerf's recommendation for a fixed
   budget);
2. retrains the best configuration with ``seeds`` fresh seeds (``1000 + k``, none of them the
   seed tuning used) as one batched run (restarts) — its own resumable run folder;
3. reports the test split over those seeds: mean, standard deviation and a 95 % confidence
   interval (Student's t), and the time to reach the task's validation target: updates (and
   wall seconds of the batched run) until each seed first reaches it.

Across tasks it ranks the optimizers by their performance profiles (Dolan & Moré 2002, the
way AlgoPerf scores submissions): for each task, an optimizer's ratio of its median updates
to target to the fastest optimizer's; ``rho(tau)`` is the fraction of tasks on which the
ratio is at most ``tau``, and the score is the area under ``rho`` for ``tau`` in [1, 4],
divided by 3 (1: fastest everywhere; 0: never reached a target).

Everything lives in one folder: the Optuna storage of every cell's tuning study
(``study.db``), a folder per cell (``<task>/<optimizer>/``: its trials and its seeds' run),
and the tables. Kill it at any moment and run the same command again: finished trials and
finished retraining epochs are kept.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ravine.study.space import describe, resolve_space
from ravine.study.tasks import DEFAULT_TASKS, Task, task
from ravine.study.tune import PRUNERS, SAMPLERS, TuneConfig, trial_record

DEFAULT_OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw", "nadam")
RETRAIN_SEED = 1000  # the retraining seeds are 1000, 1001, ...: never the tuning seed
TAU_MAX = 4.0


@dataclass(frozen=True)
class StudyConfig:
    """A study. ``StudyConfig()`` compares the mission's eight optimizers on two tasks."""

    optimizers: tuple[str, ...] = DEFAULT_OPTIMIZERS
    tasks: tuple[str | Task, ...] = DEFAULT_TASKS  # built-in names, or Task records (your own)
    trials: int = 8  # tuning budget per (task, optimizer): the same for every optimizer
    batch: int = 16  # trials trained together
    seeds: int = 5  # retraining seeds of the best configuration
    tune_seeds: int = 2  # seeds per tuning trial: the sensitivity curves get a band
    space: tuple[str, ...] = ()  # specs for every optimizer (see ravine.study.space); () = lr
    sampler: str = "qmc"
    pruner: str = "none"
    seed: int = 0  # the samplers' seed
    epochs: int | None = None  # every task's epoch budget, when set

    def __post_init__(self) -> None:
        from ravine.arguments import optimizer_arguments  # torch-free: bad names fail at once

        for key, low in (("trials", 1), ("batch", 1), ("seeds", 2), ("tune_seeds", 1), ("seed", 0)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{key} must be an integer >= {low}, got {value!r}")
        if self.epochs is not None and (
            isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1
        ):
            raise ValueError(f"epochs must be an integer >= 1, got {self.epochs!r}")
        if not self.optimizers or not self.tasks:
            raise ValueError("a study needs at least one optimizer and one task")
        for name in self.optimizers:
            optimizer_arguments(name)
        for entry in self.tasks:
            if not isinstance(entry, Task):
                task(entry)
            elif not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", entry.name):
                # The name is a folder of the study's (<task>/<optimizer>/) and part of file
                # and Optuna study names: one plain path component.
                raise ValueError(
                    f"tasks: a task's name must be letters, digits, '_', '.' or '-' (not "
                    f"starting with '.' or '-'), got {entry.name!r}"
                )
        names = tuple(self.task_names)
        for key, values in (("optimizers", self.optimizers), ("tasks", names)):
            if len(set(values)) != len(values):
                raise ValueError(f"{key} lists a name twice: {', '.join(values)}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; valid: {', '.join(SAMPLERS)}")
        if self.pruner not in PRUNERS:
            raise ValueError(f"unknown pruner {self.pruner!r}; valid: {', '.join(PRUNERS)}")
        for cell in self.cells():
            self.tune_config(*cell)  # every space is valid for its optimizer, before any work

    @property
    def task_names(self) -> list[str]:
        return [t.name if isinstance(t, Task) else t for t in self.tasks]

    def cells(self) -> list[tuple[str, str]]:
        return [(t, o) for t in self.task_names for o in self.optimizers]

    def task(self, name: str) -> Task:
        mine = [t for t in self.tasks if isinstance(t, Task) and t.name == name]
        found = mine[0] if mine else task(name)
        if self.epochs is not None:
            found = dataclasses.replace(
                found, config=dataclasses.replace(found.config, epochs=self.epochs)
            )
        return found

    def tune_config(self, task_name: str, optimizer: str) -> TuneConfig:
        base = dataclasses.replace(self.task(task_name).config, optimizer=optimizer)
        specs = list(self.space)
        # A spec names a quantity one optimizer has and another lacks (momentum): each
        # optimizer searches the ones it has.
        from ravine.study.space import searchable_names

        names = searchable_names(optimizer)
        mine = [s for s in specs if s.strip() == "all" or s.split("=")[0].strip() in names]
        return TuneConfig(
            train=base,
            space=resolve_space(optimizer, mine or None),
            trials=self.trials,
            batch=self.batch,
            sampler=self.sampler,
            pruner=self.pruner,
            seed=self.seed,
            seeds=self.tune_seeds,
            study_name=f"{task_name}/{optimizer}",
        )

    def describe(self) -> str:
        document = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "tasks"
        }
        document = {k: list(v) if isinstance(v, tuple) else v for k, v in document.items()}
        # A task of one's own is its whole record (config, target); its model and data join
        # each cell's identity by fingerprint (run_tune), where they are built.
        document["tasks"] = [
            t
            if isinstance(t, str)
            else {
                "name": t.name,
                "config": t.config.to_toml_tables(),
                "target": t.target,
                "metric": t.target_metric,
            }
            for t in self.tasks
        ]
        return json.dumps(document, indent=1, sort_keys=True, default=str)


@dataclass
class Cell:
    """One (task, optimizer): what tuning found and how the best configuration did."""

    task: str
    optimizer: str
    tuned: dict[str, Any]  # the best trial's searched values (lr, ...)
    tune_value: float  # its validation value
    trials: dict[str, int]  # complete / pruned / failed
    test: dict[str, dict[str, float]] = field(default_factory=dict)  # metric -> mean/std/ci/...
    to_target: dict[str, Any] = field(default_factory=dict)  # updates, seconds, reached
    curves: dict[str, list] = field(default_factory=dict)  # epoch -> val metric per seed
    sensitivity: list[dict[str, Any]] = field(default_factory=list)  # per trial


@dataclass
class StudyResult:
    out_dir: Path
    config: StudyConfig
    cells: dict[tuple[str, str], Cell]
    profiles: dict[str, list[tuple[float, float]]]  # optimizer -> (tau, rho) steps
    scores: dict[str, float]  # optimizer -> area under its profile, normalized
    seconds: float

    def ranking(self) -> list[str]:
        return sorted(self.scores, key=lambda o: -self.scores[o])


def run_study(
    config: StudyConfig,
    out_dir: str | Path,
    *,
    storage: str | None = None,
    executor: Any = None,
    replace: bool = False,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> StudyResult:
    """Run (or continue) the study into ``out_dir`` (a folder of kind ``"study"``)."""
    from ravine.folders import RunFolder
    from ravine.study.tune import STUDY_DB

    out = Path(out_dir)
    started = time.perf_counter()
    with RunFolder.claim(out, "study", config.describe(), replace=replace) as folder:
        if not folder.resuming:
            (out / STUDY_DB).unlink(missing_ok=True)
        url = storage or f"sqlite:///{(out / STUDY_DB).resolve()}"
        cells = {}
        for i, (task_name, optimizer) in enumerate(config.cells()):
            if on_progress is not None:
                on_progress(
                    {
                        "cell": i,
                        "cells": len(config.cells()),
                        "task": task_name,
                        "optimizer": optimizer,
                        "phase": "tune",
                    }
                )
            cells[(task_name, optimizer)] = _run_cell(
                config, task_name, optimizer, out, url, executor, on_progress
            )
        profiles, scores = performance_profiles(config, cells)
        result = StudyResult(out, config, cells, profiles, scores, time.perf_counter() - started)
        write_study_outputs(result)
        folder.finish()
        return result


def _run_cell(config, task_name, optimizer, out, url, executor, on_progress) -> Cell:
    from ravine.study.tune import run_tune, write_tune_outputs
    from ravine.train import train

    tune_config = config.tune_config(task_name, optimizer)
    here = out / task_name / optimizer

    def progress(info):
        if on_progress is not None:
            on_progress({**info, "task": task_name, "optimizer": optimizer})

    spec = config.task(task_name)
    tuned = run_tune(
        tune_config,
        None,
        storage=url,
        executor=executor,
        on_progress=progress,
        model=spec.model,
        data=spec.data,
    )
    tuned.out_dir = here
    here.mkdir(parents=True, exist_ok=True)
    write_tune_outputs(tuned)
    cell = Cell(task_name, optimizer, dict(tuned.best_params), tuned.best_value, tuned.counts)
    cell.sensitivity = _sensitivity(tuned)
    if not tuned.best_params:
        return cell  # every trial failed: nothing to retrain
    if on_progress is not None:
        on_progress({"task": task_name, "optimizer": optimizer, "phase": "retrain"})
    retrain = dataclasses.replace(
        tune_config.train,
        optimizer_args=tuned.best_optimizer_args,
        seed=RETRAIN_SEED,
        restarts=config.seeds,
    )
    result = train(retrain, here / "seeds", model=spec.model, data=spec.data)
    _score_cell(cell, spec, result)
    return cell


def _sensitivity(tuned) -> list[dict[str, Any]]:
    rows = []
    for t in tuned.study.get_trials(deepcopy=False):
        if t.state.name != "COMPLETE":
            continue
        rows.append(
            {
                "params": dict(t.params),
                "value": t.value,
                "seed_values": trial_record(t).get("seed_values", [t.value]),
            }
        )
    return rows


def _score_cell(cell: Cell, spec: Task, result) -> None:
    healthy = [k for k in range(len(result.members)) if k not in result.diverged]
    for metric in ("test_loss", "test_accuracy"):
        values = [result.final[k][metric] for k in healthy if metric in result.final[k]]
        if values:
            cell.test[metric] = mean_and_interval(values)
    cell.test["diverged"] = {"seeds": len(result.diverged)}
    per_member = [h["per_member"][spec.target_metric] for h in result.history]
    cell.curves = {
        "epochs": [h["epoch"] for h in result.history],
        "values": per_member,  # [epoch][seed]
        "steps": [h["step"] for h in result.history],
        "seconds": [h["seconds"] for h in result.history],
    }
    updates, seconds = [], []
    for k in range(len(result.members)):
        hit = next(
            (
                i
                for i, values in enumerate(per_member)
                if values[k] is not None and spec.reached(values[k])
            ),
            None,
        )
        updates.append(result.history[hit]["step"] if hit is not None else math.inf)
        seconds.append(result.history[hit]["seconds"] if hit is not None else math.inf)
    reached = sum(math.isfinite(u) for u in updates)
    cell.to_target = {
        "target": spec.target,
        "metric": spec.target_metric,
        "reached": reached,
        "seeds": len(updates),
        "median_updates": statistics.median(updates),
        "median_seconds": statistics.median(seconds),
    }


def mean_and_interval(values: list[float]) -> dict[str, float]:
    """Mean, standard deviation and the 95 % confidence interval of the mean (Student's t)."""
    from scipy import stats

    n = len(values)
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if n > 1 else 0.0
    half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n) if n > 1 else math.nan
    return {
        "mean": mean,
        "std": std,
        "ci_low": mean - half,
        "ci_high": mean + half,
        "n": n,
        "min": min(values),
        "max": max(values),
    }


def performance_profiles(config: StudyConfig, cells: Mapping[tuple[str, str], Cell]):
    """Dolan & Moré profiles over the tasks, on median updates to target, and their scores."""
    ratios: dict[str, list[float]] = {o: [] for o in config.optimizers}
    for task_name in config.task_names:
        measures = {
            o: cells[(task_name, o)].to_target.get("median_updates", math.inf)
            for o in config.optimizers
        }
        best = min(measures.values())
        for o, m in measures.items():
            ratios[o].append(m / best if math.isfinite(m) and math.isfinite(best) else math.inf)
    profiles, scores = {}, {}
    n_tasks = len(config.tasks)
    for o, values in ratios.items():
        taus = sorted({1.0, TAU_MAX, *[r for r in values if r <= TAU_MAX]})
        steps = [(tau, sum(r <= tau for r in values) / n_tasks) for tau in taus]
        profiles[o] = steps
        area = sum(rho * (after - tau) for (tau, rho), (after, _) in itertools.pairwise(steps))
        scores[o] = area / (TAU_MAX - 1)
    return profiles, scores


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------


def cell_rows(result: StudyResult) -> list[dict[str, Any]]:
    """One row per (task, optimizer): the ranked table's data."""
    rows = []
    for (task_name, optimizer), cell in result.cells.items():
        row: dict[str, Any] = {"task": task_name, "optimizer": optimizer}
        row.update({f"tuned_{k}": v for k, v in cell.tuned.items()})
        row["tune_value"] = cell.tune_value
        for metric, stats in cell.test.items():
            if metric == "diverged":
                row["diverged_seeds"] = stats["seeds"]
                continue
            for key in ("mean", "std", "ci_low", "ci_high"):
                row[f"{metric}_{key}"] = stats[key]
        row["updates_to_target"] = cell.to_target.get("median_updates")
        row["seconds_to_target"] = cell.to_target.get("median_seconds")
        row["reached_target"] = cell.to_target.get("reached", 0)
        row["profile_score"] = result.scores.get(optimizer)
        rows.append(row)
    return rows


def write_study_outputs(result: StudyResult) -> None:
    """``study.json`` (everything), ``study.csv`` (one row per task and optimizer)."""
    from ravine.folders import atomic_write_text
    from ravine.train.outputs import strict_json, write_csv

    out = result.out_dir
    rows = cell_rows(result)
    write_csv(out / "study.csv", rows)
    document = {
        "config": json.loads(result.config.describe()),
        "spaces": {
            o: describe(result.config.tune_config(result.config.task_names[0], o).space)
            for o in result.config.optimizers
        },
        "tasks": {
            t: {
                "target": result.config.task(t).target,
                "metric": result.config.task(t).target_metric,
                "description": result.config.task(t).description,
            }
            for t in result.config.task_names
        },
        "cells": [dataclasses.asdict(c) for c in result.cells.values()],
        "profiles": result.profiles,
        "scores": result.scores,
        "ranking": result.ranking(),
        "seconds": result.seconds,
    }
    atomic_write_text(out / "study.json", json.dumps(strict_json(document), indent=1))
