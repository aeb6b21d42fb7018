""""Continue from the current weights": whether a run starts from the current model, what it keeps
after the design was edited, and which layers to freeze: the Train tab's view of engine.transfer.

Editing a trained model's design used to leave one choice, all or nothing. Now the compatible layers
(engine.transfer's rule: same type and array shapes, in order) keep their weights, and the tab says
which ones start fresh before the run starts; the Design tab's stack marks the same layers kept or
new (StackMarks). Layers may be frozen: the lock on a stack row and the Freeze layers field (`0-3`,
as the CLI's --freeze) are two views of one setting, the design's `frozen` flags, each change one
undo command (designer.commands.SetLockedCommand).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shiboken6
from PySide6.QtGui import QUndoStack
from PySide6.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QLineEdit, QVBoxLayout, QWidget

from designer.commands import SetLockedCommand
from designer.document import Document
from engine.errors import EngineError
from engine.trained import TrainedModel
from engine.transfer import Transfer, align, describe_layers, locked_layers, parse_layers, transfer


def weight_marks(design: Any, current: Any) -> dict[int, str]:
    """Layer index -> "kept" / "new" for every layer with weights when continuing from `current` (a
    CurrentModel) on `design`; empty without a model or while the design is invalid."""
    if current is None:
        return {}
    try:
        kept, new = align(design, current.spec)
    except EngineError:
        return {}
    return {**{i: "kept" for i in kept}, **{i: "new" for i in new}}


def _names(classes: list[str], most: int = 4) -> str:
    """["a", "b", "c", "d", "e"] -> "a, b, c, d, ...": a few class names for one line."""
    return ", ".join(classes[:most]) + (", ..." if len(classes) > most else "")


def layers_text(indices: list[int]) -> str:
    """[0, 1, 2, 3, 7] -> "0-3, 7" (what parse_layers reads back)."""
    parts: list[tuple[int, int]] = []
    for i in sorted(indices):
        if parts and parts[-1][1] == i - 1:
            parts[-1] = (parts[-1][0], i)
        else:
            parts.append((i, i))
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in parts)


class StackMarks:
    """Keeps the Design tab's stack marks (kept / new, engine.transfer.align) in step with the design
    and the Train tab's current model."""

    def __init__(self, list_model: Any, document: Document, session: Any) -> None:
        self.list_model, self.document, self.session = list_model, document, session
        document.spec_changed.connect(self.refresh)
        session.model_changed.connect(self.refresh)
        self.refresh()

    def refresh(self, *_args: Any) -> None:
        if not shiboken6.isValid(self.list_model):  # the window is gone; the design outlived it
            return
        self.list_model.set_weight_marks(weight_marks(self.document.spec, self.session.current))


@dataclass
class StartingPoint:
    """Where a run's weights come from (designer.worker.TrainRequest's start, initial_state,
    init_from, frozen); empty for new random weights."""

    #: the current model, trained further as it is (same design, same classes)
    start: TrainedModel | None = None
    #: the kept layers' weights for an edited design, with where they came from, and the plan that says which
    initial_state: dict[str, np.ndarray] | None = None
    init_from: str | None = None
    plan: Transfer | None = None
    frozen: list[int] = field(default_factory=list)


class WeightPlan:
    """The transfer from the current model to the edited design, computed once per (design, model)."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._plan: Transfer | None = None

    def plan(self, design: Any, current: Any, seed: int = 0) -> Transfer | None:
        """None when there is no model, the design is the model's own, or nothing can be kept."""
        if current is None:
            return None
        key = (json.dumps(design.to_dict()["layers"]), tuple(design.input_shape), id(current.model), seed)
        if key != self._key:
            self._key = key
            try:
                plan = transfer(design, current.spec, current.model.state_dict(), seed=seed)
            except EngineError:
                plan = None
            self._plan = plan if plan is not None and plan.kept else None
        return self._plan


