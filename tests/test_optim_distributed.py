"""ravine's optimizers under torch.distributed, as a PyTorch user runs them: two processes on
this machine (gloo, loopback only), DistributedDataParallel, and ZeroRedundancyOptimizer with
``optimizer_class=`` a ravine class, each on both engines, against torch.optim doing the same.
"""

from __future__ import annotations

import os
import socket
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import ravine.optim as ro

WORLD = 2
STEPS = 6
LR = 0.01

# label -> (optimizer class, engine options, DDP options, zero_grad(set_to_none=...))
DDP_RUNS = {
    "torch": (torch.optim.Adam, {}, {}, True),
    "ravine default": (ro.Adam, {}, {}, True),
    "ravine simple": (ro.Adam, {"engine": "simple"}, {}, True),
    "ravine flat, gradients kept": (ro.Adam, {"engine": "flat", "compile": False}, {}, False),
    "ravine flat, gradient_as_bucket_view": (
        ro.Adam,
        {"engine": "flat", "compile": False},
        {"gradient_as_bucket_view": True},
        False,
    ),
}
ZERO_RUNS = {
    "zero torch": (torch.optim.Adam, {}),
    "zero ravine default": (ro.Adam, {}),
    "zero ravine simple": (ro.Adam, {"engine": "simple"}),
}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)  # the same start on every rank, as DDP requires
    return torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 8), torch.nn.Linear(8, 2)
    )


def _batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 * step + rank)  # each rank its own shard
    return torch.randn(12, 6, generator=g), torch.randn(12, 2, generator=g)


def _train(model, ddp, opt, rank, set_to_none=True):
    for step in range(STEPS):
        x, y = _batch(rank, step)
        opt.zero_grad(set_to_none=set_to_none)
        torch.nn.functional.mse_loss(ddp(x), y).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def _worker(rank: int, port: int, folder: str) -> None:
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60))
    results: dict = {}
    for label, (cls, engine, options, set_to_none) in DDP_RUNS.items():
        model = _model()
        ddp = DistributedDataParallel(model, **options)
        opt = cls(ddp.parameters(), lr=LR, **engine)
        results[label] = _train(model, ddp, opt, rank, set_to_none)
        if label != "torch":
            results[f"{label} engine"] = opt.engine
    for label, (cls, engine) in ZERO_RUNS.items():
        model = _model()
        ddp = DistributedDataParallel(model)
        opt = ZeroRedundancyOptimizer(ddp.parameters(), optimizer_class=cls, lr=LR, **engine)
        results[label] = _train(model, ddp, opt, rank)
        if label != "zero torch":
            results[f"{label} engine"] = opt.optim.engine
        opt.consolidate_state_dict(to=0)  # the whole state dict, gathered on rank 0
        if rank == 0:
            results[f"{label} state"] = opt.state_dict()
    dist.barrier()
    dist.destroy_process_group()
    torch.save(results, os.path.join(folder, f"rank{rank}.pt"))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> list[dict]:
    folder = tmp_path_factory.mktemp("distributed")
    context = mp.start_processes(
        _worker, args=(_free_port(), str(folder)), nprocs=WORLD, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + 240
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.terminate()
            pytest.fail("the distributed workers did not finish within 240 s")
    return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.parametrize("label", [k for k in DDP_RUNS if k != "torch"] + list(ZERO_RUNS))
def test_ravine_under_ddp_and_zero_ends_where_torch_optim_does(results, label):
    reference = results[0]["zero torch" if label.startswith("zero") else "torch"]
    for rank in range(WORLD):
        moved = [not torch.equal(p, q) for p, q in zip(results[rank][label], _start(), strict=True)]
        assert all(moved)
        for p, q in zip(results[rank][label], reference, strict=True):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    engine = results[0].get(f"{label} engine")
    assert engine in (None, "simple" if "simple" in label else "flat")


def _start() -> list[torch.Tensor]:
    return [p.detach() for p in _model().parameters()]


def test_zero_gathers_ravine_state_dicts_torch_can_load(results):
    theirs = results[0]["zero torch state"]
    for label in ("zero ravine default", "zero ravine simple"):
        ours = results[0][f"{label} state"]
        assert set(ours["state"]) == set(theirs["state"])
        for index, state in theirs["state"].items():
            for key, value in state.items():
                torch.testing.assert_close(
                    ours["state"][index][key].to(value), value, rtol=1e-5, atol=1e-6
                )
        reloaded = torch.optim.Adam(_model().parameters(), lr=LR)
        reloaded.load_state_dict(ours)  # (ZeRO's gathered form is torch's)
