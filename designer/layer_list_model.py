"""The layer stack as a Qt list model: row 0 is the fixed Input row, then one row per layer.

An expanded block (Residual) is followed by its inner layers' rows and an "end of block" row that
shows the shortcut and the addition; each row has an address (i, None) for layer i, (i, j) for
inner layer j of block i, (i, END) for the block's end (see designer.blocks). Without expanded
blocks row i + 1 is layer i.

A thin adapter over the Qt-free Document: it never edits the spec itself. Drops become undo
commands (pushed on the stack it is given); the document's about_to_change / spec_changed
notifications become the begin*/end* row signals, so views keep their selection across moves
(across structure changes of blocks the model is reset and the window reselects).
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
    Signal,
)
from PySide6.QtGui import QBrush, QColor, QUndoStack

from designer.blocks import Address, restructure
from designer.commands import InsertLayersCommand, ReplaceLayersCommand, SetLockedCommand, make_move_command
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
#: (i, None) for layer i, (i, j) for inner layer j of block i, (i, END) for block i's end row
AddressRole = Qt.ItemDataRole.UserRole + 10
#: for a block's first row: whether its inner rows are hidden
CollapsedRole = Qt.ItemDataRole.UserRole + 11
#: for a layer row with weights: whether it is locked (frozen while continuing); None: no lock
FrozenRole = Qt.ItemDataRole.UserRole + 12
#: the mark of a layer row with weights while a trained model exists: "kept" / "new" (engine.transfer.align),
#: "frozen" / "frozen new" when locked; else None
WeightsRole = Qt.ItemDataRole.UserRole + 13

#: What each mark on a row means (the row's tooltip says it).
MARK_TIPS = {
    "kept": "<b>kept</b>: starts from the trained model's weights when you continue (same type and weight "
            "shapes as a layer of the model, in order)",
    "new": "<b>new</b>: starts from fresh random weights (the trained model has no layer that fits here)",
    "frozen": "<b>frozen</b>: locked, its weights stay fixed while the rest trains when a run continues "
              "from trained weights (click the lock to unlock)",
    "frozen new": "<b>frozen but new</b>: locked, yet it has no trained weights to keep, so it would stay "
                  "random: unlock it, or lock layers marked kept",
}

END = "end"

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
    #: A drop or edit the structure refuses (e.g. Dense into a block), as a sentence for the status bar.
    refused = Signal(str)

    def __init__(self, doc: Document, undo_stack: QUndoStack, parent: Any = None) -> None:
        super().__init__(parent)
        self.doc = doc
        self.undo_stack = undo_stack
        self._pending: Change | None = None
        self._persistent: list[QModelIndex] = []
        #: ids of collapsed block layers (view state: a block rebuilt by undo comes back expanded)
        self._collapsed: set[int] = set()
        self._rows: list[tuple[int, Any] | None] = self._build_rows()
        self._old_rows = self._rows
        self._mode = ""
        self._was_collapsed: bool | None = None
        self._collapsed_at: list[int] = []
        #: layer index -> "kept" / "new" (set_weight_marks), empty without a trained model
        self._marks: dict[int, str] = {}
        #: addresses of the layers the last structure edit placed (the window selects them)
        self.last_placed: list[Address] = []
        doc.about_to_change.connect(self._about_to_change)
        doc.spec_changed.connect(self._changed)

    # --- rows <-> addresses -------------------------------------------------------------------
    def _build_rows(self) -> list[tuple[int, Any] | None]:
        rows: list[tuple[int, Any] | None] = [None]
        for i, layer in enumerate(self.doc.layers):
            rows.append((i, None))
            if layer.is_block and id(layer) not in self._collapsed:
                rows += [(i, j) for j in range(len(layer.children()))]
                rows.append((i, END))
        return rows

    @staticmethod
    def _has_inner(rows: list) -> bool:
        return any(r is not None and r[1] is not None for r in rows)

    def address(self, row: int) -> tuple[int, Any] | None:
        """The address of a row (None for the Input row)."""
        return self._rows[row] if 0 <= row < len(self._rows) else None

    def row_of(self, address: tuple[int, Any]) -> int:
        """The row showing `address`; a hidden inner row maps to its block's row."""
        try:
            return self._rows.index(tuple(address))
        except ValueError:
            return self._rows.index((address[0], None))

    def is_collapsed(self, i: int) -> bool:
        return id(self.doc.layers[i]) in self._collapsed

    def set_collapsed(self, i: int, collapsed: bool) -> None:
        """Hide or show block i's inner rows (the design does not change)."""
        layer = self.doc.layers[i]
        if not layer.is_block or collapsed == (id(layer) in self._collapsed):
            return
        self.beginResetModel()
        (self._collapsed.add if collapsed else self._collapsed.discard)(id(layer))
        self._rows = self._build_rows()
        self.endResetModel()

    # --- document -> Qt signals ---------------------------------------------------------------
    def _about_to_change(self, change: Change) -> None:
        self._pending = change
        self._old_rows = self._rows
        kind, blocky = change.kind, self._has_inner(self._rows)
        self._was_collapsed = None
        # Rows of inner layers shift unpredictably: any edit that moves rows resets the model then.
        self._mode = "reset" if kind in ("reset", "layers") or (
            kind in ("insert", "remove", "reorder") and (blocky or change.blocks)) else kind
        if self._mode == "reset":
            self.beginResetModel()
        elif kind == "insert":
            self.beginInsertRows(QModelIndex(), change.index + 1, change.index + change.count)
        elif kind == "remove":
            self.beginRemoveRows(QModelIndex(), change.index + 1, change.index + change.count)
        elif kind == "reorder":
            self.layoutAboutToBeChanged.emit()
            self._persistent = list(self.persistentIndexList())
        elif kind == "layer" and change.index < len(self.doc):
            self._was_collapsed = self.is_collapsed(change.index)
        elif kind == "frozen":  # locked layers are replaced by copies: their blocks stay collapsed
            self._collapsed_at = [i for i in range(len(self.doc)) if self.is_collapsed(i)]

    def _changed(self, change: Change) -> None:
        kind, mode = change.kind, self._mode
        if self._was_collapsed:  # the edited block (a new object) stays collapsed
            self._collapsed.add(id(self.doc.layers[change.index]))
        self._collapsed.update(id(self.doc.layers[i]) for i in self._collapsed_at)
        self._collapsed_at = []
        self._collapsed &= {id(layer) for layer in self.doc.layers}
        new = self._build_rows()
        self._rows = new
        if mode == "reset":
            self.endResetModel()
        elif mode == "insert":
            self.endInsertRows()
        elif mode == "remove":
            self.endRemoveRows()
        elif mode == "reorder":
            new_row = {old + 1: new_i + 1 for new_i, old in enumerate(change.order)}
            new_row[0] = 0
            old_list = self._persistent
            new_list = [self.index(new_row.get(ix.row(), ix.row()), 0) for ix in old_list]
            self.changePersistentIndexList(old_list, new_list)
            self._persistent = []
            self.layoutChanged.emit()
        elif new != self._old_rows:  # pragma: no cover - a layer edit that changed a block's size
            self.beginResetModel()
            self.endResetModel()
        if kind in ("insert", "remove", "reorder", "layer", "input", "layers", "frozen") and self.rowCount() > 0:
            # Any edit can change every shape downstream (and the activation bars' scale).
            self.dataChanged.emit(self.index(0, 0), self.index(self.rowCount() - 1, 0))
        self._pending = None

    # --- read -----------------------------------------------------------------------------
    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008, N802
        if parent.isValid():
            return 0
        return len(self._rows)

    def _inner_data(self, i: int, j: Any, role: int) -> Any:
        """A block's inner row (j an index) or its end row (j = END)."""
        block = self.doc.layers[i]
        binfo = self.doc.inference.layers[i]
        if role == AddressRole:
            return (i, j)
        if role == IndexRole:
            return i
        if role == IsInputRole:
            return False
        if j == END:
            side = binfo.side.get("shortcut")
            act = block.config.get("activation")
            if binfo.error is not None:
                text, tip = "end of block: + shortcut", "the shortcut is known once the block's shape problem is fixed"
            else:
                text, tip = block.shortcut_text(binfo.input_shape, binfo.output_shape)
                text = "+ " + text
            text += f", then {act}" if act else ""
            values = {
                Qt.ItemDataRole.DisplayRole: text, SummaryRole: text, TypeRole: block.type,
                ShapeRole: fmt_shape(binfo.output_shape) if binfo.output_shape is not None else "?",
                ParamsRole: f"{side.params:,}" if side is not None else ("0" if binfo.error is None else "–"),
                ActivationRole: binfo.activation_size / self.doc.max_activation, ErrorRole: None,
                DependentRole: False,
                Qt.ItemDataRole.ToolTipRole: f"<b>End of block {i}</b>: the block's input is added to the output "
                                             f"of its layers (a skip connection); {tip}. Drop here to add a layer "
                                             "at the end of the block.",
                Qt.ItemDataRole.AccessibleTextRole: f"End of block {i}: {text}",
            }
            return values.get(role)
        inner = block.children()[j]
        info = binfo.inner[j] if j < len(binfo.inner) else None
        error = info.error if info is not None else f"cannot be computed until layer {i} can"
        shape = info.output_shape if info is not None else None
        if role in (Qt.ItemDataRole.DisplayRole, SummaryRole):
            return inner.summary()
        if role == TypeRole:
            return inner.type
        if role == ShapeRole:
            return fmt_shape(shape) if shape is not None else "?"
        if role == ParamsRole:
            return "–" if error is not None else f"{info.params:,}"
        if role == ActivationRole:
            return (info.activation_size if info is not None else 0) / self.doc.max_activation
        if role == ErrorRole:
            return error
        if role == DependentRole:
            return error is not None and (info is None or info.input_shape is None)
        if role == Qt.ItemDataRole.ToolTipRole:
            tip = f"<b>Block {i}, inner layer {j}: {inner.summary()}</b><br>{inner.description}"
            if block.frozen and info is not None and (info.param_shapes or info.buffer_shapes):
                tip += f"<br>Frozen with its block (locked on row {i}: a block is locked as a whole)."
            return tip + (f"<br><span style='color:#a00'><b>Problem:</b> {error}</span>" if error else "")
        if role == Qt.ItemDataRole.AccessibleTextRole:
            return f"Block {i} inner layer {j}: {inner.summary()}, output {fmt_shape(shape)}"
        if role == Qt.ItemDataRole.BackgroundRole:
            return QBrush(ERROR_BACKGROUND) if error and info is not None and info.input_shape is not None else None
        if role == Qt.ItemDataRole.ForegroundRole:
            return QBrush(ERROR_FOREGROUND) if error else None
        return None

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < self.rowCount():
            return None
        addr = self._rows[index.row()]
        doc = self.doc
        if addr is None:
            return self._input_data(role)
        i, j = addr
        if j is not None:
            return self._inner_data(i, j, role)
        row = i + 1
        info = doc.inference.layers[i]
        if role == AddressRole:
            return (i, None)
        if role == CollapsedRole:
            return self.is_collapsed(i) if doc.layers[i].is_block else None
        if role == Qt.ItemDataRole.DisplayRole:
            # Only what belongs to this layer: other rows' edits must not change it (model tester).
            return info.summary
        if role == FrozenRole:
            return doc.layers[i].frozen if self.lockable(i) else None
        if role == WeightsRole:  # the mark painted on the row, while a trained model exists
            return self.mark(i) if i in self._marks else None
        if role == Qt.ItemDataRole.ToolTipRole:
            cls = LAYER_CLASSES[info.type]
            tip = f"<b>Layer {row - 1}: {info.summary}</b><br>{cls.description}"
            if info.error:
                tip += f"<br><span style='color:#a00'><b>Problem:</b> {info.error}</span>"
            mark = self.mark(i)
            if mark is not None:
                tip += "<br>" + MARK_TIPS[mark]
            if self.lockable(i) and not doc.layers[i].frozen:
                tip += "<br>Click the lock at the right to keep this layer's weights fixed when you continue training."
            if doc.layers[i].is_block and self.lockable(i):
                tip += "<br>A block is locked as a whole: all its inner layers' weights."
            return tip
        if role == Qt.ItemDataRole.AccessibleTextRole:
            text = f"Layer {row - 1}: {info.summary}, output {fmt_shape(info.output_shape)}, {info.params:,} parameters"
            mark = self.mark(i)
            text += f", weights {mark.replace('frozen new', 'frozen but new')}" if mark is not None else ""
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

    # --- locks and weight marks -------------------------------------------------------------
    def lockable(self, i: int) -> bool:
        """Layer i owns weights (so a lock means something) and its shape is known."""
        info = self.doc.inference.layers[i]
        return info.error is None and bool(info.param_shapes or info.buffer_shapes)

    def mark(self, i: int) -> str | None:
        """The mark layer i shows: "kept", "new", "frozen", "frozen new" (locked without trained
        weights), or None (no weights, or no trained model and no lock)."""
        if not self.lockable(i):
            return None
        weights = self._marks.get(i)
        if self.doc.layers[i].frozen:
            return "frozen new" if weights == "new" else "frozen"
        return weights

    @property
    def marks_shown(self) -> bool:
        """A trained model exists, so rows with weights show kept / new / frozen."""
        return bool(self._marks)

    def set_weight_marks(self, marks: dict[int, str]) -> None:
        """Which layers keep the trained model's weights ("kept") and which start fresh ("new");
        empty when there is no trained model. Only repaints: the design does not change."""
        marks = dict(marks)
        if marks != self._marks:
            self._marks = marks
            if self.rowCount() > 0:
                self.dataChanged.emit(self.index(0, 0), self.index(self.rowCount() - 1, 0))

    def set_locked(self, i: int, locked: bool) -> bool:
        """Lock or unlock layer i, as one undo command (False: it has no weights to lock)."""
        if not self.lockable(i) or self.doc.layers[i].frozen == locked:
            return False
        want = set(self.doc.locked)
        (want.add if locked else want.discard)(i)
        self.undo_stack.push(SetLockedCommand(self.doc, sorted(want)))
        return True

    def setData(self, index: QModelIndex | QPersistentModelIndex, value: Any,  # noqa: N802
                role: int = Qt.ItemDataRole.EditRole) -> bool:
        addr = self.address(index.row()) if index.isValid() else None
        if role != FrozenRole or addr is None or addr[1] is not None:
            return False
        return self.set_locked(addr[0], bool(value))

    def flags(self, index: QModelIndex | QPersistentModelIndex) -> Qt.ItemFlag:
        if not index.isValid():
            return Qt.ItemFlag.ItemIsDropEnabled
        base = Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable | Qt.ItemFlag.ItemNeverHasChildren
        addr = self.address(index.row())
        if addr is None or addr[1] == END:
            return base
        return base | Qt.ItemFlag.ItemIsDragEnabled

    # --- drag and drop ---------------------------------------------------------------------
    def supportedDropActions(self) -> Qt.DropAction:  # noqa: N802
        return Qt.DropAction.MoveAction | Qt.DropAction.CopyAction

    def supportedDragActions(self) -> Qt.DropAction:  # noqa: N802
        return Qt.DropAction.MoveAction

    def mimeTypes(self) -> list[str]:  # noqa: N802
        return [MIME_ROWS, MIME_LAYERS]

    def _config(self, addr: Address) -> dict[str, Any]:
        layer = self.doc.layers[addr[0]]
        return (layer if addr[1] is None else layer.children()[addr[1]]).to_config()

    def mimeData(self, indexes: list[QModelIndex]) -> QMimeData:  # noqa: N802
        addrs = sorted({a for ix in indexes if ix.isValid() and (a := self.address(ix.row())) is not None
                        and a[1] != END}, key=lambda a: (a[0], -1 if a[1] is None else a[1]))
        mime = layers_mime([self._config(a) for a in addrs])
        # top-level rows as plain indices (as before blocks existed), inner rows as [i, j]
        rows = [a[0] if a[1] is None else [a[0], a[1]] for a in addrs]
        mime.setData(MIME_ROWS, QByteArray(json.dumps(rows).encode()))
        return mime

    def drop_target(self, row: int, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> Address:  # noqa: B008
        """Where a drop before `row` puts layers: (i, None) top level, (i, j) inside block i."""
        if row < 0 and parent.isValid():
            row = parent.row() + 1
        if row < 0 or row >= len(self._rows):
            return (len(self.doc), None)
        addr = self._rows[max(row, 1)]
        i, j = addr
        if j == END:
            return (i, len(self.doc.layers[i].children()))
        return (i, j)

    def _drop_layer_index(self, row: int, parent: QModelIndex | QPersistentModelIndex) -> int:
        """Top-level layer index before which a drop lands: on an item = after it; nowhere = at the end."""
        return self.drop_target(row, parent)[0]

    def canDropMimeData(self, data: QMimeData, action: Qt.DropAction, row: int, column: int,  # noqa: N802
                        parent: QModelIndex | QPersistentModelIndex) -> bool:
        if action == Qt.DropAction.MoveAction and data.hasFormat(MIME_ROWS):
            return True
        return data.hasFormat(MIME_LAYERS) and action in (Qt.DropAction.CopyAction, Qt.DropAction.MoveAction)

    def _sources(self, data: QMimeData) -> list[Address] | None:
        rows = json.loads(bytes(data.data(MIME_ROWS).data()).decode())
        out: list[Address] = []
        for r in rows if isinstance(rows, list) else []:
            if isinstance(r, int) and not isinstance(r, bool) and 0 <= r < len(self.doc):
                out.append((r, None))
            elif (isinstance(r, list) and len(r) == 2 and all(isinstance(v, int) for v in r)
                  and 0 <= r[0] < len(self.doc) and self.doc.layers[r[0]].is_block
                  and 0 <= r[1] < len(self.doc.layers[r[0]].children())):
                out.append((r[0], r[1]))
            else:
                return None
        return out or None

    def dropMimeData(self, data: QMimeData, action: Qt.DropAction, row: int, column: int,  # noqa: N802
                     parent: QModelIndex | QPersistentModelIndex) -> bool:
        if action == Qt.DropAction.IgnoreAction:
            return True
        if not self.canDropMimeData(data, action, row, column, parent):
            return False
        target = self.drop_target(row, parent)
        try:
            if action == Qt.DropAction.MoveAction and data.hasFormat(MIME_ROWS):
                sources = self._sources(data)
                if sources is None:
                    return False
                return self.place(target, sources=sources)
            configs = json.loads(bytes(data.data(MIME_LAYERS).data()).decode())
            layers = [layer_from_config(c) for c in configs]
        except (ValueError, TypeError, KeyError, AttributeError):
            return False  # a foreign or corrupt payload: refuse the drop, keep the design
        if not layers:
            return False
        return self.place(target, layers=layers)

    def place(self, target: Address, sources: list[Address] = (), layers: list[Any] = ()) -> bool:  # type: ignore[assignment]
        """Move the layers at `sources` and/or insert `layers` at `target`, as one undo command."""
        if target[1] is None and all(a[1] is None for a in sources):
            if sources:  # a plain reorder of top-level layers
                cmd = make_move_command(self.doc, [a[0] for a in sources], target[0])
                if cmd is not None:
                    self.undo_stack.push(cmd)
                return True
            self.undo_stack.push(InsertLayersCommand(self.doc, target[0], list(layers)))
            return True
        configs = [layer.to_config() for layer in self.doc.layers]
        result = restructure(configs, sources, target, [layer.to_config() for layer in layers])
        if isinstance(result, str):
            self.refused.emit(result)
            return False
        new, placed = result
        if new == configs:
            return True
        if layers:
            what = f"Insert {layers[0].type}" if len(layers) == 1 else f"Insert {len(layers)} layers"
        else:
            what = f"Move {self._config(sources[0])['type']}" if len(sources) == 1 else f"Move {len(sources)} layers"
        where = f" into block {placed[0][0]}" if target[1] is not None else ""
        self.last_placed = placed
        try:
            self.undo_stack.push(ReplaceLayersCommand(self.doc, new, what + where))
        finally:
            self.last_placed = []
        return True

    # --- helpers for views -------------------------------------------------------------------
    def layer_row(self, layer_index: int) -> QModelIndex:
        return self.index(self.row_of((layer_index, None)), 0)
