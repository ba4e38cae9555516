"""Built-in learning tasks: shapes, determinism, the properties each task promises, and
standardization that never looks at the test split. Driven by one table: adding a task is
adding a row."""

import dataclasses
import doctest
import math
import random
import socket

import numpy as np
import pytest
import torch
from torch.autograd.functional import hessian

import ravine.problems.data as data
from ravine.problems import DATASETS, Dataset, Standardizer, load_dataset, standardize

# (registry name, small kwargs for speed, expected (n_train, n_test, input_shape, num_classes or
# regression output width))
CASES = [
    ("digits", {}, (1437, 360, (64,), 10)),
    ("mnist1d", {}, (4000, 1000, (40,), 10)),
    ("spirals", {"n_train": 60, "n_test": 40}, (60, 40, (2,), 2)),
    ("moons", {"n_train": 60, "n_test": 40}, (60, 40, (2,), 2)),
    ("teacher_student", {"n_train": 50, "n_test": 30, "input_dim": 6}, (50, 30, (6,), 1)),
    (
        "deep_linear",
        {"n_train": 50, "n_test": 30, "input_dim": 5, "output_dim": 3},
        (50, 30, (5,), 3),
    ),
]
IDS = [name for name, _, _ in CASES]


def test_every_registered_dataset_has_a_row():
    assert sorted(DATASETS) == sorted(IDS)


def test_module_docstring_examples_run():
    failures, tried = doctest.testmod(data)
    assert tried > 0 and failures == 0


@pytest.mark.parametrize(("name", "kwargs", "expected"), CASES, ids=IDS)
def test_shapes_dtypes_and_classes(name, kwargs, expected, request):
    if name == "mnist1d":
        request.getfixturevalue("mnist1d_guarded")  # generate once, under the network guard
    n_train, n_test, input_shape, outputs = expected
    ds = load_dataset(name, **kwargs)
    assert isinstance(ds, Dataset) and ds.name == name
    assert (ds.n_train, ds.n_test, ds.input_shape) == (n_train, n_test, input_shape)
    assert ds.x_train.shape == (n_train, *input_shape) and ds.x_test.shape == (n_test, *input_shape)
    assert ds.x_train.dtype == ds.x_test.dtype == torch.float32
    assert torch.isfinite(ds.x_train).all() and torch.isfinite(ds.x_test).all()
    assert ds.output_dim == outputs and ds.num_features == math.prod(input_shape)
    if ds.task == "classification":
        assert ds.num_classes == outputs
        assert ds.y_train.shape == (n_train,) and ds.y_train.dtype == torch.int64
        # every class occurs in training
        assert set(ds.y_train.tolist()) == set(range(outputs))
    else:
        assert ds.task == "regression" and ds.num_classes is None
        assert ds.y_train.shape == (n_train, outputs) and ds.y_train.dtype == torch.float32
    assert ds.description and name in repr(ds) and "tensor" not in repr(ds)


@pytest.mark.parametrize(("name", "kwargs", "expected"), CASES, ids=IDS)
def test_deterministic_given_seed(name, kwargs, expected, request):
    if name == "mnist1d":
        request.getfixturevalue("mnist1d_guarded")
    a, b = load_dataset(name, **kwargs), load_dataset(name, **kwargs)
    for split in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(a, split), getattr(b, split))
    assert a.x_train is not b.x_train  # each call owns its tensors
    if name != "mnist1d":  # another MNIST-1D seed costs a 2 s generation; seeds are tested below
        c = load_dataset(name, **kwargs, seed=1)
        assert not torch.equal(a.x_train, c.x_train)


def test_dataset_is_frozen_and_its_tensors_are_private(mnist1d_guarded):
    ds = load_dataset("mnist1d")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ds.name = "other"  # type: ignore[misc]
    ds.x_train.zero_()  # editing one copy must not reach the cache
    assert load_dataset("mnist1d").x_train.abs().sum() > 0


# ----------------------------------------------------------------------------- per task


