"""Locked layers: the `frozen` flag in the format, the lock on a stack row and the Train tab's Freeze
field as one undoable setting, kept / new / frozen marks on the rows while a trained model exists,
and the CLI's --init-from honouring the design's locks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from engine import modelfile
from engine.data import Preprocessing
from engine.errors import SpecError
from engine.model import Model
from engine.spec import Spec
from engine.trained import TrainedModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_cli import LENET, cli  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "resources" / "sample_mnist"
RESNETISH = {
    "format": "cnn-designer/1", "name": "r", "input": {"channels": 1, "height": 12, "width": 12},
    "layers": [{"type": "Conv2D", "filters": 4, "kernel_size": 3, "padding": "same"},
               {"type": "Residual", "layers": [{"type": "Conv2D", "filters": 4, "kernel_size": 3, "padding": "same"},
                                               {"type": "ReLU"}]},
               {"type": "Flatten"}, {"type": "Dense", "units": 3}],
}


def _with_locks(arch: dict, locked: list[int]) -> dict:
    out = json.loads(json.dumps(arch))
    for i in locked:
        out["layers"][i]["frozen"] = True
    return out


# --- the format --------------------------------------------------------------------------------------


def test_frozen_round_trips_and_is_written_only_when_set():
    plain = Spec.from_dict(LENET)
    assert "frozen" not in json.dumps(plain.to_dict())  # a design without locks: saved as before
    locked = Spec.from_dict(_with_locks(LENET, [0, 3]))
    assert [layer.frozen for layer in locked.layers][:4] == [True, False, False, True]
    again = Spec.from_dict(json.loads(locked.to_json()))
    assert again == locked and again != plain
    assert again.layers[0].config == plain.layers[0].config  # not part of the layer's computation
    block = Spec.from_dict(_with_locks(RESNETISH, [1]))
    assert block.layers[1].frozen and block.to_dict()["layers"][1]["frozen"] is True


@pytest.mark.parametrize("mutate, message", [
    (lambda a: a["layers"][0].update(frozen=1), 'layer 0 (Conv2D): field "frozen" must be true or false, got 1'),
    (lambda a: a["layers"][1]["layers"][0].update(frozen=True),
     'layer 1 (Residual): inner layer 0: "frozen" is set on the block as a whole'),
])
def test_bad_frozen_refused_naming_the_layer(mutate, message):
    arch = json.loads(json.dumps(RESNETISH))
    mutate(arch)
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Spec.from_dict(arch)


# --- the document and its undo command -------------------------------------------------------------------


def test_locks_are_one_undoable_setting_that_moves_with_its_layer():
    from PySide6.QtGui import QUndoStack

    from designer.commands import RemoveLayersCommand, SetLockedCommand, make_move_command
    from designer.document import Document

    doc = Document(Spec.from_dict(LENET))
    stack = QUndoStack()
    shared = doc.layers[0]
    stack.push(SetLockedCommand(doc, [0, 3]))
    assert doc.locked == [0, 3] and stack.undoText() == "Freeze layers 0, 3"
    assert not shared.frozen  # copies replace the layers: a spec sharing them is not changed
    stack.push(make_move_command(doc, [0], 2))  # Conv2D 0 moves after the ReLU: its lock goes with it
    assert doc.locked == [1, 3] and doc.layers[1].type == "Conv2D"
    stack.push(RemoveLayersCommand(doc, [3]))
    assert doc.locked == [1]
    stack.undo()
    assert doc.locked == [1, 3]  # the removed layer comes back locked
    stack.undo()
    stack.undo()
    assert doc.locked == []
    stack.redo()
    assert doc.locked == [0, 3]
    stack.push(SetLockedCommand(doc, [0]))
    assert stack.undoText() == "Unlock layer 3 (Conv2D)"


# --- the window ------------------------------------------------------------------------------------------


@pytest.fixture
def app_window(qtbot, monkeypatch, tmp_path):
    from designer import settings as app_settings
    from designer.app import build_window

    monkeypatch.setenv(app_settings.CONFIG_ENV, str(tmp_path / "config"))
    monkeypatch.setenv("CNN_DESIGNER_RUNS", str(tmp_path / "runs"))
    w = build_window(estimate=False)
    qtbot.addWidget(w)
    monkeypatch.setattr(w, "maybe_save", lambda: True)
    w.resize(1100, 760)
    w.show()
    qtbot.waitExposed(w)
    yield w
    w.training_workspace.shutdown()


def _click_lock(qtbot, w, layer: int) -> None:
    """A real click where the row's lock column is painted (whether or not the row has a lock)."""
    from PySide6.QtCore import Qt

    from designer.stack_view import columns

    rect = w.view.visualRect(w.model.layer_row(layer))
    qtbot.mouseClick(w.view.viewport(), Qt.MouseButton.LeftButton,
                     pos=columns(rect, w.view.fontMetrics())["lock"].center())


