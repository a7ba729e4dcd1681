"""NIH ChestX-ray14 → a multi-label COCO dataset with patient-wise folds (+ the 984 boxes).

Inputs, as the NIH Clinical Center distributes them:

- ``Data_Entry_2017.csv`` (or the ``Data_Entry_2017_v2020.csv`` edition): one row per image,
  ``Image Index`` (``00000001_000.png``), ``Finding Labels`` (``|``-separated findings or
  ``No Finding``), ``Patient ID``, and the original size ``OriginalImage[Width,Height]`` (whose
  header the comma splits into the columns ``OriginalImage[Width`` and ``Height]``).
- the images folder (the distributed PNGs are 1024x1024); images the CSV lists but the folder lacks
  are counted and left out (``require_all`` makes that an error), so a part of the 112,120 images
  converts.
- optionally ``BBox_List_2017.csv``: ``Image Index, Finding Label, Bbox [x,y,w,h]`` (its header names
  the four numbers' columns ``Bbox [x``, ``y``, ``w``, ``h]``, followed by empty columns), 984 boxes
  of 8 findings in the pixels of the 1024x1024 images; ``Infiltrate`` there is ``Infiltration``.

Output (as `convert.common.build_dataset`'s): ``images/<stem>.png``, ``all.json``,
``fold{k}_{train,val}.json`` and ``train.json``/``val.json``. Every image carries ``labels`` (its
findings, or ``["No Finding"]``), ``patient_id`` and ``fold``; all images of a patient share one
fold. The COCO categories are the 8 box findings (ids 0..7, the first 8 of `NIH_FINDINGS`); the
boxes are scaled from the 1024 frame to the written image. ``info["classification"]`` names the
task (``multilabel``), the 15 classes (`NIH_CLASSES`) and each class's category id (None for the 6
findings without boxes and for "No Finding").
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from convert.common import (
    BuildOptions,
    ConversionError,
    _remove_new,
    classification_info,
    field_count_problem,
    open_csv,
    write_fold_files,
)
from convert.folds import assign_folds
from convert.images import ImageJob, convert_image, find_images, parallel_map, target_size
from core.classes import coco_categories
from core.coco import CocoDataset

log = logging.getLogger(__name__)

#: the 14 findings in the NIH order (the first 8 are the ones ``BBox_List_2017.csv`` boxes)
NIH_FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
NIH_NO_FINDING = "No Finding"
#: the classification classes, in column order: the 14 findings, then "No Finding"
NIH_CLASSES: tuple[str, ...] = (*NIH_FINDINGS, NIH_NO_FINDING)
#: the COCO categories of the boxes: category id → finding
NIH_BOX_CLASSES: dict[int, str] = dict(enumerate(NIH_FINDINGS[:8]))
#: ``BBox_List_2017.csv`` spells one finding differently from ``Data_Entry_2017.csv``
NIH_BOX_ALIASES: dict[str, str] = {"Infiltrate": "Infiltration"}
#: the side of the distributed PNGs, the frame of the box coordinates
NIH_FRAME = 1024
DATA_ENTRY_COLUMNS = ("Image Index", "Finding Labels", "Patient ID")
SIZE_COLUMNS = ("OriginalImage[Width", "Height]")
MAX_SHOWN = 20


@dataclass(frozen=True)
class NihEntry:
    """One row of ``Data_Entry_2017.csv``.

    Attributes:
        key: the image's stem (``00000001_000``), its id in file names.
        labels: its findings (NIH order), or ``("No Finding",)``.
        patient_id: the ``Patient ID``.
        orig_size: ``(width, height)`` of the original image, or None where the CSV lacks it.
        row: the line number in the CSV (header = 1).
    """

    key: str
    labels: tuple[str, ...]
    patient_id: int
    orig_size: tuple[int, int] | None
    row: int


@dataclass(frozen=True)
class NihBox:
    """One row of ``BBox_List_2017.csv``: ``category_id`` and ``[x, y, w, h]`` in the 1024 frame."""

    key: str
    category_id: int
    bbox: tuple[float, float, float, float]
    row: int


def _raise_problems(problems: Sequence[str]) -> None:
    if problems:
        shown = "\n  ".join(problems[:MAX_SHOWN])
        more = f"\n  ... and {len(problems) - MAX_SHOWN} more" if len(problems) > MAX_SHOWN else ""
        raise ConversionError(
            f"{len(problems)} problem(s) in the input; nothing was written:\n  {shown}{more}"
        )


def read_data_entry(path: Path) -> list[NihEntry]:
    """Parse ``Data_Entry_2017.csv`` (either edition), checking every row.

    Raises:
        FileNotFoundError: if the file is missing.
        ConversionError: naming the file and row(s): a missing column, a row of too many or too few
            fields, an empty or repeated ``Image Index``, an unknown finding, "No Finding" beside a
            finding, a ``Patient ID`` or original size that is not a positive integer; or a file
            without rows.
    """
    path = Path(path)
    known = set(NIH_CLASSES)
    entries: list[NihEntry] = []
    seen: dict[str, int] = {}
    problems: list[str] = []
    with open_csv(path, DATA_ENTRY_COLUMNS, "NIH Data_Entry file") as reader:
        has_size = all(c in (reader.fieldnames or ()) for c in SIZE_COLUMNS)
        for row_no, r in enumerate(reader, start=2):
            where = f"{path}, row {row_no}"
            bad = field_count_problem(reader, r)
            if bad:
                problems.append(f"{where}: {bad}")
                continue
            name = (r["Image Index"] or "").strip()
            if not name:
                problems.append(f"{where}: empty Image Index")
                continue
            key = _stem(name)
            if key in seen:
                problems.append(f"{where}: image {name} already on row {seen[key]}")
                continue
            seen[key] = row_no
            labels = tuple(s.strip() for s in (r["Finding Labels"] or "").split("|") if s.strip())
            unknown = [s for s in labels if s not in known]
            if not labels or unknown:
                problems.append(
                    f"{where} (image {name}): Finding Labels {r['Finding Labels']!r}: unknown finding(s) "
                    f"{unknown or ['(empty)']}; known: {', '.join(NIH_CLASSES)}"
                )
                continue
            if NIH_NO_FINDING in labels and len(labels) > 1:
                problems.append(f"{where} (image {name}): '{NIH_NO_FINDING}' together with findings {labels}")
                continue
            try:
                patient = _positive_int(r["Patient ID"])
                size = (
                    (_positive_int(r[SIZE_COLUMNS[0]]), _positive_int(r[SIZE_COLUMNS[1]]))
                    if has_size
                    else None
                )
            except ValueError as e:
                problems.append(f"{where} (image {name}): {e}")
                continue
            order = sorted(set(labels), key=NIH_CLASSES.index)
            entries.append(NihEntry(key, tuple(order), patient, size, row_no))
    _raise_problems(problems)
    if not entries:
        raise ConversionError(f"{path}: no rows after the header")
    return entries


def _stem(name: str) -> str:
    """``00000001_000.png`` → ``00000001_000`` (the image's id in file names)."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[0] if "." in base else base


def _positive_int(value: str | None) -> int:
    try:
        v = float((value or "").strip())
    except ValueError:
        raise ValueError(f"{value!r} is not a positive integer") from None
    if not (math.isfinite(v) and v == int(v) and v > 0):
        raise ValueError(f"{value!r} is not a positive integer")
    return int(v)


def read_bbox_list(path: Path, entries: Sequence[NihEntry], tol: float = 0.5) -> list[NihBox]:
    """Parse ``BBox_List_2017.csv``, checking every row against the frame and ``entries``.

    Raises:
        FileNotFoundError: if the file is missing.
        ConversionError: naming the file and row(s): a header that is not ``Image Index,Finding
            Label,Bbox [x,y,w,h]``, a row of fewer than 6 fields or a non-empty field after them, an
            image the Data_Entry file lacks, a finding that has no box class, a number that is not
            finite, a width or height <= 0, or a box outside the 1024x1024 frame.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: NIH BBox_List file not found")
    names = {e.key: e for e in entries}
    category = {name: cid for cid, name in NIH_BOX_CLASSES.items()}
    boxes: list[NihBox] = []
    problems: list[str] = []
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = csv.reader(f)
            header = next(rows, None)
            if (
                not header
                or [h.strip() for h in header[:2]] != ["Image Index", "Finding Label"]
                or not (len(header) >= 6 and header[2].strip().startswith("Bbox"))
            ):
                raise ConversionError(
                    f"{path}: header {header!r}; expected Image Index,Finding Label,Bbox [x,y,w,h]"
                )
            for row_no, r in enumerate(rows, start=2):
                where = f"{path}, row {row_no}"
                if not any(v.strip() for v in r):
                    continue
                if len(r) < 6 or any(v.strip() for v in r[6:]):
                    problems.append(f"{where}: {len(r)} fields; expected image, finding, x, y, w, h")
                    continue
                key, label = _stem(r[0].strip()), r[1].strip()
                label = NIH_BOX_ALIASES.get(label, label)
                if key not in names:
                    problems.append(f"{where}: image {r[0].strip()!r} is not in the Data_Entry file")
                    continue
                if label not in category:
                    problems.append(
                        f"{where} (image {key}): finding {r[1].strip()!r} has no box class; known: "
                        f"{', '.join(category)}"
                    )
                    continue
                try:
                    x, y, w, h = (float(v) for v in r[2:6])
                except ValueError:
                    problems.append(f"{where} (image {key}): a box field is not a number: {r[2:6]}")
                    continue
                if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
                    problems.append(
                        f"{where} (image {key}): box [x, y, w, h] = {[x, y, w, h]} is empty or not finite"
                    )
                    continue
                if x < -tol or y < -tol or x + w > NIH_FRAME + tol or y + h > NIH_FRAME + tol:
                    problems.append(
                        f"{where} (image {key}): box [x, y, w, h] = {[x, y, w, h]} leaves the "
                        f"{NIH_FRAME}x{NIH_FRAME} frame of the NIH images"
                    )
                    continue
                boxes.append(NihBox(key, category[label], (x, y, w, h), row_no))
    except UnicodeDecodeError as e:
        raise ConversionError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    _raise_problems(problems)
    unlisted = sum(NIH_BOX_CLASSES[b.category_id] not in names[b.key].labels for b in boxes)
    if unlisted:
        log.warning("%s: %d box(es) of a finding their image's Finding Labels lack", path, unlisted)
    return boxes


def patient_folds(entries: Sequence[NihEntry], n_folds: int, seed: int) -> dict[str, int]:
    """Image key → fold, patient-wise (every image of a patient in one fold), stratified by finding.

    Raises:
        ConversionError: if there are fewer patients than folds.
    """
    per_patient: dict[int, set[int]] = {}
    for e in entries:
        per_patient.setdefault(e.patient_id, set()).update(
            NIH_FINDINGS.index(s) for s in e.labels if s != NIH_NO_FINDING
        )
    if len(per_patient) < n_folds:
        raise ConversionError(
            f"--folds {n_folds} needs at least {n_folds} patients; the images hold {len(per_patient)}"
        )
    folds = assign_folds(per_patient, n_folds, seed)
    return {e.key: folds[e.patient_id] for e in entries}


def convert_nih(
    data_entry: Path,
    out_dir: Path,
    *,
    images_dir: Path | None = None,
    bbox_csv: Path | None = None,
    labels_only: bool = False,
    size: int | None = 1024,
    n_folds: int = 5,
    val_fold: int = 0,
    seed: int = 0,
    workers: int = 1,
    require_all: bool = False,
    on_error: str = "raise",
) -> CocoDataset:
    """Convert NIH ChestX-ray14 labels (and images, and boxes) to a CXRFuse dataset under ``out_dir``.

    Args:
        data_entry: ``Data_Entry_2017.csv`` or ``Data_Entry_2017_v2020.csv``.
        out_dir: the dataset folder (created).
        images_dir: the folder of the NIH PNGs (``00000001_000.png``, ...); None with ``labels_only``.
        bbox_csv: ``BBox_List_2017.csv``, or None for no boxes.
        labels_only: write the COCO files of every listed image without images (each taken as the
            1024x1024 NIH PNG, resized to ``size``).
        size: longer side of the written PNGs (aspect kept); None or 0 keeps the source size.
        n_folds, val_fold, seed: the patient-wise folds.
        workers: processes converting images.
        require_all: refuse an images folder that lacks images the CSV lists (default: count them,
            log how many, convert the rest).
        on_error: ``raise`` on an image that cannot be decoded (removing what this run wrote), or
            ``skip`` it and list it in ``skipped.csv``.

    Returns:
        The whole dataset (``all.json``).

    Raises:
        FileNotFoundError: naming a missing file or folder.
        ConversionError: naming the flag out of range, the file and row of bad input (nothing is
            written then), the images missing with ``require_all``, a folder holding none of the
            listed images, or an image that cannot be decoded.
    """
    out = Path(out_dir)
    opts = BuildOptions(
        out_dir=out,
        images_dir=images_dir,
        labels_only=labels_only,
        size=size or None,
        workers=workers,
        n_folds=n_folds,
        val_fold=val_fold,
        seed=seed,
        on_error=on_error,
    )
    opts.check()
    if not labels_only and images_dir is None:
        raise ConversionError("no image folder given: pass --images DIR, or --labels-only")
    entries = read_data_entry(Path(data_entry))
    boxes = read_bbox_list(Path(bbox_csv), entries) if bbox_csv is not None else []
    listed = len(entries)
    sources: dict[str, Path] = {}
    if not labels_only:
        found = find_images(Path(images_dir))  # type: ignore[arg-type]
        missing = [e.key for e in entries if e.key not in found]
        if missing and (require_all or len(missing) == listed):
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            why = "" if require_all else "; it holds none of the listed images"
            raise ConversionError(
                f"{images_dir}: {len(missing)} of the {listed} images {data_entry} lists are missing "
                f"({shown}){why}"
            )
        if missing:
            log.warning(
                "%s: %d of the %d images %s lists are missing; converting the %d present "
                "(--require-all refuses this)",
                images_dir,
                len(missing),
                listed,
                data_entry,
                listed - len(missing),
            )
        extra = len(set(found) - {e.key for e in entries})
        if extra:
            log.warning("%s: %d image(s) not listed in %s are left out", images_dir, extra, data_entry)
        entries = [e for e in entries if e.key in found]
        sources = {e.key: found[e.key] for e in entries}
    folds = patient_folds(entries, n_folds, seed)

    # ---- images (nothing was written before this point)
    new_dirs = [d for d in (out, out / "images") if not d.exists()]
    out.mkdir(parents=True, exist_ok=True)
    dims: dict[str, tuple[int, int]] = {}
    skipped: list[tuple[str, str]] = []
    if labels_only:
        dims = dict.fromkeys((e.key for e in entries), target_size(NIH_FRAME, NIH_FRAME, opts.size))
    else:
        jobs = [ImageJob(k, p, out / "images" / f"{k}.png", opts.size) for k, p in sources.items()]
        fresh = [j.out for j in jobs if not j.out.exists()]
        results = parallel_map(convert_image, jobs, workers, "converting images")
        try:
            for res in results:
                if res.error and on_error == "raise":
                    raise ConversionError(f"image {res.key}: {res.error}")
                if res.error:
                    skipped.append((res.key, res.error))
                else:
                    dims[res.key] = (res.width, res.height)
        except ConversionError:
            results.close()
            _remove_new(fresh, new_dirs)
            raise
        if skipped:
            from convert.common import Problem, write_problem_report

            write_problem_report(
                out / "skipped.csv", [Problem(str(sources[k]), None, k, msg) for k, msg in skipped]
            )
            log.warning("skipped %d image(s); see %s", len(skipped), out / "skipped.csv")

    # ---- COCO
    images = []
    for e in entries:
        if e.key not in dims:
            continue
        w, h = dims[e.key]
        ow, oh = e.orig_size or (NIH_FRAME, NIH_FRAME)
        images.append(
            {
                "id": e.row - 2,  # the row's position in the CSV: stable whichever images are present
                "file_name": f"images/{e.key}.png",
                "width": w,
                "height": h,
                "orig_width": ow,
                "orig_height": oh,
                "source_id": e.key,
                "patient_id": e.patient_id,
                "labels": list(e.labels),
                "fold": folds[e.key],
            }
        )
    ids = {im["source_id"]: im for im in images}
    annotations = []
    for b in boxes:
        im = ids.get(b.key)
        if im is None:
            continue
        sx, sy = im["width"] / NIH_FRAME, im["height"] / NIH_FRAME
        x, y, bw, bh = b.bbox
        x1, y1 = min(max(x * sx, 0.0), im["width"]), min(max(y * sy, 0.0), im["height"])
        x2, y2 = min(max((x + bw) * sx, 0.0), im["width"]), min(max((y + bh) * sy, 0.0), im["height"])
        annotations.append(
            {
                "id": len(annotations) + 1,
                "image_id": im["id"],
                "category_id": b.category_id,
                "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                "area": round((x2 - x1) * (y2 - y1), 2),
                "iscrowd": 0,
            }
        )
    category_ids = [cid if cid in NIH_BOX_CLASSES else None for cid in range(len(NIH_FINDINGS))] + [None]
    info = {
        "source": "nih",
        "size": opts.size,
        "n_folds": n_folds,
        "seed": seed,
        "folds_by": "patient",
        "box_frame": [NIH_FRAME, NIH_FRAME],
        "images_listed": listed,
        "images_missing": listed - len(entries),
        "classification": classification_info(NIH_CLASSES, "multilabel", category_ids),
    }
    ds = CocoDataset(images, annotations, coco_categories(NIH_BOX_CLASSES), root=out, info=info)
    write_fold_files(ds, out, n_folds, val_fold)
    ds.write(out / "all.json")
    return ds


def label_counts(images: Sequence[Mapping]) -> dict[str, int]:
    """Images per class name of a dataset's ``labels`` (every class of `NIH_CLASSES`, zero included)."""
    counts = dict.fromkeys(NIH_CLASSES, 0)
    for im in images:
        for name in im.get("labels", ()):
            counts[name] = counts.get(name, 0) + 1
    return counts
