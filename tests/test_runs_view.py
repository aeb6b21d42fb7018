"""The Runs tab and File > Import in the real window: runs listed and sorted, two overlaid in one plot
with their differences, one reopened (design, settings, model), a model imported and opened."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import Qt  # noqa: E402

from designer.runs_view import COLUMNS  # noqa: E402
from engine import modelfile, runs  # noqa: E402
from engine.cli import main  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_cli import LENET, write_arch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "resources" / "sample_mnist"


@pytest.fixture(scope="module")
def _two_runs(tmp_path_factory) -> Path:
    """Two real CLI runs (lr 0.001 and 0.003) on the built-in digits, in a private store, made once:
    each test works on its own copy (the `store` fixture)."""
    root = tmp_path_factory.mktemp("two_runs")
    arch = write_arch(root / "lenet.json", LENET)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNN_DESIGNER_RUNS", str(root / "runs"))
        for lr, name in ((0.001, "slow"), (0.003, "fast")):
            assert main(["train", "--arch", str(arch), "--data", str(SAMPLE), "--epochs", "3", "--lr", str(lr),
                         "--batch-size", "32", "--out", str(root / f"{name}.cnnd")]) == 0
    return root


@pytest.fixture
def store(_two_runs, tmp_path, monkeypatch):
    """A copy of the two runs' store and models in tmp_path, the store private to the test (the records'
    model paths name the read-only originals)."""
    shutil.copytree(_two_runs, tmp_path, dirs_exist_ok=True)
    monkeypatch.setenv("CNN_DESIGNER_RUNS", str(tmp_path / "runs"))
    return runs.RunStore()


@pytest.fixture
def window(qtbot, monkeypatch, store):
    from designer.app import build_window

    w = build_window(estimate=False)
    qtbot.addWidget(w)
    monkeypatch.setattr(w, "maybe_save", lambda: True)
    yield w
    w.training_workspace.shutdown()


def test_runs_listed_sorted_overlaid_and_compared(window, store):
    view = window.runs_view
    view.refresh()
    assert view.proxy.rowCount() == 2
    ids = [view.proxy.index(r, 0).data() for r in range(2)]
    assert ids == ["2", "1"]  # newest first
    lr_col = [c[0] for c in COLUMNS].index("LR")
    view.table.sortByColumn(lr_col, Qt.SortOrder.AscendingOrder)
    assert [view.proxy.index(r, lr_col).data() for r in range(2)] == ["0.001", "0.003"]

    view.select_ids([1, 2])
    recs = store.list_runs().records
    assert sorted(view.curves) == [1, 2]
    for r in recs:  # each curve is that run's validation accuracy per epoch
        x, y = view.curves[r["id"]].getData()
        assert list(x) == [h["epoch"] for h in r["history"]]
        assert np.allclose(y, [h["val_accuracy"] for h in r["history"]])
    assert len(view.legend.items) == 2
    text = view.diff.toPlainText()
    assert "run 1 → run 2" in text and "lr: 0.001 → 0.003" in text
    view.metric.setCurrentIndex(2)  # training loss
    assert np.allclose(view.curves[1].getData()[1], [h["train_loss"] for h in recs[1]["history"]])
    assert not view.reopen_button.isEnabled()


def test_damaged_record_is_named_in_the_tab(window, store):
    import sqlite3

    with sqlite3.connect(store.path) as con:
        con.execute("UPDATE runs SET record = 'x' WHERE id = 1")
    window.runs_view.refresh()
    assert window.runs_view.proxy.rowCount() == 1
    assert "run 1 is damaged and was skipped" in window.runs_view.info.text()


def test_a_run_holding_integers_beyond_64_bits_is_listed_sorted_and_selected(window, store):
    """A setting typed as 10**20 on the command line is recorded as given; the tab used to crash at
    start converting that record for Qt."""
    import sqlite3

    with sqlite3.connect(store.path) as con:
        rec = json.loads(con.execute("SELECT record FROM runs WHERE id = 1").fetchone()[0])
        rec["hyperparameters"]["batch_size"] = 10**20
        rec.setdefault("settings", {})["early_stopping"] = 99999999999999999999
        con.execute("UPDATE runs SET record = ? WHERE id = 1", (json.dumps(rec),))
    view = window.runs_view
    view.refresh()
    assert view.proxy.rowCount() == 2 and not view.model.problems
    batch_col = [c[0] for c in COLUMNS].index("Batch")
    view.table.sortByColumn(batch_col, Qt.SortOrder.DescendingOrder)
    assert view.proxy.index(0, batch_col).data() == str(10**20)
    view.select_ids([1])
    assert [r["id"] for r in view.selected_records()] == [1]
    view.refresh()  # the selection survives a re-read
    assert [r["id"] for r in view.selected_records()] == [1]


def test_reopen_restores_design_settings_and_model(window, store, qtbot):
    from designer import runs_view

    rec = store.get(2)
    window.document.set_spec(window.document.spec.copy())  # whatever is open now gets replaced
    assert runs_view.reopen(window, rec)
    spec = window.document.spec
    assert [x.to_config() for x in spec.layers] == rec["architecture"]["layers"]
    assert spec.training["lr"] == 0.003 and spec.training["epochs"] == 3
    assert window.training_workspace.panel.settings()["lr"] == 0.003
    cur = window.training_workspace.session.current
    assert cur is not None and cur.history == modelfile.load(rec["model_path"]).history


def test_file_import_opens_the_model(window, tmp_path, monkeypatch):
    from PySide6.QtWidgets import QFileDialog, QInputDialog

    from engine.export import export_model

    tm = modelfile.load(tmp_path / "fast.cnnd")
    export_model(tm, "onnx", tmp_path / "fast.onnx")
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(tmp_path / "fast.onnx"), ""))
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(tmp_path / "imported.cnnd"), ""))
    monkeypatch.setattr(QInputDialog, "getText", lambda *a, **k: pytest.fail("the export names its classes"))
    assert window.import_action in window.file_menu.actions()
    window.import_action.trigger()
    back = modelfile.load(tmp_path / "imported.cnnd")
    assert back.spec == tm.spec and back.classes == tm.classes
    assert all(np.array_equal(back.state[k], tm.state[k]) for k in tm.state)
    assert window.document.spec == tm.spec
    assert window.training_workspace.session.current is not None
    assert json.dumps(window.training_workspace.session.current.classes) == json.dumps(tm.classes)


def test_continue_after_an_edit_keeps_compatible_layers_and_freezes(window, tmp_path, qtbot):
    """Open a trained LeNet-5, change its Dense 84 -> 64: continuing keeps the convolutions and the first
    Dense, says which layers start fresh, and frozen layers come out of the run bit-identical."""
    ws = window.training_workspace
    assert window.open_file(tmp_path / "fast.cnnd", ask=False)
    trained = modelfile.load(tmp_path / "fast.cnnd")
    cfg = window.document.spec.layers[9].to_config()
    window.document.set_layer_config(9, {**cfg, "units": 64})
    ws.sync_now()
    ws.refresh_state()
    assert ws.continue_box.isEnabled()
    ws.continue_box.setChecked(True)
    note = ws.keep_weights.note.text()
    assert "layers 0 Conv2D, 3 Conv2D, 7 Dense keep their weights; new weights for 9 Dense, 11 Dense" in note
    ws.keep_weights.freeze.setText("0-3")
    ws.panel.epochs.setValue(1)
    ws.data_panel.set_folder(SAMPLE)
    qtbot.waitUntil(lambda: ws.session.data is not None, timeout=30_000)
    with qtbot.waitSignal(ws.training_changed, timeout=30_000, check_params_cb=lambda on: on):
        ws.start_training()
    assert "Continuing: kept the weights of layer(s) 0 Conv2D, 3 Conv2D, 7 Dense" in ws.session.message[0]
    with qtbot.waitSignal(ws.training_changed, timeout=120_000):
        pass
    after = ws.session.current.model.state_dict()
    for k in ("layers.0.weight", "layers.0.bias", "layers.3.weight", "layers.3.bias"):
        assert np.array_equal(after[k], trained.state[k]), k
    assert not np.array_equal(after["layers.7.weight"], trained.state["layers.7.weight"])  # kept, then trained
    assert after["layers.9.weight"].shape == (64, 120)
    rec = runs.RunStore().list_runs().records[0]
    assert rec["source"] == "window" and rec["hyperparameters"]["freeze"] == [0, 3]
    assert rec["hyperparameters"]["init_from"].startswith("the window's model")
    ws.session.current.saved = True  # the store keeps a copy; no "not saved" question when the test closes


def test_runs_recorded_elsewhere_appear_while_the_tab_is_open(window, store, qtbot):
    """A run written by another process (the CLI) shows up by itself within a poll, the sort and the
    selection kept; the poll reads nothing while the store is unchanged and stops when the tab hides;
    a store damaged meanwhile is named in the tab."""
    from designer import runs_view

    view = window.runs_view
    window.show()
    qtbot.waitExposed(window)
    window.tabs.setCurrentWidget(view)
    assert view.poll_timer.isActive() and view.poll_timer.interval() == runs_view.POLL_MS
    lr_col = [c[0] for c in COLUMNS].index("LR")
    view.table.sortByColumn(lr_col, Qt.SortOrder.DescendingOrder)
    view.select_ids([1])
    reads = []
    view.model.refresh = (lambda original: lambda: (reads.append(1), original())[1])(view.model.refresh)
    assert not view.poll() and not view.poll() and reads == []  # unchanged: no database opened

    rec = store.get(2)  # as `cnn-designer train` in a terminal records it: its own connection
    rec.pop("id")
    rec["hyperparameters"]["lr"] = 0.002
    new_id = store.add(rec)
    qtbot.waitUntil(lambda: view.proxy.rowCount() == 3, timeout=3 * runs_view.POLL_MS + 2000)
    assert [view.proxy.index(r, lr_col).data() for r in range(3)] == ["0.003", "0.002", "0.001"]
    assert [r["id"] for r in view.selected_records()] == [1]
    assert new_id == 3 and "3 recorded run(s)" in view.info.text()
    n = len(reads)
    assert not view.poll() and len(reads) == n  # reading it did not make the store look changed

    window.tabs.setCurrentIndex(0)
    assert not view.poll_timer.isActive()
    window.tabs.setCurrentWidget(view)
    for suffix in ("-wal", "-shm"):
        Path(str(store.path) + suffix).unlink(missing_ok=True)
    store.path.write_bytes(b"this is not a database " * 200)
    assert view.poll()
    assert view.proxy.rowCount() == 0 and "is damaged" in view.info.text()


def _arrow_widths(header, section: int) -> list[int]:
    """Dark pixels per row of the sort arrow at the right end of `section`, top to bottom."""
    image = header.grab().toImage()
    right = header.sectionViewportPosition(section) + header.sectionSize(section)
    grey = np.array([[image.pixelColor(x, y).value() for x in range(right - 18, right - 3)]
                     for y in range(2, image.height() - 2)])
    return [int(n) for n in (grey < 160).sum(axis=1) if n]


def test_the_sort_arrow_points_the_way_the_list_runs(window, qtbot):
    """Newest run first (IDs falling): the arrow points down; smallest first: up (it pointed up both times
    the list ran newest first, Fusion's reading of Qt's sort indicator)."""
    view = window.runs_view
    window.resize(1280, 800)
    window.show()
    window.tabs.setCurrentWidget(view)
    view.refresh()
    qtbot.wait(50)
    header = view.table.horizontalHeader()
    assert [view.proxy.index(r, 0).data() for r in range(2)] == ["2", "1"]
    widths = _arrow_widths(header, 0)
    assert len(widths) >= 2 and widths[0] > widths[-1]  # wide end on top: pointing down
    view.table.sortByColumn(0, Qt.SortOrder.AscendingOrder)
    qtbot.wait(50)
    assert [view.proxy.index(r, 0).data() for r in range(2)] == ["1", "2"]
    widths = _arrow_widths(header, 0)
    assert len(widths) >= 2 and widths[0] < widths[-1]  # pointing up


def test_the_runs_list_has_room_at_1280x800(window, qtbot):
    """Two fifths of the tab's height for the list (it showed 4 rows above the plot at 1280x800)."""
    view = window.runs_view
    window.resize(1280, 800)
    window.show()
    window.tabs.setCurrentWidget(view)
    qtbot.wait(50)
    assert view.table.viewport().height() >= 7 * view.table.verticalHeader().defaultSectionSize()
    assert view.plot.height() >= 300  # the curves keep the larger share
