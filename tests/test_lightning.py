"""The Lightning callback: a real ``Trainer.fit`` on the CPU records ravine's gradient health
and curvature, logs them to the Trainer's logger and writes ravine's JSON files; the records
match a hand-written loop's gradients and a dense Hessian."""

from __future__ import annotations

import csv
import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pl = pytest.importorskip("lightning.pytorch")

from ravine.integrations.lightning import RavineCallback  # noqa: E402

pytestmark = [
    # Lightning's advice for real workloads (more dataloader workers, a GPU it could use...).
    pytest.mark.filterwarnings("ignore::lightning.fabric.utilities.warnings.PossibleUserWarning"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers:UserWarning"),
    # Lightning 2.6 on torch 2.13: its pytree helper uses a torch API deprecated since.
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning"),
]


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


def _data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 4, generator=g)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()


class Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = _net()

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def _fit(tmp_path, callback, epochs=2):
    x, y = _data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=pl.loggers.CSVLogger(tmp_path, name="logs"),
        callbacks=[callback],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        log_every_n_steps=1,
    )
    module = Tiny()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Lightning's set-up notices
        trainer.fit(module, loader)
    return trainer, module


def _reference():
    """The same fit as a hand-written loop: each step's first-layer gradient norm, and the
    weights after step 4 (where curvature is recorded)."""
    net, (x, y) = _net(), _data()
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    norms, at_4 = [], None
    for _ in range(2):
        for start in range(0, 64, 16):
            opt.zero_grad()
            F.cross_entropy(net(x[start : start + 16]), y[start : start + 16]).backward()
            opt.step()
            norms.append(float(net[0].weight.grad.norm()))
            if len(norms) == 4:
                at_4 = [p.detach().clone() for p in net.parameters()]
    return norms, at_4


