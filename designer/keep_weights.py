"""What "Continue from the current weights" keeps after the design was edited, and which layers to
freeze: the Train tab's view of engine.transfer.

Editing a trained model's design used to leave one choice, all or nothing. Now the compatible layers
(engine.transfer's rule: same type and array shapes, in order) keep their weights, and the tab says
which ones start fresh before the run starts. Layers may be frozen (`0-3`, as the CLI's --freeze).
"""

from __future__ import annotations

import json
from typing import Any

from PySide6.QtWidgets import QHBoxLayout, QLabel, QLineEdit, QVBoxLayout, QWidget

from engine.errors import EngineError
from engine.transfer import Transfer, describe_layers, parse_layers, transfer


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
    """Under the Continue box: which layers keep their weights, and a Freeze field."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.plans = WeightPlan()
        self.note = QLabel()
        self.note.setWordWrap(True)
        self.freeze = QLineEdit()
        self.freeze.setPlaceholderText("e.g. 0-3")
        self.freeze.setToolTip("Layers whose weights stay fixed while the rest trains (indices as in the Design "
                               "tab; ranges like 0-3). Frozen layers keep their weights bit for bit.")
        self.freeze.textChanged.connect(lambda _t: self.freeze_error.setText(""))
        self.freeze_error = QLabel()
        self.freeze_error.setStyleSheet("color: #a33")
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(QLabel("Freeze layers:"))
        row.addWidget(self.freeze, 1)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(22, 0, 0, 0)
        lay.addWidget(self.note)
        lay.addLayout(row)
        lay.addWidget(self.freeze_error)

    def update_for(self, design: Any, session: Any, checked: bool, seed: int = 0) -> bool:
        """Refresh the note; True when continuing is possible (same design, or a design that keeps
        some of the model's layers)."""
        same = session.can_continue()
        plan = None if same else self.plans.plan(design, session.current, seed)
        if plan is not None:
            kept = describe_layers(design, list(plan.kept))
            new = describe_layers(design, plan.new) or "none"
            self.note.setText(f"The design was edited: layers {kept} keep their weights; new weights for {new}.")
        else:
            self.note.setText("")
        self.note.setVisible(plan is not None)
        self.freeze.setEnabled(checked)
        return same or plan is not None

    def frozen(self, design: Any) -> list[int]:
        """The layers to freeze; EngineError names what is wrong with the field."""
        text = self.freeze.text().strip()
        if not text or not self.freeze.isEnabled():
            return []
        try:
            return parse_layers(text, design)
        except EngineError as e:
            self.freeze_error.setText(str(e).replace("--freeze", "Freeze layers"))
            raise
