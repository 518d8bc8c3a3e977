"""Shared test set-up: offscreen Qt, private data/cache dirs, and the real radiographs in ../shared (or a skip)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")

from xrayviewer.paths import shared_data_dir  # noqa: E402

SHARED = shared_data_dir()
SKIP_SHARED = "../shared/data is absent: the real radiographs are not here (the synthetic twin of this test runs instead)"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture(autouse=True, scope="session")
def _private_dirs(tmp_path_factory):
    """User models and caches go to a temp dir, never the developer's real ones."""
    root = tmp_path_factory.mktemp("xrayviewer-home")
    os.environ.setdefault("XRAYVIEWER_DATA_DIR", str(root / "data"))
    os.environ.setdefault("XRAYVIEWER_CACHE_DIR", str(root / "cache"))
    yield


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or skip with the reason."""
    if SHARED is None:
        pytest.skip(SKIP_SHARED)
    return SHARED


@pytest.fixture(scope="session")
def cxr_manifest(shared_data) -> list[dict]:
    with open(shared_data / "cxr" / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Screenshots and figures tests save for a person to look at."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
