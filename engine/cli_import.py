"""`cnn-designer import SOURCE --out NEW.cnnd`: the command-line face of engine.model_import."""

from __future__ import annotations

import argparse
import sys

from engine import safeio
from engine.cli_train import CLIUsageError, _check_out_path


def cmd_import(args: argparse.Namespace) -> int:
    from engine import modelfile
    from engine.model_import import import_model
    from engine.shapes import infer, summary_table

    out = _check_out_path(args.out)
    safeio.check_distinct({"--out": args.out, "SOURCE": args.source, "--like": args.like}, outputs=("--out",))
    classes = None
    if args.classes is not None:
        classes = [c.strip() for c in args.classes.split(",")]
        if any(not c for c in classes):
            raise CLIUsageError("--classes: give non-empty names separated by commas, e.g. cat,dog")
    tm, notes = import_model(args.source, like=args.like, classes=classes)
    modelfile.save(out, tm)
    for note in notes:
        print(safeio.printable(note), file=sys.stderr)
    print(safeio.printable_lines(summary_table(tm.spec, infer(tm.spec))))
    print(safeio.printable(f"classes: {', '.join(tm.classes)}"))
    print(f"saved {safeio.printable(out)}", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import", help="turn an ONNX model (or weights for a known design) into a .cnnd model",
        description="SOURCE.onnx: a chain of Conv, MaxPool, AveragePool, GlobalAveragePool, Flatten/Reshape, "
                    "Gemm or MatMul+Add, Relu, LeakyRelu, Sigmoid, Tanh, Softmax, BatchNormalization, Dropout, "
                    "Pad, Identity becomes an architecture with its weights. SOURCE.safetensors / .npz: weights "
                    "under the app's names (layers.{i}.weight, ...) replace those of --like's design.")
    p.add_argument("source", metavar="SOURCE", help=".onnx, .safetensors or .npz")
    p.add_argument("--out", required=True, metavar="NEW.cnnd", help="the model file to write")
    p.add_argument("--like", metavar="MODEL.cnnd",
                   help="the design (for weights), or the classes and preprocessing (for ONNX without the app's "
                        "metadata)")
    p.add_argument("--classes", metavar="A,B,...", help="class names in output order (default: class_0, ...)")
    p.set_defaults(func=cmd_import)
