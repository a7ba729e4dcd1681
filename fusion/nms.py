"""Non-maximum suppression (NMS) and Soft-NMS over groups of boxes.

These are the engines behind `fusion.engine.fuse`; call that instead. A *group* is the boxes of one
label in one image, stored contiguously in flat arrays (``starts``/``lengths`` index them), coordinates
normalised ``xyxy`` in ``[0, 1]``. All groups advance in lockstep, one box per group per NumPy step,
reproducing ensemble-boxes 1.0.9's ``nms`` and ``soft_nms`` (``cpu_soft_nms_float``).
"""

from __future__ import annotations

import numpy as np

from core.boxes import iou_above
from fusion.wbf import _active_counts, _area, _chunks, _coordinate_major, _empty_slots, _iou_to_slots


def nms_groups(boxes: np.ndarray, starts: np.ndarray, lengths: np.ndarray, iou_thr: float) -> np.ndarray:
    """Greedy NMS of every group: a box is kept unless an earlier kept box has IoU strictly above ``iou_thr``.

    Each step compares the next box of every group with that group's boxes kept so far only (not
    with every earlier box), held in coordinate-major slots.

    Args:
        boxes: ``(T, 4)`` float64 normalised ``xyxy``, each group sorted by descending score.
        starts, lengths: ``(G,)`` int64 first row and row count of each group.
        iou_thr: suppression threshold.

    Returns:
        ``(T,)`` bool, True for kept rows.
    """
    keep_all = np.zeros(len(boxes), bool)
    for gs in _chunks(lengths, budget=1 << 14):  # small chunks: the slots stay in cache
        st, ln = starts[gs], lengths[gs]
        n_g, c_max = len(gs), int(ln[0])
        if c_max == 0:
            continue
        kept = _empty_slots(n_g, c_max)  # empty slots overlap nothing: no mask needed
        kept_area = np.zeros((n_g, c_max))
        n_kept = np.zeros(n_g, np.int64)
        for k, n_act in enumerate(_active_counts(ln, c_max)):
            n_act = int(n_act)
            idx = st[:n_act] + k
            b = boxes[idx]
            b_area = _area(b)
            m = int(n_kept[:n_act].max())
            if m:
                over = iou_above(kept[:n_act, :m], kept_area[:n_act, :m], b[:, None, :], b_area[:, None], iou_thr)
                ok = np.flatnonzero(~over.any(1))
            else:
                ok = np.arange(n_act)
            c = n_kept[ok]
            kept[ok, c] = b[ok]
            kept_area[ok, c] = b_area[ok]
            n_kept[ok] += 1
            keep_all[idx[ok]] = True
    return keep_all


def soft_nms_groups(
    boxes: np.ndarray,
    scores: np.ndarray,
    starts: np.ndarray,
    lengths: np.ndarray,
    *,
    iou_thr: float,
    sigma: float,
    score_thr: float,
    linear: bool,
) -> np.ndarray:
    """Soft-NMS of every group, as ensemble-boxes' ``cpu_soft_nms_float``.

    Repeatedly moves the highest remaining (decayed) score to the front and decays the scores of the
    boxes after it by ``exp(-iou**2 / sigma)`` (gaussian) or ``1 - iou`` where ``iou > iou_thr``
    (linear). Decay is computed in ``scores.dtype`` (float32 scores decay in float32, as there).

    Args:
        boxes: ``(T, 4)`` float64 normalised ``xyxy``, each group in input order (not sorted).
        scores: ``(T,)`` float32 or float64 scores.
        starts, lengths: ``(G,)`` int64 first row and row count of each group.
        iou_thr, sigma, score_thr, linear: see above; a box is kept if its decayed score is above
            ``score_thr``.

    Returns:
        ``(T,)`` bool, True for kept rows (their *undecayed* scores are what ensemble-boxes returns).
    """
    keep_all = np.zeros(len(boxes), bool)
    for gs in _chunks(lengths, budget=1 << 16):
        st, ln = starts[gs], lengths[gs]
        c_max = int(ln[0])
        if c_max == 0:
            continue
        slot_ids = np.arange(c_max)
        valid = slot_ids[None, :] < ln[:, None]
        rows = np.where(valid, st[:, None] + slot_ids[None, :], -1)
        det = _coordinate_major(np.where(valid[..., None], boxes[np.maximum(rows, 0)], 0.0))
        area = _area(det)
        sc = np.where(valid, scores[np.maximum(rows, 0)], -np.inf).astype(scores.dtype)
        for i, n_act in enumerate(_active_counts(ln, c_max)):
            n_act = int(n_act)
            r = np.arange(n_act)
            j = i + sc[:n_act, i:].argmax(1)
            for arr in (det, area, sc, rows):
                a_i = arr[r, i].copy()
                arr[r, i] = arr[r, j]
                arr[r, j] = a_i
            if i == c_max - 1:
                break
            pos = slice(i + 1, c_max)
            ovr = _iou_to_slots(det[:n_act, pos], area[:n_act, pos], det[:n_act, i], area[:n_act, i])
            if linear:
                weight = np.where(ovr > iou_thr, 1.0 - ovr, 1.0)
            else:
                weight = np.exp(-(ovr * ovr) / sigma)
            sc[:n_act, pos] = weight * sc[:n_act, pos]
        kept = rows[(sc > score_thr) & (rows >= 0)]
        keep_all[kept] = True
    return keep_all
