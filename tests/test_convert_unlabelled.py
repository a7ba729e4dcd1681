"""Unlabelled images (a test set) → COCO with every image and no annotations; the id list checks both ways."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from convert.__main__ import main as convert_main
from convert.common import ConversionError
from convert.rsna import convert_rsna
from convert.submission import SubmissionError, parse_vinbig_submission, write_submission
from convert.vinbig import convert_vinbig
from core.coco import CocoDataset
from core.detections import Detections
from core.predictions import write_predictions
from tests.conftest_paths import VINBIG_TEST_IDS, VINBIG_TEST_META, open_text


def _csv_column(path, column):
    with open_text(path) as f:
        return [r[column] for r in csv.DictReader(f)]


def _write_ids(path, column, ids):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([column, "PredictionString"])
        w.writerows([i, "14 1 0 0 1 1"] for i in ids)
    return path


@pytest.fixture(scope="module")
def real_test(real_vinbig, tmp_path_factory):
    """The 3,000 real VinBigData test ids, labels only, sized by test_meta.csv (1024-px frame)."""
    out = tmp_path_factory.mktemp("vinbig_test") / "coco"
    ds = convert_vinbig(
        None,
        out,
        ids=real_vinbig / "sample_submission.csv",
        size_table=real_vinbig / "test_meta.csv",
        labels_only=True,
    )
    return out, ds


def test_real_test_ids_labels_only(real_test):
    out, ds = real_test
    ids = _csv_column(VINBIG_TEST_IDS, "image_id")
    assert len(ids) == 3000 and len(set(ids)) == 3000
    loaded = CocoDataset.load(out / "all.json")
    assert len(loaded.images) == 3000 and loaded.annotations == []
    assert sorted(im["source_id"] for im in loaded.images) == sorted(ids)
    with open_text(VINBIG_TEST_META) as f:
        meta = {r["image_id"]: (int(r["dim1"]), int(r["dim0"])) for r in csv.DictReader(f)}
    for im in loaded.images:
        assert (im["orig_width"], im["orig_height"]) == meta[im["source_id"]]
        assert max(im["width"], im["height"]) == 1024
    assert loaded.info["split"] == "test" and loaded.info["labelled"] is False
    assert not (out / "train.json").exists() and not list(out.glob("fold*.json"))


def test_submission_emits_exactly_the_test_ids(real_test, real_vinbig, tmp_path):
    out, ds = real_test
    loaded = CocoDataset.load(out / "all.json")
    # one box on the first image, in the 1024-px frame; the rest empty
    im = loaded.images[0]
    dets = {im["id"]: Detections(np.array([[100, 200, 300, 400]], np.float32), np.array([0.9]), np.array([3]))}
    preds = write_predictions(tmp_path / "p.json", dets, {"name": "m", "kind": "detector"})
    sub = write_submission(
        out / "all.json", preds, tmp_path / "sub.csv", ids=real_vinbig / "sample_submission.csv"
    )
    rows = parse_vinbig_submission(sub)
    ids = _csv_column(VINBIG_TEST_IDS, "image_id")
    with open(sub, newline="") as f:
        assert [r["image_id"] for r in csv.DictReader(f)] == ids  # one row per id, the list's order
    assert len(rows) == 3000
    first = rows[im["source_id"]]
    sx, sy = im["orig_width"] / im["width"], im["orig_height"] / im["height"]
    assert first[0][0] == 3 and first[0][1] == pytest.approx(0.9)
    assert first[0][2:] == pytest.approx((100 * sx, 200 * sy, 300 * sx, 400 * sy), abs=0.06)
    assert all(v == [(14, 1.0, 0.0, 0.0, 1.0, 1.0)] for k, v in rows.items() if k != im["source_id"])


def test_submission_refuses_an_id_list_it_does_not_match(real_test, tmp_path):
    out, _ = real_test
    preds = write_predictions(tmp_path / "p.json", {}, {"name": "m", "kind": "detector"})
    ids = _csv_column(VINBIG_TEST_IDS, "image_id")
    short = _write_ids(tmp_path / "short.csv", "image_id", [*ids[1:], "not-a-test-image"])
    with pytest.raises(SubmissionError, match=rf"{ids[0]}.*not-a-test-image|not-a-test-image.*{ids[0]}"):
        write_submission(out / "all.json", preds, tmp_path / "sub.csv", ids=short)
    assert not (tmp_path / "sub.csv").exists()


@pytest.fixture(scope="module")
def test_images(synth_vinbig, tmp_path_factory):
    """A folder of 6 synthetic DICOMs with no labels, and its id list."""
    tmp = tmp_path_factory.mktemp("unlabelled")
    folder = tmp / "test"
    folder.mkdir()
    for p in sorted((synth_vinbig / "train").iterdir())[:6]:
        shutil.copy(p, folder / p.name)
    ids = sorted(p.stem for p in folder.iterdir())
    return folder, _write_ids(tmp / "sample_submission.csv", "image_id", ids), ids


def test_folder_of_dicoms_to_coco(test_images, tmp_path):
    folder, ids_csv, ids = test_images
    ds = convert_vinbig(None, tmp_path / "coco", images_dir=folder, ids=ids_csv, size=96, workers=2)
    assert sorted(im["source_id"] for im in ds.images) == ids and ds.annotations == []
    for im in ds.images:
        assert (tmp_path / "coco" / im["file_name"]).is_file()
        assert max(im["width"], im["height"]) == 96
        assert max(im["orig_width"], im["orig_height"]) > 96
    # no id list: every image of the folder
    ds2 = convert_vinbig(None, tmp_path / "coco2", images_dir=folder, size=96)
    assert [im["source_id"] for im in ds2.images] == [im["source_id"] for im in ds.images]
    assert [im["orig_width"] for im in ds2.images] == [im["orig_width"] for im in ds.images]


def test_id_list_must_match_the_folder(test_images, tmp_path):
    folder, ids_csv, ids = test_images
    missing = _write_ids(tmp_path / "more.csv", "image_id", [*ids, "ghost-id"])
    with pytest.raises(ConversionError, match="1 id.*no image.*ghost-id"):
        convert_vinbig(None, tmp_path / "a", images_dir=folder, ids=missing, size=96)
    fewer = _write_ids(tmp_path / "fewer.csv", "image_id", ids[1:])
    with pytest.raises(ConversionError, match=f"1 image.*not in.*{ids[0]}"):
        convert_vinbig(None, tmp_path / "b", images_dir=folder, ids=fewer, size=96, on_error="skip")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_cli_unlabelled_and_its_errors(test_images, tmp_path, capsys):
    folder, ids_csv, ids = test_images
    out = tmp_path / "coco"
    args = ["vinbig", "--images", str(folder), "--ids", str(ids_csv), "--out", str(out), "--size", "64"]
    assert convert_main(args) == 0
    assert "unlabelled" in capsys.readouterr().out
    assert len(json.loads((out / "all.json").read_text())["images"]) == 6
    assert convert_main(args) == 0  # a re-run resumes: the PNGs are kept
    bad = _write_ids(tmp_path / "bad.csv", "image_id", ids[:-1])
    rc = convert_main(["vinbig", "--images", str(folder), "--ids", str(bad), "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error:") and ids[-1] in err and "\n" not in err
    rc = convert_main(["vinbig", "--csv", "train.csv", "--ids", str(ids_csv), "--out", str(tmp_path / "y")])
    assert rc == 2 and "--ids" in capsys.readouterr().err


def test_rsna_unlabelled(synth_rsna, tmp_path):
    folder = synth_rsna / "stage_2_train_images"
    ids = sorted(p.stem for p in folder.iterdir())
    ids_csv = _write_ids(tmp_path / "stage_2_sample_submission.csv", "patientId", ids)
    ds = convert_rsna(None, tmp_path / "coco", images_dir=folder, ids=ids_csv, size=128)
    assert sorted(im["source_id"] for im in ds.images) == ids and ds.annotations == []
    assert {(im["orig_width"], im["orig_height"]) for im in ds.images} == {(256, 256)}
    # labels only: every RSNA image is 1024x1024
    ds = convert_rsna(None, tmp_path / "lo", ids=ids_csv, labels_only=True, size=512)
    assert {(im["orig_width"], im["width"]) for im in ds.images} == {(1024, 512)}
    wrong_column = _write_ids(tmp_path / "wrong.csv", "image_id", ids)
    with pytest.raises(ConversionError, match="patientId"):
        convert_rsna(None, tmp_path / "w", ids=wrong_column, labels_only=True)
