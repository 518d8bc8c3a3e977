"""Side-panel controls: the explanation (method, target class, colormap, opacity, overlay, lungs) and the display
(window/level, invert, reset). They only emit what the user asked for; the window applies it."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QCheckBox, QComboBox, QFormLayout, QHBoxLayout, QLabel, QPushButton, QSlider,
                               QVBoxLayout, QWidget)

from xrayviewer.ui.image_view import COLORMAPS
from xrayviewer.ui.jobs import METHODS

AUTO_CLASS = -1


def _slider(lo: int, hi: int, value: int) -> QSlider:
    s = QSlider(Qt.Orientation.Horizontal)
    s.setRange(lo, hi)
    s.setValue(value)
    s.setFocusPolicy(Qt.FocusPolicy.ClickFocus)   # arrow keys stay "previous / next image"
    return s


class HeatmapControls(QWidget):
    methodChanged = Signal(str)
    classChanged = Signal(object)        # int class index, or None for "the predicted class"
    colormapChanged = Signal(str)
    opacityChanged = Signal(float)
    overlayToggled = Signal(bool)
    outlineToggled = Signal(bool)
    lungsOnlyToggled = Signal(bool)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.method = QComboBox()
        self.method.setObjectName("methodBox")
        for key, text in METHODS.items():
            self.method.addItem(text, key)
        self.method.setToolTip("Grad-CAM comes with the prediction; Grad-CAM++ and Score-CAM take a few seconds")
        self.target = QComboBox()
        self.target.setObjectName("targetBox")
        self.colormap = QComboBox()
        self.colormap.setObjectName("colormapBox")
        for name in COLORMAPS:
            self.colormap.addItem(name.capitalize(), name)
        self.opacity = _slider(0, 100, 45)
        self.opacity.setObjectName("opacitySlider")
        self.opacity_value = QLabel("45 %")
        self.overlay = QCheckBox("Overlay on one image")
        self.overlay.setObjectName("overlayCheck")
        self.overlay.setToolTip("Off: radiograph and heatmap side by side with linked zoom (O)")
        self.outline = QCheckBox("Lung outline")
        self.outline.setObjectName("outlineCheck")
        self.lungs_only = QCheckBox("Heatmap only inside the lungs")
        self.lungs_only.setObjectName("lungsOnlyCheck")
        for box in (self.overlay, self.outline, self.lungs_only):
            box.setFocusPolicy(Qt.FocusPolicy.NoFocus)   # Space stays "reset view"; each has its key (O, U, ⇧U)
        self.set_lungs_available(False)
        self.set_classes([])

        opacity_row = QHBoxLayout()
        opacity_row.addWidget(self.opacity, 1)
        opacity_row.addWidget(self.opacity_value)
        form = QFormLayout(self)
        form.setContentsMargins(10, 4, 10, 4)
        form.setVerticalSpacing(5)
        form.addRow("Method", self.method)
        form.addRow("Class", self.target)
        form.addRow("Colours", self.colormap)
        form.addRow("Opacity", opacity_row)
        form.addRow(self.overlay)
        form.addRow(self.outline)
        form.addRow(self.lungs_only)

        self.method.currentIndexChanged.connect(lambda _i: self.methodChanged.emit(self.method.currentData()))
        self.target.currentIndexChanged.connect(self._on_target)
        self.colormap.currentIndexChanged.connect(lambda _i: self.colormapChanged.emit(self.colormap.currentData()))
        self.opacity.valueChanged.connect(self._on_opacity)
        self.overlay.toggled.connect(self.overlayToggled)
        self.outline.toggled.connect(self.outlineToggled)
        self.lungs_only.toggled.connect(self.lungsOnlyToggled)

    def set_classes(self, classes: list[str]) -> None:
        current = self.target.currentData()
        self.target.blockSignals(True)
        self.target.clear()
        self.target.addItem("Predicted class", AUTO_CLASS)
        for i, name in enumerate(classes):
            self.target.addItem(name, i)
        index = self.target.findData(current)
        self.target.setCurrentIndex(max(0, index))
        self.target.blockSignals(False)

    def set_target(self, class_index: int | None) -> None:
        """Show the choice without emitting (the window already applied it)."""
        self.target.blockSignals(True)
        self.target.setCurrentIndex(max(0, self.target.findData(AUTO_CLASS if class_index is None else class_index)))
        self.target.blockSignals(False)

    def set_lungs_available(self, available: bool) -> None:
        tip = "" if available else "Needs the lung model (models/lungs)"
        for box in (self.outline, self.lungs_only):
            box.setEnabled(available)
            box.setToolTip(tip)

    def _on_target(self, _i: int) -> None:
        data = self.target.currentData()
        self.classChanged.emit(None if data in (None, AUTO_CLASS) else int(data))

    def _on_opacity(self, value: int) -> None:
        self.opacity_value.setText(f"{value} %")
        self.opacityChanged.emit(value / 100.0)


class DisplayControls(QWidget):
    """Window width and level sliders (0..1 pixel units, shown in %), invert, reset."""

    windowChanged = Signal(float, float)     # center, width
    invertToggled = Signal()
    resetRequested = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.level = _slider(-50, 150, 50)
        self.level.setObjectName("levelSlider")
        self.width = _slider(1, 200, 100)
        self.width.setObjectName("widthSlider")
        self.invert = QCheckBox("Invert")
        self.invert.setObjectName("invertCheck")
        self.invert.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.reset = QPushButton("Reset view")
        self.reset.setToolTip("Window/level, zoom, rotation and flips back to default (Space)")
        self.reset.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        hint = QLabel("Right-drag on the image: ↔ width, ↕ level")
        hint.setObjectName("panelHint")
        row = QHBoxLayout()
        row.addWidget(self.invert)
        row.addStretch(1)
        row.addWidget(self.reset)
        form = QFormLayout()
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("Level", self.level)
        form.addRow("Width", self.width)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 4, 10, 4)
        layout.addLayout(form)
        layout.addLayout(row)
        layout.addWidget(hint)
        self.level.valueChanged.connect(self._emit)
        self.width.valueChanged.connect(self._emit)
        self.invert.clicked.connect(lambda _checked: self.invertToggled.emit())
        self.reset.clicked.connect(self.resetRequested)

    def show_state(self, center: float, width: float, inverted: bool) -> None:
        for slider, value in ((self.level, center), (self.width, width)):
            slider.blockSignals(True)
            slider.setValue(round(value * 100))
            slider.blockSignals(False)
        self.invert.blockSignals(True)
        self.invert.setChecked(inverted)
        self.invert.blockSignals(False)

    def _emit(self, _value: int) -> None:
        self.windowChanged.emit(self.level.value() / 100.0, self.width.value() / 100.0)
