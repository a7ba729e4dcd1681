"""Reading a full-scale results file: COCO JSON against its columnar companion (``NAME.npz``).

    python bench/results_io.py [--images 15000] [--boxes 300]

Writes one seeded results file of ``--images`` x ``--boxes`` rows with `core.predictions.write_predictions`
(the JSON and its companion), then loads it into per-image `Detections` with
`core.predictions.read_predictions` three ways, each in a fresh process so that its peak memory is its own:
the JSON parsed and grouped row by row as before (``json.load`` + the per-row reading), the JSON parsed
and grouped with NumPy (``columnar=False``), and the companion (the default). Prints seconds, peak memory
and whether all three give the same `Detections`.

Target: the companion at least 10x faster and with 5x less memory than the JSON (row by row).
"""

from __future__ import annotations

import argparse
import hashlib
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


def write_world(folder: Path, n_images: int, n_boxes: int, seed: int = 0) -> None:
    from core.classes import VINBIG_CLASSES, coco_categories
    from core.coco import CocoDataset
    from core.detections import Detections
    from core.predictions import write_predictions

    rng = np.random.default_rng(seed)
    images = [{"id": i + 1, "file_name": f"{i}.png", "width": 1024, "height": 1024} for i in range(n_images)]
    CocoDataset(images, [], coco_categories(VINBIG_CLASSES)).write(folder / "val.json")
    dets = {}
    for i in range(n_images):
        xy = rng.uniform(0, 900, (n_boxes, 2))
        b = np.concatenate([xy, xy + rng.uniform(5, 120, (n_boxes, 2))], 1)
        s = np.sort(rng.beta(1, 6, n_boxes))[::-1]
        dets[i + 1] = Detections(b.astype(np.float32), s.astype(np.float32), rng.integers(0, 14, n_boxes))
    write_predictions(folder / "preds.json", dets, {"dataset": str(folder / "val.json")})


def _mem_mb(field: str) -> float:
    """``VmRSS`` or ``VmHWM`` (peak) of this process in MB: its own memory, unlike ``ru_maxrss``, which also
    counts what the parent held when it forked this process."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(folder: Path, how: str) -> dict:
    """Load once in this process; seconds, peak RSS and a digest of the `Detections`."""
    from core.coco import CocoDataset
    from core.detections import _from_coco_rows
    from core.predictions import read_predictions

    ds = CocoDataset.load(folder / "val.json")
    base = _mem_mb("VmRSS")
    t0 = time.perf_counter()
    if how == "json-rows":
        with open(folder / "preds.json", encoding="utf-8") as f:
            dets = _from_coco_rows(json.load(f), ds.image_ids)
    else:
        dets = read_predictions(folder / "preds.json", ds, columnar=how == "columnar")
    dt = time.perf_counter() - t0
    peak = _mem_mb("VmHWM")
    h = hashlib.sha256()
    for i, d in dets.items():
        h.update(np.int64(i).tobytes() + d.boxes.tobytes() + d.scores.tobytes() + d.labels.tobytes())
    return {"seconds": dt, "peak_mb": peak, "added_mb": peak - base, "digest": h.hexdigest()}


def child(folder: Path, how: str) -> dict:
    r = subprocess.run([sys.executable, __file__, "--_measure", str(folder), how], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=15000)
    ap.add_argument("--boxes", type=int, default=300)
    ap.add_argument("--_measure", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a._measure:
        print(json.dumps(measure(Path(a._measure[0]), a._measure[1])))
        return
    with tempfile.TemporaryDirectory(prefix="cxrfuse-results-") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        write_world(folder, a.images, a.boxes)
        size = {p.suffix: p.stat().st_size / 2**20 for p in (folder / "preds.json", folder / "preds.npz")}
        print(
            f"{a.images} images x {a.boxes} boxes: JSON {size['.json']:.0f} MB, companion {size['.npz']:.0f} MB, "
            f"written in {time.perf_counter() - t0:.0f} s",
            flush=True,
        )
        runs = {how: child(folder, how) for how in ("json-rows", "json", "columnar")}
        for how, label in (("json-rows", "JSON, grouped row by row (before)"), ("json", "JSON, grouped with NumPy"),
                           ("columnar", "columnar companion (.npz)")):  # fmt: skip
            r = runs[how]
            print(f"{label:<36} {r['seconds']:7.2f} s   peak {r['peak_mb']:7.0f} MB (+{r['added_mb']:.0f} MB loading)")
        same = len({r["digest"] for r in runs.values()}) == 1
        ref, col = runs["json-rows"], runs["columnar"]
        print(
            f"companion vs JSON row by row: x{ref['seconds'] / col['seconds']:.1f} faster, "
            f"x{ref['added_mb'] / max(col['added_mb'], 1):.1f} less memory for loading; "
            f"same Detections: {'yes' if same else 'NO'}"
        )
        print("target: >= 10x faster, >= 5x less memory")


if __name__ == "__main__":
    main()
