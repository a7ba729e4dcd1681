"""The library behind ``python -m adapters``: `train` and `predict`, one function per verb.

Both take a model config (a YAML path or a loaded `adapters.config.ModelConfig`) and ``key=value``
overrides as ``--set`` does, log with `logging` and print nothing; the CLI prints the results.
A model is dispatched on its interface: a `adapters.base.Classifier` (the gate) writes a gate
file, a `adapters.base.Detector` COCO results.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from adapters import build
from adapters.base import AdapterError, Classifier, Detector
from adapters.config import ConfigError, ModelConfig, load_config, parse_config
from adapters.quiet import progress
from adapters.tta import check_tta, predict_tta
from adapters.weights import WEIGHTS_REPORT
from core.class_probs import write_class_probs
from core.coco import CocoDataset
from core.io import atomic_open, check_out_dir, check_out_file, write_json
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


def _rank() -> int:
    """This process's rank under torchrun (0 when not distributed)."""
    return int(os.environ.get("RANK", "0"))


def _resolved(cfg: ModelConfig, train_json: str | Path, run_dir: Path, device: str) -> dict[str, Any]:
    """The config a run records: every override applied, the dataset, weights and run folder absolute."""
    resolved = cfg.to_dict()
    resolved["dataset"] = {k: str(Path(v).resolve()) for k, v in cfg.dataset.items()}
    resolved["dataset"]["train"] = str(Path(train_json).resolve())
    resolved["out_dir"] = str(run_dir.resolve())
    if cfg.weights:
        resolved["weights"] = str(Path(cfg.weights).resolve())
    return resolved


