"""Members: N networks of one run as one batched computation. Member k (restart k: seed + k, or a
member with its own hyperparameters) ends with the parameters of the one-network run with its
seed and hyperparameters.

Tolerances. Both sides run in float32 and do the same operations, but a batched matmul (or a
vmapped one) sums in another order than a single one, so each update differs by float32
rounding (~1e-7 relative); over these runs' 24 updates the largest deviation measured is
8e-7 (either path, either optimizer). The tests allow rtol 1e-4 / atol 1e-5: more than ten
times that, and still far below any real difference (a wrong seed, data order or clipping
moves parameters by 1e-2 or more). What no tolerance can absorb is rounding that the
optimizer *amplifies*: batch norm makes the loss exactly flat along some directions (a bias
before the norm; the weights of an input feature that is constant within a mini-batch, as
the rarely-inked border pixels of the digits are in most batches), so the gradient there is
pure rounding noise (~1e-9), and Adam with eps=1e-8 turns it into lr-sized steps whose sign
is whichever way the rounding fell. That is chaos, not a bug: the same sequential run on 1
and on 2 threads ends 1e-2 apart in that setting. The Adam + batch-norm test therefore leaves
out the redundant bias and uses eps=1e-5, which keeps such noise below 1e-4 of a step;
``test_equivalence_in_float64`` runs the default Adam (eps=1e-8, biases) in float64, where
rounding is ~1e-16 and restart k matches the sequential run to 1e-9.

Dropout is left out of the equivalence tests: under vmap (and in the bmm path) one call
draws the masks of all restarts at once, which cannot reproduce N sequential runs' draws.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import statistics

import pytest
import torch

from ravine.optim import OPTIMIZERS, make_optimizer
from ravine.problems import build_model
from ravine.train import ConfigError, Member, TrainConfig, load_checkpoint, train
from ravine.train import loop as loop_module
from ravine.train.build import model_config, prepare_data, seeds
from ravine.train.stacked import per_member_loss
from ravine.train.trainer import Trainer, restart_members

RTOL, ATOL = 1e-4, 1e-5
FAST = {"epochs": 2, "batch_size": 128}
N = 3

ADAM_BN = TrainConfig(
    **FAST,
    restarts=N,
    seed=5,
    model_args={"batch_norm": True, "bias": False},
    optimizer="adam",
    optimizer_args={"lr": 1e-2, "eps": 1e-5},
    schedule="onecycle",  # warm-up then annealing, stepped once per update
)
SGD_CLIP = TrainConfig(
    **FAST,
    restarts=N,
    model_args={"batch_norm": True},
    optimizer="momentum",
    optimizer_args={"lr": 0.05, "max_grad_norm": 0.5, "clip_value": 0.05},
    schedule="cosine",
    grad_noise=1e-4,
)
SHARED = dataclasses.replace(ADAM_BN, restarts=2, shared_data_order=True, grad_noise=1e-4)


def _sequential(config: TrainConfig, k: int, tmp_path) -> dict[str, torch.Tensor]:
    single = dataclasses.replace(config, restarts=1, seed=config.seed + k)
    return train(single, tmp_path / f"seq-{config.seed + k}").model.state_dict()


def _assert_close_state(expected: dict, actual: dict, rtol=RTOL, atol=ATOL) -> None:
    assert expected.keys() == actual.keys()
    for key, value in expected.items():
        torch.testing.assert_close(
            actual[key].double(),
            value.double(),
            rtol=rtol,
            atol=atol,
            msg=lambda m, k=key: f"{k}: {m}",
        )


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # These tensors are small: a second intra-op thread gains little, and on a shared machine
    # its barrier waits can make a test 10x slower. Both sides of every comparison run here.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _no_plots(request, monkeypatch):
    # Figures cost more than these short runs; test_outputs_of_a_restarts_run draws its own.
    if "draw_plots" not in request.fixturenames:
        _skip_plots(monkeypatch)


@pytest.fixture
def draw_plots():
    """Requested by a test that wants the real figures."""


def _skip_plots(monkeypatch):
    # The trainer draws no figures any more (ravine.report does, above it): nothing to skip.
    pass


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """Sequential runs, computed once for both batched paths."""
    tmp = tmp_path_factory.mktemp("sequential")
    with pytest.MonkeyPatch.context() as monkeypatch:
        _skip_plots(monkeypatch)
        runs = {
            name: [_sequential(config, k, tmp) for k in range(config.restarts)]
            for name, config in (("adam_bn", ADAM_BN), ("sgd_clip", SGD_CLIP))
        }
        # Shared data order: restart k = train() with restart 0's seed (data order, noise)
        # whose initial weights are replaced by seed + k's, through `pretrained`.
        mconfig = model_config(SHARED)
        runs["shared"] = []
        for k in range(SHARED.restarts):
            init = build_model(mconfig, (64,), 10, generator=seeds(SHARED.seed + k)["init"])
            path = tmp / f"init{k}.pt"
            torch.save(init.state_dict(), path)
            single = dataclasses.replace(SHARED, restarts=1, pretrained=str(path))
            runs["shared"].append(train(single, tmp / f"shared{k}").model.state_dict())
    return runs


# --------------------------------------------------------------------------------------------
# The key property: restart k == sequential train() with seed + k
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["bmm", "vmap"])
@pytest.mark.parametrize("name", ["adam_bn", "sgd_clip"])
def test_restart_k_is_the_sequential_run_with_seed_plus_k(name, method, references, tmp_path):
    config = {"adam_bn": ADAM_BN, "sgd_clip": SGD_CLIP}[name]
    result = train(config, tmp_path, method=method)
    assert result.method == method
    assert result.diverged == []
    for k in range(config.restarts):
        _assert_close_state(references[name][k], result.state_dict(k))
    # The restarts really are different networks.
    assert not torch.allclose(result.params["head.weight"][0], result.params["head.weight"][1])


def test_the_sgd_case_really_clips():
    # The SGD case must exercise the clipping it claims to test: at init every restart's
    # gradient norm is well above max_grad_norm.
    splits = prepare_data(SGD_CLIP)
    trainer = Trainer(SGD_CLIP, splits, restart_members(SGD_CLIP))
    net = trainer.net
    x, y = splits.x_train[:128], splits.y_train[:128]
    output, _ = net.forward(net.params, net.buffers, x, training=True, shared=True)
    per_member_loss(output, y.expand(N, -1), "classification").sum().backward()
    rows = [p.grad.flatten(1) for p in net.params.values()]
    norms = torch.linalg.vector_norm(torch.cat(rows, dim=1), dim=1)
    assert bool((norms > 2 * SGD_CLIP.optimizer_args["max_grad_norm"]).all())


@pytest.mark.parametrize("method", ["bmm", "vmap"])
def test_shared_data_order_only_init_differs(method, references, tmp_path):
    result = train(SHARED, tmp_path, method=method)
    for k in range(SHARED.restarts):
        _assert_close_state(references["shared"][k], result.state_dict(k))


@pytest.fixture
def float64(monkeypatch):
    """Run a test in float64, data included: rounding (~1e-16) is then far below anything an
    optimizer can amplify, so batched and one-network runs must agree to ~1e-9."""
    original = loop_module.prepare_data

    def prepare_float64(config):
        splits = dataclasses.replace(original(config))  # (the cached one stays float32)
        for name in ("x_train", "x_val", "x_test"):
            setattr(splits, name, getattr(splits, name).double())
        return splits

    monkeypatch.setattr(loop_module, "prepare_data", prepare_float64)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(default)


def test_equivalence_in_float64(float64, tmp_path):
    # Default Adam (eps=1e-8) with the pre-norm bias: chaotic in float32 (see the module doc),
    # equal to ~1e-9 in float64 — the batched computation is the sequential one.
    config = TrainConfig(
        epochs=1, batch_size=128, restarts=2, model_args={"batch_norm": True}, schedule="cosine"
    )
    config = dataclasses.replace(config, optimizer_args={"lr": 1e-2})
    result = train(config, tmp_path / "batched")
    assert result.params["head.weight"].dtype == torch.float64
    for k in range(2):
        _assert_close_state(_sequential(config, k, tmp_path), result.state_dict(k), 1e-9, 1e-9)


def test_a_cnn_takes_the_vmap_path_and_matches(tmp_path):
    config = TrainConfig(
        model="digits_cnn", epochs=1, max_steps=4, batch_size=128, restarts=2, seed=3
    )
    result = train(config, tmp_path / "batched")
    assert result.method == "vmap"
    for k in range(2):
        _assert_close_state(_sequential(config, k, tmp_path), result.state_dict(k))
    with pytest.raises(ConfigError, match="bmm"):
        train(config, tmp_path / "bmm", method="bmm")


@pytest.mark.parametrize("method", ["bmm", "vmap"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_dropout_masks_are_drawn_per_restart(method, dropout, tmp_path):
    # Same initial weights (pretrained) and the same mini-batches: without dropout the restarts
    # stay identical, with it each restart draws its own masks and they part.
    init = build_model(model_config(TrainConfig()), (64,), 10, generator=0)
    torch.save(init.state_dict(), tmp_path / "init.pt")
    config = TrainConfig(
        restarts=3,
        shared_data_order=True,
        max_steps=3,
        pretrained=str(tmp_path / "init.pt"),
        model_args={"dropout": dropout},
    )
    splits = prepare_data(config)
    trainer = Trainer(config, splits, restart_members(config), method=method)
    trainer.run_epoch(splits.x_train, splits.y_train)
    weight = trainer.net.params["head.weight"].detach()
    assert torch.equal(weight[0], weight[1]) == (dropout == 0)
    assert torch.equal(weight[1], weight[2]) == (dropout == 0)


# --------------------------------------------------------------------------------------------
# One optimizer over stacked tensors = one optimizer per restart
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_optimizer_treats_rows_independently(name):
    # The registry drives this test: a new optimizer is checked by being registered. float64,
    # 4 steps, weight decay on, gradients of very different scale per row.
    generator = torch.Generator().manual_seed(0)
    shapes = [(3, 4, 5), (3, 5), (3, 0)]  # a zero-size parameter too
    stacked = [torch.randn(s, generator=generator, dtype=torch.float64) for s in shapes]
    rows = [[t[k].clone() for t in stacked] for k in range(3)]
    for t in stacked + [p for row in rows for p in row]:
        t.requires_grad_()
    args = {"lr": 0.1, "weight_decay": 0.01}
    batched = make_optimizer(name, stacked, **args)
    singles = [make_optimizer(name, row, **args) for row in rows]
    for _ in range(4):
        grads = [torch.randn(s, generator=generator, dtype=torch.float64) for s in shapes]
        for g in grads:
            g *= torch.tensor([1e-3, 1.0, 1e3], dtype=torch.float64).view(-1, *[1] * (g.dim() - 1))
        for t, g in zip(stacked, grads, strict=True):
            t.grad = g.clone()
        for k, row in enumerate(rows):
            for p, g in zip(row, grads, strict=True):
                p.grad = g[k].clone()
        batched.step()
        for opt in singles:
            opt.step()
    for k, row in enumerate(rows):
        for t, p in zip(stacked, row, strict=True):
            torch.testing.assert_close(t[k], p, rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------------------------
# Divergence stays in its rows
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["bmm", "vmap"])
def test_a_diverging_member_stops_where_its_own_run_would_and_touches_no_other(method):
    # Its one-network run would raise at its first NaN gradient, leaving its parameters as they
    # were: the member's rows are frozen there (refused by the optimizer, per member, every
    # step after), while the other members train on exactly as without it.
    config = dataclasses.replace(SGD_CLIP, epochs=1, max_steps=5)
    splits = prepare_data(config)
    clean = Trainer(config, splits, restart_members(config), method=method)
    poisoned = Trainer(config, splits, restart_members(config), method=method)
    with torch.no_grad():
        poisoned.net.params["hidden0.linear.weight"][1, 0, 0] = math.nan
    initial = {k: v.detach().clone() for k, v in poisoned.net.params.items()}
    for trainer in (clean, poisoned):
        trainer.run_epoch(splits.x_train, splits.y_train)
    assert clean.diverged == [] and poisoned.diverged == [1]
    assert int(poisoned.diverged_step[1]) == 1
    for name, value in clean.net.params.items():
        assert torch.equal(poisoned.net.params[name][[0, 2]], value[[0, 2]]), name
        torch.testing.assert_close(poisoned.net.params[name][1], initial[name][1], equal_nan=True)
    for name, value in clean.net.buffers.items():
        assert torch.equal(poisoned.net.buffers[name][[0, 2]], value[[0, 2]]), name


def test_a_diverged_restart_is_reported(tmp_path, monkeypatch):
    class Poisoned(Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            with torch.no_grad():
                self.net.params["head.weight"][2] = math.inf

    monkeypatch.setattr(loop_module, "Trainer", Poisoned)
    config = dataclasses.replace(ADAM_BN, epochs=1, restarts=4)
    result = train(config, tmp_path)
    assert result.diverged == [2]
    assert result.summary["diverged"] == 1
    assert result.ensemble is not None and result.ensemble["members"] == 3
    assert math.isnan(result.final[2]["test_loss"])
    healthy = [result.final[k]["test_loss"] for k in (0, 1, 3)]
    assert result.summary["test_loss"]["worst"] == pytest.approx(max(healthy))
    report = json.loads((tmp_path / "restarts.json").read_text())  # strict JSON: no NaN
    assert report["diverged"] == [2]
    assert report["per_member"][2]["diverged"] is True
    assert report["per_member"][2]["test_loss"] is None
    assert report["per_member"][2]["diverged_at_step"] == 1
    history = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert history[-1]["diverged"] == [2]
    assert history[-1]["per_member"]["test_loss"][2] is None
    healthy = [v for k, v in enumerate(history[-1]["per_member"]["test_loss"]) if k != 2]
    assert history[-1]["test_loss"] == pytest.approx(statistics.median(healthy))


# --------------------------------------------------------------------------------------------
# Outputs, progress, resume
# --------------------------------------------------------------------------------------------


def test_outputs_of_a_restarts_run(tmp_path, draw_plots):
    events = []
    config = dataclasses.replace(ADAM_BN, restarts=4, val_fraction=0.1)
    result = train(config, tmp_path, on_progress=events.append)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"config.toml", "metrics.jsonl", "steps.csv", "checkpoint.pt"} <= names
    assert {"model.pt", "restarts.json", "restarts.csv"} <= names
    from ravine.report.training import draw_run_figures

    drawn = {p.name for p in draw_run_figures(result, config)}
    assert drawn == {"restarts.png", "curves.png"} and drawn <= {p.name for p in tmp_path.iterdir()}

    steps = [e for e in events if "loss" in e]
    assert [e["step"] for e in steps] == list(range(1, result.steps + 1))
    assert all(e["total"] == result.steps and math.isfinite(e["loss"]) for e in steps)
    epochs = [e for e in events if "metrics" in e]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert isinstance(epochs[-1]["metrics"]["val_loss"], float)  # as train() reports it

    history = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_loss"):
        values = history[-1]["per_member"][key]
        assert len(values) == 4
        assert history[-1][key] == pytest.approx(statistics.median(values))

    with open(tmp_path / "restarts.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["member"]) for r in rows] == [0, 1, 2, 3]
    assert [int(r["seed"]) for r in rows] == [5, 6, 7, 8]
    assert float(rows[1]["test_loss"]) == pytest.approx(result.final[1]["test_loss"])

    report = json.loads((tmp_path / "restarts.json").read_text())
    summary = report["summary"]
    losses = [f["test_loss"] for f in result.final]
    assert summary["test_loss"]["best"] == pytest.approx(min(losses))
    assert summary["test_loss"]["worst"] == pytest.approx(max(losses))
    assert summary["test_loss"]["std"] == pytest.approx(torch.tensor(losses).std().item())
    accuracies = [f["test_accuracy"] for f in result.final]
    assert summary["test_accuracy"]["best"] == pytest.approx(max(accuracies))
    assert summary["selected_by"] == "val_loss"
    assert 0.5 < report["ensemble"]["accuracy"] <= 1.0 and report["ensemble"]["members"] == 4

    saved = load_checkpoint(tmp_path / "model.pt")
    assert saved["stacked"]["params"]["hidden0.linear.weight"].shape == (4, 128, 64)
    assert saved["stacked"]["buffers"]["hidden0.norm.running_mean"].shape == (4, 128)
    best = saved["best_member"]
    single = build_model(model_config(config), (64,), 10)
    single.load_state_dict(saved["model"])  # the best restart, as a plain network
    assert torch.equal(single.head.weight, result.params["head.weight"][best])
    assert saved["config"] == (tmp_path / "config.toml").read_text()
    # A restart as a standalone module gives the metrics reported for it.
    x_test = prepare_data(config).x_test
    with torch.no_grad():
        out = result.model_of(best)(x_test)
    assert float(out.argmax(1).eq(prepare_data(config).y_test).float().mean()) == pytest.approx(
        result.final[best]["test_accuracy"]
    )


def test_resume_ends_with_the_same_parameters(tmp_path):
    # Dropout and gradient noise too: every random stream is checkpointed.
    config = dataclasses.replace(ADAM_BN, model_args={"dropout": 0.2}, grad_noise=1e-3)
    whole = train(config, tmp_path / "whole")
    partial = train(config, tmp_path / "killed", stop_after_epoch=1)
    assert partial.steps == whole.steps // 2
    resumed = train(config, tmp_path / "killed")
    assert resumed.resumed_from_epoch == 1
    for name, value in whole.params.items():
        assert torch.equal(resumed.params[name], value), name
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    lines = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    with pytest.raises(ConfigError, match="holds another"):
        train(dataclasses.replace(config, seed=9), tmp_path / "killed")


# Two restarts that stop early at different epochs (after epochs 4 and 3).
STOPPING_PAIR = TrainConfig(
    epochs=6,
    batch_size=128,
    restarts=2,
    early_stopping=1,
    optimizer="momentum",
    optimizer_args={"lr": 0.3},
)


def test_early_stopping_per_restart_matches_sequential(tmp_path):
    # Each restart keeps its own best epoch and stops on its own (here after epochs 4 and 3);
    # the batched run goes on while any restart does. (val_fraction stays 0: the validation
    # split is drawn from config.seed, so a sequential run with seed + k would hold out other
    # examples, while the restarts of one run must share theirs.)
    config = STOPPING_PAIR
    result = train(config, tmp_path / "batched")
    report = json.loads((tmp_path / "batched" / "restarts.json").read_text())
    assert [row["best_epoch"] for row in report["per_member"]] == [3, 2]
    assert len(result.history) == 4
    assert result.history[-1]["stopped"] == [1]  # restart 1 stopped after epoch 3
    assert result.history[-1]["per_member"]["test_loss"][1] is None
    assert result.history[-1]["test_loss"] == result.history[-1]["per_member"]["test_loss"][0]
    for k in range(2):
        _assert_close_state(_sequential(config, k, tmp_path), result.state_dict(k))


def test_invalid_requests(tmp_path):
    with pytest.raises(ConfigError, match="snapshots"):
        train(TrainConfig(restarts=2, snapshots=2), tmp_path)
    with pytest.raises(ConfigError, match="method"):
        train(TrainConfig(restarts=2), tmp_path, method="loop")
    with pytest.raises(ConfigError, match="optimizer"):
        train(TrainConfig(restarts=2, optimizer_args={"lr": -1.0}), tmp_path)


# --------------------------------------------------------------------------------------------
# Members with their own hyperparameters; pruning; resume after members left
# --------------------------------------------------------------------------------------------

# Per optimizer, a second hyperparameter that differs between members besides lr.
_SECOND = {
    "sgd": {"weight_decay": [0.0, 1e-3, 1e-2]},
    "momentum": {"momentum": [0.5, 0.9, 0.95]},
    "nesterov": {"momentum": [0.5, 0.9, 0.95]},
    "adagrad": {"lr_decay": [0.0, 1e-3, 1e-2]},
    "rmsprop": {"alpha": [0.9, 0.99, 0.999]},
    "adam": {"betas": [(0.9, 0.999), (0.8, 0.99), (0.95, 0.9)]},
    "adamw": {"weight_decay": [0.0, 1e-2, 1e-1]},
    "nadam": {"betas": [(0.9, 0.999), (0.8, 0.99), (0.95, 0.9)]},
}
# The third member's lr is high enough that early stopping stops it (for sgd, momentum,
# nesterov, rmsprop and adam; the others run to the end).
_LRS = {
    "sgd": [0.05, 0.1, 10.0],
    "momentum": [0.01, 0.03, 1.0],
    "nesterov": [0.01, 0.03, 1.0],
    "adagrad": [1e-2, 3e-2, 0.3],
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_member_k_is_the_run_with_its_own_seed_and_hyperparameters(name, float64, tmp_path):
    # Schedule, global-norm clipping, batch norm and early stopping together; every
    # optimizer from the registry (adding one adds a case). In float64: the members that
    # early stopping stops have lrs high enough to amplify float32 rounding chaotically.
    lrs = _LRS.get(name, [1e-3, 3e-3, 0.3])
    ((key, values),) = _SECOND[name].items()
    members = [
        Member(seed, {"lr": lr, key: value})
        for seed, lr, value in zip((0, 1, 1), lrs, values, strict=True)
    ]
    config = TrainConfig(
        epochs=4,
        batch_size=256,
        model_args={"batch_norm": True, "bias": False},
        optimizer=name,
        optimizer_args={"max_grad_norm": 1.0},
        schedule="exponential",
        schedule_args={"gamma": 0.99},
        early_stopping=1,
    )
    result = train(config, tmp_path / "batched", members=members)
    assert result.method == "bmm" and result.diverged == []
    if name in ("sgd", "momentum", "nesterov", "rmsprop", "adam"):
        assert result.retired[2]["reason"] == "stopped"
    for k, member in enumerate(members):
        single = dataclasses.replace(
            config,
            seed=member.seed,
            optimizer_args={**config.optimizer_args, **member.optimizer_args},
        )
        expected = train(single, tmp_path / f"single{k}").model.state_dict()
        # Even float64 rounding grows to ~1e-8 at adagrad's and rmsprop's lr 0.3 over these
        # 24 updates; a wrong seed, data order or hyperparameter moves weights by 1e-2.
        _assert_close_state(expected, result.state_dict(k), 1e-6, 1e-7)


def test_pruned_members_leave_and_the_others_do_not_change(tmp_path):
    config = TrainConfig(epochs=3, batch_size=256, optimizer_args={"lr": 1e-2})
    members = [Member(0, {"lr": 1e-3}), Member(1, {"lr": 3e-3}), Member(2, {"lr": 1e-2})]
    seen = []

    def prune_the_middle(epoch, metrics):
        seen.append((epoch, sorted(metrics)))
        return [1] if epoch == 1 else []

    pruned = train(config, None, members=members, on_epoch=prune_the_middle)
    assert seen == [(1, [0, 1, 2]), (2, [0, 2]), (3, [0, 2])]
    assert pruned.retired[1]["reason"] == "pruned" and pruned.retired[1]["epoch"] == 1
    assert pruned.history[-1]["per_member"]["test_loss"][1] is None
    others = train(config, None, members=[members[0], members[2]])
    for k, j in ((0, 0), (2, 1)):
        for name in pruned.params:
            assert torch.equal(pruned.params[name][k], others.params[name][j]), name
    one_epoch = train(dataclasses.replace(config, epochs=1), None, members=[members[1]])
    for name in pruned.params:  # the pruned member kept the state it had when it left
        torch.testing.assert_close(pruned.params[name][1], one_epoch.params[name][0])


def test_a_run_resumes_after_members_have_left(tmp_path):
    config = STOPPING_PAIR
    whole = train(config, tmp_path / "whole")
    assert whole.retired[1]["reason"] == "stopped"  # restart 1 stops after epoch 3
    train(config, tmp_path / "part", stop_after_epoch=3)
    resumed = train(config, tmp_path / "part")
    assert resumed.resumed_from_epoch == 3
    for name, value in whole.params.items():
        assert torch.equal(resumed.params[name], value), name
    assert resumed.history == [
        {**h, "seconds": r["seconds"]} for h, r in zip(whole.history, resumed.history, strict=True)
    ]


def test_members_that_differ_in_a_flag_are_refused():
    config = TrainConfig(epochs=1)
    with pytest.raises(ConfigError, match="amsgrad must be the same for every member"):
        train(config, None, members=[Member(0, {"amsgrad": True}), Member(1, {"amsgrad": False})])
    with pytest.raises(ConfigError, match="either members or restarts"):
        train(dataclasses.replace(config, restarts=2), None, members=[Member(0)])
