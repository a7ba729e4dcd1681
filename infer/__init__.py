"""A trained ensemble as one folder, and that folder run on new images: ``python -m infer``.

`infer.export` turns a finished pipeline run into a bundle folder (`infer.bundle`: each model's
config and weights, the gate, the fusion settings, the class list, the image preprocessing and the
versions, with every file's SHA-256); `infer.predict` runs a bundle on new DICOM or PNG/JPEG files
and writes the fused boxes in original pixels as JSON, a Kaggle CSV, overlay PNGs (`infer.overlay`)
and DICOM Structured Reports (`infer.sr`). Both are defined in `infer.api` and imported on first use,
so ``import infer`` pulls in no framework. The top floor: it may import every other package.
"""

from __future__ import annotations

import importlib
from typing import Any

#: library verbs, imported from `infer.api` on first use
_API = ("export", "predict")

__all__ = list(_API)


def __getattr__(name: str) -> Any:
    if name == "export":  # the library function of `python -m infer export`
        return importlib.import_module("infer.bundle").export_bundle
    if name in _API:
        return getattr(importlib.import_module("infer.api"), name)
    raise AttributeError(f"module 'infer' has no attribute {name!r}")
