"""What every registry accepts — optimizers, schedules, data sets — written out without torch.

The registries themselves (``ravine.optim.OPTIMIZERS``, ``ravine.schedules.SCHEDULES``,
``ravine.problems.DATASETS``) import torch, which costs seconds; the CLI reads its
``KEY=VALUE`` options against these tables first, so a typo, a missing required argument or a
value of the wrong kind is one line and exit 2 at once. ``tests/test_arguments.py`` keeps the
tables equal to the registries' signatures: adding an optimizer, schedule or data set without
its row here fails there.

Only the kind of each value is checked here (a number, a flag, a pair, a name); its range is
the registry's own check, which names the argument the same way.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

# ----------------------------------------------------------------------------- kinds
# number: int or float; integer; bool; pair: two numbers ("0.9,0.99"); numbers: a list;
# str: any text; path: a file or folder; one of a|b|c: a name; schedule: a schedule table.
# A trailing "?" means none is allowed too.

#: The kind of every optimizer hyperparameter (one key means one thing in every optimizer).
HYPERPARAMETER_KINDS: dict[str, str] = {
    "lr": "number",
    "momentum": "number",
    "dampening": "number",
    "weight_decay": "number",
    "nesterov": "bool",
    "lr_decay": "number",
    "initial_accumulator_value": "number",
    "eps": "number",
    "alpha": "number",
    "centered": "bool",
    "betas": "pair",
    "amsgrad": "bool",
    "momentum_decay": "number",
    "maximize": "bool",
    "capturable": "bool",
    "differentiable": "bool",
    "decoupled_weight_decay": "bool",
    "foreach": "bool?",
    "fused": "bool?",
    "compile": "bool?",
    "max_grad_norm": "number?",
    "clip_value": "number?",
    "members": "integer?",
    "nonfinite": "one of raise|skip|ignore",
    "engine": "one of auto|simple|flat",
    "state_dtype": "one of float32|float64|bfloat16|float16?",
}
# In the order of the optimizers' signatures (ravine.optim.hyperparameter_names).
# ravine's own arguments, after torch's in every optimizer's signature.
_RAVINE_ARGUMENTS = (
    "max_grad_norm",
    "clip_value",
    "members",
    "nonfinite",
    "engine",
    "compile",
    "state_dtype",
)
_SGD_ARGUMENTS = (
    "lr",
    "momentum",
    "dampening",
    "weight_decay",
    "nesterov",
    "maximize",
    "foreach",
    "differentiable",
    "fused",
    "decoupled_weight_decay",
    *_RAVINE_ARGUMENTS,
)  # sgd, momentum and nesterov: one signature
_ADAM_ARGUMENTS = (
    "lr",
    "betas",
    "eps",
    "weight_decay",
    "amsgrad",
    "foreach",
    "maximize",
    "capturable",
    "differentiable",
    "fused",
    "decoupled_weight_decay",
    *_RAVINE_ARGUMENTS,
)  # adam and adamw: one signature
_NAMES: dict[str, tuple[str, ...]] = {
    "sgd": _SGD_ARGUMENTS,
    "momentum": _SGD_ARGUMENTS,
    "nesterov": _SGD_ARGUMENTS,
    "adagrad": (
        "lr",
        "lr_decay",
        "weight_decay",
        "initial_accumulator_value",
        "eps",
        "foreach",
        "maximize",
        "differentiable",
        "fused",
        "decoupled_weight_decay",
        *_RAVINE_ARGUMENTS,
    ),
    "rmsprop": (
        "lr",
        "alpha",
        "eps",
        "weight_decay",
        "momentum",
        "centered",
        "capturable",
        "foreach",
        "maximize",
        "differentiable",
        "decoupled_weight_decay",
        *_RAVINE_ARGUMENTS,
    ),
    "adam": _ADAM_ARGUMENTS,
    "adamw": _ADAM_ARGUMENTS,
    "nadam": (
        "lr",
        "betas",
        "eps",
        "weight_decay",
        "momentum_decay",
        "decoupled_weight_decay",
        "foreach",
        "maximize",
        "capturable",
        "differentiable",
        *_RAVINE_ARGUMENTS,
    ),
}
#: Every optimizer's hyperparameters and their kinds.
OPTIMIZER_ARGUMENTS: dict[str, dict[str, str]] = {
    name: {key: HYPERPARAMETER_KINDS[key] for key in keys} for name, keys in _NAMES.items()
}
DEFAULT_BETAS = (0.9, 0.999)  # every optimizer with betas starts from torch's Adam default
#: Hyperparameters a training run sets itself: restarts and trials are its members.
SET_BY_THE_RUN = {"members": "the run sets it from --restarts (members of one batch)"}

#: Every schedule's arguments; those marked required must be given unless the trainer fills
#: them from the run's length (:data:`FILLED_BY_THE_RUN`).
SCHEDULE_ARGUMENTS: dict[str, dict[str, str]] = {
    "constant": {"factor": "number"},
    "step": {"step_size": "integer required", "gamma": "number"},
    "exponential": {"gamma": "number required"},
    "cosine": {"t_max": "integer required", "eta_min": "number"},
    "warmup": {"warmup_steps": "integer required", "then": "schedule?", "start_factor": "number"},
    "cosine_warm_restarts": {"t0": "integer required", "t_mult": "integer", "eta_min": "number"},
    "onecycle": {
        "total_steps": "integer required",
        "max_lr": "number?",
        "pct_start": "number",
        "anneal_strategy": "one of cos|linear",
        "cycle_momentum": "bool",
        "base_momentum": "number",
        "max_momentum": "number",
        "div_factor": "number",
        "final_div_factor": "number",
        "three_phase": "bool",
    },
}
FILLED_BY_THE_RUN = {"cosine": "t_max", "onecycle": "total_steps"}  # train.build fills these

_SPLIT = {"n_train": "integer", "n_test": "integer"}
_DOWNLOADED = {"root": "path required", "flat": "bool"}
#: Every data set's arguments: the built-in ones, the readers of downloaded sets, and
#: ``file``, the reader of a user's own files (:mod:`ravine.problems.files`).
DATASET_ARGUMENTS: dict[str, dict[str, str]] = {
    "digits": {"seed": "integer", "test_fraction": "number"},
    "mnist1d": {"seed": "integer", "cache_dir": "path?"},
    "spirals": {**_SPLIT, "noise": "number", "turns": "number", "seed": "integer"},
    "moons": {**_SPLIT, "noise": "number", "seed": "integer"},
    "teacher_student": {
        **_SPLIT,
        "input_dim": "integer",
        "width": "integer",
        "depth": "integer",
        "output_dim": "integer",
        "activation": "str",
        "noise": "number",
        "seed": "integer",
    },
    "deep_linear": {
        **_SPLIT,
        "input_dim": "integer",
        "output_dim": "integer",
        "singular_values": "numbers?",
        "noise": "number",
        "seed": "integer",
    },
    "mnist": _DOWNLOADED,
    "fashion_mnist": _DOWNLOADED,
    "cifar10": _DOWNLOADED,
    "file": {
        "path": "path required",
        "label": "str?",
        "task": "one of classification|regression?",
        "test_fraction": "number",
        "seed": "integer",
        "image_size": "integer?",
        "sha256": "str?",
    },
}


#: The files ``--data PATH`` reads (besides folders of images): see ravine.problems.files.
DATA_SUFFIXES = (".npz", ".npy", ".csv", ".parquet")

# ----------------------------------------------------------------------------- values


def parse_value(raw: str, key: str, kind: str | None = None) -> Any:
    """The value of ``KEY=RAW`` on a command line, read as ``kind`` (see the table above);
    without a kind: true/false, none, an integer or a float. ``ValueError`` names the key."""
    text = raw.strip()
    optional = kind is not None and kind.endswith("?")
    base = kind.rstrip("?").removesuffix(" required") if kind else None
    if text.lower() == "none" and (kind is None or optional):
        return None
    if base in ("str", "path"):
        return text
    if base is not None and base.startswith("one of "):
        return text  # check_value says which names are valid
    if base == "schedule":
        return {"name": text}
    if base in ("pair", "numbers"):
        parts = [p.strip() for p in text.split(",")]
        try:
            return (
                tuple(_number(p) for p in parts) if base == "pair" else [_number(p) for p in parts]
            )
        except ValueError:
            what = _describe(base)
            raise ValueError(f"{key} must be {what}; got {raw!r}") from None
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return _number(text)
    except ValueError:
        pass
    if kind is None and key in ("nonfinite", "engine"):  # the registry's names
        return text
    raise ValueError(f"value of {key!r} must be {_describe(kind)}; got {raw!r}")


def _number(text: str) -> float:
    return float(text)  # "nan" and "inf" read as numbers; the registries refuse them by name


def _describe(kind: str | None) -> str:
    if kind is None:
        return "a number, true/false or none"
    base = kind.rstrip("?").removesuffix(" required")
    words = {
        "number": "a number",
        "integer": "an integer",
        "bool": "true or false",
        "pair": "a pair of numbers (beta1, beta2), e.g. 0.9,0.999",
        "numbers": "numbers separated by ,",
        "str": "text",
        "path": "a path",
        "schedule": "a schedule",
    }
    text = words.get(base) or "one of " + ", ".join(base.removeprefix("one of ").split("|"))
    return text + (" or none" if kind.endswith("?") else "")


def check_value(key: str, value: Any, kind: str, where: str) -> None:
    """``ValueError`` naming ``key`` unless ``value`` (from a file or a flag) is of ``kind``."""
    if value is None:
        if kind.endswith("?"):
            return
        raise ValueError(f"{where}: {key} must be {_describe(kind)}, got none")
    base = kind.rstrip("?").removesuffix(" required")
    ok = {
        "number": lambda v: _is_number(v),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "bool": lambda v: isinstance(v, bool),
        "pair": lambda v: isinstance(v, list | tuple) and len(v) == 2 and all(map(_is_number, v)),
        "numbers": lambda v: isinstance(v, list | tuple) and all(map(_is_number, v)),
        "str": lambda v: isinstance(v, str | int) and not isinstance(v, bool),
        "path": lambda v: isinstance(v, str) and bool(v),
        "schedule": lambda v: isinstance(v, Mapping),
    }.get(base)
    if ok is None:  # one of a|b|c
        ok = base.removeprefix("one of ").split("|").__contains__
    if not ok(value):
        raise ValueError(f"{where}: {key} must be {_describe(kind)}, got {value!r}")
    if base == "schedule":
        name = value.get("name")
        if not isinstance(name, str):
            raise ValueError(f"{where}: {key} must name its schedule, got {value!r}")
        inner = {k: v for k, v in value.items() if k != "name"}
        check_schedule(name, inner, f"{where}: {key}", prefix=f"{key}.")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# ----------------------------------------------------------------------------- optimizers


def optimizer_arguments(name: str) -> dict[str, str]:
    """The hyperparameters of optimizer ``name`` and their kinds; ``ValueError`` listing the
    valid names for an unknown one."""
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in OPTIMIZER_ARGUMENTS:
        raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZER_ARGUMENTS)}")
    return OPTIMIZER_ARGUMENTS[key]


def parse_optimizer_args(
    name: str, pairs: Iterable[tuple[str, str]], base: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """``KEY=VALUE`` pairs as optimizer ``name``'s hyperparameters, over ``base`` (a config
    file's). ``beta1=``/``beta2=`` set one entry of ``betas`` (of ``base``, else the default);
    giving ``betas`` and ``beta1``/``beta2`` together is refused."""
    kinds = optimizer_arguments(name)
    args: dict[str, Any] = {}
    betas: dict[int, float] = {}
    for key, raw in pairs:
        if key in ("beta1", "beta2") and "betas" in kinds:
            betas[int(key[-1]) - 1] = parse_value(raw, key, "number")
        else:
            args[key] = parse_value(raw, key, kinds.get(key, "str"))
    if betas:
        if "betas" in args:
            raise ValueError("give betas=B1,B2 or beta1=/beta2=, not both")
        current = list((base or {}).get("betas") or DEFAULT_BETAS)
        for i, value in betas.items():
            current[i] = value
        args["betas"] = tuple(current)
    return args


def parse_optimizer_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Parse ``"adam:lr=0.01,beta2=0.99,amsgrad=true"`` into ``("adam", {...})``.

    Values are read by the hyperparameter's kind (bool ``true``/``false``, numbers, ``none``
    where allowed, names); ``beta1``/``beta2`` set one entry of ``betas``. The name and keys
    are checked against the registry.
    """
    name, _, rest = spec.partition(":")
    name = name.strip().lower()
    kinds = optimizer_arguments(name)
    pairs = []
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ValueError(f"optimizer option {item!r} in {spec!r} is not key=value")
        if key == "betas" and "betas" in kinds:
            # "betas=0.9,0.99" has already been split at the comma
            raise ValueError(
                f"set betas in {spec!r} as beta1=...,beta2=... (commas separate options)"
            )
        if key in ("beta1", "beta2") and "betas" not in kinds:
            raise ValueError(f"optimizer {name!r} has no betas; beta1/beta2 do not apply")
        pairs.append((key, raw.strip()))
    kwargs = parse_optimizer_args(name, pairs)
    check_optimizer_args(name, kwargs)
    return name, kwargs


