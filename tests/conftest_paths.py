"""Where the tests' real data lives: every path to it is defined here.

The real sample files ship with the repository under ``tests/data/real`` (where
each came from and its licence: ``tests/data/real/SOURCES.md``). The larger ones
are stored xz-compressed as ``NAME.xz``: pandas and :func:`open_text` read those
as they are, and code that reads plain files takes the ``real_dir`` fixture
(``tests/conftest.py``), a copy of the folder with every ``.xz`` unpacked under
its original name.
"""

from __future__ import annotations

import lzma
import shutil
from pathlib import Path
from typing import TextIO

REPO = Path(__file__).resolve().parents[1]
#: the shipped real sample files, some of them compressed (``.xz``)
REAL = REPO / "tests" / "data" / "real"
VINBIG = REAL / "vinbigdata"
#: VinBigData's Kaggle ``train.csv`` (all 15,000 images), compressed
VINBIG_CSV = VINBIG / "train.csv.xz"
#: original DICOM height/width (``image_id,dim0,dim1``) of the 15,000 train images, compressed
VINBIG_META = VINBIG / "train_meta.csv.xz"
#: VinBigData's Kaggle ``sample_submission.csv``: the 3,000 test ids (``image_id,PredictionString``), compressed
VINBIG_TEST_IDS = VINBIG / "sample_submission.csv.xz"
#: original DICOM height/width (``image_id,dim0,dim1``) of the 3,000 test images, compressed
VINBIG_TEST_META = VINBIG / "test_meta.csv.xz"
PACKED_SUFFIX = ".xz"


def open_text(path: Path) -> TextIO:
    """Open a shipped text file for reading (``newline=""``, ready for :mod:`csv`), unpacking ``.xz``.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
    """
    if path.suffix == PACKED_SUFFIX:
        return lzma.open(path, "rt", encoding="utf-8", newline="")
    return path.open(encoding="utf-8", newline="")


def unpack_real(dest: Path) -> Path:
    """Copy :data:`REAL` into ``dest`` with every ``NAME.xz`` written unpacked as ``NAME``.

    Returns:
        ``dest``, laid out like :data:`REAL` (``dest/vinbigdata/train.csv``, ...).

    Raises:
        FileNotFoundError: if :data:`REAL` is missing (a checkout without ``tests/data``).
    """
    if not REAL.is_dir():
        raise FileNotFoundError(f"real sample data not found at {REAL}: it ships with the repository")
    for src in sorted(REAL.rglob("*")):
        if not src.is_file():
            continue
        rel = src.relative_to(REAL)
        out = dest / (rel.with_suffix("") if src.suffix == PACKED_SUFFIX else rel)
        out.parent.mkdir(parents=True, exist_ok=True)
        if src.suffix == PACKED_SUFFIX:
            with lzma.open(src, "rb") as f, out.open("wb") as g:
                shutil.copyfileobj(f, g, 1 << 20)
        else:
            shutil.copyfile(src, out)
    return dest
