"""``python -m convert nih`` on the real NIH ChestX-ray14 files: counts, patient-wise folds, boxes, errors.

The expected numbers are computed here independently with pandas from the same CSVs, and checked
against the published figures (112,120 images of 30,805 patients; 984 boxes).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from convert.__main__ import main
from convert.common import ConversionError
from convert.nih import NIH_CLASSES, NIH_FINDINGS, convert_nih

NIH = "nih_chestxray14"


@pytest.fixture(scope="module")
def nih_csvs(real_dir: Path) -> tuple[Path, Path]:
    """The shipped ``Data_Entry_2017_v2020.csv`` and ``BBox_List_2017.csv``, unpacked."""
    return real_dir / NIH / "Data_Entry_2017_v2020.csv", real_dir / NIH / "BBox_List_2017.csv"


@pytest.fixture(scope="module")
def tables(nih_csvs) -> tuple[pd.DataFrame, pd.DataFrame]:
    entry, bbox = nih_csvs
    boxes = pd.read_csv(bbox).iloc[:, :6]
    boxes.columns = ["image", "label", "x", "y", "w", "h"]
    boxes["label"] = boxes["label"].replace({"Infiltrate": "Infiltration"})
    return pd.read_csv(entry), boxes


@pytest.fixture(scope="module")
def labels_only(nih_csvs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("nih") / "coco"
    convert_nih(nih_csvs[0], out, bbox_csv=nih_csvs[1], labels_only=True, n_folds=2, seed=0)
    return out


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_every_listed_image_patient_label_and_box_is_converted(tables, labels_only):
    entry, boxes = tables
    ds = load(labels_only / "all.json")
    images = ds["images"]
    assert len(images) == len(entry) == 112_120  # the published figures
    assert len({im["patient_id"] for im in images}) == entry["Patient ID"].nunique() == 30_805
    expected = entry["Finding Labels"].str.split("|").explode().value_counts().to_dict()
    got: dict[str, int] = {}
    for im in images:
        for name in im["labels"]:
            got[name] = got.get(name, 0) + 1
    assert got == expected and set(got) == set(NIH_CLASSES)
    assert len(ds["annotations"]) == len(boxes) == 984
    names = {c["id"]: c["name"] for c in ds["categories"]}
    per_class = pd.Series([names[a["category_id"]] for a in ds["annotations"]]).value_counts().to_dict()
    assert per_class == boxes["label"].value_counts().to_dict()
    assert list(names.values()) == list(NIH_FINDINGS[:8])
    cls = ds["info"]["classification"]
    assert cls["task"] == "multilabel" and cls["classes"] == list(NIH_CLASSES)
    assert cls["category_ids"] == [*range(8), *[None] * 7]
    # ids are the CSV's row positions; each image's labels are its row's
    by_id = {im["id"]: im for im in images}
    for k in (0, 1, 50_000, 112_119):
        row = entry.iloc[k]
        assert by_id[k]["source_id"] == row["Image Index"].removesuffix(".png")
        assert set(by_id[k]["labels"]) == set(row["Finding Labels"].split("|"))
        assert by_id[k]["orig_width"] == row["OriginalImage[Width"]


def test_folds_are_patient_wise(labels_only):
    everything = {im["id"] for im in load(labels_only / "all.json")["images"]}
    for k in range(2):
        train, val = (load(labels_only / f"fold{k}_{s}.json")["images"] for s in ("train", "val"))
        assert {im["id"] for im in train} | {im["id"] for im in val} == everything
        assert not {im["patient_id"] for im in train} & {im["patient_id"] for im in val}
        assert all(im["fold"] == k for im in val)
    assert load(labels_only / "val.json")["images"] == load(labels_only / "fold0_val.json")["images"]
    # stratified: each finding's images split about evenly between the two folds
    val = load(labels_only / "fold0_val.json")["images"]
    train = load(labels_only / "fold0_train.json")["images"]
    for name in ("Hernia", "Pneumonia", "No Finding"):
        a = sum(name in im["labels"] for im in val)
        b = sum(name in im["labels"] for im in train)
        assert abs(a - b) / (a + b) < 0.2, (name, a, b)


def _fake_pngs(folder: Path, keys: list[str], side: int = 64) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k in keys:
        Image.fromarray(rng.integers(0, 256, (side, side), dtype=np.uint8)).save(folder / f"{k}.png")


@pytest.fixture(scope="module")
def subset_keys(tables) -> list[str]:
    """Eight images with boxes (several on one image) and four without, of at least 5 patients."""
    entry, boxes = tables
    with_boxes = boxes["image"].value_counts()
    keys = list(with_boxes.index[:4]) + list(with_boxes.index[-4:]) + list(entry["Image Index"][:4])
    return sorted({k.removesuffix(".png") for k in keys})


def test_present_images_are_converted_and_boxes_scaled(nih_csvs, tables, subset_keys, tmp_path):
    entry, boxes = tables
    _fake_pngs(tmp_path / "images", subset_keys)
    out = tmp_path / "coco"
    ds = convert_nih(
        nih_csvs[0], out, images_dir=tmp_path / "images", bbox_csv=nih_csvs[1], size=32, n_folds=2
    )
    assert sorted(im["source_id"] for im in ds.images) == subset_keys
    assert ds.info["images_missing"] == len(entry) - len(subset_keys)
    assert all((im["width"], im["height"]) == (32, 32) for im in ds.images)
    assert all(Image.open(out / im["file_name"]).size == (32, 32) for im in ds.images)
    mine = boxes[boxes["image"].str.removesuffix(".png").isin(subset_keys)]
    assert len(ds.annotations) == len(mine) > len({*mine["image"]})  # one image has several boxes
    key_of = {im["id"]: im["source_id"] for im in ds.images}
    got = sorted((key_of[a["image_id"]], *a["bbox"]) for a in ds.annotations)
    s = 32 / 1024
    want = sorted(
        (
            r.image.removesuffix(".png"),
            round(r.x * s, 2),
            round(r.y * s, 2),
            round(r.w * s, 2),
            round(r.h * s, 2),
        )
        for r in mine.itertuples()
    )
    assert [g[0] for g in got] == [w[0] for w in want]
    np.testing.assert_allclose([g[1:] for g in got], [w[1:] for w in want], atol=0.011)


def test_require_all_refuses_missing_images_before_writing(nih_csvs, subset_keys, tmp_path, capsys):
    _fake_pngs(tmp_path / "images", subset_keys[:3])
    out = tmp_path / "coco"
    args = ["nih", "--csv", str(nih_csvs[0]), "--images", str(tmp_path / "images"), "--out", str(out)]
    assert main([*args, "--require-all"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ")
    assert f"{112_120 - 3} of the 112120 images" in err and "--require-all" not in err
    assert not out.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    few = _head(nih_csvs[0], tmp_path / "entry.csv", 20, [])
    with pytest.raises(ConversionError, match="20 of the 20 images .* holds none of the listed images"):
        convert_nih(few, out, images_dir=empty)
    assert not out.exists()


def _head(src: Path, dst: Path, n: int, extra: list[str]) -> Path:
    lines = src.read_text().splitlines()[: n + 1] + extra
    dst.write_text("\n".join(lines) + "\n")
    return dst


@pytest.mark.parametrize(
    ("which", "row", "match"),
    [
        ("entry", "00000099_000.png,Cardiomegaly|Flu,0,99,50,M,PA,2048,2048,0.14,0.14", "unknown finding"),
        ("entry", "00000099_000.png,No Finding|Mass,0,99,50,M,PA,2048,2048,0.14,0.14", "together with"),
        ("entry", "00000099_000.png,Mass,0,x9,50,M,PA,2048,2048,0.14,0.14", "not a positive integer"),
        ("entry", "00000099_000.png,Mass,0,99,50,M,PA,2048", "fields; the header has 11"),
        ("entry", "00000001_000.png,Mass,0,1,50,M,PA,2048,2048,0.14,0.14", "already on row 2"),
        ("bbox", "00000001_000.png,Atelectasis,1000,10,50,50", "leaves the 1024x1024 frame"),
        ("bbox", "00000001_000.png,Hernia,10,10,50,50", "has no box class"),
        ("bbox", "00000001_000.png,Mass,10,10,-5,50", "empty or not finite"),
        ("bbox", "99999999_000.png,Mass,10,10,50,50", "not in the Data_Entry file"),
    ],
)
def test_bad_rows_are_named_with_file_and_row(nih_csvs, tmp_path, capsys, which, row, match):
    entry = _head(nih_csvs[0], tmp_path / "entry.csv", 10, [row] if which == "entry" else [])
    bbox = _head(nih_csvs[1], tmp_path / "bbox.csv", 0, [row] if which == "bbox" else [])
    out = tmp_path / "coco"
    assert main(["nih", "--csv", str(entry), "--bbox", str(bbox), "--labels-only", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    bad = entry if which == "entry" else bbox
    assert err.startswith("error: ") and match in err and f"{bad}, row " in err
    assert not out.exists()
