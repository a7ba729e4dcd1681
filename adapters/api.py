"""The library behind ``python -m adapters``: `train` and `predict`, one function per verb.

Both take a model config (a YAML path or a loaded `adapters.config.ModelConfig`) and ``key=value``
overrides as ``--set`` does, log with `logging` and print nothing; the CLI prints the results.
A model is dispatched on its interface: a `adapters.base.Classifier` (the gate) writes a gate
file, a `adapters.base.Detector` COCO results.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from adapters import build
from adapters.base import AdapterError, Classifier, Detector
from adapters.config import ConfigError, ModelConfig, load_config, parse_config
from adapters.tta import check_tta, predict_tta
from adapters.weights import WEIGHTS_REPORT
from core.cli import progress
from core.coco import CocoDataset
from core.io import atomic_open, check_out_file, write_json
from core.predictions import write_gate, write_predictions

logger = logging.getLogger(__name__)


def _config(config: str | Path | ModelConfig, overrides: Sequence[str], trust_weights: bool) -> ModelConfig:
    if trust_weights:
        overrides = [*overrides, "trust_weights=true"]
    if isinstance(config, ModelConfig):
        return parse_config(config.to_dict(), config.source, list(overrides)) if overrides else config
    return load_config(config, list(overrides))


def default_cam_dir(out: str | Path) -> Path:
    """Where `predict` writes Grad-CAM overlays unless told: ``preds/gate.json`` → ``preds/gate_cam``."""
    out = Path(out)
    return out.with_name(f"{out.stem}_cam")


def train(
    config: str | Path | ModelConfig,
    dataset: str | Path | None = None,
    out_dir: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    trust_weights: bool = False,
) -> Path:
    """Train the model of a config and fill its run directory.

    The run directory gets the weights, the resolved config (``config.yaml``, ``dataset.train``
    made absolute), the dataset's categories (``categories.json``) and the per-step loss log
    (``loss.csv``); a run started from the config's ``weights`` also gets
    ``weights_report.json``, the tensors loaded, skipped and left as initialised
    (`adapters.base.WeightsReport`). The start weights are read before anything is written.

    Args:
        config: a model config YAML or a loaded config.
        dataset: the training COCO json (default: the config's ``dataset.train``).
        out_dir: the run directory (default: the config's ``out_dir``).
        overrides: ``key=value`` config overrides, dotted for sections (``schedule.epochs=5``).
        trust_weights: allow a full unpickle of start weights that pickle Python objects
            (``trust_weights: true``; it runs any code in the file).

    Returns:
        The weights file.

    Raises:
        ConfigError: a config that does not validate, or no training set.
        AdapterError: the adapter refuses the config, the data or its start weights (missing,
            unreadable, or pickling Python objects without ``trust_weights``), or training fails.
        FileNotFoundError, ValueError: the dataset is missing or not a valid COCO file.
    """
    cfg = _config(config, overrides, trust_weights)
    train_json = dataset or cfg.dataset.get("train")
    if not train_json:
        raise ConfigError(f"{cfg.source or 'config'}: no training set: set dataset.train or pass --dataset")
    data = CocoDataset.load(train_json)
    model = build(cfg)  # a bad model config fails here, before the run directory is touched
    model.start_weights()  # and so do start weights that are missing, unreadable or refused
    run_dir = Path(out_dir or cfg.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / WEIGHTS_REPORT).unlink(missing_ok=True)  # an earlier run's
    resolved = cfg.to_dict()
    resolved["dataset"] = {**cfg.dataset, "train": str(Path(train_json).resolve())}
    with atomic_open(run_dir / "config.yaml") as f:
        yaml.safe_dump(resolved, f, sort_keys=False)
    write_json(run_dir / "categories.json", data.categories, indent=1)
    logger.info(
        "training %s (%s) on %s: %d images → %s",
        cfg.name, cfg.adapter, train_json, len(data.images), run_dir,
    )  # fmt: skip
    return Path(model.train(data, run_dir))


def predict(
    config: str | Path | ModelConfig,
    weights: str | Path,
    dataset: str | Path,
    out: str | Path,
    *,
    name: str | None = None,
    batch_size: int | None = None,
    overrides: Sequence[str] = (),
    cam: Sequence[int] = (),
    cam_dir: str | Path | None = None,
    trust_weights: bool = False,
    tta: Sequence[str] | None = None,
) -> Path:
    """Predict every image of a COCO dataset and write the results with their sidecar.

    A detector writes COCO results in absolute pixels of the dataset's images
    (`core.predictions.write_predictions`); a classifier (the gate) writes
    ``[{image_id, p_abnormal}]`` (`core.predictions.write_gate`). Either gets ``OUT.meta.json``:
    name, adapter, model, config, weights, dataset, images, device, tta (the test-time
    augmentations and how their passes were fused), seconds, images_per_second.

    Args:
        config: a model config YAML or a loaded config.
        weights: the local weights file written by `train`.
        dataset: the COCO json whose images are predicted.
        out: the results file, e.g. ``preds/NAME.json``.
        name: the row name on the leaderboard (default: the config's name).
        batch_size: images per forward pass (default: the config's ``predict.batch_size``).
        overrides: ``key=value`` config overrides.
        cam: classifier only: image ids to draw Grad-CAM overlays of.
        cam_dir: folder of those overlays (default: `default_cam_dir` of ``out``).
        trust_weights: allow a full unpickle of ``weights`` if it pickles Python objects
            (``trust_weights: true``; it runs any code in the file).
        tta: detector only: test-time augmentations (``["hflip"]``, `adapters.tta`); default the
            config's ``predict.tta``.

    Returns:
        ``out``.

    Raises:
        ConfigError: a config that does not validate.
        AdapterError: weights that are missing, unreadable, unfit, trained for other classes, or
            that pickle Python objects without ``trust_weights``; Grad-CAM asked of a detector,
            or of image ids not in the dataset; an unknown test-time augmentation, or one asked of a
            gate.
        FileNotFoundError: images of the dataset are missing.
        ValueError: the dataset is not a valid COCO file.
    """
    cfg = _config(config, overrides, trust_weights)
    out = check_out_file(out)  # before any work: an --out that is a folder fails now, not after predicting
    data = CocoDataset.load(dataset)
    model = build(cfg, weights)
    classifier = isinstance(model, Classifier)
    if not classifier and not isinstance(model, Detector):
        raise AdapterError(f"{cfg.adapter}: {type(model).__name__} is neither a Detector nor a Classifier")
    if cam and not classifier:
        raise AdapterError(f"Grad-CAM (--cam) is for a gate (resnet_gate) config, not {cfg.adapter}")
    modes = check_tta(cfg.predict.tta if tta is None else tta)
    if modes and classifier:
        raise AdapterError(f"test-time augmentation ({', '.join(modes)}) is for detectors, not {cfg.adapter}")
    model.check_categories(data)
    ids = data.image_ids
    paths = [data.image_path(i) for i in ids]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} image(s) of {dataset} not found, e.g. {missing[0]}")
    meta: dict[str, Any] = {
        "name": name or cfg.name,
        "adapter": cfg.adapter,
        "model": cfg.model,
        "config": str(cfg.source if isinstance(config, ModelConfig) else config),
        "weights": str(weights),
        "dataset": str(dataset),
        "images": len(ids),
        "device": cfg.device,
        "tta": {"modes": modes, "fusion": "wbf", "iou_thr": cfg.predict.tta_iou} if modes else None,
    }
    bs = batch_size or cfg.predict.batch_size
    t0 = time.perf_counter()
    stream = predict_tta(model, paths, bs, modes, cfg.predict.tta_iou) if modes else model.predict(paths, bs)
    outputs = list(progress(stream, total=len(ids), desc=f"predict {cfg.name}", unit="img"))
    dt = time.perf_counter() - t0
    meta.update(seconds=round(dt, 3), images_per_second=round(len(ids) / dt, 3) if dt > 0 else None)
    results = dict(zip(ids, outputs, strict=True))
    if classifier:
        write_gate(out, results, meta)
        if cam:
            folder = Path(cam_dir) if cam_dir else default_cam_dir(out)
            model.grad_cam(data, list(cam), folder)
    else:
        write_predictions(out, results, meta)
    return out
