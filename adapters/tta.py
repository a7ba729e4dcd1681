"""Test-time augmentation for any detector: predict the horizontally flipped image as well, flip its
boxes back, and fuse the two passes with WBF.

Done here once, on the `adapters.base.Detector` interface (a detector's ``predict`` takes image
arrays as well as paths), so every framework gets it: ``predict.tta: [hflip]`` in a model config or
``--tta hflip`` on ``python -m adapters predict``. A box ``(x1, y1, x2, y2)`` of the flipped image
of width ``W`` is ``(W - x2, y1, W - x1, y2)`` in the original. The two passes are fused per class
with `fusion.engine.fuse` (``method="wbf"``, IoU ``predict.tta_iou``, scores averaged over the two
passes: a box only one pass found keeps half its score), as the winning VinBigData teams fused
their flip TTA.

Nothing here imports a training framework.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from adapters.base import batched, read_image_bgr
from adapters.errors import AdapterError
from core.detections import Detections
from fusion.engine import fuse

#: The augmentations `predict_tta` knows.
TTA_MODES: tuple[str, ...] = ("hflip",)


def check_tta(modes: Sequence[str]) -> list[str]:
    """``modes`` as a list, each known and given once.

    Raises:
        AdapterError: naming an unknown or repeated mode.
    """
    out: list[str] = []
    for m in modes:
        if m not in TTA_MODES:
            raise AdapterError(f"unknown test-time augmentation {m!r}; known: {', '.join(TTA_MODES)}")
        if m in out:
            raise AdapterError(f"test-time augmentation {m!r} is given twice")
        out.append(m)
    return out


def hflip_boxes(boxes: np.ndarray, width: float) -> np.ndarray:
    """``(N, 4)`` ``xyxy`` boxes of a horizontally flipped image of ``width`` pixels, in the original's frame."""
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    out = b.copy()
    out[:, 0] = width - b[:, 2]
    out[:, 2] = width - b[:, 0]
    return out


def hflip_detections(dets: Detections, width: float) -> Detections:
    """``dets`` of a horizontally flipped image mapped back to the original (`hflip_boxes`)."""
    if not len(dets):
        return dets
    return Detections(hflip_boxes(dets.boxes, width), dets.scores, dets.labels)


def predict_tta(
    model: object,
    images: Iterable[Path | np.ndarray],
    batch_size: int,
    modes: Sequence[str] = ("hflip",),
    iou_thr: float = 0.55,
) -> Iterator[Detections]:
    """``model.predict`` of every image with test-time augmentation, in order.

    Each batch is read once; the model predicts the images as they are and each augmented copy,
    the augmented boxes are mapped back, and the passes are fused with WBF at ``iou_thr``.

    Args:
        model: a `adapters.base.Detector`.
        images: paths or ``(H, W, 3)`` BGR arrays.
        batch_size: images per forward pass.
        modes: augmentations of `TTA_MODES`; none gives ``model.predict`` as it is.
        iou_thr: the WBF IoU that matches a box of one pass with a box of another.

    Raises:
        AdapterError: for an unknown mode, or an image that cannot be read.
    """
    modes = check_tta(modes)
    if not modes:
        yield from model.predict(images, batch_size)
        return
    for batch in batched(images, batch_size):
        arrays = [read_image_bgr(im) for im in batch]
        passes = [list(model.predict(arrays, batch_size))]
        if "hflip" in modes:
            flipped = [np.ascontiguousarray(a[:, ::-1]) for a in arrays]
            out = model.predict(flipped, batch_size)
            passes.append([hflip_detections(d, a.shape[1]) for d, a in zip(out, arrays, strict=True)])
        for k, arr in enumerate(arrays):
            h, w = arr.shape[:2]
            yield fuse([p[k] for p in passes], w, h, method="wbf", iou_thr=iou_thr)
