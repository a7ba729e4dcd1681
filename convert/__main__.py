"""``python -m convert VERB``: raw data → COCO, COCO → YOLO, predictions → Kaggle CSV."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from core.cli import add_common_flags, add_list_option, one_line, run_cli
from core.errors import UserError
from core.io import check_out_dir, check_out_file

EPILOG = """examples:
  python -m convert synth vinbig --out work/raw --n-images 60 --seed 0
  python -m convert synth vinbig --out work/raw_ml --all-classes --findings 2 4 --distinct-findings
  python -m convert vinbig --csv work/raw/train.csv --images work/raw/train --out work/coco --size 512
  python -m convert vinbig --csv train.csv --size-table train_meta.csv --labels-only --annotators raw --out coco_labels
  python -m convert vinbig --csv train.csv --images png_1024 --size-table train_meta.csv --out coco
  python -m convert rsna --labels stage_2_train_labels.csv --images stage_2_train_images --out rsna_coco
  python -m convert vinbig --images test --ids sample_submission.csv --out coco_test      # unlabelled
  python -m convert vinbig --ids sample_submission.csv --size-table test_meta.csv --labels-only --out coco_test
  python -m convert rsna --images stage_2_test_images --ids stage_2_sample_submission.csv --out rsna_test
  python -m convert nih --csv Data_Entry_2017_v2020.csv --bbox BBox_List_2017.csv --images images --out nih_coco
  python -m convert folders COVID-19_Radiography_Dataset --out covid_coco --size 512
  python -m convert ids work/coco/val.json --limit 20
  python -m convert yolo --train work/coco/train.json --val work/coco/val.json --out work/yolo
  python -m convert submission --dataset work/coco/val.json --preds preds/wbf.json --gate preds/gate.json --out sub.csv
"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="output folder of the COCO dataset")
    p.add_argument(
        "--images", type=Path, help="folder of DICOMs (.dicom/.dcm) or already-resized PNG/JPEG files"
    )
    p.add_argument(
        "--size-table",
        type=Path,
        help="CSV image_id,dim0,dim1 (original height, width); required with PNG/JPEG images or --labels-only",
    )
    p.add_argument(
        "--labels-only", action="store_true", help="write the COCO files from the CSV and size table only"
    )
    p.add_argument(
        "--size",
        type=int,
        default=1024,
        help="longer side of the written PNGs, aspect kept; 0 = original (default 1024)",
    )
    p.add_argument(
        "--folds",
        type=int,
        default=5,
        help="number of folds, split by image, stratified by class (default 5)",
    )
    p.add_argument("--val-fold", type=int, default=0, help="fold written as train.json/val.json (default 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fold split")
    p.add_argument("--workers", type=int, default=1, help="processes for image work (default 1)")
    p.add_argument(
        "--ids",
        type=Path,
        help="unlabelled images only (no label CSV): the id list (Kaggle's sample submission) that the "
        "images must match one for one",
    )
    p.add_argument(
        "--on-error",
        choices=("raise", "skip"),
        default="raise",
        help="on bad input: stop with an error naming file and row (default), or skip those images and write skipped.csv",
    )


