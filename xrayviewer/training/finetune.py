"""Fine-tune the last conv block together with the head, on cached maps from the frozen blocks before it.

    run = train_last_block(config, classes, labels, train_idx, val_idx, sources, emit=..., cancel=...)

1. Maps at the base's `finetune_cut` (block3_pool for the default VGG16-to-block4 base) for every training image
   and augmentation variant, and variant 0 of every validation image: maps.MapExtractor, cached like the pooled
   features (the frozen blocks run once per image and variant, never again in later epochs or runs).
2. The flat classifier is built once (architecture.build_classifier) and the tail is a view of it from the cut on
   (architecture.build_tail_model): last block + `head_pool` + head, the very layers the saved model has.
3. Warm-up: the head alone on the pooled output of the still-frozen block (train_head, the head-only trainer with
   its standardisation folded in), so the block's first gradients come from a sensible head, not a random one.
4. Joint training, epoch by epoch: each training image once per epoch, as one of its K cached variants drawn at
   random (seeded). The head keeps the configured learning rate; the block gets `block_lr_factor` (0.01) of it:
   pretrained filters should move a little, not be overwritten by the early, large gradients. Measured on 60 real
   radiographs (48 training, 4 epochs, benchmarks/bench_training.py): with x0.1 (block 1e-4) the first joint
   epoch's training loss jumped from the warm head's ~0.9 to 3.1 and the validation loss ended at 0.87 (AUC
   0.84); with x0.01 (block 1e-5, the usual Adam fine-tuning rate) it stayed at 1.1 and ended at 0.63 (AUC 0.89).
   Batches are split
   into micro-batches of FINETUNE_MICRO_BATCH whose gradients are summed (exactly the batch's gradient), and the
   cancel event is checked between micro-batches: a cancel is honoured within one micro-batch (~0.3 s at 224x224).
5. Early stopping on the validation loss keeps the best epoch's weights (block and head), the warm-up counted as
   epoch 0: when no fine-tuned epoch beats the head on the frozen block, that head and the unchanged block are kept
   (history["best_epoch"] == 0), so the option never leaves a worse model than not using it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from xrayviewer.training.features import Augmentation, ExtractionCancelled, FeatureSource

# Images per compiled training call. Measured on this 2-core machine (224x224 input, block4 of VGG16, forward +
# backward): 0.17 s an image at 1, 2, 4 or 8 images a call, so small calls cost nothing and keep a cancel quick.
FINETUNE_MICRO_BATCH = 2
EVAL_BATCH = 4                     # forward-only calls (validation, pooled features)
# Measured (224x224, block4 of vgg16-hed-block4, validation included, 2 shared cores): 48 training + 12 validation
# images 6.1-6.5 s an epoch at load ~2 (13 s per 100 training images); benchmarks/bench_training.py --quick,
# 28 + 8 images, 4.3-5.6 s at load 5-7 (15-20 s per 100). The dialog's estimate scales this by the pixels.
SECONDS_PER_EPOCH_PER_100 = 15.0

Emit = Callable[..., None]


class Cancelled(Exception):
    """The cancel event was set: stop, keep nothing."""


@dataclass
class LastBlockRun:
    """What the engine needs of a fine-tuning run (the full classifier is trained in place)."""

    model: Any                          # flat classifier: frozen front + fine-tuned block + head
    head_model: Any                     # the trained head on raw pooled features (build_head_model)
    history: dict[str, Any]
    val_logits: np.ndarray              # (n_val, C), from the cached maps
    train_pooled: np.ndarray            # (n_train, D) pooled features of variant 0 (for OOD statistics)
    timings: dict[str, float]
    info: dict[str, Any] = field(default_factory=dict)   # model.json training.finetune


def finetune_supported(base_id: str) -> str:
    """'' when the last conv block of `base_id` can be fine-tuned, else why not (a sentence)."""
    from xrayviewer.model.backbone import BASES, available_bases

    spec = available_bases().get(base_id) or BASES.get(base_id)
    if spec is None:
        return f"unknown base {base_id!r}"
    if spec.weights == "random" or not spec.finetune_cut:
        return (f"the base '{base_id}' has random weights and no pretrained last block to fine-tune "
                "(choose a VGG16 base, or train the head only)")
    return ""


def last_block_name(base_id: str) -> str:
    """The name users see for the block fine-tuning trains: 'block4' for the default base (its output layer's
    prefix: VGG16 layers are named blockN_...)."""
    from xrayviewer.model.backbone import BASES, available_bases

    spec = available_bases().get(base_id) or BASES[base_id]
    return spec.output_layer.split("_")[0]


def estimated_epoch_seconds(n_train: int, input_size: Sequence[int] = (224, 224)) -> float:
    """Seconds per fine-tuning epoch on a quiet 2-core machine (measured: see SECONDS_PER_EPOCH_PER_100)."""
    pixels = float(input_size[0]) * float(input_size[1]) / (224.0 * 224.0)
    return SECONDS_PER_EPOCH_PER_100 * pixels * n_train / 100.0


def _check(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled()


def tail_outputs(tail, maps: np.ndarray, *, cancel: threading.Event | None = None,
                 fn=None) -> tuple[np.ndarray, np.ndarray]:
    """(pooled (n, D), logits (n, C)) of `tail` on maps (n, h, w, c), EVAL_BATCH at a time (no predict loop)."""
    import tensorflow as tf

    if fn is None:
        fn = _forward_fn(tail, maps.shape[1:])
    pooled, logits = [], []
    for start in range(0, len(maps), EVAL_BATCH):
        _check(cancel)
        chunk = np.asarray(maps[start:start + EVAL_BATCH], np.float32)
        n = len(chunk)
        if n < EVAL_BATCH:
            chunk = np.concatenate([chunk, np.zeros((EVAL_BATCH - n, *chunk.shape[1:]), np.float32)])
        p, lg = fn(tf.constant(chunk))
        pooled.append(p.numpy()[:n])
        logits.append(lg.numpy()[:n])
    return np.concatenate(pooled), np.concatenate(logits)


def _forward_fn(tail, map_shape):
    import tensorflow as tf

    return tf.function(lambda x: tail(x, training=False), reduce_retracing=False,
                       input_signature=[tf.TensorSpec((EVAL_BATCH, *map_shape), tf.float32)])


def _cross_entropy(logits: np.ndarray, y: np.ndarray) -> float:
    from xrayviewer.training.metrics import softmax

    p = softmax(logits)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None))))


def train_last_block(config, classes: list[str], labels: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray,
                     sources: Sequence[FeatureSource], *, read: Callable[[str], np.ndarray], emit: Emit,
                     cancel: threading.Event | None = None, extractor=None) -> LastBlockRun | None:
    """Fine-tune the base's last conv block with the head (see the module docstring); None when cancelled."""
    try:
        return _train(config, classes, labels, train_idx, val_idx, sources, read=read, emit=emit, cancel=cancel,
                      extractor=extractor)
    except (Cancelled, ExtractionCancelled):
        return None


