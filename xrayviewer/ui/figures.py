"""Matplotlib figures in the dialogs: drawn off the GUI thread to RGBA arrays, themed to the window, shown scaled."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtGui import QPalette, QPixmap
from PySide6.QtWidgets import QLabel, QSizePolicy, QWidget

from xrayviewer.ui.image_view import pixmap_rgba


def render_figure(fig) -> np.ndarray:
    """A matplotlib Figure drawn off-screen to an RGBA array (so the GUI thread only shows a pixmap)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba()).copy()


@dataclass(frozen=True)
class FigureColours:
    """The window's colours, for figures shown in the dialog: drawn on a transparent background, they sit in
    the theme (the app's is dark) instead of as white panels. Figures saved to files keep matplotlib's defaults."""

    text: str
    muted: str
    window: str

    @classmethod
    def of(cls, widget: QWidget) -> FigureColours:
        palette = widget.palette()
        return cls(palette.color(QPalette.ColorRole.WindowText).name(),
                   palette.color(QPalette.ColorRole.PlaceholderText).name(),
                   palette.color(QPalette.ColorRole.Window).name())


def theme_figure(fig, colours: FigureColours | None, *, transparent: bool = True) -> None:
    """Titles, labels, ticks, frames and legends in the window's colours (data colours stay), on a transparent
    background, or on the window's colour where the figure is drawn straight on a canvas widget (which paints
    transparency white)."""
    if colours is None:
        return
    if transparent:
        fig.patch.set_alpha(0.0)
    else:
        fig.patch.set_facecolor(colours.window)
    suptitle = getattr(fig, "_suptitle", None)     # matplotlib keeps no public handle on it
    if suptitle is not None:
        suptitle.set_color(colours.text)
    for ax in fig.axes:
        ax.patch.set_alpha(0.0)
        for text in (ax.title, ax.xaxis.label, ax.yaxis.label):
            text.set_color(colours.text)
        ax.tick_params(which="both", colors=colours.text)
        for spine in ax.spines.values():
            spine.set_edgecolor(colours.muted)
        legend = ax.get_legend()
        if legend is not None:
            legend.get_frame().set_facecolor(colours.window)
            legend.get_frame().set_edgecolor(colours.muted)
            for text in legend.get_texts():
                text.set_color(colours.text)


class FigureView(QLabel):
    """Shows a rendered figure, scaled to fit while keeping its aspect ratio."""

    def __init__(self, placeholder: str = "", parent: QWidget | None = None):
        super().__init__(placeholder, parent)
        self._pixmap: QPixmap | None = None
        self.setAlignment(Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop)
        self.setMinimumSize(240, 180)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setWordWrap(True)

    def set_image(self, image: np.ndarray) -> None:
        """image: RGBA uint8 (h, w, 4), as render_figure and the audit's figure reader give."""
        self._pixmap = pixmap_rgba(image)
        self._rescale()

    def clear_image(self, text: str = "") -> None:
        self._pixmap = None
        self.clear()
        self.setText(text)

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().resizeEvent(event)
        self._rescale()

    def _rescale(self) -> None:
        if self._pixmap is not None:
            self.setPixmap(self._pixmap.scaled(self.size(), Qt.AspectRatioMode.KeepAspectRatio,
                                               Qt.TransformationMode.SmoothTransformation))
