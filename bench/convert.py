"""DICOM → PNG conversion throughput, 1 vs 2 workers, and peak memory vs image count.

Writes synthetic 2,500×2,500 12-bit DICOMs (JPEG 2000 lossless and uncompressed,
from our own generator), then converts them to 1024-px PNGs as `convert vinbig`
does, each measurement in a fresh process so its peak RSS is its own.

    .venv/bin/python bench/convert.py [--images 40] [--side 2500]

Targets: 2 workers ≥ 1.7× the images/s of 1; peak memory independent of the
number of images (N vs 2N images within 15 %).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def measure(src: Path, out: Path, workers: int, limit: int) -> dict:
    from convert.images import ImageJob, convert_image, find_images, parallel_map

    files = sorted(find_images(src).items())[:limit]
    jobs = [ImageJob(k, p, out / f"{k}.png", 1024) for k, p in files]
    t0 = time.perf_counter()
    errors = [r.error for r in parallel_map(convert_image, jobs, workers, f"{workers} worker(s)") if r.error]
    dt = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"conversion failed: {errors[:3]}")
    peak_kb = max(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    )
    return {"images": len(jobs), "seconds": dt, "images_per_s": len(jobs) / dt, "peak_mb": peak_kb / 1024}


def run_child(src: Path, workers: int, limit: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        r = subprocess.run(
            [sys.executable, __file__, "--_measure", str(src), out, str(workers), str(limit)],
            capture_output=True,
            text=True,
            check=True,
        )
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=40, help="images per transfer syntax (default 40)")
    ap.add_argument("--side", type=int, default=2500)
    ap.add_argument("--_measure", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._measure:
        src, out, workers, limit = args._measure
        print(json.dumps(measure(Path(src), Path(out), int(workers), int(limit))))
        return

    from convert.dicom import read_dicom_header
    from convert.synth import make_vinbig

    tmp = Path(tempfile.mkdtemp(prefix="cxrfuse-bench-"))
    try:
        print(f"writing synthetic {args.side}x{args.side} DICOMs ...", flush=True)
        raw = make_vinbig(tmp / "raw", n_images=48, seed=1, sizes=(args.side, args.side), workers=2)
        by_ts: dict[str, list[Path]] = {}
        for p in sorted((raw / "train").iterdir()):
            h = read_dicom_header(p)
            if int(h["bits_stored"]) != 12:
                continue
            kind = (
                "JPEG 2000"
                if str(h["transfer_syntax"]).startswith("1.2.840.10008.1.2.4.9")
                else "uncompressed"
            )
            by_ts.setdefault(kind, []).append(p)
        print(
            f"{'transfer syntax':<14} {'images':>6} {'1 worker img/s':>15} {'2 workers img/s':>16} {'ratio':>6} "
            f"{'peak MB (N/2)':>12} {'peak MB (N)':>13}"
        )
        for kind, files in sorted(by_ts.items()):
            # the generator gives a handful of each kind; repeat them under new names up to --images
            src = tmp / kind.replace(" ", "_")
            src.mkdir()
            for k in range(args.images):
                p = files[k % len(files)]
                shutil.copy(p, src / f"{k:04d}_{p.name}")
            files = sorted(src.iterdir())
            one = run_child(src, 1, len(files))
            two = run_child(src, 2, len(files))
            half = run_child(src, 2, max(1, len(files) // 2))
            print(
                f"{kind:<14} {len(files):>6} {one['images_per_s']:>15.2f} {two['images_per_s']:>16.2f} "
                f"{two['images_per_s'] / one['images_per_s']:>6.2f} {half['peak_mb']:>12.0f} {two['peak_mb']:>13.0f}"
            )
        print("targets: ratio >= 1.7; peak MB with N/2 and N images within 15 %")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
