"""`ResNetGate`: the gate behind the `adapters.base.Classifier` interface (see `adapters.gate`)."""

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
from adapters.gate.model import ARCHS, load_gate, predict_p_abnormal
from adapters.gate.train import GateOptions, train_gate
from adapters.weights import load_weights
from core.coco import CocoDataset

logger = logging.getLogger(__name__)


class ResNetGate:
    """A torchvision ResNet scoring ``p_abnormal`` per image (see `adapters.gate`).

    Satisfies `adapters.base.Classifier`: ``train`` writes a checkpoint, ``predict`` yields one
    float per image, ``grad_cam`` draws where the abnormal logit looks.
    """

    def __init__(self, cfg: ModelConfig, weights: str | Path | None = None) -> None:
        """Check the config's architecture and options; nothing is loaded yet.

        Raises:
            AdapterError: ``model`` is not one of `ARCHS`, or an unknown or invalid option.
        """
        where = str(cfg.source or "config")
        if cfg.model not in ARCHS:
            raise AdapterError(
                f"{where}: model {cfg.model!r} is not a gate architecture; use one of {', '.join(ARCHS)}"
            )
        self.options = GateOptions.parse(cfg.options, where)
        self.cfg = cfg
        self.name = cfg.name
        self.weights = Path(weights) if weights else None
        self._loaded: tuple[torch.nn.Module, GateInput] | None = None
        self._start: Any = None

    def start_weights(self) -> Any:
        """The contents of the config's ``weights`` to train from (read once), or None.

        Raises:
            AdapterError: no such file, not readable, or a file that pickles Python objects
                while ``trust_weights`` is false.
        """
        if self.cfg.weights and self._start is None:
            self._start = load_weights(self.cfg.weights, self.cfg.trust_weights)
        return self._start

    def _load(self) -> tuple[torch.nn.Module, GateInput]:
        """The network for predicting (eval mode, on the config's device) and how it sees an image.

        Raises:
            AdapterError: no weights given, or weights that are not a gate of the configured arch.
        """
        if self._loaded is None:
            if self.weights is None:
                raise AdapterError(f"{self.name}: predict needs weights (--weights)")
            where = str(self.cfg.source or "the config")
            model, spec = load_gate(self.weights, self.cfg.model, self.cfg.device, where, self.cfg.trust_weights)
            if spec.image_size != self.cfg.image_size:
                logger.warning(
                    "%s: %s was trained at %d px; predicting at that size, not the config's %d",
                    self.name, self.weights, spec.image_size, self.cfg.image_size,
                )  # fmt: skip
            self._loaded = (model, spec)
        return self._loaded

    def train(self, dataset: CocoDataset, out_dir: Path) -> Path:
        """Train on ``dataset`` (abnormal = has annotations); return ``out_dir/weights.pth``.

        The trained network is kept: ``predict`` uses it without reading the file back.

        Raises:
            AdapterError: the set lacks normal or abnormal images, the start weights do not
                fit, the loss diverges, or ``dataset.val`` is missing.
        """
        weights, model, spec = train_gate(self.cfg, dataset, out_dir, self.start_weights())
        self.weights, self._loaded, self._start = weights, (model, spec), None
        return weights

    def predict(self, images: Iterable[Path | np.ndarray], batch_size: int = 16) -> Iterator[float]:
        """``p_abnormal`` in [0, 1] per image, in order.

        Args:
            images: PNG/JPEG paths or uint8 ``(H, W)`` gray / ``(H, W, 3)`` BGR arrays.
            batch_size: images per forward pass.

        Raises:
            AdapterError: no or unfit weights, or an array of another type or shape.
            FileNotFoundError, ValueError: an image file that is missing or unreadable.
        """
        model, spec = self._load()
        yield from predict_p_abnormal(model, spec, images, batch_size)

    def check_categories(self, dataset: CocoDataset) -> None:
        """A gate is class-agnostic: only check that the weights are a gate of the configured arch.

        Raises:
            AdapterError: as ``predict``'s loading.
        """
        self._load()

    def grad_cam(self, dataset: CocoDataset, image_ids: Sequence[int], out_dir: Path) -> list[Path]:
        """Grad-CAM of ``layer4`` for the abnormal logit, drawn over each X-ray.

        Writes ``out_dir/cam_{image_id}.png``: the image in gray (its own size) with the map
        blended in the JET colormap (stronger where the map is high) and ``p_abnormal``
        written in the top-left corner. The map is scaled to its maximum; one that is zero
        everywhere (nothing in the image raises the abnormal logit) leaves the X-ray plain.

        Raises:
            AdapterError: an image id not in ``dataset``, or no/unfit weights.
        """
        known = set(dataset.image_ids)
        unknown = [i for i in image_ids if int(i) not in known]
        if unknown:
            raise AdapterError(f"Grad-CAM: image ids {unknown} are not in {dataset.path or 'the dataset'}")
        model, spec = self._load()
        return grad_cam(model, spec, dataset, image_ids, out_dir)
