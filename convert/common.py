"""The part every source shares: validated boxes → images converted → one COCO dataset with folds."""

from __future__ import annotations

import csv
import logging
import math
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from convert.folds import assign_folds
from convert.images import ImageJob, convert_image, find_images, parallel_map, source_size, target_size
from core.coco import CocoDataset
from core.errors import UserError
from core.io import atomic_open, check_out_dir

log = logging.getLogger(__name__)


class ConversionError(UserError):
    """Bad input found while converting; the message names the file and row."""


@dataclass(frozen=True)
class SourceBox:
    """One labelled box as the source gives it, in original (DICOM) pixels."""

    image_key: str
    class_id: int
    x1: float
    y1: float
    x2: float
    y2: float
    annotator: str | None
    row: int  # line number in the source CSV (header = 1)


@dataclass(frozen=True)
class Problem:
    file: str
    row: int | None
    image_key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}, row {self.row}" if self.row is not None else self.file
        return f"{where} (image {self.image_key}): {self.message}"


@dataclass
class LabelTable:
    """What a source's CSV says: every image key, its boxes, and the problems found."""

    source_file: Path
    image_keys: list[str]
    boxes: dict[str, list[SourceBox]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)


def parse_float(value: str) -> float:
    """A CSV field as float; empty → NaN."""
    return float(value) if value.strip() != "" else math.nan


