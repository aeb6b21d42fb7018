"""What a newcomer hit in the window (keys, stale read-outs, lost work, clipped text), each as a user meets it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QEvent, QObject, Qt  # noqa: E402
from PySide6.QtGui import QAction, QKeySequence  # noqa: E402
from PySide6.QtWidgets import QApplication, QLabel, QMessageBox  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "resources" / "sample_mnist"
Button = QMessageBox.StandardButton


@pytest.fixture
def app_window(qtbot, monkeypatch):
    """The full window (Design and Train tabs) as `cnn-designer` builds it; a dialog a test does not
    answer itself is recorded and answered "Discard"/"No" instead of blocking."""
    from designer.app import build_window

    for kind in ("warning", "question", "critical", "information"):
        monkeypatch.setattr(QMessageBox, kind, staticmethod(
            lambda *a, _k=kind, **k: print(f"unexpected {_k}: {a[1:3]}") or
            (Button.Discard if _k == "warning" else Button.No)))

    made = []

    def make(estimate: bool = False):
        w = build_window(None, estimate=estimate)
        qtbot.addWidget(w)
        w.show()
        qtbot.waitExposed(w)
        w.activateWindow()
        qtbot.waitUntil(lambda: QApplication.activeWindow() is w, timeout=5_000)  # shortcuts need it
        made.append(w)
        return w

    yield make
    for w in made:
        w.training_workspace.shutdown()
        w.totals.shutdown()
        w.training_workspace.session.current = None
        w.undo_stack.setClean()


def load_sample(qtbot, w):
    ws = w.training_workspace
    w.tabs.setCurrentWidget(ws)
    qtbot.waitUntil(lambda: ws.session.data is not None and not ws.data_panel.loading, timeout=30_000)
    return ws


def train(qtbot, ws, epochs=1, timeout=60_000):
    ws.panel.epochs.setValue(epochs)
    with qtbot.waitSignal(ws.training_changed, timeout=5_000, check_params_cb=lambda on: on):
        ws.start_training()
    with qtbot.waitSignal(ws.training_changed, timeout=timeout, check_params_cb=lambda on: not on):
        pass


def start_long_run(qtbot, ws, batches: int = 5) -> None:
    """Start a 40-epoch run (far longer than any test) and wait until `batches` batches ran."""
    ws.panel.epochs.setValue(40)
    ws.start_training()
    qtbot.waitUntil(lambda: ws.jobs.run_job is not None and ws.jobs.run_job.batch_events >= batches,
                    timeout=30_000)


# --- bugs ------------------------------------------------------------------------------------------------
def photo_folder(root: Path, classes=("forest", "sea", "sunset"), per_class: int = 12, size=(120, 90)) -> Path:
    """Colour photos-like images: a hue per class with noise and blobs."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        hue = np.array([(200, 90, 40), (40, 140, 60), (30, 90, 200), (150, 60, 160)][k % 4])
        for i in range(per_class):
            img = np.clip(hue + rng.normal(0, 30, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / name / f"img_{i:03d}.jpg", quality=90)
    return root


@pytest.mark.parametrize("size", [(1280, 800), (1366, 768)])
def test_warnings_wrap_and_the_class_table_and_report_share_the_room(app_window, qtbot, tmp_path, size):
    """Three problems and a report of skipped files on a laptop screen: the problems whole, the
    settings in sight, the table and the report at their least (they scroll inside); given more
    height, the report shows its lines up to its bound and the table every class."""
    w = app_window()
    w.resize(*size)  # not the size an earlier test's window left in the settings
    ws = w.training_workspace
    w.tabs.setCurrentWidget(ws)
    folder = photo_folder(tmp_path / "photos")
    for k in range(3):  # a report of several lines: the files it skipped
        (folder / "sea" / f"notes_{k}.txt").write_text("not an image")
    ws.data_panel.set_folder(folder)
    qtbot.waitUntil(lambda: ws.session.data is not None and not ws.data_panel.loading, timeout=30_000)
    qtbot.wait(50)
    labels = [lab for lab in ws.data_panel.problem_box.findChildren(QLabel) if lab.text()]
    assert len(labels) == 3  # colour thrown away, photos shrunk, and 10 units for 3 classes
    for lab in labels:
        assert lab.height() >= lab.heightForWidth(lab.width()), lab.text()  # every line shown
    from designer.data_panel import REPORT_LINES

    table, report = ws.data_panel.table, ws.data_panel.report
    lines = int(report.document().documentLayout().documentSize().height())  # wrapped lines
    assert lines >= 4 and "notes_2.txt" in report.toPlainText()
    qtbot.waitUntil(lambda: ws.left_scroll.verticalScrollBar().maximum() == 0, timeout=3_000)  # settings in sight
    assert table.viewport().height() >= table.rowHeight(0)
    assert report.viewport().height() >= REPORT_LINES[0] * report.fontMetrics().lineSpacing()

    w.resize(size[0], 1000)
    qtbot.waitUntil(lambda: table.viewport().height() >= 3 * table.rowHeight(0))  # all three classes
    # as many lines as it has, up to its bound (a long list scrolls inside the report)
    shown = min(lines, REPORT_LINES[1])
    qtbot.waitUntil(lambda: report.viewport().height() >= shown * report.fontMetrics().lineSpacing())


def test_redo_by_keyboard_and_no_shortcut_bound_twice(app_window, qtbot):
    w = app_window()
    keys = [k.toString() for a in w.findChildren(QAction) for k in a.shortcuts() if not k.isEmpty()]
    assert len(keys) == len(set(keys)), sorted(k for k in keys if keys.count(k) > 1)
    redo = [k.toString() for k in w.redo_action.shortcuts()]
    assert "Ctrl+Y" in redo and "Ctrl+Shift+Z" in redo
    n = len(w.document)
    w.select_layer(0)
    w.delete_selected()
    w.view.setFocus()
    for key, mods, expect in ((Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier, n),
                              (Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier,
                               n - 1),
                              (Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier, n),
                              (Qt.Key.Key_Y, Qt.KeyboardModifier.ControlModifier, n - 1)):
        qtbot.keyClick(w.view, key, mods)
        assert len(w.document) == expect, QKeySequence(mods.value | key.value).toString()


def test_after_stop_nothing_says_stopping_or_counts_down(app_window, qtbot):
    w = app_window()
    ws = load_sample(qtbot, w)
    start_long_run(qtbot, ws, 5)
    with qtbot.waitSignal(ws.training_changed, timeout=30_000):
        ws.run_display.stop()
        assert ws.panel.progress.format() == "stopping..."
    assert "stopping" not in ws.panel.progress.format() and "stopped" in ws.panel.progress.format()
    assert ws.panel.values["eta"].text() == "-"
    assert "stopped by request" in ws.panel.message.text()


def test_quitting_asks_about_a_trained_unsaved_model(app_window, qtbot, monkeypatch, tmp_path):
    w = app_window()
    ws = load_sample(qtbot, w)
    train(qtbot, ws)
    w.undo_stack.setClean()  # the design itself is saved: only the model is at stake
    asked = []
    monkeypatch.setattr(QMessageBox, "warning", lambda *a, **k: asked.append(a[2]) or Button.Cancel)
    w.close()
    assert w.isVisible() and asked and asked[0].startswith("The model trained here (LeNet-5, 1 epoch) has not been "
                                                           "saved.")  # not "...(1 epoch, not saved) has not been saved"
    out = tmp_path / "kept.cnnd"
    monkeypatch.setattr(QMessageBox, "warning", lambda *a, **k: Button.Save)
    monkeypatch.setattr("designer.model_files.QFileDialog.getSaveFileName", lambda *a, **k: (str(out), ""))
    w.close()
    assert not w.isVisible() and out.is_file()  # Save: saved, then closed


def test_no_epoch_benchmark_while_training(app_window, qtbot):
    w = app_window(estimate=True)
    ws = load_sample(qtbot, w)
    est = w.totals.estimator
    start_long_run(qtbot, ws, 2)
    qtbot.waitUntil(lambda: not est.measuring, timeout=10_000)  # one cut short at Start ends in a step
    w.document.set_layer_config(11, {**w.document.layers[11].to_config(), "units": 12})  # asks for a new figure
    qtbot.wait(1200)  # past the estimate's delay
    assert not est.measuring and ws.training
    assert "after training" in w.totals.epoch.value.text()
    with qtbot.waitSignal(ws.training_changed, timeout=30_000):
        ws.run_display.stop()
    qtbot.waitUntil(lambda: "s (" in w.totals.epoch.value.text() or "ms" in w.totals.epoch.value.text(),
                    timeout=30_000)  # measured again once the run is over


def test_eta_comes_from_batches_after_warm_up(qtbot, monkeypatch):
    from designer import worker
    from engine.training import BatchEnd, Started

    monkeypatch.setattr(worker, "EMIT_INTERVAL", 0.0)
    epochs, batches = 2, 20
    events = [Started(epochs, batches, 1280, 0, ["a", "b"], [])]
    elapsed = 0.0
    for e in range(1, epochs + 1):
        for b in range(1, batches + 1):
            elapsed += 10.0 if (e, b) == (1, 1) else 0.1  # the first batch pays for warming up
            step = (e - 1) * batches + b
            naive = elapsed / step * (epochs * batches - step)  # time so far per batch, warm-up included
            events.append(BatchEnd(e, epochs, b, batches, 0.5, 0.5, 0.5, 0.5, 100.0, elapsed, naive, 1e-3))

    class FakeTrainer:
        model = None

        def events(self):
            yield from events

    job = worker.TrainJob(worker.TrainRequest(spec=None, train=None, val=None, settings={}))
    seen = []
    job.batches.connect(lambda _points, progress: seen.append(progress))
    job._run(FakeTrainer())
    at = {(p["epoch"], p["batch"]): p["eta"] for p in seen}
    assert at[(1, 1)] is None  # nothing measured yet: "estimating..."
    assert at[(1, 10)] == pytest.approx(0.1 * 30, rel=1e-6)  # not the 32 s the warm-up would suggest
    assert at[(2, 20)] == pytest.approx(0.0)


def test_train_tab_drops_what_belongs_to_another_model_or_design(app_window, qtbot, tmp_path):
    w = app_window()
    ws = load_sample(qtbot, w)
    train(qtbot, ws)
    assert ws.results.confusion.sum() == 80 and ws.maps.redraws >= 1
    assert "LeNet-5 trained here" in ws.model_label.text()
    out = ws.files.save(tmp_path / "lenet.cnnd")

    # another template: LeNet's maps go, and the tab says its model is not this design
    w.new_design("vgg_small")
    ws.sync_now()
    assert ws.maps.layer_count == 6 and "not the design on the Design tab" in ws.model_label.text()
    assert "lenet.cnnd" in ws.model_label.text()
    redraws = ws.maps.redraws
    ws.sample_spin.setValue(3)
    qtbot.wait(600)
    assert ws.maps.redraws == redraws  # LeNet's weights are not drawn as this design's maps

    # opening a model: the previous run's confusion matrix goes
    assert ws.files.open(out)
    assert ws.results.confusion.size == 0 and ws.results.matrix.rowCount() == 0
    assert ws.session.matches_design() and "not the design" not in ws.model_label.text()

    # an error about a folder goes when another folder is loaded
    (tmp_path / "other" / "cats").mkdir(parents=True)
    (tmp_path / "other" / "dogs").mkdir(parents=True)
    src = sorted((SAMPLE / "0").glob("*.png"))
    for k in range(3):
        for name in ("cats", "dogs"):
            (tmp_path / "other" / name / f"{k}.png").write_bytes(src[k].read_bytes())
    assert ws.evaluate_folder(tmp_path / "other")
    qtbot.waitUntil(lambda: not ws.evaluating, timeout=30_000)
    assert "cats" in ws.panel.message.text() and "b00020" in ws.panel.message.styleSheet()
    ws.data_panel.set_folder(SAMPLE)
    qtbot.waitUntil(lambda: ws.session.data is not None, timeout=30_000)
    assert "cats" not in ws.panel.message.text()


def test_editing_the_design_during_training_says_what_the_run_uses(app_window, qtbot):
    w = app_window()
    ws = load_sample(qtbot, w)
    ws.panel.epochs.setValue(40)
    ws.start_training()
    assert "as it was at Start" in ws.model_label.text() and "edited since" not in ws.model_label.text()
    assert not w.design_note.isHidden() and "next run" in w.design_note.text()  # said on the Design tab too
    w.document.set_layer_config(11, {**w.document.layers[11].to_config(), "units": 12})
    assert "edited since" in ws.model_label.text() and "next run" in ws.model_label.text()
    with qtbot.waitSignal(ws.training_changed, timeout=30_000):
        ws.run_display.stop()
    assert w.design_note.isHidden()


def test_shortcut_reaches_the_window_from_a_spin_box(app_window, qtbot):
    w = app_window()
    called = []
    w.set_export_handler(lambda: called.append("export"))
    w.select_layer(0)
    editor = w.properties.first_editor()

    class ClaimsCtrlE(QObject):
        """What a line edit does on X11, where Ctrl+E is MoveToEndOfLine (the offscreen test
        platform's key bindings leave it out)."""

        def eventFilter(self, _obj, event):  # noqa: N802
            if event.type() == QEvent.Type.ShortcutOverride and event.key() == Qt.Key.Key_E:
                event.accept()
            return False

    claims = ClaimsCtrlE(editor)
    editor.installEventFilter(claims)
    editor.setFocus()
    qtbot.waitUntil(lambda: QApplication.focusWidget() is editor, timeout=2_000)
    qtbot.keyClick(editor, Qt.Key.Key_E, Qt.KeyboardModifier.ControlModifier)
    assert called == ["export"]


def test_status_line_says_when_a_valid_design_is_not_a_classifier(app_window, qtbot):
    w = app_window()
    assert "✓ Valid design: 13 layers" in w.problem_label.text()
    w.new_design(None)
    from designer.document import new_layer

    w.document.insert_layers(0, [new_layer("Conv2D")])
    text = w.problem_label.text()
    assert "1 layer," in text and "not a classifier yet" in text and "Flatten and Dense" in text
    assert "✓ Valid design" not in text


def test_evaluate_asks_for_a_folder_and_remembers_it(app_window, qtbot, monkeypatch, tmp_path):
    w = app_window()
    ws = load_sample(qtbot, w)
    train(qtbot, ws)
    starts = []

    def ask(_parent, _caption, start):
        starts.append(start)
        return str(SAMPLE)

    monkeypatch.setattr("designer.evaluation.QFileDialog.getExistingDirectory", ask)
    with qtbot.waitSignal(ws.evaluated, timeout=30_000) as sig:
        ws.eval_button.click()
    ev = sig.args[0]
    assert len(ev.labels) == 800 and str(SAMPLE.resolve()) in ev.source
    assert "Evaluated LeNet-5 on" in ws.panel.message.text() and "800 images" in ws.panel.message.text()
    with qtbot.waitSignal(ws.evaluated, timeout=30_000):
        ws.eval_button.click()
    assert starts[1] == str(SAMPLE)  # the dialog starts at the folder evaluated last


def test_mistakes_name_their_file_and_open_in_predict(app_window, qtbot):
    w = app_window()
    ws = load_sample(qtbot, w)
    train(qtbot, ws)
    item = ws.results.mistakes.item(0)
    assert item is not None
    k = int(item.data(Qt.ItemDataRole.UserRole))
    path = ws.results.paths[k]
    assert Path(path).name in item.text() and Path(path).is_file()
    ws.results.mistakes.itemDoubleClicked.emit(item)
    assert ws.tabs.currentWidget() is ws.predict and Path(path).name in ws.predict.answer.text()


def test_clicking_a_layer_name_enlarges_its_maps(app_window, qtbot):
    w = app_window()
    ws = load_sample(qtbot, w)
    train(qtbot, ws)
    label = ws.maps._labels[2]
    view = ws.maps.overview
    pos = view.mapFromScene(label.sceneBoundingRect().center())
    with qtbot.waitSignal(ws.maps.layer_clicked, timeout=2_000) as clicked:
        qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, pos=pos)
    assert clicked.args == [3] and "16 maps of 10x10" in ws.maps._large_label.text


