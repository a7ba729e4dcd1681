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
