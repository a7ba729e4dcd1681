"""Framework adapters behind one train/predict interface.

Each framework is imported only inside its own module, and only when used: this
package's import pulls in no framework. Adding a framework means one module, one
line in `ADAPTERS` and one config under ``configs/``.
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
    "resnet_gate": "adapters.resnet_gate:ResNetGate",
}


def adapter_class(name: str) -> type:
    """The adapter class registered as ``name`` (imports its module, and so its framework)."""
    if name not in ADAPTERS:
        raise KeyError(f"unknown adapter {name!r}; known: {', '.join(sorted(ADAPTERS))}")
    module, cls = ADAPTERS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build(cfg: Any, weights: str | Path | None = None) -> Any:
    """An adapter instance for a `adapters.config.ModelConfig`, optionally with weights to predict from."""
    return adapter_class(cfg.adapter)(cfg, weights)
