"""Gradient health: the classic vanishing / exploding cases on digits, clipping, the activation
statistics on constructed inputs, hook removal, and the plots."""

import dataclasses
import doctest
import io
import math

import matplotlib.image
import pytest
import torch
from torch import nn

import ravine
import ravine.probe.gradients as gradients
from ravine.probe.gradients import (
    GradientMonitor,
    GradientRecord,
    LayerStats,
    activation_stats,
    diagnose,
    history_array,
)
from ravine.problems import ModelConfig, build_model, load_dataset
from ravine.report.gradients import plot_activation_histograms, plot_gradient_flow

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DEPTH = 10  # hidden layers: deep enough for sigmoid'(z) <= 1/4 per layer to vanish


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny matmuls: a thread pool only adds overhead (and stalls badly on a busy machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _train(model, data, *, steps=8, lr=0.1, max_grad_norm=None, batch=128):
    """SGD on digits minibatches, recording after every step; returns the monitor."""
    opt = ravine.optim.SGD(model.parameters(), lr=lr, max_grad_norm=max_grad_norm)
    gen = torch.Generator().manual_seed(0)
    with GradientMonitor(model, optimizer=opt) as monitor:
        for step in range(steps):
            idx = torch.randint(0, len(data.x_train), (batch,), generator=gen)
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            loss.backward()
            opt.step()
            monitor.record(step)
    return monitor


def _kinds(findings):
    return {f.kind for f in findings}


def _sigmoid_mlp(data, **changes):
    config = ModelConfig(
        kind="mlp", depth=DEPTH, width=32, activation="sigmoid", init="default", bias_init="default"
    )
    return build_model(dataclasses.replace(config, **changes), data.input_shape, 10, generator=0)


def _first_over_last(monitor):
    _, _, values = history_array(monitor, "grad_norm")  # (layers, records)
    return [first / last for first, last in zip(values[0], values[-1], strict=True)]


# ----------------------------------------------------------------------------- vanishing


def test_deep_sigmoid_with_torch_default_init_vanishes(digits):
    monitor = _train(_sigmoid_mlp(digits), data=digits)
    # The first layer's gradient is many orders of magnitude below the head's, at every step.
    assert max(_first_over_last(monitor)) < 1e-5
    found = [f for f in diagnose(monitor) if f.kind == "vanishing_gradients"]
    assert len(found) == 1
    finding = found[0]
    assert finding.step == 0  # present from the first step
    assert finding.layer.startswith("hidden")  # a hidden layer, where the decay crosses 1e-3
    assert finding.value < gradients.VANISHING_RATIO * monitor.history[0].layers["head"].grad_norm
    assert "init" in finding.advice and "batch norm" in finding.advice
    assert "exploding_gradients" not in _kinds(diagnose(monitor))


def _xavier_sigmoid(data):
    # The Xavier "sigmoid gain" of Glorot & Bengio's follow-ups (e.g. the Theano tutorial): 4x,
    # since sigmoid'(0) = 1/4 (torch's calculate_gain("sigmoid") = 1 does not compensate it).
    model = _sigmoid_mlp(data, bias_init="zeros")
    ravine.init.apply(model, "xavier_normal", gain=4.0, generator=0)
    return model


@pytest.mark.parametrize(
    "make",
    [_xavier_sigmoid, lambda data: _sigmoid_mlp(data, batch_norm=True)],
    ids=["xavier-sigmoid-gain", "batch-norm"],
)
def test_deep_sigmoid_with_xavier_or_batch_norm_is_healthy(digits, make):
    monitor = _train(make(digits), data=digits)
    assert min(_first_over_last(monitor)) > gradients.VANISHING_RATIO
    kinds = _kinds(diagnose(monitor))
    assert "vanishing_gradients" not in kinds
    assert "exploding_gradients" not in kinds and "exploding_updates" not in kinds


# ----------------------------------------------------------------------------- exploding


def _large_relu(data):
    """A deep ReLU MLP at 3x He's std: activations and gradients grow ~3x per layer."""
    config = ModelConfig(kind="mlp", depth=DEPTH, width=32, activation="relu", bias=False)
    model = build_model(config, data.input_shape, 10, generator=0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                module.weight.mul_(3.0)
    return model


def test_large_init_relu_explodes(digits):
    monitor = _train(_large_relu(digits), data=digits, steps=2, lr=1e-3)
    first = monitor.history[0].layers
    assert first["hidden0.linear"].grad_norm > gradients.EXPLODING_NORM
    found = {f.kind: f for f in diagnose(monitor)}
    assert "exploding_gradients" in found
    assert found["exploding_gradients"].step == 0
    assert "clip" in found["exploding_gradients"].advice
    assert "vanishing_gradients" not in found


def test_unclipped_large_init_steps_explode_the_weights(digits):
    monitor = _train(_large_relu(digits), data=digits, steps=2, lr=0.01)
    found = {f.kind: f for f in diagnose(monitor)}
    assert "exploding_updates" in found
    assert found["exploding_updates"].value > gradients.EXPLODING_UPDATE_RATIO


def test_clipping_keeps_large_init_updates_bounded(digits):
    max_norm, lr = 1.0, 0.01
    monitor = _train(_large_relu(digits), data=digits, steps=8, lr=lr, max_grad_norm=max_norm)
    for record in monitor.history:
        # No biases and plain SGD: the update is -lr * clipped gradient, over all parameters.
        clipped = math.sqrt(sum(s.update_norm**2 for s in record.layers.values())) / lr
        raw = math.sqrt(sum(s.grad_norm**2 for s in record.layers.values()))
        assert raw > max_norm  # clipping was needed at every step ...
        assert clipped <= max_norm + 1e-4  # ... and bounds what the step applies
        assert clipped == pytest.approx(max_norm, rel=1e-3)
    kinds = _kinds(diagnose(monitor))
    assert "exploding_updates" not in kinds
    assert "exploding_gradients" in kinds  # the monitor sees the raw, unclipped gradients


# ----------------------------------------------------------------------------- statistics


def test_dead_relu_fraction_counts_units_zero_for_the_whole_batch():
    a = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0]])  # units 0 and 3 dead
    stats = activation_stats(a, nn.ReLU())
    assert stats["dead_fraction"] == 0.5
    assert stats["saturated_fraction"] is None
    assert stats["act_mean"] == pytest.approx(0.5)
    assert stats["act_std"] == pytest.approx(a.std().item())
    conv = torch.zeros(3, 4, 5, 5)  # (batch, channels, H, W): channels are the units
    conv[1, 2, 4, 4] = 1.0  # one pixel of one example keeps channel 2 alive
    assert activation_stats(conv, nn.ReLU())["dead_fraction"] == 0.75


