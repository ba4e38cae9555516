"""Your own data: NumPy files, CSV / Parquet tables and folders of images, read into a Dataset.

:func:`read_file` returns the same :class:`~ravine.problems.data.Dataset` record as the
built-in sets, so a run on your file gets the same validation split, standardization and
reproducibility. What it reads, by the path:

- ``.npz``: arrays ``x_train``, ``y_train``, ``x_test``, ``y_test`` (your own split), or ``x``
  and ``y`` (split here). ``x`` is ``(n, *features)`` numbers; ``(n, H, W)`` or
  ``(n, C, H, W)`` are images, which a CNN sees as such.
- ``.npy``: one 2-D array ``(n, features + 1)``; the label is the last column, or column
  ``label=INDEX``; whole numbers there are class labels.
- ``.csv``: a header row, then one row per example; column ``label`` (or ``label=COLUMN``) is the
  target, every other column a numeric feature.
- ``.parquet``: like CSV (needs pyarrow: ``pip install -e ".[data]"``).
- a folder: one sub-folder per class holding images (png, jpg, bmp, gif, tiff, webp) all of one
  size (``image_size=N`` resizes to N x N), or ``train/`` and ``test/`` holding such
  sub-folders. Pixels become float32 in [0, 1], ``(n, channels, height, width)``: one channel
  when every image is grey, else three (RGB).

Targets: integers (or text labels in a table, or class folders) make a classification task,
class k being the k-th smallest label (``class_names`` keeps the labels); floats make a
regression task ``(n, outputs)`` trained with the mean squared error. ``task=`` overrides.

Without a test split in the file, ``test_fraction`` (default 0.2) of the examples are held out,
stratified by class, drawn from ``seed`` (default 0): the same file and arguments give the same
tensors, bit for bit. ``sha256=`` (which ``ravine train`` records in the run's config) refuses
a file whose content has changed. A missing file raises FileNotFoundError naming it; a
malformed one (missing label column, ragged rows, non-numeric values, NaN, an empty folder, one
class only, x and y of different lengths) raises ValueError naming the file and what is wrong.

Example::

    from ravine.problems import load_dataset
    ds = load_dataset("file", path="measurements.csv", label="species")
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from ravine.arguments import DATA_SUFFIXES
from ravine.problems.data import Dataset, _check_seed

__all__ = ["IMAGE_SUFFIXES", "TABLE_SUFFIXES", "digest", "read_file"]

TABLE_SUFFIXES = DATA_SUFFIXES  # (".npz", ".npy", ".csv", ".parquet"), checked before torch too
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_TASKS = ("classification", "regression")


def read_file(
    path: str | os.PathLike[str],
    *,
    label: str | int | None = None,
    task: str | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    image_size: int | None = None,
    sha256: str | None = None,
) -> Dataset:
    """Read ``path`` (a .npz/.npy/.csv/.parquet file or an image folder) as a Dataset.

    Args:
      path: the file or folder (``~`` expands).
      label: the target column of a table (default ``"label"``) or of a .npy array (default
        the last); not used by .npz files and folders.
      task: ``"classification"`` or ``"regression"``; default: from the targets' type.
      test_fraction: share held out for testing when the file has no test split, in (0, 1).
      seed: random state of that split.
      image_size: resize every image of a folder to this many pixels square.
      sha256: the expected :func:`digest` of ``path``; ValueError when it differs.
    """
    where = Path(path).expanduser()
    if not where.exists():
        raise FileNotFoundError(f"{where}: no such file or folder")
    owner = str(where)
    if task is not None and task not in _TASKS:
        raise ValueError(f"{owner}: task must be classification or regression, got {task!r}")
    fraction = test_fraction
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction < 1:
        raise ValueError(f"{owner}: test_fraction must be in (0, 1), got {test_fraction!r}")
    seed = _check_seed(seed, owner)
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1
    ):
        raise ValueError(f"{owner}: image_size must be a positive integer, got {image_size!r}")
    if sha256 is not None and digest(where) != sha256:
        raise ValueError(f"{owner}: its content has changed since sha256 = {sha256!r} was recorded")
    if where.is_dir():
        if label is not None:
            raise ValueError(
                f"{owner}: label applies to tables; a folder's classes are its folders"
            )
        splits, names = _read_folder(where, image_size)
        task = task or "classification"
    else:
        if image_size is not None:
            raise ValueError(f"{owner}: image_size applies to folders of images")
        suffix = where.suffix.lower()
        if suffix not in TABLE_SUFFIXES:
            raise ValueError(
                f"{owner}: cannot read {suffix or 'a file without a suffix'}; ravine reads "
                f"{', '.join(TABLE_SUFFIXES)} files and folders of images"
            )
        if suffix == ".npz":
            if label is not None:
                raise ValueError(f"{owner}: label does not apply to .npz files (arrays x and y)")
            splits = _read_npz(where)
        else:
            reader = {".npy": _read_npy, ".csv": _read_csv, ".parquet": _read_parquet}[suffix]
            splits = (reader(where, label), None)
        names = None
    return _dataset(owner, where, splits, names, task, fraction, seed)


def digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file, or of a folder: its files' relative paths and contents, in order
    (hidden files, such as a desktop's ``.DS_Store``, left out, as the reader leaves them)."""
    where = Path(path).expanduser()
    if where.is_file():
        return _file_sha(where)
    if not where.is_dir():
        raise FileNotFoundError(f"{where}: no such file or folder")
    total = hashlib.sha256()
    files = (p for p in where.rglob("*") if p.is_file())
    for file in sorted(p for p in files if not _hidden(p.relative_to(where))):
        total.update(file.relative_to(where).as_posix().encode("utf-8", "surrogateescape"))
        total.update(b"\0" + _file_sha(file).encode() + b"\n")
    return total.hexdigest()


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _file_sha(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


# ----------------------------------------------------------------------------- arrays

Arrays = tuple[np.ndarray, np.ndarray]  # (x, y), one row per example


def _read_npz(path: Path) -> tuple[Arrays, Arrays | None]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise ValueError(f"{path}: not a readable .npz file of numeric arrays ({error})") from None
    if "x_train" in arrays or "x_test" in arrays:
        missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in arrays]
        if missing:
            raise ValueError(f"{path}: has x_train/x_test but lacks {', '.join(missing)}")
        return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])
    if "x" in arrays and "y" in arrays:
        return (arrays["x"], arrays["y"]), None
    raise ValueError(
        f"{path}: expected arrays x and y, or x_train, y_train, x_test and y_test; "
        f"it holds {', '.join(arrays) or 'none'}"
    )


