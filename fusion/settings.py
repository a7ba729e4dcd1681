"""One fusion's settings (`FusionSettings`) and the YAML file a sweep writes and ``run --config`` reads.

A settings file is a YAML mapping of `FusionSettings` fields (``method``, ``weights``, ``iou_thr``,
``skip_box_thr``, ``conf_type``, ``sigma``, ``soft_method``, ``soft_score_thr``, ``gate_mode``,
``low``, ``high``) plus, for information, the keys in ``INFO_KEYS`` (``inputs``: the model names the
weights belong to, in order; ``metric`` and ``score`` of the sweep; ``dataset``; ``gate``). Any other
key is an error with a did-you-mean.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from core.io import atomic_open
from fusion.gate import GATE_MODES, check_gate_options

METHODS = ("wbf", "nms", "soft-nms", "nmw")
CONF_TYPES = ("avg", "max", "box_and_model_avg", "absent_model_aware_avg")
SOFT_METHODS = ("gaussian", "linear")

INFO_KEYS = ("inputs", "metric", "score", "dataset", "gate", "created")
_FLOATS = ("iou_thr", "skip_box_thr", "sigma", "soft_score_thr", "low", "high")
_STRINGS = ("method", "conf_type", "soft_method", "gate_mode")


def _opt(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    """A settings field whose ``metadata`` carries its command-line help (read by ``python -m ensemble``)."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class FusionSettings:
    """How to fuse: the options of `fusion.engine.fuse` and the gate's rule. The one place they are spelled.

    ``python -m ensemble run`` makes one flag per field (``iou_thr`` → ``--iou-thr``) from the field's
    metadata, the sweep writes one CSV column per field, the pipeline reads its ``ensemble:`` section
    with `settings_from_mapping`, and ``run --config`` reads the YAML `write_settings` writes.

    Attributes:
        method: ``wbf``, ``nms``, ``soft-nms`` or ``nmw``.
        weights: one positive weight per model, in the order of the inputs; None for all 1.
        iou_thr, skip_box_thr, conf_type, sigma, soft_method, soft_score_thr: as `fusion.engine.fuse`.
        gate_mode: ``append``, ``filter``, ``rescale`` or ``rescore`` (`fusion.gate`; ``rescore`` needs a
            classifier with per-class probabilities); None for no gate.
        low, high: the ``filter`` thresholds on ``p_abnormal``; None otherwise.
    """

    method: str = _opt("wbf", "fusion method", METHODS)
    weights: tuple[float, ...] | None = _opt(
        None, "one positive weight per --preds file, e.g. 2,1,1 or 2 1 1 (default all 1)"
    )
    iou_thr: float = _opt(0.55, "IoU in [0, 1] above which same-class boxes match")
    skip_box_thr: float = _opt(0.0, "boxes scoring below this are dropped before fusing")
    conf_type: str = _opt("avg", "WBF's fused score", CONF_TYPES)
    sigma: float = _opt(0.5, "Soft-NMS gaussian sigma > 0")
    soft_method: str = _opt("gaussian", "Soft-NMS score decay", SOFT_METHODS)
    soft_score_thr: float = _opt(0.001, "Soft-NMS keeps boxes whose decayed score is above this")
    gate_mode: str | None = _opt(
        None, "how the gate meets the boxes; needs --gate (rescore: a per-class classifier's file)", GATE_MODES
    )
    low: float | None = _opt(None, "filter: p_abnormal below this keeps only 'No finding'")
    high: float | None = _opt(None, "filter: p_abnormal above this keeps boxes only")

    def validate(self, n_models: int | None = None) -> FusionSettings:
        """Check every value; with ``n_models``, also that ``weights`` has one weight per model.

        Returns:
            ``self``, for chaining.

        Raises:
            ValueError: naming the bad value.
        """
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; known: {', '.join(METHODS)}")
        if self.conf_type not in CONF_TYPES:
            raise ValueError(f"unknown conf_type {self.conf_type!r}; known: {', '.join(CONF_TYPES)}")
        if self.soft_method not in SOFT_METHODS:
            raise ValueError(f"unknown soft_method {self.soft_method!r}; known: {', '.join(SOFT_METHODS)}")
        if not 0.0 <= self.iou_thr <= 1.0:
            raise ValueError(f"iou_thr must be in [0, 1], got {self.iou_thr!r}")
        if not np.isfinite(self.skip_box_thr):
            raise ValueError(f"skip_box_thr must be finite, got {self.skip_box_thr!r}")
        if not (np.isfinite(self.sigma) and self.sigma > 0):
            raise ValueError(f"sigma must be > 0, got {self.sigma!r}")
        if not np.isfinite(self.soft_score_thr):
            raise ValueError(f"soft_score_thr must be finite, got {self.soft_score_thr!r}")
        if n_models is not None and n_models == 0:
            raise ValueError("need detections of at least one model, got none")
        if self.weights is not None and n_models is not None and len(self.weights) != n_models:
            raise ValueError(
                f"got {len(self.weights)} weights {list(self.weights)} for {n_models} prediction files"
            )
        self.model_weights(n_models if n_models is not None else len(self.weights or (1,)))
        if self.gate_mode is not None:
            check_gate_options(self.gate_mode, self.low, self.high)
        elif self.low is not None or self.high is not None:
            raise ValueError("low/high thresholds given without a gate mode")
        return self

    def model_weights(self, n_models: int) -> np.ndarray:
        """``(n_models,)`` float64 weights (all 1 when ``weights`` is None).

        Raises:
            ValueError: for a ``weights`` whose length is not ``n_models`` or a weight that is not > 0.
        """
        if self.weights is None:
            return np.ones(n_models)
        w = np.array(self.weights, dtype=np.float64).reshape(-1)
        if len(w) != n_models:
            raise ValueError(f"got {len(w)} weights {list(self.weights)} for {n_models} models")
        if not (np.isfinite(w).all() and (w > 0).all()):
            raise ValueError(f"weights must be finite and > 0, got {list(self.weights)}")
        return w

    def fusion_options(self) -> dict[str, Any]:
        """The keyword arguments of `fusion.engine.fuse_many`."""
        d = asdict(self)
        for k in ("gate_mode", "low", "high"):
            d.pop(k)
        d["weights"] = list(self.weights) if self.weights is not None else None
        return d

    def gate_options(self) -> dict[str, Any] | None:
        """``{mode, low, high}`` for `fusion.gate.apply_gate`, or None without a gate."""
        if self.gate_mode is None:
            return None
        return {"mode": self.gate_mode, "low": self.low, "high": self.high}

    def to_dict(self) -> dict[str, Any]:
        """Plain values (weights as a list), for JSON and YAML."""
        d = asdict(self)
        d["weights"] = list(self.weights) if self.weights is not None else None
        return d


