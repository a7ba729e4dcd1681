"""The synthetic picture: a chest-like phantom in display space with one lesion shape per class.

Display space is ``d ∈ [0, 1]``, 1 = dense/bright. Every picture is re-drawable
from its ``synth_truth.json`` entry (:func:`render_display`), so tests compare
decoded pixels with what was drawn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["paint_lesion", "place_lesions", "render_display"]


def _lesion_pattern(class_id: int, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(support, on) masks of a class's shape on box coordinates ``u, v ∈ [-1, 1]``.

    Inside the support, "on" pixels are painted bright and the rest dark, so
    every shape has high contrast whatever lies underneath.
    """
    r = np.sqrt(u * u + v * v)
    box = np.ones_like(u, dtype=bool)
    disk = r <= 1.0
    k = class_id % 14
    if k == 0:  # bright disk, dark rim
        return disk, r < 0.78
    if k == 1:  # horizontal stripes
        return box, np.floor((v + 1) * 2.5).astype(int) % 2 == 0
    if k == 2:  # 3x3 dots
        fu = ((u + 1) * 1.5) % 1.0 - 0.5
        fv = ((v + 1) * 1.5) % 1.0 - 0.5
        return box, fu * fu + fv * fv < 0.09
    if k == 3:  # thick ring, dark centre
        return disk, r > 0.55
    if k == 4:  # 4x4 checkerboard
        return box, (np.floor((u + 1) * 2).astype(int) + np.floor((v + 1) * 2).astype(int)) % 2 == 0
    if k == 5:  # diagonal hatch
        return box, np.floor((u + v + 2) * 2.0).astype(int) % 2 == 0
    if k == 6:  # vertical stripes
        return box, np.floor((u + 1) * 2.5).astype(int) % 2 == 0
    if k == 7:  # diamond with dark edge
        diamond = np.abs(u) + np.abs(v) <= 1.0
        return diamond | (np.maximum(np.abs(u), np.abs(v)) > 0.97), np.abs(u) + np.abs(v) < 0.72
    if k == 8:  # bright square, dark frame
        return box, np.maximum(np.abs(u), np.abs(v)) < 0.72
    if k == 9:  # plus
        return box, (np.abs(u) < 0.3) | (np.abs(v) < 0.3)
    if k == 10:  # triangle (lower left half bright)
        return box, v > u
    if k == 11:  # X
        return box, np.abs(np.abs(u) - np.abs(v)) < 0.3
    if k == 12:  # dark disk, bright rim
        return disk, r > 0.75
    # 13: concentric rings
    return disk, np.floor(r * 4).astype(int) % 2 == 0


def paint_lesion(d: np.ndarray, class_id: int, box: Sequence[int]) -> None:
    """Paint one lesion into a display image in place.

    Args:
        d: ``(H, W)`` float32 display image, 1 = bright.
        class_id: VinBigData class id 0..13 (selects the shape).
        box: ``(x1, y1, x2, y2)`` integer pixel box, ``x2``/``y2`` exclusive;
            the shape touches all four edges.

    Raises:
        ValueError: if the box is smaller than 2x2 pixels.
    """
    x1, y1, x2, y2 = (int(c) for c in box)
    w, h = x2 - x1, y2 - y1
    if w < 2 or h < 2:
        raise ValueError(f"lesion box {tuple(box)} is smaller than 2x2 pixels")
    u = ((np.arange(w, dtype=np.float32) + 0.5) / w * 2 - 1)[None, :].repeat(h, 0)
    v = ((np.arange(h, dtype=np.float32) + 0.5) / h * 2 - 1)[:, None].repeat(w, 1)
    support, on = _lesion_pattern(class_id, u, v)
    region = d[y1:y2, x1:x2]
    region[support & on] = 0.95
    region[support & ~on] = 0.05


