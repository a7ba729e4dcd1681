"""The GPU check: every framework trained and run on the GPU in one call, in under 8 minutes.

    python bench/gpu.py [--iterations 200] [--images 64] [--budget 450]

On a machine without CUDA (``torch.cuda.is_available()`` is False, or no torch) it prints ``no GPU`` and
exits 0. Otherwise it writes a synthetic COCO dataset on the spot (``--images`` 1024x1024 chest-like PNGs
with bright lesions of 4 classes, plus 16 validation images), and for each framework (Ultralytics YOLOv8n,
Detectron2 Faster R-CNN R50-FPN, MMDetection Faster R-CNN R50-FPN), each in its own process with its own
time limit:

1. trains ``--iterations`` iterations at 1024 px from scratch with AMP on, through the adapters
   (`adapters.api.train`), and reports train images per second and the peak GPU memory;
2. predicts the validation images on the GPU with batch 1 and with the best of batch 2, 4, 8 and 16:
   images per second for both;
3. predicts them again on the CPU from the same weights and checks that the two agree within the stated
   tolerance: every box of score >= 0.3 on one device has a box of the same class on the other with
   IoU >= 0.9 and a score within 0.05 (AMP and TF32 round differently from the CPU's float32).

A framework that cannot run (not installed, or MMDetection without mmcv's CUDA ops, which need a build
against the machine's torch) is reported as such and the others still run. The whole call stays within
``--budget`` seconds: a framework that would start with too little time left is skipped and says so.
Frameworks are imported only inside their own process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZE = 1024
CLASSES = (0, 3, 8, 10)
TOLERANCE = {"score_thr": 0.3, "iou": 0.9, "score": 0.05}
FRAMEWORKS = {
    # name: (adapter config, seconds it may take, batch size, overrides for a short run with AMP)
    "ultralytics": ("configs/yolov8n.yaml", 150, 16, ["options.amp=true", "options.mosaic=0.0"]),
    "detectron2": ("configs/faster_rcnn_r50_fpn_d2.yaml", 140, 4, ["options.SOLVER.AMP.ENABLED=true"]),
    "mmdet": ("configs/faster_rcnn_r50_fpn_mmdet.yaml", 140, 4, ["options.optim_wrapper.type=AmpOptimWrapper"]),
}


def make_dataset(folder: Path, n_train: int, n_val: int = 16, seed: int = 0) -> tuple[Path, Path]:
    """Chest-like 1024x1024 PNGs with bright ellipses as lesions; ``train.json`` and ``val.json``."""
    import numpy as np

    from core.classes import VINBIG_CLASSES, coco_categories
    from core.coco import CocoDataset
    from core.io import write_png

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE

    def split(name: str, n: int, first_id: int) -> Path:
        images, anns = [], []
        for k in range(n):
            img = 60 + 80 * np.exp(-(((xx - 0.5) / 0.35) ** 2 + ((yy - 0.55) / 0.45) ** 2))
            img += rng.normal(0, 6, img.shape)
            for _ in range(int(rng.integers(1, 4))):
                c = int(rng.choice(CLASSES))
                w, h = rng.uniform(0.06, 0.2, 2)
                x, y = rng.uniform(0.1, 0.9 - w), rng.uniform(0.1, 0.9 - h)
                inside = ((xx - x - w / 2) / (w / 2)) ** 2 + ((yy - y - h / 2) / (h / 2)) ** 2 <= 1
                img[inside] += 40 + 20 * CLASSES.index(c)
                anns.append({"id": len(anns) + 1, "image_id": first_id + k, "category_id": c,
                             "bbox": [float(x * SIZE), float(y * SIZE), float(w * SIZE), float(h * SIZE)]})  # fmt: skip
            file = f"{name}/{k}.png"
            write_png(folder / file, np.clip(img, 0, 255).astype(np.uint8))
            images.append({"id": first_id + k, "file_name": file, "width": SIZE, "height": SIZE})
        return CocoDataset(images, anns, coco_categories(VINBIG_CLASSES)).write(folder / f"{name}.json")

    return split("train", n_train, 1), split("val", n_val, 100_000)


def _agree(a, b) -> tuple[int, int]:
    """Boxes of score >= the threshold in ``a`` without a match in ``b``; and how many there were."""
    import numpy as np

    from core.boxes import box_iou

    missing = total = 0
    for i in a:
        da, db = a[i], b[i]
        sel = np.flatnonzero(da.scores >= TOLERANCE["score_thr"])
        total += len(sel)
        if not len(sel):
            continue
        iou = box_iou(da.boxes[sel], db.boxes) if len(db) else np.zeros((len(sel), 0))
        for r, j in enumerate(sel):
            ok = (iou[r] >= TOLERANCE["iou"]) & (db.labels == da.labels[j])
            ok &= np.abs(db.scores - da.scores[j]) <= TOLERANCE["score"]
            missing += not ok.any()
    return missing, total


def run_framework(name: str, folder: Path, iterations: int) -> dict:
    """Train, time and compare one framework (in its own process). Returns what to print."""
    import numpy as np
    import torch

    from adapters import build
    from adapters.api import train
    from adapters.config import load_config
    from core.coco import CocoDataset

    config, _, batch, extra = FRAMEWORKS[name]
    if name == "mmdet":
        try:
            from mmcv.ops import nms

            boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]], device="cuda")
            nms(boxes, torch.ones(1, device="cuda"), 0.5)
        except Exception as e:  # mmcv built without CUDA ops, or not installed
            return {"framework": name, "status": f"cannot run: mmcv's CUDA ops are not available ({type(e).__name__}: {e})"}
    val = CocoDataset.load(folder / "val.json")
    n_train = len(CocoDataset.load(folder / "train.json").images)
    sched = [f"schedule.epochs={max(1, iterations * batch // n_train)}"] if name == "ultralytics" else [
        f"schedule.iterations={iterations}", "schedule.warmup_iters=20"]  # fmt: skip
    overrides = ["device=cuda:0", f"image_size={SIZE}", f"schedule.batch_size={batch}", "schedule.workers=4",
                 "weights=null", *sched, *extra]  # fmt: skip
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    weights = train(config, folder / "train.json", folder / "runs" / name, overrides)
    train_s = time.perf_counter() - t0
    peak_train = torch.cuda.max_memory_allocated() / 2**30
    cfg = load_config(config, overrides)
    images = [val.image_path(i) for i in val.image_ids]

    def predict(device: str, batch_size: int) -> tuple[float, dict]:
        model = build(load_config(config, [*overrides, f"device={device}"]), weights)
        list(model.predict(images[:2], batch_size))  # warm-up (kernels, cudnn autotune)
        t = time.perf_counter()
        dets = dict(zip(val.image_ids, model.predict(images, batch_size), strict=True))
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return len(images) / (time.perf_counter() - t), dets

    torch.cuda.reset_peak_memory_stats()
    ips1, gpu = predict("cuda:0", 1)
    best = max(((b, predict("cuda:0", b)[0]) for b in (2, 4, 8, 16)), key=lambda x: x[1])
    peak_pred = torch.cuda.max_memory_allocated() / 2**30
    _, cpu = predict("cpu", 1)
    miss_g, tot_g = _agree(gpu, cpu)
    miss_c, tot_c = _agree(cpu, gpu)
    agree = miss_g == 0 and miss_c == 0
    return {
        "framework": name,
        "status": "ok",
        "train_images_per_s": round(iterations * batch / train_s, 1),
        "train_seconds": round(train_s, 1),
        "predict_ips_batch1": round(ips1, 1),
        "predict_ips_best": round(best[1], 1),
        "best_batch": best[0],
        "peak_gpu_gib_train": round(peak_train, 2),
        "peak_gpu_gib_predict": round(peak_pred, 2),
        "cpu_gpu_agree": agree,
        "unmatched": f"{miss_g}/{tot_g} GPU boxes, {miss_c}/{tot_c} CPU boxes",
        "model": cfg.name,
        "mean_boxes_per_image": round(float(np.mean([len(d) for d in gpu.values()])), 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=200, help="training iterations per framework")
    ap.add_argument("--images", type=int, default=64, help="synthetic training images")
    ap.add_argument("--budget", type=float, default=450, help="seconds for the whole call (default 450)")
    ap.add_argument("--_run", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a._run:
        name, folder, iterations = a._run
        print(json.dumps(run_framework(name, Path(folder), int(iterations))))
        return 0
    start = time.perf_counter()
    try:
        import torch
    except ImportError:
        print("no GPU: torch is not installed")
        return 0
    if not torch.cuda.is_available():
        print("no GPU: torch.cuda.is_available() is False; nothing to measure")
        return 0
    gpu = torch.cuda.get_device_name(0)
    print(f"GPU: {gpu}; torch {torch.__version__}, CUDA {torch.version.cuda}; Python {sys.version.split()[0]}", flush=True)
    print(f"tolerance CPU vs GPU: boxes of score >= {TOLERANCE['score_thr']} match a same-class box with IoU >= "
          f"{TOLERANCE['iou']} and |score difference| <= {TOLERANCE['score']}")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="cxrfuse-gpu-") as tmp:
        folder = Path(tmp)
        make_dataset(folder, a.images)
        print(f"synthetic data: {a.images} + 16 images at {SIZE} px in {time.perf_counter() - start:.0f} s", flush=True)
        env = {**os.environ, "YOLO_OFFLINE": "1", "MPLBACKEND": "Agg"}
        for name, (_, limit, _, _) in FRAMEWORKS.items():
            left = a.budget - (time.perf_counter() - start)
            if left < 60:
                print(f"{name}: skipped, {left:.0f} s left of the {a.budget:.0f} s budget")
                continue
            try:
                r = subprocess.run(
                    [sys.executable, __file__, "--_run", name, str(folder), str(a.iterations)],
                    capture_output=True, text=True, timeout=min(limit, left - 10), env=env, cwd=ROOT,
                )  # fmt: skip
            except subprocess.TimeoutExpired:
                print(f"{name}: stopped after {min(limit, left - 10):.0f} s (its time limit)")
                continue
            lines = [ln for ln in r.stdout.strip().splitlines() if ln.startswith("{")]
            if r.returncode or not lines:
                err = (r.stderr.strip().splitlines() or ["no output"])[-1]
                print(f"{name}: cannot run here: {err}")
                continue
            res = json.loads(lines[-1])
            if res["status"] != "ok":
                print(f"{name}: {res['status']}")
                continue
            print(
                f"{name} ({res['model']}): train {res['train_images_per_s']} img/s ({a.iterations} it, "
                f"{res['train_seconds']} s, AMP) | predict {res['predict_ips_batch1']} img/s batch 1, "
                f"{res['predict_ips_best']} img/s batch {res['best_batch']} | peak GPU {res['peak_gpu_gib_train']} GiB "
                f"train, {res['peak_gpu_gib_predict']} GiB predict | CPU vs GPU "
                f"{'agree' if res['cpu_gpu_agree'] else 'DIFFER'} ({res['unmatched']} unmatched)",
                flush=True,
            )
    print(f"total {time.perf_counter() - start:.0f} s (limit 480 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
