"""Optimizers by name, and the ``name:key=value,...`` spec the CLI and configs use."""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

import torch

from ravine.arguments import OPTIMIZER_ARGUMENTS, parse_value
from ravine.optim.engine import ChainOptimizer
from ravine.optim.optimizers import SGD, Adagrad, Adam, AdamW, Momentum, NAdam, Nesterov, RMSprop

#: Short lowercase names; the mission's list, in the order tables show them.
OPTIMIZERS: dict[str, type[ChainOptimizer]] = {
    "sgd": SGD,
    "momentum": Momentum,
    "nesterov": Nesterov,
    "adagrad": Adagrad,
    "rmsprop": RMSprop,
    "adam": Adam,
    "adamw": AdamW,
    "nadam": NAdam,
}


def optimizer_class(name: str) -> type[ChainOptimizer]:
    """The class registered as ``name``; ``ValueError`` listing the valid names otherwise."""
    key = name.strip().lower()
    if key not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[key]


def hyperparameter_names(name: str) -> list[str]:
    """The keyword arguments optimizer ``name`` accepts (besides ``params``)."""
    cls = optimizer_class(name)
    names: list[str] = []
    for klass in cls.__mro__:
        if klass is ChainOptimizer:
            break
        for p in inspect.signature(klass.__init__).parameters.values():
            wanted = p.name not in ("self", "params") and p.kind is not p.VAR_KEYWORD
            if wanted and p.name not in names:
                names.append(p.name)
    return names


def make_optimizer(name: str, params: Iterable[Any], **hyperparams: Any) -> ChainOptimizer:
    """Build optimizer ``name`` over ``params``; unknown hyperparameters raise ``ValueError``."""
    valid = hyperparameter_names(name)
    unknown = [k for k in hyperparams if k not in valid]
    if unknown:
        raise ValueError(
            f"unknown hyperparameter {unknown[0]!r} for optimizer {name!r}; "
            f"valid: {', '.join(valid)}"
        )
    dtype = hyperparams.get("state_dtype")
    if isinstance(dtype, str):  # a config file or the CLI names it: "float32"
        hyperparams["state_dtype"] = _dtype(dtype)
    return optimizer_class(name)(params, **hyperparams)


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None) if name in STATE_DTYPES else None
    if dtype is None:
        raise ValueError(f"state_dtype must be one of {', '.join(STATE_DTYPES)}; got {name!r}")
    return dtype


STATE_DTYPES = ("float32", "float64", "bfloat16", "float16")  # by name, as configs write them


def parse_optimizer_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Parse ``"adam:lr=0.01,beta2=0.99,amsgrad=true"`` into ``("adam", {...})``.

    Values are read as bool (``true``/``false``), int, float or ``none``; ``beta1``/``beta2``
    set one entry of ``betas``. The name and keys are checked against the registry.
    """
    name, _, rest = spec.partition(":")
    name = name.strip().lower()
    optimizer_class(name)
    kwargs: dict[str, Any] = {}
    betas: dict[int, float] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ValueError(f"optimizer option {item!r} in {spec!r} is not key=value")
        if key == "betas" and "betas" in hyperparameter_names(name):
            # "betas=0.9,0.99" has already been split at the comma
            raise ValueError(
                f"set betas in {spec!r} as beta1=...,beta2=... (commas separate options)"
            )
        value = _parse_value(raw.strip(), key, name)
        if key in ("beta1", "beta2"):
            betas[int(key[-1]) - 1] = value
            continue
        kwargs[key] = value
    if betas:
        cls = optimizer_class(name)
        default = inspect.signature(cls.__init__).parameters.get("betas")
        if default is None:
            raise ValueError(f"optimizer {name!r} has no betas; beta1/beta2 do not apply")
        current = list(default.default)
        for i, v in betas.items():
            current[i] = v
        kwargs["betas"] = tuple(current)
    valid = hyperparameter_names(name)
    for key in kwargs:
        if key not in valid:
            raise ValueError(
                f"unknown hyperparameter {key!r} for optimizer {name!r}; valid: "
                f"{', '.join([*valid, 'beta1', 'beta2'] if 'betas' in valid else valid)}"
            )
    return name, kwargs


def _parse_value(raw: str, key: str, name: str | None = None) -> Any:
    # The CLI's reading (ravine.arguments): by the kind of the hyperparameter where it is known.
    kind = OPTIMIZER_ARGUMENTS.get(name, {}).get(key) if name else None
    return parse_value(raw, key, kind)
