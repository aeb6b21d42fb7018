"""`cnn-designer train | evaluate | predict`: the command-line face of engine.data, engine.training
and engine.modelfile (registered into engine.cli's parser by `register`).

Everything the user can get wrong (paths, files, specs, settings) is checked before the long part
starts, and fails as one line on stderr with exit code 2 (engine.cli turns EngineError into that).
Training progress goes to stderr (a redrawn bar on a terminal, one line per epoch otherwise), so
stdout stays clean for the results; `--json` output is exactly one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from engine import safeio
from engine.errors import EngineError
from engine.safeio import printable


class CLIUsageError(EngineError):
    """Bad command-line input: one line, exit 2."""


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------
def _fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
    return f"{s // 60}:{s % 60:02d}"


class _Progress:
    """A one-line bar redrawn on a terminal; silent elsewhere (epoch lines are printed anyway)."""

    def __init__(self, stream: TextIO, enabled: bool):
        self.stream = stream
        self.enabled = enabled
        self.last = 0.0
        self.width = 0

    def update(self, text: str, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self.last < 0.1:
            return
        self.last = now
        pad = max(0, self.width - len(text))
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()
        self.width = len(text)

    def clear(self) -> None:
        if self.enabled and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
            self.width = 0


def _bar(frac: float, width: int = 24) -> str:
    filled = int(round(max(0.0, min(1.0, frac)) * width))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def _check_out_path(out: str, suffix: str = ".cnnd", flag: str = "--out") -> Path:
    """Fail before training, not after an hour of it (engine.safeio's rules for every write)."""
    p = Path(out).expanduser()
    if p.is_dir():
        raise CLIUsageError(f"{flag} {p} is a folder: give a file name such as {p / ('model' + suffix)}")
    safeio.check_writable(p, flag)
    return p


def _number(kind: type, ok: Any, expect: str) -> Any:
    """An argparse type: parse with `kind`, accept when `ok(value)`, else say what was expected."""

    def parse(text: str) -> Any:
        try:
            v = kind(text)
        except ValueError:
            v = None
        # an integer beyond 64 bits is no count anyone means, and SQLite or NumPy would overflow on it
        if v is None or not math.isfinite(v) or not ok(v) or (kind is int and abs(v) >= 1 << 63):
            raise argparse.ArgumentTypeError(f"expected {expect}, got {text!r}")
        return v

    return parse


_positive_int = _number(int, lambda v: v >= 1, "a positive integer")
_nonneg_int = _number(int, lambda v: v >= 0, "an integer >= 0")
_positive_float = _number(float, lambda v: v > 0, "a positive number")
_fraction = _number(float, lambda v: 0 <= v < 1, "a number in [0, 1) such as 0.1")


def _load_progress(label: str, stream: TextIO, tty: bool):
    """A progress callback for load_folder that draws on a terminal."""
    bar = _Progress(stream, tty)

    def cb(done: int, total: int) -> None:
        bar.update(f"{label} {_bar(done / total if total else 1)} {done}/{total}", force=done == total)

    return cb, bar


def _print_report(report: Any, stream: TextIO) -> None:
    for line in report.lines():
        print(printable(line), file=stream)


# --------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from engine.data import LoadOptions, Preprocessing, load_folder, scan_folder
    from engine.folders import data_folders
    from engine.memory import training_estimate
    from engine.runs import RunRecorder
    from engine.shapes import infer
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
    )

    err = sys.stderr
    tty = err.isatty()
    spec = Spec.load(args.arch)
    inf = infer(spec)
    if not inf.valid:
        raise CLIUsageError(f"invalid architecture {args.arch}: {inf.error_message}")
    out = _check_out_path(args.out)
    log_path = _check_out_path(args.log, ".jsonl", "--log") if args.log else None
    if args.val and args.val_split is not None:
        raise CLIUsageError("give either --val DIR or --val-split F, not both")
    # a root holding train/ and val/ (or valid/, validation/, test/): the engine's one convention
    folders = data_folders(args.data)
    train_dir = folders.train
    val_dir = args.val or (folders.val if args.val_split is None else None)
    if args.val and (safeio.inside(args.val, train_dir) or safeio.inside(train_dir, args.val)):
        raise CLIUsageError(f"--val {printable(args.val)} overlaps --data {printable(train_dir)}: validating on "
                            "training images measures nothing; give a separate folder or use --val-split F")
    if folders.split_root:
        note = ""
        if folders.val is not None and val_dir != folders.val:
            note = f" ({folders.val.name}/ not used: {'--val' if args.val else '--val-split'} given)"
        print(printable(f"{folders.root}: {folders.describe()}{note}"), file=err)
    # one file for two roles would destroy an input or an output: refused before any work
    safeio.check_distinct({"--out": args.out, "--log": args.log, "--arch": args.arch, "--data": args.data,
                           "--val": args.val, "--init-from": args.init_from}, outputs=("--out", "--log"))

    base = dict(spec.training) if isinstance(spec.training, dict) else {}
    cfg_raw: dict[str, Any] = {**TrainConfig().to_dict(), **base}
    overrides = {"epochs": args.epochs, "batch_size": args.batch_size, "optimizer": args.optimizer, "lr": args.lr,
                 "seed": args.seed, "limit": args.limit, "val_split": args.val_split,
                 "early_stopping": args.early_stopping, "schedule": args.schedule, "workers": args.workers}
    cfg_raw.update({k: v for k, v in overrides.items() if v is not None})
    if args.augment:
        cfg_raw["augment"] = True
    if args.hflip:
        cfg_raw["augment"] = True
        cfg_raw["aug_hflip"] = True
    if args.keep_best:
        cfg_raw["keep_best"] = True
    if val_dir:
        cfg_raw["val_split"] = 0.0
    try:
        config = TrainConfig.from_dict(cfg_raw)
    except (TypeError, TrainingError) as e:
        raise CLIUsageError(f"training settings: {e}") from None

    initial_state, frozen, fresh = None, [], None
    if args.init_from:
        from engine import modelfile
        from engine.transfer import transfer

        source = modelfile.load(args.init_from)
        moved = transfer(spec, source.spec, source.state, seed=config.seed)
        initial_state, fresh = moved.state, moved.new
        print(f"init-from {args.init_from}: {moved.describe()}", file=err)
    from engine.transfer import locked_layers

    locked = locked_layers(spec) if args.init_from else []  # the design's locks need trained weights to keep
    if args.freeze or locked:
        from engine.transfer import describe_layers, fresh_frozen_warning, parse_layers, weighted_layers

        frozen = sorted(set(locked) | set(parse_layers(args.freeze, spec) if args.freeze else []))
        print(f"frozen: layer(s) {describe_layers(spec, frozen)}", file=err)
        fresh = fresh if fresh is not None else [i for i, _, _ in weighted_layers(spec)]
        warning = fresh_frozen_warning(frozen, fresh)
        if warning:
            print(f"warning: {warning}", file=err)

    prep = Preprocessing.for_input(spec.input_shape)
    scan = scan_folder(train_dir)
    n_classes = len(scan.classes)
    if n_classes >= 2:  # a wrong class count is found before decoding (one class: load_folder says so)
        check_fit(spec, n_classes)
    # what the run will allocate, refused with the figure before anything is (engine.memory)
    n_images = min(scan.total, config.limit or scan.total)
    if val_dir:
        n_images += scan_folder(val_dir, "validation folder").total
    training_estimate(inf, config.batch_size, n_images, config.optimizer, config.keep_best).check()
    cb, bar = _load_progress("decoding", err, tty)
    train = load_folder(train_dir, prep=prep, options=LoadOptions(limit=config.limit, seed=config.seed), progress=cb)
    bar.clear()
    _print_report(train.report, err)
    val = None
    if val_dir:
        cb, bar = _load_progress("decoding validation", err, tty)
        val = load_folder(val_dir, prep=prep, classes=train.classes, progress=cb, what="validation folder")
        bar.clear()
        _print_report(val.report, err)
    trainer = Trainer(spec, train, val, config, prep=prep, initial_state=initial_state, frozen=frozen,
                      init_from=str(Path(args.init_from).resolve()) if args.init_from else None)
    recorder = RunRecorder(trainer, "cli").start()

    progress = _Progress(err, tty)
    log_lines: list[str] = []  # written with the model, after training: a failed run clobbers nothing
    interrupted = {"n": 0}

    def on_sigint(signum, frame):  # first Ctrl-C: finish the batch and save; second: abort
        interrupted["n"] += 1
        if interrupted["n"] == 1:
            trainer.stop()
            progress.clear()
            print("stopping after this batch (Ctrl-C again to abort without saving)", file=err)
        else:
            raise KeyboardInterrupt

    old_handler = None
    if threading_main():
        old_handler = signal.signal(signal.SIGINT, on_sigint)
    result: Finished | None = None
    warned: set[str] = set()
    try:
        for ev in trainer.events():
            if isinstance(ev, Started):
                val_text = f", validating on {ev.val_images}" if ev.val_images else ", no validation"
                print(f"training on {ev.train_images} images in {len(ev.classes)} classes{val_text}; "
                      f"{ev.epochs} epoch(s) of {ev.batches} batches", file=err)
                for w in ev.warnings:
                    print(f"warning: {printable(w)}", file=err)
            elif isinstance(ev, BatchEnd):
                progress.update(
                    f"epoch {ev.epoch}/{ev.epochs} {_bar(ev.batch / ev.batches)} {ev.batch}/{ev.batches} "
                    f"loss {ev.epoch_loss:.4f} acc {100 * ev.epoch_accuracy:.2f}% "
                    f"{ev.images_per_second:,.0f} img/s ETA {_fmt_time(ev.eta_seconds)}",
                    force=ev.batch == ev.batches)
            elif isinstance(ev, EpochEnd):
                progress.clear()
                val_text = (f"  val loss {ev.val_loss:.4f} acc {100 * ev.val_accuracy:.2f}%"
                            if ev.val_loss is not None else "")
                print(f"epoch {ev.epoch}/{ev.epochs}  loss {ev.train_loss:.4f} acc {100 * ev.train_accuracy:.2f}%"
                      f"{val_text}  {ev.seconds:.1f} s  {ev.images_per_second:,.0f} img/s", file=err)
                for w in ev.health:  # each kind of problem once, when it first shows
                    if w.kind not in warned:
                        warned.add(w.kind)
                        print(f"warning: {printable(w.message)}", file=err)
                log_lines.append(safeio.dumps(ev.to_dict()) + "\n")
                recorder.epoch()
            elif isinstance(ev, Finished):
                progress.clear()
                result = ev
    except BaseException:
        recorder.finish(status="aborted", message="aborted without saving")
        raise
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGINT, old_handler)
    assert result is not None
    nan_guard = result.message.startswith(("loss became", "weights became"))
    if result.status == "failed" and not trainer.history and not nan_guard:
        recorder.finish()
        raise EngineError(result.message)  # nothing learned worth saving
    try:
        trainer.save(out)
        if log_path is not None:
            safeio.write_text(log_path, "".join(log_lines), "--log")
    except BaseException as e:
        recorder.finish(status="failed", message=f"the model could not be saved: {e}")
        raise
    recorder.finish(model_path=out)
    if result.status != "failed":
        print(printable(result.message), file=err)
    print(f"saved {printable(out)}" + (f" and {printable(log_path)}" if log_path else ""), file=err)
    if recorder.warning:
        print(f"warning: {printable(recorder.warning)}", file=err)
    elif recorder.run_id is not None:
        print(f"recorded as run {recorder.run_id} (`cnn-designer runs show {recorder.run_id}`)", file=err)
    if result.status == "failed":
        from engine.cli import error_line

        error_line(f"{result.message} (saved the last good weights to {out})")
        return 2
    return 0


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