def _train(config, classes, labels, train_idx, val_idx, sources, *, read, emit, cancel, extractor) -> LastBlockRun:
    import keras

    from xrayviewer.model.architecture import build_classifier, build_head_model, build_tail_model, copy_head_weights
    from xrayviewer.model.backbone import available_bases
    from xrayviewer.training.engine import train_head
    from xrayviewer.training.maps import MapExtractor

    cfg = config
    cut = available_bases()[cfg.base_id].finetune_cut
    variants = cfg.effective_variants()

    # -- 1. maps from the frozen front, cached
    emit(kind="stage", text=f"Computing {cut} maps of the frozen blocks (cached after the first run)")
    t0 = time.perf_counter()
    _check(cancel)
    if not isinstance(extractor, MapExtractor):   # e.g. a pooled-feature extractor meant for head-only runs
        extractor = MapExtractor(cfg.base_id, input_size=cfg.input_size,
                                 augmentation=cfg.augmentation or Augmentation())
    train_sources = [sources[i] for i in train_idx]
    val_sources = [sources[i] for i in val_idx]
    n_todo = len(train_sources) * variants + len(val_sources)
    offset = [0]

    def progress(done: int, total: int) -> None:
        emit(kind="features", done=offset[0] + done, total=n_todo)

    train_maps = extractor.extract(train_sources, variants, read=read, progress=progress, cancel=cancel)
    offset[0] = len(train_sources) * variants
    val_maps = extractor.extract(val_sources, 1, read=read, progress=progress, cancel=cancel)[:, 0]
    maps_seconds = time.perf_counter() - t0
    emit(kind="log", text=f"{cut} maps ready in {maps_seconds:.1f} s ({extractor.cache_hits} from cache, "
                          f"{extractor.base_batches} batches through the frozen blocks; "
                          f"{train_maps.nbytes / 2**20:.0f} MiB of training maps in memory)")

    # -- 2. the classifier and its tail (shared layers)
    t1 = time.perf_counter()
    keras.utils.set_random_seed(cfg.seed)
    model = build_classifier(cfg.base_id, len(classes), cfg.head, cfg.input_size)
    tail = build_tail_model(model, cut)
    block_layers = [layer for layer in tail.layers if layer.weights and not layer.name.startswith("head_")]
    forward = _forward_fn(tail, val_maps.shape[1:])
    y_train, y_val = labels[train_idx], labels[val_idx]

    # -- 3. warm-up: the head alone on the frozen block's pooled output
    emit(kind="stage", text="Training the head on the frozen block first")
    pooled_train, _ = tail_outputs(tail, train_maps[:, 0], cancel=cancel, fn=forward)
    pooled_val, _ = tail_outputs(tail, val_maps, cancel=cancel, fn=forward)
    quiet = lambda **event: emit(**event) if event["kind"] == "log" else None  # noqa: E731 (no curves for it)
    # Channels that are (nearly) constant before fine-tuning may vary after it: a scale floor of the typical
    # spread keeps their folded weights moderate (measured: with the usual 1e-6 the first joint epoch's loss was
    # ~200 on the synthetic set, from dead channels coming alive).
    floor = max(float(np.median(pooled_train.std(axis=0))), 1e-6)
    warm = train_head(pooled_train, y_train, pooled_val, y_val, len(classes), cfg, emit=quiet, cancel=cancel,
                      scale_floor=floor)
    if warm is None:
        raise Cancelled()
    head, _warm_history = warm
    copy_head_weights(head, model)
    _, warm_logits = tail_outputs(tail, val_maps, cancel=cancel, fn=forward)
    warm_accuracy = float(np.mean(np.argmax(warm_logits, axis=1) == y_val))
    warm_loss = _cross_entropy(warm_logits, y_val)
    emit(kind="log", text=f"head on the frozen block: validation loss {warm_loss:.4f}, accuracy {warm_accuracy:.3f} "
                          "(compare the fine-tuned epochs below)")

    # -- 4. joint training of the block and the head
    head_lr = float(cfg.learning_rate)
    block_lr = head_lr * float(cfg.block_lr_factor)
    names = ", ".join(layer.name for layer in block_layers)
    emit(kind="stage", text=f"Fine-tuning {names} with the head")
    emit(kind="log", text=f"learning rates: head {head_lr:g}, block {block_lr:g}; "
                          f"{len(train_idx)} training images an epoch (one of {variants} variant(s) each)")
    for layer in block_layers:
        layer.trainable = True
    try:
        history = _joint_epochs(cfg, tail, block_layers, train_maps, y_train, val_maps, y_val, len(classes),
                                head_lr, block_lr, forward, emit=emit, cancel=cancel, warm_loss=warm_loss)
    finally:
        for layer in block_layers:
            layer.trainable = False
    train_seconds = time.perf_counter() - t1

    # -- 5. outputs of the kept weights
    pooled_train, _ = tail_outputs(tail, train_maps[:, 0], cancel=cancel, fn=forward)
    _, val_logits = tail_outputs(tail, val_maps, cancel=cancel, fn=forward)
    head_model = build_head_model(pooled_train.shape[1], len(classes), cfg.head)
    copy_head_weights(model, head_model)
    info = {"last_block": True, "cut_layer": cut, "trained_layers": [layer.name for layer in block_layers],
            "learning_rates": {"head": head_lr, "block": block_lr}, "block_lr_factor": float(cfg.block_lr_factor),
            "micro_batch": FINETUNE_MICRO_BATCH, "maps_dtype": np.dtype(extractor.dtype).name,
            "variants_per_epoch": "one of the variants per training image, drawn per epoch",
            "warmup_val_accuracy": warm_accuracy, "warmup_val_loss": warm_loss,
            "block_unchanged": history.get("best_epoch") == 0}     # the warm-up was kept: the block is pretrained
    return LastBlockRun(model=model, head_model=head_model, history=history, val_logits=val_logits,
                        train_pooled=pooled_train, timings={"features": round(maps_seconds, 2),
                                                            "head": round(train_seconds, 2)}, info=info)


