"""Learning tasks that need no download: small data sets to compare optimizers on real losses.

Every builder returns a :class:`Dataset`, a frozen record of float32 features and labels (or
regression targets) already split into train and test, deterministic given ``seed``:

>>> from ravine.problems import load_dataset, standardize
>>> ds = load_dataset("spirals", n_train=200, n_test=100, seed=0)
>>> tuple(ds.x_train.shape), tuple(ds.y_train.shape), ds.num_classes, ds.task
((200, 2), (200,), 2, 'classification')
>>> ds, scaler = standardize(ds)  # mean/std from the training split only
>>> digits = load_dataset("digits")
>>> tuple(digits.x_train.shape), tuple(digits.as_images().x_train.shape)
((1437, 64), (1437, 1, 8, 8))

========================  ==============  =========================================================
name                      task            what
========================  ==============  =========================================================
``digits``                classification  scikit-learn's 8x8 handwritten digits, stratified split
``mnist1d``               classification  MNIST-1D (Greydanus 2020), 4000/1000 signals of length 40
``spirals``               classification  two interleaved 2-D spirals with Gaussian noise
``moons``                 classification  scikit-learn's two interleaving half circles
``teacher_student``       regression      targets from a random teacher MLP on Gaussian inputs
``deep_linear``           regression      ``y = W x`` on whitened inputs (Saxe et al. 2014)
========================  ==============  =========================================================

:func:`load_dataset` also reads data sets a user downloaded (``mnist``, ``fashion_mnist``,
``cifar10``; see :mod:`ravine.problems.readers`) given ``root=``. scikit-learn and mnist1d are
imported on first use, so importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import inspect
import itertools
import math
import os
import random
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from ravine.problems.analytic import _as_float, _as_int

__all__ = [
    "DATASETS",
    "Dataset",
    "Standardizer",
    "deep_linear",
    "digits",
    "load_dataset",
    "mnist1d",
    "moons",
    "spirals",
    "standardize",
    "teacher_student",
]

Task = Literal["classification", "regression"]
_TASKS = ("classification", "regression")


# ----------------------------------------------------------------------------- the record


@dataclass(frozen=True, eq=False, kw_only=True)
class Dataset:
    """A learning task's data: train and test splits plus what a model builder needs to know.

    Features are float32 tensors of shape ``(n, *input_shape)``. Classification labels are
    int64 of shape ``(n,)`` in ``[0, num_classes)``; regression targets are float32 of shape
    ``(n, outputs)``. Construction checks that all of this is consistent, so a reader or builder
    that gets a shape wrong fails here, not inside a training loop. The tensors are views that
    :meth:`as_images` / :meth:`flatten` reshape without copying.
    """

    name: str  # registry name, e.g. "digits"
    x_train: Tensor  # (n_train, *input_shape) float32
    y_train: Tensor  # (n_train,) int64 labels, or (n_train, outputs) float32 targets
    x_test: Tensor  # (n_test, *input_shape) float32
    y_test: Tensor  # like y_train, with n_test rows
    task: Task  # "classification" or "regression"
    num_classes: int | None  # number of classes; None for regression
    input_shape: tuple[int, ...]  # shape of one example: x_train.shape[1:]
    description: str  # one line for tables
    image_shape: tuple[int, ...] | None = None  # (channels, height, width) when x is pixels
    class_names: tuple[str, ...] | None = None  # one per class, when the classes have names
    extras: Mapping[str, Tensor] = field(default_factory=dict)  # e.g. a teacher's weights

    def __post_init__(self) -> None:
        owner = self.name
        if self.task not in _TASKS:
            raise ValueError(f"{owner}: task must be one of {', '.join(_TASKS)}, got {self.task!r}")
        for split in ("x_train", "y_train", "x_test", "y_test"):
            if not isinstance(getattr(self, split), Tensor):
                raise ValueError(f"{owner}: {split} must be a torch.Tensor")
        input_shape = tuple(_as_int(d, "input_shape", owner) for d in self.input_shape)
        object.__setattr__(self, "input_shape", input_shape)
        for x, y, split in (
            (self.x_train, self.y_train, "train"),
            (self.x_test, self.y_test, "test"),
        ):
            if not x.is_floating_point():
                raise ValueError(f"{owner}: x_{split} must be floating point, got {x.dtype}")
            if tuple(x.shape[1:]) != input_shape:
                raise ValueError(
                    f"{owner}: x_{split} must have shape (n, {', '.join(map(str, input_shape))}), "
                    f"got {tuple(x.shape)}"
                )
            if y.ndim == 0 or y.shape[0] != x.shape[0]:
                raise ValueError(
                    f"{owner}: y_{split} must have one row per example ({x.shape[0]}), "
                    f"got shape {tuple(y.shape)}"
                )
        if self.task == "classification":
            self._check_labels()
        else:
            if self.num_classes is not None:
                raise ValueError(f"{owner}: num_classes must be None for regression")
            for split, y in (("y_train", self.y_train), ("y_test", self.y_test)):
                if y.ndim != 2 or not y.is_floating_point():
                    raise ValueError(
                        f"{owner}: regression {split} must be a floating (n, outputs) tensor, "
                        f"got {y.dtype} of shape {tuple(y.shape)}"
                    )
            if self.y_train.shape[1:] != self.y_test.shape[1:]:
                raise ValueError(
                    f"{owner}: y_train and y_test must have the same number of outputs"
                )
        if self.image_shape is not None:
            image_shape = tuple(_as_int(d, "image_shape", owner) for d in self.image_shape)
            if math.prod(image_shape) != math.prod(input_shape):
                raise ValueError(
                    f"{owner}: image_shape {image_shape} must hold as many values as input_shape "
                    f"{input_shape}"
                )
            object.__setattr__(self, "image_shape", image_shape)
        if self.class_names is not None:
            names = tuple(str(c) for c in self.class_names)
            if len(names) != self.num_classes:
                raise ValueError(
                    f"{owner}: class_names has {len(names)} names for {self.num_classes} classes"
                )
            object.__setattr__(self, "class_names", names)

    def _check_labels(self) -> None:
        owner, k = self.name, self.num_classes
        if isinstance(k, bool) or not isinstance(k, int) or k < 2:
            raise ValueError(f"{owner}: num_classes must be an integer >= 2, got {k!r}")
        for split, y in (("y_train", self.y_train), ("y_test", self.y_test)):
            if y.ndim != 1 or y.dtype != torch.int64:
                raise ValueError(
                    f"{owner}: {split} must be int64 labels of shape (n,), "
                    f"got {y.dtype} of shape {tuple(y.shape)}"
                )
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= k):
                raise ValueError(
                    f"{owner}: {split} labels must lie in [0, {k}), "
                    f"got [{int(y.min())}, {int(y.max())}]"
                )

    # -- derived sizes

    @property
    def n_train(self) -> int:
        return self.x_train.shape[0]

    @property
    def n_test(self) -> int:
        return self.x_test.shape[0]

    @property
    def num_features(self) -> int:
        """Number of input values per example: ``prod(input_shape)``."""
        return math.prod(self.input_shape)

    @property
    def output_dim(self) -> int:
        """Width of a model's output layer: ``num_classes``, or the number of regression targets."""
        return self.num_classes if self.num_classes is not None else self.y_train.shape[1]

    # -- views

    def as_images(self) -> Dataset:
        """The same data with ``x`` shaped ``(n, *image_shape)`` for CNNs (a view, no copy)."""
        if self.image_shape is None:
            raise ValueError(f"{self.name}: has no image view (image_shape is None)")
        return self._reshaped(self.image_shape)

    def flatten(self) -> Dataset:
        """The same data with ``x`` shaped ``(n, num_features)`` for MLPs (a view where possible)."""
        return self._reshaped((self.num_features,))

    def _reshaped(self, shape: tuple[int, ...]) -> Dataset:
        return replace(
            self,
            x_train=self.x_train.reshape(self.n_train, *shape),
            x_test=self.x_test.reshape(self.n_test, *shape),
            input_shape=shape,
        )

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> Dataset:
        """Move every tensor to ``device``; ``dtype`` casts the features (and regression targets,
        so a float64 study stays float64); class labels stay int64."""
        y_dtype = dtype if self.task == "regression" else None
        return replace(
            self,
            x_train=self.x_train.to(device=device, dtype=dtype),
            y_train=self.y_train.to(device=device, dtype=y_dtype),
            x_test=self.x_test.to(device=device, dtype=dtype),
            y_test=self.y_test.to(device=device, dtype=y_dtype),
            extras={k: v.to(device=device) for k, v in self.extras.items()},
        )

    def __repr__(self) -> str:
        # The default repr would print every tensor in full.
        target = f"num_classes={self.num_classes}" if self.num_classes else "regression"
        return (
            f"Dataset(name={self.name!r}, n_train={self.n_train}, n_test={self.n_test}, "
            f"input_shape={self.input_shape}, {target})"
        )


