"""Readers for downloaded data sets, on tiny files written here in the official formats:
shapes, pixel values and labels, and a named error for every missing or malformed file."""

import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from ravine.problems import load_dataset, read_cifar10, read_fashion_mnist, read_idx, read_mnist

N_TRAIN, N_TEST = 5, 3


def write_idx(path, array, *, magic=None, gz=False):
    """An IDX file as LeCun et al. describe it: magic 0x0000080<ndim>, big-endian sizes, bytes."""
    array = np.asarray(array, dtype=np.uint8)
    magic = 0x0800 | array.ndim if magic is None else magic
    raw = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw)
    path.write_bytes(raw)
    return path


def write_mnist(root, *, gz=False, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (N_TRAIN, 28, 28)),
        "train-labels-idx1-ubyte": np.array([0, 9, 3, 3, 7]),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (N_TEST, 28, 28)),
        "t10k-labels-idx1-ubyte": np.array([1, 2, 8]),
    }
    root.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        write_idx(root / name, array, gz=gz)
    return arrays


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzipped"])
def test_mnist_shapes_values_and_labels(tmp_path, gz):
    arrays = write_mnist(tmp_path, gz=gz)
    ds = read_mnist(tmp_path)
    assert ds.name == "mnist" and ds.num_classes == 10 and ds.task == "classification"
    assert ds.x_train.shape == (N_TRAIN, 1, 28, 28) and ds.x_test.shape == (N_TEST, 1, 28, 28)
    assert ds.x_train.dtype == torch.float32 and ds.image_shape == (1, 28, 28)
    expected = torch.tensor(arrays["train-images-idx3-ubyte"], dtype=torch.float32) / 255
    assert torch.equal(ds.x_train[:, 0], expected)
    assert ds.x_test.min() >= 0 and ds.x_test.max() <= 1
    assert ds.y_train.tolist() == [0, 9, 3, 3, 7] and ds.y_test.tolist() == [1, 2, 8]
    assert ds.y_train.dtype == torch.int64

    flat = read_mnist(tmp_path, flat=True)
    assert flat.x_train.shape == (N_TRAIN, 784) and flat.input_shape == (784,)
    assert torch.equal(flat.x_train, ds.x_train.reshape(N_TRAIN, -1))
    assert flat.as_images().x_test.shape == (N_TEST, 1, 28, 28)


def test_fashion_mnist_and_torchvision_layout_and_load_dataset(tmp_path):
    write_mnist(tmp_path / "FashionMNIST" / "raw", gz=True)
    ds = read_fashion_mnist(tmp_path)
    assert ds.name == "fashion_mnist" and ds.class_names[9] == "Ankle boot"
    assert ds.x_train.shape == (N_TRAIN, 1, 28, 28)
    via_registry = load_dataset("fashion-mnist", root=str(tmp_path), flat=True)
    assert torch.equal(via_registry.x_test, ds.x_test.flatten(1))


def test_read_idx_reads_any_dimension(tmp_path):
    path = write_idx(tmp_path / "cube", np.arange(24).reshape(2, 3, 4))
    assert read_idx(path, ndim=3).tolist() == np.arange(24).reshape(2, 3, 4).tolist()


def test_missing_mnist_file_names_it_and_the_directory(tmp_path):
    write_mnist(tmp_path)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte")
    with pytest.raises(FileNotFoundError) as info:
        read_mnist(tmp_path)
    message = str(info.value)
    assert f"expected the MNIST IDX file t10k-labels-idx1-ubyte(.gz) in {tmp_path}" in message
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_mnist(tmp_path / "nowhere")


def _corrupt_images(root, array, **kwargs):
    return write_idx(root / "train-images-idx3-ubyte", array, **kwargs)


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        # a labels file where the images belong
        (
            lambda root: _corrupt_images(root, np.zeros((N_TRAIN, 28, 28)), magic=0x0801),
            r"bad magic number 0x00000801, expected 0x00000803",
        ),
        (
            lambda root: _corrupt_images(root, np.zeros((N_TRAIN, 28, 28)), magic=0x0D03),
            "bad magic number 0x00000d03",
        ),
        (
            lambda root: _corrupt_images(root, np.zeros((N_TRAIN, 32, 32))),
            "images are 32x32, expected 28x28 MNIST images",
        ),
        (
            lambda root: _corrupt_images(root, np.zeros((N_TRAIN - 1, 28, 28))),
            r"holds 5 labels for the 4 images",
        ),
        (
            lambda root: write_idx(root / "train-labels-idx1-ubyte", [0, 1, 2, 3, 10]),
            "label 10 is outside 0..9",
        ),
    ],
    ids=["labels-magic", "wrong-type-code", "wrong-dims", "count-mismatch", "label-range"],
)
def test_malformed_mnist_files_raise_naming_the_file(tmp_path, corrupt, message):
    write_mnist(tmp_path)
    bad = corrupt(tmp_path)
    with pytest.raises(ValueError, match=message) as info:
        read_mnist(tmp_path)
    assert str(bad) in str(info.value) or "labels" in str(info.value)


@pytest.mark.parametrize(
    ("cut", "message"),
    [
        (-1, r"truncated: the header says 5 x 28 x 28 = 3920 bytes of data, the file holds 3919"),
        (2, "shorter than the IDX magic number"),
        (10, "shorter than its IDX header"),
    ],
)
def test_truncated_idx_files_are_reported(tmp_path, cut, message):
    write_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(ValueError, match=message) as info:
        read_mnist(tmp_path)
    assert str(info.value).startswith(str(path))


