"""Updates per second: ravine's training loop against a minimal hand-written PyTorch loop.

Both sides train the same network (the same initialization), on the same data (the run's
standardized split, already on the device), in the same mini-batch order, with the same
optimizer, in one process; the contenders take turns within every repeat (interleaved), and
each cell is the best over ``--repeats`` (the least disturbed run: the machine may be shared;
``--cpu-time`` counts the process's CPU time instead of wall time, which other processes on a
loaded machine disturb less). Columns:

Each repeat starts with another contender. The hand-written loop runs twice per repeat
(``hand (again)``): how far that ratio is from 1 is the noise floor of the comparison.

* ``hand-written``: ``zero_grad, forward, cross_entropy, backward, step`` over a
  ``randperm`` per epoch; no metrics at all (the cheapest loop one can write).
* ``ravine loop``: :meth:`ravine.train.trainer.Trainer.run_epoch`, the inner loop of
  ``ravine train``: the same update, plus the epoch's loss and accuracy accumulated on the
  device and the lr recorded per update, with nothing read back to the host.
* ``ravine train()``: the whole ``ravine.train.train(config, None)``: the loop plus building
  the model and optimizer and evaluating the held-out and test splits after every epoch.

    python benchmarks/train_throughput.py                  # CPU, one thread
    python benchmarks/train_throughput.py --device cuda --threads 4
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
import torch.nn.functional as F

from ravine.optim import make_optimizer
from ravine.problems import build_model
from ravine.train import TrainConfig, train
from ravine.train.build import input_view, model_config, prepare_data, seeds
from ravine.train.trainer import Member, Trainer

CLOCK = time.perf_counter  # --cpu-time: time.process_time (one thread, a shared machine)

CASES = {
    # name: (config fields, what it shows)
    "digits-mlp-b64": {"model": "digits_mlp", "batch_size": 64},
    "digits-mlp-b256": {"model": "digits_mlp", "batch_size": 256},
    "digits-wide-b128": {"model": "mlp", "batch_size": 128, "model_args": {"width": 1024}},
    "mnist1d-cnn-b128": {"dataset": "mnist1d", "model": "mnist1d_cnn", "batch_size": 128},
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def hand_written(config: TrainConfig, splits, device: torch.device) -> tuple[float, int]:
    """Seconds and updates of the textbook loop."""
    mconfig = model_config(config)
    shape = input_view(mconfig, splits.dataset)
    model = build_model(mconfig, shape, 10, generator=seeds(config.seed)["init"]).to(device)
    optimizer = make_optimizer(config.optimizer, model.parameters(), **config.optimizer_args)
    x_train = splits.x_train.to(device).reshape(-1, *shape)
    y_train = splits.y_train.to(device)
    order_gen = torch.Generator().manual_seed(seeds(config.seed)["data"])
    n, batch, updates = len(x_train), config.batch_size, 0
    _sync(device)
    start = CLOCK()
    for _ in range(config.epochs):
        order = torch.randperm(n, generator=order_gen).to(device)
        for i in range(0, n, batch):
            index = order[i : i + batch]
            optimizer.zero_grad()
            F.cross_entropy(model(x_train[index]), y_train[index]).backward()
            optimizer.step()
            updates += 1
    _sync(device)
    return CLOCK() - start, updates


def ravine_loop(config: TrainConfig, splits, device: torch.device) -> tuple[float, int]:
    """Seconds and updates of the trainer's epochs (what ``train`` runs between evaluations)."""
    trainer = Trainer(config, splits, [Member(config.seed)], device=device)
    x_train, y_train = splits.x_train.to(device), splits.y_train.to(device)
    _sync(device)
    start = CLOCK()
    for _ in range(config.epochs):
        trainer.run_epoch(x_train, y_train)
    trainer.check_finite()
    _sync(device)
    return CLOCK() - start, trainer.step


def ravine_train(config: TrainConfig, splits, device: torch.device) -> tuple[float, int]:
    """Seconds and updates of a whole in-memory run (set-up and evaluation included)."""
    _sync(device)
    start = CLOCK()
    result = train(config, None, device=device)
    _sync(device)
    return CLOCK() - start, result.steps


CONTENDERS = {
    "hand-written": hand_written,
    "hand (again)": hand_written,  # the same loop twice: the noise floor of the comparison
    "ravine loop": ravine_loop,
    "ravine train()": ravine_train,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cases", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES)
    )
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--optimizer", default="adam")
    parser.add_argument("--cpu-time", action="store_true", help="time.process_time, not wall")
    args = parser.parse_args()
    global CLOCK
    if args.cpu_time:
        if args.device != "cpu":
            parser.error("--cpu-time measures the host's CPU; use wall time on a GPU")
        CLOCK = time.process_time
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; valid: {', '.join(CASES)}")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    clock = "CPU time" if args.cpu_time else "wall time"
    print(
        f"updates per second ({clock}), best of {args.repeats} interleaved repeats; "
        f"{args.epochs} epochs, {args.optimizer}, device {device}, {args.threads} thread(s), "
        f"torch {torch.__version__}"
    )
    header = f"{'case':<18} {'updates':>7} " + " ".join(f"{name:>15}" for name in CONTENDERS)
    print(header + f" {'again / hand':>12} {'loop / hand':>12} {'train() / hand':>15}")
    for case in cases:
        config = TrainConfig(epochs=args.epochs, optimizer=args.optimizer, **CASES[case])
        config = dataclasses.replace(config, optimizer_args={"lr": 1e-3})
        splits = prepare_data(config)
        for contender in CONTENDERS.values():  # warm-up: allocator, kernels, caches
            contender(dataclasses.replace(config, epochs=1), splits, device)
        rates: dict[str, list[float]] = {name: [] for name in CONTENDERS}
        updates = 0
        names = list(CONTENDERS)
        for repeat in range(args.repeats):
            # Each repeat starts with another contender: no one always runs after another.
            for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
                seconds, updates = CONTENDERS[name](config, splits, device)
                rates[name].append(updates / seconds)
        best = {name: max(values) for name, values in rates.items()}
        hand = best["hand-written"]
        cells = " ".join(f"{best[name]:>15,.0f}" for name in CONTENDERS)
        print(
            f"{case:<18} {updates:>7} {cells} {best['hand (again)'] / hand:>12.3f}"
            f" {best['ravine loop'] / hand:>12.3f} {best['ravine train()'] / hand:>15.3f}"
        )
    print(
        "ratios: updates per second / the hand-written loop's (1.000: no overhead; "
        "'again': the hand-written loop against itself, the noise floor)"
    )


if __name__ == "__main__":
    main()