def test_help_menu_getting_started_shortcuts_docs_and_version(app_window, qtbot):
    from engine import __version__

    w = app_window()
    texts = [a.text().replace("&", "") for a in w.help_menu.actions()]
    assert texts == ["Getting started", "Keyboard shortcuts", "Documentation", "About CNN Designer"]
    w.help_actions["start"].trigger()
    page = w._help.text.toPlainText()
    assert all(step in page for step in ("Design.", "Data.", "Train.", "Use the model."))
    w._help.close()
    w.help_actions["keys"].trigger()
    keys = w._help.text.toPlainText()
    assert "Export" in keys and "Ctrl+E" in keys and "Ctrl+Y" in keys and "Ctrl+Shift+Z" in keys
    assert ", Undo" not in keys and ", Redo" not in keys  # not "Undo: Ctrl+Z, Undo"
    assert "Save trained model" not in keys or "Ctrl" in keys  # only actions with keys are listed
    w._help.close()
    w.help_actions["docs"].trigger()
    docs = w._help.text.toPlainText()
    assert "docs/format.md" in docs and "docs/cli.md" in docs
    for line in docs.splitlines():
        if line.strip().startswith("docs/"):
            assert (ROOT / line.strip().split(":")[0]).is_file(), line  # every document named exists
    w._help.close()
    w.help_actions["about"].trigger()
    assert f"CNN Designer {__version__}" in w._help.text.toPlainText()
    w._help.close()


