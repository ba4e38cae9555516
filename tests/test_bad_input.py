"""Bad input, broken files, full disks: one line and exit 2, never a traceback, nothing lost.

One test per failure the fuzzing issue reported (and the ones found like it); the random
search for more lives in ``test_fuzz_cli.py``.
"""

from __future__ import annotations

import dataclasses
import errno
import inspect
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ravine.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
BIG = str(2**63)  # one past the largest signed 64-bit integer
HUGE = "9" * 30


def run_cli(argv, capsys, code=2, debug=False):
    """main(argv) must return ``code``; for 2, stderr must be one ``error:`` line. Returns it.
    With ``debug`` (RAVINE_DEBUG=1) only the exit code is checked."""
    result = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert result == code, (result, captured.err, captured.out)
    if debug:
        return captured.err
    assert "Traceback" not in captured.err
    if code == 2:
        assert captured.err.count("\n") == 1 and captured.err.startswith("error: "), captured.err
    return captured.err


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAVINE_CACHE", str(tmp_path / "cache"))
    return tmp_path


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One finished 1-epoch digits run, copied by the tests that break it."""
    folder = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", "--epochs", "1", "--out", str(folder)]) == 0
    return folder


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run whose probes take no time: logistic regression on spirals, 6 parameters."""
    folder = tmp_path_factory.mktemp("runs") / "tiny"
    argv = ["train", "--dataset", "spirals", "--model", "linear", "--epochs", "1"]
    assert main([*argv, "--out", str(folder)]) == 0
    return folder


def a_copy(trained_run, where: Path) -> Path:
    copy = where / "run"
    shutil.copytree(trained_run, copy)
    return copy


# ----------------------------------------------------------------------------- integers


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["compare", "--seed", HUGE], r"--seed must be <= 17,592,186,044,415"),
        (["compare", "--seed", BIG], r"--seed must be <="),
        (["compare", "--steps", HUGE], r"--steps must be <= 100,000,000 .*RAVINE_MAX_UPDATES"),
        (["compare", "--starts", BIG], r"--starts must be <= 9,223,372,036,854,775,807"),
        (["train", "--seed", HUGE], r"seed must be an integer <= 4,611,686,018,427,387,903"),
        (["train", "--seed", str(2**62)], r"4 \* seed \+ 3"),
        (["train", "--seed", str(2**62 - 1), "--restarts", "2"], r"seed \+ restarts - 1"),
        (["train", "--width", HUGE], r"--width must be <= 1,000,000"),
        (["train", "--depth", BIG], r"--depth must be <= 10,000"),
        (["train", "--epochs", BIG], r"epochs must be an integer <="),
        (["train", "--batch-size", BIG], r"batch_size must be an integer <="),
        (["train", "--restarts", BIG], r"restarts must be an integer <="),
        (["train", "--snapshots", BIG], r"snapshots must be an integer <="),
        (["train", "--early-stopping", BIG], r"early_stopping must be an integer <="),
        (["train", "--curvature-every", BIG], r"--curvature-every must be <="),
        (["probe", "run", "--examples", BIG], r"--examples must be <="),
        (["probe", "run", "--k", "1001"], r"--k must be <= 1,000"),
        (["landscape", "run", "--resolution", "1001"], r"--resolution must be <= 1,000"),
        (["landscape", "run", "--examples", HUGE], r"--examples must be <="),
    ],
)
def test_integers_past_what_the_code_handles_are_refused(argv, message, cwd, capsys):
    import re

    assert re.search(message, run_cli(argv, capsys))
    assert not (cwd / "ravine-runs").exists()


