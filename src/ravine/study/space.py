"""Search spaces: which hyperparameters a tuning study samples, over which ranges.

A space is a mapping of *search names* to :class:`Range` s. Most search names are the
optimizer's own hyperparameters (``lr``, ``eps``, ``weight_decay``); the decay rates are
searched as their distance from 1 on a log scale (``one_minus_beta1``, ``one_minus_beta2``,
``one_minus_momentum``, ``one_minus_alpha``), as the Deep Learning Tuning Playbook recommends:
``beta2`` = 0.99 and 0.999 are as far apart as 0.9 and 0.99. :func:`hyperparameters` turns a
sampled point back into the optimizer's arguments.

``DEFAULT_SPACES`` holds published ranges per optimizer (Tuning Playbook; AlgoPerf baselines;
widened to cover the small networks ravine ships). A spec on the command line overrides or adds
one entry::

    lr                      the published range of lr for this optimizer
    lr=1e-4:1e-1:log        log-uniform on [1e-4, 1e-1]
    momentum=0.8:0.99       uniform on [0.8, 0.99]
    weight_decay=1e-6:1e-2:log
    amsgrad=true,false      a choice

Only optimizer hyperparameters are searched: trials of one batch train together, so they
share everything else (batch size, epochs, architecture).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_SPACES",
    "Range",
    "hyperparameters",
    "parse_range",
    "resolve_space",
]


@dataclass(frozen=True)
class Range:
    """One searched quantity: a float or int interval (optionally log-scaled), or choices."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple[Any, ...] | None = None

    def __post_init__(self) -> None:
        if self.choices is not None:
            if not self.choices:
                raise ValueError("a choice needs at least one value")
            return
        for bound in (self.low, self.high):
            if isinstance(bound, bool) or not isinstance(bound, int | float):
                raise ValueError(f"range bounds must be numbers, got {bound!r}")
            if not math.isfinite(bound):
                raise ValueError(f"range bounds must be finite, got {bound!r}")
        if not self.low < self.high:
            raise ValueError(f"an empty range: low {self.low!r} must be below high {self.high!r}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scaled range needs low > 0, got {self.low!r}")
        if self.integer and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError(f"an int range needs whole bounds, got {self.low!r}:{self.high!r}")

    def __str__(self) -> str:
        if self.choices is not None:
            return ",".join(_text(c) for c in self.choices)
        kind = ":int" if self.integer else ""
        return f"{self.low:g}:{self.high:g}{':log' if self.log else ''}{kind}"


_LR_ADAPTIVE = Range(1e-5, 1e-1, log=True)
_LR_SGD = Range(1e-3, 1.0, log=True)
_ONE_MINUS_BETA1 = Range(1e-2, 0.5, log=True)  # beta1 in [0.5, 0.99]
_ONE_MINUS_BETA2 = Range(1e-4, 1e-1, log=True)  # beta2 in [0.9, 0.9999]
_ONE_MINUS_MOMENTUM = Range(1e-2, 0.5, log=True)
_WEIGHT_DECAY = Range(1e-6, 1e-1, log=True)

#: Published ranges per optimizer; ``--space all`` takes every one of them.
DEFAULT_SPACES: Mapping[str, Mapping[str, Range]] = {
    "sgd": {"lr": _LR_SGD, "weight_decay": _WEIGHT_DECAY},
    "momentum": {
        "lr": _LR_SGD,
        "one_minus_momentum": _ONE_MINUS_MOMENTUM,
        "weight_decay": _WEIGHT_DECAY,
    },
    "nesterov": {
        "lr": _LR_SGD,
        "one_minus_momentum": _ONE_MINUS_MOMENTUM,
        "weight_decay": _WEIGHT_DECAY,
    },
    "adagrad": {"lr": Range(1e-3, 1.0, log=True), "weight_decay": _WEIGHT_DECAY},
    "rmsprop": {
        "lr": _LR_ADAPTIVE,
        "one_minus_alpha": Range(1e-3, 0.1, log=True),
        "eps": Range(1e-10, 1e-3, log=True),
        "weight_decay": _WEIGHT_DECAY,
    },
    "adam": {
        "lr": _LR_ADAPTIVE,
        "one_minus_beta1": _ONE_MINUS_BETA1,
        "one_minus_beta2": _ONE_MINUS_BETA2,
        "eps": Range(1e-10, 1e-3, log=True),
    },
    "adamw": {
        "lr": _LR_ADAPTIVE,
        "one_minus_beta1": _ONE_MINUS_BETA1,
        "one_minus_beta2": _ONE_MINUS_BETA2,
        "weight_decay": Range(1e-5, 1.0, log=True),
    },
    "nadam": {
        "lr": _LR_ADAPTIVE,
        "one_minus_beta1": _ONE_MINUS_BETA1,
        "one_minus_beta2": _ONE_MINUS_BETA2,
        "eps": Range(1e-10, 1e-3, log=True),
    },
}

# Search names that are spelled differently from the argument they set.
_DERIVED = {
    "one_minus_beta1": ("betas", 0),
    "one_minus_beta2": ("betas", 1),
    "beta1": ("betas", 0),
    "beta2": ("betas", 1),
    "one_minus_momentum": ("momentum", None),
    "one_minus_alpha": ("alpha", None),
}


