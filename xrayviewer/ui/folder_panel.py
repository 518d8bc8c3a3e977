"""The folder panel: a lazily filled thumbnail list with badges (prediction, confidence, ground truth, errors),
filtered and sorted through a proxy model. Thumbnails and badges arrive from workers; this file only draws them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PySide6.QtCore import QAbstractListModel, QModelIndex, QRect, QSize, QSortFilterProxyModel, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QFont, QImage, QPainter, QPalette
from PySide6.QtWidgets import (QAbstractItemView, QComboBox, QHBoxLayout, QLabel, QListView, QSizePolicy, QStyle,
                               QStyledItemDelegate, QStyleOptionViewItem, QVBoxLayout, QWidget)

from xrayviewer.results import ResultRow
from xrayviewer.ui.colours import ERROR_TEXT
from xrayviewer.ui.jobs import THUMB_SIDE

ITEM_ROLE = Qt.ItemDataRole.UserRole + 1
SORT_ROLE = Qt.ItemDataRole.UserRole + 2


def confidence_colour(confidence: float) -> QColor:
    """Badge colour by confidence band — not by class, so colour never reads as a diagnosis."""
    if confidence >= 0.9:
        return QColor("#1f7a8c")     # confident
    if confidence >= 0.7:
        return QColor("#4f6d8f")     # moderate
    return QColor("#b07a2a")         # uncertain: look closer


@dataclass
class FolderItem:
    path: str
    thumbnail: QImage | None = None     # 8-bit grayscale: a quarter of a pixmap's memory in folders of 10 000
    row: ResultRow | None = None
    ground_truth: str = ""

    @property
    def name(self) -> str:
        return Path(self.path).name

    @property
    def error(self) -> str:
        return self.row.error if self.row is not None else ""

    @property
    def mismatch(self) -> bool:
        return bool(self.row and self.ground_truth and self.row.predicted and not self.row.error
                    and self.row.predicted != self.ground_truth)


class FolderModel(QAbstractListModel):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.items: list[FolderItem] = []
        self._index: dict[str, int] = {}

    def rowCount(self, parent=QModelIndex()) -> int:  # noqa: N802
        return 0 if parent.isValid() else len(self.items)

    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        item = self.items[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return item.name
        if role == ITEM_ROLE:
            return item
        if role == Qt.ItemDataRole.ToolTipRole:
            lines = [item.path]
            if item.error:
                lines.append(f"Unreadable: {item.error}")
            elif item.row is not None:
                lines.append(f"Predicted {item.row.predicted} ({item.row.confidence:.0%})")
            if item.ground_truth:
                lines.append(f"Folder says: {item.ground_truth}" + ("  — mismatch" if item.mismatch else ""))
            return "\n".join(lines)
        return None

    def clear(self) -> None:
        self.beginResetModel()
        self.items, self._index = [], {}
        self.endResetModel()

    def add_paths(self, paths: list[str], ground_truth: dict[str, str] | None = None) -> None:
        new = [p for p in paths if p not in self._index]
        if not new:
            return
        start = len(self.items)
        self.beginInsertRows(QModelIndex(), start, start + len(new) - 1)
        for i, path in enumerate(new, start):
            self._index[path] = i
            self.items.append(FolderItem(path, ground_truth=(ground_truth or {}).get(path, "")))
        self.endInsertRows()

    def row_of(self, path: str) -> int:
        return self._index.get(str(path), -1)

    def item(self, path: str) -> FolderItem | None:
        i = self.row_of(path)
        return self.items[i] if i >= 0 else None

    def _changed(self, i: int) -> None:
        index = self.index(i)
        self.dataChanged.emit(index, index)

    def set_thumbnail(self, path: str, pixels: np.ndarray | None, error: str) -> None:
        i = self.row_of(path)
        if i < 0:
            return
        item = self.items[i]
        if pixels is not None:
            rows, cols = pixels.shape
            item.thumbnail = QImage(pixels.data, cols, rows, pixels.strides[0],
                                    QImage.Format.Format_Grayscale8).copy()
        elif error and (item.row is None or not item.row.error):
            item.row = ResultRow(path=path, ground_truth=item.ground_truth, error=error)
        self._changed(i)

    def set_row(self, row: ResultRow) -> None:
        i = self.row_of(row.path)
        if i < 0:
            return
        item = self.items[i]
        item.row = row
        if row.ground_truth:
            item.ground_truth = row.ground_truth
        self._changed(i)

    def set_ground_truth(self, truths: dict[str, str]) -> None:
        for i, item in enumerate(self.items):
            item.ground_truth = truths.get(item.path, "")
        if self.items:
            self.dataChanged.emit(self.index(0), self.index(len(self.items) - 1))

    def clear_rows(self) -> None:
        """Badges of a previous model; unreadable-file errors stay (they do not depend on the model)."""
        for item in self.items:
            if item.row is not None and not (item.row.error and not item.row.predicted):
                item.row = None
        if self.items:
            self.dataChanged.emit(self.index(0), self.index(len(self.items) - 1))


FILTERS = {"all": "All images", "mismatch": "Mismatches (prediction ≠ folder)", "error": "Unreadable files",
           "uncertain": "Uncertain (< 70 %)", "ood": "Not a chest X-ray?"}
SORTS = {"name": "Sort: file order", "confidence_down": "Sort: confidence ↓", "confidence_up": "Sort: confidence ↑",
         "predicted": "Sort: predicted class", "truth": "Sort: folder class"}


class FolderFilter(QSortFilterProxyModel):
    """Filters: all, mismatches, errors, uncertain, OOD, predicted:<class>, truth:<class>. Sorts by SORTS keys."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.mode = "all"
        self.sort_key = "name"
        self.setDynamicSortFilter(False)   # re-sorted when asked, not on every badge (rows would jump around)

    def set_mode(self, mode: str) -> None:
        self.beginFilterChange()
        self.mode = mode
        self.endFilterChange()

    def set_sort(self, key: str) -> None:
        self.sort_key = key
        self.invalidate()
        self.sort(0, Qt.SortOrder.AscendingOrder)

    def filterAcceptsRow(self, source_row: int, source_parent: QModelIndex) -> bool:  # noqa: N802
        item: FolderItem = self.sourceModel().items[source_row]
        row, mode = item.row, self.mode
        if mode == "all":
            return True
        if mode == "mismatch":
            return item.mismatch
        if mode == "error":
            return bool(item.error)
        if mode == "uncertain":
            return bool(row and not row.error and row.probabilities and row.confidence < 0.7)
        if mode == "ood":
            return bool(row and row.ood_flag)
        kind, _, name = mode.partition(":")
        if kind == "predicted":
            return bool(row and row.predicted == name)
        if kind == "truth":
            return item.ground_truth == name
        return True

    def lessThan(self, left: QModelIndex, right: QModelIndex) -> bool:  # noqa: N802
        items = self.sourceModel().items
        return self._key(items[left.row()], left.row()) < self._key(items[right.row()], right.row())

    def _key(self, item: FolderItem, order: int) -> tuple:
        row = item.row
        conf = row.confidence if (row and row.probabilities) else math.nan
        known = not math.isnan(conf)
        if self.sort_key == "confidence_down":
            return (not known, -conf if known else 0.0, order)
        if self.sort_key == "confidence_up":
            return (not known, conf if known else 0.0, order)
        if self.sort_key == "predicted":
            return (not (row and row.predicted), row.predicted if row else "", -conf if known else 0.0, order)
        if self.sort_key == "truth":
            return (not item.ground_truth, item.ground_truth, order)
        return (order,)


