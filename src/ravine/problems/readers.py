"""Readers for image data sets a user downloaded: MNIST, Fashion-MNIST and CIFAR-10.

ravine never downloads anything. Point a reader at the directory that holds the official files
and it returns the same :class:`~ravine.problems.data.Dataset` record as the built-in tasks:
images as float32 in [0, 1] shaped ``(n, channels, height, width)``, or ``(n, features)`` with
``flat=True``; int64 labels.

- :func:`read_mnist` and :func:`read_fashion_mnist`: the four IDX files
  ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
  ``t10k-labels-idx1-ubyte`` (each optionally ``.gz``) in ``root``; images ``(1, 28, 28)``.
- :func:`read_cifar10`: ``cifar-10-batches-py/data_batch_1`` .. ``data_batch_5`` and
  ``test_batch`` under ``root`` (``root`` may also be that folder itself); images
  ``(3, 32, 32)``.

MNIST-style files are also found in torchvision's layout (``root/MNIST/raw``,
``root/FashionMNIST/raw``). A missing file raises FileNotFoundError naming the file and the
directory searched; a malformed one (bad magic number, wrong image size, truncated or padded
data, labels out of range) raises ValueError naming the file and what is wrong.

Example, once the four MNIST files are in ``~/data/mnist``::

    from ravine.problems import load_dataset
    ds = load_dataset("mnist", root="~/data/mnist", flat=True)  # x_train (60000, 784)
"""

from __future__ import annotations

import codecs
import gzip
import math
import os
import pickle
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ravine.problems.data import Dataset

__all__ = ["READERS", "read_cifar10", "read_fashion_mnist", "read_idx", "read_mnist"]

_IDX_UBYTE = 0x08  # IDX type code of unsigned bytes, the only type the MNIST files use

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


# ----------------------------------------------------------------------------- IDX (MNIST)


