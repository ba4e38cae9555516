"""Wall time of a tuning study's trials: batched (one run of N members) vs one after another.

The same N trials of the digits MLP (Adam; lr and both betas sampled by Optuna's random
sampler from one seed), the same engine, the same process, taking turns:

* ``trainer``: ``ravine.train.train(config, None, members=...)`` with all N members at once,
  against N runs of one member each (each trial's own ``train`` call: the plain module, the
  loop a sequential study runs). Evaluation every epoch on both sides, as a study needs.
* ``study``: the whole ``run_tune`` (Optuna ask / report / tell included, SQLite storage)
  with ``batch=N`` against ``batch=1``, without and with a pruner (successive halving).

One intra-op thread on both sides, as ``ravine tune`` uses for small networks. Each cell is
the fastest of ``--repeats`` runs, the two sides taking turns (the machine may be shared);
the ratio is the speed-up.

    python benchmarks/tune.py                    # 64 trials, 20 epochs
    python benchmarks/tune.py --trials 16 --epochs 2 --repeats 1 --engine flat
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

import torch

from ravine.study.space import Range, hyperparameters
from ravine.study.tune import TuneConfig, run_tune
from ravine.train import Member, TrainConfig, train

SPACE = {
    "lr": Range(1e-4, 3e-2, log=True),
    "one_minus_beta1": Range(1e-2, 0.5, log=True),
    "one_minus_beta2": Range(1e-4, 1e-1, log=True),
}


def sampled_members(config: TrainConfig, n: int) -> list[Member]:
    import optuna

    from ravine.study.tune import distributions

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trials = [study.ask(distributions(SPACE)) for _ in range(n)]
    return [Member(config.seed, hyperparameters("adam", t.params)[0]) for t in trials]


def race(repeats: int, sequential, batched) -> tuple[float, float]:
    """The fastest of ``repeats`` runs of each, taking turns (a shared machine's load then
    falls on both sides alike)."""
    times: dict[object, list[float]] = {sequential: [], batched: []}
    for _ in range(repeats):
        for fn in (sequential, batched):
            started = time.perf_counter()
            fn()
            times[fn].append(time.perf_counter() - started)
    return min(times[sequential]), min(times[batched])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--engine", choices=("simple", "flat"), default="simple")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = TrainConfig(
        epochs=args.epochs, val_fraction=0.2, optimizer_args={"engine": args.engine}
    )
    members = sampled_members(config, args.trials)
    scratch = Path(tempfile.mkdtemp(prefix="ravine-bench-tune-"))
    rows = []
    try:
        train(dataclasses.replace(config, epochs=1), None, members=members[:2])  # warm-up

        def batched():
            train(config, None, members=members)

        def one_by_one():
            for member in members:
                train(config, None, members=[member])

        rows.append(("trainer", *race(args.repeats, one_by_one, batched)))

        for pruner in ("none", "halving"):
            tune = TuneConfig(
                train=config, space=SPACE, trials=args.trials, sampler="random", pruner=pruner
            )
            counter = iter(range(10**6))

            def study(batch: int, tune=tune, counter=counter) -> None:
                out = scratch / f"study-{next(counter)}"
                run_tune(dataclasses.replace(tune, batch=batch), out)
                shutil.rmtree(out)

            rows.append(
                (
                    f"study, pruner {pruner}",
                    *race(
                        args.repeats,
                        lambda study=study: study(1),
                        lambda study=study: study(args.trials),
                    ),
                )
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print(
        f"{args.trials} trials of the digits MLP (Adam: lr, beta1, beta2), {args.epochs} epochs, "
        f"engine {args.engine}, {args.threads} thread(s); fastest of {args.repeats}"
    )
    print()
    print("| what | one after another (s) | batched (s) | speed-up |")
    print("|---|---|---|---|")
    for name, sequential, together in rows:
        print(f"| {name} | {sequential:.2f} | {together:.2f} | {sequential / together:.1f}x |")


if __name__ == "__main__":
    main()
