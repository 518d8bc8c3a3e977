"""One-page case report (A4 portrait PDF and/or PNG) for one radiograph, drawn with matplotlib (Agg, no Qt).

Takes plain data, so it is testable without TensorFlow:

    build_case_report(radiograph, findings_or_analysis, model_info, out_pdf="case.pdf", out_png="case.png")

`findings_or_analysis` is a `CaseFindings`, a mapping of its fields, or a model `Analysis`
(duck-typed: `.probabilities`, `.heatmap(class_index, shape)`, `.ood_score`, `.ood_flag`).
`model_info` is a `ModelInfo`, a mapping of its fields, or a model bundle (`.name`, `.meta`, `.path`, `.classes`).
"""

from __future__ import annotations

import datetime as _dt
import os
import textwrap
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import cv2
import numpy as np

from xrayviewer import APP_NAME, DISCLAIMER, __version__
from xrayviewer.imaging.radiograph import Radiograph
from xrayviewer.results import ClassProbabilities

A4_PORTRAIT_INCHES = (8.27, 11.69)
PNG_DPI = 150                       # 1240 x 1754 px: sharp on screen, small on disk
_MAX_IMAGE_SIDE = 1200              # images are downsampled for the page (a 3408 px JPEG would bloat the PDF)
_DISCLAIMER_DETAIL = ("This page shows what a machine-learning model computed for one image. It is not a medical "
                      "device and must never be used to make clinical decisions.")
_READING_NOTE = ("The heatmap shows which regions drove the score for this class, not where disease is. Lung "
                 "attention is the share of its positive mass inside the lung fields: low values mean the model "
                 "looked elsewhere (text markers, borders, devices).")
_COLOR_WARN = "#b00020"
_COLOR_PRED = "#1f5fa8"
_COLOR_OTHER = "#9aa5b1"
MODEL_CARD_NAME = "MODEL_CARD.md"


@dataclass
class CaseFindings(ClassProbabilities):
    """What the model said about one image."""

    classes: list[str]
    probabilities: list[float]
    heatmap: np.ndarray | None = None     # 0..1, any size (resized to the image)
    heatmap_class: str | None = None      # the class the heatmap explains; None: the predicted class
    method: str = "Grad-CAM"
    lung_attention: float | None = None   # share 0..1 of positive heatmap mass inside the lung fields
    lung_mask: np.ndarray | None = None   # bool, any size; drawn as an outline on the heatmap
    ood_score: float | None = None
    ood_flag: bool = False
    ood_threshold: float | None = None

    def __post_init__(self):
        self.classes = list(self.classes)
        self.probabilities = [float(p) for p in self.probabilities]
        if len(self.classes) != len(self.probabilities):
            raise ValueError(f"{len(self.classes)} classes but {len(self.probabilities)} probabilities")
        if not self.classes:
            raise ValueError("no classes")


@dataclass
class ModelInfo:
    name: str
    version: str = ""
    path: str = ""
    classes: list[str] = field(default_factory=list)
    card_path: str = ""                   # MODEL_CARD.md; linked from the PDF

    @classmethod
    def from_bundle(cls, bundle: Any) -> "ModelInfo":
        meta = getattr(bundle, "meta", None) or {}
        path = str(getattr(bundle, "path", "") or "")
        card = Path(path) / MODEL_CARD_NAME if path else None
        return cls(name=str(getattr(bundle, "name", "") or meta.get("name", "") or "unnamed model"),
                   version=str(meta.get("version", "") or getattr(bundle, "version", "") or ""),
                   path=path, classes=list(getattr(bundle, "classes", None) or meta.get("classes", [])),
                   card_path=str(card) if card is not None and card.is_file() else "")


def _as_model_info(model_info: Any) -> ModelInfo:
    if isinstance(model_info, ModelInfo):
        return model_info
    if isinstance(model_info, Mapping):
        known = {f.name for f in fields(ModelInfo)}
        return ModelInfo(**{k: v for k, v in model_info.items() if k in known})
    return ModelInfo.from_bundle(model_info)