# ----------------------------------------------------------------------------- validation


def _check_seed(seed: object, owner: str) -> int:
    seed = _as_int(seed, "seed", owner)
    if not 0 <= seed < 2**32:  # the range numpy/scikit-learn accept for random_state
        raise ValueError(f"{owner}: seed must be in [0, 2**32), got {seed}")
    return seed


def _check_count(value: object, arg: str, owner: str, minimum: int = 1) -> int:
    value = _as_int(value, arg, owner)
    if value < minimum:
        raise ValueError(f"{owner}: {arg} must be >= {minimum}, got {value}")
    return value


def _check_nonnegative(value: object, arg: str, owner: str) -> float:
    value = _as_float(value, arg, owner)
    if value < 0:
        raise ValueError(f"{owner}: {arg} must be >= 0, got {value!r}")
    return value


def _tensor(array: np.ndarray, dtype: torch.dtype) -> Tensor:
    # A copy, so that a caller editing a Dataset in place cannot corrupt a cached array.
    return torch.from_numpy(np.array(array, copy=True)).to(dtype)


_DIGIT_NAMES = tuple(str(i) for i in range(10))


# ----------------------------------------------------------------------------- built-in tasks


def digits(*, seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """scikit-learn's handwritten digits: 1797 8x8 grey images of 0-9, ships with scikit-learn.

    Pixels are scaled from 0..16 to [0, 1] (float32), like the downloaded image sets in
    :mod:`ravine.problems.readers`. The split is stratified (every class keeps its share in both
    splits) and deterministic given ``seed``; the default 20% test split gives 1437/360.
    ``input_shape`` is ``(64,)``; :meth:`Dataset.as_images` gives ``(1, 8, 8)`` for CNNs. The
    corner pixels are zero in every image, so standardize with :class:`Standardizer`, which
    leaves such constant features centred rather than dividing by zero.

    Args:
      seed: random state of the train/test split.
      test_fraction: share of the samples held out for testing, in (0, 1).

    Reference: E. Alpaydin and C. Kaynak, "Optical Recognition of Handwritten Digits", UCI
    Machine Learning Repository, 1998 (the test set of which scikit-learn ships).
    """
    owner = "digits"
    seed = _check_seed(seed, owner)
    test_fraction = _as_float(test_fraction, "test_fraction", owner)
    if not 0 < test_fraction < 1:
        raise ValueError(f"{owner}: test_fraction must be in (0, 1), got {test_fraction!r}")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)  # (1797, 64) float64 in 0..16, (1797,) int
    try:
        x_train, x_test, y_train, y_test = train_test_split(
            x / 16.0, y, test_size=test_fraction, stratify=y, random_state=seed
        )
    except ValueError as e:  # too few samples on one side for a stratified split
        raise ValueError(f"{owner}: test_fraction={test_fraction!r} is unusable: {e}") from None
    return Dataset(
        name=owner,
        x_train=_tensor(x_train, torch.float32),
        y_train=_tensor(y_train, torch.int64),
        x_test=_tensor(x_test, torch.float32),
        y_test=_tensor(y_test, torch.int64),
        task="classification",
        num_classes=10,
        input_shape=(64,),
        image_shape=(1, 8, 8),
        class_names=_DIGIT_NAMES,
        description="handwritten digits, 8x8 grey, 10 classes (scikit-learn)",
    )


