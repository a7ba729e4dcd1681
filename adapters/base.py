"""What every adapter shares: the `Detector` interface, category maps, devices, loss logs, checkpoints.

Nothing here imports a training framework; torch is imported inside the functions that need it.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from core.coco import CocoDataset
from core.detections import Detections


@runtime_checkable
class Detector(Protocol):
    """One model of one framework behind the common interface (DESIGN.md)."""

    name: str

    def train(self, dataset: CocoDataset, out_dir: Path) -> Path:
        """Train on ``dataset`` (validating on the config's ``dataset.val`` if any); return the weights."""
        ...

    def predict(self, images: Iterable[Path | np.ndarray], batch_size: int) -> Iterator[Detections]:
        """Boxes in absolute pixels of each given image, labels as dataset category ids."""
        ...


class AdapterError(RuntimeError):
    """A clear, user-facing failure of an adapter (bad checkpoint, class mismatch, missing file)."""


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


def load_torch_file(path: str | Path) -> Any:
    """Load a local checkpoint the frameworks wrote (full pickles, so ``weights_only=False``).

    torch >= 2.6 defaults to ``weights_only=True``, which refuses the frameworks' own
    checkpoints; only pass files you trust.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise AdapterError(f"{path}: weights file not found (nothing is downloaded: pass a local file)")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a damaged or foreign file
        raise AdapterError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})") from None


def save_torch_file(path: Path, obj: Any) -> Path:
    """``torch.save`` under a temporary name, renamed onto ``path`` only once complete."""
    import torch

    from core.io import atomic_open

    with atomic_open(path, "wb") as f:
        torch.save(obj, f)
    return Path(path)


class DetectorAdapter:
    """What the detector adapters share: the config, the weights to predict from, the class map.

    A subclass implements ``train``, ``predict`` and ``_load`` (which reads ``self.weights`` and
    sets ``self.categories`` from the checkpoint).
    """

    kind = "detector"

    def __init__(self, cfg: Any, weights: str | Path | None = None) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.weights = Path(weights) if weights else None
        self.categories: CategoryMap | None = None
        self._model: Any = None

    def _checkpoint(self) -> Any:
        """The checkpoint at ``self.weights`` (an `AdapterError` if none was given)."""
        if self.weights is None:
            raise AdapterError(f"{self.name}: predict needs weights (--weights)")
        return load_torch_file(self.weights)

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
