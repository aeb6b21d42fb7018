"""The properties form of the selected row: one editor per field kind, applied as you type.

Every change is pushed as an undo command; consecutive changes of one field merge into one
undo step (SetFieldCommand.mergeWith), so typing "128" is undone in one go. The form follows its
row through inserts and moves (it tracks a QPersistentModelIndex), and refreshes its values after
undo/redo without stealing the focus of the editor being typed in.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QPersistentModelIndex, Signal
from PySide6.QtGui import QUndoStack
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from designer.commands import SetFieldCommand, SetInputCommand
from designer.document import Change, Document
from designer.icons import layer_icon
from designer.layer_list_model import AddressRole, LayerListModel
from engine.errors import SpecError
from engine.layers import LAYER_CLASSES, Field, Layer
from engine.layers.base import pair_of

MAX_INT = 1_000_000
MAX_SIZE = 4096


def pretty(name: str) -> str:
    return name.replace("_", " ").capitalize()


class PairEditor(QWidget):
    """Height and width spin boxes with a "square" box that keeps them equal (writes an int)."""

    value_changed = Signal(object)

    def __init__(self, minimum: int = 1, maximum: int = 999, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.h = QSpinBox()
        self.w = QSpinBox()
        for sb, name in ((self.h, "height"), (self.w, "width")):
            sb.setRange(minimum, maximum)
            sb.setAccessibleName(name)
            sb.setToolTip(name)
            sb.valueChanged.connect(self._edited)
        self.square = QCheckBox("square")
        self.square.setToolTip("Keep height and width equal")
        self.square.toggled.connect(self._square_toggled)
        times = QLabel("×")
        lay.addWidget(self.h)
        lay.addWidget(times)
        lay.addWidget(self.w)
        lay.addWidget(self.square)
        lay.addStretch(1)
        self.setFocusProxy(self.h)

    def value(self) -> int | list[int]:
        if self.square.isChecked():
            return self.h.value()
        return [self.h.value(), self.w.value()]

    def set_value(self, v: Any) -> None:
        h, w = pair_of(v)
        square = not isinstance(v, (list, tuple))
        for wid in (self.h, self.w, self.square):
            wid.blockSignals(True)
        if self.h.value() != h:
            self.h.setValue(h)
        if self.w.value() != w:
            self.w.setValue(w)
        self.square.setChecked(square)
        self.w.setEnabled(not square)
        for wid in (self.h, self.w, self.square):
            wid.blockSignals(False)

    def _square_toggled(self, on: bool) -> None:
        self.w.setEnabled(not on)
        if on and self.w.value() != self.h.value():
            self.w.blockSignals(True)
            self.w.setValue(self.h.value())
            self.w.blockSignals(False)
        self.value_changed.emit(self.value())

    def _edited(self) -> None:
        if self.square.isChecked() and self.w.value() != self.h.value():
            self.w.blockSignals(True)
            self.w.setValue(self.h.value())
            self.w.blockSignals(False)
        self.value_changed.emit(self.value())


class ConvPaddingEditor(QWidget):
    """valid / same / explicit zero padding (the pair editor appears for "custom")."""

    value_changed = Signal(object)
    MODES = ("valid", "same", "custom")

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(2)
        self.mode = QComboBox()
        self.mode.addItem("valid: no padding", "valid")
        self.mode.addItem("same: keep size (÷ stride)", "same")
        self.mode.addItem("custom: zero rows/columns", "custom")
        self.mode.setAccessibleName("padding mode")
        self.pair = PairEditor(minimum=0, maximum=99)
        lay.addWidget(self.mode)
        lay.addWidget(self.pair)
        self.mode.currentIndexChanged.connect(self._edited)
        self.pair.value_changed.connect(self._edited)
        self.setFocusProxy(self.mode)

    def value(self) -> Any:
        mode = self.mode.currentData()
        return self.pair.value() if mode == "custom" else mode

    def set_value(self, v: Any) -> None:
        self.mode.blockSignals(True)
        self.pair.blockSignals(True)
        if isinstance(v, str):
            self.mode.setCurrentIndex(self.MODES.index(v))
            self.pair.set_value(0)  # what "custom" starts from: square, no padding
        else:
            self.mode.setCurrentIndex(2)
            self.pair.set_value(v)
        self.pair.setVisible(not isinstance(v, str))
        self.mode.blockSignals(False)
        self.pair.blockSignals(False)

    def _edited(self) -> None:
        custom = self.mode.currentData() == "custom"
        self.pair.setVisible(custom)
        self.value_changed.emit(self.value())


class OptionalPairEditor(QWidget):
    """A pooling stride: "same as the window" (null) or an explicit pair."""

    value_changed = Signal(object)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(2)
        self.default = QCheckBox("same as pool size")
        self.pair = PairEditor()
        lay.addWidget(self.default)
        lay.addWidget(self.pair)
        self.default.toggled.connect(self._edited)
        self.pair.value_changed.connect(self._edited)
        self.setFocusProxy(self.default)
        self._fallback: Any = 2

    def value(self) -> Any:
        return None if self.default.isChecked() else self.pair.value()

    def set_value(self, v: Any, fallback: Any = 2) -> None:
        self._fallback = fallback
        self.default.blockSignals(True)
        self.pair.blockSignals(True)
        self.default.setChecked(v is None)
        self.pair.set_value(fallback if v is None else v)
        self.pair.setEnabled(v is not None)
        self.default.blockSignals(False)
        self.pair.blockSignals(False)

    def _edited(self) -> None:
        self.pair.setEnabled(not self.default.isChecked())
        self.value_changed.emit(self.value())


def _float_editor(f: Field) -> QDoubleSpinBox:
    sb = QDoubleSpinBox()
    small = isinstance(f.default, float) and 0 < f.default < 1e-3
    if f.kind == "rate":
        sb.setRange(0.0, 0.99)
        sb.setDecimals(2)
        sb.setSingleStep(0.05)
    elif f.kind == "exclusive_float":
        sb.setDecimals(7 if small else 3)
        step = 10 ** -sb.decimals()
        sb.setRange((f.minimum or 0.0) + step, (f.maximum or 1.0) - step)
        sb.setSingleStep(step * 10 if small else 0.01)
    else:
        sb.setDecimals(3)
        sb.setRange(f.minimum if f.minimum is not None else -1e6, f.maximum if f.maximum is not None else 1e6)
        sb.setSingleStep(0.01)
    return sb


class PropertiesPanel(QWidget):
    """Shows the editors of one row of the stack; `set_row(QPersistentModelIndex)` picks it."""

    #: A message for the status bar (e.g. a value the engine refused).
    message = Signal(str)

    def __init__(self, doc: Document, model: LayerListModel, undo_stack: QUndoStack,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.doc, self.model, self.undo_stack = doc, model, undo_stack
        self._row = QPersistentModelIndex()
        self._built_for: tuple[int, str] | None = None
        self._editors: dict[str, QWidget] = {}
        outer = QVBoxLayout(self)
        outer.setContentsMargins(8, 6, 8, 6)
        head = QHBoxLayout()
        self.icon = QLabel()
        self.title = QLabel()
        font = self.title.font()
        font.setBold(True)
        font.setPointSizeF(font.pointSizeF() * 1.15)
        self.title.setFont(font)
        head.addWidget(self.icon)
        head.addWidget(self.title, 1)
        outer.addLayout(head)
        self.description = QLabel()
        self.description.setWordWrap(True)
        self.description.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)
        outer.addWidget(self.description)
        self.form_host = QWidget()
        self.form = QFormLayout(self.form_host)
        self.form.setContentsMargins(0, 4, 0, 0)
        self.form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.ExpandingFieldsGrow)
        self.form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.DontWrapRows)
        outer.addWidget(self.form_host)
        outer.addStretch(1)
        doc.spec_changed.connect(self._doc_changed)
        self._rebuild()

    # --- which row ------------------------------------------------------------------------
    def set_row(self, index: QPersistentModelIndex | None) -> None:
        self._row = QPersistentModelIndex(index) if index is not None else QPersistentModelIndex()
        self._rebuild()

    def target(self) -> int | None:
        """-1 for the Input row, a layer index (a block's, for its inner rows), or None when nothing
        is selected."""
        if not self._row.isValid():
            return None
        addr = self._row.data(AddressRole)
        return -1 if addr is None else addr[0]

    def inner_target(self) -> int | None:
        """The selected inner layer of the block `target()`, or None (its end row shows the block)."""
        addr = self._row.data(AddressRole) if self._row.isValid() else None
        return addr[1] if addr is not None and isinstance(addr[1], int) else None

    def _layer(self) -> Layer:
        """The layer the form edits: a top-level one or a block's inner layer."""
        layer = self.doc.layers[self.target()]
        j = self.inner_target()
        return layer if j is None else layer.children()[j]

    def _doc_changed(self, change: Change) -> None:
        t = self.target()
        if t is not None and t >= len(self.doc):
            t = None
        key = None if t is None else (t, self.inner_target(), "Input" if t < 0 else self._layer().type)
        if key != self._built_for:
            self._rebuild()
        else:
            self._refresh_values()

    # --- building ---------------------------------------------------------------------------
    def _clear(self) -> None:
        while self.form.rowCount():
            self.form.removeRow(0)
        self._editors = {}

    def _rebuild(self) -> None:
        self._clear()
        t = self.target()
        if t is None:
            self._built_for = None
            self.icon.clear()
            self.title.setText("No layer selected")
            self.description.setText("Select a layer in the stack to edit it, or add one from the palette.")
            return
        if t < 0:
            self._built_for = (t, None, "Input")
            self._build_input()
        else:
            layer = self._layer()
            self._built_for = (t, self.inner_target(), layer.type)
            self._build_layer(t)
        self._refresh_values()

    def _build_input(self) -> None:
        self.icon.setPixmap(layer_icon("Input").pixmap(24, 24))
        self.title.setText("Input")
        self.description.setText("The image the network receives. Images are resized to height x width; "
                                 "1 channel = grayscale, 3 = RGB.")
        for name, maximum in (("channels", 64), ("height", MAX_SIZE), ("width", MAX_SIZE)):
            sb = QSpinBox()
            sb.setRange(1, maximum)
            sb.setAccessibleName(f"input {name}")
            sb.valueChanged.connect(self._input_edited)
            self._editors[name] = sb
            self.form.addRow(pretty(name) + ":", sb)

    def _title(self, t: int, layer: Layer) -> str:
        j = self.inner_target()
        return f"Layer {t} · {layer.type}" if j is None else f"Layer {t}.{j} · {layer.type} (inside block {t})"

    def _build_layer(self, t: int) -> None:
        layer = self._layer()
        cls = LAYER_CLASSES[layer.type]
        self.icon.setPixmap(layer_icon(layer.type, cls.category).pixmap(24, 24))
        self.title.setText(self._title(t, layer))
        self.description.setText(cls.description)
        if not cls.fields:
            note = QLabel("This layer has no settings.")
            note.setEnabled(False)
            self.form.addRow(note)
        for f in cls.fields:
            editor = self._make_editor(f)
            editor.setToolTip(f.help)
            editor.setAccessibleName(pretty(f.name))
            label = QLabel(pretty(f.name) + ":")
            label.setToolTip(f.help)
            label.setBuddy(editor)
            self._editors[f.name] = editor
            self.form.addRow(label, editor)

    def _make_editor(self, f: Field) -> QWidget:
        def emit(value: Any, name: str = f.name) -> None:
            self._field_edited(name, value)

        if f.kind == "int":
            sb = QSpinBox()
            sb.setRange(int(f.minimum) if f.minimum is not None else 1, MAX_INT)
            sb.setGroupSeparatorShown(False)
            sb.valueChanged.connect(emit)
            return sb
        composite = {"pair": PairEditor, "optional_pair": OptionalPairEditor, "conv_padding": ConvPaddingEditor}
        if f.kind in composite:
            ed = composite[f.kind]()
            ed.value_changed.connect(emit)
            return ed
        if f.kind == "pool_padding":
            combo = QComboBox()
            combo.addItem("valid: drop the incomplete border", "valid")
            combo.addItem("same: pad, output = ceil(n / stride)", "same")
            combo.currentIndexChanged.connect(lambda _i, c=combo: emit(c.currentData()))
            return combo
        if f.kind == "bool":
            cb = QCheckBox()
            cb.toggled.connect(emit)
            return cb
        if f.kind == "choice":
            combo = QComboBox()
            for c in f.choices:
                combo.addItem("none" if c is None else str(c), "" if c is None else c)
            combo.currentIndexChanged.connect(lambda _i, c=combo: emit(c.currentData() or None))
            return combo
        if f.kind in ("float", "rate", "exclusive_float"):
            sb = _float_editor(f)
            sb.valueChanged.connect(emit)
            return sb
        raise AssertionError(f"no editor for field kind {f.kind}")  # pragma: no cover

    # --- values -------------------------------------------------------------------------------
    def _refresh_values(self) -> None:
        t = self.target()
        if t is None:
            return
        if t < 0:
            for name, v in zip(("channels", "height", "width"), self.doc.spec.input_shape, strict=True):
                sb = self._editors[name]
                if sb.value() != v:
                    sb.blockSignals(True)
                    sb.setValue(v)
                    sb.blockSignals(False)
            return
        layer = self._layer()
        self.title.setText(self._title(t, layer))
        for f in LAYER_CLASSES[layer.type].fields:
            ed = self._editors[f.name]
            v = layer.config[f.name]
            ed.blockSignals(True)
            if isinstance(ed, (PairEditor, ConvPaddingEditor)):
                ed.set_value(v)
            elif isinstance(ed, OptionalPairEditor):
                ed.set_value(v, layer.config.get("pool_size", 2))
            elif isinstance(ed, QComboBox):
                ed.setCurrentIndex(max(ed.findData("" if v is None else v), 0))
            elif isinstance(ed, QCheckBox):
                ed.setChecked(bool(v))
            elif isinstance(ed, (QSpinBox, QDoubleSpinBox)) and ed.value() != v:
                ed.setValue(v)
            ed.blockSignals(False)

    def _field_edited(self, name: str, value: Any) -> None:
        t = self.target()
        if t is None or t < 0:
            return
        if self._layer().config.get(name) == value:
            return
        try:
            cmd = SetFieldCommand(self.doc, t, name, value, inner=self.inner_target())
        except SpecError as e:
            self.message.emit(str(e))
            self._refresh_values()
            return
        self.undo_stack.push(cmd)

    def _input_edited(self) -> None:
        shape = tuple(self._editors[n].value() for n in ("channels", "height", "width"))
        if shape != tuple(self.doc.spec.input_shape):
            self.undo_stack.push(SetInputCommand(self.doc, shape))

    def first_editor(self) -> QWidget | None:
        return next(iter(self._editors.values()), None)

    def editor(self, name: str) -> QWidget:
        """The editor of field `name` (tests and keyboard focus)."""
        return self._editors[name]