def mnist1d(*, seed: int = 42, cache_dir: str | os.PathLike[str] | None = None) -> Dataset:
    """MNIST-1D: 1-D signals of length 40 made from ten digit templates, 4000 train / 1000 test.

    Generated locally by the ``mnist1d`` package's reference code with its default arguments
    (``get_dataset_args()``: 5000 samples, 80/20 split, 40 features; the dataset is centred
    and scaled to unit standard deviation as a whole), never downloaded. Small enough for a CPU,
    yet it separates MLPs from CNNs and good optimizers from bad ones far more clearly than
    MNIST does. Features are float32 of shape ``(40,)``; :meth:`Dataset.as_images` gives
    ``(1, 40)`` for 1-D convolutions.

    Generating takes about two seconds, so the arrays are kept in memory per ``seed`` and,
    when ``cache_dir`` is given, in ``cache_dir/mnist1d-<package version>-seed<seed>.npz``
    (written atomically; an unreadable cache file is regenerated).

    Args:
      seed: the generator's seed; the package default 42 gives the published data set.
      cache_dir: directory for the on-disk cache (created if missing; ``~`` expands); None keeps
        it in memory. In a ``ravine train`` config it must lie inside the run's output folder
        or the cache folder (``$RAVINE_CACHE``, default ``~/.cache/ravine``).

    Reference: S. Greydanus and D. Kobak, "Scaling Down Deep Learning with MNIST-1D",
    ICML 2024 (arXiv:2011.14439, 2020).
    """
    owner = "mnist1d"
    seed = _check_seed(seed, owner)
    if cache_dir is None:
        arrays = _generate_mnist1d(seed)
    else:
        arrays = _cached_mnist1d(seed, Path(cache_dir).expanduser())
    x_train, y_train, x_test, y_test = arrays
    return Dataset(
        name=owner,
        x_train=_tensor(x_train, torch.float32),
        y_train=_tensor(y_train, torch.int64),
        x_test=_tensor(x_test, torch.float32),
        y_test=_tensor(y_test, torch.int64),
        task="classification",
        num_classes=10,
        input_shape=(x_train.shape[1],),
        image_shape=(1, x_train.shape[1]),
        class_names=_DIGIT_NAMES,
        description="MNIST-1D, 1-D signals of length 40, 10 classes (Greydanus 2020)",
    )


