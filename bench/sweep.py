"""Sweep throughput on out-of-fold-sized results: settings per minute, memory, and the best setting checked.

    python bench/sweep.py [--images 15000] [--models 4] [--boxes 100] [--workers N]

Writes a seeded VinBigData-like validation set (14 lesion classes, about 70 % normal images) and one
results file per model (``--boxes`` per image: jittered true lesions scored high, false positives that
the models share in part, scored low, as real detectors' are), plus a gate file. Then:

1. ``ensemble sweep`` (`ensemble.sweep.sweep`) over a grid of >= 100 settings (methods x IoU x skip
   threshold x weights x gate modes) scored with the VinBigData metric: settings per minute and peak
   memory, and the same for a quarter of the grid in a fresh process (memory must not grow with it);
2. the best setting through a plain ``ensemble run`` (`ensemble.run.run`) and ``eval``
   (`eval.leaderboard.build_leaderboard`): its score must equal the sweep's, to the bit.

Target: >= 20 settings per minute on 2 cores at 15,000 images x 4 models x 100 boxes.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

N_CLASSES = 14


def make_world(folder: Path, n_images: int, n_models: int, n_boxes: int, seed: int = 0) -> dict:
    """Write ``val.json``, ``preds/model{k}.json`` (+ sidecars and companions) and ``preds/gate.json``."""
    from core.classes import VINBIG_CLASSES, coco_categories
    from core.coco import CocoDataset
    from core.detections import Detections
    from core.predictions import write_gate, write_predictions

    rng = np.random.default_rng(seed)
    images, anns = [], []
    truth = []
    for i in range(n_images):
        w, h = int(rng.integers(800, 1025)), int(rng.integers(800, 1025))
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": w, "height": h})
        n_obj = 0 if rng.random() < 0.7 else int(rng.integers(1, 6))
        c = rng.uniform(0.15, 0.85, (n_obj, 2)) * [w, h]
        s = rng.uniform(0.04, 0.3, (n_obj, 2)) * [w, h]
        b = np.clip(np.concatenate([c - s / 2, c + s / 2], 1), 0, [w, h, w, h])
        lab = rng.integers(0, N_CLASSES, n_obj)
        for box, k in zip(b, lab, strict=True):
            anns.append(
                {"id": len(anns) + 1, "image_id": i + 1, "category_id": int(k),
                 "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])]}
            )  # fmt: skip
        # false-positive sites the models share in part (real detectors agree on confusing regions)
        fc = rng.uniform(0.1, 0.9, (20, 2)) * [w, h]
        fs = rng.uniform(0.03, 0.25, (20, 2)) * [w, h]
        truth.append((w, h, b, lab, np.concatenate([fc - fs / 2, fc + fs / 2], 1), rng.integers(0, N_CLASSES, 20)))
    ds_path = CocoDataset(images, anns, coco_categories(VINBIG_CLASSES)).write(folder / "val.json")

    preds = []
    for t in range(n_models):
        quality = 0.9 - 0.15 * t  # the first model is the best
        dets = {}
        for i, (w, h, b, lab, fp_sites, fp_lab) in enumerate(truth):
            n_hit = min(len(b) * 3, n_boxes // 4)
            o = rng.integers(0, max(len(b), 1), n_hit)
            size = np.tile(b[o, 2:] - b[o, :2], 2) if len(b) else np.zeros((0, 4))
            hits = b[o] + rng.normal(0, 0.15 / quality, (n_hit, 4)) * size if len(b) else np.zeros((0, 4))
            hit_s = rng.beta(3 * quality, 3, n_hit)
            n_fp = n_boxes - len(hits)
            site = rng.integers(0, len(fp_sites), n_fp)
            shared = rng.random(n_fp) < 0.5
            xy = rng.uniform(0, 1, (n_fp, 2)) * [w, h]
            own = np.concatenate([xy, xy + rng.uniform(0.02, 0.3, (n_fp, 2)) * [w, h]], 1)
            fsz = np.tile(fp_sites[site, 2:] - fp_sites[site, :2], 2)
            fps = np.where(shared[:, None], fp_sites[site] + rng.normal(0, 0.1, (n_fp, 4)) * fsz, own)
            fp_l = np.where(shared, fp_lab[site], rng.integers(0, N_CLASSES, n_fp))
            fp_s = rng.beta(1.5, 6, n_fp)
            boxes = np.clip(np.concatenate([hits, fps]), 0, [w, h, w, h])
            boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
            boxes = np.minimum(boxes, [w, h, w, h])
            labels = np.concatenate([lab[o] if len(b) else np.zeros(0, np.int64), fp_l])
            scores = np.clip(np.concatenate([hit_s, fp_s]), 0.001, 1.0)  # detectors keep scores >= 0.001
            dets[i + 1] = Detections(boxes.astype(np.float32), scores.astype(np.float32), labels)
        p = folder / "preds" / f"model{t}.json"
        write_predictions(p, dets, {"dataset": str(ds_path)})
        preds.append(p)
        del dets
    normal = {i + 1: len(tr[2]) == 0 for i, tr in enumerate(truth)}
    p_abn = {i: float(np.clip((0.2 if nrm else 0.8) + rng.normal(0, 0.2), 0, 1)) for i, nrm in normal.items()}
    gate = write_gate(folder / "preds" / "gate.json", p_abn, {"dataset": str(ds_path)})
    return {"dataset": ds_path, "preds": preds, "gate": gate}


def grid(n_models: int, quarter: bool = False):
    """4 methods x 3 IoU x 2 skip thresholds x 2 weight sets x 3 gate modes = 144 settings (a quarter: 36)."""
    from ensemble.sweep import SweepGrid

    weights = (tuple([1.0] * n_models), tuple([2.0] + [1.0] * (n_models - 1)))
    return SweepGrid(
        methods=("wbf", "nms") if quarter else ("wbf", "nms", "soft-nms", "nmw"),
        iou_thrs=(0.4, 0.55) if quarter else (0.4, 0.5, 0.6),
        skip_box_thrs=(0.0, 0.02),
        weights=weights[:1] if quarter else weights,
        gate_modes=("none", "append", "rescale"),
    )


def _peak_mb() -> float:
    """This process's own peak memory (``VmHWM``; ``ru_maxrss`` would count what the parent held at fork)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(folder: Path, quarter: bool, workers: int | None) -> dict:
    """One sweep in this process: settings, seconds and peak memory (run in a fresh process)."""
    from ensemble.sweep import sweep

    world = json.loads((folder / "world.json").read_text())
    t0 = time.perf_counter()
    res = sweep(
        world["preds"], world["dataset"], folder / ("sweep_quarter" if quarter else "sweep"),
        grid(len(world["preds"]), quarter), gate=world["gate"], workers=workers,
    )  # fmt: skip
    dt = time.perf_counter() - t0
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
    best = {k: v for k, v in res.rows[0].items() if k not in ("rank", "score", "fuse_seconds")}
    # workers are forked from this process: their peak counts the inputs they share with it
    return {"settings": len(res.rows), "seconds": dt, "cpu_seconds": cpu, "peak_mb": max(_peak_mb(), kids.ru_maxrss / 1024),
            "best": best, "score": res.best_score}  # fmt: skip


