"""Adapter overhead at prediction: our ``predict`` beside each framework's own call, same model and images.

For each adapter (Ultralytics YOLOv8n, Detectron2 and MMDetection Faster R-CNN R50-FPN, the
shipped configs), trains one step on a few small images to get a checkpoint in our format,
then predicts the same 1024×1024 images at 1024 px on the CPU twice over: through the adapter
(`Detector.predict`, which also reads the PNGs and converts the output to `Detections`) and
through the framework's own call on the adapter's loaded model (Ultralytics ``YOLO.predict``,
Detectron2 ``DefaultPredictor``, MMDetection ``inference_detector``) with the image files.
Best of ``--rounds`` each, interleaved.

    .venv/bin/python bench/predict.py [--images 6] [--rounds 2] [--adapters ultralytics,detectron2,mmdet]

Target: the adapter's overhead stays under 10 % (ratio of seconds per image under 1.10).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("YOLO_OFFLINE", "1")
warnings.filterwarnings("ignore")

CONFIGS = {
    "ultralytics": "configs/yolov8n.yaml",
    "detectron2": "configs/faster_rcnn_r50_fpn_d2.yaml",
    "mmdet": "configs/faster_rcnn_r50_fpn_mmdet.yaml",
}


def make_images(root: Path, n: int, side: int = 1024) -> Path:
    """``n`` chest-like 1024×1024 PNGs with boxes from our synthetic generator, as a COCO dataset."""
    from convert.synth import make_vinbig
    from convert.vinbig import convert_vinbig

    raw = make_vinbig(root / "raw", n_images=n, seed=3, sizes=(side, side), workers=1)
    convert_vinbig(raw / "train.csv", root / "coco", images_dir=raw / "train", size=side, n_folds=2)
    return root / "coco" / "all.json"


def native_call(adapter: str, det):
    """The framework's own predict call on the adapter's loaded model: ``fn(paths)``."""
    p = det.cfg.predict
    if adapter == "ultralytics":
        model = det._load()

        def run(paths):
            for r in model.predict(
                [str(x) for x in paths],
                imgsz=det.cfg.image_size,
                conf=p.score_thr,
                iou=p.nms_iou,
                max_det=p.max_dets,
                device="cpu",
                verbose=False,
                stream=True,
            ):
                r.boxes.xyxy.numpy()

        return run
    if adapter == "detectron2":
        import cv2
        from detectron2.engine import DefaultPredictor

        det._load()
        cfg = det._d2cfg.clone()
        cfg.defrost()
        cfg.MODEL.WEIGHTS = ""
        predictor = DefaultPredictor(cfg)
        predictor.model = det._model  # the very same weights

        def run(paths):
            for x in paths:
                predictor(cv2.imread(str(x)))["instances"].pred_boxes.tensor.numpy()

        return run
    if adapter == "mmdet":
        from mmdet.apis import inference_detector

        model = det._load()

        import cv2

        def run(paths):
            # images read here as the adapter does: inference_detector rewrites the model's test
            # pipeline for arrays on first use, after which it no longer takes paths
            for x in paths:
                inference_detector(model, cv2.imread(str(x))).pred_instances.bboxes.numpy()

        return run
    raise KeyError(adapter)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--adapters", default="ultralytics,detectron2,mmdet")
    args = ap.parse_args()

    import torch

    from adapters import build
    from adapters.config import load_config
    from core.coco import CocoDataset

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    tmp = Path(tempfile.mkdtemp(prefix="cxrfuse-bench-predict-"))
    print(f"making {args.images} synthetic 1024x1024 images ...", flush=True)
    ds_path = make_images(tmp, args.images)
    ds = CocoDataset.load(ds_path)
    paths = [ds.image_path(i) for i in ds.image_ids]
    print(f"{'adapter':<12} {'model':<38} {'native img/s':>12} {'adapter img/s':>13} {'overhead':>9}")
    for adapter in args.adapters.split(","):
        overrides = ["device=cpu", "schedule.workers=0", "schedule.batch_size=2", "predict.batch_size=1"]
        overrides += [f"dataset.train={ds_path}", f"dataset.val={ds_path}"]
        overrides += ["schedule.epochs=1"] if adapter == "ultralytics" else ["schedule.iterations=1"]
        if adapter == "ultralytics":
            overrides += ["options={val: false, mosaic: 0.0}"]
        cfg = load_config(ROOT / CONFIGS[adapter], [*overrides, "image_size=256"])
        weights = build(cfg).train(ds, tmp / f"run_{adapter}")  # one step, for a checkpoint in our format
        cfg = load_config(ROOT / CONFIGS[adapter], overrides)  # predict at the config's 1024 px
        det = build(cfg, weights)
        det._load()
        native = native_call(adapter, det)

        def ours(ps, det=det):
            return [d.boxes for d in det.predict(ps, batch_size=1)]

        native(paths[:1])
        ours(paths[:1])  # warm-up
        t_native, t_ours = [], []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            native(paths)
            t_native.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            ours(paths)
            t_ours.append(time.perf_counter() - t0)
        n = len(paths)
        a, b = n / min(t_native), n / min(t_ours)
        print(
            f"{adapter:<12} {Path(cfg.model).name:<38} {a:>12.2f} {b:>13.2f} {100 * (a / b - 1):>8.1f}%",
            flush=True,
        )
    print("target: overhead < 10 % (adapter seconds per image / native seconds per image - 1)")


if __name__ == "__main__":
    main()
