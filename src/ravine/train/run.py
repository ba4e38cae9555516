"""Reading a finished run folder back: its config, data, trained model and initialization.

A run trained on a model or data given from Python (:mod:`ravine.train.user`) cannot be
rebuilt from its folder alone: give the same ones to :func:`load_run` (``model=``, ``data=``;
their fingerprints are checked against config.toml) and use the :mod:`ravine.probe`
instruments on ``run.model``; ``ravine probe`` and ``ravine landscape`` say so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ravine.folders import DamagedFileError, load_checkpoint, read_verified
from ravine.problems import build_model
from ravine.train.build import (
    Splits,
    input_view,
    model_config,
    prepare_data,
    seeds,
    split_dataset,
)
from ravine.train.config import ConfigError, TrainConfig, check_paths, parse_config
from ravine.train.devices import current_device

WEIGHTS_DIR = "weights"  # per-epoch weights, when the run kept them (keep_weights = true)


@dataclass
class Run:
    """A run folder, loaded: everything a probe needs to look at the trained network."""

    path: Path
    config: TrainConfig
    splits: Splits  # the same data the run saw (rebuilt deterministically from the config)
    model: nn.Module  # the final weights, eval mode
    input_shape: tuple[int, ...]  # what the model takes per example
    factory: Callable[..., nn.Module] | None = None  # a user's model factory, when it had one

    def initial_model(self) -> nn.Module:
        """The network as it was initialized: initialization is a function of the seed."""
        device = next(self.model.parameters()).device
        if self.factory is not None:
            from ravine.train.user import build_user_model

            seed = self.config.seed
            return build_user_model(self.factory, seed, seeds(seed)["init"]).to(device).eval()
        dataset = self.splits.dataset
        num_outputs = dataset.num_classes or dataset.y_train.shape[1]
        model = build_model(
            model_config(self.config),
            self.input_shape,
            num_outputs,
            generator=seeds(self.config.seed)["init"],
        )
        return model.to(device).eval()

    def epoch_weights(self) -> list[Path]:
        """The per-epoch weight files, oldest first (empty unless the run kept them)."""
        return sorted((self.path / WEIGHTS_DIR).glob("epoch-*.pt"))

    def inputs(self, x):
        return x.reshape(len(x), *self.input_shape)


def load_run(
    path: str | Path,
    *,
    model: Callable[..., nn.Module] | None = None,
    data: Any = None,
    device=None,
) -> Run:
    """Load a folder written by ``ravine train``; ``ConfigError`` says what is missing or
    broken (an unreadable or mismatched config.toml or model.pt included).

    ``model`` / ``data``: the model factory and data a run trained from Python was given
    (required then, and checked against the fingerprints in its config.toml). ``device``:
    where the model and the data go (default: :func:`ravine.train.devices.current_device`,
    the CPU unless ``ravine probe --device`` set another).

    Example (a run of ``train(config, out, model=make_net, data=(x, y, x_test, y_test))``)::

        run = load_run(out, model=make_net, data=(x, y, x_test, y_test))
        op = ravine.probe.hessian_operator(run.model, loss_fn, (x[:512], y[:512]))
    """
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
    splits, network = _user_parts(path, config, model, data)
    if splits is None:
        check_paths(config, path, pretrained=False)  # the data may be cached (written) here
        splits = prepare_data(config)
    if network is None:
        mconfig = model_config(config)
        shape = input_view(mconfig, splits.dataset)
        num_outputs = splits.dataset.num_classes or splits.dataset.y_train.shape[1]
        network = build_model(mconfig, shape, num_outputs)
    else:
        shape = tuple(splits.dataset.input_shape)
    network.load_state_dict(read_weights(path / "model.pt", network, "config.toml"))
    device = current_device() if device is None else device
    if str(device) != "cpu":
        network = network.to(device)
        moved = {
            f.name: getattr(splits, f.name).to(device)
            for f in dataclasses.fields(splits)
            if f.name.startswith(("x_", "y_"))
        }
        splits = dataclasses.replace(splits, **moved)
    return Run(path, config, splits, network.eval(), shape, model)


def _user_parts(path: Path, config: TrainConfig, model, data):
    """The splits and the network of a run trained on a user's data or model (None for what
    came from the config), checked against the fingerprints its config.toml records."""
    from ravine.train import user

    recorded = dict(config.user)
    for key, given in (("model", model), ("data", data)):
        what = "a model" if key == "model" else "data"
        if key in recorded and given is None:
            raise ConfigError(
                f"{path} was trained on {what} given from Python ([user] {key} in its "
                f"config.toml), which its folder cannot rebuild; load it from Python with "
                f"ravine.train.run.load_run({str(path)!r}, model=..., data=...) and use the "
                "ravine.probe instruments on run.model"
            )
        if key not in recorded and given is not None:
            raise ConfigError(f"{path} was not trained on {what} given from Python")
    splits = network = None
    if data is not None:
        try:
            dataset = user.user_dataset(data)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if user.data_fingerprint(dataset) != recorded["data"]:
            raise ConfigError(f"{path} was trained on other data than the data given")
        splits = split_dataset(config, dataset)
    if model is not None:
        try:
            network = user.build_user_model(model, config.seed, seeds(config.seed)["init"])
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if user.model_fingerprint(network) != recorded["model"]:
            raise ConfigError(f"{path} was trained on another model than the one given")
    return splits, network


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
