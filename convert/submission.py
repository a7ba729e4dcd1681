"""COCO results (+ gate scores) → the Kaggle submission CSVs of VinBigData and RSNA."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from convert.common import read_id_list
from core.classes import NO_FINDING
from core.coco import CocoDataset
from core.detections import Detections
from core.errors import UserError
from core.io import atomic_open
from core.predictions import read_gate, read_predictions
from fusion.gate import has_no_finding, with_no_finding


def _original(d: Detections, im: Mapping) -> np.ndarray:
    sx = im.get("orig_width", im["width"]) / im["width"]
    sy = im.get("orig_height", im["height"]) / im["height"]
    return d.scaled(sx, sy).boxes


def vinbig_rows(
    dataset: CocoDataset, dets: Mapping[int, Detections], gate: Mapping[int, float] | None = None
) -> list[tuple[str, str]]:
    """``(image_id, PredictionString)`` per dataset image, boxes in original DICOM pixels.

    Each box is ``class score x_min y_min x_max y_max``. "No finding" (class 14,
    box ``0 0 1 1``) comes from results of category 14 if present, else from the
    gate as P(normal) = 1 − p_abnormal; an image with neither boxes nor a gate
    score gets ``14 1 0 0 1 1``.
    """
    out = []
    for iid in dataset.image_ids:
        im = dataset.image(iid)
        d = dets.get(iid, Detections.empty())
        if gate is not None and iid in gate and not has_no_finding(d):
            d = with_no_finding(d, gate[iid])
        boxes = _original(d, im)
        order = np.argsort(-d.scores, kind="stable")
        parts = []
        for i in order:
            c, s = int(d.labels[i]), float(d.scores[i])
            if c == NO_FINDING:
                parts.append(f"{NO_FINDING} {s:.6f} 0 0 1 1")
            else:
                x1, y1, x2, y2 = boxes[i]
                parts.append(f"{c} {s:.6f} {x1:.1f} {y1:.1f} {x2:.1f} {y2:.1f}")
        if not parts:
            parts.append(f"{NO_FINDING} 1 0 0 1 1")
        out.append((str(im.get("source_id", iid)), " ".join(parts)))
    return out


def rsna_rows(dataset: CocoDataset, dets: Mapping[int, Detections]) -> list[tuple[str, str]]:
    """``(patientId, PredictionString)`` per image: ``conf x y width height`` in original pixels."""
    out = []
    for iid in dataset.image_ids:
        im = dataset.image(iid)
        d = dets.get(iid, Detections.empty())
        boxes = _original(d, im)
        order = np.argsort(-d.scores, kind="stable")
        parts = [
            f"{d.scores[i]:.6f} {boxes[i, 0]:.1f} {boxes[i, 1]:.1f} {boxes[i, 2] - boxes[i, 0]:.1f} {boxes[i, 3] - boxes[i, 1]:.1f}"
            for i in order
        ]
        out.append((str(im.get("source_id", iid)), " ".join(parts)))
    return out


class SubmissionError(UserError):
    """A submission that does not match its id list; names the ids."""


def check_against_ids(
    rows: Sequence[tuple[str, str]], ids: Sequence[str], where: Path | str = "the id list"
) -> list[tuple[str, str]]:
    """``rows`` in the order of ``ids``, after checking they hold exactly one row per id.

    Raises:
        SubmissionError: naming the ids with no row, the rows whose id is not listed, and ids with
            more than one row.
    """
    by_id: dict[str, tuple[str, str]] = {}
    twice = []
    for r in rows:
        if r[0] in by_id:
            twice.append(r[0])
        by_id[r[0]] = r
    listed = set(ids)
    missing = [i for i in ids if i not in by_id]
    extra = [i for i in by_id if i not in listed]
    problems = []
    for what, keys in (("ids of {w} have no row", missing), ("rows are not in {w}", extra),
                       ("ids have more than one row", twice)):  # fmt: skip
        if keys:
            shown = ", ".join(sorted(keys)[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
            problems.append(f"{len(keys)} {what.format(w=where)}: {shown}")
    if problems:
        raise SubmissionError("submission does not match its id list: " + "; ".join(problems))
    return [by_id[i] for i in ids]


def write_submission(
    dataset_path: Path,
    results_path: Path,
    out_csv: Path,
    *,
    kind: str = "vinbig",
    gate_path: Path | None = None,
    ids: Path | None = None,
) -> Path:
    """Write a Kaggle submission CSV atomically.

    Args:
        kind: ``vinbig`` (``image_id,PredictionString``) or ``rsna`` (``patientId,PredictionString``).
        ids: the id list (Kaggle's sample submission) the rows must match one for one; the rows
            are then written in its order.

    Raises:
        ValueError: for an unknown ``kind`` or results/gate that do not match the dataset.
        SubmissionError: if the rows and the id list differ (naming the ids), checked before
            anything is written.
    """
    dataset = CocoDataset.load(dataset_path)
    dets = read_predictions(Path(results_path), dataset, extra_categories=(NO_FINDING,))
    if kind == "vinbig":
        gate = read_gate(Path(gate_path), dataset) if gate_path else None
        rows, header = vinbig_rows(dataset, dets, gate), ("image_id", "PredictionString")
    elif kind == "rsna":
        if gate_path:
            raise ValueError("the RSNA submission has no 'No finding' row: drop --gate")
        rows, header = rsna_rows(dataset, dets), ("patientId", "PredictionString")
    else:
        raise ValueError(f"unknown submission kind {kind!r}; expected vinbig or rsna")
    if ids is not None:
        rows = check_against_ids(rows, read_id_list(Path(ids), header[0], "id list"), Path(ids))
    with atomic_open(out_csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return Path(out_csv)


def parse_vinbig_submission(path: Path) -> dict[str, list[tuple[int, float, float, float, float, float]]]:
    """Read a VinBigData submission back: ``image_id → [(class, score, x1, y1, x2, y2), ...]``."""
    out = {}
    with open(path, newline="") as f:
        for row_no, r in enumerate(csv.DictReader(f), start=2):
            vals = r["PredictionString"].split()
            if len(vals) % 6:
                raise ValueError(
                    f"{path}, row {row_no}: PredictionString has {len(vals)} values, not a multiple of 6"
                )
            out[r["image_id"]] = [
                (int(vals[i]), *(float(v) for v in vals[i + 1 : i + 6])) for i in range(0, len(vals), 6)
            ]
    return out
