"""``python -m ensemble sweep``: score a grid of fusion (and gate) settings on a validation set.

Every fusion setting (method × ``iou_thr`` × ``skip_box_thr`` × weights, × ``conf_type`` for WBF,
× ``sigma`` for Soft-NMS) is fused once with `fusion.engine.fuse_many`; with a gate file, each
fused result is then combined with every gate setting (mode, and for ``filter`` every ``low <= high``
pair; ``rescore`` only where the gate file has per-class probabilities, `fusion.gate.class_scores`). Each result is scored by ``metric`` with `eval.scoring.Scorer`, the scorer the leaderboard uses, on
the values the file ``run`` writes with the same settings will hold (`core.detections.Detections.as_written`:
boxes to 0.01 px, scores to 1e-6), so the best setting's score here is exactly the score the
leaderboard shows for that file. The ground truth is parsed once per sweep. Metrics: ``vinbig``
(mAP@0.4 with "No finding", which only a gate setting adds), ``coco`` (mAP@[.5:.95]) and ``rsna``;
no metric caps the detections per image.
The folder ``out`` receives ``results.csv`` and ``results.json`` (every setting with its score, best
first; ties keep grid order) and ``best.yaml`` (`fusion.settings`), which ``run --config`` takes.

Speed. What does not change between settings is done once: the inputs are flattened and normalised
once (`fusion.engine.flatten_many`), the boxes sorted once per method and weight set, and the ground
truth parsed once. Each setting then runs on columns: `fusion.engine.fuse_flat`, the gate's rule
(`gate_columns`, the rows `fusion.gate.apply_gate` gives), the rounding of a results file
(`core.detections.as_written_columns`) and `eval.scoring.Scorer.score_columns`, which scores exactly
what `Scorer.score` scores for the same rows. Fusion settings run in parallel worker processes
(forked: they share the flattened inputs) when the inputs are large enough for it to pay; every
worker returns scores only, so memory does not grow with the number of settings.
"""

from __future__ import annotations

import csv
import itertools
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from core.classes import NO_FINDING, NO_FINDING_BOX
from core.detections import Detections, as_written_columns
from core.io import atomic_open, write_json
from ensemble.inputs import read_inputs
from eval.scoring import Scorer, get_metric
from fusion.engine import METHODS, FlatBoxes, FlatFused, flatten_many, fuse_flat
from fusion.gate import CLASS_MODES, GATE_MODES, check_gate_options, class_scores
from fusion.settings import FusionSettings, write_settings

CSV_COLUMNS = ("rank", "score", *(f.name for f in fields(FusionSettings)), "fuse_seconds")
PARALLEL_MIN_BOXES = 200_000
"""Below this many input boxes a sweep runs in one process (starting workers would cost more)."""

GateSetting = tuple[str | None, float | None, float | None]


