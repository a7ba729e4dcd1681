"""Folds split by image and stratified by class."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

import numpy as np


def assign_folds(labels: Mapping[str, set[int]], n_folds: int = 5, seed: int = 0) -> dict[str, int]:
    """Assign every image to one of ``n_folds`` folds, balancing each class across folds.

    Greedy multi-label stratification: abnormal images are placed rarest class
    first, each into the fold that holds the fewest boxes-bearing images of its
    rarest class (ties: fewest images, then a seeded random order); normal images
    (empty label set) are then dealt out to even the fold sizes.

    Args:
        labels: image key → set of class ids present on it (empty for a normal image).
        n_folds: number of folds, at least 2.
        seed: seed of the tie-breaking order.

    Returns:
        image key → fold index in ``[0, n_folds)``.

    Raises:
        ValueError: if ``n_folds`` < 2 or exceeds the number of images.
    """
    if n_folds < 2:
        raise ValueError(f"n_folds must be at least 2, got {n_folds}")
    if n_folds > len(labels):
        raise ValueError(f"n_folds={n_folds} exceeds the number of images ({len(labels)})")
    rng = np.random.default_rng(seed)
    keys = sorted(labels)
    order = [keys[i] for i in rng.permutation(len(keys))]
    freq = Counter(c for k in keys for c in labels[k])
    per_class = {c: np.zeros(n_folds, np.int64) for c in freq}
    sizes = np.zeros(n_folds, np.int64)
    out: dict[str, int] = {}
    abnormal = [k for k in order if labels[k]]
    abnormal.sort(key=lambda k: min(freq[c] for c in labels[k]))  # stable: seeded order within a rarity
    for k in abnormal:
        rarest = min(labels[k], key=lambda c: (freq[c], c))
        tie = rng.random(n_folds)
        fold = int(np.lexsort((tie, sizes, per_class[rarest]))[0])
        out[k] = fold
        sizes[fold] += 1
        for c in labels[k]:
            per_class[c][fold] += 1
    for k in (k for k in order if not labels[k]):
        fold = int(np.lexsort((rng.random(n_folds), sizes))[0])
        out[k] = fold
        sizes[fold] += 1
    return out
