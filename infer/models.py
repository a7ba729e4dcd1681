"""A bundle's models, loaded once, predicting decoded images as the pipeline's steps would (`Ensemble`).

Each model predicts through its adapter (`adapters.build`, ``predict``) in its config's batches, as
``python -m adapters predict`` does; its boxes then go through the rounding of a results file
(`core.detections.Detections.as_written`) and the gate's scores through that of a gate file (6
decimals), because the pipeline's fusion step reads them from those files. The fusion and the gate's
rule are `ensemble.run.fuse_and_gate`, the function behind ``python -m ensemble run``, and the
fused boxes are rounded as its results file is. So a bundle gives, box for box, what the pipeline's
own steps give for the same images.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from adapters.tta import check_tta, predict_tta
from core.classes import coco_categories
from core.coco import CocoDataset
from core.detections import Detections
from infer.bundle import Bundle, InferError, Member

logger = logging.getLogger(__name__)

#: p_abnormal decimals of a gate file (`core.predictions.write_gate`)
GATE_DECIMALS = 6


def _overrides(device: str | None) -> list[str]:
    return [f"device={device}"] if device else []


class Ensemble:
    """The models of a bundle, ready to predict.

    Args:
        bundle: a loaded bundle.
        device: ``auto``, ``cpu``, ``cuda`` (or ``cuda:N``) for every model; None keeps each config's.
        batch_size: images per forward pass for every model; None keeps each config's
            ``predict.batch_size`` (the pipeline's batches, so its results are reproduced exactly).

    Raises:
        adapters.config.ConfigError: a model config of the bundle that does not validate.
        adapters.base.AdapterError: a model the adapter refuses, or weights trained for other classes
            than the bundle's.
    """

    def __init__(self, bundle: Bundle, device: str | None = None, batch_size: int | None = None) -> None:
        import adapters

        if batch_size is not None and batch_size < 1:
            raise InferError(f"batch size must be >= 1, got {batch_size}")
        self.bundle = bundle
        self.batch_size = batch_size
        self.detectors: list[tuple[Member, Any, int]] = []
        self.tta: dict[str, tuple[list[str], float]] = {}
        for m in bundle.models:
            cfg = m.model_config(_overrides(device))
            model = adapters.build(cfg, m.weights)
            self.detectors.append((m, model, batch_size or cfg.predict.batch_size))
            self.tta[m.name] = (check_tta(cfg.predict.tta), cfg.predict.tta_iou)  # as `adapters predict` does
        self.gate: tuple[Member, Any, int] | None = None
        if bundle.gate is not None and bundle.gate_mode is not None:
            cfg = bundle.gate.model_config(_overrides(device))
            self.gate = (bundle.gate, adapters.build(cfg, bundle.gate.weights), batch_size or cfg.predict.batch_size)
        self.categories = coco_categories(bundle.classes)
        # weights trained for other classes than the bundle says are refused before any image is read
        probe = CocoDataset([], [], self.categories)
        for _, model, _ in [*self.detectors, *([self.gate] if self.gate else [])]:
            model.check_categories(probe)

    @property
    def chunk(self) -> int:
        """Images per `predict` call that keep every model's batches those of one long run (>= 32)."""
        lcm = 1
        for _, _, bs in [*self.detectors, *([self.gate] if self.gate else [])]:
            lcm = lcm * bs // math.gcd(lcm, bs)
        return lcm * max(1, math.ceil(32 / lcm))

    def dataset(self, images: Sequence[dict[str, Any]]) -> CocoDataset:
        """An in-memory COCO dataset of ``images`` (``id``, ``file_name``, sizes, ``source_id``), no boxes."""
        return CocoDataset(list(images), [], self.categories)

    def predict(
        self, dataset: CocoDataset, arrays: Sequence[np.ndarray]
    ) -> tuple[dict[int, Detections], dict[int, float] | None]:
        """Fused (and gated) detections of ``arrays``, the images of ``dataset`` in its order.

        Returns:
            ``(image_id → Detections in the images' pixels, rounded as a results file; image_id →
            p_abnormal or None without a gate)``.

        Raises:
            adapters.base.AdapterError: a model fails on the images.
            ValueError: the fusion refuses the boxes (`ensemble.run.fuse_and_gate`).
        """
        from ensemble.inputs import Inputs
        from ensemble.run import fuse_and_gate
        from fusion.gate import apply_gate

        ids = dataset.image_ids
        if len(ids) != len(arrays):
            raise ValueError(f"{len(arrays)} images for {len(ids)} dataset entries")
        per_model = []
        for m, model, bs in self.detectors:
            modes, iou = self.tta[m.name]
            stream = predict_tta(model, list(arrays), bs, modes, iou) if modes else model.predict(list(arrays), bs)
            outputs = list(stream)
            per_model.append({i: d.as_written() for i, d in zip(ids, outputs, strict=True)})
            logger.debug("%s: %d boxes on %d images", m.name, sum(len(d) for d in outputs), len(ids))
        p_abnormal = class_probs = None
        if self.gate is not None:
            _, gate, bs = self.gate
            scores = list(gate.predict(list(arrays), bs))
            to_probs = getattr(gate, "class_probs", None)
            if to_probs is None:
                p_abnormal = {i: round(float(p), GATE_DECIMALS) for i, p in zip(ids, scores, strict=True)}
            else:  # as the classifier's predictions file holds them (`core.class_probs.write_class_probs`)
                cp = to_probs(ids, scores)
                p_abnormal = dict(
                    zip(cp.image_ids.tolist(), np.round(cp.abnormal_scores(), GATE_DECIMALS).tolist(), strict=True)
                )
                class_probs = replace(cp, probs=np.round(cp.probs, GATE_DECIMALS))
        settings = self.bundle.settings
        if settings is not None:
            inputs = Inputs(
                dataset=dataset,
                paths=tuple(m.weights for m in self.bundle.models),
                names=tuple(m.name for m in self.bundle.models),
                per_model=tuple(per_model),
                gate=p_abnormal if settings.gate_mode is not None else None,
                gate_path=self.bundle.gate.weights if self.bundle.gate is not None else None,
                class_probs=class_probs if settings.gate_mode is not None else None,
            )
            fused = fuse_and_gate(inputs, settings)
        else:
            fused = per_model[0]
            if p_abnormal is not None:
                fused = apply_gate(fused, p_abnormal, "append")
        return {i: fused[i].as_written() for i in ids}, p_abnormal
