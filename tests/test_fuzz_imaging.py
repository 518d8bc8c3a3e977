"""Fuzzing `read_radiograph` (raster and DICOM paths) with mutated files: only RadiographError may come out.

Seeds are real files from ../shared (one of each format and colour mode, plus the real DICOM) and synthetic twins
that always run. Mutations: bit flips (anywhere and in the header), overwrites, insertions, deletions, truncations,
and for DICOM header fields rewritten through pydicom (sizes, bit depths, photometric, rescale, window, frames,
transfer syntax). Each run is bounded and reproducible: derandomized, no example database, a fixed example count.

The promise checked: the call returns a valid Radiograph (float32, 2-D, finite, 0..1) or raises a RadiographError
whose message is non-empty, short and free of tracebacks; nothing else escapes, nothing hangs, nothing crashes.
"""

from __future__ import annotations

import collections
import csv
import io
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import badinputs
from xrayviewer.imaging import RadiographError, read_radiograph

# pydicom warns about every oddity the mutations create; the outcome is what is checked, not the chatter.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# Bounded memory and time per example: mutated headers may claim huge sizes; the limit check is part of the test.
MAX_PIXELS = 25_000_000


def fuzz_settings(examples: int):
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


class Outcomes:
    """What a fuzz run produced, printed at the end so a reader sees it exercised both sides of the promise."""

    def __init__(self, label: str):
        self.label = label
        self.counts: collections.Counter[str] = collections.Counter()
        self.unforeseen: set[str] = set()

    def record(self, what: str) -> None:
        self.counts[what] += 1

    def report(self) -> str:
        text = f"{self.label}: " + ", ".join(f"{k} {v}" for k, v in self.counts.most_common())
        return text + "".join(f"\n  caught by the catch-all: {m}" for m in sorted(self.unforeseen))


def read_and_check(data: bytes, suffix: str, workdir: Path, outcomes: Outcomes) -> None:
    path = workdir / f"fuzzed{suffix}"
    path.write_bytes(data)
    try:
        radiograph = read_radiograph(path, max_pixels=MAX_PIXELS)
    except RadiographError as err:
        message = str(err)
        assert message.strip(), f"{type(err).__name__} with an empty message"
        assert "Traceback" not in message and len(message) < 1000, message
        outcomes.record(type(err).__name__)
        if type(err) is RadiographError:  # the reader's catch-all: an unforeseen failure, kept for the report
            outcomes.unforeseen.add(message[:120])
        return
    pixels = radiograph.pixels
    assert pixels.dtype == np.float32 and pixels.ndim == 2 and pixels.size > 0
    assert np.isfinite(pixels).all()
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0
    outcomes.record("read")


# ---------------------------------------------------------------------------------------------- byte mutations

def byte_mutations(header_span: int = 2048):
    flip = st.tuples(st.just("flip"), st.floats(0, 1, exclude_max=True), st.integers(0, 7))
    flip_header = st.tuples(st.just("flip"), st.integers(0, header_span - 1), st.integers(0, 7))
    overwrite = st.tuples(st.just("overwrite"), st.integers(0, header_span - 1), st.binary(min_size=1, max_size=8))
    insert = st.tuples(st.just("insert"), st.floats(0, 1), st.binary(min_size=1, max_size=64))
    delete = st.tuples(st.just("delete"), st.floats(0, 1, exclude_max=True), st.integers(1, 4096))
    truncate = st.tuples(st.just("truncate"), st.floats(0, 1, exclude_max=True))
    return st.lists(st.one_of(flip, flip_header, overwrite, insert, delete, truncate), min_size=1, max_size=4)


def mutate(data: bytes, mutations) -> bytes:
    out = bytearray(data)
    for kind, where, *rest in mutations:
        if not out:
            break
        pos = int(where * len(out)) if isinstance(where, float) else where % len(out)
        if kind == "flip":
            out[pos] ^= 1 << rest[0]
        elif kind == "overwrite":
            out[pos:pos + len(rest[0])] = rest[0]
        elif kind == "insert":
            out[pos:pos] = rest[0]
        elif kind == "delete":
            del out[pos:pos + rest[0]]
        elif kind == "truncate":
            del out[pos:]
    return bytes(out)


# ------------------------------------------------------------------------------------------------------- seeds

