"""The `cnn-designer` command as a user meets it on a machine with or without a screen."""

from __future__ import annotations

import os
import subprocess
import sys

from screenshot_checks import assert_panels_drawn


def run(args, **env_changes):
    env = {k: v for k, v in os.environ.items() if k not in ("QT_QPA_PLATFORM", "DISPLAY", "WAYLAND_DISPLAY")}
    env.update(env_changes)
    return subprocess.run([sys.executable, "-m", "designer", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_no_display_gives_one_clear_line_not_a_qt_abort():
    r = run([])
    assert r.returncode == 2
    assert r.stderr.strip().startswith("cnn-designer: no display found")
    assert "Traceback" not in r.stderr and "plugin" not in r.stderr


def test_screenshot_needs_no_display(tmp_path):
    out = tmp_path / "shot.png"
    r = run(["--screenshot", str(out)])
    assert r.returncode == 0, r.stderr
    assert_panels_drawn(out)


def test_missing_file_is_one_line():
    r = run(["/nonexistent/design.json"], QT_QPA_PLATFORM="offscreen")
    assert r.returncode == 2
    assert r.stderr.strip() == "cnn-designer: /nonexistent/design.json: no such file"


LDD_MINIMAL_DEBIAN = """\
\tlinux-vdso.so.1 (0x00007ffc5b1f2000)
\tlibQt6XcbQpa.so.6 => /venv/PySide6/Qt/lib/libQt6XcbQpa.so.6 (0x00007f2110e91000)
\tlibxcb-cursor.so.0 => not found
\tlibxcb-icccm.so.4 => not found
\tlibxcb-util.so.1 => /lib/x86_64-linux-gnu/libxcb-util.so.1 (0x00007f2110d98000)
\tlibxcb-keysyms.so.1 => not found
\tlibxkbcommon-x11.so.0 => not found
\tlibxcb-icccm.so.4 => not found
\tlibxcb.so.1 => /lib/x86_64-linux-gnu/libxcb.so.1 (0x00007f2110d0d000)
"""


def test_missing_xcb_libraries_named_with_the_command_that_installs_them():
    from designer.launcher import debian_package, missing_libraries, xcb_problem

    assert missing_libraries(LDD_MINIMAL_DEBIAN) == [
        "libxcb-cursor.so.0", "libxcb-icccm.so.4", "libxcb-keysyms.so.1", "libxkbcommon-x11.so.0"]
    assert [debian_package(s) for s in ("libxcb-render-util.so.0", "libX11-xcb.so.1", "libxkbcommon-x11.so.0")] == [
        "libxcb-render-util0", "libx11-xcb1", "libxkbcommon-x11-0"]
    message = xcb_problem(LDD_MINIMAL_DEBIAN)
    assert "\n" not in message and "libxcb-icccm.so.4" in message
    assert message.endswith("sudo apt-get install libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxkbcommon-x11-0")
    assert xcb_problem("\tlibxcb.so.1 => /lib/libxcb.so.1 (0x1)\n") is None
    # on this machine, whatever it has: the real plugin's ldd gives None or the one line
    here = xcb_problem()
    assert here is None or ("\n" not in here and "sudo apt-get install libxcb" in here)


def test_launcher_stops_before_qt_when_xcb_libraries_are_missing(tmp_path):
    """A fake `ldd` first on PATH reports two missing libraries: the app exits with the one line,
    never reaching Qt's plugin abort."""
    fake = tmp_path / "ldd"
    fake.write_text("#!/bin/sh\nprintf '\\tlibxcb-icccm.so.4 => not found\\n\\tlibxcb-keysyms.so.1 => not found\\n'\n")
    fake.chmod(0o755)
    r = run([], DISPLAY=":99", PATH=f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert r.returncode == 2
    assert r.stderr.strip().endswith("sudo apt-get install libxcb-icccm4 libxcb-keysyms1"), r.stderr
    assert "plugin" not in r.stderr and "Traceback" not in r.stderr
