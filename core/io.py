"""Atomic file writing: nothing half-written is ever left under a real name."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

from core.errors import UserError

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


def check_out_dir(path: str | Path, flag: str = "--out") -> Path:
    """Refuse an output folder that is an existing file or lies under one, before any work is done.

    Args:
        path: the folder to write into (it need not exist).
        flag: the command-line flag that named it, for the message.

    Returns:
        ``path``.

    Raises:
        UserError: naming ``path``, the flag and the file in the way.
    """
    path = Path(path)
    p = _file_in_the_way(path, include_self=True)
    if p is not None:
        what = "is an existing file" if p == path else f"lies under {p}, which is a file"
        raise UserError(f"{path}: {flag} {what}, not a folder")
    return path


def check_out_file(path: str | Path, flag: str = "--out") -> Path:
    """Refuse an output file that is an existing folder or lies under a file, before any work is done.

    An existing file is fine: it is replaced (atomically) when the new one is complete.

    Args:
        path: the file to write.
        flag: the command-line flag that named it, for the message.

    Returns:
        ``path``.

    Raises:
        UserError: naming ``path``, the flag and what is in the way.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: {flag} is an existing folder, not a file")
    p = _file_in_the_way(path, include_self=False)
    if p is not None:
        raise UserError(f"{path}: {flag} lies under {p}, which is a file")
    return path


def _file_in_the_way(path: Path, include_self: bool) -> Path | None:
    """The nearest existing ancestor of ``path`` (or ``path`` itself) if it is not a folder, else None."""
    for p in (path, *path.parents) if include_self else path.parents:
        if p.exists():
            return None if p.is_dir() else p
    return None


#: ``(resolved path, mtime_ns, size) -> SHA-256`` of the files `file_sha256` has hashed
_SHA256_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex), computed once per path, modification time and size.

    Two files with the same bytes (a copy) have the same digest wherever they lie and however
    their path is spelled; a file rewritten in place is hashed again.

    Raises:
        FileNotFoundError: naming ``path`` if it is not a file.
    """
    path = Path(path)
    try:
        st = path.resolve().stat()
    except OSError:
        st = None
    if st is None or not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    digest = _SHA256_CACHE.get(key)
    if digest is None:
        digest = _SHA256_CACHE[key] = sha256_of(path)
    return digest


def sha256_of(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex), read now in 1 MiB blocks (`file_sha256` remembers it).

    Raises:
        OSError: if the file cannot be read.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
