"""The `Detections` record: boxes, scores and labels of one image.

Boxes are `(N, 4)` float32 ``xyxy`` in absolute pixels of the dataset's image
(the converted PNG, not the original DICOM), scores `(N,)` float32 in [0, 1],
labels `(N,)` int64 dataset category ids. COCO results use ``xywh``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Detections:
    """Detections of one image; validated and made read-only on creation.

    Raises:
        ValueError: if a column has the wrong shape, a box has ``x2 < x1`` or
            ``y2 < y1``, or a value is not finite.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        raw = np.asarray(self.boxes, dtype=np.float32)
        if raw.size and (raw.ndim != 2 or raw.shape[1] != 4):
            raise ValueError(f"boxes must have shape (N, 4), got {raw.shape}")
        boxes = raw.reshape(-1, 4).copy() if raw.size else np.zeros((0, 4), np.float32)
        scores = np.array(self.scores, dtype=np.float32).reshape(-1)
        labels_in = np.asarray(self.labels)
        if labels_in.size and not np.all(np.equal(np.mod(labels_in, 1), 0)):
            raise ValueError(f"labels must be integers, got {labels_in[:5]!r}")
        labels = labels_in.astype(np.int64).reshape(-1)
        n = len(boxes)
        if scores.shape != (n,) or labels.shape != (n,):
            raise ValueError(
                f"expected scores and labels of shape ({n},) to match boxes {boxes.shape}, "
                f"got scores {scores.shape} and labels {labels.shape}"
            )
        if n and not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
            raise ValueError("boxes and scores must be finite")
        if n and ((boxes[:, 2] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 1]).any()):
            bad = np.flatnonzero((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]))[0]
            raise ValueError(f"box {bad} is not xyxy with x2 >= x1 and y2 >= y1: {boxes[bad].tolist()}")
        for name, arr in (("boxes", boxes), ("scores", scores), ("labels", labels)):
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)

    @classmethod
    def empty(cls) -> Detections:
        """Detections with no boxes."""
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.scores)

    def select(self, mask: np.ndarray) -> Detections:
        """A new `Detections` holding the rows where ``mask`` (bool or indices) selects."""
        return Detections(self.boxes[mask], self.scores[mask], self.labels[mask])

    def scaled(self, sx: float, sy: float) -> Detections:
        """Boxes multiplied by ``(sx, sy, sx, sy)``: e.g. dataset pixels → original pixels."""
        return Detections(self.boxes * np.array([sx, sy, sx, sy], np.float32), self.scores, self.labels)


def from_coco_results(
    results: Iterable[Mapping], image_ids: Iterable[int] | None = None
) -> dict[int, Detections]:
    """Group a COCO results list (``bbox`` as ``[x, y, w, h]``) by ``image_id``.

    Every id in ``image_ids`` gets an entry, empty where it has no results.

    Raises:
        ValueError: naming the index of an entry that lacks a field or has a bad box.
    """
    rows: dict[int, list[tuple[list[float], float, int]]] = {int(i): [] for i in (image_ids or [])}
    for k, r in enumerate(results):
        try:
            x, y, w, h = (float(v) for v in r["bbox"])
            item = ([x, y, x + w, y + h], float(r["score"]), int(r["category_id"]))
            image_id = int(r["image_id"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"results entry {k} is not a COCO detection ({e!r}): {dict(r)!r}") from None
        if w < 0 or h < 0:
            raise ValueError(f"results entry {k} has a negative width or height: {r['bbox']}")
        rows.setdefault(image_id, []).append(item)
    out: dict[int, Detections] = {}
    for image_id, items in rows.items():
        if not items:
            out[image_id] = Detections.empty()
            continue
        boxes, scores, labels = zip(*items, strict=True)
        out[image_id] = Detections(
            np.array(boxes, np.float32), np.array(scores, np.float32), np.array(labels, np.int64)
        )
    return out


def to_coco_results(detections: Mapping[int, Detections], decimals: int = 2) -> list[dict]:
    """The COCO results list of ``{image_id, category_id, bbox: [x, y, w, h], score}``."""
    out: list[dict] = []
    for image_id in sorted(detections):
        d = detections[image_id]
        for (x1, y1, x2, y2), s, c in zip(
            d.boxes.tolist(), d.scores.tolist(), d.labels.tolist(), strict=True
        ):
            out.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(c),
                    "bbox": [
                        round(x1, decimals),
                        round(y1, decimals),
                        round(x2 - x1, decimals),
                        round(y2 - y1, decimals),
                    ],
                    "score": round(float(s), 6),
                }
            )
    return out