@dataclass(frozen=True)
class SweepGrid:
    """The values to try. Fusion options not listed keep `FusionSettings`' defaults.

    Attributes:
        methods: fusion methods.
        iou_thrs, skip_box_thrs: thresholds of every method.
        weights: weight sets, one weight per model each; None for `default_weights`.
        conf_types: WBF's ``conf_type`` values (other methods ignore it).
        sigmas: Soft-NMS's ``sigma`` values (other methods ignore it).
        gate_modes: gate rules tried when there is a gate file; ``none`` tries no gate. ``rescore`` is
            left out for a gate file without per-class probabilities.
        lows, highs: the ``filter`` thresholds; every pair with ``low <= high`` is tried.
    """

    methods: tuple[str, ...] = ("wbf",)
    iou_thrs: tuple[float, ...] = (0.4, 0.5, 0.6)
    skip_box_thrs: tuple[float, ...] = (0.0, 0.02)
    weights: tuple[tuple[float, ...], ...] | None = None
    conf_types: tuple[str, ...] = ("avg",)
    sigmas: tuple[float, ...] = (0.5,)
    gate_modes: tuple[str, ...] = GATE_MODES
    lows: tuple[float, ...] = (0.05, 0.1, 0.2)
    highs: tuple[float, ...] = (0.8, 0.9, 0.95)

    def fusion_settings(self, n_models: int) -> list[FusionSettings]:
        """Every fusion setting of the grid (no gate), validated, without duplicates.

        Raises:
            ValueError: for an empty list, an unknown method, a bad value or a weight set whose
                length is not ``n_models``.
        """
        for name in ("methods", "iou_thrs", "skip_box_thrs", "conf_types", "sigmas"):
            if not getattr(self, name):
                raise ValueError(f"the sweep grid's {name} is empty")
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ValueError(f"unknown methods {bad}; known: {', '.join(METHODS)}")
        weight_sets = self.weights if self.weights is not None else default_weights(n_models)
        if not weight_sets:
            raise ValueError("the sweep grid's weights is empty")
        out: list[FusionSettings] = []
        for method, w, iou, skip in itertools.product(
            self.methods, weight_sets, self.iou_thrs, self.skip_box_thrs
        ):
            confs = self.conf_types if method == "wbf" else (FusionSettings.conf_type,)
            sigmas = self.sigmas if method == "soft-nms" else (FusionSettings.sigma,)
            for conf, sigma in itertools.product(confs, sigmas):
                s = FusionSettings(
                    method=method,
                    weights=tuple(float(x) for x in w),
                    iou_thr=float(iou),
                    skip_box_thr=float(skip),
                    conf_type=conf,
                    sigma=float(sigma),
                )
                s.validate(n_models)
                if s not in out:
                    out.append(s)
        return out

    def gate_settings(self) -> list[tuple[str | None, float | None, float | None]]:
        """Every ``(mode, low, high)`` of the grid; ``(None, None, None)`` for ``none``.

        Raises:
            ValueError: for an unknown mode, a threshold outside ``[0, 1]``, or ``filter`` with no
                pair ``low <= high``.
        """
        if not self.gate_modes:
            raise ValueError("the sweep grid's gate_modes is empty")
        out: list[tuple[str | None, float | None, float | None]] = []
        for mode in self.gate_modes:
            if mode == "none":
                out.append((None, None, None))
            elif mode == "filter":
                pairs = [(lo, hi) for lo, hi in itertools.product(self.lows, self.highs) if lo <= hi]
                if not pairs:
                    raise ValueError(
                        f"the gate mode 'filter' needs thresholds with low <= high, got lows "
                        f"{list(self.lows)} and highs {list(self.highs)}"
                    )
                for lo, hi in pairs:
                    check_gate_options("filter", float(lo), float(hi))
                    out.append(("filter", float(lo), float(hi)))
            else:
                check_gate_options(mode)
                out.append((mode, None, None))
        return list(dict.fromkeys(out))


def default_weights(n_models: int) -> list[tuple[float, ...]]:
    """All 1, then each model in turn weighted 2 (``n + 1`` sets; one set for one model)."""
    sets = [tuple(1.0 for _ in range(n_models))]
    if n_models > 1:
        sets += [tuple(2.0 if j == i else 1.0 for j in range(n_models)) for i in range(n_models)]
    return sets


@dataclass(frozen=True)
class SweepResult:
    """A finished sweep.

    Attributes:
        rows: one dict per setting (the ``CSV_COLUMNS``), best first.
        best: the settings of the first row.
        best_score: its score.
        out: the folder holding ``results.csv``, ``results.json`` and ``best.yaml``.
    """

    rows: list[dict[str, Any]]
    best: FusionSettings
    best_score: float
    out: Path


