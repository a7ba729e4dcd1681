"""RSNA Pneumonia Detection labels (+ DICOMs) → COCO with one category, "Lung Opacity"."""

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
from core.classes import RSNA_CLASSES
from core.coco import CocoDataset

RSNA_COLUMNS = ("patientId", "x", "y", "width", "height", "Target")
RSNA_SIZE = (1024, 1024)  # every RSNA stage 2 image is 1024x1024
#: the id column of RSNA's id list (``stage_2_sample_submission.csv``: ``patientId,PredictionString``)
RSNA_ID_COLUMN = "patientId"


def read_rsna_csv(path: Path) -> LabelTable:
    """Parse ``stage_2_train_labels.csv``; problems are collected with their row number.

    Raises:
        FileNotFoundError: if the file is missing.
        ConversionError: if the file is empty, has no rows or is not UTF-8, or a column is missing
            or named twice.
    """
    path = Path(path)
    table = LabelTable(source_file=path, image_keys=[])
    seen: dict[str, None] = {}
    with open_csv(path, RSNA_COLUMNS, "RSNA label file") as reader:
        for row_no, r in enumerate(reader, start=2):
            key = (r.get("patientId") or "").strip()
            bad = field_count_problem(reader, r) or ("" if key else "empty patientId")
            if key:
                seen.setdefault(key, None)
            if bad:
                table.problems.append(Problem(str(path), row_no, key or "?", bad))
                continue
            target = r["Target"].strip()
            if target == "0":
                if any(r[c].strip() for c in ("x", "y", "width", "height")):
                    table.problems.append(Problem(str(path), row_no, key, "Target 0 with a box"))
                continue
            if target != "1":
                table.problems.append(Problem(str(path), row_no, key, f"Target {target!r} is not 0 or 1"))
                continue
            try:
                x, y, w, h = (parse_float(r[c]) for c in ("x", "y", "width", "height"))
            except ValueError:
                table.problems.append(Problem(str(path), row_no, key, "a box field is not a number"))
                continue
            if any(math.isnan(v) for v in (x, y, w, h)):
                table.problems.append(Problem(str(path), row_no, key, "Target 1 with an empty or NaN box"))
                continue
            if w < 0 or h < 0:
                table.problems.append(Problem(str(path), row_no, key, f"negative width/height {w}, {h}"))
                continue
            table.boxes.setdefault(key, []).append(SourceBox(key, 0, x, y, x + w, y + h, None, row_no))
    if not seen and not table.problems:
        raise ConversionError(f"{path}: no rows after the header")
    table.image_keys = list(seen)
    return table


def check_class_info(path: Path, table: LabelTable) -> dict[str, str]:
    """Read ``stage_2_detailed_class_info.csv`` and check it agrees with the labels.

    A "Lung Opacity" patient must have boxes and any other class none.

    Raises:
        FileNotFoundError: if the file is missing.
        ConversionError: if the file is empty or not UTF-8, or a column is missing or named twice.
    """
    info: dict[str, str] = {}
    with open_csv(path, ("patientId", "class"), "RSNA class info file") as reader:
        for row_no, r in enumerate(reader, start=2):
            bad = field_count_problem(reader, r)
            if bad:
                table.problems.append(Problem(str(path), row_no, (r.get("patientId") or "?").strip(), bad))
                continue
            key, cls = r["patientId"].strip(), r["class"].strip()
            if key in info and info[key] != cls:
                table.problems.append(
                    Problem(str(path), row_no, key, f"class {cls!r} disagrees with {info[key]!r}")
                )
            info[key] = cls
            if (cls == "Lung Opacity") != bool(table.boxes.get(key)):
                table.problems.append(
                    Problem(str(path), row_no, key, f"class {cls!r} disagrees with the boxes in the labels")
                )
    return info


def convert_rsna(
    labels_csv: Path | None,
    out_dir: Path,
    *,
    ids: Path | None = None,
    class_info: Path | None = None,
    images_dir: Path | None = None,
    size_table: Path | None = None,
    labels_only: bool = False,
    size: int | None = 1024,
    n_folds: int = 5,
    val_fold: int = 0,
    seed: int = 0,
    workers: int = 1,
    on_error: str = "raise",
) -> CocoDataset:
    """Convert the RSNA pneumonia labels (and DICOMs) to a CXRFuse COCO dataset under ``out_dir``.

    With ``labels_only`` and no size table, every image is taken as 1024x1024,
    the size of all RSNA stage 2 images.

    Without ``labels_csv`` the images are unlabelled (the test set): ``all.json`` holds every image
    of ``images_dir`` (or of the id list ``ids``, ``stage_2_sample_submission.csv``, checked
    against the folder) and no annotations, and no folds are written.

    Raises:
        FileNotFoundError: naming a missing input.
        ConversionError: naming the flag out of range, or the file and row of bad input, or an
            image the id list lacks or an id with no image; nothing is written then.
    """
    if labels_csv is not None and ids is not None:
        raise ConversionError("--ids lists unlabelled images: give it without --labels")
    if labels_csv is None and class_info is not None:
        raise ConversionError("--class-info needs --labels")
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
        default_size=RSNA_SIZE,
        unlabelled=labels_csv is None,
    )
    opts.check()  # bad flags fail before the CSVs are read
    if labels_csv is None:
        table = unlabelled_table(opts, ids, RSNA_ID_COLUMN, "RSNA")
        return build_dataset(table, RSNA_CLASSES, make_fuser("raw"), opts, source="rsna")
    table = read_rsna_csv(labels_csv)
    if class_info is not None:
        check_class_info(Path(class_info), table)
    return build_dataset(table, RSNA_CLASSES, make_fuser("raw"), opts, source="rsna")
