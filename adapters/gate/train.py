"""The gate's training loop: options, sampler and loss balance, schedule, validation, checkpoint.

`train_gate` is what `ResNetGate.train` runs; progress is logged (``logging``), never printed.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler, WeightedRandomSampler

from adapters.base import AdapterError, LossLog
from adapters.config import ModelConfig
from adapters.gate.data import MEAN, RESIZES, STD, GateImages, GateInput, abnormal_labels
from adapters.gate.model import (
    CHECKPOINT_KIND,
    build_network,
    load_start_weights,
    predict_p_abnormal,
    torch_device,
)
from adapters.weights import save_torch_file
from core.coco import CocoDataset
from core.io import atomic_open
from core.roc import roc_auc

logger = logging.getLogger(__name__)

#: ``options:`` a gate config may set, and the values each takes (the first is the default)
OPTIONS: dict[str, tuple[Any, ...]] = {
    "optimizer": ("adamw", "sgd"),
    "balance": ("loss", "sampler", "none"),
    "resize": RESIZES,
    "augment": (True, False),
    "amp": (True, False),
}


@dataclass(frozen=True)
class GateOptions:
    """A gate config's ``options`` (see `adapters.gate`), defaults filled in."""

    optimizer: str = "adamw"
    balance: str = "loss"
    resize: str = "stretch"
    augment: bool = True
    amp: bool = True

    @classmethod
    def parse(cls, options: Mapping[str, Any], where: str = "config") -> GateOptions:
        """Check ``options`` against `OPTIONS`.

        Raises:
            AdapterError: an unknown key, or a value that is not one of the key's choices.
        """
        for key, value in options.items():
            if key not in OPTIONS:
                raise AdapterError(
                    f"{where}: unknown option {key!r} for resnet_gate (known: {', '.join(OPTIONS)})"
                )
            choices = OPTIONS[key]
            if value not in choices or isinstance(value, bool) != isinstance(choices[0], bool):
                raise AdapterError(
                    f"{where}: options.{key} must be one of {', '.join(map(str, choices))}, got {value!r}"
                )
        return cls(**options)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """The learning rate's factor at ``step`` (0-based): linear warm-up, then a cosine down to 0.01."""
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def validate(
    model: torch.nn.Module, spec: GateInput, val: CocoDataset, batch_size: int
) -> tuple[float, float]:
    """AUC and accuracy at ``p_abnormal >= 0.5`` of ``model`` on ``val`` (abnormal = annotated).

    Puts ``model`` in eval mode. Both numbers are NaN for an empty set; the AUC is NaN when
    ``val`` holds one class only (`core.roc.roc_auc`).

    Raises:
        FileNotFoundError, ValueError: an image of ``val`` is missing or unreadable.
    """
    model.eval()
    ids = val.image_ids
    scores = np.array(list(predict_p_abnormal(model, spec, [val.image_path(i) for i in ids], batch_size)))
    truth = abnormal_labels(val, ids) > 0
    auc = roc_auc(truth, scores)
    acc = float(((scores >= 0.5) == truth).mean()) if len(ids) else float("nan")
    return auc, acc