def test_photos_get_a_one_click_larger_input(app_window, qtbot, tmp_path):
    w = app_window()
    ws = w.training_workspace
    w.tabs.setCurrentWidget(ws)
    qtbot.waitUntil(lambda: ws.session.data is not None and not ws.data_panel.loading, timeout=30_000)
    assert not [p for p in ws.data_panel.problems if p[2] and p[2][0] == "input_size"]  # digits: 28x28 is right
    ws.data_panel.set_folder(photo_folder(tmp_path / "photos"))
    qtbot.waitUntil(lambda: ws.session.data is not None and not ws.data_panel.loading, timeout=30_000)
    (msg, button, fix, detail), = [p for p in ws.data_panel.problems if p[2] and p[2][0] == "input_size"]
    assert "Photos (about 120x90) shrunk to 28x28" in msg and button == "Use 64x64" and "loses" in detail
    ws.data_panel.apply_fix(fix)
    assert w.document.spec.input_shape == (1, 64, 64) and "64x64" in w.undo_stack.undoText()
    ws.sync_now()
    qtbot.waitUntil(lambda: ws.session.data is not None and not ws.data_panel.loading, timeout=30_000)
    assert ws.session.data.input_shape == (1, 64, 64)  # reloaded at the new size
    assert not [p for p in ws.data_panel.problems if p[2] and p[2][0] == "input_size"]


