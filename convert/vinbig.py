"""VinBigData ``train.csv`` (+ DICOMs, or resized PNGs with a size table) → COCO."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from core.classes import VINBIG_CLASSES, VINBIG_NO_FINDING, VINBIG_NO_FINDING_NAME
from convert.common import (
    BuildOptions,
    ConversionError,
    LabelTable,
    Problem,
    SourceBox,
    build_dataset,
    make_fuser,
    parse_float,
)
from core.coco import CocoDataset

VINBIG_COLUMNS = ("image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max")


def read_vinbig_csv(path: Path) -> LabelTable:
    """Parse and check VinBigData's ``train.csv`` row by row.

    Problems (an unknown class, a class name that does not match its id, a
    lesion row with an empty/NaN coordinate, ``x_max < x_min`` or ``y_max <
    y_min``, a "No finding" row with coordinates) are collected with their row
    number, not raised, so the caller can report them all or skip the images.

    Raises:
        FileNotFoundError: if the file is missing.
        ConversionError: if a column is missing.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: VinBigData label file not found")
    table = LabelTable(source_file=path, image_keys=[])
    seen: dict[str, None] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in VINBIG_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ConversionError(f"{path}: missing columns {missing}; expected {','.join(VINBIG_COLUMNS)}")
        for row_no, r in enumerate(reader, start=2):
            key = r["image_id"].strip()
            if not key:
                table.problems.append(Problem(str(path), row_no, "?", "empty image_id"))
                continue
            seen.setdefault(key, None)
            try:
                cid = int(float(r["class_id"]))
            except ValueError:
                table.problems.append(
                    Problem(str(path), row_no, key, f"class_id {r['class_id']!r} is not an integer")
                )
                continue
            if cid == VINBIG_NO_FINDING:
                if r["class_name"] != VINBIG_NO_FINDING_NAME:
                    table.problems.append(
                        Problem(str(path), row_no, key, f"class_id 14 but class_name {r['class_name']!r}")
                    )
                elif any(
                    r[c].strip() not in ("", "nan", "NaN") for c in ("x_min", "y_min", "x_max", "y_max")
                ):
                    table.problems.append(Problem(str(path), row_no, key, "a 'No finding' row with a box"))
                continue
            if cid not in VINBIG_CLASSES:
                table.problems.append(
                    Problem(str(path), row_no, key, f"unknown class_id {cid} (expected 0..14)")
                )
                continue
            if r["class_name"] != VINBIG_CLASSES[cid]:
                table.problems.append(
                    Problem(
                        str(path),
                        row_no,
                        key,
                        f"class_name {r['class_name']!r} does not match class_id {cid} ({VINBIG_CLASSES[cid]!r})",
                    )
                )
                continue
            try:
                x1, y1, x2, y2 = (parse_float(r[c]) for c in ("x_min", "y_min", "x_max", "y_max"))
            except ValueError:
                table.problems.append(Problem(str(path), row_no, key, "a box coordinate is not a number"))
                continue
            if any(math.isnan(v) for v in (x1, y1, x2, y2)):
                table.problems.append(
                    Problem(
                        str(path), row_no, key, f"lesion row ({VINBIG_CLASSES[cid]}) with an empty or NaN box"
                    )
                )
                continue
            if x2 < x1 or y2 < y1:
                table.problems.append(
                    Problem(
                        str(path), row_no, key, f"x_max < x_min or y_max < y_min: [{x1}, {y1}, {x2}, {y2}]"
                    )
                )
                continue
            table.boxes.setdefault(key, []).append(
                SourceBox(key, cid, x1, y1, x2, y2, r["rad_id"] or None, row_no)
            )
    table.image_keys = list(seen)
    return table


def convert_vinbig(
    csv_path: Path,
    out_dir: Path,
    *,
    images_dir: Path | None = None,
    size_table: Path | None = None,
    labels_only: bool = False,
    size: int | None = 1024,
    annotators: str = "wbf",
    iou_thr: float = 0.4,
    n_folds: int = 5,
    val_fold: int = 0,
    seed: int = 0,
    workers: int = 1,
    on_error: str = "raise",
) -> CocoDataset:
    """Convert VinBigData to a CXRFuse COCO dataset under ``out_dir`` (see `build_dataset`).

    ``annotators``: ``wbf`` (default, IoU ``iou_thr``) or ``nms`` fuse the
    radiologists' boxes per image and class; ``raw`` keeps each with its ``rad_id``.
    """
    table = read_vinbig_csv(csv_path)
    opts = BuildOptions(
        out_dir=Path(out_dir),
        images_dir=images_dir,
        size_table=size_table,
        labels_only=labels_only,
        size=size,
        workers=workers,
        n_folds=n_folds,
        val_fold=val_fold,
        seed=seed,
        on_error=on_error,
    )
    return build_dataset(
        table,
        VINBIG_CLASSES,
        make_fuser(annotators, iou_thr),
        opts,
        source="vinbig",
        extra_info={"annotators": annotators, "annotator_iou_thr": iou_thr},
    )