# --------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------
def cmd_evaluate(args: argparse.Namespace) -> int:
    from engine import modelfile
    from engine.data import LoadOptions, load_folder
    from engine.folders import data_folders
    from engine.memory import eval_batch_size
    from engine.shapes import infer
    from engine.training import evaluate

    tm = modelfile.load(args.model)
    inf = infer(tm.spec)
    eval_batch_size(inf)  # refuses before decoding when not even one image fits the memory budget
    err = sys.stderr
    folders = data_folders(args.data)  # a root holding train/ and val/: the validation part is evaluated
    folder = folders.val or folders.train
    if folders.split_root:
        print(printable(f"{folders.root}: evaluating on {folder.name}/ ({folders.describe()})"), file=err)
    cb, bar = _load_progress("decoding", err, err.isatty() and not args.json)
    data = load_folder(folder, prep=tm.preprocessing, classes=tm.classes, options=LoadOptions(limit=args.limit),
                       progress=cb)
    bar.clear()
    if not args.json:
        _print_report(data.report, err)
    else:
        for s in data.report.skipped:
            print(printable(f"skipped {s.path}: {s.reason}"), file=err)
    ev = evaluate(tm.model(), data, tm.preprocessing, batch_size=eval_batch_size(inf, len(data)))
    if args.json:
        doc = ev.to_dict()
        doc["skipped"] = [{"path": s.path, "reason": s.reason} for s in data.report.skipped]
        print(safeio.dumps(doc, indent=1))
        return 0
    print(f"accuracy {100 * ev.accuracy:.2f}%  loss {ev.loss:.4f}  images {ev.count}")
    names = [printable(c) for c in ev.classes]
    width = max(len(c) for c in names)
    print("per-class accuracy:")
    for c, a, k in zip(names, ev.per_class_accuracy, ev.per_class_count, strict=True):
        print(f"  {c:<{width}}  {'-' if a is None else f'{100 * a:6.2f}%'}  ({k} images)")
    print("confusion matrix (rows: true class, columns: predicted):")
    cw = max(width, max(len(str(int(v))) for v in ev.confusion.flat) if ev.confusion.size else 1)
    print("  " + " " * width + "  " + " ".join(f"{c:>{cw}}" for c in names))
    for c, row in zip(names, ev.confusion, strict=True):
        print(f"  {c:<{width}}  " + " ".join(f"{int(v):>{cw}}" for v in row))
    return 0


