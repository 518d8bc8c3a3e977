"""`xrayviewer train DATASET --out DIR`: the training dialog's engine on the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help=help_text, description=(
        "Fine-tune a classifier head on DATASET (one sub-folder per class). Base features are computed once and "
        "cached; the split is patient-disjoint (patient ids from manifest.csv when present). With "
        "--finetune-last-block the base's last conv block is trained too, on cached maps of the blocks before it. "
        "Writes a model bundle to --out and prints the validation metrics."))
    p.add_argument("dataset", metavar="DATASET", help="folder with one sub-folder of images per class")
    p.add_argument("--out", required=True, metavar="DIR", help="where to write the model bundle (a folder)")
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (Adam)")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--plot", metavar="PNG", help="also save the training-curve plot here")
    p.add_argument("--base", metavar="NAME", help="conv base (default: vgg16-hed-block4)")
    p.add_argument("--input-size", type=int, default=224, metavar="PX",
                   help="square input size: 224 (default, fast) or 336 (the shipped model's; more detail, ~2.3x "
                        "the compute)")
    p.add_argument("--variants", type=int, default=4, help="augmented feature variants per training image")
    p.add_argument("--no-augmentation", action="store_true", help="train on the images as they are")
    p.add_argument("--class-weights", action="store_true", help="weight classes by inverse frequency")
    p.add_argument("--finetune-last-block", action="store_true",
                   help="also fine-tune the base's last conv block (block4 of the default base) at a lower learning "
                        "rate (--lr x 0.01); slower: the block runs on every training image of every epoch")
    p.add_argument("--no-early-stopping", action="store_true",
                   help="train every epoch and keep the last one (default: stop when the validation loss stops "
                        "improving and keep the best epoch; with --finetune-last-block the head trained before "
                        "fine-tuning counts as epoch 0)")
    p.add_argument("--name", help="model name shown in the app (default: the --out folder name)")
    return p


class _StderrProgress:
    """Progress events as short lines on stderr: stages, logs, feature counts, one line per epoch."""

    def __init__(self):
        self.last_features = -1

    def __call__(self, event: dict) -> None:
        kind = event["kind"]
        if kind in ("stage", "log"):
            print(("== " if kind == "stage" else "   ") + event["text"], file=sys.stderr, flush=True)
        elif kind == "features":
            done, total = event["done"], event["total"]
            tenth = (10 * done) // max(total, 1)
            if tenth != self.last_features or done == total:
                self.last_features = tenth
                print(f"   features {done}/{total}", file=sys.stderr, flush=True)
        elif kind == "epoch":
            print(f"   epoch {event['epoch']}/{event['epochs']}: loss {event['loss']:.4f} acc {event['acc']:.3f} "
                  f"val_loss {event['val_loss']:.4f} val_acc {event['val_accuracy']:.3f} "
                  f"({event['seconds']:.2f} s, ~{event['eta_seconds']:.0f} s left)", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from xrayviewer.model.backbone import DEFAULT_BASE_ID, available_bases
    from xrayviewer.training.engine import FineTuneJob, TrainingConfig, TrainingError
    from xrayviewer.training.features import Augmentation
    from xrayviewer.training.metrics import figure_png, format_report

    base = args.base or DEFAULT_BASE_ID
    if base not in available_bases():
        print(f"error: unknown base {base!r}; available: {', '.join(available_bases())}", file=sys.stderr)
        return 2
    dataset = Path(args.dataset)
    if not dataset.is_dir():
        print(f"error: {dataset} is not a folder (expected one sub-folder of images per class)", file=sys.stderr)
        return 1
    out = Path(args.out)
    config = TrainingConfig(base_id=base, input_size=(args.input_size, args.input_size), epochs=args.epochs,
                            batch_size=args.batch_size, learning_rate=args.lr,
                            early_stopping=not args.no_early_stopping,
                            val_fraction=args.val_fraction, seed=args.seed, class_weights=args.class_weights,
                            variants=args.variants, augmentation=None if args.no_augmentation else Augmentation(),
                            finetune_last_block=args.finetune_last_block, name=args.name or out.name)
    try:
        result = FineTuneJob(dataset, config).run(progress=_StderrProgress())
    except TrainingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if result is None:  # only with a cancel event; kept for completeness of the contract
        print("cancelled: nothing was written", file=sys.stderr)
        return 130
    try:
        saved = result.save(out, name=config.name)
    except OSError as err:
        print(f"error: cannot write the model to {out}: {err.strerror or err}", file=sys.stderr)
        return 1
    if args.plot:
        Path(args.plot).write_bytes(figure_png(result.figures()["plot.png"]))
    print(f"validation split: {result.split['validation']['files']} images of "
          f"{result.split['validation']['patients']} patients (patient ids from {result.patient_id_origin})")
    print(format_report(result.metrics))
    print(f"temperature {result.temperature:.3f}; ECE before scaling "
          f"{result.metrics_uncalibrated['ece']:.4f}, after {result.metrics['ece']:.4f}")
    print(f"model written to {saved}")
    return 0
