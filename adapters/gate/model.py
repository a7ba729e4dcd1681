"""The classifier's network: building it, its head, reading and checking checkpoints, predicting.

`predict_probs` is a pure function of a network, its `GateInput` and its `ClassHead`:
`ImageClassifier.predict` and the validation during training both call it
(`predict_p_abnormal` is its binary case).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision

from adapters.base import AdapterError, batched, resolve_device
from adapters.gate.data import GateInput, to_gray
from adapters.weights import WeightsReport, load_weights, transfer_weights

ARCHS: tuple[str, ...] = ("resnet18", "resnet34", "resnet50", "densenet121", "efficientnet_b0")
CHECKPOINT_KIND = "gate"
_TRAIN_HINT = "pass weights written by `python -m adapters train` with a classifier config"


@dataclass(frozen=True)
class ClassHead:
    """What the network's outputs mean: the task and the class of each output, in order.

    A binary head has one logit (``p = sigmoid``); multilabel one logit per class (a sigmoid
    each); multiclass one per class (softmax over them).
    """

    task: str = "binary"
    classes: tuple[str, ...] = ("abnormal",)
    category_ids: tuple[int | None, ...] = (None,)

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any]) -> ClassHead:
        """The head a checkpoint records; an early gate's (no ``task``) is binary ``abnormal``."""
        if "task" not in ckpt:
            return cls()
        return cls(str(ckpt["task"]), tuple(ckpt["classes"]), tuple(ckpt["category_ids"]))

    def to_checkpoint(self) -> dict[str, Any]:
        """The checkpoint's ``task``, ``head``, ``classes`` and ``category_ids`` entries (plain data)."""
        return {
            "task": self.task,
            "head": "single_logit" if self.task == "binary" else "linear",
            "classes": list(self.classes),
            "category_ids": list(self.category_ids),
        }

    @property
    def outputs(self) -> int:
        """The number of logits."""
        return len(self.classes)

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """``(N, k)`` logits → ``(N, k)`` probabilities (softmax for multiclass, else sigmoid)."""
        logits = logits.float()
        return torch.softmax(logits, dim=1) if self.task == "multiclass" else torch.sigmoid(logits)


def head_prefix(arch: str) -> str:
    """The state-dict prefix of ``arch``'s classification head (``fc.`` or ``classifier.``)."""
    return "fc." if arch.startswith("resnet") else "classifier."


def build_network(arch: str, outputs: int = 1) -> torch.nn.Module:
    """A torchvision classifier with ``outputs`` logits, built with ``weights=None`` (no download).

    Raises:
        AdapterError: ``arch`` is not one of `ARCHS`.
    """
    if arch not in ARCHS:
        raise AdapterError(f"model {arch!r} is not a classifier architecture; use one of {', '.join(ARCHS)}")
    return getattr(torchvision.models, arch)(weights=None, num_classes=outputs)


def cam_layer(model: torch.nn.Module, arch: str) -> torch.nn.Module:
    """The layer Grad-CAM reads: the last convolutional block before pooling.

    ResNet: the last block of ``layer4``; DenseNet-121: ``features.norm5`` (the network applies
    ReLU and pooling after it); EfficientNet: the last ``features`` block (the 1x1 conv to 1280).
    """
    if arch.startswith("resnet"):
        return model.layer4[-1]
    return model.features[-1]


def torch_device(device: str | int) -> tuple[str, list[int]]:
    """A config's ``device`` as a torch device and, for ``0,1,...``, the GPU ids to spread over.

    Raises:
        AdapterError: an unknown device, or CUDA asked for where torch sees none (`resolve_device`).
    """
    device = resolve_device(device)
    if device.replace(",", "").isdigit():
        ids = [int(d) for d in device.split(",") if d]
        return f"cuda:{ids[0]}", ids
    return device, []


def check_checkpoint(ckpt: Any, path: Path, arch: str, where: str = "the config") -> dict[str, Any]:
    """``ckpt`` if it is a classifier (gate) checkpoint of ``arch``.

    Args:
        ckpt: what `adapters.base.load_weights` read from ``path``.
        path: the file, for messages.
        arch: the configured architecture.
        where: the config file, for messages.

    Raises:
        AdapterError: not a dict, a detector's checkpoint, another architecture, or a missing entry.
    """
    if not isinstance(ckpt, dict):
        raise AdapterError(f"{path}: not a gate checkpoint (a {type(ckpt).__name__}, not a dict)")
    if ckpt.get("kind") != CHECKPOINT_KIND:
        if "cxrfuse_categories" in ckpt or "framework" in ckpt:
            ncls = len(ckpt.get("cxrfuse_categories") or [])
            raise AdapterError(
                f"{path}: a {ckpt.get('framework', 'detector')} detector checkpoint "
                f"({ncls} categor{'y' if ncls == 1 else 'ies'}), not a gate; {_TRAIN_HINT}"
            )
        raise AdapterError(
            f"{path}: not a gate checkpoint (no kind: gate; keys {sorted(map(str, ckpt))[:8]}); {_TRAIN_HINT}"
        )
    if ckpt.get("arch") != arch:
        raise AdapterError(f"{path}: a {ckpt.get('arch')} gate, but {where} says model: {arch}")
    for key in ("state_dict", "image_size", "resize", "mean", "std"):
        if key not in ckpt:
            raise AdapterError(f"{path}: gate checkpoint lacks {key!r}")
    if "task" in ckpt:
        for key in ("classes", "category_ids"):
            if key not in ckpt:
                raise AdapterError(f"{path}: classifier checkpoint lacks {key!r}")
    return ckpt


