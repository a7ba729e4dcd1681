"""Time one VinBigData-metric evaluation: ours (`eval.metrics.vinbig_map`) beside pycocotools.

Synthetic, seeded data: ``--images`` images (half normal), 15 classes, ``--dets``
predictions per image over classes 0..13 (some near a ground-truth box) plus one
"No finding" row ``[0, 0, 1, 1]`` per image. pycocotools runs ``COCOeval`` with
``iouThrs=[0.4]``, area "all" and ``maxDets=[--dets]`` (no cap in effect: the
cap is per image and category), on the dataset with the class-14 boxes added,
timed from building its index to ``accumulate()``. Ours is timed from the raw
dict and list to the result.

    python bench/eval.py                 # 3,000 images x 300 predictions
    python bench/eval.py --images 200    # a quick run
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval.metrics import NO_FINDING, vinbig_map  # noqa: E402

SIZE = 1024.0


def synthetic(n_images: int, dets_per_image: int, seed: int = 0) -> tuple[dict, list[dict]]:
    """A VinBigData-like COCO dataset (classes 0..13, normal images without annotations) and results."""
    rng = np.random.default_rng(seed)
    anns: list[dict] = []
    results: list[dict] = []
    for i in range(1, n_images + 1):
        n_gt = int(rng.integers(1, 7)) if rng.random() < 0.5 else 0
        gxy = rng.uniform(0, SIZE - 300, (n_gt, 2))
        gwh = rng.uniform(20, 300, (n_gt, 2))
        gcls = rng.integers(0, 14, n_gt)
        for b, c in zip(np.hstack([gxy, gwh]).tolist(), gcls.tolist(), strict=True):
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": c,
                    "bbox": b,
                    "area": b[2] * b[3],
                    "iscrowd": 0,
                }
            )
        near = rng.random(dets_per_image) < (0.3 if n_gt else 0.0)
        src = rng.integers(0, max(n_gt, 1), dets_per_image)
        xy = rng.uniform(0, SIZE - 300, (dets_per_image, 2))
        wh = rng.uniform(10, 300, (dets_per_image, 2))
        cls = rng.integers(0, 14, dets_per_image)
        if n_gt:
            xy[near] = gxy[src[near]] + rng.normal(0, 15, (near.sum(), 2))
            wh[near] = np.clip(gwh[src[near]] + rng.normal(0, 15, (near.sum(), 2)), 5, None)
            cls[near] = np.where(rng.random(near.sum()) < 0.8, gcls[src[near]], cls[near])
        scores = np.round(rng.random(dets_per_image), 4)  # some ties
        for b, c, s in zip(np.hstack([xy, wh]).tolist(), cls.tolist(), scores.tolist(), strict=True):
            results.append({"image_id": i, "category_id": c, "bbox": b, "score": s})
        p_normal = float(np.clip(rng.normal(0.3 if n_gt else 0.7, 0.2), 0, 1))
        results.append(
            {"image_id": i, "category_id": NO_FINDING, "bbox": [0.0, 0.0, 1.0, 1.0], "score": p_normal}
        )
    gt = {
        "images": [
            {"id": i, "file_name": f"{i}.png", "width": 1024, "height": 1024} for i in range(1, n_images + 1)
        ],
        "categories": [{"id": c, "name": f"class {c}"} for c in range(14)],
        "annotations": anns,
    }
    return gt, results


def pycocotools_vinbig(gt: dict, results: list[dict], max_dets: int) -> float:
    """mAP@0.4 over 15 classes with pycocotools (class-14 GT added). Mutates ``results`` (loadRes does)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with_gt = {a["image_id"] for a in gt["annotations"]}
    n = len(gt["annotations"])
    gt14 = {
        "images": gt["images"],
        "categories": [*gt["categories"], {"id": NO_FINDING, "name": "No finding"}],
        "annotations": gt["annotations"]
        + [
            {
                "id": n + k + 1,
                "image_id": im["id"],
                "category_id": NO_FINDING,
                "bbox": [0, 0, 1, 1],
                "area": 1,
                "iscrowd": 0,
            }
            for k, im in enumerate(x for x in gt["images"] if x["id"] not in with_gt)
        ],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt14
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(results), "bbox")
        ev.params.iouThrs = np.array([0.4])
        ev.params.maxDets = [max_dets]
        ev.params.areaRng, ev.params.areaRngLbl = [[0, 1e5**2]], ["all"]
        ev.evaluate()
        ev.accumulate()
    prec = ev.eval["precision"]
    return float(prec[prec > -1].mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=3000, help="number of images (default 3000)")
    ap.add_argument(
        "--dets", type=int, default=300, help="predictions per image over classes 0..13 (default 300)"
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    gt, results = synthetic(args.images, args.dets, args.seed)
    print(
        f"data: {args.images} images, {len(gt['annotations'])} GT boxes, {len(results)} predictions "
        f"(made in {time.perf_counter() - t0:.1f} s)"
    )

    t0 = time.perf_counter()
    ours = vinbig_map(gt, results)
    t_ours = time.perf_counter() - t0
    print(f"ours        : {t_ours:8.2f} s   mAP@0.4 = {ours.map:.10f}")

    t0 = time.perf_counter()
    ref = pycocotools_vinbig(gt, results, max_dets=args.dets + 1)
    t_ref = time.perf_counter() - t0
    print(f"pycocotools : {t_ref:8.2f} s   mAP@0.4 = {ref:.10f}")

    diff = abs(ours.map - ref)
    print(f"speed-up    : {t_ref / t_ours:8.1f} x")
    print(f"identical   : {diff < 1e-6} (|diff| = {diff:.2e})")
    return 0 if diff < 1e-6 else 1


if __name__ == "__main__":
    raise SystemExit(main())
