"""The `Detections` record: boxes, scores and labels of one image.

Boxes are `(N, 4)` float32 ``xyxy`` in absolute pixels of the dataset's image
(the converted PNG, not the original DICOM), scores `(N,)` float32 in [0, 1],
labels `(N,)` int64 dataset category ids. COCO results use ``xywh``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from operator import itemgetter

import numpy as np

from core.boxes import round_xyxy_as_coco, scale_boxes

#: decimals of box coordinates and of scores in a COCO results file (`to_coco_results`).
BOX_DECIMALS = 2
SCORE_DECIMALS = 6


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
        return Detections(scale_boxes(self.boxes, sx, sy), self.scores, self.labels)

    def as_written(self) -> Detections:
        """These detections as a COCO results file stores them and `from_coco_results` reads them back.

        Boxes go through ``xywh`` rounded to ``BOX_DECIMALS``, scores are rounded to
        ``SCORE_DECIMALS``: scoring ``d.as_written()`` gives exactly the score of the written file.
        """
        if not len(self):
            return self
        boxes, scores = as_written_columns(self.boxes, self.scores)
        return Detections(boxes, scores, self.labels)

    @classmethod
    def _trusted(cls, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> Detections:
        """Detections from columns already of the right dtypes and shapes and already checked (no copy)."""
        d = object.__new__(cls)
        for name, arr in (("boxes", boxes), ("scores", scores), ("labels", labels)):
            arr.setflags(write=False)
            object.__setattr__(d, name, arr)
        return d


def as_written_columns(boxes: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(boxes, scores)`` of any number of rows as a COCO results file stores them and they read back.

    Boxes ``(N, 4)`` xyxy go through ``xywh`` rounded to ``BOX_DECIMALS`` and back to float32 xyxy,
    scores are rounded to ``SCORE_DECIMALS`` as float32: what `Detections.as_written` gives row by row.
    """
    _, xyxy = round_xyxy_as_coco(boxes, BOX_DECIMALS)
    return xyxy, np.round(np.asarray(scores).astype(np.float64), SCORE_DECIMALS).astype(np.float32)


def from_coco_results(
    results: Iterable[Mapping], image_ids: Iterable[int] | None = None
) -> dict[int, Detections]:
    """Group a COCO results list (``bbox`` as ``[x, y, w, h]``) by ``image_id``.

    Every id in ``image_ids`` gets an entry, empty where it has no results; the ids come in that
    order, then other ids in the order they first appear. The columns are read with NumPy and grouped
    at once (`from_coco_columns`); an entry that does not fit is found by a row-by-row pass that names it.

    Raises:
        ValueError: naming the index of an entry that lacks a field or has a bad box.
    """
    rows = results if isinstance(results, list) else list(results)
    columns = _coco_columns(rows)
    if columns is None:
        return _from_coco_rows(rows, image_ids)
    return from_coco_columns(*columns, image_ids=image_ids)


def _coco_columns(rows: list) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """``(image_id, category_id, bbox, score)`` columns of well-formed rows, or None if any row is not.

    Ids are read with ``int()``'s rules and numbers with ``float()``'s, as the row-by-row reading
    does; a missing field, a bbox that is not four numbers, a value that is not finite (``None``
    reads as NaN here) or a negative width or height gives None, and the row-by-row reading then
    names the entry.
    """
    n = len(rows)
    try:
        ids = np.fromiter(map(itemgetter("image_id"), rows), np.int64, count=n)
        cats = np.fromiter(map(itemgetter("category_id"), rows), np.int64, count=n)
        scores = np.fromiter(map(itemgetter("score"), rows), np.float64, count=n)
        boxes = np.array(list(map(itemgetter("bbox"), rows)), dtype=np.float64) if n else np.zeros((0, 4))
    except (KeyError, TypeError, ValueError, IndexError, OverflowError):
        return None
    if boxes.shape != (n, 4) or not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
        return None
    if ((boxes[:, 2] < 0) | (boxes[:, 3] < 0)).any():
        return None
    return ids, cats, boxes, scores


