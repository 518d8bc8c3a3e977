"""Finding radiographs in folders: a streaming walk (iter_radiographs) and a folder-per-class dataset reader.

Dataset layout: `root/<class>/**/<image>`; optional `root/manifest.csv` with columns path (relative to root),
patient_id, and optionally label and source (the format of ../shared/data/cxr/manifest.csv).
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from xrayviewer.imaging.errors import FileAccessError, RadiographError
from xrayviewer.imaging.hashing import file_sha256
from xrayviewer.imaging.reader import open_regular_file, read_radiograph, sniff_image_format
from xrayviewer.imaging.sniff import HEAD_BYTES, is_dicom_head, read_head

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom"})
SYSTEM_NAMES = frozenset({"thumbs.db", "desktop.ini", "__macosx", "$recycle.bin", "system volume information",
                          "@eadir", "lost+found"})
MANIFEST_NAME = "manifest.csv"

# Patient id from a file name (case-insensitive, on the name without extension). An optional source prefix
# (letters then letters/digits, then "_", never "personN_") is followed by the patient part:
#   nih_00001281_000 -> nih_00001281     00001281_000 -> 00001281 (NIH ChestX-ray: <patient>_<followup>)
#   kermany_person12_virus_3 -> kermany_person12                 IM-0177-0001 -> IM-0177 (Kermany)
#   NORMAL2-IM-0131-0001 -> NORMAL2-IM-0131   jsrt_JPCNN001 -> jsrt_JPCNN001   anything else: up to the first "_".
# The id is the whole match; the `source` group (if the pattern has one) fills DatasetItem.source.
DEFAULT_PATIENT_PATTERN = (r"^(?:(?!person\d)(?P<source>[a-z][a-z0-9]*)_)?"
                           r"(?P<patient>person\d+|normal2-im-\d+|im-\d+|\d{8}|[^_]+)")

MIN_CLASS_IMAGES = 5  # below: error (no meaningful split)
FEW_CLASS_IMAGES = 10  # below: warning
MAX_IMBALANCE = 3.0  # largest / smallest class above this: warning


# ---------------------------------------------------------------- streaming walk

def natural_key(name: str) -> tuple:
    """Sort key so that 'img2' comes before 'img10' (case-insensitive, digits compared as numbers)."""
    parts = tuple((0, int(part)) if part.isdecimal() else (1, part.lower())
                  for part in re.split(r"(\d+)", name) if part)
    return parts, name  # the exact name breaks ties ('a.png' vs 'A.png') so the order is total


def is_hidden_or_system(name: str) -> bool:
    return name.startswith(".") or name.lower() in SYSTEM_NAMES


def is_candidate_name(name: str) -> bool:
    """By extension; files without a real extension ('IM0001', '1.2.840.113619.2.55') may be DICOM."""
    suffix = os.path.splitext(name)[1].lower()
    return suffix in IMAGE_EXTENSIONS or _has_no_real_extension(suffix)


def iter_radiographs(folder: str | os.PathLike, recursive: bool = True) -> Iterator[Path]:
    """Yield candidate image files under `folder`, streaming.

    Within each folder: its files first (natural order), then its sub-folders (natural order, depth-first).
    Each folder is listed with one os.scandir and nothing is opened until its file is reached, so a folder of
    10 000 files yields its first path at once. Files without an extension are yielded only if their header is
    DICOM. Hidden and system files/folders are skipped; unreadable sub-folders are skipped silently; folder
    symlinks are followed once (no cycles).
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileAccessError("folder not found" if not root.exists() else "not a folder", str(root))
    yield from _walk(root, recursive, visited=set())


def _walk(folder: Path, recursive: bool, visited: set) -> Iterator[Path]:
    try:
        info = folder.stat()
    except OSError:
        return
    identity = (info.st_dev, info.st_ino)
    if identity in visited:
        return
    visited.add(identity)
    files, subfolders = _list_folder(folder)
    for entry in files:
        path = Path(entry.path)
        if _is_wanted_file(path):
            yield path
    if recursive:
        for entry in subfolders:
            yield from _walk(Path(entry.path), recursive, visited)


