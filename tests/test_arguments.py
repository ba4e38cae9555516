"""The torch-free argument tables (ravine.arguments) against the registries, and every
optimizer hyperparameter, schedule argument and data set argument set from the CLI."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ravine import arguments
from ravine.cli.main import _preflight, _split_pairs, _with_pairs, main
from ravine.optim import OPTIMIZERS, ChainOptimizer, hyperparameter_names, make_optimizer
from ravine.problems import DATASETS, READERS
from ravine.problems.files import read_file
from ravine.schedules import SCHEDULES
from ravine.train.config import check_arguments, load_config

ROOT = Path(__file__).resolve().parents[1]


def _defaults(factory) -> dict:
    skip = ("self", "params", "optimizer")
    return {
        p.name: p.default
        for p in inspect.signature(factory).parameters.values()
        if p.name not in skip and p.kind is not p.VAR_KEYWORD
    }


def _kind_fits_default(kind: str, default) -> bool:
    if default is inspect.Parameter.empty:
        return kind.endswith("required")
    if default is None:
        return kind.endswith("?")
    base = kind.rstrip("?")
    if isinstance(default, bool):
        return base == "bool"
    if isinstance(default, int):
        return base in ("integer", "number")
    if isinstance(default, float):
        return base == "number"
    if isinstance(default, tuple):
        return base == "pair"
    return base in ("str", "path") or (base.startswith("one of ") and default in base)


# ----------------------------------------------------------------------------- the tables


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_the_optimizer_table_is_the_registry(name):
    assert list(arguments.OPTIMIZER_ARGUMENTS[name]) == hyperparameter_names(name)
    cls = OPTIMIZERS[name]
    for klass in cls.__mro__:  # a subclass passes **kwargs on: its parent has the default
        if klass is ChainOptimizer:
            break
        for key, default in _defaults(klass.__init__).items():
            kind = arguments.OPTIMIZER_ARGUMENTS[name][key]
            assert _kind_fits_default(kind, default), (name, key, kind, default)
    if "betas" in hyperparameter_names(name):
        assert _defaults(cls.__init__)["betas"] == arguments.DEFAULT_BETAS
    assert set(arguments.OPTIMIZER_ARGUMENTS) == set(OPTIMIZERS)


def test_the_schedule_and_data_set_tables_are_the_registries():
    assert set(arguments.SCHEDULE_ARGUMENTS) == set(SCHEDULES)
    for name, cls in SCHEDULES.items():
        defaults = _defaults(cls)
        assert list(arguments.SCHEDULE_ARGUMENTS[name]) == list(defaults), name
        for key, default in defaults.items():
            kind = arguments.SCHEDULE_ARGUMENTS[name][key]
            assert _kind_fits_default(kind, default) or kind == "schedule?", (name, key)
    readers = {**DATASETS, **READERS, "file": read_file}
    assert set(arguments.DATASET_ARGUMENTS) == set(readers)
    for name, factory in readers.items():
        defaults = _defaults(factory)
        assert list(arguments.DATASET_ARGUMENTS[name]) == list(defaults), name
        for key, default in defaults.items():
            kind = arguments.DATASET_ARGUMENTS[name][key]
            assert _kind_fits_default(kind, default), (name, key, kind, default)


# ----------------------------------------------------------------------------- from the CLI

# A value every optimizer that takes the key accepts, as typed on the command line.
CLI_VALUES = {
    "lr": "0.01",
    "momentum": "0.5",
    "dampening": "0.1",
    "weight_decay": "1e-4",
    "nesterov": "true",  # with momentum=0.5 and dampening=0 (below)
    "lr_decay": "0.01",
    "initial_accumulator_value": "0.1",
    "eps": "1e-6",
    "alpha": "0.9",
    "centered": "true",
    "betas": "0.8,0.99",
    "amsgrad": "true",
    "momentum_decay": "0.005",
    "maximize": "true",
    "capturable": "false",  # true is refused with its reason (host-side coefficients)
    "differentiable": "false",
    "decoupled_weight_decay": "true",
    "foreach": "false",
    "fused": "none",
    "compile": "false",
    "max_grad_norm": "1.5",
    "clip_value": "none",
    "nonfinite": "skip",
    "engine": "simple",
    "state_dtype": "float64",
}


def _run_of(argv_pairs: list[str], optimizer: str, schedule: str | None = None, **flags):
    """The config ``ravine train --optimizer NAME --opt-arg ...`` would train, checked as the
    CLI checks it (torch-free tables, then the optimizer itself in _preflight)."""
    run = load_config(
        None, optimizer=optimizer, schedule=schedule, dataset="spirals", model="linear"
    )
    pairs = {
        "--opt-arg": _split_pairs(argv_pairs),
        "--schedule-arg": _split_pairs(flags.get("schedule_args", []), "--schedule-arg"),
        "--data-arg": _split_pairs(["n_train=64", "n_test=32"], "--data-arg"),
    }
    run = _with_pairs(run, None, None, None, pairs)
    check_arguments(run)
    _preflight(run)
    return run


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_hyperparameter_of_every_optimizer_is_settable_from_the_cli(name):
    for key in hyperparameter_names(name):
        if key in arguments.SET_BY_THE_RUN:
            continue
        raw = CLI_VALUES[key]
        if key == "dampening" and name == "nesterov":
            raw = "0"  # Nesterov momentum needs dampening 0
        pairs = [f"{key}={raw}"]
        if key == "nesterov":
            pairs += ["momentum=0.5", "dampening=0"]
        run = _run_of(pairs, name)
        expected = arguments.parse_value(raw, key, arguments.HYPERPARAMETER_KINDS[key])
        assert run.optimizer_args.get(key) == expected, (name, key)  # none: the default
        # ... and the optimizer takes it (the trainer builds it from the same args).
        opt = make_optimizer(name, [torch.nn.Parameter(torch.zeros(2))], **run.optimizer_args)
        group = opt.param_groups[0]
        if key in group:
            assert group[key] == expected, (name, key, group[key])
        elif key == "state_dtype":
            assert opt.state_dtype is torch.float64


def test_beta1_and_beta2_map_onto_betas():
    assert _run_of(["beta2=0.99"], "adam").optimizer_args["betas"] == (0.9, 0.99)
    assert _run_of(["beta1=0.5"], "nadam").optimizer_args["betas"] == (0.5, 0.999)
    both = _run_of(["beta1=0.5", "beta2=0.9"], "adamw").optimizer_args["betas"]
    assert both == (0.5, 0.9)
    with pytest.raises(ValueError, match="not both"):
        _run_of(["betas=0.9,0.99", "beta2=0.9"], "adam")
    with pytest.raises(ValueError, match="unknown hyperparameter 'beta2' for optimizer 'sgd'"):
        _run_of(["beta2=0.9"], "sgd")


def test_beta2_goes_over_the_betas_of_a_config_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("[optimizer]\nname = 'adam'\nbetas = [0.8, 0.9]\n")
    run = load_config(path)
    pairs = {"--opt-arg": [("beta2", "0.99")], "--schedule-arg": [], "--data-arg": []}
    assert _with_pairs(run, path, None, None, pairs).optimizer_args["betas"] == (0.8, 0.99)


@pytest.mark.parametrize(
    ("schedule", "args", "expected"),
    [
        ("exponential", ["gamma=0.99"], {"gamma": 0.99}),
        ("step", ["step_size=3", "gamma=0.5"], {"step_size": 3, "gamma": 0.5}),
        ("constant", ["factor=0.5"], {"factor": 0.5}),
        ("cosine", ["eta_min=1e-5"], {"eta_min": 1e-5}),
        ("cosine_warm_restarts", ["t0=4", "t_mult=2", "eta_min=0"], {"t0": 4, "t_mult": 2}),
        (
            "warmup",
            ["warmup_steps=2", "then=cosine", "then.t_max=10", "start_factor=0.1"],
            {"then": {"name": "cosine", "t_max": 10}},
        ),
        (
            "onecycle",
            [
                "max_lr=0.1",
                "pct_start=0.2",
                "anneal_strategy=linear",
                "cycle_momentum=false",
                "base_momentum=0.8",
                "max_momentum=0.9",
                "div_factor=10",
                "final_div_factor=100",
                "three_phase=true",
            ],
            {"anneal_strategy": "linear", "three_phase": True},
        ),
    ],
)
def test_every_schedule_argument_is_settable_from_the_cli(schedule, args, expected):
    run = _run_of([], "sgd", schedule, schedule_args=args)
    for key, value in expected.items():
        assert run.schedule_args[key] == value
    assert {k for a in args for k in [a.split("=")[0].split(".")[0]]} <= set(run.schedule_args)
    import dataclasses

    from ravine.train.build import make_run_schedule

    opt = make_optimizer("sgd", [torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)
    make_run_schedule(dataclasses.replace(run), opt, total=20)  # the trainer builds it


@pytest.mark.parametrize(
    ("dataset", "pair", "expected"),
    [
        ("digits", "test_fraction=0.3", 0.3),
        ("mnist1d", "seed=1", 1),
        ("teacher_student", "activation=relu", "relu"),
        ("deep_linear", "singular_values=2,1", [2.0, 1.0]),
        ("mnist", "root=~/mnist", "~/mnist"),
        ("cifar10", "flat=true", True),
    ],
)
def test_data_set_arguments_from_the_cli(dataset, pair, expected):
    run = load_config(None, dataset=dataset)
    pairs = {"--opt-arg": [], "--schedule-arg": [], "--data-arg": _split_pairs([pair])}
    run = _with_pairs(run, None, None, None, pairs)
    assert run.dataset_args[pair.split("=")[0]] == expected


def test_a_tiny_run_records_what_the_cli_set(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--dataset", "spirals", "--model", "linear", "--epochs", "1"]
    argv += ["--data-arg", "n_train=64", "--data-arg", "n_test=32", "--threads", "1"]
    argv += ["--opt-arg", "beta2=0.99", "--opt-arg", "amsgrad=true"]
    argv += ["--schedule", "exponential", "--schedule-arg", "gamma=0.9", "--out", "r"]
    assert main(argv) == 0, capsys.readouterr().err
    text = (tmp_path / "r" / "config.toml").read_text()
    assert "betas = [0.9, 0.99]" in text and "amsgrad = true" in text
    assert "gamma = 0.9" in text and "n_train = 64" in text
    assert main(argv) == 0  # the same command: the same config, resumed (nothing to do)


# ----------------------------------------------------------------------------- before torch

BAD = [
    ["train", "--opt-arg", "beta2=high"],
    ["train", "--opt-arg", "betas=0.9"],
    ["train", "--opt-arg", "betas=0.9,0.99", "--opt-arg", "beta1=0.8"],
    ["train", "--opt-arg", "bogus=1"],
    ["train", "--opt-arg", "amsgrad=maybe"],
    ["train", "--opt-arg", "members=4"],
    ["train", "--opt-arg", "state_dtype=int8"],
    ["train", "--optimizer", "lion"],
    ["train", "--schedule", "exponential"],
    [
        "train",
        "--schedule",
        "warmup",
        "--schedule-arg",
        "warmup_steps=3",
        "--schedule-arg",
        "then=cosine",
    ],
    ["train", "--schedule-arg", "gamma=0.9"],
    ["train", "--schedule", "step", "--schedule-arg", "step_size=2.5"],
    ["train", "--schedule", "spiral"],
    ["train", "--dataset", "mnist"],
    ["train", "--data-arg", "root=."],
    ["train", "--data", "nowhere.csv"],
    ["train", "--data", "notes.txt"],
    ["train", "--data", "x.csv", "--dataset", "digits"],
    ["train", "--threads", "0"],
    ["compare", "--opt", "adam:beta3=0.9"],
    ["compare", "--opt", "lion"],
    ["tune", "--optimizer", "lion"],
    ["tune", "--space", "bogus"],
    ["study", "--optimizer", "lion"],
    ["probe", "run", "--k", "0"],
    ["landscape", "run", "--kind", "volcano"],
]


def test_bad_input_of_every_command_exits_2_before_torch_is_imported(tmp_path):
    probe = (
        "import sys; from ravine.cli.main import main; "
        f"codes = [main(a) for a in {BAD!r}]; print(codes, 'torch' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *sys.path])}
    shown = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert shown.stdout.strip() == f"{[2] * len(BAD)} False", shown.stdout + shown.stderr
    lines = shown.stderr.splitlines()
    assert len(lines) == len(BAD) and all(line.startswith("error: ") for line in lines), lines
    assert "Traceback" not in shown.stderr
    assert "cannot read .txt" in lines[16]
    assert "needs gamma" in lines[8] and "then 'cosine' needs t_max" in lines[9], lines


def test_version_is_instant():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *sys.path])}
    code = "import sys; from ravine.cli.main import main; main(['--version']); print('torch' in sys.modules)"
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    from ravine import __version__

    assert shown.stdout.split("\n")[:2] == [f"ravine {__version__}", "False"], shown
