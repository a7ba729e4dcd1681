"""The normal-vs-abnormal gate: a torchvision ResNet that scores ``p_abnormal`` per image.

``model`` in the config is the torchvision architecture: ``resnet18``, ``resnet34`` or
``resnet50``, always built with ``weights=None`` (nothing is downloaded). ``weights`` may name
a local torchvision ImageNet state dict (e.g. ``resnet18-f37072fd.pth``) or an earlier gate
checkpoint to start from; a classification head that does not fit is skipped.

The head is a single logit ("abnormal"), trained with ``BCEWithLogitsLoss``;
``p_abnormal = sigmoid(logit)``. An image is abnormal when the dataset gives it at least one
annotation. The network sees the grayscale image resized to ``image_size`` × ``image_size``
(``options.resize: stretch``, the default) or scaled into that square and padded
(``letterbox``), replicated to three channels and normalised with the ImageNet mean and std
(so ImageNet weights fit). The checkpoint records size, resize mode and normalisation, and
predicting uses those whatever the config's ``image_size`` says. Training adds light
augmentation (horizontal flip, a small rotation/scale/shift, brightness and contrast) drawn
from ``(seed, epoch, index)``, so a seeded run repeats whatever the number of loader workers.

Class imbalance (VinBigData is about 70 % normal) is handled by ``options.balance``:
``loss`` (default) weights the abnormal term by ``n_normal / n_abnormal``; ``sampler``
draws both classes equally often; ``none`` leaves the data as they are.

Schedule: ``schedule.iterations`` steps if set, else ``schedule.epochs`` (default 1) passes
over the set, ``schedule.batch_size`` images a step, ``schedule.workers`` loader processes.
The learning rate ``schedule.lr`` warms up linearly over ``schedule.warmup_iters`` steps,
then follows a cosine down to 1 % of itself.

Options (``options:`` in the config; unknown keys are refused):

- ``optimizer``: ``adamw`` (default; ``schedule.weight_decay``) or ``sgd`` (Nesterov, also
  ``schedule.momentum``).
- ``balance``: ``loss`` | ``sampler`` | ``none`` (above).
- ``resize``: ``stretch`` | ``letterbox`` (above).
- ``augment``: ``true`` (default) or ``false``.
- ``amp``: mixed precision (float16 autocast) on CUDA, default ``true``; never on the CPU.

``train`` writes ``OUT/weights.pth`` (tmp file, then renamed): ``{kind: "gate", arch,
image_size, resize, mean, std, head: "single_logit", state_dict, ...}``, ``OUT/loss.csv``
(one row per step) and, when the config names ``dataset.val``, ``OUT/val_metrics.csv`` (AUC
and accuracy at 0.5 after every epoch). `ResNetGate.grad_cam` draws Grad-CAM maps of the
last residual stage (``layer4``) for the abnormal logit over the X-ray.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from adapters.base import AdapterError, LossLog, batched, load_torch_file, resolve_device, save_torch_file
from adapters.config import ModelConfig
from core.coco import CocoDataset
from core.io import atomic_open, read_image_gray, write_png

ARCHS: tuple[str, ...] = ("resnet18", "resnet34", "resnet50")
#: ImageNet statistics, for the gray image replicated to three channels
MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
RESIZES: tuple[str, ...] = ("stretch", "letterbox")
_OPTIONS: dict[str, tuple[Any, ...]] = {
    "optimizer": ("adamw", "sgd"),
    "balance": ("loss", "sampler", "none"),
    "resize": RESIZES,
    "augment": (True, False),
    "amp": (True, False),
}
CHECKPOINT_KIND = "gate"


# --------------------------------------------------------------------------- images


def _gray(image: Path | np.ndarray) -> np.ndarray:
    """A path or a uint8 gray/BGR array as a ``(H, W)`` uint8 gray image."""
    import cv2

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
    import cv2

    h, w = gray.shape
    if resize == "stretch":
        return cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA), (0, 0, size, size)
    s = size / max(h, w)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    out = np.zeros((size, size), np.uint8)
    x0, y0 = (size - nw) // 2, (size - nh) // 2
    out[y0 : y0 + nh, x0 : x0 + nw] = cv2.resize(gray, (nw, nh), interpolation=cv2.INTER_AREA)
    return out, (x0, y0, nw, nh)


def _augment(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flip, small affine, brightness/contrast: ``(S, S)`` uint8 → ``(S, S)`` float32 in [0, 1]."""
    import cv2

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


