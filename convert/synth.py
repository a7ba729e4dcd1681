"""Seeded synthetic RAW datasets in the exact VinBigData and RSNA raw formats.

``make_vinbig`` writes ``train.csv`` (the real columns, one row per radiologist
box, "No finding" rows with empty coordinates) and ``train/{image_id}.dicom``
whose headers follow the real mix (MONOCHROME1/2, BitsStored 12/14/16, window
present / absent / multi-valued, rescale present / absent, Implicit VR LE,
Explicit VR LE and JPEG 2000 lossless). ``make_rsna`` writes
``stage_2_train_labels.csv``, ``stage_2_detailed_class_info.csv`` and JPEG
baseline ``stage_2_train_images/{patientId}.dcm``.

Each picture is a chest-like phantom in display space ``d ∈ [0, 1]`` (1 = dense,
bright), drawn from its own seed, with lesions of a distinct high-contrast shape
per class. It is encoded into stored values so that
:func:`convert.dicom.dicom_to_uint8` recovers ``round(255 * d)`` (within ±1;
RSNA's lossy JPEG within a few levels): MONOCHROME1 inverted, window and rescale
undone, quantised to BitsStored; every picture has pixels at d = 0 and d = 1 (two
corner markers) so the decoder's min-max normalisation is the identity.

``synth_truth.json`` (not a raw-format file) records per image the true boxes,
the DICOM parameters and the picture seed; :func:`render_display` re-draws the
picture from such an entry, for tests.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.classes import VINBIG_CLASSES, VINBIG_NO_FINDING, VINBIG_NO_FINDING_NAME

__all__ = [
    "DEFAULT_CLASSES",
    "ALL_CLASSES",
    "DicomVariant",
    "VINBIG_VARIANT_CYCLE",
    "make_vinbig",
    "make_rsna",
    "render_display",
    "paint_lesion",
]

#: Aortic enlargement, Cardiomegaly, Nodule/Mass, Pleural effusion
DEFAULT_CLASSES: tuple[int, ...] = (0, 3, 8, 10)
ALL_CLASSES: tuple[int, ...] = tuple(range(14))

IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
JPEG2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
CR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7"  # Computed Radiography Image Storage

_TRANSFER_SYNTAXES = (IMPLICIT_VR_LE, JPEG2000_LOSSLESS, EXPLICIT_VR_LE)
_TS_PROBS = (0.60, 0.35, 0.05)  # VinBigData train_dicom_metadata.csv: 8965 / 5299 / 736 of 15000
_BITS = (12, 14, 16)
_BITS_PROBS = (0.71, 0.23, 0.06)  # 10609 / 3472 / 860 (+59 ten-bit, folded into 12)
_MONO1_PROB = 0.18  # 2643 of 15000
_WINDOWS = ("full", "narrow", "none", "multi")  # 'none' is ~3 % of real files
_WINDOW_PROBS = (0.80, 0.10, 0.05, 0.05)
_RESCALES = ("identity", "absent", "offset")  # real: 1/0 present ~82 %, absent ~18 %; offset is ours
_RESCALE_PROBS = (0.75, 0.20, 0.05)


@dataclass(frozen=True)
class DicomVariant:
    """How one synthetic VinBigData image is stored.

    ``window``: ``"full"`` (centre/width spanning the stored range, as in most
    real files), ``"narrow"`` (a window inside the range; the corner markers are
    stored outside it and clipped by the decoder), ``"multi"`` (two-valued
    centre/width; the first is the one to use) or ``"none"``.
    ``rescale``: ``"identity"`` (slope 1, intercept 0 written), ``"absent"``
    or ``"offset"`` (slope 1, intercept -1024).
    """

    photometric: str
    bits_stored: int
    transfer_syntax: str
    window: str = "full"
    rescale: str = "identity"


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
    return DicomVariant(
        photometric="MONOCHROME1" if rng.random() < _MONO1_PROB else "MONOCHROME2",
        bits_stored=int(rng.choice(_BITS, p=_BITS_PROBS)),
        transfer_syntax=str(rng.choice(_TRANSFER_SYNTAXES, p=_TS_PROBS)),
        window=str(rng.choice(_WINDOWS, p=_WINDOW_PROBS)),
        rescale=str(rng.choice(_RESCALES, p=_RESCALE_PROBS)),
    )


# --------------------------------------------------------------------------- picture


def _lesion_pattern(class_id: int, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(support, on) masks of a class's shape on box coordinates ``u, v ∈ [-1, 1]``.

    Inside the support, "on" pixels are painted bright and the rest dark, so
    every shape has high contrast whatever lies underneath.
    """
    r = np.sqrt(u * u + v * v)
    box = np.ones_like(u, dtype=bool)
    disk = r <= 1.0
    k = class_id % 14
    if k == 0:  # bright disk, dark rim
        return disk, r < 0.78
    if k == 1:  # horizontal stripes
        return box, np.floor((v + 1) * 2.5).astype(int) % 2 == 0
    if k == 2:  # 3x3 dots
        fu = ((u + 1) * 1.5) % 1.0 - 0.5
        fv = ((v + 1) * 1.5) % 1.0 - 0.5
        return box, fu * fu + fv * fv < 0.09
    if k == 3:  # thick ring, dark centre
        return disk, r > 0.55
    if k == 4:  # 4x4 checkerboard
        return box, (np.floor((u + 1) * 2).astype(int) + np.floor((v + 1) * 2).astype(int)) % 2 == 0
    if k == 5:  # diagonal hatch
        return box, np.floor((u + v + 2) * 2.0).astype(int) % 2 == 0
    if k == 6:  # vertical stripes
        return box, np.floor((u + 1) * 2.5).astype(int) % 2 == 0
    if k == 7:  # diamond with dark edge
        diamond = np.abs(u) + np.abs(v) <= 1.0
        return diamond | (np.maximum(np.abs(u), np.abs(v)) > 0.97), np.abs(u) + np.abs(v) < 0.72
    if k == 8:  # bright square, dark frame
        return box, np.maximum(np.abs(u), np.abs(v)) < 0.72
    if k == 9:  # plus
        return box, (np.abs(u) < 0.3) | (np.abs(v) < 0.3)
    if k == 10:  # triangle (lower left half bright)
        return box, v > u
    if k == 11:  # X
        return box, np.abs(np.abs(u) - np.abs(v)) < 0.3
    if k == 12:  # dark disk, bright rim
        return disk, r > 0.75
    # 13: concentric rings
    return disk, np.floor(r * 4).astype(int) % 2 == 0