def test_trailing_data_and_broken_gzip_are_reported(tmp_path):
    write_mnist(tmp_path)
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(ValueError, match="has trailing data"):
        read_mnist(tmp_path)

    write_mnist(tmp_path / "gz", gz=True)
    gz_path = tmp_path / "gz" / "train-images-idx3-ubyte.gz"
    gz_path.write_bytes(gz_path.read_bytes()[:40])
    with pytest.raises(ValueError, match=f"{gz_path}: not a readable gzip file"):
        read_mnist(tmp_path / "gz")


def test_flat_is_validated_before_reading(tmp_path):
    with pytest.raises(ValueError, match="mnist: flat must be True or False"):
        read_mnist(tmp_path, flat="yes")


# ----------------------------------------------------------------------------- CIFAR-10


def cifar_batch(n, seed):
    rng = np.random.default_rng(seed)
    # The official batches are Python 2 pickles with bytes keys and a list of labels.
    return {
        b"batch_label": b"fake batch",
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
        b"filenames": [b"x.png"] * n,
    }


def write_cifar(folder, *, n_per_batch=2, n_test=4, protocol=2):
    folder.mkdir(parents=True, exist_ok=True)
    batches = {f"data_batch_{i}": cifar_batch(n_per_batch, i) for i in range(1, 6)}
    batches["test_batch"] = cifar_batch(n_test, 99)
    for name, batch in batches.items():
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    return batches


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_shapes_channel_layout_and_labels(tmp_path, protocol):
    batches = write_cifar(tmp_path / "cifar-10-batches-py", protocol=protocol)
    ds = read_cifar10(tmp_path)
    assert ds.name == "cifar10" and ds.class_names[0] == "airplane"
    assert ds.x_train.shape == (10, 3, 32, 32) and ds.x_test.shape == (4, 3, 32, 32)
    assert ds.x_train.dtype == torch.float32 and ds.input_shape == (3, 32, 32)
    # batches concatenate in order 1..5; a row is 1024 red, 1024 green, 1024 blue, row-major
    row = batches["data_batch_2"][b"data"][1]
    pixel = ds.x_train[3]
    assert pixel[0, 0, 0] == row[0] / 255 and pixel[0, 0, 1] == row[1] / 255
    assert pixel[0, 1, 0] == row[32] / 255 and pixel[1, 0, 0] == row[1024] / 255
    assert pixel[2, 31, 31] == row[3071] / 255
    train_labels = [v for i in range(1, 6) for v in batches[f"data_batch_{i}"][b"labels"]]
    assert ds.y_train.tolist() == train_labels
    assert ds.y_test.tolist() == batches["test_batch"][b"labels"]

    flat = read_cifar10(tmp_path / "cifar-10-batches-py", flat=True)  # the folder itself
    assert flat.x_test.shape == (4, 3072)
    assert torch.equal(
        flat.x_test * 255, torch.tensor(batches["test_batch"][b"data"], dtype=torch.float32)
    )


def test_cifar10_reads_numpy1_era_pickles(tmp_path):
    # The official files name numpy.core.multiarray (numpy 2 moved it to numpy._core).
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder)
    for path in folder.iterdir():
        path.write_bytes(path.read_bytes().replace(b"numpy._core.", b"numpy.core."))
    assert b"numpy.core.multiarray" in (folder / "test_batch").read_bytes()
    assert read_cifar10(tmp_path).x_test.shape == (4, 3, 32, 32)


def test_missing_cifar_batch_names_it_and_the_folder(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder)
    os.remove(folder / "data_batch_3")
    with pytest.raises(
        FileNotFoundError, match=f"expected the CIFAR-10 python batch data_batch_3 in {folder}"
    ):
        read_cifar10(tmp_path)


class _Exploit:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.makedirs, (self.target,))


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"definitely not a pickle", "not a readable CIFAR-10 python batch"),
        (pickle.dumps([1, 2, 3], protocol=2), "a CIFAR-10 batch is a dict, got list"),
        (pickle.dumps({b"labels": [1]}, protocol=2), "lacks the 'data' entry"),
        (
            pickle.dumps({b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]}, protocol=2),
            "rows hold 3000 values, expected 3x32x32 = 3072",
        ),
        (
            pickle.dumps({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, protocol=2),
            "'data' must be a 2-D uint8 array",
        ),
        (
            pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, protocol=2),
            "holds 1 labels for 2 images",
        ),
        (
            pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, protocol=2),
            r"labels must lie in 0..9, got 0..10",
        ),
    ],
    ids=[
        "garbage",
        "not-a-dict",
        "no-data",
        "wrong-row-length",
        "wrong-dtype",
        "label-count",
        "label-range",
    ],
)
def test_malformed_cifar_batch_raises_naming_the_file(tmp_path, payload, message):
    write_cifar(tmp_path)
    (tmp_path / "test_batch").write_bytes(payload)
    with pytest.raises(ValueError, match=message) as info:
        read_cifar10(tmp_path)
    assert str(info.value).startswith(str(tmp_path / "test_batch"))


def test_cifar_reader_refuses_pickles_that_would_run_code(tmp_path):
    write_cifar(tmp_path)
    target = tmp_path / "pwned"
    (tmp_path / "data_batch_1").write_bytes(
        pickle.dumps({b"data": _Exploit(str(target))}, protocol=2)
    )
    with pytest.raises(ValueError, match=r"refusing to load (os|posix)\.makedirs"):
        read_cifar10(tmp_path)
    assert not target.exists()
