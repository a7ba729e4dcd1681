"""COCO bbox mAP with pycocotools' exact semantics, vectorised with NumPy.

What is computed, per category ``k`` and IoU threshold ``t`` (as ``COCOeval``
with ``areaRng='all'``, ``useCats=1``):

1. Per (image, category), detections are ranked by descending score (stable:
   ties keep the order of the results list) and the first ``max_dets`` kept.
   Note the cap is per (image, category), as in pycocotools, not per image.
2. Greedy matching, detections in that order: a detection takes, among the
   still-unmatched ground truths of its image and category with
   ``IoU >= min(t, 1 - 1e-10)``, the one of highest IoU (on equal IoU the later
   annotation in the dataset's order, as pycocotools' loop does).
3. All detections of ``k`` are sorted by descending score (ties: image id
   ascending, then results order — pycocotools' mergesort order), and
   cumulative TP/FP give recall ``tp / n_gt`` and precision
   ``tp / (tp + fp + eps)``; precision is made monotone from the right and read
   at the 101 recall thresholds ``np.linspace(0, 1, 101)`` (0 beyond the
   highest recall reached). AP is the mean of those 101 values.
4. A category with no ground truth box is left out of every mean.

IoU is pycocotools' box IoU on ``[x, y, w, h]`` boxes with areas ``w * h`` (no
``+1``). ``iscrowd`` is ignored (every annotation is a regular object) and the
area range is "all" (ground truths are never ignored; an unmatched detection
of area above ``1e10`` px² is ignored, as in pycocotools). Unlike
pycocotools, an annotation id of 0 is not special.

Nothing here imports a training framework, and no input is mutated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter

import numpy as np

from core.boxes import box_iou_xywh_pairs, xyxy_to_xywh
from core.detections import Detections

#: pycocotools' default IoU thresholds, bit for bit: ``np.linspace(0.5, 0.95, 10)``.
COCO_IOU_THRESHOLDS: tuple[float, ...] = tuple(float(t) for t in np.linspace(0.5, 0.95, 10))
#: The 101 recall thresholds of COCO's interpolated precision.
RECALL_THRESHOLDS: np.ndarray = np.linspace(0.0, 1.0, 101)
RECALL_THRESHOLDS.setflags(write=False)

_EPS = float(np.spacing(1))
_MAX_AREA = 1e5**2  # pycocotools' "all" area range upper bound


# --------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class GtTable:
    """Ground truth as columns. ``G`` boxes, ``I`` images, ``K`` categories.

    Attributes:
        image_ids: ``(I,)`` int64, sorted unique dataset image ids.
        category_ids: ``(K,)`` int64, sorted unique category ids.
        image: ``(G,)`` int64 index into ``image_ids``.
        category: ``(G,)`` int64 index into ``category_ids``.
        boxes: ``(G, 4)`` float64 ``xywh`` absolute pixels, dataset order.
    """

    image_ids: np.ndarray
    category_ids: np.ndarray
    image: np.ndarray
    category: np.ndarray
    boxes: np.ndarray


@dataclass(frozen=True)
class DetTable:
    """Detections as columns, in results order. ``D`` detections.

    Attributes:
        image: ``(D,)`` int64 index into the ground truth's ``image_ids``.
        category: ``(D,)`` int64 index into the ground truth's ``category_ids``.
        boxes: ``(D, 4)`` float64 ``xywh`` absolute pixels.
        scores: ``(D,)`` float64.
    """

    image: np.ndarray
    category: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray


def _few(values: np.ndarray | Sequence, n: int = 5) -> str:
    vals = list(dict.fromkeys(np.asarray(values).tolist()))
    more = f" and {len(vals) - n} more" if len(vals) > n else ""
    return f"{vals[:n]}{more}"


def lookup_ids(sorted_ids: np.ndarray, ids: np.ndarray, what: str, where: str) -> np.ndarray:
    """Indices of ``ids`` in ``sorted_ids``; ValueError naming ids not found."""
    if not len(ids):
        return np.zeros(0, np.int64)
    idx = np.searchsorted(sorted_ids, ids)
    ok = idx < len(sorted_ids)
    ok[ok] = sorted_ids[idx[ok]] == ids[ok]
    if not ok.all():
        raise ValueError(f"{where}: {what} not in the dataset: {_few(ids[~ok])}")
    return idx.astype(np.int64)


def _int_column(rows: Sequence[Mapping], key: str, where: str) -> np.ndarray:
    """``(N,)`` int64 of ``row[key]``; ValueError naming the first entry without an integer there."""
    try:
        vals = np.fromiter(map(itemgetter(key), rows), np.float64, count=len(rows))
        if (
            len(vals)
            and np.isfinite(vals).all()
            and (vals == np.floor(vals)).all()
            and np.abs(vals).max() < 2**53
        ):
            return vals.astype(np.int64)
    except (KeyError, TypeError, ValueError):
        pass
    out = np.empty(len(rows), np.int64)  # slow path: exact, and names the offender
    for k, r in enumerate(rows):
        try:
            v = r[key]
            if isinstance(v, float) and not v.is_integer():
                raise ValueError(f"{v} is not an integer")
            out[k] = int(v)
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise ValueError(f"{where} entry {k} has no integer {key!r} ({e!r}): {r!r}") from None
    return out


def _box_column(rows: Sequence[Mapping], where: str) -> np.ndarray:
    """``(N, 4)`` float64 ``xywh``; ValueError naming the first bad entry."""
    if not len(rows):
        return np.zeros((0, 4), np.float64)
    try:
        boxes = np.array(list(map(itemgetter("bbox"), rows)), dtype=np.float64)
        if boxes.shape != (len(rows), 4):
            raise ValueError(f"shape {boxes.shape}")
    except (KeyError, TypeError, ValueError):
        for k, r in enumerate(rows):
            b = r.get("bbox") if isinstance(r, Mapping) else None
            if b is None or np.shape(b) != (4,):
                raise ValueError(f"{where} entry {k} has no 'bbox' [x, y, w, h]: {r!r}") from None
        raise
    bad = ~np.isfinite(boxes).all(axis=1) | (boxes[:, 2] < 0) | (boxes[:, 3] < 0)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{where} entry {k} has a non-finite box or a negative width/height "
            f"({int(bad.sum())} such entries): {rows[k]['bbox']!r}"
        )
    return boxes


def parse_gt(gt: Mapping, extra_category_ids: Sequence[int] = ()) -> GtTable:
    """Read a COCO dataset dict (``images``, ``categories``, ``annotations``) into columns.

    ``extra_category_ids`` are added to the dataset's categories (used for
    VinBigData's "No finding"). ``gt`` is not modified.

    Raises:
        ValueError: if a key is missing, an image id is duplicated, or an
            annotation names an image or category absent from the dataset, or
            has a bad box (naming the offending ids or entry).
    """
    for key in ("images", "categories"):
        if not isinstance(gt.get(key), Sequence):
            raise ValueError(f"ground truth has no {key!r} list (keys: {sorted(gt)})")
    images, anns = gt["images"], gt.get("annotations", [])
    image_ids = _int_column(images, "id", "images")
    uniq, counts = np.unique(image_ids, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"duplicate image ids in the dataset: {_few(uniq[counts > 1])}")
    cats = np.unique(
        np.concatenate(
            [_int_column(gt["categories"], "id", "categories"), np.asarray(extra_category_ids, np.int64)]
        )
    )
    img = lookup_ids(uniq, _int_column(anns, "image_id", "annotations"), "image ids", "annotations")
    cat = lookup_ids(cats, _int_column(anns, "category_id", "annotations"), "category ids", "annotations")
    return GtTable(uniq, cats, img, cat, _box_column(anns, "annotations"))


def parse_results(results: Sequence[Mapping] | Mapping[int, Detections], gt: GtTable) -> DetTable:
    """Read COCO results (``image_id``, ``category_id``, ``bbox`` xywh, ``score``) into columns.

    ``results`` may also be a mapping ``image_id -> Detections`` (xyxy boxes).
    Nothing is modified.

    Raises:
        ValueError: naming the first few image ids or category ids absent from
            the dataset, or the first entry with a missing field, a
            non-finite box or score, or a negative width/height.
    """
    if isinstance(results, Mapping):
        items = [(int(i), d) for i, d in results.items() if len(d)]
        if not items:
            none = np.zeros(0, np.int64)
            return DetTable(none, none, np.zeros((0, 4)), np.zeros(0))
        ids = np.repeat(np.array([i for i, _ in items], np.int64), [len(d) for _, d in items])
        labels = np.concatenate([d.labels for _, d in items])
        boxes = np.concatenate([d.boxes for _, d in items])
        scores = np.concatenate([d.scores for _, d in items])
        return columns_table(ids, labels, boxes, scores, gt)
    else:
        if not isinstance(results, Sequence):
            raise ValueError(f"results must be a list of COCO detections, got {type(results).__name__}")
        ids = _int_column(results, "image_id", "results")
        labels = _int_column(results, "category_id", "results")
        boxes = _box_column(results, "results")
        try:
            scores = np.fromiter(map(itemgetter("score"), results), np.float64, count=len(results))
        except (KeyError, TypeError, ValueError):
            for k, r in enumerate(results):
                try:
                    float(r["score"])
                except (KeyError, TypeError, ValueError) as e:
                    raise ValueError(f"results entry {k} has no numeric 'score' ({e!r}): {r!r}") from None
            raise
        if not np.isfinite(scores).all():
            k = int(np.flatnonzero(~np.isfinite(scores))[0])
            raise ValueError(f"results entry {k} has a non-finite score: {results[k]!r}")
    img = lookup_ids(gt.image_ids, ids, "image ids", "results")
    cat = lookup_ids(gt.category_ids, labels, "category ids", "results")
    return DetTable(img, cat, boxes, scores)


def columns_table(
    image_ids: np.ndarray, labels: np.ndarray, boxes: np.ndarray, scores: np.ndarray, gt: GtTable
) -> DetTable:
    """A `DetTable` of detections held as columns, as `parse_results` builds it from ``{image_id: Detections}``.

    Args:
        image_ids: ``(D,)`` dataset image id of each detection.
        labels: ``(D,)`` category ids.
        boxes: ``(D, 4)`` ``xyxy`` pixels (the float32 of `Detections`; widths are taken in float64).
        scores: ``(D,)`` scores.
        gt: the parsed ground truth (its image and category ids).

    Raises:
        ValueError: naming the first few image ids or category ids absent from the dataset.
    """
    ids = np.asarray(image_ids, np.int64).reshape(-1)
    xywh = xyxy_to_xywh(np.asarray(boxes).reshape(-1, 4).astype(np.float64))
    img = lookup_ids(gt.image_ids, ids, "image ids", "results")
    cat = lookup_ids(gt.category_ids, np.asarray(labels).astype(np.int64).reshape(-1), "category ids", "results")
    return DetTable(img, cat, xywh, np.asarray(scores).astype(np.float64).reshape(-1))


# --------------------------------------------------------------------------- matching


def sort_order(keys: Sequence[tuple[np.ndarray, int]], unique: bool = False) -> np.ndarray:
    """Stable order sorting rows by integer keys, primary first.

    Args:
        keys: ``(values, size)`` pairs; ``values`` ``(N,)`` int64 in ``[0, size)``.
        unique: True if the keys already tell every row apart (no tie-break needed).

    Returns:
        ``(N,)`` int64 permutation; full ties keep input order. One int64 argsort
        of a mixed-radix key where it fits in 63 bits, else ``np.lexsort``.
    """
    n = len(keys[0][0])
    total = 1 if unique else max(n, 1)
    for _, size in keys:
        total *= max(int(size), 1)
    if total >= 2**63:
        return np.lexsort(tuple(v for v, _ in reversed(keys)))
    combined = np.zeros(n, np.int64)
    for values, size in keys:
        combined *= int(size)
        combined += values
    if not unique:
        combined *= n
        combined += np.arange(n)
    return np.argsort(combined)


def score_ranks(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Integer stand-ins for descending scores.

    Returns:
        ``pos`` ``(N,)``: position in a stable sort by descending score (unique);
        ``dense`` ``(N,)``: dense rank of the score, equal scores equal;
        the number of distinct scores.
    """
    order = np.argsort(-scores, kind="stable")
    pos = np.empty(len(scores), np.int64)
    pos[order] = np.arange(len(scores))
    s = scores[order]
    new = np.r_[True, s[1:] != s[:-1]] if len(s) else np.zeros(0, bool)
    dense = np.empty(len(scores), np.int64)
    dense[order] = np.cumsum(new) - 1
    return pos, dense, int(new.sum())


