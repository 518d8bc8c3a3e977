"""Shortcut audit of a classifier on a labelled folder: does it look at the lungs, or at the hospital?

For every image: the prediction and its Grad-CAM (predicted class), the lung mask, the share of attention inside
the lungs; and the prediction again with the lungs blacked out and with everything but the lungs blacked out.
A model that still separates the classes with the lungs removed is reading shortcuts (source, age, markers,
borders: DeGrave et al. 2021). The report folder holds PNG figures, summary.json and summary.md.
Pure core: no Qt; TensorFlow only through the classifier and segmenter it is given.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Collection

import cv2
import numpy as np

from xrayviewer.imaging.radiograph import Radiograph
from xrayviewer.model.lungs import lung_attention

GRID = (112, 112)          # resolution of the averaged heatmaps and masks (plenty for a figure)
CONDITIONS = {"as_is": "as they are", "lungs_blacked_out": "lungs blacked out",
              "only_lungs": "everything but the lungs blacked out"}
LOW_ATTENTION = 0.5

Progress = Callable[[dict], None]


def _emit(progress: Progress | None, **event) -> None:
    if progress is not None:
        progress(event)


def _select(items: list, classes: list[str], limit: int | None, seed: int = 0) -> list:
    """At most `limit` images per class, drawn at random (seeded) so every source of a class can appear."""
    if not limit:
        return list(items)
    rng = np.random.default_rng(seed)
    picked = []
    for label in classes:
        of_class = [i for i, item in enumerate(items) if item.label == label]
        if len(of_class) > limit:
            of_class = sorted(rng.choice(of_class, limit, replace=False).tolist())
        picked.extend(of_class)
    return [items[i] for i in sorted(picked)]


def _masked(radiograph: Radiograph, keep: np.ndarray) -> Radiograph:
    return Radiograph(np.where(keep, radiograph.pixels, 0.0).astype(np.float32), dict(radiograph.meta),
                      radiograph.path)


def _metrics(y: list[int], probs: np.ndarray, classes: list[str]) -> dict[str, Any]:
    from xrayviewer.training.metrics import classification_metrics

    if not y:
        return {"n": 0, "accuracy": None, "macro_auc": None, "per_class_auc": {}}
    full = classification_metrics(y, probs, classes)
    return {"n": full["n"], "accuracy": full["accuracy"], "balanced_accuracy": full["balanced_accuracy"],
            "macro_auc": full["macro_auc"],
            "per_class_auc": {c: full["per_class"][c]["auc"] for c in classes}}


def _stats(values: list[float]) -> dict[str, Any]:
    v = np.array([x for x in values if x is not None and not math.isnan(x)], np.float64)
    if not len(v):
        return {"n": 0, "mean": None, "median": None, "share_below_50": None, "histogram": None}
    counts, edges = np.histogram(v, bins=10, range=(0.0, 1.0))
    return {"n": int(len(v)), "mean": float(v.mean()), "median": float(np.median(v)),
            "share_below_50": float((v < LOW_ATTENTION).mean()),
            "histogram": {"edges": [round(float(e), 2) for e in edges], "counts": counts.astype(int).tolist()}}


def run_audit(dataset_root: str | os.PathLike, classifier, segmenter, out_dir: str | os.PathLike,
              progress: Progress | None = None, cancel=None, limit: int | None = None,
              seed: int = 0, only: Collection[str] | None = None,
              figures: dict[str, Any] | None = None) -> dict[str, Any]:
    """Audit `classifier` on the folder-per-class dataset at `dataset_root`; write the report into `out_dir`.

    `progress(event)` gets dicts {"kind": "stage"|"image", ...}; `cancel` (threading.Event) stops after the current
    image and the report covers the images done so far (summary["cancelled"] is True). `limit`: images per class.
    Returns the summary (also written as summary.json). Images the classifier has no class for still count for
    lung attention and heatmaps; accuracy/AUC use the images whose folder names a class of the model.
    `only`: audit just these files (paths relative to `dataset_root`, e.g. a model's validation split).
    `figures`: if given, receives the report's matplotlib Figures by file name (a GUI draws them in its colours).
    """
    from xrayviewer.imaging import RadiographError, discover_dataset, read_radiograph

    started = time.perf_counter()
    out = Path(out_dir)
    dataset = discover_dataset(dataset_root)
    if not dataset.items:
        reasons = "; ".join(p.message for p in dataset.errors) or "no images in class folders"
        raise ValueError(f"nothing to audit in {dataset_root}: {reasons}")
    classes = list(classifier.classes)
    items = dataset.items
    if only is not None:
        wanted = {Path(p).as_posix() for p in only}
        items = [item for item in items if Path(item.path).relative_to(dataset.root).as_posix() in wanted]
        if not items:
            raise ValueError(f"none of the {len(wanted)} listed files is in {dataset_root}")
    items = _select(items, dataset.classes, limit, seed)
    _emit(progress, kind="stage", text=f"Auditing {len(items)} images")

    records: list[dict[str, Any]] = []
    failures: list[dict[str, str]] = []
    heat_sum = {"all": np.zeros(GRID, np.float64)}
    heat_n: dict[str, int] = defaultdict(int)
    mask_sum = np.zeros(GRID, np.float64)
    cancelled = False
    for done, item in enumerate(items, start=1):
        if cancel is not None and cancel.is_set():
            cancelled = True
            break
        _emit(progress, kind="image", done=done - 1, total=len(items), path=str(item.path))
        try:
            radiograph = read_radiograph(item.path)
        except RadiographError as err:
            failures.append({"path": str(item.path), "error": str(err)})
            continue
        analysis = classifier.analyze(radiograph)
        mask = segmenter.segment(radiograph)
        heat = analysis.heatmap(analysis.predicted_index)
        attention = lung_attention(heat, mask)
        masked_probs = classifier.predict([_masked(radiograph, ~mask), _masked(radiograph, mask)])
        small_heat = cv2.resize(heat.astype(np.float32), GRID[::-1], interpolation=cv2.INTER_AREA)
        small_mask = cv2.resize(mask.astype(np.float32), GRID[::-1], interpolation=cv2.INTER_AREA)
        for key in ("all", item.label):
            heat_sum.setdefault(key, np.zeros(GRID, np.float64))
            heat_sum[key] += small_heat
            heat_n[key] += 1
        mask_sum += small_mask
        records.append({"path": str(item.path), "label": item.label, "source": item.source,
                        "predicted": analysis.predicted, "lung_attention": attention,
                        "lung_fraction": float(mask.mean()), "ood_flag": bool(analysis.ood_flag),
                        "probs": {"as_is": analysis.probabilities.astype(float).tolist(),
                                  "lungs_blacked_out": masked_probs[0].astype(float).tolist(),
                                  "only_lungs": masked_probs[1].astype(float).tolist()}})
    _emit(progress, kind="stage", text="Writing the report")

    def performance(subset: list[dict]) -> dict[str, Any]:
        scored = [r for r in subset if r["label"] in classes]
        y = [classes.index(r["label"]) for r in scored]
        return {cond: _metrics(y, np.array([r["probs"][cond] for r in scored]).reshape(-1, len(classes)), classes)
                for cond in CONDITIONS}

    attention_all = [r["lung_attention"] for r in records]
    summary: dict[str, Any] = {
        "dataset": str(Path(dataset_root)), "model": getattr(classifier.bundle, "name", ""),
        "model_path": str(getattr(classifier.bundle, "path", "")), "classes": classes,
        "lung_model": str(getattr(segmenter, "path", "") or ""),
        "images": len(records), "failed": failures, "limit_per_class": limit, "cancelled": cancelled,
        "subset": None if only is None else f"{len(items)} listed files",
        "seconds": round(time.perf_counter() - started, 1),
        "lung_attention": _stats(attention_all),
        "lung_attention_by_class": {c: _stats([r["lung_attention"] for r in records if r["label"] == c])
                                    for c in dataset.classes},
        "performance": performance(records),
        "ood_flagged": int(sum(r["ood_flag"] for r in records)),
        "majority_class_rate": _majority_rate(records, classes),
    }
    sources = sorted({r["source"] for r in records if r["source"]})
    if sources:
        summary["by_source"] = {
            s: {"images": sum(r["source"] == s for r in records),
                "labels": dict(sorted(_count(r["label"] for r in records if r["source"] == s).items())),
                "lung_attention": _stats([r["lung_attention"] for r in records if r["source"] == s]),
                "performance": performance([r for r in records if r["source"] == s])}
            for s in sources}
    summary["findings"] = findings(summary)
    _write_report(out, summary, records, heat_sum, heat_n, mask_sum, figures)
    _emit(progress, kind="done", images=len(records))
    return summary


def _count(values) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for v in values:
        counts[v] += 1
    return counts


def _majority_rate(records: list[dict], classes: list[str]) -> float | None:
    labels = [r["label"] for r in records if r["label"] in classes]
    return max(_count(labels).values()) / len(labels) if labels else None


def findings(summary: dict[str, Any]) -> list[str]:
    """Plain-language conclusions a person reads first."""
    out = []
    att = summary["lung_attention"]
    if att["mean"] is not None:
        out.append(f"On average {att['mean']:.0%} of the attention is on the lungs; {att['share_below_50']:.0%} of "
                   f"the images have most of it outside the lungs.")
    perf = summary["performance"]
    as_is, removed, only = (perf[c]["macro_auc"] for c in CONDITIONS)
    if as_is is not None and removed is not None:
        verdict = ("it is reading shortcuts outside the lungs (source, age, markers, borders)" if removed >= 0.7 else
                   "little signal is left outside the lungs" if removed < 0.6 else
                   "some signal remains outside the lungs")
        out.append(f"Macro AUC {as_is:.3f} as is, {removed:.3f} with the lungs blacked out "
                   f"(0.5 = chance): {verdict}.")
    if only is not None:
        out.append(f"Macro AUC {only:.3f} with everything but the lungs blacked out.")
    by_source = summary.get("by_source") or {}
    classes = set(summary["classes"])
    single = [s for s, v in by_source.items() if len(classes & set(v["labels"])) == 1]
    if single:
        out.append(f"Sources holding a single class ({', '.join(single)}): a model can score by recognising the "
                   "source; compare classes within a source.")
    return out


# ---------------------------------------------------------------------------------------------- report files
def _fmt(value: Any, pct: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.0%}" if pct else f"{value:.3f}"


def summary_markdown(summary: dict[str, Any]) -> str:
    att = summary["lung_attention"]
    lines = [f"Shortcut audit of **{summary['model']}** on `{summary['dataset']}`: {summary['images']} images"
             + (f" ({summary['subset']})" if summary.get("subset") else "")
             + (f" (at most {summary['limit_per_class']} per class)" if summary["limit_per_class"] else "")
             + (f", {len(summary['failed'])} unreadable" if summary["failed"] else "")
             + (", **cancelled** before the end" if summary["cancelled"] else "") + ".", ""]
    lines += [f"- {f}" for f in summary["findings"]]
    lines += [f"- {summary['ood_flagged']} of the images as they are were flagged \"not a chest X-ray?\" by the "
              "model's OOD check.", ""]
    lines += ["| lung attention | images | mean | median | share < 50 % |", "|---|---|---|---|---|",
              f"| all | {att['n']} | {_fmt(att['mean'], True)} | {_fmt(att['median'], True)} | "
              f"{_fmt(att['share_below_50'], True)} |"]
    for label, s in summary["lung_attention_by_class"].items():
        if not s["n"]:
            continue
        lines.append(f"| {label} | {s['n']} | {_fmt(s['mean'], True)} | {_fmt(s['median'], True)} | "
                     f"{_fmt(s['share_below_50'], True)} |")
    lines += ["", "| images | accuracy | macro AUC |", "|---|---|---|"]
    for cond, text in CONDITIONS.items():
        p = summary["performance"][cond]
        lines.append(f"| {text} | {_fmt(p['accuracy'])} | {_fmt(p['macro_auc'])} |")
    if summary.get("majority_class_rate") is not None:
        lines.append(f"\nMajority-class rate (accuracy of always guessing the largest class): "
                     f"{summary['majority_class_rate']:.3f}.")
    if summary.get("by_source"):
        lines += ["", "| source | images | labels | lung attention | accuracy as is | lungs blacked out | only lungs | "
                      "AUC as is | AUC lungs blacked out |", "|---|---|---|---|---|---|---|---|---|"]
        for s, v in summary["by_source"].items():
            p = v["performance"]
            labels = ", ".join(f"{k} {n}" for k, n in v["labels"].items())
            lines.append(f"| {s} | {v['images']} | {labels} | {_fmt(v['lung_attention']['mean'], True)} | "
                         f"{_fmt(p['as_is']['accuracy'])} | {_fmt(p['lungs_blacked_out']['accuracy'])} | "
                         f"{_fmt(p['only_lungs']['accuracy'])} | {_fmt(p['as_is']['macro_auc'])} | "
                         f"{_fmt(p['lungs_blacked_out']['macro_auc'])} |")
        lines.append("\nPer-source AUC is within-source (only the classes that source has); – where it has one class.")
    lines += ["", "Figures: `lung_attention.png`, `mean_heatmaps.png`, `masking.png`"
              + (", `by_source.png`" if summary.get("by_source") else "") + "."]
    return "\n".join(lines) + "\n"


def _write_report(out: Path, summary: dict, records: list[dict], heat_sum: dict, heat_n: dict,
                  mask_sum: np.ndarray, figures_out: dict[str, Any] | None = None) -> None:
    from matplotlib.figure import Figure

    from xrayviewer.training.metrics import figure_png

    out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = {}

    fig = Figure(figsize=(6, 3.8), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    values = [r["lung_attention"] for r in records if not math.isnan(r["lung_attention"])]
    ax.hist(values, bins=20, range=(0, 1), color="C0")
    ax.axvline(LOW_ATTENTION, color="C3", linestyle="--", label="50 %")
    ax.set(xlabel="share of attention on the lungs", ylabel="images", title="Lung attention")
    ax.legend()
    figures["lung_attention.png"] = fig

    keys = ["all"] + [k for k in heat_sum if k != "all" and heat_n[k]]
    fig = Figure(figsize=(3.2 * len(keys), 3.6), dpi=100, layout="constrained")
    lung_outline = mask_sum / max(heat_n["all"], 1)
    for i, key in enumerate(keys, start=1):
        ax = fig.add_subplot(1, len(keys), i)
        mean = heat_sum[key] / max(heat_n[key], 1)
        im = ax.imshow(mean, cmap="jet", vmin=0, vmax=max(float(mean.max()), 1e-6))
        if heat_n["all"]:
            ax.contour(lung_outline, levels=[0.5], colors="white", linewidths=1)
        ax.set_title(f"{'all images' if key == 'all' else key} (n={heat_n[key]})")
        ax.axis("off")
    fig.colorbar(im, ax=fig.axes, shrink=0.8, label="mean Grad-CAM")
    fig.suptitle("Mean heatmap (predicted class); white: mean lung outline")
    figures["mean_heatmaps.png"] = fig

    fig = Figure(figsize=(6.5, 3.8), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(CONDITIONS))
    for j, metric in enumerate(("accuracy", "macro_auc")):
        vals = [summary["performance"][c][metric] or 0 for c in CONDITIONS]
        ax.bar(x + (j - 0.5) * 0.38, vals, 0.36, label=metric.replace("_", " "))
    ax.axhline(0.5, color="gray", linestyle=":", label="AUC chance")
    ax.set_xticks(x, list(CONDITIONS.values()), fontsize=8)
    ax.set(ylim=(0, 1), title="Does the model need the lungs?")
    ax.legend(fontsize=8)
    figures["masking.png"] = fig

    if summary.get("by_source"):
        sources = list(summary["by_source"])
        fig = Figure(figsize=(max(6, 1.3 * len(sources)), 4), dpi=100, layout="constrained")
        ax = fig.add_subplot()
        x = np.arange(len(sources))
        series = [("lung attention", lambda v: v["lung_attention"]["mean"])] + [
            (f"accuracy, {text}", lambda v, c=c: v["performance"][c]["accuracy"]) for c, text in CONDITIONS.items()]
        width = 0.8 / len(series)
        for j, (name, get) in enumerate(series):
            ax.bar(x + (j - (len(series) - 1) / 2) * width, [get(summary["by_source"][s]) or 0 for s in sources],
                   width, label=name)
        ax.set_xticks(x, sources, rotation=20, fontsize=8)
        ax.set(ylim=(0, 1), title="Per source")
        ax.legend(fontsize=7)
        figures["by_source.png"] = fig

    for name, fig in figures.items():
        (out / name).write_bytes(figure_png(fig))
    if figures_out is not None:
        figures_out.update(figures)
    _atomic_text(out / "summary.json", json.dumps(_jsonable(summary), indent=2) + "\n")
    _atomic_text(out / "summary.md", "# Shortcut audit\n\n" + summary_markdown(summary))


def _jsonable(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    return value


def _atomic_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
