"""Honest classification metrics, temperature scaling and the figures the training dialog and CLI show.

Figures are built on `matplotlib.figure.Figure` directly (no pyplot state), so they work with the Agg backend in a
worker thread, in the CLI, and embedded in the Qt dialog alike.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

ECE_BINS = 15


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def expected_calibration_error(y_true: Sequence[int], probs: np.ndarray, n_bins: int = ECE_BINS
                               ) -> tuple[float, list[dict[str, float]]]:
    """(ECE, reliability bins) of the top-class confidence, equal-width bins over [0, 1].

    Each bin: lower, upper, count, confidence (mean top probability), accuracy (share correct).
    """
    probs = np.asarray(probs, np.float64)
    y = np.asarray(y_true, int)
    if len(y) == 0:
        return 0.0, []
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    ece = 0.0
    bins = []
    for b in range(n_bins):
        mask = index == b
        count = int(mask.sum())
        conf = float(confidence[mask].mean()) if count else 0.0
        acc = float(correct[mask].mean()) if count else 0.0
        ece += count / len(y) * abs(acc - conf)
        bins.append({"lower": float(edges[b]), "upper": float(edges[b + 1]), "count": count,
                     "confidence": conf, "accuracy": acc})
    return float(ece), bins


def classification_metrics(y_true: Sequence[int], probs: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Everything the results page shows, as plain JSON-able Python (it goes into model.json).

    Sensitivity and specificity are one-vs-rest per class. ROC/AUC are one-vs-rest on the class probability; a class
    absent from y_true (or present alone) has no ROC and AUC None.
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score, roc_curve

    y = np.asarray(y_true, int)
    probs = np.asarray(probs, np.float64)
    classes = list(classes)
    n = len(classes)
    pred = probs.argmax(axis=1) if len(y) else np.zeros(0, int)
    cm = confusion_matrix(y, pred, labels=list(range(n))) if len(y) else np.zeros((n, n), int)
    precision, recall, f1, support = precision_recall_fscore_support(
        y, pred, labels=list(range(n)), zero_division=0) if len(y) else (np.zeros(n),) * 4
    total = cm.sum()
    per_class: dict[str, dict[str, Any]] = {}
    roc: dict[str, dict[str, list[float]]] = {}
    aucs = []
    for k, name in enumerate(classes):
        tp = cm[k, k]
        fn = cm[k].sum() - tp
        fp = cm[:, k].sum() - tp
        tn = total - tp - fn - fp
        auc = None
        positives = y == k
        if 0 < positives.sum() < len(y):
            auc = float(roc_auc_score(positives, probs[:, k]))
            fpr, tpr, _ = roc_curve(positives, probs[:, k])
            roc[name] = {"fpr": [float(v) for v in fpr], "tpr": [float(v) for v in tpr]}
            aucs.append(auc)
        per_class[name] = {
            "precision": float(precision[k]), "recall": float(recall[k]), "f1": float(f1[k]),
            "support": int(support[k]),
            "sensitivity": float(tp / (tp + fn)) if tp + fn else None,
            "specificity": float(tn / (tn + fp)) if tn + fp else None,
            "auc": auc,
        }
    ece, bins = expected_calibration_error(y, probs)
    nll = float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0)))) if len(y) else None
    return {
        "n": int(len(y)),
        "classes": classes,
        "accuracy": float((pred == y).mean()) if len(y) else None,
        "balanced_accuracy": float(np.mean([r for r, s in zip(recall, support) if s])) if len(y) else None,
        "confusion_matrix": cm.astype(int).tolist(),
        "per_class": per_class,
        "macro_auc": float(np.mean(aucs)) if aucs else None,
        "roc": roc,
        "ece": ece,
        "reliability": bins,
        "nll": nll,
    }


def binary_auc(y_true: Sequence[int], probs: np.ndarray, positive: int, negative: int) -> float | None:
    """AUC of `positive` vs `negative` among the samples of those two classes only (within-source comparisons).

    Scores by p(positive) / (p(positive) + p(negative)), which ranks like their logit difference.
    """
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y_true, int)
    probs = np.asarray(probs, np.float64)
    mask = (y == positive) | (y == negative)
    if len(set(y[mask].tolist())) < 2:
        return None
    p = probs[mask]
    score = p[:, positive] / np.clip(p[:, positive] + p[:, negative], 1e-12, None)
    return float(roc_auc_score(y[mask] == positive, score))


def fit_temperature(logits: np.ndarray, y_true: Sequence[int], bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The temperature T minimising the negative log-likelihood of softmax(logits / T) (Guo et al. 2017)."""
    from scipy.optimize import minimize_scalar

    z = np.asarray(logits, np.float64)
    y = np.asarray(y_true, int)
    if len(y) == 0:
        return 1.0

    def nll(log_t: float) -> float:
        t = np.exp(log_t)
        zz = z / t
        zz = zz - zz.max(axis=1, keepdims=True)
        log_probs = zz - np.log(np.exp(zz).sum(axis=1, keepdims=True))
        return float(-log_probs[np.arange(len(y)), y].mean())

    found = minimize_scalar(nll, bounds=(np.log(bounds[0]), np.log(bounds[1])), method="bounded",
                            options={"xatol": 1e-5})
    return float(np.exp(found.x))