def findings_from_analysis(analysis: Any, classes: Sequence[str], shape: tuple[int, int] | None = None, *,
                           class_index: int | None = None, lung_attention: float | None = None,
                           lung_mask: np.ndarray | None = None, ood_threshold: float | None = None,
                           method: str = "Grad-CAM") -> CaseFindings:
    """A model Analysis (duck-typed) -> CaseFindings; the heatmap explains `class_index` (default: predicted)."""
    probs = [float(p) for p in np.asarray(analysis.probabilities).ravel()]
    classes = list(getattr(analysis, "classes", None) or classes)
    index = int(np.argmax(probs)) if class_index is None else int(class_index)
    ood = getattr(analysis, "ood_score", None)
    return CaseFindings(classes=list(classes), probabilities=probs, heatmap=analysis.heatmap(index, shape),
                        heatmap_class=list(classes)[index], method=method, lung_attention=lung_attention,
                        lung_mask=lung_mask, ood_score=None if ood is None else float(ood),
                        ood_flag=bool(getattr(analysis, "ood_flag", False)), ood_threshold=ood_threshold)


def _as_findings(values: Any, classes: Sequence[str], shape: tuple[int, int]) -> CaseFindings:
    if isinstance(values, CaseFindings):
        return values
    if isinstance(values, Mapping):
        return CaseFindings(**values)
    return findings_from_analysis(values, classes, shape)


# ---------------------------------------------------------------- text helpers

def _fmt_bytes(n: int) -> str:
    for unit in ("bytes", "kB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def _pct(value: float | None) -> str:
    return "—" if value is None or np.isnan(value) else f"{100 * value:.1f} %"


def _wrap(text: str, width: int) -> str:
    # paths have no spaces: break them anywhere rather than overflow the page
    return "\n".join(textwrap.wrap(text, width, break_long_words=True, break_on_hyphens=False)) or text


def file_metadata_lines(radiograph: Radiograph) -> list[tuple[str, str]]:
    """(label, value) pairs a reader of the report wants: name, folder, format, size, DICOM tags, notes."""
    meta = radiograph.meta or {}
    lines: list[tuple[str, str]] = []
    path = Path(radiograph.path) if radiograph.path else None
    if path is not None:
        lines.append(("File", path.name))
        lines.append(("Folder", str(path.parent)))
    fmt = " · ".join(str(x) for x in (meta.get("format"),
                                      f"{meta['bit_depth']}-bit" if meta.get("bit_depth") else None,
                                      meta.get("photometric")) if x)
    if fmt:
        lines.append(("Format", fmt))
    rows, cols = meta.get("original_shape") or radiograph.shape
    size = f"{cols} × {rows} px (width × height)"
    if path is not None:
        try:
            size += f" · {_fmt_bytes(os.stat(path).st_size)}"
        except OSError:
            pass
    lines.append(("Image size", size))
    if meta.get("window_center") is not None and meta.get("window_width") is not None:
        lines.append(("Window", f"center {meta['window_center']}, width {meta['window_width']}"))
    dicom = meta.get("dicom") or {}
    if dicom:
        # what a reader scans for first; the long machine identifiers (UIDs) last
        tags = sorted(((k, v) for k, v in dicom.items() if v not in (None, "")), key=lambda kv: "UID" in kv[0])
        lines.append(("DICOM", "; ".join(f"{k}: {v}" for k, v in tags)))
    for note in meta.get("notes") or []:
        lines.append(("Note", str(note)))
    return lines


# ---------------------------------------------------------------- drawing

def _fit_for_page(image: np.ndarray) -> np.ndarray:
    rows, cols = image.shape[:2]
    scale = _MAX_IMAGE_SIDE / max(rows, cols)
    if scale >= 1:
        return image
    size = (max(1, round(cols * scale)), max(1, round(rows * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _draw_image(ax, pixels: np.ndarray, title: str) -> None:
    ax.imshow(pixels, cmap="gray", vmin=0.0, vmax=1.0, interpolation="lanczos")
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])


def _draw_heatmap(fig, ax, pixels: np.ndarray, findings: CaseFindings,
                  colorbar_box: tuple[float, float, float, float]) -> None:
    cls = findings.heatmap_class or findings.predicted
    _draw_image(ax, pixels, f"{findings.method} heatmap for “{cls}”")
    if findings.heatmap is None:
        ax.text(0.5, 0.5, "no heatmap", transform=ax.transAxes, ha="center", va="center", color="white",
                fontsize=11, bbox=dict(facecolor="black", alpha=0.6, edgecolor="none"))
        return
    rows, cols = pixels.shape
    heat = cv2.resize(np.asarray(findings.heatmap, np.float32), (cols, rows), interpolation=cv2.INTER_LINEAR)
    heat = np.clip(heat, 0.0, 1.0)
    # weak attention stays see-through, so the anatomy under the hot spots remains readable
    rgba = _jet(heat)
    rgba[..., 3] = 0.6 * np.clip((heat - 0.1) / 0.9, 0.0, 1.0)
    ax.imshow(rgba, interpolation="bilinear")
    if findings.lung_mask is not None:
        mask = cv2.resize(np.asarray(findings.lung_mask, np.uint8), (cols, rows), interpolation=cv2.INTER_NEAREST)
        if mask.any():
            ax.contour(mask, levels=[0.5], colors=["white"], linewidths=0.9, linestyles="dashed")
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    bar = fig.colorbar(ScalarMappable(Normalize(0, 1), cmap="jet"), cax=fig.add_axes(colorbar_box),
                       orientation="horizontal")
    bar.set_ticks([0, 0.5, 1])
    bar.ax.tick_params(labelsize=7)
    label = "model attention (0 = none, 1 = strongest)"
    if findings.lung_mask is not None:
        label += "   - - lung fields"
    bar.set_label(label, fontsize=7)


def _jet(values: np.ndarray) -> np.ndarray:
    from matplotlib import colormaps

    return colormaps["jet"](values).astype(np.float32)


def _draw_probabilities(ax, findings: CaseFindings) -> None:
    n = len(findings.classes)
    y = np.arange(n)[::-1]
    colors = [_COLOR_PRED if i == findings.predicted_index else _COLOR_OTHER for i in range(n)]
    ax.barh(y, findings.probabilities, color=colors, height=0.6)
    ax.set_yticks(y, findings.classes, fontsize=9)
    ax.set_xlim(0, 1.18)
    ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0], ["0", "25", "50", "75", "100 %"], fontsize=7)
    for yi, p in zip(y, findings.probabilities):
        ax.text(p + 0.02, yi, f"{100 * p:.1f} %", va="center", fontsize=8.5)
    ax.set_title("Class probabilities (calibrated)", fontsize=10, loc="left")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.grid(axis="x", color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)


