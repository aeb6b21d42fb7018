"""Trained-model files of the Train tab: Save model / Open model (.cnnd), and the Model menu's two
actions for them.

A controller, not a widget: it reads and writes the session's current model (designer.session) and
asks the user through dialogs parented to the tab. Opening a model also makes its architecture the
design, as one undoable edit; what the tab shows of an opened model (its curves, its settings in the
form) is the tab's business, told through `adopted`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QAction, QUndoStack
from PySide6.QtWidgets import QFileDialog, QMessageBox, QWidget

from designer.session import CurrentModel
from engine.errors import EngineError
from engine.trained import TrainedModel


class ModelFiles(QObject):
    """Open, save and adopt .cnnd models for `session` (a TrainSession); dialogs open over `parent`."""

    #: A model file became the current model (designer.session.CurrentModel).
    adopted = Signal(object)
    #: A line for the status bar.
    status_message = Signal(str)

    def __init__(self, session: Any, undo_stack: QUndoStack | None, parent: QWidget):
        super().__init__(parent)
        self.session = session
        self.document = session.document
        self.undo_stack = undo_stack
        #: the TrainedModel last made current (File > Open hands the document's over once)
        self.adopted_file: TrainedModel | None = None
        self.last_error: str | None = None
        self.save_action = QAction("Save trained model…", self)
        self.save_action.setStatusTip("Save the trained model (architecture, weights, classes, preprocessing) "
                                      "as .cnnd")
        self.save_action.triggered.connect(self.save_dialog)
        self.open_action = QAction("Open trained model…", self)
        self.open_action.setStatusTip("Open a .cnnd to inspect it, evaluate it on a folder, or continue training")
        self.open_action.triggered.connect(self.open_dialog)

    def set_enabled(self, has_model: bool, busy: bool) -> None:
        """Nothing is opened or saved during a run (the run would replace it)."""
        self.save_action.setEnabled(has_model and not busy)
        self.open_action.setEnabled(not busy)

    # --- saving ---------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the current model as .cnnd (atomic); EngineError with a clear message on failure."""
        from engine import modelfile

        cur = self.session.current
        if cur is None:
            raise EngineError("there is no trained model to save yet: train first")
        modelfile.save(path, cur.trained)
        self.session.mark_saved(Path(path))
        self.status_message.emit(f"Saved the trained model {cur.spec.name} to {path}")
        return Path(path)

    def save_dialog(self) -> Path | None:
        """Ask where, then save; None when cancelled or refused (the user was told why)."""
        cur = self.session.current
        if cur is None:
            return None
        start = str(cur.path or Path.cwd() / f"{(cur.spec.name or 'model').replace(' ', '_')}.cnnd")
        path, _ = QFileDialog.getSaveFileName(self.parent(), f"Save trained model ({cur.describe()})", start,
                                              "CNN Designer model (*.cnnd)")
        if not path:
            return None
        if not path.lower().endswith(".cnnd"):
            path += ".cnnd"
        try:
            return self.save(path)
        except EngineError as e:
            QMessageBox.warning(self.parent(), "Cannot save the model", str(e))
            return None

    # --- opening --------------------------------------------------------------------------------------
    def open(self, path: str | Path, set_design: bool = True) -> bool:
        """Open a .cnnd: its weights become the current model, its architecture the design (undoable)."""
        from engine import modelfile

        if self.session.training:
            return False
        try:
            mf = modelfile.load(path)
        except EngineError as e:
            self.last_error = str(e)
            QMessageBox.warning(self.parent(), "Cannot open the model", str(e))
            return False
        if set_design:
            self._apply_spec(mf.spec, f"Open model {Path(path).name}")
        return self.adopt(mf, Path(path))

    def open_dialog(self) -> bool:
        path, _ = QFileDialog.getOpenFileName(self.parent(), "Open trained model", str(Path.cwd()),
                                              "CNN Designer model (*.cnnd);;All files (*)")
        return self.open(path) if path else False

    def adopt(self, mf: TrainedModel, path: Path | None = None) -> bool:
        """Make a loaded model file the current model: look inside it, evaluate it, continue training it."""
        try:
            mf.model()
        except EngineError as e:
            self.last_error = str(e)
            self.session.say(f"Cannot use the model: {e}", error=True)
            return False
        self.adopted_file = mf
        if path is not None:
            mf.path = Path(path)
        cur = CurrentModel(mf, saved=True)
        self.session.set_model(cur)
        history = cur.history
        acc = next((h.get("val_accuracy") for h in reversed(history) if h.get("val_accuracy") is not None), None)
        extra = f"; last validation accuracy {100 * acc:.2f} %" if acc is not None else ""
        self.session.say(f"Opened {cur.name}: {len(cur.classes)} classes, {cur.trained_for} "
                         f"trained{extra}. Evaluate it on a folder, predict images, or continue training.")
        self.status_message.emit(f"Opened model {cur.name}")
        self.adopted.emit(cur)
        return True

    def adopt_document_model(self) -> None:
        """A .cnnd opened with File > Open comes as the document's model file: its weights come with it."""
        mf = self.document.model_file
        if mf is not None and mf is not self.adopted_file:
            self.adopt(mf, self.document.model_path)

    def _apply_spec(self, spec: Any, text: str) -> None:
        if self.document.spec == spec:
            return
        if self.undo_stack is not None:
            from designer.commands import ReplaceSpecCommand

            self.undo_stack.push(ReplaceSpecCommand(self.document, spec, text))
        else:
            self.document.set_spec(spec)

    # --- closing --------------------------------------------------------------------------------------
    def may_discard(self, parent: QWidget | None = None) -> bool:
        """Before closing: a trained model not yet saved is offered for saving; False = stay open."""
        if not self.session.unsaved_model:
            return True
        cur = self.session.current
        answer = QMessageBox.warning(
            parent or self.parent(), "Trained model not saved",
            f"The model trained here ({cur.spec.name or 'model'}, {cur.trained_for}) "
            "has not been saved. Save it before closing?",
            QMessageBox.StandardButton.Save | QMessageBox.StandardButton.Discard
            | QMessageBox.StandardButton.Cancel, QMessageBox.StandardButton.Save)
        if answer == QMessageBox.StandardButton.Cancel:
            return False
        return answer != QMessageBox.StandardButton.Save or self.save_dialog() is not None
