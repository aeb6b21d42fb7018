"""The README's two copy-paste lines are the contract with a new user; CI runs the test line."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def code_lines() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```\n(.*?)\n```", text, flags=re.S)
    return [b.strip() for b in blocks if b.strip().startswith("python3 -m venv")]


def test_readme_has_exactly_two_setup_lines():
    lines = code_lines()
    assert len(lines) == 2, lines
    launch, tests = lines
    assert launch.endswith("cnn-designer") and "pytest" not in launch
    assert "pytest" in tests and "[test]" in tests


def test_ci_runs_the_readme_test_line():
    """Verbatim, once, as CI's last command, so pytest's summary closes the output; before it CI may
    add its own steps (torch for the export tests, the installed-wheel check)."""
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    test_line = code_lines()[1]
    commands = [ln.strip() for ln in ci.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert commands[-1] == test_line
    assert commands.count(test_line) == 1
    assert "QT_QPA_PLATFORM=offscreen" in ci
    assert "set -euo pipefail" in ci
