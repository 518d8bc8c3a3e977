"""Ground truth for a folder run: a manifest.csv label column, else a parent folder named like a model class."""

from __future__ import annotations

import csv
import os
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

MANIFEST_NAME = "manifest.csv"
_PATH_COLUMNS = ("path", "file", "filename")
_LABEL_COLUMNS = ("label", "ground_truth", "class")
_MANIFEST_SEARCH_DEPTH = 3   # the folder opened may be a class sub-folder of the dataset that holds the manifest


def _key(path: str | Path) -> str:
    return os.path.normcase(os.path.abspath(path))


def read_manifest_labels(manifest: str | Path) -> dict[str, str]:
    """{absolute path: label} from a CSV with a path column (relative to the CSV) and a label column.
    An unreadable or label-less manifest gives {} (ground truth then falls back to the folder layout).
    Memoised by size and mtime (the viewer asks once per file it shows); do not modify the returned dict."""
    try:
        info = os.stat(manifest)
    except OSError:
        return {}
    return _read_manifest_labels(_key(manifest), info.st_size, info.st_mtime_ns)


@lru_cache(maxsize=8)
def _read_manifest_labels(manifest_key: str, size: int, mtime_ns: int) -> dict[str, str]:
    manifest = Path(manifest_key)
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = {name.strip().lower(): name for name in reader.fieldnames or []}
            path_col = next((fields[c] for c in _PATH_COLUMNS if c in fields), None)
            label_col = next((fields[c] for c in _LABEL_COLUMNS if c in fields), None)
            if path_col is None or label_col is None:
                return {}
            return {_key(manifest.parent / row[path_col]): row[label_col].strip()
                    for row in reader if row.get(path_col) and (row.get(label_col) or "").strip()}
    except (OSError, UnicodeDecodeError, csv.Error):
        return {}


def find_manifest(paths: Sequence[Path]) -> Path | None:
    """manifest.csv in the folder the paths share, or in one of its parents (up to a few levels)."""
    if not paths:
        return None
    try:
        folder = Path(os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths]))
    except ValueError:  # different drives
        return None
    for candidate in [folder, *folder.parents][:_MANIFEST_SEARCH_DEPTH + 1]:
        if (candidate / MANIFEST_NAME).is_file():
            return candidate / MANIFEST_NAME
    return None


def ground_truth_labels(paths: Iterable[str | Path], classes: Sequence[str]) -> dict[Path, str]:
    """{path: label} for the paths whose label is known; the others are left out.

    A manifest label wins (it may name a class the model does not know, such as "other": that still is the truth).
    Otherwise the parent folder counts when its name matches a model class (case-insensitive).
    """
    paths = [Path(p) for p in paths]
    manifest = find_manifest(paths)
    from_manifest = read_manifest_labels(manifest) if manifest else {}
    canonical = {c.lower(): c for c in classes}
    labels: dict[Path, str] = {}
    for path in paths:
        label = from_manifest.get(_key(path)) or canonical.get(path.parent.name.lower())
        if label:
            labels[path] = canonical.get(label.lower(), label)
    return labels
