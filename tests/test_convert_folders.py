"""``python -m convert folders`` (one folder per class → multi-class dataset) and ``convert ids``."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convert.__main__ import main
from convert.common import ConversionError
from convert.folders import convert_folders

# class folder → (number of images, grey level, sub-folder); the layout of the COVID-19 radiography sets
TREE = {"COVID": (4, 40, "images"), "Normal": (5, 120, ""), "Viral Pneumonia": (3, 200, "images")}


def make_tree(root: Path, tree=TREE, suffix: str = ".png") -> Path:
    rng = np.random.default_rng(0)
    for name, (n, level, sub) in tree.items():
        folder = root / name / sub if sub else root / name
        folder.mkdir(parents=True)
        for i in range(n):
            w, h = int(rng.integers(40, 80)), int(rng.integers(40, 80))
            Image.fromarray(np.full((h, w), level, np.uint8)).save(folder / f"{name.split()[0]}-{i}{suffix}")
        if sub:  # lung masks beside the images are not read
            (root / name / "masks").mkdir()
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(
                root / name / "masks" / f"{name.split()[0]}-0.png"
            )
    return root


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    root = make_tree(tmp_path_factory.mktemp("tree") / "covid")
    out = root.parent / "coco"
    assert main(["folders", str(root), "--out", str(out), "--size", "32", "--folds", "2"]) == 0
    return out


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_folders_are_the_classes_and_every_image_is_labelled(converted):
    ds = load(converted / "all.json")
    assert ds["info"]["classification"] == {
        "task": "multiclass",
        "classes": ["COVID", "Normal", "Viral Pneumonia"],
        "category_ids": [None, None, None],
    }
    assert ds["categories"] == [] and ds["annotations"] == []
    counts = Counter(im["labels"][0] for im in ds["images"])
    assert counts == {name: n for name, (n, _, _) in TREE.items()}  # the masks were not read
    for im in ds["images"]:
        assert len(im["labels"]) == 1
        png = np.asarray(Image.open(converted / im["file_name"]))
        assert max(png.shape) == 32 and (im["width"], im["height"]) == png.shape[::-1]
        assert (im["orig_width"], im["orig_height"]) != (im["width"], im["height"])
        assert abs(int(png.mean()) - TREE[im["labels"][0]][1]) <= 1  # the class's own picture


def test_folds_are_stratified_by_class(converted):
    for k in range(2):
        val = Counter(im["labels"][0] for im in load(converted / f"fold{k}_val.json")["images"])
        for name, (n, _, _) in TREE.items():
            assert val[name] in (n // 2, (n + 1) // 2), (k, name, val)
    assert load(converted / "val.json") == load(converted / "fold0_val.json")


def test_classes_order_and_its_errors(tmp_path, capsys):
    root = make_tree(tmp_path / "covid", suffix=".jpg")
    order = ["Viral Pneumonia", "COVID", "Normal"]
    ds = convert_folders(root, tmp_path / "a", classes=order, size=0, n_folds=2)
    assert ds.info["classification"]["classes"] == order
    assert all(im["width"] == im["orig_width"] for im in ds.images)  # --size 0 keeps the size
    out = tmp_path / "b"
    assert main(["folders", str(root), "--out", str(out), "--classes", "COVID,Normal"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "['Viral Pneumonia'] are not in --classes" in err
    assert (
        main(
            [
                "folders",
                str(root),
                "--out",
                str(out),
                "--classes",
                "COVID",
                "Normal",
                "Flu",
                "Viral Pneumonia",
            ]
        )
        == 2
    )
    assert f"no folder {root / 'Flu'}" in capsys.readouterr().err
    assert not out.exists()


def test_bad_trees_are_refused_before_writing(tmp_path):
    root = make_tree(tmp_path / "dup", {"A": (2, 10, ""), "B": (2, 20, "")})
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(root / "B" / "A-0.png")
    with pytest.raises(ConversionError, match="A-0 is also"):
        convert_folders(root, tmp_path / "out", n_folds=2)
    empty = make_tree(tmp_path / "empty", {"A": (2, 10, "")})
    (empty / "B").mkdir()
    with pytest.raises(ConversionError, match="class 'B' has no PNG/JPEG/DICOM images"):
        convert_folders(empty, tmp_path / "out", n_folds=2)
    with pytest.raises(ConversionError, match="needs at least 5 images"):
        convert_folders(make_tree(tmp_path / "small", {"A": (2, 10, ""), "B": (2, 9, "")}), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_ids_lists_ids_files_and_labels(converted, tmp_path, capsys):
    assert main(["ids", str(converted / "all.json"), "--limit", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split("\t") == ["image_id", "file_name", "source_id", "labels"]
    ds = load(converted / "all.json")
    first = sorted(ds["images"], key=lambda im: im["id"])[:2]
    assert [ln.split("\t") for ln in lines[1:3]] == [
        [str(im["id"]), im["file_name"], im["source_id"], im["labels"][0]] for im in first
    ]
    assert lines[3] == f"# the first 2 of {len(ds['images'])} images (--limit 2)"
    # a detection dataset: labels from the boxes, "normal" without; an unlabelled set: no labels column
    images = [
        {"id": i, "file_name": f"{i}.png", "width": 9, "height": 9, "source_id": f"s{i}"} for i in (4, 2)
    ]
    boxes = [{"id": 1, "image_id": 4, "category_id": 3, "bbox": [1, 1, 2, 2]}]
    boxes.append({"id": 2, "image_id": 4, "category_id": 0, "bbox": [1, 1, 2, 2]})
    cats = [{"id": 0, "name": "Aortic enlargement"}, {"id": 3, "name": "Cardiomegaly"}]
    det = tmp_path / "det.json"
    det.write_text(json.dumps({"images": images, "annotations": boxes, "categories": cats}))
    assert main(["ids", str(det)]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [
        "2\t2.png\ts2\tnormal",
        "4\t4.png\ts4\tAortic enlargement, Cardiomegaly",
    ]
    test = tmp_path / "test.json"
    test.write_text(
        json.dumps({"images": images, "annotations": [], "categories": cats, "info": {"labelled": False}})
    )
    assert main(["ids", str(test)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "image_id\tfile_name\tsource_id",
        "2\t2.png\ts2",
        "4\t4.png\ts4",
    ]
    assert main(["ids", str(test), "--limit", "0"]) == 2
    assert capsys.readouterr().err == "error: --limit must be >= 1, got 0\n"