def test_typos_fail_before_torch_is_imported(tmp_path):
    probe = (
        "import sys; from ravine.cli.main import main; "
        f"codes = [main(['train', '--epochs', '0']), main(['train', '--seed', '{BIG}']), "
        "main(['train', '--config', 'nowhere.toml']), main(['compare', '--steps', '0']), "
        "main(['train', '--depth', '100000']), main(['landscape', 'x', '--kind', 'volcano'])]; "
        "print(codes, 'torch' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *sys.path])}
    shown = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert shown.stdout.strip() == "[2, 2, 2, 2, 2, 2] False", shown.stdout + shown.stderr
    assert shown.stderr.count("\n") == 6 and "Traceback" not in shown.stderr


# ----------------------------------------------------------------------------- sizes


def test_allocations_that_cannot_succeed_are_refused_with_the_estimate(cwd, capsys):
    err = run_cli(["compare", "--starts", "2147483648"], capsys)
    assert "2,147,483,648 starts x 1,500 steps" in err and "1.6 PiB of trajectories" in err
    err = run_cli(["train", "--width", "1000000", "--depth", "10"], capsys)
    assert "9,000,084,000,010 parameters" in err and "TiB of memory" in err
    err = run_cli(["compare", "--problem", "quadratic:dim=100000"], capsys)
    assert "dim must be <= 4,096" in err


def test_runs_that_would_never_end_are_refused_up_front(cwd, capsys):
    started = time.perf_counter()
    err = run_cli(["train", "--depth", "100000"], capsys)
    assert "--depth must be <= 10,000" in err
    (cwd / "restarts.toml").write_text("[training]\nrestarts = 1000000000\n")
    err = run_cli(["train", "--config", "restarts.toml"], capsys)
    assert "1,000,000,000 x 9,610 parameters" in err and "memory" in err
    (cwd / "epochs.toml").write_text("[training]\nepochs = 1_000_000_000\n")
    err = run_cli(["train", "--config", "epochs.toml"], capsys)
    assert "epochs=1000000000 asks for more than 100,000,000 updates" in err
    assert "RAVINE_MAX_UPDATES" in err
    # The exact count, once the data is known: 23 updates per epoch of digits.
    err = run_cli(["train", "--epochs", "5000000"], capsys)
    assert "115,000,000 updates (5,000,000 epochs of 23)" in err
    assert time.perf_counter() - started < 30
    assert not (cwd / "ravine-runs").exists()


def test_the_limits_move_with_their_environment_variables(cwd, capsys, monkeypatch):
    monkeypatch.setenv("RAVINE_MAX_UPDATES", "10")
    assert "23 updates (1 epochs of 23), more than the limit of 10" in run_cli(
        ["train", "--epochs", "1"], capsys
    )
    assert "--steps must be <= 10 " in run_cli(["compare", "--steps", "11"], capsys)
    monkeypatch.setenv("RAVINE_MAX_UPDATES", "lots")
    assert "RAVINE_MAX_UPDATES must be a positive integer" in run_cli(
        ["train", "--epochs", "1"], capsys
    )
    monkeypatch.setenv("RAVINE_MAX_UPDATES", "1000")
    monkeypatch.setenv("RAVINE_MEMORY_LIMIT", "100K")
    err = run_cli(["train", "--epochs", "1"], capsys)
    assert "this machine has 100.0 KiB" in err and "RAVINE_MEMORY_LIMIT" in err
    monkeypatch.setenv("RAVINE_MEMORY_LIMIT", "a lot")
    assert "RAVINE_MEMORY_LIMIT must be a size" in run_cli(["train", "--epochs", "1"], capsys)


def test_library_limits_raise_value_errors_naming_the_key():
    from ravine.problems import ModelConfig, make_problem
    from ravine.study.compare import CompareConfig
    from ravine.train import TrainConfig

    with pytest.raises(ValueError, match=r"seed must be an integer <= .*got 4611686018427387904"):
        TrainConfig(seed=2**62)
    with pytest.raises(ValueError, match="epochs=1000000000 asks for more than"):
        TrainConfig(epochs=10**9)
    TrainConfig(epochs=10**9, max_steps=100)  # the step budget is what counts
    with pytest.raises(ValueError, match=r"batch_size must be an integer <="):
        TrainConfig(batch_size=2**63)
    with pytest.raises(ValueError, match=r"depth must be an int <= 10,000; got depth=100000"):
        ModelConfig(depth=100_000)
    with pytest.raises(ValueError, match=r"width must be an int <= 1,000,000"):
        ModelConfig(width=10**7)
    with pytest.raises(ValueError, match=r"starts x .* keep about .* of trajectories"):
        CompareConfig(starts=2**40)
    with pytest.raises(ValueError, match=r"seed must be <= 17,592,186,044,415"):
        CompareConfig(seed=2**44)
    with pytest.raises(ValueError, match=r"quadratic: seed must be in \[-2\*\*63, 2\*\*64\)"):
        make_problem("quadratic", seed=2**64)


def test_model_size_counts_what_build_model_builds():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from ravine.problems import ModelConfig, build_model, count_parameters, model_size

    @settings(max_examples=40, deadline=None, derandomize=True, database=None)
    @given(
        kind=st.sampled_from(["mlp", "cnn", "linear", "deep_linear"]),
        depth=st.integers(0, 3),
        width=st.integers(1, 12),
        bias=st.booleans(),
        batch_norm=st.booleans(),
        channels=st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple),
        kernel=st.integers(1, 4),
        stride=st.integers(1, 2),
        pooling=st.sampled_from(["none", "max", "avg"]),
        readout=st.sampled_from(["flatten", "global_avg"]),
        shape=st.sampled_from([(7,), (20,), (2, 9), (1, 8, 8), (3, 6, 5)]),
        outputs=st.integers(1, 4),
    )
    def check(kind, depth, width, bias, batch_norm, channels, kernel, stride, pooling, readout,
              shape, outputs):  # fmt: skip
        config = ModelConfig(
            kind=kind, depth=depth, width=width, bias=bias, batch_norm=batch_norm,
            channels=channels, kernel_size=kernel, stride=stride, pooling=pooling,
            readout=readout, bias_init="zeros" if bias else "default",
        )  # fmt: skip
        try:
            model = build_model(config, shape, outputs)
        except ValueError:  # a conv stack that shrinks the input to nothing
            with pytest.raises(ValueError, match="too small for the conv stack"):
                model_size(config, shape, outputs)
            return
        assert model_size(config, shape, outputs).parameters == count_parameters(model)

    check()


