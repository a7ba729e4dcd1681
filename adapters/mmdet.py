"""MMDetection 3.x Faster R-CNN behind the common interface.

The model is an MMDetection Python config shipped under ``configs/mmdet/`` (inheriting
mmdet's own model definitions with ``mmdet::``); the adapter adds the data pipeline,
the schedule and the class count, and trains with MMEngine's `Runner` (so
``torchrun --nproc_per_node N -m adapters train ...`` trains on N GPUs with
``launcher='pytorch'``). The model config's ``options`` are dotted MMEngine config keys
merged last (``{model.rpn_head.anchor_generator.scales: [4]}``). Checkpoints are read by
the adapter without running code (`adapters.base.load_weights`: ``torch.load(weights_only=True)``),
never by MMEngine's loader: an MMDetection model-zoo ``.pth`` (``{state_dict, meta}``) and the
checkpoints CXRFuse writes hold tensors and plain data. Starting from weights made for other
classes loads every tensor whose name and shape fit; the box head's ``fc_cls`` and
class-specific ``fc_reg`` start as initialised (``OUT/weights_report.json``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from adapters.base import (
    AdapterError,
    CategoryMap,
    DetectorAdapter,
    LossLog,
    batched,
    checkpoint_period,
    checkpoint_written,
    read_image_bgr,
    resolve_device,
    to_detections,
    training_image_count,
)
from adapters.quiet import progress
from adapters.weights import load_weights, save_torch_file, tensor_dict, transfer_weights
from core.coco import CocoDataset
from core.detections import Detections

#: the resumable checkpoint (model, optimizer, LR schedule, iteration), replaced as training goes on.
#: CXRFuse writes it, not MMEngine's CheckpointHook: MMEngine's pickle Python objects (its message
#: hub's HistoryBuffer) that a weights-only load refuses
RESUME_FILE = Path("mmdet") / "resume.pth"


def _state_dict(ckpt: Any, path: Path) -> dict:
    try:
        return tensor_dict(ckpt, path, ("state_dict", "model"))
    except AdapterError:
        raise AdapterError(f"{path}: not an MMDetection checkpoint (no 'state_dict')") from None


class MMDetDetector(DetectorAdapter):
    """Faster R-CNN (or another two-stage detector) from an MMDetection config."""

    def _pipelines(self) -> tuple[list, list]:
        size = self.cfg.image_size
        train = [
            dict(type="LoadImageFromFile"),
            dict(type="LoadAnnotations", with_bbox=True),
            dict(type="Resize", scale=(size, size), keep_ratio=True),
            dict(type="RandomFlip", prob=0.5),
            dict(type="PackDetInputs"),
        ]
        test = [
            dict(type="LoadImageFromFile"),
            dict(type="Resize", scale=(size, size), keep_ratio=True),
            dict(
                type="PackDetInputs",
                meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor"),
            ),
        ]
        return train, test

    def _mm_cfg(self, cats: CategoryMap):
        from mmengine.config import Config

        c = Config.fromfile(str(self.cfg.model_path()))
        c.default_scope = "mmdet"
        c.model.roi_head.bbox_head.num_classes = len(cats)
        p = self.cfg.predict
        c.model.test_cfg.rcnn.score_thr = float(p.score_thr)
        c.model.test_cfg.rcnn.nms.iou_threshold = float(p.nms_iou)
        c.model.test_cfg.rcnn.max_per_img = p.max_dets
        _, test = self._pipelines()
        c.test_dataloader = dict(
            dataset=dict(type="CocoDataset", pipeline=test, metainfo=dict(classes=cats.names))
        )
        if self.cfg.options:
            c.merge_from_dict(dict(self.cfg.options))
        return c

    def _train_dataset(self, dataset: CocoDataset, cats: CategoryMap) -> dict:
        """The MMDetection training dataset config; ``schedule.empty_images`` sets ``filter_empty_gt``."""
        train_pipe, _ = self._pipelines()
        return dict(
            type="CocoDataset",
            data_root="",
            ann_file=str(Path(dataset.path).resolve()),
            data_prefix=dict(img=str(Path(dataset.root).resolve()) + os.sep),
            metainfo=dict(classes=cats.names),
            filter_cfg=dict(filter_empty_gt=self.cfg.schedule.empty_images == "drop", min_size=1),
            pipeline=train_pipe,
        )

    def training_images(self, dataset: CocoDataset, out_dir: Path | None = None) -> int:
        """How many images MMDetection's training dataset holds for ``dataset`` under ``schedule.empty_images``.

        The dataset the runner's train dataloader builds (`_train_dataset`), built without training;
        ``dataset`` must have been written to a file (its ``path``).
        """
        import mmdet  # noqa: F401  (framework import, only here)
        from mmdet.registry import DATASETS
        from mmdet.utils import register_all_modules

        register_all_modules(init_default_scope=True)
        return len(DATASETS.build(self._train_dataset(dataset, CategoryMap.from_dataset(dataset))))

    @staticmethod
    def resume_checkpoint(run_dir: Path) -> Path | None:
        """``RUN/mmdet/resume.pth``, written every ``schedule.checkpoint_period`` iterations, if any."""
        path = Path(run_dir) / RESUME_FILE
        return path if path.is_file() else None

    # ------------------------------------------------------------------ train
    def train(self, dataset: CocoDataset, out_dir: Path) -> Path:
        import mmdet  # noqa: F401  (framework import, only here)
        import torch
        from mmengine.hooks import Hook
        from mmengine.runner import Runner

        out_dir = Path(out_dir).resolve()
        cats = CategoryMap.from_dataset(dataset)
        start = self.start_weights()
        init = (_state_dict(start, Path(self.cfg.weights)), self.cfg.weights) if start is not None else None
        self._start = None
        ids = [int(c["id"]) for c in dataset.categories]
        if ids != sorted(ids):
            raise AdapterError(f"{dataset.path}: categories must be listed in id order for MMDetection")
        device = resolve_device(self.cfg.device)
        s = self.cfg.schedule
        n = training_image_count(dataset, s.empty_images)
        steps_per_epoch = max(1, -(-n // s.batch_size))
        iters = s.iterations or steps_per_epoch * (s.epochs or 1)
        c = self._mm_cfg(cats)
        c.work_dir = str(out_dir / "mmdet")
        c.train_dataloader = dict(
            batch_size=s.batch_size,
            num_workers=s.workers,
            persistent_workers=s.workers > 0,
            sampler=dict(type="InfiniteSampler", shuffle=True),
            batch_sampler=dict(type="AspectRatioBatchSampler"),
            dataset=self._train_dataset(dataset, cats),
        )
        c.train_cfg = dict(type="IterBasedTrainLoop", max_iters=iters, val_interval=iters + 1)
        for k in (
            "val_dataloader",
            "val_cfg",
            "val_evaluator",
            "test_dataloader",
            "test_cfg",
            "test_evaluator",
        ):
            c[k] = None
        c.optim_wrapper = dict(
            type="OptimWrapper",
            optimizer=dict(
                type="SGD", lr=float(s.lr), momentum=float(s.momentum), weight_decay=float(s.weight_decay)
            ),
            clip_grad=dict(max_norm=35, norm_type=2),
        )
        sched = []
        if s.warmup_iters:
            sched.append(
                dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=s.warmup_iters)
            )
        if iters >= 10:
            sched.append(
                dict(
                    type="MultiStepLR",
                    by_epoch=False,
                    begin=0,
                    end=iters,
                    milestones=[int(iters * 0.67), int(iters * 0.89)],
                    gamma=0.1,
                )
            )
        c.param_scheduler = sched
        c.default_hooks = dict(
            timer=dict(type="IterTimerHook"),
            logger=dict(type="LoggerHook", interval=max(1, s.log_period)),
            param_scheduler=dict(type="ParamSchedulerHook"),
            checkpoint=None,  # ours: RESUME_FILE, every schedule.checkpoint_period; the final weights.pth
            sampler_seed=dict(type="DistSamplerSeedHook"),
        )
        c.log_processor = dict(type="LogProcessor", window_size=1, by_epoch=False)
        c.env_cfg = dict(
            cudnn_benchmark=False,
            mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
            dist_cfg=dict(backend="nccl" if device != "cpu" else "gloo"),  # gloo: torchrun on CPUs
        )
        c.launcher = "pytorch" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "none"
        c.randomness = dict(seed=s.seed)
        c.load_from, c.resume = None, False
        if device == "cpu":
            os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # MMEngine takes a visible GPU on its own
            if c.launcher == "pytorch" and not torch.distributed.is_initialized():
                # MMEngine's own init would pick a CUDA device for each rank: on CPUs, gloo without one
                torch.distributed.init_process_group("gloo")
            if c.launcher == "pytorch":  # DDP of a CPU model: no device ids
                c.model_wrapper_cfg = dict(
                    type="MMDistributedDataParallel", device_ids=None, broadcast_buffers=False,
                    find_unused_parameters=False,
                )  # fmt: skip
        resume = load_weights(self.resume_from) if self.resume_from else None
        if resume is not None and not {"state_dict", "optimizer", "iter"} <= set(resume):
            raise AdapterError(f"{self.resume_from}: not a CXRFuse MMDetection resume checkpoint")
        done = int(resume["iter"]) if resume is not None else 0
        runner = Runner.from_cfg(c)
        main = runner.rank == 0
        log = LossLog(out_dir / "loss.csv", resume_step=done if resume is not None else None)
        period = checkpoint_period(s.checkpoint_period, iters)
        bar = progress(total=iters, initial=done, desc=f"train {self.name}", unit="it", disable=None if main else True)
        record = self.model_record()

        def bare(model):
            return model.module if hasattr(model, "module") else model

        class CxrfuseHook(Hook):
            priority = "LOWEST"

            def before_train(self, runner) -> None:
                if init is not None and resume is None:  # after MMEngine's own init_weights
                    report = transfer_weights(bare(runner.model), *init)
                    if runner.rank == 0:
                        report.write(out_dir)
                if resume is not None:  # MMEngine's loop then skips the data of the iterations done
                    bare(runner.model).load_state_dict(resume["state_dict"])
                    runner.optim_wrapper.load_state_dict(resume["optimizer"])
                    for sched, state in zip(runner.param_schedulers or [], resume["param_schedulers"], strict=False):
                        sched.__dict__.update(state)
                    runner.train_loop._iter = done

            def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
                bar.update(1)
                if runner.rank != 0 or not outputs:
                    return
                terms = {k: float(v) for k, v in outputs.items() if k.startswith("loss")}
                log.write(runner.iter + 1, runner.iter // steps_per_epoch + 1, terms)
                if period and (runner.iter + 1) % period == 0 and runner.iter + 1 < iters:
                    log.flush()
                    path = out_dir / RESUME_FILE
                    save_torch_file(
                        path,
                        {
                            "state_dict": bare(runner.model).state_dict(),
                            "optimizer": runner.optim_wrapper.state_dict(),
                            # a scheduler's plain values (its step, base and last values); the rest is config
                            "param_schedulers": [
                                {k: v for k, v in sch.state_dict().items() if isinstance(v, (int, float, list, str))}
                                for sch in runner.param_schedulers or []
                            ],
                            "iter": runner.iter + 1,
                            "cxrfuse_model": record,
                        },
                    )
                    checkpoint_written(path)

        runner.register_hook(CxrfuseHook(), priority="LOWEST")
        try:
            if done < iters:
                runner.train()
        finally:
            bar.close()
            log.close()
        weights = out_dir / "weights.pth"
        if runner.rank == 0:
            model = runner.model.module if hasattr(runner.model, "module") else runner.model
            save_torch_file(
                weights,
                {
                    "state_dict": model.state_dict(),
                    "cxrfuse_categories": cats.to_json(),
                    "framework": "mmdet",
                    "cxrfuse_model": self.model_record(),
                },
            )
        self.weights, self._model, self.categories = weights, None, cats
        return weights

    # ------------------------------------------------------------------ predict
    def _load(self):
        if self._model is not None:
            return self._model
        from mmdet.apis import init_detector
        from mmengine.runner.checkpoint import load_state_dict

        ckpt = self._checkpoint()
        sd = _state_dict(ckpt, self.weights)
        if not isinstance(ckpt, dict) or "cxrfuse_categories" not in ckpt:
            raise AdapterError(f"{self.weights}: no class list; train it with `python -m adapters train`")
        self.check_model(self.recorded_model(ckpt), self.weights)
        self.categories = CategoryMap.from_json(ckpt["cxrfuse_categories"])
        device = resolve_device(self.cfg.device)
        c = self._mm_cfg(self.categories)
        with warnings.catch_warnings():  # the weights are ours, loaded below, with their own classes
            warnings.filterwarnings("ignore", message="checkpoint is None, use COCO classes by default")
            model = init_detector(c, checkpoint=None, device="cuda" if device != "cpu" else "cpu")
        self._check_fits(model, sd)
        load_state_dict(model, sd, strict=True)
        model.dataset_meta = {"classes": self.categories.names}
        model.eval()
        self._model = model
        return model

    def predict(self, images: Iterable[Path | np.ndarray], batch_size: int = 4) -> Iterator[Detections]:
        from mmdet.apis import inference_detector

        model = self._load()
        for batch in batched(images, batch_size):
            arrays = [read_image_bgr(im) for im in batch]
            for arr, res in zip(arrays, inference_detector(model, arrays), strict=True):
                inst = res.pred_instances.cpu()
                labels = self.categories.category(inst.labels.numpy())
                yield to_detections(
                    inst.bboxes.numpy(), inst.scores.numpy(), labels, arr.shape[1], arr.shape[0]
                )
