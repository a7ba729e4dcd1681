"""DICOM → PNG conversion throughput, 1 vs 2 workers, peak memory vs image count, and JPEG 2000's reduced decode.

Writes synthetic 2,500×2,500 12-bit DICOMs (JPEG 2000 lossless and uncompressed,
from our own generator), then converts them to 1024-px PNGs as `convert vinbig`
does, each measurement in a fresh process so its peak RSS is its own. JPEG 2000
images are converted with the reduced-resolution decode (the default) and without
it (every image decoded in full), and the time to convert the whole VinBigData
train set on 2 cores is estimated from the measured 2-worker rate of each transfer
syntax and the real mix (``--metadata``: VinBigData's ``train_dicom_metadata.csv``;
without it the mix it holds: 8,965 Implicit VR LE, 5,299 JPEG 2000 lossless, 736
Explicit VR LE).

    .venv/bin/python bench/convert.py [--images 40] [--side 2500] [--size 1024] [--metadata CSV]

Targets: 2 workers ≥ 1.7× the images/s of 1; peak memory independent of the
number of images (N vs 2N images within 15 %); JPEG 2000 with the reduced decode
≥ 2.5× the images/s without it at ``--size 1024``.
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


#: VinBigData train_dicom_metadata.csv's Transfer Syntax UID counts (15,000 files)
VINBIG_MIX = {"1.2.840.10008.1.2": 8965, "1.2.840.10008.1.2.4.90": 5299, "1.2.840.10008.1.2.1": 736}


def measure(src: Path, out: Path, workers: int, limit: int, size: int = 1024, reduce: bool = True) -> dict:
    from convert.images import ImageJob, convert_image, find_images, parallel_map

    files = sorted(find_images(src).items())[:limit]
    jobs = [ImageJob(k, p, out / f"{k}.png", size, j2k_reduce=reduce) for k, p in files]
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


def run_child(src: Path, workers: int, limit: int, size: int = 1024, reduce: bool = True) -> dict:
    with tempfile.TemporaryDirectory() as out:
        r = subprocess.run(
            [sys.executable, __file__, "--_measure", str(src), out, str(workers), str(limit), str(size), str(int(reduce))],
            capture_output=True,
            text=True,
            check=True,
        )
    return json.loads(r.stdout.strip().splitlines()[-1])


def transfer_syntax_mix(metadata: Path | None) -> dict[str, int]:
    """Files per transfer syntax in VinBigData's train set: from ``metadata`` (its DICOM header table), else
    the counts it holds (`VINBIG_MIX`)."""
    if metadata is None:
        return dict(VINBIG_MIX)
    import csv

    counts: dict[str, int] = {}
    with open(metadata, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            uid = row["Transfer Syntax UID"].strip()
            counts[uid] = counts.get(uid, 0) + 1
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=40, help="images per transfer syntax (default 40)")
    ap.add_argument("--side", type=int, default=2500)
    ap.add_argument("--size", type=int, default=1024, help="longer side of the PNGs (default 1024)")
    ap.add_argument("--metadata", type=Path, help="VinBigData train_dicom_metadata.csv, for the real transfer-syntax mix")
    ap.add_argument("--_measure", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._measure:
        src, out, workers, limit, size, reduce = args._measure
        print(json.dumps(measure(Path(src), Path(out), int(workers), int(limit), int(size), reduce == "1")))
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
        rate2: dict[str, float] = {}
        full_j2k = None
        for kind, files in sorted(by_ts.items()):
            # the generator gives a handful of each kind; repeat them under new names up to --images
            src = tmp / kind.replace(" ", "_")
            src.mkdir()
            for k in range(args.images):
                p = files[k % len(files)]
                shutil.copy(p, src / f"{k:04d}_{p.name}")
            files = sorted(src.iterdir())
            one = run_child(src, 1, len(files), args.size)
            two = run_child(src, 2, len(files), args.size)
            half = run_child(src, 2, max(1, len(files) // 2), args.size)
            rate2[kind] = two["images_per_s"]
            print(
                f"{kind:<14} {len(files):>6} {one['images_per_s']:>15.2f} {two['images_per_s']:>16.2f} "
                f"{two['images_per_s'] / one['images_per_s']:>6.2f} {half['peak_mb']:>12.0f} {two['peak_mb']:>13.0f}"
            )
            if kind == "JPEG 2000":
                full_j2k = (run_child(src, 1, len(files), args.size, False), one)
        print("targets: ratio >= 1.7; peak MB with N/2 and N images within 15 %")
        if full_j2k is not None:
            without, with_ = full_j2k
            print(
                f"JPEG 2000 at --size {args.size}, 1 worker: {without['images_per_s']:.2f} img/s decoded in full, "
                f"{with_['images_per_s']:.2f} img/s with the reduced decode: x{with_['images_per_s'] / without['images_per_s']:.2f} "
                "(target >= 2.5)"
            )
        mix = transfer_syntax_mix(args.metadata)
        seconds = 0.0
        for uid, n in sorted(mix.items()):
            kind = "JPEG 2000" if uid.startswith("1.2.840.10008.1.2.4.9") else "uncompressed"
            if kind in rate2:
                seconds += n / rate2[kind]
        parts = ", ".join(f"{n} x {uid}" for uid, n in sorted(mix.items()))
        print(
            f"VinBigData train set ({sum(mix.values())} DICOMs: {parts}) on 2 cores at these 2-worker rates: "
            f"about {seconds / 60:.0f} min (uncompressed sides as measured on {args.side}x{args.side}; real files vary)"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
