"""The prediction panel: probabilities per class, the model and its card, the disclaimer, lung attention, OOD
warning, errors, a spinner while computing, and the image's facts (size, format, DICOM tags)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PySide6.QtCore import QRectF, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QFontMetrics, QPainter, QPalette, QPen
from PySide6.QtWidgets import QFormLayout, QFrame, QHBoxLayout, QLabel, QSizePolicy, QVBoxLayout, QWidget

from xrayviewer import DISCLAIMER
from xrayviewer.ui.colours import ERROR_TEXT
from xrayviewer.ui.folder_panel import confidence_colour
from xrayviewer.ui.jobs import Explained, LoadedImage

LOW_LUNG_ATTENTION = 0.5
DICOM_TAGS = ("PatientID", "PatientSex", "PatientAge", "StudyDate", "Modality", "BodyPartExamined", "ViewPosition",
              "Manufacturer", "InstitutionName", "StudyDescription")


class Spinner(QWidget):
    """A small spinning arc; animates only while running."""

    def __init__(self, parent=None, size: int = 16):
        super().__init__(parent)
        self.setFixedSize(size, size)
        self._angle = 0
        self._timer = QTimer(self, interval=70)
        self._timer.timeout.connect(self._tick)
        self.hide()

    def start(self) -> None:
        self.show()
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()
        self.hide()

    @property
    def running(self) -> bool:
        return self._timer.isActive()

    def _tick(self) -> None:
        self._angle = (self._angle + 30) % 360
        self.update()

    def paintEvent(self, _event):  # noqa: N802
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        pen = QPen(self.palette().color(QPalette.ColorRole.Highlight), 2.2)
        pen.setCapStyle(Qt.PenCapStyle.RoundCap)
        p.setPen(pen)
        r = QRectF(2, 2, self.width() - 4, self.height() - 4)
        p.drawArc(r, -self._angle * 16, 270 * 16)


class ProbabilityBars(QWidget):
    """One bar per class; the predicted class is bold, the explained (target) class is outlined. Click a bar to
    explain that class."""

    classClicked = Signal(int)
    ROW = 24

    def __init__(self, parent=None):
        super().__init__(parent)
        self.classes: list[str] = []
        self.probabilities: np.ndarray | None = None
        self.target = -1
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setCursor(Qt.CursorShape.PointingHandCursor)
        self.setToolTip("Click a class to show the heatmap for it")

    def set_values(self, classes: list[str], probabilities: np.ndarray | None, target: int = -1) -> None:
        self.classes = list(classes)
        self.probabilities = None if probabilities is None else np.asarray(probabilities, float)
        self.target = target
        self.setFixedHeight(max(1, len(self.classes)) * self.ROW + 4)
        self.update()

    def sizeHint(self) -> QSize:  # noqa: N802
        return QSize(260, max(1, len(self.classes)) * self.ROW + 4)

    def mousePressEvent(self, event):  # noqa: N802
        row = int(event.position().y() // self.ROW)
        if 0 <= row < len(self.classes):
            self.classClicked.emit(row)

    def paintEvent(self, _event):  # noqa: N802
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        bold = p.font()
        bold.setBold(True)
        fm = QFontMetrics(bold)     # the predicted class is drawn bold: measure for that
        label_w = max([fm.horizontalAdvance(c) for c in self.classes] + [40]) + 10
        pct_w = fm.horizontalAdvance("100.0 %") + 6
        bar_x, bar_w = label_w, max(20, self.width() - label_w - pct_w - 4)
        text = self.palette().color(QPalette.ColorRole.Text)
        groove = self.palette().color(QPalette.ColorRole.AlternateBase)
        predicted = int(np.argmax(self.probabilities)) if self.probabilities is not None else -1
        for i, name in enumerate(self.classes):
            y = i * self.ROW + 2
            font = p.font()
            font.setBold(i == predicted)
            p.setFont(font)
            p.setPen(text)
            p.drawText(QRectF(0, y, label_w - 6, self.ROW - 4), Qt.AlignmentFlag.AlignVCenter, name)
            bar = QRectF(bar_x, y + 4, bar_w, self.ROW - 12)
            p.setPen(Qt.PenStyle.NoPen)
            p.setBrush(groove)
            p.drawRoundedRect(bar, 3, 3)
            if self.probabilities is not None:
                value = float(self.probabilities[i])
                p.setBrush(confidence_colour(value) if i == predicted else QColor("#6b7785"))
                p.drawRoundedRect(QRectF(bar.x(), bar.y(), max(2.0, bar.width() * value), bar.height()), 3, 3)
                p.setPen(text)
                p.drawText(QRectF(bar_x + bar_w + 4, y, pct_w, self.ROW - 4),
                           Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignRight, f"{value * 100:.1f} %")
            if i == self.target:
                pen = QPen(self.palette().color(QPalette.ColorRole.Highlight), 1.5)
                p.setPen(pen)
                p.setBrush(Qt.BrushStyle.NoBrush)
                p.drawRoundedRect(QRectF(1, y, self.width() - 2, self.ROW - 2), 4, 4)


def _wrapping_label(text: str, tooltip: str = "") -> QLabel:
    """A value that wraps even without spaces (DICOM UIDs, long file names) instead of widening the panel."""
    label = QLabel("\u200b".join(text[i:i + 16] for i in range(0, len(text), 16)))
    label.setWordWrap(True)
    label.setToolTip(tooltip or text)
    label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


def _section(title: str) -> QLabel:
    label = QLabel(title)
    label.setObjectName("sectionTitle")
    return label


class PredictionPanel(QWidget):
    """Shows one image's result. `classClicked(index)` asks the window to explain another class."""

    classClicked = Signal(int)
    modelCardRequested = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.headline = QLabel("No image")
        self.headline.setObjectName("headline")
        self.headline.setWordWrap(True)
        self.spinner = Spinner()
        self.status = QLabel("")
        self.status.setObjectName("panelHint")
        self.status.setWordWrap(True)
        self.error = QLabel("")
        self.error.setObjectName("errorBox")
        self.error.setWordWrap(True)
        self.error.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.error.hide()
        self.bars = ProbabilityBars()
        self.bars.classClicked.connect(self.classClicked)
        self.ood = QLabel("⚠ <b>Not a chest X-ray?</b> This image is far from the images the model learned from; "
                          "its prediction is unreliable.")
        self.ood.setObjectName("warningBox")
        self.ood.setWordWrap(True)
        self.ood.hide()
        self.attention = QLabel("")
        self.attention.setObjectName("attention")
        self.attention.setWordWrap(True)
        self.attention.hide()
        self.notes = QLabel("")
        self.notes.setObjectName("panelHint")
        self.notes.setWordWrap(True)
        self.notes.hide()
        self.model_line = QLabel("Model: none loaded")
        self.model_line.setObjectName("modelLine")
        self.model_line.setWordWrap(True)
        self.model_line.setTextInteractionFlags(Qt.TextInteractionFlag.LinksAccessibleByMouse)
        self.model_line.linkActivated.connect(lambda _link: self.modelCardRequested.emit())
        self.disclaimer = QLabel(DISCLAIMER)
        self.disclaimer.setObjectName("disclaimer")
        self.disclaimer.setWordWrap(True)
        self.facts = QFormLayout()
        self.facts.setContentsMargins(0, 0, 0, 0)
        self.facts.setHorizontalSpacing(8)
        self.facts.setVerticalSpacing(2)
        self.facts.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)

        status_row = QHBoxLayout()
        status_row.setContentsMargins(0, 0, 0, 0)
        status_row.addWidget(self.spinner)
        status_row.addWidget(self.status, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 8, 10, 8)
        layout.setSpacing(6)
        layout.addWidget(_section("Prediction"))
        layout.addWidget(self.headline)
        layout.addLayout(status_row)
        layout.addWidget(self.error)
        layout.addWidget(self.bars)
        layout.addWidget(self.ood)
        layout.addWidget(self.attention)
        layout.addWidget(self.notes)
        layout.addWidget(self.model_line)
        layout.addWidget(self.disclaimer)
        rule = QFrame()
        rule.setFrameShape(QFrame.Shape.HLine)
        rule.setObjectName("rule")
        layout.addWidget(rule)
        layout.addWidget(_section("Image"))
        layout.addLayout(self.facts)

    # --- model
    def set_model(self, name: str, version: str = "", classes: list[str] | None = None,
                  has_card: bool = False, note: str = "") -> None:
        card = ' · <a href="card">model card</a>' if has_card else ""
        extra = f"<br><span style='color:#9aa4ae'>{note}</span>" if note else ""
        self.model_line.setText(f"Model: <b>{name}</b> {version}{card}{extra}")
        if classes is not None and (self.bars.probabilities is None or len(classes) != len(self.bars.classes)):
            self.bars.set_values(classes, None)

    # --- states
    def set_busy(self, text: str) -> None:
        self.status.setText(text)
        self.status.show()
        self.spinner.start() if text and not text.startswith("No model") else self.spinner.stop()
        self.error.hide()

    def set_error(self, text: str, title: str = "Could not compute the prediction") -> None:
        self.spinner.stop()
        self.status.hide()
        self.error.setText(f"<b>{title}</b><br>{text}")
        self.error.show()

    def clear_result(self, headline: str = "…") -> None:
        self.headline.setText(headline)
        self.bars.set_values(self.bars.classes, None)
        for w in (self.ood, self.attention, self.notes, self.error):
            w.hide()

    def show_image_facts(self, image: LoadedImage | None, path: str | None = None) -> None:
        while self.facts.rowCount():
            self.facts.removeRow(0)
        if path:
            self.facts.addRow("File", _wrapping_label(Path(path).name, str(path)))
        if image is None:
            return
        meta = image.radiograph.meta
        rows, cols = image.shape
        self.facts.addRow("Size", QLabel(f"{cols} × {rows} px"))
        fmt = str(meta.get("format", ""))
        depth = meta.get("bit_depth")
        self.facts.addRow("Format", QLabel(f"{fmt}{f', {depth}-bit' if depth else ''}"
                                           f"{', ' + str(meta['photometric']) if meta.get('photometric') else ''}"))
        dicom = meta.get("dicom") or {}
        for tag in DICOM_TAGS:
            value = dicom.get(tag)
            if value not in (None, ""):
                self.facts.addRow(tag, _wrapping_label(str(value)))
        for note in meta.get("notes") or []:
            label = QLabel(str(note))
            label.setWordWrap(True)
            label.setObjectName("panelHint")
            self.facts.addRow("Note", label)

    def show_result(self, explained: Explained) -> None:
        self.spinner.stop()
        self.status.hide()
        self.error.hide()
        row = explained.row
        classes = list(row.probabilities)
        probs = np.array([row.probabilities[c] for c in classes])
        self.headline.setText(f"{row.predicted}  <span style='font-weight:normal'>{row.confidence * 100:.1f} %</span>"
                              + (f"<br><span style='font-size:9pt;font-weight:normal;color:{ERROR_TEXT}'>folder says "
                                 f"{row.ground_truth}</span>" if row.ground_truth and row.correct is False else ""))
        self.bars.set_values(classes, probs, explained.class_index)
        self.ood.setVisible(bool(row.ood_flag))
        attention = explained.lung_attention
        if attention is None or (isinstance(attention, float) and math.isnan(attention)):
            self.attention.hide()
        else:
            low = attention < LOW_LUNG_ATTENTION
            self.attention.setProperty("low", low)
            self.attention.style().unpolish(self.attention)
            self.attention.style().polish(self.attention)
            text = f"{attention * 100:.0f} % of the attention is on the lungs"
            if low:
                text = ("⚠ " + text + " — the model may be looking at something else (text, borders, devices); "
                        "judge this prediction with care.")
            self.attention.setText(text)
            self.attention.show()
        self.notes.setText("\n".join(explained.notes))
        self.notes.setVisible(bool(explained.notes))
