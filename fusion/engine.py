"""Fusion of several models' detections: WBF, NMS, Soft-NMS and NMW.

`fuse` fuses the detections of one image, `fuse_many` those of every image of a dataset (faster than
calling `fuse` per image: all images advance together). Both take and return `Detections` in absolute
pixels; boxes are divided by the image's width and height only inside the fusion. A sweep that fuses
the same boxes with many settings flattens them once (`flatten_many`, a `FlatBoxes`) and calls
`fuse_flat` per setting, which returns columns (`FlatFused`) holding exactly the rows of `fuse_many`'s
`Detections`.

Results equal ensemble-boxes 1.0.9 (``weighted_boxes_fusion``, ``nms``, ``soft_nms``,
``non_maximum_weighted``) given the same boxes divided by ``(width, height, width, height)``, within
float32 rounding of the returned pixels, with these deliberate differences:

- no boxes (an empty model, or no boxes at all) gives empty `Detections`, not an error;
- boxes more than ``BOX_TOLERANCE_PX`` outside the image raise `ValueError` (within it they are clipped
  to the image, as ensemble-boxes clips every box to ``[0, 1]``); zero-area boxes are dropped, as there;
- an unknown method or ``conf_type``, or a ``weights`` of the wrong length, raises `ValueError`
  (ensemble-boxes calls ``exit()`` or silently sets all weights to 1);
- returned scores are clipped at 1. ensemble-boxes exceeds 1 with WBF ``conf_type="avg"`` and unequal
  weights (a cluster with several boxes of the heaviest model: e.g. weights ``(3, 1)`` and two boxes of
  model 0 with score 1 give ``3 * 2 / 4 = 1.5``), and by float32 rounding elsewhere;
- ``skip_box_thr`` also applies to NMS and Soft-NMS (ensemble-boxes has none there);
- among boxes of *equal* score NMS keeps the first in input order (ensemble-boxes' order of ties comes
  from numba's sort); WBF and NMW break ties exactly as ensemble-boxes does;
- caller arrays are never modified; labels are int64; the result is sorted by descending score.

Weights as in ensemble-boxes: WBF multiplies scores by the model's weight and divides by their sum
(``avg``); NMS and Soft-NMS multiply by ``weight / sum(weights)`` (so equal weights of 1 over two models
halve every score); NMW by ``weight / max(weights)``. Soft-NMS returns the kept boxes' undecayed
(weighted) scores, as ensemble-boxes does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import numpy as np

from core.boxes import box_area as _area
from core.detections import Detections
from fusion.nms import nms_groups, soft_nms_groups
from fusion.settings import CONF_TYPES, METHODS, SOFT_METHODS, FusionSettings
from fusion.wbf import nmw_groups, wbf_groups

Method = Literal["wbf", "nms", "soft-nms", "nmw"]
__all__ = [
    "BOX_TOLERANCE_PX",
    "CONF_TYPES",
    "METHODS",
    "SOFT_METHODS",
    "FlatBoxes",
    "FlatFused",
    "flatten",
    "flatten_many",
    "fuse",
    "fuse_flat",
    "fuse_many",
    "fuse_with",
]
BOX_TOLERANCE_PX = 1.0
"""How far (pixels) a box may reach outside the image before `fuse` refuses it."""


def fuse(dets: Sequence[Detections], width: int, height: int, **options: Any) -> Detections:
    """Fuse several models' detections of one image.

    Args:
        dets: one `Detections` per model (boxes ``xyxy`` in pixels of a ``width`` x ``height`` image);
            a model may have none.
        width, height: the image size in pixels (> 0).
        **options: fields of `fusion.settings.FusionSettings` but the gate's: ``method`` (``wbf``,
            ``nms``, ``soft-nms`` or ``nmw``), ``weights`` (one positive weight per model; default all 1),
            ``iou_thr`` (IoU in ``[0, 1]`` above which boxes of one label match or suppress),
            ``skip_box_thr`` (boxes scoring below it are dropped first), ``conf_type`` (WBF's score),
            ``sigma``, ``soft_method`` and ``soft_score_thr`` (Soft-NMS's decay and what it keeps).

    Returns:
        `Detections` in pixels, sorted by descending score, scores in ``[0, 1]``.

    Raises:
        ValueError: for an unknown option, method, conf_type or soft_method, a bad threshold, size or
            weight, a ``weights`` whose length is not ``len(dets)``, or a box more than
            ``BOX_TOLERANCE_PX`` outside the image (naming the model index and the box).
        TypeError: if an element of ``dets`` is not a `Detections`.
    """
    return _fuse_images([("", dets, width, height)], len(dets), box_settings(options))[0]


def box_settings(options: Mapping[str, Any]) -> FusionSettings:
    """`FusionSettings` from keyword options of `fuse`/`fuse_many` (no gate fields).

    Raises:
        ValueError: naming unknown options, or gate options (the gate is `fusion.gate.apply_gate`'s).
    """
    kw = dict(options)
    if kw.get("weights") is not None:
        kw["weights"] = tuple(kw["weights"])
    names = {f.name for f in fields(FusionSettings)} - {"gate_mode", "low", "high"}
    unknown = sorted(set(kw) - names)
    if unknown:
        raise ValueError(f"unknown fusion options {unknown}; known: {', '.join(sorted(names))}")
    return FusionSettings(**kw)


def fuse_many(
    per_model: Sequence[Mapping[int, Detections]],
    sizes: Mapping[int, tuple[int, int]],
    **kw: Any,
) -> dict[int, Detections]:
    """Fuse several models' detections over all images of a dataset.

    Args:
        per_model: one mapping ``image_id -> Detections`` per model; an image missing from a model's
            mapping has no boxes from that model.
        sizes: ``image_id -> (width, height)`` in pixels, for every image to fuse.
        **kw: the keyword arguments of `fuse` (``method``, ``weights``, ``iou_thr``, ...).

    Returns:
        ``image_id -> Detections`` for every id in ``sizes`` (empty where no model has boxes).

    Raises:
        ValueError: as `fuse` (naming the image id too), or if a model has an image id not in ``sizes``.
    """
    settings = box_settings(kw)
    return fuse_with(per_model, sizes, settings)


def fuse_with(
    per_model: Sequence[Mapping[int, Detections]],
    sizes: Mapping[int, tuple[int, int]],
    settings: FusionSettings,
) -> dict[int, Detections]:
    """`fuse_many` with the options of a `FusionSettings` (its gate fields are not used here).

    Raises:
        ValueError: as `fuse_many`.
    """
    _check_ids(per_model, sizes)
    settings.validate()
    if len(per_model) == 0:
        raise ValueError("need detections of at least one model, got none")
    flat = flatten_many(per_model, sizes)
    return dict(zip(sizes, fuse_flat(flat, settings).split(), strict=True))


def flatten_many(
    per_model: Sequence[Mapping[int, Detections]], sizes: Mapping[int, tuple[int, int]]
) -> FlatBoxes:
    """`flatten` of a dataset: image ``k`` of the result is the ``k``-th id of ``sizes``.

    Args:
        per_model: one mapping ``image_id -> Detections`` per model, as `fuse_many` takes.
        sizes: ``image_id -> (width, height)`` of every image to fuse.

    Raises:
        ValueError: as `fuse_many`.
        TypeError: if a detection is not a `Detections`.
    """
    _check_ids(per_model, sizes)
    empty = Detections.empty()
    images = []
    for i, (w, h) in sizes.items():
        images.append((f"image {i}: ", [m.get(i, empty) for m in per_model], w, h))
    return flatten(images, len(per_model))


def _check_ids(per_model: Sequence[Mapping[int, Detections]], sizes: Mapping[int, tuple[int, int]]) -> None:
    for t, m in enumerate(per_model):
        extra = [i for i in m if i not in sizes]
        if extra:
            raise ValueError(f"model {t} has detections for image ids not in sizes, e.g. {extra[:5]}")


@dataclass(frozen=True, eq=False)
class FlatBoxes:
    """Every model's boxes of a set of images, checked, normalised and flattened once (`flatten`).

    What `fuse_flat` fuses: a sweep flattens its inputs once and fuses them with many settings. Rows
    are in image, then model, then row order; coordinates are ``xyxy`` divided by the image size and
    clipped to ``[0, 1]``.

    Attributes:
        n_models: the number of models (weights are per model).
        scale: ``(I, 4)`` float64 ``(width, height, width, height)`` of each image, in the order given.
        img, model: ``(T,)`` int64 image index and model index of each box.
        boxes: ``(T, 4)`` float64 normalised boxes.
        score: ``(T,)`` float64 scores as the models gave them.
        label: ``(T,)`` int64 labels.
        nonzero: ``(T,)`` bool, False for zero-area boxes (always dropped).
        group: ``(T,)`` int64 ``img * n_label_values + (label - min label)``: sorting by it sorts by
            image, then label.
        n_groups: an upper bound of ``group``.
    """

    n_models: int
    scale: np.ndarray
    img: np.ndarray
    model: np.ndarray
    boxes: np.ndarray
    score: np.ndarray
    label: np.ndarray
    nonzero: np.ndarray
    group: np.ndarray
    n_groups: int
    _orders: dict = field(default_factory=dict, repr=False)

    @property
    def n_images(self) -> int:
        return len(self.scale)

    def cached_order(self, key: tuple, make: Callable[[], np.ndarray]) -> np.ndarray:
        """``make()``, remembered under ``key`` (only the latest key is kept, so memory stays flat)."""
        hit = self._orders.get(key)
        if hit is None:
            self._orders.clear()
            hit = self._orders[key] = make()
        return hit


@dataclass(frozen=True, eq=False)
class FlatFused:
    """Fused boxes of every image as columns: the rows of the `Detections` that `fuse_many` returns.

    Rows are grouped by image (ascending index), each image's rows by descending score, exactly as
    `split` hands them out.

    Attributes:
        image: ``(K,)`` int64 image index (the order of the images given to `flatten`).
        labels: ``(K,)`` int64 labels.
        boxes: ``(K, 4)`` float32 ``xyxy`` pixels.
        scores: ``(K,)`` float32 scores in ``[0, 1]``.
        n_images: the number of images.
    """

    image: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    n_images: int

    def bounds(self) -> np.ndarray:
        """``(I + 1,)`` start of each image's rows (rows of image ``i`` are ``bounds[i]:bounds[i + 1]``)."""
        return np.searchsorted(self.image, np.arange(self.n_images + 1))

    def split(self) -> list[Detections]:
        """One `Detections` per image (empty where nothing was fused)."""
        bounds = self.bounds()
        out = []
        for i in range(self.n_images):
            a, b = bounds[i], bounds[i + 1]
            out.append(
                Detections(self.boxes[a:b], self.scores[a:b], self.labels[a:b]) if b > a else Detections.empty()
            )
        return out


def _fuse_images(
    images: Sequence[tuple[str, Sequence[Detections], int, int]], n_models: int, settings: FusionSettings
) -> list[Detections]:
    """Fuse each image of ``(error prefix, per-model detections, width, height)``."""
    settings.validate()
    if n_models == 0:
        raise ValueError("need detections of at least one model, got none")
    return fuse_flat(flatten(images, n_models), settings).split()


def fuse_flat(flat: FlatBoxes, settings: FusionSettings) -> FlatFused:
    """Fuse flattened boxes (`flatten`) with ``settings``' fusion options: `fuse_many` without the dicts.

    Orders that only depend on the method and weights (the boxes sorted by weighted score within
    each image and label) are computed once for consecutive calls with the same method and weights
    (see `FlatBoxes.cached_order`); ``iou_thr`` and ``skip_box_thr`` only filter and match.

    Raises:
        ValueError: for invalid settings or a ``weights`` of the wrong length.
    """
    settings.validate()
    if flat.n_models == 0:
        raise ValueError("need detections of at least one model, got none")
    w = settings.model_weights(flat.n_models)
    method, iou_thr, skip_box_thr = settings.method, settings.iou_thr, settings.skip_box_thr
    weights = settings.weights
    img, model, boxes, score, label = flat.img, flat.model, flat.boxes, flat.score, flat.label
    keep = score >= skip_box_thr
    keep &= flat.nonzero
    wkey = None if weights is None else tuple(float(x) for x in w)

    if method == "wbf":
        sw = score * w[model]
        order, starts, lengths, g_img, g_lab = _group(flat, keep, sw, "argsort_desc", ("wbf", wkey))
        g, fb, fs = wbf_groups(
            boxes[order],
            sw[order],
            w[model[order]],
            model[order],
            starts,
            lengths,
            w,
            float(iou_thr),
            settings.conf_type,
        )
        out_img, out_lab = g_img[g], g_lab[g]
    elif method == "nmw":
        sw = score * (w / w.max())[model]
        order, starts, lengths, g_img, g_lab = _group(flat, keep, sw, "argsort_desc", ("nmw", wkey))
        g, fb, fs = nmw_groups(boxes[order], sw[order], starts, lengths, float(iou_thr))
        out_img, out_lab = g_img[g], g_lab[g]
    else:
        # ensemble-boxes keeps float32 scores when no weights are given (Soft-NMS decays them in float32)
        sc = score.astype(np.float32) if weights is None else (score * w[model]) / w.sum()
        if method == "nms":
            order, starts, lengths, _, _ = _group(flat, keep, sc, "stable_desc", ("nms", wkey))
            kept = nms_groups(boxes[order], starts, lengths, float(iou_thr))
        else:
            order, starts, lengths, _, _ = _group(flat, keep, sc, "input", ("input",))
            kept = soft_nms_groups(
                boxes[order],
                sc[order],
                starts,
                lengths,
                iou_thr=float(iou_thr),
                sigma=float(settings.sigma),
                score_thr=float(settings.soft_score_thr),
                linear=settings.soft_method == "linear",
            )
        sel = order[kept]
        out_img, out_lab, fb, fs = img[sel], label[sel], boxes[sel], sc[sel].astype(np.float64)
    return _collect(flat, out_img, out_lab, fb, fs)


def flatten(images: Sequence[tuple[str, Sequence[Detections], int, int]], n_models: int) -> FlatBoxes:
    """Concatenate all boxes (image, then model, then row order), normalised, checked and clipped to [0, 1].

    Args:
        images: ``(error prefix, per-model detections, width, height)`` per image.
        n_models: the number of models every image must have detections of.

    Raises:
        ValueError: for an image with detections of another number of models, a size that is not
            positive, or a box more than ``BOX_TOLERANCE_PX`` outside its image (naming both).
        TypeError: if a detection is not a `Detections`.
    """
    parts: list[tuple[int, int, Detections]] = []
    scale = np.zeros((len(images), 4), np.float64)
    for i, (where, dets, width, height) in enumerate(images):
        if len(dets) != n_models:
            raise ValueError(f"{where}got detections of {len(dets)} models, expected {n_models}")
        if not (width > 0 and height > 0):
            raise ValueError(f"{where}image size must be positive, got width={width!r} height={height!r}")
        scale[i] = (width, height, width, height)
        for t, d in enumerate(dets):
            if not isinstance(d, Detections):
                raise TypeError(f"{where}model {t}: expected Detections, got {type(d).__name__}")
            if len(d):
                parts.append((i, t, d))
    if not parts:
        none = np.zeros(0, np.int64)
        return FlatBoxes(
            n_models, scale, none, none, np.zeros((0, 4)), np.zeros(0), none, np.zeros(0, bool), none, 1
        )
    counts = np.array([len(d) for _, _, d in parts], np.int64)
    img = np.repeat(np.array([i for i, _, _ in parts], np.int64), counts)
    model = np.repeat(np.array([t for _, t, _ in parts], np.int64), counts)
    b = np.concatenate([d.boxes for _, _, d in parts]).astype(np.float64)
    size = scale[img]
    tol = BOX_TOLERANCE_PX
    bad = (b[:, 0] < -tol) | (b[:, 1] < -tol) | (b[:, 2] > size[:, 2] + tol) | (b[:, 3] > size[:, 3] + tol)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        k = int(np.searchsorted(np.cumsum(counts), row, side="right"))
        i, t, d = parts[k]
        j = row - int(counts[:k].sum())
        where, _, width, height = images[i]
        raise ValueError(
            f"{where}model {t} box {j} {d.boxes[j].tolist()} lies outside the {width}x{height} image "
            f"(by more than {tol} px)"
        )
    boxes = np.clip(b / size, 0.0, 1.0)
    score = np.concatenate([d.scores for _, _, d in parts]).astype(np.float64)
    label = np.concatenate([d.labels for _, _, d in parts]).astype(np.int64)
    lo, hi = int(label.min()), int(label.max())
    group = img * (hi - lo + 1) + (label - lo)
    return FlatBoxes(
        n_models, scale, img, model, boxes, score, label, _area(boxes) != 0.0, group, len(images) * (hi - lo + 1)
    )


def _order_by(major: np.ndarray, n_major: int, key: np.ndarray | None = None) -> np.ndarray:
    """Stable order by ``major`` (ints in ``[0, n_major)``), then by descending ``key``, ties in input order.

    The order of ``np.lexsort((-key, major))`` (or of a stable sort by ``major`` alone), from two
    plain sorts: ``key`` becomes its position in a stable descending sort, which breaks every tie.
    """
    n = len(major)
    if key is None:
        return np.argsort(major, kind="stable")
    pos = np.empty(n, np.int64)
    pos[np.argsort(-key, kind="stable")] = np.arange(n)
    if n_major * max(n, 1) < 2**62:
        return np.argsort(major * n + pos)  # unique keys: any sort gives the one order
    return np.lexsort((pos, major))


def _group(flat: FlatBoxes, keep: np.ndarray, key: np.ndarray, how: str, cache_key: tuple):
    """Order the kept rows into (image, label) groups; within a group by ``how``.

    ``argsort_desc`` reproduces ensemble-boxes' ``keys.argsort()[::-1]`` per group, ties included;
    ``stable_desc`` sorts by descending key, ties in input order; ``input`` keeps input order. The
    order of all rows (a stable sort) is cached under ``cache_key`` and the kept rows taken from it,
    which is the stable sort of the kept rows: the same order as sorting them alone.

    Returns:
        ``(order, starts, lengths, group_image, group_label)``; ``order`` indexes the rows of ``flat``.
    """
    img, label = flat.img, flat.label
    if how == "input":
        full = flat.cached_order(cache_key, lambda: _order_by(flat.group, flat.n_groups))
    else:
        full = flat.cached_order(cache_key, lambda: _order_by(flat.group, flat.n_groups, key))
    order = full[keep[full]]
    gi, gl = img[order], label[order]
    new = np.ones(len(order), bool)
    new[1:] = (gi[1:] != gi[:-1]) | (gl[1:] != gl[:-1])
    starts = np.flatnonzero(new)
    lengths = np.diff(np.append(starts, len(order)))
    if how == "argsort_desc" and len(order) > 1:
        k = key[order]
        tie = ~new[1:] & (k[1:] == k[:-1])
        if tie.any():
            gid = np.cumsum(new) - 1
            for g in np.unique(gid[1:][tie]):
                s, n = starts[g], lengths[g]
                rows = np.sort(order[s : s + n])  # input order, as ensemble-boxes builds its array
                order[s : s + n] = rows[key[rows].argsort()[::-1]]
    return order, starts, lengths, gi[starts], gl[starts]


def _collect(flat: FlatBoxes, out_img, out_lab, boxes, scores) -> FlatFused:
    """Fused rows in pixels, grouped by image and sorted by descending score, scores clipped at 1."""
    if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
        # ensemble-boxes divides by the summed scores too: clusters whose boxes all score 0 give NaN
        raise ValueError(
            "fusion gave non-finite boxes or scores: boxes of score 0 formed a cluster; "
            "set skip_box_thr above 0 to drop them"
        )
    order = _order_by(out_img, flat.n_images, scores)
    out_img, out_lab, boxes, scores = out_img[order], out_lab[order], boxes[order], scores[order]
    return FlatFused(
        image=out_img,
        labels=out_lab,
        boxes=(boxes * flat.scale[out_img]).astype(np.float32),
        scores=np.minimum(scores, 1.0).astype(np.float32),
        n_images=flat.n_images,
    )
