"""Run folders: ownership, checksums, the lock, crashes mid-write, full disks, Ctrl-C.

A user's results are sacred: nothing here may be overwritten, half-written or loaded damaged
without the user asking for it. Each test names the failure it guards against.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from ravine.cli.main import main
from ravine.folders import (
    DamagedFileError,
    FolderInUseError,
    FolderTakenError,
    RunFolder,
    atomic_write_text,
    load_checkpoint,
    load_latest_checkpoint,
    read_verified,
    save_checkpoint,
)
from ravine.train import ConfigError, TrainConfig, train
from ravine.train.trainer import ResumeWarning

FAST = {"epochs": 3, "batch_size": 256}


def _digests(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (bookkeeping excluded) -> its SHA-256."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and ".ravine" not in p.parts
    }


def _flip(path: Path, offset: int | None = None, count: int = 64) -> None:
    """Damage ``count`` bytes of ``path`` in place (in the middle by default)."""
    data = bytearray(path.read_bytes())
    start = len(data) // 2 if offset is None else offset
    for i in range(start, min(start + count, len(data))):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def _same_params(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# --------------------------------------------------------------------------------------------
# Ownership: one folder, one run
# --------------------------------------------------------------------------------------------


def test_a_run_into_a_folder_holding_another_run_is_refused_and_changes_nothing(tmp_path):
    train(TrainConfig(**FAST), tmp_path)
    before = _digests(tmp_path)
    with pytest.raises(ConfigError, match=r"holds another finished train run.*optimizer\.name"):
        train(TrainConfig(**FAST, optimizer="sgd"), tmp_path)
    assert _digests(tmp_path) == before


def test_a_finished_run_without_its_checkpoint_is_not_overwritten(tmp_path):
    train(TrainConfig(**FAST), tmp_path)
    (tmp_path / "checkpoint.pt").unlink()
    (tmp_path / "checkpoint.prev.pt").unlink()
    before = _digests(tmp_path)
    with pytest.raises(ConfigError, match="holds another"):  # another data set
        train(TrainConfig(**FAST, dataset="moons", model="mlp"), tmp_path)
    with pytest.raises(ConfigError, match="checkpoint is gone"):  # the same run: nothing to do
        train(TrainConfig(**FAST), tmp_path)
    assert _digests(tmp_path) == before


def test_restarts_into_a_single_runs_folder_are_refused(tmp_path):
    train(TrainConfig(**FAST), tmp_path)
    before = _digests(tmp_path)
    with pytest.raises(ConfigError, match=r"training\.restarts"):
        train(TrainConfig(**FAST, restarts=2), tmp_path)
    assert _digests(tmp_path) == before


def test_a_folder_of_foreign_files_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="did not write"):
        train(TrainConfig(**FAST), tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_folder_written_before_owner_records_is_still_protected(tmp_path):
    train(TrainConfig(**FAST), tmp_path)
    for bookkeeping in (tmp_path / ".ravine").iterdir():
        bookkeeping.unlink()
    (tmp_path / ".ravine").rmdir()
    with pytest.raises(ConfigError, match="holds another finished train run"):
        train(TrainConfig(**FAST, seed=1), tmp_path)


def test_replace_happens_only_after_the_new_config_is_valid(tmp_path):
    """``--replace --opt-arg bogus=1`` used to delete the checkpoint, then fail validation."""
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--out", str(out)]) == 0
    before = _digests(out)
    assert main(["train", "--replace", "--opt-arg", "bogus=1", "--out", str(out)]) == 2
    assert main(["train", "--replace", "--lr", "-1", "--out", str(out)]) == 2
    assert _digests(out) == before


def test_replace_removes_the_old_runs_files_and_keeps_foreign_ones(tmp_path):
    train(TrainConfig(**FAST, keep_weights=True), tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    result = train(TrainConfig(epochs=1, batch_size=256, optimizer="sgd"), tmp_path, replace=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "weights").exists()  # the old run's per-epoch weights went with it
    assert not (tmp_path / "checkpoint.prev.pt").exists()  # one epoch: nothing replaced yet
    assert result.resumed_from_epoch is None
    assert [
        json.loads(x)["epoch"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()
    ] == [1]


def test_the_default_output_folder_resumes_when_the_command_is_rerun(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--epochs", "1", "--batch-size", "256"]) == 0
    assert main(["train", "--epochs", "1", "--batch-size", "256"]) == 0
    assert main(["train", "--epochs", "1", "--batch-size", "256", "--seed", "1"]) == 0
    folders = sorted(p.name for p in (tmp_path / "ravine-runs").iterdir())
    assert len(folders) == 2, folders  # the rerun went into the first folder; seed 1 elsewhere
    assert all(f.startswith("train-digits-digits_mlp-adam-") for f in folders)


def test_output_that_is_not_a_folder_gets_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["train", "--epochs", "1", "--out", str(tmp_path / "file")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a folder" in err[0]


def test_compare_refuses_a_training_runs_folder(tmp_path, capsys):
    train(TrainConfig(**FAST), tmp_path)
    before = _digests(tmp_path)
    assert main(["compare", "--starts", "1", "--steps", "5", "--out", str(tmp_path)]) == 2
    assert "holds another finished train run" in capsys.readouterr().err
    assert _digests(tmp_path) == before


# --------------------------------------------------------------------------------------------
# Integrity: checksums on everything ravine writes
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished")
    train(TrainConfig(**FAST), out)
    return out


def _copy_folder(source: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(source, target)
    return target


@pytest.mark.parametrize(
    "name", ["checkpoint.pt", "model.pt", "config.toml", "metrics.jsonl", "summary.json"]
)
def test_byte_damage_in_any_file_is_detected(finished_run, tmp_path, name):
    folder = _copy_folder(finished_run, tmp_path / "copy")
    read_verified(folder / name)  # intact
    _flip(folder / name)
    with pytest.raises(DamagedFileError, match=name):
        read_verified(folder / name)


def test_damage_in_a_torch_file_that_torch_itself_loads_is_refused(finished_run, tmp_path):
    """64 changed bytes inside a tensor's data load without error in torch.load."""
    folder = _copy_folder(finished_run, tmp_path / "copy")
    path = folder / "model.pt"
    _flip(path, offset=path.stat().st_size // 3)
    torch.load(path, weights_only=True)  # torch does not notice
    with pytest.raises(DamagedFileError, match=r"model\.pt"):
        load_checkpoint(path)


def test_probe_and_landscape_refuse_damaged_weights_with_one_line(finished_run, tmp_path, capsys):
    folder = _copy_folder(finished_run, tmp_path / "copy")
    _flip(folder / "model.pt", offset=(folder / "model.pt").stat().st_size // 3)
    assert main(["probe", str(folder), "--examples", "16"]) == 2
    assert main(["landscape", str(folder), "--kind", "interp", "--examples", "16"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all("model.pt" in x and "damaged" in x for x in lines)
    _flip(folder / "config.toml", offset=0, count=4)
    assert main(["probe", str(folder), "--examples", "16"]) == 2
    assert "config.toml" in capsys.readouterr().err


def test_a_damaged_checkpoint_falls_back_to_the_previous_one(tmp_path):
    config = TrainConfig(**FAST, schedule="cosine", grad_noise=0.01)
    whole = train(config, tmp_path / "whole")
    train(config, tmp_path / "part", stop_after_epoch=2)
    _flip(tmp_path / "part" / "checkpoint.pt")
    with pytest.warns(ResumeWarning, match=r"damaged.*resumed from checkpoint.prev.pt"):
        resumed = train(config, tmp_path / "part")
    assert resumed.resumed_from_epoch == 1  # the newest intact checkpoint
    _same_params(whole.model.state_dict(), resumed.model.state_dict())


def test_both_checkpoints_damaged_is_refused_naming_both(tmp_path):
    config = TrainConfig(**FAST)
    train(config, tmp_path, stop_after_epoch=2)
    _flip(tmp_path / "checkpoint.pt")
    _flip(tmp_path / "checkpoint.prev.pt")
    with pytest.raises(DamagedFileError, match=r"checkpoint\.pt.*checkpoint\.prev\.pt"):
        train(config, tmp_path)


def test_a_damaged_manifest_is_detected(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "hello")
    manifest = tmp_path / ".ravine" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"a.txt"', '"b.txt"'))
    with pytest.raises(DamagedFileError, match="manifest"):
        read_verified(tmp_path / "a.txt")


def test_landscape_results_are_checked_on_load(finished_run, tmp_path):
    from ravine.probe.landscape import Interpolation

    folder = _copy_folder(finished_run, tmp_path / "copy")
    assert main(["landscape", str(folder), "--kind", "interp", "--examples", "16"]) == 0
    curve = Interpolation.load(folder / "landscape-interp.npz")
    assert len(curve.alphas) > 2
    _flip(folder / "landscape-interp.npz", count=8)
    with pytest.raises(DamagedFileError):
        Interpolation.load(folder / "landscape-interp.npz")


# --------------------------------------------------------------------------------------------
# Crashes mid-write, full disks, the lock, Ctrl-C
# --------------------------------------------------------------------------------------------

# Runs `ravine train` in a child that SIGKILLs itself at the K-th os.replace or fsync: every
# instant of a commit (temporary written, manifest half-updated, renamed, ...) gets hit.
_KILLER = textwrap.dedent(
    """
    import os, signal, sys
    target, k = sys.argv[1], int(sys.argv[2])
    calls = {"n": 0}
    real = getattr(os, target)
    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == k:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    setattr(os, target, dying)
    from ravine.cli.main import main
    sys.exit(main(sys.argv[3:]))
    """
)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main(["train", *_KILL_ARGS, "--out", str(out)]) == 0
    return load_checkpoint(out / "model.pt")["model"]


_KILL_ARGS = ["--epochs", "3", "--batch-size", "256", "--seed", "5"]


@pytest.mark.parametrize(("target", "k"), [("replace", 7), ("replace", 12), ("fsync", 9)])
def test_kill_9_at_any_instant_of_a_write_resumes_to_the_same_parameters(
    tmp_path, uninterrupted, target, k
):
    out = tmp_path / "run"
    child = subprocess.run(
        [sys.executable, "-c", _KILLER, target, str(k), "train", *_KILL_ARGS, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert main(["train", *_KILL_ARGS, "--out", str(out)]) == 0
    _same_params(uninterrupted, load_checkpoint(out / "model.pt")["model"])
    assert not [p for p in out.rglob("*.tmp")], "temporary files left behind"


def test_a_full_disk_during_a_checkpoint_leaves_the_previous_one_intact(tmp_path, monkeypatch):
    config = TrainConfig(**FAST)
    train(config, tmp_path, stop_after_epoch=1)
    before = load_checkpoint(tmp_path / "checkpoint.pt")
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        train(config, tmp_path)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert not [p for p in tmp_path.rglob("*.tmp")]
    after = load_checkpoint(tmp_path / "checkpoint.pt")
    assert after["epoch"] == before["epoch"] == 1
    result = train(config, tmp_path)  # space again: it resumes and finishes
    assert result.resumed_from_epoch == 1 and result.history[-1]["epoch"] == 3


_HOLDER = textwrap.dedent(
    """
    import sys, time
    from ravine.folders import RunFolder
    folder = RunFolder.claim(sys.argv[1], "train", "held")
    print("holding", flush=True)
    time.sleep(120)
    """
)


def test_two_processes_on_one_folder(tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(FolderInUseError, match=f"pid {holder.pid}"):
            RunFolder.claim(out, "train", "other")
        assert main(["train", "--epochs", "1", "--out", str(out)]) == 2
        assert main(["probe", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 2 and all("in use by another ravine process" in x for x in err)
    finally:
        holder.kill()  # like kill -9: the kernel drops the lock with the process
        holder.wait()
        holder.stdout.close()
    with pytest.raises(FolderTakenError, match="holds another unfinished train run"):
        RunFolder.claim(out, "train", "other")  # free now, and still the dead run's


def test_leftover_temporary_files_are_removed_by_the_next_writer(tmp_path):
    train(TrainConfig(**FAST), tmp_path, stop_after_epoch=1)
    leftovers = [
        tmp_path / ".checkpoint.pt.abc123_x.tmp",
        tmp_path / ".ravine" / ".manifest.json.q1w2e3.tmp",
    ]
    for path in leftovers:
        path.write_bytes(b"half")
    (tmp_path / "keep.tmp").write_text("not ravine's")  # not a name ravine makes
    train(TrainConfig(**FAST), tmp_path)
    assert not any(p.exists() for p in leftovers)
    assert (tmp_path / "keep.tmp").exists()


def test_ctrl_c_says_where_the_checkpoint_is_and_how_to_resume(tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--epochs", "200", "--batch-size", "512", "--out", str(out)]
    child = subprocess.Popen(
        [sys.executable, "-m", "ravine", *argv], stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"{out}/" in lines[0], err
    command = lines[0].split("this resumes it: ", 1)[1]
    assert command.startswith("ravine train ") and "--epochs 200" in command
    state = load_checkpoint(out / "checkpoint.pt")
    assert 1 <= state["epoch"] < 200


class _PressesCtrlC:
    """Pickled inside torch.save: sends this process SIGINT ``times`` times mid-write."""

    def __init__(self, times: int) -> None:
        self.times = times

    def __reduce__(self):
        for _ in range(self.times):
            os.kill(os.getpid(), signal.SIGINT)
        return (int, (self.times,))


def test_a_ctrl_c_during_a_checkpoint_write_waits_for_the_commit(tmp_path):
    # The CI failure this guards against: the interrupt landed inside torch.save's zip
    # writer, which then raised "unexpected pos" instead of the interrupt.
    save_checkpoint({"value": 0}, tmp_path / "c.pt", keep_previous=True)
    payload = {"value": 1, "pad": torch.arange(20000), "press": _PressesCtrlC(1)}
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(payload, tmp_path / "c.pt", keep_previous=True)
    # committed whole, checksum and all, then raised (the payload needs full unpickling)
    written = torch.load(io.BytesIO(read_verified(tmp_path / "c.pt")), weights_only=False)
    assert written["value"] == 1 and torch.equal(written["pad"], torch.arange(20000))
    assert load_checkpoint(tmp_path / "c.prev.pt")["value"] == 0
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_second_ctrl_c_during_a_checkpoint_write_stops_it_and_keeps_the_old_one(tmp_path):
    save_checkpoint({"value": 0}, tmp_path / "c.pt")
    payload = {"value": 1, "pad": torch.arange(20000), "press": _PressesCtrlC(2)}
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(payload, tmp_path / "c.pt")
    assert load_checkpoint(tmp_path / "c.pt")["value"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ravine", "c.pt"]  # no temporaries
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_checkpoint_helpers_keep_the_previous_version(tmp_path):
    for value in range(3):
        save_checkpoint({"value": value}, tmp_path / "c.pt", keep_previous=True)
    assert load_checkpoint(tmp_path / "c.pt")["value"] == 2
    assert load_checkpoint(tmp_path / "c.prev.pt")["value"] == 1
    state, note = load_latest_checkpoint(tmp_path / "c.pt")
    assert state["value"] == 2 and note == ""
    (tmp_path / "c.pt").unlink()
    state, note = load_latest_checkpoint(tmp_path / "c.pt")
    assert state["value"] == 1 and "missing" in note
