"""Box operations on NumPy arrays, in the style of ``torchvision.ops.boxes``: the one place they live.

Boxes are ``xyxy`` (``x1, y1, x2, y2``) unless a name says ``xywh`` (COCO's ``x, y, w, h``), in any
float dtype, with the coordinates in the last axis. Areas are ``(x2 - x1) * (y2 - y1)`` (no ``+1``).

Every IoU in CXRFuse comes from `iou_with_areas`: the metric (pycocotools' arithmetic, with areas
``w * h`` from ``xywh``), the fusion engine (ensemble-boxes' arithmetic, with areas cached per
cluster) and the confusion matrix. They differ only in which areas they pass, so each stays bit-for-bit
equal to its reference library.
"""

from __future__ import annotations

import numpy as np


def box_area(boxes: np.ndarray) -> np.ndarray:
    """``(..., 4)`` xyxy → ``(...)`` areas ``(x2 - x1) * (y2 - y1)``."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def iou_with_areas(a: np.ndarray, area_a: np.ndarray, b: np.ndarray, area_b: np.ndarray) -> np.ndarray:
    """Elementwise IoU of xyxy boxes ``a`` and ``b`` (broadcast over the leading axes), given their areas.

    ``inter / (area_a + area_b - inter)`` with ``inter = max(0, overlap width) * max(0, overlap height)``;
    0 where the boxes do not overlap (also when both have zero area).

    Args:
        a, b: ``(..., 4)`` xyxy boxes whose leading axes broadcast together.
        area_a, area_b: their areas, shaped as ``a[..., 0]`` and ``b[..., 0]``.

    Returns:
        The IoU, shaped as the broadcast leading axes.
    """
    inter, union = _inter_union(a, area_a, b, area_b)
    return np.divide(inter, union, out=np.zeros_like(inter), where=inter > 0)


def iou_above(a: np.ndarray, area_a: np.ndarray, b: np.ndarray, area_b: np.ndarray, thr: float) -> np.ndarray:
    """``iou_with_areas(a, area_a, b, area_b) > thr`` for ``thr >= 0``, bit for bit, without the masked division.

    Where the boxes overlap the quotient is the same float as `iou_with_areas`'; where they do not,
    it is 0 or NaN (two empty boxes), and neither is above a threshold >= 0.
    """
    inter, union = _inter_union(a, area_a, b, area_b)
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter / union > thr


def _inter_union(a: np.ndarray, area_a: np.ndarray, b: np.ndarray, area_b: np.ndarray):
    """The intersection and union areas of xyxy boxes ``a`` and ``b`` (see `iou_with_areas`)."""
    w = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
    h = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
    inter = np.maximum(w, 0) * np.maximum(h, 0)
    return inter, area_a + area_b - inter


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` with every box of ``b``: ``(N, 4)``, ``(M, 4)`` xyxy → ``(N, M)`` float64."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    return iou_with_areas(a[:, None, :], box_area(a)[:, None], b[None, :, :], box_area(b)[None, :])


def box_iou_xywh_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of row-aligned ``xywh`` boxes ``a[i]``, ``b[i]``: ``(P, 4)`` → ``(P,)`` float64.

    pycocotools' ``bbIou`` arithmetic (right edge ``x + w``, area ``w * h``), so results are
    bit-identical to it.
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return iou_with_areas(xywh_to_xyxy(a), a[:, 2] * a[:, 3], xywh_to_xyxy(b), b[:, 2] * b[:, 3])


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """``(..., 4)`` ``x, y, w, h`` → ``x1, y1, x2, y2`` (same dtype; ``x2 = x + w``)."""
    boxes = np.asarray(boxes)
    return np.concatenate([boxes[..., :2], boxes[..., :2] + boxes[..., 2:]], axis=-1)


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """``(..., 4)`` ``x1, y1, x2, y2`` → ``x, y, w, h`` (same dtype; ``w = x2 - x1``)."""
    boxes = np.asarray(boxes)
    return np.concatenate([boxes[..., :2], boxes[..., 2:] - boxes[..., :2]], axis=-1)


def clip_boxes(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    """xyxy boxes clipped to the image ``[0, width] x [0, height]`` (a new array)."""
    boxes = np.array(boxes, copy=True)
    boxes[..., 0::2] = np.clip(boxes[..., 0::2], 0, width)
    boxes[..., 1::2] = np.clip(boxes[..., 1::2], 0, height)
    return boxes


def scale_boxes(boxes: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """xyxy (or xywh) boxes times ``(sx, sy, sx, sy)``, in the boxes' dtype: e.g. dataset → original pixels."""
    boxes = np.asarray(boxes)
    return boxes * np.array([sx, sy, sx, sy], dtype=boxes.dtype if boxes.dtype.kind == "f" else np.float64)


def round_xyxy_as_coco(boxes: np.ndarray, decimals: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """The ``xywh`` values a COCO results file stores for xyxy ``boxes``, and the xyxy boxes read back.

    ``x, y`` and ``w = x2 - x1, h = y2 - y1`` are rounded (float64) to ``decimals``; reading them back
    gives ``x, y, x + w, y + h`` in float32. Both `core.detections.to_coco_results` (writing) and
    `core.detections.Detections.as_written` (the same values without a file) use this, so a result
    scored in memory equals the same result written and read again.

    Returns:
        ``(xywh float64, xyxy float32)``.
    """
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    xywh = np.round(xyxy_to_xywh(b), decimals)
    return xywh, xywh_to_xyxy(xywh).astype(np.float32)