def test_keys_that_take_none_default_to_none():
    """A config drops None values (TOML has no null): lossless only if None is the default."""
    from ravine.optim.registry import OPTIMIZERS
    from ravine.problems import DATASETS, ModelConfig
    from ravine.schedules import SCHEDULES

    def check(name, parameters):
        for p in parameters:
            if "None" in str(p.annotation):
                assert p.default is None, f"{name}: {p.name} takes None but defaults to {p.default}"

    for name, cls in OPTIMIZERS.items():
        for klass in cls.__mro__:
            if "__init__" in vars(klass):
                check(name, inspect.signature(klass.__init__).parameters.values())
    for name, factory in {**DATASETS, **SCHEDULES}.items():
        check(name, inspect.signature(factory).parameters.values())
    for f in dataclasses.fields(ModelConfig):
        if "None" in str(f.type):
            assert f.default is None, f.name


# ----------------------------------------------------------------------------- configs


CONFIGS = {
    "folder": (None, "is a folder, not a TOML file"),
    "name.toml": ("[optimizer]\nname = 1.0\n", r"optimizer must be a name \(a string\), got 1.0"),
    "date.toml": ("[optimizer]\nlr = 1979-05-27\n", "lr in .optimizer. cannot be a date"),
    "datetime.toml": ("[training]\nseed = 1979-05-27T07:32:00Z\n", "seed must be an integer"),
    "array.toml": ("[optimizer]\nlr = [1, 2]\n", "lr must be a number, got"),
    "deep.toml": ("[optimizer]\nlr = " + "[" * 10000 + "]" * 10000 + "\n", "nests .* too deeply"),
    "nested.toml": ("[optimizer]\nlr = " + "[" * 100 + "]" * 100 + "\n", "more than 8 levels"),
    "inline.toml": ("[model]\nwidth = " + "{a=" * 3000 + "1" + "}" * 3000 + "\n", "too deeply"),
    "utf8.toml": (b'[optimizer]\nname = "\xff\xfe"\n', r"not UTF-8 text \(byte 0xff at offset 20"),
    "invalid.toml": ("[optimizer\n", "is not valid TOML"),
    "betas.toml": ("[optimizer]\nbetas = 5\n", r"betas must be a pair"),
    "table.toml": ("training = 5\n", r"\[training\] must be a table"),
    "model.toml": ("[model]\npreset = 5\n", "model must be a name"),
    "dataset.toml": ("[data]\nname = [1]\n", "dataset must be a name"),
    "schedule.toml": ("[schedule]\nname = 3\n", "schedule must be a name"),
    "unknown.toml": ("[model]\nfoo = 1\n", r"unknown key 'foo' in \[model\]; valid: .*width"),
    "bigint.toml": ("[schedule]\nname = 'step'\nstep_size = " + HUGE + "\n", "fit in 64 bits"),
    "pretrained.toml": ("[model]\npretrained = 'nothere.pt'\n", "pretrained: nothere.pt does not"),
    "pretrained-dir.toml": ("[model]\npretrained = '.'\n", "is a folder, not a checkpoint"),
    "nul.toml": ('[model]\npretrained = "a\\u0000b"\n', "must not contain a NUL"),
    "root.toml": ("[data]\nname = 'mnist'\nroot = 'nowhere'\n", r"\[data\] root: nowhere does"),
    "root-type.toml": ("[data]\nname = 'mnist'\nroot = 5\n", "root must be a path"),
    "big.toml": ("# " + "x" * (1 << 20) + "\n", "larger than 1.0 MiB"),
    "split.toml": ("[data]\nval_fraction = 0.9999\n", "holds out 1,437 of the 1,437 .* none"),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_a_broken_config_is_one_line_naming_it(name, cwd, capsys):
    import re

    text, message = CONFIGS[name]
    path = cwd / name
    if text is None:
        path.mkdir()
    else:
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    err = run_cli(["train", "--config", name, "--epochs", "1", "--out", "out"], capsys)
    assert re.search(message, err), err
    assert not (cwd / "out").exists()


def test_an_unreadable_config(cwd, capsys, monkeypatch):
    import builtins

    (cwd / "secret.toml").write_text("[training]\nepochs = 1\n")
    real_open = builtins.open

    def guarded(file, *args, **kwargs):  # root reads through chmod 000, so inject EACCES
        if str(file).endswith("secret.toml"):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded)
    err = run_cli(["train", "--config", "secret.toml"], capsys)
    assert "secret.toml cannot be read: permission denied" in err


