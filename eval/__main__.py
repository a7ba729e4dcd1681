"""``python -m eval VERB``: rank results files on a dataset, plot, and write an HTML report.

Never imports a training framework; matplotlib only when plots are written.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from core.cli import run_cli
from eval.scoring import METRICS

EPILOG = """examples:
  python -m eval leaderboard --dataset data/vinbig/val.json --preds 'preds/*.json'
  python -m eval leaderboard --dataset data/vinbig/val.json --preds preds/*.json --gate preds/gate.json \\
      --runs 'runs/*' --out results/ --html report/
  python -m eval leaderboard --dataset data/rsna/val.json --preds preds/*.json --metric rsna --out results/

Gate files (sidecar kind: gate) among --preds are plotted, not ranked. For the vinbig metric, a row
without class-14 ("No finding") predictions is scored as is, unless --gate is given: then the gate's
P(normal) = 1 - p_abnormal is its "No finding" score. Plots are drawn only with --out or --html.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eval",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    p = sub.add_parser(
        "leaderboard",
        help="score and rank results files; write tables, plots and an HTML report",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    p.add_argument("--dataset", type=Path, required=True, help="COCO dataset the predictions were made on")
    p.add_argument(
        "--preds",
        nargs="+",
        required=True,
        metavar="FILE",
        help="results files or glob patterns (*.meta.json sidecars are skipped; gate files are plotted)",
    )
    p.add_argument(
        "--metric",
        choices=tuple(METRICS),
        default="vinbig",
        help="headline metric: vinbig = mAP@0.4 with No finding (default), coco = mAP@[.5:.95], rsna",
    )
    p.add_argument(
        "--gate", type=Path, help="gate file: supplies No finding to rows without class 14 (vinbig)"
    )
    p.add_argument("--out", type=Path, help="folder for leaderboard.md/.csv/.json and plots/*.png")
    p.add_argument("--html", type=Path, help="folder (index.html) or .html file of the self-contained report")
    p.add_argument(
        "--runs",
        nargs="+",
        default=[],
        metavar="DIR",
        help="training run folders or glob patterns, each with loss.csv (step,epoch,loss,...)",
    )
    p.add_argument("--examples", type=int, default=4, help="example images drawn (default 4; 0 = none)")
    p.add_argument(
        "--conf",
        type=float,
        default=0.25,
        help="lowest box score in the confusion matrices and examples (default 0.25)",
    )
    p.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        metavar="N",
        help="resamples of the images for each score's 95%% confidence interval (default 1000; 0 = none)",
    )
    p.add_argument(
        "--note",
        action="append",
        default=[],
        metavar="TEXT",
        help="a finding shown at the top of the HTML report (repeatable)",
    )
    return parser


def leaderboard(args: argparse.Namespace) -> None:
    """The ``leaderboard`` verb: `eval.leaderboard.leaderboard`, then the table and what was written."""
    from core.coco import CocoDataset
    from eval.leaderboard import leaderboard as make_leaderboard
    from eval.scoring import check_metric_fits

    t0 = time.perf_counter()
    dataset = CocoDataset.load(args.dataset)
    check_metric_fits(dataset, args.metric)  # before any work
    res = make_leaderboard(
        dataset,
        args.preds,
        metric=args.metric,
        gate=args.gate,
        out=args.out,
        html=args.html,
        runs=args.runs,
        examples=args.examples,
        score_thr=args.conf,
        notes=args.note,
        bootstrap=args.bootstrap,
    )
    print(res.board.to_text())
    for g in res.board.gates:
        auc = "n/a" if math.isnan(g.roc.auc) else f"{g.roc.auc:.4f}"
        print(f"gate {g.name}: AUC {auc}" + (" (applied to rows without class 14)" if g.applied else ""))
    if res.files:
        where = sorted({str(p.parent) for p in res.files})
        print(f"wrote {len(res.files)} files to {', '.join(where)}")
    if res.html is not None:
        print(f"report: {res.html}")
    if args.examples == 0 and (args.out is not None or args.html is not None):
        print("examples: none drawn (--examples 0)")
    print(f"done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)


VERBS = {"leaderboard": leaderboard}


def main(argv: list[str] | None = None) -> int:
    """``python -m eval``: exit 0, or 2 with one line naming the file or value at fault."""
    return run_cli(build_parser(), lambda args: VERBS[args.verb](args), argv)


if __name__ == "__main__":
    sys.exit(main())
