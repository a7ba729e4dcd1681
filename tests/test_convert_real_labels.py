"""The real label files convert to the competitions' published counts."""

from __future__ import annotations

import csv
from collections import Counter

import pytest

from convert.rsna import convert_rsna
from convert.vinbig import convert_vinbig
from core.classes import VINBIG_CLASSES
from core.coco import CocoDataset

# VinDr-CXR / Kaggle train.csv box counts per class (all three radiologists' boxes).
PUBLISHED_VINBIG = {
    "Aortic enlargement": 7162,
    "Atelectasis": 279,
    "Calcification": 960,
    "Cardiomegaly": 5427,
    "Consolidation": 556,
    "ILD": 1000,
    "Infiltration": 1247,
    "Lung Opacity": 2483,
    "Nodule/Mass": 2580,
    "Other lesion": 2203,
    "Pleural effusion": 2476,
    "Pleural thickening": 4842,
    "Pneumothorax": 226,
    "Pulmonary fibrosis": 4655,
}


@pytest.fixture(scope="module")
def vinbig_raw(real_vinbig, tmp_path_factory):
    out = tmp_path_factory.mktemp("vinbig_raw")
    ds = convert_vinbig(
        real_vinbig / "train.csv",
        out,
        size_table=real_vinbig / "train_meta.csv",
        labels_only=True,
        annotators="raw",
        size=1024,
    )
    return out, ds


def test_vinbig_raw_reproduces_published_counts(vinbig_raw):
    out, ds = vinbig_raw
    assert len(ds.images) == 15_000
    assert sum(ds.is_normal(i) for i in ds.image_ids) == 10_606
    assert len(ds.annotations) == 36_096
    names = ds.category_names
    assert {names[c]: n for c, n in ds.class_counts().items()} == PUBLISHED_VINBIG
    assert all("rad_id" in a for a in ds.annotations)
    assert {a["rad_id"] for a in ds.annotations} <= {f"R{i}" for i in range(1, 18)}
    assert sorted(ds.category_ids) == list(range(14)) and names[8] == "Nodule/Mass"


def test_vinbig_boxes_scaled_into_the_written_frame(vinbig_raw, real_vinbig):
    """Boxes are in the 1024-px frame (longer side), and scale back to the CSV's original pixels."""
    out, ds = vinbig_raw
    rows = {}
    with open(real_vinbig / "train.csv") as f:
        for r in csv.DictReader(f):
            if r["class_id"] != "14":
                rows.setdefault((r["image_id"], r["rad_id"], int(r["class_id"])), []).append(
                    [float(r[k]) for k in ("x_min", "y_min", "x_max", "y_max")]
                )
    checked = 0
    for im in ds.images[:400]:
        assert max(im["width"], im["height"]) == 1024
        sx, sy = im["orig_width"] / im["width"], im["orig_height"] / im["height"]
        for a in ds.annotations_of(im["id"]):
            x, y, w, h = a["bbox"]
            back = [x * sx, y * sy, (x + w) * sx, (y + h) * sy]
            truth = rows[(im["source_id"], a["rad_id"], a["category_id"])]
            assert (
                min(max(abs(p - q) for p, q in zip(back, t, strict=True)) for t in truth)
                < 0.02 * max(sx, sy) + 1e-6
            )
            checked += 1
    assert checked > 500


def test_vinbig_folds_are_stratified(vinbig_raw):
    out, ds = vinbig_raw
    folds = Counter(im["fold"] for im in ds.images)
    assert sorted(folds) == [0, 1, 2, 3, 4] and max(folds.values()) - min(folds.values()) <= 2
    fold_of = {im["id"]: im["fold"] for im in ds.images}
    for cid in VINBIG_CLASSES:
        per_fold = Counter(
            fold_of[i] for i in {a["image_id"] for a in ds.annotations if a["category_id"] == cid}
        )
        n = sum(per_fold.values())
        assert max(per_fold.values()) - min(per_fold.values()) <= max(2, 0.05 * n), (cid, per_fold)
    train, val = CocoDataset.load(out / "train.json"), CocoDataset.load(out / "val.json")
    assert not set(train.image_ids) & set(val.image_ids)
    assert len(train.images) + len(val.images) == 15_000
    assert all(im["fold"] == 0 for im in val.images)


def test_vinbig_wbf_fuses_the_three_radiologists(real_vinbig, tmp_path):
    ds = convert_vinbig(
        real_vinbig / "train.csv",
        tmp_path,
        size_table=real_vinbig / "train_meta.csv",
        labels_only=True,
        annotators="wbf",
        n_folds=5,
    )
    assert len(ds.images) == 15_000 and sum(ds.is_normal(i) for i in ds.image_ids) == 10_606
    # fused: fewer boxes than the 36,096 raw ones, but at least one per image and class present
    assert 4_394 < len(ds.annotations) < 36_096
    assert all("rad_id" not in a for a in ds.annotations[:100])


def test_rsna_reproduces_published_counts(real_dir, tmp_path):
    rsna = real_dir / "rsna_pneumonia"
    ds = convert_rsna(
        rsna / "stage_2_train_labels.csv",
        tmp_path,
        labels_only=True,
        class_info=rsna / "stage_2_detailed_class_info_restored.csv",
    )
    assert len(ds.images) == 26_684
    assert len(ds.annotations) == 9_555
    assert ds.category_names == {0: "Lung Opacity"}
    assert sum(not ds.is_normal(i) for i in ds.image_ids) == 6_012
    assert all(im["width"] == im["height"] == 1024 for im in ds.images)