# ----------------------------------------------------------------------------------------------------------- figures

def _figure(width: float = 6.0, height: float = 4.0):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _single_axes(fig, width: float, height: float):
    """(figure, its one axes): `fig` cleared for redrawing (the dialogs reuse theirs), else a new width x height one."""
    fig = fig or _figure(width, height)
    fig.clear()
    return fig, fig.add_subplot(1, 1, 1)


def training_curves_figure(history: dict[str, list[float]], title: str = "Training loss and accuracy", fig=None):
    """The classic plot.png: loss and accuracy per epoch, train and validation. Draws into `fig` when given."""
    fig, ax = _single_axes(fig, 7.0, 4.0)
    epochs = np.arange(1, len(history.get("loss", [])) + 1)
    styles = (("loss", "train loss", "C0", "-"), ("val_loss", "val loss", "C1", "-"),
              ("accuracy", "train acc", "C0", "--"), ("val_accuracy", "val acc", "C1", "--"))
    for key, label, color, line in styles:
        values = history.get(key) or []
        if len(values):
            ax.plot(epochs[:len(values)], values, line, color=color, label=label)
    ax.set_title(title)
    ax.set_xlabel("Epoch")
    ax.set_ylabel("Loss / Accuracy")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(loc="best", fontsize=8)
    return fig


def confusion_figure(metrics: dict[str, Any], title: str = "Confusion matrix", fig=None):
    fig, ax = _single_axes(fig, 4.5, 4.0)
    cm = np.asarray(metrics["confusion_matrix"])
    classes = metrics["classes"]
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    ax.set_title(title)
    return fig


def roc_figure(metrics: dict[str, Any], title: str = "ROC (one vs rest)", fig=None):
    fig, ax = _single_axes(fig, 4.5, 4.0)
    for name, curve in metrics.get("roc", {}).items():
        auc = metrics["per_class"][name]["auc"]
        ax.plot(curve["fpr"], curve["tpr"], label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlabel("False positive rate (1 - specificity)")
    ax.set_ylabel("True positive rate (sensitivity)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)
    return fig


def reliability_figure(metrics: dict[str, Any], title: str = "Reliability", fig=None):
    fig, ax = _single_axes(fig, 4.5, 4.0)
    bins = [b for b in metrics.get("reliability", []) if b["count"]]
    if bins:
        centres = [(b["lower"] + b["upper"]) / 2 for b in bins]
        width = bins[0]["upper"] - bins[0]["lower"]
        ax.bar(centres, [b["accuracy"] for b in bins], width=width * 0.9, alpha=0.7, label="accuracy")
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o", color="C1",
                label="mean confidence")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("Confidence (top-class probability)")
    ax.set_ylabel("Accuracy")
    ax.set_title(f"{title} — ECE {metrics.get('ece', 0.0):.3f}")
    if bins:
        ax.legend(loc="upper left", fontsize=8)
    return fig


def figure_png(fig) -> bytes:
    """PNG bytes of a figure (for bundles and reports)."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def format_report(metrics: dict[str, Any]) -> str:
    """Plain-text classification report, confusion matrix, accuracy, sensitivity and specificity (CLI)."""
    classes = metrics["classes"]
    width = max(12, *(len(c) + 2 for c in classes))
    lines = [f"{'':<{width}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}{'sens.':>8}{'spec.':>8}"
             f"{'AUC':>8}"]

    def fmt(v):
        return f"{v:8.3f}" if v is not None else f"{'–':>8}"

    for name in classes:
        m = metrics["per_class"][name]
        lines.append(f"{name:<{width}}{m['precision']:10.3f}{m['recall']:10.3f}{m['f1']:10.3f}{m['support']:9d}"
                     f"{fmt(m['sensitivity'])}{fmt(m['specificity'])}{fmt(m['auc'])}")
    lines.append("")
    lines.append("confusion matrix (rows = true, columns = predicted):")
    lines.append(" " * width + "".join(f"{c[:9]:>10}" for c in classes))
    for name, row in zip(classes, metrics["confusion_matrix"]):
        lines.append(f"{name:<{width}}" + "".join(f"{v:10d}" for v in row))
    lines.append("")
    acc = metrics["accuracy"]
    lines.append(f"accuracy: {acc:.4f}" if acc is not None else "accuracy: –")
    for name in classes:
        m = metrics["per_class"][name]
        sens = "–" if m["sensitivity"] is None else f"{m['sensitivity']:.4f}"
        spec = "–" if m["specificity"] is None else f"{m['specificity']:.4f}"
        lines.append(f"{name}: sensitivity {sens}, specificity {spec}")
    if metrics.get("macro_auc") is not None:
        lines.append(f"macro AUC: {metrics['macro_auc']:.4f}")
    lines.append(f"expected calibration error ({ECE_BINS} bins): {metrics['ece']:.4f}")
    return "\n".join(lines)
