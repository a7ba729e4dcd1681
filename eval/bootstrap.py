"""Bootstrap confidence intervals over images, and the paired bootstrap that compares two results sets.

A resample draws the dataset's ``N`` images ``N`` times with replacement (seeded): image ``i`` comes
``w_i`` times. Scoring a resample as if the drawn images were a new dataset (every copy of an image
with its ground truth and its detections) is what `Bootstrap` computes, without building that
dataset:

- VinBigData and COCO mAP (per-class AP over pooled detections, `eval.coco_map`): matching is per
  (image, category), so it is done once; a resample only changes how many times each detection and
  each ground-truth box counts. Detections are visited in the evaluation order once; consecutive
  detections of one category that are all true positives (or all false positives) form one step
  of the cumulative sums, worth the sum of their images' ``w_i`` (the points skipped inside such a
  run never set the interpolated precision: inside a run of true positives precision rises, inside
  a run of false positives it falls). Detections of one image, category and score that mix true and
  false positives are repeated ``w_i`` times as a block, as the copies would be. ``n_gt`` per class
  is the ``w``-weighted count. The AP of every class, and their mean, are then bit for bit those of
  the duplicated dataset (copies of an image numbered after it, in order), as
  ``tests/test_bootstrap.py`` checks against a naive implementation.
- RSNA (a mean over images of a per-image score): the ``w``-weighted mean of the per-image scores.

`Bootstrap.interval` gives a score's percentile interval; `paired_bootstrap` scores two results
sets on the same resamples and gives the interval of their difference and how often the first
wins. The same seed gives the same resamples for every results set, so intervals of one
leaderboard are comparable. Nothing here imports a training framework.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from core.detections import Detections
from eval.coco_map import (
    COCO_IOU_THRESHOLDS,
    RECALL_THRESHOLDS,
    DetTable,
    GtTable,
    greedy_match,
    parse_results,
    rank_within_groups,
    score_ranks,
    sort_order,
)
from eval.rsna import rsna_per_image
from eval.scoring import Scorer

#: The default number of resamples.
DEFAULT_RESAMPLES = 1000

_EPS = float(np.spacing(1))  # as eval.coco_map
_MAX_AREA = 1e5**2  # pycocotools' "all" area range upper bound, as eval.coco_map


@dataclass(frozen=True)
class Interval:
    """A score and its bootstrap percentile interval.

    Attributes:
        score: the score on all images.
        low: lower bound (the ``(1 - level) / 2`` quantile of the resampled scores).
        high: upper bound.
        level: the interval's coverage, e.g. 0.95.
        n_images: images resampled.
        n_resamples: resamples drawn.
    """

    score: float
    low: float
    high: float
    level: float
    n_images: int
    n_resamples: int


@dataclass(frozen=True)
class PairedBootstrap:
    """``score(a) - score(b)`` over the same resamples.

    Attributes:
        difference: the difference on all images.
        mean: the mean of the resampled differences.
        low: lower bound of its percentile interval.
        high: upper bound.
        p_better: fraction of resamples where ``a`` scores higher than ``b``.
        level: the interval's coverage, e.g. 0.95.
        n_images: images resampled.
        n_resamples: resamples drawn.
    """

    difference: float
    mean: float
    low: float
    high: float
    p_better: float
    level: float
    n_images: int
    n_resamples: int

    @property
    def significant(self) -> bool:
        """Whether the interval excludes 0 (a NaN interval is not significant)."""
        return bool(self.low > 0 or self.high < 0)

    def interval_text(self, digits: int = 4) -> str:
        """``95% CI [+0.0050, +0.0190]``."""
        return f"{100 * self.level:g}% CI [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"

    def describe(self, digits: int = 4) -> str:
        """``+0.0123, 95% CI [+0.0050, +0.0190]``."""
        return f"{self.difference:+.{digits}f}, {self.interval_text(digits)}"


def resample_weights(n_images: int, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> np.ndarray:
    """``(n_resamples, n_images)`` int64: how many times each image is drawn in each resample.

    Each row is ``n_images`` draws with replacement (``numpy.random.default_rng(seed)``).

    Raises:
        ValueError: if ``n_resamples`` < 1 or ``n_images`` < 0.
    """
    if n_resamples < 1:
        raise ValueError(f"the bootstrap needs at least 1 resample, got {n_resamples}")
    if n_images < 0:
        raise ValueError(f"n_images must be >= 0, got {n_images}")
    if not n_images:
        return np.zeros((n_resamples, 0), np.int64)
    draws = np.random.default_rng(seed).integers(0, n_images, size=(n_resamples, n_images))
    flat = draws + (np.arange(n_resamples) * n_images)[:, None]
    return np.bincount(flat.ravel(), minlength=n_resamples * n_images).reshape(n_resamples, n_images)


@dataclass(frozen=True)
class _Steps:
    """One IoU threshold's detections in evaluation order, cut into the steps of the cumulative sums."""

    image: np.ndarray  # (n,) image index of each kept detection, evaluation order
    category: np.ndarray  # (n,) category index
    tp: np.ndarray  # (n,) bool
    start: np.ndarray  # (U,) first detection of each step
    length: np.ndarray  # (U,) detections in it
    mixed: np.ndarray  # (U,) bool: one (image, category, score) block mixing TP and FP, repeated w times
    unit_tp: np.ndarray  # (U,) bool: all TP (for steps that are not mixed)


