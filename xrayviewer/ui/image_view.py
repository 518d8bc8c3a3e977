"""The radiograph and its heatmap: two linked QGraphicsViews side by side, or one with the heatmap overlaid.

The view state (zoom, rotation, flips, window/level, invert, opacity, colormap) lives in `ViewerPane`; each
`RadiographCanvas` only draws. Rotation and flips are view transforms: the pixels are never changed. The heatmap is a
pixmap at most DISPLAY_MAX_SIDE big, scaled by an item transform onto exactly the image's extent, so it lies on the
image pixel for pixel at every zoom, rotation and flip.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
from PySide6.QtCore import QPointF, QRectF, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QImage, QPainter, QPainterPath, QPen, QPixmap, QPolygonF, QTransform
from PySide6.QtWidgets import (QFrame, QGraphicsPathItem, QGraphicsPixmapItem, QGraphicsScene, QGraphicsView,
                               QHBoxLayout, QLabel, QSizePolicy, QVBoxLayout, QWidget)

from xrayviewer.imaging.display import colormap_table, to_uint8, window_level
from xrayviewer.ui.jobs import LEVELS, METHODS, Explained, LoadedImage

COLORMAPS = ("jet", "turbo", "inferno", "viridis", "magma")    # matplotlib names (imaging.display.colorize)
MIN_ZOOM, MAX_ZOOM = 0.02, 32.0
WL_PER_PIXEL = 0.003    # window/level change per pixel of right-drag (pixels are 0..1)


def pixmap_gray(pixels: np.ndarray) -> QPixmap:
    """uint8 (rows, cols) -> QPixmap. The QImage only borrows the array's buffer for the conversion."""
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    rows, cols = pixels.shape
    return QPixmap.fromImage(QImage(pixels.data, cols, rows, pixels.strides[0], QImage.Format.Format_Grayscale8))


def pixmap_rgba(rgba: np.ndarray) -> QPixmap:
    rgba = np.ascontiguousarray(rgba, dtype=np.uint8)
    rows, cols, _ = rgba.shape
    return QPixmap.fromImage(QImage(rgba.data, cols, rows, rgba.strides[0], QImage.Format.Format_RGBA8888))


@lru_cache(maxsize=8)
def _rgba_table(colormap: str) -> np.ndarray:
    """(256, 4) uint8: the colormap's RGB table (imaging.display) with an opaque alpha column."""
    table = np.full((256, 4), 255, np.uint8)
    table[:, :3] = colormap_table(colormap)
    return table


def heatmap_rgba(heatmap: np.ndarray, colormap: str, inside: np.ndarray | None = None) -> np.ndarray:
    """Colour a 0..1 heatmap; pixels outside `inside` (a bool mask of the same shape) are transparent.

    One table look-up into RGBA (a third of the time of colouring RGB and then adding alpha).
    """
    rgba = _rgba_table(colormap)[to_uint8(heatmap)]
    if inside is not None:
        rgba[~inside, 3] = 0
    return rgba


@dataclass
class ViewState:
    zoom: float = 1.0
    fit: bool = True
    rotation: int = 0            # degrees, multiple of 90, clockwise
    flip_h: bool = False
    flip_v: bool = False
    center: float = 0.5          # window level, in pixel units 0..1
    width: float = 1.0           # window width
    invert: bool = False


