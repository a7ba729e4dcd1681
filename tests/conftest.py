"""Shared fixtures: small synthetic raw datasets and the real sample files."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest_paths import unpack_real


@pytest.fixture(scope="session")
def real_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real sample files shipped in ``tests/data/real``, copied with every ``.xz`` unpacked.

    Their absence is a failure (``FileNotFoundError``), not a skip.
    """
    return unpack_real(tmp_path_factory.mktemp("real"))


@pytest.fixture(scope="session")
def real_vinbig(real_dir: Path) -> Path:
    """The shipped VinBigData files, unpacked.

    Kaggle's complete ``train.csv``, ``train_meta.csv`` (the original height and width of its
    15,000 images) and a few images under ``images/<format>/``.
    """
    return real_dir / "vinbigdata"


@pytest.fixture(scope="session")
def synth_vinbig(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic VinBigData raw set (20 images, 128–192 px, seed 0).

    Its first 18 images cover every photometric × BitsStored × transfer-syntax
    variant; ``synth_truth.json`` holds the true boxes.
    """
    from convert.synth import make_vinbig

    return make_vinbig(tmp_path_factory.mktemp("vinbig_raw"), n_images=20, seed=0, sizes=(128, 192))


@pytest.fixture(scope="session")
def synth_rsna(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic RSNA raw set (8 patients, 256×256 JPEG baseline, seed 0)."""
    from convert.synth import make_rsna

    return make_rsna(tmp_path_factory.mktemp("rsna_raw"), n_images=8, seed=0, size=256, positive_fraction=0.5)
