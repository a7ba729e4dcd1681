"""Results files' columnar companion (``NAME.npz``): the same rows as the JSON, used only while it mirrors it;
and the vectorised grouping of COCO results rows into per-image `Detections`."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from core.classes import VINBIG_CLASSES, coco_categories
from core.coco import CocoDataset
from core.detections import Detections, _from_coco_rows, from_coco_results
from core.io import write_json
from core.predictions import columnar_path, read_columnar, read_predictions, write_predictions


def make_dataset(n: int = 30) -> CocoDataset:
    images = [{"id": 100 + i, "file_name": f"{i}.png", "width": 300, "height": 200} for i in range(n)]
    return CocoDataset(images, [], coco_categories(VINBIG_CLASSES))


def make_dets(ds: CocoDataset, seed: int = 0) -> dict[int, Detections]:
    rng = np.random.default_rng(seed)
    out = {}
    for i in ds.image_ids:
        n = int(rng.integers(0, 6))  # some images have none
        xy = rng.uniform(0, 150, (n, 2))
        b = np.concatenate([xy, xy + rng.uniform(1, 50, (n, 2))], 1)
        out[i] = Detections(b.astype(np.float32), rng.random(n).astype(np.float32), rng.integers(0, 14, n))
    return out


def assert_same(a: dict[int, Detections], b: dict[int, Detections]) -> None:
    assert list(a) == list(b)
    for i in a:
        for k in ("boxes", "scores", "labels"):
            x, y = getattr(a[i], k), getattr(b[i], k)
            assert x.dtype == y.dtype and x.shape == y.shape
            np.testing.assert_array_equal(x, y)


def test_companion_holds_the_rows_of_the_json(tmp_path):
    ds = make_dataset()
    path = write_predictions(tmp_path / "m.json", make_dets(ds), {"dataset": "d.json"})
    assert columnar_path(path) == tmp_path / "m.npz" and columnar_path(path).is_file()
    rows = json.loads(path.read_text())
    image_id, category_id, bbox, score = read_columnar(path)
    assert len(rows) == len(image_id) > 20
    assert image_id.tolist() == [r["image_id"] for r in rows]
    assert category_id.tolist() == [r["category_id"] for r in rows]
    assert bbox.tolist() == [r["bbox"] for r in rows]  # the very floats JSON holds
    assert score.tolist() == [r["score"] for r in rows]


def test_reading_the_companion_equals_reading_the_json(tmp_path):
    ds = make_dataset()
    path = write_predictions(tmp_path / "m.json", make_dets(ds), {})
    assert_same(read_predictions(path, ds), read_predictions(path, ds, columnar=False))


def test_a_stale_companion_is_ignored(tmp_path):
    ds = make_dataset()
    path = write_predictions(tmp_path / "m.json", make_dets(ds, 0), {})
    rows = json.loads(path.read_text())
    rows[0]["score"] = 0.123456 if rows[0]["score"] != 0.123456 else 0.654321  # same length, other content
    text = json.dumps(rows)
    assert len(text) == path.stat().st_size
    path.write_text(text)
    assert read_columnar(path) is None
    got = read_predictions(path, ds)
    first = got[rows[0]["image_id"]]
    assert np.float32(rows[0]["score"]) in first.scores


def test_a_companion_of_another_file_or_unreadable_is_ignored(tmp_path):
    ds = make_dataset()
    a = write_predictions(tmp_path / "a.json", make_dets(ds, 1), {})
    b = write_predictions(tmp_path / "b.json", make_dets(ds, 2), {})
    shutil.copy(columnar_path(a), columnar_path(b))  # a's columns beside b
    assert read_columnar(b) is None
    assert_same(read_predictions(b, ds), read_predictions(b, ds, columnar=False))
    columnar_path(b).write_bytes(b"not a zip")
    assert read_columnar(b) is None
    np.savez(columnar_path(b), image_id=np.array([object()], dtype=object))  # a pickle: never loaded
    assert read_columnar(b) is None
    assert_same(read_predictions(b, ds), read_predictions(b, ds, columnar=False))


def test_copying_both_files_keeps_the_companion(tmp_path):
    ds = make_dataset()
    a = write_predictions(tmp_path / "a.json", make_dets(ds), {})
    (tmp_path / "copy").mkdir()
    for p in (a, columnar_path(a)):
        shutil.copyfile(p, tmp_path / "copy" / p.name)  # new inode and times, same bytes
    assert read_columnar(tmp_path / "copy" / "a.json") is not None


def test_ids_the_dataset_lacks_are_named_from_the_companion_too(tmp_path):
    ds = make_dataset()
    path = write_predictions(tmp_path / "m.json", {**make_dets(ds), 999: make_dets(ds)[101]}, {})
    assert read_columnar(path) is not None
    for columnar in (True, False):
        with pytest.raises(ValueError, match=r"m.json: image ids \[999\] are not in"):
            read_predictions(path, ds, columnar=columnar)


def test_grouping_rows_equals_the_row_by_row_reading():
    rng = np.random.default_rng(5)
    rows = []
    for _ in range(300):
        x, y, w, h = rng.uniform(0, 100, 4).round(2).tolist()
        rows.append({"image_id": int(rng.choice([3, 1, 7, 2])), "category_id": int(rng.integers(0, 5)),
                     "bbox": [x, y, w, h], "score": float(rng.random())})  # fmt: skip
    rows[5]["image_id"], rows[6]["category_id"], rows[7]["bbox"] = 2.0, "4", ["1", 2, 3, 4]  # int() and float() rules
    for ids in (None, [7, 5, 3]):  # listed ids first (5 has no rows), then others as they first appear
        fast, slow = from_coco_results(rows, ids), _from_coco_rows(rows, ids)
        assert_same(fast, slow)
    assert list(from_coco_results(rows, [7, 5, 3]))[:3] == [7, 5, 3]


@pytest.mark.parametrize(
    "change,message",
    [
        ({"bbox": [1, 2, -3, 4]}, "results entry 4 has a negative width or height: [1, 2, -3, 4]"),
        ({"score": None}, "results entry 4 is not a COCO detection"),
        ({"image_id": "12.0"}, "results entry 4 is not a COCO detection"),
        ({"bbox": [1, 2, 3]}, "results entry 4 is not a COCO detection"),
    ],
)
def test_a_bad_row_is_named_as_before(change, message):
    rows = [{"image_id": 1, "category_id": 0, "bbox": [1, 2, 3, 4], "score": 0.5} for _ in range(8)]
    rows[4] = {**rows[4], **change}
    with pytest.raises(ValueError) as e:
        from_coco_results(rows)
    assert message in str(e.value)


def test_a_json_without_companion_still_reads(tmp_path):
    ds = make_dataset()
    path = write_predictions(tmp_path / "m.json", make_dets(ds), {})
    expected = read_predictions(path, ds)
    os.remove(columnar_path(path))
    assert_same(read_predictions(path, ds), expected)
    write_json(tmp_path / "other.json", json.loads(path.read_text()))  # written by hand: no companion
    assert_same(read_predictions(tmp_path / "other.json", ds), expected)
