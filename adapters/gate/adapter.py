"""`ImageClassifier`: the classifier behind the `adapters.base.Classifier` interface (see `adapters.gate`).

`ResNetGate` is the same class under the gate's earlier name.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adapters.base import AdapterError
from adapters.config import ModelConfig
from adapters.gate.cam import grad_cam
from adapters.gate.data import GateInput
from adapters.gate.model import ARCHS, ClassHead, load_classifier, predict_probs
from adapters.gate.train import GateOptions, resume_checkpoint, train_gate
from adapters.weights import load_weights
from core.class_probs import ClassProbs
from core.coco import CocoDataset

logger = logging.getLogger(__name__)


class ImageClassifier:
    """A torchvision classifier: binary (the gate), multiclass or multilabel (see `adapters.gate`).

    Satisfies `adapters.base.Classifier`: ``train`` writes a checkpoint, ``predict`` yields per
    image ``p_abnormal`` (binary) or every class's probability, `class_probs` turns those into
    the predictions file's `core.class_probs.ClassProbs`, ``grad_cam`` draws where a class's
    logit looks.
    """

    def __init__(self, cfg: ModelConfig, weights: str | Path | None = None) -> None:
        """Check the config's architecture and options; nothing is loaded yet.

        Raises:
            AdapterError: ``model`` is not one of `ARCHS`, or an unknown or invalid option.
        """
        where = str(cfg.source or "config")
        if cfg.model not in ARCHS:
            raise AdapterError(
                f"{where}: model {cfg.model!r} is not a classifier architecture; use one of {', '.join(ARCHS)}"
            )
        self.options = GateOptions.parse(cfg.options, where)
        self.cfg = cfg
        self.name = cfg.name
        self.weights = Path(weights) if weights else None
        self._loaded: tuple[torch.nn.Module, GateInput, ClassHead] | None = None
        self._start: Any = None
        #: what `adapters.api.train` decided for the run folder (resume or not), set before ``train``
        self.run_state: Any = None

    @staticmethod
    def resume_checkpoint(run_dir: Path) -> Path | None:
        """The last resumable checkpoint in ``run_dir`` (``checkpoints/last.pth``), or None."""
        return resume_checkpoint(run_dir)

    def start_weights(self) -> Any:
        """The contents of the config's ``weights`` to train from (read once), or None.

        Raises:
            AdapterError: no such file, not readable, or a file that pickles Python objects
                while ``trust_weights`` is false.
        """
        if self.cfg.weights and self._start is None:
            self._start = load_weights(self.cfg.weights, self.cfg.trust_weights)
        return self._start

    def _load(self) -> tuple[torch.nn.Module, GateInput, ClassHead]:
        """The network for predicting (eval mode, on the config's device), how it sees an image, its head.

        Raises:
            AdapterError: no weights given, or weights that are not a classifier of the configured
                arch, or one trained for another task than ``options.task`` says.
        """
        if self._loaded is None:
            if self.weights is None:
                raise AdapterError(f"{self.name}: predict needs weights (--weights)")
            where = str(self.cfg.source or "the config")
            model, spec, head = load_classifier(
                self.weights, self.cfg.model, self.cfg.device, where, self.cfg.trust_weights
            )
            if head.task != self.options.task:
                raise AdapterError(
                    f"{self.weights}: a {head.task} classifier, but {where} says options.task: {self.options.task}"
                )
            if spec.image_size != self.cfg.image_size:
                logger.warning(
                    "%s: %s was trained at %d px; predicting at that size, not the config's %d",
                    self.name, self.weights, spec.image_size, self.cfg.image_size,
                )  # fmt: skip
            self._loaded = (model, spec, head)
        return self._loaded

    @property
    def head(self) -> ClassHead:
        """The task and classes of the loaded weights.

        Raises:
            AdapterError: as ``predict``'s loading.
        """
        return self._load()[2]

    def train(self, dataset: CocoDataset, out_dir: Path) -> Path:
        """Train on ``dataset`` (`adapters.gate.train.train_gate`); return ``out_dir/weights.pth``.

        The trained network is kept: ``predict`` uses it without reading the file back. With
        ``run_state`` (set by `adapters.api.train`) saying resume, training continues from the run's
        ``checkpoints/last.pth``.

        Raises:
            AdapterError: as `adapters.gate.train.train_gate`.
        """
        state = self.run_state
        resume = state.checkpoint if state is not None and getattr(state, "resume", False) else None
        weights, model, spec, head = train_gate(self.cfg, dataset, out_dir, self.start_weights(), resume)
        self.weights, self._loaded, self._start = weights, (model, spec, head), None
        return weights

    def predict(self, images: Iterable[Path | np.ndarray], batch_size: int = 16) -> Iterator[Any]:
        """Per image, in order: binary ``p_abnormal`` (a float); else ``(k,)`` class probabilities.

        Args:
            images: PNG/JPEG paths or uint8 ``(H, W)`` gray / ``(H, W, 3)`` BGR arrays.
            batch_size: images per forward pass.

        Raises:
            AdapterError: no or unfit weights, or an array of another type or shape.
            FileNotFoundError, ValueError: an image file that is missing or unreadable.
        """
        model, spec, head = self._load()
        for p in predict_probs(model, spec, head, images, batch_size):
            yield float(p[0]) if head.task == "binary" else p

    def class_probs(self, image_ids: Sequence[int], outputs: Sequence[Any]) -> ClassProbs:
        """``predict``'s outputs for ``image_ids`` as the predictions file's `ClassProbs`.

        Raises:
            AdapterError: as ``predict``'s loading.
            ValueError: outputs of another count or shape than the classes.
        """
        head = self.head
        probs = np.array([np.atleast_1d(np.asarray(o, np.float64)) for o in outputs]).reshape(
            len(image_ids), -1
        )
        return ClassProbs(head.task, head.classes, head.category_ids, np.asarray(image_ids, np.int64), probs)

    def check_categories(self, dataset: CocoDataset) -> None:
        """A classifier needs no dataset classes to predict: only check that its weights load.

        Raises:
            AdapterError: as ``predict``'s loading.
        """
        self._load()

    def check_cam(
        self, dataset: CocoDataset, image_ids: Sequence[int], class_name: str | None = None
    ) -> None:
        """Check Grad-CAM's image ids and class before any work.

        Raises:
            AdapterError: naming the image ids not in ``dataset``, or a class the weights lack
                (listing theirs); as ``predict``'s loading.
        """
        known = set(dataset.image_ids)
        unknown = [int(i) for i in image_ids if int(i) not in known]
        if unknown:
            raise AdapterError(f"Grad-CAM: image ids {unknown} are not in {dataset.path or 'the dataset'}")
        if class_name is not None and class_name not in self.head.classes:
            raise AdapterError(
                f"Grad-CAM: {self.weights} has no class {class_name!r}; its classes are {list(self.head.classes)}"
            )

    def grad_cam(
        self, dataset: CocoDataset, image_ids: Sequence[int], out_dir: Path, class_name: str | None = None
    ) -> list[Path]:
        """Grad-CAM of the last convolutional block for one class, drawn over each X-ray.

        Writes ``out_dir/cam_{image_id}.png`` (binary) or ``cam_{image_id}_{class}.png``: the image
        in gray (its own size) with the map blended in the JET colormap (stronger where the map
        is high) and the class's probability written in the top-left corner; and
        ``out_dir/cams.json``, the index ``[{image_id, class, p, file}]``. The class is
        ``class_name``, else the binary class, the most probable one (multiclass) or the most
        probable one other than the normal class (multilabel). The map is scaled to its maximum;
        one that is zero everywhere leaves the X-ray plain.

        Raises:
            AdapterError: an image id not in ``dataset``, a class the weights lack, or no/unfit weights.
            FileNotFoundError, ValueError: an image that is missing or unreadable.
        """
        self.check_cam(dataset, image_ids, class_name)
        model, spec, head = self._load()
        return grad_cam(model, self.cfg.model, spec, head, dataset, image_ids, out_dir, class_name)


#: the gate's earlier name
ResNetGate = ImageClassifier
