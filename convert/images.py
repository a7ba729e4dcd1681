"""Per-image work of the converters: decode, resize, write a PNG (run in worker processes)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

DICOM_SUFFIXES = (".dicom", ".dcm")
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg")

T = TypeVar("T")
R = TypeVar("R")


def target_size(width: int, height: int, size: int | None) -> tuple[int, int]:
    """``(width, height)`` after resizing so the longer side is ``size``, aspect kept.

    ``size`` None or 0 keeps the original size.
    """
    if not size:
        return int(width), int(height)
    scale = size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize_gray(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize a uint8 ``(H, W)`` image to ``(height, width)`` (area filter when shrinking)."""
    import cv2

    if image.shape[1] == width and image.shape[0] == height:
        return image
    shrink = width < image.shape[1]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


@dataclass(frozen=True)
class ImageJob:
    """Convert one source image (DICOM or PNG/JPEG) into ``out`` (8-bit grey PNG).

    ``j2k_reduce``: decode a JPEG 2000 DICOM only at the resolution the resize to ``size`` needs
    (`convert.dicom.decode_dicom`); False decodes every image in full (for comparisons).
    """

    key: str
    src: Path
    out: Path
    size: int | None
    j2k_reduce: bool = True


@dataclass(frozen=True)
class ImageResult:
    key: str
    width: int  # of the written PNG
    height: int
    src_width: int  # of the source file as read (for a DICOM: the original)
    src_height: int
    skipped_existing: bool = False
    error: str | None = None


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of a PNG/JPEG without decoding its pixels."""
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def source_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of a source image: a DICOM's Columns/Rows, or a raster's size."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        from convert.dicom import read_dicom_header

        h = read_dicom_header(path)
        return int(h["columns"]), int(h["rows"])
    return image_size(path)


def convert_image(job: ImageJob) -> ImageResult:
    """Decode, resize and write one image; errors are returned, not raised (for the pool)."""
    try:
        if job.out.exists():
            # a re-run keeps what is already written, unless it was made for another --size
            w, h = image_size(job.out)
            sw, sh = source_size(job.src)
            if (w, h) == target_size(sw, sh, job.size):
                return ImageResult(job.key, w, h, sw, sh, skipped_existing=True)
        if job.src.suffix.lower() in DICOM_SUFFIXES:
            from convert.dicom import decode_dicom

            img, (sw, sh) = decode_dicom(job.src, size=job.size if job.j2k_reduce else None)
        else:
            from core.io import read_image_gray

            img = read_image_gray(job.src)
            sh, sw = img.shape[:2]
        w, h = target_size(sw, sh, job.size)
        from core.io import write_png

        write_png(job.out, resize_gray(img, w, h))
        return ImageResult(job.key, w, h, sw, sh)
    except Exception as e:  # reported per file by the caller
        return ImageResult(job.key, 0, 0, 0, 0, error=f"{job.src}: {e}")


def parallel_map(
    fn: Callable[[T], R], items: Iterable[T], workers: int, desc: str, total: int | None = None
) -> Iterator[R]:
    """``map(fn, items)`` over ``workers`` processes with a progress bar (on a terminal); results in input order."""
    from core.cli import progress

    items = list(items)
    bar = progress(total=total or len(items), desc=desc, unit="img", dynamic_ncols=True, mininterval=0.5)
    try:
        if workers <= 1:
            for it in items:
                yield fn(it)
                bar.update()
        else:
            pool = ProcessPoolExecutor(max_workers=workers)
            try:
                for r in pool.map(fn, items, chunksize=1):
                    yield r
                    bar.update()
            finally:  # closed early (an error, Ctrl-C): the items not started are cancelled
                pool.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()


def find_images(folder: Path) -> dict[str, Path]:
    """Map image id (file stem) → path for every DICOM/PNG/JPEG directly in ``folder``."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: image folder not found")
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in DICOM_SUFFIXES + RASTER_SUFFIXES and not p.name.startswith("."):
            if p.stem in found:
                raise ValueError(f"{folder}: image id {p.stem} has two files: {found[p.stem].name}, {p.name}")
            found[p.stem] = p
    return found
