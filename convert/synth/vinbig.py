"""Synthetic VinBigData raw set: ``train.csv`` + ``train/{image_id}.dicom`` + ``synth_truth.json``."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from convert.synth.common import check_common, fmt_coord, write_all, write_text
from convert.synth.dicom_encode import (
    DX_SOP_CLASS,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    JPEG2000_LOSSLESS,
    DicomVariant,
    base_dataset,
    encode,
    save_dicom,
    set_stored_pixels,
    window_and_rescale,
)
from convert.synth.phantom import place_lesions, render_display
from core.classes import VINBIG_CLASSES, VINBIG_NO_FINDING, VINBIG_NO_FINDING_NAME
from core.io import write_json

__all__ = ["DEFAULT_CLASSES", "ALL_CLASSES", "VINBIG_VARIANT_CYCLE", "make_vinbig"]

log = logging.getLogger(__name__)

#: Aortic enlargement, Cardiomegaly, Nodule/Mass, Pleural effusion
DEFAULT_CLASSES: tuple[int, ...] = (0, 3, 8, 10)
ALL_CLASSES: tuple[int, ...] = tuple(range(14))

_TRANSFER_SYNTAXES = (IMPLICIT_VR_LE, JPEG2000_LOSSLESS, EXPLICIT_VR_LE)
_TS_PROBS = (0.60, 0.35, 0.05)  # VinBigData train_dicom_metadata.csv: 8965 / 5299 / 736 of 15000
_BITS = (12, 14, 16)
_BITS_PROBS = (0.71, 0.23, 0.06)  # 10609 / 3472 / 860 (+59 ten-bit, folded into 12)
_MONO1_PROB = 0.18  # 2643 of 15000
_WINDOWS = ("full", "narrow", "none", "multi")  # 'none' is ~3 % of real files
_WINDOW_PROBS = (0.80, 0.10, 0.05, 0.05)
_RESCALES = ("identity", "absent", "offset")  # real: 1/0 present ~82 %, absent ~18 %; offset is ours
_RESCALE_PROBS = (0.75, 0.20, 0.05)


def _variant_cycle() -> tuple[DicomVariant, ...]:
    """All 18 photometric × bits × syntax combinations, ordered so that any 6
    consecutive leading images already cover every value of each factor."""
    out = []
    for i in range(18):
        ts = _TRANSFER_SYNTAXES[i % 3]
        bits = _BITS[(i + i // 3) % 3]
        mono1 = i % 2 == 1  # i and i + 9 share syntax and bits but differ in parity
        out.append(
            DicomVariant(
                photometric="MONOCHROME1" if mono1 else "MONOCHROME2",
                bits_stored=bits,
                transfer_syntax=ts,
                window=_WINDOWS[i % 4],
                rescale=_RESCALES[(i // 2) % 3],
            )
        )
    return tuple(out)


VINBIG_VARIANT_CYCLE: tuple[DicomVariant, ...] = _variant_cycle()


def _draw_variant(rng: np.random.Generator) -> DicomVariant:
    """A storage variant drawn with the real data's proportions."""
    return DicomVariant(
        photometric="MONOCHROME1" if rng.random() < _MONO1_PROB else "MONOCHROME2",
        bits_stored=int(rng.choice(_BITS, p=_BITS_PROBS)),
        transfer_syntax=str(rng.choice(_TRANSFER_SYNTAXES, p=_TS_PROBS)),
        window=str(rng.choice(_WINDOWS, p=_WINDOW_PROBS)),
        rescale=str(rng.choice(_RESCALES, p=_RESCALE_PROBS)),
    )


def _write_vinbig_dicom(job: tuple[str, dict[str, Any], str]) -> str:
    """Worker: render, encode and write one VinBigData DICOM. Returns the path."""
    image_id, entry, path = job
    dcm = entry["dicom"]
    variant = DicomVariant(
        **{k: dcm[k] for k in ("photometric", "bits_stored", "transfer_syntax", "window", "rescale")}
    )
    d = render_display(entry)
    stored, header = encode(d, variant)
    del d
    ds = base_dataset(DX_SOP_CLASS, image_id, variant.transfer_syntax)
    ds.Modality = "DX"
    ds.PatientID = image_id
    ds.PatientSex = "O"
    ds.PixelSpacing = [f"{dcm['pixel_spacing']:g}", f"{dcm['pixel_spacing']:g}"]
    set_stored_pixels(ds, stored, header, variant)
    save_dicom(ds, Path(path))
    return path