def from_coco_columns(
    image_id: np.ndarray,
    category_id: np.ndarray,
    bbox: np.ndarray,
    score: np.ndarray,
    image_ids: Iterable[int] | None = None,
) -> dict[int, Detections]:
    """Group COCO results held as columns by image: what `from_coco_results` gives for the same rows.

    Args:
        image_id, category_id: ``(N,)`` integers.
        bbox: ``(N, 4)`` ``[x, y, w, h]`` (read as float64, as JSON numbers are).
        score: ``(N,)`` scores (float64).
        image_ids: ids that get an entry even without rows, in this order (others follow in the
            order they first appear).

    Raises:
        ValueError: naming the first row with a negative width or height, or if boxes or scores are
            not finite.
    """
    ids = np.asarray(image_id, np.int64).reshape(-1)
    n = len(ids)
    xywh = np.asarray(bbox, np.float64).reshape(n, 4)
    neg = (xywh[:, 2] < 0) | (xywh[:, 3] < 0)
    if neg.any():
        k = int(np.flatnonzero(neg)[0])
        raise ValueError(f"results entry {k} has a negative width or height: {xywh[k].tolist()}")
    boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1).astype(np.float32)
    scores = np.asarray(score, np.float64).reshape(-1).astype(np.float32)
    labels = np.asarray(category_id, np.int64).reshape(-1)
    out: dict[int, Detections] = {}
    empty = Detections.empty()
    for i in image_ids or ():
        out[int(i)] = empty
    if not n:
        return out
    order = np.argsort(ids, kind="stable")  # file order within an image
    sorted_ids = ids[order]
    uniq, starts = np.unique(sorted_ids, return_index=True)
    ends = np.append(starts[1:], n)
    for j in np.argsort(order[starts], kind="stable"):  # ids not listed: in order of first appearance
        out.setdefault(int(uniq[j]), empty)
    finite = bool(np.isfinite(boxes).all() and np.isfinite(scores).all())
    boxes, scores, labels = boxes[order], scores[order], labels[order]
    groups = {int(u): (int(a), int(b)) for u, a, b in zip(uniq.tolist(), starts.tolist(), ends.tolist(), strict=True)}
    for key in out:
        if key not in groups:
            continue
        a, b = groups[key]
        if finite:
            out[key] = Detections._trusted(boxes[a:b], scores[a:b], labels[a:b])
        else:
            out[key] = Detections(boxes[a:b], scores[a:b], labels[a:b])  # raises naming the problem
    return out


def _from_coco_rows(rows: Iterable[Mapping], image_ids: Iterable[int] | None) -> dict[int, Detections]:
    """`from_coco_results` one row at a time: slower, but names the first entry that is not a detection."""
    items_of: dict[int, list[tuple[list[float], float, int]]] = {int(i): [] for i in (image_ids or [])}
    for k, r in enumerate(rows):
        try:
            x, y, w, h = (float(v) for v in r["bbox"])
            item = ([x, y, x + w, y + h], float(r["score"]), int(r["category_id"]))
            image_id = int(r["image_id"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"results entry {k} is not a COCO detection ({e!r}): {dict(r)!r}") from None
        if w < 0 or h < 0:
            raise ValueError(f"results entry {k} has a negative width or height: {r['bbox']}")
        items_of.setdefault(image_id, []).append(item)
    out: dict[int, Detections] = {}
    for image_id, items in items_of.items():
        if not items:
            out[image_id] = Detections.empty()
            continue
        boxes, scores, labels = zip(*items, strict=True)
        out[image_id] = Detections(
            np.array(boxes, np.float32), np.array(scores, np.float32), np.array(labels, np.int64)
        )
    return out


def to_coco_results(detections: Mapping[int, Detections], decimals: int = BOX_DECIMALS) -> list[dict]:
    """The COCO results list of ``{image_id, category_id, bbox: [x, y, w, h], score}``.

    Box values are rounded to ``decimals``, scores to ``SCORE_DECIMALS`` (see `Detections.as_written`).
    """
    out: list[dict] = []
    for image_id in sorted(detections):
        d = detections[image_id]
        if not len(d):
            continue
        xywh, _ = round_xyxy_as_coco(d.boxes, decimals)
        scores = np.round(d.scores.astype(np.float64), SCORE_DECIMALS)
        iid = int(image_id)
        for box, s, c in zip(xywh.tolist(), scores.tolist(), d.labels.tolist(), strict=True):
            out.append({"image_id": iid, "category_id": int(c), "bbox": box, "score": s})
    return out
