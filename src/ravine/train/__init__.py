"""Training networks: one trainer for one network or N members (restarts, tuning trials) as one
batched computation, checkpoints and resume, snapshot ensembles.

The names load on first use (PEP 562), so ``from ravine.train import load_config`` reads and
checks a config without importing torch: the CLI refuses bad input before paying for it.
"""

import importlib
from typing import Any

__all__ = [
    "ConfigError",
    "Member",
    "MembersResult",
    "TrainConfig",
    "TrainResult",
    "load_checkpoint",
    "load_config",
    "save_checkpoint",
    "train",
]

_HOMES = {
    "ConfigError": "ravine.train.config",
    "TrainConfig": "ravine.train.config",
    "load_config": "ravine.train.config",
    "load_checkpoint": "ravine.folders",
    "save_checkpoint": "ravine.folders",
    "Member": "ravine.train.trainer",
    "MembersResult": "ravine.train.trainer",
    "TrainResult": "ravine.train.trainer",
    "train": "ravine.train.loop",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        value = getattr(importlib.import_module(_HOMES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ravine.train' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