def rank_within_groups(group: np.ndarray, scores: np.ndarray, n_groups: int | None = None) -> np.ndarray:
    """``(N,)`` rank of each row among rows of its group (ints >= 0), by descending score, stable."""
    if not len(group):
        return np.zeros(0, np.int64)
    pos, _, _ = score_ranks(scores)
    return _rank_by_position(group, pos, n_groups)


def _rank_by_position(group: np.ndarray, pos: np.ndarray, n_groups: int | None = None) -> np.ndarray:
    """`rank_within_groups` given ``pos``, each row's position in the stable descending sort of scores."""
    if not len(group):
        return np.zeros(0, np.int64)
    n_groups = int(group.max()) + 1 if n_groups is None else n_groups
    order = sort_order([(group, n_groups), (pos, len(pos))], unique=True)
    g = group[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    counts = np.diff(np.r_[starts, len(g)])
    rank = np.empty(len(g), np.int64)
    rank[order] = np.arange(len(g)) - np.repeat(starts, counts)
    return rank


def greedy_match(
    det_group: np.ndarray,
    det_rank: np.ndarray,
    det_boxes: np.ndarray,
    gt_group: np.ndarray,
    gt_boxes: np.ndarray,
    thresholds: np.ndarray,
    strict: bool = False,
) -> np.ndarray:
    """Greedy score-ordered matching of detections to ground truths, per group, all thresholds at once.

    Within each group (e.g. image × category), detections are visited by
    ``det_rank`` (0 first); each takes, among its group's unmatched ground
    truths with ``IoU >= t`` (``> t`` if ``strict``), the one of highest IoU,
    ties going to the ground truth that comes later in input order.

    Args:
        det_group: ``(D,)`` int64 group of each detection.
        det_rank: ``(D,)`` int64 visiting order within its group (unique per group).
        det_boxes: ``(D, 4)`` float64 ``xywh``.
        gt_group: ``(G,)`` int64 group of each ground truth.
        gt_boxes: ``(G, 4)`` float64 ``xywh``.
        thresholds: ``(T,)`` IoU thresholds.

    Returns:
        ``(T, D)`` bool, True where the detection is matched at that threshold.
    """
    thr = np.asarray(thresholds, np.float64).reshape(-1)
    n_det, n_thr = len(det_group), len(thr)
    matched = np.zeros((n_thr, n_det), bool)
    if not n_det or not len(gt_group) or not n_thr:
        return matched
    # all (detection, ground truth) pairs sharing a group
    g_order = np.argsort(gt_group, kind="stable")
    g_sorted = gt_group[g_order]
    uniq, start, count = np.unique(g_sorted, return_index=True, return_counts=True)
    k = np.minimum(np.searchsorted(uniq, det_group), len(uniq) - 1)
    per_det = np.where(uniq[k] == det_group, count[k], 0)
    n_pairs = int(per_det.sum())
    if not n_pairs:
        return matched
    p_det = np.repeat(np.arange(n_det), per_det)
    offset = np.arange(n_pairs) - np.repeat(np.cumsum(per_det) - per_det, per_det)
    p_pos = np.repeat(start[k], per_det) + offset  # position in g_sorted: input order within a group
    p_gt = g_order[p_pos]
    p_iou = box_iou_xywh_pairs(det_boxes[p_det], gt_boxes[p_gt])
    keep = p_iou > thr.min() if strict else p_iou >= thr.min()
    p_det, p_pos, p_gt, p_iou = p_det[keep], p_pos[keep], p_gt[keep], p_iou[keep]
    if not len(p_det):
        return matched
    p_rank = det_rank[p_det]
    order = np.lexsort((p_pos, p_iou, p_det, p_rank))
    p_det, p_gt, p_iou, p_rank = p_det[order], p_gt[order], p_iou[order], p_rank[order]
    seg = np.flatnonzero(np.r_[True, p_det[1:] != p_det[:-1]])  # one segment per detection
    bounds = np.r_[np.flatnonzero(np.r_[True, p_rank[1:] != p_rank[:-1]]), len(p_rank)]
    seg_bounds = np.searchsorted(seg, bounds)
    gt_taken = np.zeros((n_thr, len(gt_group)), bool)
    thr_col = thr[:, None]
    for r in range(len(bounds) - 1):
        a, b = bounds[r], bounds[r + 1]
        gi = p_gt[a:b]
        ok = ~gt_taken[:, gi]
        ok &= (p_iou[a:b] > thr_col) if strict else (p_iou[a:b] >= thr_col)
        idx = np.where(ok, np.arange(1, b - a + 1), 0)
        last = np.maximum.reduceat(idx, seg[seg_bounds[r] : seg_bounds[r + 1]] - a, axis=1)
        t_i, s_i = np.nonzero(last)
        p = last[t_i, s_i] - 1 + a
        gt_taken[t_i, p_gt[p]] = True
        matched[t_i, p_det[p]] = True
    return matched


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class PrCurve:
    """Precision/recall of one category at one IoU threshold, for plotting.

    Attributes:
        scores: ``(N,)`` float64 detection scores, descending (evaluation order).
        recall: ``(N,)`` float64 recall after each detection.
        precision: ``(N,)`` float64 raw precision after each detection.
        interpolated: ``(101,)`` float64 COCO interpolated precision at
            `RECALL_THRESHOLDS` (monotone, 0 beyond the highest recall).
    """

    scores: np.ndarray
    recall: np.ndarray
    precision: np.ndarray
    interpolated: np.ndarray


@dataclass(frozen=True)
class MapResult:
    """mAP and its breakdown. IoU keys are thresholds rounded to 6 decimals.

    Categories without a ground-truth box are left out of every mean and every
    dict, and listed in ``classes_without_gt``; if no category has one, the
    means are NaN.

    Attributes:
        map: mean AP over IoU thresholds and categories (COCO "AP").
        per_iou: ``{iou: mean AP over categories}``.
        per_class: ``{category_id: AP averaged over IoU thresholds}``.
        per_class_per_iou: ``{category_id: {iou: AP}}``.
        recall: max recall averaged over IoU thresholds and categories (COCO "AR").
        per_class_recall: ``{category_id: max recall averaged over IoU thresholds}``.
        curves: ``{category_id: PrCurve}`` at the first IoU threshold.
        iou_thrs: thresholds used, as given.
        max_dets: cap per (image, category), None for no cap.
        classes_without_gt: category ids with no ground-truth box.
    """

    map: float
    per_iou: dict[float, float]
    per_class: dict[int, float]
    per_class_per_iou: dict[int, dict[float, float]]
    recall: float
    per_class_recall: dict[int, float]
    curves: dict[int, PrCurve]
    iou_thrs: tuple[float, ...]
    max_dets: int | None
    classes_without_gt: tuple[int, ...]


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


def _check_thresholds(iou_thrs: Sequence[float], max_dets: int | None) -> np.ndarray:
    thrs = np.asarray(list(iou_thrs), np.float64).reshape(-1)
    if not len(thrs) or not np.isfinite(thrs).all() or (thrs < 0).any() or (thrs > 1).any():
        raise ValueError(f"iou_thrs must be a non-empty list of values in [0, 1], got {list(iou_thrs)}")
    if max_dets is not None and int(max_dets) < 1:
        raise ValueError(f"max_dets must be a positive integer or None, got {max_dets}")
    return thrs


def _accumulate(gt: GtTable, dt: DetTable, thrs: np.ndarray, max_dets: int | None, with_curves: bool):
    """AP and max recall per IoU threshold and category: ``(ap, rec, curves, n_gt)``.

    ``ap`` and ``rec`` are ``(T, K)``, NaN for categories without ground truth. A category's values
    depend only on the rows of that category (their order within each image included), not on the
    rows of other categories: the sweep scores lesions and "No finding" apart and puts them together.
    """
    n_cat, n_thr = len(gt.category_ids), len(thrs)
    group = dt.image * n_cat + dt.category
    pos, dense, n_scores = score_ranks(dt.scores)
    rank = _rank_by_position(group, pos, len(gt.image_ids) * n_cat)
    if max_dets is not None:
        keep = np.flatnonzero(rank < int(max_dets))
        dt = DetTable(dt.image[keep], dt.category[keep], dt.boxes[keep], dt.scores[keep])
        group, rank, dense = group[keep], rank[keep], dense[keep]
    matched = greedy_match(
        group, rank, dt.boxes, gt.image * n_cat + gt.category, gt.boxes, np.minimum(thrs, 1 - 1e-10)
    )
    area = dt.boxes[:, 2] * dt.boxes[:, 3]
    ignored = (area > _MAX_AREA)[None, :] & ~matched  # pycocotools' area range "all"
    n_gt = np.bincount(gt.category, minlength=n_cat)

    # pycocotools' accumulation order: category, score desc, image id asc, results order
    order = sort_order([(dt.category, n_cat), (dense, n_scores), (dt.image, len(gt.image_ids))])
    cat_sorted = dt.category[order]
    cat_bounds = np.searchsorted(cat_sorted, np.arange(n_cat + 1))
    ap = np.full((n_thr, n_cat), np.nan)
    rec = np.full((n_thr, n_cat), np.nan)
    curves: dict[int, PrCurve] = {}
    for k in range(n_cat):
        if not n_gt[k]:
            continue
        sel = order[cat_bounds[k] : cat_bounds[k + 1]]
        nd = len(sel)
        tp = matched[:, sel]
        fp = ~tp & ~ignored[:, sel]
        tp_sum = np.cumsum(tp, axis=1).astype(np.float64)
        fp_sum = np.cumsum(fp, axis=1).astype(np.float64)
        rc = tp_sum / n_gt[k]
        pr = tp_sum / (fp_sum + tp_sum + _EPS)
        pr_mono = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1] if nd else pr
        for t in range(n_thr):
            q = np.zeros(len(RECALL_THRESHOLDS))
            if nd:
                inds = np.searchsorted(rc[t], RECALL_THRESHOLDS, side="left")
                hit = inds < nd
                q[hit] = pr_mono[t, inds[hit]]
            ap[t, k] = q.mean()
            rec[t, k] = rc[t, -1] if nd else 0.0
            if t == 0 and with_curves:
                curves[int(gt.category_ids[k])] = PrCurve(
                    _readonly(dt.scores[sel]), _readonly(rc[0]), _readonly(pr[0]), _readonly(q)
                )
    return ap, rec, curves, n_gt