# --------------------------------------------------------------------------------------------
# predict
# --------------------------------------------------------------------------------------------
def cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np

    from engine import modelfile
    from engine.cli import error_line
    from engine.data import ImageError, load_image
    from engine.memory import inference_estimate
    from engine.shapes import infer

    tm = modelfile.load(args.model)
    inference_estimate(infer(tm.spec), 1, "predicting with this model").check()
    results = []
    failed = 0
    for path in args.images:
        try:
            x = load_image(path, tm.preprocessing)
        except ImageError as e:
            error_line(str(e))
            failed += 1
            continue
        with np.errstate(all="ignore"):
            p = tm.predict_proba(x)[0].astype(np.float64)
        if not np.all(np.isfinite(p)):
            error_line(f"{path}: the model's output is not a number (its weights overflow on this image)")
            failed += 1
            continue
        best = int(np.argmax(p))
        results.append({"path": str(path), "class": tm.classes[best],
                        "probabilities": {c: float(v) for c, v in zip(tm.classes, p, strict=True)}})
    k = min(args.top, len(tm.classes))
    if args.json:
        print(safeio.dumps(results, indent=1))
    else:
        for r in results:
            top = sorted(r["probabilities"].items(), key=lambda t: -t[1])[:k]
            print(f"{printable(r['path'])}: {printable(r['class'])} ({100 * r['probabilities'][r['class']]:.1f}%)")
            if k > 1:
                for c, v in top:
                    print(f"    {printable(c):<12} {100 * v:6.2f}%")
    return 2 if failed else 0


