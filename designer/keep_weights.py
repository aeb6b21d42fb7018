""""Continue from the current weights": whether a run starts from the current model, what it keeps
after the design was edited, and which layers to freeze: the Train tab's view of engine.transfer.

Editing a trained model's design used to leave one choice, all or nothing. Now the compatible layers
(engine.transfer's rule: same type and array shapes, in order) keep their weights, and the tab says
which ones start fresh before the run starts. Layers may be frozen (`0-3`, as the CLI's --freeze).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PySide6.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QLineEdit, QVBoxLayout, QWidget

from engine.errors import EngineError
from engine.trained import TrainedModel
from engine.transfer import Transfer, describe_layers, parse_layers, transfer


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

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.plans = WeightPlan()
        self.continue_box = QCheckBox("Continue from the current weights")
        self.continue_box.setToolTip("Start from the trained (or opened) model's weights instead of new random ones")
        self.continue_box.setEnabled(False)
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
        details = QVBoxLayout()
        details.setContentsMargins(22, 0, 0, 0)
        details.addWidget(self.note)
        details.addLayout(row)
        details.addWidget(self.freeze_error)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.continue_box)
        lay.addLayout(details)

    def update_for(self, design: Any, session: Any, seed: int = 0, busy: bool = False) -> None:
        """Refresh the note and the box: continuing is possible with the same design, or a design that
        keeps some of the model's layers, and not while `busy` (a run)."""
        same = session.can_continue()
        plan = None if same else self.plans.plan(design, session.current, seed)
        if plan is not None:
            kept = describe_layers(design, list(plan.kept))
            new = describe_layers(design, plan.new) or "none"
            self.note.setText(f"The design was edited: layers {kept} keep their weights; new weights for {new}.")
        else:
            self.note.setText("")
        self.note.setVisible(plan is not None)
        possible = (same or plan is not None) and not busy
        self.continue_box.setEnabled(possible)
        if not possible:
            self.continue_box.setChecked(False)
        self.freeze.setEnabled(self.continue_box.isChecked())

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
        """The layers to freeze; EngineError names what is wrong with the field."""
        text = self.freeze.text().strip()
        if not text or not self.freeze.isEnabled():
            return []
        try:
            return parse_layers(text, design)
        except EngineError as e:
            self.freeze_error.setText(str(e).replace("--freeze", "Freeze layers"))
            raise
