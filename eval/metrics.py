"""The metrics of the leaderboard: COCO mAP, the VinBigData metric, the RSNA metric.

`coco_map` and `rsna_score` live in `eval.coco_map` and `eval.rsna`; this
module adds `vinbig_map` and re-exports the public API.

VinBigData Chest X-ray Abnormalities Detection scores mAP at IoU 0.4 over 15
classes: the 14 lesion categories 0..13 of the dataset plus class 14 "No
finding". "No finding" is not a detection category of our datasets (a normal
image is an image with no annotations), so `vinbig_map` adds it:

- ground truth: one box ``[0, 0, 1, 1]`` (``xywh`` = ``xyxy`` here) of class 14
  on every dataset image without annotations;
- predictions: the results rows with ``category_id`` 14 if there is any
  (their boxes as given; a submission writes ``14 p 0 0 1 1``), otherwise, if
  ``gate_scores`` is given, one box ``[0, 0, 1, 1]`` of class 14 per image in it
  with score ``P(normal)`` (``1 - p_abnormal`` of the gate). Images absent from
  ``gate_scores`` get no "No finding" prediction.

Every rule of `eval.coco_map` applies (greedy matching, 101-point
interpolation, classes without ground truth left out of the mean), with no
detection cap unless ``max_dets`` is given.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from core.detections import Detections
from eval.coco_map import (
    COCO_IOU_THRESHOLDS,
    RECALL_THRESHOLDS,
    DetTable,
    GtTable,
    MapResult,
    PrCurve,
    coco_map,
    evaluate_tables,
    lookup_ids,
    parse_gt,
    parse_results,
)
from eval.rsna import RSNA_IOU_THRESHOLDS, rsna_per_image, rsna_score

__all__ = [
    "COCO_IOU_THRESHOLDS",
    "NO_FINDING",
    "RECALL_THRESHOLDS",
    "RSNA_IOU_THRESHOLDS",
    "MapResult",
    "PrCurve",
    "coco_map",
    "rsna_per_image",
    "rsna_score",
    "vinbig_map",
]

#: VinBigData's class id of "No finding".
NO_FINDING = 14
_WHOLE = np.array([0.0, 0.0, 1.0, 1.0])


def vinbig_map(
    gt: Mapping,
    results: Sequence[Mapping] | Mapping[int, Detections],
    gate_scores: Mapping[int, float] | None = None,
    iou_thr: float = 0.4,
    max_dets: int | None = None,
) -> MapResult:
    """The VinBigData metric: mAP at ``iou_thr`` over classes 0..14 (see the module docstring).

    Args:
        gt: VinBigData COCO dataset dict (lesion categories 0..13; normal
            images have no annotations). Not modified.
        results: COCO results list or ``{image_id: Detections}``; may hold
            class-14 rows. Not modified.
        gate_scores: ``{image_id: P(normal)}`` in ``[0, 1]``, used only when
            ``results`` has no class-14 row.
        iou_thr: the IoU threshold (the competition's is 0.4).
        max_dets: cap per (image, category) as `coco_map`; None keeps all.

    Returns:
        `MapResult` with one IoU threshold; ``per_class`` includes 14 when the
        dataset has a normal image.

    Raises:
        ValueError: if a dataset annotation has category 14, ``gate_scores``
            names images absent from the dataset or holds values outside
            ``[0, 1]``, or as `eval.coco_map.coco_map` (unknown ids, malformed entries).
    """
    table = parse_gt(gt, extra_category_ids=(NO_FINDING,))
    k14 = int(np.searchsorted(table.category_ids, NO_FINDING))
    if (table.category == k14).any():
        bad = gt["annotations"][int(np.flatnonzero(table.category == k14)[0])]
        raise ValueError(
            f"the dataset has class {NO_FINDING} ('No finding') annotations, e.g. {bad!r}; "
            "a normal image must have no annotations"
        )
    normal = np.setdiff1d(np.arange(len(table.image_ids)), table.image)
    table = GtTable(
        table.image_ids,
        table.category_ids,
        np.concatenate([table.image, normal]),
        np.concatenate([table.category, np.full(len(normal), k14, np.int64)]),
        np.concatenate([table.boxes, np.tile(_WHOLE, (len(normal), 1))]),
    )
    dt = parse_results(results, table)
    if gate_scores is not None and not (dt.category == k14).any():
        ids = np.fromiter((int(i) for i in gate_scores), np.int64, count=len(gate_scores))
        p = np.fromiter((float(v) for v in gate_scores.values()), np.float64, count=len(gate_scores))
        bad = ~np.isfinite(p) | (p < 0) | (p > 1)
        if bad.any():
            raise ValueError(f"gate_scores must be P(normal) in [0, 1]; images {_ids(ids[bad])} are not")
        idx = lookup_ids(table.image_ids, ids, "image ids", "gate_scores")
        dt = DetTable(
            np.concatenate([dt.image, idx]),
            np.concatenate([dt.category, np.full(len(ids), k14, np.int64)]),
            np.concatenate([dt.boxes, np.tile(_WHOLE, (len(ids), 1))]),
            np.concatenate([dt.scores, p]),
        )
    if not math.isfinite(iou_thr):
        raise ValueError(f"iou_thr must be finite, got {iou_thr}")
    return evaluate_tables(table, dt, (float(iou_thr),), max_dets)


def _ids(ids: np.ndarray, n: int = 5) -> str:
    vals = ids.tolist()
    return f"{vals[:n]}" + (f" and {len(vals) - n} more" if len(vals) > n else "")