@contextlib.contextmanager
def _global_rng_restored() -> Iterator[None]:
    # mnist1d seeds the global `random` and `numpy.random` generators; put them back so that
    # loading a data set never changes the random numbers the caller's own code draws.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


@functools.lru_cache(maxsize=4)
def _generate_mnist1d(seed: int) -> tuple[np.ndarray, ...]:
    # make_dataset is the generator; mnist1d's get_dataset would try to download first.
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = seed
    with _global_rng_restored():
        data = make_dataset(args)
    arrays = (data["x"], data["y"], data["x_test"], data["y_test"])
    for a in arrays:
        a.setflags(write=False)  # shared by every caller through the cache
    return arrays


_MNIST1D_KEYS = ("x", "y", "x_test", "y_test")


def _cached_mnist1d(seed: int, cache_dir: Path) -> tuple[np.ndarray, ...]:
    path = cache_dir / f"mnist1d-{importlib.metadata.version('mnist1d')}-seed{seed}.npz"
    arrays = _read_mnist1d_cache(path)
    if arrays is None:
        arrays = _generate_mnist1d(seed)
        from ravine.folders import atomic_write  # (atomic and checksummed, like every file)

        named = dict(zip(_MNIST1D_KEYS, arrays, strict=True))
        atomic_write(path, lambda handle: np.savez(handle, **named))
    return arrays


def _read_mnist1d_cache(path: Path) -> tuple[np.ndarray, ...] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            x, y, x_test, y_test = (npz[k] for k in _MNIST1D_KEYS)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None  # a damaged cache is only a cache: regenerate it
    consistent = (
        x.ndim == 2 == x_test.ndim
        and y.ndim == 1 == y_test.ndim
        and x.shape[0] == y.shape[0]
        and x_test.shape[0] == y_test.shape[0]
        and x.shape[1] == x_test.shape[1]
    )
    return (x, y, x_test, y_test) if consistent else None


def spirals(
    *,
    n_train: int = 1000,
    n_test: int = 1000,
    noise: float = 0.05,
    turns: float = 1.5,
    seed: int = 0,
) -> Dataset:
    """Two interleaved 2-D spirals, one per class: a small task no linear model can solve.

    Class ``k`` lies on the arm ``r (cos(2 pi turns r + pi k), sin(2 pi turns r + pi k))`` with
    ``r`` in [0, 1] drawn so points are spread evenly along the arm, plus isotropic Gaussian
    noise of standard deviation ``noise``. Labels alternate, so each split is balanced (to one
    point when its size is odd); examples come in random order. Deterministic given ``seed``.

    Args:
      n_train, n_test: number of points in each split.
      noise: standard deviation of the Gaussian noise added to each coordinate.
      turns: how many times each arm winds around the origin (the task gets harder with more).
      seed: random state.

    Reference: K. J. Lang and M. J. Witbrock, "Learning to tell two spirals apart",
    Proceedings of the 1988 Connectionist Models Summer School.
    """
    owner = "spirals"
    n_train = _check_count(n_train, "n_train", owner)
    n_test = _check_count(n_test, "n_test", owner)
    noise = _check_nonnegative(noise, "noise", owner)
    turns = _as_float(turns, "turns", owner)
    if turns <= 0:
        raise ValueError(f"{owner}: turns must be > 0, got {turns!r}")
    gen = torch.Generator().manual_seed(_check_seed(seed, owner))

    def split(n: int) -> tuple[Tensor, Tensor]:
        y = torch.arange(n) % 2  # alternating labels: balanced by construction
        # Arc length along the arm grows like r^2, so r = sqrt(u) spreads points evenly on it.
        r = torch.rand(n, generator=gen, dtype=torch.float64).sqrt()
        angle = 2 * math.pi * turns * r + math.pi * y
        x = r[:, None] * torch.stack([angle.cos(), angle.sin()], dim=1)  # (n, 2)
        x = x + noise * torch.randn(n, 2, generator=gen, dtype=torch.float64)
        order = torch.randperm(n, generator=gen)
        return x[order].float(), y[order]

    x_train, y_train = split(n_train)
    x_test, y_test = split(n_test)
    return Dataset(
        name=owner,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        task="classification",
        num_classes=2,
        input_shape=(2,),
        description=f"two interleaved spirals, {turns:g} turns, noise {noise:g}",
    )


