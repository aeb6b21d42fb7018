"""The layer stack view: one painted row per layer (index, summary, output shape, parameters,
activation bar, and the engine's message in red when the layer is invalid)."""

from __future__ import annotations

from PySide6.QtCore import QEvent, QModelIndex, QPersistentModelIndex, QPoint, QRect, QRectF, QSize, Qt, Signal
from PySide6.QtGui import (
    QColor,
    QDrag,
    QDropEvent,
    QFont,
    QFontMetrics,
    QKeyEvent,
    QMouseEvent,
    QPainter,
    QPainterPath,
    QPalette,
    QPen,
)
from PySide6.QtWidgets import (
    QAbstractItemView,
    QListView,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QWidget,
)

from designer.icons import category_color, layer_icon
from designer.layer_list_model import (
    END,
    MIME_ROWS,
    ActivationRole,
    AddressRole,
    CollapsedRole,
    DependentRole,
    ErrorRole,
    FrozenRole,
    IndexRole,
    IsInputRole,
    ParamsRole,
    ShapeRole,
    SummaryRole,
    TypeRole,
    WeightsRole,
)
from engine.layers import LAYER_CLASSES

PAD = 6
#: how far a block's inner rows are indented (the bracket is drawn in this margin)
INDENT = 18
ERROR_BG = QColor(255, 232, 232)
ERROR_FG = QColor(176, 0, 0)
#: the lock column at the right of every row (a layer with weights shows its lock there)
LOCK_W = 18
#: (text, ink, fill) of the weight marks painted under the shape and parameters
MARK_STYLE = {
    "kept": ("kept", QColor(30, 110, 45), QColor(222, 242, 224)),
    "new": ("new", QColor(20, 85, 170), QColor(224, 236, 250)),
    "frozen": ("frozen", QColor(60, 75, 90), QColor(228, 233, 238)),
    "frozen new": ("frozen, new", QColor(150, 80, 0), QColor(252, 234, 208)),
}


def paint_lock(painter: QPainter, rect: QRect, locked: bool, color: QColor) -> None:
    """A padlock centred in `rect`: closed (filled body) when locked, open and outlined otherwise."""
    painter.save()
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    cx, cy = rect.center().x(), rect.center().y()
    body = QRectF(cx - 5, cy - 1, 10, 7)
    pen = QPen(color, 1.6)
    painter.setPen(pen)
    painter.setBrush(color if locked else Qt.BrushStyle.NoBrush)
    painter.drawRoundedRect(body, 1.5, 1.5)
    painter.setBrush(Qt.BrushStyle.NoBrush)
    shackle = QPainterPath()
    left = cx - 3.2 if locked else cx + 0.2  # open: the shackle swings up to the right
    base = body.top() if locked else body.top() - 2.5
    shackle.moveTo(left, body.top() if locked else body.top() - 0.5)
    shackle.lineTo(left, base - 2.5)
    shackle.arcTo(QRectF(left, base - 6.0, 6.4, 7.0), 180, -180)
    shackle.lineTo(left + 6.4, base if locked else base - 0.5)
    painter.drawPath(shackle)
    painter.restore()


def columns(rect: QRect, fm: QFontMetrics) -> dict[str, QRect]:
    """Column geometry shared by the rows and the header, so they always line up."""
    idx_w = fm.horizontalAdvance("▾ 00") + PAD
    icon_w = 22
    params_w = fm.horizontalAdvance("0,000,000") + 2 * PAD
    shape_w = fm.horizontalAdvance("000x000x000") + PAD
    x = rect.left() + 5  # the category stripe
    out = {"index": QRect(x, rect.top(), idx_w, rect.height())}
    x += idx_w
    out["icon"] = QRect(x, rect.top(), icon_w, rect.height())
    x += icon_w + 4
    right = rect.right() - PAD
    out["lock"] = QRect(right - LOCK_W + 1, rect.top(), LOCK_W, rect.height())
    right -= LOCK_W + 2
    out["params"] = QRect(right - params_w, rect.top(), params_w, rect.height())
    out["shape"] = QRect(right - params_w - shape_w, rect.top(), shape_w, rect.height())
    out["summary"] = QRect(x, rect.top(), out["shape"].left() - x - PAD, rect.height())
    out["detail"] = QRect(x, rect.top(), right - x, rect.height())
    return out