def test_row_lock_and_freeze_field_are_one_setting(app_window, qtbot, tmp_path):
    from designer.layer_list_model import FrozenRole

    w = app_window
    field = w.training_workspace.keep_weights.freeze
    assert w.model.layer_row(1).data(FrozenRole) is None  # a ReLU has nothing to lock
    assert w.model.layer_row(0).data(FrozenRole) is False
    _click_lock(qtbot, w, 0)
    assert w.document.locked == [0] and w.model.layer_row(0).data(FrozenRole) is True
    assert field.text() == "0" and w.undo_stack.undoText() == "Lock layer 0 (Conv2D)"
    assert w.isWindowModified()
    _click_lock(qtbot, w, 1)  # no lock there: nothing happens
    assert w.document.locked == [0]
    w.undo_action.trigger()
    assert w.document.locked == [] and field.text() == ""
    w.redo_action.trigger()
    assert field.text() == "0"

    field.setText("0-3")  # the Train tab's field edits the same locks, as one undo step
    field.editingFinished.emit()
    assert w.document.locked == [0, 3] and w.model.layer_row(3).data(FrozenRole) is True
    assert w.undo_stack.undoText() == "Freeze layers 0, 3"
    field.setText("1-2")  # layers without weights only: refused, the locks stay
    field.editingFinished.emit()
    assert w.document.locked == [0, 3]
    error = w.training_workspace.keep_weights.freeze_error.text()
    assert "Freeze layers 1-2: none of these layers has weights" in error
    field.setText("0-3")
    w.undo_action.trigger()
    assert w.document.locked == [0] and field.text() == "0"

    w.select_layer(3)  # Ctrl+L on the selection (keyboard, Edit menu, the row's context menu)
    assert w.lock_action.isEnabled() and w.lock_action.text() == "&Lock weights"
    w.lock_action.trigger()
    assert w.document.locked == [0, 3] and w.lock_action.text() == "Un&lock weights"
    w.lock_action.trigger()
    assert w.document.locked == [0]

    assert w.save_to(tmp_path / "locked.json")
    saved = json.loads((tmp_path / "locked.json").read_text())
    assert saved["layers"][0]["frozen"] is True and "frozen" not in saved["layers"][3]


def test_block_locked_as_a_whole(app_window, qtbot, tmp_path):
    from PySide6.QtCore import Qt

    from designer.layer_list_model import FrozenRole, WeightsRole

    w = app_window
    (tmp_path / "r.json").write_text(json.dumps(RESNETISH))
    assert w.open_file(tmp_path / "r.json", ask=False)
    assert w.model.layer_row(1).data(FrozenRole) is False  # the block row has the lock
    inner = w.model.index(w.model.row_of((1, 0)), 0)
    assert inner.data(FrozenRole) is None and inner.data(WeightsRole) is None
    _click_lock(qtbot, w, 1)
    assert w.document.locked == [1]
    assert "Frozen with its block" in inner.data(Qt.ItemDataRole.ToolTipRole)
    assert not w.model.is_collapsed(1)
    w.model.set_collapsed(1, True)
    w.undo_action.trigger()  # the block is replaced by an unlocked copy and stays collapsed
    assert w.document.locked == [] and w.model.is_collapsed(1)


