"""Live training curves: loss per batch (smoothed) and per epoch, validation loss and accuracy.

Plotting must never slow training down: points are appended to growing NumPy buffers (amortised
doubling, no per-point reallocation), the curves are created once and only `setData` is called,
and at most a few redraws per second happen however fast batches arrive.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QEvent, QObject, Qt, QTimer
from PySide6.QtGui import QTextOption
from PySide6.QtWidgets import QHBoxLayout, QWidget

#: Redraw interval; batches arriving faster are batched into one redraw.
REDRAW_MS = 400
BATCH, TRAIN, VAL = "#7aa6d6", "#1f5fa8", "#d9731a"
#: Exponential smoothing of the per-batch loss (like TensorBoard's slider at ~0.9).
SMOOTHING = 0.9


class Series:
    """An append-only (x, y) series backed by a NumPy buffer that doubles when full."""

    def __init__(self, capacity: int = 1024):
        self._data = np.empty((2, capacity), dtype=np.float64)
        self.n = 0

    def append(self, x: float, y: float) -> None:
        if self.n == self._data.shape[1]:
            grown = np.empty((2, 2 * self.n), dtype=np.float64)
            grown[:, : self.n] = self._data[:, : self.n]
            self._data = grown
        self._data[0, self.n] = x
        self._data[1, self.n] = y
        self.n += 1

    def clear(self) -> None:
        self.n = 0

    @property
    def x(self) -> np.ndarray:
        return self._data[0, : self.n]

    @property
    def y(self) -> np.ndarray:
        return self._data[1, : self.n]


def _legend_title(title: str, entries: list[tuple[str, str]]) -> str:
    """The legend as the plot's title line: it can never cover a curve. Lines break only between
    entries (fit_width), never inside one."""
    keys = "&nbsp; ".join(f'<span style="color:{c}">&#9644;&nbsp;{name.replace(" ", "&nbsp;")}</span>'
                          for name, c in entries)
    return f'<b>{title}</b>&nbsp; <span style="font-size:8pt">{keys}</span>'


def fit_width(label: pg.LabelItem, width: float) -> None:
    """Break a pyqtgraph label's text into centred lines when it is wider than `width` (a LabelItem
    never wraps: in a narrow view a plot's legend or a caption was cut off at the edge)."""
    item = label.item
    item.setTextWidth(-1)
    if item.boundingRect().width() > width > 0:
        item.document().setDefaultTextOption(QTextOption(Qt.AlignmentFlag.AlignHCenter))
        item.setTextWidth(width)
    label.updateMin()
    label.resizeEvent(None)


class FitOnResize(QObject):
    """Keeps labels of a pyqtgraph view (`labels()` gives them) within its width as it is resized."""

    def __init__(self, view: QWidget, labels: Callable[[], list[pg.LabelItem | None]], margin: int = 12,
                 fitted: Callable[[pg.LabelItem], None] | None = None):
        super().__init__(view)
        self.view, self.labels, self.margin, self.fitted = view, labels, margin, fitted
        view.installEventFilter(self)

    def fit(self) -> None:
        for label in self.labels():
            if label is not None:  # a plot's title starts right of the axis
                left = max(0.0, self.view.mapFromScene(label.sceneBoundingRect().topLeft()).x())
                fit_width(label, self.view.width() - self.margin - left)
                if self.fitted is not None:
                    self.fitted(label)
        central = getattr(self.view, "centralWidget", None)
        if central is not None:  # laid out again at the view's width (it had grown to the old text's)
            central.setGeometry(self.view.range)

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt naming
        if event.type() == QEvent.Type.Resize:
            self.fit()
        return False


def _plot(title: str, left: str) -> pg.PlotWidget:
    w = pg.PlotWidget(background="w")
    item = w.getPlotItem()
    item.setTitle(title, color="#333", size="9pt")
    item.setLabel("bottom", "epoch", color="#333")
    item.setLabel("left", left, color="#333")
    item.showGrid(x=True, y=True, alpha=0.25)
    item.setClipToView(True)
    item.setDownsampling(auto=True, mode="peak")
    for axis in ("left", "bottom"):
        item.getAxis(axis).setPen("#888")
        item.getAxis(axis).setTextPen("#333")
        item.getAxis(axis).enableAutoSIPrefix(False)  # "accuracy (x0.001)" helps nobody
    w.setMinimumSize(260, 180)
    FitOnResize(w, lambda: [item.titleLabel], margin=8, fitted=lambda label: _title_height(item, label))
    return w


def _title_height(item: pg.PlotItem, label: pg.LabelItem) -> None:
    """A plot's title row is 30 px high (pyqtgraph's setTitle): room for the lines it wraps into."""
    h = max(30.0, label.item.boundingRect().height())
    label.setMaximumHeight(h)
    item.layout.setRowFixedHeight(0, h)


def nice_ceiling(v: float) -> float:
    """The next of 1, 1.5, 2, 2.5, 3, 4, 5, 6, 8 x 10^k at or above v: a tidy axis end."""
    if not math.isfinite(v) or v <= 0:
        return 1.0
    k = 10 ** math.floor(math.log10(v))
    return next(m * k for m in (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10) if m * k >= v)


