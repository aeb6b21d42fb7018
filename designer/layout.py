"""Building blocks the tabs' layouts share."""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import QEvent, QObject, Qt, QTimer
from PySide6.QtWidgets import QScrollArea, QSplitter, QWidget


def splitter(orientation: Qt.Orientation, *panes: tuple[QWidget, int],
             sizes: Sequence[int] | None = None) -> QSplitter:
    """A splitter of (widget, stretch factor) panes: each pane's share of a resize is stated beside
    the pane, instead of by its index a few lines further down."""
    split = QSplitter(orientation)
    for i, (widget, stretch) in enumerate(panes):
        split.addWidget(widget)
        split.setStretchFactor(i, stretch)
    if sizes is not None:
        split.setSizes(list(sizes))
    return split


class ColumnScroll(QScrollArea):
    """A vertically scrolling column of wrapped text and forms that drops its scroll bar whenever the
    column fits without it.

    Why: QScrollArea measures a height-for-width column at the viewport's current width, which a
    shown scroll bar narrows; a label that wraps one more line there keeps the bar (and the extra
    lines) on though the column fits at the full width: after a folder with a longer report was
    shown, say, the settings stayed cut off below the fold."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWidgetResizable(True)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setFrameShape(QScrollArea.Shape.NoFrame)
        self._check = QTimer(self)
        self._check.setSingleShot(True)
        self._check.timeout.connect(self._drop_needless_bar)
        self._watch = _LayoutRequests(self._check.start, self)

    def setWidget(self, widget: QWidget) -> None:  # noqa: N802 - Qt naming
        """Also watches the column's layout requests, through a filter object of its own: an
        eventFilter override here would put Python frames inside QScrollArea's own filter, which Qt
        re-enters while a scroll bar that comes and goes changes the width of a column whose height
        depends on its width (a known Qt feedback loop; one full test run overflowed the C stack in
        that recursion with the override). A separate filter returns before QScrollArea's runs."""
        super().setWidget(widget)
        widget.installEventFilter(self._watch)

    def resizeEvent(self, e) -> None:  # noqa: N802 - Qt naming
        super().resizeEvent(e)
        self._check.start(0)

    def _drop_needless_bar(self) -> None:
        w = self.widget()
        if w is None or not self.verticalScrollBar().isVisible():
            return
        full = self.maximumViewportSize()
        if w.heightForWidth(full.width()) <= full.height():
            self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)  # re-measured at full width
            self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)


class _LayoutRequests(QObject):
    """Calls `then()` on each layout request of the widgets it filters (and lets every event pass):
    ColumnScroll checks its scroll bar after QScrollArea has laid the column out."""

    def __init__(self, then, parent: QObject):
        super().__init__(parent)
        self._then = then

    def eventFilter(self, o: QObject, e: QEvent) -> bool:  # noqa: N802 - Qt naming
        if e.type() == QEvent.Type.LayoutRequest:
            self._then(0)
        return False