def test_an_empty_class_folder_can_be_skipped(app_window, qtbot, tmp_path):
    w = app_window()
    ws = w.training_workspace
    w.tabs.setCurrentWidget(ws)
    root = photo_folder(tmp_path / "photos")
    (root / "zebra").mkdir()
    (root / "zebra" / "notes.txt").write_text("no images here")
    ws.data_panel.set_folder(root)
    qtbot.waitUntil(lambda: not ws.data_panel.loading and ws.data_panel.skip_button.isVisible(), timeout=30_000)
    assert ws.session.data is None and "zebra has no images" in ws.data_panel.status.text()
    assert "zebra" in ws.data_panel.skip_button.text()
    qtbot.mouseClick(ws.data_panel.skip_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: ws.session.data is not None and not ws.data_panel.loading, timeout=30_000)
    assert ws.session.data.classes == ["forest", "sea", "sunset"] and not ws.data_panel.skip_button.isVisible()
    assert "zebra has no images: skipped" in ws.data_panel.report.toPlainText()


# --- training options (lr schedule, early stopping, keep best, flips) reach the run --------------------------
def _watch_training(monkeypatch):
    """Every Trainer the window builds and every augmented batch it trains on, as the engine sees them."""
    import engine.training as training

    trainers, batches = [], []
    real_augment = training.augment_batch

    class Watched(training.Trainer):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            trainers.append(self)

    def augment(x, rng, aug):
        out = real_augment(x, rng, aug)
        batches.append((aug, x.copy(), out.copy()))
        return out

    monkeypatch.setattr(training, "Trainer", Watched)
    monkeypatch.setattr(training, "augment_batch", augment)
    return trainers, batches


