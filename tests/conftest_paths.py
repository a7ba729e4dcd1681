"""Where the shared real data lives: ../shared beside the repository."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "real"
VINBIG = REAL / "vinbigdata"
RSNA = REAL / "rsna_pneumonia"
