"""A user's own model and data, given from Python: ``train(config, out, model=..., data=...)``.

* ``model``: a factory, ``factory(seed) -> nn.Module`` or ``factory() -> nn.Module``. It is
  called once per member, inside a forked global RNG seeded with the member's initialization
  seed (``seeds(seed)["init"]``), so a factory that relies on torch's default initialization
  is reproducible too; ``factory(seed)`` gets the member's seed (``config.seed + k``).
* ``data``: ``(x_train, y_train, x_test, y_test)`` tensors, or a pair ``(train, test)`` whose
  parts are each an ``(x, y)`` pair of tensors, a map-style torch ``Dataset`` of ``(x, y)``
  examples, or a ``DataLoader``. Datasets and loaders are read once, in order, into memory:
  ravine draws its own mini-batches (``batch_size``, the member's seed), which is what makes a
  run reproducible and resumable; a loader's own batching and shuffling are not used.

The run's config.toml records both by fingerprint (``[user] model = "sha256:..."``, a hash of
the architecture's repr and parameter shapes; ``data = "sha256:..."``, of the tensors' bytes),
so resuming a folder with another model or other data is refused, as another config would be.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ravine.problems import Dataset
from ravine.train.config import ConfigError

__all__ = [
    "USER",
    "build_user_model",
    "check_stackable",
    "data_fingerprint",
    "model_fingerprint",
    "user_dataset",
]

USER = "user"  # the data set and model name a run records for what came from Python


def build_user_model(factory: Callable[..., nn.Module], seed: int, init_seed: int) -> nn.Module:
    """``factory``'s network for the member with ``seed``, its global-RNG draws seeded by
    ``init_seed``; ``ValueError`` naming ``model`` when it does not return an ``nn.Module``."""
    if not callable(factory):
        raise ValueError(f"model must be a callable returning an nn.Module, got {factory!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        network = factory(seed) if _takes_an_argument(factory) else factory()
    if not isinstance(network, nn.Module):
        raise ValueError(
            f"model: the factory must return an nn.Module, got {type(network).__name__}"
        )
    if not any(True for _ in network.parameters()):
        raise ValueError("model: the factory's network has no parameters to train")
    return network


def _takes_an_argument(factory: Callable) -> bool:
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # a builtin or C callable: assume the documented (seed)
        return True
    positional = [
        p
        for p in parameters
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]
    return bool(positional)


def model_fingerprint(network: nn.Module) -> str:
    """``sha256:...`` of the architecture: its repr and every parameter and buffer's name,
    shape and dtype (not the weights: each member's differ)."""
    digest = hashlib.sha256(repr(network).encode())
    for name, tensor in [*network.named_parameters(), *network.named_buffers()]:
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
    return f"sha256:{digest.hexdigest()[:32]}"


def data_fingerprint(dataset: Dataset) -> str:
    """``sha256:...`` of the four tensors' dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for tensor in (dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return f"sha256:{digest.hexdigest()[:32]}"


def user_dataset(data: Any) -> Dataset:
    """``data`` (see the module doc) as a ravine :class:`~ravine.problems.Dataset`: the task
    from the targets (int64 labels: classification, floats: regression)."""
    if isinstance(data, Dataset):
        return data
    parts = _splits(data)
    (x_train, y_train), (x_test, y_test) = (
        _tensors(p, name) for p, name in zip(parts, ("train", "test"), strict=True)
    )
    if tuple(x_train.shape[1:]) != tuple(x_test.shape[1:]):
        raise ValueError(
            f"data: train and test examples differ in shape: {tuple(x_train.shape[1:])} and "
            f"{tuple(x_test.shape[1:])}"
        )
    x_train, x_test = (x if x.is_floating_point() else x.float() for x in (x_train, x_test))
    if y_train.is_floating_point() or y_test.is_floating_point():
        y_train, y_test = (y.float().reshape(len(y), -1) for y in (y_train, y_test))
        task, classes = "regression", None
    else:
        y_train, y_test = y_train.long(), y_test.long()
        if y_train.ndim != 1 or y_test.ndim != 1:
            raise ValueError(
                f"data: integer labels must be one per example, shape (n,); got "
                f"{tuple(y_train.shape)} and {tuple(y_test.shape)}"
            )
        low = min(int(y_train.min()), int(y_test.min())) if len(y_test) else int(y_train.min())
        if low < 0:
            raise ValueError(f"data: class labels must be >= 0, got {low}")
        classes = max(2, int(y_train.max()) + 1, int(y_test.max()) + 1 if len(y_test) else 0)
        task = "classification"
    try:
        return Dataset(
            name=USER,
            x_train=x_train,
            y_train=y_train,
            x_test=x_test,
            y_test=y_test,
            task=task,
            num_classes=classes,
            input_shape=tuple(x_train.shape[1:]),
            description=f"user data: {len(x_train):,} training and {len(x_test):,} test examples",
        )
    except ValueError as error:
        raise ValueError(f"data: {error}") from None


def _splits(data: Any) -> tuple[Any, Any]:
    if (
        isinstance(data, tuple | list)
        and len(data) == 4
        and all(isinstance(t, Tensor) for t in data)
    ):
        return (data[0], data[1]), (data[2], data[3])
    if isinstance(data, tuple | list) and len(data) == 2:
        return data[0], data[1]
    raise ValueError(
        "data must be (x_train, y_train, x_test, y_test) tensors or a pair (train, test) of "
        f"(x, y) tensors, torch Datasets or DataLoaders; got {type(data).__name__}"
        + (f" of {len(data)}" if isinstance(data, tuple | list) else "")
    )


def _tensors(part: Any, name: str) -> tuple[Tensor, Tensor]:
    from torch.utils.data import DataLoader

    if (
        isinstance(part, tuple | list)
        and len(part) == 2
        and all(isinstance(t, Tensor) for t in part)
    ):
        x, y = part
    elif isinstance(part, DataLoader):
        batches = [_example(b, name) for b in part]
        if not batches:
            raise ValueError(f"data: the {name} DataLoader yields no batches")
        x = torch.cat([b[0] for b in batches])
        y = torch.cat([b[1] for b in batches])
    elif isinstance(part, torch.utils.data.Dataset) and hasattr(part, "__len__"):
        examples = [_example(part[i], name) for i in range(len(part))]
        if not examples:
            raise ValueError(f"data: the {name} Dataset is empty")
        x = torch.stack([e[0] for e in examples])
        y = torch.stack([e[1] for e in examples])
    else:
        raise ValueError(
            f"data: the {name} split must be (x, y) tensors, a map-style torch Dataset or a "
            f"DataLoader; got {type(part).__name__}"
        )
    if len(x) != len(y):
        raise ValueError(f"data: {name} has {len(x)} inputs but {len(y)} targets")
    if len(x) == 0 and name == "train":
        raise ValueError("data: the train split has no examples")
    return x.detach(), y.detach()


def _example(item: Any, name: str) -> tuple[Tensor, Tensor]:
    if not (isinstance(item, tuple | list) and len(item) == 2):
        raise ValueError(
            f"data: the {name} split must yield (x, y) pairs, got {type(item).__name__}"
        )
    return tuple(torch.as_tensor(v) for v in item)  # type: ignore[return-value]


# ---------------------------------------------------------------------------- stacking


def check_stackable(network: nn.Module, x: Tensor, n: int, forward_of) -> None:
    """``ConfigError`` unless ``n`` copies of ``network`` train as one batched computation:
    one batched forward (training mode) and backward on ``x`` ``(batch, ...)``, tried before
    the run starts, so a model vmap cannot batch fails with why, not in its first update.
    ``forward_of(model) -> (forward, method)`` is :func:`ravine.train.stacked.stacked_forward`."""
    from ravine.problems.models import stack_models

    cumulative = [
        name
        for name, m in network.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.momentum is None
    ]
    if cumulative:
        raise ConfigError(
            f"model: {n} members of this model cannot train as one batched computation "
            f"(BatchNorm {cumulative[0]!r} has momentum=None: its cumulative average reads "
            f"its batch count on the host). {_ADVICE}"
        )
    copies = [copy.deepcopy(network) for _ in range(2)]
    try:
        params, buffers = stack_models(copies)
        params = {k: v.requires_grad_() for k, v in params.items()}
        forward, _ = forward_of(copies[0])
        # Each member its own batch, as restarts see them: the inputs are batched too.
        xs = x.unsqueeze(0).expand(2, *x.shape)
        output, _ = forward(params, buffers, xs, training=True, shared=False)
        output.float().sum().backward()
    except Exception as error:  # vmap, functional_call and the model itself fail in many ways
        raise ConfigError(
            f"model: {n} members of this model cannot train as one batched computation "
            f"(torch.func.vmap over functional_call failed: {_reason(error)}). {_ADVICE}"
        ) from None
    finally:
        network.train()


_ADVICE = (
    "Make the forward vmap-friendly (no .item() or Python `if` on tensor values, BatchNorm "
    "with a momentum rather than momentum=None, no in-place writes to parameters or to "
    "buffers other than BatchNorm's running statistics), or train the members one at a "
    "time: restarts = 1, one train() per seed."
)


def _reason(error: BaseException) -> str:
    text = " ".join(str(error).split())
    if "data-dependent control flow" in text:
        return "the forward branches on a tensor's value (data-dependent control flow)"
    if ".item()" in text:
        return "the forward calls .item() on a tensor"
    return (text[:240] + ("..." if len(text) > 240 else "")) or type(error).__name__