def test_training_options_in_the_form_are_what_the_run_uses(app_window, qtbot, monkeypatch):
    from engine.runs import RunStore

    trainers, _ = _watch_training(monkeypatch)
    w = app_window()
    ws = load_sample(qtbot, w)
    p = ws.panel
    p.schedule.setCurrentIndex(p.schedule.findData("cosine"))
    p.early_stopping.setValue(4)
    p.keep_best.setChecked(True)
    p.hflip.setChecked(True)
    train(qtbot, ws, epochs=3)

    assert len(trainers) == 1
    cfg = trainers[0].config
    assert (cfg.schedule, cfg.early_stopping, cfg.keep_best, cfg.aug_hflip) == ("cosine", 4, True, True)
    assert cfg.augmentation() is not None and cfg.augmentation().hflip
    # the schedule is applied epoch by epoch, not only stored: the rate falls along the cosine
    lrs = [h["lr"] for h in trainers[0].history]
    assert lrs == pytest.approx([cfg.lr_at(e) for e in (1, 2, 3)])
    assert lrs[0] > lrs[1] > lrs[2]
    # ...and the run's record (Runs view, reopen) says so
    hp = RunStore().list_runs().records[0]["hyperparameters"]  # newest first: this run
    assert (hp["schedule"], hp["early_stopping"], hp["keep_best"], hp["aug_hflip"]) == ("cosine", 4, True, True)


def test_horizontal_flips_mirror_training_images(app_window, qtbot, monkeypatch):
    _, batches = _watch_training(monkeypatch)
    w = app_window()
    ws = load_sample(qtbot, w)
    ws.panel.hflip.setChecked(True)  # flips alone: no shifts or rotations
    train(qtbot, ws, epochs=1)

    assert batches, "with flips on the trainer must augment its batches"
    mirrored = kept = 0
    for aug, x, out in batches:
        assert aug.hflip and aug.shift == 0 and aug.rotate == 0
        for a, b in zip(x, out, strict=True):
            if np.array_equal(a, a[..., ::-1]):  # a symmetric image says nothing
                continue
            assert np.array_equal(b, a) or np.array_equal(b, a[..., ::-1]), "a flip only, nothing else"
            mirrored += np.array_equal(b, a[..., ::-1])
            kept += np.array_equal(b, a)
    assert mirrored > 0 and kept > 0  # about half are mirrored


def test_cancel_to_the_unsaved_design_question_leaves_training_running(app_window, qtbot, monkeypatch):
    """Closing asks about the run, then about the unsaved design; a Cancel to the second keeps the
    window open with the run still going (it used to be stopped by the first answer already)."""
    from PySide6.QtGui import QUndoCommand

    w = app_window()
    ws = load_sample(qtbot, w)
    ws.panel.epochs.setValue(50)
    with qtbot.waitSignal(ws.training_changed, timeout=5_000, check_params_cb=lambda on: on):
        ws.start_training()
    w.undo_stack.push(QUndoCommand("an edit"))  # the design now has unsaved changes
    asked = []
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: asked.append(a[1]) or Button.Yes)
    monkeypatch.setattr(QMessageBox, "warning", lambda *a, **k: asked.append(a[2]) or Button.Cancel)
    assert not w.close()
    assert asked[0] == "Training is running" and "unsaved changes" in asked[1]
    assert w.isVisible() and ws.training and ws.jobs.run_runner.running()
    job = ws.jobs.run_job
    seen = job.batch_events
    qtbot.waitUntil(lambda: job.batch_events > seen, timeout=30_000)  # still learning

    monkeypatch.setattr(QMessageBox, "warning", lambda *a, **k: Button.Discard)
    assert w.close()
    assert not ws.training


