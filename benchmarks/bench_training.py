"""Training speed: cached-feature head training (the engine) vs the classic loop, same images, same 25 epochs.

    python benchmarks/bench_training.py [--quick] [--epochs 25] [--per-class 40] [--json OUT]

Cached: the frozen base runs once per image (from an empty feature cache, so that one pass is counted), then 25
epochs train only the head on the pooled features. Classic (the 2020 tutorials): the whole network runs on every
batch of every epoch. The classic loop is too slow to run 25 epochs here, so it runs 2 epochs and is extrapolated as
load + epoch 1 (includes tracing) + 24 x epoch 2; the output says so. No augmentation on either side (variants=1),
so both train the same head on the same inputs. Images: a patient-disjoint split of ../shared/data/cxr.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CLASSES = ["covid", "normal", "pneumonia"]
CLASSIC_EPOCHS_RUN = 2


def pick_subset(per_class: int):
    """Up to `per_class` images per class, one per patient, in manifest order."""
    from xrayviewer.imaging import discover_dataset
    from xrayviewer.paths import shared_data_dir

    shared = shared_data_dir()
    if shared is None:
        raise SystemExit("bench_training needs ../shared/data/cxr (real radiographs); it is absent here")
    dataset = discover_dataset(shared / "cxr")
    picked, patients, counts = [], set(), {c: 0 for c in CLASSES}
    for item in dataset.items:
        if item.label in counts and counts[item.label] < per_class and item.patient_id not in patients:
            picked.append(item)
            patients.add(item.patient_id)
            counts[item.label] += 1
    return dataclasses.replace(dataset, classes=list(CLASSES), items=picked,
                               problems=[p for p in dataset.problems if p.severity == "warning"])


def run_cached(dataset, config, cache_root: Path) -> dict:
    from xrayviewer.training.engine import FineTuneJob
    from xrayviewer.training.features import FeatureExtractor, clear_memory_cache

    clear_memory_cache()
    extractor = FeatureExtractor(config.base_id, augmentation=None, cache_root=cache_root)
    t0 = time.perf_counter()
    result = FineTuneJob(dataset, config, extractor=extractor).run(cancel=threading.Event())
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "features_seconds": result.timings["features"], "head_seconds": result.timings["head"],
            "val_accuracy": result.metrics["accuracy"], "history": result.history, "split": result.split,
            "validation_paths": result.validation["paths"], "y_val": result.validation["y_true"]}


def run_classic(dataset, config, cached: dict) -> dict:
    """The whole network on every batch: build_classifier, images in memory, model.fit epoch by epoch."""
    import keras

    from xrayviewer.imaging import read_radiograph, to_model_input
    from xrayviewer.model.architecture import build_classifier

    val_paths = set(cached["validation_paths"])
    train_items = [item for item in dataset.items if str(item.path) not in val_paths]
    val_items = [item for item in dataset.items if str(item.path) in val_paths]
    t0 = time.perf_counter()
    x_train = np.stack([to_model_input(read_radiograph(item.path)) for item in train_items])
    y_train = np.array([CLASSES.index(item.label) for item in train_items])
    x_val = np.stack([to_model_input(read_radiograph(item.path)) for item in val_items])
    y_val = np.array([CLASSES.index(item.label) for item in val_items])
    load_seconds = time.perf_counter() - t0
    keras.utils.set_random_seed(config.seed)
    model = build_classifier(config.base_id, len(CLASSES), config.head)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    epoch_seconds, val_acc = [], None
    for _ in range(CLASSIC_EPOCHS_RUN):
        t = time.perf_counter()
        fit = model.fit(x_train, y_train, batch_size=config.batch_size, epochs=1, validation_data=(x_val, y_val),
                        shuffle=True, verbose=0)
        epoch_seconds.append(time.perf_counter() - t)
        val_acc = float(fit.history["val_accuracy"][-1])
    extrapolated = load_seconds + epoch_seconds[0] + (config.epochs - 1) * epoch_seconds[-1]
    return {"seconds_extrapolated": extrapolated, "load_seconds": load_seconds, "epoch_seconds": epoch_seconds,
            "epochs_run": CLASSIC_EPOCHS_RUN, "val_accuracy_after_epochs_run": val_acc}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="cached-feature head training vs the classic loop")
    parser.add_argument("--quick", action="store_true", help="12 images per class instead of 40")
    parser.add_argument("--per-class", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--json", metavar="OUT", help="write the figures as JSON (benchmarks/run.py reads it)")
    args = parser.parse_args(argv)

    from xrayviewer.training.engine import TrainingConfig

    per_class = args.per_class or (12 if args.quick else 40)
    dataset = pick_subset(per_class)
    config = TrainingConfig(epochs=args.epochs, augmentation=None, variants=1, early_stopping=False, seed=42)
    print(f"{len(dataset.items)} images ({per_class} per class, one per patient), {args.epochs} epochs, "
          f"batch {config.batch_size}, base {config.base_id}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        cached = run_cached(dataset, config, Path(tmp) / "features")
    print(f"cached features: {cached['seconds']:.1f} s total (base pass {cached['features_seconds']:.1f} s from an "
          f"empty cache, head {cached['head_seconds']:.1f} s for {args.epochs} epochs); validation accuracy "
          f"{cached['val_accuracy']:.3f}", flush=True)
    classic = run_classic(dataset, config, cached)
    at_same_epoch = cached["history"]["val_accuracy"][CLASSIC_EPOCHS_RUN - 1]
    print(f"classic loop: ran {classic['epochs_run']} of {args.epochs} epochs (epoch times "
          + ", ".join(f"{s:.1f} s" for s in classic["epoch_seconds"])
          + f", image loading {classic['load_seconds']:.1f} s) and EXTRAPOLATED to {args.epochs} epochs: "
          f"{classic['seconds_extrapolated']:.1f} s", flush=True)
    print(f"validation accuracy after {CLASSIC_EPOCHS_RUN} epochs: classic {classic['val_accuracy_after_epochs_run']:.3f}, "
          f"cached {at_same_epoch:.3f} (cached after {args.epochs}: {cached['val_accuracy']:.3f})", flush=True)
    ratio = classic["seconds_extrapolated"] / cached["seconds"]
    print(f"speedup ratio (classic / cached, {args.epochs} epochs): {ratio:.1f}x  (goal >= 20x)", flush=True)
    if args.json:
        note = f"classic extrapolated from {CLASSIC_EPOCHS_RUN} epochs"
        figures = [
            {"name": "training ratio (classic / cached)", "samples": [ratio], "unit": "x", "goal": ">= 20",
             "passed": ratio >= 20, "note": note},
            {"name": "training cached total", "samples": [cached["seconds"]], "unit": " s"},
            {"name": "training cached head only", "samples": [cached["head_seconds"]], "unit": " s"},
            {"name": "training classic (extrapolated)", "samples": [classic["seconds_extrapolated"]], "unit": " s",
             "note": note},
            {"name": "val accuracy cached", "samples": [cached["val_accuracy"]], "unit": ""},
            {"name": f"val accuracy classic after {CLASSIC_EPOCHS_RUN} epochs",
             "samples": [classic["val_accuracy_after_epochs_run"]], "unit": ""},
        ]
        Path(args.json).write_text(json.dumps({"figures": figures, "images": len(dataset.items),
                                               "epochs": args.epochs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
