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
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from core.io import atomic_open
from fusion.engine import _check_options
from fusion.gate import check_gate_options

INFO_KEYS = ("inputs", "metric", "score", "dataset", "gate", "created")
_FLOATS = ("iou_thr", "skip_box_thr", "sigma", "soft_score_thr", "low", "high")
_STRINGS = ("method", "conf_type", "soft_method", "gate_mode")


@dataclass(frozen=True)
class FusionSettings:
    """How to fuse: the options of `fusion.engine.fuse` and the gate's rule.

    Attributes:
        method: ``wbf``, ``nms``, ``soft-nms`` or ``nmw``.
        weights: one positive weight per model, in the order of the inputs; None for all 1.
        iou_thr, skip_box_thr, conf_type, sigma, soft_method, soft_score_thr: as `fusion.engine.fuse`.
        gate_mode: ``append``, ``filter`` or ``rescale`` (`fusion.gate`); None for no gate.
        low, high: the ``filter`` thresholds on ``p_abnormal``; None otherwise.
    """

    method: str = "wbf"
    weights: tuple[float, ...] | None = None
    iou_thr: float = 0.55
    skip_box_thr: float = 0.0
    conf_type: str = "avg"
    sigma: float = 0.5
    soft_method: str = "gaussian"
    soft_score_thr: float = 0.001
    gate_mode: str | None = None
    low: float | None = None
    high: float | None = None

    def validate(self, n_models: int | None = None) -> FusionSettings:
        """Check every value; with ``n_models``, also that ``weights`` has one weight per model.

        Returns:
            ``self``, for chaining.

        Raises:
            ValueError: naming the bad value.
        """
        n = n_models if n_models is not None else (len(self.weights) if self.weights else 1)
        if self.weights is not None and n_models is not None and len(self.weights) != n_models:
            raise ValueError(
                f"got {len(self.weights)} weights {list(self.weights)} for {n_models} prediction files"
            )
        _check_options(
            self.method,
            self.conf_type,
            self.soft_method,
            self.iou_thr,
            self.skip_box_thr,
            self.sigma,
            self.soft_score_thr,
            self.weights,
            n,
        )
        if self.gate_mode is not None:
            check_gate_options(self.gate_mode, self.low, self.high)
        elif self.low is not None or self.high is not None:
            raise ValueError("low/high thresholds given without a gate mode")
        return self

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