def _check_same_run(run_dir: Path, resolved: dict[str, Any]) -> None:
    """Refuse to resume a run with other settings than it was started with (naming the first key)."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return
    try:
        saved = yaml.safe_load(saved_path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise AdapterError(f"{saved_path}: not valid YAML ({e}); pass --overwrite to start over") from None

    def flat(d: Any, prefix: str = "") -> dict[str, Any]:
        if not isinstance(d, dict):
            return {prefix: d}
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}."))
        return out if out or not prefix else {prefix: d}

    try:  # both through the same validation, so defaults spelled out or left out compare equal
        saved = parse_config(saved, saved_path).to_dict()
    except ConfigError as e:
        raise AdapterError(f"{e}; pass --overwrite to start over") from None
    a, b = flat(saved), flat(parse_config(resolved).to_dict())
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key) and key.rstrip(".") not in ("trust_weights",):
            raise AdapterError(
                f"{run_dir}: --resume with other settings than the run started with: "
                f"{key.rstrip('.')} was {a.get(key)!r}, now {b.get(key)!r}; "
                "pass --overwrite to start over with the new settings"
            )


def train(
    config: str | Path | ModelConfig,
    dataset: str | Path | None = None,
    out_dir: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    trust_weights: bool = False,
    overwrite: bool = False,
    resume: bool = False,
) -> Path:
    """Train the model of a config and fill its run directory.

    The run directory gets the weights, the resolved config (``config.yaml``: every ``--set``
    override applied, ``dataset``, ``weights`` and ``out_dir`` absolute, as really used; a header
    comment names the source config, the overrides and the device that ran), the dataset's
    categories (``categories.json``), the per-step loss log (``loss.csv``), ``run.json`` (overrides,
    device, resumed or not) and ``train.log``, the frameworks' own output; a run started from the
    config's ``weights`` also gets ``weights_report.json``, the tensors loaded, skipped and left as
    initialised (`adapters.base.WeightsReport`).

    Everything is checked before any file is written: the config, the dataset, the start weights
    (and, for a checkpoint of ours, that it fits the config's architecture and image size), the
    device, and the run folder (`adapters.base.prepare_run_dir`): a finished run there is refused
    unless ``overwrite``; an unfinished one unless ``resume`` (continue from the framework's last
    checkpoint; the loss log continues with it) or ``overwrite``.

    Under ``torchrun`` every process runs this; only rank 0 applies the run-folder rule and
    writes the run's files.

    Args:
        config: a model config YAML or a loaded config.
        dataset: the training COCO json (default: the config's ``dataset.train``).
        out_dir: the run directory (default: the config's ``out_dir``).
        overrides: ``key=value`` config overrides, dotted for sections (``schedule.epochs=5``).
        trust_weights: allow a full unpickle of start weights that pickle Python objects
            (``trust_weights: true``; it runs any code in the file).
        overwrite: replace a run already in ``out_dir`` (only the files a training writes are removed).
        resume: continue the unfinished run in ``out_dir``, with the same settings.

    Returns:
        The weights file.

    Raises:
        ConfigError: a config that does not validate, or no training set.
        AdapterError: the adapter refuses the config, the data or its start weights (missing,
            unreadable, made for another architecture or image size, or pickling Python objects
            without ``trust_weights``); a device the machine lacks; a run folder holding a run
            (see above), or resumed with other settings; or training fails.
        FileNotFoundError, ValueError: the dataset is missing or not a valid COCO file.
    """
    from adapters.base import RunState, prepare_run_dir, resolve_device
    from adapters.quiet import echo_enabled, framework_output

    cfg = _config(config, overrides, trust_weights)
    train_json = dataset or cfg.dataset.get("train")
    if not train_json:
        raise ConfigError(f"{cfg.source or 'config'}: no training set: set dataset.train or pass --dataset")
    run_dir = check_out_dir(Path(out_dir or cfg.out_dir), "--out-dir")
    if overwrite and resume:
        raise AdapterError(f"{run_dir}: --overwrite and --resume exclude each other: pass one")
    data = CocoDataset.load(train_json)
    device = resolve_device(cfg.device)  # a GPU the machine lacks fails now, before any file is written
    model = build(cfg)  # a bad model config fails here, before the run directory is touched
    model.start_weights()  # and so do start weights that are missing, unreadable, refused or unfit
    checkpoint = getattr(model, "resume_checkpoint", None)
    resolved = _resolved(cfg, train_json, run_dir, device)
    if _rank() == 0:
        if resume:
            prepare_run_dir(run_dir, resume=True, checkpoint=checkpoint, dry_run=True)
            _check_same_run(run_dir, resolved)
        state = prepare_run_dir(run_dir, overwrite=overwrite, resume=resume, checkpoint=checkpoint)
    else:  # rank 0 applies the rule; the others follow its decision
        ckpt = checkpoint(run_dir) if resume and checkpoint is not None else None
        state = RunState(run_dir, "unfinished" if resume else "new", resume=resume, checkpoint=ckpt)
    model.run_state = state
    if _rank() == 0:
        if not state.resume:
            (run_dir / WEIGHTS_REPORT).unlink(missing_ok=True)  # an earlier run's
        sets = [*overrides, *(["trust_weights=true"] if trust_weights else [])]
        with atomic_open(run_dir / "config.yaml") as f:
            f.write(
                f"# {cfg.name}: the config this run used ({cfg.source or 'given in code'}"
                f"{', --set ' + ' '.join(sets) if sets else ''}), trained on {device}\n"
            )
            yaml.safe_dump(resolved, f, sort_keys=False)
        write_json(run_dir / "categories.json", data.categories, indent=1)
        write_json(
            run_dir / "run.json",
            {
                "config": str(cfg.source) if cfg.source else None,
                "overrides": list(sets),
                "device": device,
                "world_size": int(os.environ.get("WORLD_SIZE", "1")),  # processes under torchrun
                "dataset": str(Path(train_json).resolve()),
                "resumed_from": str(state.checkpoint) if state.checkpoint else None,
                "resume": state.resume,
                "overwrote": list(state.removed),
            },
            indent=1,
        )
    logger.info(
        "training %s (%s) on %s: %d images → %s%s",
        cfg.name, cfg.adapter, train_json, len(data.images), run_dir,
        f" (resuming from {state.checkpoint})" if state.checkpoint else "",
    )  # fmt: skip
    log = run_dir / "train.log" if _rank() == 0 else Path(os.devnull)  # the other ranks say the same
    with framework_output(log, echo=echo_enabled()):
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
    cam_class: str | None = None,
    trust_weights: bool = False,
    tta: Sequence[str] | None = None,
) -> Path:
    """Predict every image of a COCO dataset and write the results with their sidecar.

    A detector writes COCO results in absolute pixels of the dataset's images
    (`core.predictions.write_predictions`); a classifier (the gate) writes
    ``[{image_id, p_abnormal, probs}]`` with the task and classes in the sidecar
    (`core.class_probs.write_class_probs`). Either gets ``OUT.meta.json``:
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
        cam_class: classifier only: the class whose Grad-CAM is drawn (default: the binary class,
            else each image's most probable class); checked with the image ids before any work.
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
    from adapters.base import resolve_device
    from adapters.quiet import echo_enabled, framework_output

    cfg = _config(config, overrides, trust_weights)
    out = check_out_file(out)  # before any work: an --out that is a folder fails now, not after predicting
    data = CocoDataset.load(dataset)
    resolve_device(cfg.device)  # a GPU the machine lacks fails before any work
    with framework_output(Path(out).with_suffix(".log"), echo=echo_enabled(), held=True):
        return _predict(
            cfg, config, weights, data, dataset, out, name, batch_size, cam, cam_dir, cam_class, tta
        )


def _predict(
    cfg: ModelConfig,
    config: str | Path | ModelConfig,
    weights: str | Path,
    data: CocoDataset,
    dataset: str | Path,
    out: Path,
    name: str | None,
    batch_size: int | None,
    cam: Sequence[int],
    cam_dir: str | Path | None,
    cam_class: str | None,
    tta: Sequence[str] | None,
) -> Path:
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
    if cam_class is not None and not cam:
        raise AdapterError(f"--cam-class {cam_class} needs --cam IMAGE_ID ...")
    if cam and hasattr(model, "check_cam"):
        model.check_cam(data, list(cam), cam_class)  # unknown image ids or class: fail before any work
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
        to_probs = getattr(model, "class_probs", None)
        if to_probs is None:
            write_gate(out, results, meta)
        else:
            write_class_probs(out, to_probs(ids, outputs), meta)
        if cam:
            folder = Path(cam_dir) if cam_dir else default_cam_dir(out)
            extra = {"class_name": cam_class} if cam_class is not None else {}
            model.grad_cam(data, list(cam), folder, **extra)
    else:
        write_predictions(out, results, meta)
    return out
