"""The Trainer on real MNIST: learns, is reproducible, obeys pause/resume/stop within one batch,
guards against NaN, schedules, stops early, keeps the best epoch, and checks the class count."""

from __future__ import annotations

import math
import re
import threading
import time

import numpy as np
import pytest

from engine.data import ImageSet, load_folder
from engine.spec import Spec
from engine.training import (
    BatchEnd,
    EpochEnd,
    Finished,
    Started,
    TrainConfig,
    Trainer,
    TrainingError,
    check_fit,
    evaluate,
)

TINY = {
    "format": "cnn-designer/1", "name": "tiny", "input": {"channels": 1, "height": 28, "width": 28},
    "layers": [
        {"type": "Conv2D", "filters": 8, "kernel_size": 3, "stride": 2},
        {"type": "ReLU"},
        {"type": "MaxPool2D", "pool_size": 2},
        {"type": "Flatten"},
        {"type": "Dense", "units": 10},
        {"type": "Softmax"},
    ],
}


def tiny(units: int = 10, **input_overrides) -> Spec:
    d = {**TINY, "input": {**TINY["input"], **input_overrides}, "layers": [dict(x) for x in TINY["layers"]]}
    d["layers"][4]["units"] = units
    return Spec.from_dict(d)


@pytest.fixture(scope="module")
def digits(mnist_folder, tmp_path_factory):
    import os

    os.environ["CNN_DESIGNER_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    train = load_folder(mnist_folder / "train", (1, 28, 28))
    test = load_folder(mnist_folder / "test", (1, 28, 28), classes=train.classes)
    return train, test


def run(trainer: Trainer) -> tuple[list, Finished]:
    events = list(trainer.events())
    assert isinstance(events[0], Started) and isinstance(events[-1], Finished)
    return events, events[-1]


def test_learns_real_digits_and_reports_events(digits):
    train, test = digits
    cfg = TrainConfig(epochs=3, batch_size=32, lr=3e-3, val_split=0)
    t = Trainer(tiny(), train, test, cfg)
    events, fin = run(t)
    batches = [e for e in events if isinstance(e, BatchEnd)]
    epochs = [e for e in events if isinstance(e, EpochEnd)]
    assert fin.status == "finished" and fin.epochs_completed == 3 and len(epochs) == 3
    assert len(batches) == 3 * math.ceil(1000 / 32) and batches[-1].batch == batches[-1].batches == 32
    assert all(b.images_per_second > 0 and b.eta_seconds >= 0 for b in batches)
    assert batches[-1].eta_seconds < batches[0].eta_seconds
    assert epochs[-1].val_accuracy > 0.8  # chance is 0.1
    assert epochs[-1].train_loss < epochs[0].train_loss
    assert [h["epoch"] for h in t.history] == [1, 2, 3]
    ev = evaluate(t.model, test, t.prep)
    assert ev.accuracy == pytest.approx(epochs[-1].val_accuracy)
    assert ev.confusion.sum() == 300 and ev.per_class_count == [30] * 10
    assert ev.loss == pytest.approx(epochs[-1].val_loss, rel=1e-5)


def test_same_seed_same_weights(digits):
    train, _ = digits
    cfg = dict(epochs=1, batch_size=64, val_split=0.1, augment=True)
    a = Trainer(tiny(), train, config=TrainConfig(seed=4, **cfg))
    b = Trainer(tiny(), train, config=TrainConfig(seed=4, **cfg))
    c = Trainer(tiny(), train, config=TrainConfig(seed=5, **cfg))
    for t in (a, b, c):
        assert run(t)[1].status == "finished"
    sa, sb, sc = a.model.state_dict(), b.model.state_dict(), c.model.state_dict()
    assert all(np.array_equal(sa[k], sb[k]) for k in sa)
    assert not np.array_equal(sa["layers.0.weight"], sc["layers.0.weight"])
    assert a.val_data.paths == b.val_data.paths != c.val_data.paths


def test_stop_takes_effect_within_one_batch(digits):
    train, _ = digits
    t = Trainer(tiny(), train, config=TrainConfig(epochs=5, batch_size=16, val_split=0))
    seen = []
    for ev in t.events():
        seen.append(ev)
        if isinstance(ev, BatchEnd) and ev.epoch == 2 and ev.batch == 7:
            t.stop()
    batches = [e for e in seen if isinstance(e, BatchEnd)]
    assert (batches[-1].epoch, batches[-1].batch) == (2, 7)
    fin = seen[-1]
    assert fin.status == "stopped" and "stopped by request" in fin.message
    # the interrupted epoch is still reported (on the batches it saw) so nothing learned is lost
    assert [(e.epoch, e.complete) for e in seen if isinstance(e, EpochEnd)] == [(1, True), (2, False)]
    assert t.history[1]["complete"] is False and "after 1 complete epoch(s) and part of the next" in fin.message


def test_pause_resume_from_another_thread(digits):
    train, _ = digits
    t = Trainer(tiny(), train, config=TrainConfig(epochs=1, batch_size=50, val_split=0))
    stamps = []
    resumed_at = []

    def controller():
        while not stamps:
            time.sleep(0.001)
        t.pause()
        time.sleep(0.3)
        assert t.paused and t.status == "paused"
        resumed_at.append(time.perf_counter())
        t.resume()

    th = threading.Thread(target=controller)
    th.start()
    for ev in t.events():
        if isinstance(ev, BatchEnd):
            stamps.append((ev.batch, time.perf_counter()))
            if ev.batch == 1:
                while not t.paused:  # the GUI's pause arrives while batch 2 would start
                    time.sleep(0.001)
    th.join()
    assert [b for b, _ in stamps] == list(range(1, 21))
    assert stamps[1][1] >= resumed_at[0]  # batch 2 ran only after resume
    assert t.result.status == "finished"
    # paused time is not counted as training time
    assert t.history[0]["seconds"] < stamps[-1][1] - stamps[0][1]


def test_stop_while_paused(digits):
    train, _ = digits
    t = Trainer(tiny(), train, config=TrainConfig(epochs=2, batch_size=100, val_split=0))
    out = []
    for ev in t.events():
        out.append(ev)
        if isinstance(ev, BatchEnd) and ev.batch == 3:
            t.pause()
            threading.Timer(0.05, t.stop).start()
    assert out[-1].status == "stopped"
    assert [e.batch for e in out if isinstance(e, BatchEnd)] == [1, 2, 3]


def test_nan_loss_stops_and_keeps_last_good_weights(digits):
    train, _ = digits
    t = Trainer(tiny(), train, config=TrainConfig(epochs=3, batch_size=32, optimizer="sgd", lr=1e30, momentum=0.0,
                                                   val_split=0))
    events, fin = run(t)
    assert fin.status == "failed"
    assert re.fullmatch(r"loss became (NaN|infinite) at epoch \d+ batch \d+; lower the learning rate "
                        r"\(try [0-9.e-]+\)", fin.message)
    state = t.model.state_dict()
    assert all(np.all(np.isfinite(v)) for v in state.values())
    # the kept weights still give a finite loss on the data (they are the last good ones)
    loss, _, _ = t.model.evaluate_batch(t.prep.normalize(train.images[:64]), train.labels[:64])
    assert math.isfinite(loss)


def test_unexpected_error_is_a_failed_event(digits, monkeypatch):
    train, _ = digits
    t = Trainer(tiny(), train, config=TrainConfig(epochs=1, val_split=0))
    calls = []

    def boom(x, y, opt):
        calls.append(1)
        if len(calls) == 3:
            raise MemoryError
        return 1.0, 0

    monkeypatch.setattr(t.model, "train_step", boom)
    fin = run(t)[1]
    assert fin.status == "failed" and fin.message.startswith("out of memory at epoch 1")


def test_class_count_and_input_checked_before_training(digits):
    train, _ = digits
    two = train.subset(np.flatnonzero(train.labels < 2))
    two = ImageSet(two.images, two.labels, ["0", "1"], two.paths)
    with pytest.raises(TrainingError, match="the last Dense has 10 units but the folder has 2 classes"):
        Trainer(tiny(10), two)
    with pytest.raises(TrainingError, match="the images are 1x28x28 but the design's input is 1x32x32"):
        Trainer(tiny(10, height=32, width=32), train)
    with pytest.raises(TrainingError, match="must be a positive integer"):
        Trainer(tiny(), train, config=TrainConfig(epochs=0))
    with pytest.raises(TrainingError, match="Dense\\(1\\) \\+ Sigmoid separates 2 classes but the folder has 10"):
        check_fit(Spec.from_dict({**TINY, "layers": TINY["layers"][:4] + [{"type": "Dense", "units": 1},
                                                                         {"type": "Sigmoid"}]}), 10)


def test_binary_sigmoid_head_trains(digits):
    train, test = digits
    spec = Spec.from_dict({**TINY, "layers": TINY["layers"][:4] + [{"type": "Dense", "units": 1}, {"type": "Sigmoid"}]})
    pick = lambda ds: ds.subset(np.flatnonzero(ds.labels < 2))  # noqa: E731
    tr, te = pick(train), pick(test)
    tr = ImageSet(tr.images, tr.labels, ["0", "1"], tr.paths)
    te = ImageSet(te.images, te.labels, ["0", "1"], te.paths)
    t = Trainer(spec, tr, te, TrainConfig(epochs=2, batch_size=16, lr=3e-3))
    assert run(t)[1].status == "finished" and t.history[-1]["val_accuracy"] > 0.9


def test_schedules(digits):
    cfg = TrainConfig(epochs=4, lr=0.1, schedule="step", step_size=2, gamma=0.1)
    assert [cfg.lr_at(e) for e in (1, 2, 3, 4)] == pytest.approx([0.1, 0.1, 0.01, 0.01])
    cos = TrainConfig(epochs=4, lr=1.0, schedule="cosine", min_lr=0.0)
    assert [cos.lr_at(e) for e in (1, 2, 3, 4)] == pytest.approx([1.0, 0.853553, 0.5, 0.146447], rel=1e-5)
    train, _ = digits
    t = Trainer(tiny(), train.subset(np.arange(0, 1000, 10)),
                config=TrainConfig(epochs=3, lr=0.01, schedule="step", step_size=1, gamma=0.5, val_split=0))
    run(t)
    assert [h["lr"] for h in t.history] == pytest.approx([0.01, 0.005, 0.0025])


def test_early_stopping_and_keep_best(digits):
    train, test = digits
    # validation labels that disagree with the training labels: validation loss rises as it learns
    wrong = ImageSet(test.images, (test.labels + 1) % 10, test.classes, test.paths)
    states = {}
    t = Trainer(tiny(), train, wrong, TrainConfig(epochs=10, batch_size=32, lr=3e-3, early_stopping=2,
                                                   keep_best=True))
    for ev in t.events():
        if isinstance(ev, EpochEnd):
            states[ev.epoch] = t.model.state_dict()
    fin = t.result
    assert fin.status == "early_stopped" and "has not improved for 2 epoch(s)" in fin.message
    best = min(t.history, key=lambda h: h["val_loss"])["epoch"]
    assert fin.best_epoch == best and len(t.history) == best + 2 < 10
    final = t.model.state_dict()
    assert all(np.array_equal(final[k], states[best][k]) for k in final)


def test_continue_training_from_weights(digits):
    train, test = digits
    first = Trainer(tiny(), train, test, TrainConfig(epochs=1, lr=3e-3))
    run(first)
    more = Trainer(tiny(), train, test, TrainConfig(epochs=1, lr=3e-3), initial_state=first.model.state_dict(),
                   history=first.history)
    events, fin = run(more)
    assert events[0].epochs == 2 and [e.epoch for e in events if isinstance(e, EpochEnd)] == [2]
    assert [h["epoch"] for h in more.history] == [1, 2]
    assert more.history[1]["val_loss"] < first.history[0]["val_loss"]


def test_config_round_trip_and_validation():
    cfg = TrainConfig(epochs=3, optimizer="sgd", lr=0.05, augment=True, schedule="cosine", limit=500)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert TrainConfig.from_dict({"epochs": 2, "gui_only_field": 1}).epochs == 2
    for bad, msg in (({"optimizer": "rmsprop"}, "optimizer"), ({"lr": -1}, "lr"), ({"val_split": 1.0}, "val_split"),
                     ({"batch_size": 2.5}, "batch_size"), ({"augment": "yes"}, "augment")):
        with pytest.raises(TrainingError, match=msg):
            TrainConfig.from_dict(bad)


def test_save_writes_model_file(digits, tmp_path):
    from engine import modelfile

    train, test = digits
    t = Trainer(tiny(), train, test, TrainConfig(epochs=1))
    run(t)
    t.save(tmp_path / "m.cnnd")
    mf = modelfile.load(tmp_path / "m.cnnd")
    assert mf.classes == train.classes and mf.training["epochs"] == 1 and mf.training["status"] == "finished"
    assert mf.history == t.history
    x = t.prep.normalize(test.images)
    np.testing.assert_array_equal(mf.build_model().predict_proba(x), t.model.predict_proba(x))


def test_rgb_input_resized_from_gray_folder(mnist_folder):
    data = load_folder(mnist_folder / "test", (3, 32, 32))
    t = Trainer(tiny(channels=3, height=32, width=32), data, config=TrainConfig(epochs=2, batch_size=16, lr=3e-3))
    assert run(t)[1].status == "finished"
    assert t.prep.color == "rgb" and t.history[-1]["train_accuracy"] > 0.3


def test_augmentation_reaches_the_training_batches(digits):
    """With augment on, the model is stepped on shifted/rotated images; the shuffle is unchanged, so
    the same batches without augmentation hold the same digits unmoved."""
    train, _ = digits
    sub = train.subset(np.arange(0, 1000, 10))
    seen = {}
    for aug in (False, True):
        t = Trainer(tiny(), sub, config=TrainConfig(epochs=1, batch_size=50, val_split=0, augment=aug, seed=3))
        batches, step = [], t.model.train_step
        t.model.train_step = lambda x, y, opt, step=step, batches=batches: (batches.append((x.copy(), y.copy())),
                                                                           step(x, y, opt))[1]
        run(t)
        seen[aug] = batches
    assert len(seen[False]) == len(seen[True]) == 2
    for (plain, y_plain), (moved, y_moved) in zip(seen[False], seen[True], strict=True):
        np.testing.assert_array_equal(y_plain, y_moved)
        changed = np.any(plain != moved, axis=(1, 2, 3))
        assert changed.mean() > 0.5, changed.mean()


def test_helper_lost_mid_run_is_said_in_the_final_message(digits):
    """Two processes (the default on 2 cores): the helper is killed mid-run; the run finishes in one
    process and its final message says so in one line."""
    import os
    import signal

    train, _ = digits
    t = Trainer(tiny(), train.subset(np.arange(0, 640)), config=TrainConfig(epochs=2, batch_size=64, val_split=0,
                                                                             workers=2))
    events = []
    for ev in t.events():
        events.append(ev)
        if isinstance(ev, BatchEnd) and ev.epoch == 1 and ev.batch == 3:
            assert t.model.workers == 2
            os.kill(t.model._parallel.proc.pid, signal.SIGKILL)
    fin = events[-1]
    assert fin.status == "finished" and len(t.history) == 2
    assert fin.message.endswith("(the helper process ended unexpectedly (exit code -9); "
                                "training goes on in one process)")
