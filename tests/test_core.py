"""core: Detections validation, COCO results round trip, dataset validation errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.coco import CocoDataset
from core.detections import Detections, from_coco_results, to_coco_results
from core.io import atomic_open


def test_detections_casts_and_freezes():
    d = Detections([[1, 2, 3, 4]], [0.5], [3])
    assert d.boxes.dtype == np.float32 and d.scores.dtype == np.float32 and d.labels.dtype == np.int64
    assert d.boxes.shape == (1, 4) and len(d) == 1
    with pytest.raises(ValueError):
        d.boxes[0, 0] = 9  # read-only
    assert len(Detections.empty()) == 0 and Detections.empty().boxes.shape == (0, 4)


@pytest.mark.parametrize(
    ("boxes", "scores", "labels", "match"),
    [
        ([[0, 0, 1, 1]], [0.5, 0.4], [1], "expected scores and labels"),
        ([[5, 0, 1, 1]], [0.5], [1], "x2 >= x1"),
        ([[0, 0, 1, np.nan]], [0.5], [1], "finite"),
        ([[0, 0, 1, 1]], [0.5], [1.5], "integers"),
        ([[0, 0, 1, 1, 2]], [0.5], [1], r"\(N, 4\)"),
    ],
)
def test_detections_rejects_bad_columns(boxes, scores, labels, match):
    with pytest.raises(ValueError, match=match):
        Detections(np.array(boxes, dtype=float), scores, labels)


def test_coco_results_round_trip():
    d = {7: Detections([[10, 20, 30, 60], [0, 0, 5, 5]], [0.9, 0.1], [2, 0]), 8: Detections.empty()}
    rows = to_coco_results(d)
    assert rows[0] == {"image_id": 7, "category_id": 2, "bbox": [10.0, 20.0, 20.0, 40.0], "score": 0.9}
    back = from_coco_results(rows, image_ids=[7, 8, 9])
    assert set(back) == {7, 8, 9} and len(back[8]) == 0 and len(back[9]) == 0
    np.testing.assert_allclose(back[7].boxes, d[7].boxes)
    np.testing.assert_array_equal(back[7].labels, [2, 0])


def test_coco_results_error_names_entry():
    with pytest.raises(ValueError, match="entry 1"):
        from_coco_results(
            [{"image_id": 1, "category_id": 0, "bbox": [0, 0, 1, 1], "score": 1}, {"image_id": 1}]
        )


def _dataset_dict():
    return {
        "images": [
            {
                "id": 1,
                "file_name": "images/a.png",
                "width": 100,
                "height": 80,
                "orig_width": 1000,
                "orig_height": 800,
                "source_id": "a",
            }
        ],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 0, "bbox": [10, 10, 20, 20]}],
        "categories": [{"id": 0, "name": "Aortic enlargement"}],
    }


def test_dataset_load_write_round_trip(tmp_path):
    p = tmp_path / "d.json"
    p.write_text(json.dumps(_dataset_dict()))
    ds = CocoDataset.load(p)
    assert ds.image_path(1) == (tmp_path / "images" / "a.png").resolve()
    gt = ds.ground_truth(1)
    np.testing.assert_allclose(gt.boxes, [[10, 10, 30, 30]])
    ds.write(tmp_path / "e.json")
    assert json.loads((tmp_path / "e.json").read_text())["annotations"] == _dataset_dict()["annotations"]


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d["annotations"][0].update(image_id=5), "annotation 1 refers to image 5"),
        (lambda d: d["annotations"][0].update(category_id=3), "annotation 1 .*category 3"),
        (lambda d: d["annotations"][0].update(bbox=[90, 10, 20, 20]), "annotation 1 .*outside"),
        (lambda d: d["images"].append(dict(d["images"][0])), "image id 1 appears twice"),
        (lambda d: d["images"][0].pop("width"), r"images\[0\] lacks \['width'\]"),
    ],
)
def test_dataset_validation_names_culprit(tmp_path, mutate, match):
    d = _dataset_dict()
    mutate(d)
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=match) as e:
        CocoDataset.load(p)
    assert str(p) in str(e.value)


def test_dataset_missing_or_malformed_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        CocoDataset.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json"):
        CocoDataset.load(tmp_path / "bad.json")


def test_atomic_open_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_open(target) as f:
            f.write("half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_as_written_is_bit_for_bit_what_a_results_file_reads_back(tmp_path):
    """The sweep scores `as_written`; the leaderboard scores the file: they must hold the same numbers."""
    from core.io import read_json, write_json

    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 900, (500, 2))
    wh = rng.uniform(0, 100, (500, 2))
    d = Detections(np.c_[xy, xy + wh], rng.uniform(0, 1, 500), rng.integers(0, 14, 500))
    dets = {1: d, 2: Detections.empty(), 3: d.select(slice(0, 7))}
    path = write_json(tmp_path / "r.json", to_coco_results(dets))
    back = from_coco_results(read_json(path), dets)
    for i, orig in dets.items():
        mem = orig.as_written()
        np.testing.assert_array_equal(back[i].boxes, mem.boxes)
        np.testing.assert_array_equal(back[i].scores, mem.scores)
        np.testing.assert_array_equal(back[i].labels, mem.labels)
    assert not np.array_equal(d.as_written().boxes, d.boxes)  # the rounding is real
    assert not np.array_equal(d.as_written().scores, d.scores)


# --------------------------------------------------------------------------- datasets by content


def _tiny_dataset(path, note: str = "") -> CocoDataset:
    images = [{"id": 1, "file_name": "a.png", "width": 50, "height": 40}]
    ds = CocoDataset(images, [], [{"id": 0, "name": "Aortic enlargement"}], info={"note": note} if note else {})
    ds.write(path)
    return CocoDataset.load(path)


def test_file_sha256_is_by_content_and_follows_rewrites(tmp_path):
    import hashlib

    from core.io import file_sha256

    a, b = tmp_path / "a.bin", tmp_path / "sub" / "b.bin"
    a.write_bytes(b"one")
    b.parent.mkdir()
    b.write_bytes(b"one")
    assert file_sha256(a) == file_sha256(b) == hashlib.sha256(b"one").hexdigest()
    a.write_bytes(b"two, longer")  # rewritten in place: hashed again
    assert file_sha256(a) == hashlib.sha256(b"two, longer").hexdigest()
    with pytest.raises(FileNotFoundError, match="nope.bin: no such file"):
        file_sha256(tmp_path / "nope.bin")


def test_sidecars_record_the_dataset_and_readers_compare_content(tmp_path, monkeypatch, caplog):
    from core.io import file_sha256, write_json
    from core.predictions import (
        meta_path,
        read_gate,
        read_meta,
        read_predictions,
        write_gate,
        write_predictions,
    )

    ds = _tiny_dataset(tmp_path / "data" / "val.json")
    dets = {1: Detections([[1, 2, 10, 20]], [0.5], [0])}
    monkeypatch.chdir(tmp_path)
    stale = {"dataset_path": "/elsewhere/x.json", "dataset_sha256": "0" * 64}  # never copied from another sidecar
    p = write_predictions(tmp_path / "preds" / "m.json", dets, {"dataset": "data/val.json", **stale})
    g = write_gate(tmp_path / "preds" / "gate.json", {1: 0.7}, {"dataset": "data/val.json"})
    meta = read_meta(p)
    assert meta["dataset"] == "data/val.json" and meta["dataset_path"] == str(tmp_path / "data" / "val.json")
    assert meta["dataset_sha256"] == file_sha256(tmp_path / "data" / "val.json") == read_meta(g)["dataset_sha256"]
    copy = tmp_path / "copy" / "val.json"
    copy.parent.mkdir()
    copy.write_bytes((tmp_path / "data" / "val.json").read_bytes())
    monkeypatch.chdir(tmp_path / "copy")  # another folder, another spelling, a copy: all the same dataset
    for where in ("val.json", str(tmp_path / "data" / "val.json"), "../data/./val.json"):
        assert len(read_predictions(p, CocoDataset.load(where))[1]) == 1 and read_gate(g, CocoDataset.load(where))
    other = _tiny_dataset(tmp_path / "other.json", note="another conversion")  # same ids, other bytes
    with pytest.raises(ValueError, match=r"m\.json: its sidecar .* says it was predicted on data/val\.json .*"
                       r"a different dataset from .*other\.json"):  # fmt: skip
        read_predictions(p, other)
    with pytest.raises(ValueError, match="gate.json: its sidecar"):
        read_gate(g, other)
    # an older sidecar (no fingerprint) whose relative path no longer resolves from here: a warning only
    old = {k: v for k, v in read_meta(p).items() if k not in ("dataset_path", "dataset_sha256")}
    write_json(meta_path(p), {**old, "dataset": "gone/val.json"})
    with caplog.at_level("WARNING", logger="core.predictions"):
        assert read_predictions(p, other)
    assert "cannot check it against" in caplog.text
    write_json(meta_path(p), {**old, "dataset": "other.json"})  # found from the results folder's parent
    with pytest.raises(ValueError, match=r"says it was predicted on other\.json"):
        read_predictions(p, ds)
    assert read_predictions(p, other)


def test_one_list_syntax():
    import argparse

    from core.cli import add_list_option, number, split_values

    assert split_values(["2,1", "3"], number) == (2.0, 1.0, 3.0)
    with pytest.raises(ValueError, match="'x' is not a number"):
        split_values(["1,x"], number)
    with pytest.raises(ValueError, match="empty value in '1,,2'"):
        split_values(["1,,2"], number)
    with pytest.raises(ValueError, match="'wbx' is not one of wbf, nms"):
        split_values(["wbx"], allowed=("wbf", "nms"))
    p = argparse.ArgumentParser(prog="x")
    add_list_option(p, "--methods", allowed=("wbf", "nms"), default=("wbf",))
    add_list_option(p, "--w", item=number)
    add_list_option(p, "--sets", item=number, sets=True)
    p.add_argument("--after")
    a = p.parse_args(["--methods", "nms", "wbf", "--w", "2", "1", "--w", "3", "--sets", "1,2", "--sets", "2", "1",
                      "--after", "z"])  # fmt: skip
    assert a.methods == ("nms", "wbf") and a.w == (2.0, 1.0, 3.0) and a.sets == ((1.0, 2.0), (2.0, 1.0))
    assert p.parse_args([]).methods == ("wbf",) and p.parse_args(["--methods", "nms"]).methods == ("nms",)
    assert p.parse_args(["--methods", "wbf,nms"]).methods == p.parse_args(["--methods", "wbf", "nms"]).methods
