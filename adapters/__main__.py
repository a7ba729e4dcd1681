"""python -m adapters: train a model from its config, or predict with it.

  python -m adapters train configs/yolov8n.yaml [--set schedule.epochs=5 ...]
  python -m adapters predict configs/yolov8n.yaml --weights runs/yolov8n/weights.pt \\
      --dataset work/coco/val.json --out preds/yolov8n.json

train writes into the config's out_dir or --out-dir (a run directory): weights, the
config as used (config.yaml), the dataset's categories (categories.json), the per-step
loss log (loss.csv) and the frameworks' own output (train.log; -v also shows it);
started from weights:, it prints and records (weights_report.json) how many tensors
were loaded, skipped and left as initialised. A run directory holding a finished run is
refused unless --overwrite; one holding a killed run unless --resume (continue from its
last checkpoint) or --overwrite. Under torchrun --nproc_per_node N each process trains
its share (DDP; gloo without CUDA) and rank 0 writes the files. Weight files are read
without running code: one that pickles Python objects (Ultralytics' own .pt) is
refused unless --trust-weights (config: trust_weights: true). predict writes COCO
results in absolute pixels of the dataset's images plus a NAME.meta.json sidecar
(--tta hflip: also the flipped images, fused with WBF; recorded in the sidecar);
for a gate it writes [{image_id, p_abnormal}] instead. Each verb is the library function of the same
name (adapters.train, adapters.predict). A bad config, checkpoint or input ends in
exit code 2 and one line "error: ..." (--debug: the traceback); -v shows progress.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from core.cli import add_common_flags, run_cli


def _trust_flag(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--trust-weights",
        action="store_true",
        help=f"load {what} even if the file pickles Python objects (Ultralytics' own .pt files do): "
        "a full unpickle runs any code in the file, so only for files you trust "
        "(config: trust_weights: true). Without it such files are refused; tensors and plain data "
        "always load",
    )


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m adapters", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser(
        "train", help="train a model; writes weights, config.yaml, loss.csv into the run directory"
    )
    t.add_argument("config", type=Path, help="model config YAML (configs/*.yaml)")
    t.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, dotted for sections (schedule.epochs=5); value parsed as YAML; repeatable",
    )
    t.add_argument("--dataset", type=Path, help="training COCO json (default: the config's dataset.train)")
    t.add_argument("--out-dir", type=Path, help="run directory (default: the config's out_dir)")
    run = t.add_mutually_exclusive_group()
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a run already in the run directory (only the files a training writes are removed)",
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue the unfinished (killed) run in the run directory from its last checkpoint, "
        "with the same config and data",
    )
    _trust_flag(t, "the start weights (the config's weights:)")

    p = sub.add_parser(
        "predict", help="predict a COCO dataset's images; writes COCO results + NAME.meta.json"
    )
    p.add_argument("config", type=Path, help="model config YAML")
    p.add_argument("--weights", type=Path, required=True, help="local weights file written by train")
    p.add_argument("--dataset", type=Path, required=True, help="COCO json whose images are predicted")
    p.add_argument("--out", type=Path, required=True, help="results file, e.g. preds/NAME.json")
    p.add_argument("--name", help="row name on the leaderboard (default: the config's name)")
    p.add_argument("--batch-size", type=int, help="images per forward pass (default: predict.batch_size)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument(
        "--cam", nargs="*", type=int, metavar="IMAGE_ID", help="gate only: Grad-CAM overlays of these images"
    )
    p.add_argument(
        "--cam-class",
        metavar="NAME",
        help="classifier only: the class whose Grad-CAM is drawn (default: the binary class, else each "
        "image's most probable class)",
    )
    p.add_argument(
        "--cam-dir", type=Path, help="gate only: folder of the Grad-CAM PNGs (default: OUT's stem + _cam)"
    )
    p.add_argument(
        "--tta",
        nargs="+",
        choices=("hflip",),
        metavar="MODE",
        help="detector only: test-time augmentation, hflip = also predict the horizontally flipped image "
        "and fuse both passes with WBF (default: the config's predict.tta)",
    )
    _trust_flag(p, "--weights")
    return add_common_flags(ap)  # run_cli gives -v/-q/--debug to each verb too


def _dispatch(args: argparse.Namespace) -> int:
    import adapters
    from adapters.api import default_cam_dir
    from adapters.weights import WEIGHTS_REPORT
    from core.io import read_json
    from core.predictions import read_meta

    t0 = time.perf_counter()
    if args.cmd == "train":
        weights = adapters.train(
            args.config, args.dataset, args.out_dir, args.set, trust_weights=args.trust_weights,
            overwrite=args.overwrite, resume=args.resume,
        )  # fmt: skip
        if int(os.environ.get("RANK", "0")) != 0:
            return 0  # under torchrun, rank 0 reports
        run = weights.parent
        print(
            f"wrote {weights} in {time.perf_counter() - t0:.0f} s "
            f"(losses {run / 'loss.csv'}, framework log {run / 'train.log'})"
        )
        report = weights.parent / WEIGHTS_REPORT
        if report.is_file():
            r = read_json(report)
            print(
                f"started from {r['weights']}: {r['loaded']} tensors loaded, {r['skipped']} skipped, "
                f"{r['new']} left as initialised ({report})"
            )
        return 0
    cam_dir = args.cam_dir or default_cam_dir(args.out)
    out = adapters.predict(
        args.config, args.weights, args.dataset, args.out,
        name=args.name, batch_size=args.batch_size, overrides=args.set, cam=args.cam or (), cam_dir=cam_dir, cam_class=args.cam_class,
        trust_weights=args.trust_weights, tta=args.tta,
    )  # fmt: skip
    meta = read_meta(out)
    print(f"wrote {out} ({meta['images']} images, {meta.get('images_per_second') or 0:.2f} img/s)")
    if args.cam:
        print(f"Grad-CAM overlays: {len(args.cam)} in {cam_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run ``python -m adapters`` with ``argv``; return the exit code (2: a user error, one line)."""
    return run_cli(build_parser(), _dispatch, argv)


if __name__ == "__main__":
    sys.exit(main())