def _steps(gt: GtTable, dt: DetTable, thrs: np.ndarray) -> list[_Steps]:
    """Match once and cut each threshold's evaluation order into steps (see the module docstring)."""
    n_cat, n_img = len(gt.category_ids), len(gt.image_ids)
    group = dt.image * n_cat + dt.category
    _, dense, n_scores = score_ranks(dt.scores)
    rank = rank_within_groups(group, dt.scores, n_img * n_cat)
    matched = greedy_match(
        group, rank, dt.boxes, gt.image * n_cat + gt.category, gt.boxes, np.minimum(thrs, 1 - 1e-10)
    )
    area = dt.boxes[:, 2] * dt.boxes[:, 3]
    ignored = (area > _MAX_AREA)[None, :] & ~matched
    # the evaluation order of eval.coco_map: category, score desc, image id asc, results order
    order = sort_order([(dt.category, n_cat), (dense, n_scores), (dt.image, n_img)])
    out = []
    for t in range(len(thrs)):
        sel = order[~ignored[t, order]]
        cat, img, den, tp = dt.category[sel], dt.image[sel], dense[sel], matched[t, sel]
        n = len(sel)
        if not n:
            e = np.zeros(0, np.int64)
            out.append(_Steps(e, e, np.zeros(0, bool), e, e, np.zeros(0, bool), np.zeros(0, bool)))
            continue
        new_cat = np.r_[True, cat[1:] != cat[:-1]]
        new_block = new_cat | np.r_[True, (den[1:] != den[:-1]) | (img[1:] != img[:-1])]
        block = np.cumsum(new_block) - 1
        block_tp = np.bincount(block, weights=tp.astype(np.float64))
        block_len = np.bincount(block)
        mixed_det = ((block_tp > 0) & (block_tp < block_len))[block]
        cut = new_cat.copy()
        cut[1:] |= new_block[1:] & (mixed_det[1:] | mixed_det[:-1])
        cut[1:] |= ~mixed_det[1:] & ~mixed_det[:-1] & (tp[1:] != tp[:-1])
        start = np.flatnonzero(cut)
        length = np.diff(np.r_[start, n])
        out.append(_Steps(img, cat, tp, start, length, mixed_det[start], tp[start]))
    return out


#: resamples times detections handled at once by `_class_ap` (bounds its memory)
_CHUNK_ELEMENTS = 1 << 21


