"""What the leaderboard reads besides the dataset: file patterns, run folders, and what sidecars say.

Sidecars (``NAME.meta.json``, see `core.predictions`) name a row, its kind, its speed and, for a
fusion, the gate it was made with.
"""

from __future__ import annotations

import glob
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def expand_paths(patterns: Sequence[str | Path]) -> list[Path]:
    """Files named by ``patterns`` (glob patterns expanded), in order, without repeats or sidecars.

    ``*.meta.json`` sidecars and ``*.npz`` columnar companions (`core.predictions`) are skipped,
    so ``preds/*.json`` or ``preds/*``, quoted or expanded by the shell, names the results and gate
    files only.

    Raises:
        FileNotFoundError: naming a pattern that matches nothing or a path that is not a file.
    """
    out: dict[Path, None] = {}
    for pattern in patterns:
        text = str(pattern)
        if glob.has_magic(text):
            matches = sorted(glob.glob(text))
            if not matches:
                raise FileNotFoundError(f"{text}: matches no file")
        else:
            matches = [text]
        for m in matches:
            p = Path(m)
            if p.name.endswith(".meta.json") or p.suffix == ".npz":
                continue
            if not p.is_file():
                raise FileNotFoundError(f"{p}: no such file")
            out.setdefault(p, None)
    return list(out)


def expand_dirs(patterns: Sequence[str | Path]) -> list[Path]:
    """Directories named by ``patterns`` (glob patterns expanded), in order, without repeats.

    Raises:
        FileNotFoundError: naming a pattern that matches no directory.
    """
    out: dict[Path, None] = {}
    for pattern in patterns:
        text = str(pattern)
        matches = sorted(glob.glob(text)) if glob.has_magic(text) else [text]
        dirs = [Path(m) for m in matches if Path(m).is_dir()]
        if not dirs:
            raise FileNotFoundError(f"{text}: no such run directory")
        for d in dirs:
            out.setdefault(d, None)
    return list(out)


def images_per_second(meta: Mapping[str, Any]) -> float | None:
    v = meta.get("images_per_second")
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0:
        return float(v)
    n, s = meta.get("images"), meta.get("seconds")
    if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (n, s)) and n > 0 and s > 0:
        return float(n) / float(s)
    return None


def gated_label(meta: Mapping[str, Any], kind: str) -> str:
    """A fusion's gate as its sidecar names it: ``gate`` is a path, or ``{path, mode, low, high}``
    as ``ensemble run`` writes it (``GATE (MODE)``, ``GATE (filter LOW..HIGH)``); ``no`` if null."""
    if kind != "fusion":
        return ""
    g = meta.get("gate")
    if not g:
        return "no"
    if isinstance(g, str):
        return Path(g).stem if g.endswith(".json") else g
    if not isinstance(g, Mapping):
        return "yes"
    where = next((g[k] for k in ("name", "path", "file") if isinstance(g.get(k), str)), "gate")
    text = Path(where).stem if where.endswith(".json") else where
    mode = g.get("mode")
    if isinstance(mode, str) and mode:
        low, high = g.get("low"), g.get("high")
        if mode == "filter" and all(isinstance(v, (int, float)) for v in (low, high)):
            mode = f"filter {low:g}..{high:g}"
        text += f" ({mode})"
    return text



def peek_json_list(path: Path) -> list | None:
    """The JSON list in ``path``, or None if it is unreadable or not a list (for better error messages)."""
    try:
        with open(path, encoding="utf-8") as f:
            rows = json.load(f)
    except (OSError, ValueError):
        return None
    return rows if isinstance(rows, list) else None
