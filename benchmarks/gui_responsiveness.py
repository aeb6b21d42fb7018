"""Benchmark (not a test): does the window stay responsive while LeNet-5 trains on MNIST, and what
does showing the training live cost against the plain trainer (what `cnn-designer train` runs)?

    .venv/bin/python benchmarks/gui_responsiveness.py                  # 10,000 training images, 3 epochs, 2 rounds
    .venv/bin/python benchmarks/gui_responsiveness.py --per-class 200 --rounds 1   # quick look

How, in one process and one run:
  * writes a real-MNIST PNG folder (train/ with --per-class images per digit, test/ with a sixth of
    that) into a temp dir and decodes it once (the loader's cache serves both sides afterwards);
  * "cli": engine.training.Trainer over the decoded folder, no Qt at all, exactly the loop the CLI
    runs; images/s = the trainer's own per-epoch figure (training time only);
  * "gui": the real TrainingWorkspace in a 1280x800 QMainWindow (offscreen), Start clicked, live
    curves, feature maps and filters on; a 10 ms QTimer in the GUI thread records every tick and
    the worst gap between two ticks during training is `max_stall_ms` (the issue's target: < 50);
    images/s = the same trainer figure, read from the run's history;
  * the two sides alternate `--rounds` times (cli, gui, cli, gui, ...): medians are reported and
    `gui_vs_cli` = gui / cli images/s (the target: >= 0.90). The machine is shared and noisy, so
    compare the ratio, measured side by side, rather than absolute figures.

Prints ONE JSON line on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_cli(spec, train, val, settings) -> float:
    from engine.training import EpochEnd, TrainConfig, Trainer

    trainer = Trainer(spec, train, val, TrainConfig.from_dict(settings))
    ips = [ev.images_per_second for ev in trainer.events() if isinstance(ev, EpochEnd)]
    trainer.model.close()
    return statistics.median(ips)


def run_gui(app, folder: Path, settings: dict) -> dict:
    from PySide6.QtCore import QEventLoop, QTimer
    from PySide6.QtGui import QUndoStack
    from PySide6.QtWidgets import QMainWindow

    from designer.document import Document, load_template
    from designer.workspace import TrainingWorkspace

    spec = load_template("lenet5")
    spec.training = dict(settings)
    doc = Document(spec, data_dir=folder)
    win = QMainWindow()
    ws = TrainingWorkspace(doc, QUndoStack())
    win.setCentralWidget(ws)
    win.resize(1280, 800)
    win.show()

    def spin(cond, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while not cond() and time.monotonic() < end:
            app.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 20)
            time.sleep(0.002)
        return cond()

    if not spin(lambda: ws.data_panel.data is not None, 300):
        raise SystemExit(f"the workspace could not load {folder}: {ws.data_panel.status.text()}")

    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    spin(lambda: len(ticks) > 20, 5)  # timer settled before training starts
    t_start = time.perf_counter()
    ws.panel.start_button.click()
    job = ws.jobs.run_job
    if not spin(lambda: ws.training, 10):
        raise SystemExit(f"training did not start: {ws.panel.message.text()}")
    # Run the real event loop (not processEvents polling) so the timer measures what a user gets.
    loop = QEventLoop()
    ws.training_changed.connect(lambda on: None if on else loop.quit())
    if ws.training:
        loop.exec()
    t_end = time.perf_counter()
    timer.stop()
    during = [t for t in ticks if t_start <= t <= t_end]
    gaps = [(b - a) * 1000 for a, b in zip(during, during[1:], strict=False)]
    gaps.sort()
    cur = ws.session.current
    ips = [h["images_per_second"] for h in (cur.history if cur else []) if h.get("images_per_second")]
    out = {
        "max_stall_ms": round(gaps[-1], 1) if gaps else None,
        "p99_gap_ms": round(gaps[int(0.99 * (len(gaps) - 1))], 1) if gaps else None,
        "median_gap_ms": round(statistics.median(gaps), 1) if gaps else None,
        "ticks": len(during),
        "seconds": round(t_end - t_start, 2),
        "images_per_second": statistics.median(ips) if ips else None,
        "batches": job.batch_events,
        "batch_signals": job.emitted,
        "plot_redraws": ws.plots.redraws,
        "map_redraws": ws.maps.redraws,
        "status": ws.panel.message.text(),
    }
    ws.shutdown()
    if cur is not None:
        cur.trained.close()
    win.close()
    win.deleteLater()
    app.processEvents()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-class", type=int, default=1000, help="training images per digit (test: a sixth)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2, help="alternations of cli and gui runs")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="gui-bench-"))
    try:
        return measure(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def measure(args: argparse.Namespace, tmp: Path) -> int:
    import mnist_data

    os.environ["CNN_DESIGNER_CACHE"] = str(tmp / "cache")
    folder = tmp / "mnist"
    t0 = time.perf_counter()
    mnist_data.write_folder(folder / "train", "train", per_class=args.per_class, seed=0)
    mnist_data.write_folder(folder / "test", "test", per_class=max(1, args.per_class // 6), seed=1)
    log(f"wrote {folder} in {time.perf_counter() - t0:.1f} s")

    from PySide6.QtWidgets import QApplication

    from designer.document import load_template
    from engine.data import load_folder

    app = QApplication.instance() or QApplication([])
    spec = load_template("lenet5")
    train = load_folder(folder / "train", spec.input_shape)
    val = load_folder(folder / "test", spec.input_shape, classes=train.classes)
    settings = {"epochs": args.epochs, "batch_size": 64, "optimizer": "adam", "lr": 1e-3, "seed": 0,
                "val_split": 0.1, "augment": False}
    log(f"decoded {len(train)} training and {len(val)} validation images")

    cli_ips, gui_runs = [], []
    for r in range(args.rounds):
        cli_ips.append(run_cli(spec, train, val, settings))
        log(f"round {r + 1}: cli {cli_ips[-1]:,.0f} images/s")
        gui_runs.append(run_gui(app, folder, settings))
        g = gui_runs[-1]
        log(f"round {r + 1}: gui {g['images_per_second']:,.0f} images/s, max stall {g['max_stall_ms']} ms, "
            f"p99 gap {g['p99_gap_ms']} ms, {g['batch_signals']} batch signals for {g['batches']} batches")

    gui_ips = statistics.median(g["images_per_second"] for g in gui_runs)
    cli = statistics.median(cli_ips)
    result = {
        "max_stall_ms": max(g["max_stall_ms"] for g in gui_runs),
        "p99_gap_ms": max(g["p99_gap_ms"] for g in gui_runs),
        "median_gap_ms": round(statistics.median(g["median_gap_ms"] for g in gui_runs), 1),
        "images_per_second": round(gui_ips, 1),
        "cli_images_per_second": round(cli, 1),
        "gui_vs_cli": round(gui_ips / cli, 3),
        "timer_interval_ms": 10,
        "train_images": len(train),
        "val_images": len(val),
        "epochs": args.epochs,
        "rounds": args.rounds,
        "per_round": [{"cli": round(c, 1), **{k: g[k] for k in ("images_per_second", "max_stall_ms", "p99_gap_ms",
                                                                  "batches", "batch_signals", "plot_redraws",
                                                                  "map_redraws")}}
                      for c, g in zip(cli_ips, gui_runs, strict=True)],
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