def _list_folder(folder: Path) -> tuple[list[os.DirEntry], list[os.DirEntry]]:
    """(candidate files, sub-folders) of one folder, each naturally sorted; ([], []) if it cannot be listed."""
    files, subfolders = [], []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if is_hidden_or_system(entry.name):
                    continue
                try:
                    if entry.is_dir():
                        subfolders.append(entry)
                    elif is_candidate_name(entry.name):
                        files.append(entry)
                except OSError:  # entry vanished or is unreadable: skip it
                    continue
    except OSError:
        return [], []
    files.sort(key=lambda e: natural_key(e.name))
    subfolders.sort(key=lambda e: natural_key(e.name))
    return files, subfolders


def _is_wanted_file(path: Path) -> bool:
    """Known extensions pass as they are (the reader explains bad ones); extensionless files must be DICOM."""
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return True
    try:
        return is_dicom_head(read_head(path, 256))
    except OSError:
        return False


def _has_no_real_extension(suffix: str) -> bool:
    """'' or a DICOM UID component ('.55'): not a file type."""
    return suffix == "" or suffix[1:].isdigit()


# ---------------------------------------------------------------- datasets

@dataclass(frozen=True)
class DatasetItem:
    path: Path
    label: str
    patient_id: str | None = None
    source: str | None = None


@dataclass(frozen=True)
class DatasetProblem:
    severity: str  # "error" (training cannot go on) or "warning"
    message: str
    paths: tuple[Path, ...] = ()


