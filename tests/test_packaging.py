"""What `pip install .` puts in site-packages: every package and every shipped file (issue #11).

.ci/run builds the wheel and runs the installed app away from the checkout; these checks catch the
two ways that can drift without running it: a new subpackage missing from pyproject.toml's
explicit list, or a new kind of resource file matched by no package-data pattern.
"""

import fnmatch
import re
import tomllib
from pathlib import Path

from engine.resources import PACKAGE, export_template, resource_path, sample_data_dir, templates_dir

ROOT = Path(__file__).resolve().parent.parent
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]


def test_every_source_package_is_installed():
    found = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for top in ("engine", "designer")
        for p in (ROOT / top).rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    assert set(SETUPTOOLS["packages"]) == found | {PACKAGE}
    assert SETUPTOOLS["package-dir"] == {PACKAGE: "resources"}


def test_every_resource_file_is_shipped():
    patterns = SETUPTOOLS["package-data"][PACKAGE]
    folder = ROOT / "resources"
    files = [p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".py"]
    assert len(files) > 800
    missed = [str(p.relative_to(folder)) for p in files
              if not any(fnmatch.fnmatch(str(p.relative_to(folder)), pat) for pat in patterns)]
    assert missed == []


def test_resources_are_read_through_the_package():
    assert resource_path().samefile(ROOT / "resources")
    assert (templates_dir() / "lenet5.json").is_file()
    assert len(list(sample_data_dir().iterdir())) == 10
    assert "__CLASSES__" in export_template("predict.py.in")


def test_no_code_finds_files_relative_to_its_source():
    """Paths computed from __file__ break once installed (the helper processes' start-up included)."""
    users = sorted(
        str(p.relative_to(ROOT))
        for top in ("engine", "designer")
        for p in (ROOT / top).rglob("*.py")
        if re.search(r"(?<![.\w])__file__", p.read_text(encoding="utf-8"))
    )
    assert users == []


def test_a_helper_process_imports_what_its_parent_imports(tmp_path, monkeypatch):
    """A helper (parallel decoding, two-process training) starts with its parent's module search
    path: a module only the parent's sys.path can find is found, and its `engine` is the parent's."""
    import json

    import engine
    from engine.subproc import caller_pipe, start_helper

    (tmp_path / "probe_helper.py").write_text(
        "import sys\n"
        "def _worker_main():\n"
        "    import engine\n"
        "    from engine.subproc import helper_pipe\n"
        "    helper_pipe().send({'engine': engine.__path__[0], 'path': sys.path})\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))  # not on PYTHONPATH: only this process's sys.path has it
    monkeypatch.delenv("PYTHONPATH", raising=False)
    proc = start_helper("probe_helper")
    try:
        reply = caller_pipe(proc).recv()
    finally:
        proc.stdin.close()
        proc.wait(30)
    assert Path(reply["engine"]).samefile(engine.__path__[0])
    assert reply["path"][0] == str(tmp_path)
    assert json.dumps(reply["path"]) == json.dumps(__import__("sys").path)