def test_a_config_from_dev_zero_or_a_pipe(cwd, capsys):
    assert "larger than 1.0 MiB" in run_cli(["train", "--config", "/dev/zero"], capsys)
    read, write = os.pipe()
    os.write(write, b"[training]\nepochs = 0\n")
    os.close(write)
    try:
        err = run_cli(["train", "--config", f"/dev/fd/{read}"], capsys)
    finally:
        os.close(read)
    assert "epochs must be an integer >= 1, got 0" in err


@pytest.mark.parametrize("key", ["max_grad_norm", "clip_value"])
def test_opt_arg_none_works_where_none_is_documented(key, cwd, capsys):
    run_cli(["train", "--epochs", "1", "--opt-arg", f"{key}=none", "--out", "r"], capsys, 0)
    assert key not in (cwd / "r" / "config.toml").read_text()  # None: the default, left out
    # The same command again resumes (the same config), and a file can override with none.
    (cwd / "clip.toml").write_text(f"[optimizer]\n{key} = 1.0\n")
    argv = ["train", "--config", "clip.toml", "--epochs", "1", "--opt-arg", f"{key}=none"]
    run_cli([*argv, "--out", "r"], capsys, 0)
    opt = f"adam:{key}=none"
    argv = ["compare", "--opt", opt, "--problem", "saddle", "--steps", "5", "--no-plots"]
    run_cli([*argv, "--out", "c"], capsys, 0)