def _split_flags(p: argparse.ArgumentParser) -> None:
    """``--size``, ``--folds``, ``--val-fold``, ``--seed``, ``--workers``, ``--on-error`` of the image-label converters."""
    p.add_argument("--size", type=int, default=1024, help="longer side of the written PNGs; 0 = original")
    p.add_argument("--folds", type=int, default=5, help="number of folds (default 5)")
    p.add_argument("--val-fold", type=int, default=0, help="fold written as train.json/val.json (default 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fold split")
    p.add_argument("--workers", type=int, default=1, help="processes for image work (default 1)")
    p.add_argument(
        "--on-error",
        choices=("raise", "skip"),
        default="raise",
        help="an image that cannot be decoded: stop with an error (default), or skip it (skipped.csv)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m convert",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = sub.add_parser("synth", help="write a synthetic raw dataset (VinBigData or RSNA layout, real DICOMs)")
    p.add_argument("kind", choices=("vinbig", "rsna"))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n-images", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-size", type=int, default=384, help="smallest image side in pixels (vinbig)")
    p.add_argument("--max-size", type=int, default=640, help="largest image side in pixels (vinbig)")
    p.add_argument("--size", type=int, default=1024, help="image side (rsna, square)")
    p.add_argument(
        "--all-classes", action="store_true", help="draw all 14 VinBigData classes, not the default four"
    )
    p.add_argument(
        "--findings",
        type=int,
        nargs=2,
        metavar=("MIN", "MAX"),
        default=(1, 3),
        help="lesions per abnormal image (vinbig; default 1 3)",
    )
    p.add_argument(
        "--distinct-findings",
        action="store_true",
        help="an image's lesions get distinct classes: several findings per image, for multi-label (vinbig)",
    )
    p.add_argument("--workers", type=int, default=1)

    p = sub.add_parser(
        "vinbig", help="VinBigData train.csv + DICOMs (or PNGs + size table) → COCO; without --csv: unlabelled"
    )
    p.add_argument("--csv", type=Path, help="VinBigData train.csv; leave out for unlabelled (test) images")
    _common(p)
    p.add_argument(
        "--annotators",
        choices=("wbf", "nms", "raw"),
        default="wbf",
        help="fuse the radiologists' boxes per image and class (default wbf), or keep all with rad_id (raw)",
    )
    p.add_argument("--iou-thr", type=float, default=0.4, help="IoU of the annotator fusion (default 0.4)")

    p = sub.add_parser(
        "rsna", help="RSNA stage_2_train_labels.csv + DICOMs → COCO; without --labels: unlabelled"
    )
    p.add_argument(
        "--labels", type=Path, help="stage_2_train_labels.csv; leave out for unlabelled (test) images"
    )
    p.add_argument(
        "--class-info", type=Path, help="stage_2_detailed_class_info.csv, checked against the labels"
    )
    _common(p)

    p = sub.add_parser(
        "nih",
        help="NIH ChestX-ray14 Data_Entry_2017.csv (+ BBox_List_2017.csv) + PNGs → multi-label COCO, "
        "patient-wise folds",
    )
    p.add_argument("--csv", type=Path, required=True, help="Data_Entry_2017.csv (or the v2020 edition)")
    p.add_argument("--bbox", type=Path, help="BBox_List_2017.csv: the 984 boxes of 8 findings (optional)")
    p.add_argument("--out", type=Path, required=True, help="output folder of the dataset")
    p.add_argument("--images", type=Path, help="folder of the NIH PNGs (00000001_000.png, ...)")
    p.add_argument(
        "--labels-only", action="store_true", help="write the COCO files of every listed image, no images"
    )
    p.add_argument(
        "--require-all",
        action="store_true",
        help="refuse an images folder that lacks listed images (default: count them, convert the rest)",
    )
    _split_flags(p)

    p = sub.add_parser(
        "folders",
        help="one folder per class (COVID/, Normal/, ...) → multi-class dataset, stratified folds",
    )
    p.add_argument("root", type=Path, help="the folder holding one folder of images per class")
    p.add_argument("--out", type=Path, required=True, help="output folder of the dataset")
    add_list_option(
        p,
        "--classes",
        help="the class order, separated by commas or spaces (every folder once; default: the folder names "
        "sorted); quote a name with a space: --classes COVID Normal 'Viral Pneumonia'",
    )
    _split_flags(p)

    p = sub.add_parser(
        "ids", help="list a dataset's image ids with file names and labels (to pick --cam ids)"
    )
    p.add_argument("dataset", type=Path, help="a COCO dataset JSON (all.json, val.json, ...)")
    p.add_argument("--limit", type=int, help="list only the first N images")

    p = sub.add_parser("yolo", help="COCO train/val → Ultralytics layout with data.yaml")
    p.add_argument("--train", type=Path, required=True)
    p.add_argument("--val", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)

    p = sub.add_parser("submission", help="COCO results (+ gate) → Kaggle CSV in original DICOM pixels")
    p.add_argument("--dataset", type=Path, required=True, help="COCO dataset the predictions were made on")
    p.add_argument("--preds", type=Path, required=True, help="COCO results JSON")
    p.add_argument(
        "--gate", type=Path, help="gate scores [{image_id, p_abnormal}] for the 'No finding' row (vinbig)"
    )
    p.add_argument("--kind", choices=("vinbig", "rsna"), default="vinbig")
    p.add_argument(
        "--ids",
        type=Path,
        help="the id list (sample submission) the rows must match one for one, checked before writing",
    )
    p.add_argument("--out", type=Path, required=True)

    p = sub.add_parser("summary", help="print a COCO dataset's summary")
    p.add_argument("dataset", type=Path)
    return add_common_flags(parser)


def _synth(args: argparse.Namespace) -> None:
    from convert import synth

    check_out_dir(args.out)

    if args.kind == "vinbig":
        kw = {"classes": tuple(range(14))} if args.all_classes else {}
        out = synth.make_vinbig(
            args.out,
            n_images=args.n_images,
            seed=args.seed,
            sizes=(args.min_size, args.max_size),
            workers=args.workers,
            findings=tuple(args.findings),
            distinct_findings=args.distinct_findings,
            **kw,
        )
    else:
        if tuple(args.findings) != (1, 3) or args.distinct_findings:
            raise UserError("--findings and --distinct-findings apply to synth vinbig only")
        out = synth.make_rsna(args.out, n_images=args.n_images, seed=args.seed, size=args.size)
    print(f"wrote a synthetic {args.kind} raw dataset to {out}")


