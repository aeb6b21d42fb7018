"""The designer window used as a person would: palette, stack, properties, undo, files, recovery."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PySide6.QtCore import QModelIndex, QPointF, Qt
from PySide6.QtGui import QColor, QDropEvent
from PySide6.QtWidgets import QApplication, QMessageBox
from screenshot_checks import assert_panels_drawn

from designer import settings as app_settings
from designer.document import SAMPLE_DATA_DIR
from designer.explain import explain_html
from designer.layer_list_model import ErrorRole, ShapeRole
from designer.main_window import MainWindow
from designer.stack_view import ERROR_BG
from engine.shapes import infer
from engine.spec import Spec

Button = QMessageBox.StandardButton


class Dialogs:
    """Stands in for QMessageBox's static dialogs: records them and answers without blocking."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.answer = {"warning": Button.Discard, "question": Button.No}

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        def make(kind: str):
            def dialog(_parent, title, text, *args, **kwargs):
                self.calls.append((kind, f"{title}: {text}"))
                return self.answer.get(kind, Button.Ok)
            return staticmethod(dialog)

        for kind in ("warning", "question", "critical", "information"):
            monkeypatch.setattr(QMessageBox, kind, make(kind))
        monkeypatch.setattr(QMessageBox, "about", make("about"))


@pytest.fixture
def dialogs(monkeypatch, tmp_path):
    monkeypatch.setenv(app_settings.CONFIG_ENV, str(tmp_path / "config"))
    d = Dialogs()
    d.install(monkeypatch)
    return d


@pytest.fixture
def window(qtbot, dialogs):
    w = MainWindow(estimate=False)
    qtbot.addWidget(w)
    w.show()
    qtbot.waitExposed(w)
    w.activateWindow()
    return w


def types(w: MainWindow) -> list[str]:
    return [layer.type for layer in w.document.layers]


def test_opens_on_lenet5_with_the_sample_dataset(window):
    assert window.document.spec.name == "LeNet-5"
    assert window.document.data_dir == SAMPLE_DATA_DIR and SAMPLE_DATA_DIR.is_dir()
    assert window.train_action.isEnabled() and window.export_action.isEnabled()
    assert "LeNet-5" in window.windowTitle() and not window.isWindowModified()
    assert "61,706" in window.totals.trainable.value.text()
    assert window.tabs.tabText(0) == "Design"
    assert window.statusBar().isVisible() and "Valid" in window.problem_label.text()


