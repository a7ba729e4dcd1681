"""One scorer: a results set scored on a dataset for a metric, the same way everywhere.

`Scorer` parses the dataset's ground truth once and scores any number of results sets with it. The
sweep (``ensemble sweep``) ranks settings with `Scorer.score`; the leaderboard fills its rows with
`Scorer.evaluate`, whose ``score`` is computed by the very same function, so a setting the sweep picks
has exactly the score the leaderboard then shows for the file ``ensemble run`` writes with it (the
sweep scores `core.detections.Detections.as_written`, the values the file will hold).

Headline metrics (``METRICS``):

- ``vinbig``: the VinBigData metric, mAP@0.4 over the lesion classes plus "No finding"
  (`eval.metrics.vinbig_map`); "No finding" rows come from the results themselves (a gated fusion
  writes them; the leaderboard's ``--gate`` adds them with `fusion.gate.with_no_finding`);
- ``coco``: COCO mAP@[.5:.95] over the dataset's categories;
- ``rsna``: the RSNA pneumonia score.

Every computation keeps all detections (no ``maxDets`` cap: the competition metrics have none).
"No finding" rows are removed before the ``coco`` and ``rsna`` metrics and before AP50 and
mAP@[.5:.95] (they are not a category of the dataset).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from core.classes import NO_FINDING, NO_FINDING_NAME, RSNA_CLASSES, VINBIG_CLASSES
from core.coco import CocoDataset
from core.detections import Detections
from eval.coco_map import (
    COCO_IOU_THRESHOLDS,
    GtTable,
    MapResult,
    PrCurve,
    class_ap,
    columns_table,
    evaluate_tables,
    mean_ap,
    parse_gt,
    parse_results,
)
from eval.metrics import vinbig_gt_table
from eval.rsna import rsna_score


@dataclass(frozen=True)
class Metric:
    """A headline metric.

    Attributes:
        key: ``vinbig``, ``coco`` or ``rsna``.
        label: the column header.
        iou: the IoU threshold of its precision-recall curves and detection confusion matrix.
    """

    key: str
    label: str
    iou: float


METRICS: dict[str, Metric] = {
    "vinbig": Metric("vinbig", "mAP@0.4 (VinBigData)", 0.4),
    "coco": Metric("coco", "mAP@[.5:.95] (COCO)", 0.5),
    "rsna": Metric("rsna", "RSNA score", 0.4),
}


def get_metric(key: str) -> Metric:
    """The `Metric` named ``key``.

    Raises:
        ValueError: for an unknown key, listing the known ones.
    """
    if key not in METRICS:
        raise ValueError(f"unknown metric {key!r}; choose one of {', '.join(METRICS)}")
    return METRICS[key]


def _norm(name: object) -> str:
    return " ".join(str(name).split()).casefold()


def check_metric_fits(dataset: CocoDataset, metric: str) -> None:
    """Raise unless the headline ``metric`` means something on ``dataset``'s classes.

    The commands call it before any work (``eval leaderboard``, ``ensemble sweep``); `Scorer` itself
    scores any dataset. ``vinbig`` (mAP@0.4 over VinBigData's 14 lesions and "No finding") needs
    VinBigData's categories: ids 0..13 under VinBigData's names (14 "No finding" allowed). ``rsna``
    (the RSNA pneumonia score) needs RSNA's one category. ``coco`` fits any dataset.

    Raises:
        ValueError: naming the metric, the dataset and the first category that does not fit, and
            the metrics that do.
    """
    get_metric(metric)
    where = dataset.path or "the dataset"
    names = dataset.category_names
    if metric == "vinbig":
        for cid, name in sorted(names.items()):
            want = VINBIG_CLASSES.get(cid, NO_FINDING_NAME if cid == NO_FINDING else None)
            if want is None or _norm(name) != _norm(want):
                expected = f"VinBigData's is {want!r}" if want else "VinBigData's ids are 0..13"
                other = "rsna or coco" if len(names) == 1 else "coco"
                raise ValueError(
                    f"--metric vinbig: {where} is not a VinBigData dataset (category {cid} is {name!r}; "
                    f"{expected}); the VinBigData metric scores its 14 lesion classes and 'No finding': "
                    f"use --metric {other}"
                )
    elif metric == "rsna" and len(names) != 1:
        shown = ", ".join(repr(n) for _, n in sorted(names.items())[:3]) + (", ..." if len(names) > 3 else "")
        raise ValueError(
            f"--metric rsna: {where} has {len(names)} categories ({shown}); the RSNA score is for RSNA's one "
            f"class ({RSNA_CLASSES[0]!r}): use --metric {'vinbig or coco' if len(names) > 1 else 'coco'}"
        )


@dataclass(frozen=True)
class Evaluation:
    """Everything a leaderboard row shows about one results set. Values are floats (NaN where undefined).

    Attributes:
        score: the headline metric (equal to `Scorer.score` of the same detections).
        ap50: COCO AP at IoU 0.5 over the dataset's categories.
        map: COCO mAP@[.5:.95] over the dataset's categories.
        recall: mean max recall over classes (at the metric's IoU for ``vinbig``, over 0.5:0.95 otherwise).
        per_class_ap: ``{category_id: AP}`` for classes with ground truth (AP@0.4 with "No finding" for
            ``vinbig``, else AP@[.5:.95]).
        per_class_recall: ``{category_id: max recall}``.
        curves: ``{category_id: PrCurve}`` at the metric's IoU.
        curve_ap: ``{category_id: AP}`` at the metric's IoU.
        has_no_finding: whether the detections hold "No finding" rows.
    """

    score: float
    ap50: float
    map: float
    recall: float
    per_class_ap: dict[int, float]
    per_class_recall: dict[int, float]
    curves: dict[int, PrCurve]
    curve_ap: dict[int, float]
    has_no_finding: bool


class Scorer:
    """The ground truth of one dataset, parsed once, and one headline metric.

    Args:
        dataset: the dataset with its annotations (a normal image has none).
        metric: ``vinbig``, ``coco`` or ``rsna``.

    Raises:
        ValueError: for an unknown metric, or a dataset the metric cannot score (``vinbig`` on a
            dataset that annotates class 14 itself).
    """

    def __init__(self, dataset: CocoDataset, metric: str = "vinbig") -> None:
        self.dataset = dataset
        self.metric = get_metric(metric)
        gt = dataset.to_dict()
        self._own_no_finding = NO_FINDING in dataset.category_ids
        self._lesion_table = parse_gt(gt)
        self._vinbig_table = vinbig_gt_table(gt) if self.metric.key == "vinbig" else None
        self._gt = gt

    @property
    def extra_categories(self) -> tuple[int, ...]:
        """Categories a results file may hold beside the dataset's own: "No finding" unless the dataset has it."""
        return () if self._own_no_finding else (NO_FINDING,)

    def lesions(self, dets: Mapping[int, Detections]) -> Mapping[int, Detections]:
        """``dets`` without "No finding" rows (unless "No finding" is one of the dataset's own categories)."""
        if self._own_no_finding or not any((d.labels == NO_FINDING).any() for d in dets.values()):
            return dets
        return {i: (d.select(d.labels != NO_FINDING) if len(d) else d) for i, d in dets.items()}

    def _coco(self, dets: Mapping[int, Detections], iou_thrs=COCO_IOU_THRESHOLDS) -> MapResult:
        table = self._lesion_table
        return evaluate_tables(table, parse_results(dets, table), iou_thrs)

    def _vinbig(self, dets: Mapping[int, Detections]) -> MapResult:
        table = self._vinbig_table
        return evaluate_tables(table, parse_results(dets, table), (self.metric.iou,))

    def score(self, dets: Mapping[int, Detections]) -> float:
        """The headline metric of ``dets`` (``image_id -> Detections`` in dataset pixels).

        Raises:
            ValueError: naming image or category ids the dataset lacks.
        """
        return self._headline(dets)[0]

    def score_columns(
        self, image_ids: np.ndarray, labels: np.ndarray, boxes: np.ndarray, scores: np.ndarray
    ) -> float:
        """`score` of detections held as columns instead of ``{image_id: Detections}``: the same number.

        The rows of one image must come in the order of that image's `Detections` (ties in score are
        broken by it, as in a results file); the order of the images does not matter. The sweep scores
        all its settings this way without building a `Detections` per image.

        Args:
            image_ids: ``(D,)`` dataset image id of each row.
            labels: ``(D,)`` category ids.
            boxes: ``(D, 4)`` float32 ``xyxy`` pixels.
            scores: ``(D,)`` float32 scores.

        Raises:
            ValueError: naming image or category ids the dataset lacks.
        """
        key = self.metric.key
        if key == "vinbig":
            table = self._vinbig_table
            res = evaluate_tables(table, columns_table(image_ids, labels, boxes, scores, table), (self.metric.iou,))
            return float(res.map)
        if not self._own_no_finding:
            keep = np.asarray(labels) != NO_FINDING
            if not keep.all():
                image_ids, labels, boxes, scores = image_ids[keep], labels[keep], boxes[keep], scores[keep]
        if key == "coco":
            table = self._lesion_table
            return float(evaluate_tables(table, columns_table(image_ids, labels, boxes, scores, table)).map)
        return float(rsna_score(self._gt, _group_columns(image_ids, labels, boxes, scores)))

    @property
    def by_class(self) -> bool:
        """Whether the headline metric is a mean of per-class AP (`class_ap_columns`): ``vinbig`` and
        ``coco`` on a dataset without a "No finding" category of its own."""
        return self.metric.key in ("vinbig", "coco") and not self._own_no_finding

    @property
    def headline_table(self) -> GtTable:
        """The ground truth of the headline metric: with "No finding" for ``vinbig``, the lesions else."""
        return self._vinbig_table if self.metric.key == "vinbig" else self._lesion_table

    def class_ap_columns(
        self, image_ids: np.ndarray, labels: np.ndarray, boxes: np.ndarray, scores: np.ndarray
    ) -> np.ndarray:
        """``(T, K)`` AP per IoU threshold and category of `headline_table` for detections held as columns.

        A category's column depends only on that category's rows (`eval.coco_map.class_ap`), so the
        sweep scores lesions once for several gate settings and "No finding" once for every fusion,
        and `score_from_class_ap` of the joined columns is `score_columns` of the joined rows.
        Only for metrics where `by_class` holds.

        Raises:
            ValueError: for the ``rsna`` metric, or naming image or category ids the dataset lacks.
        """
        if not self.by_class:
            raise ValueError(f"the {self.metric.key!r} metric is not a mean of per-class AP here")
        if self.metric.key == "coco":
            keep = np.asarray(labels) != NO_FINDING
            if not keep.all():
                image_ids, labels, boxes, scores = image_ids[keep], labels[keep], boxes[keep], scores[keep]
            thrs: tuple[float, ...] = COCO_IOU_THRESHOLDS
        else:
            thrs = (self.metric.iou,)
        table = self.headline_table
        return class_ap(table, columns_table(image_ids, labels, boxes, scores, table), thrs)

    def score_from_class_ap(self, ap: np.ndarray) -> float:
        """The headline metric of an AP matrix from `class_ap_columns` (possibly joined from several)."""
        return mean_ap(ap, self.headline_table)

    def _headline(self, dets: Mapping[int, Detections]) -> tuple[float, MapResult | None]:
        key = self.metric.key
        if key == "vinbig":
            res = self._vinbig(dets)
            return float(res.map), res
        if key == "coco":
            res = self._coco(self.lesions(dets))
            return float(res.map), res
        return float(rsna_score(self._gt, self.lesions(dets))), None

    def evaluate(self, dets: Mapping[int, Detections]) -> Evaluation:
        """The headline metric and everything a leaderboard row shows (see `Evaluation`).

        Raises:
            ValueError: naming image or category ids the dataset lacks.
        """
        score, head = self._headline(dets)
        lesions = self.lesions(dets)
        cocor = head if self.metric.key == "coco" else self._coco(lesions)
        if self.metric.key == "vinbig":
            per_class, per_recall, recall = head.per_class, head.per_class_recall, head.recall
            curves, curve_ap = head.curves, head.per_class
        else:
            per_class, per_recall, recall = cocor.per_class, cocor.per_class_recall, cocor.recall
            if self.metric.key == "coco":
                key = round(self.metric.iou, 6)
                curves = cocor.curves
                curve_ap = {c: v[key] for c, v in cocor.per_class_per_iou.items()}
            else:
                at = self._coco(lesions, (self.metric.iou,))
                curves, curve_ap = at.curves, at.per_class
        return Evaluation(
            score=score,
            ap50=float(cocor.per_iou.get(0.5, math.nan)),
            map=float(cocor.map),
            recall=float(recall),
            per_class_ap=dict(per_class),
            per_class_recall=dict(per_recall),
            curves=dict(curves),
            curve_ap=dict(curve_ap),
            has_no_finding=lesions is not dets,
        )


def _group_columns(
    image_ids: np.ndarray, labels: np.ndarray, boxes: np.ndarray, scores: np.ndarray
) -> dict[int, Detections]:
    """``{image_id: Detections}`` of columns, each image's rows in their order."""
    ids = np.asarray(image_ids, np.int64)
    if not len(ids):
        return {}
    order = np.argsort(ids, kind="stable")
    uniq, starts = np.unique(ids[order], return_index=True)
    parts = np.split(order, starts[1:])
    return {int(i): Detections(boxes[k], scores[k], labels[k]) for i, k in zip(uniq.tolist(), parts, strict=True)}


def mean_interpolated(curves: Mapping[int, PrCurve], curve_ap: Mapping[int, float]) -> np.ndarray:
    """``(101,)`` mean over classes of the interpolated precision at the metric's IoU."""
    ids = [c for c in curves if c in curve_ap]
    if not ids:
        return np.zeros(101)
    return np.mean([curves[c].interpolated for c in ids], axis=0)