def child(folder: Path, quarter: bool, workers: int | None) -> dict:
    args = [sys.executable, __file__, "--_measure", str(folder), "1" if quarter else "0", str(workers or 0)]
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"sweep failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def check_best(folder: Path, best: dict, score: float) -> tuple[float, bool]:
    """The best setting through ``ensemble run`` + the leaderboard: (score, equal to the sweep's)."""
    from ensemble.run import run
    from eval.leaderboard import build_leaderboard
    from fusion.settings import settings_from_mapping

    world = json.loads((folder / "world.json").read_text())
    settings = settings_from_mapping(best)
    out = run(world["preds"], world["dataset"], settings, folder / "best.json",
              gate=world["gate"] if settings.gate_mode else None)  # fmt: skip
    board = build_leaderboard(world["dataset"], [out], metric="vinbig")
    return board.rows[0].score, board.rows[0].score == score


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=15000)
    ap.add_argument("--models", type=int, default=4)
    ap.add_argument("--boxes", type=int, default=100)
    ap.add_argument("--workers", type=int, default=0, help="sweep worker processes (default: the sweep decides)")
    ap.add_argument("--keep", type=Path, help="write the data here and keep it (default: a temporary folder)")
    ap.add_argument("--_measure", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a._measure:
        folder, quarter, workers = a._measure
        print(json.dumps(measure(Path(folder), quarter == "1", int(workers) or None)))
        return
    with tempfile.TemporaryDirectory(prefix="cxrfuse-sweep-") as tmp:
        folder = a.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        if not (folder / "world.json").is_file():
            world = make_world(folder, a.images, a.models, a.boxes)
            (folder / "world.json").write_text(json.dumps({k: str(v) if isinstance(v, Path) else [str(x) for x in v] for k, v in world.items()}))
        print(f"{a.images} images x {a.models} models x {a.boxes} boxes written in {time.perf_counter() - t0:.0f} s", flush=True)
        small = child(folder, True, a.workers)
        full = child(folder, False, a.workers)
        for name, r in (("quarter grid", small), ("full grid", full)):
            print(
                f"{name:>12}: {r['settings']:4d} settings in {r['seconds']:6.1f} s = "
                f"{60 * r['settings'] / r['seconds']:5.1f} settings/min (file reading included), peak {r['peak_mb']:6.0f} MB; "
                f"{r['cpu_seconds']:.0f} CPU s = {2 * 60 * r['settings'] / r['cpu_seconds']:.1f} settings/min on 2 whole cores"
            )
        score, same = check_best(folder, full["best"], full["score"])
        b = full["best"]
        print(
            f"best: {b['method']} weights {b['weights']} iou {b['iou_thr']} skip {b['skip_box_thr']} gate {b['gate_mode']}: "
            f"sweep {full['score']!r}, ensemble run + eval {score!r} -> {'identical' if same else 'DIFFERENT'}"
        )
        growth = full["peak_mb"] / small["peak_mb"]
        print(f"memory with {full['settings']} vs {small['settings']} settings: x{growth:.2f} (target: flat, <= 1.15)")
        print("target: >= 20 settings/min on 2 cores")


if __name__ == "__main__":
    main()
