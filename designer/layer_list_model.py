"""The layer stack as a Qt list model: row 0 is the fixed Input row, row i + 1 is layer i.

A thin adapter over the Qt-free Document: it never edits the spec itself. Drops become undo
commands (pushed on the stack it is given); the document's about_to_change / spec_changed
notifications become the begin*/end* row signals, so views keep their selection across moves.
"""

from __future__ import annotations

import json
from typing import Any

from PySide6.QtCore import (
    QAbstractListModel,
    QByteArray,
    QMimeData,
    QModelIndex,
    QPersistentModelIndex,
    Qt,
)
from PySide6.QtGui import QBrush, QColor, QUndoStack

from designer.commands import InsertLayersCommand, make_move_command
from designer.document import Change, Document, new_layer
from engine.layers import LAYER_CLASSES, fmt_shape, layer_from_config
from engine.shapes import human_count

#: A drag of existing rows inside the stack: JSON list of layer indices.
MIME_ROWS = "application/x-cnn-designer-rows"
#: A new layer (from the palette, or rows dragged to another window): JSON list of layer configs.
MIME_LAYERS = "application/x-cnn-designer-layers"

IndexRole = Qt.ItemDataRole.UserRole + 1
SummaryRole = Qt.ItemDataRole.UserRole + 2
ShapeRole = Qt.ItemDataRole.UserRole + 3
ParamsRole = Qt.ItemDataRole.UserRole + 4
ActivationRole = Qt.ItemDataRole.UserRole + 5  # fraction 0..1 of the largest activation
ErrorRole = Qt.ItemDataRole.UserRole + 6
IsInputRole = Qt.ItemDataRole.UserRole + 7
TypeRole = Qt.ItemDataRole.UserRole + 8
#: True for layers that only fail because an earlier layer does (painted paler than the culprit).
DependentRole = Qt.ItemDataRole.UserRole + 9

ERROR_BACKGROUND = QColor(255, 228, 228)
ERROR_FOREGROUND = QColor(170, 0, 0)


def layers_mime(configs: list[dict[str, Any]]) -> QMimeData:
    """The mime payload that inserts these layer configs when dropped on the stack."""
    mime = QMimeData()
    mime.setData(MIME_LAYERS, QByteArray(json.dumps(configs).encode()))
    mime.setText(", ".join(c["type"] for c in configs))
    return mime


def palette_mime(type_name: str) -> QMimeData:
    return layers_mime([new_layer(type_name).to_config()])


