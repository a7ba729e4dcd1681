"""The classifier's images: reading, fitting into the network's square, augmentation, the training set.

Plain numpy and OpenCV (no torch in this module): `GateImages` is pickled into DataLoader
workers, and `GateInput` (how the network sees an image) is shared by training, predicting and
Grad-CAM.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from adapters.base import AdapterError
from core.class_probs import truth_matrix
from core.coco import CocoDataset
from core.io import read_image_gray

#: ImageNet statistics, for the gray image replicated to three channels
MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
RESIZES: tuple[str, ...] = ("stretch", "letterbox")


@dataclass(frozen=True)
class GateInput:
    """How the network sees an image: the square's side, the resize mode and the normalisation.

    Training records it in the checkpoint; predicting and Grad-CAM use the checkpoint's.
    """

    image_size: int
    resize: str = "stretch"
    mean: tuple[float, float, float] = MEAN
    std: tuple[float, float, float] = STD

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any]) -> GateInput:
        return cls(int(ckpt["image_size"]), str(ckpt["resize"]), tuple(ckpt["mean"]), tuple(ckpt["std"]))

    def to_checkpoint(self) -> dict[str, Any]:
        """The checkpoint's ``image_size``, ``resize``, ``mean`` and ``std`` entries (plain data)."""
        return {
            "image_size": self.image_size,
            "resize": self.resize,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    def fit(self, gray: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        """`fit_square` with this input's size and resize mode."""
        return fit_square(gray, self.image_size, self.resize)

    def array(self, grays: Sequence[np.ndarray]) -> np.ndarray:
        """Gray images → the network's input batch, ``(N, 3, S, S)`` float32 (no augmentation)."""
        xs = [normalise(self.fit(g)[0].astype(np.float32) / 255.0, self.mean, self.std) for g in grays]
        return np.stack(xs) if xs else np.zeros((0, 3, self.image_size, self.image_size), np.float32)


def to_gray(image: Path | np.ndarray) -> np.ndarray:
    """A path or a uint8 gray/BGR array as a ``(H, W)`` uint8 gray image.

    Raises:
        AdapterError: an array of another type or shape.
        FileNotFoundError: a path that is not a file.
        ValueError: a file that is not a readable image.
    """
    if isinstance(image, np.ndarray):
        arr = image
        if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 3))):
            raise AdapterError(
                f"expected a uint8 (H, W) gray or (H, W, 3) BGR image, got {arr.dtype} {arr.shape}"
            )
        if arr.ndim == 3:
            arr = arr[:, :, 0] if arr.shape[2] == 1 else cv2.cvtColor(arr, cv2.COLOR_BGR2GRAY)
        return np.ascontiguousarray(arr)
    return read_image_gray(image)


def fit_square(gray: np.ndarray, size: int, resize: str) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Resize a gray image into a ``size`` × ``size`` square.

    Args:
        gray: ``(H, W)`` uint8.
        size: side of the square, pixels.
        resize: ``stretch`` (aspect not kept) or ``letterbox`` (aspect kept, centred, zero padding).

    Returns:
        ``(square, (x0, y0, w, h))``: the ``(size, size)`` uint8 image and where the picture
        lies in it (the whole square for ``stretch``).
    """
    h, w = gray.shape
    if resize == "stretch":
        return cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA), (0, 0, size, size)
    s = size / max(h, w)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    out = np.zeros((size, size), np.uint8)
    x0, y0 = (size - nw) // 2, (size - nh) // 2
    out[y0 : y0 + nh, x0 : x0 + nw] = cv2.resize(gray, (nw, nh), interpolation=cv2.INTER_AREA)
    return out, (x0, y0, nw, nh)


def augment(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flip, small affine, brightness/contrast: ``(S, S)`` uint8 → ``(S, S)`` float32 in [0, 1]."""
    size = img.shape[0]
    if rng.random() < 0.5:
        img = img[:, ::-1]
    angle = rng.uniform(-7.0, 7.0)
    scale = rng.uniform(0.9, 1.1)
    m = cv2.getRotationMatrix2D((size / 2, size / 2), angle, scale)
    m[:, 2] += rng.uniform(-0.05, 0.05, size=2) * size
    img = cv2.warpAffine(
        np.ascontiguousarray(img), m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
    )
    x = img.astype(np.float32) / 255.0
    x = x * rng.uniform(0.9, 1.1) + rng.uniform(-0.08, 0.08)
    return np.clip(x, 0.0, 1.0)


def normalise(x: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``(S, S)`` float32 in [0, 1] → ``(3, S, S)`` float32, channel-wise normalised."""
    m = np.asarray(mean, np.float32)[:, None, None]
    s = np.asarray(std, np.float32)[:, None, None]
    return (np.broadcast_to(x, (3, *x.shape)) - m) / s


def abnormal_labels(dataset: CocoDataset, image_ids: Sequence[int]) -> np.ndarray:
    """``(N,)`` float32: 1.0 for an image with at least one annotation (abnormal), else 0.0."""
    return np.array([0.0 if dataset.is_normal(i) else 1.0 for i in image_ids], np.float32)


class GateImages:
    """Map-style training set: ``(3, S, S)`` float32 input and the image's target.

    ``targets`` is ``(N,)`` float32 (binary: 1.0 abnormal / 0.0 normal), ``(N, k)`` float32
    (multilabel: one 0/1 per class) or ``(N,)`` int64 (multiclass: the class index).

    Plain Python (no torch at import), so DataLoader workers can pickle it. Set ``epoch``
    before each epoch: augmentation is drawn from ``(seed, epoch, index)``, so a seeded run
    repeats whatever the number of workers.
    """

    def __init__(
        self, paths: list[Path], targets: np.ndarray, size: int, resize: str, augment: bool, seed: int
    ) -> None:
        self.paths, self.labels = paths, targets
        self.size, self.resize, self.augment, self.seed = size, resize, augment, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[np.ndarray, Any]:
        img, _ = fit_square(to_gray(self.paths[i]), self.size, self.resize)
        if self.augment:
            x = augment(img, np.random.default_rng([self.seed, self.epoch, i]))
        else:
            x = img.astype(np.float32) / 255.0
        return np.ascontiguousarray(normalise(x, MEAN, STD)), self.labels[i]


def class_targets(dataset: CocoDataset, image_ids: Sequence[int], head: Any) -> tuple[np.ndarray, np.ndarray]:
    """The training targets of ``image_ids`` for a classifier ``head`` (`adapters.gate.model.ClassHead`).

    Returns:
        ``(truth, targets)``: ``truth`` ``(N, k)`` uint8 (`core.class_probs.truth_matrix`);
        ``targets`` as `GateImages` takes them: ``(N,)`` float32 for binary, ``(N, k)`` float32
        for multilabel, ``(N,)`` int64 class indices for multiclass.

    Raises:
        AdapterError: naming the dataset and image whose labels do not fit the head's classes
            (a label that is no class, a multiclass image with other than one class).
    """
    try:
        truth = truth_matrix(dataset, image_ids, head.task, head.classes, head.category_ids)
    except ValueError as e:
        raise AdapterError(str(e)) from None
    if head.task == "binary":
        return truth, truth[:, 0].astype(np.float32)
    if head.task == "multiclass":
        return truth, truth.argmax(axis=1).astype(np.int64)
    return truth, truth.astype(np.float32)
