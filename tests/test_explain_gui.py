"""The window's "why" tools as a user drives them: heat maps in Predict and on the mistakes, the
Health tab's warnings with one-click fixes, "Find learning rate" and "Can it learn?"."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import Qt  # noqa: E402
from test_training_gui import make_workspace as workspace_maker  # noqa: E402, F401 - the fixture
from test_training_gui import train  # noqa: E402

#: set to a folder to (re)write the README's screenshots from these tests
SHOTS = os.environ.get("CNN_DESIGNER_SHOTS")


def _grab(widget, name: str) -> None:
    if SHOTS:
        widget.grab().save(os.path.join(SHOTS, name))


def _image(pixmap) -> np.ndarray:
    q = pixmap.toImage().convertToFormat(pixmap.toImage().Format.Format_RGB888)
    return np.frombuffer(q.constBits(), np.uint8, q.sizeInBytes()).copy()


def test_heat_map_in_predict_and_on_the_mistakes(qtbot, workspace_maker):  # noqa: F811 - the imported fixture
    ws, doc, _, win = workspace_maker(epochs=3, lr=3e-3)
    train(qtbot, ws)
    pv = ws.predict
    assert pv.explainer is not None and [i for i, _ in pv.explainer.layers] == [0, 1, 2, 3, 4, 5]
    ws.tabs.setCurrentWidget(pv)
    pv.predict_example(0)
    plain = _image(pv.preview.pixmap())
    assert pv.heat_map is None and not pv.heat.method.isEnabled()
    pv.heat.toggle.setChecked(True)
    assert pv.heat_map is None and pv.heat_jobs.busy  # computed in the background
    assert "Computing the heat map" in pv.heat.legend.text()
    qtbot.waitUntil(lambda: pv.heat_map is not None, timeout=20_000)
    heat = pv.heat_map
    assert not pv.heat_jobs.busy and heat.shape == (28, 28) and heat.max() == pytest.approx(1.0) and heat.min() >= 0
    img, _ = pv.shown
    assert heat[img[0] > 128].mean() > heat[img[0] == 0].mean()  # on the digit's strokes, not the paper
    assert not np.array_equal(_image(pv.preview.pixmap()), plain)
    assert "Yellow" in pv.heat.legend.text() and "Occlusion" in pv.heat.legend.text()
    assert pv.heat.layer.isHidden()  # Grad-CAM's layer choice only for Grad-CAM
    _grab(ws.tabs, "screenshot-heatmap.png")
    pv.heat.method.setCurrentIndex(pv.heat.method.findData("gradcam"))
    assert not pv.heat.layer.isHidden() and pv.heat.layer.currentData() == 4  # the last maps before the pool
    qtbot.waitUntil(lambda: pv.heat_map is not None, timeout=20_000)
    coarse = pv.heat_map.copy()
    pv.heat.layer.setCurrentIndex(pv.heat.layer.findData(2))
    qtbot.waitUntil(lambda: pv.heat_map is not None, timeout=20_000)
    assert not np.array_equal(coarse, pv.heat_map) and "Grad-CAM" in pv.heat.legend.text()
    pv.heat.method.setCurrentIndex(pv.heat.method.findData("occlusion"))

    rv = ws.results
    assert rv.mistakes.count() > 0
    before = _image(rv.mistakes.item(0).icon().pixmap(48, 48))
    rv.mistake_heat.toggle.setChecked(True)
    assert "Computing the heat maps" in rv.mistake_heat.legend.text()
    qtbot.waitUntil(lambda: not rv.heat_jobs.busy, timeout=30_000)
    after = _image(rv.mistakes.item(0).icon().pixmap(48, 48))
    assert not np.array_equal(before, after)
    rv.mistake_heat.toggle.setChecked(False)
    assert np.array_equal(before, _image(rv.mistakes.item(0).icon().pixmap(48, 48)))


def test_health_tab_names_the_learning_rate_and_fixes_it_in_one_click(qtbot, workspace_maker):  # noqa: F811 - the imported fixture
    ws, doc, _, win = workspace_maker(epochs=2, lr=0.5)
    train(qtbot, ws)
    texts = ws.health.warning_texts()
    assert any("learning rate 0.5 is too high" in t for t in texts), texts
    assert ws.health.table.rowCount() >= 5  # conv, relu, conv, relu, dense...
    assert "\u2581" in ws.health.table.item(0, 1).text() or "\u2588" in ws.health.table.item(0, 1).text()
    ws.tabs.setCurrentWidget(ws.health)
    _grab(ws.tabs, "screenshot-health.png")
    buttons = ws.health.fix_buttons()
    assert [b.text() for b in buttons] == ["Set learning rate to 0.001"]  # one button per fix
    qtbot.mouseClick(buttons[0], Qt.MouseButton.LeftButton)
    assert ws.panel.lr.value() == pytest.approx(0.001)
    assert doc.spec.training["lr"] == pytest.approx(0.001)  # stored with the design like any edit
    ws.health.clear()
    train(qtbot, ws)
    assert ws.health.warning_texts() == [] and "healthy" in ws.health.no_warnings.text()


def test_find_learning_rate_and_can_it_learn(qtbot, workspace_maker):  # noqa: F811 - the imported fixture
    ws, doc, *_ = workspace_maker()
    assert ws.panel.find_lr_button.isEnabled() and ws.panel.check_button.isEnabled()
    qtbot.mouseClick(ws.panel.find_lr_button, Qt.MouseButton.LeftButton)
    assert ws.tabs.currentWidget() is ws.health
    assert ws.panel.find_lr_button.text() == "Cancel" and not ws.panel.check_button.isEnabled()
    qtbot.waitUntil(lambda: ws.panel.find_lr_button.text() == "Find learning rate", timeout=60_000)
    xs, ys = ws.health.lr_curve.getData()
    assert len(xs) > 20 and ws.health.lr_mark.isVisible()
    suggested = 10 ** ws.health.lr_mark.value()
    assert ws.panel.lr.value() == pytest.approx(float(f"{suggested:.2g}"), rel=1e-3)
    assert doc.spec.training["lr"] == pytest.approx(ws.panel.lr.value())
    assert "Suggested learning rate" in ws.health.lr_text.text()
    qtbot.mouseClick(ws.panel.check_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: ws.panel.check_button.text() == "Can it learn?", timeout=60_000)
    assert ws.health.check_text.text().startswith("yes"), ws.health.check_text.text()


BIG_COLOUR_NET = {
    "format": "cnn-designer/1", "name": "big", "input": {"channels": 3, "height": 96, "width": 96},
    "layers": [
        {"type": "Conv2D", "filters": 16, "kernel_size": 3, "padding": "same"}, {"type": "BatchNorm2D"},
        {"type": "ReLU"}, {"type": "MaxPool2D", "pool_size": 2},
        {"type": "Conv2D", "filters": 32, "kernel_size": 3, "padding": "same"}, {"type": "BatchNorm2D"},
        {"type": "ReLU"}, {"type": "MaxPool2D", "pool_size": 2},
        {"type": "Conv2D", "filters": 32, "kernel_size": 3, "padding": "same"}, {"type": "ReLU"},
        {"type": "GlobalAvgPool2D"}, {"type": "Dense", "units": 4}, {"type": "Softmax"},
    ],
}


def test_heat_maps_of_a_big_colour_net_never_block_the_window(qtbot, monkeypatch):
    """Occlusion on a 3x96x96 net takes seconds: it runs in a background job on the explainer's own
    copy of the model, the window keeps handling events meanwhile, a new image cancels the map
    being computed (its result never reaches the view), and closing stops the job within a batch."""
    import threading
    import time

    from PySide6.QtCore import QTimer

    from designer.results import PredictView
    from designer.saliency_view import Explainer
    from engine import saliency as S
    from engine.data import Preprocessing
    from engine.model import Model
    from engine.spec import Spec

    model = Model(Spec.from_dict(BIG_COLOUR_NET), seed=0)
    prep = Preprocessing.for_input((3, 96, 96))
    explainer = Explainer(model, prep)
    threads, starts = [], []
    real_explain = S.explain
    # the first map is held until the second image has come: the engine computes this net's
    # occlusion in about 0.3 s, so the race "still running after 300 ms" could go either way
    release_first = threading.Event()

    def explain(*args, **kwargs):
        threads.append(threading.current_thread())
        starts.append(time.monotonic())
        if len(starts) == 1:
            release_first.wait(10)
        return real_explain(*args, **kwargs)

    monkeypatch.setattr(S, "explain", explain)
    pv = PredictView()
    qtbot.addWidget(pv)
    pv.set_predictor(lambda path: (None, None), ["a", "b", "c", "d"])
    pv.set_explainer(explainer)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 3, 96, 96), dtype=np.uint8)
    probs = np.array([0.1, 0.2, 0.3, 0.4])
    pv.heat.toggle.setChecked(True)
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.monotonic()))
    timer.start(20)

    t0 = time.monotonic()
    pv._show(images[0], probs, "first")
    assert time.monotonic() - t0 < 1.0 and pv.heat_map is None and pv.heat_jobs.busy
    assert "Computing the heat map" in pv.heat.legend.text()
    qtbot.waitUntil(lambda: len(starts) == 1, timeout=10_000)
    first = pv.heat_jobs._runner.job
    qtbot.wait(300)
    pv._show(images[1], probs, "second")  # cancels the first map
    assert first.cancel_event.is_set()
    release_first.set()
    qtbot.waitUntil(lambda: pv.heat_map is not None, timeout=60_000)
    timer.stop()
    assert all(t is not threading.main_thread() for t in threads) and len(threads) == 2
    assert explainer.model() is not model  # the job's own copy: the window's model stays free
    # the map shown is the second image's, computed exactly as the engine does
    want = real_explain(model, prep.normalize(images[1:]), "occlusion", np.array([3]))[0].heatmap
    np.testing.assert_allclose(pv.heat_map, want, atol=1e-5)
    busy = [t for t in ticks if t > starts[0]]
    assert len(busy) >= 10  # the event loop ran all along
    assert "Yellow" in pv.heat.legend.text()

    pv._show(images[0], probs, "again")
    qtbot.waitUntil(lambda: len(starts) == 3, timeout=10_000)
    t0 = time.monotonic()
    assert pv.shutdown()
    assert time.monotonic() - t0 < 5.0  # stopped within a batch, not after the whole map
    assert pv.heat_map is None


@pytest.mark.parametrize("kind", ["lr", "check"])
def test_cancel_find_learning_rate_and_can_it_learn(qtbot, workspace_maker, kind, monkeypatch):  # noqa: F811
    """The running one's button reads Cancel; Cancel stops it within a step and changes nothing."""
    import time

    from designer.health_panel import PreflightJob

    steps = []
    made = PreflightJob.__init__

    def asked(cancel):  # count the engine's per-step questions; slow steps so Cancel comes mid-run
        steps.append(1)
        time.sleep(0.02)
        return cancel()

    def counting(self, fn):
        made(self, lambda cancel: fn(lambda: asked(cancel)))

    monkeypatch.setattr(PreflightJob, "__init__", counting)
    ws, doc, *_ = workspace_maker()
    lr_before, training_before = ws.panel.lr.value(), dict(doc.spec.training)
    button = ws.panel.find_lr_button if kind == "lr" else ws.panel.check_button
    other = ws.panel.check_button if kind == "lr" else ws.panel.find_lr_button
    text = button.text()
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
    assert button.text() == "Cancel" and button.isEnabled() and not other.isEnabled()
    qtbot.waitUntil(lambda: len(steps) >= 3, timeout=20_000)
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
    t0, at_cancel = time.monotonic(), len(steps)
    qtbot.waitUntil(lambda: not ws.preflight.running(), timeout=10_000)
    assert time.monotonic() - t0 < 5 and len(steps) <= at_cancel + 2  # within a step
    qtbot.waitUntil(lambda: button.text() == text, timeout=5_000)
    assert button.isEnabled() and other.isEnabled()
    assert "cancelled" in ws.panel.message.text()
    assert ws.panel.lr.value() == lr_before and doc.spec.training == training_before
    shown = ws.health.lr_text if kind == "lr" else ws.health.check_text
    assert shown.text().startswith("Cancelled")
    assert not ws.health.lr_plot.isVisible()


def test_cancel_stays_usable_while_a_training_run_starts_and_ends(qtbot):
    from designer.training_panel import TrainingPanel

    panel = TrainingPanel()
    qtbot.addWidget(panel)
    panel.show()
    panel.set_preflight("check")
    for state in ("running", "idle"):  # a run started and ended while the check went on
        panel.set_state(state)
        assert panel.check_button.text() == "Cancel" and panel.check_button.isEnabled()
        assert not panel.check_button.isHidden() and not panel.find_lr_button.isEnabled()
    panel.set_state("running")
    panel.set_preflight("", running_training=True)  # the check ended during the run
    assert panel.check_button.isHidden() and not panel.find_lr_button.isEnabled()
    panel.set_state("idle")
    assert panel.check_button.text() == "Can it learn?" and panel.check_button.isEnabled()
    assert panel.find_lr_button.text() == "Find learning rate" and panel.find_lr_button.isEnabled()
