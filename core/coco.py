"""COCO detection datasets: load, validate, write.

A CXRFuse dataset is a COCO detection JSON whose ``images[]`` also carry
``orig_width``/``orig_height`` (the source image, e.g. the DICOM) and
``source_id`` (the DICOM's image id), so predictions can be scaled back for a
submission. ``file_name`` is relative to the JSON file's folder. A normal image
("No finding") is an image with no annotations; "No finding" is not a category.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np

from core.detections import Detections
from core.errors import UserError
from core.io import read_json, write_json


class UnsafePathError(UserError):
    """A dataset names a file outside its own folder; the message names the image id and file_name."""


REQUIRED_IMAGE_KEYS = ("id", "file_name", "width", "height")
REQUIRED_ANN_KEYS = ("id", "image_id", "category_id", "bbox")


@dataclass
class CocoDataset:
    """A COCO detection dataset held as plain dicts, with lookups built on load.

    Attributes:
        images: COCO ``images`` entries (``id``, ``file_name``, ``width``, ``height``,
            and for CXRFuse datasets ``orig_width``, ``orig_height``, ``source_id``).
        annotations: COCO ``annotations`` (``bbox`` is ``[x, y, w, h]`` absolute pixels).
        categories: COCO ``categories`` (``id``, ``name``).
        root: folder that ``file_name`` is relative to.
        info: free-form ``info`` block (source, converter settings).
    """

    images: list[dict[str, Any]]
    annotations: list[dict[str, Any]]
    categories: list[dict[str, Any]]
    root: Path = field(default_factory=Path)
    info: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def __post_init__(self) -> None:
        self.validate()

    # ---------------------------------------------------------------- lookups
    @property
    def image_ids(self) -> list[int]:
        return [int(im["id"]) for im in self.images]

    @property
    def category_ids(self) -> list[int]:
        return [int(c["id"]) for c in self.categories]

    @property
    def category_names(self) -> dict[int, str]:
        return {int(c["id"]): str(c["name"]) for c in self.categories}

    def image(self, image_id: int) -> dict[str, Any]:
        try:
            return self._images_by_id[int(image_id)]
        except KeyError:
            raise KeyError(f"image id {image_id} is not in {self.path or 'the dataset'}") from None

    def image_path(self, image_id: int) -> Path:
        """Absolute path of an image's file, which must lie inside the dataset's folder (``root``).

        A ``file_name`` that is absolute, climbs out with ``..`` or reaches a symbolic link that
        points outside ``root`` is refused, not read: a dataset file names only its own images.

        Raises:
            KeyError: if ``image_id`` is not in the dataset.
            UnsafePathError: naming the image id and its ``file_name``, if the file lies outside ``root``.
        """
        name = self.image(image_id)["file_name"]
        root = Path(self.root).resolve()
        path = (root / str(name)).resolve()
        if _escapes(str(name)) or not path.is_relative_to(root):
            where = f"{self.path}: " if self.path else ""
            raise UnsafePathError(
                f"{where}image {image_id}: file_name {name!r} lies outside the dataset's folder {root}; "
                "refused (file names must be relative paths inside it)"
            )
        return path

    def annotations_of(self, image_id: int) -> list[dict[str, Any]]:
        return self._anns_by_image.get(int(image_id), [])

    def ground_truth(self, image_id: int) -> Detections:
        """An image's annotations as `Detections` (scores 1)."""
        anns = self.annotations_of(image_id)
        if not anns:
            return Detections.empty()
        b = np.array([a["bbox"] for a in anns], np.float32)
        b[:, 2:] += b[:, :2]
        return Detections(
            b, np.ones(len(anns), np.float32), np.array([a["category_id"] for a in anns], np.int64)
        )

    def is_normal(self, image_id: int) -> bool:
        return not self.annotations_of(image_id)

    def class_counts(self) -> dict[int, int]:
        """Boxes per category id (every category present, zero included)."""
        c = Counter(int(a["category_id"]) for a in self.annotations)
        return {cid: c.get(cid, 0) for cid in self.category_ids}

    def subset(self, image_ids: list[int]) -> CocoDataset:
        """A new dataset holding only ``image_ids`` (same categories, root and info)."""
        keep = {int(i) for i in image_ids}
        return CocoDataset(
            images=[im for im in self.images if int(im["id"]) in keep],
            annotations=[a for a in self.annotations if int(a["image_id"]) in keep],
            categories=list(self.categories),
            root=self.root,
            info=dict(self.info),
        )

    def summary(self) -> str:
        """A few human-readable lines: images, normal images, boxes per class."""
        n_norm = sum(1 for i in self.image_ids if self.is_normal(i))
        lines = [
            f"images: {len(self.images)} ({n_norm} with no finding, {len(self.images) - n_norm} abnormal)",
            f"boxes: {len(self.annotations)}",
        ]
        names = self.category_names
        for cid, n in self.class_counts().items():
            lines.append(f"  {cid:>3} {names[cid]:<22} {n:>7}")
        return "\n".join(lines)

    # ------------------------------------------------------------ validation
    def validate(self) -> None:
        """Check ids, references and boxes; build the lookups.

        Raises:
            ValueError: naming the image or annotation at fault.
        """
        where = f"{self.path}: " if self.path else ""
        cat_ids = set()
        for c in self.categories:
            if "id" not in c or "name" not in c:
                raise ValueError(f"{where}category {c!r} lacks 'id' or 'name'")
            if int(c["id"]) in cat_ids:
                raise ValueError(f"{where}category id {c['id']} appears twice")
            cat_ids.add(int(c["id"]))
        self._images_by_id: dict[int, dict[str, Any]] = {}
        for k, im in enumerate(self.images):
            missing = [key for key in REQUIRED_IMAGE_KEYS if key not in im]
            if missing:
                raise ValueError(f"{where}images[{k}] lacks {missing}: {im!r}")
            iid = int(im["id"])
            if iid in self._images_by_id:
                raise ValueError(f"{where}image id {iid} appears twice ({im['file_name']})")
            if int(im["width"]) <= 0 or int(im["height"]) <= 0:
                raise ValueError(
                    f"{where}image {iid} ({im['file_name']}) has size {im['width']}x{im['height']}"
                )
            self._images_by_id[iid] = im
        self._anns_by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
        ann_ids = set()
        for k, a in enumerate(self.annotations):
            missing = [key for key in REQUIRED_ANN_KEYS if key not in a]
            if missing:
                raise ValueError(f"{where}annotations[{k}] lacks {missing}: {a!r}")
            aid = a["id"]
            if aid in ann_ids:
                raise ValueError(f"{where}annotation id {aid} appears twice")
            ann_ids.add(aid)
            iid = int(a["image_id"])
            if iid not in self._images_by_id:
                raise ValueError(f"{where}annotation {aid} refers to image {iid}, which is not in images")
            if int(a["category_id"]) not in cat_ids:
                raise ValueError(
                    f"{where}annotation {aid} (image {iid}) has category {a['category_id']}, "
                    f"not one of {sorted(cat_ids)}"
                )
            bbox = a["bbox"]
            if len(bbox) != 4 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox):
                raise ValueError(f"{where}annotation {aid} (image {iid}) has a malformed bbox {bbox!r}")
            x, y, w, h = bbox
            im = self._images_by_id[iid]
            tol = 1.0
            if (
                w < 0
                or h < 0
                or x < -tol
                or y < -tol
                or x + w > im["width"] + tol
                or y + h > im["height"] + tol
            ):
                raise ValueError(
                    f"{where}annotation {aid} (image {iid}, {im['file_name']}) has bbox {bbox} outside "
                    f"the {im['width']}x{im['height']} image or with a negative size"
                )
            self._anns_by_image[iid].append(a)

    # ------------------------------------------------------------------- I/O
    def to_dict(self) -> dict[str, Any]:
        return {
            "info": self.info,
            "images": self.images,
            "annotations": self.annotations,
            "categories": self.categories,
        }

    def write(self, path: str | Path) -> Path:
        """Write the dataset atomically; ``file_name`` stays relative to ``path``'s folder."""
        path = Path(path)
        out = write_json(path, self.to_dict())
        self.path = path
        return out

    @classmethod
    def load(cls, path: str | Path) -> CocoDataset:
        """Load and validate a COCO JSON file.

        Raises:
            FileNotFoundError: if the file is missing.
            ValueError: naming the file and the image or annotation at fault.
            UnsafePathError: naming the image whose ``file_name`` is absolute or climbs out of the
                file's folder with ``..`` (see `image_path`).
        """
        path = Path(path)
        d = read_json(path)
        if not isinstance(d, dict) or not all(k in d for k in ("images", "annotations", "categories")):
            raise ValueError(f"{path}: not a COCO detection file (needs images, annotations, categories)")
        ds = cls.__new__(cls)
        ds.images, ds.annotations, ds.categories = d["images"], d["annotations"], d["categories"]
        ds.root, ds.info, ds.path = path.parent, d.get("info", {}) or {}, path
        ds.validate()
        for im in ds.images:  # a file's images are relative paths inside its folder (see image_path)
            name = im["file_name"]
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"{path}: image {im['id']} has file_name {name!r}; expected a relative path")
            if _escapes(name):
                raise UnsafePathError(
                    f"{path}: image {im['id']}: file_name {name!r} lies outside the dataset's folder "
                    f"{path.parent}; refused (file names must be relative paths inside it)"
                )
        return ds


def _escapes(name: str) -> bool:
    """Whether a ``file_name`` is absolute (POSIX or Windows) or climbs above its folder with ``..``."""
    if PureWindowsPath(name).drive or PureWindowsPath(name).root:
        return True
    depth = 0
    for part in PurePosixPath(name.replace("\\", "/")).parts:
        if part == "/":
            return True
        depth += -1 if part == ".." else (0 if part == "." else 1)
        if depth < 0:
            return True
    return False
