"""Real VinBigData PNG/JPEG images convert in size-table mode with their boxes in the right frame."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest

from convert.vinbig import convert_vinbig
from core.io import read_image_gray

SAME_IMAGE = (
    "0c7a38f293d5f5e4846aa4ca6db4daf1"  # present as a 1/3-scale JPEG and as a stretched 1024x1024 PNG
)


def _subset_csv(real_vinbig, path, ids):
    with open(real_vinbig / "train.csv") as f, open(path, "w", newline="") as g:
        r = csv.DictReader(f)
        w = csv.DictWriter(g, r.fieldnames)
        w.writeheader()
        w.writerows(row for row in r if row["image_id"] in ids)


def _convert_folder(real_vinbig, tmp_path, folder, size=512):
    src = real_vinbig / "images" / folder
    ids = {p.stem for p in src.iterdir()}
    _subset_csv(real_vinbig, tmp_path / "train.csv", ids)
    return convert_vinbig(
        tmp_path / "train.csv",
        tmp_path / "coco",
        images_dir=src,
        size_table=real_vinbig / "train_meta.csv",
        annotators="raw",
        size=size,
        n_folds=2,
    )


@pytest.fixture(scope="module")
def converted(real_vinbig, tmp_path_factory):
    return {
        f: _convert_folder(real_vinbig, tmp_path_factory.mktemp(f), f)
        for f in ("png_fullres", "png_1024x1024", "jpg_third_scale")
    }


@pytest.mark.parametrize("folder", ["png_fullres", "png_1024x1024", "jpg_third_scale"])
def test_frame_follows_the_file(converted, real_vinbig, folder):
    """The written PNG keeps the file's aspect; boxes are CSV boxes × (written / original) per axis."""
    from PIL import Image

    ds = converted[folder]
    assert len(ds.images) == len(list((real_vinbig / "images" / folder).iterdir()))
    for im in ds.images:
        src = next((real_vinbig / "images" / folder).glob(im["source_id"] + ".*"))
        sw, sh = Image.open(src).size
        assert max(im["width"], im["height"]) == 512
        assert abs(im["width"] / im["height"] - sw / sh) < 0.01
        written = read_image_gray(ds.image_path(im["id"]))
        assert written.shape == (im["height"], im["width"]) and written.dtype == np.uint8
        if folder == "png_1024x1024":
            assert im["width"] == im["height"] == 512  # stretched stays stretched
        if folder == "png_fullres":
            assert (sw, sh) == (im["orig_width"], im["orig_height"])  # boxes apply as they are
        if folder == "jpg_third_scale":
            assert abs(sw - im["orig_width"] / 3) <= 1 and abs(sh - im["orig_height"] / 3) <= 1


def test_heart_and_aorta_boxes_sit_on_the_mediastinum(converted):
    """Cardiomegaly/aortic boxes land in the middle of the chest in every format (frame sanity)."""
    n = 0
    for ds in converted.values():
        for a in ds.annotations:
            if a["category_id"] in (0, 3):
                im = ds.image(a["image_id"])
                cx = (a["bbox"][0] + a["bbox"][2] / 2) / im["width"]
                cy = (a["bbox"][1] + a["bbox"][3] / 2) / im["height"]
                assert 0.3 < cx < 0.8 and 0.2 < cy < 0.85, (im["source_id"], a)
                n += 1
    assert n >= 10


def test_same_image_two_formats_gives_the_same_box_content(converted):
    """The box crops of one image, converted from the stretched PNG and from the 1/3 JPEG, match."""
    import cv2

    crops = []
    for folder in ("png_1024x1024", "jpg_third_scale"):
        ds = converted[folder]
        im = next(i for i in ds.images if i["source_id"] == SAME_IMAGE)
        img = read_image_gray(ds.image_path(im["id"])).astype(np.float32)
        anns = sorted(
            ds.annotations_of(im["id"]), key=lambda a: (a["category_id"], a["rad_id"], a["bbox"][0])
        )
        assert anns
        for a in anns:
            x, y, w, h = (round(v) for v in a["bbox"])
            crops.append(
                (folder, a["category_id"], a["rad_id"], cv2.resize(img[y : y + h, x : x + w], (32, 32)))
            )
    half = len(crops) // 2
    assert half >= 1
    for (_, c1, r1, p), (_, c2, r2, q) in zip(crops[:half], crops[half:], strict=True):
        assert (c1, r1) == (c2, r2)
        corr = np.corrcoef(p.ravel(), q.ravel())[0, 1]
        assert corr > 0.9, corr


def test_png_mode_requires_a_size_table(real_vinbig, tmp_path):
    src = tmp_path / "imgs"
    src.mkdir()
    shutil.copy(next((real_vinbig / "images" / "png_1024x1024").iterdir()), src)
    _subset_csv(real_vinbig, tmp_path / "train.csv", {p.stem for p in src.iterdir()})
    from convert.common import ConversionError

    with pytest.raises(ConversionError, match="size-table"):
        convert_vinbig(tmp_path / "train.csv", tmp_path / "coco", images_dir=src)
    assert not (tmp_path / "coco").exists()
