"""Inference speed: bare forward pass vs prediction + all-class Grad-CAM (goal: ratio <= 1.3), Grad-CAM++, Score-CAM,
tf-keras-vis Grad-CAM for reference, and batch throughput.

    python benchmarks/bench_inference.py [--quick] [--model DIR] [--json OUT]

Uses models/default when present (else the default base with a random head: speed does not depend on head weights)
and one 224x224 input. Forward and analyze are timed interleaved, so machine noise hits both alike; the ratio is the
figure to compare across machines.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _figure(name: str, samples: list[float], unit: str, goal: str | None = None, passed: bool | None = None,
            note: str = "") -> dict:
    return {"name": name, "unit": unit, "samples": samples, "median": statistics.median(samples),
            "min": min(samples), "max": max(samples), "repeats": len(samples), "goal": goal, "passed": passed,
            "note": note}


def _load_classifier(model_dir: str | None):
    from xrayviewer.model.classifier import Classifier
    from xrayviewer.paths import DEFAULT_MODEL_DIR

    path = Path(model_dir) if model_dir else DEFAULT_MODEL_DIR
    if (path / "model.json").is_file():
        return Classifier.load(path), str(path)
    import keras

    from xrayviewer.model.architecture import build_classifier
    from xrayviewer.model.bundle import save_bundle

    keras.utils.set_random_seed(0)
    model = build_classifier("vgg16-hed-block4", 3)
    tmp = Path(tempfile.mkdtemp(prefix="bench-inference-"))
    bundle = save_bundle(tmp / "random-head", {"classes": ["covid", "normal", "pneumonia"]}, model)
    return Classifier.load(bundle), "default base + random head (models/default not built)"


def _radiograph():
    from xrayviewer.imaging import Radiograph
    from xrayviewer.paths import shared_data_dir

    shared = shared_data_dir()
    if shared is not None:
        from xrayviewer.imaging import read_radiograph

        jsrt = sorted((shared / "cxr" / "normal").glob("jsrt_*.png"))
        if jsrt:
            return read_radiograph(jsrt[0]), jsrt[0].name
    rng = np.random.default_rng(0)
    return Radiograph.from_array(rng.random((1024, 1024)).astype(np.float32)), "synthetic 1024x1024"


def run(quick: bool, model_dir: str | None) -> dict:
    import tensorflow as tf

    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.utils.scores import CategoricalScore

    classifier, model_name = _load_classifier(model_dir)
    radiograph, image_name = _radiograph()
    rows, cols = classifier.input_size
    x1 = classifier.model_input(radiograph)[None]
    model = classifier.model
    bare = tf.function(lambda t: model(t, training=False),
                       input_signature=[tf.TensorSpec([None, rows, cols, 3], tf.float32)])
    repeats, slow_repeats = (5, 2) if quick else (11, 3)

    for _ in range(2):  # trace and warm up every path before timing
        bare(x1)
        classifier._analyze_fn(x1)
    forward, analyze, analyze_full = [], [], []
    for _ in range(repeats):  # interleaved: noise from other processes hits both alike
        forward.append(_timed(lambda: bare(x1).numpy()))
        analyze.append(_timed(lambda: [t.numpy() for t in classifier._analyze_fn(x1)]))
        analyze_full.append(_timed(lambda: classifier.analyze(radiograph)))
    ratio = statistics.median(analyze) / statistics.median(forward)
    ratios = [a / f for a, f in zip(analyze, forward)]

    n_classes = len(classifier.classes)
    explained = {}
    for method in ("gradcam++", "scorecam"):
        classifier.explain(radiograph, method, 0)  # builds the tf-keras-vis object once
        explained[method] = [_timed(lambda: classifier.explain(radiograph, method, 0)) for _ in range(slow_repeats)]
    reference = Gradcam(classifier._explainers.logits_model, clone=False)
    layers = classifier.bundle.gradcam_layers      # two for a two-scale model: the reference computes both
    for layer in layers:
        reference(CategoricalScore([0]), x1, penultimate_layer=layer, expand_cam=False)
    tkv_all = [_timed(lambda: [reference(CategoricalScore([c]), x1, penultimate_layer=layer, expand_cam=False)
                               for c in range(n_classes) for layer in layers]) for _ in range(slow_repeats)]

    throughput = {}
    for batch in (8, 16):
        xb = np.repeat(x1, batch, axis=0)
        classifier._forward_fn(xb)
        classifier._analyze_fn(xb)
        throughput[("predict", batch)] = [batch / _timed(lambda: classifier._forward_fn(xb)[0].numpy())
                                          for _ in range(slow_repeats)]
        throughput[("analyze", batch)] = [batch / _timed(lambda: classifier._analyze_fn(xb)[0].numpy())
                                          for _ in range(slow_repeats)]

    ms = [1000.0]
    figures = [
        _figure("bare forward pass (compiled, 1 image)", [t * ms[0] for t in forward], "ms"),
        _figure(f"prediction + Grad-CAM for all {n_classes} classes (one compiled pass)",
                [t * ms[0] for t in analyze], "ms"),
        _figure("analyze() incl. preprocessing of the original image", [t * ms[0] for t in analyze_full], "ms",
                note=image_name),
        _figure("ratio analyze / bare forward", ratios, "x", goal="<= 1.3", passed=ratio <= 1.3,
                note=f"ratio of medians {ratio:.3f}"),
        _figure("Grad-CAM++ (tf-keras-vis, one class)", [t * ms[0] for t in explained["gradcam++"]], "ms"),
        _figure("Score-CAM (tf-keras-vis Faster-Score-CAM, max_N=10, one class)",
                [t * ms[0] for t in explained["scorecam"]], "ms"),
        _figure(f"tf-keras-vis Gradcam, all {n_classes} classes (reference)", [t * ms[0] for t in tkv_all], "ms"),
    ]
    for (kind, batch), samples in throughput.items():
        label = "prediction" if kind == "predict" else "prediction + all-class Grad-CAM"
        figures.append(_figure(f"throughput, {label}, batch {batch}", samples, "images/s"))
    return {"figures": figures, "config": {"model": model_name, "image": image_name, "input_size": [rows, cols],
                                           "gradcam_layers": layers, "quick": quick}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--model", metavar="DIR", help="model bundle (default: models/default if built)")
    parser.add_argument("--json", metavar="OUT", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    result = run(args.quick, args.model)
    print(f"model: {result['config']['model']}; image: {result['config']['image']}")
    for fig in result["figures"]:
        goal = f"  goal {fig['goal']}: {'pass' if fig['passed'] else 'FAIL'}" if fig["goal"] else ""
        print(f"{fig['name']:<66} median {fig['median']:9.2f} {fig['unit']:<8} "
              f"(min {fig['min']:.2f}, max {fig['max']:.2f}, n={fig['repeats']}){goal}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
