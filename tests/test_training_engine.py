"""The training engine end to end: synthetic twin (always runs) and a small real subset from ../shared.

Synthetic: bright disc vs dark disc on noise, two images per patient, so the patient-disjoint split is real.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from xrayviewer.training.engine import FineTuneJob, TrainingConfig, TrainingError, patient_groups, split_by_patient
from xrayviewer.training.features import Augmentation, FeatureExtractor, clear_memory_cache

from training_support import write_disc_dataset

METRIC_KEYS = {"n", "classes", "accuracy", "balanced_accuracy", "confusion_matrix", "per_class", "macro_auc", "roc",
               "ece", "reliability", "nll"}


@pytest.fixture(scope="module")
def disc_dataset(tmp_path_factory) -> Path:
    return write_disc_dataset(tmp_path_factory.mktemp("discs") / "data")


SYNTH_CONFIG = dict(epochs=6, batch_size=8, val_fraction=0.25, variants=2, seed=3)


@pytest.fixture(scope="module")
def trained(disc_dataset):
    events: list[dict] = []
    job = FineTuneJob(disc_dataset, TrainingConfig(**SYNTH_CONFIG))
    result = job.run(progress=events.append, cancel=threading.Event())
    return job, result, events


def test_synthetic_training_reaches_sane_metrics_and_reports_progress(trained):
    job, result, events = trained
    assert result is not None
    assert result.classes == ["bright", "dark"]
    assert METRIC_KEYS <= set(result.metrics)
    assert result.metrics["accuracy"] >= 0.75                 # a disc's brightness is easy
    assert result.history["accuracy"][-1] > 0.5
    assert result.patient_id_origin == "pattern"
    kinds = {e["kind"] for e in events}
    assert {"stage", "log", "features", "batch", "epoch", "done"} <= kinds
    epoch = [e for e in events if e["kind"] == "epoch"][-1]
    assert {"epoch", "epochs", "loss", "acc", "val_loss", "val_accuracy", "seconds", "eta_seconds"} <= set(epoch)
    batch = next(e for e in events if e["kind"] == "batch")
    assert {"epoch", "batch", "batches", "loss", "acc"} <= set(batch) and batch["epoch"] == 1
    assert any("patient ids from" in e["text"] for e in events if e["kind"] == "log")
    assert result.temperature > 0


def test_split_is_patient_disjoint(trained):
    _job, result, _events = trained
    val_patients = set(result.validation["patients"])
    assert result.split["validation"]["patients"] == len(val_patients)
    assert result.split["train"]["patients"] + len(val_patients) == 12


def test_saved_bundle_predicts_what_the_engine_measured(trained, tmp_path):
    """Standardisation folded into the head + transplant into the flat classifier = the same logits."""
    import tensorflow as tf

    from xrayviewer.imaging import read_radiograph, to_model_input
    from xrayviewer.model.bundle import load_bundle

    _job, result, _events = trained
    path = result.save(tmp_path / "models" / "discs", name="discs")
    bundle = load_bundle(path)
    assert bundle.classes == ["bright", "dark"] and bundle.temperature == pytest.approx(result.temperature)
    training = bundle.meta["training"]
    assert training["data_fingerprint"] == result.data_fingerprint and training["hyperparameters"]["epochs"] == 6
    assert training["split"]["validation"]["files"] == len(result.validation["paths"])
    train_sha, val_sha = training["split"]["train"]["sha256"], training["split"]["validation"]["sha256"]
    assert len(train_sha) == training["split"]["train"]["files"] and val_sha == result.validation["sha256"]
    assert all(len(h) == 64 and int(h, 16) >= 0 for h in train_sha) and not set(train_sha) & set(val_sha)
    assert bundle.meta["metrics"]["validation"]["accuracy"] == pytest.approx(result.metrics["accuracy"])
    for png in ("plot.png", "confusion.png", "roc.png", "reliability.png"):
        assert (path / png).read_bytes()[:4] == b"\x89PNG"
    model = bundle.build_keras_model()
    x = np.stack([to_model_input(read_radiograph(p)) for p in result.validation["paths"]])
    probs = np.asarray(tf.function(lambda a: model(a, training=False))(tf.constant(x)))
    expected = tf.nn.softmax(np.asarray(result.validation["logits"], np.float32)).numpy()
    np.testing.assert_allclose(probs, expected, atol=2e-4)


def test_feature_cache_hit_on_second_run_without_calling_the_base(disc_dataset, trained):
    _job, first, _events = trained
    clear_memory_cache()                                     # prove the disk cache, not just memory
    extractor = FeatureExtractor(augmentation=Augmentation())
    result = FineTuneJob(disc_dataset, TrainingConfig(**SYNTH_CONFIG), extractor=extractor).run()
    assert extractor.base_batches == 0
    assert extractor.cache_hits == first.split["train"]["files"] * 2 + first.split["validation"]["files"]
    assert any(extractor.cache_folder.glob("*_v1.npy"))


def test_augmentation_variants_are_seeded_and_differ_from_the_original():
    aug = Augmentation()
    img = np.zeros((64, 64), np.float32)
    img[10:30, 20:40] = 1.0
    a, b = aug.apply(img, 1), aug.apply(img, 1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, img) and not np.array_equal(a, aug.apply(img, 2))
    assert Augmentation(horizontal_flip=True).key() != aug.key()


def test_cancel_mid_epoch_returns_none_quickly_and_writes_nothing(disc_dataset, tmp_path):
    cancel = threading.Event()
    marks: dict[str, float] = {}

    def progress(event):
        if event["kind"] == "batch" and event["epoch"] == 2 and "set" not in marks:
            marks["set"] = time.perf_counter()
            cancel.set()

    models = tmp_path / "models"
    models.mkdir()
    job = FineTuneJob(disc_dataset, TrainingConfig(**{**SYNTH_CONFIG, "epochs": 50}))
    result = job.run(progress=progress, cancel=cancel)
    assert result is None
    assert time.perf_counter() - marks["set"] < 1.0
    assert list(models.iterdir()) == []


def test_cancel_before_features_returns_none(disc_dataset):
    cancel = threading.Event()
    cancel.set()
    assert FineTuneJob(disc_dataset, TrainingConfig(**SYNTH_CONFIG)).run(cancel=cancel) is None


def test_crash_during_save_leaves_the_previous_bundle_intact(trained, tmp_path, monkeypatch):
    from xrayviewer.model import bundle as bundle_module

    _job, result, _events = trained
    dest = tmp_path / "models" / "mine"
    result.save(dest, name="first")
    before = {p.name: p.read_bytes() for p in dest.iterdir()}

    def crash(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bundle_module, "_write_extra", crash)
    with pytest.raises(OSError):
        result.save(dest, name="second")
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == before
    assert bundle_module.load_bundle(dest).name == "first"
    assert [p.name for p in dest.parent.iterdir()] == ["mine"]      # no temp folder left behind


def test_split_by_file_and_by_pattern(disc_dataset):
    from xrayviewer.imaging import discover_dataset

    dataset = discover_dataset(disc_dataset)
    groups, origin = patient_groups(dataset, TrainingConfig(split_by="file"))
    assert origin == "file" and len(set(groups)) == 24
    groups, origin = patient_groups(dataset, TrainingConfig(split_by="pattern", patient_pattern=r"syn_p\d+"))
    assert origin == "pattern" and len(set(groups)) == 12
    with pytest.raises(TrainingError, match="manifest"):
        patient_groups(dataset, TrainingConfig(split_by="manifest"))


# ------------------------------------------------------------------------------------------------ real radiographs

@pytest.fixture(scope="module")
def real_dataset(shared_data):
    from xrayviewer.imaging import discover_dataset

    dataset = discover_dataset(shared_data / "cxr")
    classes = ["covid", "normal", "pneumonia"]
    return dataclasses.replace(dataset, classes=classes, items=[i for i in dataset.items if i.label in classes],
                               problems=[p for p in dataset.problems if p.severity == "warning"])


def test_real_split_is_patient_disjoint_and_stratified(real_dataset):
    groups, origin = patient_groups(real_dataset, TrainingConfig())
    assert origin == "manifest"
    labels = np.array([real_dataset.classes.index(i.label) for i in real_dataset.items])
    train, val = split_by_patient(labels, groups, 0.2, 42)
    assert not {groups[i] for i in train} & {groups[i] for i in val}
    assert 0.15 < len(val) / len(labels) < 0.25
    for k in range(3):
        assert 0.1 < (labels[val] == k).sum() / (labels == k).sum() < 0.3
    again = split_by_patient(labels, groups, 0.2, 42)
    np.testing.assert_array_equal(again[1], val)


@pytest.mark.shared
def test_engine_on_a_small_real_subset(real_dataset):
    picked, seen = [], {}
    for item in real_dataset.items:                 # 8 images per class, one per patient
        if seen.get(item.label, 0) < 8 and item.patient_id not in {i.patient_id for i in picked}:
            picked.append(item)
            seen[item.label] = seen.get(item.label, 0) + 1
    subset = dataclasses.replace(real_dataset, items=picked)
    result = FineTuneJob(subset, TrainingConfig(epochs=3, variants=1, val_fraction=0.25, seed=1)).run()
    assert result is not None
    assert result.classes == ["covid", "normal", "pneumonia"]
    assert METRIC_KEYS <= set(result.metrics)
    assert result.history["accuracy"][-1] > 1 / 3 + 0.1      # above chance on its training data
    assert set(result.validation["sources"]) <= {"hms", "ieee8023", "nih", "kermany", "jsrt", "nihdcm"}
    assert json.dumps(result.meta())                            # model.json content is JSON


def test_evaluate_bundle_on_split_gives_the_saved_models_own_metrics(trained, tmp_path):
    """The dialog's side-by-side column: a bundle evaluated on the result's validation split."""
    from xrayviewer.training.engine import evaluate_bundle_on_split

    _job, result, _events = trained
    path = result.save(tmp_path / "same", name="same")
    metrics = evaluate_bundle_on_split(path, result)
    assert metrics["confusion_matrix"] == result.metrics["confusion_matrix"]
    assert metrics["ece"] == pytest.approx(result.metrics["ece"], abs=1e-4)
    assert metrics["per_class"]["bright"]["auc"] == pytest.approx(result.metrics["per_class"]["bright"]["auc"])


def test_evaluate_bundle_with_other_classes_says_why(trained):
    from xrayviewer.paths import DEFAULT_MODEL_DIR
    from xrayviewer.training.engine import evaluate_bundle_on_split

    _job, result, _events = trained
    with pytest.raises(TrainingError, match="cannot be compared"):
        evaluate_bundle_on_split(DEFAULT_MODEL_DIR, result)


def test_cancel_during_feature_extraction_stops_after_the_current_batch(disc_dataset, tmp_path):
    cancel = threading.Event()

    def progress(event):
        if event["kind"] == "features" and event["done"] > 0:
            cancel.set()

    fresh = Augmentation(rotation_deg=5.0)                       # a cache key no other test has filled
    extractor = FeatureExtractor(augmentation=fresh, cache_root=tmp_path / "features")
    config = TrainingConfig(**{**SYNTH_CONFIG, "augmentation": fresh})
    assert FineTuneJob(disc_dataset, config, extractor=extractor).run(progress=progress, cancel=cancel) is None
    assert extractor.base_batches == 1


def test_cancel_while_the_base_runs_answers_within_seconds(disc_dataset, tmp_path):
    """Cancel from another thread (the dialog's Cancel button) lands while a base batch runs: the job must not
    finish a long batch first. 3 s is generous for a loaded 2-core machine (one batch takes ~0.6 s when quiet)."""
    cancel = threading.Event()
    marks: dict[str, float] = {}
    timers: list[threading.Timer] = []

    def cancel_soon():
        marks["set"] = time.perf_counter()
        cancel.set()

    def progress(event):
        if event["kind"] == "features" and event["done"] > 0 and not timers:
            timers.append(threading.Timer(0.1, cancel_soon))  # lands while the next batch is prepared or in the base
            timers[0].start()

    fresh = Augmentation(rotation_deg=4.0)                       # a cache key no other test has filled
    extractor = FeatureExtractor(augmentation=fresh, cache_root=tmp_path / "features")
    config = TrainingConfig(**{**SYNTH_CONFIG, "augmentation": fresh})
    result = FineTuneJob(disc_dataset, config, extractor=extractor).run(progress=progress, cancel=cancel)
    waited = time.perf_counter() - marks["set"]
    assert result is None
    assert waited < 3.0, f"cancel took {waited:.1f} s to answer"
    assert extractor.base_batches <= 3                        # stopped early: the whole run needs 11


def test_early_stopping_keeps_the_best_epoch_and_class_weights_run():
    """Random labels: validation loss stops improving soon; training stops and the best epoch's weights are kept."""
    from xrayviewer.training.engine import head_logits, train_head
    from xrayviewer.training.metrics import softmax

    rng = np.random.default_rng(0)
    x, y = rng.normal(5.0, 3.0, (80, 32)).astype(np.float32), rng.integers(0, 2, 80)
    xv, yv = rng.normal(5.0, 3.0, (30, 32)).astype(np.float32), rng.integers(0, 2, 30)
    config = TrainingConfig(epochs=60, patience=3, class_weights=True, head={"units": 16, "dropout": 0.0}, seed=0)
    head, history = train_head(x, y, xv, yv, 2, config)
    assert len(history["loss"]) < 60
    best = history["best_epoch"]
    p = softmax(head_logits(head, xv))
    val_loss = -np.mean(np.log(p[np.arange(len(yv)), yv]))
    assert val_loss == pytest.approx(history["val_loss"][best - 1], rel=1e-3)   # raw features: folding is exact


def test_the_dialog_sees_which_validation_images_a_saved_model_was_trained_on(trained, tmp_path):
    """model.json lists the training files' hashes where the training dialog looks for them (its overlap warning)."""
    from xrayviewer.imaging import file_sha256
    from xrayviewer.model.bundle import load_bundle
    from xrayviewer.ui.training_dialog import _trained_on

    _job, result, _events = trained
    bundle = load_bundle(result.save(tmp_path / "seen", name="seen"))
    train_files = [p for p in sorted(Path(result.dataset_root).rglob("*.png")) if str(p) not in
                   result.validation["paths"]]
    assert _trained_on(bundle, result.validation["sha256"]) == 0
    assert len(train_files) == result.split["train"]["files"] > 0
    assert _trained_on(bundle, [file_sha256(p) for p in train_files]) == len(train_files)


def test_a_tiny_folder_trains_without_ood_statistics_and_its_bundle_loads(tmp_path):
    """Fewer than 10 training images: no OOD statistics (logged with the reason), the rest of the model stands."""
    from xrayviewer.imaging import read_radiograph
    from xrayviewer.model.bundle import load_bundle
    from xrayviewer.model.classifier import Classifier

    data = write_disc_dataset(tmp_path / "tiny", patients_per_class=5, images_per_patient=1)
    events: list[dict] = []
    result = FineTuneJob(data, TrainingConfig(**{**SYNTH_CONFIG, "variants": 1, "epochs": 3})).run(
        progress=events.append)
    assert result is not None and result.ood is None
    assert result.split["train"]["files"] < 10
    assert any(e["text"].startswith("no out-of-distribution statistics: ") and "at least 10" in e["text"]
               for e in events if e["kind"] == "log")
    path = result.save(tmp_path / "models" / "tiny", name="tiny")
    assert json.loads((path / "model.json").read_text())["ood"] is None and not (path / "ood.npz").exists()
    analysis = Classifier.load(load_bundle(path)).analyze(read_radiograph(result.validation["paths"][0]))
    assert analysis.ood_score is None and not analysis.ood_flag
    assert float(np.sum(analysis.probabilities)) == pytest.approx(1.0, abs=1e-5)


def test_ood_threshold_is_cross_fitted_by_patient(disc_dataset, monkeypatch):
    """fit_ood gets one group per training image, the image's patient, so a patient's two images share a fold."""
    from xrayviewer.model import ood as ood_module

    calls = []
    real_fit = ood_module.fit_ood

    def recording_fit(features, **kwargs):
        calls.append((len(features), list(kwargs.get("groups") or [])))
        return real_fit(features, **kwargs)

    monkeypatch.setattr(ood_module, "fit_ood", recording_fit)
    result = FineTuneJob(disc_dataset, TrainingConfig(**{**SYNTH_CONFIG, "epochs": 2})).run()
    assert result.ood is not None and len(calls) == 1
    n_features, groups = calls[0]
    assert n_features == len(groups) == result.split["train"]["files"]
    assert len(set(groups)) == result.split["train"]["patients"] == n_features // 2
    assert not set(groups) & set(result.validation["patients"])


@pytest.mark.parametrize("pattern", [r"syn_p\d+", r"SYN_P\d", r"(?P<patient>p\d+)", r".*png$", r"[^_]+_[^_]+"])
def test_an_edited_pattern_groups_patients_as_the_dataset_check_does(tmp_path_factory, pattern):
    """The split and discover_dataset apply one rule: case-insensitive, at the start of the name without its
    extension, the whole match is the patient."""
    from xrayviewer.imaging import discover_dataset

    root = tmp_path_factory.mktemp("cases") / "data"
    write_disc_dataset(root, patients_per_class=3)
    for path in sorted((root / "dark").iterdir()):          # upper-case names still match a lower-case pattern
        path.rename(path.with_name(path.name.upper()))
    checked = discover_dataset(root, patient_pattern=pattern)
    groups, origin = patient_groups(discover_dataset(root), TrainingConfig(split_by="pattern", patient_pattern=pattern))
    assert origin == "pattern"
    expected = [f"file:{item.path}" if item.patient_id == str(item.path) else f"pattern:{item.patient_id}"
                for item in checked.items]                  # the scanner's id, or one patient per file
    assert groups == expected


def test_pattern_groups_by_the_whole_match_at_the_start_of_the_stem(disc_dataset):
    from xrayviewer.imaging import discover_dataset

    dataset = discover_dataset(disc_dataset)

    def by(pattern: str) -> list[str]:
        return patient_groups(dataset, TrainingConfig(split_by="pattern", patient_pattern=pattern))[0]

    assert len(set(by(r"SYN_P\d+"))) == 12                   # case-insensitive: 12 patients
    assert all(g.startswith("file:") for g in by(r"p\d+"))   # not at the start of the name: one patient per file
    assert all(g.startswith("file:") for g in by(r".*png"))  # the extension is not part of the name matched
    with pytest.raises(TrainingError, match="not a valid regular expression"):
        TrainingConfig(split_by="pattern", patient_pattern="syn_(p").check()


@pytest.mark.parametrize("size", [(100, 100), (48, 48), (224, 2048)])
def test_an_input_size_the_base_cannot_take_is_refused_with_a_message(size):
    with pytest.raises(TrainingError, match="input size must be a multiple of 16"):
        TrainingConfig(input_size=size).check()
    TrainingConfig(input_size=(336, 336)).check()      # the shipped model's size is fine