def _normalise(x: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``(S, S)`` float32 in [0, 1] → ``(3, S, S)`` float32, channel-wise normalised."""
    m = np.asarray(mean, np.float32)[:, None, None]
    s = np.asarray(std, np.float32)[:, None, None]
    return (np.broadcast_to(x, (3, *x.shape)) - m) / s


class _GateImages:
    """Map-style training set: ``(3, S, S)`` float32 input and label 1.0 (abnormal) / 0.0 (normal).

    Plain Python (no torch at import), so DataLoader workers can pickle it. Set ``epoch``
    before each epoch: augmentation is drawn from ``(seed, epoch, index)``.
    """

    def __init__(
        self, paths: list[Path], labels: np.ndarray, size: int, resize: str, augment: bool, seed: int
    ) -> None:
        self.paths, self.labels = paths, labels
        self.size, self.resize, self.augment, self.seed = size, resize, augment, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.float32]:
        img, _ = fit_square(_gray(self.paths[i]), self.size, self.resize)
        if self.augment:
            x = _augment(img, np.random.default_rng([self.seed, self.epoch, i]))
        else:
            x = img.astype(np.float32) / 255.0
        return np.ascontiguousarray(_normalise(x, MEAN, STD)), np.float32(self.labels[i])


# --------------------------------------------------------------------------- metrics


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half); ``nan`` unless both classes are present.

    Args:
        labels: ``(N,)`` 0/1 (1 = abnormal).
        scores: ``(N,)`` higher = more abnormal.
    """
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, np.float64)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), np.float64)
    sorted_scores = scores[order]
    # average ranks over ties (1-based)
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


# --------------------------------------------------------------------------- the adapter


def _torch_device(device: str) -> tuple[str, list[int]]:
    """`resolve_device`'s answer as a torch device and, for ``0,1,...``, the GPU ids to spread over."""
    if device.replace(",", "").isdigit():
        ids = [int(d) for d in device.split(",") if d]
        return f"cuda:{ids[0]}", ids
    return device, []


