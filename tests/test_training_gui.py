"""The training workspace as a user drives it: load a folder, train, watch, pause, stop, close, predict."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QMimeData, QPoint, Qt, QUrl  # noqa: E402
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QUndoStack  # noqa: E402
from PySide6.QtWidgets import QApplication, QMainWindow, QMessageBox  # noqa: E402

from designer.document import Document, load_template  # noqa: E402
from designer.workspace import TrainingWorkspace  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "resources" / "sample_mnist"


@pytest.fixture
def make_workspace(qtbot):
    made = []

    def make(spec=None, folder=None, **settings):
        doc = Document(spec or load_template("lenet5"), data_dir=folder)
        if settings:
            s = dict(doc.spec.training)
            s.update(settings)
            doc.spec.training = s
        undo = QUndoStack()
        win = QMainWindow()
        ws = TrainingWorkspace(doc, undo)
        win.setCentralWidget(ws)
        win.resize(1280, 800)
        qtbot.addWidget(win)
        win.show()
        qtbot.waitUntil(lambda: ws.data_panel.folder is not None and not ws.data_panel.loading, timeout=30_000)
        made.append(ws)
        return ws, doc, undo, win

    yield make
    for ws in made:
        ws.shutdown()
        assert not ws.training


def train(qtbot, ws, timeout=60_000):
    with qtbot.waitSignal(ws.training_changed, timeout=5_000, check_params_cb=lambda on: on):
        qtbot.mouseClick(ws.panel.start_button, Qt.MouseButton.LeftButton)
    with qtbot.waitSignal(ws.training_changed, timeout=timeout, check_params_cb=lambda on: not on):
        pass


def test_train_sample_folder_curves_maps_results_predict_save(qtbot, make_workspace, tmp_path):
    ws, doc, _, win = make_workspace(epochs=2)
    assert ws.data_panel.table.rowCount() == 10
    assert "800 images in 10 classes" in ws.data_panel.status.text()
    assert "10 % of each class (80 images, stratified), training on 720" in ws.data_panel.status.text()
    assert ws.panel.start_button.isEnabled(), ws.panel.start_button.toolTip()
    assert ws.plots.point_count("batch") == 0 and ws.maps.redraws == 0  # laid out ahead, nothing drawn yet

    train(qtbot, ws)
    ws.plots.flush()
    assert ws.plots.point_count("batch") == 24  # 2 epochs x 12 batches of 64
    assert ws.plots.point_count("train_loss") == 2 and ws.plots.point_count("val_acc") == 2
    assert ws.maps.layer_count == 4 and ws.maps.redraws >= 1  # conv, pool, conv, pool
    assert ws.filters.redraws >= 1 and "6 filters" in ws.filters.title.text()
    assert "finished 2 epoch(s)" in ws.panel.message.text()
    assert "100%" in ws.panel.progress.text() or ws.panel.progress.value() == 1000
    assert ws.panel.values["epoch"].text() == "2 / 2"
    assert win.statusBar().currentMessage()

    # results: 80 validation images (10 % of each class) in the confusion matrix
    assert ws.results.confusion.sum() == 80 and ws.results.matrix.rowCount() == 10
    i = int(np.argmax(ws.results.confusion.sum(axis=0)))  # a column with predictions
    row = int(np.argmax(ws.results.confusion[:, i]))
    shown = ws.results.show_cell(row, i)
    assert len(shown) == ws.results.confusion[row, i] == ws.results.cell_images.count()
    wrong = int(ws.results.confusion.sum() - np.trace(ws.results.confusion))
    assert ws.results.mistakes.count() == min(wrong, 24)

    # the maps react to choosing another sample, on demand after training
    before = ws.maps.redraws
    ws.sample_spin.setValue(5)
    qtbot.waitUntil(lambda: ws.maps.redraws > before, timeout=5_000)
    # click layer 3's row of maps: it is shown large
    view = ws.maps._grids[2].view
    pos = ws.maps.overview.mapFromScene(view.sceneBoundingRect().center())
    with qtbot.waitSignal(ws.maps.layer_clicked, timeout=2_000) as clicked:
        qtbot.mouseClick(ws.maps.overview.viewport(), Qt.MouseButton.LeftButton, pos=pos)
    assert clicked.args == [3] and ws.maps.selected_layer == 3
    assert "16 maps of 10x10" in ws.maps._large_label.text

    # predict an image file
    image = sorted((SAMPLE / "7").glob("*.png"))[0]
    probs = ws.predict.predict_file(str(image))
    assert probs is not None and abs(probs.sum() - 1) < 1e-4
    assert ws.predict.answer.text().startswith(ws.session.current.classes[int(np.argmax(probs))])
    assert sum(not bar.isHidden() for _, bar in ws.predict.bar_rows) == 5
    assert ws.predict.examples.count() == 20  # two validation images per class to click on
    k = int(ws.predict.examples.item(0).data(Qt.ItemDataRole.UserRole))
    p0 = ws.predict.predict_example(k)
    assert p0 is not None and "labelled 0" in ws.predict.answer.text()
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    assert ws.predict.predict_file(str(bad)) is None
    assert "Cannot predict broken.png" in ws.predict.answer.text()

    # save, then open in a fresh workspace: same predictions, history shown
    out = ws.files.save(tmp_path / "digits.cnnd")
    ws2, doc2, undo2, _ = make_workspace(spec=load_template("mlp"))
    assert ws2.files.open(out)
    assert doc2.spec == doc.spec and undo2.count() == 1  # the design follows the model (undoable)
    assert np.allclose(ws2.predict.predict_file(str(image)), probs, atol=1e-6)
    assert ws2.plots.point_count("train_loss") == 2
    with qtbot.waitSignal(ws2.evaluated, timeout=30_000) as sig:
        assert ws2.evaluate_folder(SAMPLE)
    ev = sig.args[0]
    assert len(ev.labels) == 800 and ev.title == "folder"  # the whole folder it was asked about
    assert ws2.results.confusion.sum() == 800 and 0 <= ev.accuracy <= 1
    assert str(SAMPLE.resolve()) in ws2.panel.message.text() and "digits.cnnd" in ws2.panel.message.text()


def test_pause_resume_and_stop_within_one_batch(qtbot, make_workspace, mnist_folder):
    ws, *_ = make_workspace(folder=mnist_folder, epochs=30, batch_size=16)
    assert ws.data_panel.data.val is not None  # train/ and test/ are picked up as the split
    assert "validation: 300 images from test/" in ws.data_panel.status.text()
    qtbot.mouseClick(ws.panel.start_button, Qt.MouseButton.LeftButton)
    job = ws.jobs.run_job
    qtbot.waitUntil(lambda: job.batch_events >= 3, timeout=30_000)

    assert not ws.data_panel.choose_button.isEnabled()  # the folder stays put during a run
    qtbot.mouseClick(ws.panel.pause_button, Qt.MouseButton.LeftButton)
    assert ws.panel.state == "paused" and ws.panel.pause_button.text() == "Resume"
    # the batch under way when Pause was clicked finishes; then the loop parks (on a loaded machine a
    # batch can take longer than any fixed wait, so wait for the trainer to say it is parked)
    qtbot.waitUntil(lambda: job.trainer.status == "paused", timeout=30_000)
    frozen = job.batch_events
    qtbot.wait(500)
    assert job.batch_events == frozen and ws.training and job.trainer.status == "paused"

    qtbot.mouseClick(ws.panel.pause_button, Qt.MouseButton.LeftButton)
    assert ws.panel.state == "running"
    qtbot.waitUntil(lambda: job.batch_events > frozen + 2, timeout=30_000)

    with qtbot.waitSignal(ws.training_changed, timeout=30_000):
        t0 = time.monotonic()
        qtbot.mouseClick(ws.panel.stop_button, Qt.MouseButton.LeftButton)
        at_stop = job.batch_events
    assert job.batch_events <= at_stop + 1
    assert time.monotonic() - t0 < 10
    assert "stopped by request" in ws.panel.message.text()
    assert ws.session.current is not None and ws.save_button.isEnabled()  # the weights trained so far are kept
    assert ws.panel.start_button.isVisible() and not ws.panel.stop_button.isEnabled()
    assert ws.data_panel.choose_button.isEnabled() and "subfolder" in ws.data_panel.choose_button.toolTip()


def child_processes() -> set[int]:
    import os

    kids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z":
            kids.add(int(stat.parent.name))
    return kids


def test_close_during_training_asks_then_stops_cleanly(qtbot, make_workspace, monkeypatch):
    ws, _, _, win = make_workspace(epochs=50, batch_size=16)
    before = child_processes()
    qtbot.mouseClick(ws.panel.start_button, Qt.MouseButton.LeftButton)
    job, runner = ws.jobs.run_job, ws.jobs.run_runner
    qtbot.waitUntil(lambda: job.batch_events >= 2, timeout=30_000)

    during = child_processes() - before  # the engine's helper process, when it uses two
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.No)
    assert not ws.confirm_close(win)
    assert ws.training  # "No" keeps training

    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Yes)
    assert ws.confirm_close(win)
    assert ws.training  # asking stops nothing: the window's about_to_close does, after every question
    t0 = time.monotonic()
    ws.shutdown()
    assert time.monotonic() - t0 < 10
    assert not runner.thread.isRunning() and runner.thread.isFinished()  # no orphan thread
    assert not (child_processes() & during)  # nor a helper process of the engine's data parallelism
    win.close()


def test_unreadable_folder_gives_its_message(qtbot, make_workspace, tmp_path):
    ws, *_ = make_workspace()
    ws.data_panel.set_folder(tmp_path / "missing")
    qtbot.waitUntil(lambda: not ws.data_panel.loading, timeout=10_000)
    assert "data folder not found" in ws.data_panel.status.text()
    assert not ws.panel.start_button.isEnabled()
    assert "not found" in ws.panel.start_button.toolTip()

    (tmp_path / "one" / "cats").mkdir(parents=True)
    (tmp_path / "one" / "cats" / "a.png").write_bytes(b"")
    ws.data_panel.set_folder(tmp_path / "one")
    qtbot.waitUntil(lambda: not ws.data_panel.loading, timeout=10_000)
    assert "no usable images" in ws.data_panel.status.text() and "empty file" in ws.data_panel.status.text()


def test_loader_report_lists_skipped_files(qtbot, make_workspace, tmp_path):
    import shutil

    for digit in ("0", "1"):
        shutil.copytree(SAMPLE / digit, tmp_path / "d" / digit)
    (tmp_path / "d" / "1" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    (tmp_path / "d" / "1" / "notes.txt").write_text("hello")
    ws, *_ = make_workspace(folder=tmp_path / "d")
    report = ws.data_panel.report.toPlainText()
    assert "corrupt.png" in report and "notes.txt" in report and "skipped 2 file(s)" in report
    # LeNet-5 ends in Dense(10) but there are 2 classes: the one-click fix is offered
    assert any("10 units for 2 classes" in p.message for p in ws.data_panel.problems)
    assert ws.data_panel.problems[0][2] == ("field", 11, "units", 2)
    assert not ws.panel.start_button.isEnabled()


def test_one_click_fix_is_undoable(qtbot, make_workspace):
    spec = load_template("lenet5")
    spec.layers[-2].config["units"] = 5
    ws, doc, undo, _ = make_workspace(spec=spec)
    assert ws.data_panel.problem_box.isVisible()
    assert not ws.panel.start_button.isEnabled() and "5 units" in ws.panel.start_button.toolTip()
    ws.data_panel.apply_fix(ws.data_panel.problems[0][2])
    assert doc.spec.layers[-2].config["units"] == 10 and undo.count() == 1
    assert "Set units of layer 11 (Dense) to 10" in undo.undoText()
    qtbot.waitUntil(lambda: ws.panel.start_button.isEnabled(), timeout=2_000)  # follows the design shortly
    assert not ws.data_panel.problems
    undo.undo()
    assert doc.spec.layers[-2].config["units"] == 5
    qtbot.waitUntil(lambda: bool(ws.data_panel.problems), timeout=2_000)


def test_invalid_design_disables_start_with_reason(qtbot, make_workspace):
    ws, doc, *_ = make_workspace()
    doc.remove_layers(6)  # Flatten: Dense now receives maps
    qtbot.waitUntil(lambda: not ws.panel.start_button.isEnabled(), timeout=2_000)
    assert "add Flatten" in ws.panel.start_button.toolTip()


def test_dropping_a_folder_loads_it(qtbot, make_workspace, mnist_folder):
    ws, doc, *_ = make_workspace()
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(mnist_folder))])
    from designer.drops import DropRouter

    router = DropRouter(ws, ws.open_path)  # noqa: F841 - kept alive for the drop
    for cls in (QDragEnterEvent, QDropEvent):  # Qt delivers a drop only after its drag-enter
        ev = cls(QPoint(50, 50), Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton,
                 Qt.KeyboardModifier.NoModifier)
        QApplication.sendEvent(ws, ev)
        assert ev.isAccepted()
    qtbot.waitUntil(lambda: ws.data_panel.data is not None and ws.data_panel.data.val is not None, timeout=30_000)
    assert doc.data_dir == mnist_folder and len(ws.data_panel.data.train) == 1000


def test_nan_loss_is_a_clear_message_and_keeps_design_and_weights(qtbot, make_workspace):
    from engine.spec import Spec

    spec = Spec.from_dict({"format": "cnn-designer/1", "name": "linear", "input": {"channels": 1, "height": 28,
                                                                                   "width": 28},
                           "layers": [{"type": "Flatten"}, {"type": "Dense", "units": 64},
                                      {"type": "Dense", "units": 64}, {"type": "Dense", "units": 10},
                                      {"type": "Softmax"}]})
    ws, doc, *_ = make_workspace(spec=spec, epochs=3, optimizer="sgd", lr=10.0, batch_size=16)
    before = doc.spec.to_dict()
    train(qtbot, ws)
    text = ws.panel.message.text()
    assert "loss became NaN" in text and "lower the learning rate" in text and "kept" in text
    assert "b00020" in ws.panel.message.styleSheet()  # shown as an error
    assert doc.spec.to_dict() == before
    assert ws.session.current is not None
    assert all(np.isfinite(v).all() for v in ws.session.current.model.state_dict().values())  # last good weights


def test_colour_folder_offers_both_fixes(qtbot, make_workspace, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, colour in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
        (tmp_path / "c" / name).mkdir(parents=True)
        for k in range(12):
            img = np.clip(np.array(colour) + rng.integers(-20, 20, (28, 28, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(tmp_path / "c" / name / f"{k}.png")
    ws, doc, undo, _ = make_workspace(folder=tmp_path / "c")
    fixes = {p[2][0]: p for p in ws.data_panel.problems}
    assert set(fixes) == {"input_channels", "field"}
    assert "Colour" in fixes["input_channels"].message and "colour" in fixes["input_channels"].detail
    ws.data_panel.apply_fix(fixes["input_channels"][2])
    assert doc.spec.input_shape == (3, 28, 28)
    ws.sync_now()
    qtbot.waitUntil(lambda: ws.data_panel.data is not None and ws.data_panel.data.input_shape[0] == 3,
                    timeout=20_000)  # reloaded in colour
    ws.data_panel.apply_fix(ws.data_panel.problems[0][2])
    assert doc.spec.layers[-2].config["units"] == 2 and undo.count() == 2
    ws.sync_now()
    assert not ws.data_panel.problems and ws.panel.start_button.isEnabled()
    ws.panel.epochs.setValue(1)
    train(qtbot, ws)
    assert "colour (RGB)" in ws.filters.title.text()  # first-layer filters drawn in colour
    assert ws.filters._grid.canvas.shape[-1] == 3 and ws.session.current.spec.input_shape == (3, 28, 28)


def test_in_the_main_window_train_save_open_and_close(qtbot, tmp_path, monkeypatch):
    from designer.app import build_window

    window = build_window(None, estimate=False)
    qtbot.addWidget(window)
    window.show()
    ws = window.training_workspace
    assert window.tabs.tabText(window.tabs.indexOf(ws)) == "Train"
    ws.panel.epochs.setValue(1)
    with qtbot.waitSignal(ws.training_changed, timeout=30_000, check_params_cb=lambda on: on):
        window.train_action.trigger()  # switches to the tab, loads the sample folder, starts
    assert window.tabs.currentWidget() is ws
    with qtbot.waitSignal(ws.training_changed, timeout=60_000):
        pass
    assert ws.files.save_action.isEnabled() and ws.files.save_action in window.model_menu.actions()
    out = ws.files.save(tmp_path / "m.cnnd")
    first = ws.session.current.model

    assert window.open_file(out, ask=False)  # File > Open of a .cnnd: the workspace takes its weights
    cur = ws.session.current
    assert cur.model is not first and cur.path == out and cur.classes == [str(i) for i in range(10)]
    assert ws.panel.message.text().startswith("Opened m.cnnd: 10 classes, 1 epoch trained")

    ws.panel.epochs.setValue(50)
    with qtbot.waitSignal(ws.training_changed, timeout=30_000):
        window.train_action.trigger()
    runner = ws.jobs.run_runner
    qtbot.waitUntil(lambda: ws.jobs.run_job is not None and ws.jobs.run_job.batch_events >= 1, timeout=30_000)
    asked = []
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: asked.append(a) or QMessageBox.StandardButton.No)
    window.close()
    assert asked and window.isVisible() and ws.training  # "No": the window stays, training goes on
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Yes)
    monkeypatch.setattr(QMessageBox, "warning", lambda *a, **k: QMessageBox.StandardButton.Discard)
    window.close()
    assert not window.isVisible()
    assert not runner.thread.isRunning() and runner.thread.isFinished()


def test_continue_training_from_the_current_weights(qtbot, make_workspace):
    ws, *_ = make_workspace(epochs=1)
    assert not ws.continue_box.isEnabled()
    train(qtbot, ws)
    first = {k: v.copy() for k, v in ws.session.current.model.state_dict().items()}
    assert ws.continue_box.isEnabled()
    ws.continue_box.setChecked(True)
    train(qtbot, ws)
    assert [h["epoch"] for h in ws.session.current.history] == [1, 2]  # numbering continues
    assert ws.plots.point_count("train_loss") == 2 and ws.panel.values["epoch"].text() == "2 / 2"
    assert any(not np.array_equal(first[k], v) for k, v in ws.session.current.model.state_dict().items())


def test_all_convolutional_design_fits_by_its_last_conv(qtbot, make_workspace):
    spec = load_template("allconv_gap")
    ws, doc, *_ = make_workspace(spec=spec)
    assert not ws.data_panel.problems and ws.panel.start_button.isEnabled()  # GlobalAvgPool of 10 maps
    k = max(i for i, layer in enumerate(doc.layers) if layer.type == "Conv2D")
    doc.set_layer_config(k, {**doc.layers[k].to_config(), "filters": 7})
    ws.sync_now()
    (message, button, fix, detail), = ws.data_panel.problems
    assert "7 filters for 10 classes" in message and fix == ("field", k, "filters", 10)
    assert "7 filters but the folder has 10 classes" in detail and button == "Set filters to 10"
    ws.data_panel.apply_fix(fix)
    ws.sync_now()
    assert doc.layers[k].config["filters"] == 10 and not ws.data_panel.problems


def test_switching_folders_quickly_ends_with_the_last_one(qtbot, make_workspace, mnist_folder, tmp_path):
    ws, *_ = make_workspace()
    for folder in (mnist_folder, tmp_path / "missing", SAMPLE, mnist_folder):
        ws.data_panel.set_folder(folder)
    qtbot.waitUntil(lambda: not ws.data_panel.loading, timeout=30_000)
    qtbot.wait(100)  # any late notice of a replaced load would land now
    assert not ws.data_panel.loading and ws.data_panel.data is not None
    assert ws.data_panel.data.folder == mnist_folder and len(ws.data_panel.data.train) == 1000
    assert not ws.data_panel.progress.isVisible()


def test_dropping_a_folder_on_the_main_window(qtbot, mnist_folder):
    from designer.app import build_window

    window = build_window(None, estimate=False)
    qtbot.addWidget(window)
    window.show()
    ws = window.training_workspace
    assert window.tabs.currentIndex() == 0  # on the Design tab
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(mnist_folder))])
    for cls in (QDragEnterEvent, QDropEvent):
        ev = cls(QPoint(300, 300), Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton,
                 Qt.KeyboardModifier.NoModifier)
        QApplication.sendEvent(window, ev)
        assert ev.isAccepted()
    assert window.tabs.currentWidget() is ws
    qtbot.waitUntil(lambda: ws.data_panel.data is not None and not ws.data_panel.loading, timeout=30_000)
    assert ws.data_panel.data.folder == mnist_folder
    ws.shutdown()
    window.undo_stack.setClean()


def test_train_val_root_as_the_cli_reads_it(make_workspace, mnist_folder):
    """The same folder as test_cli.test_a_train_val_root_is_split_not_two_classes: ten digit classes
    from train/, validation from test/, and the panel says so."""
    ws, _, _, _ = make_workspace(folder=mnist_folder)
    assert "training images from train/, validation images from test/" in ws.data_panel.folder_label.text()
    data = ws.session.data
    assert data.classes == [str(d) for d in range(10)]
    assert len(data.train) == 1000 and len(data.val) == 300 and data.val_folder == mnist_folder / "test"
    assert ws.data_panel.table.rowCount() == 10


def test_every_job_report_reaches_the_tab_in_the_gui_thread(qtbot, make_workspace):
    """Jobs emit in their own thread; whatever touches a widget must run in the GUI thread. A lambda
    connected to a job's signal runs in the job's thread (it has no thread of its own), so each job
    signal is forwarded through designer.jobs.TrainTabJobs: here every report, and the evaluation's
    result, is seen in the GUI thread, and when `evaluated` arrives the next evaluation can start."""
    from PySide6.QtCore import QThread

    ws, *_ = make_workspace(epochs=1)
    gui = QThread.currentThread()
    seen: dict[str, list[bool]] = {}
    for name in ("batches", "epoch_done", "maps_ready", "warnings", "run_finished", "run_ended",
                 "evaluation_ended"):
        getattr(ws.jobs, name).connect(lambda *_a, n=name: seen.setdefault(n, []).append(
            QThread.currentThread() is gui))
    ws.session.evaluation_changed.connect(lambda _e: seen.setdefault("evaluation", []).append(
        QThread.currentThread() is gui))
    train(qtbot, ws)
    with qtbot.waitSignal(ws.evaluated, timeout=30_000):
        assert ws.evaluate_folder(SAMPLE)
    # the evaluation's thread has ended before it is reported: another one starts at once
    assert not ws.evaluating and ws.eval_button.isEnabled()
    with qtbot.waitSignal(ws.evaluated, timeout=30_000):
        assert ws.evaluate_folder(SAMPLE)
    assert {"batches", "epoch_done", "maps_ready", "run_finished", "run_ended", "evaluation_ended",
            "evaluation"} <= set(seen)
    assert all(all(v) for v in seen.values()), seen
