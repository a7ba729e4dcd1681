"""Shared fixtures: small synthetic raw datasets and the real sample files."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: real sample data shipped beside the repository (``/work/shared`` for ``/work/main``)
REAL = REPO.parent / "shared" / "data" / "real"


@pytest.fixture(scope="session")
def real_dir() -> Path:
    """Folder of real sample files (``../shared/data/real``); its absence is a failure, not a skip."""
    assert REAL.is_dir(), f"real sample data not found at {REAL}: check out ../shared beside the repository"
    return REAL


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