def check_optimizer_args(name: str, args: Mapping[str, Any], *, run: bool = False) -> None:
    """``ValueError`` for a hyperparameter optimizer ``name`` does not take, or a value of the
    wrong kind; with ``run``, also for one a training run sets itself (``members``)."""
    kinds = optimizer_arguments(name)
    for key, value in args.items():
        if key not in kinds:
            valid = [k for k in kinds if not (run and k in SET_BY_THE_RUN)]
            valid += ["beta1", "beta2"] if "betas" in kinds else []
            raise ValueError(
                f"unknown hyperparameter {key!r} for optimizer {name!r}; valid: {', '.join(valid)}"
            )
        if run and key in SET_BY_THE_RUN:
            raise ValueError(f"optimizer: {key} cannot be set: {SET_BY_THE_RUN[key]}")
        check_value(key, value, kinds[key], f"optimizer {name!r}")


# ----------------------------------------------------------------------------- schedules


def parse_schedule_args(name: str, pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs as schedule ``name``'s arguments; ``then=NAME`` and
    ``then.KEY=VALUE`` build warm-up's follow-on schedule."""
    kinds = _schedule_kinds(name)
    args: dict[str, Any] = {}
    for key, raw in pairs:
        head, dot, rest = key.partition(".")
        if dot and kinds.get(head, "").startswith("schedule"):
            then = args.setdefault(head, {})
            if not isinstance(then, dict):
                raise ValueError(f"{head} is none; name its schedule with {head}=NAME first")
            inner = _schedule_kinds(then["name"]) if "name" in then else {}
            then[rest] = parse_value(raw, f"{head}.{rest}", inner.get(rest))
        elif kinds.get(key, "").startswith("schedule") and isinstance(args.get(key), dict):
            args[key] = {**args[key], **parse_value(raw, key, kinds[key])}
        else:
            args[key] = parse_value(raw, key, kinds.get(key, "str"))
    return args


def _schedule_kinds(name: str) -> dict[str, str]:
    if name not in SCHEDULE_ARGUMENTS:
        raise ValueError(f"unknown schedule {name!r}; valid names: {', '.join(SCHEDULE_ARGUMENTS)}")
    return SCHEDULE_ARGUMENTS[name]


def check_schedule(
    name: str,
    args: Mapping[str, Any],
    where: str = "schedule",
    *,
    filled: bool = False,
    prefix: str = "",
) -> None:
    """``ValueError`` for an unknown schedule or argument, a missing required argument
    (``filled``: the trainer fills the run's length in, see :data:`FILLED_BY_THE_RUN`) or a
    value of the wrong kind."""
    kinds = _schedule_kinds(name)
    for key, value in args.items():
        if key not in kinds:
            raise ValueError(
                f"{where} {name!r} has no argument {key!r}; it accepts: {', '.join(kinds)}"
            )
        check_value(key, value, kinds[key], f"{where} {name!r}")
    for key, kind in kinds.items():
        if kind.endswith("required") and key not in args:
            if filled and FILLED_BY_THE_RUN.get(name) == key:
                continue
            raise ValueError(
                f"{where} {name!r} needs {key} ({_describe(kind)}), "
                f"e.g. --schedule-arg {prefix}{key}=..."
            )


# ----------------------------------------------------------------------------- data sets


def dataset_arguments(name: str) -> dict[str, str]:
    key = name.strip().lower().replace("-", "_") if isinstance(name, str) else name
    if key not in DATASET_ARGUMENTS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_ARGUMENTS)}")
    return DATASET_ARGUMENTS[key]