class RadiographCanvas(QGraphicsView):
    """One pane: the image, optionally the heatmap over it, optionally the lung outline. Draws; holds no state."""

    wheelZoom = Signal(object, float)          # canvas, factor
    windowDrag = Signal(float, float)          # dx, dy pixels of a right-drag
    scrolled = Signal(object)                  # canvas
    resized = Signal(object)
    fitRequested = Signal()
    hovered = Signal(object)                   # QPointF in scene (= image pixel) coordinates, or None on leave

    def __init__(self, name: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName(name)
        self.setScene(QGraphicsScene(self))
        self.setBackgroundBrush(QColor("#0b0d10"))
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setRenderHints(QPainter.RenderHint.SmoothPixmapTransform | QPainter.RenderHint.Antialiasing)
        self.setDragMode(QGraphicsView.DragMode.ScrollHandDrag)
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorUnderMouse)
        self.setResizeAnchor(QGraphicsView.ViewportAnchor.AnchorViewCenter)
        self.setContextMenuPolicy(Qt.ContextMenuPolicy.NoContextMenu)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)   # pan by drag, as in OHIF
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setFocusPolicy(Qt.FocusPolicy.ClickFocus)
        self.image_item = QGraphicsPixmapItem()
        self.image_item.setTransformationMode(Qt.TransformationMode.SmoothTransformation)
        # smooth-scaling a 3000 px radiograph on every repaint is slow: cache it at screen resolution
        self.image_item.setCacheMode(QGraphicsPixmapItem.CacheMode.DeviceCoordinateCache)
        self.heat_item = QGraphicsPixmapItem()
        self.heat_item.setTransformationMode(Qt.TransformationMode.SmoothTransformation)
        self.heat_item.setZValue(1)
        self.outline_item = QGraphicsPathItem()
        pen = QPen(QColor("#7fe7ff"), 1.6)
        pen.setCosmetic(True)  # same thickness at every zoom
        self.outline_item.setPen(pen)
        self.outline_item.setZValue(2)
        for item in (self.image_item, self.heat_item, self.outline_item):
            self.scene().addItem(item)
        self.message = QLabel(self)   # on the view, not its viewport: scrolling moves a viewport's children
        self.message.setObjectName("canvasMessage")
        self.message.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.message.setWordWrap(True)
        self.message.hide()
        self._wl_drag: QPointF | None = None
        self.image_shape: tuple[int, int] | None = None
        self.viewport().setMouseTracking(True)   # pixel read-out under the pointer
        self.horizontalScrollBar().valueChanged.connect(self._emit_scrolled)
        self.verticalScrollBar().valueChanged.connect(self._emit_scrolled)

    # --- content
    def set_image(self, pixmap: QPixmap | None, image_shape: tuple[int, int] | None = None) -> None:
        """The image, drawn over exactly `image_shape` (rows, cols) scene units: scene = image pixel coordinates,
        whatever the pixmap's own size (a reduced copy is used when zoomed out)."""
        if pixmap is None or image_shape is None:
            self.image_item.setPixmap(QPixmap())
            self.image_shape = None
            return
        self.image_item.setPixmap(pixmap)
        rows, cols = image_shape
        self.image_item.setTransform(QTransform.fromScale(cols / pixmap.width(), rows / pixmap.height()))
        if image_shape != self.image_shape:
            self.image_shape = image_shape
            margin = max(rows, cols)   # generous margins so a zoomed or rotated image can be panned to any edge
            self.scene().setSceneRect(QRectF(-margin, -margin, cols + 2 * margin, rows + 2 * margin))

    def set_heatmap(self, pixmap: QPixmap | None, image_shape: tuple[int, int] | None = None) -> None:
        if pixmap is None:
            self.heat_item.setPixmap(QPixmap())
            return
        self.heat_item.setPixmap(pixmap)
        rows, cols = image_shape
        self.heat_item.setTransform(QTransform.fromScale(cols / pixmap.width(), rows / pixmap.height()))

    def set_outline(self, polygons: list[np.ndarray]) -> None:
        path = QPainterPath()
        for poly in polygons:
            path.addPolygon(QPolygonF([QPointF(float(x), float(y)) for x, y in poly]))
            path.closeSubpath()
        self.outline_item.setPath(path)

    def show_message(self, text: str, kind: str = "info") -> None:
        if not text:
            self.message.hide()
            return
        self.message.setText(text)
        self.message.setProperty("kind", kind)
        self.message.style().unpolish(self.message)
        self.message.style().polish(self.message)
        self._place_message()
        self.message.show()

    def _place_message(self) -> None:
        vp = self.rect()
        width = min(vp.width() - 24, 420)
        self.message.setFixedWidth(max(width, 80))
        self.message.adjustSize()
        self.message.move((vp.width() - self.message.width()) // 2, 14)

    # --- geometry helpers
    def image_rect(self) -> QRectF:
        if self.image_shape is None:
            return QRectF()
        rows, cols = self.image_shape
        return QRectF(0, 0, cols, rows)

    def view_center(self) -> QPointF:
        return self.mapToScene(self.viewport().rect().center())

    # --- events
    def _emit_scrolled(self, *_):
        self.scrolled.emit(self)

    def wheelEvent(self, event):  # noqa: N802 - Qt override
        steps = event.angleDelta().y() / 120.0
        if steps:
            self.wheelZoom.emit(self, 1.15 ** steps)
        event.accept()

    def mousePressEvent(self, event):  # noqa: N802
        if event.button() == Qt.MouseButton.RightButton:
            self._wl_drag = event.position()
            self.viewport().setCursor(Qt.CursorShape.SizeAllCursor)
            event.accept()
            return
        super().mousePressEvent(event)

    def mouseMoveEvent(self, event):  # noqa: N802
        self.hovered.emit(self.mapToScene(event.position().toPoint()))
        if self._wl_drag is not None:
            delta = event.position() - self._wl_drag
            self._wl_drag = event.position()
            self.windowDrag.emit(delta.x(), delta.y())
            event.accept()
            return
        super().mouseMoveEvent(event)

    def mouseReleaseEvent(self, event):  # noqa: N802
        if event.button() == Qt.MouseButton.RightButton and self._wl_drag is not None:
            self._wl_drag = None
            self.viewport().unsetCursor()
            event.accept()
            return
        super().mouseReleaseEvent(event)

    def leaveEvent(self, event):  # noqa: N802
        self.hovered.emit(None)
        super().leaveEvent(event)

    def mouseDoubleClickEvent(self, event):  # noqa: N802
        if event.button() == Qt.MouseButton.LeftButton:
            self.fitRequested.emit()
            event.accept()
            return
        super().mouseDoubleClickEvent(event)

    def resizeEvent(self, event):  # noqa: N802
        super().resizeEvent(event)
        if not self.message.isHidden():
            self._place_message()
        self.resized.emit(self)


class ViewerPane(QWidget):
    """Radiograph (left) and heatmap (right) with linked zoom and pan, or one overlaid view.

    Signals: `stateChanged` whenever zoom, window/level, opacity, ... change (panels and settings follow it).
    """

    stateChanged = Signal()
    pixelInfo = Signal(str)      # "x 512  y 300  ·  pixel 0.62  ·  heat 0.81" under the pointer ("" outside)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.state = ViewState()
        self.overlay = False         # True: one view with the heatmap on the image
        self.show_heatmap = True
        self.show_outline = False
        self.lungs_only = False
        self.opacity = 0.45
        self.colormap = "jet"
        self.image: LoadedImage | None = None
        self.explained: Explained | None = None
        self._lut_key = None
        self._lut = None
        self._mips: dict[int, tuple[np.ndarray, np.ndarray]] = {}   # level -> (levels, display8) reduced copies
        self._rendered_level = 0
        self._syncing = False
        self._render_pending = False

        self.left = RadiographCanvas("imageCanvas")
        self.right = RadiographCanvas("heatmapCanvas")
        self.left_title = QLabel("Radiograph")
        self.right_title = QLabel("Heatmap")
        for title in (self.left_title, self.right_title):
            title.setObjectName("paneTitle")
            title.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.left_box, self.right_box = QWidget(), QWidget()
        for box, title, canvas in ((self.left_box, self.left_title, self.left),
                                   (self.right_box, self.right_title, self.right)):
            lay = QVBoxLayout(box)
            lay.setContentsMargins(0, 0, 0, 0)
            lay.setSpacing(0)
            lay.addWidget(title)
            lay.addWidget(canvas, 1)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(self.left_box, 1)
        layout.addWidget(self.right_box, 1)
        for canvas in self.canvases:
            canvas.wheelZoom.connect(self._on_wheel)
            canvas.windowDrag.connect(self._on_window_drag)
            canvas.scrolled.connect(self._on_scrolled)
            canvas.resized.connect(self._on_resized)
            canvas.fitRequested.connect(self.fit)
            canvas.hovered.connect(self._on_hover)
        self.left.heat_item.hide()
        self._show_idle()

    @property
    def canvases(self) -> tuple[RadiographCanvas, RadiographCanvas]:
        return self.left, self.right

    # --- content
    def _show_idle(self) -> None:
        self.left.show_message("Open a folder or drop radiographs here  (File › Open folder…, Ctrl+O)")
        self.right.show_message("")

    def clear(self) -> None:
        self.image, self.explained, self._mips = None, None, {}
        for canvas in self.canvases:
            canvas.set_image(None)
            canvas.set_heatmap(None)
            canvas.set_outline([])
        self._show_idle()
        self._update_titles()

    def show_image(self, image: LoadedImage) -> None:
        """A new radiograph: draw it; the heatmap stays empty until `show_explained`."""
        new_shape = self.image is None or self.image.shape != image.shape
        self.image, self.explained = image, None
        self._mips = {}
        if new_shape or self.state.fit:   # the zoom decides which reduced copy to draw: settle it first
            self.state.fit = True
            self.state.zoom = self.fit_zoom()
        self._render_image()
        for canvas in self.canvases:
            canvas.set_heatmap(None)
            canvas.set_outline([])
            canvas.show_message("")
        if self.state.fit:
            self.fit()
        else:
            self._apply_transform()
        self._update_titles()

    def show_pending(self, text: str) -> None:
        self.right.show_message(text, "busy")

    def show_error(self, text: str, on_image: bool = False) -> None:
        (self.left if on_image and not self.overlay else self.right).show_message(text, "error")
        if on_image:
            self.image, self.explained, self._mips = None, None, {}
            for canvas in self.canvases:
                canvas.set_image(None)
                canvas.set_heatmap(None)
                canvas.set_outline([])
            if not self.overlay:
                self.right.show_message("")
            self._update_titles()

    def show_explained(self, explained: Explained | None) -> None:
        self.explained = explained
        self.right.show_message("")
        self._render_heatmap()
        self._render_outline()
        self._update_titles()

    # --- rendering
    def _render_image(self) -> None:
        self._render_pending = False
        if self.image is None:
            return
        level = self._level_for_zoom()
        levels, display8 = self._mip(level)
        key = (round(self.state.center, 4), round(self.state.width, 4), self.state.invert)
        if key == (0.5, 1.0, False):
            pixels = display8                    # the default window: prepared by the worker
        else:
            if key != self._lut_key:
                ramp = np.linspace(0.0, 1.0, LEVELS, dtype=np.float32)
                lut = to_uint8(window_level(ramp, self.state.center, self.state.width))
                self._lut = 255 - lut if self.state.invert else lut
                self._lut_key = key
            pixels = np.take(self._lut, levels)
        pixmap = pixmap_gray(pixels)             # one conversion, shared by both panes
        for canvas in self.canvases:
            canvas.set_image(pixmap, self.image.shape)
        self._rendered_level = level

    def _level_for_zoom(self) -> int:
        """Reduction factor of the copy to draw: smooth-scaling a 3000 px image down on every paint costs 100 ms+,
        a copy reduced by area averaging (a power of two, never below the screen's resolution) costs little and
        looks better (no aliasing)."""
        level = 1
        longest = max(self.image.shape)
        while level < 8 and self.state.zoom * level * 2 <= 1.0 and longest / (level * 2) >= 256:
            level *= 2
        return level

    def _mip(self, level: int) -> tuple[np.ndarray, np.ndarray]:
        if level == 1:
            return self.image.levels, self.image.display8
        if level not in self._mips:
            rows, cols = self.image.shape
            size = (max(1, round(cols / level)), max(1, round(rows / level)))
            self._mips[level] = (cv2.resize(self.image.levels, size, interpolation=cv2.INTER_AREA),
                                 cv2.resize(self.image.display8, size, interpolation=cv2.INTER_AREA))
        return self._mips[level]

    def _rerender_if_level_changed(self) -> None:
        if self.image is not None and self._level_for_zoom() != self._rendered_level:
            self._schedule_render()

    def _schedule_render(self) -> None:
        """Coalesce a burst of window/level changes (right-drag) into one redraw per event-loop turn."""
        if not self._render_pending:
            self._render_pending = True
            QTimer.singleShot(0, self._render_image)

    def _render_heatmap(self) -> None:
        ex = self.explained
        if ex is None or self.image is None or not self.show_heatmap:
            self.right.set_heatmap(None)
            return
        inside = ex.lung_mask if (self.lungs_only and ex.lung_mask is not None) else None
        self.right.set_heatmap(pixmap_rgba(heatmap_rgba(ex.heatmap, self.colormap, inside)), self.image.shape)
        self.right.heat_item.setOpacity(self.opacity)

    def _render_outline(self) -> None:
        polygons = self.explained.lung_outline if (self.explained is not None and self.show_outline) else []
        for canvas in self.canvases:
            canvas.set_outline(polygons)

    def _update_titles(self) -> None:
        if self.image is None:
            self.left_title.setText("Radiograph")
            self.right_title.setText("Heatmap")
            return
        rows, cols = self.image.shape
        wl = f"W {self.state.width:.2f}  L {self.state.center:.2f}" + ("  inverted" if self.state.invert else "")
        zoom = f"{self.state.zoom * 100:.0f} %"
        self.left_title.setText(f"Radiograph  ·  {cols}×{rows}  ·  {zoom}  ·  {wl}")
        ex = self.explained
        if ex is None:
            self.right_title.setText("Heatmap  ·  computing…" if self.show_heatmap else "Heatmap hidden")
        else:
            cls = list(ex.row.probabilities)[ex.class_index]
            extra = "  ·  inside lungs only" if (self.lungs_only and ex.lung_mask is not None) else ""
            shown = "" if self.show_heatmap else "  (hidden)"
            self.right_title.setText(f"{METHODS.get(ex.method, ex.method)} for “{cls}”  ·  opacity "
                                     f"{round(self.opacity * 100)} %{extra}{shown}")

    def _on_hover(self, point: QPointF | None) -> None:
        image = self.image
        if point is None or image is None:
            self.pixelInfo.emit("")
            return
        x, y = int(point.x()), int(point.y())
        rows, cols = image.shape
        if not (0 <= x < cols and 0 <= y < rows):
            self.pixelInfo.emit("")
            return
        text = f"x {x}  y {y}  ·  pixel {float(image.radiograph.pixels[y, x]):.3f}"
        ex = self.explained
        if ex is not None:
            hr, hc = ex.heatmap.shape
            text += f"  ·  heat {float(ex.heatmap[min(hr - 1, y * hr // rows), min(hc - 1, x * hc // cols)]):.2f}"
            if ex.lung_mask is not None:
                inside = ex.lung_mask[min(hr - 1, y * hr // rows), min(hc - 1, x * hc // cols)]
                text += "  ·  lung" if inside else "  ·  outside the lungs"
        self.pixelInfo.emit(text)

    # --- heatmap options
    def set_overlay(self, overlay: bool) -> None:
        self.overlay = bool(overlay)
        self.left_box.setVisible(not self.overlay)
        if self.state.fit:
            QTimer.singleShot(0, self.fit)
        elif not self.overlay:   # the radiograph pane was hidden while the heatmap pane moved: catch up
            QTimer.singleShot(0, self._sync_to_right)
        self.stateChanged.emit()

    def set_opacity(self, opacity: float) -> None:
        self.opacity = float(min(1.0, max(0.0, opacity)))
        self.right.heat_item.setOpacity(self.opacity)
        self._update_titles()
        self.stateChanged.emit()

    def set_colormap(self, name: str) -> None:
        if name in COLORMAPS and name != self.colormap:
            self.colormap = name
            self._render_heatmap()
            self.stateChanged.emit()

    def set_show_heatmap(self, show: bool) -> None:
        self.show_heatmap = bool(show)
        self._render_heatmap()
        self._update_titles()
        self.stateChanged.emit()

    def set_show_outline(self, show: bool) -> None:
        self.show_outline = bool(show)
        self._render_outline()
        self.stateChanged.emit()

    def set_lungs_only(self, on: bool) -> None:
        self.lungs_only = bool(on)
        self._render_heatmap()
        self._update_titles()
        self.stateChanged.emit()

    # --- window / level
    def set_window(self, center: float, width: float) -> None:
        self.state.center = float(min(1.5, max(-0.5, center)))
        self.state.width = float(min(2.0, max(0.01, width)))
        self._schedule_render()
        self._update_titles()
        self.stateChanged.emit()

    def _on_window_drag(self, dx: float, dy: float) -> None:
        self.set_window(self.state.center + dy * WL_PER_PIXEL, self.state.width + dx * WL_PER_PIXEL)

    def toggle_invert(self) -> None:
        self.state.invert = not self.state.invert
        self._render_image()
        self._update_titles()
        self.stateChanged.emit()

    def reset(self) -> None:
        """Space (OHIF): window/level, invert, rotation, flips and zoom back to their defaults."""
        self.state = ViewState()
        self._render_image()
        self.fit()
        self._update_titles()
        self.stateChanged.emit()

    # --- geometry
    def _transform(self) -> QTransform:
        s = self.state
        return (QTransform.fromScale(s.zoom, s.zoom) * QTransform().rotate(s.rotation)
                * QTransform.fromScale(-1.0 if s.flip_h else 1.0, -1.0 if s.flip_v else 1.0))

    def _apply_transform(self, source: RadiographCanvas | None = None) -> None:
        self._syncing = True
        try:
            center = source.view_center() if source is not None else None
            for canvas in self.canvases:
                canvas.setTransform(self._transform())
            if source is None:
                center = self.right.image_rect().center() if self.state.fit else self.right.view_center()
            for canvas in self.canvases:
                if canvas is not source:
                    canvas.centerOn(center)
        finally:
            self._syncing = False

    def fit_zoom(self) -> float:
        canvas = self.right
        if self.image is None:
            return 1.0
        h, w = self.image.shape
        if self.state.rotation % 180:
            w, h = h, w
        vp = canvas.viewport().rect()
        return max(MIN_ZOOM, min(MAX_ZOOM, min((vp.width() - 8) / w, (vp.height() - 8) / h)))

    def fit(self) -> None:
        self.state.fit = True
        self.state.zoom = self.fit_zoom()
        self._apply_transform()
        self._rerender_if_level_changed()
        self._update_titles()
        self.stateChanged.emit()

    def actual_size(self) -> None:
        self.set_zoom(1.0)

    def set_zoom(self, zoom: float, source: RadiographCanvas | None = None) -> None:
        self.state.fit = False
        self.state.zoom = float(min(MAX_ZOOM, max(MIN_ZOOM, zoom)))
        self._apply_transform(source)
        self._rerender_if_level_changed()
        self._update_titles()
        self.stateChanged.emit()

    def zoom_by(self, factor: float) -> None:
        self.set_zoom(self.state.zoom * factor)

    def _on_wheel(self, canvas: RadiographCanvas, factor: float) -> None:
        self.set_zoom(self.state.zoom * factor, source=canvas)

    def rotate(self, degrees: int) -> None:
        self.state.rotation = (self.state.rotation + degrees) % 360
        self._refit_or_apply()

    def flip(self, horizontal: bool) -> None:
        if horizontal:
            self.state.flip_h = not self.state.flip_h
        else:
            self.state.flip_v = not self.state.flip_v
        self._refit_or_apply()

    def _refit_or_apply(self) -> None:
        if self.state.fit:
            self.fit()
        else:
            self._apply_transform()
            self.stateChanged.emit()

    def _sync_to_right(self) -> None:
        self._apply_transform(source=self.right)

    def _on_scrolled(self, canvas: RadiographCanvas) -> None:
        if self._syncing or self.overlay:
            return
        self._syncing = True
        try:
            center = canvas.view_center()
            for other in self.canvases:
                if other is not canvas:
                    other.centerOn(center)
        finally:
            self._syncing = False

    def _on_resized(self, canvas: RadiographCanvas) -> None:
        if canvas is self.right and self.state.fit and self.image is not None:
            QTimer.singleShot(0, self._refit_if_fit)

    def _refit_if_fit(self) -> None:
        if self.state.fit and self.image is not None:
            self.state.zoom = self.fit_zoom()
            self._apply_transform()
            self._rerender_if_level_changed()
            self._update_titles()
