"""convert.synth: raw formats, variants, determinism, lesion geometry."""

from __future__ import annotations

import csv
import json
import re
import uuid
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest

from convert.dicom import dicom_to_uint8
from convert.synth import (
    ALL_CLASSES,
    DEFAULT_CLASSES,
    VINBIG_VARIANT_CYCLE,
    make_rsna,
    make_vinbig,
    paint_lesion,
    render_display,
)
from core.classes import VINBIG_CLASSES

VINBIG_COLUMNS = ["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"]
COORD = re.compile(r"^\d+\.0$")


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _truth(raw: Path) -> dict:
    return json.loads((raw / "synth_truth.json").read_text())["images"]


def _iou(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area


# ------------------------------------------------------------------ VinBigData


def test_vinbig_csv_has_the_real_columns_and_rows(synth_vinbig: Path) -> None:
    header = (synth_vinbig / "train.csv").read_text().splitlines()[0]
    assert header.split(",") == VINBIG_COLUMNS
    truth = _truth(synth_vinbig)
    rows = _rows(synth_vinbig / "train.csv")
    by_image: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        by_image[row["image_id"]].append(row)
    assert set(by_image) == set(truth)
    for image_id, image_rows in by_image.items():
        entry = truth[image_id]
        assert re.fullmatch(r"[0-9a-f]{32}", image_id)
        assert (synth_vinbig / "train" / f"{image_id}.dicom").is_file()
        rads = {r["rad_id"] for r in image_rows}
        assert len(rads) == 3 and all(re.fullmatch(r"R([1-9]|1[0-7])", r) for r in rads)
        if entry["normal"]:
            assert len(image_rows) == 3
            for r in image_rows:
                assert (r["class_name"], r["class_id"]) == ("No finding", "14")
                assert [r[k] for k in VINBIG_COLUMNS[4:]] == ["", "", "", ""]
            continue
        assert len(image_rows) == 3 * len(entry["lesions"])
        for r in image_rows:
            cid = int(r["class_id"])
            assert r["class_name"] == VINBIG_CLASSES[cid] and cid in DEFAULT_CLASSES
            assert all(COORD.match(r[k]) for k in VINBIG_COLUMNS[4:])
            x1, y1, x2, y2 = (float(r[k]) for k in VINBIG_COLUMNS[4:])
            assert 0 <= x1 < x2 <= entry["width"] and 0 <= y1 < y2 <= entry["height"]
            # each radiologist's box is a jittered copy of one true lesion of its class
            best = max(
                _iou([x1, y1, x2, y2], les["box"]) for les in entry["lesions"] if les["class_id"] == cid
            )
            assert best > 0.6


def test_vinbig_normal_fraction_and_lesion_geometry(synth_vinbig: Path) -> None:
    truth = _truth(synth_vinbig)
    assert sum(e["normal"] for e in truth.values()) == round(0.4 * len(truth))
    for entry in truth.values():
        side = min(entry["width"], entry["height"])
        boxes = [les["box"] for les in entry["lesions"]]
        assert entry["normal"] == (not boxes)
        for i, b in enumerate(boxes):
            assert 0.06 * side <= b[2] - b[0] <= 0.32 * side and 0.06 * side <= b[3] - b[1] <= 0.32 * side
            assert 0.1 * entry["width"] <= b[0] and b[2] <= 0.9 * entry["width"]
            for other in boxes[i + 1 :]:
                assert _iou(b, other) == 0.0


def test_vinbig_headers_cover_every_variant(synth_vinbig: Path) -> None:
    truth = _truth(synth_vinbig)
    seen = set()
    for image_id, entry in truth.items():
        ds = pydicom.dcmread(synth_vinbig / "train" / f"{image_id}.dicom", stop_before_pixels=True)
        assert ds.file_meta.MediaStorageSOPClassUID == "1.2.840.10008.5.1.4.1.1.1.1"
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1.1" and ds.Modality == "DX"
        assert (ds.BitsAllocated, ds.PixelRepresentation, ds.SamplesPerPixel) == (16, 0, 1)
        assert ds.HighBit == ds.BitsStored - 1 and len(ds.PixelSpacing) == 2
        assert (ds.Rows, ds.Columns) == (entry["height"], entry["width"])
        seen.add((ds.PhotometricInterpretation, ds.BitsStored, ds.file_meta.TransferSyntaxUID))
    expected = {(v.photometric, v.bits_stored, v.transfer_syntax) for v in VINBIG_VARIANT_CYCLE}
    assert len(expected) == 18 and expected <= seen


def test_vinbig_same_seed_same_bytes(tmp_path: Path) -> None:
    a = make_vinbig(tmp_path / "a", n_images=5, seed=7, sizes=(96, 128))
    b = make_vinbig(tmp_path / "b", n_images=5, seed=7, sizes=(96, 128), workers=2)
    c = make_vinbig(tmp_path / "c", n_images=5, seed=8, sizes=(96, 128))
    assert (a / "train.csv").read_bytes() == (b / "train.csv").read_bytes()
    assert (a / "train.csv").read_bytes() != (c / "train.csv").read_bytes()
    names = sorted(p.name for p in (a / "train").iterdir())
    assert names == sorted(p.name for p in (b / "train").iterdir())
    assert all((a / "train" / n).read_bytes() == (b / "train" / n).read_bytes() for n in names)
    assert not list(a.rglob("*.part"))


def test_vinbig_all_classes(tmp_path: Path) -> None:
    raw = make_vinbig(
        tmp_path, n_images=6, seed=3, sizes=(128, 160), classes=ALL_CLASSES, normal_fraction=0.0
    )
    truth = _truth(raw)
    assert all(not e["normal"] and e["lesions"] for e in truth.values())
    ids = {int(r["class_id"]) for r in _rows(raw / "train.csv")}
    assert ids <= set(ALL_CLASSES) and len(ids) > len(DEFAULT_CLASSES)


def test_vinbig_several_distinct_findings_per_image(tmp_path: Path) -> None:
    raw = make_vinbig(
        tmp_path, n_images=8, seed=5, sizes=(128, 160), classes=ALL_CLASSES, normal_fraction=0.25,
        findings=(2, 4), distinct_findings=True,
    )  # fmt: skip
    truth = _truth(raw)
    by_image: dict[str, set[int]] = defaultdict(set)
    for r in _rows(raw / "train.csv"):
        by_image[r["image_id"]].add(int(r["class_id"]))
    counts = []
    for key, e in truth.items():
        classes = [les["class_id"] for les in e["lesions"]]
        if e["normal"]:
            assert e["findings"] == [] and by_image[key] == {14}
            continue
        assert len(set(classes)) == len(classes)  # one lesion per finding
        assert 2 <= len(classes) <= 4 and e["findings"] == sorted(classes) == sorted(by_image[key])
        counts.append(len(classes))
    assert len(counts) == 6 and len(set(counts)) > 1
    # the default draws (1-3 lesions, classes drawn independently) are unchanged and listed too
    plain = _truth(make_vinbig(tmp_path / "plain", n_images=6, seed=5, sizes=(128, 160)))
    assert all(e["findings"] == sorted({les["class_id"] for les in e["lesions"]}) for e in plain.values())
    assert all(1 <= len(e["lesions"]) <= 3 for e in plain.values() if not e["normal"])


@pytest.mark.parametrize("class_id", ALL_CLASSES)
def test_every_lesion_shape_is_high_contrast(class_id: int) -> None:
    d = np.full((64, 64), 0.5, dtype=np.float32)
    paint_lesion(d, class_id, (10, 12, 50, 52))
    inside = d[12:52, 10:50]
    assert (inside >= 0.9).mean() > 0.1 and (inside <= 0.1).mean() > 0.05
    assert (d[:12] == 0.5).all() and (d[52:] == 0.5).all()


def test_every_lesion_shape_is_distinct() -> None:
    pictures = []
    for class_id in ALL_CLASSES:
        d = np.full((40, 40), 0.5, dtype=np.float32)
        paint_lesion(d, class_id, (0, 0, 40, 40))
        pictures.append(d)
    for i in range(len(pictures)):
        for j in range(i + 1, len(pictures)):
            assert (np.abs(pictures[i] - pictures[j]) > 0.3).mean() > 0.1, (i, j)


def test_render_has_full_range_and_chest_anatomy(synth_vinbig: Path) -> None:
    entry = next(e for e in _truth(synth_vinbig).values() if e["normal"])
    d = render_display(entry)
    assert d.dtype == np.float32 and d.min() == 0.0 and d.max() == 1.0
    h, w = d.shape
    spine = d[int(0.3 * h) : int(0.7 * h), int(0.45 * w) : int(0.55 * w)].mean()
    lung = d[int(0.3 * h) : int(0.6 * h), int(0.2 * w) : int(0.35 * w)].mean()
    assert spine > lung + 0.3


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_images": 0},
        {"sizes": (32, 64)},
        {"sizes": (200, 100)},
        {"normal_fraction": 1.5},
        {"classes": (14,)},
        {"classes": ()},
        {"workers": 0},
        {"findings": (0, 2)},
        {"findings": (3, 2)},
        {"findings": (1, 5), "classes": (0, 3, 8, 10), "distinct_findings": True},
    ],
)
def test_vinbig_bad_arguments(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        make_vinbig(tmp_path, **kwargs)


# ------------------------------------------------------------------ RSNA


def test_rsna_labels_and_class_info(synth_rsna: Path) -> None:
    labels = _rows(synth_rsna / "stage_2_train_labels.csv")
    info = _rows(synth_rsna / "stage_2_detailed_class_info.csv")
    assert list(labels[0]) == ["patientId", "x", "y", "width", "height", "Target"]
    assert list(info[0]) == ["patientId", "class"]
    assert [r["patientId"] for r in labels] == [r["patientId"] for r in info]
    per_patient: dict[str, list[dict[str, str]]] = defaultdict(list)
    for lab, cls in zip(labels, info, strict=True):
        assert uuid.UUID(lab["patientId"]).version == 4
        per_patient[lab["patientId"]].append(lab)
        if lab["Target"] == "1":
            assert cls["class"] == "Lung Opacity"
            x, y, w, h = (float(lab[k]) for k in ("x", "y", "width", "height"))
            assert all(COORD.match(lab[k]) for k in ("x", "y", "width", "height"))
            assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= 256 and y + h <= 256
        else:
            assert lab["Target"] == "0" and [lab[k] for k in ("x", "y", "width", "height")] == [
                "",
                "",
                "",
                "",
            ]
            assert cls["class"] in ("Normal", "No Lung Opacity / Not Normal")
    assert len(per_patient) == 8
    for rows in per_patient.values():
        targets = {r["Target"] for r in rows}
        assert targets == {"0"} and len(rows) == 1 or targets == {"1"} and 1 <= len(rows) <= 2
    assert sum(rows[0]["Target"] == "1" for rows in per_patient.values()) == 4


def test_rsna_dicoms_are_jpeg_baseline_and_decode(synth_rsna: Path) -> None:
    truth = _truth(synth_rsna)
    for pid, entry in truth.items():
        path = synth_rsna / "stage_2_train_images" / f"{pid}.dcm"
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
        assert (ds.Modality, ds.PhotometricInterpretation, ds.BitsStored, ds.PatientID) == (
            "CR",
            "MONOCHROME2",
            8,
            pid,
        )
        assert ds.pixel_array.shape == (256, 256)
        got = dicom_to_uint8(path).astype(np.int16)
        diff = np.abs(got - np.rint(render_display(entry) * 255.0))
        assert diff.mean() < 3 and diff.max() <= 24


def test_rsna_same_seed_same_labels(tmp_path: Path) -> None:
    a = make_rsna(tmp_path / "a", n_images=4, seed=5, size=96)
    b = make_rsna(tmp_path / "b", n_images=4, seed=5, size=96)
    for name in ("stage_2_train_labels.csv", "stage_2_detailed_class_info.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    with pytest.raises(ValueError):
        make_rsna(tmp_path / "c", positive_fraction=-0.1)
