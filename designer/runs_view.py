"""The Runs tab: every recorded training run (engine.runs), sortable; select two or more to overlay
their curves in one plot and read what differs; reopen one to get its design, settings and model back.

The list is a Qt model over the store's records (`RunsTableModel`) behind a sort proxy, so any
column sorts by its real value (numbers as numbers). The store is read again when the tab is shown,
when a run ends, on Refresh, and whenever its files change while the tab is visible: every
POLL_MS a timer compares the store's file stamps (two stat calls, no database opened, so a busy or
damaged store cannot stall the window), and runs written by `cnn-designer train` in a terminal
appear by themselves, with the selection and the sort kept.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pyqtgraph as pg
from PySide6.QtCore import QAbstractTableModel, QModelIndex, QSortFilterProxyModel, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMessageBox,
    QProxyStyle,
    QPushButton,
    QStyle,
    QStyleOptionHeader,
    QTableView,
    QTextEdit,
    QVBoxLayout,
    QWidget,
)

from designer.layout import splitter
from designer.session import epoch_counts, epochs_text
from engine import runs
from engine.errors import EngineError

#: (header, value from a record (or its (sort key, text)), text for the cell)
COLUMNS: list[tuple[str, Any, Any]] = [
    ("ID", lambda r: r["id"], str),
    ("Created", lambda r: r.get("created", ""),
     lambda v: _local_time(v)),
    ("Name", lambda r: r.get("name", ""), str),
    ("Source", lambda r: r.get("source", ""), str),
    ("Status", lambda r: r.get("status", ""), str),
    # counted from the history, as the Train tab counts them: a record's "epochs" includes an epoch a
    # Stop cut short; it sorts half an epoch on
    ("Epochs", lambda r: _epochs(r), lambda v: v[1]),
    ("Best val acc", lambda r: r.get("best_val_accuracy"), lambda v: "-" if v is None else f"{100 * v:.2f}%"),
    ("Optimizer", lambda r: r["hyperparameters"].get("optimizer", ""), str),
    ("LR", lambda r: r["hyperparameters"].get("lr"), lambda v: "" if v is None else f"{v:g}"),
    ("Batch", lambda r: r["hyperparameters"].get("batch_size"), lambda v: "" if v is None else str(v)),
    ("Seconds", lambda r: r.get("duration") or 0.0, lambda v: f"{v:.1f}"),
    ("Images", lambda r: (r.get("data") or {}).get("train_images"), lambda v: "" if v is None else f"{v:,}"),
]
#: what the plot can show: (label, history key)
METRICS = [("validation accuracy", "val_accuracy"), ("validation loss", "val_loss"),
           ("training loss", "train_loss"), ("training accuracy", "train_accuracy")]
#: how often the visible tab looks whether the store's files changed (ms)
POLL_MS = 2000
#: distinguishable curve colours (ColorBrewer Dark2 + Set1)
COLOURS = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#377eb8", "#e41a1c"]


def _epochs(r: dict[str, Any]) -> tuple[float, str]:
    """(sort key, text) of a record's epochs: whole epochs, plus a half for any epoch cut short."""
    history = r.get("history") or []
    if not history:
        n = r.get("epochs") or 0
        return float(n), str(n)
    full, cut = epoch_counts(history)
    return full + 0.5 * bool(cut), epochs_text(history, short=True)


def _local_time(iso: Any) -> str:
    try:
        return datetime.fromisoformat(str(iso)).astimezone().strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return str(iso)


def run_label(r: dict[str, Any]) -> str:
    hp = r["hyperparameters"]
    return f"run {r['id']} {r.get('name', '')} ({hp.get('optimizer', '?')} lr {hp.get('lr', '?')})"


