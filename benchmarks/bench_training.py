"""Training speed: cached-feature head training (the engine) vs the classic loop, same images, same 25 epochs.

    python benchmarks/bench_training.py [--quick] [--epochs 25] [--per-class 40] [--json OUT]

Cached, cold: the frozen base runs once per image from an EMPTY feature cache (building the base and that one pass
are counted), then 25 epochs train only the head on the pooled features. Cached, warm: the same training again with
the cache filled (what every later run on the same folder costs: other epochs, learning rate, head, split).
Classic (the 2020 tutorials): the whole network runs on every batch of every epoch (and on the validation images
after each epoch). It is too slow to run 25 epochs here, so it runs 2 epochs and is EXTRAPOLATED as
load images + build model + epoch 1 (includes tracing) + 24 x epoch 2; the output says so.
Both sides: the same images, the same patient-disjoint split, no augmentation (variants=1), the same head, batch 8,
validation after every epoch. Not counted on either side: building the final full classifier for saving.
Fine-tuning the last conv block (the option, training/finetune.py): the same images and split, `--finetune-epochs`
epochs (3) from an empty maps cache: the seconds per epoch (block4 forward + backward on every training image,
validation included) next to the head-only epoch, per 100 training images; how long a cancel takes to be honoured
when it lands mid-batch; and, with --check-float16, the same run on float32 maps (the cache stores float16): the
largest logit difference and both validation metrics.
Images: ../shared/data/cxr, one image per patient.
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
    from xrayviewer.training.features import FeatureExtractor

    extractor = FeatureExtractor(config.base_id, augmentation=None, cache_root=cache_root)
    result = FineTuneJob(dataset, config, extractor=extractor).run(cancel=threading.Event())
    seconds = result.timings["features"] + result.timings["head"]
    return {"seconds": seconds, "features_seconds": result.timings["features"], "head_seconds": result.timings["head"],
            "val_accuracy": result.metrics["accuracy"], "history": result.history, "split": result.split,
            "validation_paths": result.validation["paths"], "y_val": result.validation["y_true"]}


def run_finetune(dataset, config, cache_root: Path, dtype=None) -> dict:
    """One fine-tuning run of the last block from an empty maps cache; per-epoch seconds from the epoch events."""
    from xrayviewer.training.engine import FineTuneJob
    from xrayviewer.training.features import Augmentation
    from xrayviewer.training.maps import MAPS_DTYPE, MapExtractor

    extractor = MapExtractor(config.base_id, augmentation=Augmentation(), cache_root=cache_root,
                             dtype=dtype or MAPS_DTYPE)
    events: list[dict] = []
    result = FineTuneJob(dataset, config, extractor=extractor).run(progress=events.append, cancel=threading.Event())
    epoch_seconds = [e["seconds"] for e in events if e["kind"] == "epoch"]
    return {"epoch_seconds": epoch_seconds, "maps_seconds": result.timings["features"],
            "n_train": result.split["train"]["files"], "val_accuracy": result.metrics["accuracy"],
            "val_auc": result.metrics["macro_auc"], "logits": np.asarray(result.validation["logits"])}


def cancel_latency(dataset, config, cache_root: Path, repeats: int = 3) -> list[float]:
    """Seconds from setting cancel (from another thread, 0.3 s into a batch) to `run` returning, fine-tuning."""
    from xrayviewer.training.engine import FineTuneJob
    from xrayviewer.training.features import Augmentation
    from xrayviewer.training.maps import MapExtractor

    waits = []
    for _ in range(repeats):
        cancel, marks, timers = threading.Event(), {}, []

        def cancel_now(marks=marks, cancel=cancel):
            marks["set"] = time.perf_counter()
            cancel.set()

        def progress(event, timers=timers, cancel_now=cancel_now):
            if event["kind"] == "batch" and event["batch"] == 1 and not timers:
                timers.append(threading.Timer(0.3, cancel_now))
                timers[0].start()

        extractor = MapExtractor(config.base_id, augmentation=Augmentation(), cache_root=cache_root)
        run_config = dataclasses.replace(config, epochs=100)
        assert FineTuneJob(dataset, run_config, extractor=extractor).run(progress=progress, cancel=cancel) is None
        waits.append(time.perf_counter() - marks["set"])
    return waits


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
    keras.utils.set_random_seed(config.seed)
    model = build_classifier(config.base_id, len(CLASSES), config.head)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    load_seconds = time.perf_counter() - t0
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
    parser.add_argument("--quick", action="store_true", help="12 images per class instead of 100")
    parser.add_argument("--per-class", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--finetune-epochs", type=int, default=3, help="epochs of the last-block fine-tuning run")
    parser.add_argument("--check-float16", action="store_true",
                        help="also fine-tune on float32 maps and compare (the cache stores float16)")
    parser.add_argument("--json", metavar="OUT", help="write the figures as JSON (benchmarks/run.py reads it)")
    args = parser.parse_args(argv)

    from xrayviewer.training.engine import TrainingConfig

    per_class = args.per_class or (12 if args.quick else 100)
    dataset = pick_subset(per_class)
    config = TrainingConfig(epochs=args.epochs, augmentation=None, variants=1, early_stopping=False, seed=42)
    print(f"{len(dataset.items)} images ({per_class} per class, one per patient), {args.epochs} epochs, "
          f"batch {config.batch_size}, base {config.base_id}", flush=True)

    from xrayviewer.training.features import clear_memory_cache

    with tempfile.TemporaryDirectory() as tmp:
        clear_memory_cache()
        cached = run_cached(dataset, config, Path(tmp) / "features")
        warm = run_cached(dataset, config, Path(tmp) / "features")
    print(f"cached, cold cache: {cached['seconds']:.1f} s (base + one pass over the images "
          f"{cached['features_seconds']:.1f} s, head {cached['head_seconds']:.1f} s for {args.epochs} epochs); "
          f"validation accuracy {cached['val_accuracy']:.3f}", flush=True)
    print(f"cached, warm cache: {warm['seconds']:.1f} s (features {warm['features_seconds']:.1f} s, head "
          f"{warm['head_seconds']:.1f} s)", flush=True)
    classic = run_classic(dataset, config, cached)
    at_same_epoch = cached["history"]["val_accuracy"][CLASSIC_EPOCHS_RUN - 1]
    print(f"classic loop: ran {classic['epochs_run']} of {args.epochs} epochs (epoch times "
          + ", ".join(f"{s:.1f} s" for s in classic["epoch_seconds"])
          + f", loading images and building the model {classic['load_seconds']:.1f} s) and EXTRAPOLATED to {args.epochs} epochs: "
          f"{classic['seconds_extrapolated']:.1f} s", flush=True)
    print(f"validation accuracy after {CLASSIC_EPOCHS_RUN} epochs: classic {classic['val_accuracy_after_epochs_run']:.3f}, "
          f"cached {at_same_epoch:.3f} (cached after {args.epochs}: {cached['val_accuracy']:.3f})", flush=True)
    ratio = classic["seconds_extrapolated"] / cached["seconds"]
    ratio_warm = classic["seconds_extrapolated"] / warm["seconds"]
    print(f"speedup ratio (classic / cached, {args.epochs} epochs, cold cache): {ratio:.1f}x  (goal >= 20x; at most "
          f"~{args.epochs}x while the one base pass dominates)", flush=True)
    print(f"speed-up with a warm cache (classic / cached): {ratio_warm:.1f}x", flush=True)

    n_train = cached["split"]["train"]["files"]
    head_epoch = cached["head_seconds"] / args.epochs
    ft_config = dataclasses.replace(config, epochs=args.finetune_epochs, finetune_last_block=True)
    with tempfile.TemporaryDirectory() as tmp:
        finetune = run_finetune(dataset, ft_config, Path(tmp) / "maps")
        latency = cancel_latency(dataset, ft_config, Path(tmp) / "maps")
        float32 = (run_finetune(dataset, ft_config, Path(tmp) / "maps32", dtype=np.float32)
                   if args.check_float16 else None)
    ft_epoch = float(np.median(finetune["epoch_seconds"]))
    print(f"fine-tuning the last block: {ft_epoch:.1f} s per epoch (median of "
          + ", ".join(f"{s:.1f}" for s in finetune["epoch_seconds"])
          + f") for {n_train} training images = {100 * ft_epoch / n_train:.1f} s per 100 images; head only "
          f"{head_epoch:.3f} s per epoch ({100 * head_epoch / n_train:.3f} s per 100); maps of the frozen blocks "
          f"{finetune['maps_seconds']:.1f} s once; validation accuracy after {args.finetune_epochs} epochs "
          f"{finetune['val_accuracy']:.3f}, AUC {finetune['val_auc']:.3f}", flush=True)
    print("fine-tuning, cancel mid-batch honoured after: " + ", ".join(f"{s:.2f} s" for s in latency), flush=True)
    if float32 is not None:
        diff = float(np.abs(finetune["logits"] - float32["logits"]).max())
        print(f"float16 vs float32 maps: largest validation logit difference {diff:.4f}; accuracy "
              f"{finetune['val_accuracy']:.3f} vs {float32['val_accuracy']:.3f}, AUC {finetune['val_auc']:.3f} vs "
              f"{float32['val_auc']:.3f}", flush=True)
    if args.json:
        note = f"classic extrapolated from {CLASSIC_EPOCHS_RUN} epochs"
        figures = [
            {"name": "training ratio (classic / cached, cold cache)", "samples": [ratio], "unit": "x",
             "goal": ">= 20", "passed": ratio >= 20, "note": note},
            {"name": "training speed-up, warm cache (classic / cached)", "samples": [ratio_warm], "unit": "x",
             "note": note},
            {"name": "training cached, cold cache", "samples": [cached["seconds"]], "unit": " s"},
            {"name": "training cached, warm cache", "samples": [warm["seconds"]], "unit": " s"},
            {"name": "training classic (extrapolated)", "samples": [classic["seconds_extrapolated"]], "unit": " s",
             "note": note},
            {"name": "val accuracy cached", "samples": [cached["val_accuracy"]], "unit": ""},
            {"name": f"val accuracy classic after {CLASSIC_EPOCHS_RUN} epochs",
             "samples": [classic["val_accuracy_after_epochs_run"]], "unit": ""},
            {"name": "training epoch per 100 images, head only (cached features)",
             "samples": [100 * head_epoch / n_train], "unit": " s"},
            {"name": "training epoch per 100 images, fine-tuning the last block (cached maps)",
             "samples": [100 * s / n_train for s in finetune["epoch_seconds"]], "unit": " s"},
            {"name": "fine-tuning: cancel mid-batch honoured after", "samples": latency, "unit": " s",
             "goal": "<= 1", "passed": max(latency) <= 1.0},
        ]
        Path(args.json).write_text(json.dumps({"figures": figures, "images": len(dataset.items),
                                               "epochs": args.epochs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
