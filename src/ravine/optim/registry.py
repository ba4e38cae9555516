"""Optimizers by name, and the ``name:key=value,...`` spec the CLI and configs use (read
without torch by :func:`ravine.arguments.parse_optimizer_spec`, re-exported here)."""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

import torch

from ravine.arguments import parse_optimizer_spec  # noqa: F401 - torch-free; re-exported
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