def _read_npy(path: Path, label: str | int | None) -> Arrays:
    try:
        table = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise ValueError(f"{path}: not a readable .npy array of numbers ({error})") from None
    if table.ndim != 2 or table.shape[1] < 2:
        raise ValueError(
            f"{path}: expected a 2-D array (examples, features + label), got shape {table.shape}"
        )
    column = -1 if label is None else _column_index(label, table.shape[1], path)
    y = table[:, column]
    # One array has one dtype, so labels beside float features are floats too: whole
    # numbers are read as class labels (task="regression" reads them as numbers).
    if y.dtype.kind == "f" and np.isfinite(y).all() and np.array_equal(y, np.round(y)):
        y = y.astype(np.int64)
    return np.delete(table, column, axis=1), y


def _column_index(label: str | int, width: int, path: Path) -> int:
    try:
        index = int(label)
    except ValueError:
        raise ValueError(
            f"{path}: label of a .npy array is a column number, got {label!r}"
        ) from None
    if not -width <= index < width:
        raise ValueError(f"{path}: label column {index} is outside the array's {width} columns")
    return index


# ----------------------------------------------------------------------------- tables


def _read_csv(path: Path, label: str | int | None) -> Arrays:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except csv.Error as error:
        raise ValueError(f"{path}: not a readable CSV file ({error})") from None
    rows = [row for row in rows if row]  # blank lines
    if len(rows) < 2:
        raise ValueError(f"{path}: needs a header row and at least one row of data")
    header, body = [name.strip() for name in rows[0]], rows[1:]
    for line, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise ValueError(
                f"{path}: line {line} has {len(row)} values, the header {len(header)} columns"
            )
    target = _label_column(header, label, path)
    columns = {name: [row[i].strip() for row in body] for i, name in enumerate(header)}
    features = []
    for name in header:
        if name == target:
            continue
        try:
            features.append(np.array([float(v) for v in columns[name]], dtype=np.float64))
        except ValueError:
            line, value = next((i + 2, v) for i, v in enumerate(columns[name]) if not _is_float(v))
            raise ValueError(
                f"{path}: line {line}, column {name!r}: {value!r} is not a number "
                "(features must be numeric)"
            ) from None
    return _stack(features, len(body)), _labels(columns[target], path, target)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _labels(values: list[str], path: Path, column: str) -> np.ndarray:
    """Integers if every value is one, else floats, else the text (class names)."""
    if any(v == "" for v in values):
        line = values.index("") + 2
        raise ValueError(f"{path}: line {line}, column {column!r}: the label is missing")
    for convert, dtype in ((int, np.int64), (float, np.float64)):
        try:
            return np.array([convert(v) for v in values], dtype=dtype)
        except (ValueError, OverflowError):
            pass
    return np.array(values, dtype=str)


