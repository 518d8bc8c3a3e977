"""Models manager: lists shipped (read-only) and user bundles with metrics; rename, delete, export zip; broken bundles
are listed with their error instead of crashing the dialog."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from PySide6.QtWidgets import QFileDialog, QInputDialog, QMessageBox

from xrayviewer.model.bundle import load_bundle, save_bundle
from xrayviewer.ui import models_manager
from xrayviewer.ui.models_manager import ModelsManagerDialog, rename_bundle
from xrayviewer.ui.workers import active_workers


@pytest.fixture(scope="module")
def tiny_model():
    """A small flat classifier (small-cnn base, random weights): enough to write real bundles quickly."""
    from xrayviewer.model.architecture import build_classifier

    return build_classifier("small-cnn", 2, {"units": 8, "dropout": 0.0}, (32, 32))


def _save(model, folder: Path, name: str, accuracy: float = 0.75) -> Path:
    meta = {"name": name, "classes": ["normal", "pneumonia"], "base": {"id": "small-cnn"},
            "metrics": {"accuracy": accuracy, "macro_auc": 0.8}}
    return save_bundle(folder, meta, model)


@pytest.fixture()
def dirs(tmp_path, tiny_model):
    shipped, user = tmp_path / "shipped", tmp_path / "user"
    _save(tiny_model, shipped / "default", "Shipped model")
    _save(tiny_model, user / "mine", "My model", accuracy=0.9)
    broken = _save(tiny_model, user / "broken", "Broken model")
    (broken / load_bundle(broken).meta["weights"]["file"]).write_bytes(b"not weights")
    return [(shipped, True), (user, False)]


def _open(qtbot, dirs, window=None) -> ModelsManagerDialog:
    dialog = ModelsManagerDialog(window, dirs=dirs)
    qtbot.addWidget(dialog)
    qtbot.waitUntil(lambda: not dialog.busy() and len(dialog.entries) > 0, timeout=10000)
    return dialog


def _row(dialog, name) -> int:
    return [e.name for e in dialog.entries].index(name)


def _cells(dialog, row) -> list[str]:
    return [dialog.table.item(row, c).text() for c in range(dialog.table.columnCount())]


def test_lists_bundles_with_metrics_and_broken_one_with_its_error(qtbot, dirs, artifacts_dir):
    dialog = _open(qtbot, dirs)
    dialog.show()
    dialog.grab().save(str(artifacts_dir / "models_manager_broken.png"))
    names = [e.name for e in dialog.entries]
    assert sorted(names) == ["Broken model", "My model", "Shipped model"]
    mine = _cells(dialog, _row(dialog, "My model"))
    assert "yours" in mine and "normal, pneumonia" in mine and "0.900" in mine and "usable" in mine
    assert "shipped (read-only)" in _cells(dialog, _row(dialog, "Shipped model"))
    broken = _cells(dialog, _row(dialog, "Broken model"))
    assert any("damaged" in c for c in broken), broken   # the loader's reason, shown as-is
    assert "cannot be used" in dialog.status.text()
    dialog.table.selectRow(_row(dialog, "Broken model"))
    assert "damaged" in dialog.status.text() and "broken" in dialog.status.text()   # full reason and the folder


def test_shipped_models_are_read_only(qtbot, dirs):
    dialog = _open(qtbot, dirs)
    dialog.table.selectRow(_row(dialog, "Shipped model"))
    assert not dialog.rename_button.isEnabled() and not dialog.delete_button.isEnabled()
    assert dialog.export_button.isEnabled()


def test_rename_edits_model_json_and_keeps_the_bundle_valid(qtbot, dirs, monkeypatch):
    dialog = _open(qtbot, dirs)
    dialog.table.selectRow(_row(dialog, "My model"))
    monkeypatch.setattr(QInputDialog, "getText", staticmethod(lambda *a, **k: ("Renamed model", True)))
    dialog.rename_selected()
    qtbot.waitUntil(lambda: not dialog.busy() and "Renamed model" in [e.name for e in dialog.entries], timeout=10000)
    bundle = load_bundle(dirs[1][0] / "mine")
    assert bundle.name == "Renamed model"
    assert not [p for p in (dirs[1][0] / "mine").iterdir() if p.name.startswith(".")]   # no temp file left


def test_rename_is_atomic_on_failure(tmp_path, dirs, monkeypatch):
    folder = dirs[1][0] / "mine"
    before = (folder / "model.json").read_bytes()

    def fail(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(models_manager.os, "replace", fail)
    with pytest.raises(OSError):
        rename_bundle(folder, "New")
    assert (folder / "model.json").read_bytes() == before
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]   # the temp file is cleaned up


def test_delete_asks_and_removes_the_folder(qtbot, dirs, monkeypatch):
    dialog = _open(qtbot, dirs)
    dialog.table.selectRow(_row(dialog, "My model"))
    asked = []
    monkeypatch.setattr(QMessageBox, "question",
                        staticmethod(lambda *a, **k: asked.append(a) or QMessageBox.StandardButton.No))
    dialog.delete_selected()
    assert asked and (dirs[1][0] / "mine").is_dir()          # "No" keeps it
    monkeypatch.setattr(QMessageBox, "question", staticmethod(lambda *a, **k: QMessageBox.StandardButton.Yes))
    dialog.delete_selected()
    qtbot.waitUntil(lambda: not dialog.busy() and "My model" not in [e.name for e in dialog.entries], timeout=10000)
    assert not (dirs[1][0] / "mine").exists()
    assert not [p for p in dirs[1][0].iterdir() if p.name.startswith(".")]


def test_deleting_the_model_in_use_says_so(qtbot, dirs, monkeypatch):
    class Service:
        bundle_path = dirs[1][0] / "mine"

    class Window:
        model_service = Service()

    dialog = _open(qtbot, dirs, Window())
    dialog.table.selectRow(_row(dialog, "My model"))
    asked = []
    monkeypatch.setattr(QMessageBox, "question",
                        staticmethod(lambda *a, **k: asked.append(a[2]) or QMessageBox.StandardButton.No))
    dialog.delete_selected()
    assert "viewer is using this model" in asked[0]


def test_export_zip_holds_the_bundle(qtbot, dirs, tmp_path, monkeypatch):
    dialog = _open(qtbot, dirs)
    dialog.table.selectRow(_row(dialog, "My model"))
    out = tmp_path / "exported"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(lambda *a, **k: (str(out), "")))
    dialog.export_selected()
    qtbot.waitUntil(lambda: "Exported" in dialog.status.text(), timeout=10000)
    with zipfile.ZipFile(tmp_path / "exported.zip") as archive:
        names = archive.namelist()
        meta = json.loads(archive.read("mine/model.json"))
    assert meta["name"] == "My model" and any(n.endswith(".weights.h5") for n in names)
    extracted = tmp_path / "unzipped"
    zipfile.ZipFile(tmp_path / "exported.zip").extractall(extracted)
    assert load_bundle(extracted / "mine").name == "My model"


def test_use_in_viewer_calls_the_window(qtbot, dirs):
    class Window:
        def __init__(self):
            self.used = []

        def use_model(self, path):
            self.used.append(Path(path))

    window = Window()
    dialog = _open(qtbot, dirs, window)
    dialog.table.selectRow(_row(dialog, "Broken model"))
    assert not dialog.use_button.isEnabled()
    dialog.table.selectRow(_row(dialog, "My model"))
    dialog.use_selected()
    assert window.used == [dirs[1][0] / "mine"]
    dialog.close()
    qtbot.waitUntil(lambda: not active_workers(), timeout=5000)


def test_shipped_default_model_is_listed_read_only_with_its_metrics(qtbot, artifacts_dir):
    from xrayviewer.paths import DEFAULT_MODEL_DIR

    dialog = ModelsManagerDialog()            # the real folders: models/ and the (test) user models folder
    qtbot.addWidget(dialog)
    qtbot.waitUntil(lambda: not dialog.busy(), timeout=10000)
    shipped = [e for e in dialog.entries if e.path == DEFAULT_MODEL_DIR.resolve()]
    assert len(shipped) == 1 and shipped[0].read_only and not shipped[0].error
    row = dialog.entries.index(shipped[0])
    cells = _cells(dialog, row)
    accuracy = load_bundle(DEFAULT_MODEL_DIR).metrics["validation"]["accuracy"]
    assert f"{accuracy:.3f}" in cells and "shipped (read-only)" in cells
    dialog.show()
    dialog.grab().save(str(artifacts_dir / "models_manager.png"))