def _chest(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Chest-like phantom without lesions or noise: ``(H, W)`` float32 in [0, 1]."""
    y = ((np.arange(height, dtype=np.float32) + 0.5) / height)[:, None]
    x = ((np.arange(width, dtype=np.float32) + 0.5) / width)[None, :]
    j = rng.uniform(-0.02, 0.02, size=8).astype(np.float32)
    d = np.full((height, width), 0.08, dtype=np.float32)  # air
    body = ((x - 0.5) / 0.47) ** 2 + ((y - 0.58) / 0.52) ** 2 <= 1.0
    d[body] = 0.48
    for cx, sgn in ((0.31 + j[0], -1), (0.69 + j[1], 1)):
        lung = ((x - cx) / (0.15 + j[2])) ** 2 + ((y - 0.46 - j[3]) / (0.30 + j[4])) ** 2 <= 1.0
        ribs = np.float32(0.05) * (np.sin((y * 38.0 + sgn * x * 6.0) * np.float32(math.pi)) > 0.55)
        lung_val = 0.20 + 0.06 * y + ribs
        d = np.where(lung, lung_val, d)
    heart = ((x - 0.55 - j[5]) / 0.14) ** 2 + ((y - 0.70) / 0.12) ** 2 <= 1.0
    d[heart] = 0.62
    spine = (np.abs(x - 0.5 - j[6]) < 0.07) & (y > 0.08) & (y < 0.98)
    d[spine] = 0.80
    return d.astype(np.float32, copy=False)


def _markers(d: np.ndarray) -> None:
    """Put a d=1 marker (top left) and a d=0 marker (top right) in place."""
    h, w = d.shape
    mh, mw = max(2, round(0.03 * h)), max(2, round(0.04 * w))
    oy, ox = max(1, round(0.02 * h)), max(1, round(0.02 * w))
    d[oy : oy + mh, ox : ox + mw] = 1.0
    d[oy : oy + mh, w - ox - mw : w - ox] = 0.0


def render_display(entry: dict[str, Any]) -> np.ndarray:
    """Re-draw a synthetic picture from its ``synth_truth.json`` entry.

    Args:
        entry: one value of ``synth_truth.json["images"]`` (needs ``width``,
            ``height``, ``picture_seed`` and ``lesions`` with ``class_id`` and
            ``box`` ``[x1, y1, x2, y2]``, ``x2``/``y2`` exclusive).

    Returns:
        ``(height, width)`` float32 display image in [0, 1], 1 = dense/bright;
        ``round(255 * d)`` is what ``dicom_to_uint8`` should give.

    Raises:
        KeyError: if the entry lacks one of those fields.
        ValueError: if a lesion box is smaller than 2x2 pixels.
    """
    h, w = int(entry["height"]), int(entry["width"])
    rng = np.random.default_rng(entry["picture_seed"])
    d = _chest(h, w, rng)
    for les in entry["lesions"]:
        paint_lesion(d, int(les["class_id"]), les["box"])
    d += rng.normal(0.0, 0.015, size=d.shape).astype(np.float32)
    np.clip(d, 0.0, 1.0, out=d)
    _markers(d)
    return d


def place_lesions(
    rng: np.random.Generator,
    height: int,
    width: int,
    classes: Sequence[int],
    n: int,
    wide: bool = False,
    distinct: bool = False,
) -> list[dict[str, Any]]:
    """Up to ``n`` non-overlapping lesion boxes inside the chest area.

    Args:
        rng: the image's lesion generator (consumed).
        height: image height in pixels.
        width: image width in pixels.
        classes: class ids to draw each lesion's class from.
        n: number of lesions wanted; one that finds no free place in 60 tries
            is left out.
        wide: RSNA-like opacities (tall boxes in one lung) instead of square-ish
            boxes of 8–25 % of the shorter side.
        distinct: give the lesions distinct classes (``n`` at most ``len(classes)``),
            drawn at once before placing; otherwise each lesion draws its own.

    Raises:
        ValueError: if ``distinct`` and ``n`` exceeds the number of classes.

    Returns:
        ``[{"class_id": int, "box": [x1, y1, x2, y2]}, ...]`` in integer pixels,
        ``x2``/``y2`` exclusive, at least 4 pixels a side.
    """
    out: list[dict[str, Any]] = []
    side = min(height, width)
    if distinct and n > len(classes):
        raise ValueError(f"{n} lesions of distinct classes need as many classes, got {len(classes)}")
    drawn = [int(c) for c in rng.choice(classes, size=n, replace=False)] if distinct else None
    for k in range(n):
        cls = drawn[k] if drawn is not None else int(rng.choice(classes))
        for _try in range(60):
            if wide:  # RSNA-like opacities: tall boxes in one lung
                bw = rng.uniform(0.13, 0.22) * width
                bh = rng.uniform(0.18, 0.35) * height
                cx = (
                    rng.uniform(0.22, 0.40) * width if rng.random() < 0.5 else rng.uniform(0.60, 0.78) * width
                )
                cy = rng.uniform(0.35, 0.62) * height
            else:
                s = rng.uniform(0.08, 0.25) * side
                bw, bh = s * rng.uniform(0.85, 1.2), s * rng.uniform(0.85, 1.2)
                cx = rng.uniform(0.12 * width + bw / 2, 0.88 * width - bw / 2)
                cy = rng.uniform(0.14 * height + bh / 2, 0.92 * height - bh / 2)
            x1, y1 = max(0, round(cx - bw / 2)), max(0, round(cy - bh / 2))
            x2, y2 = min(width, round(cx + bw / 2)), min(height, round(cy + bh / 2))
            if x2 - x1 < 4 or y2 - y1 < 4:
                continue
            gap = max(2, round(0.02 * side))
            if all(
                x1 >= o["box"][2] + gap
                or x2 + gap <= o["box"][0]
                or y1 >= o["box"][3] + gap
                or y2 + gap <= o["box"][1]
                for o in out
            ):
                out.append({"class_id": cls, "box": [int(x1), int(y1), int(x2), int(y2)]})
                break
    return out