def test_pretrained_files_that_cannot_be_used(cwd, capsys, trained_run):
    (cwd / "junk.pt").write_bytes(b"not a checkpoint")
    (cwd / "p.toml").write_text("[model]\npretrained = 'junk.pt'\n")
    err = run_cli(["train", "--config", "p.toml", "--epochs", "1", "--out", "o"], capsys)
    assert "pretrained: junk.pt is not a checkpoint ravine can read" in err
    (cwd / "q.toml").write_text(f"[model]\npretrained = '{trained_run / 'model.pt'}'\n")
    run_cli(["train", "--config", "q.toml", "--epochs", "1", "--out", "o"], capsys, 0)
    argv = ["train", "--config", "q.toml", "--epochs", "1", "--model", "mnist1d_linear"]
    err = run_cli([*argv, "--dataset", "spirals", "--out", "o2"], capsys)
    assert "nothing in" in err and "matches the model" in err


# ----------------------------------------------------------------------------- paths


def test_cache_dir_must_stay_in_the_run_or_the_cache_folder(cwd, capsys):
    outside = cwd / "elsewhere"
    for value in ("../../elsewhere", str(outside), "~/../elsewhere-from-home"):
        (cwd / "c.toml").write_text(f"[data]\nname = 'mnist1d'\ncache_dir = '{value}'\n")
        err = run_cli(["train", "--config", "c.toml", "--epochs", "1", "--out", "o"], capsys)
        assert "writes outside the run's output folder o" in err and "RAVINE_CACHE" in err
    assert not outside.exists() and not (cwd.parent.parent / "elsewhere").exists()
    (cwd / "o").mkdir()
    (cwd / "o" / "link").symlink_to(outside, target_is_directory=True)
    (cwd / "c.toml").write_text("[data]\nname = 'mnist1d'\ncache_dir = 'o/link'\n")
    assert "writes outside" in run_cli(["train", "--config", "c.toml", "--out", "o"], capsys)
    for value, where in (("o/cache", cwd / "o" / "cache"), (str(cwd / "cache"), cwd / "cache")):
        (cwd / "c.toml").write_text(f"[data]\nname = 'mnist1d'\ncache_dir = '{value}'\n")
        run_cli(["train", "--config", "c.toml", "--epochs", "1", "--out", "o"], capsys, 0)
        assert list(where.glob("mnist1d-*.npz"))
        shutil.rmtree(cwd / "o")
    assert not outside.exists()


@pytest.mark.parametrize("command", ["train", "compare"])
def test_an_output_folder_that_cannot_be_one(command, cwd, capsys):
    (cwd / "file").write_text("")
    assert "--out /dev/null exists and is not a folder" in run_cli(
        [command, "--out", "/dev/null"], capsys
    )
    assert "--out file/sub: file is a file" in run_cli([command, "--out", "file/sub"], capsys)
    assert "null byte" in run_cli([command, "--out", "a\0b"], capsys)  # click checks it
    assert "surrogates not allowed" in run_cli([command, "--out", "\ud800"], capsys)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through chmod; see the EROFS test")
def test_a_read_only_output_folder_for_real(cwd, capsys):
    (cwd / "ro").mkdir()
    (cwd / "ro").chmod(0o500)
    try:
        err = run_cli(["train", "--epochs", "1", "--out", "ro/run"], capsys)
    finally:
        (cwd / "ro").chmod(0o700)
    assert "cannot write in ro" in err


def fail_with(number):
    def fail(*args, **kwargs):
        raise OSError(number, os.strerror(number))

    return fail


