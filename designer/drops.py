"""Files dropped on the window, in one place: what a dropped path is, and one event filter that
accepts the drag and hands the path to a handler.

A folder is training data, a .cnnd a trained model, a .json a design, an image something to
predict; anything else is refused at drag-enter, so the cursor says so before the drop.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QEvent, QObject
from PySide6.QtWidgets import QWidget

from engine.preprocess import IMAGE_EXTENSIONS


def kind_of(path: Path) -> str | None:
    """"folder", "model" (.cnnd), "design" (.json), "image", or None for something unusable."""
    suffix = path.suffix.lower()
    if path.is_dir():
        return "folder"
    if suffix == ".cnnd":
        return "model"
    if suffix == ".json":
        return "design"
    if suffix in IMAGE_EXTENSIONS:
        return "image"
    return None


def dropped_path(event: Any) -> Path | None:
    """The first local file or folder of a drag, if it is of a kind we use."""
    md = event.mimeData()
    if md is None or not md.hasUrls():
        return None
    urls = [u for u in md.urls() if u.isLocalFile()]
    if not urls:
        return None
    p = Path(urls[0].toLocalFile())
    return p if kind_of(p) is not None else None


class DropRouter(QObject):
    """Accept drags of usable paths on `target` and call `handler(path, kind)` on drop."""

    def __init__(self, target: QWidget, handler: Callable[[Path, str], None]) -> None:
        super().__init__(target)
        self.handler = handler
        target.setAcceptDrops(True)
        target.installEventFilter(self)

    def eventFilter(self, obj: Any, event: Any) -> bool:  # noqa: N802 - Qt naming
        t = event.type()
        if t in (QEvent.Type.DragEnter, QEvent.Type.DragMove):
            if dropped_path(event) is None:
                return False
            event.acceptProposedAction()
            return True
        if t == QEvent.Type.Drop:
            p = dropped_path(event)
            if p is None:
                return False
            event.acceptProposedAction()
            self.handler(p, kind_of(p) or "")
            return True
        return False
