"""Fine-tune a classifier head on a folder-per-class dataset, fast and honestly.

    job = FineTuneJob("/data/my_xrays", TrainingConfig(epochs=25))
    result = job.run(progress=print, cancel=threading.Event())   # None when cancelled: nothing trained, nothing saved
    result.save(user_models_dir() / "my-model")                  # atomic bundle

Steps: check the dataset -> patient-disjoint stratified split -> pooled base features (cached, K augmented variants
per training image) -> train the head on the features (Keras, early stopping on validation loss) -> temperature
scaling on the validation logits -> metrics on the validation split -> OOD statistics (none, logged, for fewer than
10 training images) -> the full flat classifier.

Progress events are dicts: {"kind": "stage", "text"}, {"kind": "log", "text"}, {"kind": "features", "done",
"total"}, {"kind": "batch", "epoch", "batch", "batches", "loss", "acc"}, {"kind": "epoch", "epoch", "epochs", "loss",
"acc", "val_loss", "val_accuracy", "seconds", "eta_seconds"}, {"kind": "done", "accuracy", "seconds"}.
Epochs and batches are 1-based.
"""

from __future__ import annotations

import hashlib
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

# The scanner's patient-id rule (compiled case-insensitively, matched at the start of the name without extension,
# the whole match is the id): one implementation, so the dataset check and the split group patients alike.
from xrayviewer.imaging.scan import DEFAULT_PATIENT_PATTERN, Dataset, compile_patient_pattern, patient_id_from_name
from xrayviewer.model.architecture import DEFAULT_HEAD
from xrayviewer.model.backbone import DEFAULT_BASE_ID
from xrayviewer.training.features import Augmentation, ExtractionCancelled, FeatureExtractor, FeatureSource
from xrayviewer.training.metrics import classification_metrics, fit_temperature, softmax

SPLIT_CHOICES = ("auto", "manifest", "pattern", "file")
Progress = Callable[[dict], None]


class TrainingError(Exception):
    """The job cannot run (bad dataset, impossible split, bad settings); `str()` says why and what to do."""


@dataclass
class TrainingConfig:
    base_id: str = DEFAULT_BASE_ID
    epochs: int = 25
    batch_size: int = 8
    learning_rate: float = 1e-3
    val_fraction: float = 0.2
    seed: int = 42
    split_by: str = "auto"                 # patient ids from: auto (what the dataset has) | manifest | pattern | file
    patient_pattern: str | None = None     # regex, as discover_dataset applies it: see imaging/scan.py
    class_weights: bool = False            # weight classes by inverse frequency
    early_stopping: bool = True            # stop when validation loss stops improving; keep the best epoch
    patience: int = 5
    augmentation: Augmentation | None = field(default_factory=Augmentation)   # None: no augmentation
    variants: int = 4                      # feature variants per training image (variant 0 = unaugmented)
    finetune_last_block: bool = False      # also train the base's last conv block (training/finetune.py)
    block_lr_factor: float = 0.01          # the last block's learning rate = learning_rate x this (finetune.py)
    head: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_HEAD))
    weight_decay: float = 0.0              # decoupled weight decay (AdamW) on the head
    input_size: tuple[int, int] = (224, 224)
    name: str | None = None

    def effective_variants(self) -> int:
        return max(1, int(self.variants)) if self.augmentation is not None else 1

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["augmentation"] = asdict(self.augmentation) if self.augmentation is not None else None
        out["input_size"] = list(self.input_size)
        out["variants"] = self.effective_variants()
        return out

    def check(self) -> None:
        if self.finetune_last_block:
            from xrayviewer.training.finetune import finetune_supported

            why = finetune_supported(self.base_id)
            if why:
                raise TrainingError(f"cannot fine-tune the last conv block: {why}.")
            if not 0 < self.block_lr_factor <= 1:
                raise TrainingError(f"the last block's learning-rate factor must be in (0, 1] "
                                    f"(got {self.block_lr_factor})")
        rows, cols = self.input_size
        if not all(64 <= v <= 1024 and v % 16 == 0 for v in (rows, cols)):
            raise TrainingError(f"input size must be a multiple of 16 between 64 and 1024 (got {rows}x{cols})")
        if self.split_by not in SPLIT_CHOICES:
            raise TrainingError(f"split_by must be one of {', '.join(SPLIT_CHOICES)} (got {self.split_by!r})")
        if not 0.05 <= self.val_fraction <= 0.5:
            raise TrainingError(f"the validation fraction must be between 0.05 and 0.5 (got {self.val_fraction})")
        if self.epochs < 1 or self.batch_size < 1 or not self.learning_rate > 0:
            raise TrainingError("epochs, batch size and learning rate must be positive")
        if self.split_by == "pattern" and self.patient_pattern:
            _patient_regex(self.patient_pattern)


