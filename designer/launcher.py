"""The `cnn-designer` command: CLI subcommands without Qt, otherwise the window.

Subcommands (train, evaluate, predict, summary, export, runs, import, ...) go to engine.cli and never import Qt,
so they work on a machine without a display. Anything else (no arguments, a file to open,
--screenshot) starts the GUI.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    from engine import cli

    if args and (args[0] in cli.SUBCOMMANDS or args[0] in ("-h", "--help", "--version")):
        return cli.main(args)
    if "--screenshot" not in args and will_use_xcb():
        problem = xcb_problem()
        if problem:  # instead of Qt's multi-line abort about the "xcb" platform plugin
            print(problem, file=sys.stderr)
            return 2
    from designer.app import run_app

    return run_app(args)


def _xcb_plugin() -> Path | None:
    """PySide6's X11 platform plugin, found without importing Qt (importing is what aborts)."""
    spec = importlib.util.find_spec("PySide6")
    for base in (spec.submodule_search_locations or []) if spec else []:
        plugin = Path(base) / "Qt" / "plugins" / "platforms" / "libqxcb.so"
        if plugin.is_file():
            return plugin
    return None


def missing_libraries(ldd_output: str) -> list[str]:
    """Sonames `ldd` reports as "not found", in its order, once each."""
    found = re.findall(r"^\s*(\S+)\s+=>\s+not found", ldd_output, flags=re.M)
    return list(dict.fromkeys(found))


def debian_package(soname: str) -> str:
    """The Debian/Ubuntu package shipping a library, by Debian's naming rule: libxcb-icccm.so.4 ->
    libxcb-icccm4, libxkbcommon-x11.so.0 -> libxkbcommon-x11-0 (a dash when the name ends in a digit)."""
    name, _, version = soname.partition(".so.")
    name, major = name.lower(), version.split(".")[0]
    return f"{name}{'-' if name[-1:].isdigit() else ''}{major}"


def xcb_problem(ldd_output: str | None = None) -> str | None:
    """One line naming the system libraries the X11 window needs and the command that installs them,
    or None when nothing is missing (or it cannot be checked: no ldd, no plugin, not Linux)."""
    if ldd_output is None:
        plugin, ldd = _xcb_plugin(), shutil.which("ldd")
        if plugin is None or ldd is None:
            return None
        try:
            ldd_output = subprocess.run([ldd, str(plugin)], capture_output=True, text=True, timeout=20).stdout
        except (OSError, subprocess.SubprocessError):
            return None
    missing = missing_libraries(ldd_output)
    if not missing:
        return None
    packages = " ".join(dict.fromkeys(debian_package(m) for m in missing))
    return (f"cnn-designer: the window needs system libraries that are missing ({', '.join(missing)}); "
            f"install them with: sudo apt-get install {packages}")


def will_use_xcb() -> bool:
    """True when Qt would open its X11 (xcb) platform: Linux with DISPLAY, and neither another
    platform asked for nor a Wayland session to use instead."""
    if not sys.platform.startswith("linux"):
        return False
    platform = os.environ.get("QT_QPA_PLATFORM", "")
    if platform:
        return platform.startswith("xcb")
    return bool(os.environ.get("DISPLAY")) and not os.environ.get("WAYLAND_DISPLAY")