class ThumbnailDelegate(QStyledItemDelegate):
    """Thumbnail, file name, a prediction pill coloured by confidence, the folder's class with ✓ / ≠."""

    HEIGHT = THUMB_SIDE + 12

    def sizeHint(self, option, index) -> QSize:  # noqa: N802
        return QSize(160, self.HEIGHT)   # the list's width decides; text is elided

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index: QModelIndex) -> None:
        item: FolderItem = index.data(ITEM_ROLE)
        painter.save()
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        rect = option.rect
        palette = option.palette
        selected = bool(option.state & QStyle.StateFlag.State_Selected)
        painter.fillRect(rect, palette.color(QPalette.ColorRole.Highlight) if selected
                         else palette.color(QPalette.ColorRole.Base))
        thumb_rect = QRect(rect.left() + 6, rect.top() + 6, THUMB_SIDE, THUMB_SIDE)
        painter.fillRect(thumb_rect, QColor("#000000"))
        if item.thumbnail is not None:
            thumb = item.thumbnail
            x = thumb_rect.left() + (THUMB_SIDE - thumb.width()) // 2
            y = thumb_rect.top() + (THUMB_SIDE - thumb.height()) // 2
            painter.drawImage(x, y, thumb)
        elif item.error:
            painter.setPen(QColor("#e05545"))
            big = QFont(option.font)
            big.setPointSizeF(max(14.0, option.font.pointSizeF() * 2))
            painter.setFont(big)
            painter.drawText(thumb_rect, Qt.AlignmentFlag.AlignCenter, "⚠")
        text_left = thumb_rect.right() + 10
        width = rect.right() - text_left - 6
        text_colour = palette.color(QPalette.ColorRole.HighlightedText if selected else QPalette.ColorRole.Text)
        painter.setPen(text_colour)
        font = QFont(option.font)
        painter.setFont(font)
        fm = painter.fontMetrics()
        line = fm.height() + 4
        top = rect.top() + 8
        painter.drawText(QRect(text_left, top, width, fm.height()), Qt.AlignmentFlag.AlignLeft,
                         fm.elidedText(item.name, Qt.TextElideMode.ElideMiddle, width))
        top += line
        row = item.row
        small = QFont(font)
        small.setPointSizeF(max(7.0, font.pointSizeF() - 1))
        painter.setFont(small)
        sfm = painter.fontMetrics()
        if item.error:
            self._pill(painter, text_left, top, "⚠ unreadable", QColor("#b3261e"), sfm)
        elif row is not None and row.predicted:
            text = f"{row.predicted} {row.confidence:.0%}"
            self._pill(painter, text_left, top, text, confidence_colour(row.confidence), sfm)
        else:
            painter.setPen(palette.color(QPalette.ColorRole.PlaceholderText))
            painter.drawText(QRect(text_left, top, width, sfm.height() + 4), Qt.AlignmentFlag.AlignVCenter, "…")
        top += sfm.height() + 8
        if row is not None and row.ood_flag:   # before the folder's class: it qualifies the whole prediction
            painter.setPen(QColor("#ffb74d") if not selected else text_colour)
            ood = "not a chest X-ray? · "
            painter.drawText(QRect(text_left, top, width, sfm.height()), Qt.AlignmentFlag.AlignLeft, ood)
            shift = sfm.horizontalAdvance(ood)
            text_left, width = text_left + shift, width - shift
        if item.ground_truth:
            if item.mismatch:
                painter.setPen(QColor(ERROR_TEXT) if not selected else text_colour)
                text = f"≠ folder: {item.ground_truth}"
            else:
                painter.setPen(palette.color(QPalette.ColorRole.PlaceholderText) if not selected else text_colour)
                text = f"{'✓ ' if row and row.predicted else ''}folder: {item.ground_truth}"
            painter.drawText(QRect(text_left, top, width, sfm.height()), Qt.AlignmentFlag.AlignLeft,
                             sfm.elidedText(text, Qt.TextElideMode.ElideRight, width))
        if item.mismatch:   # a red edge makes mismatches findable while scrolling
            painter.fillRect(QRect(rect.left(), rect.top(), 3, rect.height()), QColor("#e05545"))
        painter.restore()

    @staticmethod
    def _pill(painter: QPainter, x: int, y: int, text: str, colour: QColor, fm) -> None:
        w = fm.horizontalAdvance(text) + 12
        h = fm.height() + 4
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(colour)
        painter.drawRoundedRect(QRect(x, y, w, h), h / 2, h / 2)
        painter.setPen(QColor("#ffffff"))
        painter.drawText(QRect(x, y, w, h), Qt.AlignmentFlag.AlignCenter, text)


