"""COCO → the Ultralytics dataset layout (images/, labels/ and a data YAML)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import yaml

from core.coco import CocoDataset
from core.io import atomic_open


def class_index(dataset: CocoDataset) -> dict[int, int]:
    """Dataset category id → contiguous index ``0..K-1`` (in sorted id order)."""
    return {cid: i for i, cid in enumerate(sorted(dataset.category_ids))}


def _link(src: Path, dst: Path) -> None:
    if dst.exists() or dst.is_symlink():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.symlink(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def coco_to_yolo(train_json: Path, val_json: Path, out_dir: Path) -> Path:
    """Write ``out_dir/{images,labels}/{train,val}`` and ``out_dir/data.yaml``.

    Images are symlinked (copied where links are impossible); each label file
    holds ``index cx cy w h`` normalised to [0, 1]. ``data.yaml`` maps the
    contiguous indices to names and records the dataset category ids
    (``category_ids``) so predictions can be mapped back exactly.

    Raises:
        FileNotFoundError: naming an image that is missing (before anything is written).
        ValueError: if the two files' categories differ, or as `core.coco.CocoDataset.image_path`.
    """
    out_dir = Path(out_dir).resolve()
    train, val = CocoDataset.load(train_json), CocoDataset.load(val_json)
    if train.category_names != val.category_names:
        raise ValueError(f"{train_json} and {val_json} have different categories")
    index = class_index(train)
    for ds in (train, val):  # every image is checked before anything is written
        for iid in ds.image_ids:
            src = ds.image_path(iid)
            if not src.is_file():
                raise FileNotFoundError(f"{src}: image {iid} of {ds.path} not found")
    for split, ds in (("train", train), ("val", val)):
        for iid in ds.image_ids:
            im = ds.image(iid)
            src = ds.image_path(iid)
            stem = Path(im["file_name"]).stem
            _link(src, out_dir / "images" / split / f"{stem}{src.suffix}")
            lines = []
            for a in ds.annotations_of(iid):
                x, y, w, h = a["bbox"]
                W, H = im["width"], im["height"]
                lines.append(
                    f"{index[int(a['category_id'])]} {(x + w / 2) / W:.6f} {(y + h / 2) / H:.6f} {w / W:.6f} {h / H:.6f}"
                )
            label = out_dir / "labels" / split / f"{stem}.txt"
            label.parent.mkdir(parents=True, exist_ok=True)
            with atomic_open(label, "w") as f:
                f.write("\n".join(lines) + ("\n" if lines else ""))
    names = {i: train.category_names[cid] for cid, i in index.items()}
    data = {
        "path": str(out_dir),
        "train": "images/train",
        "val": "images/val",
        "names": names,
        "category_ids": [cid for cid, _ in sorted(index.items(), key=lambda kv: kv[1])],
    }
    with atomic_open(out_dir / "data.yaml", "w") as f:
        yaml.safe_dump(data, f, sort_keys=False)
    return out_dir / "data.yaml"