def test_palette_double_click_inserts_after_selection(window, qtbot):
    window.select_layer(1)  # the first ReLU
    item = window.palette.item_for("Dropout")
    window.palette.scrollToItem(item)
    rect = window.palette.visualItemRect(item)
    qtbot.mouseClick(window.palette.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    qtbot.mouseDClick(window.palette.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert types(window)[2] == "Dropout"
    assert window.current_layer() == 2  # the new layer is selected, its form shown
    assert window.properties.title.text() == "Layer 2 · Dropout"
    # Keyboard: Enter on a palette entry inserts too.
    window.palette.setCurrentItem(window.palette.item_for("BatchNorm2D"))
    qtbot.keyClick(window.palette, Qt.Key.Key_Return)
    assert types(window)[3] == "BatchNorm2D"


def test_palette_drop_on_stack_through_real_mime(window):
    view = window.view
    mime = window.palette.mimeData([window.palette.item_for("MaxPool2D")])
    target = window.model.index(3, 0)  # layer 2 (MaxPool2D)
    rect = view.visualRect(target)
    pos = QPointF(rect.center().x(), rect.top() + 2)  # upper half: before it
    event = QDropEvent(pos, Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                       Qt.KeyboardModifier.NoModifier)
    view.dropEvent(event)
    assert event.isAccepted()
    assert types(window)[2:4] == ["MaxPool2D", "MaxPool2D"]
    assert window.model.index(4, 0).data(ShapeRole) == "6x7x7"  # the shapes below followed
    assert "Insert MaxPool2D" in window.undo_action.text()


def test_reorder_by_drag_and_keyboard(window, qtbot):
    model = window.model
    mime = model.mimeData([model.index(7, 0)])  # Flatten
    assert model.dropMimeData(mime, Qt.DropAction.MoveAction, 1, 0, QModelIndex())
    assert types(window)[0] == "Flatten"
    assert "Move Flatten" in window.undo_action.text()
    assert not window.train_action.isEnabled()  # Conv2D after Flatten: invalid
    window.undo_stack.undo()
    assert types(window)[6] == "Flatten" and window.train_action.isEnabled()
    # Keyboard: Alt+Down, Ctrl+D, Delete on the focused stack.
    window.select_layer(0)
    window.view.setFocus()
    qtbot.keyClick(window.view, Qt.Key.Key_Down, Qt.KeyboardModifier.AltModifier)
    assert types(window)[:2] == ["ReLU", "Conv2D"]
    assert window.selected_layers() == [1]  # the selection followed the moved layer
    qtbot.keyClick(window.view, Qt.Key.Key_D, Qt.KeyboardModifier.ControlModifier)
    assert types(window)[:3] == ["ReLU", "Conv2D", "Conv2D"]
    qtbot.keyClick(window.view, Qt.Key.Key_Delete)
    assert types(window)[:3] == ["ReLU", "Conv2D", "MaxPool2D"] and len(window.document) == 13
    # Enter on a row puts the keyboard in its form; Ctrl+2 goes back to the stack.
    qtbot.keyClick(window.view, Qt.Key.Key_Return)
    assert window.current_layer() == 2  # the MaxPool2D that slid up after the delete
    assert window.properties.editor("pool_size").isAncestorOf(QApplication.focusWidget())
    qtbot.keyClick(QApplication.focusWidget(), Qt.Key.Key_2, Qt.KeyboardModifier.ControlModifier)
    assert QApplication.focusWidget() is window.view


def test_edit_a_field_as_you_type(window, qtbot):
    window.select_layer(0)
    spin = window.properties.editor("filters")
    spin.setFocus()
    spin.selectAll()
    qtbot.keyClicks(spin, "12")
    layer_row = window.model.index(1, 0)
    assert layer_row.data() == "Conv2D 12@5x5, same"
    assert layer_row.data(ShapeRole) == "12x28x28"
    expected = infer(window.document.spec).trainable_params
    assert expected != 61_706
    assert window.totals.trainable.value.text() == f"{expected:,}"
    assert "12 x (1*5*5) + 12 = 312" in window.explain.toPlainText()
    assert window.undo_stack.count() == 1  # "1" then "12": one undo step
    assert window.isWindowModified() and "*" in window.windowTitle().replace("[*]", "*")
    window.undo_action.trigger()
    assert window.document.layers[0].config["filters"] == 6 and spin.value() == 6
    assert "61,706" in window.totals.trainable.value.text()
    window.redo_action.trigger()
    assert spin.value() == 12


def test_input_row_is_editable(window):
    window.select_layer(-1)
    assert window.properties.title.text() == "Input"
    window.properties.editor("channels").setValue(3)
    assert window.document.spec.input_shape == (3, 28, 28)
    assert window.model.index(0, 0).data(ShapeRole) == "3x28x28"
    assert "6 x (3*5*5) + 6 = 456" in explain_html(window.document, 0)
    assert "Change input to 3x28x28" in window.undo_action.text()


def test_invalid_layer_turns_red_and_disables_train(window, qtbot):
    window.select_layer(3)  # Conv2D 16@5x5 on 6x14x14 maps
    window.properties.editor("kernel_size").h.setValue(20)
    message = infer(window.document.spec).layers[3].error
    assert message and "larger than" in message
    ix = window.model.index(4, 0)
    assert ix.data(ErrorRole) == message
    assert message in ix.data(Qt.ItemDataRole.ToolTipRole)
    assert not window.train_action.isEnabled() and not window.export_action.isEnabled()
    assert message in window.train_action.toolTip() and window.train_action.toolTip().startswith("Cannot train")
    assert message in window.problem_label.text()
    # The row is painted red (look at the pixels, with another row selected).
    window.select_layer(0)
    QApplication.processEvents()
    image = window.view.viewport().grab().toImage()
    rect = window.view.visualRect(ix)
    assert QColor(image.pixel(rect.right() - 3, rect.top() + 3)) == ERROR_BG
    assert message in ix.data(Qt.ItemDataRole.AccessibleTextRole)
    window.undo_stack.undo()
    assert window.train_action.isEnabled() and ix.data(ErrorRole) is None


def test_save_and_reopen_identical(window, tmp_path, qtbot, dialogs):
    window.insert_layer("Dropout", 8)
    window.select_layer(0)
    window.properties.editor("padding").mode.setCurrentIndex(2)  # custom padding
    window.properties.editor("padding").pair.h.setValue(2)
    out = tmp_path / "mine.json"
    assert window.save_to(out)
    assert not window.isWindowModified() and "mine.json" in window.windowTitle()
    saved = out.read_text()
    other = MainWindow(estimate=False)
    qtbot.addWidget(other)
    assert other.open_file(out)
    assert other.document.spec == window.document.spec
    assert other.document.spec.to_json() == saved
    assert other.document.layers[0].config["padding"] == 2
    assert str(out.resolve()) in app_settings.recent_files()
    assert not dialogs.calls


def test_unsaved_changes_prompt_can_cancel(window, dialogs):
    window.insert_layer("ReLU")
    before = window.document.spec.to_dict()
    dialogs.answer["warning"] = Button.Cancel
    assert not window.new_design("mlp")
    assert not window.close()  # the close is refused too
    assert window.document.spec.to_dict() == before and window.isVisible()
    assert [k for k, _ in dialogs.calls] == ["warning", "warning"]
    assert "unsaved changes" in dialogs.calls[0][1]
    dialogs.answer["warning"] = Button.Discard
    assert window.new_design("mlp")
    assert window.document.spec.name.startswith("MLP") and not window.undo_stack.canUndo()


def test_broken_or_foreign_file_leaves_design_untouched(window, tmp_path, dialogs):
    before = window.document.spec.to_dict()
    broken = tmp_path / "broken.json"
    broken.write_text('{"format": "cnn-designer/1", "input": ')
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"format": "keras", "layers": []}))
    bad_layer = tmp_path / "bad.json"
    bad_layer.write_text(json.dumps({"format": "cnn-designer/1", "input": {"channels": 1, "height": 8, "width": 8},
                                     "layers": [{"type": "Conv2D", "filters": 0, "kernel_size": 3}]}))
    fake_model = tmp_path / "fake.cnnd"
    fake_model.write_bytes(b"not a zip")
    for path in (broken, foreign, bad_layer, fake_model, tmp_path / "missing.json"):
        assert not window.open_file(path)
    assert window.document.spec.to_dict() == before
    kinds = [k for k, _ in dialogs.calls]
    assert kinds == ["critical"] * 5
    assert "not valid JSON" in dialogs.calls[0][1]
    assert "unsupported format" in dialogs.calls[1][1]
    assert 'layer 0 (Conv2D): field "filters"' in dialogs.calls[2][1]