def parse_dataset_args(name: str, pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    kinds = dataset_arguments(name)
    return {key: parse_value(raw, key, kinds.get(key, "str")) for key, raw in pairs}


def check_dataset(name: str, args: Mapping[str, Any]) -> None:
    """``ValueError`` for an unknown data set or argument, a missing required one (``root``
    of a downloaded set, ``path`` of a file) or a value of the wrong kind."""
    kinds = dataset_arguments(name)
    for key, value in args.items():
        if key not in kinds:
            raise ValueError(
                f"[data] {name!r} has no argument {key!r}; it accepts: {', '.join(kinds)}"
            )
        check_value(key, value, kinds[key], f"[data] {name!r}")
        if _is_number(value) and not math.isfinite(value):
            raise ValueError(f"[data] {name!r}: {key} must be finite, got {value!r}")
    path = args.get("path") if name == "file" else None
    if isinstance(path, str) and not Path(path).expanduser().is_dir():
        suffix = Path(path).suffix.lower()
        if suffix not in DATA_SUFFIXES:
            raise ValueError(
                f"[data] path: cannot read {suffix or 'a file without a suffix'} ({path}); "
                f"ravine reads {', '.join(DATA_SUFFIXES)} files and folders of images"
            )
    for key, kind in kinds.items():
        if kind.endswith("required") and key not in args:
            hint = "--data PATH" if key == "path" else f"--data-arg {key}=..."
            raise ValueError(f"[data] {name!r} needs {key} ({_describe(kind)}), e.g. {hint}")
