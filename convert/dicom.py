"""DICOM decoding: one chest radiograph → a display-ready 8-bit image.

The pipeline follows the DICOM grayscale display chain:

1. stored values (``ds.pixel_array``; uncompressed, JPEG baseline, JPEG 2000 and
   the other syntaxes pydicom's pixel handlers decode, through pylibjpeg),
2. the modality LUT (Rescale Slope / Intercept, or a Modality LUT Sequence),
3. the VOI LUT (Window Center / Width, or a VOI LUT Sequence) when asked for,
4. MONOCHROME1 inverted, so that dense structures (bone, spine) are bright,
5. min-max normalised to 0..255.

Memory: a 2500×2500 12-bit image is decoded to ``uint16`` (12 MB); the linear
rescale and the linear window are done here in ``float32`` (25 MB) rather than
through pydicom's helpers, which promote to ``float64``. pydicom's
``apply_modality_lut`` / ``apply_voi_lut`` are used for the table LUTs and the
non-linear VOI functions (SIGMOID, LINEAR_EXACT), which are rare in chest X-rays.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pydicom.uid
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut

__all__ = ["DicomError", "read_dicom_header", "dicom_to_uint8"]


class DicomError(ValueError):
    """A file that is not a decodable grayscale DICOM image; the message names the file."""


def _first(value: Any) -> float | None:
    """First value of a possibly multi-valued numeric DICOM element, as float (None if absent/empty)."""
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        if len(value) == 0:
            return None
        value = value[0]
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _read(path: Path, *, stop_before_pixels: bool) -> Dataset:
    """Read a DICOM file, tolerating a missing preamble / file meta.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        DicomError: the file is not DICOM, or is truncated before the image.
    """
    if not path.is_file():
        raise FileNotFoundError(f"DICOM file not found: {path}")
    forced = False
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        # No 128-byte preamble + "DICM": maybe a bare dataset (no file meta).
        forced = True
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=True)
        except Exception as exc:  # pydicom raises many types on garbage input
            raise DicomError(f"{path}: not a DICOM file ({type(exc).__name__}: {exc})") from exc
    except Exception as exc:
        raise DicomError(f"{path}: cannot parse DICOM ({type(exc).__name__}: {exc})") from exc

    if "Rows" not in ds or "Columns" not in ds:
        if forced:
            reason = "not a DICOM file (no DICOM preamble and no image elements)"
        elif len(ds) == 0:
            reason = "truncated or corrupt: no data element could be read after the file meta"
        else:
            reason = "not an image (no Rows/Columns)"
        raise DicomError(f"{path}: {reason}")
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        # Without a transfer syntax pydicom has read the dataset in the encoding
        # it detected; name that (native) encoding so the pixel data can be
        # decoded, assuming Implicit VR Little Endian, the DICOM default.
        if meta is None:
            ds.file_meta = pydicom.dataset.FileMetaDataset()
        implicit, little = getattr(ds, "original_encoding", (True, True))
        if implicit is False and little is True:
            ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        elif little is False:
            raise DicomError(f"{path}: no transfer syntax and big-endian data; cannot tell how to decode it")
        else:
            ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    return ds


def read_dicom_header(path: str | Path) -> dict[str, Any]:
    """Read the image-describing header fields without the pixel data.

    Args:
        path: a DICOM file (``.dcm`` / ``.dicom``; file meta optional).

    Returns:
        ``{"rows", "columns"}`` (int, pixels), ``"photometric"`` (str),
        ``"bits_allocated"``, ``"bits_stored"``, ``"pixel_representation"`` (int),
        ``"transfer_syntax"`` (UID str), ``"window_center"``, ``"window_width"``
        (float of the first value, or None), ``"rescale_slope"``,
        ``"rescale_intercept"`` (float or None), ``"modality"``, ``"sop_class"``
        (str or None), ``"pixel_spacing"`` ([row, col] mm floats or None).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        DicomError: not a DICOM image.
    """
    path = Path(path)
    ds = _read(path, stop_before_pixels=True)
    spacing = ds.get("PixelSpacing")
    return {
        "rows": int(ds.Rows),
        "columns": int(ds.Columns),
        "photometric": str(ds.get("PhotometricInterpretation", "")),
        "bits_allocated": int(ds.get("BitsAllocated", 0) or 0),
        "bits_stored": int(ds.get("BitsStored", 0) or 0),
        "pixel_representation": int(ds.get("PixelRepresentation", 0) or 0),
        "transfer_syntax": str(ds.file_meta.TransferSyntaxUID),
        "window_center": _first(ds.get("WindowCenter")),
        "window_width": _first(ds.get("WindowWidth")),
        "rescale_slope": _first(ds.get("RescaleSlope")),
        "rescale_intercept": _first(ds.get("RescaleIntercept")),
        "modality": str(ds["Modality"].value) if "Modality" in ds else None,
        "sop_class": str(ds["SOPClassUID"].value) if "SOPClassUID" in ds else None,
        "pixel_spacing": [float(v) for v in spacing] if spacing else None,
    }


def _modality(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """Modality LUT: stored values → a new float32 array of modality values (one copy)."""
    if "ModalityLUTSequence" in ds:
        return np.asarray(apply_modality_lut(arr, ds), dtype=np.float32)
    slope = _first(ds.get("RescaleSlope"))
    intercept = _first(ds.get("RescaleIntercept"))
    out = arr.astype(np.float32)  # always a copy: the caller works on it in place
    if slope is not None and slope != 1.0:
        out *= np.float32(slope)
    if intercept is not None and intercept != 0.0:
        out += np.float32(intercept)
    return out


def _voi(values: np.ndarray, ds: Dataset) -> np.ndarray:
    """VOI LUT on float32 modality values, in place where possible; unchanged without one."""
    if "VOILUTSequence" in ds:  # table lookup needs integer input
        return np.asarray(apply_voi_lut(np.rint(values).astype(np.int32), ds, index=0), dtype=np.float32)
    center = _first(ds.get("WindowCenter"))
    width = _first(ds.get("WindowWidth"))
    if center is None or width is None or width <= 0:
        return values
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if function != "LINEAR" or width < 1:
        return np.asarray(apply_voi_lut(values, ds, index=0), dtype=np.float32)
    # DICOM PS3.3 C.11.2.1.2.1 LINEAR: the output is linear between these two
    # input values and clipped outside; the output range is irrelevant here
    # because the result is min-max normalised afterwards.
    lower = center - 0.5 - (width - 1.0) / 2.0
    upper = center - 0.5 + (width - 1.0) / 2.0
    np.clip(values, lower, upper, out=values)
    return values


def dicom_to_uint8(path: str | Path, *, use_voi_lut: bool = True) -> np.ndarray:
    """Decode a grayscale DICOM into a display-ready 8-bit image at original resolution.

    Modality LUT (rescale), then the VOI LUT / first Window Center–Width if present
    and ``use_voi_lut``; MONOCHROME1 is inverted so dense structures are bright;
    finally min-max normalised: ``round(255 * (v - min) / (max - min))``
    (a constant image gives all zeros). For MONOCHROME1 the result is exactly
    ``255 -`` the MONOCHROME2 result of the same pixels.

    Args:
        path: DICOM file; uncompressed (implicit/explicit VR little endian),
            JPEG baseline (1.2.840.10008.1.2.4.50), JPEG 2000 (.4.90/.4.91) and
            whatever else pydicom's installed decoders handle. A file without
            file meta is read assuming Implicit VR Little Endian.
        use_voi_lut: apply the VOI LUT / window; False normalises the full
            modality-value range.

    Returns:
        ``uint8`` array of shape ``(Rows, Columns)``; 0 = black, 255 = white.
        For a multi-frame file the first frame.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        DicomError: not DICOM, no pixel data, truncated or undecodable pixel
            data, or not a grayscale (MONOCHROME1/2, one sample) image. The
            message names the file and the reason.
    """
    path = Path(path)
    ds = _read(path, stop_before_pixels=False)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DicomError(f"{path}: no pixel data (truncated file or not an image)")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DicomError(f"{path}: photometric interpretation {photometric!r} is not MONOCHROME1/2")
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise DicomError(f"{path}: {ds.SamplesPerPixel} samples per pixel; expected 1 (grayscale)")
    try:
        arr = ds.pixel_array
    except Exception as exc:  # decoders raise ValueError, RuntimeError, EOFError, ...
        raise DicomError(f"{path}: cannot decode pixel data ({type(exc).__name__}: {exc})") from exc
    if arr.ndim == 3:  # multi-frame: (frames, rows, cols)
        arr = arr[0]
    if arr.ndim != 2:
        raise DicomError(f"{path}: decoded pixel array has shape {arr.shape}; expected (rows, columns)")
    if "PixelData" in ds:
        del ds.PixelData  # drop the encoded bytes early; the array is what we keep

    values = _modality(arr, ds)
    del arr
    if use_voi_lut:
        values = _voi(values, ds)

    lo = float(values.min())
    hi = float(values.max())
    if hi <= lo:
        out = np.zeros(values.shape, dtype=np.uint8)
    else:
        scaled = values.astype(np.float32, copy=False)  # our own float32 array, scaled in place
        del values
        scaled -= np.float32(lo)
        scaled *= np.float32(255.0 / (hi - lo))
        np.rint(scaled, out=scaled)
        np.clip(scaled, 0, 255, out=scaled)
        out = scaled.astype(np.uint8)
    if photometric == "MONOCHROME1":
        np.subtract(255, out, out=out)
    return out
