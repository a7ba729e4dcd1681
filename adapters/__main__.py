"""python -m adapters: train a model from its config, or predict with it.

  python -m adapters train configs/yolov8n.yaml [--set schedule.epochs=5 ...]
  python -m adapters predict configs/yolov8n.yaml --weights runs/yolov8n/weights.pt \\
      --dataset work/coco/val.json --out preds/yolov8n.json

train writes into the config's out_dir (a run directory): weights, the resolved
config (config.yaml), the dataset's categories (categories.json) and the per-step
loss log (loss.csv). predict writes COCO results in absolute pixels of the
dataset's images plus a NAME.meta.json sidecar; for a gate it writes
[{image_id, p_abnormal}] instead.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import yaml


def _parser() -> argparse.ArgumentParser:
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
        "--cam-dir", type=Path, help="gate only: folder of the Grad-CAM PNGs (default: OUT's stem + _cam)"
    )
    return ap


def _train(args) -> int:
    from adapters import build
    from adapters.config import load_config
    from core.coco import CocoDataset
    from core.io import atomic_open, write_json

    cfg = load_config(args.config, args.set)
    train_json = args.dataset or cfg.dataset.get("train")
    if not train_json:
        raise ValueError(f"{args.config}: no training set: set dataset.train or pass --dataset")
    dataset = CocoDataset.load(train_json)
    model = build(cfg)  # a bad model config fails here, before the run directory is touched
    out_dir = Path(args.out_dir or cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    resolved = cfg.to_dict()
    resolved["dataset"] = {**cfg.dataset, "train": str(Path(train_json).resolve())}
    with atomic_open(out_dir / "config.yaml") as f:
        yaml.safe_dump(resolved, f, sort_keys=False)
    write_json(out_dir / "categories.json", dataset.categories, indent=1)
    print(f"training {cfg.name} ({cfg.adapter}) on {train_json}: {len(dataset.images)} images → {out_dir}")
    t0 = time.perf_counter()
    weights = model.train(dataset, out_dir)
    print(f"done in {time.perf_counter() - t0:.0f} s: weights {weights}, losses {out_dir / 'loss.csv'}")
    return 0


def _predict(args) -> int:
    from tqdm import tqdm

    from adapters import build
    from adapters.config import load_config
    from core.coco import CocoDataset
    from core.predictions import write_gate, write_predictions

    cfg = load_config(args.config, args.set)
    dataset = CocoDataset.load(args.dataset)
    model = build(cfg, args.weights)
    model.check_categories(dataset)
    ids = dataset.image_ids
    paths = [dataset.image_path(i) for i in ids]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} image(s) of {args.dataset} not found, e.g. {missing[0]}")
    bs = args.batch_size or cfg.predict.batch_size
    meta = {
        "name": args.name or cfg.name,
        "adapter": cfg.adapter,
        "model": cfg.model,
        "config": str(args.config),
        "weights": str(args.weights),
        "dataset": str(args.dataset),
        "images": len(ids),
        "device": cfg.device,
    }
    t0 = time.perf_counter()
    outputs = list(tqdm(model.predict(paths, bs), total=len(ids), desc=f"predict {cfg.name}", unit="img"))
    dt = time.perf_counter() - t0
    meta.update(seconds=round(dt, 3), images_per_second=round(len(ids) / dt, 3) if dt > 0 else None)
    if getattr(model, "kind", "detector") == "gate":
        write_gate(args.out, dict(zip(ids, outputs, strict=True)), meta)
        if args.cam:
            cam_dir = args.cam_dir or args.out.with_name(f"{args.out.stem}_cam")
            written = model.grad_cam(dataset, args.cam, cam_dir)
            print(f"Grad-CAM overlays: {len(written)} in {cam_dir}")
    else:
        if args.cam:
            raise ValueError("--cam is for a gate (resnet_gate) config")
        write_predictions(args.out, dict(zip(ids, outputs, strict=True)), meta)
    print(f"wrote {args.out} ({len(ids)} images, {len(ids) / dt:.2f} img/s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from adapters.base import AdapterError
    from adapters.config import ConfigError

    try:
        return _train(args) if args.cmd == "train" else _predict(args)
    except (ConfigError, AdapterError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
