"""What ``ravine tune`` and ``ravine study`` share: reading a study's config (a run config plus
a ``[tune]`` table, with flags over both), the executor, and thread settings."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ravine.cli.main import UsageFailure

#: Keys of a config file's ``[tune]`` table.
TUNE_KEYS = (
    "space",
    "trials",
    "batch",
    "sampler",
    "pruner",
    "metric",
    "seed",
    "grid_points",
    "study_name",
)
DEFAULT_VAL_FRACTION = 0.2  # tuning needs a validation split; the test split is never searched


def read_table(path: Path | None, table: str) -> dict[str, Any]:
    """The ``[table]`` of a TOML config file (``{}`` without a file or the table)."""
    if path is None:
        return {}
    from ravine.train.config import tomllib

    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as error:
        # load_config reads the same file first and words these errors; this is a fallback.
        raise UsageFailure(f"cannot read {path}: {error}") from None
    values = document.get(table, {})
    if not isinstance(values, Mapping):
        raise UsageFailure(f"{path}: [{table}] must be a table, got {values!r}")
    return dict(values)


def load_tune_config(
    path: Path | None,
    *,
    train_overrides: Mapping[str, Any],
    tune_overrides: Mapping[str, Any],
    data: Path | None = None,
    pairs: Mapping[str, list[tuple[str, str]]] | None = None,
):
    """The :class:`ravine.study.tune.TuneConfig` of a command line, or one line and exit 2.
    ``data`` and ``pairs`` (``--opt-arg`` / ``--schedule-arg`` / ``--data-arg``) are applied
    as ``ravine train`` applies them."""
    from ravine.cli.main import _pinned, _with_pairs
    from ravine.study.tune import TuneConfig
    from ravine.train.config import ConfigError, check_arguments, load_config

    empty = {"--opt-arg": [], "--schedule-arg": [], "--data-arg": []}
    try:
        train = load_config(path, **{k: v for k, v in train_overrides.items() if v is not None})
        train = _with_pairs(train, path, None, data, {**empty, **(pairs or {})})
        check_arguments(train)  # before torch: names, keys and kinds (ravine.arguments)
    except (ConfigError, ValueError) as error:
        raise UsageFailure(str(error)) from None
    if train.dataset == "file":
        from ravine.train.config import check_paths

        try:
            check_paths(train, Path("."), pretrained=False)
        except ConfigError as error:
            raise UsageFailure(str(error)) from None
        train = _pinned(train)  # the study's config names the file's SHA-256
    if train.val_fraction == 0:
        train = dataclasses.replace(train, val_fraction=DEFAULT_VAL_FRACTION)
    table = read_table(path, "tune")
    unknown = [k for k in table if k not in TUNE_KEYS]
    if unknown:
        raise UsageFailure(
            f"{path}: unknown key {unknown[0]!r} in [tune]; valid: {', '.join(TUNE_KEYS)}"
        )
    fields = {**table, **{k: v for k, v in tune_overrides.items() if v is not None}}
    space = fields.pop("space", None)
    try:
        from ravine.study.space import resolve_space

        if isinstance(space, Mapping):
            space = [f"{k}={v}" if v != "" else k for k, v in space.items()]
        elif space is not None and not isinstance(space, list | tuple):
            raise ValueError(
                f'[tune] space must be a table of NAME = "LOW:HIGH[:log]", got {space!r}'
            )
        resolved = resolve_space(train.optimizer, space)
        return TuneConfig(train=train, space=resolved, **fields)
    except (ValueError, TypeError) as error:
        raise UsageFailure(str(error)) from None


def executor_of(name: str, address: str | None, parallel: int | None):
    """The executor ``name`` (``local`` or ``ray``), checked before any work starts."""
    from ravine.study.executors import EXECUTORS

    if name not in EXECUTORS:
        raise UsageFailure(f"unknown --executor {name!r}; valid: {', '.join(EXECUTORS)}")
    if parallel is not None and parallel < 1:
        raise UsageFailure(f"--parallel must be >= 1, got {parallel}")
    if name == "local":
        if address is not None or parallel is not None:
            raise UsageFailure("--address and --parallel need --executor ray")
        return None
    from ravine.study.executors import Ray

    try:
        return Ray(address, parallel=parallel)
    except (ValueError, ConnectionError, RuntimeError) as error:
        raise UsageFailure(f"cannot start the ray executor: {error}") from None


@contextlib.contextmanager
def threads_for(config, members: int, threads: int | None = None):
    """Intra-op threads: ``threads`` if given, else one for small networks (see below)."""
    if threads is not None and threads < 1:
        raise UsageFailure(f"--threads must be >= 1, got {threads}")
    import torch

    from ravine.problems import build_model
    from ravine.train import ConfigError
    from ravine.train.build import input_view, model_config, prepare_data

    try:
        splits = prepare_data(config)
        mconfig = model_config(config)
        shape = input_view(mconfig, splits.dataset)
        outputs = splits.dataset.num_classes or splits.dataset.y_train.shape[1]
        size = sum(p.numel() for p in build_model(mconfig, shape, outputs).parameters())
    except (ConfigError, ValueError, TypeError) as error:
        raise UsageFailure(str(error)) from None
    # Chosen by size only, never by how busy the machine is: a run's numbers must not depend
    # on the load (matrix products round differently on another thread count). Below this
    # size a second thread gains little on a quiet machine and, on a busy one, its barrier
    # waits made 64 stacked digits trials 3x slower (0.51 s -> 1.62 s an epoch).
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    elif size * members * config.batch_size < 2e8:
        torch.set_num_threads(1)
    try:
        yield
    finally:  # the process's setting is its own again (main() may be called in-process)
        torch.set_num_threads(before)
