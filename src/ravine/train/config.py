"""The one typed record that describes a training run, and reading it from TOML.

A config file has up to five tables; every key is optional and defaults to the field below::

    [data]                       # -> dataset, dataset_args, standardize, val_fraction
    name = "mnist1d"             # or path = "my.csv" (and label = "COLUMN"): your own file
    [model]                      # -> model (a preset or a kind) and model_args
    preset = "mnist1d_cnn"
    [optimizer]                  # -> optimizer and optimizer_args
    name = "adam"
    lr = 1e-2
    [schedule]                   # -> schedule and schedule_args
    name = "cosine"
    [training]                   # -> every other field
    epochs = 50
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ravine import limits
from ravine.train.devices import check_precision  # torch-free, like this module

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs. ``TrainConfig()`` trains an MLP on digits."""

    # data ----------------------------------------------------------------------------------
    dataset: str = "digits"  # a ravine.problems.DATASETS name
    dataset_args: Mapping[str, Any] = field(default_factory=dict)  # e.g. {"root": "~/mnist"}
    standardize: bool = True  # per-feature standardization fitted on the training split only
    val_fraction: float = 0.0  # held out of the training split for early stopping (0: use test)
    # model ---------------------------------------------------------------------------------
    model: str = "digits_mlp"  # a ravine.problems.PRESETS name, or a model kind ("mlp", ...)
    model_args: Mapping[str, Any] = field(default_factory=dict)  # ModelConfig fields to override
    pretrained: str | None = None  # checkpoint or state dict to pre-initialize from, by name
    # optimization ---------------------------------------------------------------------------
    optimizer: str = "adam"  # a ravine.optim.OPTIMIZERS name
    optimizer_args: Mapping[str, Any] = field(default_factory=dict)  # lr, betas, ...
    schedule: str | None = None  # a ravine.schedules.SCHEDULES name, stepped once per update
    schedule_args: Mapping[str, Any] = field(default_factory=dict)  # lengths count updates
    batch_size: int = 64  # examples per update; the last batch of an epoch may be smaller
    epochs: int = 20  # passes over the training split
    max_steps: int | None = None  # stop after this many updates, if before the last epoch
    grad_noise: float = 0.0  # eta of annealed gradient noise N(0, eta / (1 + t)^gamma); 0: off
    grad_noise_gamma: float = 0.55  # gamma of the noise's decay (Neelakantan et al. 2015)
    early_stopping: int = 0  # stop after this many epochs without a better held-out loss; 0: off
    # escaping bad regions --------------------------------------------------------------------
    snapshots: int = 0  # M > 0: M cosine cycles (SGDR), a snapshot ensemble of their ends
    restarts: int = 1  # independently initialized copies, trained as one batched computation
    shared_data_order: bool = False  # restarts see the same mini-batches (only init differs)
    # bookkeeping -----------------------------------------------------------------------------
    seed: int = 0  # seeds initialization, data order, dropout and gradient noise
    checkpoint_every: int = 1  # epochs between checkpoints (and at the end)
    keep_weights: bool = False  # also save the weights after every epoch (for trajectories)
    precision: str = "fp32"  # "bf16" or "fp16": autocast (fp16 with a GradScaler); params fp32
    # what came from Python (ravine.train.user): {"model": fingerprint, "data": fingerprint}
    user: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key in ("dataset", "model", "optimizer"):
            _check_name(key, getattr(self, key))
        if self.schedule is not None:
            _check_name("schedule", self.schedule)
        if isinstance(self.pretrained, os.PathLike):
            object.__setattr__(self, "pretrained", os.fspath(self.pretrained))
        if self.pretrained is not None and (
            not isinstance(self.pretrained, str) or not self.pretrained
        ):
            raise ValueError(f"pretrained must be a file path, got {self.pretrained!r}")
        for key in _ARGS_FIELDS:
            # None stands for "the default": every hyperparameter, model field and data or
            # schedule argument that accepts None defaults to it (tested), and TOML has no null.
            object.__setattr__(self, key, _check_args(key, getattr(self, key)))
        _check_int("seed", self.seed, 0, limits.MAX_SEED, "4 * seed + 3 seeds torch: 64 bits")
        for key, low in (
            ("batch_size", 1),
            ("epochs", 1),
            ("snapshots", 0),
            ("restarts", 1),
            ("early_stopping", 0),
            ("checkpoint_every", 1),
        ):
            _check_int(key, getattr(self, key), low)
        if self.max_steps is not None:
            _check_int("max_steps", self.max_steps, 1)
        if self.seed + self.restarts - 1 > limits.MAX_SEED:
            # restart k runs with seed + k, whose streams are seeded with 4 * (seed + k) + 3.
            raise ValueError(
                f"seed + restarts - 1 must be <= {limits.MAX_SEED:,} (restart k uses seed + k), "
                f"got seed={self.seed!r} and restarts={self.restarts!r}"
            )
        budget = limits.max_updates()
        for key in ("max_steps", "epochs"):
            value = getattr(self, key)
            if value is not None:
                # Every epoch is at least one update, so this bounds the run before its data
                # is loaded; the exact count is checked again once the data is known.
                if value > budget:
                    raise ValueError(
                        f"{key}={value!r} asks for more than {limits.format_count(budget)} "
                        "updates, the limit (set RAVINE_MAX_UPDATES to go past it)"
                    )
                break
        for key in ("grad_noise", "grad_noise_gamma"):
            value = getattr(self, key)
            if not _is_number(value) or value < 0 or not math.isfinite(value):
                raise ValueError(f"{key} must be a finite number >= 0, got {value!r}")
        if not _is_number(self.val_fraction) or not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction!r}")
        if self.snapshots and self.schedule is not None:
            raise ValueError(
                f"snapshots={self.snapshots} brings its own cyclic cosine schedule; "
                f"remove schedule={self.schedule!r}"
            )
        check_precision(self.precision)
        if not isinstance(self.user, Mapping) or not all(
            k in ("model", "data") and isinstance(v, str) for k, v in self.user.items()
        ):
            raise ValueError(
                f"user ([user]) holds the fingerprints of a model and data given from Python "
                f"(model = ..., data = ...), got {self.user!r}"
            )
        for key in ("standardize", "shared_data_order", "keep_weights"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"{key} must be true or false, got {getattr(self, key)!r}")

    def to_toml_tables(self) -> dict[str, dict[str, Any]]:
        """The config as the TOML tables :func:`load_config` reads (``None`` values left out)."""
        # Sorted arguments: the text is compared when a run resumes, and the same config
        # written from flags or from a file must read the same.
        tables: dict[str, dict[str, Any]] = {
            "data": {
                "name": self.dataset,
                "standardize": self.standardize,
                "val_fraction": self.val_fraction,
                **dict(sorted(self.dataset_args.items())),
            },
            "model": {_MODEL_KEY: self.model, **dict(sorted(self.model_args.items()))},
            # Hyperparameters are real numbers: lr = 1 in a file and --lr 1 must read the same.
            "optimizer": {
                "name": self.optimizer,
                **{k: _as_real(v) for k, v in sorted(self.optimizer_args.items())},
            },
            "training": {},
        }
        if self.pretrained is not None:
            tables["model"]["pretrained"] = self.pretrained
        if self.schedule is not None:
            tables["schedule"] = {"name": self.schedule, **dict(sorted(self.schedule_args.items()))}
        for f in dataclasses.fields(self):
            if f.name in _TRAINING_KEYS and getattr(self, f.name) is not None:
                if f.name in _WRITTEN_IF_SET and getattr(self, f.name) == f.default:
                    continue  # (so the configs of runs written before the key read the same)
                tables["training"][f.name] = getattr(self, f.name)
        if self.user:
            tables["user"] = dict(sorted(self.user.items()))
        return tables


