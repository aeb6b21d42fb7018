"""The command line: `cnn-designer SUBCOMMAND` (argparse). Errors are one line on stderr, exit 2."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from engine import __version__
from engine.errors import EngineError
from engine.safeio import MAX_MESSAGE_CHARS, dumps, printable, printable_lines
from engine.shapes import infer, summary_table
from engine.spec import Spec

SUBCOMMANDS = ("summary", "train", "evaluate", "predict", "export", "explain", "runs", "lr-find", "check",
               "import")


def load_spec_or_model(path: str) -> Spec:
    """Architecture from a `.json` design or the architecture inside a `.cnnd` model file."""
    if Path(path).suffix.lower() == ".cnnd":
        from engine import modelfile

        return modelfile.load(path).spec
    return Spec.load(path)


def cmd_summary(args: argparse.Namespace) -> int:
    spec = load_spec_or_model(args.arch)
    inf = infer(spec)
    if args.json:
        print(dumps(inf.to_json(), indent=1))
    else:
        print(printable_lines(summary_table(spec, inf)))
    if not inf.valid:
        error_line(f"invalid architecture: {inf.error_message}")
        return 2
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse's usage errors echo what was typed (`unrecognized arguments: ...`): shown escaped,
    like every other message. Subcommands' parsers are of this class too (add_subparsers' default)."""

    def error(self, message: str):  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {printable(message, MAX_MESSAGE_CHARS)}\n")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(
        prog="cnn-designer",
        description="Design, train and export CNNs. With no subcommand (or a file), opens the app.",
    )
    ap.add_argument("--version", action="version", version=f"cnn-designer {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="SUBCOMMAND")

    p = sub.add_parser("summary", help="print each layer's output shape and parameters")
    p.add_argument("arch", metavar="ARCH", help="architecture .json or model .cnnd")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_summary)

    for register in _EXTRA_COMMANDS:
        register(sub)
    return ap


#: Other modules add their subcommands here (train/evaluate/predict, export) so this file stays small.
_EXTRA_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []


def _load_extra_commands() -> None:
    import importlib

    for name in ("engine.cli_train", "engine.export.cli", "engine.cli_explain", "engine.cli_runs",
                 "engine.cli_import"):
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        if mod.register not in _EXTRA_COMMANDS:
            _EXTRA_COMMANDS.append(mod.register)


def error_line(msg: str) -> None:
    """The one line every error ends as: control characters from file or class names escaped,
    long values cut, so a hostile name can neither forge lines nor flood the terminal."""
    print(f"cnn-designer: {printable(msg, MAX_MESSAGE_CHARS)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    _load_extra_commands()
    ap = build_parser()
    args = ap.parse_args(argv)
    if not getattr(args, "func", None):
        ap.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (EngineError, OSError, MemoryError) as e:
        if isinstance(e, EngineError):
            msg = str(e)
        elif isinstance(e, MemoryError):
            msg = "out of memory: use a smaller input size, batch size or model"
        else:
            msg = f"{e.strerror or e}: {e.filename or ''}".rstrip(": ")
        error_line(msg)
        return 2
    except Exception as e:  # a bug must still end as one line, not a traceback (set CNN_DESIGNER_DEBUG=1 to see it)
        if os.environ.get("CNN_DESIGNER_DEBUG"):
            raise
        error_line(f"unexpected error ({type(e).__name__}: {e}); please report it")
        return 2
    except KeyboardInterrupt:
        print("cnn-designer: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
