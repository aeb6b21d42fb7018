"""File > Export in the real window: it exports the Train tab's model, as a user would reach it."""

from __future__ import annotations

import pytest
from export_helpers import SCORES, make_cnnd

from engine import modelfile
from engine.spec import Spec


@pytest.fixture
def window(qtbot, monkeypatch):
    from designer.app import build_window

    w = build_window(estimate=False)
    qtbot.addWidget(w)
    monkeypatch.setattr(w, "maybe_save", lambda: True)  # never prompt when the test closes it
    yield w
    w.training_workspace.shutdown()


def test_file_export_writes_the_opened_model(window, qtbot, tmp_path, monkeypatch):
    from designer import export_dialog as ed

    cnnd = make_cnnd(tmp_path / "scores.cnnd", SCORES)
    assert window.training_workspace.files.open(str(cnnd))
    shown: list[tuple[str, str]] = []
    monkeypatch.setattr(ed.QMessageBox, "information", lambda *a: shown.append(("info", a[2])))
    monkeypatch.setattr(ed.QMessageBox, "warning", lambda *a: shown.append(("warn", a[2])))

    def fake_exec(dlg):  # what a user does in the dialog: choose JSON, a path, press Export
        dlg.set_format("json")
        dlg.set_path(tmp_path / "exported.json")
        dlg.accept()
        return 1

    monkeypatch.setattr(ed.ExportDialog, "exec", fake_exec)
    assert window.export_action.isEnabled()
    window.export_action.trigger()
    assert shown and shown[-1][0] == "info", shown
    assert Spec.load(tmp_path / "exported.json") == modelfile.load(cnnd).spec


def test_file_export_without_a_model_says_so(window, monkeypatch):
    from designer import export_dialog as ed

    seen = {}

    def fake_exec(dlg):
        seen["label"] = dlg.model_label.text()
        seen["enabled"] = dlg.export_button.isEnabled()
        return 0

    monkeypatch.setattr(ed.ExportDialog, "exec", fake_exec)
    window.export_action.trigger()
    assert seen == {"label": seen["label"], "enabled": False}
    assert "no trained model" in seen["label"]