_MODEL_KEY = "preset"
_TRAINING_KEYS = (
    "batch_size",
    "epochs",
    "max_steps",
    "grad_noise",
    "grad_noise_gamma",
    "early_stopping",
    "snapshots",
    "restarts",
    "shared_data_order",
    "seed",
    "checkpoint_every",
    "keep_weights",
    "precision",
)
_WRITTEN_IF_SET = ("precision",)  # keys newer than the first runs: left out at their default
_TABLES = ("data", "model", "optimizer", "schedule", "training", "user")
_COMMAND_TABLES = ("tune", "study")  # read by ravine tune / ravine study, not part of a run
_ARGS_FIELDS = ("dataset_args", "model_args", "optimizer_args", "schedule_args")
_ARGS_TABLES = {
    "dataset_args": "data",
    "model_args": "model",
    "optimizer_args": "optimizer",
    "schedule_args": "schedule",
}


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key and the file."""


def load_config(path: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """Read a TOML config (or start from the defaults) and apply flat ``overrides``.

    Overrides use :class:`TrainConfig` field names; ``lr`` and other optimizer hyperparameters
    go through ``optimizer_args``. Raises :class:`ConfigError` naming the key and the file.
    """
    source = str(path) if path is not None else "<defaults>"
    fields: dict[str, Any] = {}
    if path is not None:
        fields = _fields_from_tables(_read_toml(path, source), source)
    for key, value in overrides.items():
        if value is None:
            continue
        if key in _ARGS_FIELDS:
            fields[key] = {**fields.get(key, {}), **value}
        else:
            fields[key] = value
    try:
        return TrainConfig(**fields)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{source}: {error}" if path is not None else str(error)) from None


def file_fields(path: str | Path | None) -> dict[str, Any]:
    """The :class:`TrainConfig` fields a config file sets, as written (no defaults, no checks
    across fields): what a flag overrides. ``{}`` without a file."""
    if path is None:
        return {}
    return _fields_from_tables(_read_toml(path, str(path)), str(path))


def _read_toml(path: str | Path, source: str) -> dict[str, Any]:
    """The TOML document at ``path``; ``ConfigError`` for every way a file can be unusable."""
    try:
        folder = Path(path).is_dir()
    except (OSError, ValueError):
        folder = False
    if folder:
        raise ConfigError(f"config file {source} is a folder, not a TOML file")
    try:
        with open(path, "rb") as handle:
            data = handle.read(limits.MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"config file {source} does not exist") from None
    except PermissionError:
        raise ConfigError(f"config file {source} cannot be read: permission denied") from None
    except (OSError, ValueError) as error:  # ValueError: a NUL in the name
        reason = getattr(error, "strerror", None) or str(error)
        raise ConfigError(f"config file {source} cannot be read: {reason}") from None
    if len(data) > limits.MAX_CONFIG_BYTES:
        raise ConfigError(
            f"config file {source} is larger than "
            f"{limits.format_bytes(limits.MAX_CONFIG_BYTES)}; a run config is a few hundred "
            "bytes of TOML"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"config file {source} is not UTF-8 text (byte 0x{data[error.start]:02x} at "
            f"offset {error.start}); TOML files are UTF-8"
        ) from None
    return _toml_document(text, source)


def parse_config(text: str, source: str) -> TrainConfig:
    """A config from TOML ``text`` (e.g. a run folder's checksum-verified config.toml);
    :class:`ConfigError` names ``source``."""
    fields = _fields_from_tables(_toml_document(text, source), source)
    try:
        return TrainConfig(**fields)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{source}: {error}") from None


def _toml_document(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{source} is not valid TOML: {error}") from None
    except RecursionError:
        raise ConfigError(
            f"{source} nests arrays or tables too deeply to read "
            f"(a config needs at most {limits.MAX_NESTING} levels)"
        ) from None


def _fields_from_tables(document: Mapping[str, Any], source: str) -> dict[str, Any]:
    unknown = [k for k in document if k not in _TABLES + _COMMAND_TABLES]
    if unknown:
        raise ConfigError(
            f"{source}: unknown table [{unknown[0]}]; valid tables: {', '.join(_TABLES)}"
        )
    fields: dict[str, Any] = {}
    for table in _TABLES:
        values = document.get(table, {})
        if not isinstance(values, Mapping):
            raise ConfigError(f"{source}: [{table}] must be a table, got {values!r}")
        values = dict(values)
        if table == "data":
            if "path" in values and "name" not in values:
                fields["dataset"] = "file"  # your own data (ravine.problems.files)
            _take(values, "name", fields, "dataset")
            _take(values, "standardize", fields, "standardize")
            _take(values, "val_fraction", fields, "val_fraction")
            fields["dataset_args"] = values
        elif table == "model":
            _take(values, _MODEL_KEY, fields, "model")
            _take(values, "kind", fields, "model")
            _take(values, "pretrained", fields, "pretrained")
            fields["model_args"] = values
        elif table == "optimizer":
            _take(values, "name", fields, "optimizer")
            if isinstance(values.get("betas"), list):  # anything else: the optimizer says why
                values["betas"] = tuple(values["betas"])
            fields["optimizer_args"] = values
        elif table == "user":
            if values:
                fields["user"] = values
        elif table == "schedule":
            if values:
                if "name" not in values:
                    raise ConfigError(f"{source}: [schedule] needs a name")
                _take(values, "name", fields, "schedule")
                fields["schedule_args"] = values
        else:
            for key, value in values.items():
                if key not in _TRAINING_KEYS:
                    raise ConfigError(
                        f"{source}: unknown key {key!r} in [training]; valid: "
                        f"{', '.join(_TRAINING_KEYS)}"
                    )
                fields[key] = value
    return fields


def _as_real(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, list | tuple):
        return [_as_real(v) for v in value]
    return value


def _take(values: dict[str, Any], key: str, fields: dict[str, Any], field_name: str) -> None:
    if key in values:
        fields[field_name] = values.pop(key)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_int(
    key: str, value: Any, low: int, high: int = limits.MAX_INT, why: str = "64 bits"
) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{key} must be an integer >= {low}, got {value!r}")
    if value > high:
        raise ValueError(f"{key} must be an integer <= {high:,} ({why}), got {value!r}")


def _check_name(key: str, value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{key} must be a name (a string), got {value!r}")


def _check_args(key: str, args: Any) -> Mapping[str, Any]:
    """``args`` with None values dropped, after checking that every value can be a TOML value
    of a ravine config: no dates, no integers past 64 bits, at most MAX_NESTING levels."""
    table = _ARGS_TABLES[key]
    if not isinstance(args, Mapping):
        raise ValueError(f"{key} ([{table}]) must be a table of settings, got {args!r}")
    for name, value in args.items():
        if not isinstance(name, str):
            raise ValueError(f"{key} ([{table}]): setting names are strings, got {name!r}")
        if value is not None:
            _check_value(f"{name} in [{table}]", value, 0)
    if any(value is None for value in args.values()):
        return {name: value for name, value in args.items() if value is not None}
    return args


def _check_value(where: str, value: Any, depth: int) -> None:
    if depth > limits.MAX_NESTING:
        raise ValueError(f"{where} nests more than {limits.MAX_NESTING} levels of arrays or tables")
    if isinstance(value, bool | float | str):
        return
    if isinstance(value, int):
        if not -limits.MAX_INT - 1 <= value <= limits.MAX_INT:
            raise ValueError(f"{where} must fit in 64 bits, got {value!r}")
        return
    if isinstance(value, list | tuple):
        for item in value:
            _check_value(where, item, depth + 1)
        return
    if isinstance(value, Mapping):
        for name, item in value.items():
            if not isinstance(name, str):
                raise ValueError(f"{where}: setting names are strings, got {name!r}")
            _check_value(where, item, depth + 1)
        return
    if isinstance(value, datetime.date | datetime.time):
        raise ValueError(f"{where} cannot be a date or time, got {value.isoformat()}")
    raise ValueError(f"{where} must be a number, true/false, a string or an array, got {value!r}")


# ----------------------------------------------------------------------------- paths

#: The folder where config paths that write (``cache_dir``) may point besides a run's own
#: output folder: ``$RAVINE_CACHE``, by default ``~/.cache/ravine``.
CACHE_ENV = "RAVINE_CACHE"
_READ_FOLDERS = ("root",)  # [data] keys that name a folder to read
_WRITE_FOLDERS = ("cache_dir",)  # [data] keys that name a folder ravine writes into


def cache_folder() -> Path:
    """``$RAVINE_CACHE``, or ``~/.cache/ravine``: where caches may live outside a run folder."""
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/ravine").expanduser()


def resolve_write_path(value: Any, key: str, *, out_dir: str | Path) -> Path:
    """The folder that config key ``key`` names, if it lies inside ``out_dir`` (the run's
    output folder) or :func:`cache_folder`; ``ConfigError`` otherwise.

    Relative paths are read from the current folder, like every path in a config; links
    are followed before the check, so a link inside the run folder cannot lead outside it.
    """
    path = _as_path(value, key)
    resolved = path.resolve()
    for allowed in (Path(out_dir), cache_folder()):
        if resolved.is_relative_to(allowed.expanduser().resolve()):
            return resolved
    raise ConfigError(
        f"{key} = {str(value)!r} writes outside the run's output folder {out_dir}; use a "
        f"folder inside it, or inside the cache folder {cache_folder()} (${CACHE_ENV})"
    )


def check_arguments(config: TrainConfig) -> None:
    """Check every optimizer hyperparameter, schedule argument and data set argument of
    ``config`` against what its registry accepts (:mod:`ravine.arguments`), without torch:
    unknown names and keys, missing required arguments, values of the wrong kind.
    Raises ``ConfigError`` naming the key."""
    from ravine import arguments

    try:
        arguments.check_optimizer_args(config.optimizer, config.optimizer_args, run=True)
        if config.schedule is not None:
            arguments.check_schedule(config.schedule, config.schedule_args, filled=True)
        if "path" in config.dataset_args and config.dataset != "file":
            raise ValueError(
                f"[data] path names your own file (--data PATH); it does not go with "
                f"name = {config.dataset!r}"
            )
        arguments.check_dataset(config.dataset, config.dataset_args)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def check_paths(config: TrainConfig, out_dir: str | Path, *, pretrained: bool = True) -> None:
    """Check the paths a config names before a run starts: a folder it reads (``root``) must
    exist, a file it reads (``pretrained``; skipped when ``pretrained=False``) must exist and
    be a file, and a folder it writes (``cache_dir``) must lie inside ``out_dir`` or the cache
    folder (:func:`resolve_write_path`). Raises ``ConfigError`` naming the key and the path."""
    for key in _READ_FOLDERS:
        if key in config.dataset_args:
            path = _as_path(config.dataset_args[key], key).expanduser()
            if not path.is_dir():
                what = "is not a folder" if path.exists() else "does not exist"
                raise ConfigError(f"[data] {key}: {path} {what}")
    if "path" in config.dataset_args:  # your own data: a file, or a folder of images
        path = _as_path(config.dataset_args["path"], "path").expanduser()
        if not path.exists():
            raise ConfigError(f"[data] path: {path} does not exist")
    for key in _WRITE_FOLDERS:
        if key in config.dataset_args:
            resolve_write_path(config.dataset_args[key], key, out_dir=out_dir)
    if pretrained and config.pretrained is not None:
        path = _as_path(config.pretrained, "pretrained").expanduser()
        if not path.is_file():
            what = "is a folder, not a checkpoint file" if path.is_dir() else "does not exist"
            raise ConfigError(f"[model] pretrained: {path} {what}")


def _as_path(value: Any, key: str) -> Path:
    if not isinstance(value, str | os.PathLike) or not os.fspath(value):
        raise ConfigError(f"{key} must be a path (a string), got {value!r}")
    text = os.fspath(value)
    if "\0" in str(text):
        raise ConfigError(f"{key} must not contain a NUL character, got {text!r}")
    try:
        os.fsencode(text)
    except UnicodeError:
        raise ConfigError(f"{key}: {text!r} cannot be a file name on this system") from None
    return Path(text).expanduser()


def dump_toml(tables: Mapping[str, Mapping[str, Any]]) -> str:
    """Write the flat tables :meth:`TrainConfig.to_toml_tables` returns as TOML text."""
    lines = []
    for table, values in tables.items():
        lines.append(f"[{table}]")
        for key, value in values.items():
            lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):  # e.g. warm-up's "then" schedule
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise ValueError(f"cannot write {value!r} to TOML")
