"""The background jobs on their own: loading and training in a QThread, talking only through signals."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytestqt")

from designer.document import load_template  # noqa: E402
from designer.worker import (  # noqa: E402
    EMIT_INTERVAL,
    JobRunner,
    LoadJob,
    TrainJob,
    TrainRequest,
)
from engine.data import load_folder  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "resources" / "sample_mnist"


@pytest.fixture(scope="module")
def lenet():
    return load_template("lenet5")


@pytest.fixture(scope="module")
def sample_data(lenet):
    return load_folder(SAMPLE, lenet.input_shape)


def run_job(qtbot, job, timeout=60_000):
    runner = JobRunner(job, "test-job")
    with qtbot.waitSignal(runner.finished, timeout=timeout):
        runner.start()
    assert not runner.running()
    return runner


def test_data_folders_finds_train_and_validation(tmp_path):
    """The rule lives in the engine (engine.folders, tested in test_data); the loader uses it."""
    from engine.folders import data_folders

    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "test" / "a").mkdir(parents=True)
    f = data_folders(tmp_path)
    assert (f.train, f.val) == (tmp_path / "train", tmp_path / "test")
    f = data_folders(tmp_path / "train")
    assert (f.train, f.val) == (tmp_path / "train", None)


def test_load_job_reports_progress_and_data(qtbot, lenet):
    job = LoadJob(SAMPLE, lenet.input_shape)
    progress, loaded = [], []
    job.progress.connect(lambda d, t: progress.append((d, t)))
    job.loaded.connect(loaded.append)
    run_job(qtbot, job)
    assert len(loaded) == 1
    data = loaded[0]
    assert data.classes == [str(i) for i in range(10)]
    assert len(data.train) == 800 and data.val is None
    assert data.train.images.shape[1:] == (1, 28, 28)
    assert data.colour_share == 0.0  # MNIST is grey: no channel fix offered
    assert progress and progress[-1][0] == progress[-1][1] == 800


def test_load_job_uses_validation_folder(qtbot, lenet, mnist_folder):
    job = LoadJob(mnist_folder, lenet.input_shape)
    loaded = []
    job.loaded.connect(loaded.append)
    run_job(qtbot, job)
    d = loaded[0]
    assert len(d.train) == 1000 and len(d.val) == 300 and d.val_folder.name == "test"
    assert d.val.classes == d.train.classes


def test_load_job_unreadable_folder_gives_message(qtbot, lenet, tmp_path):
    messages = []
    job = LoadJob(tmp_path / "nowhere", lenet.input_shape)
    job.failed.connect(messages.append)
    run_job(qtbot, job)
    assert len(messages) == 1 and "not found" in messages[0] and "nowhere" in messages[0]
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "x.png").write_bytes(b"not a png")
    job = LoadJob(tmp_path / "flat", lenet.input_shape)
    job.failed.connect(messages.append)
    run_job(qtbot, job)
    assert "no class subfolders" in messages[1]


def test_load_job_cancel(qtbot, lenet, tmp_path, monkeypatch):
    monkeypatch.setenv("CNN_DESIGNER_CACHE", str(tmp_path / "cache"))  # force real decoding
    job = LoadJob(SAMPLE, lenet.input_shape)
    cancelled, loaded = [], []
    job.cancelled.connect(lambda: cancelled.append(True))
    job.loaded.connect(loaded.append)
    job.cancel()
    run_job(qtbot, job)
    assert cancelled == [True] and loaded == []


def _request(spec, data, **settings):
    s = {"epochs": 1, "batch_size": 64, "seed": 0, "val_split": 0.1}
    s.update(settings)
    sample = data.images[:1].astype(np.float32) / 255.0
    return TrainRequest(spec=spec, train=data, val=None, settings=s, sample=sample, sample_image=data.images[0])


def test_train_job_emits_throttled_progress_maps_and_result(qtbot, lenet, sample_data):
    job = TrainJob(_request(lenet, sample_data, epochs=2))
    batches, epochs, maps, results = [], [], [], []
    job.batches.connect(lambda pts, prog: batches.append((list(pts), dict(prog))))
    job.epoch_done.connect(epochs.append)
    job.maps_ready.connect(maps.append)
    job.finished_run.connect(results.append)
    t0 = time.monotonic()
    run_job(qtbot, job)
    seconds = time.monotonic() - t0
    assert job.batch_events == 2 * 12  # 720 training images / 64, twice
    points = [p for pts, _ in batches for p in pts]
    assert len(points) == job.batch_events  # every batch's loss reaches the plot...
    assert job.emitted <= job.batch_events  # ...in fewer signals when batches come fast
    assert job.emitted <= seconds / EMIT_INTERVAL + 2 * 2 + 1
    assert [e["epoch"] for e in epochs] == [1, 2] and epochs[-1]["val_accuracy"] is not None
    assert maps and [i for i, _, _ in maps[-1]["maps"]] == [0, 2, 3, 5]  # LeNet-5's conv and pool layers
    assert maps[-1]["maps"][0][2].shape == (6, 28, 28) and maps[-1]["weight"].shape == (6, 1, 5, 5)
    (r,) = results
    assert r.status == "finished" and r.trained is not None and len(r.trained.history) == 2
    assert r.trained.problem() is None and r.trained.classes == sample_data.classes
    assert r.trained.model() is job.trainer.model  # the trained model itself, not a rebuilt copy
    ev = r.evaluation
    assert ev["title"] == "validation" and ev["probs"].shape == (80, 10)
    assert np.allclose(ev["probs"].sum(axis=1), 1, atol=1e-4)
    # the run is remembered in the run store, with a copy of its model to reopen it from
    from engine import modelfile, runs

    rec = runs.RunStore().get(r.run_id)
    assert rec["source"] == "window" and rec["status"] == "finished" and rec["epochs"] == 2
    assert rec["history"] == r.trained.history and rec["data"]["train_images"] == 720
    assert modelfile.load(rec["model_path"]).history == r.trained.history


def test_train_job_stops_within_one_batch(qtbot, lenet, sample_data):
    job = TrainJob(_request(lenet, sample_data, epochs=20, batch_size=16))
    at_stop = []

    def stop_soon(points, progress):
        if not at_stop and job.batch_events >= 3:
            at_stop.append(job.batch_events)
            job.stop()

    job.batches.connect(stop_soon)
    results = []
    job.finished_run.connect(results.append)
    run_job(qtbot, job)
    assert at_stop and job.batch_events <= at_stop[0] + 1
    assert results[0].status == "stopped" and results[0].trained is not None


def test_train_job_pause_and_resume(qtbot, lenet, sample_data):
    job = TrainJob(_request(lenet, sample_data, epochs=2, batch_size=32))
    runner = JobRunner(job, "test-pause")
    results = []
    job.finished_run.connect(results.append)
    runner.start()
    try:
        qtbot.waitUntil(lambda: job.batch_events >= 2, timeout=30_000)
        job.pause()
        at_pause = job.batch_events
        assert job.paused
        # Only the batch in flight may still finish, however slow a loaded machine makes it (polling
        # for a "stable" count flaked when one batch took longer than the polling interval); unpaused,
        # the whole run would finish within this wait.
        qtbot.wait(1500)
        assert job.batch_events <= at_pause + 1 and runner.running()  # nothing trains while paused
        with qtbot.waitSignal(runner.finished, timeout=60_000):
            job.resume()
    finally:
        runner.shutdown()
    assert not job.paused
    assert results[0].status == "finished" and job.batch_events == 2 * 23


def test_train_job_bad_fit_fails_with_message(qtbot, sample_data):
    spec = load_template("lenet5")
    spec.layers[-2].config["units"] = 2
    job = TrainJob(_request(spec, sample_data))
    results = []
    job.finished_run.connect(results.append)
    run_job(qtbot, job)
    r = results[0]
    assert r.status == "failed" and r.trained is None
    assert "2 units" in r.message and "10 classes" in r.message


def test_shutdown_joins_a_running_job(qtbot, lenet, sample_data):
    job = TrainJob(_request(lenet, sample_data, epochs=50, batch_size=16))
    runner = JobRunner(job, "test-shutdown")
    runner.start()
    qtbot.waitUntil(lambda: job.batch_events >= 1, timeout=30_000)
    job.pause()  # a paused job must still shut down
    t0 = time.monotonic()
    assert runner.shutdown(timeout_ms=20_000)
    assert time.monotonic() - t0 < 10
    assert not runner.thread.isRunning() and runner.thread.isFinished()


def test_unexpected_error_in_the_loop_ends_the_run_with_a_message(qtbot, lenet, sample_data, monkeypatch):
    def boom(self, trainer):
        raise RuntimeError("boom")

    monkeypatch.setattr(TrainJob, "_run", boom)
    job = TrainJob(_request(lenet, sample_data))
    results = []
    job.finished_run.connect(results.append)
    run_job(qtbot, job)
    (r,) = results
    assert r.status == "failed" and r.message == "training stopped: RuntimeError: boom"
    assert r.trained is not None  # the weights so far are still there to keep


def test_shutdown_of_a_stuck_job_returns_within_its_timeout(qtbot):
    """Closing the window must not hang on a job stuck in a call that ignores cancel: the wait is
    bounded, and the thread is kept referenced until it ends (destroying a running QThread aborts)."""
    import threading

    from designer.worker import _ABANDONED, Job

    release = threading.Event()

    class Stuck(Job):
        def work(self):
            release.wait(30)

    runner = JobRunner(Stuck(), "test-stuck")
    runner.start()
    qtbot.waitUntil(runner.running, timeout=5_000)
    t0 = time.monotonic()
    assert runner.shutdown(timeout_ms=200) is False
    assert time.monotonic() - t0 < 2 and runner in _ABANDONED
    with qtbot.waitSignal(runner.finished, timeout=10_000):
        release.set()
    assert not runner.running()
    _ABANDONED.remove(runner)


def test_no_job_signal_is_connected_to_a_lambda_or_partial():
    """A lambda or functools.partial has no thread, so Qt calls it in the emitting job's thread, where
    touching a widget crashes the window (seen in CI): a job's signals go to a bound slot or a signal
    of an object living in the GUI thread (designer.jobs.TrainTabJobs does that for the Train tab)."""
    import ast

    def root_name(node) -> str:
        while isinstance(node, ast.Attribute):
            node = node.value
        return node.id if isinstance(node, ast.Name) else ""

    def mentions_job(node) -> bool:
        names = []
        while isinstance(node, ast.Attribute):
            names.append(node.attr)
            node = node.value
        if isinstance(node, ast.Name):
            names.append(node.id)
        return any("job" in n.lower() for n in names[1:])  # the object the signal belongs to, not the signal

    bad = []
    for path in sorted((ROOT / "designer").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "connect" and node.args):
                continue
            signal, slot = node.func.value, node.args[0]
            unbound = isinstance(slot, ast.Lambda) or (
                isinstance(slot, ast.Call) and root_name(slot.func) in ("partial", "functools"))
            if unbound and mentions_job(signal):
                bad.append(f"{path.name}:{node.lineno}")
    assert bad == []