def _optimizer(lr: float, weight_decay: float):
    import keras

    return keras.optimizers.AdamW(lr, weight_decay=weight_decay) if weight_decay else keras.optimizers.Adam(lr)


def _joint_epochs(cfg, tail, block_layers, train_maps, y_train, val_maps, y_val, n_classes, head_lr, block_lr,
                  forward, *, emit: Emit, cancel, warm_loss: float = np.inf) -> dict[str, Any]:
    import tensorflow as tf

    block_vars = [v for layer in block_layers for v in layer.trainable_weights]
    block_ids = {id(v) for v in block_vars}
    head_vars = [v for v in tail.trainable_weights if id(v) not in block_ids]
    variables = block_vars + head_vars
    accumulators = [tf.Variable(tf.zeros_like(v), trainable=False) for v in variables]
    block_opt, head_opt = _optimizer(block_lr, cfg.weight_decay), _optimizer(head_lr, cfg.weight_decay)
    block_opt.build(block_vars)
    head_opt.build(head_vars)
    n_block = len(block_vars)
    map_shape = tuple(train_maps.shape[2:])

    @tf.function(input_signature=[tf.TensorSpec((FINETUNE_MICRO_BATCH, *map_shape), tf.float32),
                                  tf.TensorSpec((FINETUNE_MICRO_BATCH,), tf.int32),
                                  tf.TensorSpec((FINETUNE_MICRO_BATCH,), tf.float32)])
    def accumulate(x, y, weight):
        """Add the micro-batch's weighted summed loss gradient; return (summed weighted loss, correct count)."""
        with tf.GradientTape() as tape:
            _pooled, logits = tail(x, training=True)
            losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
            loss = tf.reduce_sum(losses * weight)
        for acc, grad in zip(accumulators, tape.gradient(loss, variables)):
            acc.assign_add(grad)
        real = tf.cast(weight > 0, tf.float32)
        correct = tf.reduce_sum(real * tf.cast(tf.equal(tf.argmax(logits, axis=1, output_type=tf.int32), y),
                                               tf.float32))
        return loss, correct

    @tf.function(input_signature=[tf.TensorSpec((), tf.float32)])
    def apply(n):
        grads = [acc / n for acc in accumulators]    # the batch mean, as Keras' fit computes it
        block_opt.apply(grads[:n_block], block_vars)
        head_opt.apply(grads[n_block:], head_vars)
        for acc in accumulators:
            acc.assign(tf.zeros_like(acc))

    class_weight = np.ones(n_classes, np.float32)
    if cfg.class_weights:
        counts = np.bincount(y_train, minlength=n_classes).astype(float)
        class_weight = np.array([len(y_train) / (n_classes * c) if c else 0.0 for c in counts], np.float32)

    n_train, variants = train_maps.shape[:2]
    batches = int(np.ceil(n_train / cfg.batch_size))
    history: dict[str, Any] = {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": []}
    # (val loss, epoch index, weights); the warm-up (index -1) is the one to beat
    best = (warm_loss, -1, tail.get_weights() if cfg.early_stopping and np.isfinite(warm_loss) else None)
    started = time.perf_counter()
    for epoch in range(cfg.epochs):
        epoch_started = time.perf_counter()
        rng = np.random.default_rng([cfg.seed, epoch])
        order = rng.permutation(n_train)
        drawn = rng.integers(0, variants, n_train)      # one cached variant per image this epoch
        loss_sum = correct_sum = seen = 0.0
        for b in range(batches):
            rows = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            for start in range(0, len(rows), FINETUNE_MICRO_BATCH):
                _check(cancel)
                part = rows[start:start + FINETUNE_MICRO_BATCH]
                x = np.zeros((FINETUNE_MICRO_BATCH, *map_shape), np.float32)
                x[:len(part)] = train_maps[part, drawn[part]]
                y = np.zeros(FINETUNE_MICRO_BATCH, np.int32)
                y[:len(part)] = y_train[part]
                w = np.zeros(FINETUNE_MICRO_BATCH, np.float32)
                w[:len(part)] = class_weight[y_train[part]]
                loss, correct = accumulate(tf.constant(x), tf.constant(y), tf.constant(w))
                loss_sum += float(loss)
                correct_sum += float(correct)
            apply(tf.constant(float(len(rows))))
            seen += len(rows)
            emit(kind="batch", epoch=epoch + 1, batch=b + 1, batches=batches, loss=loss_sum / seen,
                 acc=correct_sum / seen)
        _, val_logits = tail_outputs(tail, val_maps, cancel=cancel, fn=forward)
        val_loss = _cross_entropy(val_logits, y_val)
        val_acc = float(np.mean(np.argmax(val_logits, axis=1) == y_val))
        for key, value in (("loss", loss_sum / seen), ("accuracy", correct_sum / seen), ("val_loss", val_loss),
                           ("val_accuracy", val_acc)):
            history[key].append(float(value))
        now = time.perf_counter()
        emit(kind="epoch", epoch=epoch + 1, epochs=cfg.epochs, loss=history["loss"][-1],
             acc=history["accuracy"][-1], val_loss=val_loss, val_accuracy=val_acc, seconds=now - epoch_started,
             eta_seconds=(now - started) / (epoch + 1) * (cfg.epochs - epoch - 1))
        if val_loss < best[0]:
            best = (val_loss, epoch, tail.get_weights() if cfg.early_stopping else None)
        elif cfg.early_stopping and epoch - best[1] >= cfg.patience:
            break
    if cfg.early_stopping and best[2] is not None:
        tail.set_weights(best[2])
        history["best_epoch"] = best[1] + 1
        if best[1] < 0:
            emit(kind="log", text=f"no fine-tuned epoch beat the head on the frozen block (validation loss "
                                  f"{best[0]:.4f}): that head and the unchanged block are kept")
        else:
            emit(kind="log", text=f"best validation loss at epoch {best[1] + 1} of {len(history['loss'])}; "
                                  "its weights are kept")
    return history