def test_digits_split_is_stratified_and_covers_every_sample():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    ds = load_dataset("digits", seed=3)
    assert ds.x_train.min() == 0 and ds.x_train.max() == 1  # 0..16 scaled to [0, 1]
    # train + test is a partition of the 1797 images
    both = torch.cat([ds.x_train, ds.x_test]).double() * 16
    assert sorted(map(tuple, both.tolist())) == sorted(map(tuple, x.tolist()))
    # stratified: each class's test share is within one sample of 20%
    counts = np.bincount(y, minlength=10)
    test_counts = np.bincount(ds.y_test.numpy(), minlength=10)
    assert np.all(np.abs(test_counts - 0.2 * counts) <= 1)
    assert not torch.equal(ds.x_train, load_dataset("digits", seed=4).x_train)


def test_digits_image_view_is_the_8x8_picture():
    from sklearn.datasets import load_digits

    ds = load_dataset("digits", test_fraction=0.5)
    images = ds.as_images()
    assert images.x_train.shape == (ds.n_train, 1, 8, 8) and images.input_shape == (1, 8, 8)
    assert images.x_train.data_ptr() == ds.x_train.data_ptr()  # a view, no copy
    # the first training image appears, as an 8x8 picture, among scikit-learn's images
    pictures = torch.as_tensor(load_digits().images / 16.0, dtype=torch.float32)
    assert (pictures == images.x_train[0, 0]).all(-1).all(-1).any()
    assert images.flatten().input_shape == (64,)
    with pytest.raises(ValueError, match="no image view"):
        load_dataset("spirals", n_train=4, n_test=4).as_images()


@pytest.fixture(scope="module")
def mnist1d_guarded():
    """MNIST-1D generated once, with the network cut off; and whether the caller's global RNGs
    came through untouched. Every MNIST-1D test uses it, so the 2 s generation runs once."""
    import mnist1d.data

    def no_network(*args, **kwargs):
        raise AssertionError("MNIST-1D generation touched the network")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", no_network)
        mp.setattr(mnist1d.data.requests, "get", no_network)
        data._generate_mnist1d.cache_clear()  # force a real generation under the guard
        random.seed(7)
        np.random.seed(7)
        expected = (random.random(), np.random.rand())
        random.seed(7)
        np.random.seed(7)
        ds = load_dataset("mnist1d")
        rng_untouched = (random.random(), np.random.rand()) == expected
    return ds, rng_untouched


def test_mnist1d_is_generated_locally_without_network_or_rng_side_effects(mnist1d_guarded):
    ds, rng_untouched = mnist1d_guarded
    assert rng_untouched  # mnist1d reseeds the global RNGs; the loader puts them back
    # the package's reference data set (default arguments, seed 42)
    assert ds.y_train[:10].tolist() == [2, 6, 4, 5, 6, 6, 6, 0, 3, 1]
    assert np.bincount(ds.y_train.numpy()).tolist() == [
        398,
        396,
        411,
        394,
        394,
        402,
        401,
        404,
        402,
        398,
    ]
    assert ds.as_images().input_shape == (1, 40)
    # the data set as a whole is centred with unit standard deviation
    everything = torch.cat([ds.x_train, ds.x_test]).double()
    assert abs(everything.mean()) < 1e-3 and abs(everything.std() - 1) < 1e-3


def test_mnist1d_disk_cache_round_trips_and_recovers_from_damage(
    tmp_path, monkeypatch, mnist1d_guarded
):
    reference = load_dataset("mnist1d")  # in memory (generated at most once per session)
    cache = tmp_path / "cache"
    load_dataset("mnist1d", cache_dir=cache)
    (path,) = cache.glob("mnist1d-*-seed42.npz")
    assert not list(cache.glob("*.tmp"))  # the atomic write left nothing behind

    def no_generation(seed):
        raise AssertionError("regenerated although the cache file was valid")

    monkeypatch.setattr(data, "_generate_mnist1d", no_generation)
    from_disk = load_dataset("mnist1d", cache_dir=str(cache))
    assert torch.equal(from_disk.x_train, reference.x_train)
    assert torch.equal(from_disk.y_test, reference.y_test)

    path.write_bytes(b"not an npz file")
    monkeypatch.undo()
    assert torch.equal(load_dataset("mnist1d", cache_dir=cache).x_test, reference.x_test)
    assert np.load(path)["x"].shape == (4000, 40)  # rewritten


