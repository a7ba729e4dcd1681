"""The classifier's training loop: options, sampler and loss balance, schedule, validation, checkpoint.

`train_gate` (also `train_classifier`) is what `ImageClassifier.train` runs; progress is logged
(``logging``), never printed.
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

from adapters.base import AdapterError, LossLog, checkpoint_written
from adapters.config import ModelConfig
from adapters.gate.data import MEAN, RESIZES, STD, GateImages, GateInput, class_targets
from adapters.gate.model import (
    CHECKPOINT_KIND,
    ClassHead,
    build_network,
    load_start_weights,
    predict_probs,
    torch_device,
)
from adapters.weights import load_weights, save_torch_file
from core.class_probs import TASKS, dataset_classes
from core.coco import CocoDataset
from core.io import atomic_open
from core.roc import roc_auc

logger = logging.getLogger(__name__)

#: ``options:`` a gate config may set, and the values each takes (the first is the default)
OPTIONS: dict[str, tuple[Any, ...]] = {
    "task": TASKS,
    "optimizer": ("adamw", "sgd"),
    "balance": ("loss", "sampler", "none"),
    "resize": RESIZES,
    "augment": (True, False),
    "amp": (True, False),
}


@dataclass(frozen=True)
class GateOptions:
    """A classifier config's ``options`` (see `adapters.gate`), defaults filled in."""

    task: str = "binary"
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
                    f"{where}: unknown option {key!r} for a classifier (known: {', '.join(OPTIONS)})"
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


def evaluate(
    model: torch.nn.Module, spec: GateInput, head: ClassHead, val: CocoDataset, batch_size: int
) -> dict[str, float]:
    """Scores of ``model`` on ``val``: ``auc`` (binary: the AUC; else the macro AUROC over the classes
    with both positives and negatives), ``accuracy`` and, for more than one class, ``auc:NAME`` per class.

    Accuracy is at ``p >= 0.5`` for binary, of the most probable class for multiclass, and over
    every (image, class) pair at ``p >= 0.5`` for multilabel. Puts ``model`` in eval mode. The
    numbers are NaN for an empty set; a class's AUC is NaN when ``val`` holds one side of it only
    (`core.roc.roc_auc`).

    Raises:
        AdapterError: ``val``'s labels do not fit the head's classes.
        FileNotFoundError, ValueError: an image of ``val`` is missing or unreadable.
    """
    model.eval()
    ids = val.image_ids
    truth, _ = class_targets(val, ids, head)
    probs = np.array(list(predict_probs(model, spec, head, [val.image_path(i) for i in ids], batch_size)))
    probs = probs.reshape(len(ids), head.outputs)
    aucs = {name: roc_auc(truth[:, j], probs[:, j]) for j, name in enumerate(head.classes)}
    if not len(ids):
        acc = float("nan")
    elif head.task == "multiclass":
        acc = float((probs.argmax(axis=1) == truth.argmax(axis=1)).mean())
    else:
        acc = float(((probs >= 0.5) == (truth > 0)).mean())
    finite = [a for a in aucs.values() if not np.isnan(a)]
    out = {"auc": float(np.mean(finite)) if finite else float("nan"), "accuracy": acc}
    if head.outputs > 1:
        out.update({f"auc:{name}": a for name, a in aucs.items()})
    return out


def validate(
    model: torch.nn.Module, spec: GateInput, val: CocoDataset, batch_size: int
) -> tuple[float, float]:
    """AUC and accuracy at ``p_abnormal >= 0.5`` of a binary gate on ``val`` (abnormal = annotated).

    Raises:
        FileNotFoundError, ValueError: an image of ``val`` is missing or unreadable.
    """
    r = evaluate(model, spec, ClassHead(), val, batch_size)
    return r["auc"], r["accuracy"]


def class_weights(head: ClassHead, truth: np.ndarray, balance: str) -> tuple[np.ndarray, np.ndarray]:
    """Loss weights per output and sampling weights per image that balance rare classes.

    Args:
        head: the classifier's head.
        truth: ``(N, k)`` 0/1 of the training images.
        balance: ``loss``, ``sampler`` or ``none`` (`OPTIONS`).

    Returns:
        ``(loss_weights, sample_weights)``: ``(k,)`` and ``(N,)`` float64. With ``loss``, binary and
        multilabel weigh each class's positive term by ``negatives / positives`` (BCE
        ``pos_weight``) and multiclass weighs class ``c`` by ``N / (k * n_c)``; otherwise 1. With
        ``sampler``, an image is drawn with weight ``max_c truth[c] / n_c`` (its rarest class;
        binary: both sides equally often), otherwise uniformly. A class without positive images
        gets weight 1 (multiclass: 0).
    """
    n, k = truth.shape
    pos = truth.sum(axis=0).astype(np.float64)
    loss_w = np.ones(k)
    if balance == "loss":
        if head.task == "multiclass":
            loss_w = np.where(pos > 0, n / (k * np.maximum(pos, 1)), 0.0)
        else:
            loss_w = np.where(pos > 0, (n - pos) / np.maximum(pos, 1), 1.0)
    sample_w = np.ones(n)
    if balance == "sampler":
        if head.task == "binary":
            sample_w = np.where(truth[:, 0] > 0, 0.5 / max(pos[0], 1), 0.5 / max(n - pos[0], 1))
        else:
            sample_w = (truth / np.maximum(pos, 1)).max(axis=1)
            sample_w = np.where(sample_w > 0, sample_w, 1.0 / n)  # an image of no class at all
    return loss_w, sample_w


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