def summary_lines(text: str, fm: QFontMetrics, width: int, most: int = 3) -> list[str]:
    """A row's name on one line, or broken between words onto up to `most` lines when it is wider
    than `width` (a block's end row, "+ 1x1 conv shortcut, stride 2, then LeakyReLU", was cut to
    "then Lea..."); only what does not fit even then is elided."""
    lines: list[str] = []
    rest = text
    while fm.horizontalAdvance(rest) > width and len(lines) < most - 1:
        line = ""
        for word in rest.split(" "):
            longer = f"{line} {word}" if line else word
            if fm.horizontalAdvance(longer) > width:
                break
            line = longer
        if not line:  # one word wider than the column
            break
        lines.append(line)
        rest = rest[len(line):].strip()
    return lines + [fm.elidedText(rest, Qt.TextElideMode.ElideRight, width)]


def min_width(fm: QFontMetrics, name: str = "Conv2D 128@3x3, same") -> int:
    """The narrowest stack that shows a typical layer's name whole beside its shape and parameters
    (at 1024 px the window used to squeeze every name to "..."); a scroll bar's width included."""
    cols = columns(QRect(0, 0, 1000, 10), fm)
    return 1000 - cols["summary"].width() + fm.horizontalAdvance(name) + 2 * PAD + 16


def _category(type_name: str) -> str:
    cls = LAYER_CLASSES.get(type_name)
    return cls.category if cls is not None else "Input"