# --- a second newcomer's look (after the Train tab was split up) ---------------------------------------------
def other_model(path: Path, classes: list[str]) -> Path:
    """A LeNet-5 .cnnd (random weights) for classes the sample's digits are not."""
    from designer.document import load_template
    from engine import modelfile
    from engine.data import Preprocessing
    from engine.model import Model
    from engine.trained import TrainedModel

    spec = load_template("lenet5")
    tm = TrainedModel(spec, Model(spec).state_dict(), classes, Preprocessing.for_input(spec.input_shape),
                      history=[{"epoch": 1, "train_loss": 2.0, "train_accuracy": 0.2}])
    modelfile.save(path, tm)
    return path


def test_opening_another_model_drops_the_last_runs_read_out_and_prediction(app_window, qtbot, tmp_path):
    w = app_window()
    ws = load_sample(qtbot, w)
    train(qtbot, ws)
    assert ws.panel.progress.format() == "finished" and ws.panel.values["epoch"].text() == "1 / 1"
    image = sorted((SAMPLE / "3").glob("*.png"))[0]
    ws.eval_pages.predict_path(image)
    assert ws.predict.answer.text().split()[0] in [str(d) for d in range(10)]

    letters = [chr(ord("a") + k) for k in range(10)]
    assert ws.files.open(other_model(tmp_path / "letters.cnnd", letters))
    # the run's figures were about the model trained here, not this one
    assert ws.panel.progress.format() == "idle"
    assert all(v.text() == "-" for v in ws.panel.values.values())
    assert "Opened letters.cnnd" in ws.panel.message.text()  # the message about the new model stays
    # Predict answers with the model now open (same image, its classes), not the old model's digits
    answer = ws.predict.answer.text()
    assert answer.split()[0] in letters and image.name in answer
    assert {lab.text() for lab, _ in ws.predict.bar_rows if lab.isVisibleTo(ws.predict)} <= set(letters)
    # and Results says how to get results for it
    assert "No results for letters.cnnd yet" in ws.results.summary.text()
    assert "Evaluate on folder" in ws.results.summary.text()


def test_a_model_opened_first_thing_says_how_to_get_its_results(app_window, qtbot, tmp_path):
    w = app_window()
    ws = load_sample(qtbot, w)
    assert "when training finishes" in ws.results.summary.text()
    assert ws.files.open(other_model(tmp_path / "first.cnnd", [str(d) for d in range(10)]))
    assert "No results for first.cnnd yet" in ws.results.summary.text()


def test_a_validation_image_on_show_goes_when_the_model_changes(app_window, qtbot, tmp_path):
    w = app_window()
    ws = load_sample(qtbot, w)
    train(qtbot, ws)
    ws.predict.predict_example(0)
    assert "validation image 0" in ws.predict.answer.text()
    ws.files.open(other_model(tmp_path / "other.cnnd", [f"c{k}" for k in range(10)]))
    assert ws.predict.answer.text() == "" and ws.predict.shown is None
    assert not any(lab.isVisibleTo(ws.predict) for lab, _ in ws.predict.bar_rows)


def test_a_folder_with_other_classes_is_not_called_an_edited_design(app_window, qtbot, tmp_path):
    w = app_window()
    ws = load_sample(qtbot, w)
    train(qtbot, ws)
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    for digit, name in enumerate(names):
        (tmp_path / "words" / name).mkdir(parents=True)
        for src in sorted((SAMPLE / str(digit)).glob("*.png"))[:4]:
            (tmp_path / "words" / name / src.name).write_bytes(src.read_bytes())
    ws.data_panel.set_folder(tmp_path / "words")
    qtbot.waitUntil(lambda: ws.session.data is not None and not ws.data_panel.loading, timeout=30_000)
    note = ws.keep_weights.note.text()
    assert ws.session.matches_design() and ws.continue_box.isEnabled()
    assert "design was edited" not in note
    assert "classes (eight, five, four, nine, ...) are not the model's (0, 1, 2, 3, ...)" in note


def _fits(label, view) -> bool:
    """The whole text of a pyqtgraph label lies inside its view (not cut off at the edge)."""
    rect = view.mapFromScene(label.item.sceneBoundingRect()).boundingRect()
    return view.viewport().rect().contains(rect)


