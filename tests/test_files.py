"""Your own data (ravine.problems.files): every format on tiny files written here, the same
Dataset as the built-in sets, and every malformed case as a ValueError / one line exit 2."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ravine.cli.main import main
from ravine.problems import load_dataset
from ravine.problems.files import digest, read_file

RNG = np.random.default_rng(0)
X = RNG.normal(size=(40, 3))
Y = (X[:, 0] > 0).astype(np.int64)  # two classes


def write_csv(path, header, rows):
    path.write_text("\n".join([",".join(header), *(",".join(map(str, r)) for r in rows)]) + "\n")
    return path


@pytest.fixture
def files(tmp_path):
    """One tiny file of each format, all holding X and Y."""
    np.savez(tmp_path / "xy.npz", x=X, y=Y)
    np.savez(tmp_path / "split.npz", x_train=X[:30], y_train=Y[:30], x_test=X[30:], y_test=Y[30:])
    np.save(tmp_path / "table.npy", np.column_stack([X, Y]))
    write_csv(
        tmp_path / "table.csv",
        ["a", "b", "c", "label"],
        [[*x, y] for x, y in zip(X, Y, strict=True)],
    )
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    columns = {"a": X[:, 0], "b": X[:, 1], "c": X[:, 2], "label": Y}
    pq.write_table(pa.table(columns), tmp_path / "table.parquet")
    return tmp_path


def image_folder(root, classes=("cat", "dog"), per_class=4, size=(5, 4), mode="L"):
    from PIL import Image

    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            value = 40 * k + 10 * i
            color = value if mode == "L" else (value, 255 - value, 7)
            Image.new(mode, size, color).save(root / name / f"{i}.png")
    return root


@pytest.mark.parametrize("name", ["xy.npz", "table.npy", "table.csv", "table.parquet"])
def test_every_table_format_reads_the_same_data(files, name):
    ds = read_file(files / name)
    assert ds.task == "classification" and ds.num_classes == 2
    assert (ds.n_train, ds.n_test, ds.input_shape) == (32, 8, (3,))  # 20 % held out, stratified
    reference = read_file(files / "xy.npz")
    for split in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(ds, split), getattr(reference, split)), split
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    # Both classes keep their share in both splits; the same file reads the same, bit for bit.
    assert set(ds.y_test.tolist()) == {0, 1}
    again = load_dataset("file", path=str(files / name))
    assert torch.equal(again.x_test, ds.x_test) and torch.equal(again.y_train, ds.y_train)
    assert not torch.equal(read_file(files / name, seed=1).y_test, ds.y_test)


def test_an_npz_split_is_kept_and_labels_are_renumbered(files, tmp_path):
    ds = read_file(files / "split.npz")
    assert (ds.n_train, ds.n_test) == (30, 10)
    assert torch.equal(ds.x_test, torch.from_numpy(X[30:]).float())
    np.savez(tmp_path / "odd.npz", x=X, y=Y * 5 + 3)  # labels 3 and 8
    odd = read_file(tmp_path / "odd.npz")
    assert odd.class_names == ("3", "8") and set(odd.y_train.tolist()) == {0, 1}


def test_text_labels_and_float_targets(tmp_path):
    words = ["setosa" if y else "virginica" for y in Y]
    ds = read_file(
        write_csv(
            tmp_path / "t.csv",
            ["a", "b", "c", "species"],
            [[*x, w] for x, w in zip(X, words, strict=True)],
        ),
        label="species",
    )
    assert ds.class_names == ("setosa", "virginica")
    reg = read_file(
        write_csv(tmp_path / "r.csv", ["a", "b", "c", "label"], [[*x, x[0] * 0.5] for x in X])
    )
    assert reg.task == "regression" and reg.num_classes is None and reg.y_train.shape == (32, 1)
    from ravine.train.build import loss_function

    assert loss_function(reg) is not torch.nn.functional.cross_entropy  # mean squared error
    np.savez(tmp_path / "multi.npz", x=X, y=X[:, :2] * 2.0)
    assert read_file(tmp_path / "multi.npz").y_train.shape == (32, 2)
    np.savez(tmp_path / "counts.npz", x=X, y=Y)
    forced = read_file(tmp_path / "counts.npz", task="regression")  # integers, as numbers
    assert forced.task == "regression" and forced.y_train.dtype == torch.float32


def test_image_folders(tmp_path):
    grey = read_file(image_folder(tmp_path / "grey"), seed=0)
    assert grey.image_shape == (1, 4, 5) and grey.class_names == ("cat", "dog")
    assert (grey.n_train, grey.n_test) == (
        6,
        2,
    ) and 0 <= grey.x_train.min() <= grey.x_train.max() <= 1
    colour = read_file(image_folder(tmp_path / "rgb", mode="RGB"))
    assert colour.image_shape == (3, 4, 5)
    resized = read_file(tmp_path / "rgb", image_size=3)
    assert resized.image_shape == (3, 3, 3)
    split = tmp_path / "split"
    image_folder(split / "train")
    image_folder(split / "test", per_class=1)
    ds = read_file(split)
    assert (ds.n_train, ds.n_test) == (8, 2)
    before = digest(split)
    (split / "train" / ".DS_Store").write_bytes(b"desktop")  # hidden: neither read nor hashed
    assert digest(split) == before
    from PIL import Image

    Image.new("L", (5, 4), 99).save(split / "train" / "cat" / "0.png")
    assert digest(split) != before


def _bad(tmp_path):
    """name -> (file maker, part of the message)"""

    def csv_file(name, header, rows):
        return lambda: write_csv(tmp_path / name, header, rows)

    def npz(name, **arrays):
        def make():
            np.savez(tmp_path / name, **arrays)
            return tmp_path / name

        return make

    def folder(name, **kwargs):
        def make():
            root = tmp_path / name
            root.mkdir()
            if kwargs:
                image_folder(root, **kwargs)
            return root

        return make

    def sizes():
        root = image_folder(tmp_path / "sizes")
        from PIL import Image

        Image.new("L", (9, 9)).save(root / "cat" / "big.png")
        return root

    return {
        "no label column": (csv_file("a.csv", ["a", "b"], [[1, 2]]), "no column 'label'"),
        "ragged rows": (csv_file("b.csv", ["a", "label"], [[1, 0], [2]]), "line 3 has 1 values"),
        "non-numeric": (
            csv_file("c.csv", ["a", "label"], [[1, 0], ["x", 1]]),
            "'x' is not a number",
        ),
        "missing label": (csv_file("d.csv", ["a", "label"], [[1, 0], [2, ""]]), "label is missing"),
        "one class": (csv_file("e.csv", ["a", "label"], [[1, 0], [2, 0]]), "one class only"),
        "lengths": (npz("f.npz", x=X, y=Y[:5]), "same length"),
        "no x/y": (npz("g.npz", features=X), "expected arrays x and y"),
        "half a split": (npz("h.npz", x_train=X, y_train=Y), "lacks x_test, y_test"),
        "nan": (npz("i.npz", x=np.full((4, 2), np.nan), y=np.arange(4)), "NaN"),
        "empty folder": (folder("j"), "holds no class folders"),
        "one class folder": (folder("k", classes=("cat",)), "one class only"),
        "sizes": (sizes, "must share one size"),
        "suffix": (
            lambda: (tmp_path / "l.txt").write_text("1") and tmp_path / "l.txt",
            "cannot read .txt",
        ),
        "not an npz": (
            lambda: (tmp_path / "m.npz").write_text("x") and tmp_path / "m.npz",
            "not a readable .npz",
        ),
    }


BAD_NAMES = [
    "no label column",
    "ragged rows",
    "non-numeric",
    "missing label",
    "one class",
    "lengths",
    "no x/y",
    "half a split",
    "nan",
    "empty folder",
    "one class folder",
    "sizes",
    "suffix",
    "not an npz",
]


@pytest.mark.parametrize("case", BAD_NAMES)
def test_malformed_files_raise_value_errors_naming_them(case, tmp_path):
    make, message = _bad(tmp_path)[case]
    path = make()
    with pytest.raises(ValueError, match=message) as error:
        read_file(path)
    assert str(path) in str(error.value)


def test_malformed_files_are_one_line_exit_2_from_the_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    table = _bad(tmp_path)
    for case in BAD_NAMES:
        make, message = table[case]
        code = main(["train", "--data", str(make()), "--epochs", "1", "--out", f"out-{len(case)}"])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and message in err, (case, err)
        assert "Traceback" not in err
    assert main(["train", "--data", "nowhere.csv"]) == 2
    assert "nowhere.csv does not exist" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match=r"nowhere\.npz"):
        read_file(tmp_path / "nowhere.npz")


def test_train_on_a_file_records_it_and_refuses_a_changed_one(files, monkeypatch, capsys):
    monkeypatch.chdir(files)
    argv = ["train", "--data", "table.csv", "--epochs", "1", "--threads", "1", "--out", "r"]
    assert main(argv) == 0, capsys.readouterr().err
    text = (files / "r" / "config.toml").read_text()
    assert 'path = "table.csv"' in text and f'sha256 = "{digest(files / "table.csv")}"' in text
    # A config naming the file ([data] path) is the same run: it resumes, nothing to redo.
    (files / "run.toml").write_text('[data]\npath = "table.csv"\n[training]\nepochs = 1\n')
    assert main(["train", "--config", "run.toml", "--threads", "1", "--out", "r"]) == 0
    with (files / "table.csv").open("a") as handle:
        handle.write("0.1,0.2,0.3,1\n")
    capsys.readouterr()
    assert main(argv) == 2
    assert "holds another" in capsys.readouterr().err
    assert main(["train", "--config", "r/config.toml", "--out", "r"]) == 2
    assert "has changed since sha256" in capsys.readouterr().err


def test_the_library_records_the_files_digest_as_the_cli_does(tmp_path):
    """``ravine.train.train`` from Python pins the file too: config.toml has its SHA-256, and
    the same run after the file changed is refused instead of resumed on other data."""
    from ravine.train import ConfigError, TrainConfig, train

    table = tmp_path / "t.csv"
    rows = ["a,b,label"] + [f"{i % 7},{(3 * i) % 5},{i % 2}" for i in range(60)]
    table.write_text("\n".join(rows) + "\n")
    config = TrainConfig(dataset="file", dataset_args={"path": str(table)}, epochs=1)
    train(config, tmp_path / "run")
    assert f'sha256 = "{digest(table)}"' in (tmp_path / "run" / "config.toml").read_text()
    with table.open("a") as handle:
        handle.write("1,1,1\n")
    with pytest.raises(ConfigError, match="holds another"):
        train(config, tmp_path / "run")


def test_train_on_an_image_folder_and_a_regression_table(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    image_folder(tmp_path / "pics")
    argv = ["train", "--data", "pics", "--epochs", "1", "--threads", "1", "--out", "p"]
    assert main(argv) == 0, capsys.readouterr().err
    write_csv(tmp_path / "r.csv", ["a", "b", "c", "y"], [[*x, x[1]] for x in X])
    argv = ["train", "--data", "r.csv", "--data-arg", "label=y", "--epochs", "1", "--out", "q"]
    assert main([*argv, "--threads", "1"]) == 0, capsys.readouterr().err
    assert "test_loss" in capsys.readouterr().out


def test_tune_on_a_file_with_fixed_hyperparameters(files, monkeypatch, capsys):
    monkeypatch.chdir(files)
    argv = ["tune", "--data", "xy.npz", "--opt-arg", "beta2=0.99", "--trials", "2", "--batch", "2"]
    assert main([*argv, "--epochs", "1", "--out", "t"]) == 0, capsys.readouterr().err
    best = (files / "t" / "best.toml").read_text()
    assert "betas = [0.9, 0.99]" in best and f'sha256 = "{digest(files / "xy.npz")}"' in best