@pytest.mark.parametrize(
    ("number", "message"),
    [
        (errno.ENOSPC, "no space left on the device while writing r"),
        (errno.EROFS, "on a read-only file system"),
        (errno.EACCES, "permission denied"),
        (errno.EDQUOT, "disk quota exceeded"),
    ],
)
def test_a_full_or_read_only_disk_while_training(number, message, cwd, capsys, monkeypatch):
    import ravine.folders as checkpoint

    monkeypatch.setattr(checkpoint.os, "fsync", fail_with(number))
    assert message in run_cli(["train", "--epochs", "1", "--out", "r"], capsys)
    assert not list((cwd / "r").glob(".*.tmp"))  # the atomic writer cleaned up


def test_a_full_disk_while_writing_compare_results_and_probes(cwd, capsys, tiny_run):
    import ravine.folders as checkpoint

    run = a_copy(tiny_run, cwd)

    def full(dir=None, prefix="", suffix="", **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", f"{dir}/{prefix}abc{suffix}")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(checkpoint.tempfile, "mkstemp", full)
        err = run_cli(["compare", "--steps", "3", "--problem", "saddle", "--out", "c"], capsys)
        assert "no space left on the device while writing c/" in err  # (its owner record)
        err = run_cli(["probe", run, "--examples", "20", "--k", "1"], capsys)
        assert f"writing {run}/probe.json" in err
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "replace", fail_with(errno.EROFS))
        argv = ["landscape", run, "--kind", "interp", "--resolution", "3", "--examples", "20"]
        assert "read-only file system" in run_cli(argv, capsys)


# ----------------------------------------------------------------------------- run folders


# Each writes through ravine's own writer, so the checksums match: what is tested is how a
# folder whose files are intact but wrong is refused (byte damage that the checksums catch
# is tested in tests/test_folders.py).


def _put(path: Path, data: bytes) -> None:
    from ravine.folders import atomic_write

    atomic_write(path, lambda handle: handle.write(data))


def break_config(run: Path) -> None:
    _put(run / "config.toml", b"\xff\xfe garbage")


def break_model(run: Path) -> None:
    _put(run / "model.pt", b"junk")


def swap_config(run: Path) -> None:
    _put(run / "config.toml", b"[model]\npreset = 'mnist1d_cnn'\n")


def other_data(run: Path) -> None:
    _put(run / "config.toml", b"[data]\nname = 'spirals'\n")


def no_model(run: Path) -> None:
    (run / "model.pt").unlink()


def escape_cache(run: Path) -> None:
    _put(run / "config.toml", b"[data]\nname = 'mnist1d'\ncache_dir = '../../x'\n")


def bad_weights(run: Path) -> None:
    weights = run / "weights"
    weights.mkdir(exist_ok=True)
    for epoch in range(3):
        _put(weights / f"epoch-{epoch:04d}.pt", b"junk")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (break_config, r"config.toml is not UTF-8 text"),
        (break_model, r"model.pt is not a checkpoint ravine can read"),
        (swap_config, r"model.pt does not hold the model that .*config.toml describes"),
        (other_data, r"has 'hidden0.linear.weight' in another shape"),
        (no_model, r"has no model.pt: the run has not finished"),
        (escape_cache, r"cache_dir = '../../x' writes outside the run's output folder"),
        (bad_weights, r"epoch-0000.pt is not a checkpoint ravine can read"),
    ],
)
def test_probe_and_landscape_of_a_broken_run_folder(damage, message, cwd, capsys, trained_run):
    import re

    run = a_copy(trained_run, cwd)
    damage(run)
    for argv in (
        ["probe", run, "--examples", "20", "--k", "1"],
        ["landscape", run, "--kind", "trajectory", "--resolution", "3", "--examples", "20"],
    ):
        if damage is bad_weights and argv[0] == "probe":
            continue
        assert re.search(message, run_cli(argv, capsys))


