"""Optimizers: update rules written once, chained from small transforms, run by one engine.

Every optimizer is a drop-in ``torch.optim.Optimizer`` with torch.optim's argument names,
defaults and state-dict keys.
"""

from ravine.optim import transforms
from ravine.optim.clip import clip_grad_norm_, clip_grad_value_
from ravine.optim.engine import NONFINITE_POLICIES, ChainOptimizer, NonFiniteGradientError
from ravine.optim.optimizers import SGD, Adagrad, Adam, AdamW, Momentum, NAdam, Nesterov, RMSprop
from ravine.optim.registry import (
    OPTIMIZERS,
    hyperparameter_names,
    make_optimizer,
    optimizer_class,
    parse_optimizer_spec,
)

__all__ = [
    "NONFINITE_POLICIES",
    "OPTIMIZERS",
    "SGD",
    "Adagrad",
    "Adam",
    "AdamW",
    "ChainOptimizer",
    "Momentum",
    "NAdam",
    "Nesterov",
    "NonFiniteGradientError",
    "RMSprop",
    "clip_grad_norm_",
    "clip_grad_value_",
    "hyperparameter_names",
    "make_optimizer",
    "optimizer_class",
    "parse_optimizer_spec",
    "transforms",
]