def load_classifier(
    path: Path, arch: str, device: str | int, where: str = "the config", trust: bool = False
) -> tuple[torch.nn.Module, GateInput, ClassHead]:
    """The network of a classifier checkpoint, in eval mode on ``device``, how it sees an image, its head.

    The checkpoint is read without running code (`adapters.base.load_weights`); ``trust``
    (``trust_weights``) allows a full unpickle of a file that pickles Python objects.

    Raises:
        AdapterError: no such file, a file that pickles Python objects without ``trust``, not a
            classifier checkpoint of ``arch``, weights that do not fit, or a device torch cannot use.
    """
    ckpt = check_checkpoint(load_weights(path, trust), path, arch, where)
    head = ClassHead.from_checkpoint(ckpt)
    model = build_network(arch, head.outputs)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise AdapterError(f"{path}: does not fit {arch}: {str(e).splitlines()[0]}") from None
    dev, _ = torch_device(device)
    return model.to(dev).eval(), GateInput.from_checkpoint(ckpt), head


def load_gate(
    path: Path, arch: str, device: str | int, where: str = "the config", trust: bool = False
) -> tuple[torch.nn.Module, GateInput]:
    """`load_classifier` without the head: the network and how it sees an image.

    Raises:
        AdapterError: as `load_classifier`.
    """
    model, spec, _ = load_classifier(path, arch, device, where, trust)
    return model, spec


def load_start_weights(
    model: torch.nn.Module,
    path: Path,
    arch: str,
    where: str = "the config",
    *,
    trust: bool = False,
    ckpt: Any = None,
) -> WeightsReport:
    """Load an ImageNet state dict or a classifier checkpoint into ``model`` to train from; the head may differ.

    Args:
        model: the network (`build_network`) to fill.
        path: the weights file.
        arch: the configured architecture.
        where: the config file, for messages.
        trust: allow a full unpickle of a file that pickles Python objects (``trust_weights``).
        ckpt: the file's contents if already read (`ImageClassifier.start_weights`).

    Returns:
        What was loaded and skipped; ``new`` lists the head's weights left as initialised (not
        in the file, or of another shape), e.g. ``fc.weight``.

    Raises:
        AdapterError: no such file, a file that pickles Python objects without ``trust``, a
            detector's checkpoint, a classifier of another architecture, not a state dict of
            tensors, or one that lacks (or has in another shape) a weight of the trunk.
    """
    path = Path(path)
    ckpt = load_weights(path, trust) if ckpt is None else ckpt
    if isinstance(ckpt, dict) and (
        ckpt.get("kind") == CHECKPOINT_KIND or "cxrfuse_categories" in ckpt or "framework" in ckpt
    ):
        sd = check_checkpoint(ckpt, path, arch, where)["state_dict"]  # a detector's checkpoint raises here
    else:
        sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
        if not isinstance(sd, dict) or not all(hasattr(v, "shape") for v in sd.values()):
            raise AdapterError(f"{path}: not a state dict of tensors nor a gate checkpoint")
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    want = model.state_dict()
    prefix = head_prefix(arch)
    body = [k for k in want if not k.startswith(prefix) and not k.endswith("num_batches_tracked")]
    bad = [k for k in body if k not in sd or tuple(sd[k].shape) != tuple(want[k].shape)]
    if bad:
        raise AdapterError(
            f"{path}: does not fit {arch}: {len(bad)} weights missing or of another shape, e.g. {bad[0]}"
        )
    return transfer_weights(model, sd, path)


def predict_probs(
    model: torch.nn.Module,
    spec: GateInput,
    head: ClassHead,
    images: Iterable[Path | np.ndarray],
    batch_size: int,
) -> Iterator[np.ndarray]:
    """``(k,)`` float64 class probabilities per image, in order; ``model`` must be in eval mode.

    Args:
        model: a network of ``head.outputs`` logits (`build_network`), on any device.
        spec: how the network sees an image (from its checkpoint, or the training run's).
        head: what the outputs mean (softmax for multiclass, else a sigmoid each).
        images: PNG/JPEG paths or uint8 ``(H, W)`` gray / ``(H, W, 3)`` BGR arrays.
        batch_size: images per forward pass.

    Raises:
        AdapterError: an array of another type or shape.
        FileNotFoundError, ValueError: an image file that is missing or unreadable.
    """
    device = next(model.parameters()).device
    for batch in batched(images, max(1, batch_size)):
        x = torch.from_numpy(spec.array([to_gray(im) for im in batch])).to(device)
        with torch.inference_mode():
            p = head.probs(model(x)).cpu().numpy().astype(np.float64)
        yield from p


def predict_p_abnormal(
    model: torch.nn.Module, spec: GateInput, images: Iterable[Path | np.ndarray], batch_size: int
) -> Iterator[float]:
    """``p_abnormal = sigmoid(logit)`` in [0, 1] per image, in order, of a single-logit network in eval mode.

    Args:
        model: a single-logit network (`build_network`), on any device.
        spec: how the network sees an image (from its checkpoint, or the training run's).
        images: PNG/JPEG paths or uint8 ``(H, W)`` gray / ``(H, W, 3)`` BGR arrays.
        batch_size: images per forward pass.

    Raises:
        AdapterError: an array of another type or shape.
        FileNotFoundError, ValueError: an image file that is missing or unreadable.
    """
    for p in predict_probs(model, spec, ClassHead(), images, batch_size):
        yield float(p[0])