def _read_parquet(path: Path, label: str | int | None) -> Arrays:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(
            f'{path}: reading Parquet needs pyarrow: pip install -e ".[data]" (or pyarrow)'
        ) from None
    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow's own error types vary with the damage
        raise ValueError(f"{path}: not a readable Parquet file ({error})") from None
    header = list(table.column_names)
    target = _label_column(header, label, path)
    features = []
    for name in header:
        column = table.column(name)
        if column.null_count:
            raise ValueError(f"{path}: column {name!r} has {column.null_count} missing values")
        values = column.to_numpy(zero_copy_only=False)
        if name == target:
            y = values if values.dtype.kind in "iubf" else values.astype(str)
            continue
        if values.dtype.kind not in "iubf":
            raise ValueError(
                f"{path}: column {name!r} holds {column.type}, not numbers "
                "(features must be numeric)"
            )
        features.append(values.astype(np.float64))
    return _stack(features, table.num_rows), y


def _label_column(header: list[str], label: str | int | None, path: Path) -> str:
    name = "label" if label is None else str(label)
    if name not in header:
        raise ValueError(
            f"{path}: no column {name!r} to take the labels from; columns: "
            f"{', '.join(header)} (set label=COLUMN)"
        )
    if len(header) < 2:
        raise ValueError(f"{path}: has only the label column, no features")
    if header.count(name) > 1:
        raise ValueError(f"{path}: has {header.count(name)} columns named {name!r}")
    return name


def _stack(features: list[np.ndarray], rows: int) -> np.ndarray:
    return np.stack(features, axis=1) if features else np.zeros((rows, 0))


# ----------------------------------------------------------------------------- image folders


def _read_folder(path: Path, size: int | None) -> tuple[tuple[Arrays, Arrays | None], list[str]]:
    subfolders = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if set(subfolders) == {"train", "test"}:
        names = _class_folders(path / "train")
        test_names = _class_folders(path / "test")
        extra = sorted(set(test_names) - set(names))
        if extra:
            raise ValueError(f"{path / 'test'}: classes {', '.join(extra)} are not in train/")
        train = _read_images(path / "train", names, size)
        test = _read_images(path / "test", names, size)
        if train[0].shape[1:] != test[0].shape[1:]:
            raise ValueError(
                f"{path}: train images are {_shape(train[0])}, test images {_shape(test[0])}; "
                "set image_size=N to resize both"
            )
        return (train, test), names
    names = _class_folders(path)
    return (_read_images(path, names, size), None), names


def _class_folders(path: Path) -> list[str]:
    names = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise ValueError(f"{path}: holds no class folders (one sub-folder of images per class)")
    return names


def _read_images(path: Path, names: list[str], size: int | None) -> Arrays:
    from PIL import Image, UnidentifiedImageError

    pixels, labels, shapes = [], [], {}
    for k, name in enumerate(names):
        folder = path / name
        files = (
            sorted(
                p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            if folder.is_dir()
            else []
        )
        if not files:
            raise ValueError(f"{folder}: holds no images ({', '.join(IMAGE_SUFFIXES)})")
        for file in files:
            try:
                with Image.open(file) as image:
                    rgb = image.convert("RGB")
                    if size is not None:
                        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
            except (OSError, UnidentifiedImageError, ValueError) as error:
                raise ValueError(f"{file}: not a readable image ({error})") from None
            array = np.asarray(rgb, dtype=np.uint8)  # (H, W, 3)
            shapes.setdefault(array.shape, file)
            if len(shapes) > 1:
                (first, seen), (other, _) = list(shapes.items())[:2]
                raise ValueError(
                    f"{file}: is {other[1]}x{other[0]}, {seen} is {first[1]}x{first[0]}; images "
                    "must share one size (set image_size=N to resize them all)"
                )
            pixels.append(array)
            labels.append(k)
    x = np.stack(pixels).transpose(0, 3, 1, 2)  # (n, 3, H, W)
    if (x == x[:, :1]).all():  # every image grey: one channel
        x = x[:, :1]
    return x.astype(np.float32) / 255.0, np.array(labels, dtype=np.int64)


def _shape(x: np.ndarray) -> str:
    return "x".join(map(str, x.shape[1:]))


# ----------------------------------------------------------------------------- the record


def _dataset(
    owner: str,
    path: Path,
    splits: tuple[Arrays, Arrays | None],
    names: list[str] | None,
    task: str | None,
    test_fraction: float,
    seed: int,
) -> Dataset:
    given, test = splits
    parts = [("", given)] if test is None else [("train ", given), ("test ", test)]
    xs, ys = [], []
    for what, (x, y) in parts:
        xs.append(_features(x, owner, what))
        ys.append(_targets(y, owner, what, len(xs[-1])))
    if xs[0].shape[1:] != xs[-1].shape[1:]:
        raise ValueError(
            f"{owner}: x_train examples are {xs[0].shape[1:]}, x_test examples {xs[-1].shape[1:]}"
        )
    y_all = np.concatenate(ys)
    if task is None:
        task = "classification" if y_all.dtype.kind in "iubU" else "regression"
    if task == "classification":
        classes, codes = _classes(y_all, owner)
        cut = len(ys[0])
        ys = [codes[:cut], codes[cut:]] if test is not None else [codes]
        class_names = names or [str(c) for c in classes]
        num_classes = len(class_names)
    else:
        if y_all.dtype.kind not in "iubf":
            raise ValueError(f"{owner}: regression targets must be numbers, got text labels")
        ys = [y.astype(np.float32).reshape(len(y), -1) for y in ys]
        class_names, num_classes = None, None
    if test is None:
        train_rows, test_rows = _split(ys[0], task, test_fraction, seed, owner)
        xs = [xs[0][train_rows], xs[0][test_rows]]
        ys = [ys[0][train_rows], ys[0][test_rows]]
    x_train, x_test = (torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) for x in xs)
    y_dtype = torch.int64 if task == "classification" else torch.float32
    y_train, y_test = (torch.from_numpy(np.ascontiguousarray(y)).to(y_dtype) for y in ys)
    shape = tuple(x_train.shape[1:])
    image_shape = shape if len(shape) == 3 else None
    return Dataset(
        name="file",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        task=task,
        num_classes=num_classes,
        input_shape=shape,
        image_shape=image_shape,
        class_names=tuple(class_names) if class_names is not None else None,
        description=f"{path.name}: {task}, {len(x_train) + len(x_test):,} examples",
    )


