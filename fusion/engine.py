"""Fusion of several models' detections: WBF, NMS, Soft-NMS and NMW.

`fuse` fuses the detections of one image, `fuse_many` those of every image of a dataset (faster than
calling `fuse` per image: all images advance together). Both take and return `Detections` in absolute
pixels; boxes are divided by the image's width and height only inside the fusion.

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

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

from core.detections import Detections
from fusion.nms import nms_groups, soft_nms_groups
from fusion.wbf import nmw_groups, wbf_groups

Method = Literal["wbf", "nms", "soft-nms", "nmw"]
METHODS = ("wbf", "nms", "soft-nms", "nmw")
CONF_TYPES = ("avg", "max", "box_and_model_avg", "absent_model_aware_avg")
SOFT_METHODS = ("gaussian", "linear")
BOX_TOLERANCE_PX = 1.0
"""How far (pixels) a box may reach outside the image before `fuse` refuses it."""


def fuse(
    dets: Sequence[Detections],
    width: int,
    height: int,
    *,
    method: Method = "wbf",
    weights: Sequence[float] | None = None,
    iou_thr: float = 0.55,
    skip_box_thr: float = 0.0,
    conf_type: str = "avg",
    sigma: float = 0.5,
    soft_method: Literal["gaussian", "linear"] = "gaussian",
    soft_score_thr: float = 0.001,
) -> Detections:
    """Fuse several models' detections of one image.

    Args:
        dets: one `Detections` per model (boxes ``xyxy`` in pixels of a ``width`` x ``height`` image);
            a model may have none.
        width, height: the image size in pixels (> 0).
        method: ``wbf`` (weighted boxes fusion), ``nms``, ``soft-nms`` or ``nmw`` (non-maximum weighted).
        weights: one positive weight per model; default all 1.
        iou_thr: IoU in ``[0, 1]`` above which boxes of one label match (or suppress).
        skip_box_thr: boxes with a score below this are dropped first.
        conf_type: WBF's score: ``avg``, ``max``, ``box_and_model_avg`` or ``absent_model_aware_avg``.
        sigma: Soft-NMS gaussian ``sigma`` (> 0).
        soft_method: Soft-NMS decay, ``gaussian`` or ``linear`` (``1 - iou`` above ``iou_thr``).
        soft_score_thr: Soft-NMS keeps boxes whose decayed score is above this (ensemble-boxes' ``thresh``).

    Returns:
        `Detections` in pixels, sorted by descending score, scores in ``[0, 1]``.

    Raises:
        ValueError: for an unknown method, conf_type or soft_method, a bad threshold, size or weight,
            a ``weights`` whose length is not ``len(dets)``, or a box more than ``BOX_TOLERANCE_PX``
            outside the image (naming the model index and the box).
        TypeError: if an element of ``dets`` is not a `Detections`.
    """
    return _fuse_images(
        [("", dets, width, height)],
        len(dets),
        method=method,
        weights=weights,
        iou_thr=iou_thr,
        skip_box_thr=skip_box_thr,
        conf_type=conf_type,
        sigma=sigma,
        soft_method=soft_method,
        soft_score_thr=soft_score_thr,
    )[0]


def fuse_many(
    per_model: Sequence[Mapping[int, Detections]],
    sizes: Mapping[int, tuple[int, int]],
    **kw: object,
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
    unknown = set(kw) - {
        "method",
        "weights",
        "iou_thr",
        "skip_box_thr",
        "conf_type",
        "sigma",
        "soft_method",
        "soft_score_thr",
    }
    if unknown:
        raise ValueError(f"unknown fusion options {sorted(unknown)}")
    for t, m in enumerate(per_model):
        extra = [i for i in m if i not in sizes]
        if extra:
            raise ValueError(f"model {t} has detections for image ids not in sizes, e.g. {extra[:5]}")
    empty = Detections.empty()
    ids = list(sizes)
    images = []
    for i in ids:
        w, h = sizes[i]
        images.append((f"image {i}: ", [m.get(i, empty) for m in per_model], w, h))
    return dict(zip(ids, _fuse_images(images, len(per_model), **kw), strict=True))  # type: ignore[arg-type]


def _check_options(
    method: str,
    conf_type: str,
    soft_method: str,
    iou_thr: float,
    skip_box_thr: float,
    sigma: float,
    soft_score_thr: float,
    weights: Sequence[float] | None,
    n_models: int,
) -> np.ndarray:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    if conf_type not in CONF_TYPES:
        raise ValueError(f"unknown conf_type {conf_type!r}; known: {', '.join(CONF_TYPES)}")
    if soft_method not in SOFT_METHODS:
        raise ValueError(f"unknown soft_method {soft_method!r}; known: {', '.join(SOFT_METHODS)}")
    if not 0.0 <= iou_thr <= 1.0:
        raise ValueError(f"iou_thr must be in [0, 1], got {iou_thr!r}")
    if not np.isfinite(skip_box_thr):
        raise ValueError(f"skip_box_thr must be finite, got {skip_box_thr!r}")
    if not (np.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    if not np.isfinite(soft_score_thr):
        raise ValueError(f"soft_score_thr must be finite, got {soft_score_thr!r}")
    if n_models == 0:
        raise ValueError("need detections of at least one model, got none")
    if weights is None:
        return np.ones(n_models)
    w = np.array(weights, dtype=np.float64).reshape(-1)
    if len(w) != n_models:
        raise ValueError(f"got {len(w)} weights {list(weights)} for {n_models} models")
    if not (np.isfinite(w).all() and (w > 0).all()):
        raise ValueError(f"weights must be finite and > 0, got {list(weights)}")
    return w


def _fuse_images(
    images: Sequence[tuple[str, Sequence[Detections], int, int]],
    n_models: int,
    *,
    method: str = "wbf",
    weights: Sequence[float] | None = None,
    iou_thr: float = 0.55,
    skip_box_thr: float = 0.0,
    conf_type: str = "avg",
    sigma: float = 0.5,
    soft_method: str = "gaussian",
    soft_score_thr: float = 0.001,
) -> list[Detections]:
    """Fuse each image of ``(error prefix, per-model detections, width, height)``."""
    w = _check_options(
        method, conf_type, soft_method, iou_thr, skip_box_thr, sigma, soft_score_thr, weights, n_models
    )
    flat = _flatten(images, n_models)
    if flat is None:
        return [Detections.empty() for _ in images]
    img, model, boxes, score, label = flat
    keep = score >= skip_box_thr
    keep &= _area(boxes) != 0.0
    img, model, boxes, score, label = img[keep], model[keep], boxes[keep], score[keep], label[keep]

    if method == "wbf":
        sw = score * w[model]
        order, starts, lengths, g_img, g_lab = _group(img, label, sw, "argsort_desc")
        g, fb, fs = wbf_groups(
            boxes[order],
            sw[order],
            w[model[order]],
            model[order],
            starts,
            lengths,
            w,
            float(iou_thr),
            conf_type,
        )
        out_img, out_lab = g_img[g], g_lab[g]
    elif method == "nmw":
        sw = score * (w / w.max())[model]
        order, starts, lengths, g_img, g_lab = _group(img, label, sw, "argsort_desc")
        g, fb, fs = nmw_groups(boxes[order], sw[order], starts, lengths, float(iou_thr))
        out_img, out_lab = g_img[g], g_lab[g]
    else:
        # ensemble-boxes keeps float32 scores when no weights are given (Soft-NMS decays them in float32)
        sc = score.astype(np.float32) if weights is None else (score * w[model]) / w.sum()
        if method == "nms":
            order, starts, lengths, _, _ = _group(img, label, sc, "stable_desc")
            kept = nms_groups(boxes[order], starts, lengths, float(iou_thr))
        else:
            order, starts, lengths, _, _ = _group(img, label, sc, "input")
            kept = soft_nms_groups(
                boxes[order],
                sc[order],
                starts,
                lengths,
                iou_thr=float(iou_thr),
                sigma=float(sigma),
                score_thr=float(soft_score_thr),
                linear=soft_method == "linear",
            )
        sel = order[kept]
        out_img, out_lab, fb, fs = img[sel], label[sel], boxes[sel], sc[sel].astype(np.float64)
    return _split(images, out_img, out_lab, fb, fs)


def _area(b: np.ndarray) -> np.ndarray:
    return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])


def _flatten(images: Sequence[tuple[str, Sequence[Detections], int, int]], n_models: int):
    """Concatenate all boxes (image, then model, then row order), normalised, checked and clipped to [0, 1]."""
    parts = []
    for i, (where, dets, width, height) in enumerate(images):
        if len(dets) != n_models:
            raise ValueError(f"{where}got detections of {len(dets)} models, expected {n_models}")
        if not (width > 0 and height > 0):
            raise ValueError(f"{where}image size must be positive, got width={width!r} height={height!r}")
        scale = np.array([width, height, width, height], np.float64)
        for t, d in enumerate(dets):
            if not isinstance(d, Detections):
                raise TypeError(f"{where}model {t}: expected Detections, got {type(d).__name__}")
            if len(d) == 0:
                continue
            b = d.boxes.astype(np.float64)
            tol = BOX_TOLERANCE_PX
            bad = (b[:, 0] < -tol) | (b[:, 1] < -tol) | (b[:, 2] > width + tol) | (b[:, 3] > height + tol)
            if bad.any():
                j = int(np.flatnonzero(bad)[0])
                raise ValueError(
                    f"{where}model {t} box {j} {d.boxes[j].tolist()} lies outside the {width}x{height} image "
                    f"(by more than {tol} px)"
                )
            parts.append((i, t, b / scale, d.scores, d.labels))
    if not parts:
        return None
    img = np.concatenate([np.full(len(p[2]), p[0], np.int64) for p in parts])
    model = np.concatenate([np.full(len(p[2]), p[1], np.int64) for p in parts])
    boxes = np.clip(np.concatenate([p[2] for p in parts]), 0.0, 1.0)
    score = np.concatenate([p[3] for p in parts]).astype(np.float64)
    label = np.concatenate([p[4] for p in parts]).astype(np.int64)
    return img, model, boxes, score, label


def _group(img: np.ndarray, label: np.ndarray, key: np.ndarray, how: str):
    """Order rows into (image, label) groups; within a group by ``how``.

    ``argsort_desc`` reproduces ensemble-boxes' ``keys.argsort()[::-1]`` per group, ties included;
    ``stable_desc`` sorts by descending key, ties in input order; ``input`` keeps input order.

    Returns:
        ``(order, starts, lengths, group_image, group_label)``.
    """
    if how == "input":
        order = np.lexsort((label, img))
    else:
        order = np.lexsort((-key.astype(np.float64), label, img))
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


def _split(images, out_img, out_lab, boxes, scores) -> list[Detections]:
    """Per-image `Detections` in pixels, sorted by descending score, scores clipped at 1."""
    order = np.lexsort((-scores, out_img))
    out_img, out_lab, boxes, scores = out_img[order], out_lab[order], boxes[order], scores[order]
    bounds = np.searchsorted(out_img, np.arange(len(images) + 1))
    result = []
    for i, (_, _, width, height) in enumerate(images):
        a, b = bounds[i], bounds[i + 1]
        if a == b:
            result.append(Detections.empty())
            continue
        scale = np.array([width, height, width, height], np.float64)
        result.append(
            Detections(
                (boxes[a:b] * scale).astype(np.float32),
                np.minimum(scores[a:b], 1.0).astype(np.float32),
                out_lab[a:b],
            )
        )
    return result
