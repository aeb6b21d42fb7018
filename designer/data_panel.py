"""The data side of the workspace: which folder, what is in it, and whether the design fits it.

Loading runs in a background job (decoding thousands of images takes seconds) with a progress bar
and Cancel. What the loader found is shown rather than summarised away: classes with their counts
and a few thumbnails each, the validation split, the size images are resized to, and the loader's
report (skipped files with reasons, warnings). When the design cannot train on this data (input
channels vs colour images, last layer's width vs class count) the panel says so and offers a
one-click fix, pushed on the designer's undo stack like any other edit.
"""

from __future__ import annotations

import html
import os
from pathlib import Path, PurePath
from typing import Any, NamedTuple

import numpy as np
from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QFont, QFontMetrics, QPainter, QPixmap, QUndoStack
from PySide6.QtWidgets import (
    QFileDialog,
    QFrame,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from designer.results import to_qimage
from designer.worker import JobRunner, LoadedData, LoadJob
from engine.data import LoadOptions
from engine.folders import data_folders
from engine.training import class_fit_problem

#: examples kept per class: the table shows as many as its column has room for
THUMBS_PER_CLASS = 12
#: input size suggested for a folder of photos (the templates' 28x28 suits digits)
PHOTO_INPUT = 64
THUMB = 28
#: the largest example the table grows them to when it has height to spare (a tall screen)
THUMB_MAX = 56
#: the tallest a class's row grows: three lines of 40 px examples
ROW_MAX = 3 * (40 + 2) - 2 + 4
#: classes the table shows without scrolling when room is short; with room to spare it shows them all
TABLE_ROWS = 3
#: lines of the loader's report shown at least / at most (it scrolls beyond)
REPORT_LINES = (2, 6)


def class_strip(images: np.ndarray, size: int = THUMB, per_line: int | None = None) -> QPixmap:
    """A few images of one class side by side (`per_line` to a line), as one pixmap for a table cell."""
    n = len(images)
    per_line = max(1, min(per_line or n, n))
    lines = -(-n // per_line) if n else 1
    pm = QPixmap(max(1, per_line * (size + 2)), lines * (size + 2) - 2)
    pm.fill(Qt.GlobalColor.white)
    p = QPainter(pm)
    for k, img in enumerate(images):
        q = QPixmap.fromImage(to_qimage(img)).scaled(size, size, Qt.AspectRatioMode.KeepAspectRatio,
                                                     Qt.TransformationMode.SmoothTransformation)
        line, col = divmod(k, per_line)
        p.drawPixmap(col * (size + 2), line * (size + 2), q)
    p.end()
    return pm


def strip_layout(height: int, width: int, n: int) -> tuple[int, int]:
    """(thumbnail size, per line) that shows the most of `n` examples in a height x width cell, the
    larger thumbnails on a tie: one line of large examples, or two or three lines of smaller ones."""
    best = (THUMB, max(1, width // (THUMB + 2)))
    most = 0
    for lines in (1, 2, 3):
        size = min(THUMB_MAX, (height + 2) // lines - 2)
        if size < THUMB:
            break
        per_line = max(1, width // (size + 2))
        shown = min(n, lines * per_line)
        if shown > most:
            best, most = (size, per_line), shown
    return best


class Problem(NamedTuple):
    """One way the design does not fit the data, as the Data box shows it: one short line beside its
    fix button (the box must leave the settings and Start in sight on a laptop screen), the whole
    explanation in the row's tooltip."""

    message: str
    #: the fix button's text ("" when there is no one-click fix)
    button: str
    #: ("input_channels", c), ("input_size", n) for n x n, ("field", layer_index, field_name, n) or None
    fix: Any
    #: the full explanation: why it matters and what the fix does
    detail: str = ""


def design_problems(spec: Any, data: LoadedData) -> list[Problem]:
    """Each way the design does not fit the data. Input fixes are advice; the others block training.
    Problems of the design itself (invalid layers) are the designer's to show, not repeated here.
    """
    from engine.shapes import infer

    out: list[Problem] = []
    c = spec.input_shape[0]
    share = data.colour_share
    if c == 1 and share is not None and share >= 0.5:
        out.append(Problem("Colour images; the input has 1 channel.", "Use 3 channels",
                           ("input_channels", 3),
                           "Most images are in colour but the design's input has 1 channel, so colour is thrown "
                           "away. The fix sets the input to 3 channels."))
    elif c == 3 and share is not None and share == 0.0:
        out.append(Problem("Grayscale images; the input has 3 channels.", "Use 1 channel",
                           ("input_channels", 1),
                           "The images are grayscale but the design's input has 3 channels (each image is "
                           "copied into three identical channels). The fix sets the input to 1 channel."))
    _, h, w = spec.input_shape
    size = data.source_size
    if share is not None and share >= 0.5 and size is not None and max(h, w) < PHOTO_INPUT \
            and min(size) >= PHOTO_INPUT:
        out.append(Problem(f"Photos (about {size[0]}x{size[1]}) shrunk to {w}x{h}.",
                           f"Use {PHOTO_INPUT}x{PHOTO_INPUT}", ("input_size", PHOTO_INPUT),
                           f"These look like photos (about {size[0]}x{size[1]}) shrunk to {w}x{h}, which loses "
                           f"most of their detail: {PHOTO_INPUT}x{PHOTO_INPUT} keeps more (each image then costs "
                           f"more to train). The fix sets the input size to {PHOTO_INPUT}x{PHOTO_INPUT}."))
    inf = infer(spec)
    if not inf.valid:
        return out
    n = len(data.classes)
    problem = class_fit_problem(spec, n, inf)
    if problem is not None:
        what = problem.message[0].upper() + problem.message[1:] + "."
        if problem.fix is None:
            out.append(Problem(what, "", None, what))
        else:
            k, name, value = problem.fix
            layer = spec.layers[k]
            if inf.binary:
                short = f"The last Dense(1) + Sigmoid separates 2 classes, not {n}."
            else:
                short = f"The last {layer.type} has {layer.config[name]} {name} for {n} classes."
            out.append(Problem(short, f"Set {name} to {value}", ("field", k, name, value),
                               f"{what} The fix sets the {name} of layer {k} ({layer.type}) to {value}."))
    return out


class ClassTable(QTableWidget):
    """The classes with their counts and examples. It asks for TABLE_ROWS rows, so the training form
    below stays in sight on a laptop screen (one row while the design does not fit the data: the
    problems and their fixes come first), and grows into spare height: first to every row, then
    with larger examples (up to THUMB_MAX) or more lines of them (up to ROW_MAX) rather than blank
    space under the last row. Each row shows as many of its class's examples as it has room for."""

    short = False

    def __init__(self, rows: int, columns: int, parent: QWidget | None = None):
        super().__init__(rows, columns, parent)
        self.examples: list[np.ndarray] = []
        self._drawn: tuple[int, int, int] | None = None
        self.horizontalHeader().sectionResized.connect(lambda i, _old, _new: i == 2 and self._draw_examples())

    def rows_height(self, rows: int, row: int = THUMB + 4) -> int:
        return 2 * self.frameWidth() + self.horizontalHeader().sizeHint().height() + rows * row

    def fit_rows(self, short: bool | None = None) -> None:
        """Follow the row count (call after filling the table); `short`: ask for one row only."""
        if short is not None:
            self.short = short
        least = 1 if self.short else TABLE_ROWS
        self.setMinimumHeight(self.rows_height(min(self.rowCount() or least, least)))
        self.setMaximumHeight(self.rows_height(max(self.rowCount(), least), ROW_MAX))
        self.updateGeometry()
        self._fit_row_height()

    def set_examples(self, examples: list[np.ndarray]) -> None:
        """Each row's example images (uint8, N x C x H x W), drawn at the rows' current height."""
        self.examples = examples
        for i in range(len(examples)):
            if not isinstance(self.cellWidget(i, 2), QLabel):
                self.setCellWidget(i, 2, QLabel())
        self._draw_examples(force=True)

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt naming
        return QSize(super().sizeHint().width(), self.minimumHeight())

    def resizeEvent(self, e) -> None:  # noqa: N802 - Qt naming
        super().resizeEvent(e)
        self._fit_row_height()

    def _fit_row_height(self) -> None:
        """Rows as tall as the height allows once every row is in sight, from THUMB up to three
        lines of examples."""
        rows = self.rowCount()
        room = self.height() - self.rows_height(0)
        row = THUMB + 4 if rows == 0 else min(max(room // rows, THUMB + 4), ROW_MAX)
        if row != self.verticalHeader().defaultSectionSize():
            self.verticalHeader().setDefaultSectionSize(row)
            self._draw_examples()

    def _draw_examples(self, force: bool = False) -> None:
        """Every row's examples in one layout (strip_layout), drawn again only when it changes: a
        window being resized must not redraw thousands of thumbnails on every step."""
        height = self.verticalHeader().defaultSectionSize() - 4
        n = max((len(images) for images in self.examples), default=0)
        size, per_line = strip_layout(height, self.columnWidth(2), n)
        lines = min(-(-n // per_line), max(1, (height + 2) // (size + 2))) if n else 1
        key = (size, per_line, lines)
        if key == self._drawn and not force:
            return
        self._drawn = key
        for i, images in enumerate(self.examples):
            label = self.cellWidget(i, 2)
            if isinstance(label, QLabel):
                label.setPixmap(class_strip(images[:lines * per_line], size, per_line))


def short_path(path: str, metrics: QFontMetrics, width: int) -> str:
    """`path` in `width` pixels: whole, else its first folders and its last one around an ellipsis
    ("/home/me/…/digits"), else the end of it: the folder's own name is the part to keep."""
    if metrics.horizontalAdvance(path) <= width:
        return path
    parts = PurePath(path).parts
    for k in range(len(parts) - 2, 0, -1):
        shorter = str(PurePath(*parts[:k], "\u2026", parts[-1]))
        if metrics.horizontalAdvance(shorter) <= width:
            return shorter
    return metrics.elidedText(path, Qt.TextElideMode.ElideLeft, width)


class FolderLabel(QLabel):
    """The folder's path on one line beside Choose folder / Reload, shortened to fit (short_path; its
    tooltip has it whole), with the folder's layout (train/ and val/) on a second line when it has
    one: a long path wrapped over two or three lines pushed the settings below the fold."""

    def __init__(self, text: str = "", parent: QWidget | None = None):
        super().__init__(text, parent)
        self._path, self._note = "", ""
        # the column's width decides how much of the path is shown, never the other way round
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.setWordWrap(True)  # the note wraps; the path is made to fit its line
        self.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

    def set_path(self, path: str, note: str = "") -> None:
        self._path, self._note = path, note
        self.setToolTip(path)
        self._show()

    def resizeEvent(self, e) -> None:  # noqa: N802 - Qt naming
        super().resizeEvent(e)
        if self._path:
            self._show()

    def _show(self) -> None:
        bold = QFont(self.font())
        bold.setBold(True)
        shown = short_path(self._path, QFontMetrics(bold), max(self.contentsRect().width() - 2, 40))
        text = f"<b>{html.escape(shown)}</b>" + (f"<br>{html.escape(self._note)}" if self._note else "")
        if text != self.text():
            self.setText(text)


class ReportView(QPlainTextEdit):
    """The loader's report: it asks for REPORT_LINES[0] lines, so the problems, the settings and Start
    stay in sight on a laptop screen, and grows into spare height up to as many lines as it has
    (REPORT_LINES[1] at most; it scrolls beyond)."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setReadOnly(True)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.document().documentLayout().documentSizeChanged.connect(lambda _size: self._fit_lines())

    def lines_height(self, lines: int) -> int:
        margins = self.contentsMargins()
        return lines * self.fontMetrics().lineSpacing() + 2 * int(self.document().documentMargin()) + \
            margins.top() + margins.bottom() + 2

    def _fit_lines(self) -> None:
        # QPlainTextEdit's layout measures its document in lines, wrapped at the current width
        lines = int(self.document().documentLayout().documentSize().height())
        low, high = REPORT_LINES
        most = self.lines_height(min(max(lines, low), high))
        if most != self.maximumHeight():
            self.setMaximumHeight(most)
            self.updateGeometry()

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt naming
        return QSize(super().sizeHint().width(), self.lines_height(REPORT_LINES[0]))

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt naming
        return QSize(super().minimumSizeHint().width(), self.lines_height(REPORT_LINES[0]))


class DataPanel(QWidget):
    """Folder choice, background loading, class overview, loader report and fit-the-design fixes."""

    #: A folder was loaded (LoadedData) for the current input shape.
    data_ready = Signal(object)
    #: Loading failed; the message is shown in the panel too.
    load_failed = Signal(str)
    #: Loading started (True) or ended (False).
    busy_changed = Signal(bool)
    #: The problem list changed: empty when the design fits the data.
    problems_changed = Signal(list)

    def __init__(self, session: Any, undo_stack: QUndoStack | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        #: designer.session.TrainSession: the loaded data lives there, the design in its document
        self.session = session
        self.document = session.document
        self.undo_stack = undo_stack
        self.problems: list[Problem] = []
        self._runner: JobRunner | None = None
        self._busy = False
        self._folder: Path | None = None
        #: the form's validation split, shown with the data (the trainer applies it)
        self.val_split = 0.1

        self.folder_label = FolderLabel("No folder chosen")
        self.choose_button = QPushButton("Choose folder...")
        self.choose_button.setToolTip("A folder with one subfolder of images per class (or train/ and val/ "
                                      "folders of those). You can also drop a folder here.")
        self.choose_button.clicked.connect(self._choose)
        self.reload_button = QPushButton("Reload")
        self.reload_button.setToolTip("Read the folder again (changed files are decoded again, the rest come "
                                      "from the cache)")
        self.reload_button.clicked.connect(self.reload)
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setVisible(False)
        self.cancel_button.clicked.connect(self.cancel)
        self._skip_empty = False
        self.skip_button = QPushButton()
        self.skip_button.setToolTip("Train without these classes; the loader's report lists them")
        self.skip_button.setVisible(False)
        self.skip_button.clicked.connect(self.skip_empty_classes)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        self.table = ClassTable(0, 3)
        self.table.setHorizontalHeaderLabels(["class", "images", "examples"])
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.setSelectionMode(QTableWidget.SelectionMode.NoSelection)
        hh = self.table.horizontalHeader()
        hh.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        hh.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        hh.setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        self.table.verticalHeader().setDefaultSectionSize(THUMB + 4)
        self.table.fit_rows()

        self.report = ReportView()
        self.report.setVisible(False)

        self.problem_box = QFrame()
        self.problem_box.setStyleSheet("QFrame#problems { background: #fff4e0; border: 1px solid #e0a040; "
                                       "border-radius: 4px; }")
        self.problem_box.setObjectName("problems")
        self.problem_layout = QGridLayout(self.problem_box)
        self.problem_layout.setContentsMargins(6, 4, 6, 4)
        self.problem_layout.setVerticalSpacing(2)
        self.problem_layout.setColumnStretch(0, 1)
        self.problem_box.setVisible(False)

        box = QGroupBox("Data")
        lay = QVBoxLayout(box)
        lay.setContentsMargins(9, 6, 9, 6)  # the box's title is above: less air in the short column
        lay.setSpacing(4)
        # the folder beside its buttons: a line of height more for the data and the form below
        row = QHBoxLayout()
        row.addWidget(self.choose_button, 0, Qt.AlignmentFlag.AlignTop)
        row.addWidget(self.reload_button, 0, Qt.AlignmentFlag.AlignTop)
        row.addWidget(self.folder_label, 1, Qt.AlignmentFlag.AlignVCenter)
        lay.addLayout(row)
        prow = QHBoxLayout()
        prow.addWidget(self.progress, 1)
        prow.addWidget(self.cancel_button)
        lay.addLayout(prow)
        lay.addWidget(self.status)
        lay.addWidget(self.skip_button)
        lay.addWidget(self.problem_box)
        # spare height goes first to the report (skipped files are worth reading) up to its last line,
        # then to the table up to its largest examples, then below both (never into blank lines
        # around the text above)
        lay.addWidget(self.table, 100)
        lay.addWidget(self.report, 1000)
        lay.addStretch(1)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(box)
        self._show_data()

    # --- folder choice -----------------------------------------------------------------------------
    @property
    def data(self) -> LoadedData | None:
        return self.session.data

    @property
    def folder(self) -> Path | None:
        return self._folder

    def _choose(self) -> None:
        start = str(self._folder) if self._folder else os.getcwd()
        path = QFileDialog.getExistingDirectory(self, "Choose an image folder (one subfolder per class)", start)
        if path:
            self.set_folder(path)

    def set_locked(self, locked: bool) -> None:
        """While training, the folder cannot change under the run (the run keeps its own images)."""
        for b in (self.choose_button, self.reload_button, self.skip_button):
            if b.property("tip") is None:
                b.setProperty("tip", b.toolTip())
            b.setEnabled(not locked)
            b.setToolTip("Not while training: the run keeps the images it started with" if locked
                         else b.property("tip"))

    def set_folder(self, path: str | os.PathLike, remember: bool = True) -> None:
        """Use this folder and load it in the background (at the design's current input size)."""
        self._folder = Path(path).expanduser()
        self._skip_empty = False  # asked again for each folder
        if remember and self.document.data_dir != self._folder:
            self.document.set_data_dir(self._folder)
        self.reload()

    # --- loading ---------------------------------------------------------------------------------------
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.document.spec.input_shape)

    @property
    def loading(self) -> bool:
        """True from reload() until the job's last signal has been handled here."""
        return self._busy

    def reload(self) -> None:
        if self._folder is None:
            return
        self._stop_runner()
        self.session.set_data(None)
        folders = data_folders(self._folder)
        self.folder_label.set_path(str(self._folder), folders.describe() if folders.split_root else "")
        self.status.setStyleSheet("")
        self.status.setText("Reading the folder...")
        self.progress.setRange(0, 0)
        self.progress.setVisible(True)
        self.cancel_button.setVisible(True)
        self.choose_button.setEnabled(True)
        self.skip_button.setVisible(False)
        job = LoadJob(self._folder, self.input_shape(), LoadOptions(skip_empty=self._skip_empty))
        job.empty_classes.connect(self._offer_skip)
        job.progress.connect(self._on_progress)
        job.loaded.connect(self._on_loaded)
        job.failed.connect(self._on_failed)
        job.cancelled.connect(self._on_cancelled)
        self._runner = JobRunner(job, "cnn-designer-load")
        self._runner.finished.connect(self._on_done)
        self._busy = True
        self.busy_changed.emit(True)
        self._runner.start()

    def cancel(self) -> None:
        if self._runner is not None:
            self._runner.job.cancel()

    def _stop_runner(self) -> None:
        if self._runner is not None:
            self._runner.shutdown()
            self._runner = None

    def shutdown(self) -> None:
        """Cancel loading and join the thread (window closing)."""
        self._stop_runner()
        self._busy = False

    def _on_progress(self, done: int, total: int) -> None:
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)
        self.progress.setFormat("decoding %v of %m images")

    def _on_loaded(self, data: LoadedData) -> None:
        if tuple(data.input_shape) != self.input_shape():
            return  # the design changed while loading; a reload is already queued
        self.session.set_data(data)
        self._show_data()
        self.data_ready.emit(data)

    def _on_failed(self, message: str) -> None:
        self.session.set_data(None)
        self._show_data()
        self.status.setStyleSheet("color: #b00020; font-weight: bold;")
        self.status.setText(message)
        self.load_failed.emit(message)

    def _offer_skip(self, folders: list) -> None:
        names = ", ".join(folders[:4]) + (f" and {len(folders) - 4} more" if len(folders) > 4 else "")
        self.skip_button.setText(f"Skip the empty class{'es' if len(folders) > 1 else ''} ({names})")
        self.skip_button.setVisible(True)

    def skip_empty_classes(self) -> None:
        """Load the folder without its empty class folders (the report says which were left out)."""
        self._skip_empty = True
        self.reload()

    def _on_cancelled(self) -> None:
        self.session.set_data(None)
        self._show_data()
        self.status.setText("Loading cancelled. Press Reload to try again.")

    def _on_done(self) -> None:
        self._busy = False
        self.progress.setVisible(False)
        self.cancel_button.setVisible(False)
        self.busy_changed.emit(False)

    # --- showing ---------------------------------------------------------------------------------------
    def _show_data(self) -> None:
        d = self.data
        self.table.setRowCount(0)
        self.table.set_examples([])
        self.table.fit_rows()
        if d is None:
            self.report.setPlainText("")
            self.report.setVisible(False)
            self.status.setToolTip("")
            self.status.setText("" if self._folder else "Choose a folder with one subfolder of images per class.")
            self.update_problems()
            return
        c, h, w = d.input_shape
        colour = "grayscale" if c == 1 else "RGB"
        if d.val is not None:
            split = f"validation: {len(d.val):,} images from {d.val_folder.name}/"
        elif self.val_split > 0:
            counts = np.bincount(d.train.labels, minlength=len(d.classes))
            n_val = int(sum(min(n - 1, max(1, round(n * self.val_split))) for n in counts if n >= 2))
            split = (f"validation: {100 * self.val_split:g} % of each class ({n_val:,} images, stratified), "
                     f"training on {len(d.train) - n_val:,}")
        else:
            split = "no validation (split set to 0 %)"
        self.status.setStyleSheet("")
        self.status.setText(f"{len(d.train):,} images in {len(d.classes)} classes, resized to {w}x{h} "
                            f"{colour} (the design's input); {split}.")
        counts = d.train.counts()
        self.table.setRowCount(len(d.classes))
        for i, name in enumerate(d.classes):
            self.table.setItem(i, 0, QTableWidgetItem(name))
            n = QTableWidgetItem(f"{counts[i]:,}")
            n.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            self.table.setItem(i, 1, n)
        self.table.set_examples([d.train.images[np.flatnonzero(d.train.labels == i)[:THUMBS_PER_CLASS]]
                                 for i in range(len(d.classes))])
        self.table.fit_rows()
        lines, notable, summaries = [], False, []
        for part, s in (("training", d.train), ("validation", d.val)):
            if s is not None and s.report is not None:
                part_lines = s.report.lines() if part == "training" else \
                    [f"validation: {x}" for x in s.report.lines()]
                lines += part_lines
                summaries.append(part_lines[0])
                notable = notable or bool(s.report.skipped or s.report.warnings)
        self.report.setPlainText("\n".join(lines))
        # The report takes room only when it has something to say (skipped files, warnings): its
        # summary line repeats the status above, whose tooltip keeps the decoding figures.
        self.report.setVisible(notable)
        self.status.setToolTip("\n".join(summaries))
        self.update_problems()

    def set_val_split(self, fraction: float) -> None:
        if fraction != self.val_split:
            self.val_split = fraction
            if self.data is not None:
                self._show_data()

    def update_problems(self) -> None:
        """Recheck the design against the data (after loading, and whenever the design changes)."""
        self.problems = design_problems(self.document.spec, self.data) if self.data is not None else []
        while self.problem_layout.count():
            item = self.problem_layout.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        for r, p in enumerate(self.problems):
            # one row a problem: its line (wrapped in a narrow column, never cut) and its fix button
            label = QLabel(p.message)
            label.setWordWrap(True)
            label.setToolTip(p.detail)
            label.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
            self.problem_layout.addWidget(label, r, 0)
            if p.fix is not None:
                b = QPushButton(p.button)
                b.setToolTip(p.detail)
                b.clicked.connect(lambda _=False, f=p.fix: self.apply_fix(f))
                self.problem_layout.addWidget(b, r, 1)
        self.problem_box.setVisible(bool(self.problems))
        self.table.fit_rows(short=bool(self.problems))
        self.problems_changed.emit([p.message for p in self.problems])

    def apply_fix(self, fix: Any) -> None:
        """Apply a one-click fix as an undoable edit of the design."""
        from designer.commands import SetFieldCommand, SetInputCommand

        doc = self.document
        if fix[0] == "input_channels":
            _, h, w = doc.spec.input_shape
            cmd = SetInputCommand(doc, (fix[1], h, w))
            cmd.setText(f"Set input channels to {fix[1]}")
        elif fix[0] == "input_size":
            c, _, _ = doc.spec.input_shape
            cmd = SetInputCommand(doc, (c, fix[1], fix[1]))
            cmd.setText(f"Set input size to {fix[1]}x{fix[1]}")
        elif fix[0] == "field":
            _, k, name, value = fix
            cmd = SetFieldCommand(doc, k, name, value)
            cmd.setText(f"Set {name} of layer {k} ({doc.layers[k].type}) to {value}")
        else:  # pragma: no cover - unknown fixes are a programming error
            raise ValueError(fix)
        if self.undo_stack is not None:
            self.undo_stack.push(cmd)
        else:
            cmd.redo()

    def fits(self) -> tuple[bool, str]:
        """Whether training can start on this data, and why not."""
        if self._folder is None:
            return False, "choose an image folder first"
        if self.loading:
            return False, "the folder is still loading"
        if self.data is None:
            return False, self.status.text() or "the folder could not be loaded"
        blocking = [p.message for p in self.problems if p.fix is None or p.fix[0] == "field"]
        if blocking:
            return False, blocking[0]
        return True, ""
