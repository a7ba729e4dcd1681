"""``python -m convert ids DATASET``: a dataset's image ids with their file names and labels.

For picking the ids that ``--cam`` and other per-image options take. One tab-separated line per image,
after a header: ``image_id``, ``file_name``, ``source_id`` and, for a labelled dataset, ``labels``:
the image's ``labels`` where the converter wrote them (NIH, class-per-folder), else the names of its
boxes' categories, or ``normal`` for an image without boxes. An unlabelled dataset (a test set) has no
``labels`` column.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from core.coco import CocoDataset
from core.errors import UserError

NORMAL = "normal"


def image_labels(ds: CocoDataset, image: dict) -> list[str]:
    """The class names of one image: its ``labels``, else its boxes' categories, else [``normal``]."""
    if "labels" in image:
        return [str(x) for x in image["labels"]]
    names = ds.category_names
    cats = sorted({int(a["category_id"]) for a in ds.annotations_of(image["id"])})
    return [names[c] for c in cats] or [NORMAL]


def image_rows(dataset: str | Path, limit: int | None = None) -> Iterator[str]:
    """The lines ``convert ids`` prints: a header, one line per image (by id), then a count if limited.

    Args:
        dataset: a COCO dataset JSON.
        limit: list only the first ``limit`` images (by id); None for all.

    Raises:
        UserError: for a ``limit`` below 1.
        FileNotFoundError, ValueError: for a missing or malformed dataset (`core.coco.CocoDataset.load`).
    """
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be >= 1, got {limit}")
    ds = CocoDataset.load(dataset)
    labelled = ds.info.get("labelled", True) is not False
    yield "\t".join(["image_id", "file_name", "source_id", *(["labels"] if labelled else [])])
    images = sorted(ds.images, key=lambda im: int(im["id"]))
    shown = images if limit is None else images[:limit]
    for im in shown:
        cols = [str(im["id"]), str(im["file_name"]), str(im.get("source_id", ""))]
        if labelled:
            cols.append(", ".join(image_labels(ds, im)))
        yield "\t".join(cols)
    if len(shown) < len(images):
        yield f"# the first {len(shown)} of {len(images)} images (--limit {limit})"