def moons(*, n_train: int = 1000, n_test: int = 1000, noise: float = 0.1, seed: int = 0) -> Dataset:
    """Two interleaving half circles in 2-D (scikit-learn's ``make_moons``), one per class.

    Each split is drawn separately from one random state seeded by ``seed`` (so train and test
    are independent and deterministic), balanced to one point, shuffled.

    Args:
      n_train, n_test: number of points in each split (each >= 2, one per moon).
      noise: standard deviation of the Gaussian noise added to each coordinate.
      seed: random state.

    Reference: F. Pedregosa et al., "Scikit-learn: Machine Learning in Python", JMLR 12, 2011.
    """
    owner = "moons"
    n_train = _check_count(n_train, "n_train", owner, minimum=2)
    n_test = _check_count(n_test, "n_test", owner, minimum=2)
    noise = _check_nonnegative(noise, "noise", owner)
    rng = np.random.RandomState(_check_seed(seed, owner))
    from sklearn.datasets import make_moons

    x_train, y_train = make_moons(n_train, noise=noise, random_state=rng)
    x_test, y_test = make_moons(n_test, noise=noise, random_state=rng)
    return Dataset(
        name=owner,
        x_train=_tensor(x_train, torch.float32),
        y_train=_tensor(y_train, torch.int64),
        x_test=_tensor(x_test, torch.float32),
        y_test=_tensor(y_test, torch.int64),
        task="classification",
        num_classes=2,
        input_shape=(2,),
        description=f"two moons, noise {noise:g} (scikit-learn)",
    )


_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"tanh": torch.tanh, "relu": torch.relu}


def teacher_student(
    *,
    n_train: int = 1000,
    n_test: int = 1000,
    input_dim: int = 10,
    width: int = 32,
    depth: int = 2,
    output_dim: int = 1,
    activation: str = "tanh",
    noise: float = 0.1,
    seed: int = 0,
) -> Dataset:
    """Regression on the outputs of a random "teacher" MLP: the realizable setting.

    Inputs are standard Gaussian, ``x ~ N(0, I_input_dim)``. The teacher is a bias-free MLP with
    ``depth`` hidden layers of ``width`` units and ``activation``, weights drawn
    ``N(0, 1 / fan_in)`` so every layer's pre-activations have unit scale. Targets are
    ``y = teacher(x) + noise * N(0, I)``, shape ``(n, output_dim)``. A student with the
    teacher's architecture can reach zero training error when ``noise = 0``, and the noise
    variance ``noise**2`` is the best possible test mean squared error per output, so a run's
    gap to it is the optimizer's. The teacher's weights are in
    ``extras["teacher.<layer>.weight"]`` (layer 0 is the first), float32, shaped like
    ``nn.Linear`` weights ``(out, in)``.

    Args:
      n_train, n_test: number of examples in each split.
      input_dim: dimension of the Gaussian inputs.
      width: hidden units per teacher layer.
      depth: number of hidden layers (>= 1).
      output_dim: number of targets.
      activation: "tanh" or "relu".
      noise: standard deviation of the Gaussian label noise.
      seed: random state of the teacher, the inputs and the noise.

    Reference: E. Gardner and B. Derrida, "Three unfinished works on the optimal storage
    capacity of networks", J. Phys. A 22(12), 1989; S. Goldt et al., "Dynamics of stochastic
    gradient descent for two-layer neural networks in the teacher-student setup", NeurIPS 2019.
    """
    owner = "teacher_student"
    n_train = _check_count(n_train, "n_train", owner)
    n_test = _check_count(n_test, "n_test", owner)
    input_dim = _check_count(input_dim, "input_dim", owner)
    width = _check_count(width, "width", owner)
    depth = _check_count(depth, "depth", owner)
    output_dim = _check_count(output_dim, "output_dim", owner)
    act = _ACTIVATIONS.get(activation) if isinstance(activation, str) else None
    if act is None:
        raise ValueError(
            f"{owner}: activation must be one of {', '.join(_ACTIVATIONS)}, got {activation!r}"
        )
    noise = _check_nonnegative(noise, "noise", owner)
    # Everything is drawn in float64 from one CPU generator: same seed, same numbers anywhere.
    gen = torch.Generator().manual_seed(_check_seed(seed, owner))
    sizes = [input_dim] + [width] * depth + [output_dim]
    weights = [
        torch.randn(fan_out, fan_in, generator=gen, dtype=torch.float64) / math.sqrt(fan_in)
        for fan_in, fan_out in itertools.pairwise(sizes)
    ]

    def teacher(x: Tensor) -> Tensor:
        for w in weights[:-1]:
            x = act(x @ w.T)
        return x @ weights[-1].T

    def split(n: int) -> tuple[Tensor, Tensor]:
        x = torch.randn(n, input_dim, generator=gen, dtype=torch.float64)
        y = teacher(x) + noise * torch.randn(n, output_dim, generator=gen, dtype=torch.float64)
        return x.float(), y.float()

    x_train, y_train = split(n_train)
    x_test, y_test = split(n_test)
    return Dataset(
        name=owner,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        task="regression",
        num_classes=None,
        input_shape=(input_dim,),
        description=(
            f"teacher-student regression, {activation} teacher {depth}x{width}, noise {noise:g}"
        ),
        extras={f"teacher.{i}.weight": w.float() for i, w in enumerate(weights)},
    )


