"""ravine: choose, compare, tune and debug how neural networks are optimized.

>>> import torch, ravine
>>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
>>> _ = ravine.init.apply(model, "he_normal", bias="zeros")
>>> opt = ravine.optim.NAdam(model.parameters(), lr=2e-3)
>>> sched = ravine.schedules.CosineWarmRestarts(opt, t0=10, t_mult=2)
"""

import importlib
from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "init", "optim", "probe", "problems", "schedules"]

_SUBMODULES = {"init", "optim", "probe", "problems", "schedules"}


def __getattr__(name: str) -> Any:
    # Submodules load on first use so that `ravine --help` does not pay for importing torch.
    if name in _SUBMODULES:
        module = importlib.import_module(f"ravine.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'ravine' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _SUBMODULES)