# --------------------------------------------------------------------------------------------
# registration
# --------------------------------------------------------------------------------------------
def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train an architecture on a folder of images and save a .cnnd model",
        description="Train ARCH on DIR (one subfolder per class) and save the model. Settings not given here "
                    "come from the architecture's \"training\" object, else the defaults shown. Progress goes to "
                    "stderr; Ctrl-C stops after the current batch and still saves.")
    p.add_argument("--arch", required=True, metavar="ARCH.json", help="architecture (cnn-designer/1 JSON)")
    p.add_argument("--data", required=True, metavar="DIR",
                   help="training images, one subfolder per class; or a root holding train/ and val/ "
                   "(valid/, validation/, test/): train on train/, validate on the other")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--val", metavar="DIR", help="validation images (same class subfolders)")
    g.add_argument("--val-split", type=_fraction, metavar="F",
                   help="hold out this fraction of each class for validation (default 0.1; 0 = none)")
    p.add_argument("--epochs", type=_positive_int, metavar="N", help="epochs (default 10)")
    p.add_argument("--batch-size", type=_positive_int, metavar="N", help="batch size (default 64)")
    p.add_argument("--optimizer", choices=("adam", "adamw", "sgd"), help="optimizer (default adam)")
    p.add_argument("--lr", type=_positive_float, metavar="F", help="learning rate (default 0.001)")
    p.add_argument("--seed", type=_nonneg_int, metavar="N", help="random seed (default 0): same seed, same weights")
    p.add_argument("--limit", type=_positive_int, metavar="N",
                   help="use at most N training images (a stratified, seeded subset)")
    p.add_argument("--augment", action="store_true", help="random shifts and small rotations while training")
    p.add_argument("--hflip", action="store_true", help="also random horizontal flips (implies --augment)")
    p.add_argument("--schedule", choices=("none", "step", "cosine"), help="learning-rate schedule (default none)")
    p.add_argument("--early-stopping", type=_nonneg_int, metavar="N",
                   help="stop after N epochs without a lower validation loss (default 0 = off)")
    p.add_argument("--keep-best", action="store_true", help="keep the weights of the epoch with the lowest val loss")
    p.add_argument("--workers", type=_positive_int, metavar="N",
                   help="processes sharing each batch (default: 2 on a machine with 2+ cores; 1 = this process)")
    p.add_argument("--init-from", metavar="MODEL.cnnd",
                   help="start from this trained model's weights for every layer the design left compatible "
                        "(same type and weight shapes, in order); the others start fresh")
    p.add_argument("--freeze", metavar="LAYERS",
                   help="keep these layers' weights fixed, e.g. 0-3 or 0,3 (layer indices as in `summary`)")
    p.add_argument("--out", required=True, metavar="MODEL.cnnd", help="where to save the trained model")
    p.add_argument("--log", metavar="RUN.jsonl", help="write one JSON line per epoch")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="accuracy, loss, per-class accuracy and confusion matrix on a folder",
                       description="Evaluate a trained model on a folder of labelled images (one subfolder per "
                                   "class, named as the model's classes).")
    p.add_argument("model", metavar="MODEL.cnnd")
    p.add_argument("--data", required=True, metavar="DIR",
                   help="labelled images, one subfolder per class; for a root holding train/ and val/ "
                   "(valid/, validation/, test/), the validation part")
    p.add_argument("--limit", type=_positive_int, metavar="N", help="use at most N images (stratified, seeded)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="classify image files with a trained model",
                       description="Print the predicted class and probabilities for each image. For a final "
                                   "Dense(1) + Sigmoid the probability is that of the second class.")
    p.add_argument("model", metavar="MODEL.cnnd")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--json", action="store_true",
                   help='print [{"path", "class", "probabilities": {class: p}}] with every class')
    p.add_argument("--top", type=_positive_int, default=1, metavar="K", help="show the K most likely classes")
    p.set_defaults(func=cmd_predict)
