"""Devices and precision: the fp32 loop is bitwise a hand-written PyTorch loop, bf16 / fp16
train under autocast with float32 parameters, nothing is read back to the host per update,
a step refused on the device still stops the run, and device names are checked."""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from ravine.optim import NonFiniteGradientError, make_optimizer
from ravine.problems import build_model
from ravine.train import ConfigError, TrainConfig, train
from ravine.train import loop as loop_module
from ravine.train.build import model_config, prepare_data, seeds
from ravine.train.devices import check_device_name, resolve_device
from ravine.train.trainer import Member, Trainer

FAST = TrainConfig(epochs=2, batch_size=128, optimizer_args={"lr": 3e-3})


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Small tensors: one intra-op thread is faster on a shared machine, for both sides.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _hand_written(config: TrainConfig) -> dict[str, torch.Tensor]:
    """The textbook loop on the run's data, initialization and data order."""
    splits = prepare_data(config)
    model = build_model(model_config(config), (64,), 10, generator=seeds(config.seed)["init"])
    opt = make_optimizer(config.optimizer, model.parameters(), **config.optimizer_args)
    order_gen = torch.Generator().manual_seed(seeds(config.seed)["data"])
    x, y, n = splits.x_train, splits.y_train, len(splits.x_train)
    for _ in range(config.epochs):
        order = torch.randperm(n, generator=order_gen)
        for start in range(0, n, config.batch_size):
            index = order[start : start + config.batch_size]
            opt.zero_grad()
            F.cross_entropy(model(x[index]), y[index]).backward()
            opt.step()
    return model.state_dict()


def test_fp32_is_bitwise_the_hand_written_loop():
    result = train(FAST, None)
    expected = _hand_written(FAST)
    for key, value in expected.items():
        assert torch.equal(result.model.state_dict()[key], value), key


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_with_float32_parameters(precision):
    config = dataclasses.replace(FAST, precision=precision, epochs=3)
    seen = []
    splits = prepare_data(config)
    trainer = Trainer(config, splits, [Member(0)])
    head = trainer.net.model.head
    head.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    losses = [
        float(trainer.run_epoch(splits.x_train, splits.y_train)["loss_sum"]) for _ in range(3)
    ]
    assert seen[0] == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert losses[2] < losses[1] < losses[0]
    assert all(p.dtype == torch.float32 for p in trainer.net.model.parameters())
    state = trainer.optimizer.state[next(iter(trainer.net.model.parameters()))]
    assert all(
        v.dtype == torch.float32 for v in state.values() if v.is_floating_point() and v.dim()
    )
    assert (trainer.scaler is not None) == (precision == "fp16")
    fp32 = train(FAST, None).model.state_dict()["head.weight"]
    low = trainer.net.model.state_dict()["head.weight"]
    assert not torch.equal(fp32, low)  # really another computation


def test_precision_is_part_of_the_run(tmp_path):
    train(FAST, tmp_path, stop_after_epoch=1)
    with pytest.raises(ConfigError, match="precision"):
        train(dataclasses.replace(FAST, precision="bf16"), tmp_path)
    with pytest.raises(ConfigError, match="fp16 with several members"):
        train(dataclasses.replace(FAST, precision="fp16", restarts=2), None)


_READS = ("item", "tolist", "__float__", "__int__", "__index__", "__bool__", "numpy")


@pytest.fixture
def train_reads(monkeypatch):
    """Counts every read of a tensor's value back to the host made by ravine.train's code
    (the optimizers' own reads are of host tensors by design: ravine.optim's tests)."""
    counts: dict[str, int] = {}
    for name in _READS:
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _name=name, _original=original, **kwargs):
            frame = sys._getframe(1)
            while frame is not None and "ravine" not in frame.f_code.co_filename:
                frame = frame.f_back  # torch's own frames, up to the first of ravine's
            if frame is not None and f"ravine{os.sep}train{os.sep}" in frame.f_code.co_filename:
                where = f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno} {_name}"
                counts[where] = counts.get(where, 0) + 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    return counts


@pytest.mark.parametrize("members", [1, 3])
def test_an_epoch_reads_nothing_back_to_the_host(members, train_reads):
    # Gradient noise, a schedule, per-member hyperparameters: every per-update branch.
    config = dataclasses.replace(FAST, epochs=1, grad_noise=1e-3, schedule="cosine")
    splits = prepare_data(config)
    lrs = [1e-3, 2e-3, 3e-3][:members]
    trainer = Trainer(config, splits, [Member(k, {"lr": lr}) for k, lr in enumerate(lrs)])
    # The optimizers' accelerator path (commit through torch.where, raise a step later),
    # which on the CPU they take only when told.
    trainer.optimizer._force_guarded = True
    train_reads.clear()
    stats = trainer.run_epoch(splits.x_train, splits.y_train)
    assert trainer.step == 12
    reads = dict(train_reads)
    # Per-member lrs are host tensors, copied per update and read once, at the epoch's end.
    if members > 1:
        assert sum(reads.values()) == 12 and all("__float__" in k for k in reads), reads
    else:
        assert reads == {}
    assert stats["loss_sum"].shape == stats["correct"].shape == (members,)


