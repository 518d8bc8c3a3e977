"""`xrayviewer train`: every dataset problem is a clear message and exit 1 (never a traceback); a good dataset
trains, writes a bundle and prints the report."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from training_support import write_disc_dataset
from xrayviewer.cli import main


@pytest.fixture(scope="module")
def discs(tmp_path_factory) -> Path:
    return write_disc_dataset(tmp_path_factory.mktemp("cli") / "discs")


def _train(capsys, dataset, out, *extra) -> tuple[int, str, str]:
    code = main(["train", str(dataset), "--out", str(out), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _copy(discs: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(discs, tmp_path / "data"))


def _bad_datasets(discs: Path, tmp_path: Path):
    """(name, dataset folder, expected words in the message)."""
    missing = tmp_path / "nowhere"
    yield "missing folder", missing, "is not a folder"

    empty = tmp_path / "empty"
    empty.mkdir()
    yield "no class folders", empty, "found 0 class folder(s)"

    one = tmp_path / "one"
    shutil.copytree(discs / "bright", one / "bright")
    yield "one class", one, "found 1 class folder(s)"

    few = _copy(discs, tmp_path / "few")
    for path in sorted((few / "dark").iterdir())[3:]:
        path.unlink()
    yield "too few images", few, "class 'dark' has only 3 readable image(s)"

    twice = _copy(discs, tmp_path / "twice")
    shutil.copy(twice / "bright" / "syn_p01_0.png", twice / "dark" / "copy_of_bright.png")
    yield "same file in two classes", twice, "copy_of_bright.png"

    one_patient = _copy(discs, tmp_path / "one_patient")
    for k, path in enumerate(sorted((one_patient / "dark").iterdir())):
        path.rename(path.with_name(f"syn_p99_{k}.png"))
    yield "one patient in a class", one_patient, "only 1 patient"


def test_every_dataset_problem_is_a_message_and_exit_1(discs, tmp_path, capsys):
    for name, dataset, words in _bad_datasets(discs, tmp_path):
        out = tmp_path / f"model-{name.replace(' ', '-')}"
        code, stdout, stderr = _train(capsys, dataset, out)
        assert code == 1, (name, stdout, stderr)
        assert words in stderr, (name, stderr)
        assert "error: " in stderr, (name, stderr)
        assert "Traceback" not in stderr + stdout, name
        assert not out.exists(), name


def test_unknown_base_is_a_usage_error(discs, tmp_path, capsys):
    code, _out, err = _train(capsys, discs, tmp_path / "m", "--base", "resnet-9000")
    assert code == 2 and "unknown base 'resnet-9000'" in err


def test_an_input_size_the_base_cannot_take_is_a_message_and_exit_1(discs, tmp_path, capsys):
    code, out, err = _train(capsys, discs, tmp_path / "m", "--input-size", "100")
    assert code == 1 and "input size must be a multiple of 16" in err and "Traceback" not in out + err
    assert not (tmp_path / "m").exists()


def test_train_writes_a_bundle_and_prints_the_report(discs, tmp_path, capsys):
    data = _copy(discs, tmp_path)
    (data / "bright" / "broken.png").write_bytes(b"this is not a png")      # a warning: left out, run goes on
    out = tmp_path / "models" / "discs"
    plot = tmp_path / "plot.png"
    code, stdout, stderr = _train(capsys, data, out, "--epochs", "3", "--variants", "1", "--val-fraction", "0.25",
                                  "--plot", str(plot))
    assert code == 0, stderr
    assert "unreadable file(s) left out" in stderr and "broken.png" in stderr
    assert "epoch 3/3" in stderr
    for words in ("precision", "confusion matrix", "accuracy:", "bright: sensitivity", "dark: sensitivity",
                  "specificity", "model written to"):
        assert words in stdout, words
    assert (out / "model.json").is_file() and (out / "plot.png").is_file()
    assert plot.read_bytes()[:4] == b"\x89PNG"
    from xrayviewer.model.bundle import load_bundle

    assert load_bundle(out).name == "discs"