def make_vinbig(
    out_dir: Path,
    *,
    n_images: int = 40,
    seed: int = 0,
    sizes: tuple[int, int] = (384, 640),
    normal_fraction: float = 0.4,
    classes: Sequence[int] = DEFAULT_CLASSES,
    workers: int = 1,
    findings: tuple[int, int] = (1, 3),
    distinct_findings: bool = False,
) -> Path:
    """Write a synthetic VinBigData raw set: ``train.csv`` + ``train/{image_id}.dicom``.

    Three radiologists (distinct of R1..R17) per image. A normal image has three
    "No finding" rows (class 14, empty coordinates); an abnormal one has ``findings``
    (default 1–3) non-overlapping lesions and, per lesion, each radiologist's box jittered by a
    few % of its size, clipped to the image, in original DICOM pixels, printed as
    ``691.0``. The first 18 images cycle through every photometric × BitsStored ×
    transfer-syntax combination (:data:`VINBIG_VARIANT_CYCLE`), later ones follow
    the real proportions. Also writes ``synth_truth.json``. Same arguments give
    byte-identical files whatever ``workers`` is.

    Args:
        out_dir: output folder (created).
        n_images: number of images, >= 1.
        seed: master seed.
        sizes: ``(min, max)`` pixel range; width and height are drawn
            independently in it (height biased to >= width, like CXRs).
        normal_fraction: share of "No finding" images in [0, 1].
        classes: VinBigData class ids (0..13) to draw lesions from;
            :data:`ALL_CLASSES` for all 14.
        workers: processes writing DICOMs (1 = in this process).
        findings: ``(min, max)`` lesions per abnormal image, ``1 <= min <= max``.
        distinct_findings: give an image's lesions distinct classes, so that an image has
            several findings (the multi-label case; ``max`` at most ``len(classes)``).
            ``synth_truth.json`` lists each image's ``findings`` (class ids) either way.

    Returns:
        ``out_dir``.

    Raises:
        ValueError: bad argument (named with its value).
        OSError: a file cannot be written.
    """
    out_dir = Path(out_dir)
    check_common(n_images, normal_fraction, "normal_fraction", workers)
    lo, hi = int(sizes[0]), int(sizes[1])
    if lo < 64 or hi < lo:
        raise ValueError(f"sizes must be (min, max) with 64 <= min <= max, got {sizes!r}")
    classes = tuple(int(c) for c in classes)
    if not classes or any(c not in VINBIG_CLASSES for c in classes):
        raise ValueError(f"classes must be a non-empty subset of 0..13, got {classes!r}")
    f_lo, f_hi = (int(v) for v in findings)
    if not 1 <= f_lo <= f_hi or (distinct_findings and f_hi > len(set(classes))):
        limit = f" and max <= {len(set(classes))} distinct classes" if distinct_findings else ""
        raise ValueError(f"findings must be (min, max) with 1 <= min <= max{limit}, got {findings!r}")

    master = np.random.default_rng(seed)
    ids: list[str] = []
    while len(ids) < n_images:
        image_id = master.bytes(16).hex()
        if image_id not in ids:
            ids.append(image_id)
    n_normal = round(n_images * normal_fraction)
    normal = set(master.permutation(n_images)[:n_normal].tolist())

    images: dict[str, dict[str, Any]] = {}
    rows: list[list[str]] = []
    for i, image_id in enumerate(ids):
        variant = VINBIG_VARIANT_CYCLE[i] if i < len(VINBIG_VARIANT_CYCLE) else _draw_variant(master)
        w = int(master.integers(lo, hi + 1))
        h = int(master.integers(lo, hi + 1))
        if h < w and master.random() < 0.7:  # real CXRs are mostly portrait
            w, h = h, w
        rads = [f"R{r}" for r in (master.choice(17, size=3, replace=False) + 1).tolist()]
        spacing = float(master.choice([0.1, 0.125, 0.139, 0.15, 0.175]))
        lesion_rng = np.random.default_rng([seed, i, 1])
        is_normal = i in normal
        n_lesions = int(lesion_rng.integers(f_lo, f_hi + 1))  # (1, 3): the draws of earlier versions
        lesions = []
        if not is_normal:
            pool = sorted(set(classes)) if distinct_findings else classes
            lesions = place_lesions(lesion_rng, h, w, pool, n_lesions, distinct=distinct_findings)
        if not is_normal and not lesions:  # pragma: no cover - placement always succeeds at >= 64 px
            raise RuntimeError(f"could not place a lesion in a {w}x{h} image")
        _, _, _, s_lo, s_hi = window_and_rescale(variant)
        images[image_id] = {
            "index": i,
            "width": w,
            "height": h,
            "normal": is_normal,
            "picture_seed": [int(seed), i, 0],
            "lesions": lesions,
            "findings": sorted({les["class_id"] for les in lesions}),
            "rad_ids": rads,
            "dicom": {**asdict(variant), "pixel_spacing": spacing, "stored_range": [s_lo, s_hi]},
        }
        if is_normal:
            rows.extend(
                [image_id, VINBIG_NO_FINDING_NAME, str(VINBIG_NO_FINDING), r, "", "", "", ""] for r in rads
            )
            continue
        for les in lesions:
            x1, y1, x2, y2 = les["box"]
            bw, bh = x2 - x1, y2 - y1
            for r in rads:
                jx1, jx2 = lesion_rng.normal(0, 0.03 * bw, 2)
                jy1, jy2 = lesion_rng.normal(0, 0.03 * bh, 2)
                rx1 = min(max(0, round(x1 + jx1)), w - 2)
                ry1 = min(max(0, round(y1 + jy1)), h - 2)
                rx2 = min(max(rx1 + 1, round(x2 + jx2)), w - 1)
                ry2 = min(max(ry1 + 1, round(y2 + jy2)), h - 1)
                cid = les["class_id"]
                coords = [fmt_coord(c) for c in (rx1, ry1, rx2, ry2)]
                rows.append([image_id, VINBIG_CLASSES[cid], str(cid), r, *coords])
    order = master.permutation(len(rows))  # the real file is not grouped by image
    rows = [rows[k] for k in order]

    jobs = [
        (image_id, entry, str(out_dir / "train" / f"{image_id}.dicom")) for image_id, entry in images.items()
    ]
    (out_dir / "train").mkdir(parents=True, exist_ok=True)
    write_all(_write_vinbig_dicom, jobs, workers, "synthetic VinBigData DICOMs")

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"])
    writer.writerows(rows)
    truth = {
        "dataset": "vinbigdata",
        "seed": seed,
        "box_format": "xyxy, x2/y2 exclusive, DICOM pixels",
        "images": images,
    }
    write_json(out_dir / "synth_truth.json", truth, indent=1)
    write_text(out_dir / "train.csv", buf.getvalue())
    log.info(
        "wrote %d synthetic VinBigData images (%d normal, %d label rows) to %s",
        n_images,
        n_normal,
        len(rows),
        out_dir,
    )
    return out_dir