def test_legend_caption_and_figures_of_a_run_fit_a_small_window(app_window, qtbot):
    w = app_window()
    w.resize(1024, 700)
    ws = load_sample(qtbot, w)
    train(qtbot, ws)
    qtbot.wait(100)
    loss, acc = ws.plots.loss_plot, ws.plots.acc_plot
    assert ws.maps._large_label is not None
    for label, view in ((loss.getPlotItem().titleLabel, loss), (acc.getPlotItem().titleLabel, acc),
                        (ws.maps._large_label, ws.maps.large)):
        assert _fits(label, view), label.text
    assert "validation" in loss.getPlotItem().titleLabel.text  # wrapped, not shortened
    for key, label in ws.panel.values.items():  # "26.2 %, loss 2.257" was cut to "26.2 %, loss 2.2"
        needed = label.heightForWidth(label.width()) if label.wordWrap() else label.fontMetrics().height()
        fits = label.fontMetrics().horizontalAdvance(label.text()) <= label.width() or \
            (label.wordWrap() and label.height() >= needed)
        assert fits, f"{key}: {label.text()!r} in {label.width()} px"
    w.resize(1280, 800)  # room again: one line
    qtbot.wait(100)
    assert loss.getPlotItem().titleLabel.item.boundingRect().height() < 2 * loss.fontMetrics().height()


def test_layer_names_stay_readable_in_a_small_window(app_window, qtbot):
    from PySide6.QtGui import QFont, QFontMetrics

    from designer.layer_list_model import IsInputRole, SummaryRole
    from designer.stack_view import columns

    w = app_window()
    w.resize(1024, 700)
    qtbot.wait(100)
    view, fm = w.view, w.view.fontMetrics()
    for row in range(w.model.rowCount()):
        ix = w.model.index(row, 0)
        summary = ix.data(SummaryRole) or ""
        room = columns(view.visualRect(ix), fm)["summary"].width()
        font = QFont(view.font())
        font.setBold(bool(ix.data(IsInputRole)))
        assert room >= QFontMetrics(font).horizontalAdvance(summary), f"{summary!r} is cut to {room} px"
    assert w.palette.width() >= w.palette.minimumWidth() and w.width() <= 1024


def test_a_paused_run_does_not_show_a_countdown(app_window, qtbot):
    w = app_window()
    ws = load_sample(qtbot, w)
    start_long_run(qtbot, ws, 5)
    qtbot.waitUntil(lambda: ws.panel.values["eta"].text().endswith("s"), timeout=10_000)
    ws.run_display.pause()
    qtbot.waitUntil(lambda: ws.session.run_state == "paused", timeout=10_000)
    qtbot.wait(300)  # batches still queued when Pause was pressed have arrived
    assert ws.panel.values["eta"].text() == "paused" and ws.panel.progress.format() == "paused at %p%"
    ws.run_display.resume()
    qtbot.waitUntil(lambda: ws.panel.values["eta"].text() != "paused", timeout=30_000)
    with qtbot.waitSignal(ws.training_changed, timeout=30_000):
        ws.run_display.stop()


def test_evaluating_a_folder_with_an_empty_class_scores_the_rest_and_says_so(app_window, qtbot, tmp_path):
    w = app_window()
    ws = load_sample(qtbot, w)
    train(qtbot, ws)
    root = tmp_path / "messy"
    for digit in range(10):
        (root / str(digit)).mkdir(parents=True)
        if digit != 9:  # the 9s folder stays empty
            for src in sorted((SAMPLE / str(digit)).glob("*.png"))[:3]:
                (root / str(digit) / src.name).write_bytes(src.read_bytes())
    (root / "3" / "notes.txt").write_text("not an image")
    with qtbot.waitSignal(ws.evaluated, timeout=30_000) as sig:
        assert ws.evaluate_folder(root)
    assert len(sig.args[0].labels) == 27
    msg = ws.panel.message.text()
    assert "27 images" in msg and msg.endswith("; no images of class 9; 1 file skipped (not readable images)"), msg


def test_stopping_mid_epoch_keeps_the_last_validation_figure(app_window, qtbot):
    """The part of an epoch a Stop cuts short has no validation; the read-out used to fall back to "-"."""
    w = app_window()
    ws = load_sample(qtbot, w)
    ws.panel.epochs.setValue(40)
    ws.start_training()
    val = ws.panel.values["val"]
    qtbot.waitUntil(lambda: val.text() != "-", timeout=30_000)  # an epoch validated
    job = ws.jobs.run_job
    seen = job.batch_events
    qtbot.waitUntil(lambda: job.batch_events >= seen + 3, timeout=30_000)  # into the next epoch
    shown = val.text()
    with qtbot.waitSignal(ws.training_changed, timeout=30_000, check_params_cb=lambda on: not on):
        ws.run_display.stop()
    assert "part of the next" in ws.panel.message.text()  # it stopped mid-epoch
    assert val.text() != "-" and "%" in val.text(), (shown, val.text())


