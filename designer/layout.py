"""Building blocks the tabs' layouts share."""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QSplitter, QWidget


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