def _haar_orthonormal(rows: int, cols: int, gen: torch.Generator) -> Tensor:
    # QR of a Gaussian matrix, with the signs of R's diagonal folded into Q, is uniformly
    # (Haar) distributed; without the sign fix it is biased.
    q, r = torch.linalg.qr(torch.randn(rows, cols, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def deep_linear(
    *,
    n_train: int = 1000,
    n_test: int = 1000,
    input_dim: int = 8,
    output_dim: int = 8,
    singular_values: Sequence[float] | None = None,
    noise: float = 0.0,
    seed: int = 0,
) -> Dataset:
    """Regression with a linear teacher on whitened inputs: the deep linear network testbed.

    Targets are ``y = W x + noise * N(0, I)`` with ``W = U diag(s) V^T`` (``U``, ``V`` random
    orthonormal, ``s = singular_values``, by default evenly spaced from 3 down to 0.5). The
    training inputs are whitened exactly — centred, with ``X^T X / n_train = I`` — so the
    input-output correlation the network sees is ``W^T`` itself; test inputs are fresh
    ``N(0, I)`` draws. ``extras`` holds ``"teacher"`` (``W``, ``(output_dim, input_dim)``) and
    ``"singular_values"`` (``s``), float32.

    Why it is here: a deep linear network ``f(x) = W_L ... W_1 x`` can only represent linear
    maps, yet its loss is non-convex. With the loss ``1/2 mean_n ||y - f(x)||^2``, all-zero
    weights are a critical point — each layer's gradient is a product of the *other* layers'
    weights, so every gradient vanishes and gradient descent started exactly there never moves.
    For ``L = 2`` it is a strict saddle: the Hessian there has eigenvalues ``+-s_i`` (each
    repeated once per hidden unit) and zeros; for ``L >= 3`` the Hessian at zero vanishes too,
    a degenerate saddle. A small random initialization starts near it, and training shows long
    plateaus followed by sudden drops, each mode of ``W`` learned in turn, largest singular value
    first, in a time that grows as ``s_i`` shrinks and as depth and init scale make the saddle
    flatter. Orthogonal or larger-scale initializations shorten the plateaus: the standard
    demonstration that initialization, not only the optimizer, decides training speed.

    Args:
      n_train: number of training examples (>= input_dim, so the inputs can be whitened).
      n_test: number of test examples.
      input_dim, output_dim: sizes of ``x`` and ``y``.
      singular_values: the teacher's singular values, at most ``min(input_dim, output_dim)``
        non-negative numbers (missing ones are 0: a lower-rank teacher).
      noise: standard deviation of the Gaussian target noise.
      seed: random state of the teacher, the inputs and the noise.

    Reference: A. M. Saxe, J. L. McClelland and S. Ganguli, "Exact solutions to the nonlinear
    dynamics of learning in deep linear neural networks", ICLR 2014 (arXiv:1312.6120).
    """
    owner = "deep_linear"
    input_dim = _check_count(input_dim, "input_dim", owner)
    output_dim = _check_count(output_dim, "output_dim", owner)
    n_train = _check_count(n_train, "n_train", owner, minimum=input_dim + 1)
    n_test = _check_count(n_test, "n_test", owner)
    noise = _check_nonnegative(noise, "noise", owner)
    rank = min(input_dim, output_dim)
    if singular_values is None:
        s = torch.linspace(3.0, 0.5, rank, dtype=torch.float64)
    else:
        if isinstance(singular_values, (str, bytes)) or not isinstance(singular_values, Sequence):
            raise ValueError(
                f"{owner}: singular_values must be a sequence of numbers, got {singular_values!r}"
            )
        values = [_check_nonnegative(v, "singular_values", owner) for v in singular_values]
        if len(values) > rank:
            raise ValueError(
                f"{owner}: singular_values has {len(values)} values, at most "
                f"min(input_dim, output_dim) = {rank} allowed"
            )
        s = torch.tensor(values + [0.0] * (rank - len(values)), dtype=torch.float64)
    gen = torch.Generator().manual_seed(_check_seed(seed, owner))
    u = _haar_orthonormal(output_dim, rank, gen)  # (output_dim, rank)
    v = _haar_orthonormal(input_dim, rank, gen)  # (input_dim, rank)
    w = u @ torch.diag(s) @ v.T  # (output_dim, input_dim)

    x = torch.randn(n_train, input_dim, generator=gen, dtype=torch.float64)
    x = x - x.mean(0)
    evals, evecs = torch.linalg.eigh(x.T @ x / n_train)
    x_train = x @ (evecs * evals.rsqrt()) @ evecs.T  # symmetric (ZCA) whitening
    x_test = torch.randn(n_test, input_dim, generator=gen, dtype=torch.float64)
    y_train = x_train @ w.T + noise * torch.randn(
        n_train, output_dim, generator=gen, dtype=torch.float64
    )
    y_test = x_test @ w.T + noise * torch.randn(
        n_test, output_dim, generator=gen, dtype=torch.float64
    )
    return Dataset(
        name=owner,
        x_train=x_train.float(),
        y_train=y_train.float(),
        x_test=x_test.float(),
        y_test=y_test.float(),
        task="regression",
        num_classes=None,
        input_shape=(input_dim,),
        description=f"deep linear regression y = Wx, {input_dim}->{output_dim}, whitened x",
        extras={"teacher": w.float(), "singular_values": s.float()},
    )


# ----------------------------------------------------------------------------- standardization


class Standardizer:
    """Per-feature standardization ``(x - mean) / std`` with statistics from the training split.

    Fit on the training split only and apply the same transform to validation and test data:
    statistics computed on the test split would leak it into training and flatter the test
    score. Mean and (population) standard deviation are computed per feature — every position
    of ``x.shape[1:]`` — in float64. A feature whose training standard deviation is below
    ``min_std`` (the always-zero corner pixels of the digits, say) is only centred, with scale
    1, as scikit-learn's ``StandardScaler`` does: dividing by a tiny floor instead would turn
    a pixel that is constant in training but not in a test image into a value near ``1/min_std``.

    ``state_dict()`` / ``load_state_dict()`` carry the fitted statistics, so a checkpoint can
    restore the exact preprocessing.

    >>> import torch
    >>> s = Standardizer().fit(torch.tensor([[0.0, 5.0], [2.0, 5.0]]))
    >>> s.transform(torch.tensor([[1.0, 6.0]]))
    tensor([[0., 1.]])
    """

    def __init__(self, min_std: float = 1e-6) -> None:
        min_std = _as_float(min_std, "min_std", "Standardizer")
        if min_std <= 0:
            raise ValueError(f"Standardizer: min_std must be > 0, got {min_std!r}")
        self.min_std = min_std
        self.mean: Tensor | None = None  # (*features) float64, once fitted
        self.scale: Tensor | None = None  # (*features) float64: std, or 1 where std < min_std

    @property
    def fitted(self) -> bool:
        return self.mean is not None

    def fit(self, x: Tensor) -> Standardizer:
        """Compute the statistics of ``x`` ``(n, *features)`` over its first axis; returns self."""
        if not isinstance(x, Tensor) or x.ndim < 2 or x.shape[0] < 1:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"Standardizer: x must be an (n, *features) tensor, got {shape}")
        x64 = x.detach().to(device="cpu", dtype=torch.float64)
        std = x64.std(dim=0, correction=0)
        self.mean = x64.mean(dim=0)
        self.scale = torch.where(std < self.min_std, torch.ones_like(std), std)
        return self

    def transform(self, x: Tensor) -> Tensor:
        """``(x - mean) / scale`` in ``x``'s dtype and device; ``x`` is ``(n, *features)``."""
        mean, scale = self._stats_like(x)
        return (x - mean) / scale

    def inverse_transform(self, x: Tensor) -> Tensor:
        """Undo :meth:`transform`: ``x * scale + mean``."""
        mean, scale = self._stats_like(x)
        return x * scale + mean

    def fit_transform(self, x: Tensor) -> Tensor:
        return self.fit(x).transform(x)

    def _stats_like(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.mean is None or self.scale is None:
            raise RuntimeError("Standardizer: call fit(x_train) before transforming data")
        if not isinstance(x, Tensor) or tuple(x.shape[1:]) != tuple(self.mean.shape):
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"Standardizer: x must have shape (n, {', '.join(map(str, self.mean.shape))}) "
                f"like the data it was fitted on, got {shape}"
            )
        dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
        return self.mean.to(x.device, dtype), self.scale.to(x.device, dtype)

    def state_dict(self) -> dict[str, Any]:
        """The fitted statistics: tensors and a float, loadable with ``torch.load(weights_only=True)``."""
        return {"min_std": self.min_std, "mean": self.mean, "scale": self.scale}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        missing = {"min_std", "mean", "scale"} - set(state_dict)
        if missing:
            raise ValueError(f"Standardizer: state_dict lacks {', '.join(sorted(missing))}")
        mean, scale = state_dict["mean"], state_dict["scale"]
        if (mean is None) != (scale is None):
            raise ValueError("Standardizer: state_dict must hold both mean and scale, or neither")
        if mean is not None and (
            not isinstance(mean, Tensor)
            or not isinstance(scale, Tensor)
            or mean.shape != scale.shape
        ):
            raise ValueError("Standardizer: state_dict mean and scale must be tensors of one shape")
        min_std = _as_float(state_dict["min_std"], "min_std", "Standardizer")
        if min_std <= 0:
            raise ValueError(f"Standardizer: min_std must be > 0, got {min_std!r}")
        self.min_std = min_std
        self.mean = None if mean is None else mean.detach().to("cpu", torch.float64).clone()
        self.scale = None if scale is None else scale.detach().to("cpu", torch.float64).clone()

    def __repr__(self) -> str:
        fitted = f"features={tuple(self.mean.shape)}" if self.mean is not None else "unfitted"
        return f"Standardizer(min_std={self.min_std:g}, {fitted})"


def standardize(dataset: Dataset, *, min_std: float = 1e-6) -> tuple[Dataset, Standardizer]:
    """Standardize ``dataset``'s features with statistics of its training split only.

    Returns the transformed data set and the fitted :class:`Standardizer` (keep it, or its
    ``state_dict()``, to apply the same transform to new inputs). Targets are left unchanged.
    """
    if not isinstance(dataset, Dataset):
        raise ValueError(f"standardize: dataset must be a Dataset, got {type(dataset).__name__}")
    scaler = Standardizer(min_std).fit(dataset.x_train)
    out = replace(
        dataset,
        x_train=scaler.transform(dataset.x_train),
        x_test=scaler.transform(dataset.x_test),
    )
    return out, scaler


# ----------------------------------------------------------------------------- registry

DATASETS: dict[str, Callable[..., Dataset]] = {
    "digits": digits,
    "mnist1d": mnist1d,
    "spirals": spirals,
    "moons": moons,
    "teacher_student": teacher_student,
    "deep_linear": deep_linear,
}


def load_dataset(name: str, **kwargs: Any) -> Dataset:
    """Build a data set by name, e.g. ``load_dataset("spirals", noise=0.2, seed=1)``.

    Built-in tasks are those in :data:`DATASETS`; ``mnist``, ``fashion_mnist`` and ``cifar10``
    read files the user downloaded, from ``root=`` (see :mod:`ravine.problems.readers`);
    ``file`` reads your own data from ``path=`` (see :mod:`ravine.problems.files`).
    Names are case-insensitive and ``-`` reads as ``_``. Raises ValueError listing the valid
    names for an unknown name, the accepted arguments for an unknown argument, and naming the
    argument for a bad value. Deterministic given ``seed``.
    """
    from ravine.problems.files import read_file  # these readers import this module
    from ravine.problems.readers import READERS

    key = name.strip().lower().replace("-", "_") if isinstance(name, str) else name
    factory = DATASETS.get(key) or READERS.get(key) or {"file": read_file}.get(key)  # type: ignore[arg-type]
    if factory is None:
        raise ValueError(
            f"unknown dataset {name!r}; valid names: {', '.join(sorted(DATASETS))} "
            f"(built in), {', '.join(sorted(READERS))} (read from root=), file (your own "
            "file, read from path=)"
        )
    params = inspect.signature(factory).parameters
    accepted = sorted(params)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(
            f"{key}: unknown argument(s) {', '.join(unknown)}; accepted: {', '.join(accepted)}"
        )
    missing = [p for p, spec in params.items() if spec.default is spec.empty and p not in kwargs]
    if missing:
        raise ValueError(f"{key}: missing argument(s) {', '.join(missing)}")
    return factory(**kwargs)
