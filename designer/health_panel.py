"""The Train tab's Health view: is the network learning, and if not, why.

Shows engine.health's per-layer figures of every epoch (a compact table: the latest value and a
sparkline over the epochs), its warnings in plain words with one-click fixes, the learning-rate
finder's curve (loss against lr on a log axis), and the answer to "Can it learn?". The figures
come with each epoch from the training worker; lr-find and the check run in a `PreflightJob`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from designer.layout import splitter
from designer.worker import Job
from engine.health import HealthWarning, nice

SPARKS = "\u2581\u2582\u2583\u2584\u2585\u2586\u2587\u2588"
#: (column title, layer-figure key, log scale, tooltip)
COLUMNS = (
    ("Gradient norm", "grad_norm", True, "Size of the weights' gradient: near 0 means the layer hardly learns"),
    ("Update / weight", "update_ratio", True, "How much one step changes the weights, relative to their size; "
                                              "healthy about 0.001-0.01"),
    ("Dead ReLUs", "dead_fraction", False, "Share of units that output 0 for every sample image"),
    ("Activation mean", "act_mean", False, "Mean of the layer's output on 128 training images"),
    ("Activation std", "act_std", True, "Spread of the layer's output: 0 means every input looks the same"),
)


def sparkline(values: list[float | None], log: bool = False) -> str:
    """Unicode bars, one per epoch, scaled to the series' own range (log scale for norms)."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if len(vals) < 2:
        return ""

    def f(v: float) -> float:
        return math.log10(max(abs(v), 1e-12)) if log else v

    lo, hi = min(map(f, vals)), max(map(f, vals))
    out = []
    for v in values:
        if v is None or not math.isfinite(v):
            out.append(" ")
        else:
            t = 0.0 if hi == lo else (f(v) - lo) / (hi - lo)
            out.append(SPARKS[min(len(SPARKS) - 1, int(t * len(SPARKS)))])
    return "".join(out[-12:])


def _fmt(key: str, v: float | None) -> str:
    if v is None:
        return "-"
    if key == "dead_fraction":
        return f"{100 * v:.0f} %"
    return f"{v:.3g}"


class PreflightJob(Job):
    """Runs lr-find or the check in the background: `fn(cancel) -> result`. The engine asks
    `cancel` before every training step, so Cancel stops it within one step."""

    result = Signal(object)
    failed = Signal(str)
    #: stopped by `cancel()`: nothing was changed
    cancelled = Signal()

    def __init__(self, fn: Callable[[Callable[[], bool]], Any]):
        super().__init__()
        self.fn = fn

    def work(self) -> None:
        try:
            result = self.fn(self.cancel_event.is_set)
        except Exception as e:  # one line for the user
            if self.cancel_event.is_set():
                self.cancelled.emit()
            else:
                self.failed.emit(str(e) or type(e).__name__)
            return
        if self.cancel_event.is_set():  # too late to be wanted: the user said Cancel
            self.cancelled.emit()
        else:
            self.result.emit(result)


