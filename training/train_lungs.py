"""Train the lung-field segmenter shipped in models/lungs/ on ../shared/data/lungs.

    .venv/bin/python training/train_lungs.py [--epochs 40] [--minutes 25] [--out models/lungs]

Split by `split_group` (patient; per source, seeded), light augmentation (small affine, gamma, noise),
Dice + BCE loss, cosine learning rate, best epoch by validation Dice. The figure in the model card is the
validation Dice of the full pipeline (segment -> two largest components -> holes filled) at the 512-px size of
the reference masks, which is what users get.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from xrayviewer import __version__  # noqa: E402
from xrayviewer.imaging.hashing import file_sha256  # noqa: E402
from xrayviewer.model.lungs import (  # noqa: E402
    LUNG_BUNDLE_KIND, LUNG_FORMAT_VERSION, LUNG_PREPROCESSING_ID, build_unet, dice, probability_to_mask,
    resize_for_segmenter, standardize)
from xrayviewer.paths import LUNG_MODEL_DIR, cache_dir, shared_data_dir  # noqa: E402

WEIGHTS_FILE = "lungs.weights.h5"


def read_pairs(data: Path) -> list[dict]:
    with open(data / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def split_groups(rows: list[dict], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Patient-disjoint split, drawn per source so the small JSRT set appears on both sides."""
    rng = np.random.default_rng(seed)
    val_groups: set[str] = set()
    for source in sorted({r["source"] for r in rows}):
        groups = sorted({r["split_group"] for r in rows if r["source"] == source})
        rng.shuffle(groups)
        val_groups.update(groups[: max(1, round(val_fraction * len(groups)))])
    train = [i for i, r in enumerate(rows) if r["split_group"] not in val_groups]
    val = [i for i, r in enumerate(rows) if r["split_group"] in val_groups]
    return train, val