def _key_figures(findings: CaseFindings) -> list[tuple[str, str, str | None]]:
    """(label, value, color) rows for the box beside the bar chart."""
    rows = [("Prediction", f"{findings.predicted}  ({_pct(findings.confidence)})", _COLOR_PRED)]
    la = findings.lung_attention
    if la is None:
        rows.append(("Lung attention", "not computed (no lung model)", None))
    elif np.isnan(la):
        rows.append(("Lung attention", "undefined (the heatmap is empty)", None))
    else:
        rows.append(("Lung attention", f"{_pct(la)} of the heatmap inside the lungs",
                     _COLOR_WARN if la < 0.5 else None))
    if findings.ood_score is None:
        rows.append(("Out-of-distribution", "not available for this model", None))
    else:
        thr = "" if findings.ood_threshold is None else f" (threshold {findings.ood_threshold:.3g})"
        if findings.ood_flag:
            rows.append(("Out-of-distribution", f"score {findings.ood_score:.3g}{thr}", None))
            rows.append(("", "UNLIKE THE TRAINING IMAGES: prediction unreliable", _COLOR_WARN))
        else:
            rows.append(("Out-of-distribution", f"score {findings.ood_score:.3g}{thr}: like the training images",
                         None))
    return rows


def _block_height(items: list[tuple[str, str]], width_chars: int, line_h: float) -> float:
    return line_h * (1.5 + sum(_wrap(value, width_chars).count("\n") + 1 for _, value in items))


def _text_block(fig, x: float, y_top: float, title: str, items: list[tuple[str, str]], *, label_w: float,
                width_chars: int, line_h: float, urls: Mapping[str, str] | None = None) -> float:
    """Label/value lines starting at y_top (figure fraction); returns the y below the block."""
    fig.text(x, y_top, title, fontsize=10, fontweight="bold", va="top")
    y = y_top - 1.5 * line_h
    for label, value in items:
        wrapped = _wrap(value, width_chars)
        fig.text(x, y, label, fontsize=8, color="#555555", va="top")
        fig.text(x + label_w, y, wrapped, fontsize=8, va="top", url=(urls or {}).get(label))
        y -= line_h * (wrapped.count("\n") + 1)
    return y


