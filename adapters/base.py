"""What every adapter shares: the `Detector` and `Classifier` interfaces, `AdapterError`, category
maps, devices, loss logs, and `DetectorAdapter` (config, weights, class check).

Weight files are read and written by `adapters.weights` (never running code unless trusted).

Nothing here imports a training framework; torch is imported inside the functions that need it.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from adapters.errors import AdapterError
from adapters.weights import load_weights
from core.coco import CocoDataset
from core.detections import Detections

logger = logging.getLogger(__name__)


@runtime_checkable
class Detector(Protocol):
    """One detection model of one framework behind the common interface.

    `adapters.api.predict` writes its output as COCO results (`core.predictions.write_predictions`).
    """

    name: str

    def train(self, dataset: CocoDataset, out_dir: Path) -> Path:
        """Train on ``dataset`` (validating on the config's ``dataset.val`` if any); return the weights."""
        ...

    def predict(self, images: Iterable[Path | np.ndarray], batch_size: int) -> Iterator[Detections]:
        """Boxes in absolute pixels of each given image, labels as dataset category ids."""
        ...

    def check_categories(self, dataset: CocoDataset) -> None:
        """Raise `AdapterError` unless the weights were trained for ``dataset``'s categories."""
        ...

    def start_weights(self) -> Any:
        """Read the config's start weights once (None if none); raise `AdapterError` if refused."""
        ...


@runtime_checkable
class Classifier(Protocol):
    """A whole-image normal-vs-abnormal classifier (a gate) behind the common interface.

    `adapters.api.predict` writes its output as a gate file (`core.predictions.write_gate`).
    A classifier has ``grad_cam``, which a `Detector` lacks: check ``isinstance(model,
    Classifier)`` first, since a classifier's ``train``/``predict`` also fit `Detector`'s shape.
    """

    name: str

    def train(self, dataset: CocoDataset, out_dir: Path) -> Path:
        """Train on ``dataset`` (abnormal = has annotations); return the weights."""
        ...

    def predict(self, images: Iterable[Path | np.ndarray], batch_size: int) -> Iterator[float]:
        """``p_abnormal`` in [0, 1] per image, in order."""
        ...

    def check_categories(self, dataset: CocoDataset) -> None:
        """Raise `AdapterError` unless the weights can score ``dataset``'s images."""
        ...

    def start_weights(self) -> Any:
        """Read the config's start weights once (None if none); raise `AdapterError` if refused."""
        ...

    def grad_cam(self, dataset: CocoDataset, image_ids: Sequence[int], out_dir: Path) -> list[Path]:
        """Write a heat-map overlay per image into ``out_dir``; return the files."""
        ...


@dataclass(frozen=True)
class CategoryMap:
    """Dataset category ids ↔ a framework's contiguous indices ``0..K-1`` (sorted id order)."""

    ids: tuple[int, ...]
    names: tuple[str, ...]

    @classmethod
    def from_dataset(cls, dataset: CocoDataset) -> CategoryMap:
        names = dataset.category_names
        ids = tuple(sorted(names))
        return cls(ids, tuple(names[i] for i in ids))

    @classmethod
    def from_json(cls, data: Sequence[dict]) -> CategoryMap:
        return cls(tuple(int(c["id"]) for c in data), tuple(str(c["name"]) for c in data))

    def to_json(self) -> list[dict]:
        return [{"id": i, "name": n} for i, n in zip(self.ids, self.names, strict=True)]

    def __len__(self) -> int:
        return len(self.ids)

    def index(self, category_ids: np.ndarray) -> np.ndarray:
        lut = {c: k for k, c in enumerate(self.ids)}
        try:
            return np.array([lut[int(c)] for c in category_ids], np.int64)
        except KeyError as e:
            raise AdapterError(f"category id {e.args[0]} is not one of {list(self.ids)}") from None

    def category(self, indices: np.ndarray) -> np.ndarray:
        idx = np.asarray(indices, np.int64)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self.ids)):
            raise AdapterError(f"model returned class index {int(idx.max())} outside 0..{len(self.ids) - 1}")
        return np.asarray(self.ids, np.int64)[idx] if len(idx) else np.zeros(0, np.int64)

    def check_same(self, other: CategoryMap, what: str) -> None:
        """Raise `AdapterError` naming both class lists if ``other`` differs."""
        if other != self:
            raise AdapterError(
                f"{what} was trained for classes {list(zip(other.ids, other.names, strict=True))}, "
                f"but this dataset has {list(zip(self.ids, self.names, strict=True))}"
            )