def read_idx(path: str | os.PathLike[str], *, ndim: int) -> np.ndarray:
    """Read an unsigned-byte IDX file (gzipped if its name ends in ``.gz``) as a uint8 array.

    The format (LeCun et al. 1998): a big-endian magic number ``0x00 0x00 0x08 ndim``, then
    ``ndim`` big-endian uint32 sizes, then the bytes in row-major order. Raises ValueError
    naming the file when the magic number is not that of an ``ndim``-dimensional unsigned-byte
    file or the data is shorter or longer than the sizes say.
    """
    path = Path(path)
    data = _read_bytes(path)
    expected_magic = (_IDX_UBYTE << 8) | ndim
    if len(data) < 4:
        raise ValueError(f"{path}: truncated: {len(data)} bytes, shorter than the IDX magic number")
    magic = int.from_bytes(data[:4], "big")
    if magic != expected_magic:
        raise ValueError(
            f"{path}: bad magic number 0x{magic:08x}, expected 0x{expected_magic:08x} "
            f"(an IDX file of {ndim}-D unsigned bytes)"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated: {len(data)} bytes, shorter than its IDX header")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    need, have = math.prod(dims), len(data) - header
    if have != need:
        what = "truncated" if have < need else "has trailing data"
        raise ValueError(
            f"{path}: {what}: the header says {' x '.join(map(str, dims))} = {need} bytes of "
            f"data, the file holds {have}"
        )
    return np.frombuffer(data, dtype=np.uint8, count=need, offset=header).reshape(dims)


def _read_bytes(path: Path) -> bytes:
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        raise ValueError(f"{path}: not a readable gzip file ({e})") from None


def _find(name: str, dirs: tuple[Path, ...], expected: str) -> Path:
    for d in dirs:
        for candidate in (d / name, d / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    where = " or ".join(str(d) for d in dirs)
    raise FileNotFoundError(f"expected the {expected} {name}(.gz) in {where}")


def _check_flat(flat: object, name: str) -> None:
    # Checked before reading, so a typo does not cost a full read of the files first.
    if not isinstance(flat, bool):
        raise ValueError(f"{name}: flat must be True or False, got {flat!r}")


def _check_root(root: str | os.PathLike[str], title: str) -> Path:
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{title}: directory {path} does not exist")
    return path


def _read_idx_dataset(
    root: str | os.PathLike[str],
    *,
    name: str,
    title: str,
    torchvision_dir: str,
    flat: bool,
    class_names: tuple[str, ...] | None,
    description: str,
) -> Dataset:
    _check_flat(flat, name)
    base = _check_root(root, title)
    dirs = (base, base / torchvision_dir / "raw")
    expected = f"{title} IDX file"
    splits = []
    for prefix in ("train", "t10k"):
        images_path = _find(f"{prefix}-images-idx3-ubyte", dirs, expected)
        labels_path = _find(f"{prefix}-labels-idx1-ubyte", dirs, expected)
        images = read_idx(images_path, ndim=3)  # (n, 28, 28)
        if images.shape[1:] != (28, 28):
            raise ValueError(
                f"{images_path}: images are {images.shape[1]}x{images.shape[2]}, "
                f"expected 28x28 {title} images"
            )
        labels = read_idx(labels_path, ndim=1)  # (n,)
        if labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"{labels_path}: holds {labels.shape[0]} labels for the {images.shape[0]} images "
                f"in {images_path}"
            )
        if labels.size and labels.max() > 9:
            raise ValueError(f"{labels_path}: label {int(labels.max())} is outside 0..9")
        splits.append((_to_unit_float(images[:, None]), torch.from_numpy(labels.astype(np.int64))))
    (x_train, y_train), (x_test, y_test) = splits
    return _image_dataset(
        name,
        x_train,
        y_train,
        x_test,
        y_test,
        flat=flat,
        class_names=class_names,
        description=description,
    )


def read_mnist(root: str | os.PathLike[str], *, flat: bool = False) -> Dataset:
    """MNIST from its four IDX files in ``root``: 60000 train / 10000 test 28x28 grey digits.

    Images are float32 in [0, 1], shape ``(n, 1, 28, 28)``, or ``(n, 784)`` with ``flat=True``.

    Reference: Y. LeCun, L. Bottou, Y. Bengio and P. Haffner, "Gradient-based learning applied
    to document recognition", Proceedings of the IEEE 86(11), 1998.
    """
    return _read_idx_dataset(
        root,
        name="mnist",
        title="MNIST",
        torchvision_dir="MNIST",
        flat=flat,
        class_names=tuple(str(i) for i in range(10)),
        description="MNIST handwritten digits, 28x28 grey, 10 classes (LeCun et al. 1998)",
    )


def read_fashion_mnist(root: str | os.PathLike[str], *, flat: bool = False) -> Dataset:
    """Fashion-MNIST from its four IDX files in ``root``: 60000 / 10000 28x28 grey clothing images.

    Same file names and format as MNIST (a drop-in replacement that is harder to fit). Images
    are float32 in [0, 1], shape ``(n, 1, 28, 28)``, or ``(n, 784)`` with ``flat=True``.

    Reference: H. Xiao, K. Rasul and R. Vollgraf, "Fashion-MNIST: a Novel Image Dataset for
    Benchmarking Machine Learning Algorithms", arXiv:1708.07747, 2017 (format: LeCun et al.
    1998).
    """
    return _read_idx_dataset(
        root,
        name="fashion_mnist",
        title="Fashion-MNIST",
        torchvision_dir="FashionMNIST",
        flat=flat,
        class_names=FASHION_MNIST_CLASSES,
        description="Fashion-MNIST clothing, 28x28 grey, 10 classes (Xiao et al. 2017)",
    )


# ----------------------------------------------------------------------------- CIFAR-10

_CIFAR_PIXELS = 3 * 32 * 32  # one row of a batch: 1024 red, then 1024 green, then 1024 blue


def _safe_globals() -> dict[tuple[str, str], Any]:
    # The callables a pickled numpy array refers to, taken from numpy itself so the table holds
    # under numpy 1.x (numpy.core) and 2.x (numpy._core) alike.
    reconstruct = np.zeros(1).__reduce__()[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    scalar = np.uint8(0).__reduce__()[0]
    table: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # how Python 3 pickles bytes at protocol < 3
    }
    for core in ("numpy.core", "numpy._core"):
        table[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        table[(f"{core}.multiarray", "scalar")] = scalar
        table[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return table


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that builds only plain containers and numpy arrays.

    Unpickling can call any importable function, so a tampered file could run code. The CIFAR-10
    batches need nothing beyond numpy's array reconstruction, so every other global is refused.
    """

    _allowed = _safe_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: a CIFAR-10 batch holds only numpy arrays"
            ) from None


def _read_cifar_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    # pickle only ever reads files the user supplied, because the official CIFAR-10 python
    # batches are pickles; encoding="bytes" is what their Python 2 strings require, and the
    # restricted unpickler above refuses anything that is not an array.
    try:
        with path.open("rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as e:  # garbage can fail in many ways inside pickle; all mean "malformed"
        raise ValueError(
            f"{path}: not a readable CIFAR-10 python batch ({type(e).__name__}: {e})"
        ) from None
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: a CIFAR-10 batch is a dict, got {type(batch).__name__}")

    def get(key: str) -> Any:
        # Official files have bytes keys; accept str keys from a batch re-pickled by Python 3.
        for k in (key.encode(), key):
            if k in batch:
                return batch[k]
        raise ValueError(f"{path}: CIFAR-10 batch lacks the {key!r} entry")

    data, labels = get("data"), get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise ValueError(f"{path}: 'data' must be a 2-D uint8 array")
    if data.shape[1] != _CIFAR_PIXELS:
        raise ValueError(
            f"{path}: 'data' rows hold {data.shape[1]} values, expected 3x32x32 = {_CIFAR_PIXELS}"
        )
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: 'labels' must be a list of integers") from None
    if labels.shape != (data.shape[0],):
        raise ValueError(f"{path}: holds {labels.size} labels for {data.shape[0]} images")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{path}: labels must lie in 0..9, got {labels.min()}..{labels.max()}")
    return _to_unit_float(data.reshape(-1, 3, 32, 32)), torch.from_numpy(labels)


def read_cifar10(root: str | os.PathLike[str], *, flat: bool = False) -> Dataset:
    """CIFAR-10 from its python batches: 50000 train / 10000 test 32x32 colour images.

    ``root`` is the directory holding ``cifar-10-batches-py`` (as extracted from
    ``cifar-10-python.tar.gz``) or that folder itself. Images are float32 in [0, 1], shape
    ``(n, 3, 32, 32)`` (channels first, RGB), or ``(n, 3072)`` with ``flat=True``; the full
    training set takes about 600 MB as float32.

    Reference: A. Krizhevsky, "Learning Multiple Layers of Features from Tiny Images",
    Tech. Rep., University of Toronto, 2009.
    """
    _check_flat(flat, "cifar10")
    base = _check_root(root, "CIFAR-10")
    folder = base / "cifar-10-batches-py"
    folder = folder if folder.is_dir() else base

    def read(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"expected the CIFAR-10 python batch {name} in {folder}")
        return _read_cifar_batch(path)

    train = [read(f"data_batch_{i}") for i in range(1, 6)]
    x_test, y_test = read("test_batch")
    return _image_dataset(
        "cifar10",
        torch.cat([x for x, _ in train]),
        torch.cat([y for _, y in train]),
        x_test,
        y_test,
        flat=flat,
        class_names=CIFAR10_CLASSES,
        description="CIFAR-10 natural images, 32x32 colour, 10 classes (Krizhevsky 2009)",
    )


# ----------------------------------------------------------------------------- shared


def _to_unit_float(pixels: np.ndarray) -> torch.Tensor:
    # astype copies into a writable float32 array (the IDX bytes are a read-only buffer).
    return torch.from_numpy(pixels.astype(np.float32)).div_(255.0)


def _image_dataset(
    name: str,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    *,
    flat: bool,
    class_names: tuple[str, ...] | None,
    description: str,
) -> Dataset:
    image_shape = tuple(x_train.shape[1:])
    ds = Dataset(
        name=name,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        task="classification",
        num_classes=10,
        input_shape=image_shape,
        image_shape=image_shape,
        class_names=class_names,
        description=description,
    )
    return ds.flatten() if flat else ds


READERS: dict[str, Callable[..., Dataset]] = {
    "mnist": read_mnist,
    "fashion_mnist": read_fashion_mnist,
    "cifar10": read_cifar10,
}