@dataclass
class Dataset:
    root: Path
    classes: list[str] = field(default_factory=list)
    items: list[DatasetItem] = field(default_factory=list)
    problems: list[DatasetProblem] = field(default_factory=list)
    patient_id_origin: str = "file"  # "manifest", "pattern" or "file"

    @property
    def ok(self) -> bool:
        """No errors (warnings allowed)."""
        return not any(p.severity == "error" for p in self.problems)

    @property
    def errors(self) -> list[DatasetProblem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[DatasetProblem]:
        return [p for p in self.problems if p.severity == "warning"]

    def counts(self) -> dict[str, int]:
        """Images per class, in class order (0 for a class without items)."""
        found = Counter(item.label for item in self.items)
        return {label: found.get(label, 0) for label in self.classes}

    def fingerprint(self) -> str:
        """The training-data fingerprint: sha256 over the sorted (label, file sha256) pairs.

        Independent of paths and order: renaming or moving files keeps it; changing a pixel or a label changes it.
        """
        pairs = sorted(f"{item.label}\t{file_sha256(item.path)}" for item in self.items)
        return hashlib.sha256("\n".join(pairs).encode("utf-8")).hexdigest()


def discover_dataset(root: str | os.PathLike, *, patient_pattern: str | None = DEFAULT_PATIENT_PATTERN,
                     verify: bool = False) -> Dataset:
    """Read a folder-per-class dataset and report its problems (see DatasetProblem); never raises for bad data.

    Patient ids come from `root/manifest.csv` when present, else from `patient_pattern` on the file name
    (None: one patient per file). `verify=True` fully decodes every image instead of checking its header.
    """
    dataset = Dataset(root=Path(root))
    if not dataset.root.is_dir():
        what = "folder not found" if not dataset.root.exists() else "not a folder"
        dataset.problems.append(DatasetProblem("error", f"{what}: {dataset.root}", (dataset.root,)))
        return dataset
    class_files = _collect_classes(dataset)
    readable = _drop_unreadable(dataset, class_files, verify)
    _assign_patients(dataset, readable, patient_pattern)
    _check_class_sizes(dataset)
    _check_duplicates(dataset)
    return dataset


def _collect_classes(dataset: Dataset) -> dict[str, list[Path]]:
    """Sub-folders with images become classes; report empty sub-folders and images loose in the root."""
    loose, subfolders = _list_folder(dataset.root)
    loose_images = [Path(e.path) for e in loose if _is_wanted_file(Path(e.path))]
    if loose_images:
        dataset.problems.append(DatasetProblem(
            "warning", f"{len(loose_images)} image(s) directly in the dataset folder are ignored: "
                       "put each image in its class's sub-folder", tuple(loose_images)))
    class_files: dict[str, list[Path]] = {}
    for entry in subfolders:
        images = list(iter_radiographs(entry.path, recursive=True))
        if images:
            class_files[entry.name] = images
        else:
            dataset.problems.append(DatasetProblem(
                "warning", f"sub-folder '{entry.name}' has no images: not a class", (Path(entry.path),)))
    dataset.classes = list(class_files)
    if len(class_files) < 2:
        found = ", ".join(f"'{c}'" for c in class_files) or "none"
        dataset.problems.append(DatasetProblem(
            "error", f"found {len(class_files)} class folder(s) ({found}): training needs at least 2 sub-folders "
                     "with images, one per class (e.g. covid/, normal/)"))
    return class_files


def _drop_unreadable(dataset: Dataset, class_files: dict[str, list[Path]], verify: bool
                     ) -> list[tuple[Path, str]]:
    """(path, label) of the readable files; the others are reported once, with reasons, and left out."""
    readable, unreadable = [], []
    for label, paths in class_files.items():
        for path in paths:
            reason = _read_problem(path, verify)
            if reason is None:
                readable.append((path, label))
            else:
                unreadable.append((path, reason))
    if unreadable:
        shown = "; ".join(f"{p.name}: {reason}" for p, reason in unreadable[:5])
        more = f" and {len(unreadable) - 5} more" if len(unreadable) > 5 else ""
        dataset.problems.append(DatasetProblem(
            "warning", f"{len(unreadable)} unreadable file(s) left out ({shown}{more})",
            tuple(p for p, _ in unreadable)))
    return readable


def _read_problem(path: Path, verify: bool) -> str | None:
    """None if the file looks readable; else why not (the reader's message). Header sniff by default, full decode
    with verify."""
    try:
        if verify:
            read_radiograph(path)
        else:
            with open_regular_file(path) as (fileobj, _size):
                sniff_image_format(fileobj.read(HEAD_BYTES), path)
    except RadiographError as err:
        return str(err)
    return None


def _assign_patients(dataset: Dataset, readable: list[tuple[Path, str]], patient_pattern: str | None) -> None:
    manifest = _read_manifest(dataset)
    regex = compile_patient_pattern(dataset, patient_pattern)
    origins = Counter()
    relabelled = []
    for path, label in readable:
        row = manifest.get(_relative_key(path, dataset.root)) if manifest else None
        if row is not None and row.get("label") and row["label"] != label:
            relabelled.append(path)
        if row is not None and row.get("patient_id"):
            patient, source, origin = row["patient_id"], row.get("source") or None, "manifest"
        else:
            patient, source, origin = patient_id_from_name(path, regex)
            if source is not None and source.lower() == label.lower():
                source = None      # covid/covid_001.png: the prefix is the class, not where the image came from
        origins[origin] += 1
        dataset.items.append(DatasetItem(path, label, patient, source))
    dataset.patient_id_origin = _overall_origin(origins)
    if manifest and origins["manifest"] < len(readable):
        missing = len(readable) - origins["manifest"]
        dataset.problems.append(DatasetProblem(
            "warning", f"{missing} image(s) are not in {MANIFEST_NAME}: their patient comes from the file name"))
    if relabelled:
        dataset.problems.append(DatasetProblem(
            "warning", f"{len(relabelled)} image(s) have another label in {MANIFEST_NAME} than their folder: "
                       "the folder is used", tuple(relabelled)))


def compile_patient_pattern(dataset: Dataset, patient_pattern: str | None) -> re.Pattern | None:
    """The patient-id pattern compiled case-insensitively, or None (an invalid one is reported in dataset.problems)."""
    if not patient_pattern:
        return None
    try:
        return re.compile(patient_pattern, re.IGNORECASE)
    except re.error as err:
        dataset.problems.append(DatasetProblem(
            "error", f"the patient-id pattern {patient_pattern!r} is not a valid regular expression ({err})"))
        return None


def _read_manifest(dataset: Dataset) -> dict[str, dict[str, str]]:
    """{relative path: row} from root/manifest.csv, or {} (a broken manifest is reported, not fatal)."""
    manifest_path = dataset.root / MANIFEST_NAME
    if not manifest_path.is_file():
        return {}
    try:
        with open(manifest_path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        dataset.problems.append(DatasetProblem("warning", f"{MANIFEST_NAME} cannot be read ({err}): ignored",
                                               (manifest_path,)))
        return {}
    if not rows or "path" not in rows[0] or "patient_id" not in rows[0]:
        dataset.problems.append(DatasetProblem(
            "warning", f"{MANIFEST_NAME} needs columns 'path' and 'patient_id': ignored", (manifest_path,)))
        return {}
    return {row["path"].replace("\\", "/").strip(): row for row in rows if row.get("path")}


def _relative_key(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def patient_id_from_name(path: Path, regex: re.Pattern | None) -> tuple[str, str | None, str]:
    """(patient id, source or None, origin) from the file name; one patient per file when nothing matches."""
    stem = path.stem if path.suffix.lower() in IMAGE_EXTENSIONS else path.name
    found = regex.match(stem) if regex else None
    if found and found.group(0):
        source = found.groupdict().get("source")
        return found.group(0), source, "pattern"
    return str(path), None, "file"


def _overall_origin(origins: Counter) -> str:
    for origin in ("manifest", "pattern"):
        if origins[origin]:
            return origin
    return "file"


def _check_class_sizes(dataset: Dataset) -> None:
    counts = dataset.counts()
    for label, count in counts.items():
        if count < MIN_CLASS_IMAGES:
            dataset.problems.append(DatasetProblem(
                "error", f"class '{label}' has only {count} readable image(s): at least {MIN_CLASS_IMAGES} are needed "
                         "to train and validate"))
        elif count < FEW_CLASS_IMAGES:
            dataset.problems.append(DatasetProblem(
                "warning", f"class '{label}' has only {count} images: metrics on so few are unreliable"))
    present = [c for c in counts.values() if c > 0]
    if len(present) >= 2 and max(present) > MAX_IMBALANCE * min(present):
        largest = max(counts, key=counts.get)
        smallest = min((c for c in counts if counts[c] > 0), key=counts.get)
        dataset.problems.append(DatasetProblem(
            "warning", f"classes are imbalanced: '{largest}' has {counts[largest]} images, '{smallest}' only "
                       f"{counts[smallest]} ({counts[largest] / counts[smallest]:.1f}×); class weights help"))


def _check_duplicates(dataset: Dataset) -> None:
    """Same bytes in two classes (error: a contradictory label) or twice in one class (warning: leaks into the
    validation split). Only files whose sizes collide are hashed."""
    for paths_labels in _same_content_groups(dataset.items):
        labels = sorted({label for _, label in paths_labels}, key=natural_key)
        paths = tuple(p for p, _ in paths_labels)
        names = ", ".join(_relative_key(p, dataset.root) for p in paths)
        if len(labels) > 1:
            dataset.problems.append(DatasetProblem(
                "error", f"the same image is in {len(labels)} classes ({', '.join(labels)}): {names}", paths))
        else:
            dataset.problems.append(DatasetProblem(
                "warning", f"the same image appears {len(paths)} times in class '{labels[0]}': {names}", paths))


def _same_content_groups(items: Iterable[DatasetItem]) -> list[list[tuple[Path, str]]]:
    by_size: dict[int, list[DatasetItem]] = defaultdict(list)
    for item in items:
        try:
            by_size[item.path.stat().st_size].append(item)
        except OSError:
            continue
    groups = []
    for same_size in (g for g in by_size.values() if len(g) > 1):
        by_hash: dict[str, list[tuple[Path, str]]] = defaultdict(list)
        for item in same_size:
            try:
                by_hash[file_sha256(item.path)].append((item.path, item.label))
            except RadiographError:
                continue
        groups.extend(g for g in by_hash.values() if len(g) > 1)
    return groups
