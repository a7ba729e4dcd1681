"""Weighted boxes fusion (WBF) and non-maximum weighted (NMW) over groups of boxes.

These are the engines behind `fusion.engine.fuse`; call that instead. A *group* is the boxes of one
label in one image, already prefiltered and sorted by descending weighted score, stored contiguously in
flat arrays (``starts``/``lengths`` index them). Coordinates are normalised ``xyxy`` in ``[0, 1]``.

Both methods are sequential: each box is matched against the clusters made so far (for WBF against the
*current fused* boxes, which move as boxes join). Instead of a Python loop per box, all groups advance in
lockstep: step ``k`` matches the ``k``-th box of every group at once with NumPy. The arithmetic
reproduces ensemble-boxes 1.0.9 exactly, including its float32 rounding of fused boxes, so matching
decisions and results are the same.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from core.boxes import box_area as _area
from core.boxes import iou_with_areas

_F64 = np.float64
_F32 = np.float32


def _chunks(lengths: np.ndarray, budget: int = 1 << 16) -> Iterator[np.ndarray]:
    """Group indices by descending length, in chunks of at most ``budget`` padded slots."""
    order = np.argsort(-lengths, kind="stable")
    i = 0
    while i < len(order):
        n0 = max(int(lengths[order[i]]), 1)
        m = max(1, budget // n0)
        yield order[i : i + m]
        i += m


def _active_counts(ln: np.ndarray, c: int) -> np.ndarray:
    """For descending ``ln``, the number of groups longer than ``k`` for each step ``k < c``."""
    return len(ln) - np.cumsum(np.bincount(ln, minlength=c + 1))[:c]


def _coordinate_major(boxes: np.ndarray) -> np.ndarray:
    """``(..., 4)`` boxes as a view of coordinate-major storage: ``boxes[..., 0]`` is contiguous.

    The IoU of a box against a group's slots reads each coordinate of many slots; stored this way
    each read is one contiguous run instead of every fourth number, which is about twice as fast.
    Values and arithmetic are unchanged.
    """
    return np.moveaxis(np.ascontiguousarray(np.moveaxis(boxes, -1, 0)), 0, -1)


_OUTSIDE = 3.0
"""Coordinate of an empty slot: a zero-area box at (3, 3) has IoU 0 with every box in [0, 1]."""


def _empty_slots(n_groups: int, n_slots: int) -> np.ndarray:
    """``(n_groups, n_slots, 4)`` coordinate-major slots holding the empty box ``_OUTSIDE`` (area 0).

    The IoU of any normalised box with an empty slot is exactly 0, never above a threshold in
    ``[0, 1]``, and 0 is not above a real slot's IoU in an argmax (the first maximum wins, and real
    slots come first), so comparisons need no mask of the filled slots.
    """
    return _coordinate_major(np.full((n_groups, n_slots, 4), _OUTSIDE, _F64))


def _iou_to_slots(slots: np.ndarray, slot_area: np.ndarray, b: np.ndarray, b_area: np.ndarray) -> np.ndarray:
    """IoU of each box ``b`` (A, 4) against its group's slots (A, C, 4), in ensemble-boxes' operation order."""
    return iou_with_areas(slots, slot_area, b[:, None, :], b_area[:, None])


def wbf_groups(
    boxes: np.ndarray,
    sw: np.ndarray,
    w: np.ndarray,
    model: np.ndarray,
    starts: np.ndarray,
    lengths: np.ndarray,
    weights: np.ndarray,
    iou_thr: float,
    conf_type: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted boxes fusion of every group.

    Args:
        boxes: ``(T, 4)`` float64 normalised ``xyxy``, each group sorted by descending ``sw``.
        sw: ``(T,)`` float64 score times model weight.
        w: ``(T,)`` float64 weight of the box's model.
        model: ``(T,)`` int64 model index of each box.
        starts, lengths: ``(G,)`` int64 first row and row count of each group.
        weights: ``(M,)`` float64 model weights (all models, empty ones included).
        iou_thr: a box joins the cluster of best IoU if that IoU is strictly above this.
        conf_type: ``avg``, ``max``, ``box_and_model_avg`` or ``absent_model_aware_avg``.

    Returns:
        ``(group, boxes, scores)``: ``(K,)`` int64 group of each fused box, ``(K, 4)`` float64
        normalised boxes, ``(K,)`` float64 scores (not clipped; ensemble-boxes' values).
    """
    n_models = len(weights)
    w_total = weights.sum()
    track_models = conf_type in ("box_and_model_avg", "absent_model_aware_avg")
    out_g, out_b, out_s = [], [], []
    for gs in _chunks(lengths):
        st = starts[gs]
        ln = lengths[gs]
        n_g, c_max = len(gs), int(ln[0])
        if c_max == 0:
            continue
        fused = _empty_slots(n_g, c_max)  # clusters not yet made overlap nothing: no mask needed
        area = np.zeros((n_g, c_max), _F64)
        acc = np.zeros((n_g, c_max, 4), _F32)
        conf = np.zeros((n_g, c_max), _F64)
        wsum = np.zeros((n_g, c_max), _F64)
        smax = np.zeros((n_g, c_max), _F64)
        cnt = np.zeros((n_g, c_max), np.int64)
        pres = np.zeros((n_g, c_max, n_models), bool) if track_models else None
        nc = np.zeros(n_g, np.int64)
        slot_ids = np.arange(c_max)
        for k, n_act in enumerate(_active_counts(ln, c_max)):
            n_act = int(n_act)
            idx = st[:n_act] + k
            b, s = boxes[idx], sw[idx]
            b_area = _area(b)
            n_cl = int(nc[:n_act].max())
            if n_cl:
                iou = _iou_to_slots(fused[:n_act, :n_cl], area[:n_act, :n_cl], b, b_area)
                best = iou.argmax(1)
                match = iou[np.arange(n_act), best] > iou_thr
            else:
                best = np.zeros(n_act, np.int64)
                match = np.zeros(n_act, bool)
            m = np.flatnonzero(match)
            if m.size:
                c = best[m]
                a_new = (acc[m, c].astype(_F64) + s[m, None] * b[m]).astype(_F32)
                acc[m, c] = a_new
                cf = conf[m, c] + s[m]
                conf[m, c] = cf
                wsum[m, c] = wsum[m, c] + w[idx[m]]
                cnt[m, c] += 1
                smax[m, c] = np.maximum(smax[m, c], s[m])
                fb = (a_new.astype(_F64) / cf[:, None]).astype(_F32).astype(_F64)
                fused[m, c] = fb
                area[m, c] = _area(fb)
                if pres is not None:
                    pres[m, c, model[idx[m]]] = True
            u = np.flatnonzero(~match)
            if u.size:
                c = nc[u]
                fused[u, c] = b[u]
                area[u, c] = b_area[u]
                acc[u, c] = (s[u, None] * b[u]).astype(_F32)
                conf[u, c] = s[u]
                wsum[u, c] = w[idx[u]]
                smax[u, c] = s[u]
                cnt[u, c] = 1
                if pres is not None:
                    pres[u, c, model[idx[u]]] = True
                nc[u] += 1
        valid = slot_ids[None, :] < nc[:, None]
        n = cnt[valid]
        single = n == 1
        if conf_type == "max":
            col = np.where(single, conf[valid], smax[valid].astype(_F32))
            score = col / weights.max()
        else:
            col = np.where(single, conf[valid], (conf[valid] / n).astype(_F32))
            wcol = np.where(single, wsum[valid], wsum[valid].astype(_F32))
            if conf_type == "avg":
                score = col * np.minimum(n_models, n) / w_total
            elif conf_type == "box_and_model_avg":
                present = (pres[valid] * weights[None, :]).sum(1)
                score = col * n / wcol * present / w_total
            else:  # absent_model_aware_avg
                absent = (~pres[valid] * weights[None, :]).sum(1)
                score = col * n / (wcol + absent)
        out_g.append(np.repeat(gs, nc))
        out_b.append(fused[valid])
        out_s.append(score)
    if not out_g:
        return np.zeros(0, np.int64), np.zeros((0, 4), _F64), np.zeros(0, _F64)
    return np.concatenate(out_g), np.concatenate(out_b), np.concatenate(out_s)