class KeepWeightsPanel(QWidget):
    """The Continue box, and under it which layers keep their weights and a Freeze field."""

    FREEZE_TIP = ("Layers whose weights stay fixed while the rest trains, when a run continues from trained "
                  "weights (indices as in the Design tab; ranges like 0-3). The same setting as the locks on "
                  "the Design tab's rows; frozen layers keep their weights bit for bit.")
    FREEZE_BUSY = "Not while training: the run keeps the frozen layers it started with"

    def __init__(self, document: Document, undo_stack: QUndoStack | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.document, self.undo_stack = document, undo_stack
        self.plans = WeightPlan()
        self.continue_box = QCheckBox("Continue from the current weights")
        self.continue_box.setToolTip("Start from the trained (or opened) model's weights instead of new random ones")
        self.continue_box.setEnabled(False)
        self.note = QLabel()
        self.note.setWordWrap(True)
        self.freeze = QLineEdit()
        self.freeze.setPlaceholderText("e.g. 0-3")
        self.freeze.setToolTip(self.FREEZE_TIP)
        self.freeze.setAccessibleName("Freeze layers")
        self.freeze.textChanged.connect(lambda _t: self._show_error(""))
        self.freeze.editingFinished.connect(self.apply_text)
        self.freeze_error = QLabel()
        self.freeze_error.setStyleSheet("color: #a33")
        self.freeze_error.setWordWrap(True)
        self.freeze_error.setVisible(False)  # no empty line under the field (the Train tab is short of height)
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        self.freeze_label = QLabel("Freeze layers:")
        self.freeze_label.setBuddy(self.freeze)
        row.addWidget(self.freeze_label)
        row.addWidget(self.freeze, 1)
        details = QVBoxLayout()
        details.setContentsMargins(22, 0, 0, 0)
        details.addWidget(self.note)
        details.addLayout(row)
        details.addWidget(self.freeze_error)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.continue_box)
        lay.addLayout(details)
        document.spec_changed.connect(self._design_changed)
        self._design_changed()

    def _show_error(self, text: str) -> None:
        self.freeze_error.setText(text)
        self.freeze_error.setVisible(bool(text))

    def _locked(self) -> list[int]:
        try:
            return locked_layers(self.document.spec)
        except EngineError:  # an invalid design: its locks as written
            return self.document.locked

    def _design_changed(self, change: Any = None) -> None:
        """Show the design's locks (a row's lock, an undo), but never over what the user is typing:
        not while the field has the focus or holds an error to fix, not on edits that cannot move
        a lock (settings, data folder, input size)."""
        if getattr(change, "kind", None) in ("meta", "input") or not shiboken6.isValid(self.freeze):
            return
        if not self.freeze.hasFocus() and not self.freeze_error.text():
            text = layers_text(self._locked())
            if text != self.freeze.text():
                self.freeze.setText(text)

    def apply_text(self) -> bool:
        """The field's layers become the design's locks (one undo command); False: the field is
        wrong and says why, the locks stay as they were."""
        text = self.freeze.text().strip()
        try:
            want = parse_layers(text, self.document.spec) if text else []
        except EngineError as e:
            self._show_error(str(e).replace("--freeze", "Freeze layers"))
            return False
        if want != self.document.locked:
            cmd = SetLockedCommand(self.document, want, f"Freeze layers {layers_text(want)}" if want else None)
            if self.undo_stack is not None:
                self.undo_stack.push(cmd)
            else:
                cmd.redo()
        self._show_error("")
        self.freeze.setText(layers_text(self._locked()))  # as the design has it now ("0-3" -> "0, 3")
        return True

    def update_for(self, design: Any, session: Any, seed: int = 0, busy: bool = False) -> None:
        """Refresh the note and the box: continuing is possible with the same design, or a design that
        keeps some of the model's layers, and not while `busy` (a run)."""
        same = session.can_continue()
        plan = None if same else self.plans.plan(design, session.current, seed)
        possible = (same or plan is not None) and not busy
        self.continue_box.setEnabled(possible)
        # like every setting of the form: a run trains with the locks it started with
        self.freeze.setEnabled(not busy)
        self.freeze_label.setEnabled(not busy)
        self.freeze.setToolTip(self.FREEZE_BUSY if busy else self.FREEZE_TIP)
        if not possible:
            self.continue_box.setChecked(False)
        locks = self._locked()
        if plan is not None and session.matches_design():  # the same design: the folder's classes differ
            cur, data = session.current, session.data
            self.note.setText(f"This folder's classes ({_names(data.classes)}) are not the model's "
                              f"({_names(cur.classes)}): continuing starts from all its weights and trains "
                              "them on this folder's classes.")
        elif plan is not None:
            kept = describe_layers(design, list(plan.kept))
            new = describe_layers(design, plan.new) or "none"
            self.note.setText(f"The design was edited: layers {kept} keep their weights; new weights for {new}.")
        elif locks and not self.continue_box.isChecked():
            self.note.setText(f"Layers {layers_text(locks)} are locked: locks apply when a run continues from "
                              "trained weights; a fresh run trains every layer.")
        else:
            self.note.setText("")
        self.note.setVisible(bool(self.note.text()))

    def starting_point(self, design: Any, session: Any, seed: int = 0) -> StartingPoint:
        """Where the next run's weights come from, as the box and the Freeze field say; EngineError
        when the Freeze field is wrong (and it says so)."""
        cur = session.current
        if not self.continue_box.isChecked() or cur is None:
            return StartingPoint()
        if session.can_continue():
            point = StartingPoint(start=cur.trained)
        else:  # an edited design: the compatible layers keep their weights (engine.transfer's rule)
            plan = self.plans.plan(design, cur, seed)
            if plan is None:
                return StartingPoint()
            point = StartingPoint(initial_state=plan.state, init_from=f"the window's model ({cur.describe()})",
                                  plan=plan)
        point.frozen = self.frozen(design)
        return point

    def frozen(self, design: Any) -> list[int]:
        """The layers `design` locks (with weights), for a run that continues from trained weights;
        EngineError when the field holds layers not yet applied that are wrong (it says why)."""
        if self.freeze.text().strip() != layers_text(self._locked()) and not self.apply_text():
            raise EngineError(self.freeze_error.text())
        return locked_layers(design)