def settings_from_mapping(values: Mapping[str, Any], where: str = "settings") -> FusionSettings:
    """`FusionSettings` from a mapping of its fields (``INFO_KEYS`` are ignored).

    Raises:
        ValueError: naming ``where`` and the key, for an unknown key (with a did-you-mean) or a value
            of the wrong type.
    """
    known = [f.name for f in fields(FusionSettings)]
    kw: dict[str, Any] = {}
    for key, value in values.items():
        if key in INFO_KEYS:
            continue
        if key not in known:
            close = difflib.get_close_matches(str(key), known + list(INFO_KEYS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
            raise ValueError(f"{where}: unknown key {key!r}{hint}")
        if value is None:
            kw[key] = None
        elif key in _FLOATS:
            kw[key] = _number(value, where, key)
        elif key in _STRINGS:
            if not isinstance(value, str):
                raise ValueError(f"{where}: {key} must be a string, got {value!r}")
            kw[key] = value
        else:  # weights
            if not isinstance(value, Sequence) or isinstance(value, str) or not value:
                raise ValueError(f"{where}: weights must be a non-empty list of numbers, got {value!r}")
            kw[key] = tuple(_number(v, where, key) for v in value)
    return FusionSettings(**kw)


def merge(base: FusionSettings, overrides: Mapping[str, Any]) -> FusionSettings:
    """``base`` with the non-None ``overrides``; a new ``gate_mode`` drops the base's ``low``/``high``."""
    given = {k: v for k, v in overrides.items() if v is not None}
    if "gate_mode" in given and given["gate_mode"] != base.gate_mode:
        base = replace(base, low=None, high=None)
    if "weights" in given:
        given["weights"] = tuple(float(w) for w in given["weights"])
    return replace(base, **given)


def read_settings(path: str | Path) -> tuple[FusionSettings, dict[str, Any]]:
    """Read a settings YAML file.

    Returns:
        ``(settings, info)``: `FusionSettings` (not yet validated against a number of models) and the
        file's ``INFO_KEYS`` entries.

    Raises:
        FileNotFoundError: if the file is missing.
        ValueError: naming the file, for YAML that is not a mapping, an unknown key or a bad value.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with open(path, encoding="utf-8") as f:
            values = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a YAML mapping of fusion settings, got {type(values).__name__}")
    settings = settings_from_mapping(values, str(path))
    return settings, {k: values[k] for k in INFO_KEYS if k in values}


def write_settings(path: str | Path, settings: FusionSettings, info: Mapping[str, Any]) -> Path:
    """Write ``settings`` and ``info`` (keys of ``INFO_KEYS``) as YAML atomically."""
    import yaml

    bad = sorted(set(info) - set(INFO_KEYS))
    if bad:
        raise ValueError(f"unknown info keys {bad}; known: {', '.join(INFO_KEYS)}")
    doc = {**settings.to_dict(), **info}
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write("# fusion settings: python -m ensemble run --config THIS_FILE (CLI flags override)\n")
        yaml.safe_dump(doc, f, sort_keys=False)
    return Path(path)


def _number(value: Any, where: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where}: {key} must be a finite number, got {value!r}")
    return float(value)
