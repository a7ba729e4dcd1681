"""Framework adapters behind one train/predict interface.

Each framework is imported only inside its own module, and only when used: this
package's import pulls in no framework. Adding a framework means one module, one
line in `ADAPTERS` and one config under ``configs/``.

The verbs of ``python -m adapters`` are library functions of the same names,
`adapters.train` and `adapters.predict` (defined in `adapters.api`, imported on first use).
A model is a `adapters.base.Detector` (boxes) or a `adapters.base.Classifier` (the gate's
``p_abnormal``); every failure a user can fix is an `adapters.base.AdapterError` or an
`adapters.config.ConfigError`, both `core.errors.UserError`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

#: adapter name → ``module:Class``
ADAPTERS: dict[str, str] = {
    "ultralytics": "adapters.ultralytics:UltralyticsDetector",
    "detectron2": "adapters.detectron2:Detectron2Detector",
    "mmdet": "adapters.mmdet:MMDetDetector",
    "resnet_gate": "adapters.gate:ResNetGate",
}

#: library verbs, imported from `adapters.api` on first use (``import adapters`` stays cheap)
_API = ("train", "predict")

__all__ = ["ADAPTERS", "adapter_class", "build", *_API]


def adapter_class(name: str) -> type:
    """The adapter class registered as ``name`` (imports its module, and so its framework).

    Raises:
        KeyError: ``name`` is not in `ADAPTERS` (configs are checked against it on load).
    """
    if name not in ADAPTERS:
        raise KeyError(f"unknown adapter {name!r}; known: {', '.join(sorted(ADAPTERS))}")
    module, cls = ADAPTERS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build(cfg: Any, weights: str | Path | None = None) -> Any:
    """An adapter instance for a `adapters.config.ModelConfig`, optionally with weights to predict from.

    Raises:
        AdapterError: the adapter refuses the config (e.g. an unknown architecture or option).
    """
    return adapter_class(cfg.adapter)(cfg, weights)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module("adapters.api"), name)
    raise AttributeError(f"module 'adapters' has no attribute {name!r}")
