"""Where the window remembers things (last folder, geometry, splitters, overlay settings, model).

Tests and sandboxes set XRAYVIEWER_SETTINGS_DIR or XRAYVIEWER_DATA_DIR so they never touch a person's real settings.
"""

from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtCore import QSettings

from xrayviewer import APP_NAME


def app_settings() -> QSettings:
    root = os.environ.get("XRAYVIEWER_SETTINGS_DIR") or os.environ.get("XRAYVIEWER_DATA_DIR")
    if root:
        return QSettings(str(Path(root) / "settings.ini"), QSettings.Format.IniFormat)
    return QSettings(APP_NAME, APP_NAME)


def read_bool(settings: QSettings, key: str, default: bool) -> bool:
    value = settings.value(key, default)
    if isinstance(value, str):
        return value.lower() in ("1", "true", "yes")
    return bool(value)


def read_float(settings: QSettings, key: str, default: float) -> float:
    try:
        return float(settings.value(key, default))
    except (TypeError, ValueError):
        return default