class LayerListModel(QAbstractListModel):
    def __init__(self, doc: Document, undo_stack: QUndoStack, parent: Any = None) -> None:
        super().__init__(parent)
        self.doc = doc
        self.undo_stack = undo_stack
        self._pending: Change | None = None
        self._persistent: list[QModelIndex] = []
        doc.about_to_change.connect(self._about_to_change)
        doc.spec_changed.connect(self._changed)

    # --- document -> Qt signals ---------------------------------------------------------------
    def _about_to_change(self, change: Change) -> None:
        self._pending = change
        if change.kind == "insert":
            self.beginInsertRows(QModelIndex(), change.index + 1, change.index + change.count)
        elif change.kind == "remove":
            self.beginRemoveRows(QModelIndex(), change.index + 1, change.index + change.count)
        elif change.kind == "reorder":
            self.layoutAboutToBeChanged.emit()
            self._persistent = list(self.persistentIndexList())
        elif change.kind == "reset":
            self.beginResetModel()

    def _changed(self, change: Change) -> None:
        kind = change.kind
        if kind == "insert":
            self.endInsertRows()
        elif kind == "remove":
            self.endRemoveRows()
        elif kind == "reorder":
            new_row = {old + 1: new + 1 for new, old in enumerate(change.order)}
            new_row[0] = 0
            old_list = self._persistent
            new_list = [self.index(new_row.get(ix.row(), ix.row()), 0) for ix in old_list]
            self.changePersistentIndexList(old_list, new_list)
            self._persistent = []
            self.layoutChanged.emit()
        elif kind == "reset":
            self.endResetModel()
        if kind in ("insert", "remove", "reorder", "layer", "input") and self.rowCount() > 0:
            # Any edit can change every shape downstream (and the activation bars' scale).
            self.dataChanged.emit(self.index(0, 0), self.index(self.rowCount() - 1, 0))
        self._pending = None

    # --- read -----------------------------------------------------------------------------
    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008, N802
        if parent.isValid():
            return 0
        return len(self.doc) + 1

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < self.rowCount():
            return None
        row = index.row()
        doc = self.doc
        if row == 0:
            return self._input_data(role)
        info = doc.inference.layers[row - 1]
        if role == Qt.ItemDataRole.DisplayRole:
            # Only what belongs to this layer: other rows' edits must not change it (model tester).
            return info.summary
        if role == Qt.ItemDataRole.ToolTipRole:
            cls = LAYER_CLASSES[info.type]
            tip = f"<b>Layer {row - 1}: {info.summary}</b><br>{cls.description}"
            if info.error:
                tip += f"<br><span style='color:#a00'><b>Problem:</b> {info.error}</span>"
            return tip
        if role == Qt.ItemDataRole.AccessibleTextRole:
            text = f"Layer {row - 1}: {info.summary}, output {fmt_shape(info.output_shape)}, {info.params:,} parameters"
            return text if info.error is None else f"{text}. Problem: {info.error}"
        if role == Qt.ItemDataRole.BackgroundRole:
            return QBrush(ERROR_BACKGROUND) if info.error and info.input_shape is not None else None
        if role == Qt.ItemDataRole.ForegroundRole:
            return QBrush(ERROR_FOREGROUND) if info.error else None
        if role == IndexRole:
            return row - 1  # the engine's layer index, as in its messages and weight names
        if role == SummaryRole:
            return info.summary
        if role == ShapeRole:
            return fmt_shape(info.output_shape) if info.output_shape is not None else "?"
        if role == ParamsRole:
            if info.error is not None:
                return "–"
            return f"{info.params:,}" if info.params < 10_000_000 else human_count(info.params)
        if role == ActivationRole:
            return info.activation_size / doc.max_activation
        if role == ErrorRole:
            return info.error
        if role == IsInputRole:
            return False
        if role == DependentRole:
            return info.error is not None and info.input_shape is None
        if role == TypeRole:
            return info.type
        return None

    def _input_data(self, role: int) -> Any:
        shape = self.doc.spec.input_shape
        c, h, w = shape
        if role == Qt.ItemDataRole.DisplayRole:
            return "Input"
        if role == Qt.ItemDataRole.ToolTipRole:
            return "The image the network receives: channels x height x width. Select to edit."
        if role == Qt.ItemDataRole.AccessibleTextRole:
            return f"Input {c} by {h} by {w}"
        if role == IndexRole:
            return 0
        if role == SummaryRole:
            return "Input" + (" (grayscale)" if c == 1 else " (RGB)" if c == 3 else "")
        if role == ShapeRole:
            return fmt_shape(shape)
        if role == ParamsRole:
            return ""
        if role == ActivationRole:
            return (c * h * w) / self.doc.max_activation
        if role == IsInputRole:
            return True
        if role == TypeRole:
            return "Input"
        return None

    def flags(self, index: QModelIndex | QPersistentModelIndex) -> Qt.ItemFlag:
        if not index.isValid():
            return Qt.ItemFlag.ItemIsDropEnabled
        base = Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable | Qt.ItemFlag.ItemNeverHasChildren
        if index.row() == 0:
            return base
        return base | Qt.ItemFlag.ItemIsDragEnabled

    # --- drag and drop ---------------------------------------------------------------------
    def supportedDropActions(self) -> Qt.DropAction:  # noqa: N802
        return Qt.DropAction.MoveAction | Qt.DropAction.CopyAction

    def supportedDragActions(self) -> Qt.DropAction:  # noqa: N802
        return Qt.DropAction.MoveAction

    def mimeTypes(self) -> list[str]:  # noqa: N802
        return [MIME_ROWS, MIME_LAYERS]

    def mimeData(self, indexes: list[QModelIndex]) -> QMimeData:  # noqa: N802
        rows = sorted({ix.row() - 1 for ix in indexes if ix.isValid() and ix.row() > 0})
        mime = layers_mime([self.doc.layers[r].to_config() for r in rows])
        mime.setData(MIME_ROWS, QByteArray(json.dumps(rows).encode()))
        return mime

    def _drop_layer_index(self, row: int, parent: QModelIndex | QPersistentModelIndex) -> int:
        """Layer index before which a drop lands: on an item = after it; nowhere = at the end."""
        if row < 0 and parent.isValid():
            row = parent.row() + 1
        if row < 0:
            return len(self.doc)
        return min(max(row - 1, 0), len(self.doc))

    def canDropMimeData(self, data: QMimeData, action: Qt.DropAction, row: int, column: int,  # noqa: N802
                        parent: QModelIndex | QPersistentModelIndex) -> bool:
        if action == Qt.DropAction.MoveAction and data.hasFormat(MIME_ROWS):
            return True
        return data.hasFormat(MIME_LAYERS) and action in (Qt.DropAction.CopyAction, Qt.DropAction.MoveAction)

    def dropMimeData(self, data: QMimeData, action: Qt.DropAction, row: int, column: int,  # noqa: N802
                     parent: QModelIndex | QPersistentModelIndex) -> bool:
        if action == Qt.DropAction.IgnoreAction:
            return True
        if not self.canDropMimeData(data, action, row, column, parent):
            return False
        dest = self._drop_layer_index(row, parent)
        try:
            if action == Qt.DropAction.MoveAction and data.hasFormat(MIME_ROWS):
                rows = json.loads(bytes(data.data(MIME_ROWS).data()).decode())
                if not rows or not all(isinstance(r, int) and 0 <= r < len(self.doc) for r in rows):
                    return False
                cmd = make_move_command(self.doc, rows, dest)
                if cmd is not None:
                    self.undo_stack.push(cmd)
                return True
            configs = json.loads(bytes(data.data(MIME_LAYERS).data()).decode())
            layers = [layer_from_config(c) for c in configs]
        except (ValueError, TypeError, KeyError):
            return False  # a foreign or corrupt payload: refuse the drop, keep the design
        if not layers:
            return False
        self.undo_stack.push(InsertLayersCommand(self.doc, dest, layers))
        return True

    # --- helpers for views -------------------------------------------------------------------
    def layer_row(self, layer_index: int) -> QModelIndex:
        return self.index(layer_index + 1, 0)
