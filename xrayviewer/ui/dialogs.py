"""Help › Shortcuts, About, Disclaimer, and the model card viewer."""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QKeySequence
from PySide6.QtWidgets import (QDialog, QDialogButtonBox, QMainWindow, QMenu, QMessageBox, QTextBrowser,
                               QVBoxLayout, QWidget)

from xrayviewer import APP_NAME, DISCLAIMER, __version__
from xrayviewer.ui.shortcuts import MOUSE, SHORTCUTS

DISCLAIMER_TEXT = (f"<p><b>{DISCLAIMER}</b></p>"
                   "<p>XRayViewer is an instrument for studying what image classifiers look at in chest radiographs. "
                   "It is not a medical device. Its predictions, confidences and heatmaps must never be used to "
                   "diagnose, treat or triage a patient.</p>"
                   "<p>The shipped model was trained on a few hundred public images whose classes come mostly from "
                   "different hospitals and age groups; it can score well by recognising the source rather than the "
                   "disease. The lung-attention figure and the heatmap are there to help you catch that.</p>")


def menu_shortcuts(window: QWidget | None) -> list[tuple[str, tuple[str, ...], str]]:
    """(text, shortcuts, menu title) of the actions with shortcuts in the window's menus that SHORTCUTS does not list:
    the extensions' own (Classify folder, Train…), found where they put them, so Help › Shortcuts never misses one."""
    bar = window.menuBar() if isinstance(window, QMainWindow) else None
    if bar is None:
        return []
    listed = set(getattr(window, "actions_by_id", {}).values())
    found: list[tuple[str, tuple[str, ...], str]] = []

    def walk(menu: QMenu, title: str) -> None:
        for action in menu.actions():
            if action.menu() is not None:
                walk(action.menu(), title)
            elif action.shortcuts() and action not in listed:
                listed.add(action)   # an action in two menus is listed once
                keys = tuple(k.toString(QKeySequence.SequenceFormat.PortableText) for k in action.shortcuts())
                found.append((action.text(), keys, title))

    for top in bar.actions():
        if top.menu() is not None:
            walk(top.menu(), top.text().replace("&", ""))
    return found


def shortcuts_html(window: QWidget | None = None) -> str:
    """SHORTCUTS, then (given the window) the shortcuts extensions added to its menus, grouped by menu."""
    groups: dict[str, list[str]] = {}
    for text, keys, group in [*SHORTCUTS.values(), *menu_shortcuts(window)]:
        label = text.replace("&", "")
        groups.setdefault(group, []).append(
            f"<tr><td width='170'>{' / '.join(f'<b>{k}</b>' for k in keys)}</td><td>{label}</td></tr>")
    html = []
    for group, rows in groups.items():
        html.append(f"<h3>{group}</h3><table>{''.join(rows)}</table>")
    mouse = "".join(f"<tr><td width='170'><b>{k}</b></td><td>{v}</td></tr>" for k, v in MOUSE)
    html.append(f"<h3>Mouse</h3><table>{mouse}</table>")
    return "".join(html)


class TextDialog(QDialog):
    def __init__(self, title: str, parent: QWidget | None = None, html: str = "", markdown: str = "",
                 size: tuple[int, int] = (560, 620)):
        super().__init__(parent)
        self.setWindowTitle(title)
        self.resize(*size)
        self.browser = QTextBrowser()
        self.browser.setOpenExternalLinks(True)
        if markdown:
            self.browser.setMarkdown(markdown)
        else:
            self.browser.setHtml(html)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.browser)
        layout.addWidget(buttons)


def shortcuts_dialog(parent: QWidget | None = None) -> TextDialog:
    return TextDialog("Keyboard shortcuts", parent, html=shortcuts_html(parent), size=(540, 760))


def model_card_dialog(bundle_path: Path | None, parent: QWidget | None = None) -> QDialog | None:
    """The bundle's MODEL_CARD.md rendered in a dialog; None (after telling the user) when there is none."""
    card = Path(bundle_path) / "MODEL_CARD.md" if bundle_path else None
    if card is None or not card.is_file():
        QMessageBox.information(parent, "Model card", "This model has no model card (MODEL_CARD.md)."
                                if bundle_path else "No model is loaded.")
        return None
    try:
        text = card.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        QMessageBox.warning(parent, "Model card", f"Cannot read {card}: {exc}")
        return None
    dialog = TextDialog(f"Model card — {Path(bundle_path).name}", parent, markdown=text, size=(760, 720))
    dialog.browser.setSearchPaths([str(card.parent)])   # figures referenced by the card
    return dialog


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def about_text() -> str:
    rows = [("Python", platform.python_version()), ("Qt (PySide6)", _version("PySide6-Essentials")),
            ("TensorFlow", _version("tensorflow")), ("Keras", _version("keras")), ("NumPy", _version("numpy")),
            ("OpenCV", _version("opencv-python-headless")), ("pydicom", _version("pydicom")),
            ("tf-keras-vis", _version("tf-keras-vis"))]
    table = "".join(f"<tr><td style='padding-right:14px'>{k}</td><td>{v}</td></tr>" for k, v in rows)
    return (f"<h2>{APP_NAME} {__version__}</h2><p>Chest radiographs beside a model's prediction and its Grad-CAM "
            f"heatmap, for clinician-researchers who study what models look at.</p><p><b>{DISCLAIMER}</b></p>"
            f"<table>{table}</table>")


def about_dialog(parent: QWidget | None = None) -> QMessageBox:
    box = QMessageBox(parent)
    box.setWindowTitle(f"About {APP_NAME}")
    box.setTextFormat(Qt.TextFormat.RichText)
    box.setText(about_text())
    return box


def disclaimer_dialog(parent: QWidget | None = None) -> QMessageBox:
    box = QMessageBox(parent)
    box.setWindowTitle("Disclaimer")
    box.setIcon(QMessageBox.Icon.Warning)
    box.setTextFormat(Qt.TextFormat.RichText)
    box.setText(DISCLAIMER_TEXT)
    return box

