"""File > Export: pick a format and a destination, export, and say exactly what was written.

    from designer.export_dialog import export_dialog
    export_dialog(main_window, session)          # the Train tab's TrainSession (its current model),
                                                 # a TrainedModel, a .cnnd path, or None

Without a trained model the dialog still opens and offers "Open .cnnd…", so File > Export works
before training too. The export itself is engine.export (the same code as the CLI).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from designer.session import TrainSession, epochs_text
from engine.errors import EngineError
from engine.export import FORMATS, ExportResult, export_model, load_source
from engine.trained import TrainedModel

DEFAULT_NAMES = {"onnx": "{}.onnx", "pytorch": "{}_pytorch", "json": "{}.json", "npz": "{}_weights.npz"}
FILTERS = {
    "onnx": "ONNX model (*.onnx)",
    "pytorch": "Folder (*)",
    "json": "Architecture (*.json)",
    "npz": "NumPy weights (*.npz)",
}


def source_from(model: TrainSession | TrainedModel | str | Path | None) -> TrainedModel:
    """The model to export: the Train tab's current model (its session), a TrainedModel or a .cnnd
    path. EngineError says what is missing."""
    if isinstance(model, TrainSession):
        if model.current is None:
            raise EngineError("there is no trained model yet: train one, or open a .cnnd file")
        model = model.current.trained
    if model is None:
        raise EngineError("there is no trained model: train one, or open a .cnnd file")
    return load_source(model)


class ExportDialog(QDialog):
    def __init__(self, parent: QWidget | None = None, model: Any = None):
        super().__init__(parent)
        self.setWindowTitle("Export model")
        self.result_: ExportResult | None = None
        self.source: TrainedModel | None = None
        self._path_edited = False
        # proof samples from the data folder loaded in this window (TrainSession.data), never from
        # the folder a model file records: a model from elsewhere must not choose local files to copy
        data = model.data if isinstance(model, TrainSession) else None
        self.sample_folder = data.folder if data is not None else None

        self.model_label = QLabel()
        self.model_label.setWordWrap(True)
        open_button = QPushButton("Open .cnnd…")
        open_button.setToolTip("Export a saved model file instead")
        open_button.clicked.connect(self._open_model)
        model_row = QHBoxLayout()
        model_row.addWidget(self.model_label, 1)
        model_row.addWidget(open_button)

        self.format_combo = QComboBox()
        for key, text in FORMATS.items():
            self.format_combo.addItem(text, key)
        self.format_combo.currentIndexChanged.connect(self._format_changed)

        self.path_edit = QLineEdit()
        self.path_edit.textEdited.connect(self._mark_edited)
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        path_row = QHBoxLayout()
        path_row.addWidget(self.path_edit, 1)
        path_row.addWidget(browse)

        self.hint = QLabel()
        self.hint.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Model:", model_row)
        form.addRow("Format:", self.format_combo)
        form.addRow("Save to:", path_row)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        self.export_button = self.buttons.addButton("Export", QDialogButtonBox.ButtonRole.AcceptRole)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.hint)
        layout.addWidget(self.buttons)
        self.resize(620, self.sizeHint().height())

        self.set_model(model)

    # --- state -------------------------------------------------------------------------------------
    def set_model(self, model: Any) -> None:
        try:
            self.source = source_from(model)
        except EngineError as e:
            self.source = None
            self.model_label.setText(f"<span style='color:#b00020'>{e}</span>")
        else:
            src = self.source
            self.model_label.setText(
                f"<b>{html.escape(src.name)}</b>: {len(src.classes)} classes, input "
                f"{'x'.join(map(str, src.input_shape))}, {epochs_text(src.history)} trained"
            )
            self.model_label.setToolTip(str(src.path) if src.path else "the model trained in this window")
        self.export_button.setEnabled(self.source is not None)
        self._format_changed()

    @property
    def fmt(self) -> str:
        return str(self.format_combo.currentData())

    def set_format(self, fmt: str) -> None:
        self.format_combo.setCurrentIndex(self.format_combo.findData(fmt))

    def set_path(self, path: str | Path) -> None:
        self.path_edit.setText(str(path))
        self._path_edited = True

    def _mark_edited(self, _text: str) -> None:
        self._path_edited = True

    def _default_path(self) -> Path:
        src = self.source
        name = (src.path.stem if src and src.path else (src.name if src else "model")).replace(" ", "_")
        folder = src.path.parent if src and src.path else Path.cwd()
        return folder / DEFAULT_NAMES[self.fmt].format(name)

    def _format_changed(self, *_: Any) -> None:
        if not self._path_edited:
            self.path_edit.setText(str(self._default_path()))
        hints = {
            "onnx": "Also writes a folder NAME_predict/ beside the .onnx with sample images, the app's "
                    "probabilities for them and predict.py (--check proves onnxruntime reproduces them).",
            "pytorch": "A new folder: model.py, weights.safetensors, classes.json, predict.py (--check), "
                       "train.py for torchrun/DistributedDataParallel, README.md.",
            "json": "The architecture only, in the cnn-designer/1 format.",
            "npz": "The weights only, one array per name (layers.{i}.weight …).",
        }
        self.hint.setText(hints[self.fmt])

    # --- actions -----------------------------------------------------------------------------------
    def _open_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open trained model", str(Path.cwd()),
                                              "CNN Designer model (*.cnnd)")
        if path:
            self.set_model(path)

    def _browse(self) -> None:
        current = self.path_edit.text() or str(self._default_path())
        caption = "Export as a new folder (type its name)" if self.fmt == "pytorch" else "Export model"
        path, _ = QFileDialog.getSaveFileName(self, caption, current, FILTERS[self.fmt])
        if path:
            self.set_path(path)

    def run_export(self) -> ExportResult:
        """Export with the current choices; EngineError (or OSError) carries the reason."""
        if self.source is None:
            raise EngineError("there is no trained model to export: train one, or open a .cnnd file")
        text = self.path_edit.text().strip()
        if not text:
            raise EngineError("choose where to save the export")
        QGuiApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)
        try:
            self.result_ = export_model(self.source, self.fmt, Path(text).expanduser(),
                                        sample_folder=self.sample_folder)
        finally:
            QGuiApplication.restoreOverrideCursor()
        return self.result_

    def accept(self) -> None:
        try:
            result = self.run_export()
        except (EngineError, OSError) as e:
            msg = str(e) if isinstance(e, EngineError) else f"{e.strerror or e}: {e.filename or ''}"
            QMessageBox.warning(self, "Export failed", msg)
            return
        QMessageBox.information(self, "Export finished", result.message)
        super().accept()


def export_dialog(parent: QWidget | None, model: Any = None) -> ExportResult | None:
    """Show the export dialog (modal); returns what was written, or None if cancelled."""
    dlg = ExportDialog(parent, model)
    dlg.exec()
    return dlg.result_
