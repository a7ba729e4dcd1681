"""Atomic file writing: nothing half-written is ever left under a real name."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file beside ``path``; rename it onto ``path`` only on success.

    On an exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any, indent: int | None = None) -> Path:
    """Write ``obj`` as JSON atomically and return the path."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent)
    return Path(path)


def read_json(path: str | Path) -> Any:
    """Read a JSON file, with an error naming the file if it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def write_png(path: str | Path, image: np.ndarray) -> Path:
    """Write a uint8 ``(H, W)`` or ``(H, W, 3)`` image as PNG atomically."""
    import cv2

    path = Path(path)
    if image.dtype != np.uint8:
        raise ValueError(f"{path}: expected a uint8 image, got {image.dtype}")
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"{path}: PNG encoding failed")
    with atomic_open(path, "wb") as f:
        f.write(buf.tobytes())
    return path


def read_image_gray(path: str | Path) -> np.ndarray:
    """Read a PNG/JPEG as a uint8 ``(H, W)`` grey image (colour is averaged to grey)."""
    import cv2

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image")
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise ValueError(f"{path}: not a readable image")
    return img
