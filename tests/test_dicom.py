"""convert.dicom: synthetic variants against the generator's truth, real files, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from convert.dicom import DicomError, dicom_to_uint8, read_dicom_header
from convert.synth import VINBIG_VARIANT_CYCLE, render_display

SIIM = "siim_acr_pneumothorax/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
SIIM_MONO1 = "siim_acr_pneumothorax/Fake_MONOHR1.dcm"
CAT = "dicom_format_samples/cat.dcm"


def _truth(raw: Path) -> dict:
    return json.loads((raw / "synth_truth.json").read_text())["images"]


def _entry_for_index(raw: Path, index: int) -> tuple[str, dict]:
    for image_id, entry in _truth(raw).items():
        if entry["index"] == index:
            return image_id, entry
    raise KeyError(index)


def _variant_id(v) -> str:
    return f"{v.photometric[-1]}-{v.bits_stored}bit-{v.transfer_syntax.rsplit('.', 2)[-2:][-1]}-{v.window}-{v.rescale}"


# ------------------------------------------------------------------ synthetic variants


@pytest.mark.parametrize(
    "index", range(len(VINBIG_VARIANT_CYCLE)), ids=[_variant_id(v) for v in VINBIG_VARIANT_CYCLE]
)
def test_synthetic_variant_decodes_to_drawn_picture(synth_vinbig: Path, index: int) -> None:
    image_id, entry = _entry_for_index(synth_vinbig, index)
    path = synth_vinbig / "train" / f"{image_id}.dicom"
    header = read_dicom_header(path)
    variant = VINBIG_VARIANT_CYCLE[index]
    assert header["photometric"] == variant.photometric
    assert header["bits_stored"] == variant.bits_stored
    assert header["transfer_syntax"] == variant.transfer_syntax
    assert (header["rows"], header["columns"]) == (entry["height"], entry["width"])

    got = dicom_to_uint8(path)
    expected = np.rint(render_display(entry) * 255.0)
    assert got.dtype == np.uint8
    assert got.shape == (entry["height"], entry["width"])
    assert np.abs(got.astype(np.int16) - expected).max() <= 2


def test_multi_valued_window_uses_first(synth_vinbig: Path) -> None:
    index = next(i for i, v in enumerate(VINBIG_VARIANT_CYCLE) if v.window == "multi")
    image_id, _ = _entry_for_index(synth_vinbig, index)
    path = synth_vinbig / "train" / f"{image_id}.dicom"
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert len(ds.WindowCenter) == 2
    assert read_dicom_header(path)["window_center"] == float(ds.WindowCenter[0])


def test_without_voi_lut_the_clipped_markers_stretch_the_range(synth_vinbig: Path) -> None:
    index = next(i for i, v in enumerate(VINBIG_VARIANT_CYCLE) if v.window == "narrow")
    image_id, _ = _entry_for_index(synth_vinbig, index)
    path = synth_vinbig / "train" / f"{image_id}.dicom"
    windowed = dicom_to_uint8(path)
    raw = dicom_to_uint8(path, use_voi_lut=False)
    assert raw.dtype == np.uint8 and raw.shape == windowed.shape
    assert raw.min() == 0 and raw.max() == 255
    # the body occupies a narrower part of the grey range without the window
    assert raw.std() < windowed.std()


@pytest.mark.parametrize("syntax", [pydicom.uid.ImplicitVRLittleEndian, pydicom.uid.ExplicitVRLittleEndian])
def test_file_without_file_meta_is_read(synth_vinbig: Path, tmp_path: Path, syntax: str) -> None:
    index = next(i for i, v in enumerate(VINBIG_VARIANT_CYCLE) if v.transfer_syntax == syntax)
    image_id, _ = _entry_for_index(synth_vinbig, index)
    src = synth_vinbig / "train" / f"{image_id}.dicom"
    ds = pydicom.dcmread(src)
    bare = tmp_path / "bare.dcm"
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.preamble = None
    ds.save_as(
        bare,
        implicit_vr=syntax == pydicom.uid.ImplicitVRLittleEndian,
        little_endian=True,
        enforce_file_format=False,
    )
    head = bare.read_bytes()[:200]
    assert b"DICM" not in head and head[:2] == b"\x08\x00"  # starts with a group 0008 element
    assert read_dicom_header(bare)["transfer_syntax"] == syntax
    np.testing.assert_array_equal(dicom_to_uint8(bare), dicom_to_uint8(src))


# ------------------------------------------------------------------ real files


def _regions(img: np.ndarray) -> tuple[float, float, float]:
    h, w = img.shape
    centre = img[int(0.30 * h) : int(0.70 * h), int(0.425 * w) : int(0.575 * w)].mean()
    left = img[int(0.30 * h) : int(0.60 * h), int(0.20 * w) : int(0.35 * w)].mean()
    right = img[int(0.30 * h) : int(0.60 * h), int(0.65 * w) : int(0.80 * w)].mean()
    return float(centre), float(left), float(right)


def _real_chest_files(real: Path) -> list[Path]:
    return [real / SIIM, *sorted((real / "nih_chestxray14" / "dicom").glob("*.dcm"))]


def test_real_chest_xrays_have_bright_spine_and_dark_lungs(real_dir: Path) -> None:
    files = [p for p in _real_chest_files(real_dir) if p.is_file()]
    assert len(files) == 2, f"real chest DICOMs (SIIM CR, NIH DX) missing under {real_dir}"
    for path in files:
        img = dicom_to_uint8(path)
        assert img.dtype == np.uint8 and img.shape == (1024, 1024), path.name
        assert img.min() == 0 and img.max() == 255, path.name
        centre, left, right = _regions(img)
        assert centre > left + 20 and centre > right + 20, (path.name, centre, left, right)


def test_real_jpeg_baseline_header(real_dir: Path) -> None:
    header = read_dicom_header(real_dir / SIIM)
    assert header["transfer_syntax"] == "1.2.840.10008.1.2.4.50"
    assert header["photometric"] == "MONOCHROME2"
    assert (header["rows"], header["columns"], header["bits_stored"]) == (1024, 1024, 8)
    assert header["modality"] == "CR"


def test_real_monochrome1_is_inverted(real_dir: Path) -> None:
    mono2 = dicom_to_uint8(real_dir / SIIM)
    mono1 = dicom_to_uint8(real_dir / SIIM_MONO1)
    np.testing.assert_array_equal(mono1, 255 - mono2)


def test_real_12_bit_dx(real_dir: Path) -> None:
    header = read_dicom_header(real_dir / CAT)
    assert (header["bits_allocated"], header["bits_stored"]) == (16, 12)
    assert (header["window_center"], header["window_width"]) == (2048.0, 4096.0)
    img = dicom_to_uint8(real_dir / CAT)
    assert img.dtype == np.uint8 and img.shape == (654, 768)  # the shipped copy: every 4th row and column
    assert img.min() == 0 and img.max() == 255
    assert 20 < img.mean() < 235


# ------------------------------------------------------------------ bad input


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.dcm"
    with pytest.raises(FileNotFoundError, match="nope.dcm"):
        dicom_to_uint8(path)
    with pytest.raises(FileNotFoundError, match="nope.dcm"):
        read_dicom_header(path)


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.4.90"])
def test_truncated_file(synth_vinbig: Path, tmp_path: Path, syntax: str) -> None:
    index = next(i for i, v in enumerate(VINBIG_VARIANT_CYCLE) if v.transfer_syntax == syntax)
    image_id, _ = _entry_for_index(synth_vinbig, index)
    cut = tmp_path / "cut.dicom"
    cut.write_bytes((synth_vinbig / "train" / f"{image_id}.dicom").read_bytes()[:2000])
    with pytest.raises(DicomError, match=r"cut\.dicom: .*(truncated|less than expected)"):
        dicom_to_uint8(cut)


def test_text_file_is_not_dicom(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("image_id,class_name\nabc,No finding\n" * 20)
    with pytest.raises(DicomError, match=r"notes\.txt: not a DICOM file"):
        dicom_to_uint8(path)
    with pytest.raises(DicomError, match="notes.txt"):
        read_dicom_header(path)
    assert issubclass(DicomError, ValueError)


def test_non_image_dicom(tmp_path: Path) -> None:
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # basic text SR
    ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "SR"
    path = tmp_path / "report.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(DicomError, match=r"report\.dcm: not an image"):
        dicom_to_uint8(path)
