"""Training networks: the loop, checkpoints and resume, restarts, snapshot ensembles.

The names load on first use (PEP 562), so ``from ravine.train import load_config`` reads and
checks a config without importing torch: the CLI refuses bad input before paying for it.
"""

import importlib
from typing import Any

__all__ = [
    "ConfigError",
    "RestartsResult",
    "TrainConfig",
    "TrainResult",
    "load_checkpoint",
    "load_config",
    "save_checkpoint",
    "train",
    "train_restarts",
]

_HOMES = {
    "ConfigError": "config",
    "TrainConfig": "config",
    "load_config": "config",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "TrainResult": "loop",
    "train": "loop",
    "RestartsResult": "restarts",
    "train_restarts": "restarts",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        value = getattr(importlib.import_module(f"ravine.train.{_HOMES[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ravine.train' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
