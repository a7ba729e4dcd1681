"""`convert vinbig` / `convert rsna` on synthetic raw sets: DICOM decoding, box frames, fusion, re-runs, errors."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from convert.__main__ import main
from convert.common import ConversionError
from convert.rsna import convert_rsna
from convert.synth import render_display
from convert.vinbig import convert_vinbig
from core.coco import CocoDataset
from core.io import read_image_gray


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _truth(raw: Path) -> dict:
    return json.loads((raw / "synth_truth.json").read_text())["images"]


@pytest.fixture(scope="module")
def vinbig_wbf(synth_vinbig: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vinbig_wbf")
    convert_vinbig(
        synth_vinbig / "train.csv", out, images_dir=synth_vinbig / "train", size=96, n_folds=3, workers=2
    )
    return out


def test_wbf_fuses_three_radiologists_into_one_box_per_lesion_in_the_png_frame(synth_vinbig, vinbig_wbf):
    truth = _truth(synth_vinbig)
    ds = CocoDataset.load(vinbig_wbf / "all.json")
    assert len(ds.images) == len(truth)
    for im in ds.images:
        entry = truth[im["source_id"]]
        assert (im["orig_width"], im["orig_height"]) == (entry["width"], entry["height"])
        assert max(im["width"], im["height"]) == 96  # longest side resized to --size, aspect kept
        png = read_image_gray(vinbig_wbf / im["file_name"])
        assert png.shape == (im["height"], im["width"])
        anns = ds.annotations_of(im["id"])
        assert len(anns) == len(entry["lesions"]), im["source_id"]  # one fused box per drawn lesion
        sx, sy = im["width"] / entry["width"], im["height"] / entry["height"]
        for les in entry["lesions"]:
            x1, y1, x2, y2 = les["box"]
            want = (x1 * sx, y1 * sy, x2 * sx, y2 * sy)
            best = max(
                (
                    _iou(
                        want,
                        (
                            a["bbox"][0],
                            a["bbox"][1],
                            a["bbox"][0] + a["bbox"][2],
                            a["bbox"][1] + a["bbox"][3],
                        ),
                    )
                    for a in anns
                    if a["category_id"] == les["class_id"]
                ),
                default=0.0,
            )
            assert best > 0.75, (im["source_id"], les)
        assert all("rad_id" not in a for a in anns)
        assert ds.is_normal(im["id"]) == entry["normal"]


def test_pngs_match_what_the_generator_drew(synth_vinbig, tmp_path):
    """Full-resolution PNGs equal the generator's picture: windowing and MONOCHROME1 inversion are right."""
    truth = _truth(synth_vinbig)
    convert_vinbig(
        synth_vinbig / "train.csv", tmp_path, images_dir=synth_vinbig / "train", size=None, n_folds=2
    )
    ds = CocoDataset.load(tmp_path / "all.json")
    for im in ds.images:
        entry = truth[im["source_id"]]
        want = np.round(255 * render_display(entry)).astype(np.int16)
        got = read_image_gray(tmp_path / im["file_name"]).astype(np.int16)
        assert got.shape == want.shape
        # quantisation to 12 bits and lossless/lossy codecs leave a few grey levels at most
        assert np.abs(got - want).mean() < 2.0, (im["source_id"], entry["dicom"])


def test_raw_keeps_every_radiologist_box_with_its_rad_id(synth_vinbig, tmp_path):
    with open(synth_vinbig / "train.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["class_id"] != "14"]
    convert_vinbig(
        synth_vinbig / "train.csv",
        tmp_path,
        images_dir=synth_vinbig / "train",
        size=64,
        annotators="raw",
        n_folds=2,
    )
    ds = CocoDataset.load(tmp_path / "all.json")
    assert len(ds.annotations) == len(rows)
    assert {a["rad_id"] for a in ds.annotations} == {r["rad_id"] for r in rows}
    by_key = {im["source_id"]: im for im in ds.images}
    for r in rows[:30]:  # boxes scale to the PNG frame exactly
        im = by_key[r["image_id"]]
        sx = im["width"] / im["orig_width"]
        xs = [a["bbox"][0] for a in ds.annotations_of(im["id"]) if a["rad_id"] == r["rad_id"]]
        assert any(abs(x - float(r["x_min"]) * sx) < 0.01 for x in xs), r


def test_folds_split_by_image_and_train_val_match_the_chosen_fold(vinbig_wbf):
    ds = CocoDataset.load(vinbig_wbf / "all.json")
    train = CocoDataset.load(vinbig_wbf / "train.json")
    val = CocoDataset.load(vinbig_wbf / "val.json")
    tr = {im["source_id"] for im in train.images}
    va = {im["source_id"] for im in val.images}
    assert not tr & va and tr | va == {im["source_id"] for im in ds.images}
    assert {im["fold"] for im in val.images} == {0}
    for k in range(3):
        assert (vinbig_wbf / f"fold{k}_val.json").is_file()


def test_rerun_skips_written_images_and_rewrites_other_sizes(synth_vinbig, vinbig_wbf, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(vinbig_wbf / "images", out / "images")
    marker = sorted((out / "images").glob("*.png"))[0]
    before = marker.stat().st_mtime_ns
    convert_vinbig(synth_vinbig / "train.csv", out, images_dir=synth_vinbig / "train", size=96, n_folds=3)
    assert marker.stat().st_mtime_ns == before  # kept, not re-decoded
    assert json.loads((out / "all.json").read_text()) == json.loads((vinbig_wbf / "all.json").read_text())
    convert_vinbig(synth_vinbig / "train.csv", out, images_dir=synth_vinbig / "train", size=64, n_folds=3)
    assert max(read_image_gray(marker).shape) == 64  # another --size re-converts


def _broken_copy(src: Path, dst: Path) -> tuple[Path, str]:
    shutil.copytree(src, dst)
    victim = sorted((dst / "train").glob("*.dicom"))[3]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 3])  # truncated pixel data
    return dst, victim.stem


