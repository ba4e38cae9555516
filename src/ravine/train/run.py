"""Reading a finished run folder back: its config, data, trained model and initialization."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ravine.folders import DamagedFileError, load_checkpoint, read_verified
from ravine.problems import build_model
from ravine.train.build import Splits, input_view, model_config, prepare_data, seeds
from ravine.train.config import ConfigError, TrainConfig, check_paths, parse_config

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
    """Load a folder written by ``ravine train``; ``ConfigError`` says what is missing or
    broken (an unreadable or mismatched config.toml or model.pt included)."""
    path = Path(path)
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is not a folder"
        raise ConfigError(f"{path} {what}; give the folder of a run written by ravine train")
    if not (path / "config.toml").exists():
        raise ConfigError(f"{path} is not a run folder: it has no config.toml")
    if not (path / "model.pt").exists():
        raise ConfigError(
            f"{path} has no model.pt: the run has not finished (run the same ravine train "
            "command again to resume it)"
        )
    config = load_run_config(path)
    if config.restarts > 1:
        raise ConfigError(
            f"{path} holds {config.restarts} restarts trained together; probe and landscape "
            "look at one network (train it with restarts = 1)"
        )
    check_paths(config, path, pretrained=False)  # the data may be cached (written) here
    splits = prepare_data(config)
    mconfig = model_config(config)
    shape = input_view(mconfig, splits.dataset)
    num_outputs = splits.dataset.num_classes or splits.dataset.y_train.shape[1]
    model = build_model(mconfig, shape, num_outputs)
    model.load_state_dict(read_weights(path / "model.pt", model, "config.toml"))
    return Run(path, config, splits, model.eval(), shape)


def read_weights(file: Path, model: nn.Module, against: str) -> dict:
    """The state dict saved in ``file`` (a ravine checkpoint), checked against ``model``;
    ``ConfigError`` naming the file when it is unreadable or was saved for another model."""
    try:
        saved = load_checkpoint(file)
    except (OSError, ValueError) as error:
        detail = _first_line(error).removeprefix(f"checkpoint {file} is unreadable: ")
        raise ConfigError(f"{file} is not a checkpoint ravine can read ({detail})") from None
    state = saved.get("model") if isinstance(saved, dict) else None
    if not isinstance(state, dict):
        raise ConfigError(f"{file} is not a ravine checkpoint: it holds no model weights")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        k
        for k in expected
        if k in state
        and (not hasattr(state[k], "shape") or tuple(state[k].shape) != tuple(expected[k].shape))
    ]
    if missing or unexpected or shapes:
        problem = (
            f"lacks {missing[0]!r}"
            if missing
            else f"has {unexpected[0]!r}"
            if unexpected
            else f"has {shapes[0]!r} in another shape"
        )
        raise ConfigError(
            f"{file} does not hold the model that {file.parent / against} describes "
            f"(it {problem}); was one of them replaced?"
        )
    return state


def load_run_config(path: Path) -> TrainConfig:
    """The config a run folder was trained with, its checksum checked."""
    source = path / "config.toml"
    try:
        data = read_verified(source)
    except (OSError, DamagedFileError) as error:
        raise ConfigError(f"{source} cannot be read: {error}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{source} is not UTF-8 text (byte 0x{data[error.start]:02x} at offset "
            f"{error.start}); TOML files are UTF-8"
        ) from None
    return parse_config(text, str(source))


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
