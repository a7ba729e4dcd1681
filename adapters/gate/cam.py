"""Grad-CAM of a classifier's last convolutional block for one class, drawn over the X-ray.

The maps come from the maintained ``pytorch-grad-cam`` package (``grad-cam`` on PyPI,
`pytorch_grad_cam.GradCAM`), imported only when a map is drawn. The layer is the backbone's last
convolutional block (`adapters.gate.model.cam_layer`); the target is the chosen class's logit
(before the sigmoid or softmax).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from adapters.gate.data import GateInput, to_gray
from adapters.gate.model import ClassHead, cam_layer
from core.class_probs import NORMAL_NAMES
from core.coco import CocoDataset
from core.io import write_json, write_png

#: the index of the Grad-CAM overlays a folder holds: ``[{image_id, class, p, file}]``
CAM_INDEX = "cams.json"


def cam_maps(
    model: torch.nn.Module,
    arch: str,
    spec: GateInput,
    head: ClassHead,
    grays: Sequence[np.ndarray],
    classes: Sequence[int],
) -> list[tuple[np.ndarray, float]]:
    """Grad-CAM of class ``classes[i]``'s logit for image ``grays[i]``, in each image's own frame.

    Args:
        model: the classifier in eval mode.
        arch: its architecture (which layer to read, `adapters.gate.model.cam_layer`).
        spec: how the network sees an image.
        head: what its outputs mean (for the probabilities returned).
        grays: ``(H, W)`` uint8 images.
        classes: one output index per image.

    Returns:
        Per image ``(cam, p)``: ``cam`` is ``(H, W)`` float32 in [0, 1], scaled to its maximum
        (all zero where nothing in the image raises the logit), ``p`` the class's probability.
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    out: list[tuple[np.ndarray, float]] = []
    with GradCAM(model=model, target_layers=[cam_layer(model, arch)]) as cam:
        for gray, k in zip(grays, classes, strict=True):
            device = next(model.parameters()).device
            x = torch.from_numpy(spec.array([gray])).to(device)
            with torch.enable_grad():
                grid = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(k))])[0]
            p = float(head.probs(cam.outputs.detach())[0, int(k)])
            out.append((_to_image_frame(grid, spec, gray), p))
    return out


def _to_image_frame(grid: np.ndarray, spec: GateInput, gray: np.ndarray) -> np.ndarray:
    """A map over the network's square → over the image (the letterbox's padding cut off)."""
    size = spec.image_size
    _, (x0, y0, w, h) = spec.fit(gray)
    grid = cv2.resize(grid.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
    grid = grid[y0 : y0 + h, x0 : x0 + w]
    grid = cv2.resize(grid, (gray.shape[1], gray.shape[0]), interpolation=cv2.INTER_LINEAR)
    grid = np.clip(grid, 0.0, None)
    return grid / grid.max() if grid.max() > 0 else grid


def cam_file_name(image_id: int, head: ClassHead, class_name: str) -> str:
    """``cam_{id}.png`` for a binary head, ``cam_{id}_{class}.png`` (the class made file-safe) otherwise."""
    if head.task == "binary":
        return f"cam_{int(image_id)}.png"
    slug = re.sub(r"[^A-Za-z0-9]+", "_", class_name).strip("_").lower() or "class"
    return f"cam_{int(image_id)}_{slug}.png"


def grad_cam(
    model: torch.nn.Module,
    arch: str,
    spec: GateInput,
    head: ClassHead,
    dataset: CocoDataset,
    image_ids: Sequence[int],
    out_dir: Path,
    class_name: str | None = None,
) -> list[Path]:
    """Write one `overlay` per image into ``out_dir`` and the index ``cams.json``.

    The class is ``class_name`` when given; else the binary head's one class, the most probable
    class (multiclass), or the most probable class other than the normal one (multilabel).

    Returns:
        The PNGs written (`cam_file_name`), in ``image_ids`` order.

    Raises:
        FileNotFoundError, ValueError: an image that is missing or unreadable.
        KeyError: an image id not in ``dataset`` or a class not in ``head``
            (`ImageClassifier.check_cam` checks both first).
    """
    out_dir = Path(out_dir)
    grays = [to_gray(dataset.image_path(int(i))) for i in image_ids]
    if class_name is not None:
        if class_name not in head.classes:
            raise KeyError(f"no class {class_name!r}; the classes are {list(head.classes)}")
        ks = [head.classes.index(class_name)] * len(grays)
    elif head.task == "binary":
        ks = [0] * len(grays)
    else:
        x = torch.from_numpy(spec.array(grays)).to(next(model.parameters()).device)
        with torch.inference_mode():
            p = head.probs(model(x)).cpu().numpy() if len(grays) else np.zeros((0, head.outputs))
        if head.task == "multilabel":
            normal = [j for j, c in enumerate(head.classes) if c in NORMAL_NAMES]
            if len(normal) < head.outputs:
                p[:, normal] = -1.0
        ks = [int(k) for k in p.argmax(axis=1)]
    written: list[Path] = []
    index = []
    for iid, gray, k, (cam, p) in zip(
        image_ids, grays, ks, cam_maps(model, arch, spec, head, grays, ks), strict=True
    ):
        name = head.classes[k]
        label = f"p={p:.3f}" if head.task == "binary" else f"{name} p={p:.3f}"
        path = write_png(out_dir / cam_file_name(iid, head, name), overlay(gray, cam, label))
        written.append(path)
        index.append({"image_id": int(iid), "class": name, "p": round(p, 6), "file": path.name})
    write_json(out_dir / CAM_INDEX, index, indent=1)
    return written


def overlay(gray: np.ndarray, cam: np.ndarray, p_abnormal: float | str | None = None) -> np.ndarray:
    """Blend a heat map over a gray image.

    Args:
        gray: ``(H, W)`` uint8.
        cam: ``(H, W)`` float in [0, 1].
        p_abnormal: a probability (written ``p=0.123``) or a text written in the corner when given
            (OpenCV's built-in Hershey font, no font files).

    Returns:
        ``(H, W, 3)`` uint8 BGR: the JET colormap blended in, stronger where the map is high; the
        X-ray unchanged where it is zero.
    """
    heat = cv2.applyColorMap(np.clip(cam * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET).astype(np.float32)
    base = np.repeat(gray[:, :, None], 3, axis=2).astype(np.float32)
    a = (0.55 * np.clip(cam, 0, 1))[:, :, None]
    out = np.clip(base * (1 - a) + heat * a, 0, 255).astype(np.uint8)
    if p_abnormal is not None:
        text = p_abnormal if isinstance(p_abnormal, str) else f"p={p_abnormal:.3f}"
        scale = max(0.3, gray.shape[1] / 800)
        cv2.putText(
            out, text, (4, int(18 * scale) + 4), cv2.FONT_HERSHEY_SIMPLEX, scale,
            (255, 255, 255), max(1, round(scale)), cv2.LINE_AA,
        )  # fmt: skip
    return out
