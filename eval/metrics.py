"""The metrics of the leaderboard: COCO mAP, the VinBigData metric, the RSNA metric.

`coco_map` and `rsna_score` live in `eval.coco_map` and `eval.rsna`; this
module adds `vinbig_map` and re-exports the public API.

VinBigData Chest X-ray Abnormalities Detection scores mAP at IoU 0.4 over 15
classes: the 14 lesion categories 0..13 of the dataset plus class 14 "No
finding". "No finding" is not a detection category of our datasets (a normal
image is an image with no annotations), so `vinbig_map` adds it:

- ground truth: one box ``[0, 0, 1, 1]`` (``xywh`` = ``xyxy`` here) of class 14
  on every dataset image without annotations;
- predictions: the results rows with ``category_id`` 14, as given (a gated
  fusion writes one ``[0, 0, 1, 1]`` row per image scored P(normal), and
  `fusion.gate.with_no_finding` adds such a row from a gate score; a
  submission writes ``14 p 0 0 1 1``). Results without class-14 rows score AP 0
  for "No finding" on a dataset with normal images.

Every rule of `eval.coco_map` applies (greedy matching, 101-point
interpolation, classes without ground truth left out of the mean), with no
detection cap unless ``max_dets`` is given.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from core.classes import NO_FINDING
from core.detections import Detections
from eval.coco_map import (
    COCO_IOU_THRESHOLDS,
    RECALL_THRESHOLDS,
    GtTable,
    MapResult,
    PrCurve,
    coco_map,
    evaluate_tables,
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
    "vinbig_gt_table",
    "vinbig_map",
]

_WHOLE = np.array([0.0, 0.0, 1.0, 1.0])


def vinbig_map(
    gt: Mapping,
    results: Sequence[Mapping] | Mapping[int, Detections],
    iou_thr: float = 0.4,
    max_dets: int | None = None,
) -> MapResult:
    """The VinBigData metric: mAP at ``iou_thr`` over classes 0..14 (see the module docstring).

    Args:
        gt: VinBigData COCO dataset dict (lesion categories 0..13; normal
            images have no annotations). Not modified.
        results: COCO results list or ``{image_id: Detections}``; may hold
            class-14 rows. Not modified.
        iou_thr: the IoU threshold (the competition's is 0.4).
        max_dets: cap per (image, category) as `coco_map`; None keeps all.

    Returns:
        `MapResult` with one IoU threshold; ``per_class`` includes 14 when the
        dataset has a normal image.

    Raises:
        ValueError: if a dataset annotation has category 14, or as
            `eval.coco_map.coco_map` (unknown ids, malformed entries).
    """
    if not math.isfinite(iou_thr):
        raise ValueError(f"iou_thr must be finite, got {iou_thr}")
    table = vinbig_gt_table(gt)
    return evaluate_tables(table, parse_results(results, table), (float(iou_thr),), max_dets)


def vinbig_gt_table(gt: Mapping) -> GtTable:
    """The VinBigData metric's ground truth: the dataset's boxes plus a "No finding" box on every normal image.

    Raises:
        ValueError: if a dataset annotation has category 14 (a normal image must have none).
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
    return table
