"""Display pictures → DICOM files: stored values, photometric, BitsStored, window, rescale, syntax.

:func:`encode` maps a display image ``d ∈ [0, 1]`` to stored integers and the
header fields that make :func:`convert.dicom.dicom_to_uint8` give back
``round(255 * d)``; :func:`set_stored_pixels` and :func:`set_jpeg_baseline_pixels`
put pixels into a dataset (native, JPEG 2000 lossless or JPEG baseline) and
:func:`save_dicom` writes it atomically. pydicom and Pillow are imported only
when a file is made.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.io import atomic_open

__all__ = [
    "IMPLICIT_VR_LE",
    "EXPLICIT_VR_LE",
    "JPEG2000_LOSSLESS",
    "JPEG_BASELINE",
    "DX_SOP_CLASS",
    "CR_SOP_CLASS",
    "DicomVariant",
    "window_and_rescale",
    "encode",
    "base_dataset",
    "set_stored_pixels",
    "set_jpeg_baseline_pixels",
    "save_dicom",
]

IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
JPEG2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
CR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7"  # Computed Radiography Image Storage


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


def window_and_rescale(variant: DicomVariant) -> tuple[dict[str, Any], float, float, int, int]:
    """Header values and the stored range the picture is encoded into.

    Returns:
        (header, slope, intercept, s_lo, s_hi): header fields to write; the
        stored integers d=0 / d=1 map to (before MONOCHROME1 inversion).

    Raises:
        ValueError: unknown ``window`` or ``rescale`` variant.
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


def encode(d: np.ndarray, variant: DicomVariant) -> tuple[np.ndarray, dict[str, Any]]:
    """Display image → stored uint16 values and the header fields that decode them.

    Raises:
        ValueError: unknown ``window`` or ``rescale`` variant.
    """
    header, _slope, _intercept, s_lo, s_hi = window_and_rescale(variant)
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


def base_dataset(sop_class: str, key: str, transfer_syntax: str) -> Any:
    """A dataset with file meta and SOP/study/series UIDs derived from ``key`` (same key, same UIDs)."""
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


def set_stored_pixels(ds: Any, stored: np.ndarray, header: dict[str, Any], variant: DicomVariant) -> None:
    """Put 16-bit-allocated grey pixels and their header fields into ``ds``, in ``variant``'s syntax.

    Args:
        ds: dataset from :func:`base_dataset` with ``variant.transfer_syntax``.
        stored: ``(H, W)`` uint16 stored values (from :func:`encode`).
        header: window/rescale fields from :func:`encode`.
        variant: photometric, BitsStored and transfer syntax; JPEG 2000
            lossless is compressed with pylibjpeg, the others stored native (OW).
    """
    import pydicom.uid

    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = variant.photometric
    ds.Rows, ds.Columns = stored.shape
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


def set_jpeg_baseline_pixels(ds: Any, img8: np.ndarray) -> None:
    """Put 8-bit MONOCHROME2 pixels into ``ds`` as one encapsulated JPEG baseline frame.

    Args:
        ds: dataset from :func:`base_dataset` with :data:`JPEG_BASELINE`.
        img8: ``(H, W)`` uint8 image; encoded with Pillow (quality 95, no
            chroma subsampling).
    """
    from PIL import Image
    from pydicom.encaps import encapsulate

    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = img8.shape
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


def save_dicom(ds: Any, path: Path) -> Path:
    """Write ``ds`` as a DICOM file (with preamble and file meta) atomically and return the path.

    Raises:
        OSError: if the file cannot be written.
    """
    path = Path(path)
    with atomic_open(path, "wb") as f:
        ds.save_as(f, enforce_file_format=True)
    return path