# ------------------------------------------------------------------------------------------------------------ split

def patient_groups(dataset, config: TrainingConfig) -> tuple[list[str], str]:
    """(group id per item, origin) where origin says where patient ids came from: manifest, pattern or file."""
    items = dataset.items
    origin = getattr(dataset, "patient_id_origin", None) or "file"
    by = config.split_by
    if by == "manifest" and origin != "manifest":
        raise TrainingError("split by manifest was asked for, but the dataset folder has no manifest.csv with a "
                            "patient_id column")
    if by == "file":
        return [f"file:{item.path}" for item in items], "file"
    if by == "pattern":
        regex = _patient_regex(config.patient_pattern)
        groups = []
        for item in items:
            patient, _source, found_by = patient_id_from_name(Path(item.path), regex)
            groups.append(f"pattern:{patient}" if found_by == "pattern" else f"file:{item.path}")
        return groups, "pattern"
    return [f"{origin}:{item.patient_id}" if item.patient_id else f"file:{item.path}" for item in items], origin


def _patient_regex(pattern: str | None):
    """The patient-id pattern compiled as discover_dataset compiles it; TrainingError with the scanner's message
    when it is not a valid regular expression."""
    probe = Dataset(root=Path("."))
    regex = compile_patient_pattern(probe, pattern or DEFAULT_PATIENT_PATTERN)
    if regex is None:
        raise TrainingError(probe.problems[0].message)
    return regex


def split_by_patient(labels: np.ndarray, groups: list[str], val_fraction: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices): no patient on both sides, classes in proportion, every class on both."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_splits = max(2, int(round(1.0 / val_fraction)))
    group_codes = np.unique(np.asarray(groups), return_inverse=True)[1]
    for k in np.unique(labels):
        n_patients = len(set(group_codes[labels == k]))
        if n_patients < 2:
            raise TrainingError(f"class {int(k)} has images of only {n_patients} patient: a patient-disjoint split "
                                "needs at least 2 patients per class")
    splitter = StratifiedGroupKFold(n_splits=min(n_splits, len(set(group_codes))), shuffle=True, random_state=seed)
    classes = set(np.unique(labels).tolist())
    for train, val in splitter.split(np.zeros(len(labels)), labels, group_codes):
        if set(labels[val].tolist()) == classes and set(labels[train].tolist()) == classes:
            return np.sort(train), np.sort(val)
    raise TrainingError("could not make a patient-disjoint validation split with every class on both sides; "
                        "add images of more patients to the smallest class")


# ---------------------------------------------------------------------------------------------------------- result

