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
