"""RSNA Pneumonia Detection labels (+ DICOMs) → COCO with one category, "Lung Opacity"."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from core.classes import RSNA_CLASSES
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

RSNA_COLUMNS = ("patientId", "x", "y", "width", "height", "Target")
RSNA_SIZE = (1024, 1024)  # every RSNA stage 2 image is 1024x1024


def read_rsna_csv(path: Path) -> LabelTable:
    """Parse ``stage_2_train_labels.csv``; problems are collected with their row number.

    Raises:
        FileNotFoundError: if the file is missing.
        ConversionError: if a column is missing.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: RSNA label file not found")
    table = LabelTable(source_file=path, image_keys=[])
    seen: dict[str, None] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in RSNA_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ConversionError(f"{path}: missing columns {missing}; expected {','.join(RSNA_COLUMNS)}")
        for row_no, r in enumerate(reader, start=2):
            key = r["patientId"].strip()
            seen.setdefault(key, None)
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
    table.image_keys = list(seen)
    return table


def check_class_info(path: Path, table: LabelTable) -> dict[str, str]:
    """Read ``stage_2_detailed_class_info.csv`` and check it agrees with the labels.

    A "Lung Opacity" patient must have boxes and any other class none.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: RSNA class info file not found")
    info: dict[str, str] = {}
    with open(path, newline="") as f:
        for row_no, r in enumerate(csv.DictReader(f), start=2):
            key, cls = r.get("patientId", ""), r.get("class", "")
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
    labels_csv: Path,
    out_dir: Path,
    *,
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
    """
    table = read_rsna_csv(labels_csv)
    if class_info is not None:
        check_class_info(Path(class_info), table)
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
    )
    if labels_only and images_dir is not None:
        raise ConversionError("--labels-only and --images exclude each other")
    return build_dataset(table, RSNA_CLASSES, make_fuser("raw"), opts, source="rsna")