def _optimizer(params, name: str, s) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(
            params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay, nesterov=True
        )
    return torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def train_gate(
    cfg: ModelConfig, dataset: CocoDataset, out_dir: Path, start: Any = None
) -> tuple[Path, torch.nn.Module, GateInput]:
    """Train a gate on ``dataset`` (abnormal = has annotations) as ``cfg`` says.

    Writes ``out_dir/weights.pth`` (temporary name, then renamed), ``out_dir/loss.csv``,
    ``out_dir/weights_report.json`` when starting from ``cfg.weights`` and, when ``cfg.dataset``
    names ``val``, ``out_dir/val_metrics.csv`` after every epoch.

    Args:
        cfg: the gate's config.
        dataset: the training set.
        out_dir: the run directory.
        start: the contents of ``cfg.weights`` if already read (else it is read here).

    Returns:
        ``(weights path, the trained network in eval mode, how it sees an image)``.

    Raises:
        AdapterError: bad options, the set lacks normal or abnormal images, ``dataset.val`` is
            missing, the start weights are refused or do not fit, the device is unusable, or the
            loss diverges.
    """
    where = str(cfg.source or "config")
    opts = GateOptions.parse(cfg.options, where)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    s, size = cfg.schedule, cfg.image_size
    ids = dataset.image_ids
    labels = abnormal_labels(dataset, ids)
    n_abn = int(labels.sum())
    n_norm = len(ids) - n_abn
    if n_abn == 0 or n_norm == 0:
        raise AdapterError(
            f"{dataset.path or 'the training set'}: the gate needs normal and abnormal images; "
            f"it has {n_norm} normal, {n_abn} abnormal"
        )
    val = None
    if cfg.dataset.get("val"):
        val_path = Path(cfg.dataset["val"])
        if not val_path.is_file():
            raise AdapterError(f"{cfg.source}: dataset.val {val_path} not found")
        val = CocoDataset.load(val_path)
    device, gpu_ids = torch_device(cfg.device)
    amp = opts.amp and device.startswith("cuda")
    spec = GateInput(size, opts.resize, MEAN, STD)

    torch.manual_seed(s.seed)
    model = build_network(cfg.model)
    if cfg.weights:
        report = load_start_weights(
            model, Path(cfg.weights), cfg.model, where, trust=cfg.trust_weights, ckpt=start
        )
        report.write(out_dir)
        logger.info(
            "%s: started from %s%s",
            cfg.name, cfg.weights, f" (head {', '.join(report.new)} new)" if report.new else "",
        )  # fmt: skip
    model = model.to(device)
    net = torch.nn.DataParallel(model, device_ids=gpu_ids) if len(gpu_ids) > 1 else model

    data = GateImages([dataset.image_path(i) for i in ids], labels, size, opts.resize, opts.augment, s.seed)
    gen = torch.Generator().manual_seed(s.seed)
    if opts.balance == "sampler":
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
    total = s.iterations or len(loader) * (s.epochs or 1)
    pos_weight = torch.tensor([n_norm / n_abn if opts.balance == "loss" else 1.0], device=device)
    criterion = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    opt = _optimizer(model.parameters(), opts.optimizer, s)
    warmup = max(0, s.warmup_iters)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, warmup, total))
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    log = LossLog(out_dir / "loss.csv")
    val_rows: list[dict[str, Any]] = []
    logger.info(
        "%s: %s gate, %d images (%d abnormal, %d normal), %d steps of %d at %d px on %s",
        cfg.name, cfg.model, len(ids), n_abn, n_norm, total, s.batch_size, size, device,
    )  # fmt: skip
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
                    logger.info(
                        "  step %d/%d epoch %d loss %.4f lr %.2e (%.0f s)",
                        step, total, epoch, loss.item(), opt.param_groups[0]["lr"], time.perf_counter() - t0,
                    )  # fmt: skip
                if step >= total:
                    break
            if val is not None:
                auc, acc = validate(model, spec, val, cfg.predict.batch_size)
                logger.info(
                    "  val epoch %d: AUC %.4f, accuracy@0.5 %.4f (%d images)",
                    epoch,
                    auc,
                    acc,
                    len(val.images),
                )
                row = {"epoch": epoch, "step": step, "images": len(val.images)}
                val_rows.append({**row, "auc": f"{auc:.6f}", "accuracy": f"{acc:.6f}"})
                _write_csv(out_dir / "val_metrics.csv", val_rows)
    finally:
        log.close()

    weights = out_dir / "weights.pth"
    ckpt = {
        "kind": CHECKPOINT_KIND,
        "framework": "torchvision",
        "arch": cfg.model,
        "head": "single_logit",
        "classes": ["normal", "abnormal"],
        **spec.to_checkpoint(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "train": {"images": len(ids), "abnormal": n_abn, "steps": step, "epochs": epoch, "seed": s.seed},
    }
    save_torch_file(weights, ckpt)
    return weights, model.eval(), spec
