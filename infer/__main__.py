"""python -m infer: export a finished pipeline run as one folder, and run that folder on new images.

  python -m infer export configs/pipelines/demo.yaml --out work/demo/bundle
  python -m infer predict work/demo/bundle scans/ new.dcm --out answers --overlays --sr

export copies each model's config and weights, the gate, the fusion settings of the best fusion on
the run's leaderboard (or --fusion NAME), the class list, the image preprocessing and the versions
into a folder with a manifest.json holding every file's SHA-256. predict decodes DICOM or PNG/JPEG
files (or folders of them) as `python -m convert` does, predicts and fuses as the pipeline does, and
writes into --out: predictions.json (boxes with class and score in original pixels), predictions.csv
(the Kaggle VinBigData format), with --overlays overlays/*.png, with --sr a DICOM Structured Report
(TID 1500) per DICOM input in sr/, and failures.json/.csv. A file that cannot be read is listed and
the others are predicted; the exit code is then 2. Each verb is the library function of the same
name (infer.export, infer.predict). A bad bundle or input ends in exit code 2 and one line
"error: ..." (--debug: the traceback); -v shows progress.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.cli import add_common_flags, run_cli


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m infer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="export a finished pipeline run as a bundle folder")
    e.add_argument("config", type=Path, help="the pipeline YAML the run used (configs/pipelines/*.yaml)")
    e.add_argument("--out", type=Path, required=True, help="the bundle folder to write")
    e.add_argument("--fusion", help="the fusion to export, e.g. wbf+gate (default: the best on the leaderboard)")
    e.add_argument("--work-dir", help="the run's work folder (default: the config's work_dir)")
    e.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="the --set the run was given; repeatable"
    )
    e.add_argument("--force", action="store_true", help="replace an existing --out folder")

    p = sub.add_parser("predict", help="predict new DICOM or PNG/JPEG images with a bundle")
    p.add_argument("bundle", type=Path, help="a bundle folder (python -m infer export)")
    p.add_argument("inputs", nargs="+", type=Path, help="DICOM or PNG/JPEG files, or folders of them")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--overlays", action="store_true", help="write overlay PNGs with the boxes drawn")
    p.add_argument("--sr", action="store_true", help="write a DICOM Structured Report per DICOM input")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N, for every model")
    p.add_argument("--batch-size", type=int, help="images per forward pass (default: each model's own)")
    p.add_argument(
        "--min-score", type=float, default=0.25,
        help="boxes drawn on overlays and put in reports score at least this (default 0.25; JSON and CSV hold all)",
    )  # fmt: skip
    return add_common_flags(ap)  # run_cli gives -v/-q/--debug to each verb too


def dispatch(args: argparse.Namespace) -> int:
    """Do ``args.cmd`` (``export`` or ``predict``); 2 when some inputs failed."""
    import infer

    if args.cmd == "export":
        out = infer.export(args.config, args.out, fusion=args.fusion, overrides=args.set,
                           work_dir=args.work_dir, force=args.force)  # fmt: skip
        if not args.quiet:
            print(f"wrote {out}")
        return 0
    res = infer.predict(
        args.bundle, args.inputs, args.out, overlays=args.overlays, sr=args.sr,
        device=args.device, batch_size=args.batch_size, min_score=args.min_score,
    )  # fmt: skip
    if not args.quiet:
        extra = "".join(
            f", {len(x)} {what} in {args.out / sub}"
            for x, what, sub in ((res.overlays, "overlays", "overlays"), (res.reports, "reports", "sr"))
            if x
        )
        print(f"predicted {res.images} images: {res.predictions}, {res.csv}{extra}")
    if res.failures:
        listed = "; ".join(f"{f.file} ({f.stage}: {f.error})" for f in res.failures[:10])
        more = f"; and {len(res.failures) - 10} more" if len(res.failures) > 10 else ""
        print(
            f"error: {len(res.failures)} failure(s), listed in {args.out / 'failures.csv'}: {listed}{more}",
            file=sys.stderr,
        )
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run ``python -m infer`` with ``argv``; return the exit code (2: a user error or failed inputs)."""
    return run_cli(build_parser(), dispatch, argv)


if __name__ == "__main__":
    sys.exit(main())
