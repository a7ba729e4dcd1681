"""``python -m ensemble run``: fuse several models' results files into one, optionally gated.

Reads the results files and the dataset (`ensemble.inputs`), fuses every image with
`fusion.engine.fuse_many` (in chunks, for a progress bar), applies the gate's rule
(`fusion.gate`) and writes ``NAME.json`` + ``NAME.meta.json`` (`core.predictions`, kind
``fusion``). The sidecar holds ``method``, ``inputs`` (the files, in weight order), ``input_names``,
``options`` (every `fusion.engine.fuse` option), ``gate`` (``{path, mode, low, high}`` or null),
``dataset``, ``config``, ``images``, ``seconds`` and ``images_per_second`` (fusion and gate only,
without file reading and writing).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from core.detections import Detections
from core.io import check_out_file
from core.predictions import write_predictions
from ensemble.inputs import Inputs, read_inputs
from fusion.engine import fuse_with
from fusion.gate import CLASS_MODES, GATE_MODES, apply_gate, class_scores
from fusion.settings import FusionSettings

CHUNK_IMAGES = 512
"""Images fused per `fuse_many` call by `fuse_dataset` (one progress-bar step)."""


def fuse_dataset(
    per_model: Sequence[Mapping[int, Detections]],
    sizes: Mapping[int, tuple[int, int]],
    settings: FusionSettings,
    progress: Callable[..., Any] | None = None,
) -> dict[int, Detections]:
    """Fuse every image of ``sizes`` with ``settings``' fusion options (no gate).

    The same result as one `fuse_many` call; images go in chunks of ``CHUNK_IMAGES`` so that
    ``progress`` (a ``tqdm``-like class, called with ``total=`` and ``unit=``) can show them.

    Raises:
        ValueError: as `fusion.engine.fuse_many`.
    """
    ids = list(sizes)
    out: dict[int, Detections] = {}
    bar = progress(total=len(ids), unit="img", desc=f"fusing ({settings.method})") if progress else None
    try:
        for a in range(0, len(ids), CHUNK_IMAGES):
            chunk = ids[a : a + CHUNK_IMAGES]
            sub = {i: sizes[i] for i in chunk}
            models = [{i: m[i] for i in chunk if i in m} for m in per_model]
            out.update(fuse_with(models, sub, settings))
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    return out


def fuse_and_gate(
    inputs: Inputs, settings: FusionSettings, progress: Callable[..., Any] | None = None
) -> dict[int, Detections]:
    """Fuse ``inputs`` with ``settings`` and apply its gate rule (if any) with the inputs' gate scores.

    Raises:
        ValueError: for settings that do not fit the inputs (weights count, a gate mode without gate
            scores or gate scores without a mode), or as `fuse_dataset` and `fusion.gate.apply_gate`.
    """
    settings.validate(len(inputs.per_model))
    gate = settings.gate_options()
    if gate is not None and inputs.gate is None:
        raise ValueError(f"the gate mode {settings.gate_mode!r} needs a gate file of p_abnormal scores")
    if gate is None and inputs.gate is not None:
        raise ValueError(f"{inputs.gate_path}: a gate file needs a gate mode ({', '.join(GATE_MODES)})")
    p_class = None
    if gate is not None and gate["mode"] in CLASS_MODES:
        p_class = class_scores(inputs.class_probs) if inputs.class_probs is not None else None
        if p_class is None:
            raise ValueError(
                f"{inputs.gate_path}: the gate mode {gate['mode']!r} needs per-class probabilities of "
                "classes that stand for the detection categories; this file has p_abnormal only (use rescale)"
            )
    fused = fuse_dataset(inputs.per_model, inputs.sizes, settings, progress)
    if gate is None:
        return fused
    try:
        return apply_gate(fused, inputs.gate, **gate, p_class=p_class)  # type: ignore[arg-type]
    except ValueError as e:
        raise ValueError(f"{inputs.gate_path}: {e}") from None


def run(
    preds: Sequence[str | Path],
    dataset: str | Path,
    settings: FusionSettings,
    out: str | Path,
    *,
    gate: str | Path | None = None,
    name: str | None = None,
    config: str | Path | None = None,
    expect_names: Sequence[str] | None = None,
    progress: Callable[..., Any] | None = None,
) -> Path:
    """Fuse ``preds`` on ``dataset`` with ``settings`` and write ``out`` and its sidecar.

    Args:
        preds: COCO results files, in the order of ``settings.weights``.
        dataset: the COCO dataset they were predicted on (image sizes).
        settings: the fusion and gate settings.
        out: the results file to write (``.json``); its sidecar goes beside it.
        gate: gate file (``[{image_id, p_abnormal}]``), needed when ``settings.gate_mode`` is set.
        name: the sidecar's ``name`` (default ``out``'s stem).
        config: the settings file ``settings`` came from, recorded in the sidecar.
        expect_names: model names the weights were chosen for (a settings file's ``inputs``); if
            given, the inputs' names must be these, in this order.
        progress: a ``tqdm``-like class for progress bars, or None.

    Returns:
        ``out``.

    Raises:
        FileNotFoundError: naming a missing input.
        ValueError: naming the file or value at fault (`ensemble.inputs`, `fuse_and_gate`), for an
            ``out`` that is not ``.json``, is an existing folder or is one of the inputs, or for
            names that differ from ``expect_names``.
    """
    out = check_out_file(out)
    if out.suffix != ".json":
        raise ValueError(f"the output {out} must be a .json file")
    if any(Path(p).resolve() == out.resolve() for p in [*preds, *([gate] if gate else [])]):
        raise ValueError(f"the output {out} is one of the inputs; choose another --out")
    settings.validate(len(preds))
    wrap = (lambda it: progress(it, desc="reading", unit="file")) if progress else None
    inputs = read_inputs(preds, dataset, gate, progress=wrap)
    if expect_names is not None and list(expect_names) != list(inputs.names):
        raise ValueError(
            f"{config or 'the settings'}: the weights {list(settings.weights or [])} were chosen for the "
            f"models {list(expect_names)}, but the prediction files are {list(inputs.names)}; give them "
            "in that order, or give --weights"
        )
    t0 = time.perf_counter()
    dets = fuse_and_gate(inputs, settings, progress)
    seconds = time.perf_counter() - t0
    n = len(inputs.dataset.images)
    g = settings.gate_options()
    meta = {
        "name": name or out.stem,
        "method": settings.method,
        "inputs": [str(p) for p in inputs.paths],
        "input_names": list(inputs.names),
        "options": settings.fusion_options(),
        "gate": None if g is None else {"path": str(inputs.gate_path), **g},
        "dataset": str(dataset),
        "config": None if config is None else str(config),
        "images": n,
        "seconds": round(seconds, 4),
        "images_per_second": round(n / seconds, 1) if seconds > 0 else None,
    }
    return write_predictions(out, dets, meta, kind="fusion")