def test_a_lightning_fit_records_gradient_health_and_curvature(tmp_path):
    callback = RavineCallback(curvature_every=4, loss_fn=F.cross_entropy, out_dir=tmp_path / "r")
    trainer, _ = _fit(tmp_path, callback)
    norms, at_4 = _reference()

    history = callback.health.monitor.history
    assert [r.step for r in history] == list(range(1, 9))
    recorded = [r.layers["net.0"].grad_norm for r in history]
    assert recorded == pytest.approx(norms, rel=1e-5)
    assert all(r.layers["net.0"].update_ratio > 0 for r in history)

    # Curvature at step 4 on the first batch: the dense Hessian's extreme eigenvalues.
    assert [r.step for r in callback.tracker.records] == [4, 8]
    x, y = _data()
    net = _net()
    shapes = [p.shape for p in net.parameters()]
    flat0 = torch.cat([p.flatten() for p in at_4]).double()

    def loss_of(flat):
        params, i = {}, 0
        for (name, _), shape in zip(net.named_parameters(), shapes, strict=True):
            params[name] = flat[i : i + shape.numel()].view(shape)
            i += shape.numel()
        out = torch.func.functional_call(net.double(), params, (x[:16].double(),))
        return F.cross_entropy(out, y[:16])

    eigenvalues = torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss_of, flat0))
    record = callback.tracker.records[0]
    assert record.top == pytest.approx(float(eigenvalues[-1]), rel=1e-4)
    assert record.bottom == pytest.approx(float(eigenvalues[0]), rel=1e-3, abs=1e-6)

    # ravine's files, and the Trainer's logger got every record.
    assert json.loads((tmp_path / "r" / "gradient-health.json").read_text()) == [
        {"kind": f.kind, "layer": f.layer, "step": f.step, "message": f.message, "advice": f.advice}
        for f in callback.findings()
    ]
    lines = (tmp_path / "r" / "curvature.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [4, 8]
    with open(f"{trainer.logger.log_dir}/metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    logged = [float(r["ravine/grad_norm/net.0"]) for r in rows if r.get("ravine/grad_norm/net.0")]
    assert logged == pytest.approx(norms, rel=1e-5)
    assert [int(r["step"]) for r in rows if r.get("ravine/curvature_top")] == [4, 8]


def _reference_signals(every: int):
    """TrainingSignals on the hand-written loop: the records the callback must match."""
    from ravine.probe.signals import TrainingSignals

    net, (x, y) = _net(), _data()
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    signals = TrainingSignals(F.cross_entropy, (x[:16], y[:16]), every=every, batch_size=16)
    signals.attach(net, opt)
    step = 0
    for _ in range(2):
        for start in range(0, 64, 16):
            opt.zero_grad()
            F.cross_entropy(net(x[start : start + 16]), y[start : start + 16]).backward()
            opt.step()
            step += 1
            signals(net, step)
    return signals.records


def test_a_lightning_fit_records_training_signals(tmp_path):
    callback = RavineCallback(
        gradient_health=False, signals_every=2, loss_fn=F.cross_entropy, out_dir=tmp_path / "r"
    )
    trainer, _ = _fit(tmp_path, callback)
    reference = _reference_signals(2)
    records = callback.signals.records
    assert [r["step"] for r in records] == [r["step"] for r in reference] == [2, 4, 6, 8]
    for got, want in zip(records, reference, strict=True):
        for key in ("loss", "alpha", "distance", "update_size", "noise_trace", "norm_test"):
            assert got[key] == pytest.approx(want[key], rel=1e-5), (got["step"], key)
    assert callback.signals.batch_size == 16  # the training batch's size
    lines = (tmp_path / "r" / "signals.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [2, 4, 6, 8]
    assert (tmp_path / "r" / "signals.png").is_file()
    assert json.loads((tmp_path / "r" / "signals.json").read_text())["every"] == 2
    with open(f"{trainer.logger.log_dir}/metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    logged = [(int(r["step"]), float(r["ravine/signals/alpha"])) for r in rows
              if r.get("ravine/signals/alpha")]  # fmt: skip
    assert logged == pytest.approx([(r["step"], r["alpha"]) for r in reference], rel=1e-5)


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="curvature_every > 0 needs loss_fn"):
        RavineCallback(curvature_every=5)
    with pytest.raises(ValueError, match="curvature_every must be an integer >= 0, got -1"):
        RavineCallback(curvature_every=-1, loss_fn=F.cross_entropy)
    with pytest.raises(ValueError, match="signals_every > 0 needs loss_fn"):
        RavineCallback(signals_every=5)


def test_a_resumed_fit_keeps_what_was_recorded(tmp_path):
    def make():
        return RavineCallback(
            curvature_every=4, signals_every=3, loss_fn=F.cross_entropy, out_dir=tmp_path / "r"
        )

    first = make()
    trainer, _ = _fit(tmp_path, first, epochs=1)
    trainer.save_checkpoint(tmp_path / "one.ckpt")
    second = make()
    x, y = _data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    resumed = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        callbacks=[second],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        resumed.fit(Tiny(), loader, ckpt_path=tmp_path / "one.ckpt")
    assert [r.step for r in second.health.monitor.history] == list(range(1, 9))
    assert [r.step for r in second.tracker.records] == [4, 8]
    norms, _ = _reference()
    recorded = [r.layers["net.0"].grad_norm for r in second.health.monitor.history]
    assert recorded == pytest.approx(norms, rel=1e-5)  # the fit went on where it stopped
    # signals every 3: step 3 before the checkpoint (after step 4), 6 after it; the weights
    # kept for step 6's alpha were taken at step 5, after the resume
    reference = _reference_signals(3)
    assert [r["step"] for r in second.signals.records] == [r["step"] for r in reference] == [3, 6]
    for got, want in zip(second.signals.records, reference, strict=True):
        for key in ("alpha", "distance", "update_size"):
            assert got[key] == pytest.approx(want[key], rel=1e-5), (got["step"], key)
