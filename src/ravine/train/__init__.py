"""Training networks: one trainer for one network or N members (restarts, tuning trials) as one
batched computation, checkpoints and resume, snapshot ensembles."""

from ravine.folders import load_checkpoint, save_checkpoint
from ravine.train.config import ConfigError, TrainConfig, load_config
from ravine.train.loop import train
from ravine.train.trainer import Member, MembersResult, TrainResult

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
