"""The one typed record that describes a training run, and reading it from TOML.

A config file has up to five tables; every key is optional and defaults to the field below::

    [data]                       # -> dataset, dataset_args, standardize, val_fraction
    name = "mnist1d"
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
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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

    def __post_init__(self) -> None:
        for key, low in (
            ("batch_size", 1),
            ("epochs", 1),
            ("seed", 0),
            ("snapshots", 0),
            ("restarts", 1),
            ("early_stopping", 0),
            ("checkpoint_every", 1),
        ):
            _check_int(key, getattr(self, key), low)
        if self.max_steps is not None:
            _check_int("max_steps", self.max_steps, 1)
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
                tables["training"][f.name] = getattr(self, f.name)
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
)
_TABLES = ("data", "model", "optimizer", "schedule", "training")
_COMMAND_TABLES = ("tune", "study")  # read by ravine tune / ravine study, not part of a run


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
        try:
            with open(path, "rb") as handle:
                document = tomllib.load(handle)
        except FileNotFoundError:
            raise ConfigError(f"config file {source} does not exist") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{source} is not valid TOML: {error}") from None
        fields = _fields_from_tables(document, source)
    for key, value in overrides.items():
        if value is None:
            continue
        if key in ("optimizer_args", "model_args", "schedule_args", "dataset_args"):
            fields[key] = {**fields.get(key, {}), **value}
        else:
            fields[key] = value
    try:
        return TrainConfig(**fields)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{source}: {error}" if path is not None else str(error)) from None


def parse_config(text: str, source: str) -> TrainConfig:
    """A config from TOML ``text`` (e.g. a run folder's checksum-verified config.toml);
    :class:`ConfigError` names ``source``."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{source} is not valid TOML: {error}") from None
    try:
        return TrainConfig(**_fields_from_tables(document, source))
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{source}: {error}") from None


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
            if "betas" in values:
                values["betas"] = tuple(values["betas"])
            fields["optimizer_args"] = values
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


def _check_int(key: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{key} must be an integer >= {low}, got {value!r}")


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
