"""Shared by both synthetic writers: argument checks, coordinate text, atomic text, the DICOM pool."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from convert.images import parallel_map
from core.io import atomic_open

__all__ = ["check_common", "fmt_coord", "write_text", "write_all"]


def check_common(n_images: int, fraction: float, name: str, workers: int) -> None:
    """Check the arguments every writer takes.

    Raises:
        ValueError: ``n_images`` not a positive int, ``fraction`` (called
            ``name``) outside [0, 1], or ``workers`` < 1.
    """
    if not isinstance(n_images, (int, np.integer)) or n_images < 1:
        raise ValueError(f"n_images must be a positive int, got {n_images!r}")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {fraction!r}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers!r}")


def fmt_coord(v: float) -> str:
    """A pixel coordinate as the raw CSVs print it: ``691.0``."""
    return f"{float(v):.1f}"


def write_text(path: Path, text: str) -> Path:
    """Write UTF-8 text atomically, line endings as given, and return the path.

    Raises:
        OSError: if the file cannot be written.
    """
    with atomic_open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    return Path(path)


def write_all(fn: Callable[[Any], str], jobs: Sequence[Any], workers: int, desc: str) -> list[str]:
    """Run a DICOM-writing worker over ``jobs`` (in this process when ``workers`` is 1).

    Args:
        fn: module-level worker (picklable), one job → the path it wrote.
        jobs: the workers' arguments.
        workers: processes; 1 runs in this process.
        desc: progress-bar label.

    Returns:
        The written paths in job order.

    Raises:
        Exception: the first error a worker raised.
    """
    return list(parallel_map(fn, jobs, workers, desc))
