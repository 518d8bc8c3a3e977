"""Out-of-distribution refusal: statistics math (synthetic twins), bundle round trip, and the shipped model's
statistics on real radiographs vs photographs, drawings, text, blank, noise, inverted radiographs and CT-like slices.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from test_ood_images import OOD_KINDS, inverted

from xrayviewer.model.ood import OOD_FILE, OODError, OODStats, add_ood_to_bundle, fit_ood
from xrayviewer.paths import DEFAULT_MODEL_DIR


def in_distribution(rng, n, dim=48):
    """Positive, skewed features like pooled ReLU activations, with correlated dimensions."""
    mixing = np.random.default_rng(123).normal(0, 1, (dim, dim)) / np.sqrt(dim)
    return np.exp(rng.normal(0, 0.4, (n, dim)) @ mixing)


# ------------------------------------------------------------------------------------------------ synthetic twins
def test_threshold_is_honest_and_shifted_features_are_flagged():
    rng = np.random.default_rng(0)
    stats = fit_ood(in_distribution(rng, 300))
    new_radiographs = stats.is_ood(stats.score(in_distribution(rng, 2000))).mean()
    assert new_radiographs <= 0.04          # ~1 % nominal (99th percentile of held-out scores)
    assert stats.is_ood(stats.score(in_distribution(rng, 200) * 2.0)).mean() >= 0.95
    assert stats.is_ood(stats.score(np.zeros((5, 48)))).all()
    assert stats.threshold == 1.0 and stats.distance_threshold > 0   # score is relative to the threshold
    single = stats.score(in_distribution(rng, 1)[0])
    assert single.shape == (1,)


@pytest.mark.parametrize("n, p", [(300, 512), (20, 512), (500, 16)])
def test_gaussian_equals_sklearn_ledoit_wolf(n, p):
    """The fit is done with NumPy (its LAPACK call releases the GIL; SciPy's does not), with sklearn's numbers."""
    from sklearn.covariance import LedoitWolf

    from xrayviewer.model.ood import _fit_gaussian

    rng = np.random.default_rng(n + p)
    x = np.sqrt(rng.random((n, p))) * rng.random(p)
    reference = LedoitWolf().fit(x)
    mean, precision = _fit_gaussian(x)
    np.testing.assert_allclose(mean, reference.location_, rtol=1e-12)
    np.testing.assert_allclose(precision, reference.precision_, rtol=1e-9, atol=1e-9 * np.abs(precision).max())


def test_groups_keep_a_patient_in_one_fold():
    rng = np.random.default_rng(1)
    patients = np.repeat(np.arange(60), 4)
    base = in_distribution(rng, 60)[patients] + rng.normal(0, 0.01, (240, 48))
    naive = fit_ood(base)
    grouped = fit_ood(base, groups=patients.tolist())
    # near-duplicate images of a patient make an ungrouped held-out score optimistic (threshold too low)
    assert grouped.distance_threshold > naive.distance_threshold


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    stats = fit_ood(in_distribution(rng, 100))
    entry = stats.save(tmp_path)
    assert entry["file"] == OOD_FILE and len(entry["sha256"]) == 64 and entry["threshold"] == stats.threshold
    loaded = OODStats.load(tmp_path, entry)
    x = in_distribution(rng, 20)
    np.testing.assert_allclose(loaded.score(x), stats.score(x), rtol=1e-4)
    assert stats.save(tmp_path / "elsewhere.npz")["file"] == "elsewhere.npz"   # explicit file path too


def test_bad_statistics_are_refused(tmp_path):
    rng = np.random.default_rng(3)
    stats = fit_ood(in_distribution(rng, 50))
    with pytest.raises(OODError, match="dimensions"):
        stats.score(np.ones((2, 7)))
    with pytest.raises(OODError, match="at least 10"):
        fit_ood(np.ones((3, 4)))
    with pytest.raises(OODError, match="2-D"):
        fit_ood(np.ones(30))
    (tmp_path / OOD_FILE).write_bytes(b"not an npz")
    with pytest.raises(OODError):
        OODStats.load(tmp_path, {"file": OOD_FILE})
    with pytest.raises(OODError):
        OODStats.load(tmp_path / "missing")


def test_classifier_applies_statistics_added_to_a_bundle(tmp_path):
    """A tiny synthetic bundle gets OOD statistics afterwards; the Classifier then scores and flags."""
    from xrayviewer.imaging.radiograph import Radiograph
    from xrayviewer.model.architecture import build_classifier
    from xrayviewer.model.bundle import load_bundle, save_bundle
    from xrayviewer.model.classifier import Classifier

    model = build_classifier("small-cnn", 2, {"units": 8, "dropout": 0.0}, (64, 64))
    bundle_dir = save_bundle(tmp_path / "tiny", {"name": "tiny", "classes": ["a", "b"], "base": {"id": "small-cnn"}},
                             model, head_only=False)
    classifier = Classifier.load(bundle_dir)
    rng = np.random.default_rng(4)
    phantoms = [Radiograph.from_array(np.clip(0.5 + 0.1 * rng.normal(size=(80, 80)), 0, 1).astype(np.float32))
                for _ in range(40)]
    entry = add_ood_to_bundle(bundle_dir, classifier.features(phantoms))
    meta = json.loads((bundle_dir / "model.json").read_text())
    assert meta["ood"] == entry and load_bundle(bundle_dir).ood["threshold"] == entry["threshold"]
    classifier = Classifier.load(bundle_dir)
    typical = classifier.analyze(phantoms[0])
    assert typical.ood_score is not None and not typical.ood_flag
    odd = classifier.analyze(Radiograph.from_array(np.tile(np.linspace(0, 1, 80, dtype=np.float32), (80, 1))))
    assert odd.ood_flag and odd.ood_score > entry["threshold"]


# ------------------------------------------------------------------------------------------------ real data
@pytest.fixture(scope="module")
def shipped():
    """The shipped classifier with its OOD statistics (skip with a reason when it has none yet)."""
    from xrayviewer.model.classifier import Classifier

    meta_path = DEFAULT_MODEL_DIR / "model.json"
    if not meta_path.is_file() or not json.loads(meta_path.read_text()).get("ood"):
        pytest.skip("models/default has no OOD statistics yet")
    return Classifier.load(DEFAULT_MODEL_DIR)


def _flag_rate(classifier, radiographs) -> float:
    """Share flagged "not a chest X-ray?" by the Classifier itself (features + model inputs, as in the app)."""
    return float(np.mean([a.ood_flag for a in classifier.analyze_batch(radiographs, cams=False)]))


@pytest.mark.shared
@pytest.mark.slow
def test_real_radiographs_pass_and_other_images_are_flagged(shared_data, cxr_manifest, shipped):
    from xrayviewer.imaging import read_radiograph

    rng = np.random.default_rng(7)
    # every source and label, a bounded number each, so the test stays affordable on 2 cores
    by_group: dict[tuple[str, str], list[dict]] = {}
    for r in cxr_manifest:
        by_group.setdefault((r["source"], r["label"]), []).append(r)
    picked = [r for rows in by_group.values() for r in
              (rows if len(rows) <= 8 else [rows[i] for i in rng.choice(len(rows), 8, replace=False)])]
    real = [read_radiograph(shared_data / "cxr" / r["path"]) for r in picked]
    real_rate = _flag_rate(shipped, real)
    assert real_rate <= 0.05, f"{real_rate:.1%} of {len(real)} real radiographs flagged"

    rates = {"inverted radiograph": _flag_rate(shipped, [inverted(r) for r in real[:40]])}
    for kind, make in OOD_KINDS.items():
        rates[kind] = _flag_rate(shipped, [make(rng) for _ in range(20)])
    print(f"flagged: real {real_rate:.1%} of {len(real)};", ", ".join(f"{k} {v:.0%}" for k, v in rates.items()))
    failing = {k: v for k, v in rates.items() if v < 0.95}
    assert not failing, f"flag rates below 95 %: {failing} (all: {rates})"


def test_polarity_check_flags_an_inverted_chest_layout():
    from xrayviewer.model.ood import polarity_score

    chest = np.full((200, 200), 0.3, np.float32)
    chest[:, 80:120] = 0.8          # bright mediastinum and spine between darker lung fields
    scores = polarity_score(np.stack([chest * 255, (1 - chest) * 255, np.full((200, 200), 100.0)]))
    assert scores[0] < 0 and scores[1] > 1 and scores[2] == pytest.approx(1.0, abs=1e-4)
    rgb_offset = np.repeat(chest[None, :, :, None] * 255 - 110, 3, axis=3)   # model inputs: offsets cancel
    assert polarity_score(rgb_offset)[0] == pytest.approx(scores[0])
