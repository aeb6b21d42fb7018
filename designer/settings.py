"""Where the app keeps its settings and its recovery file.

QSettings under one organisation/application name; CNN_DESIGNER_CONFIG_DIR redirects both the
settings and the recovery file to a folder (an INI file there), so tests and portable installs never
touch the user's real configuration.
"""

from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtCore import QSettings, QStandardPaths

ORGANIZATION = "CNN Designer"
APPLICATION = "CNN Designer"
CONFIG_ENV = "CNN_DESIGNER_CONFIG_DIR"
MAX_RECENT = 8


def config_dir() -> Path:
    override = os.environ.get(CONFIG_ENV)
    if override:
        return Path(override)
    loc = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.AppDataLocation)
    return Path(loc) if loc else Path.home() / ".cnn-designer"


def settings() -> QSettings:
    override = os.environ.get(CONFIG_ENV)
    if override:
        return QSettings(str(Path(override) / "settings.ini"), QSettings.Format.IniFormat)
    return QSettings(ORGANIZATION, APPLICATION)


def recovery_path() -> Path:
    return config_dir() / "recovery.json"


def recent_files() -> list[str]:
    value = settings().value("recent_files", [])
    if isinstance(value, str):
        value = [value]
    return [str(v) for v in (value or []) if v]


def add_recent_file(path: str | os.PathLike) -> list[str]:
    p = str(Path(path).resolve())
    files = [p] + [f for f in recent_files() if f != p]
    files = files[:MAX_RECENT]
    settings().setValue("recent_files", files)
    return files


def remove_recent_file(path: str) -> None:
    settings().setValue("recent_files", [f for f in recent_files() if f != path])
