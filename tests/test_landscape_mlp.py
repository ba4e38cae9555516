"""The Linear/activation fast path of evaluate_points against a point-by-point loop (float64)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ravine.probe.landscape import evaluate_points, random_directions


def test_mlp_path_equals_loop_and_general_path():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(6, 5, bias=False),
        nn.Tanh(),
        nn.Dropout(0.5),  # the identity in eval mode, which evaluation must switch to
        nn.Sequential(nn.Linear(5, 4), nn.ReLU()),
        nn.Linear(4, 3),
    ).double()
    model.train()
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(20, 6, generator=gen).double(), torch.randint(0, 3, (20,), generator=gen)
    base = {k: p.detach().clone() for k, p in model.named_parameters()}
    d1, d2 = random_directions(model, ignore="none", generator=2)
    coeffs = torch.randn(7, 2, generator=gen).double()
    fast = evaluate_points(model, F.cross_entropy, x, y, base, [d1, d2], coeffs, chunk_size=3)
    general = evaluate_points(
        model, F.cross_entropy, x, y, base, [d1, d2], coeffs, fold_first_linear=False
    )
    assert model.training  # restored
    torch.testing.assert_close(fast[0], general[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(fast[1], general[1])
    ref = model.eval()
    with torch.no_grad():
        for n, (a, b) in enumerate(coeffs.tolist()):
            params = {k: base[k] + a * d1[k] + b * d2[k] for k in base}
            out = torch.func.functional_call(ref, params, (x,))
            assert abs(float(fast[0][n] - F.cross_entropy(out, y))) < 1e-12
            assert abs(float(fast[1][n]) - float((out.argmax(1) == y).double().mean())) < 1e-6


def test_mlp_path_regression_output_has_no_accuracy():
    model = nn.Sequential(nn.Linear(3, 4), nn.GELU(), nn.Linear(4, 1)).double()
    x = torch.randn(10, 3, dtype=torch.float64)
    y = torch.randn(10, 1, dtype=torch.float64)
    base = {k: p.detach() for k, p in model.named_parameters()}
    d = {k: torch.ones_like(p) for k, p in base.items()}
    loss, acc = evaluate_points(model, F.mse_loss, x, y, base, [d], torch.tensor([[0.0], [0.5]]))
    assert acc is None
    with torch.no_grad():
        moved = {k: base[k] + 0.5 for k in base}
        want = F.mse_loss(torch.func.functional_call(model, moved, (x,)), y)
    assert abs(float(loss[1] - want)) < 1e-12
    with torch.no_grad():
        assert abs(float(loss[0] - F.mse_loss(model(x), y))) < 1e-12, (
            loss,
            F.mse_loss(model(x), y),
        )
