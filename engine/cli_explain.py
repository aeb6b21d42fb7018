"""`cnn-designer explain | lr-find | check`: the "why" tools on the command line (engine.saliency,
engine.preflight), registered into engine.cli's parser by `register`. `--json` output is exactly
one JSON document on stdout; progress and notes go to stderr."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from engine import safeio
from engine.errors import EngineError
from engine.safeio import dumps, printable


def _out_dir(out: str) -> Path:
    d = Path(out).expanduser()
    if d.exists() and not d.is_dir():
        raise EngineError(f"--out {d} is a file: give a folder for the overlay images")
    if not d.exists():
        if not d.parent.exists():
            raise EngineError(f"--out: folder {d.parent} does not exist")
        d.mkdir()
    if not os.access(d, os.W_OK):
        raise EngineError(f"--out: folder {d} is not writable")
    return d


def _overlay_names(images: list[str], out: Path, method: str) -> list[Path]:
    """One overlay per image, `<stem>_<method>.png`; a stem seen twice gets `-2`, `-3`...; never
    the path of an input image."""
    inputs = {Path(p).resolve() for p in images}
    seen: dict[str, int] = {}
    names = []
    for p in images:
        stem = Path(p).stem
        seen[stem] = seen.get(stem, 0) + 1
        suffix = "" if seen[stem] == 1 else f"-{seen[stem]}"
        target = out / f"{stem}{suffix}_{method}.png"
        if target.resolve() in inputs:
            raise EngineError(f"--out: {target} would overwrite an input image; choose another folder")
        safeio.check_writable(target, "overlay", follow_links=False)  # all of them before any work
        names.append(target)
    return names


def _save_png(image: Any, path: Path) -> None:
    import io

    from engine.spec import atomic_write_bytes

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue(), "overlay", follow_links=False)


def cmd_explain(args: argparse.Namespace) -> int:
    import numpy as np

    from engine import modelfile
    from engine.data import ImageError, decode_image
    from engine.memory import explain_estimate
    from engine.saliency import explain, images_at_once, overlay, spatial_layers
    from engine.shapes import infer

    mf = modelfile.load(args.model)
    explain_estimate(infer(mf.spec), *images_at_once(args.method, mf.spec.input_shape)).check()
    model = mf.build_model()
    target = None
    if args.class_name is not None:
        if args.class_name not in mf.classes:
            raise EngineError(f"--class {printable(args.class_name)!r} is not one of the model's classes: "
                              + ", ".join(printable(c) for c in mf.classes))
        target = mf.classes.index(args.class_name)
    if args.method == "gradcam":
        layers = spatial_layers(model)
        if not layers:
            raise EngineError("--method gradcam needs a layer whose output is still a map (C x H x W) and "
                              "this design has none; use --method occlusion")
        if args.layer is not None and args.layer not in layers:
            raise EngineError(f"--layer {args.layer} is not a map layer before the class scores; "
                              f"choose one of {', '.join(map(str, layers))}")
    elif args.layer is not None:
        raise EngineError("--layer applies to --method gradcam only")
    out = _out_dir(args.out) if args.out else None
    names = _overlay_names(args.images, out, args.method) if out else []
    prep = mf.preprocessing
    results, failed = [], 0
    for k, path in enumerate(args.images):
        try:
            raw = decode_image(path, prep.color, prep.height, prep.width)
        except ImageError as e:
            print(f"cnn-designer: {printable(str(e))}", file=sys.stderr)
            failed += 1
            continue
        with np.errstate(all="ignore"):  # an overflowing model is reported below in words, not as warnings
            s = explain(model, prep.normalize(raw[None]), args.method, target, args.layer)[0]
        if not np.all(np.isfinite(s.probabilities)):
            print(f"cnn-designer: {printable(path)}: the model's output is not a number (its weights overflow on "
                  "this image)", file=sys.stderr)
            failed += 1
            continue
        entry: dict[str, Any] = {"path": str(path), "class": mf.classes[s.target],
                                 "probability": float(s.probabilities[s.target]), "method": s.method}
        if s.layer is not None:
            entry["layer"] = s.layer
        if out is not None:
            caption = f"{mf.classes[s.target]} {100 * s.probabilities[s.target]:.1f}% ({s.method})"
            _save_png(overlay(raw, s.heatmap, caption=printable(caption)), names[k])
            entry["overlay"] = str(names[k])
        if args.json:
            entry["heatmap"] = np.round(s.heatmap, 4).tolist()
        else:
            where = f" -> {printable(names[k])}" if out is not None else ""
            print(f"{printable(path)}: {printable(entry['class'])} ({100 * entry['probability']:.1f}%) "
                  f"{s.method}{'' if s.layer is None else f' layer {s.layer}'}{where}")
        results.append(entry)
    if args.json:
        print(dumps(results))
    return 2 if failed else 0


def _load_data(args: argparse.Namespace, limit: int | None) -> tuple[Any, Any, Any]:
    """(spec, data, preprocessing) for lr-find / check, checked as `train` checks them."""
    from engine.cli import load_spec_or_model
    from engine.cli_train import CLIUsageError, _load_progress, _print_report
    from engine.data import LoadOptions, Preprocessing, load_folder, scan_folder
    from engine.memory import training_estimate
    from engine.shapes import infer
    from engine.training import check_fit

    spec = load_spec_or_model(args.arch)
    inf = infer(spec)
    if not inf.valid:
        raise CLIUsageError(f"invalid architecture {args.arch}: {inf.error_message}")
    prep = Preprocessing.for_input(spec.input_shape)
    scan = scan_folder(args.data)
    n_classes = len(scan.classes)
    if n_classes >= 2:
        check_fit(spec, n_classes)
    # the memory the steps will need, refused with the figure before decoding (as `train` does)
    training_estimate(inf, getattr(args, "batch_size", None) or 64, min(scan.total, limit or scan.total),
                      getattr(args, "optimizer", None) or "adam").check()
    err = sys.stderr
    cb, bar = _load_progress("decoding", err, err.isatty() and not args.json)
    data = load_folder(args.data, prep=prep, options=LoadOptions(limit=limit), progress=cb)
    bar.clear()
    if not args.json:
        _print_report(data.report, err)
    return spec, data, prep


def _optimizer_name(args: argparse.Namespace, spec: Any) -> str:
    saved = spec.training.get("optimizer") if isinstance(spec.training, dict) else None
    return args.optimizer or (saved if saved in ("adam", "adamw", "sgd") else "adam")


def cmd_lr_find(args: argparse.Namespace) -> int:
    import math

    from engine.health import nice
    from engine.preflight import lr_find

    # the test needs steps x batch images; more would only cost decoding time
    spec, data, prep = _load_data(args, None if args.steps * args.batch_size > 50_000
                                  else max(args.steps * args.batch_size, 1000))
    optimizer = _optimizer_name(args, spec)
    r = lr_find(spec, data, prep, optimizer=optimizer, batch_size=args.batch_size, steps=args.steps)
    if args.json:
        print(dumps(r.to_dict()))
        return 0
    print(f"learning-rate range test: {optimizer}, batch {args.batch_size}, {len(r.lrs)} steps"
          + (" (stopped: the loss diverged)" if r.stop_reason == "diverged" else ""))
    print("      lr   loss (smoothed)")
    shown = -math.inf
    for lr, loss in zip(r.lrs, r.losses, strict=True):
        decade = math.floor(math.log10(lr) * 2) / 2
        if decade > shown:
            shown = decade
            print(f"{lr:8.1e}   {loss:.4f}")
    print(f"suggested learning rate: {nice(r.suggested_lr)} (where the loss falls fastest, before its minimum)")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from engine.preflight import can_it_learn

    spec, data, prep = _load_data(args, 2000)
    r = can_it_learn(spec, data, prep, optimizer=_optimizer_name(args, spec), lr=args.lr)
    if args.json:
        print(dumps(r.to_dict()))
    else:
        print(r.message)
        for p in r.problems:
            print(f"problem: {p}")
    return 0 if r.ok else 1


def _arch_data_optimizer(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", required=True, metavar="ARCH", help="architecture .json (or a .cnnd's architecture)")
    p.add_argument("--data", required=True, metavar="DIR", help="training images, one subfolder per class")
    p.add_argument("--optimizer", choices=("adam", "adamw", "sgd"),
                   help="optimizer (default: the architecture's training setting, else adam)")


def register(sub: argparse._SubParsersAction) -> None:
    from engine.saliency import DEFAULT_METHOD, METHODS

    p = sub.add_parser(
        "explain", help="heat maps of what in each image drove the model's prediction",
        description="For each image, a heat map at the model's input size of the pixels that drove the "
                    "prediction (of the predicted class unless --class). Methods: occlusion (cover patches "
                    "with the image's median, default), gradcam (Grad-CAM on the last map layer "
                    "before any final pooling, or --layer), "
                    "smoothgrad (averaged input gradients). See docs/explain.md for when each misleads.")
    p.add_argument("model", metavar="MODEL.cnnd")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--class", dest="class_name", metavar="NAME", help="explain this class instead of the predicted one")
    p.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD,
                   help=f"saliency method (default {DEFAULT_METHOD})")
    p.add_argument("--layer", type=int, metavar="N", help="gradcam: the layer index to look at (default: the last "
                                                          "layer whose output is still a map)")
    p.add_argument("--out", metavar="DIR", help="write <image>_<method>.png overlays (image, heat map, colour bar)")
    p.add_argument("--json", action="store_true",
                   help='print [{"path", "class", "probability", "method", "heatmap": [[...]]}]')
    p.set_defaults(func=cmd_explain)

    from engine.cli_train import _positive_float, _positive_int

    p = sub.add_parser(
        "lr-find", help="suggest a learning rate (the range test: loss against a growing learning rate)",
        description="Train a fresh network for a few hundred steps while the learning rate grows from 1e-7 to 10, "
                    "and suggest the rate where the smoothed loss falls fastest before its minimum "
                    "(fastai's lr_find). Nothing is saved.")
    _arch_data_optimizer(p)
    p.add_argument("--batch-size", type=_positive_int, default=64, metavar="N", help="batch size (default 64)")
    p.add_argument("--steps", type=_positive_int, default=200, metavar="N", help="steps of the test (default 200)")
    p.add_argument("--json", action="store_true", help='print {"suggested_lr", "lrs": [...], "losses": [...]}')
    p.set_defaults(func=cmd_lr_find)

    p = sub.add_parser(
        "check", help="can this network learn at all? (overfit one small batch)",
        description="Train a fresh network on one small batch (2 images per class, 20 to 64) until it fits it or "
                    "400 steps pass, and report the problems met on the way. Exit code 0: it can learn; 1: it "
                    "cannot fit even that batch.")
    _arch_data_optimizer(p)
    p.add_argument("--lr", type=_positive_float, metavar="F", help="learning rate (default 0.001; SGD 0.01)")
    p.add_argument("--json", action="store_true",
                   help='print {"ok", "message", "steps", "batch_size", "initial_loss", "final_loss", '
                        '"final_accuracy", "losses", "problems"}')
    p.set_defaults(func=cmd_check)
