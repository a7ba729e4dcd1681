"""New images to predict: finding them (`find_sources`) and decoding them as ``python -m convert`` does (`decode`).

An input is a DICOM (``.dcm``, ``.dicom``, or any file with the DICOM preamble ``DICM``, as PACS
exports often have no suffix) or a PNG/JPEG, or a folder searched for those (recursively, in path
order). Decoding is `convert.dicom.dicom_to_uint8` (modality LUT, VOI LUT / window, MONOCHROME1
inverted, min-max to 8 bits) or `core.io.read_image_gray`, then `convert.images.resize_gray` to the
bundle's size with `convert.images.target_size`: the pixels the models saw in training.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from convert.images import DICOM_SUFFIXES, RASTER_SUFFIXES, resize_gray, target_size


@dataclass(frozen=True)
class Source:
    """One input file.

    Attributes:
        path: the file, as found.
        key: its name in the outputs: the file stem, made unique with ``_2``, ``_3``, ... when two
            inputs share a stem (the Kaggle CSV's ``image_id``, the overlay's and report's names).
        dicom: whether it is read as a DICOM.
    """

    path: Path
    key: str
    dicom: bool


@dataclass(frozen=True)
class Failure:
    """An input that could not be predicted, or an output that could not be written for it.

    Attributes:
        file: the input file.
        stage: ``read`` (not found or not a readable image), ``predict``, ``overlay`` or ``sr``.
        error: the reason, one line.
    """

    file: str
    stage: str
    error: str

    def to_dict(self) -> dict[str, str]:
        return {"file": self.file, "stage": self.stage, "error": self.error}


@dataclass
class Decoded:
    """A decoded input.

    Attributes:
        source: where it came from.
        original: ``(H, W)`` uint8 at the original size (for overlays).
        image: ``(h, w)`` uint8 resized to the bundle's size (what the models see).
        header: a DICOM's dataset without its pixel data (UIDs for the structured report), else None.
    """

    source: Source
    original: np.ndarray
    image: np.ndarray
    header: Any = None

    @property
    def original_size(self) -> tuple[int, int]:
        """``(width, height)`` of the original image."""
        return int(self.original.shape[1]), int(self.original.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` of the resized image."""
        return int(self.image.shape[1]), int(self.image.shape[0])


def has_dicom_preamble(path: Path) -> bool:
    """Whether ``path`` has the DICOM file preamble (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _is_dicom(path: Path) -> bool:
    suffix = path.suffix.lower()
    if suffix in DICOM_SUFFIXES:
        return True
    if suffix in RASTER_SUFFIXES:
        return False
    return has_dicom_preamble(path)


def find_sources(inputs: Iterable[str | Path]) -> tuple[list[Source], list[Failure]]:
    """The input files named or found in the folders named, in order, each once.

    A file named explicitly is kept whatever its suffix (decoding then says whether it is an image);
    in a folder, DICOM/PNG/JPEG files by suffix and suffix-less files with the DICOM preamble are kept,
    hidden files are not.

    Returns:
        ``(sources, failures)``: a path that does not exist is a ``read`` failure.
    """
    found: list[Path] = []
    failures: list[Failure] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            for f in sorted(x for x in p.rglob("*") if x.is_file()):
                rel = f.relative_to(p)
                if any(part.startswith(".") for part in rel.parts):
                    continue
                suffix = f.suffix.lower()
                if suffix in DICOM_SUFFIXES + RASTER_SUFFIXES or (not suffix and has_dicom_preamble(f)):
                    found.append(f)
        elif p.is_file():
            found.append(p)
        else:
            failures.append(Failure(str(p), "read", f"{p}: no such file or folder"))
    seen: set[Path] = set()
    keys: set[str] = set()
    sources = []
    for f in found:
        real = f.resolve()
        if real in seen:
            continue
        seen.add(real)
        key, n = f.stem or f.name, 1
        while key in keys:
            n += 1
            key = f"{f.stem}_{n}"
        keys.add(key)
        sources.append(Source(f, key, _is_dicom(f)))
    return sources, failures


def decode(source: Source, size: int | None, voi_lut: bool = True) -> Decoded:
    """Decode ``source`` and resize it so its longer side is ``size`` (aspect kept), as ``convert`` does.

    Raises:
        FileNotFoundError: the file is gone.
        convert.dicom.DicomError: a DICOM that cannot be decoded (naming the file and the reason).
        ValueError: a file that is neither a DICOM nor a readable PNG/JPEG (naming it).
    """
    path = source.path
    header = None
    if source.dicom:
        import pydicom

        from convert.dicom import dicom_to_uint8

        original = dicom_to_uint8(path, use_voi_lut=voi_lut)
        header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    else:
        from core.io import read_image_gray

        suffix = path.suffix.lower()
        if suffix not in RASTER_SUFFIXES:
            raise ValueError(f"{path}: not a DICOM (no DICM preamble) and not a PNG/JPEG ({suffix or 'no suffix'})")
        original = read_image_gray(path)
    h, w = original.shape[:2]
    tw, th = target_size(w, h, size)
    return Decoded(source, original, resize_gray(original, tw, th), header)
