"""``schedule.empty_images``: every framework trains on the same images.

Each adapter builds its framework's own training dataset (Detectron2's dataset dicts after its
empty-image filter, MMDetection's ``CocoDataset`` with ``filter_empty_gt``, Ultralytics'
``YOLODataset`` of the exported images) without training, and we count what it holds: every image
with ``keep`` (the default; images without a box are background), the images with a box with ``drop``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from adapters import build
from adapters.base import training_image_count
from adapters.config import ConfigError, parse_config
from core.coco import CocoDataset
from core.io import write_png

N_BOXED, N_EMPTY = 5, 3
MODELS = {
    "ultralytics": "yolov8n.yaml",
    "detectron2": "configs/detectron2/faster_rcnn_R_18_FPN_cpu.yaml",
    "mmdet": "configs/mmdet/faster_rcnn_r18_fpn_cpu.py",
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> CocoDataset:
    root = tmp_path_factory.mktemp("empty_images")
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(N_BOXED + N_EMPTY):
        img = rng.normal(40, 8, (64, 80)).clip(0, 255).astype(np.uint8)
        if i < N_BOXED:
            img[10:40, 20:60] = 220
            anns.append({"id": i + 1, "image_id": i, "category_id": 1, "bbox": [20.0, 10.0, 40.0, 30.0],
                         "area": 1200.0, "iscrowd": 0})  # fmt: skip
        write_png(root / "images" / f"im{i}.png", img)
        images.append({"id": i, "file_name": f"images/im{i}.png", "width": 80, "height": 64})
    path = CocoDataset(images, anns, [{"id": 1, "name": "box"}], root=root).write(root / "train.json")
    return CocoDataset.load(path)


def _cfg(adapter: str, **schedule):
    return parse_config(
        {"name": f"e_{adapter}", "adapter": adapter, "model": MODELS[adapter], "image_size": 64,
         "device": "cpu", "schedule": {"batch_size": 2, "workers": 0, **schedule}}  # fmt: skip
    )


def test_the_setting_is_validated_defaults_to_keep_and_is_recorded():
    cfg = _cfg("detectron2")
    assert cfg.schedule.empty_images == "keep"
    resolved = cfg.to_dict()  # what `adapters.train` writes as the run's config.yaml
    assert resolved["schedule"]["empty_images"] == "keep"
    assert parse_config(resolved).schedule.empty_images == "keep"
    assert _cfg("mmdet", empty_images="drop").to_dict()["schedule"]["empty_images"] == "drop"
    with pytest.raises(ConfigError, match="schedule.empty_images must be one of keep, drop"):
        _cfg("mmdet", empty_images="skip")


def test_epochs_are_sized_on_the_images_trained_on(dataset):
    assert training_image_count(dataset, "keep") == N_BOXED + N_EMPTY
    assert training_image_count(dataset, "drop") == N_BOXED


@pytest.mark.parametrize("setting, expected", [("keep", N_BOXED + N_EMPTY), ("drop", N_BOXED)])
@pytest.mark.parametrize("adapter", sorted(MODELS))
def test_each_framework_trains_on_the_same_images(adapter, setting, expected, dataset, tmp_path):
    model = build(_cfg(adapter, empty_images=setting))
    assert model.training_images(dataset, Path(tmp_path)) == expected
