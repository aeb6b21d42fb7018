"""The layer palette: layer types grouped by category, each with an icon and a one-line description.

Drag an entry onto the stack (the drop carries a layer config, see layer_list_model.layers_mime),
or double-click / press Enter to insert it after the selected layer.
"""

from __future__ import annotations

from PySide6.QtCore import QMimeData, QModelIndex, QPersistentModelIndex, QRect, QSize, Qt, Signal
from PySide6.QtGui import QDrag, QFont, QFontMetrics, QKeyEvent, QPainter, QPalette
from PySide6.QtWidgets import (
    QAbstractItemView,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QTreeWidget,
    QTreeWidgetItem,
)

from designer.document import new_layer
from designer.icons import layer_icon
from designer.layer_list_model import MIME_LAYERS, layers_mime
from engine.layers import CATEGORIES, LAYER_CLASSES

TypeRole = Qt.ItemDataRole.UserRole + 1
DescriptionRole = Qt.ItemDataRole.UserRole + 2
ICON = 28
PAD = 6


def wrap_lines(fm: QFontMetrics, text: str, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap; the last allowed line is elided if the text is longer still."""
    words = text.split()
    lines: list[str] = []
    while words and len(lines) < max_lines:
        line = words.pop(0)
        while words and fm.horizontalAdvance(line + " " + words[0]) <= width:
            line += " " + words.pop(0)
        lines.append(line)
    if words:
        lines[-1] = fm.elidedText(lines[-1] + " " + " ".join(words), Qt.TextElideMode.ElideRight, width)
    return lines


class _PaletteDelegate(QStyledItemDelegate):
    """Layer entries: icon, bold name, grey description wrapped on up to three lines."""

    MAX_LINES = 3

    def _fonts(self, option: QStyleOptionViewItem) -> tuple[QFont, QFont]:
        bold = QFont(option.font)
        bold.setBold(True)
        small = QFont(option.font)
        small.setPointSizeF(max(option.font.pointSizeF() * 0.9, 7.0))
        return bold, small

    def _text_width(self) -> int:
        view = self.parent()
        return max(view.viewport().width() - view.indentation() - ICON - 3 * PAD - 2, 80)

    def sizeHint(self, option: QStyleOptionViewItem, index: QModelIndex | QPersistentModelIndex) -> QSize:  # noqa: N802
        if not index.data(TypeRole):
            return super().sizeHint(option, index)
        bold, small = self._fonts(option)
        sfm = QFontMetrics(small)
        lines = wrap_lines(sfm, index.data(DescriptionRole) or "", self._text_width(), self.MAX_LINES)
        h = QFontMetrics(bold).height() + len(lines) * sfm.lineSpacing() + 2 * PAD
        return QSize(200, max(h, ICON + 2 * PAD))

    def paint(self, painter: QPainter, option: QStyleOptionViewItem,
              index: QModelIndex | QPersistentModelIndex) -> None:
        type_name = index.data(TypeRole)
        if not type_name:
            super().paint(painter, option, index)
            return
        painter.save()
        style = option.widget.style() if option.widget else None
        if style is not None:
            style.drawPrimitive(QStyle.PrimitiveElement.PE_PanelItemViewItem, option, painter, option.widget)
        selected = bool(option.state & QStyle.StateFlag.State_Selected)
        text_role = QPalette.ColorRole.HighlightedText if selected else QPalette.ColorRole.Text
        r = option.rect.adjusted(PAD, PAD, -PAD, -PAD)
        icon = index.data(Qt.ItemDataRole.DecorationRole)
        if icon is not None:
            icon.paint(painter, QRect(r.left(), r.top(), ICON, ICON))
        bold, small = self._fonts(option)
        x = r.left() + ICON + PAD
        width = r.right() - x
        painter.setFont(bold)
        painter.setPen(option.palette.color(text_role))
        bh = QFontMetrics(bold).height()
        painter.drawText(QRect(x, r.top(), width, bh), Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter,
                         type_name)
        painter.setFont(small)
        color = option.palette.color(text_role if selected else QPalette.ColorRole.PlaceholderText)
        painter.setPen(color)
        sfm = QFontMetrics(small)
        for i, line in enumerate(wrap_lines(sfm, index.data(DescriptionRole) or "", width, self.MAX_LINES)):
            painter.drawText(QRect(x, r.top() + bh + i * sfm.lineSpacing(), width, sfm.lineSpacing()),
                             Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, line)
        painter.restore()


class Palette(QTreeWidget):
    #: A layer type the user asked to insert (double-click or Enter).
    insert_requested = Signal(str)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setHeaderHidden(True)
        self.setColumnCount(1)
        self.setRootIsDecorated(False)
        self.setIndentation(8)
        self.setIconSize(QSize(ICON, ICON))
        self.setDragEnabled(True)
        self.setDragDropMode(QAbstractItemView.DragDropMode.DragOnly)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.setItemDelegate(_PaletteDelegate(self))
        self.setUniformRowHeights(False)
        self.setAccessibleName("Layer palette")
        self.setToolTip("")
        self._items: dict[str, QTreeWidgetItem] = {}
        for category in CATEGORIES:
            head = QTreeWidgetItem([category])
            font = head.font(0)
            font.setBold(True)
            head.setFont(0, font)
            head.setFlags(Qt.ItemFlag.ItemIsEnabled)
            head.setIcon(0, layer_icon(category))
            self.addTopLevelItem(head)
            for type_name, cls in LAYER_CLASSES.items():
                if cls.category != category:
                    continue
                item = QTreeWidgetItem([type_name])
                item.setData(0, TypeRole, type_name)
                item.setData(0, DescriptionRole, cls.description)
                item.setIcon(0, layer_icon(type_name, category))
                item.setToolTip(0, f"<b>{type_name}</b>: {cls.description}<br><i>Drag onto the stack, "
                                   "or double-click to insert after the selected layer.</i>")
                item.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable
                              | Qt.ItemFlag.ItemIsDragEnabled | Qt.ItemFlag.ItemNeverHasChildren)
                head.addChild(item)
                self._items[type_name] = item
        self.expandAll()
        self.itemDoubleClicked.connect(self._activated)

    def resizeEvent(self, event) -> None:  # noqa: N802
        super().resizeEvent(event)
        self.scheduleDelayedItemsLayout()  # descriptions re-wrap to the new width

    def item_for(self, type_name: str) -> QTreeWidgetItem:
        return self._items[type_name]

    def _activated(self, item: QTreeWidgetItem, column: int = 0) -> None:
        type_name = item.data(0, TypeRole)
        if type_name:
            self.insert_requested.emit(type_name)

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and self.currentItem() is not None:
            self._activated(self.currentItem())
            return
        super().keyPressEvent(event)

    def mimeTypes(self) -> list[str]:  # noqa: N802
        return [MIME_LAYERS]

    def mimeData(self, items: list[QTreeWidgetItem]) -> QMimeData:  # noqa: N802
        """What a drag from the palette carries: the new layer's config (see layers_mime)."""
        types = [it.data(0, TypeRole) for it in items if it.data(0, TypeRole)]
        return layers_mime([new_layer(t).to_config() for t in types])

    def startDrag(self, supported_actions: Qt.DropAction) -> None:  # noqa: N802
        item = self.currentItem()
        type_name = item.data(0, TypeRole) if item is not None else None
        if not type_name:
            return
        drag = QDrag(self)
        drag.setMimeData(self.mimeData([item]))
        drag.setPixmap(layer_icon(type_name, LAYER_CLASSES[type_name].category).pixmap(32, 32))
        drag.exec(Qt.DropAction.CopyAction)