@dataclass
class TrainingResult:
    classes: list[str]
    config: TrainingConfig
    history: dict[str, list[float]]
    metrics: dict[str, Any]                  # validation split, calibrated probabilities
    metrics_uncalibrated: dict[str, Any]     # validation split, before temperature scaling
    temperature: float
    split: dict[str, Any]
    validation: dict[str, Any]               # per validation image: path, label index, source, patient, logits
    head_model: Any                          # keras head on raw pooled features (standardisation folded in)
    model: Any                               # full flat classifier (base + head)
    ood: Any | None
    data_fingerprint: str
    dataset_root: str
    patient_id_origin: str
    log: list[str]
    timings: dict[str, float]
    finetune: dict[str, Any] | None = None   # last-block fine-tuning: layers, learning rates (None: head only)

    def figures(self) -> dict[str, Any]:
        """matplotlib Figures: training curves, confusion, ROC, reliability (validation split)."""
        from xrayviewer.training import metrics as m

        return {"plot.png": m.training_curves_figure(self.history),
                "confusion.png": m.confusion_figure(self.metrics),
                "roc.png": m.roc_figure(self.metrics),
                "reliability.png": m.reliability_figure(self.metrics)}

    def meta(self, name: str | None = None) -> dict[str, Any]:
        """model.json content (save_bundle fills weights, hashes and dates)."""
        from xrayviewer.imaging.preprocess import PREPROCESSING_ID
        from xrayviewer.model.backbone import BASES

        cfg = self.config
        return {
            "name": name or cfg.name or "fine-tuned model",
            "classes": list(self.classes),
            "input_size": list(cfg.input_size),
            "preprocessing": PREPROCESSING_ID,
            "base": {"id": cfg.base_id},
            "head": dict(cfg.head),
            "gradcam_layer": BASES[cfg.base_id].gradcam_layer,
            "temperature": float(self.temperature),
            "ood": None,
            "training": {
                "data_fingerprint": self.data_fingerprint,
                "dataset": self.dataset_root,
                "patient_id_origin": self.patient_id_origin,
                "split": self.split,
                "hyperparameters": cfg.to_json(),
                "epochs_run": len(self.history.get("loss", [])),
                "best_epoch": self.history.get("best_epoch"),
                "seconds": self.timings,
                "finetune": self.finetune,
            },
            "metrics": {"validation": _compact(self.metrics),
                        "validation_uncalibrated": {"accuracy": self.metrics_uncalibrated["accuracy"],
                                                    "ece": self.metrics_uncalibrated["ece"],
                                                    "nll": self.metrics_uncalibrated["nll"]}},
        }

    def save(self, dest_dir: str | Path, name: str | None = None, *, extra_files: dict[str, Any] | None = None,
             extra_meta: dict[str, dict[str, Any]] | None = None, version: str | None = None) -> Path:
        """Write the bundle atomically (model.json, head weights, plot.png and figure PNGs, ood.npz).

        `extra_meta` adds keys inside model.json sections, e.g. {"metrics": {"per_source": ...}}; `version` is
        the model's own version (default "1"), shown beside its name and in reports.
        """
        from xrayviewer.model.backbone import BASES
        from xrayviewer.model.bundle import save_bundle
        from xrayviewer.training.metrics import figure_png

        meta = self.meta(name)
        if version is not None:
            meta["version"] = version
        for section, values in (extra_meta or {}).items():
            meta.setdefault(section, {}).update(values)
        extras: dict[str, Any] = {fname: figure_png(fig) for fname, fig in self.figures().items()}
        with tempfile.TemporaryDirectory() as tmp:
            if self.ood is not None:
                ood_file = Path(tmp) / "ood.npz"
                meta["ood"] = _save_ood(self.ood, ood_file)
                extras["ood.npz"] = ood_file
            extras.update(extra_files or {})
            # A randomly initialised base cannot be rebuilt from a package, nor can a fine-tuned block: such
            # bundles carry all weights (model.json weights.scope "full"). A fine-tuning run that kept the warm-up
            # head left the block as the package has it.
            block_changed = bool(self.finetune) and not self.finetune.get("block_unchanged", False)
            head_only = BASES[self.config.base_id].weights != "random" and not block_changed
            return save_bundle(dest_dir, meta, self.model, head_only=head_only, extra_files=extras)