class HealthPanel(QWidget):
    """Per-layer figures, warnings with fixes, the lr-finder curve and the check's answer."""

    #: settings to apply, e.g. {"lr": 0.001} or {"augment": True}
    fix_requested = Signal(dict)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.rows: list[dict[str, Any]] = []
        #: a run is training: the fix buttons wait (set_running)
        self._running = False
        self.intro = QLabel("Each epoch, every layer is measured here and problems are explained below. "
                            "Before a long run, try \u201cFind learning rate\u201d and \u201cCan it learn?\u201d.")
        self.intro.setWordWrap(True)
        self.warn_box = QGroupBox("Warnings")
        self.warn_layout = QVBoxLayout(self.warn_box)
        self.no_warnings = QLabel("No warnings yet.")
        self.warn_layout.addWidget(self.no_warnings)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels([c[0] for c in COLUMNS])
        for i, c in enumerate(COLUMNS):
            self.table.horizontalHeaderItem(i).setToolTip(c[3])
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        tbox = QGroupBox("Per layer (latest epoch, and the trend over epochs)")
        QVBoxLayout(tbox).addWidget(self.table)

        self.lr_plot = pg.PlotWidget()
        self.lr_plot.setBackground("w")
        self.lr_plot.setLogMode(x=True, y=False)
        self.lr_plot.setLabel("bottom", "learning rate")
        self.lr_plot.setLabel("left", "loss (smoothed)")
        self.lr_plot.setMinimumHeight(150)
        self.lr_curve = self.lr_plot.plot([], [], pen=pg.mkPen("#1f77b4", width=2))
        self.lr_mark = pg.InfiniteLine(angle=90, pen=pg.mkPen("#d62728", width=1, style=Qt.PenStyle.DashLine))
        self.lr_mark.setVisible(False)
        self.lr_plot.addItem(self.lr_mark)
        self.lr_plot.setVisible(False)  # until there is a curve
        self.lr_text = QLabel("\u201cFind learning rate\u201d plots the loss while the learning rate grows.")
        self.lr_text.setWordWrap(True)
        lbox = QGroupBox("Learning-rate finder")
        ll = QVBoxLayout(lbox)
        ll.addWidget(self.lr_plot, 1)
        ll.addWidget(self.lr_text)
        self.check_text = QLabel("\u201cCan it learn?\u201d trains on 20 images until it knows them by heart.")
        self.check_text.setWordWrap(True)
        self.check_text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        cbox = QGroupBox("Can it learn?")
        QVBoxLayout(cbox).addWidget(self.check_text)

        bottom = QWidget()
        bl = QHBoxLayout(bottom)
        bl.setContentsMargins(0, 0, 0, 0)
        bl.addWidget(lbox, 3)
        bl.addWidget(cbox, 2)
        split = splitter(Qt.Orientation.Vertical, (tbox, 3), (bottom, 2))
        lay = QVBoxLayout(self)
        lay.addWidget(self.intro)
        lay.addWidget(self.warn_box)
        lay.addWidget(split, 1)
        self._warning_widgets: list[QWidget] = []

    # --- per-epoch figures -------------------------------------------------------------------------
    def clear(self) -> None:
        self.rows = []
        self.table.setRowCount(0)
        self.show_warnings([])

    def load_history(self, history: list[dict[str, Any]]) -> None:
        """A saved model's epochs (rows without health figures are skipped). The run just shown
        stays as it is: its warnings keep their one-click fixes, which a file does not store."""
        mine = [r.get("epoch") for r in self.rows]
        if mine and mine == [r.get("epoch") for r in history if r.get("layers")]:
            return
        self.clear()
        for row in history:
            if row.get("layers"):
                self.add_epoch(row)

    def add_epoch(self, row: dict[str, Any]) -> None:
        layers = row.get("layers")
        if not layers:
            return
        self.rows.append(row)
        shown = [d for d in layers if any(d.get(c[1]) is not None for c in COLUMNS[:3])]
        self.table.setRowCount(len(shown))
        labels = []
        for r, d in enumerate(shown):
            labels.append(f"{d['index']}: {d['type']}")
            history = [next((x for x in row_.get("layers", []) if x.get("index") == d["index"]), {})
                       for row_ in self.rows]
            for c, (_, key, log, _tip) in enumerate(COLUMNS):
                series = [h.get(key) for h in history]
                text = _fmt(key, d.get(key))
                spark = sparkline(series, log) if d.get(key) is not None else ""
                item = QTableWidgetItem(f"{text}  {spark}" if spark else text)
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                if key == "dead_fraction" and (d.get(key) or 0) >= 0.6:
                    item.setForeground(Qt.GlobalColor.darkRed)
                self.table.setItem(r, c, item)
        self.table.setVerticalHeaderLabels(labels)
        health = row.get("health")
        if health is None:  # a row from a file: messages only, no fixes
            health = [{"kind": "", "message": m, "fix": None} for m in row.get("warnings", [])]
        self.show_warnings([HealthWarning(**h) for h in health])

    def show_warnings(self, warnings: list[HealthWarning]) -> None:
        for w in self._warning_widgets:
            self.warn_layout.removeWidget(w)
            w.deleteLater()
        self._warning_widgets = []
        self.no_warnings.setText("No warnings: the run looks healthy." if self.rows else "No warnings yet.")
        self.no_warnings.setVisible(not warnings)
        offered: list[dict[str, Any]] = []
        for w in warnings:
            line = QWidget()
            hl = QHBoxLayout(line)
            hl.setContentsMargins(0, 0, 0, 0)
            text = QLabel(f"\u26a0 {w.message}")
            text.setWordWrap(True)
            text.setStyleSheet("color: #8a4b00;")
            text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            hl.addWidget(text, 1)
            label = w.fix_label()
            if label and w.fix not in offered:  # one button per fix, by its first warning
                offered.append(w.fix)
                button = QPushButton(label)
                fix = dict(w.fix or {})
                button.clicked.connect(lambda _=False, fix=fix: self.fix_requested.emit(fix))
                self._enable_fix(button)
                hl.addWidget(button, 0, Qt.AlignmentFlag.AlignTop)
            self.warn_layout.addWidget(line)
            self._warning_widgets.append(line)

    def set_running(self, running: bool) -> None:
        """A fix changes the training settings, which stay as they are while a run uses them: the
        buttons wait for the run to end."""
        self._running = running
        for b in self.fix_buttons():
            self._enable_fix(b)

    def _enable_fix(self, button: QPushButton) -> None:
        button.setEnabled(not self._running)
        button.setToolTip("After the run: the settings stay as they are while it trains" if self._running else "")

    def warning_texts(self) -> list[str]:
        return [w.findChild(QLabel).text() for w in self._warning_widgets]

    def fix_buttons(self) -> list[QPushButton]:
        return [b for w in self._warning_widgets for b in w.findChildren(QPushButton)]

    # --- before a run ------------------------------------------------------------------------------
    def show_lr_find(self, result: Any) -> None:
        self.lr_plot.setVisible(True)
        self.lr_curve.setData(np.asarray(result.lrs), np.asarray(result.losses))
        self.lr_mark.setValue(math.log10(result.suggested_lr))
        self.lr_mark.setVisible(True)
        self.lr_text.setText(f"Suggested learning rate: {nice(result.suggested_lr)} (red line: where the loss falls "
                             "fastest before its minimum). It is now in the Learning rate field.")

    def show_check(self, result: Any) -> None:
        problems = "".join(f"\n\u2022 {p}" for p in result.problems)
        self.check_text.setText(result.message + problems)
        self.check_text.setStyleSheet("" if result.ok else "color: #b00020;")

    def show_busy(self, what: str) -> None:
        """"lr" or "check" is running; "" = it failed (the message is shown by the form);
        "cancelled" = the user stopped it."""
        if what == "cancelled":
            if self.lr_text.text().endswith("..."):
                self.lr_text.setText("Cancelled: the learning rate was left as it was.")
            if self.check_text.text().endswith("..."):
                self.check_text.setText("Cancelled.")
        elif what == "lr":
            self.lr_text.setText("Training with a growing learning rate...")
        elif what == "check":
            self.check_text.setStyleSheet("")
            self.check_text.setText("Training on 20 images...")
        else:
            for label in (self.lr_text, self.check_text):
                if label.text().endswith("..."):
                    label.setText("Failed: see the message under the training buttons.")