class ResNetGate:
    """A torchvision ResNet scoring ``p_abnormal`` per image (see the module docstring)."""

    kind = "gate"

    def __init__(self, cfg: ModelConfig, weights: str | Path | None = None) -> None:
        where = cfg.source or "config"
        if cfg.model not in ARCHS:
            raise AdapterError(
                f"{where}: model {cfg.model!r} is not a gate architecture; use one of {', '.join(ARCHS)}"
            )
        for key, value in cfg.options.items():
            if key not in _OPTIONS:
                raise AdapterError(
                    f"{where}: unknown option {key!r} for resnet_gate (known: {', '.join(_OPTIONS)})"
                )
            if value not in _OPTIONS[key] or isinstance(value, bool) != isinstance(_OPTIONS[key][0], bool):
                raise AdapterError(
                    f"{where}: options.{key} must be one of {', '.join(map(str, _OPTIONS[key]))}, got {value!r}"
                )
        self.cfg = cfg
        self.name = cfg.name
        self.weights = Path(weights) if weights else None
        self._model = None
        self._meta: dict[str, Any] | None = None

    def _opt(self, key: str, default: Any) -> Any:
        return self.cfg.options.get(key, default)

    # ------------------------------------------------------------------ model
    def _build(self):
        import torchvision

        return getattr(torchvision.models, self.cfg.model)(weights=None, num_classes=1)

    def _gate_checkpoint(self, ckpt: Any, path: Path) -> dict[str, Any]:
        """Check that ``ckpt`` is a gate checkpoint of the configured arch; return it."""
        if not isinstance(ckpt, dict):
            raise AdapterError(f"{path}: not a gate checkpoint (a {type(ckpt).__name__}, not a dict)")
        if ckpt.get("kind") != CHECKPOINT_KIND:
            if "cxrfuse_categories" in ckpt or "framework" in ckpt:
                ncls = len(ckpt.get("cxrfuse_categories") or [])
                raise AdapterError(
                    f"{path}: a {ckpt.get('framework', 'detector')} detector checkpoint "
                    f"({ncls} categor{'y' if ncls == 1 else 'ies'}), not a gate; pass weights written by "
                    "`python -m adapters train` with a resnet_gate config"
                )
            raise AdapterError(
                f"{path}: not a gate checkpoint (no kind: gate; keys {sorted(map(str, ckpt))[:8]}); "
                "pass weights written by `python -m adapters train` with a resnet_gate config"
            )
        if ckpt.get("arch") != self.cfg.model:
            raise AdapterError(
                f"{path}: a {ckpt.get('arch')} gate, but {self.cfg.source or 'the config'} says model: {self.cfg.model}"
            )
        for key in ("state_dict", "image_size", "resize", "mean", "std"):
            if key not in ckpt:
                raise AdapterError(f"{path}: gate checkpoint lacks {key!r}")
        return ckpt

    def _load(self):
        """The network for predicting (eval mode, on the config's device) from ``self.weights``."""
        if self._model is not None:
            return self._model
        if self.weights is None:
            raise AdapterError(f"{self.name}: predict needs weights (--weights)")
        ckpt = self._gate_checkpoint(load_torch_file(self.weights), self.weights)
        model = self._build()
        try:
            model.load_state_dict(ckpt["state_dict"])
        except RuntimeError as e:
            raise AdapterError(
                f"{self.weights}: does not fit {self.cfg.model}: {str(e).splitlines()[0]}"
            ) from None
        device, _ = _torch_device(resolve_device(self.cfg.device))
        self._model = model.to(device).eval()
        self._meta = {k: ckpt[k] for k in ("image_size", "resize", "mean", "std")}
        if int(ckpt["image_size"]) != self.cfg.image_size:
            print(
                f"{self.name}: {self.weights} was trained at {ckpt['image_size']} px; "
                f"predicting at that size, not the config's {self.cfg.image_size}"
            )
        return self._model

    def _initial_state(self, model) -> None:
        """Load ``cfg.weights`` (ImageNet state dict or gate checkpoint) into ``model``; the head may differ."""
        path = Path(self.cfg.weights)
        ckpt = load_torch_file(path)
        if isinstance(ckpt, dict) and ckpt.get("kind") == CHECKPOINT_KIND:
            sd = self._gate_checkpoint(ckpt, path)["state_dict"]
        elif isinstance(ckpt, dict) and ("cxrfuse_categories" in ckpt or "framework" in ckpt):
            self._gate_checkpoint(ckpt, path)  # raises: a detector checkpoint
        else:
            sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
            if not isinstance(sd, dict) or not all(hasattr(v, "shape") for v in sd.values()):
                raise AdapterError(f"{path}: not a state dict of tensors nor a gate checkpoint")
            sd = {k.removeprefix("module."): v for k, v in sd.items()}
        want = model.state_dict()
        head = {k for k in want if k.startswith("fc.")}
        body = [k for k in want if k not in head and not k.endswith("num_batches_tracked")]
        bad = [k for k in body if k not in sd or tuple(sd[k].shape) != tuple(want[k].shape)]
        if bad:
            raise AdapterError(
                f"{path}: does not fit {self.cfg.model}: {len(bad)} weights missing or of another shape, "
                f"e.g. {bad[0]}"
            )
        keep = {k: v for k, v in sd.items() if k in want and tuple(v.shape) == tuple(want[k].shape)}
        model.load_state_dict(keep, strict=False)
        skipped = sorted(head - set(keep))
        print(f"{self.name}: started from {path}" + (f" (head {', '.join(skipped)} new)" if skipped else ""))

    # ------------------------------------------------------------------ train
    def train(self, dataset: CocoDataset, out_dir: Path) -> Path:
        """Train on ``dataset`` (abnormal = has annotations); return ``out_dir/weights.pth``.

        Raises:
            AdapterError: the set lacks normal or abnormal images, the start weights do not
                fit, the loss diverges, or ``dataset.val`` is missing.
        """
        import torch
        from torch.utils.data import DataLoader, RandomSampler, WeightedRandomSampler

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        s, size = self.cfg.schedule, self.cfg.image_size
        resize, balance = self._opt("resize", "stretch"), self._opt("balance", "loss")
        ids = dataset.image_ids
        labels = np.array([0.0 if dataset.is_normal(i) else 1.0 for i in ids], np.float32)
        n_abn = int(labels.sum())
        n_norm = len(ids) - n_abn
        where = dataset.path or "the training set"
        if n_abn == 0 or n_norm == 0:
            raise AdapterError(
                f"{where}: the gate needs normal and abnormal images; it has {n_norm} normal, {n_abn} abnormal"
            )
        val = None
        if self.cfg.dataset.get("val"):
            val_path = Path(self.cfg.dataset["val"])
            if not val_path.is_file():
                raise AdapterError(f"{self.cfg.source}: dataset.val {val_path} not found")
            val = CocoDataset.load(val_path)
        device, gpu_ids = _torch_device(resolve_device(self.cfg.device))
        amp = bool(self._opt("amp", True)) and device.startswith("cuda")

        torch.manual_seed(s.seed)
        model = self._build()
        if self.cfg.weights:
            self._initial_state(model)
        model = model.to(device)
        net = torch.nn.DataParallel(model, device_ids=gpu_ids) if len(gpu_ids) > 1 else model

        data = _GateImages(
            [dataset.image_path(i) for i in ids],
            labels,
            size,
            resize,
            bool(self._opt("augment", True)),
            s.seed,
        )
        gen = torch.Generator().manual_seed(s.seed)
        if balance == "sampler":
            w = np.where(labels > 0, 0.5 / n_abn, 0.5 / n_norm)
            sampler = WeightedRandomSampler(torch.as_tensor(w, dtype=torch.double), len(ids), generator=gen)
        else:
            sampler = RandomSampler(data, generator=gen)
        loader = DataLoader(
            data,
            batch_size=s.batch_size,
            sampler=sampler,
            num_workers=s.workers,
            drop_last=len(ids) > s.batch_size,
            pin_memory=device.startswith("cuda"),
        )
        steps_per_epoch = len(loader)
        total = s.iterations or steps_per_epoch * (s.epochs or 1)
        pos_weight = torch.tensor([n_norm / n_abn if balance == "loss" else 1.0], device=device)
        criterion = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
        if self._opt("optimizer", "adamw") == "sgd":
            opt = torch.optim.SGD(
                model.parameters(), lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay, nesterov=True
            )
        else:
            opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
        warm = max(0, s.warmup_iters)

        def lr_factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            t = (step - warm) / max(1, total - warm)
            return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
        scaler = torch.amp.GradScaler("cuda", enabled=amp)
        log = LossLog(out_dir / "loss.csv")
        val_rows: list[dict[str, Any]] = []
        print(
            f"{self.name}: {self.cfg.model} gate, {len(ids)} images ({n_abn} abnormal, {n_norm} normal), "
            f"{total} steps of {s.batch_size} at {size} px on {device}"
        )
        step, epoch, t0 = 0, 0, time.perf_counter()
        try:
            while step < total:
                epoch += 1
                data.epoch = epoch
                net.train()
                for x, y in loader:
                    x = x.to(device, non_blocking=True)
                    y = y.to(device, non_blocking=True)
                    with torch.autocast(device.split(":")[0], enabled=amp):
                        logit = net(x).squeeze(1)
                    loss = criterion(logit.float(), y)
                    opt.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                    sched.step()
                    step += 1
                    log.write(step, epoch, {"loss_bce": loss.item()})
                    if s.log_period and (step % s.log_period == 0 or step == total):
                        print(
                            f"  step {step}/{total} epoch {epoch} loss {loss.item():.4f} "
                            f"lr {opt.param_groups[0]['lr']:.2e} ({time.perf_counter() - t0:.0f} s)"
                        )
                    if step >= total:
                        break
                if val is not None:
                    val_rows.append(self._validate(model, val, step, epoch, size, resize))
                    _write_csv(out_dir / "val_metrics.csv", val_rows)
        finally:
            log.close()

        weights = out_dir / "weights.pth"
        ckpt = {
            "kind": CHECKPOINT_KIND,
            "framework": "torchvision",
            "arch": self.cfg.model,
            "head": "single_logit",
            "classes": ["normal", "abnormal"],
            "image_size": size,
            "resize": resize,
            "mean": list(MEAN),
            "std": list(STD),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "train": {"images": len(ids), "abnormal": n_abn, "steps": step, "epochs": epoch, "seed": s.seed},
        }
        save_torch_file(weights, ckpt)
        self.weights, self._model = weights, model.eval()
        self._meta = {"image_size": size, "resize": resize, "mean": list(MEAN), "std": list(STD)}
        return weights

    def _validate(self, model, val: CocoDataset, step: int, epoch: int, size: int, resize: str) -> dict:
        """AUC and accuracy at 0.5 of ``model`` on ``val``; printed and returned as a CSV row."""
        model.eval()
        self._model, self._meta = model, {"image_size": size, "resize": resize, "mean": MEAN, "std": STD}
        try:
            ids = val.image_ids
            scores = np.array(
                list(self.predict([val.image_path(i) for i in ids], self.cfg.predict.batch_size))
            )
        finally:
            self._model = self._meta = None
        truth = np.array([0 if val.is_normal(i) else 1 for i in ids])
        auc = roc_auc(truth, scores)
        acc = float(((scores >= 0.5) == truth.astype(bool)).mean()) if len(ids) else float("nan")
        print(f"  val epoch {epoch}: AUC {auc:.4f}, accuracy@0.5 {acc:.4f} ({len(ids)} images)")
        return {
            "epoch": epoch,
            "step": step,
            "images": len(ids),
            "auc": f"{auc:.6f}",
            "accuracy": f"{acc:.6f}",
        }

    # ------------------------------------------------------------------ predict
    def _inputs(self, grays: list[np.ndarray]):
        import torch

        m = self._meta
        xs = [
            _normalise(
                fit_square(g, int(m["image_size"]), m["resize"])[0].astype(np.float32) / 255.0,
                m["mean"],
                m["std"],
            )
            for g in grays
        ]
        return torch.from_numpy(np.stack(xs))

    def predict(self, images: Iterable[Path | np.ndarray], batch_size: int = 16) -> Iterator[float]:
        """``p_abnormal`` in [0, 1] per image, in order.

        Args:
            images: PNG/JPEG paths or uint8 ``(H, W)`` gray / ``(H, W, 3)`` BGR arrays.
            batch_size: images per forward pass.

        Raises:
            AdapterError: no or unfit weights, or an unreadable image.
        """
        import torch

        model = self._load()
        device = next(model.parameters()).device
        for batch in batched(images, max(1, batch_size)):
            x = self._inputs([_gray(im) for im in batch]).to(device)
            with torch.inference_mode():
                p = torch.sigmoid(model(x).float().squeeze(1)).cpu().numpy()
            yield from (float(v) for v in p)

    def check_categories(self, dataset: CocoDataset) -> None:
        """A gate is class-agnostic: only check that the weights are a gate of the configured arch."""
        self._load()

    # ------------------------------------------------------------------ Grad-CAM
    def grad_cam(self, dataset: CocoDataset, image_ids: Sequence[int], out_dir: Path) -> list[Path]:
        """Grad-CAM of ``layer4`` for the abnormal logit, drawn over each X-ray.

        Writes ``out_dir/cam_{image_id}.png``: the image in gray (its own size) with the map
        blended in the JET colormap (stronger where the map is high) and ``p_abnormal``
        written in the top-left corner. The map is scaled to its maximum; one that is zero
        everywhere (nothing in the image raises the abnormal logit) leaves the X-ray plain.

        Raises:
            AdapterError: an image id not in ``dataset``, or no/unfit weights.
        """
        import cv2
        import torch

        known = set(dataset.image_ids)
        unknown = [i for i in image_ids if int(i) not in known]
        if unknown:
            raise AdapterError(f"Grad-CAM: image ids {unknown} are not in {dataset.path or 'the dataset'}")
        model = self._load()
        device = next(model.parameters()).device
        feats: dict[str, Any] = {}
        hook = model.layer4.register_forward_hook(lambda _m, _i, out: feats.__setitem__("a", out))
        out_dir = Path(out_dir)
        written: list[Path] = []
        try:
            for iid in image_ids:
                gray = _gray(dataset.image_path(int(iid)))
                size, resize = int(self._meta["image_size"]), self._meta["resize"]
                _, (x0, y0, w, h) = fit_square(gray, size, resize)
                x = self._inputs([gray]).to(device)
                with torch.enable_grad():
                    logit = model(x)[0, 0]
                    (grad,) = torch.autograd.grad(logit, feats["a"])
                act = feats["a"][0].detach()
                cam = torch.relu((grad[0].mean(dim=(1, 2))[:, None, None] * act).sum(0)).cpu().numpy()
                cam = cv2.resize(cam.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
                cam = cam[y0 : y0 + h, x0 : x0 + w]
                cam = cv2.resize(cam, (gray.shape[1], gray.shape[0]), interpolation=cv2.INTER_LINEAR)
                cam = cam / cam.max() if cam.max() > 0 else cam
                written.append(
                    write_png(
                        out_dir / f"cam_{int(iid)}.png",
                        overlay(gray, cam, float(torch.sigmoid(logit.detach()))),
                    )
                )
        finally:
            hook.remove()
        return written


def overlay(gray: np.ndarray, cam: np.ndarray, p_abnormal: float | None = None) -> np.ndarray:
    """Blend a heat map over a gray image.

    Args:
        gray: ``(H, W)`` uint8.
        cam: ``(H, W)`` float in [0, 1].
        p_abnormal: written in the corner when given (OpenCV's built-in Hershey font, no font files).

    Returns:
        ``(H, W, 3)`` uint8 BGR.
    """
    import cv2

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


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