@contextmanager
def open_csv(path: Path, columns: Sequence[str], what: str) -> Iterator[csv.DictReader]:
    """A `csv.DictReader` over a user's CSV whose header is checked; the file is closed on exit.

    Any valid CSV is read: UTF-8 with or without a byte-order mark (as Excel saves it), LF or CRLF
    line ends, quoted fields. Extra columns are allowed.

    Args:
        path: the CSV file.
        columns: the columns it must have.
        what: what the file is, for the messages (e.g. "VinBigData label file").

    Raises:
        FileNotFoundError: if the file is missing.
        ConversionError: naming the file, if it is empty, its header lacks one of ``columns`` or
            names a column twice, or it is not UTF-8 text.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    expected = ",".join(columns)
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames
            if not header:
                raise ConversionError(f"{path}: empty file; expected a header {expected}")
            twice = sorted({c for c in header if header.count(c) > 1})
            if twice:
                raise ConversionError(f"{path}: the header names column(s) {twice} twice; expected {expected}")
            missing = [c for c in columns if c not in header]
            if missing:
                raise ConversionError(f"{path}: missing columns {missing}; expected {expected}")
            yield reader
    except UnicodeDecodeError as e:
        raise ConversionError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8 CSV") from None


def field_count_problem(reader: csv.DictReader, row: Mapping) -> str | None:
    """What is wrong with a row of more or fewer fields than the header, or None if it has as many."""
    n_header = len(reader.fieldnames or ())
    if None in row:  # more values than columns: DictReader keeps the rest under None
        return f"{n_header + len(row[None])} fields; the header has {n_header}"
    if any(v is None for v in row.values()):  # fewer: the missing ones are None
        return f"{sum(v is not None for v in row.values())} fields; the header has {n_header}"
    return None


def read_size_table(path: Path) -> dict[str, tuple[int, int]]:
    """``image_id,dim0,dim1`` (original height, width) → ``{image_id: (width, height)}``.

    Raises:
        FileNotFoundError, ConversionError: naming the file and row.
    """
    out: dict[str, tuple[int, int]] = {}
    with open_csv(path, ("image_id", "dim0", "dim1"), "size table") as reader:
        for row_no, r in enumerate(reader, start=2):
            bad = field_count_problem(reader, r)
            if bad:
                raise ConversionError(f"{path}, row {row_no}: {bad}")
            key = r["image_id"].strip()
            if not key:
                raise ConversionError(f"{path}, row {row_no}: empty image_id")
            try:
                h, w = int(float(r["dim0"])), int(float(r["dim1"]))
            except (ValueError, OverflowError):
                raise ConversionError(f"{path}, row {row_no}: dim0/dim1 not integers: {r}") from None
            if h <= 0 or w <= 0:
                raise ConversionError(f"{path}, row {row_no}: non-positive size {h}x{w}")
            if out.get(key, (w, h)) != (w, h):
                ow, oh = out[key]
                raise ConversionError(f"{path}, row {row_no}: image {key} is {h}x{w} here but {oh}x{ow} above")
            out[key] = (w, h)
    return out


def check_boxes_inside(table: LabelTable, sizes: Mapping[str, tuple[int, int]], tol: float = 0.5) -> None:
    """Add a problem for each box that leaves its original image (``tol`` pixels of slack)."""
    for key in table.image_keys:
        if key not in sizes:
            continue
        w, h = sizes[key]
        for b in table.boxes.get(key, []):
            if b.x1 < -tol or b.y1 < -tol or b.x2 > w + tol or b.y2 > h + tol:
                table.problems.append(
                    Problem(
                        str(table.source_file),
                        b.row,
                        key,
                        f"box [{b.x1}, {b.y1}, {b.x2}, {b.y2}] lies outside the {w}x{h} image",
                    )
                )


def write_problem_report(path: Path, problems: Sequence[Problem]) -> None:
    with atomic_open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "row", "image_id", "problem"])
        for p in problems:
            w.writerow([p.file, "" if p.row is None else p.row, p.image_key, p.message])


Fuser = Callable[[list[SourceBox], int, int], list[tuple[int, tuple[float, float, float, float], str | None]]]


@dataclass
class BuildOptions:
    out_dir: Path
    images_dir: Path | None = None
    size_table: Path | None = None
    labels_only: bool = False
    size: int | None = 1024
    workers: int = 1
    n_folds: int = 5
    val_fold: int = 0
    seed: int = 0
    on_error: str = "raise"  # raise | skip
    default_size: tuple[int, int] | None = None  # (w, h) when neither images nor a size table give one
    unlabelled: bool = False  # images with no labels: every image, no annotations, no folds

    def check(self) -> None:
        """Refuse options that are out of range or contradict each other, before anything is read or written.

        Raises:
            ConversionError: naming the command-line flag at fault (``--size``, ``--folds``,
                ``--val-fold``, ``--workers``, ``--on-error``, ``--labels-only``).
            UserError: for an ``out_dir`` that is an existing file (`core.io.check_out_dir`).
        """
        if self.size is not None and self.size < 0:
            raise ConversionError(f"--size must be >= 0 (0 keeps the original size), got {self.size}")
        if self.unlabelled:
            pass  # an unlabelled set has no folds
        elif self.n_folds < 2:
            raise ConversionError(f"--folds must be >= 2 (a split needs a train and a val part), got {self.n_folds}")
        if not self.unlabelled and not 0 <= self.val_fold < self.n_folds:
            raise ConversionError(
                f"--val-fold must be one of the folds 0..{self.n_folds - 1} (--folds {self.n_folds}), "
                f"got {self.val_fold}"
            )
        if self.workers < 0:
            raise ConversionError(f"--workers must be >= 0, got {self.workers}")
        if self.on_error not in ("raise", "skip"):
            raise ConversionError(f"--on-error must be 'raise' or 'skip', got {self.on_error!r}")
        if self.labels_only and self.images_dir is not None:
            raise ConversionError("--labels-only and --images exclude each other")
        check_out_dir(self.out_dir)


def build_dataset(
    table: LabelTable,
    classes: Mapping[int, str],
    fuse: Fuser,
    opts: BuildOptions,
    source: str,
    extra_info: Mapping | None = None,
) -> CocoDataset:
    """Turn a label table into PNGs (unless labels-only) and COCO files with folds.

    Writes under ``opts.out_dir``: ``images/<key>.png``, ``all.json``,
    ``fold{k}_train.json``/``fold{k}_val.json`` for every fold, ``train.json``/
    ``val.json`` for ``opts.val_fold``, and ``skipped.csv`` when anything was skipped. An
    unlabelled set (``opts.unlabelled``, `unlabelled_table`) gets ``all.json`` only, no folds.

    Raises:
        ConversionError: for options out of range (`BuildOptions.check`), or listing the problems
            (file, row, image) when ``on_error`` is ``raise``; nothing is written before the
            options, labels and sizes check out, and an image that cannot be decoded removes the
            images this run wrote (and the folders it made) before the error is raised.
    """
    out = opts.out_dir
    opts.check()
    # ---- original sizes: size table, else the images' headers
    sources: dict[str, Path] = {}
    if not opts.labels_only:
        if opts.images_dir is None:
            raise ConversionError(
                "no image folder given: pass --images DIR, or --labels-only with --size-table"
            )
        found = find_images(opts.images_dir)
        for key in table.image_keys:
            if key in found:
                sources[key] = found[key]
            else:
                table.problems.append(Problem(str(opts.images_dir), None, key, "no image file for this id"))
    if opts.size_table is not None:
        sizes = read_size_table(opts.size_table)
        for key in table.image_keys:
            if key not in sizes:
                table.problems.append(
                    Problem(str(opts.size_table), None, key, "image id missing from the size table")
                )
    elif not opts.labels_only:
        rasters = [k for k, p in sources.items() if p.suffix.lower() not in (".dicom", ".dcm")]
        if rasters:
            raise ConversionError(
                f"{opts.images_dir}: {len(rasters)} images are PNG/JPEG (e.g. {sources[rasters[0]].name}); "
                "their original DICOM size is unknown: pass --size-table (image_id,dim0,dim1)"
            )
        sizes = {}
        for key, res in zip(
            sources,
            parallel_map(_header_size, list(sources.values()), opts.workers, "reading headers"),
            strict=True,
        ):
            if isinstance(res, str):
                table.problems.append(Problem(str(sources[key]), None, key, res))
            else:
                sizes[key] = res
    elif opts.default_size is not None:
        sizes = {k: opts.default_size for k in table.image_keys}
    else:
        raise ConversionError("--labels-only needs --size-table to know each image's original size")
    check_boxes_inside(table, sizes)

    bad = {p.image_key for p in table.problems}
    if table.problems and opts.on_error == "raise":
        shown = "\n  ".join(str(p) for p in table.problems[:20])
        more = f"\n  ... and {len(table.problems) - 20} more" if len(table.problems) > 20 else ""
        raise ConversionError(
            f"{len(table.problems)} problem(s) in the input; nothing was written "
            f"(use --on-error skip to leave those images out):\n  {shown}{more}"
        )
    keys = [k for k in table.image_keys if k not in bad]

    # ---- images
    new_dirs = [d for d in (out, out / "images") if not d.exists()]
    out.mkdir(parents=True, exist_ok=True)
    dims: dict[str, tuple[int, int]] = {}
    if opts.labels_only:
        dims = {k: target_size(*sizes[k], opts.size) for k in keys}
    else:
        jobs = [ImageJob(k, sources[k], out / "images" / f"{k}.png", opts.size) for k in keys]
        fresh = [j.out for j in jobs if not j.out.exists()]  # kept by a re-run; removed on an error
        results = parallel_map(convert_image, jobs, opts.workers, "converting images")
        try:
            for res in results:
                if res.error:
                    if opts.on_error == "raise":
                        src = sources[res.key]
                        text = res.error.replace(f"{src}: {src}: ", f"{src}: ", 1)  # named once
                        raise ConversionError(f"image {res.key}: {text}")
                    table.problems.append(Problem(str(sources[res.key]), None, res.key, res.error))
                else:
                    dims[res.key] = (res.width, res.height)
        except ConversionError:
            results.close()  # stops the workers before the clean-up
            _remove_new(fresh, new_dirs)
            raise
        keys = [k for k in keys if k in dims]
    if table.problems:
        write_problem_report(out / "skipped.csv", table.problems)
        n_bad = len({p.image_key for p in table.problems})
        log.warning("skipped %d image(s); see %s", n_bad, out / "skipped.csv")

    # ---- annotations: fuse annotators, scale to the written image
    images, annotations = [], []
    labels_per_image: dict[str, set[int]] = {}
    for image_id, key in enumerate(sorted(keys)):
        ow, oh = sizes[key]
        w, h = dims[key]
        images.append(
            {
                "id": image_id,
                "file_name": f"images/{key}.png",
                "width": w,
                "height": h,
                "orig_width": ow,
                "orig_height": oh,
                "source_id": key,
            }
        )
        sx, sy = w / ow, h / oh
        fused = fuse(table.boxes.get(key, []), ow, oh)
        labels_per_image[key] = {c for c, _, _ in fused}
        for cid, (x1, y1, x2, y2), annotator in fused:
            x1, x2 = min(max(x1 * sx, 0.0), w), min(max(x2 * sx, 0.0), w)
            y1, y2 = min(max(y1 * sy, 0.0), h), min(max(y2 * sy, 0.0), h)
            ann = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": int(cid),
                "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                "area": round((x2 - x1) * (y2 - y1), 2),
                "iscrowd": 0,
            }
            if annotator is not None:
                ann["rad_id"] = annotator
            annotations.append(ann)
    from core.classes import coco_categories

    info = {
        "source": source,
        "size": opts.size,
        "n_folds": opts.n_folds,
        "seed": opts.seed,
        **(extra_info or {}),
    }
    if opts.unlabelled:
        info = {"source": source, "size": opts.size, "split": "test", "labelled": False, **(extra_info or {})}
    ds = CocoDataset(images, annotations, coco_categories(dict(classes)), root=out, info=info)
    n_folds = min(opts.n_folds, len(keys)) if keys and not opts.unlabelled else 0
    if n_folds >= 2:
        folds = assign_folds(labels_per_image, n_folds, opts.seed)
        for im in images:
            im["fold"] = folds[im["source_id"]]
        write_fold_files(ds, out, n_folds, opts.val_fold)
    ds.write(out / "all.json")
    return ds


def classification_info(classes: Sequence[str], task: str, category_ids: Sequence[int | None]) -> dict:
    """The ``info["classification"]`` block of a dataset whose images carry ``labels`` (class names).

    Args:
        classes: the class names, in column order.
        task: ``multilabel`` or ``multiclass``.
        category_ids: the COCO category id each class stands for, or None.

    Raises:
        ValueError: for another task or a ``category_ids`` of another length than ``classes``.
    """
    if task not in ("multilabel", "multiclass"):
        raise ValueError(f"task must be multilabel or multiclass, got {task!r}")
    if len(category_ids) != len(classes):
        raise ValueError(f"{len(category_ids)} category ids for {len(classes)} classes")
    return {"task": task, "classes": list(classes), "category_ids": list(category_ids)}


def write_fold_files(ds: CocoDataset, out: Path, n_folds: int, val_fold: int) -> None:
    """Write ``fold{k}_train.json``/``fold{k}_val.json`` for every fold and ``train.json``/``val.json``.

    Args:
        ds: the whole dataset; every image carries its ``"fold"`` in ``[0, n_folds)``.
        out: the dataset's folder.
        n_folds: the number of folds.
        val_fold: the fold written as ``val.json`` (the others as ``train.json``).

    Raises:
        KeyError: if an image has no ``"fold"``.
        OSError: if a file cannot be written.
    """
    for k in range(n_folds):
        val_ids = [im["id"] for im in ds.images if im["fold"] == k]
        train_ids = [im["id"] for im in ds.images if im["fold"] != k]
        for name, ids in (("train", train_ids), ("val", val_ids)):
            sub = ds.subset(ids)
            sub.info = {**ds.info, "fold": k, "split": name}
            sub.write(out / f"fold{k}_{name}.json")
            if k == val_fold:
                sub.write(out / f"{name}.json")


def read_id_list(path: Path, column: str, what: str) -> list[str]:
    """The ids of column ``column`` of an id list (a sample submission), in file order.

    Raises:
        FileNotFoundError: if the file is missing.
        ConversionError: naming the file and row, for a missing column, an empty or repeated id, or
            a file with no ids.
    """
    ids: dict[str, int] = {}
    with open_csv(path, (column,), what) as reader:
        for row_no, r in enumerate(reader, start=2):
            bad = field_count_problem(reader, r)
            if bad:
                raise ConversionError(f"{path}, row {row_no}: {bad}")
            key = (r[column] or "").strip()
            if not key:
                raise ConversionError(f"{path}, row {row_no}: empty {column}")
            if key in ids:
                raise ConversionError(f"{path}, row {row_no}: {column} {key} already on row {ids[key]}")
            ids[key] = row_no
    if not ids:
        raise ConversionError(f"{path}: no ids after the header")
    return list(ids)


def _names(keys: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(sorted(keys)[:n])
    return shown + (f" and {len(keys) - n} more" if len(keys) > n else "")


def unlabelled_table(opts: BuildOptions, ids: Path | None, id_column: str, source: str) -> LabelTable:
    """The `LabelTable` of unlabelled images: every image key, no boxes.

    The keys are those of the id list ``ids`` when given (checked against the image folder, or the
    size table with ``opts.labels_only``), else every image of ``opts.images_dir``, else (labels only)
    every id of the size table.

    Args:
        opts: the build options (``unlabelled`` set).
        ids: an id list such as Kaggle's sample submission, or None.
        id_column: the id list's id column (``image_id``, ``patientId``).
        source: the dataset (for the messages).

    Raises:
        FileNotFoundError: naming a missing file or folder.
        ConversionError: naming the images the id list lacks (extra images in the folder) and the ids
            with no image (missing images), whatever ``--on-error`` says: a test set must be whole.
    """
    if ids is not None:
        keys = read_id_list(Path(ids), id_column, f"{source} id list")
        where = Path(ids)
    elif opts.images_dir is not None:
        keys, where = sorted(find_images(opts.images_dir)), Path(opts.images_dir)
    elif opts.size_table is not None:
        keys, where = list(read_size_table(opts.size_table)), Path(opts.size_table)
    elif opts.labels_only:
        raise ConversionError("--labels-only without labels needs --ids ID_LIST.csv or --size-table")
    else:
        raise ConversionError("no image folder given: pass --images DIR (or --labels-only with --ids)")
    if not keys:
        raise ConversionError(f"{where}: no images")
    if ids is not None and opts.images_dir is not None:
        found = find_images(opts.images_dir)
        listed = set(keys)
        extra = [k for k in found if k not in listed]
        missing = [k for k in keys if k not in found]
        parts = []
        if missing:
            parts.append(f"{len(missing)} id(s) of {ids} have no image in {opts.images_dir}: {_names(missing)}")
        if extra:
            parts.append(f"{len(extra)} image(s) of {opts.images_dir} are not in {ids}: {_names(extra)}")
        if parts:
            raise ConversionError("; ".join(parts))
    return LabelTable(source_file=where, image_keys=list(keys))


def _remove_new(files: Sequence[Path], dirs: Sequence[Path]) -> None:
    """Remove what a failed conversion wrote: ``files`` (those that exist) and ``dirs`` if empty."""
    for f in files:
        f.unlink(missing_ok=True)
    for d in reversed(dirs):
        try:
            d.rmdir()
        except OSError:  # not empty (or already gone): leave it
            pass


def _header_size(path: Path) -> tuple[int, int] | str:
    try:
        return source_size(path)
    except Exception as e:
        return str(e)


def group_by_annotator(boxes: list[SourceBox]) -> dict[str | None, list[SourceBox]]:
    by: dict[str | None, list[SourceBox]] = defaultdict(list)
    for b in boxes:
        by[b.annotator].append(b)
    return dict(by)


def make_fuser(method: str, iou_thr: float = 0.4) -> Fuser:
    """Fusion of several annotators' boxes per image and class.

    ``raw`` keeps every box with its annotator; ``wbf``/``nms`` treat each
    annotator as a model whose boxes all score 1 and fuse per class.
    """
    if method == "raw":
        return lambda boxes, w, h: [(b.class_id, (b.x1, b.y1, b.x2, b.y2), b.annotator) for b in boxes]
    if method not in ("wbf", "nms"):
        raise ValueError(f"unknown annotator fusion {method!r}; expected one of wbf, nms, raw")

    def fuse(boxes: list[SourceBox], w: int, h: int):
        if not boxes:
            return []
        from core.detections import Detections
        from fusion.engine import fuse as fuse_models

        dets = []
        for group in group_by_annotator(boxes).values():
            arr = np.array([[b.x1, b.y1, b.x2, b.y2] for b in group], np.float32)
            arr[:, [0, 2]] = arr[:, [0, 2]].clip(0, w)
            arr[:, [1, 3]] = arr[:, [1, 3]].clip(0, h)
            dets.append(
                Detections(arr, np.ones(len(group), np.float32), np.array([b.class_id for b in group]))
            )
        fused = fuse_models(dets, w, h, method=method, iou_thr=iou_thr, skip_box_thr=0.0)
        order = np.lexsort((fused.boxes[:, 1], fused.boxes[:, 0], fused.labels))
        return [(int(fused.labels[i]), tuple(float(v) for v in fused.boxes[i]), None) for i in order]

    return fuse
