"""Model configs: one YAML per model under ``configs/``, validated on load.

A config names its adapter and the framework's native model, the dataset, the
image size, the schedule, the device and optional local weights::

    name: yolov8n                     # run and prediction names (default: the file stem)
    adapter: ultralytics              # a key of adapters.ADAPTERS
    model: yolov8n.yaml               # the framework's native model (see below)
    dataset: {train: work/coco/train.json, val: work/coco/val.json}
    image_size: 1024                  # longest side fed to the network
    schedule: {epochs: 50, batch_size: 8, lr: 0.01, workers: 2, empty_images: keep}
    device: auto                      # auto | cpu | cuda | cuda:0 | 0,1 ...
    weights: null                     # local file to start from (nothing is downloaded)
    trust_weights: false              # allow a full unpickle of weight files (runs code in them)
    out_dir: runs/yolov8n
    predict: {score_thr: 0.001, nms_iou: 0.5, max_dets: 300, batch_size: 4, tta: [], tta_iou: 0.55}
    options: {}                       # passed to the framework as they are

``model`` is an Ultralytics model YAML (built in, e.g. ``yolov8n.yaml``, or a path),
a Detectron2 YAML (a path, relative to the config file or the repository) or an
MMDetection Python config (likewise). Relative paths in ``dataset``, ``weights``
and ``out_dir`` are relative to the current directory.

``trust_weights`` (``--trust-weights`` on the command line) is for weight files that pickle
Python objects, such as Ultralytics' own ``.pt`` files: loading one means a full unpickle, which
runs whatever code the file holds, so CXRFuse refuses them unless this is true. Tensors, numpy
arrays and plain data (every checkpoint CXRFuse writes, Detectron2 ``.pkl``/``.pth``,
MMDetection ``.pth``, torchvision state dicts) load without it.

``schedule.empty_images`` says what every framework does with training images that have no box
(VinBigData's many normal images): ``keep`` (the default) trains on them as background, ``drop``
leaves them out; the resolved ``config.yaml`` of each run records it.

``schedule.checkpoint_period`` spaces the resumable checkpoints of Detectron2 and MMDetection
(``python -m adapters train --resume``): ``0`` (the default) about ten in a run of 50 or more
iterations and none in a shorter one, ``N`` every N iterations, ``-1`` none; Ultralytics writes one
after every epoch.

``predict.tta: [hflip]`` adds horizontal-flip test-time augmentation to any detector
(`adapters.tta`): the flipped image is predicted too, its boxes flipped back and fused with the
plain pass by WBF at ``predict.tta_iou``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from core.errors import UserError

REPO = Path(__file__).resolve().parents[1]


class ConfigError(UserError):
    """A config that does not validate; the message names the file and the key."""


_SCHEDULE: dict[str, tuple[type, ...]] = {
    "epochs": (int,),
    "iterations": (int,),
    "batch_size": (int,),
    "lr": (float, int),
    "momentum": (float, int),
    "weight_decay": (float, int),
    "warmup_iters": (int,),
    "workers": (int,),
    "seed": (int,),
    "log_period": (int,),
    "checkpoint_period": (int,),
    "empty_images": (str,),
}
_PREDICT: dict[str, tuple[type, ...]] = {
    "score_thr": (float, int),
    "nms_iou": (float, int),
    "max_dets": (int,),
    "batch_size": (int,),
    "tta": (list,),
    "tta_iou": (float, int),
}
_TOP: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "adapter": (str,),
    "model": (str,),
    "dataset": (dict,),
    "image_size": (int,),
    "schedule": (dict,),
    "device": (str, int),
    "weights": (str, type(None)),
    "trust_weights": (bool,),
    "out_dir": (str,),
    "predict": (dict,),
    "options": (dict,),
}
_REQUIRED = ("adapter", "model")
#: ``schedule.empty_images``: train on images without boxes as background (``keep``) or leave them out.
EMPTY_IMAGES: tuple[str, ...] = ("keep", "drop")


@dataclass
class Schedule:
    epochs: int | None = None
    iterations: int | None = None
    batch_size: int = 4
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 0
    workers: int = 2
    seed: int = 0
    log_period: int = 20
    checkpoint_period: int = 0
    empty_images: str = "keep"


@dataclass
class PredictOptions:
    score_thr: float = 0.001
    nms_iou: float = 0.5
    max_dets: int = 300
    batch_size: int = 4
    tta: list[str] = field(default_factory=list)
    tta_iou: float = 0.55


@dataclass
class ModelConfig:
    """A validated model config (see the module docstring)."""

    name: str
    adapter: str
    model: str
    dataset: dict[str, str] = field(default_factory=dict)
    image_size: int = 1024
    schedule: Schedule = field(default_factory=Schedule)
    device: str = "auto"
    weights: str | None = None
    trust_weights: bool = False
    out_dir: str = ""
    predict: PredictOptions = field(default_factory=PredictOptions)
    options: dict[str, Any] = field(default_factory=dict)
    source: Path | None = None

    def model_path(self) -> Path:
        """``model`` as a path: as given, else relative to the config file, else to the repository."""
        p = Path(self.model)
        for cand in (p, (self.source.parent / p) if self.source else None, REPO / p):
            if cand is not None and cand.is_file():
                return cand.resolve()
        raise ConfigError(f"{self.source}: model: file {self.model!r} not found")

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        d = asdict(self)
        d.pop("source")
        return d


def _check(section: str, data: dict, spec: dict[str, tuple[type, ...]], where: str) -> None:
    for key, value in data.items():
        name = f"{section}.{key}" if section else key
        if key not in spec:
            raise ConfigError(f"{where}: unknown key {name!r} (known: {', '.join(sorted(spec))})")
        types = spec[key]
        if isinstance(value, bool) and bool not in types:
            raise ConfigError(
                f"{where}: {name} must be {' or '.join(t.__name__ for t in types)}, got {value!r}"
            )
        if not isinstance(value, types):
            raise ConfigError(
                f"{where}: {name} must be {' or '.join(t.__name__ for t in types)}, "
                f"got {type(value).__name__} {value!r}"
            )


def _set(data: dict, dotted: str, raw: str, where: str) -> None:
    """Apply one ``--set key.sub=value`` override; the value is parsed as YAML."""
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: --set {dotted}: {k!r} is not a section")
    node[keys[-1]] = yaml.safe_load(raw)


def parse_config(data: dict[str, Any], source: Path | None = None, overrides: list[str] = ()) -> ModelConfig:
    """Validate a config dict (plus ``key=value`` overrides) into a `ModelConfig`.

    Raises:
        ConfigError: naming the file and the key that is unknown, missing or of the wrong type.
    """
    where = str(source) if source else "config"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level")
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        k, v = item.split("=", 1)
        _set(data, k.strip(), v, where)
    # null means "the default" (a resolved config written by train spells defaults out as null)
    data = {k: v for k, v in data.items() if v is not None or k == "weights"}
    for section in ("schedule", "predict"):
        if isinstance(data.get(section), dict):
            data[section] = {k: v for k, v in data[section].items() if v is not None}
    _check("", data, _TOP, where)
    for key in _REQUIRED:
        if key not in data:
            raise ConfigError(f"{where}: missing required key {key!r}")
    _check("schedule", data.get("schedule", {}), _SCHEDULE, where)
    _check("predict", data.get("predict", {}), _PREDICT, where)
    for k, v in data.get("dataset", {}).items():
        if k not in ("train", "val"):
            raise ConfigError(f"{where}: unknown key 'dataset.{k}' (known: train, val)")
        if not isinstance(v, str):
            raise ConfigError(f"{where}: dataset.{k} must be a path string, got {v!r}")
    from adapters import ADAPTERS

    if data["adapter"] not in ADAPTERS:
        raise ConfigError(f"{where}: adapter {data['adapter']!r} is not one of {', '.join(sorted(ADAPTERS))}")
    name = data.get("name") or (source.stem if source else data["adapter"])
    sched = Schedule(**data.get("schedule", {}))
    pred = PredictOptions(**data.get("predict", {}))
    for label, value in (
        ("image_size", data.get("image_size", 1024)),
        ("schedule.batch_size", sched.batch_size),
        ("predict.batch_size", pred.batch_size),
        ("predict.max_dets", pred.max_dets),
    ):
        if value < 1:
            raise ConfigError(f"{where}: {label} must be >= 1, got {value}")
    if sched.epochs is not None and sched.epochs < 1 or sched.iterations is not None and sched.iterations < 1:
        raise ConfigError(f"{where}: schedule.epochs / schedule.iterations must be >= 1")
    if not 0 <= pred.score_thr <= 1 or not 0 <= pred.nms_iou <= 1:
        raise ConfigError(f"{where}: predict.score_thr and predict.nms_iou must be in [0, 1]")
    if sched.empty_images not in EMPTY_IMAGES:
        raise ConfigError(
            f"{where}: schedule.empty_images must be one of {', '.join(EMPTY_IMAGES)}, got {sched.empty_images!r}"
        )
    if not 0 <= pred.tta_iou <= 1:
        raise ConfigError(f"{where}: predict.tta_iou must be in [0, 1], got {pred.tta_iou}")
    from adapters.tta import TTA_MODES

    if len(set(map(str, pred.tta))) != len(pred.tta) or not set(map(str, pred.tta)) <= set(TTA_MODES):
        raise ConfigError(f"{where}: predict.tta must list each of {', '.join(TTA_MODES)} at most once, got {pred.tta}")
    return ModelConfig(
        name=name,
        adapter=data["adapter"],
        model=data["model"],
        dataset=dict(data.get("dataset", {})),
        image_size=int(data.get("image_size", 1024)),
        schedule=sched,
        device=str(data.get("device", "auto")),
        weights=data.get("weights"),
        trust_weights=bool(data.get("trust_weights", False)),
        out_dir=data.get("out_dir") or f"runs/{name}",
        predict=pred,
        options=dict(data.get("options", {})),
        source=source,
    )


def load_config(path: str | Path, overrides: list[str] = ()) -> ModelConfig:
    """Read and validate a model config YAML (see `parse_config`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    return parse_config(data or {}, path.resolve(), list(overrides))
