"""What every adapter shares: the `Detector` and `Classifier` interfaces, `AdapterError`, category
maps, devices, loss logs, and `DetectorAdapter` (config, weights, class check).

Weight files are read and written by `adapters.weights` (never running code unless trusted).

Nothing here imports a training framework; torch is imported inside the functions that need it.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
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
    """``auto`` → ``cuda`` where a GPU exists, else ``cpu``; other values are checked and returned.

    `adapters.api` calls it before any work or file writing, so a device the machine lacks fails first.

    Raises:
        AdapterError: a CUDA device (``cuda``, ``cuda:N``, ``N[,M...]``) where torch sees none or
            fewer than asked for, ``mps`` where there is no MPS, or an unknown device name.
    """
    import torch

    device = str(device).strip()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") or device.replace(",", "").isdigit():
        if not torch.cuda.is_available():
            raise AdapterError(f"device {device!r} asked for, but torch sees no CUDA device")
        ids = device.removeprefix("cuda").lstrip(":").split(",") if device != "cuda" else []
        n = torch.cuda.device_count()
        bad = [i for i in ids if i and (not i.isdigit() or int(i) >= n)]
        if bad:
            raise AdapterError(f"device {device!r} asked for, but torch sees {n} CUDA device(s) (0..{n - 1})")
    elif device == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise AdapterError("device 'mps' asked for, but torch sees no Apple MPS device")
    elif device != "cpu":
        raise AdapterError(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N, N[,M...] or mps")
    return device


# ---------------------------------------------------------------------------- run folders

#: what a training writes into its run folder (all adapters): `prepare_run_dir` removes only these
RUN_FILES: tuple[str, ...] = (
    "weights.pt",
    "weights.pth",
    "config.yaml",
    "categories.json",
    "loss.csv",
    "loss.csv.part",
    "weights_report.json",
    "val_metrics.csv",
    "run.json",
    "train.log",
)
#: the frameworks' own folders in a run folder (Ultralytics' run and data, checkpoints)
RUN_FOLDERS: tuple[str, ...] = ("ultralytics", "yolo_data", "mmdet", "detectron2", "checkpoints")
#: the final weights: their presence means the run finished
FINAL_WEIGHTS: tuple[str, ...] = ("weights.pt", "weights.pth")
#: set by tests only: SIGKILL the training process right after its first resumable checkpoint
KILL_AFTER_CHECKPOINT_ENV = "CXRFUSE_TEST_KILL_AFTER_CHECKPOINT"


@dataclass(frozen=True)
class RunState:
    """What `prepare_run_dir` found in a run folder and what the training is to do with it.

    Attributes:
        run_dir: the run folder (made if it was missing).
        status: ``new`` (no run of ours there), ``unfinished`` (our files, no final weights) or
            ``finished`` (final weights present) — before ``overwrite`` removed anything.
        resume: continue the unfinished run from its framework's last checkpoint (`checkpoint`,
            None when it was killed before writing one: the training starts over).
        checkpoint: the adapter's last resumable checkpoint, if resuming from one.
        removed: the entries ``overwrite`` removed.
    """

    run_dir: Path
    status: str
    resume: bool = False
    checkpoint: Path | None = None
    removed: tuple[str, ...] = ()


def _ours(run_dir: Path, extra: Sequence[str]) -> list[str]:
    names = (*RUN_FILES, *RUN_FOLDERS, *extra)
    return [n for n in names if (run_dir / n).exists() or (run_dir / n).is_symlink()]


def prepare_run_dir(
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    checkpoint: Callable[[Path], Path | None] | None = None,
    extra: Sequence[str] = (),
    dry_run: bool = False,
) -> RunState:
    """Apply the run-folder rule of every training: never silently replace or mix with an earlier run.

    - no run of ours in ``out_dir`` (missing, empty, or only files CXRFuse did not write): a new run;
    - a finished run (final weights present): refused unless ``overwrite``;
    - an unfinished run (our files, no final weights; a killed training): refused unless
      ``resume`` (continue from ``checkpoint(out_dir)``, the framework's last checkpoint; a run killed
      before its first checkpoint starts over) or ``overwrite``.

    ``overwrite`` removes only what a training writes (`RUN_FILES`, `RUN_FOLDERS` and ``extra``);
    any other file in the folder is left alone. ``resume`` on a folder without a run is an error,
    and so is ``resume`` on a finished run.

    Args:
        out_dir: the run folder.
        overwrite: replace an existing run (finished or not).
        resume: continue an unfinished run.
        checkpoint: the adapter's ``resume_checkpoint``: its last resumable checkpoint in a run
            folder, or None.
        extra: more entries the caller's training writes into the folder (removed by ``overwrite``).
        dry_run: check only: nothing is made or removed (``status`` and ``checkpoint`` are filled).

    Returns:
        The `RunState`; the folder exists afterwards (unless ``dry_run``).

    Raises:
        AdapterError: both ``overwrite`` and ``resume``; ``out_dir`` is a file; a finished run
            without ``overwrite``; an unfinished run without ``resume`` or ``overwrite``; ``resume``
            with no run to resume or a finished one.
    """
    run_dir = Path(out_dir)
    if overwrite and resume:
        raise AdapterError(f"{run_dir}: --overwrite and --resume exclude each other: pass one")
    if run_dir.exists() and not run_dir.is_dir():
        raise AdapterError(f"{run_dir}: the run folder (--out-dir) is an existing file, not a folder")
    ours = _ours(run_dir, extra) if run_dir.is_dir() else []
    finals = [n for n in FINAL_WEIGHTS if (run_dir / n).is_file()]
    status = "finished" if finals else ("unfinished" if ours else "new")
    if resume:
        if status == "new":
            raise AdapterError(f"{run_dir}: no run to resume (--resume continues an unfinished training here)")
        if status == "finished":
            raise AdapterError(
                f"{run_dir} holds a finished run (weights {run_dir / finals[0]}); nothing to resume: "
                "pass --overwrite to replace it or --out-dir for a new one"
            )
        ckpt = checkpoint(run_dir) if checkpoint is not None else None
        if ckpt is None and not dry_run:
            logger.warning("%s: no checkpoint was written before the run stopped; training starts over", run_dir)
        return RunState(run_dir, status, resume=True, checkpoint=ckpt)
    if status == "finished" and not overwrite:
        raise AdapterError(
            f"{run_dir} holds a finished run (weights {run_dir / finals[0]}); "
            "pass --overwrite to replace it or --out-dir for a new one"
        )
    if status == "unfinished" and not overwrite:
        raise AdapterError(
            f"{run_dir} holds an unfinished run ({', '.join(ours[:3])}{', ...' if len(ours) > 3 else ''}, "
            "no final weights); pass --resume to continue it, --overwrite to replace it or --out-dir for a new one"
        )
    removed: tuple[str, ...] = ()
    if overwrite and ours and not dry_run:
        import shutil

        for name in ours:
            p = run_dir / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        removed = tuple(ours)
        logger.info("%s: removed the earlier run's %s", run_dir, ", ".join(ours))
    if not dry_run:
        run_dir.mkdir(parents=True, exist_ok=True)
    return RunState(run_dir, status, removed=removed)


def checkpoint_period(period: int, total: int) -> int:
    """Iterations between resumable checkpoints under ``schedule.checkpoint_period`` (0: none).

    ``N > 0``: every N iterations; ``0`` (the default): about ten per run of 50 or more
    iterations, none in a shorter one; ``-1``: none. The last checkpoint replaces the one before.
    """
    if period > 0:
        return period
    if period == 0 and total >= 50:
        return max(1, total // 10)
    return 0


def checkpoint_written(path: Path) -> None:
    """Called by the adapters after each resumable checkpoint: logs it (and, in tests only, dies).

    With ``CXRFUSE_TEST_KILL_AFTER_CHECKPOINT=1`` in the environment the process SIGKILLs itself
    here, exactly as a killed training stops: the resume tests use it to stop a run at a known step.
    """
    import os

    logger.debug("checkpoint %s", path)
    if os.environ.get(KILL_AFTER_CHECKPOINT_ENV) == "1":
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


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
        #: what `adapters.api.train` decided for the run folder (resume or not), set before ``train``
        self.run_state: RunState | None = None

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
            AdapterError: no such file, not a readable checkpoint, a checkpoint of ours made for
                another model or image size (`check_model`), or (`PickledObjectsError`) a
                file that pickles Python objects while ``trust_weights`` is false.
        """
        if self.cfg.weights and self._start is None:
            self._start = load_weights(self.cfg.weights, self.trust)
            self.check_model(self.recorded_model(self._start), self.cfg.weights)
        return self._start

    def recorded_model(self, ckpt: Any) -> dict[str, Any] | None:
        """The ``cxrfuse_model`` record of a checkpoint of ours (`model_record`), None for other files."""
        rec = ckpt.get("cxrfuse_model") if isinstance(ckpt, dict) else None
        return rec if isinstance(rec, dict) else None

    def _load(self) -> Any:
        raise NotImplementedError

    @staticmethod
    def resume_checkpoint(run_dir: Path) -> Path | None:
        """The last resumable checkpoint of this framework in ``run_dir``, or None."""
        return None

    @property
    def resume_from(self) -> Path | None:
        """The checkpoint `train` continues from (set by `adapters.api.train` for ``--resume``)."""
        return self.run_state.checkpoint if self.run_state is not None and self.run_state.resume else None

    def check_model(self, recorded: dict[str, Any] | None, path: str | Path) -> None:
        """Refuse a checkpoint of ours made for another architecture or image size than the config's.

        Args:
            recorded: the checkpoint's ``cxrfuse_model`` record (`model_record`), or None for weights
                that do not say (foreign files: only what the file shows is checked, elsewhere).
            path: the weights file, for the message.

        Raises:
            AdapterError: naming both the checkpoint's and the config's model or image size.
        """
        if not isinstance(recorded, dict):
            return
        mine = self.model_record()
        if recorded.get("model") and Path(str(recorded["model"])).name != mine["model"]:
            raise AdapterError(
                f"{path}: trained as {recorded['model']}, but {self.cfg.source or 'the config'} is "
                f"{mine['model']}; use the config it was trained with"
            )
        if recorded.get("image_size") and int(recorded["image_size"]) != mine["image_size"]:
            raise AdapterError(
                f"{path}: trained at image_size {recorded['image_size']}, but {self.cfg.source or 'the config'} "
                f"says {mine['image_size']}; use the config it was trained with (or --set image_size="
                f"{recorded['image_size']})"
            )

    def model_record(self) -> dict[str, Any]:
        """What a checkpoint records of its config (``cxrfuse_model``): adapter, model file name, image size."""
        return {"adapter": self.cfg.adapter, "model": Path(self.cfg.model).name, "image_size": self.cfg.image_size}

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

    The file is written to ``loss.csv.part`` (one line at a time, so a killed run keeps every row
    it logged) and renamed to ``loss.csv`` on `close`. A resumed run keeps the rows up to its
    checkpoint's step (``resume_step``) and continues after them.
    """

    def __init__(self, path: Path, resume_step: int | None = None) -> None:
        self.path = Path(path)
        self._tmp = self.path.with_name(self.path.name + ".part")
        self._file = None
        self._writer: Any = None
        self._terms: list[str] = []
        self.rows = 0
        self._kept: tuple[list[str], list[list[str]]] | None = None
        if resume_step is not None:
            self._kept = self._rows_until(resume_step)

    def _rows_until(self, step: int) -> tuple[list[str], list[list[str]]] | None:
        """The header and the rows up to ``step`` of the unfinished log (None if it has none)."""
        src = self._tmp if self._tmp.is_file() else self.path
        if not src.is_file():
            return None
        with open(src, newline="") as f:
            rows = list(csv.reader(f))
        if not rows:
            return None
        kept = [r for r in rows[1:] if len(r) == len(rows[0]) and r[0].isdigit() and int(r[0]) <= step]
        if len(kept) != step:
            raise AdapterError(
                f"{src}: holds {len(kept)} rows up to step {step}, the resumed checkpoint's step; "
                "cannot continue it: pass --overwrite to start over"
            )
        return rows[0], kept

    def write(self, step: int, epoch: int | float, terms: dict[str, float]) -> None:
        terms = {k: float(v) for k, v in terms.items()}
        total = terms.pop("loss", None)
        if total is None:
            total = sum(terms.values())
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._terms = sorted(terms)
            header = ["step", "epoch", "loss", *self._terms]
            kept: list[list[str]] = []
            if self._kept is not None and self._kept[0] == header:
                kept = self._kept[1]
            elif self._kept is not None:
                raise AdapterError(f"{self._tmp}: its columns {self._kept[0]} differ from this run's {header}")
            self._file = open(self._tmp, "w", newline="", buffering=1)
            self._writer = csv.writer(self._file, lineterminator="\n")
            self._writer.writerow(header)
            self._writer.writerows(kept)
            self.rows = len(kept)
        if not math.isfinite(total):
            raise AdapterError(f"training diverged: loss {total} at step {step}")
        self._writer.writerow(
            [step, epoch, f"{total:.6f}", *(f"{terms.get(k, float('nan')):.6f}" for k in self._terms)]
        )
        self.rows += 1

    def flush(self) -> None:
        """Push the rows written so far to the disk (before a checkpoint that counts them)."""
        if self._file is not None:
            self._file.flush()

    def close(self) -> Path:
        if self._file is None and self._kept is not None and self._kept[1]:
            # resumed after the last step: nothing new to log, the kept rows are the whole log
            self._file = open(self._tmp, "w", newline="")
            csv.writer(self._file, lineterminator="\n").writerows([self._kept[0], *self._kept[1]])
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