def synthetic_seeds() -> dict[str, tuple[bytes, str]]:
    """name -> (file bytes, suffix); small so each example costs milliseconds."""
    chest = badinputs.synthetic_chest(96, 80)
    with tempfile.TemporaryDirectory(prefix="fuzz-seeds-") as tmp:
        folder = Path(tmp)
        files = {
            "png_gray": (badinputs.write_png_gray(folder / "g.png", chest), ".png"),
            "png_16bit": (badinputs.write_png16(folder / "s.png", chest), ".png"),
            "png_rgba": (badinputs.write_rgba_png(folder / "a.png", chest), ".png"),
            "png_palette": (badinputs.write_inverted_palette_png(folder / "p.png", chest), ".png"),
            "jpeg_cmyk": (badinputs.write_cmyk_jpeg(folder / "c.jpg", chest), ".jpg"),
            "jpeg_exif": (badinputs.write_exif_rotated_jpeg(folder / "e.jpg", chest), ".jpg"),
            "dicom": (badinputs.write_dicom(folder / "d.dcm", badinputs.to_u8(chest)), ".dcm"),
            "dicom_16bit_window": (badinputs.write_dicom(folder / "w.dcm", (chest * 4095).astype(np.uint16),
                                                         BitsStored=12, WindowCenter=2000, WindowWidth=3000,
                                                         RescaleSlope=1, RescaleIntercept=-1024), ".dcm"),
            "dicom_bare": (badinputs.write_dicom(folder / "b.dcm", badinputs.to_u8(chest), preamble=False), ""),
        }
        return {name: (path.read_bytes(), suffix) for name, (path, suffix) in files.items()}


def real_seeds(shared: Path) -> dict[str, tuple[bytes, str]]:
    """The smallest real file of every (format, mode) in ../shared, plus the real DICOM."""
    with open(shared / "cxr" / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    smallest: dict[tuple[str, str], dict] = {}
    for row in rows:
        key = (row["format"], row["mode"])
        if key not in smallest or int(row["bytes"]) < int(smallest[key]["bytes"]):
            smallest[key] = row
    return {f"{fmt}_{mode or 'dicom'}": ((shared / "cxr" / row["path"]).read_bytes(), Path(row["path"]).suffix)
            for (fmt, mode), row in sorted(smallest.items())}


SYNTHETIC = synthetic_seeds()


@pytest.fixture(scope="module")
def real(shared_data):
    return real_seeds(shared_data)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


# -------------------------------------------------------------------------------------------------- the fuzzing


def test_seeds_read_unmutated(workdir):
    """The fuzz starts from files that read: otherwise it would only ever fuzz the error path."""
    for name, (data, suffix) in SYNTHETIC.items():
        path = workdir / f"seed{suffix}"
        path.write_bytes(data)
        read_radiograph(path)


def test_fuzz_synthetic_files(workdir):
    outcomes = Outcomes("synthetic byte mutations")

    @fuzz_settings(120)
    @given(name=st.sampled_from(sorted(SYNTHETIC)), mutations=byte_mutations())
    def run(name, mutations):
        data, suffix = SYNTHETIC[name]
        read_and_check(mutate(data, mutations), suffix, workdir, outcomes)

    run()
    print(outcomes.report())
    assert outcomes.counts["read"] > 0 and sum(outcomes.counts.values()) > outcomes.counts["read"]


@pytest.mark.shared
def test_fuzz_real_files(real, workdir):
    for name, (data, suffix) in real.items():
        path = workdir / f"seed{suffix}"
        path.write_bytes(data)
        read_radiograph(path)
    outcomes = Outcomes("real-file byte mutations")

    @fuzz_settings(150)
    @given(name=st.sampled_from(sorted(real)), mutations=byte_mutations())
    def run(name, mutations):
        data, suffix = real[name]
        read_and_check(mutate(data, mutations), suffix, workdir, outcomes)

    run()
    print(outcomes.report())
    assert outcomes.counts["read"] > 0 and sum(outcomes.counts.values()) > outcomes.counts["read"]


# ------------------------------------------------------------------------------------ DICOM header field changes

_INTS = st.one_of(st.sampled_from([0, 1, 2, 3, 7, 8, 12, 16, 31, 32, 64, 255, 256, 4096, 65535]),
                  st.integers(0, 70000))
_NUMBERS = st.one_of(st.sampled_from(["0", "-1", "1e308", "-1e308", "nan", "inf", "abc", "", "1\\2\\3", " 5 "]),
                     st.floats(allow_nan=False, allow_infinity=False, width=32).map(lambda v: f"{v:.6g}"))
_TRANSFER_SYNTAXES = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.4.50",
                      "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.1.99", "1.2.3.4", ""]