def case_report_figure(radiograph: Radiograph, findings_or_analysis: Any, model_info: Any, *,
                       when: _dt.datetime | None = None):
    """The report page as a matplotlib Figure (not attached to any GUI backend)."""
    from matplotlib.figure import Figure

    info = _as_model_info(model_info)
    findings = _as_findings(findings_or_analysis, info.classes, radiograph.shape)
    when = when or _dt.datetime.now().astimezone()
    pixels = _fit_for_page(np.clip(np.asarray(radiograph.pixels, np.float32), 0.0, 1.0))
    title_name = Path(radiograph.path).name if radiograph.path else "in-memory image"
    if len(title_name) > 70:  # DICOM UIDs: keep both ends, they are what people compare
        title_name = title_name[:40] + "…" + title_name[-29:]

    fig = Figure(figsize=A4_PORTRAIT_INCHES)
    fig.patch.set_facecolor("white")
    left, right = 0.07, 0.93

    # header: what, when, and the disclaimer where nobody can miss it
    fig.text(left, 0.968, "Chest radiograph — model case report", fontsize=16, fontweight="bold", va="top")
    fig.text(left, 0.94, title_name, fontsize=11, va="top", color="#333333")
    fig.text(right, 0.968, when.strftime("%Y-%m-%d %H:%M %Z").strip(), fontsize=9, ha="right", va="top")
    fig.text(right, 0.952, f"{APP_NAME} {__version__}", fontsize=8, ha="right", va="top", color="#555555")
    _disclaimer_banner(fig, left, right, 0.858, 0.914)

    # what goes below the images, measured first so the images get exactly the room that is left
    key_rows = [(label, _wrap(value, 31), color) for label, value, color in _key_figures(findings)]
    key_h = 0.016 + 0.017 * sum(v.count("\n") + 1 for _, v, _ in key_rows) + 0.075
    n = len(findings.classes)
    bar_h = min(0.16, 0.035 * n + 0.04)
    section_h = max(bar_h + 0.045, key_h)
    model_items = [("Name", info.name + (f"  (version {info.version})" if info.version else "")),
                   ("Classes", ", ".join(info.classes or findings.classes))]
    if info.path:
        model_items.append(("Bundle", info.path))
    card = info.card_path
    model_items.append(("Model card", card if card else "no MODEL_CARD.md in the bundle"))
    file_items = file_metadata_lines(radiograph)
    line_h, text_w = 0.0165, 95
    blocks_h = (_block_height(model_items, text_w, line_h) + 0.012 + _block_height(file_items, text_w, line_h))
    footer_top, gap_below_images = 0.06, 0.075

    # images side by side, sized to the image's aspect and the room left
    top, col_w = 0.818, 0.41
    aspect = pixels.shape[0] / pixels.shape[1] * A4_PORTRAIT_INCHES[0] / A4_PORTRAIT_INCHES[1]
    room = top - footer_top - blocks_h - section_h - gap_below_images
    img_h = max(0.12, min(0.36, col_w * aspect, room))
    img_w = img_h / aspect
    for col_x, draw in ((left, "image"), (right - col_w, "heatmap")):
        x = col_x + (col_w - img_w) / 2
        ax = fig.add_axes((x, top - img_h, img_w, img_h))
        if draw == "image":
            _draw_image(ax, pixels, "Radiograph")
        else:
            _draw_heatmap(fig, ax, pixels, findings, colorbar_box=(x, top - img_h - 0.016, img_w, 0.008))
    y = top - img_h - gap_below_images

    # probabilities and the key figures
    ax_bar = fig.add_axes((left + 0.09, y - bar_h, 0.33, bar_h))
    _draw_probabilities(ax_bar, findings)
    y_block = y - section_h
    fig.text(0.55, y + 0.012, "Key figures", fontsize=10, fontweight="bold", va="top")
    y -= 0.016
    for label, wrapped, color in key_rows:
        fig.text(0.55, y, label, fontsize=8.5, color="#555555", va="top")
        fig.text(0.70, y, wrapped, fontsize=8.5, va="top", color=color or "black",
                 fontweight="bold" if color else "normal")
        y -= 0.017 * (wrapped.count("\n") + 1)
    fig.text(0.55, y - 0.004, _wrap(_READING_NOTE, 62), fontsize=7, color="#555555", va="top", style="italic")

    # model and file
    urls = {"Model card": Path(card).resolve().as_uri()} if card else None
    y_block = _text_block(fig, left, y_block, "Model", model_items, label_w=0.12, width_chars=text_w,
                          line_h=line_h, urls=urls)
    _text_block(fig, left, y_block - 0.012, "Image file", file_items, label_w=0.12, width_chars=text_w,
                line_h=line_h)

    # footer
    fig.add_artist(_hline(fig, 0.045, left, right))
    fig.text(left, 0.032, f"{DISCLAIMER} Generated by {APP_NAME} {__version__} on "
             f"{when.strftime('%Y-%m-%d %H:%M %Z').strip()}.", fontsize=7, color="#555555", va="top")
    fig.text(right, 0.032, "page 1 of 1", fontsize=7, color="#555555", va="top", ha="right")
    return fig


