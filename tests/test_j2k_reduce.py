"""JPEG 2000 DICOMs decoded only as far as the resize needs: the written PNG stays within 1 grey level (mean
absolute difference) of the full decode, on synthetic J2K files and on real chest radiographs stored as J2K.

No real JPEG 2000 chest DICOM ships with the repository (asked of every sample's
``file_meta.TransferSyntaxUID``: JPEG baseline, implicit and explicit VR little endian only), so the real
chest pixels of the NIH and SIIM samples are stored here as lossless JPEG 2000, as VinBigData's are.
"""

from __future__ import annotations

import io
import lzma
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless

from convert.dicom import J2K_SYNTAXES, decode_dicom, dicom_to_uint8
from convert.images import ImageJob, convert_image, resize_gray, target_size
from convert.synth import make_vinbig
from core.io import read_image_gray
from tests.conftest_paths import REAL

REAL_CHESTS = [
    REAL / "nih_chestxray14" / "dicom" / "1.3.6.1.4.1.11129.5.5.110503645592756492463169821050252582267888.dcm.xz",
    REAL / "siim_acr_pneumothorax" / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm",
]


def read_any(path: Path) -> pydicom.Dataset:
    data = lzma.open(path).read() if path.suffix == ".xz" else path.read_bytes()
    return pydicom.dcmread(io.BytesIO(data))


def png_mad(src: Path, tmp: Path, size: int) -> tuple[float, tuple[int, int]]:
    """Mean absolute difference of the PNGs `convert_image` writes with and without the reduced decode."""
    a = convert_image(ImageJob("a", src, tmp / f"{src.stem}_full.png", size, j2k_reduce=False))
    b = convert_image(ImageJob("b", src, tmp / f"{src.stem}_reduced.png", size))
    assert a.error is None and b.error is None, (a.error, b.error)
    assert (a.width, a.height, a.src_width, a.src_height) == (b.width, b.height, b.src_width, b.src_height)
    full, reduced = (read_image_gray(tmp / f"{src.stem}_{k}.png") for k in ("full", "reduced"))
    return float(np.abs(full.astype(int) - reduced).mean()), (a.src_width, a.src_height)


@pytest.fixture(scope="module")
def synth_j2k(tmp_path_factory) -> list[Path]:
    raw = make_vinbig(tmp_path_factory.mktemp("raw"), n_images=24, seed=3, sizes=(900, 1100), workers=1)
    files = [p for p in sorted((raw / "train").iterdir())
             if str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID) in J2K_SYNTAXES]  # fmt: skip
    assert len(files) >= 4
    return files


def test_synthetic_j2k_pngs_stay_within_one_grey_level(synth_j2k, tmp_path):
    reduced = 0
    for src in synth_j2k:
        mad, (w, h) = png_mad(src, tmp_path, 256)
        assert mad <= 1.0, (src.name, mad)
        img, full = decode_dicom(src, size=256)
        assert full == (w, h)
        reduced += img.shape != (h, w)
    assert reduced >= len(synth_j2k) // 2  # most take the reduced decode (the rest fall back to the full one)


def test_a_reduced_decode_is_at_least_the_target_and_the_largest_such_level(synth_j2k):
    src = synth_j2k[0]
    img, (w, h) = decode_dicom(src, size=256)
    tw, th = target_size(w, h, 256)
    if img.shape == (h, w):
        pytest.skip("this file falls back to the full decode")  # not expected for the first cycle file
    assert img.shape[1] >= tw and img.shape[0] >= th
    assert img.shape[1] // 2 < tw or img.shape[0] // 2 < th  # one level more would be too small
    assert img.dtype == np.uint8


def test_no_reduction_when_the_size_does_not_allow_it(synth_j2k):
    img, (w, h) = decode_dicom(synth_j2k[0], size=max(900, 1100))
    np.testing.assert_array_equal(img, dicom_to_uint8(synth_j2k[0]))
    assert img.shape == (h, w)


@pytest.mark.parametrize("path", REAL_CHESTS, ids=["nih", "siim"])
def test_real_chest_radiographs_as_j2k_stay_within_one_grey_level(path, tmp_path):
    ds = read_any(path)
    assert str(ds.file_meta.TransferSyntaxUID) not in J2K_SYNTAXES  # see the module docstring
    arr = ds.pixel_array
    ds.compress(JPEG2000Lossless, arr, encoding_plugin="pylibjpeg", generate_instance_uid=False)
    src = tmp_path / "chest.dcm"
    ds.save_as(src)
    full = dicom_to_uint8(src)
    for size in (256, 512):
        mad, _ = png_mad(src, tmp_path, size)
        assert mad <= 1.0, (size, mad)
        # the full decode path is the same image as before: decoding J2K changed nothing
        tw, th = target_size(full.shape[1], full.shape[0], size)
        written = read_image_gray(tmp_path / "chest_full.png")
        np.testing.assert_array_equal(written, resize_gray(full, tw, th))


def test_uncompressed_dicoms_decode_in_full_whatever_the_size(tmp_path):
    ds = read_any(REAL_CHESTS[0])
    img, (w, h) = decode_dicom(REAL_CHESTS[1], size=128)
    assert img.shape == (h, w) == (ds.Rows, ds.Columns)
