"""Reading a finished run folder back: its config, data, trained model and initialization."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ravine.folders import DamagedFileError, load_checkpoint, read_verified
from ravine.problems import build_model
from ravine.train.build import Splits, input_view, model_config, prepare_data, seeds
from ravine.train.config import ConfigError, TrainConfig, parse_config

WEIGHTS_DIR = "weights"  # per-epoch weights, when the run kept them (keep_weights = true)


@dataclass
class Run:
    """A run folder, loaded: everything a probe needs to look at the trained network."""

    path: Path
    config: TrainConfig
    splits: Splits  # the same data the run saw (rebuilt deterministically from the config)
    model: nn.Module  # the final weights, eval mode
    input_shape: tuple[int, ...]  # what the model takes per example

    def initial_model(self) -> nn.Module:
        """The network as it was initialized: initialization is a function of the seed."""
        dataset = self.splits.dataset
        num_outputs = dataset.num_classes or dataset.y_train.shape[1]
        model = build_model(
            model_config(self.config),
            self.input_shape,
            num_outputs,
            generator=seeds(self.config.seed)["init"],
        )
        return model.eval()

    def epoch_weights(self) -> list[Path]:
        """The per-epoch weight files, oldest first (empty unless the run kept them)."""
        return sorted((self.path / WEIGHTS_DIR).glob("epoch-*.pt"))

    def inputs(self, x):
        return x.reshape(len(x), *self.input_shape)


def load_run(path: str | Path) -> Run:
    """Load a folder written by ``ravine train``; ``ConfigError`` says what is missing."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"{path} is not a folder")
    if not (path / "config.toml").exists():
        raise ConfigError(f"{path} is not a run folder: it has no config.toml")
    if not (path / "model.pt").exists():
        raise ConfigError(
            f"{path} has no model.pt: the run has not finished (run the same ravine train "
            "command again to resume it)"
        )
    config = load_run_config(path)
    splits = prepare_data(config)
    mconfig = model_config(config)
    shape = input_view(mconfig, splits.dataset)
    num_outputs = splits.dataset.num_classes or splits.dataset.y_train.shape[1]
    model = build_model(mconfig, shape, num_outputs)
    try:
        saved = load_checkpoint(path / "model.pt")
        model.load_state_dict(saved["model"])
    except (ValueError, KeyError, RuntimeError) as error:  # damaged, or another model's
        raise ConfigError(f"{path / 'model.pt'} cannot be used: {error}") from None
    return Run(path, config, splits, model.eval(), shape)


def load_run_config(path: Path) -> TrainConfig:
    """The config a run folder was trained with, its checksum checked."""
    source = path / "config.toml"
    try:
        text = read_verified(source).decode("utf-8")
    except (DamagedFileError, UnicodeDecodeError) as error:
        raise ConfigError(f"{source} cannot be read: {error}") from None
    return parse_config(text, str(source))