def _features(x: np.ndarray, owner: str, what: str) -> np.ndarray:
    if x.dtype.kind not in "iubf":
        raise ValueError(f"{owner}: {what}x must hold numbers, got {x.dtype} values")
    if x.ndim in (1, 3):  # (n,): one feature; (n, H, W): grey images
        x = x[:, None]
    if x.ndim not in (2, 4) or x.shape[0] == 0 or math.prod(x.shape[1:]) == 0:
        raise ValueError(
            f"{owner}: {what}x must be (n, features) or (n, [channels,] height, width) with "
            f"n >= 1, got shape {x.shape}"
        )
    x = x.astype(np.float64)
    if not np.isfinite(x).all():
        row = int(np.argwhere(~np.isfinite(x.reshape(len(x), -1)))[0, 0])
        raise ValueError(f"{owner}: {what}x holds NaN or infinite values (example {row})")
    return x


def _targets(y: np.ndarray, owner: str, what: str, n: int) -> np.ndarray:
    if y.dtype.kind not in "iubfU":
        raise ValueError(f"{owner}: {what}y must hold numbers or text labels, got {y.dtype}")
    if y.ndim == 0 or y.shape[0] != n:
        raise ValueError(
            f"{owner}: {what}x holds {n} examples but {what}y {y.shape[0] if y.ndim else 0} "
            "targets; they must be of the same length"
        )
    if y.ndim > 2 or (y.ndim == 2 and y.dtype.kind in "iubU" and y.shape[1] != 1):
        raise ValueError(
            f"{owner}: {what}y must be (n,) labels or (n, outputs) targets, got {y.shape}"
        )
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise ValueError(f"{owner}: {what}y holds NaN or infinite values")
    return y.reshape(n) if y.ndim == 2 and y.shape[1] == 1 and y.dtype.kind != "f" else y


def _classes(y: np.ndarray, owner: str) -> tuple[np.ndarray, np.ndarray]:
    if y.ndim != 1:
        raise ValueError(f"{owner}: classification needs one label per example, got {y.shape}")
    if y.dtype.kind == "f" and not np.array_equal(y, np.round(y)):
        raise ValueError(f"{owner}: classification labels must be integers or text")
    classes, codes = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(
            f"{owner}: holds one class only ({classes[0] if len(classes) else 'none'}); "
            "classification needs two or more"
        )
    return classes, codes.astype(np.int64)


def _split(
    y: np.ndarray, task: str, fraction: float, seed: int, owner: str
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the training and test splits, each in file order: stratified by class
    for classification (every class keeps its share), drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    groups = (
        [np.flatnonzero(y == c) for c in np.unique(y)]
        if task == "classification"
        else [np.arange(len(y))]
    )
    test: list[np.ndarray] = []
    for rows in groups:
        test.append(rng.permutation(rows)[: round(fraction * len(rows))])
    test_rows = np.sort(np.concatenate(test))
    if len(test_rows) == 0 or len(test_rows) == len(y):
        raise ValueError(
            f"{owner}: test_fraction={fraction!r} of {len(y)} examples leaves "
            f"{'no test' if len(test_rows) == 0 else 'no training'} examples"
        )
    train_rows = np.setdiff1d(np.arange(len(y)), test_rows)
    return train_rows, test_rows