def test_saturation_fractions_of_sigmoid_and_tanh():
    s = torch.tensor([[0.001, 0.5, 0.995, 0.02]])
    assert activation_stats(s, nn.Sigmoid())["saturated_fraction"] == 0.5
    t = torch.tensor([[-0.999, 0.0, 0.98, 0.995, 0.2]])
    assert activation_stats(t, nn.Tanh())["saturated_fraction"] == pytest.approx(0.4)
    other = activation_stats(t, nn.GELU())
    assert other["dead_fraction"] is None and other["saturated_fraction"] is None


def test_monitor_attributes_activations_to_the_layer_before_them():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2), nn.Sigmoid())
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.copy_(torch.tensor([-1.0, 1.0, -2.0, 2.0]))  # units 0 and 2 always dead
        model[2].weight.zero_()
        model[2].bias.copy_(torch.tensor([10.0, 0.0]))  # output 0 saturated, output 1 at 0.5
    with GradientMonitor(model) as monitor:
        model(torch.randn(8, 3)).sum().backward()
        record = monitor.record(0)
    first, second = record.layers["0"], record.layers["2"]
    assert (first.activation, first.dead_fraction, first.saturated_fraction) == ("ReLU", 0.5, None)
    assert (second.activation, second.saturated_fraction) == ("Sigmoid", 0.5)
    assert first.grad_norm == pytest.approx(model[0].weight.grad.norm().item())
    assert first.update_norm == 0.0  # no step was taken
    assert set(monitor.activation_samples) == {"0", "2"}