class LivePlots(QWidget):
    """Loss and accuracy plots that a training run feeds with `add_batch` and `add_epoch`."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.loss_plot = _plot(_legend_title("Loss", [("train, per batch (smoothed)", BATCH), ("train", TRAIN),
                                                       ("validation", VAL)]), "cross-entropy")
        self.acc_plot = _plot(_legend_title("Accuracy", [("train", TRAIN), ("validation", VAL)]), "accuracy")
        self.acc_plot.getPlotItem().setYRange(0, 1, padding=0.02)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.loss_plot)
        lay.addWidget(self.acc_plot)

        lp, ap = self.loss_plot.getPlotItem(), self.acc_plot.getPlotItem()
        self.series = {
            "batch": Series(4096),
            "train_loss": Series(64),
            "val_loss": Series(64),
            "train_acc": Series(64),
            "val_acc": Series(64),
        }
        dot = {"symbol": "o", "symbolSize": 6}
        self.curves = {
            "batch": lp.plot(pen=pg.mkPen(BATCH, width=1)),
            "train_loss": lp.plot(pen=pg.mkPen(TRAIN, width=2), symbolBrush=TRAIN, symbolPen=TRAIN, **dot),
            "val_loss": lp.plot(pen=pg.mkPen(VAL, width=2), symbolBrush=VAL, symbolPen=VAL, **dot),
            "train_acc": ap.plot(pen=pg.mkPen(TRAIN, width=2), symbolBrush=TRAIN, symbolPen=TRAIN, **dot),
            "val_acc": ap.plot(pen=pg.mkPen(VAL, width=2), symbolBrush=VAL, symbolPen=VAL, **dot),
        }
        self._ema: float | None = None
        self._fixed = False
        self._loss_top = 0.0
        self._dirty: set[str] = set()
        self._timer = QTimer(self)
        self._timer.setInterval(REDRAW_MS)
        self._timer.timeout.connect(self.flush)
        self._timer.start()
        #: How many times each curve was redrawn; lets tests and the benchmark see throttling work.
        self.redraws = 0

    # --- feeding -----------------------------------------------------------------------------
    def clear(self) -> None:
        for s in self.series.values():
            s.clear()
        self._ema = None
        self._dirty = set(self.series)
        self.flush()

    def add_batch(self, epoch_position: float, loss: float) -> None:
        """One batch's loss at a fractional epoch (epoch 1, batch 30 of 60 -> 0.5)."""
        if not math.isfinite(loss):
            return
        self._ema = loss if self._ema is None else SMOOTHING * self._ema + (1 - SMOOTHING) * loss
        self.series["batch"].append(epoch_position, self._ema)
        self._dirty.add("batch")

    def add_epoch(self, epoch: int, train_loss: float | None, train_acc: float | None,
                  val_loss: float | None = None, val_acc: float | None = None) -> None:
        for key, value in (("train_loss", train_loss), ("train_acc", train_acc),
                           ("val_loss", val_loss), ("val_acc", val_acc)):
            if value is not None and math.isfinite(value):
                self.series[key].append(float(epoch), float(value))
                self._dirty.add(key)

    def set_epochs(self, first: float, last: float) -> None:
        """Fixed axes for a run: x spans the run's epochs, the loss axis runs from 0 and grows only
        in steps when a loss exceeds it. Otherwise every redraw moves the ranges, and re-laying out
        and re-rendering the axes is the costliest part of a pyqtgraph redraw (measured: the
        event-loop stalls during training came with plot redraws)."""
        for w in (self.loss_plot, self.acc_plot):
            item = w.getPlotItem()
            item.disableAutoRange()
            item.setXRange(first, max(last, first + 1), padding=0.04)
        self.acc_plot.getPlotItem().setYRange(0, 1, padding=0.02)
        self._loss_top = 0.0
        self._fixed = True

    def auto_epochs(self) -> None:
        self._fixed = False
        self.loss_plot.getPlotItem().enableAutoRange()
        self.acc_plot.getPlotItem().enableAutoRange(axis="x")
        self.acc_plot.getPlotItem().setYRange(0, 1, padding=0.02)

    def load_history(self, history: list[dict]) -> None:
        """Show a saved model's per-epoch history (from a .cnnd) without batch points."""
        self.clear()
        self.auto_epochs()
        for i, h in enumerate(history, start=1):
            self.add_epoch(int(h.get("epoch", i)), h.get("train_loss"), h.get("train_accuracy"),
                           h.get("val_loss"), h.get("val_accuracy"))
        self.flush()

    # --- drawing -----------------------------------------------------------------------------
    def flush(self) -> None:
        """Push dirty series to their curves; called by the timer, never per batch."""
        if not self._dirty:
            return
        for key in self._dirty:
            s = self.series[key]
            self.curves[key].setData(s.x, s.y)
        if self._fixed:
            top = max((float(self.series[k].y.max()) for k in ("batch", "train_loss", "val_loss")
                       if self.series[k].n), default=0.0)
            if top > self._loss_top:
                self._loss_top = nice_ceiling(top * 1.05)
                self.loss_plot.getPlotItem().setYRange(0, self._loss_top, padding=0)
        self._dirty.clear()
        self.redraws += 1

    def point_count(self, key: str) -> int:
        """Points the curve currently shows (what the user sees, not what is buffered)."""
        x = self.curves[key].xData
        return 0 if x is None else len(x)
