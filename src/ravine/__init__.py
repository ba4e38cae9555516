"""ravine: choose, compare, tune and debug how neural networks are optimized.

    >>> import torch, ravine
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    >>> _ = ravine.init.apply(model, "he_normal", bias="zeros")
    >>> opt = ravine.optim.NAdam(model.parameters(), lr=2e-3)
    >>> sched = ravine.schedules.CosineWarmRestarts(opt, t0=10, t_mult=2)
"""

from ravine import init, optim, problems, schedules

__version__ = "0.1.0"

__all__ = ["__version__", "init", "optim", "problems", "schedules"]
