"""DICOM decoding: one chest radiograph → a display-ready 8-bit image.

The pipeline follows the DICOM grayscale display chain:

1. stored values (``ds.pixel_array``; uncompressed, JPEG baseline, JPEG 2000 and
   the other syntaxes pydicom's pixel handlers decode, through pylibjpeg),
2. the modality LUT (Rescale Slope / Intercept, or a Modality LUT Sequence),
3. the VOI LUT (Window Center / Width, or a VOI LUT Sequence) when asked for,
4. MONOCHROME1 inverted, so that dense structures (bone, spine) are bright,
5. min-max normalised to 0..255.

JPEG 2000 decoded only as far as needed (`decode_dicom` with ``size``): a JPEG 2000 codestream holds
the image at every power-of-two reduced resolution, so when the caller will shrink the image to
``size`` pixels (longer side) anyway, it is decoded at the largest reduced resolution whose sides are
still at least the target's (times ``REDUCE_MARGIN``; through Pillow's OpenJPEG decoder, ``reduce``),
lightly smoothed, and steps 2-5 run on that.
A 2,500 x 3,000 image going to 1,024 px is decoded at 1,250 x 1,500: a quarter of the samples, and
most of the decoding time is in the finest level's code blocks. Whatever does not fit (signed or
multi-component data, several frames, a codestream disagreeing with the header, a decoder error)
is decoded in full as before.

Memory: a 2500×2500 12-bit image is decoded to ``uint16`` (12 MB); the linear
rescale and the linear window are done here in ``float32`` (25 MB) rather than
through pydicom's helpers, which promote to ``float64``. pydicom's
``apply_modality_lut`` / ``apply_voi_lut`` are used for the table LUTs and the
non-linear VOI functions (SIGMOID, LINEAR_EXACT), which are rare in chest X-rays.
"""

from __future__ import annotations

import io
import logging
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pydicom.uid
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from core.errors import UserError

__all__ = ["DicomError", "read_dicom_header", "dicom_to_uint8", "decode_dicom"]

log = logging.getLogger(__name__)

#: A reduced JPEG 2000 decode must still be this many times the target size on both sides: the resize
#: that follows then averages enough pixels for the PNG to stay within a grey level of the full decode's
#: (right above the target, the wavelet's low-pass band is visibly sharper than an area filter).
REDUCE_MARGIN = 1.2
#: JPEG 2000 transfer syntaxes (lossless only, and lossless or lossy)
J2K_SYNTAXES = ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91")