def test_update_is_the_last_optimizer_step_when_the_optimizer_is_watched():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 5), nn.Tanh(), nn.Linear(5, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = GradientMonitor(model, optimizer=opt)
    for _ in range(3):  # record only every third step
        opt.zero_grad()
        model(torch.randn(4, 5)).square().mean().backward()
        before = model[0].weight.detach().clone()
        opt.step()
    record = monitor.record(2)
    stats = record.layers["0"]
    assert stats.update_norm == pytest.approx(0.1 * stats.grad_norm, rel=1e-5)
    assert stats.update_ratio == pytest.approx(stats.update_norm / before.norm().item(), rel=1e-5)
    monitor.remove()


def test_without_optimizer_update_is_the_change_since_the_previous_record():
    model = nn.Sequential(nn.Linear(2, 2))
    with GradientMonitor(model) as monitor:
        with torch.no_grad():
            model[0].weight.add_(torch.tensor([[3.0, 0.0], [0.0, 4.0]]))
        assert monitor.record(0).layers["0"].update_norm == pytest.approx(5.0)
        assert monitor.record(1).layers["0"].update_norm == 0.0
        assert monitor.record(1).layers["0"].grad_norm is None  # no backward yet


def test_hooks_are_removed_on_exit():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with GradientMonitor(model, optimizer=opt) as monitor:
        assert any(m._forward_hooks for m in model.modules())
        model(torch.randn(2, 3))
    assert not any(m._forward_hooks for m in model.modules())
    assert not opt._optimizer_step_pre_hooks
    seen = {k: v.clone() for k, v in monitor.activation_samples.items()}
    model(torch.randn(2, 3) + 100.0)  # no longer observed
    assert all(torch.equal(seen[k], monitor.activation_samples[k]) for k in seen)
    assert len(monitor.history) == 0


def test_monitor_rejects_models_without_layers():
    with pytest.raises(ValueError, match="no Linear or convolution"):
        GradientMonitor(nn.Sequential(nn.ReLU()))
    with pytest.raises(TypeError, match=r"nn\.Module"):
        GradientMonitor("model")


# ----------------------------------------------------------------------------- diagnose rules


def _record(step, grads, ratio=1e-3):
    layers = {
        f"l{i}": LayerStats(g, 1.0, ratio, ratio, None, None, None, None, None)
        for i, g in enumerate(grads)
    }
    return GradientRecord(step, layers)


def test_diagnose_needs_a_majority_of_records_but_not_for_nonfinite():
    healthy, vanishing = [0.5, 0.5, 1.0], [1e-5, 0.1, 1.0]
    one_dip = [_record(0, vanishing), _record(1, healthy), _record(2, healthy)]
    assert diagnose(one_dip) == []
    mostly = [_record(0, healthy), _record(1, vanishing), _record(2, vanishing)]
    (finding,) = diagnose(mostly)
    assert (finding.kind, finding.layer, finding.step) == ("vanishing_gradients", "l0", 1)
    nonfinite = [_record(0, healthy), _record(1, [math.inf, 1.0, 1.0]), _record(2, healthy)]
    assert _kinds(diagnose(nonfinite)) == {"exploding_gradients"}
    growth = [_record(s, healthy) for s in range(3)]
    growth += [_record(s, [800.0, 800.0, 1.0]) for s in range(3, 7)]  # below 1e3, but 1600x
    (finding,) = diagnose(growth)
    assert (finding.kind, finding.layer, finding.step) == ("exploding_gradients", "l0", 3)
    assert "grew" in finding.message
    jump = [_record(0, healthy), _record(1, healthy, ratio=3.0), _record(2, healthy)]
    (finding,) = diagnose(jump)
    assert (finding.kind, finding.step, finding.value) == ("exploding_updates", 1, 3.0)
    assert diagnose([]) == []


# ----------------------------------------------------------------------------- plots


def _assert_png(path):
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
    assert image[..., :3].std() > 0.05  # not a blank canvas


def test_plots_write_valid_pngs(tmp_path, digits):
    monitor = _train(_sigmoid_mlp(digits), data=digits, steps=4)
    flow = plot_gradient_flow(monitor, tmp_path / "flow.png")
    hist = plot_activation_histograms(monitor, tmp_path / "sub" / "acts.png")
    assert flow == tmp_path / "flow.png" and hist == tmp_path / "sub" / "acts.png"
    _assert_png(flow)
    _assert_png(hist)
    assert not list(tmp_path.rglob("*.tmp"))  # atomic save leaves nothing behind
    with pytest.raises(ValueError, match="empty"):
        plot_gradient_flow([], tmp_path / "empty.png")
    with pytest.raises(ValueError, match="no activation samples"):
        plot_activation_histograms({}, tmp_path / "empty.png")


def test_module_doctests():
    assert doctest.testmod(gradients, raise_on_error=False).failed == 0


def test_gradient_health_state_round_trips_exactly_through_a_checkpoint():
    from ravine.probe.gradients import GradientHealthCallback, GradientRecord, LayerStats

    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    health = GradientHealthCallback()
    health.attach(model, optimizer)
    full = LayerStats(1.5, 2.0, 0.1, 0.05, "ReLU", 0.3, 0.7, 0.25, None)
    diverged = LayerStats(math.nan, math.inf, None, None, None, None, None, None, None)
    health.monitor.history = [
        GradientRecord(step=1, layers={"0": full, "2": diverged}),
        GradientRecord(step=2, layers={"0": diverged}),  # a layer missing from a record
    ]
    health.state_dict()  # an earlier checkpoint: the next one converts only what is new
    health.monitor.history.append(GradientRecord(step=3, layers={"2": full}))
    buffer = io.BytesIO()
    torch.save(health.state_dict(), buffer)
    buffer.seek(0)
    again = GradientHealthCallback()
    again.attach(model, optimizer)
    again.load_state_dict(torch.load(buffer, weights_only=True))
    assert [r.step for r in again.monitor.history] == [1, 2, 3]
    assert list(again.monitor.history[1].layers) == ["0"]
    for before, after in zip(health.monitor.history, again.monitor.history, strict=True):
        for name, stats in before.layers.items():
            for field, value in vars(stats).items():
                restored = getattr(after.layers[name], field)
                if isinstance(value, float) and math.isnan(value):
                    assert math.isnan(restored)  # NaN stays NaN, not None
                else:
                    assert restored == value, (name, field)