def _compact(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metrics for model.json: ROC curves thinned so a bundle stays small."""
    out = dict(metrics)
    out["roc"] = {name: {k: v[:: max(1, len(v) // 100)] for k, v in curve.items()}
                  for name, curve in metrics.get("roc", {}).items()}
    return out


def _save_ood(stats, path: Path) -> dict[str, Any]:
    """Write OOD statistics to `path`; return the model.json["ood"] entry (save_bundle re-checks its sha256)."""
    return stats.save(path)


# ------------------------------------------------------------------------------------------------------------- job

@dataclass
class _Split:
    """The checked dataset and its patient-disjoint split, as both training paths use them."""

    dataset: Any
    classes: list[str]
    items: list[Any]
    groups: list[str]
    origin: str
    labels: np.ndarray
    train_idx: np.ndarray
    val_idx: np.ndarray
    sources: list[FeatureSource]


@dataclass
class _Trained:
    """What a training path (head only, or last block + head) hands on to calibration, metrics and the result."""

    head_model: Any                          # head on raw pooled features
    history: dict[str, Any]
    val_logits: np.ndarray                   # (n_val, C)
    ood_features: np.ndarray                 # (n_train, D) pooled features of the unaugmented training images
    full_model: Callable[[], Any]            # builds (or returns) the flat classifier
    feature_seconds: float
    train_seconds: float
    finetune: dict[str, Any] | None = None


class FineTuneJob:
    """One training run. `run()` is slow (seconds to minutes): call it in a worker thread."""

    def __init__(self, dataset, config: TrainingConfig | None = None, *, extractor: FeatureExtractor | None = None):
        self.dataset_arg = dataset
        self.config = config or TrainingConfig()
        self.extractor = extractor

    # -- helpers
    def _emit(self, progress: Progress | None, event: dict) -> None:
        if event["kind"] == "log":
            self._log.append(event["text"])
        if progress is not None:
            progress(event)

    def _load_dataset(self):
        if isinstance(self.dataset_arg, (str, Path)):
            from xrayviewer.imaging import discover_dataset

            root = Path(self.dataset_arg)
            if not root.is_dir():
                raise TrainingError(f"{root} is not a folder (expected one sub-folder per class)")
            if self.config.patient_pattern:
                return discover_dataset(root, patient_pattern=self.config.patient_pattern)
            return discover_dataset(root)
        return self.dataset_arg

    def _check_dataset(self, dataset) -> None:
        errors = [p for p in dataset.problems if p.severity == "error"]
        if errors:
            raise TrainingError("the dataset cannot be used:\n" + "\n".join(f"- {p.message}" for p in errors))
        if len(dataset.classes) < 2:
            raise TrainingError(f"{dataset.root} needs at least two class sub-folders with images "
                                f"(found {len(dataset.classes)})")
        counts = {c: 0 for c in dataset.classes}
        for item in dataset.items:
            counts[item.label] = counts.get(item.label, 0) + 1
        small = [c for c, n in counts.items() if n < 2]
        if small:
            raise TrainingError("every class needs at least 2 images; too few in: " + ", ".join(small))

    def run(self, progress: Progress | None = None, cancel: threading.Event | None = None) -> TrainingResult | None:
        """Train; return the result, or None when `cancel` was set (then nothing is kept or written)."""
        self._log: list[str] = []
        cfg = self.config
        cfg.check()
        started = time.perf_counter()
        emit = lambda **event: self._emit(progress, event)  # noqa: E731

        emit(kind="stage", text="Checking the dataset")
        dataset = self._load_dataset()
        self._check_dataset(dataset)
        for problem in dataset.problems:
            emit(kind="log", text=f"{problem.severity}: {problem.message}")
        classes = list(dataset.classes)
        items = [item for item in dataset.items if item.label in classes]
        groups, origin = patient_groups(dataset, cfg)
        groups = [g for g, item in zip(groups, dataset.items) if item.label in classes]
        labels = np.array([classes.index(item.label) for item in items])
        train_idx, val_idx = split_by_patient(labels, groups, cfg.val_fraction, cfg.seed)
        n_patients = len(set(groups))
        emit(kind="log", text=f"{len(items)} images of {n_patients} patients in {len(classes)} classes "
                              f"({', '.join(f'{c}: {int((labels == k).sum())}' for k, c in enumerate(classes))}); "
                              f"patient ids from {_ORIGIN_WORDS[origin]}")
        emit(kind="log", text=f"split by patient (seed {cfg.seed}): {len(train_idx)} training images, "
                              f"{len(val_idx)} validation images, no patient on both sides")

        # -- features
        from xrayviewer.imaging import RadiographError, file_sha256

        try:
            sources = [FeatureSource(str(item.path), file_sha256(item.path)) for item in items]
        except RadiographError as err:
            raise TrainingError(f"{err} ({err.path}). Check the dataset folder and train again.") from err
        split = _Split(dataset, classes, items, groups, origin, labels, train_idx, val_idx, sources)
        if cfg.finetune_last_block:    # the last conv block too, on cached maps (training/finetune.py)
            from xrayviewer.training.finetune import train_last_block

            run = train_last_block(cfg, classes, labels, train_idx, val_idx, sources, read=_read_pixels, emit=emit,
                                   cancel=cancel, extractor=self.extractor)
            if run is None:
                return None
            return self._finish(split, _Trained(
                run.head_model, run.history, run.val_logits, run.train_pooled, lambda: run.model,
                run.timings["features"], run.timings["head"], run.info), started, emit, cancel)

        emit(kind="stage", text="Computing base features (cached after the first run)")
        t0 = time.perf_counter()
        if cancel is not None and cancel.is_set():
            return None
        variants = cfg.effective_variants()
        extractor = self.extractor or FeatureExtractor(
            cfg.base_id, input_size=cfg.input_size, pooling=cfg.head.get("pooling", "avg"),
            augmentation=cfg.augmentation or Augmentation())
        try:
            # Validation images need only variant 0; training images need all variants.
            train_sources = [sources[i] for i in train_idx]
            val_sources = [sources[i] for i in val_idx]
            n_todo = len(train_sources) * variants + len(val_sources)
            done_before = [0]

            def feature_progress(done: int, total: int, offset=done_before) -> None:
                emit(kind="features", done=offset[0] + done, total=n_todo)

            train_features = extractor.extract(train_sources, variants, read=_read_pixels,
                                               progress=feature_progress, cancel=cancel)
            done_before[0] = len(train_sources) * variants
            val_features = extractor.extract(val_sources, 1, read=_read_pixels, progress=feature_progress,
                                             cancel=cancel)
        except ExtractionCancelled:
            return None
        emit(kind="log", text=f"features ready in {time.perf_counter() - t0:.1f} s "
                              f"({extractor.cache_hits} from cache, {extractor.base_batches} base batches)")
        feature_seconds = time.perf_counter() - t0

        # -- head
        emit(kind="stage", text="Training the head")
        t1 = time.perf_counter()
        x_train = train_features.reshape(-1, train_features.shape[-1])
        y_train = np.repeat(labels[train_idx], variants)
        x_val = val_features[:, 0, :]
        y_val = labels[val_idx]
        trained = train_head(x_train, y_train, x_val, y_val, len(classes), cfg, emit=emit, cancel=cancel)
        if trained is None:
            return None
        head_model, history = trained
        train_seconds = time.perf_counter() - t1
        val_logits = head_logits(head_model, x_val)

        def full_model():
            from xrayviewer.model.architecture import build_classifier, copy_head_weights

            model = build_classifier(cfg.base_id, len(classes), cfg.head, cfg.input_size)
            copy_head_weights(head_model, model)
            if extractor.random_base:   # the head was trained on this very base instance's features
                for layer in extractor.base_model().layers:
                    if layer.weights and layer.name != "head_pool":
                        model.get_layer(layer.name).set_weights(layer.get_weights())
            return model

        return self._finish(split, _Trained(head_model, history, val_logits, train_features[:, 0, :], full_model,
                                            feature_seconds, train_seconds), started, emit, cancel)

    def _finish(self, split_: "_Split", trained: "_Trained", started: float, emit, cancel
                ) -> TrainingResult | None:
        """Calibration, metrics, OOD statistics, the full model and the result: shared by both training paths."""
        cfg = self.config
        dataset, classes, items, groups, origin, labels, train_idx, val_idx, sources = (
            split_.dataset, split_.classes, split_.items, split_.groups, split_.origin, split_.labels,
            split_.train_idx, split_.val_idx, split_.sources)
        head_model, history, val_logits = trained.head_model, trained.history, trained.val_logits
        y_val = labels[val_idx]
        # -- calibration, metrics
        emit(kind="stage", text="Calibrating and measuring on the validation split")
        temperature = fit_temperature(val_logits, y_val)
        metrics_raw = classification_metrics(y_val, softmax(val_logits), classes)
        metrics = classification_metrics(y_val, softmax(val_logits, temperature), classes)
        emit(kind="log", text=f"temperature {temperature:.3f}: validation ECE {metrics_raw['ece']:.3f} -> "
                              f"{metrics['ece']:.3f}")
        emit(kind="log", text=f"validation accuracy {metrics['accuracy']:.3f}"
                              + (f", macro AUC {metrics['macro_auc']:.3f}" if metrics["macro_auc"] else ""))

        from xrayviewer.model.ood import OODError, fit_ood

        try:   # patient groups keep a patient's images in one cross-fitting fold: an honest threshold
            ood = fit_ood(trained.ood_features, groups=[groups[i] for i in train_idx], seed=cfg.seed)
        except OODError as err:   # e.g. a tiny folder: the model still works, it just cannot say "not a chest X-ray?"
            ood = None
            emit(kind="log", text=f"no out-of-distribution statistics: {err}")
        if cancel is not None and cancel.is_set():
            return None

        emit(kind="stage", text="Building the full model")
        model = trained.full_model()
        if cancel is not None and cancel.is_set():
            return None

        root = Path(dataset.root)
        val_items = [items[i] for i in val_idx]
        split = {
            "by": origin,
            "seed": cfg.seed,
            "val_fraction": cfg.val_fraction,
            # Content hashes of the files on each side, so a later training can tell that this model has seen
            # its validation images (64 hex characters a file: a few thousand files stay well under a megabyte).
            "train": {"files": len(train_idx), "patients": len({groups[i] for i in train_idx}),
                      "sha256": sorted(sources[i].sha256 for i in train_idx)},
            "validation": {"files": len(val_idx), "patients": len({groups[i] for i in val_idx}),
                           "paths": [_relative(item.path, root) for item in val_items],
                           "sha256": [sources[i].sha256 for i in val_idx]},
        }
        validation = {"paths": [str(item.path) for item in val_items], "y_true": y_val.tolist(),
                      "sources": [getattr(item, "source", None) for item in val_items],
                      "patients": [groups[i] for i in val_idx], "sha256": [sources[i].sha256 for i in val_idx],
                      "logits": val_logits.tolist()}
        fingerprint = _list_hash(sorted(f"{items[i].label}:{sources[i].sha256}" for i in range(len(items))))
        seconds = time.perf_counter() - started
        emit(kind="done", accuracy=metrics["accuracy"], seconds=seconds)
        return TrainingResult(
            classes=classes, config=cfg, history=history, metrics=metrics, metrics_uncalibrated=metrics_raw,
            temperature=temperature, split=split, validation=validation, head_model=head_model, model=model,
            ood=ood, data_fingerprint=fingerprint, dataset_root=str(root), patient_id_origin=origin,
            log=list(self._log),
            timings={"features": round(trained.feature_seconds, 2), "head": round(trained.train_seconds, 2),
                     "total": round(seconds, 2)}, finetune=trained.finetune)


def _read_pixels(path: str) -> np.ndarray:
    from xrayviewer.imaging import RadiographError, read_radiograph

    try:
        return read_radiograph(path).pixels
    except RadiographError as err:
        raise TrainingError(f"cannot read {path}: {err}. Remove or replace the file and train again.") from err


_ORIGIN_WORDS = {"manifest": "the manifest.csv patient_id column", "pattern": "the file-name pattern",
                 "file": "the files (one patient per file: no patient information found)"}


def _list_hash(values: list[str]) -> str:
    return hashlib.sha256("\n".join(values).encode()).hexdigest()


def _relative(path, root: Path) -> str:
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


# ------------------------------------------------------------------------------------------------------------ head

def head_logits(head_model, features: np.ndarray) -> np.ndarray:
    """Logits of a head on (n, D) pooled features, in one call (no predict loop)."""
    return np.asarray(head_model(np.asarray(features, np.float32), training=False))


def _progress_callback(emit, cancel: threading.Event | None, epochs: int, batches: int):
    import keras

    class TrainingProgress(keras.callbacks.Callback):
        """Batch and epoch events for the dialog; stops within one batch when cancel is set."""

        def on_train_begin(self, logs=None):
            self.train_started = time.perf_counter()

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch
            self.epoch_started = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            logs = logs or {}
            emit(kind="batch", epoch=self.epoch + 1, batch=batch + 1, batches=batches,
                 loss=float(logs.get("loss", np.nan)), acc=float(logs.get("accuracy", np.nan)))
            if cancel is not None and cancel.is_set():
                self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            now = time.perf_counter()
            per_epoch = (now - self.train_started) / (epoch + 1)
            emit(kind="epoch", epoch=epoch + 1, epochs=epochs, loss=float(logs.get("loss", np.nan)),
                 acc=float(logs.get("accuracy", np.nan)), val_loss=float(logs.get("val_loss", np.nan)),
                 val_accuracy=float(logs.get("val_accuracy", np.nan)), seconds=now - self.epoch_started,
                 eta_seconds=per_epoch * (epochs - epoch - 1))

    return TrainingProgress()


def train_head(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray | None, y_val: np.ndarray | None,
               n_classes: int, config: TrainingConfig, *, emit=None, cancel: threading.Event | None = None,
               scale_floor: float = 1e-6):
    """Train a head on pooled features; return (head_model, history) or None when cancelled.

    Features are standardised with the training mean and spread (+ `scale_floor`) for a well-conditioned fit; the
    standardisation is then folded into the first Dense layer, so the returned head takes raw pooled features,
    exactly like the `head_pool` output inside the full classifier. A head whose features will change afterwards
    (the last block is fine-tuned next) needs a larger floor: a feature that never varied in training would
    otherwise get a weight divided by 1e-6.
    """
    import keras

    from xrayviewer.model.architecture import build_head_model

    emit = emit or (lambda **event: None)
    keras.utils.set_random_seed(config.seed)
    mean = x_train.mean(axis=0)
    scale = x_train.std(axis=0) + scale_floor
    standardise = lambda x: ((x - mean) / scale).astype(np.float32)  # noqa: E731
    head = build_head_model(x_train.shape[1], n_classes, config.head)
    optimizer = (keras.optimizers.AdamW(config.learning_rate, weight_decay=config.weight_decay)
                 if config.weight_decay else keras.optimizers.Adam(config.learning_rate))
    head.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                 metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    batches = int(np.ceil(len(x_train) / config.batch_size))
    callbacks = [_progress_callback(emit, cancel, config.epochs, batches)]
    validation = (standardise(x_val), y_val) if x_val is not None and len(x_val) else None
    early = None
    if config.early_stopping and validation is not None:
        early = keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience,
                                              restore_best_weights=True)
        callbacks.append(early)
    class_weight = None
    if config.class_weights:
        counts = np.bincount(y_train, minlength=n_classes).astype(float)
        class_weight = {k: float(len(y_train) / (n_classes * c)) if c else 0.0 for k, c in enumerate(counts)}
    fit = head.fit(standardise(x_train), y_train, batch_size=config.batch_size, epochs=config.epochs,
                   validation_data=validation, shuffle=True, class_weight=class_weight, callbacks=callbacks,
                   verbose=0)
    if cancel is not None and cancel.is_set():
        return None
    history = {k: [float(v) for v in values] for k, values in fit.history.items()}
    if early is not None and early.best_weights is not None:
        history["best_epoch"] = int(early.best_epoch) + 1
        emit(kind="log", text=f"best validation loss at epoch {early.best_epoch + 1} of "
                              f"{len(history.get('loss', []))}; its weights are kept")
    _fold_standardisation(head, mean, scale)
    return head, history


def _fold_standardisation(head, mean: np.ndarray, scale: np.ndarray) -> None:
    """W x' + b with x' = (x - mean) / scale  ==  (W / scale) x + (b - (mean / scale) W)."""
    first = head.get_layer("head_dense") if any(l.name == "head_dense" for l in head.layers) \
        else head.get_layer("head_logits")
    kernel, bias = first.get_weights()
    new_kernel = kernel / scale[:, None]
    new_bias = bias - (mean / scale) @ kernel
    first.set_weights([new_kernel.astype(np.float32), new_bias.astype(np.float32)])


# ------------------------------------------------------------------------------------------- active model, same split

def evaluate_bundle_on_split(bundle_path, result: TrainingResult, *, progress: Progress | None = None,
                             cancel: threading.Event | None = None) -> dict[str, Any] | None:
    """Metrics of a saved model (e.g. the one active in the viewer) on `result`'s validation split, for a
    side-by-side comparison. None when cancelled. Raises TrainingError when its classes differ from the dataset's.
    """
    from xrayviewer.model.bundle import load_bundle

    bundle = load_bundle(bundle_path)
    if sorted(bundle.classes) != sorted(result.classes):
        raise TrainingError(f"the model '{bundle.name}' has classes {', '.join(bundle.classes)}; this dataset has "
                            f"{', '.join(result.classes)}: their metrics cannot be compared")
    paths = result.validation["paths"]
    shas = result.validation["sha256"]
    from xrayviewer.model.two_scale import is_two_stage

    if bundle.weights_scope == "head" and not is_two_stage(bundle.head):   # a head on cached pooled features
        from xrayviewer.model.architecture import build_head_model

        extractor = FeatureExtractor(bundle.base_id, input_size=bundle.input_size,
                                     pooling=bundle.head.get("pooling", "avg"))
        try:
            features = extractor.extract([FeatureSource(p, s) for p, s in zip(paths, shas)], 1,
                                         progress=(lambda d, t: progress({"kind": "features", "done": d, "total": t}))
                                         if progress else None, cancel=cancel)[:, 0, :]
        except ExtractionCancelled:
            return None
        head = build_head_model(features.shape[1], len(bundle.classes), bundle.head)
        head.load_weights(str(bundle.weights_path))
        probs = softmax(head_logits(head, features), bundle.temperature)
    else:
        from xrayviewer.model.classifier import Classifier
        from xrayviewer.imaging import read_radiograph

        classifier = Classifier.load(bundle)
        probs = []
        for start in range(0, len(paths), 16):
            if cancel is not None and cancel.is_set():
                return None
            probs.append(classifier.predict([read_radiograph(p) for p in paths[start:start + 16]]))
        probs = np.concatenate(probs)
    order = [bundle.classes.index(c) for c in result.classes]     # the bundle's columns in the dataset's order
    return classification_metrics(result.validation["y_true"], probs[:, order], result.classes)