def test_no_setting_can_change_under_a_running_run(app_window, qtbot):
    """Every setting of the Train tab, the Freeze field and the Health tab's fixes among them, is
    disabled while a run trains with it, and usable again after Stop."""
    from engine.health import HealthWarning

    w = app_window()
    ws = load_sample(qtbot, w)
    p, d, kw = ws.panel, ws.data_panel, ws.keep_weights
    train(qtbot, ws)  # a model to continue from: Continue and Freeze are live
    fix = HealthWarning("overfitting", "the learning rate is too high", {"lr": 0.001})
    ws.health.show_warnings([fix])
    settings = [p.epochs, p.batch_size, p.optimizer, p.lr, p.find_lr_button, p.schedule, p.augment, p.hflip,
                p.val_split, p.seed, p.early_stopping, p.keep_best, p.check_button, kw.continue_box, kw.freeze,
                d.choose_button, d.reload_button, ws.open_button, ws.eval_button]
    assert all(x.isEnabled() for x in settings + ws.health.fix_buttons())

    start_long_run(qtbot, ws, 3)
    assert [x for x in settings if x.isEnabled()] == []
    assert "Not while training" in kw.freeze.toolTip()
    assert not kw.freeze_label.isEnabled()  # the whole row greys out
    ws.health.show_warnings([fix])  # a warning that arrives during the run comes with its fix disabled
    assert [b.isEnabled() for b in ws.health.fix_buttons()] == [False]

    with qtbot.waitSignal(ws.training_changed, timeout=30_000, check_params_cb=lambda on: not on):
        ws.run_display.stop()
    assert [x for x in settings if not x.isEnabled()] == []
    assert all(b.isEnabled() for b in ws.health.fix_buttons()) and "0-3" in kw.freeze.placeholderText()


def test_a_stop_mid_epoch_is_counted_the_same_everywhere(app_window, qtbot, tmp_path, monkeypatch):
    """Stop in the middle of an epoch: the model line, the message, the read-out, the Runs tab and
    the saved file all say N whole epochs and one cut short (the model line used to say N + 1
    epochs beside "after N complete epoch(s)", and the read-out the epoch before)."""
    import re

    from designer.runs_view import COLUMNS
    from engine import modelfile

    monkeypatch.setattr("designer.worker.EMIT_INTERVAL", 3600.0)  # progress sent at the epochs' ends only
    w = app_window()
    ws = load_sample(qtbot, w)
    ws.panel.epochs.setValue(40)
    ws.start_training()
    job = ws.jobs.run_job
    qtbot.waitUntil(lambda: ws.panel.values["val"].text() != "-", timeout=30_000)  # an epoch validated
    for _ in range(20):  # pause inside an epoch (12 batches each), then stop there
        ws.run_display.pause()
        qtbot.waitUntil(lambda: job.trainer.status == "paused", timeout=30_000)
        if job.batch_events % 12:
            break
        ws.run_display.resume()
        qtbot.waitUntil(lambda: job.trainer.status != "paused", timeout=30_000)
    with qtbot.waitSignal(ws.training_changed, timeout=30_000, check_params_cb=lambda on: not on):
        ws.run_display.stop()
    history = ws.session.current.history
    full = len(history) - 1
    assert full >= 1 and history[-1]["complete"] is False and all(h.get("complete", True) for h in history[:-1])
    assert f"after {full} complete epoch(s) and part of the next" in ws.panel.message.text()
    assert f"({full} full epoch{'s' if full > 1 else ''} + 1 cut short, not saved)" in ws.model_label.text()
    assert ws.panel.values["epoch"].text() == f"{full + 1} / 40"  # the epoch that was cut short
    batch = int(re.match(r"(\d+) / 12", ws.panel.values["batch"].text()).group(1))
    assert 1 <= batch < 12

    view = w.runs_view
    view.model.refresh()
    record = max(view.model.records, key=lambda r: r["id"])
    assert record["epochs"] == full + 1  # the store counts the entries of the history (docs/runs.md)
    column = [c[0] for c in COLUMNS].index("Epochs")
    row = view.model.records.index(record)
    assert view.model.data(view.model.index(row, column)) == f"{full} + 1 cut short"
    assert view.model.data(view.model.index(row, column), Qt.ItemDataRole.UserRole) == full + 0.5

    path = ws.files.save(tmp_path / "stopped.cnnd")
    assert [h.get("complete", True) for h in modelfile.load(path).history] == [True] * full + [False]
    assert f"{full} full epoch" in ws.model_label.text() and "stopped.cnnd" in ws.model_label.text()