class FolderPanel(QWidget):
    """Header (folder, counts), filter and sort, and the thumbnail list. Emits `currentPathChanged(path)`."""

    currentPathChanged = Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.model = FolderModel(self)
        self.proxy = FolderFilter(self)
        self.proxy.setSourceModel(self.model)
        self.title = QLabel("No folder open")
        self.title.setObjectName("panelTitle")
        self.title.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.counts = QLabel("")
        self.counts.setObjectName("panelHint")
        self.counts.setWordWrap(True)
        self.filter_box = QComboBox()
        self.filter_box.setObjectName("filterBox")
        self.sort_box = QComboBox()
        self.sort_box.setObjectName("sortBox")
        for key, text in SORTS.items():
            self.sort_box.addItem(text, key)
        for box in (self.filter_box, self.sort_box):   # long entries must not widen the panel
            box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            box.setMinimumContentsLength(8)
        self.set_classes([])
        self.list = QListView()
        self.list.setObjectName("thumbnailList")
        self.list.setModel(self.proxy)
        self.list.setItemDelegate(ThumbnailDelegate(self.list))
        self.list.setUniformItemSizes(True)
        self.list.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.list.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 2, 6)
        layout.setSpacing(4)
        layout.addWidget(self.title)
        layout.addWidget(self.counts)
        row = QHBoxLayout()
        row.setSpacing(4)
        row.addWidget(self.filter_box, 1)
        row.addWidget(self.sort_box, 1)
        layout.addLayout(row)
        layout.addWidget(self.list, 1)
        self.list.selectionModel().currentChanged.connect(self._on_current_changed)
        self.filter_box.currentIndexChanged.connect(self._on_filter)
        self.sort_box.currentIndexChanged.connect(self._on_sort)
        self._counts_timer = QTimer(self, singleShot=True, interval=150)   # one recount per burst of badges
        self._counts_timer.timeout.connect(self._update_counts)
        for signal in (self.model.rowsInserted, self.model.dataChanged, self.model.modelReset):
            signal.connect(self._schedule_counts)

    # --- content
    def set_folder(self, title: str) -> None:
        self.model.clear()
        self.title.setText(title)
        self.filter_box.setCurrentIndex(0)

    def set_classes(self, classes: list[str]) -> None:
        current = self.filter_box.currentData()
        self.filter_box.blockSignals(True)
        self.filter_box.clear()
        for key, text in FILTERS.items():
            self.filter_box.addItem(text, key)
        for name in classes:
            self.filter_box.addItem(f"Predicted: {name}", f"predicted:{name}")
        for name in classes:
            self.filter_box.addItem(f"Folder: {name}", f"truth:{name}")
        i = self.filter_box.findData(current)
        self.filter_box.setCurrentIndex(max(i, 0))
        self.filter_box.blockSignals(False)
        if i < 0:
            self.proxy.set_mode("all")

    def paths(self) -> list[str]:
        """Paths in the order the list shows them (after filter and sort)."""
        items = self.model.items
        return [items[self.proxy.mapToSource(self.proxy.index(r, 0)).row()].path
                for r in range(self.proxy.rowCount())]

    def all_paths(self) -> list[str]:
        return [item.path for item in self.model.items]

    def current_path(self) -> str | None:
        index = self.list.currentIndex()
        if not index.isValid():
            return None
        return self.model.items[self.proxy.mapToSource(index).row()].path

    def select_path(self, path: str) -> bool:
        row = self.model.row_of(str(path))
        if row < 0:
            return False
        index = self.proxy.mapFromSource(self.model.index(row))
        if not index.isValid():   # hidden by the filter: show everything rather than lose the selection
            self.filter_box.setCurrentIndex(0)
            index = self.proxy.mapFromSource(self.model.index(row))
        self.list.setCurrentIndex(index)
        self.list.scrollTo(index)
        return True

    def step(self, delta: int) -> None:
        count = self.proxy.rowCount()
        if not count:
            return
        current = self.list.currentIndex()
        row = current.row() + delta if current.isValid() else (0 if delta > 0 else count - 1)
        self._select_row(min(count - 1, max(0, row)))

    def first(self) -> None:
        self._select_row(0)

    def last(self) -> None:
        self._select_row(self.proxy.rowCount() - 1)

    def _select_row(self, row: int) -> None:
        if 0 <= row < self.proxy.rowCount():
            index = self.proxy.index(row, 0)
            self.list.setCurrentIndex(index)
            self.list.scrollTo(index)

    def neighbours(self, radius: int = 1) -> list[str]:
        """Paths next to the current one in display order, nearest first (next before previous)."""
        current = self.list.currentIndex()
        if not current.isValid():
            return []
        rows = []
        for d in range(1, radius + 1):
            rows += [current.row() + d, current.row() - d]
        items = self.model.items
        return [items[self.proxy.mapToSource(self.proxy.index(r, 0)).row()].path
                for r in rows if 0 <= r < self.proxy.rowCount()]

    # --- signals
    def _on_current_changed(self, current: QModelIndex, _previous: QModelIndex) -> None:
        if current.isValid():
            self.currentPathChanged.emit(self.model.items[self.proxy.mapToSource(current).row()].path)

    def _keep_current(self, change) -> None:
        path = self.current_path()
        change()
        if path is not None:
            row = self.model.row_of(path)
            index = self.proxy.mapFromSource(self.model.index(row))
            if index.isValid():
                self.list.selectionModel().blockSignals(True)
                self.list.setCurrentIndex(index)
                self.list.selectionModel().blockSignals(False)
                self.list.scrollTo(index)

    def _on_filter(self, _i: int) -> None:
        self._keep_current(lambda: self.proxy.set_mode(self.filter_box.currentData() or "all"))

    def _on_sort(self, _i: int) -> None:
        self._keep_current(lambda: self.proxy.set_sort(self.sort_box.currentData() or "name"))

    def _schedule_counts(self, *_) -> None:
        self._counts_timer.start()

    def _update_counts(self) -> None:
        items = self.model.items
        if not items:
            self.counts.setText("")
            return
        done = sum(1 for it in items if it.row is not None and (it.row.predicted or it.row.error))
        errors = sum(1 for it in items if it.error)
        mismatches = sum(1 for it in items if it.mismatch)
        parts = [f"{len(items)} images", f"{done} classified" if done < len(items) else "all classified"]
        if mismatches:
            parts.append(f"{mismatches} mismatches")
        if errors:
            parts.append(f"{errors} unreadable")
        self.counts.setText(" · ".join(parts))

    def refresh_order(self) -> None:
        """Re-apply filter and sort once the badges are in (keeps the current image selected)."""
        if self.proxy.mode == "all" and self.proxy.sort_key == "name":
            return
        self._keep_current(lambda: (self.proxy.invalidate(), self.proxy.sort(0, Qt.SortOrder.AscendingOrder)))
