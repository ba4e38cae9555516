"""Wall time of N random restarts: vectorized (one batched computation) vs sequential.

Both sides do the training work only: build the N initial models, then every epoch's data
order, forward, backward, optimizer and schedule step — no evaluation, no checkpoints, no
files. "sequential" is N eager loops, the inner loop of ``ravine.train.train`` (loss and
accuracy read per update, as it does); "vmap" and "bmm" are :class:`ravine.train.trainer.Trainer`'s two
batched paths. Each cell is the minimum over ``--repeats`` runs (the machine may be shared).

    python benchmarks/restarts.py                       # N = 1, 8, 64; 20 epochs; CPU
    python benchmarks/restarts.py --restarts 1,8 --epochs 5 --device cuda
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time

import torch

from ravine.optim import make_optimizer
from ravine.problems import build_model
from ravine.train import TrainConfig
from ravine.train.build import (
    input_view,
    loss_function,
    make_run_schedule,
    model_config,
    prepare_data,
    seeds,
    total_steps,
)
from ravine.train.trainer import Trainer, restart_members


def sequential(config: TrainConfig, splits, device: torch.device) -> None:
    """``config.restarts`` separate eager runs, each train()'s inner loop without I/O."""
    mconfig = model_config(config)
    shape = input_view(mconfig, splits.dataset)
    loss_fn = loss_function(splits.dataset)
    x_train, y_train = splits.x_train.to(device), splits.y_train.to(device)
    per_epoch, total = total_steps(config, len(x_train))
    for k in range(config.restarts):
        streams = seeds(config.seed + k)
        model = build_model(mconfig, shape, 10, generator=streams["init"]).to(device)
        optimizer = make_optimizer(config.optimizer, model.parameters(), **config.optimizer_args)
        schedule = make_run_schedule(config, optimizer, total)
        data_gen = torch.Generator().manual_seed(streams["data"])
        step = 0
        for _ in range(config.epochs):
            order = torch.randperm(len(x_train), generator=data_gen).to(device)
            correct, running = 0, 0.0
            for i in range(per_epoch):
                index = order[i * config.batch_size : (i + 1) * config.batch_size]
                x = x_train[index].reshape(len(index), *shape)
                y = y_train[index]
                optimizer.zero_grad()
                output = model(x)
                loss = loss_fn(output, y)
                loss.backward()
                optimizer.step()
                if schedule is not None:
                    schedule.step()
                step += 1
                running += float(loss.detach()) * len(index)
                correct += int((output.detach().argmax(dim=1) == y).sum())


def vectorized(config: TrainConfig, splits, device: torch.device, method: str) -> str:
    trainer = Trainer(config, splits, restart_members(config), method=method, device=device)
    x_train, y_train = splits.x_train.to(device), splits.y_train.to(device)
    for _ in range(config.epochs):
        stats = trainer.run_epoch(x_train, y_train)
    stats["loss_sum"].tolist()  # wait for the device
    return trainer.method


def timed(device: torch.device, fn, *args) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn(*args)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--restarts", default="1,8,64", help="comma-separated N values")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--optimizer", default="adam")
    parser.add_argument("--engine", default="simple", help="the optimizer engine: simple, flat")
    parser.add_argument("--model", default="digits_mlp", help="a ravine.problems preset")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3, help="runs per cell; the min counts")
    parser.add_argument("--methods", default="bmm,vmap", help="batched paths to time")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    counts = [int(n) for n in args.restarts.split(",")]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    base = TrainConfig(
        dataset="digits",
        model=args.model,
        optimizer=args.optimizer,
        optimizer_args={"engine": args.engine},
        epochs=args.epochs,
        batch_size=args.batch_size,
    )
    splits = prepare_data(base)
    per_epoch, _ = total_steps(base, len(splits.x_train))
    print(
        f"{args.model} on digits ({len(splits.x_train)} train), {args.optimizer} "
        f"({args.engine} engine), "
        f"{args.epochs} epochs x {per_epoch} updates, batch {args.batch_size}, "
        f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"min of {args.repeats}"
    )
    # Warm-up: first calls pay for lazy initialization (kernels, vmap's batching rules).
    warm = dataclasses.replace(base, epochs=1, restarts=2)
    sequential(warm, splits, device)
    for method in methods:
        vectorized(warm, splits, device, method)

    header = f"{'N':>4} {'sequential s':>13}" + "".join(
        f" {m + ' s':>9} {'speed-up':>9}" for m in methods
    )
    print(header)
    print("-" * len(header))
    for n in counts:
        config = dataclasses.replace(base, restarts=n)
        best = {"sequential": math.inf, **{m: math.inf for m in methods}}
        for _ in range(args.repeats):  # interleaved, so that load changes hit every column
            seconds = timed(device, sequential, config, splits, device)
            best["sequential"] = min(best["sequential"], seconds)
            for m in methods:
                seconds = timed(device, vectorized, config, splits, device, m)
                best[m] = min(best[m], seconds)
        row = f"{n:>4} {best['sequential']:>13.2f}"
        for m in methods:
            row += f" {best[m]:>9.2f} {best['sequential'] / best[m]:>8.1f}x"
        print(row, flush=True)


if __name__ == "__main__":
    main()
