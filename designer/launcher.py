"""The `cnn-designer` command: CLI subcommands without Qt, otherwise the window.

Subcommands (train, evaluate, predict, summary, export, runs, import, ...) go to engine.cli and never import Qt,
so they work on a machine without a display. Anything else (no arguments, a file to open,
--screenshot) starts the GUI.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    from engine import cli

    if args and (args[0] in cli.SUBCOMMANDS or args[0] in ("-h", "--help", "--version")):
        return cli.main(args)
    from designer.app import run_app

    return run_app(args)
