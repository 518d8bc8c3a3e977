"""Where things live: shipped models, the user's models and cache, the shared test data."""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_cache_dir, user_data_dir

from xrayviewer import APP_NAME

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
RESOURCES_DIR = REPO_DIR / "resources"
SHIPPED_MODELS_DIR = REPO_DIR / "models"
DEFAULT_MODEL_DIR = SHIPPED_MODELS_DIR / "default"
LUNG_MODEL_DIR = SHIPPED_MODELS_DIR / "lungs"


def user_models_dir() -> Path:
    """Models the user trained (XRAYVIEWER_DATA_DIR overrides, for tests)."""
    root = os.environ.get("XRAYVIEWER_DATA_DIR")
    base = Path(root) if root else Path(user_data_dir(APP_NAME, appauthor=False))
    return base / "models"


def cache_dir() -> Path:
    """Feature and thumbnail caches (XRAYVIEWER_CACHE_DIR overrides, for tests)."""
    root = os.environ.get("XRAYVIEWER_CACHE_DIR")
    return Path(root) if root else Path(user_cache_dir(APP_NAME, appauthor=False))


def shared_data_dir() -> Path | None:
    """The real radiographs in ../shared/data (XRAYVIEWER_SHARED_DATA overrides); None when absent."""
    env = os.environ.get("XRAYVIEWER_SHARED_DATA")
    candidates = [Path(env)] if env else [REPO_DIR.parent / "shared" / "data"]
    for path in candidates:
        if (path / "cxr" / "manifest.csv").is_file():
            return path
    return None