def test_progress_reads_the_loss_every_k_updates():
    events = []
    train(dataclasses.replace(FAST, epochs=1), None, on_progress=events.append, progress_every=5)
    steps = [e["step"] for e in events if "loss" in e]
    assert steps == [5, 10, 12]  # and the last update, so the bar ends full
    with pytest.raises(ConfigError, match="progress_every must be an integer >= 1, got 0"):
        train(FAST, None, progress_every=0)


class _Guarded(Trainer):
    """A trainer whose optimizer takes the accelerator's path: a NaN step is refused on the
    device and raised one step later, or at the end of the epoch."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.optimizer._force_guarded = True


def test_a_step_refused_on_the_device_still_stops_the_run(tmp_path, monkeypatch):
    monkeypatch.setattr(loop_module, "Trainer", _Guarded)
    config = TrainConfig(
        dataset="teacher_student",
        model="mlp",
        epochs=3,
        optimizer="sgd",
        optimizer_args={"lr": 10.0},
    )
    with pytest.raises(NonFiniteGradientError, match="refused on the device"):
        train(config, tmp_path)
    assert not (tmp_path / "model.pt").exists()
    # On the last update of an epoch there is no next step: the epoch's end raises.
    splits = prepare_data(config)
    trainer = _Guarded(config, splits, [Member(0)])
    with torch.no_grad():
        trainer.net.model.head.weight.fill_(math.nan)
    trainer.total = 1
    trainer.run_epoch(splits.x_train, splits.y_train)
    with pytest.raises(NonFiniteGradientError):
        trainer.check_finite()


def test_compile_runs_the_model_through_torch_compile(monkeypatch):
    compiled = []
    original = torch.nn.Module.compile

    def eager_compile(self, *args, **kwargs):
        compiled.append(type(self).__name__)
        original(self, backend="eager")  # dynamo traces the model; no C++ toolchain needed

    monkeypatch.setattr(torch.nn.Module, "compile", eager_compile)
    config = dataclasses.replace(FAST, epochs=1)
    result = train(config, None, compile=True)
    assert compiled == ["Sequential"]
    plain = train(config, None)
    for key, value in plain.model.state_dict().items():
        torch.testing.assert_close(result.model.state_dict()[key], value, rtol=1e-5, atol=1e-6)


def test_device_names_are_checked():
    assert check_device_name(" CUDA:1 ") == "cuda:1"
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(
        ValueError, match=r"device must be one of auto, cpu, cuda, cuda:N, mps; got 'gpu'"
    ):
        check_device_name("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(
            ConfigError, match=r"device 'cuda': CUDA is not available.*available: cpu"
        ):
            train(FAST, None, device="cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_the_cli_refuses_an_absent_device_in_one_line(tmp_path, capsys):
    from ravine.cli.main import main

    for argv, expected in (
        (["--device", "cuda"], "error: --device 'cuda': CUDA is not available"),
        (["--device", "tpu"], "error: --device must be one of auto, cpu, cuda, cuda:N, mps"),
        (["--precision", "fp8"], "error: precision must be one of fp32, bf16, fp16"),
    ):
        assert main(["train", *argv, "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(expected) and err.count("\n") == 1, err
    assert not (tmp_path / "x").exists()
    # A misspelt name is refused before torch is imported.
    probe = (
        "import sys; from ravine.cli.main import main; "
        "code = main(['train', '--device', 'gpu']); print(code, 'torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.stdout.split() == ["2", "False"], done.stderr


def test_the_cli_trains_in_the_precision_it_is_given(tmp_path, capsys):
    from ravine.cli.main import main
    from ravine.train.config import tomllib

    out = tmp_path / "bf16"
    argv = ["train", "--epochs", "1", "--batch-size", "256", "--device", "cpu"]
    assert main([*argv, "--precision", "bf16", "--out", str(out)]) == 0, capsys.readouterr().err
    assert tomllib.loads((out / "config.toml").read_text())["training"]["precision"] == "bf16"
    # The same folder resumes only in bf16: another precision is another run.
    assert main([*argv, "--precision", "fp16", "--out", str(out)]) == 2
    assert "training.precision = 'bf16' there, 'fp16' here" in capsys.readouterr().err