def class_ap(gt: GtTable, dt: DetTable, iou_thrs: Sequence[float] = COCO_IOU_THRESHOLDS) -> np.ndarray:
    """``(T, K)`` AP per IoU threshold and category (of ``gt.category_ids``), NaN without ground truth.

    The values `evaluate_tables` averages; a category's column depends only on that category's
    rows, so columns of tables holding different categories can be put together and averaged with
    `mean_ap`, giving `evaluate_tables`' ``map`` of the joined table bit for bit.

    Raises:
        ValueError: if ``iou_thrs`` is empty or outside ``[0, 1]``.
    """
    return _accumulate(gt, dt, _check_thresholds(iou_thrs, None), None, with_curves=False)[0]


def mean_ap(ap: np.ndarray, gt: GtTable) -> float:
    """`evaluate_tables`' ``map`` of an AP matrix (`class_ap`): the mean over categories with ground truth."""
    valid = np.bincount(gt.category, minlength=len(gt.category_ids)) > 0
    return float(ap[:, valid].mean()) if valid.any() else math.nan


def evaluate_tables(
    gt: GtTable, dt: DetTable, iou_thrs: Sequence[float] = COCO_IOU_THRESHOLDS, max_dets: int | None = None
) -> MapResult:
    """COCO mAP of parsed tables; see the module docstring for the exact rules.

    Raises:
        ValueError: if ``iou_thrs`` is empty or outside ``[0, 1]``, or
            ``max_dets`` is not positive.
    """
    thrs = _check_thresholds(iou_thrs, max_dets)
    keys = [round(float(t), 6) for t in thrs]
    ap, rec, curves, n_gt = _accumulate(gt, dt, thrs, max_dets, with_curves=True)
    valid = n_gt > 0
    cat_ids = [int(c) for c in gt.category_ids[valid]]
    ap_v, rec_v = ap[:, valid], rec[:, valid]
    has = bool(valid.any())
    return MapResult(
        map=float(ap_v.mean()) if has else math.nan,
        per_iou={key: float(ap_v[t].mean()) if has else math.nan for t, key in enumerate(keys)},
        per_class={c: float(ap_v[:, j].mean()) for j, c in enumerate(cat_ids)},
        per_class_per_iou={
            c: {key: float(ap_v[t, j]) for t, key in enumerate(keys)} for j, c in enumerate(cat_ids)
        },
        recall=float(rec_v.mean()) if has else math.nan,
        per_class_recall={c: float(rec_v[:, j].mean()) for j, c in enumerate(cat_ids)},
        curves=curves,
        iou_thrs=tuple(float(t) for t in iou_thrs),
        max_dets=None if max_dets is None else int(max_dets),
        classes_without_gt=tuple(int(c) for c in gt.category_ids[~valid]),
    )