def _dataset(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    common = dict(
        images_dir=args.images,
        size_table=args.size_table,
        labels_only=args.labels_only,
        size=args.size or None,
        n_folds=args.folds,
        val_fold=args.val_fold,
        seed=args.seed,
        workers=args.workers,
        on_error=args.on_error,
        ids=args.ids,
    )
    if args.verb == "vinbig":
        from convert.vinbig import convert_vinbig

        ds = convert_vinbig(args.csv, args.out, annotators=args.annotators, iou_thr=args.iou_thr, **common)
        labelled = args.csv is not None
    else:
        from convert.rsna import convert_rsna

        ds = convert_rsna(args.labels, args.out, class_info=args.class_info, **common)
        labelled = args.labels is not None
    print(ds.summary())
    what = "all.json, train.json, val.json and fold files" if labelled else "all.json (unlabelled, no folds)"
    print(f"wrote {args.out}/{what} in {time.perf_counter() - t0:.1f} s")


def _nih(args: argparse.Namespace) -> None:
    from convert.nih import convert_nih, label_counts

    t0 = time.perf_counter()
    ds = convert_nih(
        args.csv,
        args.out,
        images_dir=args.images,
        bbox_csv=args.bbox,
        labels_only=args.labels_only,
        size=args.size or None,
        n_folds=args.folds,
        val_fold=args.val_fold,
        seed=args.seed,
        workers=args.workers,
        require_all=args.require_all,
        on_error=args.on_error,
    )
    patients = len({im["patient_id"] for im in ds.images})
    missing = ds.info["images_missing"]
    note = f"; {missing} listed images are not in {args.images}" if missing else ""
    print(f"images: {len(ds.images)} of the {ds.info['images_listed']} listed{note}; patients: {patients}")
    print("images per label:")
    for name, n in label_counts(ds.images).items():
        print(f"  {name:<22} {n:>7}")
    print(f"boxes: {len(ds.annotations)}")
    names = ds.category_names
    for cid, n in ds.class_counts().items():
        print(f"  {cid:>3} {names[cid]:<18} {n:>7}")
    print(f"wrote {args.out}/all.json, train.json, val.json and fold files in {time.perf_counter() - t0:.1f} s")


def _folders(args: argparse.Namespace) -> None:
    from collections import Counter

    from convert.folders import convert_folders

    t0 = time.perf_counter()
    ds = convert_folders(
        args.root,
        args.out,
        classes=args.classes,
        size=args.size or None,
        n_folds=args.folds,
        val_fold=args.val_fold,
        seed=args.seed,
        workers=args.workers,
        on_error=args.on_error,
    )
    counts = Counter(im["labels"][0] for im in ds.images)
    print(f"images: {len(ds.images)}")
    for name in ds.info["classification"]["classes"]:
        print(f"  {name:<22} {counts.get(name, 0):>7}")
    print(f"wrote {args.out}/all.json, train.json, val.json and fold files in {time.perf_counter() - t0:.1f} s")


def _ids(args: argparse.Namespace) -> None:
    from convert.ids import image_rows

    for line in image_rows(args.dataset, limit=args.limit):
        print(line)


def _yolo(args: argparse.Namespace) -> None:
    from convert.yolo import coco_to_yolo

    check_out_dir(args.out)
    print(f"wrote {coco_to_yolo(args.train, args.val, args.out)}")


def _submission(args: argparse.Namespace) -> None:
    from convert.submission import write_submission

    check_out_file(args.out)
    print(
        f"wrote {write_submission(args.dataset, args.preds, args.out, kind=args.kind, gate_path=args.gate, ids=args.ids)}"
    )


def _summary(args: argparse.Namespace) -> None:
    from core.coco import CocoDataset

    print(CocoDataset.load(args.dataset).summary())


_VERBS = {
    "synth": _synth,
    "vinbig": _dataset,
    "rsna": _dataset,
    "nih": _nih,
    "folders": _folders,
    "ids": _ids,
    "yolo": _yolo,
    "submission": _submission,
    "summary": _summary,
}


def dispatch(args: argparse.Namespace) -> None:
    """Run the verb ``args.verb``.

    Raises:
        ConversionError: for a key the input lacks (a ``KeyError`` from a COCO file or a table).
    """
    from convert.common import ConversionError

    try:
        _VERBS[args.verb](args)
    except KeyError as e:
        raise ConversionError(one_line(e)) from e


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), dispatch, argv)


if __name__ == "__main__":
    sys.exit(main())
