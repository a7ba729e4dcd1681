"""The gate's combination rules: a normal/abnormal classifier's ``p_abnormal`` meets the boxes.

A gate file gives one ``p_abnormal`` in ``[0, 1]`` per image (see `core.predictions.read_gate`);
``p_normal = 1 - p_abnormal``. The VinBigData metric scores class 14 "No finding" as a detection
with the box ``[0, 0, 1, 1]`` on every normal image, so each rule may add one such row per image
(``NO_FINDING_BOX``, in absolute pixels ``xyxy``, which is also ``xywh`` ``[0, 0, 1, 1]``). Its
score is always P(normal), never P(abnormal).

Rules (``mode``), for an image with boxes ``B`` (scores ``s``) and gate score ``p = p_abnormal``:

- ``append`` (the 2nd-place VinBigData team's rule): ``B`` unchanged, plus "No finding" with
  score ``1 - p``.
- ``filter`` with thresholds ``low <= high``:
  ``p < low``: the image is called normal: ``B`` dropped, only "No finding" with score 1;
  ``low <= p <= high``: ``B`` unchanged plus "No finding" with score ``1 - p``;
  ``p > high``: the image is called abnormal: ``B`` only.
  So ``low = 0, high = 1`` is ``append``.
- ``rescale``: scores ``s * p`` (boxes of likely-normal images sink in the ranking of every class),
  plus "No finding" with score ``1 - p``. The "No finding" row is appended because without it a
  normal image can score nothing for class 14 and the metric's 15th class would be lost; a metric
  without class 14 (COCO, RSNA) ignores it (`strip_no_finding`).
- ``rescore`` (needs a classifier with per-class probabilities, `core.class_probs`): a box of class
  ``c`` scores ``s * P(c | image)``, the probability of the classifier's class that stands for
  category ``c`` (a category no class stands for falls back to ``p``, as ``rescale``), plus "No
  finding" with score P(no finding) ``= 1 - p``. With every probability 1 the boxes are unchanged
  and "No finding" scores 1. `class_scores` turns a `core.class_probs.ClassProbs` into the
  ``p_class`` mapping it takes.

No rule mutates its inputs: each returns a new dict of new `Detections`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np

from core.class_probs import ClassProbs
from core.classes import NO_FINDING, NO_FINDING_BOX
from core.detections import Detections

GateMode = Literal["append", "filter", "rescale", "rescore"]
GATE_MODES: tuple[str, ...] = ("append", "filter", "rescale", "rescore")
#: the modes that need per-class probabilities (`class_scores`), not only ``p_abnormal``
CLASS_MODES: tuple[str, ...] = ("rescore",)


def class_scores(cp: ClassProbs) -> dict[int, dict[int, float]] | None:
    """``image_id -> {category_id: P(the class standing for it | image)}`` for the ``rescore`` mode.

    Only classes that stand for a lesion category count (not "No finding", 14, whose score comes
    from ``p_abnormal``).

    Returns:
        The mapping, or None when no class of ``cp`` stands for a lesion category (a binary gate, or
        a classifier whose classes are no detection categories): ``rescore`` does not apply.
    """
    cols = [(k, int(c)) for k, c in enumerate(cp.category_ids) if c is not None and int(c) != NO_FINDING]
    if not cols:
        return None
    probs = cp.probs[:, [k for k, _ in cols]].tolist()
    cats = [c for _, c in cols]
    ids = cp.image_ids.tolist()
    return {int(i): dict(zip(cats, row, strict=True)) for i, row in zip(ids, probs, strict=True)}


def check_gate_options(mode: str, low: float | None = None, high: float | None = None) -> None:
    """Validate a gate mode and its thresholds.

    Raises:
        ValueError: for an unknown ``mode``; for ``filter`` without both thresholds, with a
            threshold outside ``[0, 1]`` or with ``low > high``; for thresholds given to another mode.
    """
    if mode not in GATE_MODES:
        raise ValueError(f"unknown gate mode {mode!r}; known: {', '.join(GATE_MODES)}")
    if mode != "filter":
        if low is not None or high is not None:
            raise ValueError(f"low/high thresholds apply to the gate mode 'filter' only, not {mode!r}")
        return
    if low is None or high is None:
        raise ValueError(
            f"the gate mode 'filter' needs both thresholds low and high, got low={low} high={high}"
        )
    for name, v in (("low", low), ("high", high)):
        if not (np.isfinite(v) and 0.0 <= v <= 1.0):
            raise ValueError(f"gate threshold {name} must be in [0, 1], got {v!r}")
    if low > high:
        raise ValueError(f"gate threshold low ({low}) must be <= high ({high})")


def apply_gate(
    dets: Mapping[int, Detections],
    p_abnormal: Mapping[int, float],
    mode: GateMode,
    low: float | None = None,
    high: float | None = None,
    p_class: Mapping[int, Mapping[int, float]] | None = None,
) -> dict[int, Detections]:
    """Combine detections with gate scores by ``mode`` (see the module docstring).

    Args:
        dets: ``image_id -> Detections`` (pixels; no class-14 rows).
        p_abnormal: ``image_id -> P(abnormal)`` in ``[0, 1]`` for every image of ``dets`` (more is fine).
        mode: ``append``, ``filter``, ``rescale`` or ``rescore``.
        low, high: the ``filter`` thresholds on ``p_abnormal``; None for the other modes.
        p_class: ``rescore`` only: ``image_id -> {category_id: P(class | image)}`` (`class_scores`)
            for every image of ``dets``; a category an image's mapping lacks uses ``p_abnormal``.

    Returns:
        ``image_id -> Detections`` for every image of ``dets``, sorted by descending score.

    Raises:
        ValueError: for bad options (`check_gate_options`), ``rescore`` without ``p_class``, images
            of ``dets`` missing from ``p_abnormal`` or ``p_class`` (naming them), a probability
            outside ``[0, 1]``, or an image that already has "No finding" rows (gated twice).
    """
    check_gate_options(mode, low, high)
    if mode in CLASS_MODES and p_class is None:
        raise ValueError(
            f"the gate mode {mode!r} needs a classifier's per-class probabilities (classes that stand "
            "for the detection categories); this gate has p_abnormal only (use rescale)"
        )
    what, missing = "score", [i for i in dets if i not in p_abnormal]
    if not missing and mode in CLASS_MODES:
        what, missing = "per-class probabilities", [i for i in dets if i not in p_class]  # type: ignore[operator]
    if missing:
        raise ValueError(
            f"the gate has no {what} for {len(missing)} of {len(dets)} images, e.g. image ids "
            f"{sorted(missing)[:10]}"
        )
    out: dict[int, Detections] = {}
    for image_id, d in dets.items():
        p = float(p_abnormal[image_id])
        if not (np.isfinite(p) and 0.0 <= p <= 1.0):
            raise ValueError(f"image {image_id}: p_abnormal must be in [0, 1], got {p!r}")
        if (d.labels == NO_FINDING).any():
            raise ValueError(
                f"image {image_id} already has 'No finding' (class {NO_FINDING}) rows; "
                "gate detections that have not been gated"
            )
        if mode == "append":
            out[image_id] = with_no_finding(d, p)
        elif mode == "rescale":
            scaled = Detections(d.boxes, d.scores * np.float32(p), d.labels)
            out[image_id] = with_no_finding(scaled, p)
        elif mode == "rescore":
            probs = p_class[image_id]  # type: ignore[index]
            f = np.array([probs.get(int(c), p) for c in d.labels.tolist()], np.float64)
            if not (np.isfinite(f) & (f >= 0.0) & (f <= 1.0)).all():
                raise ValueError(f"image {image_id}: a class probability is outside [0, 1]: {f.tolist()}")
            scaled = Detections(d.boxes, d.scores * f.astype(np.float32), d.labels)
            out[image_id] = with_no_finding(scaled, p)
        elif p < low:  # type: ignore[operator]
            out[image_id] = _add_no_finding_row(Detections.empty(), 1.0)
        elif p <= high:  # type: ignore[operator]
            out[image_id] = with_no_finding(d, p)
        else:
            out[image_id] = d
    return out


def strip_no_finding(dets: Mapping[int, Detections]) -> dict[int, Detections]:
    """The same detections without class-14 "No finding" rows (for metrics that lack the class)."""
    return {
        i: (d.select(d.labels != NO_FINDING) if (d.labels == NO_FINDING).any() else d)
        for i, d in dets.items()
    }


def has_no_finding(d: Detections) -> bool:
    """Whether ``d`` holds a "No finding" row (gated, or predicted by a model)."""
    return bool((d.labels == NO_FINDING).any())


def with_no_finding(d: Detections, p_abnormal: float) -> Detections:
    """The one "No finding" rule: ``d`` plus the row ``NO_FINDING_BOX`` scored P(normal) = ``1 - p_abnormal``.

    Every place that turns a gate score into "No finding" calls this: the gate modes here, the
    leaderboard's ``--gate`` for rows without class 14, and the Kaggle submission.

    Raises:
        ValueError: if ``p_abnormal`` is not in ``[0, 1]``.
    """
    p = float(p_abnormal)
    if not (np.isfinite(p) and 0.0 <= p <= 1.0):
        raise ValueError(f"p_abnormal must be in [0, 1], got {p_abnormal!r}")
    return _add_no_finding_row(d, 1.0 - p)


def _add_no_finding_row(d: Detections, p_normal: float) -> Detections:
    """``d`` plus one "No finding" row of score ``p_normal``, sorted by descending score (stable)."""
    boxes = np.concatenate([d.boxes, np.array([NO_FINDING_BOX], np.float32)])
    scores = np.concatenate([d.scores, np.array([p_normal], np.float32)])
    labels = np.concatenate([d.labels, np.array([NO_FINDING], np.int64)])
    order = np.argsort(-scores, kind="stable")
    return Detections(boxes[order], scores[order], labels[order])