def _disclaimer_banner(fig, x0: float, x1: float, y0: float, y1: float) -> None:
    from matplotlib.patches import FancyBboxPatch

    fig.add_artist(FancyBboxPatch((x0, y0), x1 - x0, y1 - y0, boxstyle="round,pad=0.004",
                                  transform=fig.transFigure, facecolor="#fdecee", edgecolor=_COLOR_WARN,
                                  linewidth=1.2))
    fig.text((x0 + x1) / 2, y1 - 0.008, DISCLAIMER.upper(), ha="center", va="top", fontsize=11,
             fontweight="bold", color=_COLOR_WARN)
    fig.text((x0 + x1) / 2, y0 + 0.008, _wrap(_DISCLAIMER_DETAIL, 100), ha="center", va="bottom", fontsize=8,
             color=_COLOR_WARN, linespacing=1.3)


def _hline(fig, y: float, x0: float, x1: float):
    from matplotlib.lines import Line2D

    return Line2D([x0, x1], [y, y], transform=fig.transFigure, color="#bbbbbb", linewidth=0.6)


def build_case_report(radiograph: Radiograph, analysis_or_values: Any, model_info: Any,
                      out_pdf: str | Path | None = None, out_png: str | Path | None = None, *,
                      when: _dt.datetime | None = None, png_dpi: int = PNG_DPI) -> list[Path]:
    """Write the one-page report as PDF and/or PNG; returns the paths written."""
    if out_pdf is None and out_png is None:
        raise ValueError("give out_pdf and/or out_png")
    fig = case_report_figure(radiograph, analysis_or_values, model_info,
                             when=when or _dt.datetime.now().astimezone())
    written = []
    if out_pdf is not None:
        info = _as_model_info(model_info)
        fig.savefig(out_pdf, format="pdf", metadata={
            "Title": f"Case report: {Path(radiograph.path).name if radiograph.path else 'image'}",
            "Subject": DISCLAIMER, "Creator": f"{APP_NAME} {__version__}",
            "Keywords": f"model {info.name} {info.version}".strip()})
        written.append(Path(out_pdf))
    if out_png is not None:
        fig.savefig(out_png, format="png", dpi=png_dpi, facecolor="white")
        written.append(Path(out_png))
    return written


def case_report_for_file(path: str | Path, classifier: Any, *, out_pdf: str | Path | None = None,
                         out_png: str | Path | None = None, method: str = "Grad-CAM", **known: Any) -> list[Path]:
    """Read, analyse, segment the lungs (given `lungs=`) and write the report. `known` takes what the caller
    already has (radiograph, analysis, class_index, heatmap, lung_mask, lung_attention; see reports.runs)."""
    from xrayviewer.reports.runs import analyze_file

    case = analyze_file(path, classifier, **known)
    ood = getattr(classifier.bundle, "ood", None) or {}
    ood_score = case.analysis.ood_score
    findings = CaseFindings(list(classifier.classes), [float(p) for p in np.asarray(case.analysis.probabilities)],
                            heatmap=case.heatmap, heatmap_class=classifier.classes[case.class_index], method=method,
                            lung_attention=case.lung_attention, lung_mask=case.lung_mask,
                            ood_score=None if ood_score is None else float(ood_score),
                            ood_flag=bool(case.analysis.ood_flag), ood_threshold=ood.get("threshold"))
    return build_case_report(case.radiograph, findings, ModelInfo.from_bundle(classifier.bundle), out_pdf, out_png)
