"""COCO → submission → original coordinates round trip, gate direction, YOLO export."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml

from convert.submission import parse_vinbig_submission, write_submission
from convert.vinbig import convert_vinbig
from convert.yolo import coco_to_yolo


@pytest.fixture(scope="module")
def small(real_vinbig, tmp_path_factory):
    """~60 real VinBigData label sets, labels only, 1024-px frame, raw radiologist boxes."""
    tmp = tmp_path_factory.mktemp("sub")
    with open(real_vinbig / "train.csv") as f:
        rows = list(csv.DictReader(f))
    ids = list(dict.fromkeys(r["image_id"] for r in rows))[:60]
    with open(tmp / "train.csv", "w", newline="") as g:
        w = csv.DictWriter(g, rows[0].keys())
        w.writeheader()
        w.writerows(r for r in rows if r["image_id"] in ids)
    ds = convert_vinbig(
        tmp / "train.csv",
        tmp / "coco",
        size_table=real_vinbig / "train_meta.csv",
        labels_only=True,
        annotators="raw",
        n_folds=2,
    )
    return tmp, ds, [r for r in rows if r["image_id"] in ids]


def test_round_trip_to_original_pixels(small, tmp_path):
    tmp, ds, rows = small
    results = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.5}
        for a in ds.annotations
    ]
    (tmp_path / "preds.json").write_text(json.dumps(results))
    out = write_submission(tmp / "coco" / "all.json", tmp_path / "preds.json", tmp_path / "sub.csv")
    sub = parse_vinbig_submission(out)
    assert set(sub) == {r["image_id"] for r in rows}
    for image_id in sub:
        truth = sorted(
            (int(r["class_id"]), *(float(r[k]) for k in ("x_min", "y_min", "x_max", "y_max")))
            for r in rows
            if r["image_id"] == image_id and r["class_id"] != "14"
        )
        got = sorted((c, x1, y1, x2, y2) for c, _, x1, y1, x2, y2 in sub[image_id] if c != 14)
        assert len(got) == len(truth)
        if truth:
            np.testing.assert_allclose(
                np.array(got), np.array(truth), atol=1.5
            )  # 1024-px rounding, 2 decimals
        else:
            assert sub[image_id] == [(14, 1.0, 0.0, 0.0, 1.0, 1.0)]


def test_gate_row_is_p_normal(small, tmp_path):
    tmp, ds, _ = small
    (tmp_path / "preds.json").write_text("[]")
    gate = [{"image_id": i, "p_abnormal": 0.8} for i in ds.image_ids]
    (tmp_path / "gate.json").write_text(json.dumps(gate))
    sub = parse_vinbig_submission(
        write_submission(
            tmp / "coco" / "all.json",
            tmp_path / "preds.json",
            tmp_path / "s.csv",
            gate_path=tmp_path / "gate.json",
        )
    )
    for preds in sub.values():
        assert preds == [(14, pytest.approx(0.2), 0.0, 0.0, 1.0, 1.0)]


def test_results_for_unknown_images_are_an_error(small, tmp_path):
    tmp, ds, _ = small
    (tmp_path / "p.json").write_text(
        json.dumps([{"image_id": 99999, "category_id": 0, "bbox": [0, 0, 1, 1], "score": 1}])
    )
    with pytest.raises(ValueError, match="99999"):
        write_submission(tmp / "coco" / "all.json", tmp_path / "p.json", tmp_path / "s.csv")
    assert not (tmp_path / "s.csv").exists()


def test_rsna_submission_format(tmp_path):
    from convert.rsna import convert_rsna

    (tmp_path / "labels.csv").write_text("patientId,x,y,width,height,Target\np1,,,,,0\np2,100,200,50,60,1\n")
    convert_rsna(tmp_path / "labels.csv", tmp_path / "coco", labels_only=True, size=512, n_folds=2)
    (tmp_path / "p.json").write_text(
        json.dumps([{"image_id": 1, "category_id": 0, "bbox": [50, 100, 25, 30], "score": 0.9}])
    )
    write_submission(tmp_path / "coco" / "all.json", tmp_path / "p.json", tmp_path / "s.csv", kind="rsna")
    lines = (tmp_path / "s.csv").read_text().splitlines()
    assert lines == ["patientId,PredictionString", "p1,", "p2,0.900000 100.0 200.0 50.0 60.0"]


def test_yolo_export(tmp_path):
    from PIL import Image

    root = tmp_path / "coco"
    (root / "images").mkdir(parents=True)
    for name in ("a", "b"):
        Image.new("L", (200, 100)).save(root / "images" / f"{name}.png")
    base = {"categories": [{"id": 3, "name": "Cardiomegaly"}, {"id": 8, "name": "Nodule/Mass"}]}
    train = {
        **base,
        "images": [{"id": 1, "file_name": "images/a.png", "width": 200, "height": 100}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 8, "bbox": [20, 10, 40, 20]}],
    }
    val = {
        **base,
        "images": [{"id": 2, "file_name": "images/b.png", "width": 200, "height": 100}],
        "annotations": [],
    }
    (root / "train.json").write_text(json.dumps(train))
    (root / "val.json").write_text(json.dumps(val))
    data = yaml.safe_load(coco_to_yolo(root / "train.json", root / "val.json", tmp_path / "yolo").read_text())
    assert data["names"] == {0: "Cardiomegaly", 1: "Nodule/Mass"} and data["category_ids"] == [3, 8]
    assert (
        tmp_path / "yolo" / "labels" / "train" / "a.txt"
    ).read_text() == "1 0.200000 0.200000 0.200000 0.200000\n"
    assert (tmp_path / "yolo" / "labels" / "val" / "b.txt").read_text() == ""
    assert (tmp_path / "yolo" / "images" / "val" / "b.png").exists()