def sweep(
    preds: Sequence[str | Path],
    dataset: str | Path,
    out: str | Path,
    grid: SweepGrid = SweepGrid(),
    *,
    metric: str = "vinbig",
    gate: str | Path | None = None,
    progress: Callable[..., Any] | None = None,
    workers: int | None = None,
) -> SweepResult:
    """Score every setting of ``grid`` on ``dataset`` and write the ranking and the best settings.

    Args:
        preds: COCO results files of the models, in the order of the weights.
        dataset: the validation dataset (with ground truth) they were predicted on.
        out: folder for ``results.csv``, ``results.json`` and ``best.yaml`` (created).
        grid: the values to try.
        metric: ``vinbig``, ``coco`` or ``rsna``.
        gate: gate file of ``p_abnormal`` scores; without it no gate setting is tried.
        progress: a ``tqdm``-like class for a progress bar, or None.
        workers: processes scoring fusion settings at once; None for the CPU count when the inputs
            hold at least ``PARALLEL_MIN_BOXES`` boxes, else 1.

    Returns:
        `SweepResult`.

    Raises:
        FileNotFoundError: naming a missing input.
        ValueError: naming the file or value at fault (`ensemble.inputs`, `SweepGrid`), or for an
            unknown ``metric``.
    """
    get_metric(metric)
    t_start = time.perf_counter()
    inputs = read_inputs(preds, dataset, gate)
    fusions = grid.fusion_settings(len(inputs.per_model))
    p_class = class_scores(inputs.class_probs) if inputs.class_probs is not None else None
    gates = grid.gate_settings() if inputs.gate is not None else [(None, None, None)]
    if p_class is None and inputs.gate is not None:
        gates = [g for g in gates if g[0] not in CLASS_MODES]
        if not gates:
            raise ValueError(
                f"{gate}: the gate modes {list(grid.gate_modes)} need per-class probabilities of classes that "
                "stand for the detection categories; this file has p_abnormal only"
            )
    state = SweepState.build(
        inputs.per_model, inputs.sizes, Scorer(inputs.dataset, metric), inputs.gate, p_class
    )
    scores, fuse_seconds = state.run(fusions, gates, workers=workers, progress=progress)
    rows: list[dict[str, Any]] = []
    settings_of: list[FusionSettings] = []
    for f, fs in enumerate(fusions):
        for g, (mode, low, high) in enumerate(gates):
            s = replace(fs, gate_mode=mode, low=low, high=high)
            rows.append(_row(s, scores[f][g], fuse_seconds[f]))
            settings_of.append(s)
    order = sorted(range(len(rows)), key=lambda k: _rank_key(rows[k]["score"]))
    rows = [rows[k] for k in order]
    for rank, r in enumerate(rows, start=1):
        r["rank"] = rank
    best, best_score = settings_of[order[0]], rows[0]["score"]

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({**r, "weights": ",".join(f"{x:g}" for x in r["weights"])})
    info = {
        "metric": metric,
        "dataset": str(dataset),
        "inputs": list(inputs.names),
        "gate": None if gate is None else str(gate),
    }
    write_json(
        out / "results.json",
        {
            **info,
            "input_files": [str(p) for p in inputs.paths],
            "settings": len(rows),
            "seconds": round(time.perf_counter() - t_start, 3),
            "results": rows,
        },
        indent=1,
    )
    write_settings(out / "best.yaml", best, {**info, "score": best_score})
    return SweepResult(rows, best, best_score, out)


