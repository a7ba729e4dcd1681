"""Overlay PNGs: an image with its boxes and their class and score drawn on it (`draw_overlay`).

Drawn with OpenCV's built-in Hershey font (no font file is read or downloaded), one colour per class,
line width and text size growing with the image. "No finding" (class 14) is written in the top-left
corner instead of drawn as a box.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from core.classes import NO_FINDING, NO_FINDING_NAME
from core.detections import Detections

#: BGR colours, one per class id (cycled): distinct on a grey X-ray
PALETTE: tuple[tuple[int, int, int], ...] = (
    (48, 48, 255), (0, 165, 255), (0, 255, 255), (80, 220, 80), (255, 160, 0), (255, 64, 160),
    (200, 0, 200), (128, 255, 128), (0, 128, 255), (255, 255, 0), (160, 80, 255), (0, 200, 160),
    (255, 128, 128), (128, 200, 255), (220, 220, 220),
)  # fmt: skip


def draw_overlay(
    gray: np.ndarray, dets: Detections, classes: Mapping[int, str], min_score: float = 0.0
) -> np.ndarray:
    """``gray`` as a BGR image with the boxes of ``dets`` scoring at least ``min_score`` drawn on it.

    Args:
        gray: ``(H, W)`` uint8 image.
        dets: boxes in ``gray``'s pixels.
        classes: ``category id → name`` for the labels.
        min_score: boxes below this are not drawn.

    Returns:
        ``(H, W, 3)`` uint8 BGR; boxes drawn lowest score first, so the best is on top.
    """
    import cv2

    out = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    h, w = gray.shape[:2]
    side = max(h, w)
    thick = max(1, round(side / 400))
    scale = max(0.35, side / 1600)
    font = cv2.FONT_HERSHEY_SIMPLEX
    order = np.argsort(dets.scores, kind="stable")
    for k in order:
        c, s = int(dets.labels[k]), float(dets.scores[k])
        if c == NO_FINDING or s < min_score:
            continue
        x1, y1, x2, y2 = (int(round(float(v))) for v in dets.boxes[k])
        color = PALETTE[c % len(PALETTE)]
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thick, cv2.LINE_AA)
        text = f"{classes.get(c, c)} {s:.2f}"
        (tw, th), base = cv2.getTextSize(text, font, scale, max(1, thick - 1))
        ty = y1 - base - 2 if y1 - th - base - 2 >= 0 else min(h - 1, y2 + th + 2)
        tx = min(max(0, x1), max(0, w - tw - 1))
        cv2.rectangle(out, (tx, ty - th - 1), (tx + tw + 1, ty + base), color, -1)
        cv2.putText(out, text, (tx, ty), font, scale, (0, 0, 0), max(1, thick - 1), cv2.LINE_AA)
    nf = np.flatnonzero(dets.labels == NO_FINDING)
    if len(nf):
        text = f"{NO_FINDING_NAME} {float(dets.scores[nf[0]]):.2f}"
        (tw, th), base = cv2.getTextSize(text, font, scale, max(1, thick - 1))
        cv2.rectangle(out, (0, 0), (tw + 6, th + base + 6), (0, 0, 0), -1)
        cv2.putText(out, text, (3, th + 3), font, scale, (255, 255, 255), max(1, thick - 1), cv2.LINE_AA)
    return out
