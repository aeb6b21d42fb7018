"""After training: where the model goes wrong, and a place to try it on your own images.

Accuracy alone hides *which* classes are confused; the confusion matrix (click a cell to see those
images), per-class accuracy and the most confident mistakes show it, and the Predict view lets a
person drop any image and see the top classes as probability bars.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QBrush, QColor, QIcon, QImage, QPixmap
from PySide6.QtWidgets import (
    QFileDialog,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from designer.layout import splitter
from designer.saliency_view import Explainer, HeatMaps, SaliencyControls, overlay_pixmap
from engine.preprocess import IMAGE_EXTENSIONS

THUMB = 48
#: the Predict view's image (as wide as the heat-map controls under it, so the map is easy to read)
PREVIEW = 250
MAX_MISTAKES = 24
MAX_CELL_IMAGES = 120


def to_qimage(img: np.ndarray) -> QImage:
    """uint8 (C, H, W) with C = 1 or 3 (or (H, W)) -> a QImage that owns its pixels."""
    a = np.asarray(img)
    if a.ndim == 3 and a.shape[0] in (1, 3):
        a = a[0] if a.shape[0] == 1 else np.moveaxis(a, 0, -1)
    if a.dtype != np.uint8:
        lo, hi = float(a.min()), float(a.max())
        a = ((a - lo) / (hi - lo + 1e-12) * 255).astype(np.uint8)
    a = np.ascontiguousarray(a)
    h, w = a.shape[:2]
    if a.ndim == 2:
        q = QImage(a.data, w, h, w, QImage.Format.Format_Grayscale8)
    else:
        q = QImage(a.data, w, h, 3 * w, QImage.Format.Format_RGB888)
    return q.copy()  # detach from the NumPy buffer


def thumbnail(img: np.ndarray, size: int = THUMB) -> QPixmap:
    return QPixmap.fromImage(to_qimage(img)).scaled(
        size, size, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.FastTransformation)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> np.ndarray:
    m = np.zeros((n, n), dtype=np.int64)
    np.add.at(m, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return m


def _icon_list(named: bool = False) -> QListWidget:
    """Thumbnails with a caption; `named` leaves room for a third line (the file name)."""
    lst = QListWidget()
    lst.setViewMode(QListWidget.ViewMode.IconMode)
    lst.setIconSize(QSize(THUMB, THUMB))
    lst.setResizeMode(QListWidget.ResizeMode.Adjust)
    lst.setMovement(QListWidget.Movement.Static)
    lst.setSpacing(4)
    lst.setWordWrap(True)
    lst.setGridSize(QSize(THUMB + 64, THUMB + 54) if named else QSize(THUMB + 40, THUMB + 34))
    lst.setTextElideMode(Qt.TextElideMode.ElideMiddle)
    return lst


#: what the Results page says before any results
NO_RESULTS = "Results appear here when training finishes (computed on the validation images)."


class ResultsView(QWidget):
    """Confusion matrix, per-class accuracy and most confident mistakes on the validation images."""

    cell_selected = Signal(int, int)
    #: an image file to show in Predict (a mistake or a cell image double-clicked)
    open_requested = Signal(str)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.summary = QLabel(NO_RESULTS)
        self.summary.setWordWrap(True)
        self.summary.setStyleSheet("font-weight: bold;")

        self.matrix = QTableWidget()
        self.matrix.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.matrix.setSelectionMode(QTableWidget.SelectionMode.SingleSelection)
        self.matrix.cellClicked.connect(self._cell_clicked)
        # keyboard users move through the cells with the arrow keys: the images follow
        self.matrix.currentCellChanged.connect(lambda r, c, _r, _c: self._cell_clicked(r, c))
        self.matrix.setToolTip("Rows: true class; columns: predicted class. Click a cell to see its images.")
        self.per_class = QTableWidget()
        self.per_class.setColumnCount(3)
        self.per_class.setHorizontalHeaderLabels(["images", "correct", "accuracy"])
        self.per_class.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.per_class.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.cell_title = QLabel("Click a cell of the confusion matrix to see those images.")
        self.cell_title.setWordWrap(True)
        self.cell_images = _icon_list(named=True)
        self.mistakes = _icon_list(named=True)
        self.mistakes.setToolTip("Wrong predictions the model was most sure about: often mislabelled or ambiguous. "
                                 "Double-click one to open it in Predict.")
        for lst in (self.cell_images, self.mistakes):
            lst.itemDoubleClicked.connect(self._item_double_clicked)

        mbox = QGroupBox("Confusion matrix (rows: true, columns: predicted)")
        ml = QVBoxLayout(mbox)
        ml.addWidget(self.matrix)
        pbox = QGroupBox("Per-class accuracy")
        QVBoxLayout(pbox).addWidget(self.per_class)
        cbox = QGroupBox("Images in the selected cell")
        cl = QVBoxLayout(cbox)
        cl.addWidget(self.cell_title)
        cl.addWidget(self.cell_images)
        xbox = QGroupBox("Most confident mistakes")
        xl = QVBoxLayout(xbox)
        #: heat maps of what made the model choose the wrong class
        self.mistake_heat = SaliencyControls(compact=True)
        self.mistake_heat.changed.connect(self._refresh_mistake_icons)
        xl.addWidget(self.mistake_heat)
        xl.addWidget(self.mistakes)
        self.explainer: Explainer | None = None
        #: the mistakes' heat maps, computed in the background; the indices they are for
        self.heat_jobs = HeatMaps("cnn-designer-heat-mistakes", self)
        self.heat_jobs.ready.connect(self._mistake_heats_ready)
        self.heat_jobs.failed.connect(self._mistake_heats_failed)
        self.heat_jobs.busy_changed.connect(self.mistake_heat.set_busy)
        self._heat_for: list[int] = []

        top = splitter(Qt.Orientation.Horizontal, (mbox, 3), (pbox, 2))
        bottom = splitter(Qt.Orientation.Horizontal, (cbox, 0), (xbox, 0))  # 0: QSplitter's default
        outer = splitter(Qt.Orientation.Vertical, (top, 3), (bottom, 2))
        lay = QVBoxLayout(self)
        lay.addWidget(self.summary)
        lay.addWidget(outer, 1)

        self.classes: list[str] = []
        self.images: np.ndarray | None = None
        self.paths: list[str] | None = None
        self.y_true = np.zeros(0, dtype=np.int64)
        self.y_pred = np.zeros(0, dtype=np.int64)
        self.probs = np.zeros((0, 0), dtype=np.float32)
        self.confusion = np.zeros((0, 0), dtype=np.int64)

    def clear(self, hint: str = "") -> None:
        """Empty the page; `hint` says how to fill it (default: train)."""
        self.summary.setText(hint or NO_RESULTS)
        for t in (self.matrix, self.per_class):
            t.setRowCount(0)
        self.matrix.setColumnCount(0)
        self.cell_images.clear()
        self.mistakes.clear()
        self.heat_jobs.cancel()
        self.classes, self.images, self.paths = [], None, None
        self.y_true = self.y_pred = np.zeros(0, dtype=np.int64)
        self.probs = np.zeros((0, 0), dtype=np.float32)
        self.confusion = np.zeros((0, 0), dtype=np.int64)
        self.cell_title.setText("Click a cell of the confusion matrix to see those images.")

    def set_results(self, classes: list[str], y_true: np.ndarray, probs: np.ndarray,
                    images: np.ndarray | None, loss: float | None = None, title: str = "validation",
                    paths: list[str] | None = None, about: str = "", source: str = "") -> None:
        """probs (N, classes) from the model, images uint8 (N, C, H, W) for the thumbnails, paths
        the image files (named under each mistake); `about` names the model, `source` the images."""
        self.classes = list(classes)
        self.paths = list(paths) if paths is not None and len(paths) == len(y_true) else None
        self.y_true = np.asarray(y_true, dtype=np.int64)
        self.probs = np.asarray(probs, dtype=np.float32)
        self.y_pred = self.probs.argmax(axis=1) if len(self.probs) else np.zeros(0, dtype=np.int64)
        self.images = images
        n = len(self.classes)
        self.confusion = m = confusion_matrix(self.y_true, self.y_pred, n)
        total, correct = int(m.sum()), int(np.trace(m))
        acc = correct / total if total else 0.0
        loss_txt = f", loss {loss:.4f}" if loss is not None else ""
        who = f"{about}: " if about else ""
        where = f" ({source})" if source else ""
        what = title if who else title.capitalize()
        self.summary.setText(f"{who}{what} accuracy {100 * acc:.2f} % ({correct:,} of {total:,} images){loss_txt}"
                             f"{where}. Click a cell to see its images.")

        self.matrix.clear()
        self.matrix.setRowCount(n)
        self.matrix.setColumnCount(n)
        self.matrix.setHorizontalHeaderLabels(self.classes)
        self.matrix.setVerticalHeaderLabels(self.classes)
        row_sums = np.maximum(m.sum(axis=1, keepdims=True), 1)
        frac = m / row_sums
        for i in range(n):
            for j in range(n):
                it = QTableWidgetItem(str(int(m[i, j])))
                it.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
                f = float(frac[i, j])
                if i == j:
                    colour = QColor.fromRgbF(1 - 0.6 * f, 1 - 0.25 * f, 1 - 0.6 * f)
                elif m[i, j]:
                    colour = QColor.fromRgbF(1, 1 - min(1.0, 0.25 + 2 * f) * 0.6, 1 - min(1.0, 0.25 + 2 * f) * 0.6)
                else:
                    colour = QColor("white")
                it.setBackground(QBrush(colour))
                it.setForeground(QBrush(QColor("#222")))
                self.matrix.setItem(i, j, it)
        hh = self.matrix.horizontalHeader()
        hh.setSectionResizeMode(QHeaderView.ResizeMode.Stretch if n <= 12 else QHeaderView.ResizeMode.ResizeToContents)
        self.matrix.verticalHeader().setSectionResizeMode(
            QHeaderView.ResizeMode.Stretch if n <= 12 else QHeaderView.ResizeMode.ResizeToContents)

        self.per_class.setRowCount(n)
        self.per_class.setVerticalHeaderLabels(self.classes)
        for i in range(n):
            count = int(m[i].sum())
            ok = int(m[i, i])
            cells = [str(count), str(ok), f"{100 * ok / count:.1f} %" if count else "-"]
            for j, text in enumerate(cells):
                it = QTableWidgetItem(text)
                it.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.per_class.setItem(i, j, it)

        self.mistakes.clear()
        wrong = np.flatnonzero(self.y_pred != self.y_true)
        if len(wrong):
            conf = self.probs[wrong, self.y_pred[wrong]]
            for k in wrong[np.argsort(-conf, kind="stable")][:MAX_MISTAKES]:
                self.mistakes.addItem(self._item(int(k)))
        self._refresh_mistake_icons()
        self.cell_images.clear()
        self.cell_title.setText("Click a cell of the confusion matrix to see those images.")

    def _item(self, k: int) -> QListWidgetItem:
        t, p = int(self.y_true[k]), int(self.y_pred[k])
        text = f"{self.classes[t]} \u2192 {self.classes[p]}\n{100 * float(self.probs[k, p]):.0f} %"
        tip = f"true: {self.classes[t]}, predicted: {self.classes[p]} with probability {float(self.probs[k, p]):.3f}"
        if self.paths is not None:
            path = self.paths[k]
            text += f"\n{Path(path).name}"
            tip = f"{path}\n{tip}\nDouble-click to open it in Predict."
            item_path = path
        else:
            item_path = None
        item = QListWidgetItem(text)
        if self.images is not None:
            item.setIcon(QIcon(thumbnail(self.images[k])))
        item.setToolTip(tip)
        item.setData(Qt.ItemDataRole.UserRole, k)
        item.setData(Qt.ItemDataRole.UserRole + 1, item_path)
        return item

    def set_explainer(self, explainer: Explainer | None) -> None:
        self.explainer = explainer
        self.heat_jobs.set_explainer(explainer)
        self.mistake_heat.set_layers(explainer.layers if explainer is not None else [],
                       explainer.default_layer if explainer is not None else None)
        self.mistake_heat.setEnabled(explainer is not None)
        self._refresh_mistake_icons()

    def _mistake_indices(self) -> list[int]:
        return [int(self.mistakes.item(i).data(Qt.ItemDataRole.UserRole)) for i in range(self.mistakes.count())]

    def _refresh_mistake_icons(self) -> None:
        """Plain thumbnails of the mistakes at once; with the heat map on, the maps of the
        (wrongly) predicted class follow from the background (`_mistake_heats_ready`)."""
        self.heat_jobs.cancel()
        if self.images is None:
            return
        ks = self._mistake_indices()
        self._draw_mistakes(ks, [None] * len(ks))
        if ks and self.mistake_heat.on and self.explainer is not None:
            method, layer = self.mistake_heat.choice()
            self._heat_for = ks
            self.heat_jobs.request(self.images[ks], self.y_pred[ks], method, layer)

    def _draw_mistakes(self, ks: list[int], heats: list[np.ndarray | None]) -> None:
        for i, (k, heat) in enumerate(zip(ks, heats, strict=True)):
            self.mistakes.item(i).setIcon(QIcon(overlay_pixmap(self.images[k], heat, THUMB)))

    def _mistake_heats_ready(self, maps: np.ndarray) -> None:
        if self.images is not None and self._mistake_indices() == self._heat_for:
            self._draw_mistakes(self._heat_for, list(maps))

    def _mistake_heats_failed(self, message: str) -> None:
        self.mistake_heat.legend.setText(f"Cannot compute heat maps: {message}")

    def shutdown(self) -> bool:
        """Stop the heat maps' job (bounded wait); True when no thread is left."""
        return self.heat_jobs.shutdown()

    def _item_double_clicked(self, item: QListWidgetItem) -> None:
        path = item.data(Qt.ItemDataRole.UserRole + 1)
        if path:
            self.open_requested.emit(str(path))

    def _cell_clicked(self, row: int, col: int) -> None:
        n = len(self.classes)
        if 0 <= row < n and 0 <= col < n and self.confusion.shape == (n, n):
            self.show_cell(row, col)

    def show_cell(self, true_class: int, predicted: int) -> list[int]:
        """Show the images of one confusion-matrix cell; returns their indices."""
        idx = np.flatnonzero((self.y_true == true_class) & (self.y_pred == predicted))
        self.cell_images.clear()
        for k in idx[:MAX_CELL_IMAGES]:
            self.cell_images.addItem(self._item(int(k)))
        more = f" (first {MAX_CELL_IMAGES})" if len(idx) > MAX_CELL_IMAGES else ""
        self.cell_title.setText(f"{len(idx)} images of class {self.classes[true_class]} predicted as "
                                f"{self.classes[predicted]}{more}")
        self.cell_selected.emit(true_class, predicted)
        return [int(k) for k in idx]


