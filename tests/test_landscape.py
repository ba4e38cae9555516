"""Loss landscapes: filter normalization, batched == loop, interpolation, PCA, npz, plots."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ravine.probe.landscape import (
    Interpolation,
    Surface,
    evaluate_points,
    filter_normalize,
    interpolate,
    pca_directions,
    random_directions,
    surface,
    trajectory,
)
from ravine.problems import PRESETS, build_model, load_dataset
from ravine.report.landscape import plot_interpolation, plot_surface, plot_trajectory


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _model(seed: int = 0, **kw) -> nn.Module:
    return build_model(replace(PRESETS["digits_mlp"], **kw), (64,), 10, generator=seed)


def _conv_bn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)
    )


@pytest.mark.parametrize("ignore", ["biasbn", "none"])
def test_filter_normalization(ignore):
    model = _conv_bn()
    params = dict(model.named_parameters())
    d1, d2 = random_directions(model, ignore=ignore, generator=0)
    for d in (d1, d2):
        for name, w in params.items():
            if w.dim() > 1:
                dims = tuple(range(1, w.dim()))
                torch.testing.assert_close(
                    torch.linalg.vector_norm(d[name], dim=dims),
                    torch.linalg.vector_norm(w.detach(), dim=dims),
                )
            elif ignore == "biasbn":
                assert torch.count_nonzero(d[name]) == 0, name
            else:
                torch.testing.assert_close(d[name].norm(), w.detach().norm())
    assert not torch.equal(d1["0.weight"], d2["0.weight"])
    with pytest.raises(ValueError, match="ignore"):
        filter_normalize(d1, params, ignore="bias")


@pytest.mark.parametrize("fold", [False, True])
@pytest.mark.parametrize("batch_norm", [False, True])
def test_batched_equals_loop(digits, fold, batch_norm):
    model = _model(batch_norm=batch_norm)
    if batch_norm:  # non-trivial running statistics
        model.train()
        with torch.no_grad():
            model(digits.x_train)
    model.train()  # evaluation must switch to eval mode and restore this
    x, y = digits.x_test[:100], digits.y_test[:100]
    base = {k: p.detach().clone() for k, p in model.named_parameters()}
    d1, d2 = random_directions(model, ignore="none", generator=1)
    coeffs = torch.tensor([[0.0, 0.0], [0.5, -0.3], [-1.0, 1.0], [0.25, 0.75], [1.0, 0.1]])
    loss, acc = evaluate_points(
        model,
        F.cross_entropy,
        x,
        y,
        base,
        [d1, d2],
        coeffs,
        chunk_size=2,
        fold_first_linear=fold and not batch_norm,
    )
    assert model.training
    ref = _model(batch_norm=batch_norm)
    ref.load_state_dict(model.state_dict())
    ref.eval()
    with torch.no_grad():
        for n, (a, b) in enumerate(coeffs.tolist()):
            for k, p in ref.named_parameters():
                p.copy_(base[k] + a * d1[k] + b * d2[k])
            out = ref(x)
            torch.testing.assert_close(loss[n], F.cross_entropy(out, y), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(acc[n], (out.argmax(1) == y).float().mean())
    torch.testing.assert_close(dict(model.named_parameters())["head.weight"], base["head.weight"])


def test_interpolation_endpoints(digits):
    a, b = _model(0), _model(1)
    res = interpolate(a, a, b, F.cross_entropy, digits, alphas=[0.0, 0.5, 1.0])
    assert set(res.loss) == {"train", "test"}
    for split, x, y in (
        ("train", digits.x_train, digits.y_train),
        ("test", digits.x_test, digits.y_test),
    ):
        with torch.no_grad():
            la, lb = F.cross_entropy(a(x), y).item(), F.cross_entropy(b(x), y).item()
        np.testing.assert_allclose(res.loss[split][[0, 2]], [la, lb], rtol=1e-5)


def test_interpolation_convex_on_logistic_regression(digits):
    torch.manual_seed(0)
    start = nn.Linear(64, 10)
    end = nn.Linear(64, 10)
    with torch.no_grad():  # a rough solution: a few steps of gradient descent
        end.load_state_dict(start.state_dict())
    opt = torch.optim.SGD(end.parameters(), lr=0.5)
    for _ in range(30):
        opt.zero_grad()
        F.cross_entropy(end(digits.x_train), digits.y_train).backward()
        opt.step()
    res = interpolate(start, start, end, F.cross_entropy, digits, alphas=np.linspace(-0.5, 1.5, 41))
    for loss in res.loss.values():
        assert np.all(np.diff(loss, 2) >= -1e-5)  # convex: second differences non-negative
    assert res.loss["train"][30] < res.loss["train"][10]  # training helped


def test_pca_trajectory_in_a_plane():
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(50, 2, generator=g, dtype=torch.float64))
    t = torch.linspace(0, 1, 20, dtype=torch.float64)
    coords = torch.stack([3 * (1 - t), torch.sin(4 * t) * (1 - t)], dim=1)  # ends at (0, 0)
    final = torch.randn(50, generator=g, dtype=torch.float64)
    path = [final + c @ q.T for c in coords]
    pca = pca_directions(path)
    torch.testing.assert_close(pca.explained_variance.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert pca.explained_variance[0] > pca.explained_variance[1] > 0
    rebuilt = final + pca.coords @ pca.directions
    torch.testing.assert_close(rebuilt, torch.stack(path))
    torch.testing.assert_close(pca.directions @ pca.directions.T, torch.eye(2, dtype=torch.float64))


def test_trajectory_surface_and_plots(digits, tmp_path):
    model = _model(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    checkpoints = [{k: v.clone() for k, v in model.state_dict().items()}]
    for _ in range(8):
        opt.zero_grad()
        F.cross_entropy(model(digits.x_train[:256]), digits.y_train[:256]).backward()
        opt.step()
        checkpoints.append({k: v.clone() for k, v in model.state_dict().items()})
    traj = trajectory(model, checkpoints, F.cross_entropy, digits, resolution=7, n_examples=200)
    assert traj.path.shape == (9, 2)
    np.testing.assert_allclose(traj.path[-1], 0.0, atol=1e-6)
    assert traj.explained_variance.sum() <= 1 + 1e-9
    assert traj.alphas.min() < traj.path[:, 0].min() and traj.betas.max() > traj.path[:, 1].max()
    surf = surface(model, F.cross_entropy, digits, resolution=(6, 5), n_examples=200, generator=0)
    assert surf.loss["train"].shape == surf.loss["test"].shape == (5, 6)
    interp = interpolate(
        model,
        checkpoints[0],
        checkpoints[-1],
        F.cross_entropy,
        digits,
        alphas=np.linspace(-0.5, 1.5, 9),
    )
    for path in (
        plot_surface(surf, tmp_path / "surface.png"),
        plot_interpolation(interp, tmp_path / "interp.png", labels=("init", "final")),
        plot_trajectory(traj, tmp_path / "trajectory.png"),
    ):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_npz_round_trip(tmp_path):
    s = Surface(
        alphas=np.linspace(-1, 1, 3),
        betas=np.linspace(-1, 1, 4),
        loss={"train": np.arange(12.0).reshape(4, 3), "test": np.ones((4, 3))},
        accuracy={"train": np.zeros((4, 3))},
        path=np.ones((5, 2)),
        explained_variance=np.array([0.7, 0.2]),
    )
    back = Surface.load(s.save(tmp_path / "s.npz"))
    for f in ("alphas", "betas", "path", "explained_variance"):
        np.testing.assert_array_equal(getattr(back, f), getattr(s, f))
    assert back.loss.keys() == s.loss.keys() and back.accuracy.keys() == s.accuracy.keys()
    np.testing.assert_array_equal(back.loss["train"], s.loss["train"])
    i = Interpolation(alphas=np.linspace(0, 1, 3), loss={"train": np.ones(3)})
    back_i = Interpolation.load(i.save(tmp_path / "i"))
    np.testing.assert_array_equal(back_i.loss["train"], i.loss["train"])
    assert back_i.accuracy == {}
