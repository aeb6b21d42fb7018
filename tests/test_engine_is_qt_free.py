"""The engine must stay usable without Qt: no module under engine/ may import it."""

import ast
import subprocess
import sys
from pathlib import Path

FORBIDDEN = {"PySide6", "shiboken6", "pyqtgraph", "PyQt5", "PyQt6", "designer"}
ENGINE = Path(__file__).resolve().parent.parent / "engine"


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module":
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                roots.add(node.args[0].value.split(".")[0])
    return roots


def test_no_engine_module_imports_qt():
    files = sorted(ENGINE.rglob("*.py"))
    assert files, "engine/ has no modules?"
    offenders = {str(f.relative_to(ENGINE)): sorted(imported_roots(f) & FORBIDDEN) for f in files}
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"engine modules import Qt/GUI code: {offenders}"


def test_importing_engine_does_not_load_qt():
    code = (
        "import sys, pkgutil, importlib, engine\n"
        "for m in pkgutil.walk_packages(engine.__path__, 'engine.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('PySide6', 'shiboken6', 'pyqtgraph')]\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_detector_catches_a_qt_import(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("from PySide6.QtCore import QObject\nimport numpy\n")
    assert imported_roots(f) & FORBIDDEN == {"PySide6"}