def _model_file(path: Path, arch: dict) -> Path:
    spec = Spec.from_dict(arch)
    modelfile.save(path, TrainedModel(spec, Model(spec, seed=1).state_dict(), [str(i) for i in range(10)],
                                      Preprocessing.for_input(spec.input_shape), {}, []))
    return path


def test_kept_new_frozen_marks_follow_the_model_and_the_design(app_window, tmp_path):
    from PySide6.QtCore import Qt

    from designer.layer_list_model import WeightsRole

    w = app_window

    def marks() -> dict[int, str]:
        return {i: m for i in range(len(w.document)) if (m := w.model.layer_row(i).data(WeightsRole))}

    assert marks() == {} and not w.model.marks_shown  # no trained model: no marks
    assert w.open_file(_model_file(tmp_path / "m.cnnd", LENET), ask=False)
    assert marks() == {0: "kept", 3: "kept", 7: "kept", 9: "kept", 11: "kept"}
    w.undo_stack.push(_units(w, 9, 64))  # the head changes: that Dense and the next start fresh
    assert marks() == {0: "kept", 3: "kept", 7: "kept", 9: "new", 11: "new"}
    assert "<b>new</b>: starts from fresh random weights" in w.model.layer_row(9).data(Qt.ItemDataRole.ToolTipRole)
    assert "<b>kept</b>" in w.model.layer_row(0).data(Qt.ItemDataRole.ToolTipRole)
    w.model.set_locked(0, True)
    w.model.set_locked(11, True)
    assert marks()[0] == "frozen" and marks()[11] == "frozen new"
    assert "would stay random" in w.model.layer_row(11).data(Qt.ItemDataRole.ToolTipRole)
    grab = w.view.grab()
    assert not grab.isNull()
    w.undo_stack.undo()
    w.undo_stack.undo()
    w.undo_stack.undo()
    assert marks() == {0: "kept", 3: "kept", 7: "kept", 9: "kept", 11: "kept"}
    w.training_workspace.session.set_model(None)
    assert marks() == {}


def _units(w, index: int, units: int):
    from designer.commands import SetFieldCommand

    return SetFieldCommand(w.document, index, "units", units)


# --- the command line ----------------------------------------------------------------------------------


def test_cli_init_from_freezes_the_designs_locks(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("CNN_DESIGNER_RUNS", str(tmp_path / "runs"))
    source = _model_file(tmp_path / "src.cnnd", LENET)
    arch = tmp_path / "locked.json"
    arch.write_text(json.dumps(_with_locks(LENET, [0, 3])))
    common = ["--data", str(SAMPLE), "--epochs", "1", "--batch-size", "32", "--limit", "64"]
    rc, _, err = cli(capsys, "train", "--arch", arch, *common, "--out", tmp_path / "fresh.cnnd")
    assert rc == 0, err
    assert "frozen:" not in err  # no trained weights to keep: the locks do not apply
    rc, _, err = cli(capsys, "train", "--arch", arch, *common, "--init-from", source, "--freeze", "7",
                     "--out", tmp_path / "tuned.cnnd")
    assert rc == 0, err
    assert "frozen: layer(s) 0 Conv2D, 3 Conv2D, 7 Dense" in err
    before, after = modelfile.load(source).state, modelfile.load(tmp_path / "tuned.cnnd").state
    for k in ("layers.0.weight", "layers.3.bias", "layers.7.weight"):
        assert np.array_equal(before[k], after[k]), k
    assert not np.array_equal(before["layers.9.weight"], after["layers.9.weight"])