@dataclass(frozen=True)
class ClassTable:
    """``rescore``'s per-class probabilities as arrays: what `fusion.gate.apply_gate` multiplies by.

    Attributes:
        categories: ``(J,)`` int64 sorted category ids that a class stands for.
        probs: ``(I, J)`` float32 P(class | image) per image index; a category an image's mapping
            lacks holds the image's ``p_abnormal`` (as `apply_gate`'s fallback).
        fallback: ``(I,)`` float32 ``p_abnormal``, the factor of a category no class stands for.
    """

    categories: np.ndarray
    probs: np.ndarray
    fallback: np.ndarray

    @classmethod
    def build(
        cls, p_class: Mapping[int, Mapping[int, float]], image_ids: Sequence[int], p_abnormal: np.ndarray
    ) -> ClassTable:
        """Arrays of ``p_class`` (`fusion.gate.class_scores`) for the images ``image_ids``, in order.

        Raises:
            ValueError: naming images without per-class probabilities.
        """
        missing = [i for i in image_ids if i not in p_class]
        if missing:
            raise ValueError(
                f"the gate has no per-class probabilities for {len(missing)} of {len(image_ids)} images, "
                f"e.g. image ids {sorted(missing)[:10]}"
            )
        cats = np.array(sorted({int(c) for i in image_ids for c in p_class[i]}), np.int64)
        probs = np.empty((len(image_ids), len(cats)), np.float64)
        for r, i in enumerate(image_ids):
            row = p_class[i]
            probs[r] = [row.get(int(c), p_abnormal[r]) for c in cats]
        return cls(cats, probs.astype(np.float32), p_abnormal.astype(np.float32))

    def factors(self, img: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """``(N,)`` float32: each row's P(its class | its image), or ``p_abnormal`` for other categories."""
        if not len(self.categories):
            return self.fallback[img]
        pos = np.minimum(np.searchsorted(self.categories, labels), len(self.categories) - 1)
        hit = self.categories[pos] == labels
        return np.where(hit, self.probs[img, pos], self.fallback[img])


class SweepState:
    """What every setting of a sweep shares, computed once: the flattened inputs, the scorer, the gate.

    Use `build`, then `score` for one fusion setting (all gate settings) or `run` for many.

    Attributes:
        flat: every model's boxes, flattened (`fusion.engine.flatten_many`).
        image_ids: ``(I,)`` dataset image id of each image index of ``flat``.
        scorer: the ground truth and the metric.
        p_abnormal: ``(I,)`` float64 gate scores per image index, or None without a gate.
        class_p: ``rescore``'s per-class probabilities (`ClassTable`), or None.
    """

    def __init__(
        self,
        flat: FlatBoxes,
        image_ids: np.ndarray,
        scorer: Scorer,
        p_abnormal: np.ndarray | None,
        class_p: ClassTable | None = None,
    ):
        self.flat = flat
        self.image_ids = image_ids
        self.scorer = scorer
        self.p_abnormal = p_abnormal
        self.class_p = class_p
        self._no_finding: dict[GateSetting, np.ndarray] = {}

    @classmethod
    def build(
        cls,
        per_model: Sequence[Mapping[int, Detections]],
        sizes: Mapping[int, tuple[int, int]],
        scorer: Scorer,
        p_abnormal: Mapping[int, float] | None = None,
        p_class: Mapping[int, Mapping[int, float]] | None = None,
    ) -> SweepState:
        """Flatten the inputs once.

        Args:
            per_model, sizes: as `fusion.engine.fuse_many`.
            scorer: the ground truth and the metric.
            p_abnormal: ``image_id -> P(abnormal)``, or None without a gate.
            p_class: ``image_id -> {category_id: P}`` for ``rescore`` (`fusion.gate.class_scores`), or None.

        Raises:
            ValueError: as `fusion.engine.fuse_many`, or naming images without a gate score.
        """
        flat = flatten_many(per_model, sizes)
        ids = np.array(list(sizes), np.int64)
        p = None
        if p_abnormal is not None:
            missing = [i for i in sizes if i not in p_abnormal]
            if missing:
                raise ValueError(
                    f"the gate has no score for {len(missing)} of {len(sizes)} images, e.g. image ids "
                    f"{sorted(missing)[:10]}"
                )
            p = np.array([float(p_abnormal[i]) for i in sizes], np.float64)
        table = None
        if p_class is not None:
            if p is None:
                raise ValueError("per-class probabilities need the gate's p_abnormal too")
            table = ClassTable.build(p_class, list(sizes), p)
        return cls(flat, ids, scorer, p, table)

    def score(self, settings: FusionSettings, gates: Sequence[GateSetting]) -> tuple[list[float], float]:
        """Fuse with ``settings`` once and score each gate setting ``(mode, low, high)``.

        For a metric that is a mean of per-class AP (`eval.scoring.Scorer.by_class`) the lesions are
        scored once per way a gate changes them (unchanged, rescaled, or filtered at a ``low``) and
        "No finding" once per gate setting for the whole sweep; their AP columns are then joined. The
        scores are those of `Scorer.score_columns` of the joined rows, bit for bit.

        Returns:
            ``(scores, fuse_seconds)``: one score per gate setting, as `Scorer.score` gives for
            `apply_gate` of `fuse_many`'s result, rounded as ``run`` writes it.

        Raises:
            ValueError: as `fusion.engine.fuse_flat` and `gate_columns`.
        """
        t0 = time.perf_counter()
        fused = fuse_flat(self.flat, settings)
        seconds = time.perf_counter() - t0
        for mode, low, high in gates:
            if mode is not None:
                check_gate_options(mode, low, high)
                if self.p_abnormal is None:
                    raise ValueError(f"the gate mode {mode!r} needs a gate file of p_abnormal scores")
                if mode in CLASS_MODES and self.class_p is None:
                    raise ValueError(f"the gate mode {mode!r} needs a gate file of per-class probabilities")
                check_not_gated(fused, self.image_ids)
        scorer, scores = self.scorer, []
        if not scorer.by_class:
            for mode, low, high in gates:
                cols = (fused.image, fused.labels, fused.boxes, fused.scores)
                if mode is not None:
                    cols = gate_columns(fused, self.image_ids, self.p_abnormal, mode, low, high, self.class_p)
                img, labels, boxes, sc = cols
                boxes, sc = as_written_columns(boxes, sc)
                scores.append(scorer.score_columns(self.image_ids[img], labels, boxes, sc))
            return scores, seconds
        lesions: dict[Any, np.ndarray] = {}
        for mode, low, high in gates:
            key = _lesion_key(mode, low)
            if key not in lesions:
                img, labels, boxes, sc = gated_lesions(fused, self.p_abnormal, mode, low, self.class_p)
                boxes, sc = as_written_columns(boxes, sc)
                lesions[key] = scorer.class_ap_columns(self.image_ids[img], labels, boxes, sc)
            ap = lesions[key]
            if mode is not None and scorer.metric.key == "vinbig":
                k = int(np.searchsorted(scorer.headline_table.category_ids, NO_FINDING))
                ap = ap.copy()
                ap[:, k] = self.no_finding_ap(mode, low, high)[:, k]
            scores.append(scorer.score_from_class_ap(ap))
        return scores, seconds

    def no_finding_ap(self, mode: str, low: float | None, high: float | None) -> np.ndarray:
        """`Scorer.class_ap_columns` of the "No finding" rows a gate setting adds (the same for every fusion)."""
        key = (mode, low, high)
        if key not in self._no_finding:
            img, score = no_finding_rows(self.p_abnormal, mode, low, high)  # type: ignore[arg-type]
            boxes = np.tile(np.array(NO_FINDING_BOX, np.float32), (len(img), 1))
            boxes, score = as_written_columns(boxes, score)
            labels = np.full(len(img), NO_FINDING, np.int64)
            self._no_finding[key] = self.scorer.class_ap_columns(self.image_ids[img], labels, boxes, score)
        return self._no_finding[key]

    def run(
        self,
        fusions: Sequence[FusionSettings],
        gates: Sequence[GateSetting],
        *,
        workers: int | None = None,
        progress: Callable[..., Any] | None = None,
    ) -> tuple[list[list[float]], list[float]]:
        """`score` every fusion setting, in ``workers`` forked processes where that pays.

        Returns:
            ``(scores, fuse_seconds)``: ``scores[f][g]`` for fusion ``f`` and gate setting ``g``.
        """
        n = len(fusions)
        if workers is None:
            big = len(self.flat.score) >= PARALLEL_MIN_BOXES
            workers = (os.cpu_count() or 1) if big else 1
        workers = max(1, min(int(workers), n))
        if "fork" not in multiprocessing.get_all_start_methods():
            workers = 1
        # settings sharing a method and weights run one after another: their sort order is reused
        todo = sorted(range(n), key=lambda f: (fusions[f].method, fusions[f].weights or ()))
        scores: list[list[float]] = [[] for _ in range(n)]
        seconds = [0.0] * n
        if self.scorer.by_class and self.scorer.metric.key == "vinbig" and self.p_abnormal is not None:
            for mode, low, high in gates:  # once, before the workers fork: they share them
                if mode is not None:
                    check_gate_options(mode, low, high)
                    self.no_finding_ap(mode, low, high)
        global _WORK
        _WORK = (self, list(fusions), list(gates))
        pool = multiprocessing.get_context("fork").Pool(workers) if workers > 1 else None
        bar = progress(total=n * len(gates), unit="setting", desc="sweep") if progress else None
        try:
            results = pool.imap_unordered(_score_one, todo) if pool else map(_score_one, todo)
            for f, sc, sec in results:
                scores[f], seconds[f] = sc, sec
                if bar is not None:
                    bar.update(len(gates))
        finally:
            _WORK = None
            if bar is not None:
                bar.close()
            if pool is not None:
                pool.terminate()
                pool.join()
        return scores, seconds


_WORK: tuple[SweepState, list[FusionSettings], list[GateSetting]] | None = None
"""The sweep being run: set before worker processes are forked, so they share it without copying."""


def _score_one(f: int) -> tuple[int, list[float], float]:
    state, fusions, gates = _WORK  # type: ignore[misc]
    scores, seconds = state.score(fusions[f], gates)
    return f, scores, seconds


def check_not_gated(fused: FlatFused, image_ids: np.ndarray) -> None:
    """Raise as `fusion.gate.apply_gate` does if fused rows already are "No finding" (gated twice).

    Raises:
        ValueError: naming the first such image.
    """
    has14 = fused.labels == NO_FINDING
    if has14.any():
        raise ValueError(
            f"image {int(image_ids[fused.image[np.flatnonzero(has14)[0]]])} already has 'No finding' "
            f"(class {NO_FINDING}) rows; gate detections that have not been gated"
        )


def _lesion_key(mode: str | None, low: float | None) -> Any:
    """Gate settings that leave the boxes alike share a key (``append`` keeps them as no gate does)."""
    if mode in ("rescale", "rescore"):
        return mode
    if mode == "filter":
        return ("filter", low)
    return "plain"


def gated_lesions(
    fused: FlatFused,
    p_abnormal: np.ndarray | None,
    mode: str | None,
    low: float | None = None,
    class_p: ClassTable | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The boxes (not "No finding") of `fusion.gate.apply_gate`, as ``(image index, labels, boxes, scores)``.

    ``append`` (and no gate) keeps them; ``rescale`` multiplies the scores by ``p_abnormal`` in
    float32; ``rescore`` by each box's class probability (``class_p``) in float32; ``filter`` drops
    the boxes of images with ``p_abnormal < low``. Rows keep their order.
    """
    img, labels, boxes, scores = fused.image, fused.labels, fused.boxes, fused.scores
    if mode == "rescale":
        scores = scores * p_abnormal.astype(np.float32)[img]  # type: ignore[union-attr]
    elif mode == "rescore":
        scores = scores * class_p.factors(img, labels)  # type: ignore[union-attr]
    elif mode == "filter":
        keep = ~(p_abnormal < low)[img]  # type: ignore[operator]
        img, labels, boxes, scores = img[keep], labels[keep], boxes[keep], scores[keep]
    return img, labels, boxes, scores


def no_finding_rows(
    p_abnormal: np.ndarray, mode: str, low: float | None = None, high: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The "No finding" rows of `fusion.gate.apply_gate`: ``(image index, float32 score)``, one per image at most.

    ``append`` and ``rescale``: every image, score ``1 - p_abnormal``; ``filter``: score 1 where
    ``p_abnormal < low``, ``1 - p_abnormal`` where ``low <= p_abnormal <= high``, none above ``high``.
    """
    p_normal = (1.0 - p_abnormal).astype(np.float32)
    if mode != "filter":
        return np.arange(len(p_abnormal), dtype=np.int64), p_normal
    normal = p_abnormal < low  # type: ignore[operator]
    middle = ~normal & (p_abnormal <= high)  # type: ignore[operator]
    img = np.flatnonzero(normal | middle)
    return img, np.where(normal, np.float32(1.0), p_normal)[img].astype(np.float32)


def gate_columns(
    fused: FlatFused,
    image_ids: np.ndarray,
    p_abnormal: np.ndarray,
    mode: str,
    low: float | None = None,
    high: float | None = None,
    class_p: ClassTable | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`fusion.gate.apply_gate` on columns: the same rows, in the same order within each image.

    Args:
        fused: fused rows (`fusion.engine.fuse_flat`).
        image_ids: ``(I,)`` dataset image id of each image index (for messages).
        p_abnormal: ``(I,)`` gate score of each image index, in ``[0, 1]``.
        mode, low, high: the gate's rule (`fusion.gate`).
        class_p: ``rescore``'s per-class probabilities, or None.

    Returns:
        ``(image index, labels, boxes, scores)`` grouped by image, each image's rows sorted by
        descending score as `apply_gate` sorts them (the "No finding" row after rows of equal score).

    Raises:
        ValueError: as `fusion.gate.apply_gate`: bad options, or fused rows that already are
            "No finding".
    """
    check_gate_options(mode, low, high)
    if mode in CLASS_MODES and class_p is None:
        raise ValueError(f"the gate mode {mode!r} needs per-class probabilities")
    check_not_gated(fused, image_ids)
    img, labels, boxes, scores = gated_lesions(fused, p_abnormal, mode, low, class_p)
    nf_img, nf_score = no_finding_rows(p_abnormal, mode, low, high)
    img = np.concatenate([img, nf_img])
    labels = np.concatenate([labels, np.full(len(nf_img), NO_FINDING, np.int64)])
    boxes = np.concatenate([boxes, np.tile(np.array(NO_FINDING_BOX, np.float32), (len(nf_img), 1))])
    scores = np.concatenate([scores, nf_score])
    order = np.lexsort((-scores, img))  # stable: ties keep the boxes' order, "No finding" last
    return img[order], labels[order], boxes[order], scores[order]


def _row(s: FusionSettings, value: float, fuse_seconds: float) -> dict[str, Any]:
    d = s.to_dict()
    return {"rank": 0, "score": value, **d, "fuse_seconds": round(fuse_seconds, 4)}


def _rank_key(value: float) -> float:
    """Descending score, NaN last (a metric is NaN when no class has ground truth)."""
    return math.inf if math.isnan(value) else -value