def test_a_damaged_checkpoint_in_the_output_folder(cwd, capsys):
    run_cli(["train", "--epochs", "1", "--out", "r"], capsys, 0)
    (cwd / "r" / "checkpoint.pt").write_bytes(b"junk")  # and no checkpoint.prev.pt to fall to
    (cwd / "r" / "model.pt").unlink()
    err = run_cli(["train", "--epochs", "1", "--out", "r"], capsys)
    assert "r/checkpoint.pt is damaged" in err and "no intact checkpoint" in err
    (cwd / "elsewhere").mkdir()
    (cwd / "elsewhere" / "checkpoint.pt").write_bytes(b"junk")  # a folder ravine did not write
    assert "did not write" in run_cli(["train", "--epochs", "1", "--out", "elsewhere"], capsys)
    run_cli(["train", "--epochs", "1", "--out", "r", "--replace"], capsys, 0)


def test_probe_refuses_more_eigenvalues_than_parameters(cwd, capsys, tiny_run):
    err = run_cli(["probe", tiny_run, "--examples", "20", "--k", "7"], capsys)
    assert "k must be <= the network's 6 parameters" in err
    assert "does not exist" in run_cli(["probe", "nowhere"], capsys)


# ----------------------------------------------------------------------------- the boundary


def test_ctrl_c_exits_130_with_one_line(cwd, capsys, monkeypatch):
    import ravine.study.compare as compare

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(compare, "run_compare", interrupted)
    err = run_cli(["compare", "--steps", "3"], capsys, 130)
    assert err == "interrupted\n"


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (MemoryError(), "not enough memory"),
        (
            RuntimeError(
                "[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: "
                "you tried to allocate 34359738368 bytes.\nException raised from x"
            ),
            r"not enough memory \(it tried to allocate 32.0 GiB\)",
        ),
        (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), "not enough memory"),
        (RecursionError("maximum recursion depth exceeded"), "nests too deeply"),
        (UnicodeDecodeError("utf-8", b"ab\xff", 2, 3, "invalid start byte"), "not UTF-8 text"),
    ],
)
def test_memory_and_recursion_failures_are_the_users(error, message, cwd, capsys, monkeypatch):
    import ravine.study.compare as compare

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(compare, "run_compare", fail)
    import re

    assert re.search(message, run_cli(["compare", "--steps", "3"], capsys))


def test_a_bug_says_so_and_debug_shows_the_traceback(cwd, capsys, monkeypatch):
    import ravine.study.compare as compare

    def buggy(*args, **kwargs):
        return {}["missing"]

    monkeypatch.setattr(compare, "run_compare", buggy)
    err = run_cli(["compare", "--steps", "3"], capsys, 1)
    assert err.startswith("error: internal error (a bug in ravine): KeyError: 'missing'")
    assert "RAVINE_DEBUG=1" in err and err.count("\n") == 1
    monkeypatch.setenv("RAVINE_DEBUG", "1")
    err = run_cli(["compare", "--steps", "3"], capsys, 1, debug=True)
    assert "Traceback (most recent call last)" in err and "buggy" in err
    assert err.splitlines()[-1].startswith("error: internal error")
    # Usage errors show theirs too, hidden causes included.
    err = run_cli(["train", "--config", "missing.toml"], capsys, 2, debug=True)
    assert "Traceback" in err and err.splitlines()[-1].startswith("error: config file")


def test_a_diverged_run_keeps_exit_1(cwd, capsys):
    argv = ["train", "--dataset", "teacher_student", "--model", "mlp", "--optimizer", "sgd"]
    assert main([*argv, "--lr", "10", "--epochs", "2", "--out", "d"]) == 1
    captured = capsys.readouterr()
    assert "training stopped" in captured.out and "Traceback" not in captured.err


def test_undecodable_arguments_and_file_names(cwd, capsys):
    name = "caf\udce9"  # the byte 0xe9 of a Latin-1 name, as Python decodes argv
    err = run_cli(["train", "--dataset", name], capsys)
    assert r"unknown dataset 'caf\udce9'" in err
    run_cli(
        ["compare", "--steps", "3", "--problem", "saddle", "--no-plots", "--out", name], capsys, 0
    )
    assert (cwd / name / "summary.csv").exists()


def test_usage_errors_name_ravine_not_the_test_runner(capsys):
    assert "(see 'ravine train --help')" in run_cli(["train", "--bogus"], capsys)
