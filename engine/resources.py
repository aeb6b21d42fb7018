"""The files CNN Designer ships: architecture templates, the sample MNIST digits, export templates.

The repository keeps them in its top-level resources/ folder; pyproject.toml installs that folder
as the package `cnn_designer_resources` (an editable install maps the same name onto the folder),
so an installed wheel carries them and every reader finds them through importlib.resources rather
than through a path computed from a source file.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from engine.errors import EngineError

PACKAGE = "cnn_designer_resources"


def resource_path(*parts: str) -> Path:
    """A shipped file or folder as a real path (training reads the sample digits as a folder)."""
    try:
        root = files(PACKAGE)
    except ModuleNotFoundError:
        raise EngineError(
            f"CNN Designer's resources are not installed (package {PACKAGE} missing): reinstall with pip"
        ) from None
    if not isinstance(root, Path):  # a zipped install; pip always unpacks, so this is a broken setup
        raise EngineError(f"CNN Designer's resources must be installed as files, not inside {root}")
    return root.joinpath(*parts)


def templates_dir() -> Path:
    return resource_path("templates")


def sample_data_dir() -> Path:
    """The built-in sample dataset: real MNIST digits, one subfolder per class."""
    return resource_path("sample_mnist")


def export_template(name: str) -> str:
    """The text of one export template (resources/export_templates/NAME)."""
    return resource_path("export_templates", name).read_text(encoding="utf-8")