HEADER_FIELDS = {
    "Rows": ("US", _INTS), "Columns": ("US", _INTS), "BitsAllocated": ("US", _INTS), "BitsStored": ("US", _INTS),
    "HighBit": ("US", _INTS), "SamplesPerPixel": ("US", _INTS), "PixelRepresentation": ("US", st.integers(0, 3)),
    "PlanarConfiguration": ("US", st.integers(0, 2)),
    "PhotometricInterpretation": ("CS", st.sampled_from(["MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR",
                                                         "YBR_FULL", "YBR_FULL_422", "ARGB", "", "GARBAGE"])),
    "RescaleSlope": ("DS", _NUMBERS), "RescaleIntercept": ("DS", _NUMBERS),
    "WindowCenter": ("DS", _NUMBERS), "WindowWidth": ("DS", _NUMBERS),
    "VOILUTFunction": ("CS", st.sampled_from(["LINEAR", "SIGMOID", "LINEAR_EXACT", "?"])),
    "NumberOfFrames": ("IS", st.sampled_from(["0", "1", "2", "100", "-3", "x", ""])),
    "Modality": ("CS", st.sampled_from(["DX", "CR", "CT", "SR", ""])),
}


def dicom_header_change():
    field = st.sampled_from(sorted(HEADER_FIELDS) + ["TransferSyntaxUID", "delete"])
    return field.flatmap(lambda name: st.tuples(
        st.just(name),
        st.sampled_from(_TRANSFER_SYNTAXES) if name == "TransferSyntaxUID"
        else st.sampled_from(sorted(HEADER_FIELDS) + ["PixelData"]) if name == "delete"
        else HEADER_FIELDS[name][1]))


def rewrite_dicom(data: bytes, changes) -> bytes | None:
    """Apply header changes with pydicom and write the file back; None when pydicom itself cannot write it."""
    import pydicom
    from pydicom.dataelem import DataElement

    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    for name, value in changes:
        if name == "delete":
            if value in ds:
                delattr(ds, value)
        elif name == "TransferSyntaxUID":
            ds.ensure_file_meta()
            ds.file_meta.TransferSyntaxUID = value
        else:
            tag = pydicom.datadict.tag_for_keyword(name)
            if isinstance(value, str):
                # Written as plain text (VR LO) so invalid text ('abc' as a number) reaches the file as a broken
                # writer would put it there: implicit-VR readers see the dictionary VR (DS/IS/CS) with that text,
                # explicit-VR readers a string where a number belongs.
                ds[tag] = DataElement(tag, "LO", value)
            else:
                ds[tag] = DataElement(tag, HEADER_FIELDS[name][0], value)
    out = io.BytesIO()
    try:
        implicit, little = ds.original_encoding
        ds.save_as(out, implicit_vr=bool(implicit), little_endian=little is not False)
    except Exception:  # noqa: BLE001 - a value pydicom refuses to encode is not a file anyone could meet
        return None
    return out.getvalue()


def _fuzz_dicom_headers(seeds: dict[str, tuple[bytes, str]], workdir: Path, examples: int, label: str) -> None:
    outcomes = Outcomes(label)

    @fuzz_settings(examples)
    @given(name=st.sampled_from(sorted(seeds)), changes=st.lists(dicom_header_change(), min_size=1, max_size=3))
    def run(name, changes):
        data, suffix = seeds[name]
        mutated = rewrite_dicom(data, changes)
        assume(mutated is not None)
        read_and_check(mutated, suffix, workdir, outcomes)

    run()
    print(outcomes.report())
    assert outcomes.counts["read"] > 0 and sum(outcomes.counts.values()) > outcomes.counts["read"]


def test_fuzz_synthetic_dicom_headers(workdir):
    dicoms = {name: seed for name, seed in SYNTHETIC.items() if name.startswith("dicom")}
    _fuzz_dicom_headers(dicoms, workdir, 120, "synthetic DICOM header changes")


@pytest.mark.shared
def test_fuzz_real_dicom_headers(real, workdir):
    dicoms = {name: seed for name, seed in real.items() if name.startswith("DICOM")}
    assert dicoms, "the real DICOM is missing from ../shared"
    _fuzz_dicom_headers(dicoms, workdir, 100, "real DICOM header changes")
