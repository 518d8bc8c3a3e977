"""Metrics, calibration and figures on inputs whose right answers are known by hand."""

from __future__ import annotations

import numpy as np
import pytest

from xrayviewer.training import metrics as m


def _probs_for(pred: list[int], n_classes: int, confidence: float = 0.8) -> np.ndarray:
    probs = np.full((len(pred), n_classes), (1 - confidence) / (n_classes - 1))
    probs[np.arange(len(pred)), pred] = confidence
    return probs


def test_sensitivity_specificity_on_a_known_confusion_matrix():
    # true a: 8 right, 2 called b; true b: 3 called a, 7 right
    y = [0] * 10 + [1] * 10
    pred = [0] * 8 + [1] * 2 + [0] * 3 + [1] * 7
    out = m.classification_metrics(y, _probs_for(pred, 2), ["a", "b"])
    assert out["confusion_matrix"] == [[8, 2], [3, 7]]
    assert out["accuracy"] == pytest.approx(15 / 20)
    a, b = out["per_class"]["a"], out["per_class"]["b"]
    assert a["sensitivity"] == pytest.approx(8 / 10) and a["specificity"] == pytest.approx(7 / 10)
    assert b["sensitivity"] == pytest.approx(7 / 10) and b["specificity"] == pytest.approx(8 / 10)
    assert a["precision"] == pytest.approx(8 / 11) and a["support"] == 10
    assert a["f1"] == pytest.approx(2 * (8 / 11) * 0.8 / (8 / 11 + 0.8))


def test_three_class_one_vs_rest_and_complete_dict():
    y = [0, 0, 1, 1, 2, 2]
    pred = [0, 1, 1, 1, 2, 0]
    out = m.classification_metrics(y, _probs_for(pred, 3, 0.6), ["covid", "normal", "pneumonia"])
    for key in ("accuracy", "confusion_matrix", "per_class", "macro_auc", "roc", "ece", "reliability", "nll"):
        assert key in out
    covid = out["per_class"]["covid"]
    # covid: TP 1, FN 1, FP 1 (a pneumonia), TN 3
    assert covid["sensitivity"] == pytest.approx(0.5) and covid["specificity"] == pytest.approx(0.75)
    assert set(out["roc"]) == {"covid", "normal", "pneumonia"}
    assert len(out["reliability"]) == m.ECE_BINS


def test_auc_of_a_perfect_ranking_is_one_and_absent_class_has_none():
    y = [0, 0, 1, 1]
    probs = np.array([[0.9, 0.1, 0], [0.7, 0.3, 0], [0.4, 0.6, 0], [0.2, 0.8, 0]])
    out = m.classification_metrics(y, probs, ["a", "b", "c"])
    assert out["per_class"]["a"]["auc"] == pytest.approx(1.0)
    assert out["per_class"]["c"]["auc"] is None and out["per_class"]["c"]["sensitivity"] is None
    assert out["macro_auc"] == pytest.approx(1.0)


def test_ece_of_a_perfectly_calibrated_toy_is_zero():
    # 10 samples at confidence 0.8 of which 8 are right; 10 at 0.6 of which 6 are right
    y = [0] * 10 + [0] * 10
    pred = [0] * 8 + [1] * 2 + [0] * 6 + [1] * 4
    conf = [0.8] * 10 + [0.6] * 10
    probs = np.array([[c, 1 - c] if p == 0 else [1 - c, c] for p, c in zip(pred, conf)])
    ece, bins = m.expected_calibration_error(y, probs)
    assert ece == pytest.approx(0.0, abs=1e-12)
    assert sum(b["count"] for b in bins) == 20


def test_ece_of_an_overconfident_toy():
    y = [0, 1, 0, 1]
    probs = np.array([[0.99, 0.01]] * 4)       # says "class 0" at 0.99, right half the time
    ece, _ = m.expected_calibration_error(y, probs)
    assert ece == pytest.approx(0.49)


def test_temperature_fit_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2.0, size=(4000, 3))
    probs = m.softmax(true_logits)
    y = np.array([rng.choice(3, p=p) for p in probs])
    # A model that is over-confident by a factor 2.5: its logits are 2.5x the calibrated ones.
    t = m.fit_temperature(true_logits * 2.5, y)
    assert t == pytest.approx(2.5, rel=0.08)


def test_binary_auc_within_two_classes():
    # class 2 images rank above class 1 images on p2 / (p1 + p2); class 0 rows are ignored
    y = [1, 1, 2, 2, 0]
    probs = np.array([[0.1, 0.8, 0.1], [0.2, 0.6, 0.2], [0.3, 0.2, 0.5], [0.1, 0.3, 0.6], [0.0, 0.05, 0.95]])
    assert m.binary_auc(y, probs, positive=2, negative=1) == pytest.approx(1.0)
    assert m.binary_auc([2, 2, 1, 1, 0], probs, positive=2, negative=1) == pytest.approx(0.0)
    assert m.binary_auc([1, 1], probs[:2], positive=2, negative=1) is None


def test_figures_render_with_agg_and_report_text(artifacts_dir):
    y = [0, 0, 1, 1, 2, 2]
    probs = _probs_for([0, 1, 1, 1, 2, 0], 3, 0.7)
    out = m.classification_metrics(y, probs, ["covid", "normal", "pneumonia"])
    history = {"loss": [1.0, 0.7, 0.5], "val_loss": [1.1, 0.9, 0.8], "accuracy": [0.4, 0.6, 0.8],
               "val_accuracy": [0.3, 0.5, 0.6]}
    for name, fig in {"curves": m.training_curves_figure(history), "confusion": m.confusion_figure(out),
                      "roc": m.roc_figure(out), "reliability": m.reliability_figure(out)}.items():
        png = m.figure_png(fig)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
        (artifacts_dir / f"training_metrics_{name}.png").write_bytes(png)
    text = m.format_report(out)
    assert "accuracy: 0.6667" in text and "covid: sensitivity 0.5000, specificity 0.7500" in text