#: the resumable checkpoint a training writes after every epoch (removed when it finishes)
LAST_CHECKPOINT = Path("checkpoints") / "last.pth"


def resume_checkpoint(run_dir: Path) -> Path | None:
    """The classifier's last resumable checkpoint in ``run_dir`` (``checkpoints/last.pth``), or None."""
    path = Path(run_dir) / LAST_CHECKPOINT
    return path if path.is_file() else None


def train_gate(
    cfg: ModelConfig, dataset: CocoDataset, out_dir: Path, start: Any = None, resume_from: Path | None = None
) -> tuple[Path, torch.nn.Module, GateInput, ClassHead]:
    """Train a classifier on ``dataset`` as ``cfg`` says (``options.task``; see `adapters.gate`).

    The classes come from the dataset (`core.class_probs.dataset_classes`): binary learns
    abnormal = has annotations (or a non-normal label), multilabel and multiclass the dataset's
    classes. Writes ``out_dir/weights.pth`` (temporary name, then renamed), ``out_dir/loss.csv``,
    ``out_dir/weights_report.json`` when starting from ``cfg.weights`` and, when ``cfg.dataset``
    names ``val``, ``out_dir/val_metrics.csv`` after every epoch. After every epoch but the last it
    writes the resumable ``out_dir/checkpoints/last.pth`` (network, optimizer, schedule, sampler
    state, step, epoch, validation rows), which ``resume_from`` continues from; the finished run
    removes it.

    Args:
        cfg: the classifier's config.
        dataset: the training set.
        out_dir: the run directory.
        start: the contents of ``cfg.weights`` if already read (else it is read here).
        resume_from: a ``checkpoints/last.pth`` of an unfinished run of the same settings.

    Returns:
        ``(weights path, the trained network in eval mode, how it sees an image, its head)``.

    Raises:
        AdapterError: bad options; a binary set without normal or abnormal images, or a
            multilabel/multiclass set where no class has a positive image; labels that do not
            fit the classes; ``dataset.val`` missing; the start weights are refused or do not
            fit; the device is unusable; or the loss diverges.
    """
    where = str(cfg.source or "config")
    opts = GateOptions.parse(cfg.options, where)
    out_dir = Path(out_dir)
    s, size = cfg.schedule, cfg.image_size
    ids = dataset.image_ids
    name = dataset.path or "the training set"
    try:
        head = ClassHead(opts.task, *dataset_classes(dataset, opts.task))
    except ValueError as e:
        raise AdapterError(str(e)) from None
    truth, targets = class_targets(dataset, ids, head)
    pos = truth.sum(axis=0)
    if head.task == "binary" and (pos[0] == 0 or pos[0] == len(ids)):
        raise AdapterError(
            f"{name}: the gate needs normal and abnormal images; it has {len(ids) - int(pos[0])} normal, "
            f"{int(pos[0])} abnormal"
        )
    if head.task != "binary":
        if not pos.any():
            raise AdapterError(f"{name}: no image has any of the classes {list(head.classes)}")
        for c, n in zip(head.classes, pos, strict=True):
            if n == 0:
                logger.warning("%s: no training image has class %r; its output will not learn", name, c)
    val = None
    if cfg.dataset.get("val"):
        val_path = Path(cfg.dataset["val"])
        if not val_path.is_file():
            raise AdapterError(f"{cfg.source}: dataset.val {val_path} not found")
        val = CocoDataset.load(val_path)
        class_targets(val, val.image_ids, head)  # labels that do not fit fail now, not after an epoch
    device, gpu_ids = torch_device(cfg.device)
    amp = opts.amp and device.startswith("cuda")
    spec = GateInput(size, opts.resize, MEAN, STD)
    out_dir.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(s.seed)
    model = build_network(cfg.model, head.outputs)
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

    data = GateImages([dataset.image_path(i) for i in ids], targets, size, opts.resize, opts.augment, s.seed)
    gen = torch.Generator().manual_seed(s.seed)
    loss_w, sample_w = class_weights(head, truth, opts.balance)
    if opts.balance == "sampler":
        sampler = WeightedRandomSampler(
            torch.as_tensor(sample_w, dtype=torch.double), len(ids), generator=gen
        )
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
    weight = torch.tensor(loss_w, dtype=torch.float32, device=device)
    if head.task == "multiclass":
        criterion: torch.nn.Module = torch.nn.CrossEntropyLoss(weight=weight)
        loss_name = "loss_ce"
    else:
        criterion = torch.nn.BCEWithLogitsLoss(pos_weight=weight)
        loss_name = "loss_bce"
    opt = _optimizer(model.parameters(), opts.optimizer, s)
    warmup = max(0, s.warmup_iters)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, warmup, total))
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    val_rows: list[dict[str, Any]] = []
    step, epoch = 0, 0
    if resume_from is not None:
        state = load_weights(resume_from)
        if (
            not isinstance(state, dict)
            or state.get("kind") != "gate_resume"
            or state.get("classes") != list(head.classes)
        ):
            raise AdapterError(
                f"{resume_from}: not a resumable checkpoint of this classifier; pass --overwrite"
            )
        model.load_state_dict(state["state_dict"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        gen.set_state(state["generator"])
        step, epoch, val_rows = int(state["step"]), int(state["epoch"]), list(state["val_rows"])
        logger.info("%s: resuming after epoch %d, step %d, from %s", cfg.name, epoch, step, resume_from)
    log = LossLog(out_dir / "loss.csv", resume_step=step if resume_from is not None else None)
    counts = ", ".join(f"{c} {int(n)}" for c, n in zip(head.classes, pos, strict=True))
    logger.info(
        "%s: %s %s classifier, %d images (%s), %d steps of %d at %d px on %s",
        cfg.name, cfg.model, head.task, len(ids), counts, total, s.batch_size, size, device,
    )  # fmt: skip
    t0 = time.perf_counter()
    try:
        while step < total:
            epoch += 1
            data.epoch = epoch
            net.train()
            for x, y in loader:
                x = x.to(device, non_blocking=True)
                y = y.to(device, non_blocking=True)
                with torch.autocast(device.split(":")[0], enabled=amp):
                    logit = net(x)
                logit = logit.float()
                loss = criterion(logit.squeeze(1) if head.task == "binary" else logit, y)
                if not torch.isfinite(loss):
                    raise AdapterError(
                        f"{cfg.name}: the loss diverged at step {step + 1} ({loss.item()}); lower schedule.lr"
                    )
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                sched.step()
                step += 1
                log.write(step, epoch, {loss_name: loss.item()})
                if s.log_period and (step % s.log_period == 0 or step == total):
                    logger.info(
                        "  step %d/%d epoch %d loss %.4f lr %.2e (%.0f s)",
                        step, total, epoch, loss.item(), opt.param_groups[0]["lr"], time.perf_counter() - t0,
                    )  # fmt: skip
                if step >= total:
                    break
            if val is not None:
                r = evaluate(model, spec, head, val, cfg.predict.batch_size)
                what = "AUC" if head.task == "binary" else "macro AUROC"
                logger.info(
                    "  val epoch %d: %s %.4f, accuracy%s %.4f (%d images)",
                    epoch, what, r["auc"], "@0.5" if head.task != "multiclass" else "", r["accuracy"], len(val.images),
                )  # fmt: skip
                row = {"epoch": epoch, "step": step, "images": len(val.images)}
                val_rows.append({**row, **{k: f"{v:.6f}" for k, v in r.items()}})
                _write_csv(out_dir / "val_metrics.csv", val_rows)
            if step < total:
                last = out_dir / LAST_CHECKPOINT
                last.parent.mkdir(parents=True, exist_ok=True)
                save_torch_file(
                    last,
                    {
                        "kind": "gate_resume", "classes": list(head.classes), "step": step, "epoch": epoch,
                        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                        "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                        "scaler": scaler.state_dict(), "generator": gen.get_state(), "val_rows": val_rows,
                    },
                )  # fmt: skip
                checkpoint_written(last)
    finally:
        log.close()

    weights = out_dir / "weights.pth"
    ckpt = {
        "kind": CHECKPOINT_KIND,
        "framework": "torchvision",
        "arch": cfg.model,
        **head.to_checkpoint(),
        **spec.to_checkpoint(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "train": {
            "images": len(ids), "positives": [int(n) for n in pos], "steps": step, "epochs": epoch, "seed": s.seed,
            "balance": opts.balance, "loss_weights": [float(w) for w in loss_w],
        },
    }  # fmt: skip
    save_torch_file(weights, ckpt)
    (out_dir / LAST_CHECKPOINT).unlink(missing_ok=True)
    if (out_dir / LAST_CHECKPOINT).parent.is_dir() and not any((out_dir / LAST_CHECKPOINT).parent.iterdir()):
        (out_dir / LAST_CHECKPOINT).parent.rmdir()
    return weights, model.eval(), spec, head


train_classifier = train_gate