def test_truncated_dicom_is_an_error_naming_the_file_and_nothing_is_written(synth_vinbig, tmp_path):
    raw, key = _broken_copy(synth_vinbig, tmp_path / "raw")
    out = tmp_path / "out"
    with pytest.raises(ConversionError, match=key):
        convert_vinbig(raw / "train.csv", out, images_dir=raw / "train", size=64, n_folds=2)
    assert not (out / "all.json").exists() and not (out / "train.json").exists()
    assert not list(out.rglob("*.part"))  # no half-written files


def test_on_error_skip_goes_on_and_reports_the_file(synth_vinbig, tmp_path):
    raw, key = _broken_copy(synth_vinbig, tmp_path / "raw")
    out = tmp_path / "out"
    rc = main(["vinbig", "--csv", str(raw / "train.csv"), "--images", str(raw / "train"), "--out", str(out),
               "--size", "64", "--folds", "2", "--on-error", "skip", "--workers", "2"])  # fmt: skip
    assert rc == 0
    ds = CocoDataset.load(out / "all.json")
    assert key not in {im["source_id"] for im in ds.images}
    assert len(ds.images) == len(_truth(synth_vinbig)) - 1
    report = (out / "skipped.csv").read_text()
    assert key in report and f"{key}.dicom" in report


def test_cli_error_exit_code_and_message(synth_vinbig, tmp_path, capsys):
    raw, key = _broken_copy(synth_vinbig, tmp_path / "raw")
    rc = main(["vinbig", "--csv", str(raw / "train.csv"), "--images", str(raw / "train"), "--out", str(tmp_path / "o"),
               "--size", "64"])  # fmt: skip
    assert rc == 2
    assert f"{key}.dicom" in capsys.readouterr().err


def test_rsna_dicoms_convert_with_boxes_in_the_png_frame(synth_rsna, tmp_path):
    truth = _truth(synth_rsna)
    ds = convert_rsna(
        synth_rsna / "stage_2_train_labels.csv",
        tmp_path,
        class_info=synth_rsna / "stage_2_detailed_class_info.csv",
        images_dir=synth_rsna / "stage_2_train_images",
        size=128,
        n_folds=2,
    )
    assert len(ds.images) == len(truth)
    assert [c["name"] for c in ds.categories] == ["Lung Opacity"]
    for im in ds.images:
        entry = truth[im["source_id"]]
        assert (im["width"], im["height"]) == (128, 128)
        anns = ds.annotations_of(im["id"])
        assert len(anns) == len(entry["lesions"])
        s = 128 / entry["width"]
        for les, a in zip(
            sorted(entry["lesions"], key=lambda e: e["box"][0]),
            sorted(anns, key=lambda a: a["bbox"][0]),
            strict=True,
        ):
            x1, y1, x2, y2 = les["box"]
            got = (a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3])
            assert _iou((x1 * s, y1 * s, x2 * s, y2 * s), got) > 0.95


def test_several_findings_per_image_give_the_multilabel_answer(tmp_path, capsys):
    """The generator's known findings survive conversion as the multi-label truth a classifier learns."""
    from convert.synth import ALL_CLASSES, make_vinbig
    from core.class_probs import dataset_classes, truth_matrix
    from core.classes import VINBIG_CLASSES

    raw = make_vinbig(
        tmp_path / "raw", n_images=8, seed=2, sizes=(128, 160), classes=ALL_CLASSES, normal_fraction=0.25,
        findings=(2, 4), distinct_findings=True,
    )  # fmt: skip
    ds = convert_vinbig(raw / "train.csv", tmp_path / "coco", images_dir=raw / "train", size=64, n_folds=2)
    truth = _truth(raw)
    classes, cats = dataset_classes(ds, "multilabel")
    assert classes == (*VINBIG_CLASSES.values(), "No finding") and cats == tuple(range(15))
    m = truth_matrix(ds, ds.image_ids, "multilabel", classes, cats)
    for row, image_id in zip(m, ds.image_ids, strict=True):
        found = truth[ds.image(image_id)["source_id"]]["findings"]
        assert np.flatnonzero(row).tolist() == (found or [14])
    assert (m[:, :14].sum(axis=1) >= 2).sum() == 6  # six abnormal images, each with several findings
    assert main(["ids", str(tmp_path / "coco" / "all.json")]) == 0
    listed = [line.split("\t")[3] for line in capsys.readouterr().out.splitlines()[1:]]
    assert listed == [", ".join(classes[j] for j in np.flatnonzero(r)).replace("No finding", "normal") for r in m]