def test_spirals_are_balanced_and_lie_on_their_arms():
    ds = load_dataset("spirals", n_train=200, n_test=101, noise=0.0, turns=2.0, seed=5)
    assert torch.bincount(ds.y_train).tolist() == [100, 100]
    assert abs(torch.bincount(ds.y_test)[0] - torch.bincount(ds.y_test)[1]) == 1
    assert ds.y_train[:20].tolist() != [0, 1] * 10  # shuffled
    x, y = ds.x_train.double(), ds.y_train.double()
    r = x.norm(dim=1)
    assert r.max() <= 1 + 1e-6
    # without noise, class k lies exactly on angle = 2 pi turns r + pi k (mod 2 pi)
    residual = torch.atan2(x[:, 1], x[:, 0]) - (2 * math.pi * 2.0 * r + math.pi * y)
    assert torch.allclose(
        torch.remainder(residual + math.pi, 2 * math.pi), torch.tensor(math.pi).double(), atol=1e-4
    )


def test_moons_are_balanced_and_splits_are_independent():
    ds = load_dataset("moons", n_train=100, n_test=100, seed=2)
    assert torch.bincount(ds.y_train).tolist() == [50, 50]
    assert not torch.equal(ds.x_train, ds.x_test)


def test_teacher_student_targets_come_from_the_stored_teacher():
    kwargs = {"n_train": 64, "n_test": 16, "input_dim": 5, "width": 7, "depth": 3, "output_dim": 2}
    ds = load_dataset("teacher_student", **kwargs, activation="relu", noise=0.0, seed=4)
    layers = []
    for i in range(4):
        w = ds.extras[f"teacher.{i}.weight"]
        linear = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
        linear.weight.data.copy_(w)
        layers += [linear, torch.nn.ReLU()]
    teacher = torch.nn.Sequential(*layers[:-1])
    with torch.no_grad():
        torch.testing.assert_close(teacher(ds.x_train), ds.y_train, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(teacher(ds.x_test), ds.y_test, rtol=1e-5, atol=1e-5)
    # same seed, same teacher and data; noise only adds N(0, noise^2)
    noisy = load_dataset("teacher_student", **kwargs, activation="relu", noise=0.5, seed=4)
    assert torch.equal(noisy.x_train, ds.x_train)
    assert abs((noisy.y_train - ds.y_train).std() - 0.5) < 0.1


def test_deep_linear_inputs_are_whitened_and_targets_linear():
    ds = load_dataset(
        "deep_linear", n_train=200, input_dim=6, output_dim=4, singular_values=[2.0, 1.0]
    )
    x = ds.x_train.double()
    torch.testing.assert_close(x.T @ x / 200, torch.eye(6, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.mean(0), torch.zeros(6, dtype=torch.float64), atol=1e-6, rtol=0)
    w = ds.extras["teacher"]
    assert w.shape == (4, 6)
    torch.testing.assert_close(
        torch.linalg.svdvals(w), torch.tensor([2.0, 1.0, 0.0, 0.0]), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(ds.y_train, ds.x_train @ w.T, atol=1e-5, rtol=0)
    torch.testing.assert_close(ds.y_test, ds.x_test @ w.T, atol=1e-5, rtol=0)


def _two_layer_loss(ds, hidden):
    x, y = ds.x_train.double(), ds.y_train.double()
    d, o = x.shape[1], y.shape[1]

    def loss(params):
        w1, w2 = params[: hidden * d].view(hidden, d), params[hidden * d :].view(o, hidden)
        return 0.5 * (y - x @ w1.T @ w2.T).square().sum(1).mean()

    return loss, hidden * d + o * hidden


def test_deep_linear_zero_init_is_the_saxe_saddle():
    """The docstring's claim: at zero weights the gradient vanishes; for two layers the Hessian
    has eigenvalues +-s_i, once per hidden unit; for three layers it vanishes."""
    s = [3.0, 1.5, 0.5]
    ds = load_dataset(
        "deep_linear", n_train=100, input_dim=3, output_dim=3, singular_values=s, seed=1
    )
    hidden = 2
    loss, n = _two_layer_loss(ds, hidden)
    zero = torch.zeros(n, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(loss(zero), zero)
    assert grad.abs().max() == 0
    evals = torch.linalg.eigvalsh(hessian(loss, zero.detach(), vectorize=True))
    expected = sorted(
        [v for v in s for _ in range(hidden)] + [-v for v in s for _ in range(hidden)]
    )
    torch.testing.assert_close(
        evals, torch.tensor(expected, dtype=torch.float64), atol=1e-4, rtol=0
    )

    x, y = ds.x_train.double(), ds.y_train.double()

    def deep_loss(params):  # three 3x3 layers
        w1, w2, w3 = params.view(3, 3, 3)
        return 0.5 * (y - x @ w1.T @ w2.T @ w3.T).square().sum(1).mean()

    assert hessian(deep_loss, torch.zeros(27, dtype=torch.float64), vectorize=True).abs().max() == 0


# ----------------------------------------------------------------------------- standardization


def _shifted(n_train=200, n_test=100, shift=100.0):
    # test data from a different distribution: statistics computed with it would differ a lot
    gen = torch.Generator().manual_seed(0)
    x_train = torch.randn(n_train, 3, generator=gen) * torch.tensor([1.0, 2.0, 5.0])
    x_test = torch.randn(n_test, 3, generator=gen) + shift
    return Dataset(
        name="shifted",
        x_train=x_train,
        y_train=torch.zeros(n_train, dtype=torch.int64).index_fill_(0, torch.tensor([0]), 1),
        x_test=x_test,
        y_test=torch.zeros(n_test, dtype=torch.int64),
        task="classification",
        num_classes=2,
        input_shape=(3,),
        description="test split shifted by +100",
    )


def test_standardize_uses_training_statistics_only():
    ds = _shifted()
    out, scaler = standardize(ds)
    torch.testing.assert_close(scaler.mean, ds.x_train.double().mean(0))
    # train becomes exactly standard ...
    torch.testing.assert_close(out.x_train.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.x_train.std(0, correction=0), torch.ones(3), atol=1e-5, rtol=0)
    # ... and test keeps its shift, measured in training standard deviations (fitting on all
    # the data would pull the test mean down to about +0.7)
    expected = (100.0 - ds.x_train.double().mean(0)) / ds.x_train.double().std(0, correction=0)
    torch.testing.assert_close(out.x_test.double().mean(0), expected, atol=0.3, rtol=0)
    assert (out.x_test.mean(0) > 15).all()
    assert torch.equal(out.y_train, ds.y_train)  # labels untouched


def test_constant_features_are_centred_not_blown_up():
    ds = load_dataset("digits")
    corner = ds.x_train[:, 0]
    assert (corner == 0).all()  # the top-left pixel is blank in every image
    out, scaler = standardize(ds)
    assert scaler.scale[0] == 1 and (out.x_train[:, 0] == 0).all()
    assert torch.isfinite(out.x_test).all() and out.x_test.abs().max() < 100
    # a pixel constant in training but not in a test image stays at its raw offset
    s = Standardizer().fit(torch.zeros(10, 2))
    assert s.transform(torch.tensor([[0.5, -1.0]])).tolist() == [[0.5, -1.0]]


def test_standardizer_state_dict_round_trips_through_torch_save(tmp_path):
    ds = load_dataset("digits").as_images()
    _, scaler = standardize(ds)
    assert scaler.mean.shape == (1, 8, 8)  # per pixel
    torch.save(scaler.state_dict(), tmp_path / "scaler.pt")
    restored = Standardizer()
    restored.load_state_dict(torch.load(tmp_path / "scaler.pt", weights_only=True))
    assert torch.equal(restored.transform(ds.x_test), scaler.transform(ds.x_test))
    torch.testing.assert_close(restored.inverse_transform(restored.transform(ds.x_test)), ds.x_test)
    x64 = ds.x_test.double()
    assert scaler.transform(x64).dtype == torch.float64
    with pytest.raises(ValueError, match="lacks mean"):
        restored.load_state_dict({"min_std": 1e-6, "scale": None})


def test_standardizer_errors_name_the_problem():
    with pytest.raises(RuntimeError, match="fit"):
        Standardizer().transform(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        Standardizer().fit(torch.zeros(4, 3)).transform(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="min_std"):
        Standardizer(min_std=0.0)
    with pytest.raises(ValueError, match="x must be"):
        Standardizer().fit(torch.zeros(3))


# ----------------------------------------------------------------------------- record and registry


def test_views_and_device_dtype_moves():
    ds = load_dataset("deep_linear", n_train=20, n_test=5, input_dim=4, output_dim=2)
    ds64 = ds.to(dtype=torch.float64)
    assert ds64.x_train.dtype == ds64.y_train.dtype == torch.float64
    cls = load_dataset("moons", n_train=8, n_test=4).to(dtype=torch.float64)
    assert cls.x_train.dtype == torch.float64 and cls.y_train.dtype == torch.int64


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"task": "ranking"}, "task must be one of"),
        ({"y_train": torch.full((200,), 2)}, r"labels must lie in \[0, 2\)"),
        ({"y_train": torch.zeros(199, dtype=torch.int64)}, "one row per example"),
        ({"y_test": torch.zeros(100)}, "y_test must be int64"),
        ({"input_shape": (4,)}, r"x_train must have shape \(n, 4\)"),
        ({"num_classes": 1}, "num_classes must be an integer >= 2"),
        ({"image_shape": (1, 2, 2)}, "image_shape"),
        ({"class_names": ("a",)}, "class_names has 1 names for 2 classes"),
        ({"task": "regression"}, "num_classes must be None"),
    ],
)
def test_inconsistent_records_are_rejected(changes, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(_shifted(), **changes)


def test_load_dataset_normalizes_names():
    a = load_dataset("Teacher-Student", n_train=5, n_test=5)
    assert a.name == "teacher_student"


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("imagenet", {}, r"unknown dataset 'imagenet'; valid names: deep_linear, digits, .*mnist"),
        ("spirals", {"sigma": 0.1}, r"spirals: unknown argument\(s\) sigma; accepted: .*noise"),
        ("mnist", {}, r"mnist: missing argument\(s\) root"),
        ("spirals", {"noise": -0.1}, "spirals: noise must be >= 0"),
        ("spirals", {"turns": 0}, "spirals: turns must be > 0"),
        ("spirals", {"n_train": 0}, "spirals: n_train must be >= 1"),
        ("spirals", {"n_test": 2.5}, "spirals: n_test must be an integer"),
        ("moons", {"n_train": 1}, "moons: n_train must be >= 2"),
        ("moons", {"seed": -1}, r"moons: seed must be in \[0, 2\*\*32\)"),
        ("digits", {"seed": True}, "digits: seed must be an integer"),
        ("digits", {"test_fraction": 1.0}, r"digits: test_fraction must be in \(0, 1\)"),
        ("digits", {"test_fraction": 0.001}, "digits: test_fraction=0.001 is unusable"),
        ("mnist1d", {"seed": "42"}, "mnist1d: seed must be an integer"),
        ("teacher_student", {"activation": "gelu"}, "activation must be one of tanh, relu"),
        ("teacher_student", {"depth": 0}, "teacher_student: depth must be >= 1"),
        ("deep_linear", {"n_train": 8}, "deep_linear: n_train must be >= 9"),
        ("deep_linear", {"singular_values": [1.0] * 9}, "singular_values has 9 values"),
        ("deep_linear", {"singular_values": [1.0, -1.0]}, "singular_values must be >= 0"),
        ("deep_linear", {"singular_values": 2.0}, "singular_values must be a sequence"),
    ],
)
def test_bad_names_and_values_raise_helpful_errors(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_dataset(name, **kwargs)