def test_recovery_file_is_offered_after_a_crash(window, qtbot, dialogs):
    window.insert_layer("Dropout", 7)
    window.write_recovery()
    rp = app_settings.recovery_path()
    assert rp.exists()
    edited = window.document.spec.to_dict()
    # A new session (the first one "crashed": it never closed) restores it when the user agrees.
    dialogs.answer["question"] = Button.Yes
    again = MainWindow(estimate=False)
    qtbot.addWidget(again)
    assert again.offer_recovery()
    assert again.document.spec.to_dict() == edited and again.isWindowModified()
    # A clean close removes the recovery file; the next start offers nothing.
    dialogs.answer["warning"] = Button.Discard
    assert again.close()
    assert not rp.exists()
    third = MainWindow(estimate=False)
    qtbot.addWidget(third)
    assert not third.offer_recovery()


def test_templates_and_recent_menu(window, tmp_path):
    assert window.new_design("allconv_gap")
    assert types(window)[-2:] == ["GlobalAvgPool2D", "Softmax"] and window.train_action.isEnabled()
    assert not window.isWindowModified()
    window.save_to(tmp_path / "a.json")
    window._fill_recent_menu()
    texts = [a.text() for a in window.recent_menu.actions()]
    assert any("a.json" in t for t in texts)
    assert window.new_design(None) and len(window.document) == 0
    assert not window.train_action.isEnabled() and "no layers" in window.train_action.toolTip()