def resolve_device(device: str | int) -> str:
    """``auto`` → ``cuda`` where a GPU exists, else ``cpu``; other values are checked and returned."""
    import torch

    device = str(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") or device.replace(",", "").isdigit():
        if not torch.cuda.is_available():
            raise AdapterError(f"device {device!r} asked for, but torch sees no CUDA device")
    elif device != "cpu":
        raise AdapterError(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or N[,M...]")
    return device


#: the config key and CLI flag that allow a full unpickle (named in refusals)
class DetectorAdapter:
    """What the detector adapters share: the config, the weights to predict from, the class map.

    A subclass implements ``train``, ``predict`` and ``_load`` (which reads ``self.weights`` and
    sets ``self.categories`` from the checkpoint). Every file is read with `load_weights`, so a
    file that pickles Python objects is refused unless the config says ``trust_weights``.
    """

    def __init__(self, cfg: Any, weights: str | Path | None = None) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.weights = Path(weights) if weights else None
        self.categories: CategoryMap | None = None
        self._model: Any = None
        self._start: Any = None

    @property
    def trust(self) -> bool:
        """Whether the config allows a full unpickle of weight files (``trust_weights``)."""
        return bool(getattr(self.cfg, "trust_weights", False))

    def _checkpoint(self) -> Any:
        """The checkpoint at ``self.weights`` (an `AdapterError` if none was given)."""
        if self.weights is None:
            raise AdapterError(f"{self.name}: predict needs weights (--weights)")
        return load_weights(self.weights, self.trust)

    def start_weights(self) -> Any:
        """The contents of the config's ``weights`` to train from (read once), or None if it names none.

        `adapters.api.train` calls it before writing anything, so a refused or unreadable file
        leaves the run directory alone.

        Raises:
            AdapterError: no such file, not a readable checkpoint, or (`PickledObjectsError`) a
                file that pickles Python objects while ``trust_weights`` is false.
        """
        if self.cfg.weights and self._start is None:
            self._start = load_weights(self.cfg.weights, self.trust)
        return self._start

    def _load(self) -> Any:
        raise NotImplementedError

    def check_categories(self, dataset: CocoDataset) -> None:
        """Refuse weights trained for other classes than ``dataset``'s."""
        self._load()
        CategoryMap.from_dataset(dataset).check_same(self.categories, str(self.weights))

    def _check_fits(self, model: Any, state_dict: dict) -> None:
        """An `AdapterError` unless ``state_dict`` has every weight of ``model`` in the right shape."""
        want = model.state_dict()
        bad = [k for k, v in state_dict.items() if k in want and tuple(want[k].shape) != tuple(v.shape)]
        if bad:
            raise AdapterError(f"{self.weights}: does not fit {Path(self.cfg.model).name} (e.g. {bad[0]})")
        missing = [k for k in want if k not in state_dict]
        if missing:
            raise AdapterError(
                f"{self.weights}: lacks {len(missing)} weights of the model, e.g. {missing[0]}"
            )


class LossLog:
    """Per-step training losses as CSV: ``step,epoch,loss`` then one column per loss term.

    The file is written to ``loss.csv.part`` and renamed to ``loss.csv`` on `close`.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._tmp = self.path.with_name(self.path.name + ".part")
        self._file = None
        self._writer: Any = None
        self._terms: list[str] = []
        self.rows = 0

    def write(self, step: int, epoch: int | float, terms: dict[str, float]) -> None:
        terms = {k: float(v) for k, v in terms.items()}
        total = terms.pop("loss", None)
        if total is None:
            total = sum(terms.values())
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._terms = sorted(terms)
            self._file = open(self._tmp, "w", newline="")
            self._writer = csv.writer(self._file)
            self._writer.writerow(["step", "epoch", "loss", *self._terms])
        if not math.isfinite(total):
            raise AdapterError(f"training diverged: loss {total} at step {step}")
        self._writer.writerow(
            [step, epoch, f"{total:.6f}", *(f"{terms.get(k, float('nan')):.6f}" for k in self._terms)]
        )
        self.rows += 1

    def close(self) -> Path:
        if self._file is not None:
            self._file.close()
            self._file = None
            self._tmp.replace(self.path)
        return self.path


def training_image_count(dataset: CocoDataset, empty_images: str) -> int:
    """How many images of ``dataset`` a framework trains on under ``schedule.empty_images``.

    ``keep``: every image (those without a box are background); ``drop``: the images with a box.
    The adapters size epochs with it; each framework applies the setting itself (the adapters'
    ``training_images`` report what its own dataset then holds).
    """
    if empty_images == "drop":
        return sum(1 for i in dataset.image_ids if dataset.annotations_of(i))
    return len(dataset.images)


def read_image_bgr(image: Path | np.ndarray) -> np.ndarray:
    """A path or an array (gray or BGR) as a contiguous ``(H, W, 3)`` uint8 BGR array."""
    import cv2

    if isinstance(image, np.ndarray):
        arr = image
    else:
        arr = cv2.imread(str(image), cv2.IMREAD_COLOR)
        if arr is None:
            raise AdapterError(f"{image}: cannot read image")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise AdapterError(f"expected a uint8 gray or BGR image, got {arr.dtype} {arr.shape}")
    return np.ascontiguousarray(arr)


def batched(items: Iterable, n: int) -> Iterator[list]:
    batch: list = []
    for it in items:
        batch.append(it)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def to_detections(
    boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, width: int, height: int
) -> Detections:
    """Framework output → `Detections`, boxes clipped to the image, sorted by score."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
    np.clip(boxes[:, 0::2], 0, width, out=boxes[:, 0::2])
    np.clip(boxes[:, 1::2], 0, height, out=boxes[:, 1::2])
    scores = np.asarray(scores, np.float32).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    return Detections(boxes[order], scores[order], np.asarray(labels, np.int64).reshape(-1)[order])