def _class_ap(steps: list[_Steps], weights: np.ndarray, n_gt: np.ndarray) -> np.ndarray:
    """``(B, T, K)`` AP of resamples ``weights`` ``(B, I)`` with weighted ``n_gt`` ``(B, K)`` per category.

    Every resample and category at once, with the float values and comparisons of
    `eval.coco_map`: recall and precision are the same divisions, and the running maximum and the
    recall search of each (resample, category) work on the ranks of those values (exact), so each
    AP is the one that category computes alone.
    """
    n_res, n_cat = n_gt.shape
    ap = np.full((n_res, len(steps), n_cat), np.nan)
    for t, s in enumerate(steps):
        for lo in range(0, n_res, max(1, _CHUNK_ELEMENTS // max(1, len(s.image)))):
            hi = min(n_res, lo + max(1, _CHUNK_ELEMENTS // max(1, len(s.image))))
            ap[lo:hi, t] = _chunk_ap(s, weights[lo:hi], n_gt[lo:hi])
    return ap


def _chunk_ap(s: _Steps, w: np.ndarray, n_gt: np.ndarray) -> np.ndarray:
    """``(b, K)`` AP of one IoU threshold's steps for ``b`` resamples (see `_class_ap`)."""
    n_res, n_cat = n_gt.shape
    has_gt = n_gt > 0
    ap = np.where(has_gt, 0.0, np.nan)
    n_units = len(s.start)
    if not n_units:
        return ap
    wd = w[:, s.image]  # (b, n)
    step = np.add.reduceat(wd, s.start, axis=1)  # (b, U)
    if s.mixed.any():
        counts = np.where(s.mixed, s.length * wd[:, s.start], 1).ravel()
        flat_unit = np.repeat(np.arange(n_res * n_units), counts)
        unit = flat_unit % n_units
        row = flat_unit // n_units
        within = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        det = s.start[unit] + within % s.length[unit]
        mixed = s.mixed[unit]
        flat_step = step.ravel()[flat_unit]
        tp_inc = np.where(mixed, s.tp[det], np.where(s.unit_tp[unit], flat_step, 0))
        fp_inc = np.where(mixed, ~s.tp[det], np.where(s.unit_tp[unit], 0, flat_step))
        cat = s.category[det]
    else:
        tp_inc = np.where(s.unit_tp, step, 0).ravel()
        fp_inc = step.ravel() - tp_inc
        cat = np.tile(s.category[s.start], n_res)
        row = np.repeat(np.arange(n_res), n_units)
    seg = row * n_cat + cat  # nondecreasing: resample, then category
    keep = has_gt.ravel()[seg]
    tp_inc, fp_inc, seg = tp_inc[keep], fp_inc[keep], seg[keep]
    if not len(seg):
        return ap
    n_seg = n_res * n_cat
    bounds = np.searchsorted(seg, np.arange(n_seg + 1))
    tp_cum = np.cumsum(tp_inc, dtype=np.int64)
    fp_cum = np.cumsum(fp_inc, dtype=np.int64)
    first = bounds[seg]
    tp_sum = (tp_cum - np.where(first > 0, tp_cum[first - 1], 0)).astype(np.float64)
    fp_sum = (fp_cum - np.where(first > 0, fp_cum[first - 1], 0)).astype(np.float64)
    rc = tp_sum / n_gt.ravel()[seg]
    pr = tp_sum / (fp_sum + tp_sum + _EPS)
    # precision made monotone from the right within each (resample, category), on exact ranks
    uniq, rank = np.unique(pr, return_inverse=True)
    offset = (n_seg - seg) * len(uniq)
    pr_mono = uniq[np.maximum.accumulate((rank + offset)[::-1])[::-1] - offset]
    # the first row of each (resample, category) whose recall reaches each threshold, on exact ranks
    values, inv = np.unique(np.concatenate([rc, RECALL_THRESHOLDS]), return_inverse=True)
    m = len(values)
    key = seg * m + inv[: len(rc)]
    segs = np.flatnonzero(has_gt.ravel())
    pos = np.searchsorted(key, segs[:, None] * m + inv[len(rc) :][None, :], side="left")
    hit = pos < bounds[segs + 1][:, None]
    q = np.where(hit, pr_mono[np.minimum(pos, len(pr_mono) - 1)], 0.0)
    flat = ap.reshape(-1)
    flat[segs] = q.mean(axis=1)
    return flat.reshape(n_res, n_cat)


class Bootstrap:
    """Resamples of one scorer's images, drawn once; scores any number of results sets on them.

    Args:
        scorer: the dataset and headline metric (`eval.scoring.Scorer`).
        n_resamples: resamples to draw.
        seed: the random seed (the same seed, the same resamples).

    Raises:
        ValueError: if ``n_resamples`` < 1.
    """

    def __init__(self, scorer: Scorer, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> None:
        self.scorer = scorer
        self.table = scorer.headline_table
        self.weights = resample_weights(len(self.table.image_ids), n_resamples, seed)
        key = scorer.metric.key
        self._by_class = key in ("vinbig", "coco")  # a mean of per-class AP; rsna a mean over images
        if self._by_class:
            self._thrs = np.asarray(COCO_IOU_THRESHOLDS if key == "coco" else (scorer.metric.iou,))
            n_cat = len(self.table.category_ids)
            per_image = np.zeros((len(self.table.image_ids), n_cat), np.int64)
            np.add.at(per_image, (self.table.image, self.table.category), 1)
            self._n_gt = self.weights @ per_image  # (B, K) weighted ground-truth count per category
            self._gt_dict = None
        else:
            self._gt_dict = scorer.dataset.to_dict()

    @property
    def n_images(self) -> int:
        return int(self.weights.shape[1])

    @property
    def n_resamples(self) -> int:
        return int(self.weights.shape[0])

    def scores(self, dets: Mapping[int, Detections]) -> np.ndarray:
        """``(n_resamples,)`` headline metric of ``dets`` on each resample (NaN where undefined).

        Raises:
            ValueError: naming image or category ids the dataset lacks.
        """
        if not self._by_class:
            return self._per_image_scores(dets)
        if self.scorer.metric.key == "coco":
            dets = self.scorer.lesions(dets)  # "No finding" rows are not a category of the dataset
        steps = _steps(self.table, parse_results(dets, self.table), self._thrs)
        ap = _class_ap(steps, self.weights, self._n_gt)
        out = np.empty(self.n_resamples)
        for b in range(self.n_resamples):
            valid = self._n_gt[b] > 0  # the mean of eval.coco_map.mean_ap, as it takes it
            out[b] = float(ap[b][:, valid].mean()) if valid.any() else math.nan
        return out

    def _per_image_scores(self, dets: Mapping[int, Detections]) -> np.ndarray:
        """The RSNA score: the ``w``-weighted mean of the per-image scores."""
        per_image = rsna_per_image(self._gt_dict, self.scorer.lesions(dets))
        idx = np.searchsorted(self.table.image_ids, np.fromiter(per_image, np.int64, len(per_image)))
        values = np.fromiter(per_image.values(), np.float64, len(per_image))
        w = self.weights[:, idx].astype(np.float64)
        total = w.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, (w @ values) / np.where(total > 0, total, 1), math.nan)

    def interval(self, dets: Mapping[int, Detections], level: float = 0.95) -> Interval:
        """The score of ``dets`` on all images and its bootstrap percentile interval.

        Raises:
            ValueError: for a level outside (0, 1), or naming image or category ids the dataset lacks.
        """
        _check_level(level)
        low, high = _quantiles(self.scores(dets), level)
        return Interval(self.scorer.score(dets), low, high, level, self.n_images, self.n_resamples)

    def paired(
        self, dets_a: Mapping[int, Detections], dets_b: Mapping[int, Detections], level: float = 0.95
    ) -> PairedBootstrap:
        """``score(a) - score(b)`` on all images and over the same resamples (see `PairedBootstrap`).

        Raises:
            ValueError: for a level outside (0, 1), or naming image or category ids the dataset lacks.
        """
        _check_level(level)
        sa, sb = self.scores(dets_a), self.scores(dets_b)
        diff = sa - sb
        low, high = _quantiles(diff, level)
        finite = np.isfinite(diff)
        return PairedBootstrap(
            difference=self.scorer.score(dets_a) - self.scorer.score(dets_b),
            mean=float(diff[finite].mean()) if finite.any() else math.nan,
            low=low,
            high=high,
            p_better=float((diff[finite] > 0).mean()) if finite.any() else math.nan,
            level=level,
            n_images=self.n_images,
            n_resamples=self.n_resamples,
        )


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"the confidence level must be in (0, 1), got {level}")


def _quantiles(values: np.ndarray, level: float) -> tuple[float, float]:
    v = values[np.isfinite(values)]
    if not len(v):
        return math.nan, math.nan
    lo, hi = np.quantile(v, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def bootstrap_interval(
    scorer: Scorer,
    dets: Mapping[int, Detections],
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> Interval:
    """The score of ``dets`` and its ``level`` bootstrap interval over the scorer's images.

    Raises:
        ValueError: for ``n_resamples`` < 1, a level outside (0, 1), or naming image or category
            ids the dataset lacks.
    """
    return Bootstrap(scorer, n_resamples, seed).interval(dets, level)


def paired_bootstrap(
    scorer: Scorer,
    dets_a: Mapping[int, Detections],
    dets_b: Mapping[int, Detections],
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> PairedBootstrap:
    """``score(a) - score(b)`` with its ``level`` interval over the same resampled images.

    Args:
        scorer: the dataset and headline metric.
        dets_a, dets_b: ``{image_id: Detections}`` in dataset pixels.
        n_resamples: resamples to draw.
        seed: the random seed.
        level: the interval's coverage.

    Returns:
        `PairedBootstrap`: the difference on all images, the mean and interval of the resampled
        differences, and the fraction of resamples where ``a`` scores higher.

    Raises:
        ValueError: for ``n_resamples`` < 1, a level outside (0, 1), or naming image or category
            ids the dataset lacks.
    """
    return Bootstrap(scorer, n_resamples, seed).paired(dets_a, dets_b, level)
