"""The RSNA Pneumonia Detection Challenge metric, vectorised with NumPy.

Per image and IoU threshold ``t`` in ``0.40, 0.45, ..., 0.75``: predictions
with ``score >= score_thr`` are visited by descending score (ties: results
order) and each is matched to the unmatched ground-truth box of highest IoU
with ``IoU > t`` (strictly greater, as the challenge's description says; on
equal IoU the later ground truth). Then ``TP / (TP + FP + FN)``, averaged over
the 8 thresholds, is the image's score. An image with no ground truth and any
prediction scores 0; an image with neither is skipped. The metric is the mean
over the remaining images of the dataset.

Boxes are COCO ``[x, y, w, h]`` in pixels; IoU uses areas ``w * h`` (no ``+1``).
The metric is class-agnostic: every category counts as "Lung Opacity".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from core.detections import Detections
from eval.coco_map import greedy_match, parse_gt, parse_results, rank_within_groups

#: The challenge's IoU thresholds: 0.40, 0.45, ..., 0.75.
RSNA_IOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.40 + 0.05 * i, 2) for i in range(8))


def rsna_per_image(
    gt: Mapping, results: Sequence[Mapping] | Mapping[int, Detections], score_thr: float = 0.0
) -> dict[int, float]:
    """``{image_id: score}`` for every dataset image that is not skipped (see the module docstring).

    Raises:
        ValueError: as `eval.coco_map.coco_map` for unknown ids or malformed
            entries, or if ``score_thr`` is not finite.
    """
    if not math.isfinite(score_thr):
        raise ValueError(f"score_thr must be finite, got {score_thr}")
    table = parse_gt(gt)
    dt = parse_results(results, table)
    keep = np.flatnonzero(dt.scores >= score_thr)
    d_img, d_boxes, d_scores = dt.image[keep], dt.boxes[keep], dt.scores[keep]
    thrs = np.asarray(RSNA_IOU_THRESHOLDS)
    matched = greedy_match(
        d_img, rank_within_groups(d_img, d_scores), d_boxes, table.image, table.boxes, thrs, strict=True
    )
    n_img = len(table.image_ids)
    n_pred = np.bincount(d_img, minlength=n_img).astype(np.float64)
    n_gt = np.bincount(table.image, minlength=n_img).astype(np.float64)
    tp = np.stack(
        [np.bincount(d_img, weights=m.astype(np.float64), minlength=n_img) for m in matched]
    )  # (T, I)
    denom = n_pred + n_gt - tp  # TP + FP + FN
    scored = (n_pred + n_gt) > 0
    per_image = np.zeros(n_img)
    per_image[scored] = (tp[:, scored] / denom[:, scored]).mean(axis=0)
    return {int(i): float(s) for i, s in zip(table.image_ids[scored], per_image[scored], strict=True)}


def rsna_score(
    gt: Mapping, results: Sequence[Mapping] | Mapping[int, Detections], score_thr: float = 0.0
) -> float:
    """The RSNA challenge score of ``results`` against the dataset ``gt`` (see the module docstring).

    Args:
        gt: COCO dataset dict; every image in ``images`` counts. Not modified.
        results: COCO results list or ``{image_id: Detections}``. Not modified.
        score_thr: predictions with a lower score are dropped first.

    Returns:
        The mean per-image score in ``[0, 1]``; NaN if every image is skipped.

    Raises:
        ValueError: as `rsna_per_image`.
    """
    per_image = rsna_per_image(gt, results, score_thr)
    return float(np.mean(list(per_image.values()))) if per_image else math.nan