class StackDelegate(QStyledItemDelegate):
    def __init__(self, view: QListView) -> None:
        super().__init__(view)
        self.view = view

    def _metrics(self, option: QStyleOptionViewItem) -> tuple[QFont, QFont]:
        small = QFont(option.font)
        small.setPointSizeF(max(option.font.pointSizeF() * 0.9, 7.0))
        return option.font, small

    def _error_rect(self, option: QStyleOptionViewItem, width: int) -> QRect:
        font, _ = self._metrics(option)
        cols = columns(QRect(0, 0, width, 100), QFontMetrics(font))
        return cols["detail"]

    def _summary(self, font: QFont, index: QModelIndex | QPersistentModelIndex, row_width: int,
                 ) -> tuple[QFont, list[str]]:
        """The row's name in its font (bold on the Input row), in the lines it takes at this width."""
        bold = QFont(font)
        bold.setBold(bool(index.data(IsInputRole)))
        addr = index.data(AddressRole)
        indent = INDENT if addr is not None and addr[1] is not None else 0
        room = columns(QRect(0, 0, row_width - indent, 100), QFontMetrics(font))["summary"].width()
        return bold, summary_lines(index.data(SummaryRole) or "", QFontMetrics(bold), room)

    def sizeHint(self, option: QStyleOptionViewItem, index: QModelIndex | QPersistentModelIndex) -> QSize:  # noqa: N802
        font, small = self._metrics(option)
        fm, sfm = QFontMetrics(font), QFontMetrics(small)
        width = max(self.view.viewport().width(), 200)
        extra = (len(self._summary(font, index, width)[1]) - 1) * fm.height()  # a name on two lines
        h = PAD + fm.height() + extra + 3 + max(sfm.height(), 8) + PAD
        error = index.data(ErrorRole)
        if error:
            rect = self._error_rect(option, width)
            bound = sfm.boundingRect(QRect(0, 0, rect.width(), 1000), int(Qt.TextFlag.TextWordWrap), error)
            h = PAD + fm.height() + extra + 3 + bound.height() + PAD
        return QSize(10, h)  # the list view stretches rows to its width (no horizontal scrolling)

    def paint(self, painter: QPainter, option: QStyleOptionViewItem,
              index: QModelIndex | QPersistentModelIndex) -> None:
        painter.save()
        font, small = self._metrics(option)
        fm = QFontMetrics(font)
        error = index.data(ErrorRole)
        dependent = bool(index.data(DependentRole))
        selected = bool(option.state & QStyle.StateFlag.State_Selected)
        rect = QRect(option.rect)
        addr = index.data(AddressRole)
        depth = 1 if addr is not None and addr[1] is not None else 0
        if depth:  # a block's inner or end row: indented, with the block's bracket in the margin
            color = category_color("Blocks")
            painter.setPen(QPen(color, 2))
            x = rect.left() + 8
            bottom = rect.center().y() if addr[1] == END else rect.bottom() + 1
            painter.drawLine(x, rect.top(), x, bottom)
            if addr[1] == END:
                painter.drawLine(x, bottom, x + INDENT - 8, bottom)
            rect.setLeft(rect.left() + INDENT)
            option = QStyleOptionViewItem(option)
            option.rect = rect
        if error and not selected and not dependent:
            painter.fillRect(rect, ERROR_BG)
        style = option.widget.style() if option.widget else None
        if style is not None:
            style.drawPrimitive(QStyle.PrimitiveElement.PE_PanelItemViewItem, option, painter, option.widget)
        type_name = index.data(TypeRole) or ""
        category = _category(type_name)
        painter.fillRect(QRect(rect.left(), rect.top() + 1, 4, rect.height() - 2),
                         ERROR_FG if error and not dependent else category_color(category))
        text_color = option.palette.color(
            QPalette.ColorRole.HighlightedText if selected else QPalette.ColorRole.Text)
        dim = text_color if selected else option.palette.color(QPalette.ColorRole.PlaceholderText)
        line1 = QRect(rect.left(), rect.top() + PAD, rect.width(), fm.height())
        cols = columns(line1, fm)
        is_input = bool(index.data(IsInputRole))
        painter.setFont(font)
        painter.setPen(dim)
        align_r = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
        align_l = Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter
        if not is_input:
            label = str(index.data(IndexRole)) if not depth else ("" if addr[1] == END else str(addr[1]))
            collapsed = index.data(CollapsedRole)
            if collapsed is not None:  # a block: its arrow toggles the inner rows
                label = ("▸ " if collapsed else "▾ ") + label
            painter.drawText(cols["index"], align_r, label)
        ic = cols["icon"]
        if selected:  # keep the coloured pictogram readable on the highlight
            painter.setRenderHint(QPainter.RenderHint.Antialiasing)
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setBrush(QColor(255, 255, 255, 230))
            painter.drawRoundedRect(QRect(ic.left(), ic.top() + (ic.height() - 22) // 2, 22, 22), 4, 4)
        layer_icon(type_name if not is_input else "Input", category).paint(
            painter, QRect(ic.left() + 2, ic.top() + (ic.height() - 18) // 2, 18, 18))
        bold, lines = self._summary(font, index, option.rect.width() + (INDENT if depth else 0))
        painter.setFont(bold)
        painter.setPen(ERROR_FG if error and not selected and not dependent else text_color)
        for k, text in enumerate(lines):
            painter.drawText(cols["summary"].translated(0, k * fm.height()), align_l, text)
        painter.setFont(font)
        painter.drawText(cols["shape"], align_r, index.data(ShapeRole) or "")
        painter.setPen(dim)
        painter.drawText(cols["params"], align_r, index.data(ParamsRole) or "")
        locked = index.data(FrozenRole)
        if locked is not None:  # a layer with weights: its lock (faint while open)
            ink = QColor(text_color if selected else MARK_STYLE["frozen"][1])
            if not locked:
                ink.setAlpha(255 if selected else 110)
            paint_lock(painter, QRect(cols["lock"].left(), line1.top(), cols["lock"].width(), line1.height()),
                       bool(locked), ink)
        # Second line: the activation bar, or the engine's message; a weight mark at its right end.
        top2 = line1.bottom() + 4 + (len(lines) - 1) * fm.height()
        detail = QRect(cols["detail"].left(), top2, cols["detail"].width(), rect.bottom() - top2 - PAD + 2)
        mark = index.data(WeightsRole)
        if not error and self.view.model() is not None and getattr(self.view.model(), "marks_shown", False):
            # room for the marks on every row (so the activation bars keep one scale)
            sfm = QFontMetrics(small)
            room = sfm.horizontalAdvance(MARK_STYLE["frozen new"][0]) + 12
            detail.setWidth(detail.width() - room - PAD)
            if mark in MARK_STYLE:
                text, ink, fill = MARK_STYLE[mark]
                w = sfm.horizontalAdvance(text) + 10
                pill = QRect(cols["lock"].right() - w, top2 - 2, w, sfm.height() + 1)
                painter.setRenderHint(QPainter.RenderHint.Antialiasing)
                painter.setPen(QPen(ink, 1))
                painter.setBrush(fill)
                painter.drawRoundedRect(pill, 4, 4)
                painter.setFont(small)
                painter.drawText(pill, Qt.AlignmentFlag.AlignCenter, text)
                painter.setFont(font)
        if error:
            painter.setFont(small)
            painter.setPen(text_color if selected else dim if dependent else ERROR_FG)
            painter.drawText(detail, int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop
                                         | Qt.TextFlag.TextWordWrap), ("" if dependent else "⚠ ") + error)
        else:
            frac = float(index.data(ActivationRole) or 0.0)
            bar_w = max(int(round(detail.width() * frac)), 2)
            bar = QRect(detail.left(), top2 + 1, bar_w, max(min(detail.height() - 2, 6), 3))
            color = QColor(category_color(category)) if not selected else QColor(text_color)
            color.setAlpha(150)
            painter.fillRect(bar, color)
            painter.setPen(QPen(QColor(0, 0, 0, 0)))
        painter.restore()


    def lock_rect(self, option: QStyleOptionViewItem, index: QModelIndex | QPersistentModelIndex) -> QRect | None:
        """Where a click toggles the row's lock (None: the row has no lock)."""
        if index.data(FrozenRole) is None:
            return None
        col = columns(option.rect, QFontMetrics(option.font))["lock"]
        return QRect(col.left() - 2, option.rect.top(), col.width() + 4, option.rect.height())

    def editorEvent(self, event: QEvent, model, option: QStyleOptionViewItem,  # noqa: N802
                    index: QModelIndex | QPersistentModelIndex) -> bool:
        """A click on the lock locks or unlocks the layer (one undo command, through the model)."""
        if isinstance(event, QMouseEvent) and event.button() == Qt.MouseButton.LeftButton:
            hit = self.lock_rect(option, index)
            if hit is not None and hit.contains(event.position().toPoint()):
                if event.type() == QEvent.Type.MouseButtonRelease:
                    model.setData(index, not index.data(FrozenRole), FrozenRole)
                return True  # press and double-click too: no selection change, no drag, no edit
        return super().editorEvent(event, model, option, index)


class StackHeader(QWidget):
    """Column titles above the stack, painted with the rows' own geometry."""

    def __init__(self, view: QListView) -> None:
        super().__init__()
        self.view = view
        fm = self.fontMetrics()
        self.setFixedHeight(fm.height() + 6)

    def paintEvent(self, event) -> None:  # noqa: N802
        p = QPainter(self)
        fm = self.fontMetrics()
        offset = self.view.geometry().left() + self.view.frameWidth() - self.geometry().left()
        rect = QRect(offset, 0, self.view.viewport().width(), self.height())
        cols = columns(rect, fm)
        p.setPen(self.palette().color(QPalette.ColorRole.PlaceholderText))
        align_r = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
        p.drawText(cols["index"], align_r, "#")
        p.drawText(cols["summary"], Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter,
                   "Layer  (bar: activation size)")
        p.drawText(cols["shape"], align_r, "Output")
        p.drawText(cols["params"], align_r, "Params")
        p.end()


class StackView(QListView):
    """List view whose drags and drops always go through the model's mime handling (undoable)."""

    #: Enter or double-click on a row: the user wants to edit it (focus the properties form).
    edit_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setItemDelegate(StackDelegate(self))
        self.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.setDragEnabled(True)
        self.setAcceptDrops(True)
        self.setDropIndicatorShown(True)
        self.setDragDropMode(QAbstractItemView.DragDropMode.DragDrop)
        self.setDefaultDropAction(Qt.DropAction.MoveAction)
        self.setResizeMode(QListView.ResizeMode.Adjust)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setUniformItemSizes(False)
        self.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.setAccessibleName("Layer stack")
        self.setMouseTracking(True)

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and self.currentIndex().isValid():
            self.edit_requested.emit()
            return
        if (event.key() in (Qt.Key.Key_Left, Qt.Key.Key_Right) and not event.modifiers()
                and self.currentIndex().isValid()
                and self._toggle_block(self.currentIndex(), event.key() == Qt.Key.Key_Left)):
            return
        super().keyPressEvent(event)

    def mouseDoubleClickEvent(self, event) -> None:  # noqa: N802
        super().mouseDoubleClickEvent(event)
        ix = self.indexAt(event.position().toPoint())
        if ix.isValid() and not self._on_lock(ix, event.position().toPoint()):
            self.edit_requested.emit()

    def _on_lock(self, ix: QModelIndex, pos: QPoint) -> bool:
        option = QStyleOptionViewItem()
        self.initViewItemOption(option)
        option.rect = self.visualRect(ix)
        hit = self.itemDelegate().lock_rect(option, ix)
        return hit is not None and hit.contains(pos)

    def selected_layer_indices(self) -> list[int]:
        """Top-level layers selected (a block's inner rows are not among them)."""
        addrs = [ix.data(AddressRole) for ix in self.selectionModel().selectedRows()]
        return sorted(a[0] for a in addrs if a is not None and a[1] is None)

    def selected_addresses(self) -> list[tuple]:
        """Every selected layer row, inner rows of blocks included (not the blocks' end rows)."""
        addrs = [ix.data(AddressRole) for ix in self.selectionModel().selectedRows()]
        return [tuple(a) for a in addrs if a is not None and a[1] != END]

    def _toggle_block(self, ix: QModelIndex, collapse: bool | None = None) -> bool:
        collapsed = ix.data(CollapsedRole)
        if collapsed is None:
            return False
        i = ix.data(AddressRole)[0]
        self.model().set_collapsed(i, (not collapsed) if collapse is None else collapse)
        new = self.model().index(self.model().row_of((i, None)), 0)
        self.selectionModel().setCurrentIndex(new, self.selectionModel().SelectionFlag.ClearAndSelect)
        return True

    def mousePressEvent(self, event) -> None:  # noqa: N802
        ix = self.indexAt(event.position().toPoint())
        if ix.isValid() and ix.data(CollapsedRole) is not None:
            cols = columns(self.visualRect(ix), self.fontMetrics())
            if event.position().x() <= cols["index"].right() and self._toggle_block(ix):
                return
        super().mousePressEvent(event)

    def startDrag(self, supported_actions: Qt.DropAction) -> None:  # noqa: N802
        indexes = [ix for ix in self.selectedIndexes() if ix.flags() & Qt.ItemFlag.ItemIsDragEnabled]
        if not indexes:
            return
        drag = QDrag(self)
        drag.setMimeData(self.model().mimeData(indexes))
        # The drop (in dropEvent) performs the move as one undo command; nothing to remove here.
        drag.exec(Qt.DropAction.MoveAction | Qt.DropAction.CopyAction, Qt.DropAction.MoveAction)

    def drop_row(self, pos: QPoint) -> int:
        """Model row before which a drop at `pos` lands (-1: at the end)."""
        ix = self.indexAt(pos)
        if not ix.isValid():
            return -1
        rect = self.visualRect(ix)
        return ix.row() + (1 if pos.y() >= rect.center().y() else 0)

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802
        mime = event.mimeData()
        internal = event.source() is self and mime.hasFormat(MIME_ROWS)
        action = Qt.DropAction.MoveAction if internal else Qt.DropAction.CopyAction
        row = self.drop_row(event.position().toPoint())
        if self.model().dropMimeData(mime, action, row, 0, QModelIndex()):
            event.setDropAction(action)
            event.accept()
        else:
            event.ignore()
        self.stopAutoScroll()
        self.setState(QAbstractItemView.State.NoState)
        self.viewport().update()
