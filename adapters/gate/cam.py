"""Grad-CAM of the gate's last residual stage (``layer4``) for the abnormal logit, drawn over the X-ray."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from adapters.gate.data import GateInput, to_gray
from core.coco import CocoDataset
from core.io import write_png


def cam_map(model: torch.nn.Module, spec: GateInput, gray: np.ndarray) -> tuple[np.ndarray, float]:
    """Grad-CAM of ``model.layer4`` for the abnormal logit of one image, in the image's own frame.

    Args:
        model: a single-logit torchvision ResNet in eval mode.
        spec: how the network sees an image.
        gray: ``(H, W)`` uint8.

    Returns:
        ``(cam, p_abnormal)``: ``cam`` is ``(H, W)`` float32 in [0, 1], scaled to its maximum
        (all zero where nothing in the image raises the abnormal logit).
    """
    device = next(model.parameters()).device
    feats: dict[str, Any] = {}
    hook = model.layer4.register_forward_hook(lambda _m, _i, out: feats.__setitem__("a", out))
    try:
        x = torch.from_numpy(spec.array([gray])).to(device)
        with torch.enable_grad():
            logit = model(x)[0, 0]
            (grad,) = torch.autograd.grad(logit, feats["a"])
    finally:
        hook.remove()
    act = feats["a"][0].detach()
    cam = torch.relu((grad[0].mean(dim=(1, 2))[:, None, None] * act).sum(0)).cpu().numpy()
    size = spec.image_size
    _, (x0, y0, w, h) = spec.fit(gray)
    cam = cv2.resize(cam.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
    cam = cam[y0 : y0 + h, x0 : x0 + w]  # the picture's part of the square (letterbox)
    cam = cv2.resize(cam, (gray.shape[1], gray.shape[0]), interpolation=cv2.INTER_LINEAR)
    cam = cam / cam.max() if cam.max() > 0 else cam
    return cam, float(torch.sigmoid(logit.detach()))


def grad_cam(
    model: torch.nn.Module, spec: GateInput, dataset: CocoDataset, image_ids: Sequence[int], out_dir: Path
) -> list[Path]:
    """Write ``out_dir/cam_{image_id}.png`` for each image: `overlay` of its `cam_map` and ``p_abnormal``.

    Raises:
        FileNotFoundError, ValueError: an image that is missing or unreadable.
        KeyError: an image id not in ``dataset`` (`ResNetGate.grad_cam` checks them first).
    """
    out_dir = Path(out_dir)
    written: list[Path] = []
    for iid in image_ids:
        gray = to_gray(dataset.image_path(int(iid)))
        cam, p = cam_map(model, spec, gray)
        written.append(write_png(out_dir / f"cam_{int(iid)}.png", overlay(gray, cam, p)))
    return written


def overlay(gray: np.ndarray, cam: np.ndarray, p_abnormal: float | None = None) -> np.ndarray:
    """Blend a heat map over a gray image.

    Args:
        gray: ``(H, W)`` uint8.
        cam: ``(H, W)`` float in [0, 1].
        p_abnormal: written in the corner when given (OpenCV's built-in Hershey font, no font files).

    Returns:
        ``(H, W, 3)`` uint8 BGR: the JET colormap blended in, stronger where the map is high; the
        X-ray unchanged where it is zero.
    """
    heat = cv2.applyColorMap(np.clip(cam * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET).astype(np.float32)
    base = np.repeat(gray[:, :, None], 3, axis=2).astype(np.float32)
    a = (0.55 * np.clip(cam, 0, 1))[:, :, None]
    out = np.clip(base * (1 - a) + heat * a, 0, 255).astype(np.uint8)
    if p_abnormal is not None:
        scale = max(0.3, gray.shape[1] / 800)
        cv2.putText(
            out, f"p={p_abnormal:.3f}", (4, int(18 * scale) + 4), cv2.FONT_HERSHEY_SIMPLEX, scale,
            (255, 255, 255), max(1, round(scale)), cv2.LINE_AA,
        )  # fmt: skip
    return out
