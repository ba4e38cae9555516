"""Where a run computes and in which precision: device names, checked before torch is imported.

``check_device_name`` and ``check_precision`` read only strings, so the CLI refuses a typo at
once; ``resolve_device`` imports torch and refuses a device this machine lacks, naming the ones
it has. ``"auto"`` is the best available: CUDA, then Apple's MPS, then the CPU.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
from collections.abc import Iterator
from typing import Any

__all__ = [
    "DEVICE_KINDS",
    "PRECISIONS",
    "available_devices",
    "check_device_name",
    "check_precision",
    "current_device",
    "resolve_device",
    "using_device",
]

DEVICE_KINDS = ("auto", "cpu", "cuda", "cuda:N", "mps")
PRECISIONS = ("fp32", "bf16", "fp16")
_NAME = re.compile(r"^(auto|cpu|mps|cuda(:\d{1,4})?)$")


def check_device_name(name: Any, argument: str = "device") -> str:
    """``name`` if it is one of :data:`DEVICE_KINDS` (``cuda:0``, ...); ``ValueError`` naming
    ``argument`` and the value otherwise. Imports nothing heavy."""
    if not isinstance(name, str) or not _NAME.match(name.strip().lower()):
        raise ValueError(f"{argument} must be one of {', '.join(DEVICE_KINDS)}; got {name!r}")
    return name.strip().lower()


def check_precision(name: Any, argument: str = "precision") -> str:
    if name not in PRECISIONS:
        raise ValueError(f"{argument} must be one of {', '.join(PRECISIONS)}; got {name!r}")
    return name


def available_devices() -> list[str]:
    """The device names this machine can train on, best first (imports torch)."""
    import torch

    names = []
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        names.append("mps")
    return [*names, "cpu"]


def resolve_device(name: Any = "auto", argument: str = "device"):
    """The ``torch.device`` for ``name`` (a name, a ``torch.device``, or None for the CPU);
    ``ValueError`` when this machine has no such device, naming those it has."""
    import torch

    if name is None:
        return torch.device("cpu")
    if isinstance(name, torch.device):
        name = str(name)
    name = check_device_name(name, argument)
    available = available_devices()
    if name == "auto":
        return torch.device(available[0])
    kind = name.split(":")[0]
    if name not in available and kind != "cpu":
        if kind == "cuda" and torch.cuda.is_available():
            why = f"this machine has {torch.cuda.device_count()} CUDA device(s)"
        elif kind == "cuda":
            built = (
                "without CUDA" if torch.version.cuda is None else f"with CUDA {torch.version.cuda}"
            )
            why = f"CUDA is not available (torch {torch.__version__} built {built})"
        else:
            why = "Apple's MPS is not available"
        raise ValueError(f"{argument} {name!r}: {why}; available: {', '.join(available)}")
    return torch.device(name)


# The device that run folders are loaded onto (probe and landscape): the CLI sets it around a
# report, so the report code, which loads its run itself, needs no device argument.
_CURRENT: contextvars.ContextVar[Any] = contextvars.ContextVar("ravine_device", default=None)


def current_device():
    """The device set by :func:`using_device` (the CPU outside one)."""
    import torch

    device = _CURRENT.get()
    return torch.device("cpu") if device is None else device


@contextlib.contextmanager
def using_device(device) -> Iterator[None]:
    """Load run folders onto ``device`` (see :func:`ravine.train.run.load_run`) inside."""
    token = _CURRENT.set(resolve_device(device))
    try:
        yield
    finally:
        _CURRENT.reset(token)
