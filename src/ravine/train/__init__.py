"""Training networks: the loop, checkpoints and resume, restarts, snapshot ensembles."""

from ravine.folders import load_checkpoint, save_checkpoint
from ravine.train.config import ConfigError, TrainConfig, load_config
from ravine.train.loop import TrainResult, train
from ravine.train.restarts import RestartsResult, train_restarts

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
