"""``python -m ensemble VERB``: fuse models' boxes (``run``) and search fusion settings (``sweep``).

Fusion methods: WBF (weighted boxes fusion), NMS, Soft-NMS and NMW (non-maximum weighted), equal to
ensemble-boxes on the same boxes divided by the image size (see fusion/engine.py).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from core.cli import add_common_flags, add_list_option, number, progress, run_cli
from eval.scoring import METRICS
from fusion.gate import GATE_MODES
from fusion.settings import CONF_TYPES, METHODS, FusionSettings

GATE_RULES = """The gate (a normal/abnormal classifier's [{image_id, p_abnormal}] file, --gate) adds VinBigData's
"No finding" row (class 14, box 0 0 1 1, score P(normal) = 1 - p_abnormal) and may drop or
down-weight boxes (--gate-mode):

  append    keep every box, add "No finding" with P(normal)
  filter    p_abnormal < LOW: only "No finding" with score 1; LOW <= p_abnormal <= HIGH: boxes plus
            "No finding" with P(normal); p_abnormal > HIGH: boxes only
  rescale   box scores times p_abnormal, plus "No finding" with P(normal)
  rescore   each box's score times P(its class | image) from a classifier with per-class
            probabilities (a multilabel classifier's file as --gate; a category no class stands
            for: times p_abnormal), plus "No finding" with P(no finding); a plain gate file is
            refused (use rescale). The sweep tries it when the --gate file has per-class
            probabilities.
"""

EPILOG = """examples:
  python -m ensemble run --method wbf --dataset data/val.json --preds preds/yolo.json preds/d2.json preds/mmdet.json \\
      --weights 2,1,1 --iou-thr 0.5 --skip-box-thr 0.01 --out preds/wbf.json
  python -m ensemble run --method wbf --dataset data/val.json --preds preds/yolo.json preds/d2.json \\
      --gate preds/gate.json --gate-mode filter --low 0.1 --high 0.9 --name wbf-gated
  python -m ensemble sweep --dataset data/val.json --preds preds/yolo.json preds/d2.json preds/mmdet.json \\
      --methods wbf nms --iou-thr 0.4 0.5 0.6 --skip-box-thr 0 0.01 --weights 1,1,1 --weights 2,1,1 \\
      --gate preds/gate.json --out sweeps/val
  python -m ensemble run --config sweeps/val/best.yaml --dataset data/test.json \\
      --preds preds/test/yolo.json preds/test/d2.json preds/test/mmdet.json --gate preds/test/gate.json --out preds/test/best.json

Options that take several numbers or names take them separated by spaces or commas (--weights 2 1 is
--weights 2,1); sweep's --weights takes one set per use (--weights 2,1 --weights 1,2).
"""


def _float(text: str) -> float:
    try:
        return number(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _inputs_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--preds",
        type=Path,
        nargs="+",
        required=True,
        metavar="RESULTS.json",
        help="COCO results files of the models (each maybe with a .meta.json sidecar), in weight order",
    )
    p.add_argument(
        "--dataset",
        type=Path,
        required=True,
        help="COCO dataset the predictions were made on (image sizes; ground truth for a sweep)",
    )
    p.add_argument(
        "--gate", type=Path, help="gate file [{image_id, p_abnormal}] with a score for every image"
    )


def _settings_args(p: argparse.ArgumentParser) -> None:
    """One flag per `FusionSettings` field (``iou_thr`` → ``--iou-thr``), its help and choices from the field."""
    defaults = FusionSettings()
    for f in fields(FusionSettings):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata["help"]
        default = getattr(defaults, f.name)
        if default is not None:
            help_text += f" (default {default})"
        if f.name == "weights":
            add_list_option(p, flag, item=number, metavar="W", help=help_text + " (spaces or commas between weights)")
        elif f.metadata["choices"]:
            p.add_argument(flag, choices=f.metadata["choices"], help=help_text)
        else:
            p.add_argument(flag, type=_float, help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ensemble",
        description=f"{__doc__}\n{GATE_RULES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    add_common_flags(parser)
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = sub.add_parser(
        "run",
        help="fuse several models' results files into one (+ gate)",
        description="Fuse several models' COCO results files into one results file and its sidecar.\n"
        f"Options not given come from --config, else from the defaults shown.\n\n{GATE_RULES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    _inputs_args(p)
    _settings_args(p)
    p.add_argument(
        "--config", type=Path, help="settings YAML (a sweep's best.yaml); the flags above override it"
    )
    p.add_argument("--name", help="name of the fusion in its sidecar and on the leaderboard")
    p.add_argument(
        "--out",
        type=Path,
        metavar="OUT.json",
        help="results file to write, sidecar beside it (default preds/NAME.json; NAME defaults to the method)",
    )

    p = sub.add_parser(
        "sweep",
        help="score a grid of fusion and gate settings on a validation set; write the ranking and best.yaml",
        description="Score every combination of the values given on a validation set (values separated\n"
        "by spaces or commas; --weights once per weight set) and write OUT/results.csv, OUT/results.json (best first) and OUT/best.yaml (for\n"
        f"run --config). Fusion runs once per setting; gate settings reuse it.\n\n{GATE_RULES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    _inputs_args(p)
    p.add_argument("--out", type=Path, required=True, help="folder for results.csv, results.json, best.yaml")
    p.add_argument(
        "--metric",
        choices=tuple(METRICS),
        default="vinbig",
        help="vinbig: mAP@0.4 with 'No finding' (default); coco: mAP@0.5:0.95; rsna: the RSNA score",
    )
    add_list_option(p, "--methods", allowed=METHODS, default=("wbf",), metavar="METHOD", help="fusion methods, e.g. wbf nms (default wbf)")
    add_list_option(p, "--iou-thr", item=number, metavar="T", help="IoU thresholds (default 0.4 0.5 0.6)")
    add_list_option(p, "--skip-box-thr", item=number, metavar="T", help="score thresholds (default 0 0.02)")
    add_list_option(
        p,
        "--weights",
        item=number,
        sets=True,
        metavar="W",
        help="one weight set, one weight per --preds file, e.g. --weights 2,1,1; repeat the option for "
        "more sets (default: all 1, then each model weighted 2 in turn)",
    )
    add_list_option(p, "--conf-type", allowed=CONF_TYPES, default=("avg",), metavar="TYPE", help="WBF conf_type values (default avg)")
    add_list_option(p, "--sigma", item=number, metavar="S", help="Soft-NMS sigma values (default 0.5)")
    add_list_option(
        p,
        "--gate-modes",
        allowed=(*GATE_MODES, "none"),
        metavar="MODE",
        help="with --gate: rules to try, none for no gate (default append filter rescale, and rescore with a per-class gate)",
    )
    add_list_option(p, "--low", item=number, metavar="L", help="with --gate: filter lows (default 0.05 0.1 0.2)")
    add_list_option(p, "--high", item=number, metavar="H", help="with --gate: filter highs (default 0.8 0.9 0.95)")
    return parser


def _run(args: argparse.Namespace) -> None:
    from ensemble.run import run
    from fusion.settings import merge, read_settings

    base, info = (FusionSettings(), {}) if args.config is None else read_settings(args.config)
    given = {f.name: getattr(args, f.name) for f in fields(FusionSettings)}
    settings = merge(base, given)
    settings.validate(len(args.preds))
    if args.gate is not None and settings.gate_mode is None:
        raise ValueError("--gate needs --gate-mode append, filter, rescale or rescore")
    if args.gate is None and settings.gate_mode is not None:
        where = f" ({args.config} sets gate_mode {settings.gate_mode})" if args.gate_mode is None else ""
        raise ValueError(f"--gate-mode {settings.gate_mode} needs --gate GATE.json{where}")
    default_name = settings.method + (f"-{settings.gate_mode}" if settings.gate_mode else "")
    name = args.name or (args.out.stem if args.out else default_name)
    out = args.out or Path("preds") / f"{name}.json"
    expect = info.get("inputs") if args.weights is None and base.weights is not None else None
    path = run(
        args.preds,
        args.dataset,
        settings,
        out,
        gate=args.gate,
        name=name,
        config=args.config,
        expect_names=expect,
        progress=progress,
    )
    from core.predictions import read_meta

    meta = read_meta(path)
    print(
        f"wrote {path} ({settings.method} of {len(args.preds)} models over {meta['images']} images, "
        f"{meta['images_per_second']} images/s)"
    )


def _sweep(args: argparse.Namespace) -> None:
    from core.coco import CocoDataset
    from core.io import check_out_dir
    from ensemble.sweep import SweepGrid, sweep
    from eval.scoring import check_metric_fits

    check_out_dir(args.out)
    check_metric_fits(CocoDataset.load(args.dataset), args.metric)  # before any work
    for w in args.weights or ():
        if len(w) != len(args.preds):
            raise ValueError(
                f"--weights {','.join(f'{x:g}' for x in w)}: {len(w)} weights for {len(args.preds)} --preds "
                "files; give one weight per file in each set, one set per --weights (--weights 2,1 --weights 1,2)"
            )
    if args.gate is None:
        given = [
            f for f, v in (("--gate-modes", args.gate_modes), ("--low", args.low), ("--high", args.high)) if v
        ]
        if given:
            raise ValueError(f"{', '.join(given)} need --gate GATE.json")
    grid = SweepGrid(
        methods=args.methods,
        iou_thrs=args.iou_thr or SweepGrid.iou_thrs,
        skip_box_thrs=args.skip_box_thr or SweepGrid.skip_box_thrs,
        weights=args.weights,
        conf_types=args.conf_type,
        sigmas=args.sigma or SweepGrid.sigmas,
        gate_modes=args.gate_modes or SweepGrid.gate_modes,
        lows=args.low or SweepGrid.lows,
        highs=args.high or SweepGrid.highs,
    )
    res = sweep(
        args.preds, args.dataset, args.out, grid, metric=args.metric, gate=args.gate, progress=progress
    )
    print(f"{len(res.rows)} settings scored by {args.metric}; best {res.best_score:.4f}:")
    for r in res.rows[:5]:
        gate = f" gate {r['gate_mode']}" if r["gate_mode"] else ""
        thr = f" low {r['low']} high {r['high']}" if r["gate_mode"] == "filter" else ""
        print(
            f"  {r['rank']:>3}. {r['score']:.4f}  {r['method']} weights {','.join(f'{w:g}' for w in r['weights'])} "
            f"iou_thr {r['iou_thr']} skip_box_thr {r['skip_box_thr']}{gate}{thr}"
        )
    print(f"wrote {res.out}/results.csv, results.json and best.yaml")


def _dispatch(args: argparse.Namespace) -> None:
    if args.verb == "run":
        _run(args)
    else:
        _sweep(args)


def main(argv: list[str] | None = None) -> int:
    """``python -m ensemble``: exit 0, or 2 with one line naming the file or value at fault."""
    return run_cli(build_parser(), _dispatch, argv)


if __name__ == "__main__":
    sys.exit(main())
