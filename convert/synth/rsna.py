"""Synthetic RSNA Pneumonia raw set: label and class-info CSVs, JPEG baseline DICOMs, ``synth_truth.json``."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from convert.synth.common import check_common, fmt_coord, write_all, write_text
from convert.synth.dicom_encode import (
    CR_SOP_CLASS,
    JPEG_BASELINE,
    base_dataset,
    save_dicom,
    set_jpeg_baseline_pixels,
)
from convert.synth.phantom import place_lesions, render_display
from core.io import write_json

__all__ = ["make_rsna"]

log = logging.getLogger(__name__)


def _write_rsna_dicom(job: tuple[str, dict[str, Any], str]) -> str:
    """Worker: render, JPEG-encode and write one RSNA DICOM. Returns the path."""
    patient_id, entry, path = job
    d = render_display(entry)
    img8 = np.rint(d * 255.0).astype(np.uint8)
    del d
    ds = base_dataset(CR_SOP_CLASS, patient_id, JPEG_BASELINE)
    ds.Modality = "CR"
    ds.ConversionType = "WSD"
    ds.PatientName = patient_id
    ds.PatientID = patient_id
    ds.PatientSex = entry["sex"]
    ds.PatientAge = f"{int(entry['age']):03d}Y"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = entry["view"]
    ds.SeriesDescription = f"view: {entry['view']}"
    ds.PixelSpacing = ["0.168", "0.168"]
    set_jpeg_baseline_pixels(ds, img8)
    save_dicom(ds, Path(path))
    return path


def make_rsna(
    out_dir: Path,
    *,
    n_images: int = 40,
    seed: int = 0,
    positive_fraction: float = 0.4,
    size: int = 1024,
    workers: int = 1,
) -> Path:
    """Write a synthetic RSNA Pneumonia raw set.

    Files: ``stage_2_train_labels.csv`` (``patientId,x,y,width,height,Target``;
    a negative is one row with empty box fields and Target 0, a positive one row
    per box, 1–2 boxes, Target 1, box in pixels printed like ``264.0``),
    ``stage_2_detailed_class_info.csv`` (``patientId,class``, one row per label
    row: "Lung Opacity", "Normal" or "No Lung Opacity / Not Normal"),
    ``stage_2_train_images/{patientId}.dcm`` (``size``×``size`` 8-bit
    MONOCHROME2 CR, JPEG baseline 1.2.840.10008.1.2.4.50 encoded with Pillow and
    encapsulated) and ``synth_truth.json``. ``patientId`` is a UUID4 string.

    Args:
        out_dir: output folder (created).
        n_images: number of patients, >= 1.
        seed: master seed.
        positive_fraction: share of patients with opacities, in [0, 1].
        size: image side in pixels (>= 64; the real data is 1024).
        workers: processes writing DICOMs.

    Returns:
        ``out_dir``.

    Raises:
        ValueError: bad argument (named with its value).
        OSError: a file cannot be written.
    """
    out_dir = Path(out_dir)
    check_common(n_images, positive_fraction, "positive_fraction", workers)
    if size < 64:
        raise ValueError(f"size must be >= 64 pixels, got {size!r}")
    master = np.random.default_rng(seed)
    pids = [str(uuid.UUID(bytes=master.bytes(16), version=4)) for _ in range(n_images)]
    n_pos = round(n_images * positive_fraction)
    positive = set(master.permutation(n_images)[:n_pos].tolist())

    images: dict[str, dict[str, Any]] = {}
    for i, pid in enumerate(pids):
        rng = np.random.default_rng([seed, i, 1])
        lesions = []
        if i in positive:
            # painted with VinBigData's "Lung Opacity" shape (7); RSNA's only category
            lesions = place_lesions(rng, size, size, (7,), int(rng.integers(1, 3)), wide=True)
        images[pid] = {
            "index": i,
            "width": size,
            "height": size,
            "positive": bool(lesions),
            "picture_seed": [int(seed), i, 0],
            "lesions": lesions,
            "negative_class": "Normal" if master.random() < 0.45 else "No Lung Opacity / Not Normal",
            "sex": str(master.choice(["M", "F"])),
            "age": int(master.integers(18, 90)),
            "view": str(master.choice(["PA", "AP"])),
        }
    order = sorted(pids)  # the real label file is sorted by patientId
    labels = ["patientId,x,y,width,height,Target"]
    details = ["patientId,class"]
    for pid in order:
        entry = images[pid]
        if not entry["lesions"]:
            labels.append(f"{pid},,,,,0")
            details.append(f"{pid},{entry['negative_class']}")
            continue
        for les in entry["lesions"]:
            x1, y1, x2, y2 = les["box"]
            box = ",".join(fmt_coord(c) for c in (x1, y1, x2 - x1, y2 - y1))
            labels.append(f"{pid},{box},1")
            details.append(f"{pid},Lung Opacity")

    jobs = [(pid, images[pid], str(out_dir / "stage_2_train_images" / f"{pid}.dcm")) for pid in pids]
    (out_dir / "stage_2_train_images").mkdir(parents=True, exist_ok=True)
    write_all(_write_rsna_dicom, jobs, workers, "synthetic RSNA DICOMs")
    truth = {"dataset": "rsna", "seed": seed, "box_format": "xyxy, x2/y2 exclusive, pixels", "images": images}
    write_json(out_dir / "synth_truth.json", truth, indent=1)
    write_text(out_dir / "stage_2_detailed_class_info.csv", "\n".join(details) + "\n")
    write_text(out_dir / "stage_2_train_labels.csv", "\n".join(labels) + "\n")
    n_positive = sum(1 for e in images.values() if e["positive"])
    log.info("wrote %d synthetic RSNA patients (%d positive) to %s", n_images, n_positive, out_dir)
    return out_dir