def paint_lesion(d: np.ndarray, class_id: int, box: Sequence[int]) -> None:
    """Paint one lesion into a display image in place.

    Args:
        d: ``(H, W)`` float32 display image, 1 = bright.
        class_id: VinBigData class id 0..13 (selects the shape).
        box: ``(x1, y1, x2, y2)`` integer pixel box, ``x2``/``y2`` exclusive;
            the shape touches all four edges.
    """
    x1, y1, x2, y2 = (int(c) for c in box)
    w, h = x2 - x1, y2 - y1
    if w < 2 or h < 2:
        raise ValueError(f"lesion box {tuple(box)} is smaller than 2x2 pixels")
    u = ((np.arange(w, dtype=np.float32) + 0.5) / w * 2 - 1)[None, :].repeat(h, 0)
    v = ((np.arange(h, dtype=np.float32) + 0.5) / h * 2 - 1)[:, None].repeat(w, 1)
    support, on = _lesion_pattern(class_id, u, v)
    region = d[y1:y2, x1:x2]
    region[support & on] = 0.95
    region[support & ~on] = 0.05


def _chest(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Chest-like phantom without lesions or noise: ``(H, W)`` float32 in [0, 1]."""
    y = ((np.arange(height, dtype=np.float32) + 0.5) / height)[:, None]
    x = ((np.arange(width, dtype=np.float32) + 0.5) / width)[None, :]
    j = rng.uniform(-0.02, 0.02, size=8).astype(np.float32)
    d = np.full((height, width), 0.08, dtype=np.float32)  # air
    body = ((x - 0.5) / 0.47) ** 2 + ((y - 0.58) / 0.52) ** 2 <= 1.0
    d[body] = 0.48
    for cx, sgn in ((0.31 + j[0], -1), (0.69 + j[1], 1)):
        lung = ((x - cx) / (0.15 + j[2])) ** 2 + ((y - 0.46 - j[3]) / (0.30 + j[4])) ** 2 <= 1.0
        ribs = np.float32(0.05) * (np.sin((y * 38.0 + sgn * x * 6.0) * np.float32(math.pi)) > 0.55)
        lung_val = 0.20 + 0.06 * y + ribs
        d = np.where(lung, lung_val, d)
    heart = ((x - 0.55 - j[5]) / 0.14) ** 2 + ((y - 0.70) / 0.12) ** 2 <= 1.0
    d[heart] = 0.62
    spine = (np.abs(x - 0.5 - j[6]) < 0.07) & (y > 0.08) & (y < 0.98)
    d[spine] = 0.80
    return d.astype(np.float32, copy=False)


def _markers(d: np.ndarray) -> None:
    """Put a d=1 marker (top left) and a d=0 marker (top right) in place."""
    h, w = d.shape
    mh, mw = max(2, round(0.03 * h)), max(2, round(0.04 * w))
    oy, ox = max(1, round(0.02 * h)), max(1, round(0.02 * w))
    d[oy : oy + mh, ox : ox + mw] = 1.0
    d[oy : oy + mh, w - ox - mw : w - ox] = 0.0


def render_display(entry: dict[str, Any]) -> np.ndarray:
    """Re-draw a synthetic picture from its ``synth_truth.json`` entry.

    Args:
        entry: one value of ``synth_truth.json["images"]`` (needs ``width``,
            ``height``, ``picture_seed`` and ``lesions`` with ``class_id`` and
            ``box`` ``[x1, y1, x2, y2]``, ``x2``/``y2`` exclusive).

    Returns:
        ``(height, width)`` float32 display image in [0, 1], 1 = dense/bright;
        ``round(255 * d)`` is what ``dicom_to_uint8`` should give.
    """
    h, w = int(entry["height"]), int(entry["width"])
    rng = np.random.default_rng(entry["picture_seed"])
    d = _chest(h, w, rng)
    for les in entry["lesions"]:
        paint_lesion(d, int(les["class_id"]), les["box"])
    d += rng.normal(0.0, 0.015, size=d.shape).astype(np.float32)
    np.clip(d, 0.0, 1.0, out=d)
    _markers(d)
    return d


def _place_lesions(
    rng: np.random.Generator, height: int, width: int, classes: Sequence[int], n: int, wide: bool = False
) -> list[dict[str, Any]]:
    """Non-overlapping lesion boxes inside the chest area (8–25 % of the side)."""
    out: list[dict[str, Any]] = []
    side = min(height, width)
    for _ in range(n):
        cls = int(rng.choice(classes))
        for _try in range(60):
            if wide:  # RSNA-like opacities: tall boxes in one lung
                bw = rng.uniform(0.13, 0.22) * width
                bh = rng.uniform(0.18, 0.35) * height
                cx = (
                    rng.uniform(0.22, 0.40) * width if rng.random() < 0.5 else rng.uniform(0.60, 0.78) * width
                )
                cy = rng.uniform(0.35, 0.62) * height
            else:
                s = rng.uniform(0.08, 0.25) * side
                bw, bh = s * rng.uniform(0.85, 1.2), s * rng.uniform(0.85, 1.2)
                cx = rng.uniform(0.12 * width + bw / 2, 0.88 * width - bw / 2)
                cy = rng.uniform(0.14 * height + bh / 2, 0.92 * height - bh / 2)
            x1, y1 = max(0, round(cx - bw / 2)), max(0, round(cy - bh / 2))
            x2, y2 = min(width, round(cx + bw / 2)), min(height, round(cy + bh / 2))
            if x2 - x1 < 4 or y2 - y1 < 4:
                continue
            gap = max(2, round(0.02 * side))
            if all(
                x1 >= o["box"][2] + gap
                or x2 + gap <= o["box"][0]
                or y1 >= o["box"][3] + gap
                or y2 + gap <= o["box"][1]
                for o in out
            ):
                out.append({"class_id": cls, "box": [int(x1), int(y1), int(x2), int(y2)]})
                break
    return out


# --------------------------------------------------------------------------- DICOM encoding


def _window_and_rescale(variant: DicomVariant) -> tuple[dict[str, Any], float, float, int, int]:
    """Header values and the stored range the picture is encoded into.

    Returns:
        (header, slope, intercept, s_lo, s_hi): header fields to write; the
        stored integers d=0 / d=1 map to (before MONOCHROME1 inversion).
    """
    bits = variant.bits_stored
    maxv = 2**bits - 1
    slope, intercept = 1.0, 0.0
    header: dict[str, Any] = {}
    if variant.rescale == "identity":
        header.update(RescaleIntercept="0", RescaleSlope="1")
    elif variant.rescale == "offset":
        intercept = -1024.0
        header.update(RescaleIntercept="-1024", RescaleSlope="1")
    elif variant.rescale != "absent":
        raise ValueError(f"unknown rescale variant {variant.rescale!r}")
    if variant.window == "none":
        lower, upper = intercept + 0.1 * maxv, intercept + 0.9 * maxv
    else:
        if variant.window == "full":
            center, width = 2 ** (bits - 1) + intercept, 2**bits
        elif variant.window in ("narrow", "multi"):
            center, width = round(0.55 * maxv + intercept), round(0.6 * maxv)
        else:
            raise ValueError(f"unknown window variant {variant.window!r}")
        lower = center - 0.5 - (width - 1) / 2
        upper = center - 0.5 + (width - 1) / 2
        if variant.window == "multi":
            header.update(
                WindowCenter=[str(center), str(round(0.4 * maxv + intercept))],
                WindowWidth=[str(width), str(round(0.8 * maxv))],
            )
        else:
            header.update(WindowCenter=str(center), WindowWidth=str(width))
    s_lo = max(0, math.ceil((lower - intercept) / slope))
    s_hi = min(maxv, math.floor((upper - intercept) / slope))
    return header, slope, intercept, s_lo, s_hi


def _encode(d: np.ndarray, variant: DicomVariant) -> tuple[np.ndarray, dict[str, Any]]:
    """Display image → stored uint16 values and the header fields that decode them."""
    header, _slope, _intercept, s_lo, s_hi = _window_and_rescale(variant)
    t = 1.0 - d if variant.photometric == "MONOCHROME1" else d
    stored = np.rint(s_lo + t * np.float32(s_hi - s_lo)).astype(np.uint16)
    if variant.window in ("narrow", "multi"):
        # corner markers beyond the window: the decoder must clip them
        maxv = 2**variant.bits_stored - 1
        stored[t <= 0.0] = 0
        stored[t >= 1.0] = maxv
    return stored, header


def _uid(*parts: str) -> str:
    import pydicom.uid

    return pydicom.uid.generate_uid(entropy_srcs=list(parts))


def _base_dataset(sop_class: str, key: str, transfer_syntax: str) -> Any:
    import pydicom
    from pydicom.dataset import FileMetaDataset

    sop_instance = _uid("sop", key)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "CXRFUSE_SYNTH"
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.StudyInstanceUID = _uid("study", key)
    ds.SeriesInstanceUID = _uid("series", key)
    return ds


def _save_atomic(ds: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        ds.save_as(tmp, enforce_file_format=True)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_vinbig_dicom(job: tuple[str, dict[str, Any], str]) -> str:
    """Worker: render, encode and write one VinBigData DICOM. Returns the path."""
    import pydicom.uid

    image_id, entry, path = job
    dcm = entry["dicom"]
    variant = DicomVariant(
        **{k: dcm[k] for k in ("photometric", "bits_stored", "transfer_syntax", "window", "rescale")}
    )
    d = render_display(entry)
    stored, header = _encode(d, variant)
    del d
    ds = _base_dataset(DX_SOP_CLASS, image_id, variant.transfer_syntax)
    ds.Modality = "DX"
    ds.PatientID = image_id
    ds.PatientSex = "O"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = variant.photometric
    ds.Rows, ds.Columns = stored.shape
    ds.PixelSpacing = [f"{dcm['pixel_spacing']:g}", f"{dcm['pixel_spacing']:g}"]
    ds.BitsAllocated = 16
    ds.BitsStored = variant.bits_stored
    ds.HighBit = variant.bits_stored - 1
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "00"
    for key, value in header.items():
        setattr(ds, key, value)
    if variant.transfer_syntax == JPEG2000_LOSSLESS:
        ds.compress(
            pydicom.uid.JPEG2000Lossless, stored, encoding_plugin="pylibjpeg", generate_instance_uid=False
        )
    else:
        ds.PixelData = stored.tobytes()
        ds["PixelData"].VR = "OW"
    _save_atomic(ds, Path(path))
    return path


def _run(fn: Callable[[Any], Any], jobs: list[Any], workers: int, desc: str) -> None:
    """Run jobs serially or in a process pool, with a progress bar when tqdm exists."""
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is optional

        def tqdm(it: Iterable[Any], **_: Any) -> Iterable[Any]:
            return it

    show = len(jobs) >= 200
    if workers <= 1:
        for job in tqdm(jobs, desc=desc, disable=not show):
            fn(job)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for _ in tqdm(pool.map(fn, jobs, chunksize=4), total=len(jobs), desc=desc, disable=not show):
            pass


def _fmt(v: float) -> str:
    return f"{float(v):.1f}"


def _check_common(n_images: int, fraction: float, name: str, workers: int) -> None:
    if not isinstance(n_images, (int, np.integer)) or n_images < 1:
        raise ValueError(f"n_images must be a positive int, got {n_images!r}")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {fraction!r}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers!r}")


# --------------------------------------------------------------------------- VinBigData


def make_vinbig(
    out_dir: Path,
    *,
    n_images: int = 40,
    seed: int = 0,
    sizes: tuple[int, int] = (384, 640),
    normal_fraction: float = 0.4,
    classes: Sequence[int] = DEFAULT_CLASSES,
    workers: int = 1,
) -> Path:
    """Write a synthetic VinBigData raw set: ``train.csv`` + ``train/{image_id}.dicom``.

    Three radiologists (distinct of R1..R17) per image. A normal image has three
    "No finding" rows (class 14, empty coordinates); an abnormal one has 1–3
    non-overlapping lesions and, per lesion, each radiologist's box jittered by a
    few % of its size, clipped to the image, in original DICOM pixels, printed as
    ``691.0``. The first 18 images cycle through every photometric × BitsStored ×
    transfer-syntax combination (:data:`VINBIG_VARIANT_CYCLE`), later ones follow
    the real proportions. Also writes ``synth_truth.json``. Same arguments give
    byte-identical CSVs whatever ``workers`` is.

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

    Returns:
        ``out_dir``.

    Raises:
        ValueError: bad argument (named with its value).
    """
    out_dir = Path(out_dir)
    _check_common(n_images, normal_fraction, "normal_fraction", workers)
    lo, hi = int(sizes[0]), int(sizes[1])
    if lo < 64 or hi < lo:
        raise ValueError(f"sizes must be (min, max) with 64 <= min <= max, got {sizes!r}")
    classes = tuple(int(c) for c in classes)
    if not classes or any(c not in VINBIG_CLASSES for c in classes):
        raise ValueError(f"classes must be a non-empty subset of 0..13, got {classes!r}")

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
        lesions = (
            [] if is_normal else _place_lesions(lesion_rng, h, w, classes, int(lesion_rng.integers(1, 4)))
        )
        if not is_normal and not lesions:  # pragma: no cover - placement always succeeds at >= 64 px
            raise RuntimeError(f"could not place a lesion in a {w}x{h} image")
        _, _, _, s_lo, s_hi = _window_and_rescale(variant)
        images[image_id] = {
            "index": i,
            "width": w,
            "height": h,
            "normal": is_normal,
            "picture_seed": [int(seed), i, 0],
            "lesions": lesions,
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
                rows.append(
                    [image_id, VINBIG_CLASSES[cid], str(cid), r, _fmt(rx1), _fmt(ry1), _fmt(rx2), _fmt(ry2)]
                )
    order = master.permutation(len(rows))  # the real file is not grouped by image
    rows = [rows[k] for k in order]

    jobs = [
        (image_id, entry, str(out_dir / "train" / f"{image_id}.dicom")) for image_id, entry in images.items()
    ]
    (out_dir / "train").mkdir(parents=True, exist_ok=True)
    _run(_write_vinbig_dicom, jobs, workers, "synthetic VinBigData DICOMs")

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
    _write_text_atomic(out_dir / "synth_truth.json", json.dumps(truth, indent=1))
    _write_text_atomic(out_dir / "train.csv", buf.getvalue())
    return out_dir


# --------------------------------------------------------------------------- RSNA


def _write_rsna_dicom(job: tuple[str, dict[str, Any], str]) -> str:
    """Worker: render, JPEG-encode and write one RSNA DICOM. Returns the path."""
    from PIL import Image
    from pydicom.encaps import encapsulate

    patient_id, entry, path = job
    d = render_display(entry)
    img8 = np.rint(d * 255.0).astype(np.uint8)
    del d
    ds = _base_dataset(CR_SOP_CLASS, patient_id, JPEG_BASELINE)
    ds.Modality = "CR"
    ds.ConversionType = "WSD"
    ds.PatientName = patient_id
    ds.PatientID = patient_id
    ds.PatientSex = entry["sex"]
    ds.PatientAge = f"{int(entry['age']):03d}Y"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = entry["view"]
    ds.SeriesDescription = f"view: {entry['view']}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = img8.shape
    ds.PixelSpacing = ["0.168", "0.168"]
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    frame = io.BytesIO()
    Image.fromarray(img8, mode="L").save(frame, format="JPEG", quality=95, subsampling=0)
    ds.PixelData = encapsulate([frame.getvalue()])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    _save_atomic(ds, Path(path))
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
    """
    out_dir = Path(out_dir)
    _check_common(n_images, positive_fraction, "positive_fraction", workers)
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
            lesions = _place_lesions(rng, size, size, (7,), int(rng.integers(1, 3)), wide=True)
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
            labels.append(f"{pid},{_fmt(x1)},{_fmt(y1)},{_fmt(x2 - x1)},{_fmt(y2 - y1)},1")
            details.append(f"{pid},Lung Opacity")

    jobs = [(pid, images[pid], str(out_dir / "stage_2_train_images" / f"{pid}.dcm")) for pid in pids]
    (out_dir / "stage_2_train_images").mkdir(parents=True, exist_ok=True)
    _run(_write_rsna_dicom, jobs, workers, "synthetic RSNA DICOMs")
    truth = {"dataset": "rsna", "seed": seed, "box_format": "xyxy, x2/y2 exclusive, pixels", "images": images}
    _write_text_atomic(out_dir / "synth_truth.json", json.dumps(truth, indent=1))
    _write_text_atomic(out_dir / "stage_2_detailed_class_info.csv", "\n".join(details) + "\n")
    _write_text_atomic(out_dir / "stage_2_train_labels.csv", "\n".join(labels) + "\n")
    return out_dir
