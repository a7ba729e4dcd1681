"""VinBigData ``train.csv`` (+ DICOMs, or resized PNGs with a size table) → COCO; or unlabelled test images."""

from __future__ import annotations

import math
from pathlib import Path

from convert.common import (
    BuildOptions,
    ConversionError,
    LabelTable,
    Problem,
    SourceBox,
    build_dataset,
    field_count_problem,
    make_fuser,
    open_csv,
    parse_float,
    unlabelled_table,
)
from core.classes import VINBIG_CLASSES, VINBIG_NO_FINDING, VINBIG_NO_FINDING_NAME
from core.coco import CocoDataset

VINBIG_COLUMNS = ("image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max")
#: the id column of VinBigData's id list (``sample_submission.csv``: ``image_id,PredictionString``)
VINBIG_ID_COLUMN = "image_id"


def read_vinbig_csv(path: Path) -> LabelTable:
    """Parse and check VinBigData's ``train.csv`` row by row.

    Problems (an unknown class, a class name that does not match its id, a
    lesion row with an empty/NaN coordinate, ``x_max < x_min`` or ``y_max <
    y_min``, a "No finding" row with coordinates) are collected with their row
    number, not raised, so the caller can report them all or skip the images.

    Raises:
        FileNotFoundError: if the file is missing.
        ConversionError: if the file is empty, has no rows or is not UTF-8, or a column is missing
            or named twice.
    """
    path = Path(path)
    table = LabelTable(source_file=path, image_keys=[])
    seen: dict[str, None] = {}
    with open_csv(path, VINBIG_COLUMNS, "VinBigData label file") as reader:
        for row_no, r in enumerate(reader, start=2):
            bad = field_count_problem(reader, r)
            if bad:
                key = (r.get("image_id") or "").strip()
                if key:
                    seen.setdefault(key, None)
                table.problems.append(Problem(str(path), row_no, key or "?", bad))
                continue
            key = r["image_id"].strip()
            if not key:
                table.problems.append(Problem(str(path), row_no, "?", "empty image_id"))
                continue
            seen.setdefault(key, None)
            try:
                cid = int(float(r["class_id"]))
            except (ValueError, OverflowError):
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
    if not seen and not table.problems:
        raise ConversionError(f"{path}: no rows after the header")
    table.image_keys = list(seen)
    return table


def convert_vinbig(
    csv_path: Path | None,
    out_dir: Path,
    *,
    ids: Path | None = None,
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

    Without ``csv_path`` the images are unlabelled (the test set): ``all.json`` holds every image
    of ``images_dir`` (or of the id list ``ids``, Kaggle's ``sample_submission.csv``, checked
    against the folder; with ``labels_only``, sized by ``size_table``) and no annotations, and no
    folds are written.

    Raises:
        FileNotFoundError: naming a missing input.
        ConversionError: naming the flag out of range, or the file and row of bad input
            (`read_vinbig_csv`, `convert.common.build_dataset`), or an image the id list lacks or
            an id with no image (`convert.common.unlabelled_table`); nothing is written then.
    """
    if csv_path is not None and ids is not None:
        raise ConversionError("--ids lists unlabelled images: give it without --csv")
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
        unlabelled=csv_path is None,
    )
    opts.check()  # bad flags fail before the CSV is read
    if csv_path is None:
        table = unlabelled_table(opts, ids, VINBIG_ID_COLUMN, "VinBigData")
        return build_dataset(table, VINBIG_CLASSES, make_fuser("raw"), opts, source="vinbig")
    if not (math.isfinite(iou_thr) and 0.0 <= iou_thr <= 1.0):
        raise ConversionError(f"--iou-thr must be within [0, 1], got {iou_thr}")
    fuser = make_fuser(annotators, iou_thr)
    table = read_vinbig_csv(csv_path)
    return build_dataset(
        table,
        VINBIG_CLASSES,
        fuser,
        opts,
        source="vinbig",
        extra_info={"annotators": annotators, "annotator_iou_thr": iou_thr},
    )