def test_screenshot_renders_1280x800(qtbot, dialogs, tmp_path):
    from designer.app import build_window, take_screenshot

    w = build_window(estimate=False)
    qtbot.addWidget(w)
    out = tmp_path / "shot.png"
    take_screenshot(w, str(out), settle_s=0.2)
    from PySide6.QtGui import QImage

    image = QImage(str(out))
    assert (image.width(), image.height()) == (1280, 800)
    panels = {}
    for name, widget in (("palette", w.palette), ("layer stack", w.view), ("explanation", w.explain),
                         ("totals bar", w.totals)):
        top_left = widget.mapTo(w, widget.rect().topLeft())
        panels[name] = (top_left.x(), top_left.y(), top_left.x() + widget.width(), top_left.y() + widget.height())
    assert_panels_drawn(out, panels)


def test_epoch_estimate_is_measured_in_the_background(qtbot, dialogs):
    w = MainWindow(estimate=True)
    qtbot.addWidget(w)
    qtbot.waitUntil(lambda: w.totals.seconds_per_batch is not None, timeout=20_000)
    assert 0 < w.totals.seconds_per_batch < 10
    text = w.totals.epoch.value.text()
    assert "images" in text and "~" in text, text
    w.totals.shutdown()


def test_open_file_from_command_line_args(qtbot, dialogs, tmp_path):
    from designer.app import _parse, build_window

    path = tmp_path / "d.json"
    Spec.load(Path("resources/templates/mlp.json")).save(path)
    w = build_window(str(path), estimate=False)
    qtbot.addWidget(w)
    assert w.document.path == path and w.document.spec.name.startswith("MLP")
    assert _parse(["--screenshot", "o.png", "x.json"]) == ("x.json", "o.png")
    assert _parse(["x.cnnd"]) == ("x.cnnd", None) and _parse([]) == (None, None)
    for bad in (["--bogus"], ["a.json", "b.json"], ["--screenshot"]):
        with pytest.raises(SystemExit, match="^cnn-designer: .*\nusage: cnn-designer"):
            _parse(bad)


def test_window_geometry_persists(qtbot, dialogs):
    w = MainWindow(estimate=False)
    qtbot.addWidget(w)
    w.show()
    w.resize(700, 500)  # within the offscreen platform's 800x600 screen, which clamps restores
    size = (w.width(), w.height())
    assert size != (1280, 800)
    assert w.close()
    s = app_settings.settings()
    assert not s.value("window/geometry").isEmpty()
    again = MainWindow(estimate=False)
    qtbot.addWidget(again)
    assert (again.width(), again.height()) == size


def test_open_a_trained_model_file(window, tmp_path, dialogs):
    from engine import modelfile
    from engine.data import Preprocessing
    from engine.model import Model
    from engine.trained import TrainedModel

    spec = Spec.load(Path("resources/templates/mlp.json"))
    model = Model(spec, seed=0)
    path = tmp_path / "digits.cnnd"
    modelfile.save(path, TrainedModel.from_model(model, [str(i) for i in range(10)], Preprocessing.for_input(
        spec.input_shape)))
    model.close()
    assert window.open_file(path)
    assert window.document.spec == spec
    assert window.document.model_file is not None and window.document.model_path == path
    assert window.document.path is None  # Save goes to "Save As" (a design .json), never over the model
    assert window.document.model_file.classes[:2] == ["0", "1"]
    assert "digits.cnnd" in window.windowTitle()
    assert not dialogs.calls


def test_command_line_errors_are_one_line(tmp_path, dialogs, capsys, qapp):
    from designer.app import run_app

    bad = tmp_path / "bad.json"
    bad.write_text("{bad")
    assert run_app(["--screenshot", str(tmp_path / "o.png"), str(bad)]) == 2
    assert run_app([str(tmp_path / "missing.json")]) == 2
    assert run_app(["--screenshot"]) == 2
    err = capsys.readouterr().err
    assert "is not valid JSON" in err and "no such file" in err and "--screenshot: expected one argument" in err
    assert not dialogs.calls and not (tmp_path / "o.png").exists()
