"""`cnn-designer export MODEL.cnnd --format onnx|pytorch|json|npz --out PATH`."""

from __future__ import annotations

import argparse

from engine.export import FORMATS, ExportError, export_model, guess_format
from engine.export.onnx_export import OPSET
from engine.safeio import printable_lines


def cmd_export(args: argparse.Namespace) -> int:
    fmt = args.format or guess_format(args.out)
    if fmt is None:
        raise ExportError(f"cannot tell the format from {args.out!r}: add --format ({', '.join(FORMATS)})")
    result = export_model(args.model, fmt, args.out, samples=args.samples, allow_untrained=args.allow_untrained,
                          opset=args.opset)
    print(printable_lines(result.message))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    epilog = "formats:\n" + "\n".join(f"  {k:8} {v}" for k, v in FORMATS.items())
    p = subparsers.add_parser(
        "export",
        help="export a trained model to ONNX, PyTorch, JSON or NPZ",
        description="Export a trained .cnnd model. ONNX and PyTorch exports include sample images with the "
        "app's probabilities and a predict.py whose --check proves the export reproduces them.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL.cnnd", help="trained model file")
    p.add_argument("--format", choices=tuple(FORMATS), help="output format (default: from --out's extension, "
                   "a name without extension is a PyTorch folder)")
    p.add_argument("--out", required=True, metavar="PATH", help="file (onnx, json, npz) or folder (pytorch)")
    p.add_argument("--samples", nargs="+", metavar="IMAGE",
                   help="images to bundle as proof (default: one per class from the training data, "
                   "else the built-in digits)")
    p.add_argument("--allow-untrained", action="store_true",
                   help="export even if the model file has no training history")
    p.add_argument("--opset", type=int, metavar="N", help=f"ONNX opset (default {OPSET}; newer runtimes "
                   "accept newer ones)")
    p.set_defaults(func=cmd_export)