def load_arrays(data: Path, rows: list[dict], size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Resized images (0..1, before standardisation) and mask fractions, cached as .npy (decoding is the slow part)."""
    key = hashlib.sha256(("|".join(r["name"] + r["source_sha256"] for r in rows) + f"{size}").encode()).hexdigest()[:16]
    cache = cache_dir() / "lungs" / f"pairs-{size[0]}x{size[1]}-{key}.npz"
    if cache.is_file():
        with np.load(cache) as z:
            return z["images"], z["masks"]
    images = np.zeros((len(rows), *size), np.float32)
    masks = np.zeros((len(rows), *size), np.float32)
    for i, r in enumerate(rows):
        image = cv2.imread(str(data / "images" / f"{r['name']}.png"), cv2.IMREAD_GRAYSCALE)
        mask = cv2.imread(str(data / "masks" / f"{r['name']}.png"), cv2.IMREAD_GRAYSCALE)
        images[i] = resize_for_segmenter(image.astype(np.float32) / 255.0, size)
        masks[i] = resize_for_segmenter((mask > 127).astype(np.float32), size)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, images=images, masks=masks)
    return images, masks


def augment(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Small rotation/scale/shift, gamma and noise: radiographs differ in positioning and exposure, not anatomy."""
    rows, cols = image.shape
    angle = rng.uniform(-10, 10)
    scale = rng.uniform(0.9, 1.1)
    matrix = cv2.getRotationMatrix2D((cols / 2, rows / 2), angle, scale)
    matrix[:, 2] += rng.uniform(-0.06, 0.06, 2) * (cols, rows)
    image = cv2.warpAffine(image, matrix, (cols, rows), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    mask = cv2.warpAffine(mask, matrix, (cols, rows), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    image = np.clip(image, 0, 1) ** rng.uniform(0.7, 1.4)
    if rng.random() < 0.3:
        image = image + rng.normal(0, 0.02, image.shape).astype(np.float32)
    return image.astype(np.float32), mask


def make_dataset_class():
    import keras

    class Batches(keras.utils.PyDataset):
        def __init__(self, images, masks, batch_size, seed):
            super().__init__()
            self.images, self.masks, self.batch_size = images, masks, batch_size
            self.rng = np.random.default_rng(seed)
            self.order = self.rng.permutation(len(images))

        def __len__(self):
            return math.ceil(len(self.images) / self.batch_size)

        def __getitem__(self, index):
            idx = self.order[index * self.batch_size:(index + 1) * self.batch_size]
            xs, ys = [], []
            for i in idx:
                image, mask = augment(self.images[i], self.masks[i], self.rng)
                xs.append(standardize(image)[:, :, None])
                ys.append((mask > 0.5).astype(np.float32)[:, :, None])
            return np.stack(xs), np.stack(ys)

        def on_epoch_end(self):
            self.order = self.rng.permutation(len(self.images))

    return Batches


def dice_bce_loss(y_true, y_pred):
    import keras.ops as ops

    eps = 1.0
    inter = ops.sum(y_true * y_pred, axis=(1, 2, 3))
    union = ops.sum(y_true, axis=(1, 2, 3)) + ops.sum(y_pred, axis=(1, 2, 3))
    soft_dice = (2 * inter + eps) / (union + eps)
    bce = ops.mean(ops.binary_crossentropy(y_true, y_pred), axis=(1, 2, 3))
    return (1 - soft_dice) + bce


def hard_dice(y_true, y_pred):
    import keras.ops as ops

    pred = ops.cast(y_pred > 0.5, "float32")
    inter = ops.sum(y_true * pred, axis=(1, 2, 3))
    union = ops.sum(y_true, axis=(1, 2, 3)) + ops.sum(pred, axis=(1, 2, 3))
    return ops.mean((2 * inter + 1.0) / (union + 1.0))


def full_size_dice(model, data: Path, rows: list[dict], indices: list[int], images_small: np.ndarray) -> list[float]:
    """Dice of the shipped pipeline (probability -> upsample -> clean) against the 512-px reference masks."""
    scores = []
    for i in indices:
        x = standardize(images_small[i])[None, :, :, None]
        probability = model(x, training=False).numpy()[0, :, :, 0]
        reference = cv2.imread(str(data / "masks" / f"{rows[i]['name']}.png"), cv2.IMREAD_GRAYSCALE) > 127
        scores.append(dice(probability_to_mask(probability, reference.shape), reference))
    return scores


def write_bundle(dest: Path, model, meta: dict, card: str) -> None:
    """Atomic: build in a temp dir next to dest, then swap it in."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".lungs-", dir=dest.parent))
    model.save_weights(str(tmp / WEIGHTS_FILE))
    meta["weights"] = {"file": WEIGHTS_FILE, "sha256": file_sha256(tmp / WEIGHTS_FILE, memo=False)}
    (tmp / "model.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    (tmp / "MODEL_CARD.md").write_text(card, encoding="utf-8")
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    old = dest.with_name(dest.name + ".old")
    if dest.exists():
        shutil.rmtree(old, ignore_errors=True)
        dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)


def model_card(meta: dict, rows: list[dict], train: list[int], val: list[int]) -> str:
    m = meta["metrics"]
    licences: dict[str, int] = {}
    for r in rows:
        licences[r["license"]] = licences.get(r["license"], 0) + 1
    licence_lines = "\n".join(f"| {k} | {v} |" for k, v in sorted(licences.items(), key=lambda kv: -kv[1]))
    per_source = "\n".join(f"| {s} | {v['n']} | {v['dice_mean']:.3f} | {v['dice_min']:.3f} |"
                           for s, v in m["validation_by_source"].items())
    return f"""# Lung-field segmenter (models/lungs)

Research use only — never a diagnosis. This network outlines the lung fields of a frontal chest radiograph so the
app can measure how much of a classifier's attention falls on the lungs. It knows anatomy, not disease.

## Model
- Compact U-Net ({meta['architecture']['depth']} down-sampling levels, {meta['architecture']['base_filters']} base
  filters, conv-BN-ReLU pairs, bilinear up-sampling), {meta['architecture']['parameters']:,} parameters,
  weights `{WEIGHTS_FILE}` ({meta['weights_bytes'] / 1e6:.1f} MB).
- Input: grayscale resized to {meta['input_size'][0]}x{meta['input_size'][1]} (area averaging), standardised per
  image (`{LUNG_PREPROCESSING_ID}`). Output: lung probability, thresholded at 0.5 after bilinear up-sampling to the
  image's original size; then the two largest connected components are kept and holes are filled.
- Trained by `training/train_lungs.py` (seed {meta['training']['seed']}, {meta['training']['epochs_run']} of
  {meta['training']['epochs_planned']} planned epochs (the rest cut by the time budget), best epoch
  {meta['training']['best_epoch']}, Adam + cosine schedule, Dice + BCE loss, augmentation: rotation ±10°,
  scale 0.9–1.1, shift ±6 %, gamma 0.7–1.4, light noise), {meta['training']['minutes']:.0f} min on 2 shared CPU cores.

## Data
`../shared/data/lungs` ({len(rows)} pairs, {len({r['split_group'] for r in rows})} patients): ieee8023 COVID-19 image
data collection images with V7 Labs lung masks (distributed in torchxrayvision 1.5.7, Apache-2.0), and JSRT images
with SCR masks (research and education use). Not copied into this repository. Cite Cohen et al. arXiv:2003.11597;
Cohen et al. arXiv:2111.00595 (torchxrayvision) and V7 Labs; Shiraishi et al. AJR 2000;174:71-74; van Ginneken et
al. Med Image Anal 2006;10(1):19-40.

Image licences (per the manifest):

| licence | pairs |
|---|---|
{licence_lines}

Many of these are non-commercial (NC) or no-derivatives (ND); the weights are a derived work of research data —
use them for research only.

## Split
Patient-disjoint by `split_group`, drawn per source with seed {meta['training']['seed']}: {len(train)} training
pairs, {len(val)} validation pairs ({meta['training']['val_patients']} patients).

## Validation
Dice of the full pipeline against the reference masks at 512 px (the longer side), validation patients only:

| | pairs | mean Dice | min Dice |
|---|---|---|---|
| all | {m['validation_n']} | {m['validation_dice_mean']:.3f} | {m['validation_dice_min']:.3f} |
{per_source}

Median Dice {m['validation_dice_median']:.3f}; share of validation images with Dice < 0.85:
{m['validation_share_below_0_85']:.1%}. Network-resolution Dice at the best epoch (no post-processing):
{m['network_val_dice']:.3f}.

## Caveats
- Almost all training images are adult COVID-19 cases from ieee8023, many of them figures from papers with burned-in
  arrows, letters and boxes; the JSRT share is small. Children (e.g. the Kermany set), lateral views, and very
  unusual positioning are outside what it has seen; checked by eye on ../shared, masks of the Kermany children
  sit on the lungs but can spill over a shoulder or the neck.
- The V7 masks leave a hole where a device (pacemaker, LVAD) lies over a lung; the segmenter fills holes, so its
  masks include the lung under a device — slightly different from the reference there.
- Dense consolidation or effusion can make a lung look like soft tissue; the mask may then miss part of that lung.
  The lung-attention share is a screening instrument for shortcuts, not a measurement to report clinically.
- Any image that is not a frontal chest radiograph still gets a mask; check the OOD flag first.
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    shared = shared_data_dir()
    parser.add_argument("--data", type=Path, default=(shared / "lungs") if shared else None)
    parser.add_argument("--out", type=Path, default=LUNG_MODEL_DIR)
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--filters", type=int, default=16)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--minutes", type=float, default=25.0, help="stop after this much training time")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--val-fraction", type=float, default=0.15)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    if args.data is None or not (args.data / "manifest.csv").is_file():
        parser.error("lung data not found: pass --data ../shared/data/lungs")

    import keras

    keras.utils.set_random_seed(args.seed)
    size = (args.size, args.size)
    rows = read_pairs(args.data)
    train, val = split_groups(rows, args.val_fraction, args.seed)
    t0 = time.time()
    images, masks = load_arrays(args.data, rows, size)
    print(f"{len(train)} train / {len(val)} val pairs; arrays ready in {time.time() - t0:.0f} s", flush=True)

    model = build_unet(size, args.filters, args.depth)
    steps = math.ceil(len(train) / args.batch_size) * args.epochs
    schedule = keras.optimizers.schedules.CosineDecay(args.lr, steps, alpha=0.05)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=dice_bce_loss, metrics=[hard_dice])
    x_val = np.stack([standardize(images[i])[:, :, None] for i in val])
    y_val = (masks[val] > 0.5).astype(np.float32)[..., None]

    best_path = Path(tempfile.mkdtemp()) / "best.weights.h5"
    start = time.time()

    class Budget(keras.callbacks.Callback):
        best, best_epoch, epochs_run = -1.0, 0, 0

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            self.epochs_run = epoch + 1
            if logs.get("val_hard_dice", -1) > self.best:
                self.best, self.best_epoch = logs["val_hard_dice"], epoch + 1
                self.model.save_weights(str(best_path))
            elapsed = (time.time() - start) / 60
            print(f"epoch {epoch + 1}: loss {logs.get('loss', 0):.4f} dice {logs.get('hard_dice', 0):.4f} "
                  f"val_loss {logs.get('val_loss', 0):.4f} val_dice {logs.get('val_hard_dice', 0):.4f} "
                  f"({elapsed:.1f} min)", flush=True)
            if elapsed * (epoch + 2) / (epoch + 1) > args.minutes:
                print("time budget reached", flush=True)
                self.model.stop_training = True

    budget = Budget()
    Batches = make_dataset_class()
    model.fit(Batches(images[train], masks[train], args.batch_size, args.seed), validation_data=(x_val, y_val),
              epochs=args.epochs, callbacks=[budget], verbose=0)
    minutes = (time.time() - start) / 60
    model.load_weights(str(best_path))

    scores = full_size_dice(model, args.data, rows, val, images)
    by_source: dict[str, dict] = {}
    for source in sorted({rows[i]["source"] for i in val}):
        s = [d for d, i in zip(scores, val) if rows[i]["source"] == source]
        by_source[source] = {"n": len(s), "dice_mean": float(np.mean(s)), "dice_min": float(np.min(s))}
    meta = {
        "format_version": LUNG_FORMAT_VERSION, "kind": LUNG_BUNDLE_KIND, "name": "Lung fields (compact U-Net)",
        "version": "1.0", "input_size": list(size), "preprocessing": LUNG_PREPROCESSING_ID, "threshold": 0.5,
        "postprocessing": "bilinear upsample to original size, threshold, two largest components, fill holes",
        "architecture": {"type": "unet", "base_filters": args.filters, "depth": args.depth,
                         "parameters": int(model.count_params())},
        "training": {"data": "../shared/data/lungs", "split": "patient-disjoint by split_group, per source",
                     "seed": args.seed, "val_fraction": args.val_fraction, "train_pairs": len(train),
                     "val_pairs": len(val), "val_patients": len({rows[i]['split_group'] for i in val}),
                     "val_names": [rows[i]["name"] for i in val], "epochs_planned": args.epochs,
                     "epochs_run": budget.epochs_run,
                     "best_epoch": budget.best_epoch, "batch_size": args.batch_size, "learning_rate": args.lr,
                     "minutes": round(minutes, 1)},
        "metrics": {"validation_n": len(scores), "validation_dice_mean": float(np.mean(scores)),
                    "validation_dice_median": float(np.median(scores)),
                    "validation_dice_min": float(np.min(scores)),
                    "validation_share_below_0_85": float(np.mean(np.array(scores) < 0.85)),
                    "validation_by_source": by_source, "network_val_dice": float(budget.best)},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "app_version": __version__,
    }
    # A fresh, uncompiled copy: save_weights of a compiled model also stores the optimizer's slots (3x the size).
    export = build_unet(size, args.filters, args.depth)
    export.set_weights(model.get_weights())
    export.save_weights(str(best_path))
    meta["weights_bytes"] = best_path.stat().st_size
    write_bundle(args.out, export, meta, model_card(meta, rows, train, val))
    print(f"validation Dice (full pipeline, 512 px): mean {np.mean(scores):.4f} median {np.median(scores):.4f} "
          f"min {np.min(scores):.4f}; wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