def parse_range(spec: str, optimizer: str) -> tuple[str, Range]:
    """``"lr=1e-4:1e-1:log"`` -> ``("lr", Range(...))``; a bare name takes the published range.

    ``ValueError`` names the spec and what is wrong with it.
    """
    name, eq, body = (part.strip() for part in spec.partition("="))
    if not name:
        raise ValueError(f"--space {spec!r}: a search name is missing (e.g. lr=1e-4:1e-1:log)")
    check_name(name, optimizer)
    if not eq:
        published = DEFAULT_SPACES.get(optimizer, {})
        if name not in published:
            raise ValueError(
                f"--space {spec!r}: no published range of {name!r} for {optimizer}; give one, "
                f"e.g. {name}=LOW:HIGH[:log]"
            )
        return name, published[name]
    try:
        if ":" not in body:
            choices = tuple(_value(v.strip()) for v in body.split(",") if v.strip())
            return name, Range(choices=choices)
        parts = [p.strip() for p in body.split(":")]
        flags = set(parts[2:])
        unknown = flags - {"log", "int"}
        if len(parts) < 2 or unknown:
            raise ValueError("expected LOW:HIGH[:log][:int]")
        low, high = (_number(p) for p in parts[:2])
        return name, Range(low, high, log="log" in flags, integer="int" in flags)
    except ValueError as error:
        raise ValueError(f"--space {spec!r}: {error}") from None


def resolve_space(
    optimizer: str, specs: Sequence[str] | Mapping[str, Range | str] | None
) -> dict[str, Range]:
    """The space a study searches: ``None`` or empty gives ``lr`` alone; ``"all"`` the
    whole published space; otherwise each spec (see :func:`parse_range`), in order."""
    if not specs:
        specs = ["lr"]
    if isinstance(specs, Mapping):
        items = [
            (n, r if isinstance(r, Range) else parse_range(f"{n}={r}", optimizer)[1])
            for n, r in specs.items()
        ]
        for name, _ in items:
            check_name(name, optimizer)
        return dict(items)
    space: dict[str, Range] = {}
    for spec in specs:
        if spec.strip() == "all":
            space.update(DEFAULT_SPACES.get(optimizer, {}))
            continue
        name, value = parse_range(spec, optimizer)
        space[name] = value
    clashes = [n for n in space if n in _DERIVED and _DERIVED[n][0] in space]
    if clashes:
        raise ValueError(f"the space sets {_DERIVED[clashes[0]][0]} twice ({clashes[0]} too)")
    spelled = {}
    for name in space:
        target = _DERIVED.get(name, (name, None))
        if target in spelled:
            raise ValueError(f"the space sets {target[0]} twice: {spelled[target]} and {name}")
        spelled[target] = name
    return space


def check_name(name: str, optimizer: str) -> None:
    """``ValueError`` listing the valid names if ``name`` is not searchable for ``optimizer``."""
    valid = searchable_names(optimizer)
    if name not in valid:
        raise ValueError(f"{name!r} cannot be searched for {optimizer}; valid: {', '.join(valid)}")


# Arguments that choose an implementation or a convention, not a point of the search; betas
# is searched as beta1/beta2 (or their distances from 1), one number each.
_NOT_SEARCHED = (
    "nonfinite",
    "engine",
    "compile",
    "state_dtype",
    "maximize",
    "foreach",
    "fused",
    "capturable",
    "differentiable",
    "betas",
)


def searchable_names(optimizer: str) -> list[str]:
    """What a space may search for ``optimizer``: its hyperparameters, the derived names
    (``one_minus_beta1``, ...), in the registry's order."""
    from ravine.arguments import optimizer_arguments  # the registry's, read without torch

    valid = list(optimizer_arguments(optimizer))
    names = [n for n in valid if n not in _NOT_SEARCHED]
    derived = [d for d, (target, _) in _DERIVED.items() if target in valid]
    return [*names, *derived]


def hyperparameters(
    optimizer: str, point: Mapping[str, Any], base: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A sampled ``point`` as ``(optimizer_args, training_overrides)`` on top of ``base``
    (the run's own optimizer arguments): ``one_minus_beta2 = 1e-3`` sets ``betas[1] = 0.999``.
    """
    import inspect

    from ravine.optim.registry import optimizer_class

    args = dict(base or {})
    training: dict[str, Any] = {}  # (no training setting is searched yet: see the module doc)
    for name, value in point.items():
        target, index = _DERIVED.get(name, (name, None))
        real = 1 - value if name.startswith("one_minus_") else value
        if index is None:
            args[target] = real
            continue
        if "betas" not in args:
            signature = inspect.signature(optimizer_class(optimizer).__init__)
            args["betas"] = tuple(signature.parameters["betas"].default)
        betas = list(args["betas"])
        betas[index] = real
        args["betas"] = tuple(betas)
    return args, training


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    return (
        int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value
    )


def _value(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return _number(text)
    except ValueError:
        return text


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def describe(space: Mapping[str, Range]) -> str:
    """``lr=1e-05:0.1:log, one_minus_beta1=...``: a space as specs, for tables and logs."""
    return ", ".join(f"{name}={value}" for name, value in space.items())