def nmw_groups(
    boxes: np.ndarray, sw: np.ndarray, starts: np.ndarray, lengths: np.ndarray, iou_thr: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Non-maximum weighted fusion of every group (ensemble-boxes' ``non_maximum_weighted``).

    Each box joins the earlier *main* box (a box that matched none before it) of highest IoU, if that
    IoU is strictly above ``iou_thr``; a cluster's box is the average of its members weighted by
    score times IoU with the main box, and its score is the main box's.

    Args:
        boxes: ``(T, 4)`` float64 normalised ``xyxy``, each group sorted by descending ``sw``.
        sw: ``(T,)`` float64 score times model weight (weights divided by their maximum).
        starts, lengths: ``(G,)`` int64 first row and row count of each group.
        iou_thr: matching threshold.

    Returns:
        ``(group, boxes, scores)`` as `wbf_groups`.
    """
    out_g, out_b, out_s = [], [], []
    for gs in _chunks(lengths):
        st = starts[gs]
        ln = lengths[gs]
        n_g, c_max = len(gs), int(ln[0])
        if c_max == 0:
            continue
        main = _empty_slots(n_g, c_max)
        area = np.zeros((n_g, c_max), _F64)
        acc = np.zeros((n_g, c_max, 4), _F32)
        conf = np.zeros((n_g, c_max), _F64)
        top = np.zeros((n_g, c_max), _F64)
        nc = np.zeros(n_g, np.int64)
        slot_ids = np.arange(c_max)
        for k, n_act in enumerate(_active_counts(ln, c_max)):
            n_act = int(n_act)
            idx = st[:n_act] + k
            b, s = boxes[idx], sw[idx]
            b_area = _area(b)
            n_cl = int(nc[:n_act].max())
            if n_cl:
                iou = _iou_to_slots(main[:n_act, :n_cl], area[:n_act, :n_cl], b, b_area)
                best = iou.argmax(1)
                best_iou = iou[np.arange(n_act), best]
                match = best_iou > iou_thr
            else:
                best = np.zeros(n_act, np.int64)
                best_iou = np.zeros(n_act, _F64)
                match = np.zeros(n_act, bool)
            m = np.flatnonzero(match)
            if m.size:
                c = best[m]
                wt = s[m] * best_iou[m]
                acc[m, c] = (acc[m, c].astype(_F64) + wt[:, None] * b[m]).astype(_F32)
                conf[m, c] = conf[m, c] + wt
            u = np.flatnonzero(~match)
            if u.size:
                c = nc[u]
                main[u, c] = b[u]
                area[u, c] = b_area[u]
                acc[u, c] = (s[u, None] * b[u]).astype(_F32)
                conf[u, c] = s[u]
                top[u, c] = s[u]
                nc[u] += 1
        valid = slot_ids[None, :] < nc[:, None]
        fb = (acc[valid].astype(_F64) / conf[valid][:, None]).astype(_F32).astype(_F64)
        out_g.append(np.repeat(gs, nc))
        out_b.append(fb)
        out_s.append(top[valid].astype(_F32).astype(_F64))
    if not out_g:
        return np.zeros(0, np.int64), np.zeros((0, 4), _F64), np.zeros(0, _F64)
    return np.concatenate(out_g), np.concatenate(out_b), np.concatenate(out_s)