class RunsTableModel(QAbstractTableModel):
    """The store's records as rows; Qt.UserRole gives the raw value (sorting). The records themselves
    are read from `records`, never through data(): Qt would convert a record to a QVariant map, which
    fails on an integer beyond 64 bits that a run may hold (a setting typed as 10**20)."""

    def __init__(self, store: runs.RunStore | None = None) -> None:
        super().__init__()
        self.store = store or runs.RunStore()
        self.records: list[dict[str, Any]] = []
        self.problems: list[str] = []

    def refresh(self) -> None:
        try:
            listing = self.store.list_runs()
            records, problems = listing.records, listing.problems
        except EngineError as e:
            records, problems = [], [str(e)]
        self.beginResetModel()
        self.records, self.problems = records, problems
        self.endResetModel()

    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: N802, B008
        return 0 if parent.isValid() else len(self.records)

    def columnCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: N802, B008
        return 0 if parent.isValid() else len(COLUMNS)

    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        r = self.records[index.row()]
        _, get, fmt = COLUMNS[index.column()]
        if role == Qt.ItemDataRole.DisplayRole:
            return fmt(get(r))
        if role == Qt.ItemDataRole.UserRole:
            v = get(r)
            if isinstance(v, tuple):  # (sort key, text)
                v = v[0]
            if isinstance(v, int):  # one numeric type per column: Qt would not compare 32 with 1e20
                return float(v)
            return -1.0 if v is None else v
        if role == Qt.ItemDataRole.ToolTipRole:
            return (r.get("message") or "") + (f"\nmodel: {r['model_path']}" if r.get("model_path") else "")
        if role == Qt.ItemDataRole.TextAlignmentRole and index.column() not in (1, 2, 3, 4, 7):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    def headerData(self, section: int, orientation: Qt.Orientation,  # noqa: N802
                   role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return COLUMNS[section][0]
        return None


class SortArrowStyle(QProxyStyle):
    """Header sort arrows that point up for an ascending sort (smallest first) and down for a
    descending one, as most programs and web pages draw them. Qt hands the style "SortDown" for an
    ascending sort, which Fusion on Linux draws pointing down, so the newest-first list of runs
    showed an arrow pointing up; here the arrow is drawn from the order itself."""

    def drawPrimitive(self, element, option, painter, widget=None) -> None:  # noqa: N802 - Qt naming
        if element == QStyle.PrimitiveElement.PE_IndicatorHeaderArrow and isinstance(option, QStyleOptionHeader):
            order = option.sortIndicator
            if order == QStyleOptionHeader.SortIndicator.SortDown:  # QHeaderView's code for ascending
                element = QStyle.PrimitiveElement.PE_IndicatorArrowUp
            elif order == QStyleOptionHeader.SortIndicator.SortUp:
                element = QStyle.PrimitiveElement.PE_IndicatorArrowDown
        super().drawPrimitive(element, option, painter, widget)


class RunsView(QWidget):
    """Table of runs, overlay plot of the selected ones, their differences, Reopen / Delete."""

    #: a record the user wants back in the window (design, settings, model)
    reopen_requested = Signal(object)

    def __init__(self, store: runs.RunStore | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = RunsTableModel(store)
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.model)
        self.proxy.setSortRole(Qt.ItemDataRole.UserRole)
        self.table = QTableView()
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(0, Qt.SortOrder.DescendingOrder)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.verticalHeader().hide()
        header = self.table.horizontalHeader()
        arrows = SortArrowStyle()
        arrows.setParent(header)
        header.setStyle(arrows)
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        # the spare width goes to the run's name, not to a far-away last number column
        header.setSectionResizeMode([c[0] for c in COLUMNS].index("Name"), QHeaderView.ResizeMode.Stretch)
        self.table.setAlternatingRowColors(True)
        self.table.selectionModel().selectionChanged.connect(lambda *_: self.show_selection())
        self.table.doubleClicked.connect(lambda _i: self.reopen_selected())

        self.refresh_button = QPushButton("Refresh")
        self.reopen_button = QPushButton("Reopen")
        self.reopen_button.setToolTip("Open the run's design, training settings and model in the window")
        self.delete_button = QPushButton("Delete")
        self.delete_button.setToolTip("Delete the selected runs from the store (model files you saved are kept)")
        self.metric = QComboBox()
        for label, _key in METRICS:
            self.metric.addItem(label)
        self.refresh_button.clicked.connect(self.refresh)
        self.reopen_button.clicked.connect(self.reopen_selected)
        self.delete_button.clicked.connect(self.delete_selected)
        self.metric.currentIndexChanged.connect(lambda _i: self.show_selection())
        self.info = QLabel()
        self.info.setWordWrap(True)
        self.info.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        top = QHBoxLayout()
        top.addWidget(self.refresh_button)
        top.addWidget(self.reopen_button)
        top.addWidget(self.delete_button)
        top.addStretch(1)
        top.addWidget(QLabel("Plot:"))
        top.addWidget(self.metric)

        self.plot = pg.PlotWidget(background="w")
        item = self.plot.getPlotItem()
        item.showGrid(x=True, y=True, alpha=0.25)
        item.setLabel("bottom", "epoch")
        item.getAxis("left").enableAutoSIPrefix(False)
        self.legend = item.addLegend(offset=(-10, -10), labelTextColor="#222", brush=pg.mkBrush(255, 255, 255, 220))
        self.diff = QTextEdit()
        self.diff.setReadOnly(True)
        lower = splitter(Qt.Orientation.Horizontal, (self.plot, 3), (self.diff, 2))
        # the runs get two fifths of the height from the start (their size hint alone left 4 rows at 1280x800)
        split = splitter(Qt.Orientation.Vertical, (self.table, 2), (lower, 3), sizes=[200, 300])

        lay = QVBoxLayout(self)
        lay.addLayout(top)
        lay.addWidget(self.info)
        lay.addWidget(split, 1)
        self._stamp: tuple = ()
        #: runs recorded elsewhere (the CLI) show up while the tab is visible (showEvent / hideEvent)
        self.poll_timer = QTimer(self)
        self.poll_timer.setInterval(POLL_MS)
        self.poll_timer.timeout.connect(self.poll)
        self.refresh()

    # --- data -------------------------------------------------------------------------------------
    def _store_stamp(self) -> tuple:
        """What changes when anyone commits to the store: the database's and its write-ahead log's
        modification time and size. An empty log (created and removed by every reader, this tab
        included) counts as none, so reading the store does not make it look changed."""
        out: list[Any] = []
        db = self.model.store.path
        for path in (db, db.with_name(db.name + "-wal")):
            try:
                st = path.stat()
            except OSError:
                out.append(None)
                continue
            out.append((st.st_mtime_ns, st.st_size) if st.st_size or path == db else None)
        return tuple(out)

    def poll(self) -> bool:
        """Refresh when the store's files changed since the last read (True when it did)."""
        if self._store_stamp() == self._stamp:
            return False
        self.refresh()
        return True

    def refresh(self) -> None:
        keep = {r["id"] for r in self.selected_records()}
        self._stamp = self._store_stamp()  # before reading: a write during the read is seen next time
        self.model.refresh()
        sel = self.table.selectionModel()
        for row in range(self.proxy.rowCount()):
            if self._record(row)["id"] in keep:
                sel.select(self.proxy.index(row, 0), sel.SelectionFlag.Select | sel.SelectionFlag.Rows)
        n = len(self.model.records)
        text = (f"{n} recorded run(s). Select two or more to compare them; double-click one to reopen it."
                if n else "No runs recorded yet: train a model (here or with `cnn-designer train`) and it appears "
                          "here.")
        self.info.setToolTip(f"The run store: {self.model.store.path} (set CNN_DESIGNER_RUNS to use another)")
        if self.model.problems:
            text += "<br><span style='color:#a33'>" + "<br>".join(self.model.problems) + "</span>"
        self.info.setText(text)
        self.show_selection()

    def selected_records(self) -> list[dict[str, Any]]:
        rows = sorted({i.row() for i in self.table.selectionModel().selectedRows()})
        return [self._record(r) for r in rows]

    def _record(self, row: int) -> dict[str, Any]:
        """The record shown in the table's `row` (sorted order)."""
        return self.model.records[self.proxy.mapToSource(self.proxy.index(row, 0)).row()]

    def select_ids(self, ids: list[int]) -> None:
        sel = self.table.selectionModel()
        sel.clearSelection()
        for row in range(self.proxy.rowCount()):
            if self._record(row)["id"] in ids:
                sel.select(self.proxy.index(row, 0), sel.SelectionFlag.Select | sel.SelectionFlag.Rows)

    # --- plot and differences ------------------------------------------------------------------------
    def show_selection(self) -> None:
        recs = sorted(self.selected_records(), key=lambda r: r["id"])
        label, key = METRICS[self.metric.currentIndex()]
        item = self.plot.getPlotItem()
        item.clear()
        self.legend.clear()
        item.setLabel("left", label)
        self.curves: dict[int, Any] = {}
        for k, r in enumerate(recs):
            pts = [(h.get("epoch"), h.get(key)) for h in r["history"]
                   if isinstance(h.get(key), (int, float)) and isinstance(h.get("epoch"), (int, float))]
            pen = pg.mkPen(COLOURS[k % len(COLOURS)], width=2)
            curve = item.plot([p[0] for p in pts], [p[1] for p in pts], pen=pen, symbol="o", symbolSize=5,
                              symbolBrush=COLOURS[k % len(COLOURS)], symbolPen=None, name=run_label(r))
            self.curves[r["id"]] = curve
        self.reopen_button.setEnabled(len(recs) == 1)
        self.delete_button.setEnabled(bool(recs))
        self.diff.setHtml(self.differences_html(recs))

    @staticmethod
    def differences_html(recs: list[dict[str, Any]]) -> str:
        if not recs:
            return "<i>Select runs above: one to see it, two or more to compare them.</i>"
        if len(recs) == 1:
            r = recs[0]
            hp = ", ".join(f"{k}={json.dumps(v)}" for k, v in r["hyperparameters"].items())
            return (f"<b>{run_label(r)}</b><br>{r.get('message', '')}<br><br><b>Settings:</b> {hp}<br>"
                    f"<b>Model:</b> {r.get('model_path') or '(not saved)'}")
        base = recs[0]
        parts = []
        for other in recs[1:]:
            d = runs.compare(base, other)
            lines = [f"<b>run {base['id']} → run {other['id']}</b>"]
            for k, (a, b) in d["hyperparameters"].items():
                lines.append(f"&nbsp;&nbsp;{k}: {json.dumps(a)} → {json.dumps(b)}")
            lines += [f"&nbsp;&nbsp;{line}" for line in d["architecture"]]
            if len(lines) == 1:
                lines.append("&nbsp;&nbsp;same settings and architecture")
            a, b = d["metrics"]["best_val_accuracy"]
            fmt = (lambda v: "-" if v is None else f"{100 * v:.2f}%")  # noqa: E731
            lines.append(f"&nbsp;&nbsp;best validation accuracy: {fmt(a)} → {fmt(b)}")
            parts.append("<br>".join(lines))
        return "<br><br>".join(parts)

    # --- actions ------------------------------------------------------------------------------------
    def reopen_selected(self) -> None:
        recs = self.selected_records()
        if len(recs) == 1:
            self.reopen_requested.emit(recs[0])

    def delete_selected(self) -> None:
        recs = self.selected_records()
        if not recs:
            return
        ids = ", ".join(str(r["id"]) for r in recs)
        answer = QMessageBox.question(self, "Delete runs", f"Delete run(s) {ids} from the run store?")
        if answer != QMessageBox.StandardButton.Yes:
            return
        for r in recs:
            try:
                self.model.store.delete(r["id"])
            except EngineError as e:
                QMessageBox.warning(self, "Delete runs", str(e))
                break
        self.refresh()

    def showEvent(self, event: Any) -> None:  # noqa: N802 - Qt naming
        super().showEvent(event)
        self.refresh()
        self.poll_timer.start()

    def hideEvent(self, event: Any) -> None:  # noqa: N802 - Qt naming
        self.poll_timer.stop()  # another tab is showing: nothing to keep current
        super().hideEvent(event)


# --------------------------------------------------------------------------------------------
# Hooking into the main window
# --------------------------------------------------------------------------------------------
def reopen(window: Any, record: dict[str, Any]) -> bool:
    """Design, training settings and (when its file still exists) the model of a run, in the window."""
    from engine import modelfile
    from engine.spec import Spec
    from engine.training import TrainConfig

    if not window.maybe_save():
        return False
    hp = {k: v for k, v in record["hyperparameters"].items() if k in TrainConfig().to_dict()}
    try:
        spec = Spec.from_dict({**record["architecture"], "training": hp})
    except EngineError as e:
        QMessageBox.warning(window, "Reopen run", f"Run {record['id']}'s design cannot be read: {e}")
        return False
    path = record.get("model_path")
    tm = None
    note = ""
    if path:
        try:
            tm = modelfile.load(path)
        except EngineError as e:
            note = f" (its model could not be loaded: {e})"
    else:
        note = " (it saved no model)"
    if tm is not None:
        tm.spec.training = dict(hp)
        window.set_design(tm.spec, Path(path), tm)
    else:
        window.set_design(spec, None)
    window.statusBar().showMessage(f"Reopened run {record['id']}: design and training settings{note}"
                                   + (", model loaded" if tm is not None else ""), 8000)
    return True


def import_dialog(window: Any) -> bool:
    """File > Import: an ONNX model, or weights for the open model's design; the result is saved as a
    .cnnd and opened in both tabs."""
    from PySide6.QtWidgets import QFileDialog, QInputDialog

    from engine import modelfile
    from engine.model_import import import_model

    if not window.maybe_save():
        return False
    src, _ = QFileDialog.getOpenFileName(window, "Import model", str(Path.home()),
                                         "Models (*.onnx *.safetensors *.npz);;All files (*)")
    if not src:
        return False
    like = None
    if Path(src).suffix.lower() in (".safetensors", ".npz"):
        like, _ = QFileDialog.getOpenFileName(window, "The design these weights belong to", str(Path(src).parent),
                                              "CNN Designer models (*.cnnd)")
        if not like:
            return False
    classes = None
    try:
        tm, notes = import_model(src, like=like)
    except EngineError as e:
        QMessageBox.critical(window, "Import", f"Cannot import {Path(src).name}:\n\n{e}")
        return False
    if any(c.startswith("class_") for c in tm.classes) and all(c == f"class_{i}" for i, c in enumerate(tm.classes)):
        text, ok = QInputDialog.getText(window, "Class names", f"The model has {len(tm.classes)} outputs. Their "
                                        "class names, separated by commas (leave empty for class_0, ...):")
        if ok and text.strip():
            classes = [c.strip() for c in text.split(",")]
            if len(classes) != len(tm.classes) or not all(classes):
                QMessageBox.warning(window, "Import", f"{len(classes)} names for {len(tm.classes)} outputs: "
                                    "keeping class_0, ...")
            else:
                tm.classes = classes
    out, _ = QFileDialog.getSaveFileName(window, "Save the imported model as",
                                         str(Path(src).with_suffix(".cnnd")), "CNN Designer models (*.cnnd)")
    if not out:
        return False
    if Path(out).resolve() in {Path(src).resolve(), Path(like).resolve() if like else None}:
        QMessageBox.critical(window, "Import", "Choose a new file name: that is the file being imported.")
        return False
    try:
        modelfile.save(out, tm)
    except EngineError as e:
        QMessageBox.critical(window, "Import", str(e))
        return False
    window.open_file(out, ask=False)
    window.statusBar().showMessage(f"Imported {Path(src).name} as {Path(out).name}: " + "; ".join(notes), 10000)
    return True


def install(window: Any) -> RunsView:
    """The Runs tab and File > Import (called by designer.app.build_window)."""
    from PySide6.QtGui import QAction

    view = RunsView()
    act = QAction("&Import...", window)
    act.setToolTip("Import an ONNX model, or .safetensors / .npz weights for a model's design")
    act.triggered.connect(lambda _=False: import_dialog(window))
    window.set_runs_view(view, act)
    view.reopen_requested.connect(lambda rec: reopen(window, rec) and window.tabs.setCurrentIndex(0))
    ws = window.training_workspace
    if ws is not None:
        ws.training_changed.connect(lambda running: None if running else view.refresh())
    return view