class DicomError(UserError):
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

    `decode_dicom` without a target size; see there.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        DicomError: not DICOM, no pixel data, truncated or undecodable pixel data, or not a
            grayscale image (the message names the file and the reason).
    """
    return decode_dicom(path, use_voi_lut=use_voi_lut)[0]


def decode_dicom(
    path: str | Path, *, use_voi_lut: bool = True, size: int | None = None
) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode a grayscale DICOM into a display-ready 8-bit image at original resolution.

    Modality LUT (rescale), then the VOI LUT / first Window Center–Width if present
    and ``use_voi_lut``; MONOCHROME1 is inverted so dense structures are bright;
    finally min-max normalised: ``round(255 * (v - min) / (max - min))``
    (a constant image gives all zeros). For MONOCHROME1 the result is exactly
    ``255 -`` the MONOCHROME2 result of the same pixels.

    With ``size`` (the longer side the caller resizes to, aspect kept, as
    `convert.images.target_size`), a JPEG 2000 image is decoded at the largest
    reduced resolution level whose sides are still at least ``REDUCE_MARGIN`` times
    the target's, when the min-max normalisation is then exactly the full decode's
    (see the module docstring and `_reduced_values`); other images decode in full.

    Args:
        path: DICOM file; uncompressed (implicit/explicit VR little endian),
            JPEG baseline (1.2.840.10008.1.2.4.50), JPEG 2000 (.4.90/.4.91) and
            whatever else pydicom's installed decoders handle. A file without
            file meta is read assuming Implicit VR Little Endian.
        use_voi_lut: apply the VOI LUT / window; False normalises the full
            modality-value range.
        size: the longer side the image will be resized to, or None.

    Returns:
        ``(image, (width, height))``: the ``uint8`` image, of shape ``(Rows, Columns)``
        or a reduced resolution of it (0 = black, 255 = white; for a multi-frame file
        the first frame), and the full-resolution width and height.

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
    reduced = _reduced_values(ds, path, size, use_voi_lut) if size else None
    if reduced is not None:
        values, full = reduced
        del ds.PixelData
    else:
        try:
            arr = ds.pixel_array
        except Exception as exc:  # decoders raise ValueError, RuntimeError, EOFError, ...
            raise DicomError(f"{path}: cannot decode pixel data ({type(exc).__name__}: {exc})") from exc
        if arr.ndim == 3:  # multi-frame: (frames, rows, cols)
            arr = arr[0]
        if arr.ndim != 2:
            raise DicomError(f"{path}: decoded pixel array has shape {arr.shape}; expected (rows, columns)")
        full = (int(arr.shape[1]), int(arr.shape[0]))
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
    return out, full


#: separable smoothing of a reduced decode, ``[1, 8, 1] / 10`` per axis: the wavelet's low-pass band is
#: sharper than the area filter the full path resizes with; this brings the written PNG closer to it
#: (mean absolute difference about 0.9 grey levels instead of 1.0 on the synthetic 2,500-pixel images).
#: Integer taps, divided by their sum squared after: a flat region keeps its exact value.
_SMOOTH_TAPS = np.array([1.0, 8.0, 1.0], np.float32)


def _reduced_values(
    ds: Dataset, path: Path, size: int, use_voi_lut: bool
) -> tuple[np.ndarray, tuple[int, int]] | None:
    """Modality/VOI values of a reduced JPEG 2000 decode, and the full ``(width, height)``; or None.

    None (decode in full) unless the min-max normalisation is then the full decode's, exactly: the
    smallest and largest values must be the hardest limits the stored range allows (through the
    modality LUT and the window) and each must fill a flat region (a pixel whose 3 x 3 neighbours
    all have it), not a thin line of the low-pass band's overshoot at an edge. The full image can
    then reach neither beyond them nor short of them. Table LUTs (Modality/VOI LUT Sequence) decode
    in full.
    """
    if "ModalityLUTSequence" in ds or (use_voi_lut and "VOILUTSequence" in ds):
        return None
    arr, full = _decode_j2k_reduced(ds, path, size)
    if arr is None:
        return None
    import cv2

    smooth = cv2.sepFilter2D(arr.astype(np.float32), -1, _SMOOTH_TAPS, _SMOOTH_TAPS, borderType=cv2.BORDER_REPLICATE)
    smooth /= np.float32(float(_SMOOTH_TAPS.sum()) ** 2)
    values = _modality(smooth, ds)
    del smooth
    limits = _modality(np.array([[0, 2 ** int(ds.BitsStored) - 1]], np.uint32), ds)
    if use_voi_lut:
        values = _voi(values, ds)
        limits = _voi(limits, ds)
    lo, hi = float(values.min()), float(values.max())
    if (lo, hi) != (float(limits.min()), float(limits.max())) or hi <= lo:
        log.debug("%s: reduced decode spans %s..%s, not the limits; decoding in full", path, lo, hi)
        return None
    kernel = np.ones((3, 3), np.uint8)
    for v in (lo, hi):
        if not cv2.erode((values == v).view(np.uint8), kernel).any():
            log.debug("%s: reduced decode reaches %s only at edges; decoding in full", path, v)
            return None
    return values, full


def _j2k_main_header(cs: bytes) -> dict[str, int] | None:
    """Size, sample format and decomposition levels from a JPEG 2000 codestream's main header, or None.

    Reads SIZ (image size and offset, components, bit depth and sign) and COD/COC (the number of
    wavelet decomposition levels; the smallest one counts) up to the first tile (SOT).
    """
    if cs[:4] != b"\xff\x4f\xff\x51" or len(cs) < 45:
        return None
    _, _, xsiz, ysiz, xo, yo, _, _, _, _, csiz = struct.unpack_from(">HHIIIIIIIIH", cs, 4)
    ssiz = cs[42]
    info = {"width": xsiz - xo, "height": ysiz - yo, "offset": xo | yo, "components": csiz,
            "signed": ssiz >> 7, "precision": (ssiz & 0x7F) + 1, "levels": 99}  # fmt: skip
    pos = 4 + struct.unpack_from(">H", cs, 4)[0]
    while pos + 4 <= len(cs):
        marker, length = struct.unpack_from(">HH", cs, pos)
        if marker == 0xFF90:  # SOT: the main header is over
            break
        if marker == 0xFF52 and length >= 12:  # COD: Lcod Scod SGcod(4) then SPcod's levels
            info["levels"] = min(info["levels"], cs[pos + 9])
        elif marker == 0xFF53:  # COC: Lcoc Ccoc(1 or 2) Scoc then SPcoc's levels
            info["levels"] = min(info["levels"], cs[pos + 4 + (2 if csiz >= 257 else 1) + 1])
        pos += 2 + length
    return info if info["levels"] != 99 else None


def _decode_j2k_reduced(ds: Dataset, path: Path, size: int) -> tuple[np.ndarray | None, tuple[int, int] | None]:
    """Stored values of a JPEG 2000 image decoded at the largest reduced resolution that still covers
    ``size``, and the full ``(width, height)``; ``(None, None)`` when that is not possible (decode in full).
    """
    if str(ds.file_meta.TransferSyntaxUID) not in J2K_SYNTAXES or int(ds.get("NumberOfFrames", 1) or 1) != 1:
        return None, None
    if int(ds.get("PixelRepresentation", 0) or 0) != 0 or "PixelData" not in ds:
        return None, None
    try:
        from pydicom.encaps import generate_frames

        cs = next(generate_frames(ds.PixelData, number_of_frames=1))
        info = _j2k_main_header(cs)
    except Exception as exc:  # a malformed encapsulation: the full decode names the problem
        log.debug("%s: no reduced decode (%s)", path, exc)
        return None, None
    if info is None or info["components"] != 1 or info["signed"] or info["offset"] or info["precision"] > 16:
        return None, None
    width, height = info["width"], info["height"]
    if (width, height) != (int(ds.Columns), int(ds.Rows)) or info["precision"] != int(ds.get("BitsStored", 0) or 0):
        return None, None
    scale = size / max(width, height)  # as convert.images.target_size
    tw, th = max(1, round(width * scale)), max(1, round(height * scale))
    level = 0
    for r in range(1, info["levels"] + 1):
        rw, rh = -(-width // 2**r), -(-height // 2**r)
        # Pillow rounds a reduced size half up, OpenJPEG up: use only levels where they agree
        same = all(int((n + 2 ** (r - 1)) / 2**r) == -(-n // 2**r) for n in (width, height))
        if rw < REDUCE_MARGIN * tw or rh < REDUCE_MARGIN * th:
            break
        if same:
            level = r
    if level == 0:
        return None, None
    try:
        from PIL import Image

        with Image.open(io.BytesIO(cs)) as im:
            im.reduce = level
            im.load()
            arr = np.asarray(im)
    except Exception as exc:  # fall back to the full decode, which reports real errors
        log.debug("%s: reduced JPEG 2000 decode failed (%s); decoding in full", path, exc)
        return None, None
    expect = (-(-height // 2**level), -(-width // 2**level))
    if arr.shape != expect or arr.dtype.kind != "u":
        log.debug("%s: reduced decode gave %s %s, not %s; decoding in full", path, arr.shape, arr.dtype, expect)
        return None, None
    # Pillow scales samples up to its mode's depth (16 bits, or 8 for "L"): shift them back down
    shift = arr.dtype.itemsize * 8 - info["precision"]
    values = (arr >> shift).astype(np.uint16 if info["precision"] > 8 else np.uint8)
    return values, (width, height)
