"""The command line: documented examples run, bad input is one line and exit 2."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from ravine.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def documented_commands() -> list[str]:
    """Every ``$ ravine ...`` line of README.md and every ``ravine ...`` example in --help."""
    from ravine.cli.main import compare, train

    commands = re.findall(r"^\$ (ravine .+)$", README.read_text(), flags=re.MULTILINE)
    for command in (compare, train):
        commands += re.findall(r"^\s+(ravine \w+ ?.*)$", command.__doc__, flags=re.MULTILINE)
    return list(dict.fromkeys(commands))


def test_readme_documents_commands():
    assert "ravine compare" in documented_commands()


@pytest.mark.parametrize("command", documented_commands())
def test_documented_command_runs(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # default output folders land in the temporary directory
    argv = [a.replace("configs/", f"{ROOT}/configs/", 1) for a in shlex.split(command)[1:]]
    assert main(argv) == 0, capsys.readouterr().err
    if "--help" in argv or "--out" in argv:
        return
    (folder,) = (tmp_path / "ravine-runs").iterdir()
    if argv[0] == "compare":
        assert (folder / "summary.csv").exists()
        assert "#" in capsys.readouterr().out  # the ranked table was printed
    elif argv[0] == "train":
        assert (folder / "model.pt").exists()
        assert "final: " in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["compare", "--opt", "lion"], "unknown optimizer 'lion'; valid: sgd, momentum"),
        (["compare", "--problem", "everest"], "unknown problem 'everest'; valid names:"),
        (["compare", "--opt", "adam:lr=-1"], "lr must be a finite number >= 0, got -1"),
        (["compare", "--opt", "adam:beta2=1.5"], r"betas\[beta2\] must be in \[0, 1\)"),
        (["compare", "--opt", "adam:learning_rate=1"], "unknown hyperparameter 'learning_rate'"),
        (["compare", "--steps", "0"], "steps must be an integer >= 1, got 0"),
        (["compare", "--steps", "many"], "Invalid value for '--steps'"),
        (["compare", "--format", "gif"], "--format must be png or svg"),
        (["compare", "--bogus"], "No such option: --bogus"),
        (["tunes"], "No such command 'tunes'"),
        (["train", "--optimizer", "lion"], "unknown optimizer 'lion'; valid: sgd"),
        (["train", "--model", "resnet"], "unknown model 'resnet'; valid: presets"),
        (["train", "--config", "missing.toml"], "config file missing.toml does not exist"),
        (["train", "--opt-arg", "momentum"], "'momentum' is not KEY=VALUE"),
        (["train", "--dataset", "imagenet"], "unknown"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1, captured.err
    assert captured.err.startswith("error: ")
    assert re.search(message, captured.err), captured.err
    assert not (tmp_path / "ravine-runs").exists()  # nothing was started


def test_installed_entry_point_has_no_traceback_and_help_skips_torch():
    bad = subprocess.run(
        [sys.executable, "-m", "ravine", "compare", "--opt", "lion"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr and bad.stderr.count("\n") == 1
    probe = "import sys; from ravine.cli.main import main; main(['--help']); print('torch' in sys.modules)"
    shown = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert "compare" in shown.stdout
    assert shown.stdout.strip().endswith("False")  # --help stays instant: torch not imported


def readme_python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


@pytest.mark.parametrize("block", readme_python_blocks())
def test_readme_python_example_runs(block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an example that writes a folder writes it here
    exec(compile(block, str(README), "exec"), {})


def test_a_diverging_run_exits_1_and_compare_accepts_nonfinite(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--dataset", "teacher_student", "--model", "mlp", "--optimizer", "sgd"]
    assert main([*argv, "--lr", "10", "--epochs", "2", "--out", "diverged"]) == 1
    assert "training stopped" in capsys.readouterr().out
    assert (
        main(
            [
                "compare",
                "--opt",
                "adam:nonfinite=skip",
                "--problem",
                "saddle",
                "--steps",
                "20",
                "--no-plots",
                "--out",
                "c",
            ]
        )
        == 0
    )


def test_fresh_starts_over_for_restarts_too(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--restarts", "2", "--epochs", "1", "--out", "r"]) == 0
    assert main(["train", "--restarts", "2", "--epochs", "2", "--out", "r"]) == 2
    assert main(["train", "--restarts", "2", "--epochs", "2", "--out", "r", "--fresh"]) == 0


def test_probe_and_landscape_of_a_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--epochs", "3", "--keep-weights", "--out", "run"]) == 0
    assert main(["probe", "run", "--examples", "300", "--k", "2"]) == 0
    out = capsys.readouterr().out
    assert "top eigenvalues" in out and "point:" in out
    report = __import__("json").loads((tmp_path / "run" / "probe.json").read_text())
    assert len(report["top_eigenvalues"]) == 2
    assert report["top_eigenvalues"][0] >= report["bottom_eigenvalues"][0]
    for kind in ("interp", "surface", "trajectory"):
        argv = ["landscape", "run", "--kind", kind, "--resolution", "5", "--examples", "200"]
        assert main(argv) == 0, capsys.readouterr().err
        assert (tmp_path / "run" / f"landscape-{kind}.png").exists()
        assert (tmp_path / "run" / f"landscape-{kind}.npz").exists()
    assert main(["landscape", "run", "--kind", "volcano"]) == 2
    assert main(["probe", "nowhere"]) == 2
    assert main(["train", "--epochs", "1", "--out", "plain"]) == 0
    assert main(["landscape", "plain", "--kind", "trajectory"]) == 2
    assert "--keep-weights" in capsys.readouterr().err


def test_curvature_tracking_from_the_cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--epochs", "1", "--batch-size", "256", "--curvature-every", "2"]
    assert main([*argv, "--out", "run"]) == 0
    lines = (tmp_path / "run" / "curvature.jsonl").read_text().splitlines()
    assert len(lines) == 3  # 6 updates, one record every 2
    assert (tmp_path / "run" / "curvature.png").exists()
    assert main(["train", "--curvature-every", "-1"]) == 2


def test_gradient_health_over_a_run_flags_a_vanishing_sigmoid_network(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    argv = [
        "train",
        "--model",
        "mlp",
        "--depth",
        "10",
        "--width",
        "64",
        "--activation",
        "sigmoid",
        "--init",
        "default",
        "--epochs",
        "1",
        "--gradient-health",
        "--out",
        "r",
    ]
    assert main(argv) == 0
    assert "vanishing_gradients" in capsys.readouterr().out
    findings = __import__("json").loads((tmp_path / "r" / "gradient-health.json").read_text())
    assert findings[0]["kind"] == "vanishing_gradients"
    assert (tmp_path / "r" / "gradient-flow.png").exists()
