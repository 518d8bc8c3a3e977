"""Fine-tuning the last conv block: synthetic twin (always runs, 64x64 input), a small real subset from ../shared,
the saved bundle (full weights, same predictions after load), the maps cache, cancel, other bases and the CLI flag.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from training_support import write_disc_dataset
from xrayviewer.training.engine import FineTuneJob, TrainingConfig, TrainingError
from xrayviewer.training.features import Augmentation

SMALL = (64, 64)     # block3_pool 8x8x256: the same code path as 224x224, a fraction of the time
FT_CONFIG = dict(epochs=2, batch_size=8, val_fraction=0.25, variants=2, seed=3, finetune_last_block=True,
                 input_size=SMALL)
BLOCK4 = ("block4_conv1", "block4_conv2", "block4_conv3")
FROZEN = ("block1_conv1", "block1_conv2", "block2_conv1", "block2_conv2", "block3_conv1", "block3_conv2",
          "block3_conv3")


@pytest.fixture(scope="module")
def disc_dataset(tmp_path_factory) -> Path:
    return write_disc_dataset(tmp_path_factory.mktemp("ft-discs") / "data")


@pytest.fixture(scope="module")
def map_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("maps")


@pytest.fixture(scope="module")
def finetuned(disc_dataset, map_cache):
    from xrayviewer.training.maps import MapExtractor

    events: list[dict] = []
    extractor = MapExtractor(input_size=SMALL, augmentation=Augmentation(), cache_root=map_cache)
    # without early stopping: the fine-tuned weights are kept even where 2 epochs at the block's low rate do not beat
    # the warm-up head on these easy discs (with it, that head and the unchanged block would be kept: tested below)
    config = TrainingConfig(**{**FT_CONFIG, "early_stopping": False})
    result = FineTuneJob(disc_dataset, config, extractor=extractor).run(progress=events.append,
                                                                        cancel=threading.Event())
    return result, events, extractor


def _base_weights(input_size) -> dict[str, list[np.ndarray]]:
    from xrayviewer.model.architecture import build_classifier

    model = build_classifier("vgg16-hed-block4", 2, None, input_size)
    return {name: model.get_layer(name).get_weights() for name in BLOCK4 + FROZEN}


def _assert_block4_trained_only(model, input_size) -> None:
    before = _base_weights(input_size)
    for name in FROZEN:
        for old, new in zip(before[name], model.get_layer(name).get_weights()):
            np.testing.assert_array_equal(old, new, err_msg=f"{name} changed")
    for name in BLOCK4:
        kernel_before, kernel_after = before[name][0], model.get_layer(name).get_weights()[0]
        assert not np.array_equal(kernel_before, kernel_after), f"{name} did not change"
        # a lower learning rate: the pretrained filters are adjusted, not replaced
        assert np.abs(kernel_after - kernel_before).max() < 0.5 * np.abs(kernel_before).max()
    assert not any(model.get_layer(name).trainable for name in BLOCK4 + FROZEN)


def test_finetune_trains_block4_with_the_head_and_reports_progress(finetuned):
    result, events, extractor = finetuned
    assert result is not None and result.classes == ["bright", "dark"]
    _assert_block4_trained_only(result.model, SMALL)
    info = result.finetune
    assert info["cut_layer"] == "block3_pool" and info["trained_layers"] == list(BLOCK4)
    assert info["learning_rates"] == {"head": 1e-3, "block": pytest.approx(1e-5)}
    assert result.metrics["accuracy"] >= 0.5 and 0 < result.temperature
    kinds = {e["kind"] for e in events}
    assert {"stage", "log", "features", "batch", "epoch", "done"} <= kinds
    epochs = [e for e in events if e["kind"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2] and all(e["epochs"] == 2 for e in epochs)
    assert {"loss", "acc", "val_loss", "val_accuracy", "seconds", "eta_seconds"} <= set(epochs[-1])
    batches = [e for e in events if e["kind"] == "batch" and e["epoch"] == 1]
    assert [e["batch"] for e in batches] == list(range(1, batches[0]["batches"] + 1))   # 18 images / 8: 3 batches
    assert len(result.history["loss"]) == len(result.history["val_accuracy"]) == 2
    assert extractor.base_batches > 0
    assert any("learning rates: head" in e["text"] for e in events if e["kind"] == "log")


def test_finetuned_bundle_has_full_weights_and_predicts_the_same_after_load(finetuned, tmp_path):
    import tensorflow as tf

    from xrayviewer.imaging import read_radiograph
    from xrayviewer.model.bundle import BundleError, export_keras, load_bundle, load_keras_file
    from xrayviewer.model.classifier import Classifier
    from xrayviewer.training.metrics import softmax

    result, _events, _extractor = finetuned
    path = result.save(tmp_path / "models" / "ft", name="fine-tuned discs")
    meta = json.loads((path / "model.json").read_text())
    assert meta["weights"]["scope"] == "full" and meta["weights"]["file"] == "model.weights.h5"
    assert meta["training"]["hyperparameters"]["finetune_last_block"] is True
    assert meta["training"]["hyperparameters"]["block_lr_factor"] == pytest.approx(0.01)
    assert meta["training"]["finetune"]["learning_rates"]["block"] == pytest.approx(1e-5)
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]      # atomic: no temp folder left
    from xrayviewer.model.bundle import list_bundles

    assert [b.name for b in list_bundles(path.parent)] == ["fine-tuned discs"]   # what the models manager lists

    radiographs = [read_radiograph(p) for p in result.validation["paths"]]
    classifier = Classifier.load(load_bundle(path))
    loaded = classifier.predict(radiographs)
    x = np.stack([classifier.model_input(r) for r in radiographs])
    in_memory = tf.nn.softmax(np.log(np.asarray(result.model(x, training=False)) + 1e-30) / result.temperature)
    np.testing.assert_allclose(loaded, np.asarray(in_memory), atol=1e-5)
    # the engine measured its metrics on float16 cached maps: the full float32 network agrees closely
    engine = softmax(np.asarray(result.validation["logits"]), result.temperature)
    np.testing.assert_allclose(loaded, engine, atol=5e-3)
    assert classifier.analyze(radiographs[0]).cams.shape[1:] == (8, 8)    # block4_conv3 at 64x64 input

    keras_file = export_keras(path, tmp_path / "ft.keras")
    exported = load_keras_file(keras_file)
    probs = np.asarray(exported(x, training=False))
    np.testing.assert_allclose(probs, np.asarray(classifier.model(x, training=False)), atol=1e-5)

    weights = path / "model.weights.h5"
    weights.write_bytes(weights.read_bytes()[:-16] + b"0" * 16)
    with pytest.raises(BundleError, match="damaged or was changed"):
        load_bundle(path)


def test_second_run_reads_the_maps_from_the_disk_cache(disc_dataset, map_cache, finetuned):
    from xrayviewer.training.maps import MapExtractor, clear_memory_cache

    first, _events, first_extractor = finetuned
    clear_memory_cache()                              # prove the disk cache, not just memory
    extractor = MapExtractor(input_size=SMALL, augmentation=Augmentation(), cache_root=map_cache)
    again = FineTuneJob(disc_dataset, TrainingConfig(**{**FT_CONFIG, "epochs": 1}), extractor=extractor).run()
    assert again is not None and extractor.base_batches == 0
    assert extractor.cache_hits == first.split["train"]["files"] * 2 + first.split["validation"]["files"]
    files = sorted(first_extractor.cache_folder.glob("*_v1.npy"))
    assert files and "block3_pool" in str(first_extractor.cache_folder)
    stored = np.load(files[0])
    assert stored.dtype == np.float16 and stored.shape == (8, 8, 256)


def test_fine_tuning_that_does_not_beat_the_warm_up_head_keeps_it_and_the_block(disc_dataset, map_cache, tmp_path):
    """Early stopping counts the head on the frozen block as epoch 0: a fine-tuning run that only makes things worse
    (here a learning rate of 1 for block and head) ends with the warm-up head and the unchanged pretrained block."""
    from xrayviewer.training.maps import MapExtractor

    events: list[dict] = []
    extractor = MapExtractor(input_size=SMALL, augmentation=Augmentation(), cache_root=map_cache)
    config = TrainingConfig(**{**FT_CONFIG, "learning_rate": 1.0, "block_lr_factor": 1.0, "epochs": 2,
                               "early_stopping": True})
    result = FineTuneJob(disc_dataset, config, extractor=extractor).run(progress=events.append)
    logs = " ".join(e["text"] for e in events if e["kind"] == "log")
    assert result.history["best_epoch"] == 0, logs
    assert "no fine-tuned epoch beat the head on the frozen block" in logs
    before = _base_weights(SMALL)
    for name in BLOCK4 + FROZEN:
        for old, new in zip(before[name], result.model.get_layer(name).get_weights()):
            np.testing.assert_array_equal(old, new, err_msg=f"{name} changed")
    warm_loss = result.finetune["warmup_val_loss"]
    assert min(result.history["val_loss"]) >= warm_loss
    # the block is the package's: the bundle is head-only again, and predicts as the trained model does
    assert result.finetune["block_unchanged"] is True
    bundle = result.save(tmp_path / "kept-warm-up")
    meta = json.loads((bundle / "model.json").read_text())
    assert meta["weights"]["scope"] == "head"
    from xrayviewer.model.bundle import load_bundle
    from xrayviewer.model.classifier import Classifier

    x = np.random.default_rng(0).uniform(0, 255, (2, *SMALL, 3)).astype(np.float32)
    expected = result.model.predict(x, verbose=0)
    loaded = Classifier.load(load_bundle(bundle)).model.predict(x, verbose=0)
    np.testing.assert_allclose(loaded, expected, rtol=1e-4, atol=1e-5)


def test_head_only_runs_are_unchanged_by_the_option(disc_dataset):
    """The default path still trains the head alone and saves head weights (the option is off by default)."""
    result = FineTuneJob(disc_dataset, TrainingConfig(**{**FT_CONFIG, "finetune_last_block": False,
                                                         "epochs": 2})).run()
    assert result.finetune is None
    assert result.meta()["training"]["finetune"] is None


def test_cancel_mid_epoch_returns_within_a_second_or_so_and_writes_nothing(disc_dataset, tmp_path):
    """224x224 input, where one batch of 8 through block4 takes ~1.4 s forward and backward: the cancel is seen
    between micro-batches. Generous bound for a loaded machine; benchmarks time it properly."""
    cancel = threading.Event()
    marks: dict[str, float] = {}
    timers: list[threading.Timer] = []

    def cancel_now():
        marks["set"] = time.perf_counter()
        cancel.set()

    def progress(event):
        if event["kind"] == "batch" and not timers:     # lands inside the next batch's micro-batches
            timers.append(threading.Timer(0.2, cancel_now))
            timers[0].start()

    models = tmp_path / "models"
    models.mkdir()
    config = TrainingConfig(**{**FT_CONFIG, "epochs": 50, "variants": 1, "input_size": (224, 224)})
    result = FineTuneJob(disc_dataset, config).run(progress=progress, cancel=cancel)
    waited = time.perf_counter() - marks["set"]
    assert result is None
    assert waited < 3.0, f"cancel took {waited:.1f} s to answer"
    assert list(models.iterdir()) == []


def test_bases_without_a_pretrained_last_block_are_refused_with_a_message(disc_dataset):
    with pytest.raises(TrainingError, match="small-cnn' has random weights"):
        FineTuneJob(disc_dataset, TrainingConfig(base_id="small-cnn", finetune_last_block=True)).run()
    with pytest.raises(TrainingError, match="learning-rate factor"):
        TrainingConfig(finetune_last_block=True, block_lr_factor=0.0).check()
    TrainingConfig(base_id="vgg16-hed-block5", finetune_last_block=True).check()


def test_the_block5_base_fine_tunes_block5():
    from xrayviewer.model.architecture import build_classifier, build_tail_model
    from xrayviewer.model.backbone import BASES

    cut = BASES["vgg16-hed-block5"].finetune_cut
    model = build_classifier("vgg16-hed-block5", 2, None, SMALL)
    tail = build_tail_model(model, cut)
    trained = [layer.name for layer in tail.layers if layer.weights and not layer.name.startswith("head_")]
    assert cut == "block4_pool" and trained == ["block5_conv1", "block5_conv2", "block5_conv3"]
    assert tail.get_layer("head_pool") is model.get_layer("head_pool")          # one pooling step, shared


def test_cli_flag_fine_tunes_and_writes_a_full_weights_bundle(disc_dataset, tmp_path, capsys):
    from xrayviewer.cli import main

    out = tmp_path / "cli-ft"
    code = main(["train", str(disc_dataset), "--out", str(out), "--epochs", "1", "--variants", "1",
                 "--val-fraction", "0.25", "--finetune-last-block", "--no-early-stopping"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Fine-tuning block4_conv1, block4_conv2, block4_conv3" in captured.err and "epoch 1/1" in captured.err
    meta = json.loads((out / "model.json").read_text())
    assert meta["weights"]["scope"] == "full" and meta["training"]["finetune"]["cut_layer"] == "block3_pool"
    code = main(["train", str(disc_dataset), "--out", str(tmp_path / "no"), "--base", "small-cnn",
                 "--finetune-last-block"])
    err = capsys.readouterr().err
    assert code == 1 and "cannot fine-tune the last conv block" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------------ real radiographs

@pytest.mark.shared
def test_finetune_on_a_small_real_subset(shared_data):
    from xrayviewer.imaging import discover_dataset

    dataset = discover_dataset(shared_data / "cxr")
    classes = ["covid", "normal", "pneumonia"]
    picked, seen, patients = [], {}, set()
    for item in dataset.items:                      # 6 images per class, one per patient
        if item.label in classes and seen.get(item.label, 0) < 6 and item.patient_id not in patients:
            picked.append(item)
            patients.add(item.patient_id)
            seen[item.label] = seen.get(item.label, 0) + 1
    subset = dataclasses.replace(dataset, classes=classes, items=picked,
                                 problems=[p for p in dataset.problems if p.severity == "warning"])
    # early stopping off: one epoch on 13 images need not beat the warm-up head, which would then be kept unchanged
    config = TrainingConfig(epochs=1, variants=1, val_fraction=0.25, seed=1, finetune_last_block=True,
                            input_size=(128, 128), early_stopping=False)
    result = FineTuneJob(subset, config).run()
    assert result is not None and result.classes == classes
    assert result.finetune["trained_layers"] == list(BLOCK4)
    _assert_block4_trained_only(result.model, (128, 128))
    assert 0.0 <= result.metrics["accuracy"] <= 1.0 and np.isfinite(result.history["loss"]).all()
    assert json.dumps(result.meta())