def coco_map(
    gt: Mapping,
    results: Sequence[Mapping] | Mapping[int, Detections],
    iou_thrs: Sequence[float] = COCO_IOU_THRESHOLDS,
    max_dets: int | None = None,
) -> MapResult:
    """COCO bbox mAP of ``results`` against the dataset ``gt``, as pycocotools' ``COCOeval``.

    With ``max_dets=100`` and the default ``iou_thrs`` this equals
    ``COCOeval.stats[0]`` (area "all", no crowd). Empty ``results`` give AP 0
    for every category with ground truth.

    Args:
        gt: COCO dataset dict (``images``, ``categories``, ``annotations`` with
            ``bbox`` ``[x, y, w, h]`` absolute pixels). Not modified.
        results: COCO results list (``image_id``, ``category_id``, ``bbox``
            ``[x, y, w, h]``, ``score``), or ``{image_id: Detections}``. Not modified.
        iou_thrs: IoU thresholds in ``[0, 1]``.
        max_dets: keep at most this many top-scored detections per (image,
            category), as pycocotools' ``maxDets``; None keeps all.

    Returns:
        `MapResult`.

    Raises:
        ValueError: naming the first few results image ids or category ids
            absent from the dataset, or the first malformed entry; or for bad
            ``iou_thrs`` / ``max_dets``.
    """
    table = parse_gt(gt)
    return evaluate_tables(table, parse_results(results, table), iou_thrs, max_dets)
