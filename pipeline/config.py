"""The pipeline config (``configs/pipelines/*.yaml``): its schema, `load_pipeline` and `PipelineError`.

Top-level keys:

- ``work_dir``: where everything lands (default ``work/pipeline``);
- ``data``: ``kind`` (``vinbig``, the default, or ``rsna``), exactly one of ``synth`` (generate
  DICOMs: ``n_images``, ``seed``, ``min_size``, ``max_size`` (vinbig), ``size`` (rsna), ``workers``)
  or ``raw`` (vinbig: ``csv``, ``images``, ``size_table``; rsna: ``labels``, ``images``,
  ``class_info``), and ``convert`` (``size``, ``folds``, ``val_fold``, ``annotators``, ``iou_thr``,
  ``workers``);
- ``cv`` (optional): ``folds``, the folds to train (a list of fold numbers, or ``all``). Every
  model is trained once per fold; the fold models' predictions on their own validation folds make
  the out-of-fold (OOF) results that the fusions, the sweep and the leaderboard use. Without it
  one model per detector is trained on ``data.convert.val_fold``'s split;
- ``test`` (optional): unlabelled images to predict, exactly one of ``synth`` (generate, as
  ``data.synth``; its labels are not used) or ``images`` (a folder, with optional ``ids``, the
  sample submission it must match, and ``size_table``). With it (or ``cv``) a sweep of the fusion
  settings runs on the validation (OOF) results, and ``submission.csv`` is the test set's;
- ``sweep`` (optional): the sweep's grid, ``iou_thr``, ``skip_box_thr`` (lists of numbers) and
  ``gate_modes`` (a list of ``append``, ``filter``, ``rescale``, ``none``);
- ``models``: detector configs, each a path or ``{config: PATH, set: {KEY: VALUE}, resources: {...}}``;
  ``resources`` (``cpus``, ``gpus``, ``memory_gb``) is what each of the model's steps asks a Ray
  cluster for (``python -m pipeline run --executor ray``);
- ``gate``: the classifier gate's config, in the same form (optional);
- ``ensemble``: ``methods`` (the fusion methods to run, a list) and the fields of
  `fusion.settings.FusionSettings` except ``method`` (``weights``, ``iou_thr``, ``skip_box_thr``,
  ``conf_type``, ``sigma``, ``soft_method``, ``soft_score_thr``, ``gate_mode``, ``low``, ``high``);
  the gated fusions use ``gate_mode`` (default ``append``; ``filter`` defaults to ``low`` 0.1 and
  ``high`` 0.9), the ungated ones leave the gate out;
- ``leaderboard``: ``metric`` (default ``vinbig``, ``rsna`` for RSNA data), ``examples``, ``conf``;
- ``submission``: ``kind`` (default: ``data.kind``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from core.errors import UserError
from fusion.engine import METHODS
from fusion.settings import INFO_KEYS, FusionSettings, settings_from_mapping

REPO = Path(__file__).resolve().parents[1]

#: the gate rule of the gated fusions when the config names none, and the ``filter`` thresholds
DEFAULT_GATE_MODE = "append"
DEFAULT_FILTER = {"low": 0.1, "high": 0.9}


class PipelineError(UserError):
    """A pipeline config that does not validate, or a step that failed; names the key or the step."""


_TOP = {"work_dir", "data", "models", "gate", "ensemble", "leaderboard", "submission", "cv", "test", "sweep"}
_DATA = {"kind", "synth", "raw", "convert"}
_SYNTH = {"n_images", "seed", "min_size", "max_size", "size", "workers"}
_RAW = {"csv", "labels", "images", "size_table", "class_info"}
_RAW_NEEDS = {"vinbig": ("csv", "images"), "rsna": ("labels", "images")}
_RAW_ONLY = {"vinbig": ("csv", "size_table"), "rsna": ("labels", "class_info")}
_CV = {"folds"}
_TEST = {"synth", "images", "ids", "size_table"}
_SWEEP = {"iou_thr", "skip_box_thr", "gate_modes"}
KINDS = ("vinbig", "rsna")
_CONVERT = {"size", "folds", "val_fold", "annotators", "iou_thr", "workers"}
_LEADERBOARD = {"metric", "examples", "conf"}
_SUBMISSION = {"kind"}


def _check_keys(section: str, data: Any, allowed: set[str], where: str) -> dict:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PipelineError(f"{where}: {section or 'the top level'} must be a mapping, got {data!r}")
    unknown = sorted(set(data) - allowed)
    if unknown:
        name = f"{section}.{unknown[0]}" if section else unknown[0]
        raise PipelineError(f"{where}: unknown key {name!r} (known: {', '.join(sorted(allowed))})")
    return data


@dataclass
class ModelEntry:
    """One model of the pipeline: its config file, the ``key=value`` overrides, and what the config names.

    Attributes:
        config: the model YAML.
        overrides: the ``key=value`` overrides (the entry's ``set``, then the command line's ``--set``).
        name, adapter: the config's ``name`` and ``adapter``.
        resolved: the validated config after the overrides, as a mapping (`adapters.config.ModelConfig.to_dict`).
        files: the files the config names that a training reads: the framework's native model config
            (with a Detectron2 YAML's ``_BASE_`` chain) and the start ``weights``.
        resources: what one of its steps asks a Ray cluster for: ``cpus``, ``gpus``, ``memory_gb``
            (the entry's ``resources``; unset keys take the executor's defaults).
    """

    config: Path
    overrides: list[str] = field(default_factory=list)
    name: str = ""
    adapter: str = ""
    resolved: dict[str, Any] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    resources: dict[str, float] = field(default_factory=dict)


@dataclass
class Pipeline:
    """A validated pipeline config.

    Attributes:
        source: the YAML file.
        work_dir: the folder every step writes under.
        data, leaderboard, submission: those sections, checked, as mappings.
        models: the detectors, in the order of the config.
        gate: the classifier gate, or None.
        methods: the fusion methods to run.
        fusion: the ``ensemble`` section's settings; `fusion_settings` turns them into one fusion's.
        kind: the data's kind, ``vinbig`` or ``rsna``.
        cv_folds: the folds trained (``cv.folds``), or None for one model per detector.
        test: the ``test`` section (unlabelled images), or None.
        sweep: the ``sweep`` section (the grid of the fusion sweep).
    """

    source: Path
    work_dir: Path
    data: dict[str, Any]
    models: list[ModelEntry]
    gate: ModelEntry | None
    methods: tuple[str, ...]
    fusion: FusionSettings
    leaderboard: dict[str, Any]
    submission: dict[str, Any]
    kind: str = "vinbig"
    cv_folds: tuple[int, ...] | None = None
    test: dict[str, Any] | None = None
    sweep: dict[str, Any] = field(default_factory=dict)

    @property
    def coco(self) -> Path:
        return self.work_dir / "coco"

    @property
    def preds(self) -> Path:
        return self.work_dir / "preds"

    @property
    def metric(self) -> str:
        """The headline metric: ``leaderboard.metric``, by default the data kind's own."""
        return self.leaderboard.get("metric", "rsna" if self.kind == "rsna" else "vinbig")

    @property
    def submission_kind(self) -> str:
        return self.submission.get("kind", self.kind)

    @property
    def eval_dataset(self) -> Path:
        """The labelled images that fusions, sweep and leaderboard score on: ``val.json``, or with
        ``cv`` ``oof.json`` (the union of the trained folds' validation sets)."""
        return self.coco / ("oof.json" if self.cv_folds else "val.json")

    @property
    def eval_preds(self) -> Path:
        """The folder of the results on `eval_dataset`: ``preds``, or with ``cv`` ``preds/oof``."""
        return self.preds / "oof" if self.cv_folds else self.preds

    @property
    def coco_test(self) -> Path:
        return self.work_dir / "coco_test"

    @property
    def preds_test(self) -> Path:
        return self.work_dir / "preds_test"

    @property
    def sweeps(self) -> bool:
        """Whether a sweep chooses the fusion settings (with ``cv`` or ``test``)."""
        return bool(self.cv_folds) or self.test is not None

    def row_name(self, name: str) -> str:
        """A leaderboard row's name: ``name`` as it is, or with ``cv`` ``NAME@oof`` (a gated fusion
        ``METHOD@oof+gate``), saying which images it was scored on."""
        if not self.cv_folds:
            return name
        base, gated = (name[: -len("+gate")], True) if name.endswith("+gate") else (name, False)
        return f"{base}@oof" + ("+gate" if gated else "")

    def fusion_settings(self, method: str, gated: bool) -> FusionSettings:
        """The settings of the fusion ``method``, with the gate's rule (``gated``) or without it."""
        if not gated:
            return replace(self.fusion, method=method, gate_mode=None, low=None, high=None)
        mode = self.fusion.gate_mode or DEFAULT_GATE_MODE
        low, high = self.fusion.low, self.fusion.high
        if mode == "filter":
            low = DEFAULT_FILTER["low"] if low is None else low
            high = DEFAULT_FILTER["high"] if high is None else high
        return replace(self.fusion, method=method, gate_mode=mode, low=low, high=high)


#: the lowest value of each integer setting (None: any integer)
_INTS = {
    "data.synth.n_images": 1, "data.synth.seed": None, "data.synth.min_size": 64, "data.synth.max_size": 64,
    "data.synth.workers": 1, "data.synth.size": 64, "test.synth.n_images": 1, "test.synth.seed": None,
    "test.synth.min_size": 64, "test.synth.max_size": 64, "test.synth.size": 64, "test.synth.workers": 1, "data.convert.size": 0, "data.convert.folds": 2, "data.convert.val_fold": 0,
    "data.convert.workers": 0, "leaderboard.examples": 0,
}  # fmt: skip
_CHOICES = {
    "data.convert.annotators": ("wbf", "nms", "raw"),
    "leaderboard.metric": ("vinbig", "coco", "rsna"),
    "submission.kind": KINDS,
}


def _check_values(sections: dict[str, dict], where: str) -> None:
    """Check the types and ranges of the data, leaderboard and submission settings (before any step runs).

    Raises:
        PipelineError: naming the file and the dotted key at fault.
    """
    for section, values in sections.items():
        for key, value in values.items():
            name = f"{section}.{key}"
            if name in _INTS:
                low = _INTS[name]
                if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
                    need = "an integer" + (f" >= {low}" if low is not None else "")
                    raise PipelineError(f"{where}: {name} must be {need}, got {value!r}")
            elif name in _CHOICES:
                if value not in _CHOICES[name]:
                    raise PipelineError(f"{where}: {name} must be one of {', '.join(_CHOICES[name])}, got {value!r}")
            elif name in ("data.convert.iou_thr", "leaderboard.conf"):
                ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                if not ok or (name == "data.convert.iou_thr" and not 0 <= value <= 1):
                    raise PipelineError(f"{where}: {name} must be a number{' in [0, 1]' if 'iou' in name else ''}, got {value!r}")
            elif section in ("data.raw", "test") and key != "synth" and not isinstance(value, str):
                raise PipelineError(f"{where}: {name} must be a path, got {value!r}")
            elif section == "sweep":
                _check_list(name, value, where)
    conv = sections.get("data.convert", {})
    folds, val_fold = conv.get("folds", 5), conv.get("val_fold", 0)
    if not val_fold < folds:
        raise PipelineError(f"{where}: data.convert.val_fold must be below data.convert.folds ({folds}), got {val_fold}")
    for name in ("data.synth", "test.synth"):
        synth = sections.get(name, {})
        if synth.get("min_size", 384) > synth.get("max_size", 512):
            raise PipelineError(f"{where}: {name}.min_size {synth.get('min_size', 384)} is above max_size {synth.get('max_size', 512)}")


def _check_list(name: str, value: Any, where: str) -> None:
    """A ``sweep`` grid entry: a non-empty list of numbers in [0, 1], or (``gate_modes``) of rules."""
    if not isinstance(value, list) or not value:
        raise PipelineError(f"{where}: {name} must be a non-empty list, got {value!r}")
    if name == "sweep.gate_modes":
        from fusion.gate import GATE_MODES

        bad = [v for v in value if v not in (*GATE_MODES, "none")]
        if bad:
            raise PipelineError(f"{where}: {name}: unknown {bad} (known: {', '.join((*GATE_MODES, 'none'))})")
        return
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
            raise PipelineError(f"{where}: {name} must list numbers in [0, 1], got {v!r}")


def _cv_folds(section: Any, n_folds: int, where: str) -> tuple[int, ...] | None:
    """The folds of the ``cv`` section (``folds: all`` or a list), checked against ``data.convert.folds``."""
    cv = _check_keys("cv", section, _CV, where)
    if not cv:
        return None
    folds = cv.get("folds", "all")
    if folds == "all":
        return tuple(range(n_folds))
    if (
        not isinstance(folds, list)
        or not folds
        or not all(isinstance(k, int) and not isinstance(k, bool) for k in folds)
    ):
        raise PipelineError(f"{where}: cv.folds must be 'all' or a non-empty list of fold numbers, got {folds!r}")
    bad = [k for k in folds if not 0 <= k < n_folds]
    if bad:
        raise PipelineError(f"{where}: cv.folds: no fold {bad[0]} (data.convert.folds is {n_folds}: 0..{n_folds - 1})")
    if len(set(folds)) != len(folds):
        raise PipelineError(f"{where}: cv.folds lists a fold twice: {folds}")
    return tuple(sorted(folds))


#: a model entry's ``resources``: the lowest value of each (cpus and memory_gb must be above it)
_RESOURCES = {"cpus": 0, "gpus": 0, "memory_gb": 0}


def _resources(value: Any, where: str, key: str) -> dict[str, float]:
    """A model entry's ``resources`` mapping, checked: ``cpus`` > 0, ``gpus`` >= 0, ``memory_gb`` > 0."""
    res = _check_keys(f"{key}.resources", value, set(_RESOURCES), where)
    for name, v in res.items():
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if not ok or v < 0 or (v == 0 and name != "gpus"):
            need = ">= 0" if name == "gpus" else "> 0"
            raise PipelineError(f"{where}: {key}.resources.{name} must be a number {need}, got {v!r}")
    return {k: float(v) for k, v in res.items()}


def _model_files(model: Any) -> list[Path]:
    """The files a model config names: its native model config (a Detectron2 YAML with its ``_BASE_``
    chain; an Ultralytics built-in name is no file) and its start weights."""
    from adapters.config import ConfigError

    files: list[Path] = []
    path: Path | None = None
    builtin = model.adapter == "ultralytics" and "/" not in model.model and "\\" not in model.model
    if not builtin:  # Ultralytics reads a bare name (yolov8n.yaml) from its own package, as its adapter does
        try:
            path = model.model_path()
        except ConfigError:
            path = None  # a name, not a file (the gate's architecture)
    while path is not None and path not in files:
        files.append(path)
        base = None
        if path.suffix in (".yaml", ".yml"):
            try:
                base = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("_BASE_")
            except (yaml.YAMLError, AttributeError, OSError):
                base = None
        path = (path.parent / base).resolve() if isinstance(base, str) and (path.parent / base).is_file() else None
    if model.weights:
        files.append(Path(model.weights))
    return files


def _entry(item: Any, where: str, key: str, overrides: Sequence[str]) -> ModelEntry:
    if isinstance(item, str):
        item = {"config": item}
    item = _check_keys(key, item, {"config", "set", "resources"}, where)
    if "config" not in item:
        raise PipelineError(f"{where}: {key} needs 'config'")
    cfg = Path(item["config"])
    cfg = cfg if cfg.is_absolute() else REPO / cfg
    if not cfg.is_file():
        raise PipelineError(f"{where}: {key}: config {item['config']} not found")
    sets = item.get("set") or []
    if isinstance(sets, dict):
        sets = [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in sets.items()]
    from adapters.config import load_config

    extra = [*sets, *overrides]
    model = load_config(cfg, extra)
    resources = _resources(item.get("resources"), where, key)
    return ModelEntry(cfg, extra, model.name, model.adapter, model.to_dict(), _model_files(model), resources)


def _ensemble(section: Any, where: str) -> tuple[tuple[str, ...], FusionSettings]:
    """``methods`` and the `FusionSettings` of the ``ensemble`` section."""
    known = ["methods", *(f.name for f in fields(FusionSettings) if f.name != "method")]
    if section is not None and not isinstance(section, dict):
        raise PipelineError(f"{where}: ensemble must be a mapping, got {section!r}")
    ens = section or {}
    if "method" in ens:
        raise PipelineError(f"{where}: ensemble.method: the pipeline runs every fusion in 'methods' (a list)")
    info = sorted(set(ens) & set(INFO_KEYS))
    if info:
        raise PipelineError(f"{where}: unknown key 'ensemble.{info[0]}' (known: {', '.join(sorted(known))})")
    methods = ens.get("methods", list(METHODS))
    if not isinstance(methods, list) or not methods or not all(isinstance(m, str) for m in methods):
        raise PipelineError(f"{where}: ensemble.methods must be a non-empty list of methods, got {methods!r}")
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise PipelineError(f"{where}: ensemble.methods: unknown {bad} (known: {', '.join(METHODS)})")
    if len(set(methods)) != len(methods):
        raise PipelineError(f"{where}: ensemble.methods lists a method twice: {methods}")
    try:
        settings = settings_from_mapping(
            {k: v for k, v in ens.items() if k != "methods"}, f"{where}: ensemble"
        )
    except ValueError as e:
        raise PipelineError(str(e)) from None
    return tuple(methods), settings


def load_pipeline(
    path: str | Path, model_overrides: Sequence[str] = (), work_dir: str | None = None
) -> Pipeline:
    """Read and validate a pipeline YAML; ``model_overrides`` (``key=value``) apply to every model and the gate.

    Raises:
        PipelineError: naming the file and the key at fault (a fusion setting that does not validate
            included).
        adapters.config.ConfigError: for a model or gate config that does not validate.
    """
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: no such pipeline config")
    where = str(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise PipelineError(f"{where}: not valid YAML ({e})") from None
    data = _check_keys("", raw or {}, _TOP, where)
    d = _check_keys("data", data.get("data"), _DATA, where)
    kind = d.get("kind", "vinbig")
    if kind not in KINDS:
        raise PipelineError(f"{where}: data.kind must be one of {', '.join(KINDS)}, got {kind!r}")
    test = _check_keys("test", data.get("test"), _TEST, where) if data.get("test") is not None else None
    sections = {
        "data.synth": _check_keys("data.synth", d.get("synth"), _SYNTH, where),
        "data.raw": _check_keys("data.raw", d.get("raw"), _RAW, where),
        "data.convert": _check_keys("data.convert", d.get("convert"), _CONVERT, where),
        "leaderboard": _check_keys("leaderboard", data.get("leaderboard"), _LEADERBOARD, where),
        "submission": _check_keys("submission", data.get("submission"), _SUBMISSION, where),
        "test": test or {},
        "test.synth": _check_keys("test.synth", (test or {}).get("synth"), _SYNTH, where),
        "sweep": _check_keys("sweep", data.get("sweep"), _SWEEP, where),
    }
    if bool(d.get("synth")) == bool(d.get("raw")):
        raise PipelineError(
            f"{where}: data needs exactly one of 'synth' (generate) or 'raw' ({', '.join(_RAW_NEEDS[kind])})"
        )
    raw = sections["data.raw"]
    if raw:
        missing = [k for k in _RAW_NEEDS[kind] if k not in raw]
        other = [k for k in raw if k not in (*_RAW_ONLY[kind], "images")]
        if missing:
            raise PipelineError(f"{where}: data.raw needs '{missing[0]}' for data.kind {kind}")
        if other:
            raise PipelineError(f"{where}: data.raw.{other[0]} is not a key of data.kind {kind}")
    if test is not None and bool(test.get("synth")) == bool(test.get("images")):
        raise PipelineError(f"{where}: test needs exactly one of 'synth' (generate) or 'images' (a folder)")
    if test is not None and test.get("synth") and set(test) - {"synth"}:
        raise PipelineError(f"{where}: test.{sorted(set(test) - {'synth'})[0]} is for test.images, not test.synth")
    _check_values(sections, where)
    sub_kind = sections["submission"].get("kind", kind)
    if sub_kind != kind:
        raise PipelineError(f"{where}: submission.kind {sub_kind} does not match data.kind {kind}")
    cv_folds = _cv_folds(data.get("cv"), sections["data.convert"].get("folds", 5), where)
    methods, settings = _ensemble(data.get("ensemble"), where)
    models = data.get("models") or []
    if not isinstance(models, list) or not models:
        raise PipelineError(f"{where}: models must be a non-empty list of configs")
    entries = [_entry(m, where, f"models[{k}]", model_overrides) for k, m in enumerate(models)]
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise PipelineError(f"{where}: two models share a name: {names}")
    gate = _entry(data["gate"], where, "gate", model_overrides) if data.get("gate") else None
    wd = Path(work_dir or data.get("work_dir") or "work/pipeline")
    p = Pipeline(
        source=path,
        work_dir=wd,
        data=d,
        models=entries,
        gate=gate,
        methods=methods,
        fusion=settings,
        leaderboard=_check_keys("leaderboard", data.get("leaderboard"), _LEADERBOARD, where),
        submission=_check_keys("submission", data.get("submission"), _SUBMISSION, where),
        kind=kind,
        cv_folds=cv_folds,
        test=test,
        sweep=sections["sweep"],
    )
    for method in methods:
        for gated in (False, True):  # the gate's rule too, even without a gate model: a typo is an error
            try:
                p.fusion_settings(method, gated).validate(len(entries))
            except ValueError as e:
                raise PipelineError(f"{where}: ensemble: {e}") from None
    return p
