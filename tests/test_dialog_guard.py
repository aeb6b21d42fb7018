"""The suite's guard against modal dialogs nobody answers (conftest.py): they fail, never hang."""

import pytest
from PySide6.QtWidgets import QFileDialog, QMessageBox, QWidget


def test_an_unanswered_dialog_fails_the_test_instead_of_waiting(qtbot):
    parent = QWidget()
    qtbot.addWidget(parent)
    with pytest.raises(AssertionError, match="QMessageBox.warning.*Cannot save"):
        QMessageBox.warning(parent, "Cannot save", "disk full")
    with pytest.raises(AssertionError, match="QFileDialog.getOpenFileName"):
        QFileDialog.getOpenFileName(parent, "Open design")
    box = QMessageBox(QMessageBox.Icon.Warning, "Export failed", "no space", parent=parent)
    with pytest.raises(AssertionError, match="QMessageBox.exec.*Export failed"):
        box.exec()


def test_a_test_can_still_answer_a_dialog_itself(qtbot, monkeypatch):
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Yes)
    assert QMessageBox.question(None, "Delete runs", "Delete run 1?") == QMessageBox.StandardButton.Yes