#: predictor(path) -> (image uint8 (C, H, W) as the model sees it, probabilities per class); raises with a message.
Predictor = Callable[[str], tuple[np.ndarray, np.ndarray]]


class PredictView(QWidget):
    """Open or drop an image and see the model's top classes as probability bars."""

    predicted = Signal(str)

    def __init__(self, parent: QWidget | None = None, top_k: int = 5):
        super().__init__(parent)
        self.setAcceptDrops(True)
        self.top_k = top_k
        self.predictor: Predictor | None = None
        self.classes: list[str] = []
        self.open_button = QPushButton("Open image...")
        self.open_button.clicked.connect(self._open)
        self.hint = QLabel("Open an image, or drop one here, to see what the trained model thinks it is.")
        self.hint.setWordWrap(True)
        self.preview = QLabel()
        self.preview.setFixedSize(PREVIEW + 10, PREVIEW + 10)
        self.preview.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.preview.setStyleSheet("border: 1px solid #bbb; background: #fafafa;")
        self.answer = QLabel("")
        self.answer.setStyleSheet("font-size: 15pt; font-weight: bold;")
        self.answer.setWordWrap(True)
        self.bars_box = QGroupBox("Top classes")
        self.bars = QGridLayout(self.bars_box)
        self.bar_rows: list[tuple[QLabel, QProgressBar]] = []

        head = QHBoxLayout()
        head.addWidget(self.open_button)
        head.addWidget(self.hint, 1)
        body = QHBoxLayout()
        left = QVBoxLayout()
        left.addWidget(self.preview)
        #: heat map over the preview (method and layer selectable)
        self.heat = SaliencyControls()
        self.heat.setFixedWidth(PREVIEW + 10)
        self.heat.changed.connect(self._draw_preview)
        left.addWidget(self.heat)
        left.addStretch(1)
        body.addLayout(left)
        right = QVBoxLayout()
        right.addWidget(self.answer)
        right.addWidget(self.bars_box)
        right.addStretch(1)
        body.addLayout(right, 1)
        self.examples = _icon_list()
        self.examples.setMaximumHeight(2 * (THUMB + 40))
        self.examples.setToolTip("Validation images: click one to see what the model predicts for it")
        self.examples.itemClicked.connect(self._example_clicked)
        self.examples_box = QGroupBox("Or click a validation image")
        QVBoxLayout(self.examples_box).addWidget(self.examples)
        lay = QVBoxLayout(self)
        lay.addLayout(head)
        lay.addLayout(body, 1)
        lay.addWidget(self.examples_box)
        self._example_images: np.ndarray | None = None
        self._example_labels: np.ndarray | None = None
        #: probs_of(images uint8 (N, C, H, W)) -> (N, classes): the model on images already in memory
        self.probs_of: Callable[[np.ndarray], np.ndarray] | None = None
        self.explainer: Explainer | None = None
        #: the image shown and the class it was predicted as (the heat map explains that class)
        self.shown: tuple[np.ndarray, int] | None = None
        #: the file shown, when the image came from one (predicted again when the model changes)
        self.shown_path: str | None = None
        self.heat_map: np.ndarray | None = None
        self.heat_jobs = HeatMaps("cnn-designer-heat-predict", self)
        self.heat_jobs.ready.connect(self._heat_ready)
        self.heat_jobs.failed.connect(self._heat_failed)
        self.heat_jobs.busy_changed.connect(self.heat.set_busy)
        self.set_predictor(None, [])

    def set_predictor(self, predictor: Predictor | None, classes: list[str]) -> None:
        self.predictor = predictor
        self.classes = list(classes)
        self.open_button.setEnabled(predictor is not None)
        if predictor is None:
            self.open_button.setToolTip("Train a model or open a .cnnd first")
        else:
            self.open_button.setToolTip("")

    def set_explainer(self, explainer: Explainer | None) -> None:
        self.explainer = explainer
        self.heat_jobs.set_explainer(explainer)
        self.heat.set_layers(explainer.layers if explainer is not None else [],
                       explainer.default_layer if explainer is not None else None)
        self.heat.setEnabled(explainer is not None)
        self._draw_preview()

    def _draw_preview(self) -> None:
        """The image at once; with the heat map on, its map follows from the background
        (`_heat_ready`), and a new image, method or layer cancels the one being computed."""
        self.heat_jobs.cancel()
        self.heat_map = None
        if self.shown is None:
            return
        img, best = self.shown
        self.preview.setPixmap(overlay_pixmap(img, None, PREVIEW))
        if self.heat.on and self.explainer is not None:
            method, layer = self.heat.choice()
            self.heat_jobs.request(img[None], [best], method, layer)

    def _heat_ready(self, maps: np.ndarray) -> None:
        if self.shown is not None:
            self.heat_map = maps[0]
            self.preview.setPixmap(overlay_pixmap(self.shown[0], self.heat_map, PREVIEW))

    def _heat_failed(self, message: str) -> None:
        self.heat.legend.setText(f"Cannot compute the heat map: {message}")

    def shutdown(self) -> bool:
        """Stop the heat map's job (bounded wait); True when no thread is left."""
        return self.heat_jobs.shutdown()

    def model_changed(self) -> None:
        """Another model predicts from now on: a file on show is predicted again by it; a
        validation image of the old model's data, or an answer with no model left, is cleared."""
        path = self.shown_path
        if path is not None and self.predictor is not None and Path(path).is_file():
            self.predict_file(path)
            return
        self.heat_jobs.cancel()
        self.shown, self.shown_path, self.heat_map = None, None, None
        self.preview.clear()
        self.answer.setText("")
        self._show_bars([])

    def set_examples(self, images: np.ndarray | None, labels: np.ndarray | None, per_class: int = 2) -> None:
        """A few validation images per class to click on (no file needed)."""
        self.examples.clear()
        self._example_images, self._example_labels = images, labels
        if images is None or labels is None or not len(labels):
            self.examples_box.setVisible(False)
            return
        self.examples_box.setVisible(True)
        picks = [int(k) for c in np.unique(labels) for k in np.flatnonzero(labels == c)[:per_class]]
        for k in picks[:40]:
            name = self.classes[int(labels[k])] if int(labels[k]) < len(self.classes) else str(labels[k])
            item = QListWidgetItem(QIcon(thumbnail(images[k])), name)
            item.setData(Qt.ItemDataRole.UserRole, k)
            self.examples.addItem(item)

    def _example_clicked(self, item: QListWidgetItem) -> None:
        k = int(item.data(Qt.ItemDataRole.UserRole))
        self.predict_example(k)

    def predict_example(self, k: int) -> np.ndarray | None:
        if self.probs_of is None or self._example_images is None:
            return None
        img = self._example_images[k]
        probs = np.asarray(self.probs_of(img[None])[0], dtype=np.float64)
        truth = self.classes[int(self._example_labels[k])]
        self.shown_path = None
        return self._show(img, probs, f"validation image {k} (labelled {truth})")

    def _open(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Open an image", "", f"Images ({' '.join('*' + e for e in IMAGE_EXTENSIONS)});;All files (*)")
        if path:
            self.predict_file(path)

    def dragEnterEvent(self, e):  # noqa: N802 - Qt naming
        if e.mimeData().hasUrls() and any(u.isLocalFile() for u in e.mimeData().urls()):
            e.acceptProposedAction()

    def dropEvent(self, e):  # noqa: N802 - Qt naming
        files = [u.toLocalFile() for u in e.mimeData().urls() if u.isLocalFile()]
        if files:
            e.acceptProposedAction()
            self.predict_file(files[0])

    def predict_file(self, path: str) -> np.ndarray | None:
        """Run the predictor on one file and show it; errors become a one-line message."""
        if self.predictor is None:
            self.answer.setText("No trained model yet: train one or open a .cnnd.")
            return None
        try:
            img, probs = self.predictor(path)
        except Exception as e:  # the message is for the user; a traceback would not help them
            self.answer.setText(f"Cannot predict {Path(path).name}: {e}")
            self.answer.setStyleSheet("font-size: 11pt; font-weight: bold; color: #b00020;")
            return None
        self.shown_path = path
        return self._show(img, np.asarray(probs, dtype=np.float64), Path(path).name)

    def _show(self, img: np.ndarray, probs: np.ndarray, what: str) -> np.ndarray:
        self.answer.setStyleSheet("font-size: 15pt; font-weight: bold;")
        order = np.argsort(-probs, kind="stable")[: min(self.top_k, len(probs))]
        best = int(order[0])
        self.shown = (img, best)
        self._draw_preview()
        self.answer.setText(f"{self.classes[best]}  ({100 * probs[best]:.1f} %)   \u2014  {what}")
        self._show_bars([(self.classes[int(k)], float(probs[int(k)])) for k in order])
        self.predicted.emit(self.classes[best])
        return probs

    def _show_bars(self, rows: list[tuple[str, float]]) -> None:
        while len(self.bar_rows) < len(rows):
            label, bar = QLabel(), QProgressBar()
            bar.setRange(0, 1000)
            bar.setTextVisible(True)
            r = len(self.bar_rows)
            self.bars.addWidget(label, r, 0)
            self.bars.addWidget(bar, r, 1)
            self.bar_rows.append((label, bar))
        for k, (label, bar) in enumerate(self.bar_rows):
            visible = k < len(rows)
            label.setVisible(visible)
            bar.setVisible(visible)
            if visible:
                name, p = rows[k]
                label.setText(name)
                bar.setValue(int(round(1000 * p)))
                bar.setFormat(f"{100 * p:.1f} %")
