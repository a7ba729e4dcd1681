"""Reading a fusion's input files and checking that they agree with each other and with the dataset.

Every check names the file at fault: a results file that is a gate file (or a gate file that is not),
a sidecar whose dataset is another dataset than ``--dataset`` (compared by content,
`core.predictions.check_same_dataset`, as every reader of results files does), a file passed twice, image or category
ids the dataset lacks (`core.predictions.read_predictions`), gate scores for images it lacks or
missing for images it has.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from core.class_probs import ClassProbs, read_class_probs
from core.coco import CocoDataset
from core.detections import Detections
from core.predictions import meta_path, read_gate, read_meta, read_predictions


@dataclass(frozen=True)
class Inputs:
    """The files of one fusion, read and checked.

    Attributes:
        dataset: the COCO dataset (image sizes, ground truth for a sweep).
        paths: the results files, in the order given (the order of the weights).
        names: each file's ``name`` from its sidecar (default its stem).
        per_model: one ``image_id -> Detections`` per file, every dataset image present.
        gate: ``image_id -> p_abnormal`` for every dataset image, or None.
        gate_path: the gate file, or None.
        class_probs: the gate file's probabilities of every class (`core.class_probs`; a plain gate
            file reads as one binary class), or None without a gate.
    """

    dataset: CocoDataset
    paths: tuple[Path, ...]
    names: tuple[str, ...]
    per_model: tuple[dict[int, Detections], ...]
    gate: dict[int, float] | None
    gate_path: Path | None
    class_probs: ClassProbs | None = None

    @property
    def sizes(self) -> dict[int, tuple[int, int]]:
        """``image_id -> (width, height)`` of every dataset image."""
        return {int(im["id"]): (int(im["width"]), int(im["height"])) for im in self.dataset.images}


def read_inputs(
    preds: Sequence[str | Path],
    dataset: str | Path,
    gate: str | Path | None = None,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> Inputs:
    """Read and check the results files (and gate file) of a fusion on ``dataset``.

    Args:
        preds: COCO results files, each maybe with a ``.meta.json`` sidecar.
        dataset: the COCO dataset they were predicted on.
        gate: a gate file ``[{image_id, p_abnormal}]``, or None.
        progress: wraps the list of files (e.g. ``tqdm``); None for none.

    Raises:
        FileNotFoundError: naming a missing file.
        ValueError: naming the file that disagrees (see the module docstring).
    """
    if not preds:
        raise ValueError("no prediction files given")
    ds = CocoDataset.load(dataset)
    paths = tuple(Path(p) for p in preds)
    seen: dict[Path, Path] = {}
    for p in paths:
        key = p.resolve()
        if key in seen:
            raise ValueError(f"{p}: given twice (as {seen[key]} too); use weights to count a model more")
        seen[key] = p
    names, per_model = [], []
    for p in progress(paths) if progress else paths:
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such prediction file")
        meta = read_meta(p)
        if meta.get("kind") == "gate":
            raise ValueError(f"{p}: is a gate file (kind 'gate' in {meta_path(p)}); pass it as the gate")
        per_model.append(read_predictions(p, ds))
        names.append(str(meta.get("name", p.stem)))
    p_abnormal = class_probs = None
    if gate is not None:
        gate = Path(gate)
        if not gate.is_file():
            raise FileNotFoundError(f"{gate}: no such gate file")
        meta = read_meta(gate)
        if meta_path(gate).is_file() and meta.get("kind") != "gate":
            raise ValueError(
                f"{gate}: its sidecar {meta_path(gate)} says kind {meta.get('kind')!r}, not 'gate'"
            )
        p_abnormal = read_gate(gate, ds)
        class_probs = read_class_probs(gate, ds)
        missing = sorted(set(ds.image_ids) - set(p_abnormal))
        if missing:
            raise ValueError(
                f"{gate}: no p_abnormal for {len(missing)} of {len(ds.image_ids)} images of {ds.path}, "
                f"e.g. image ids {missing[:10]}"
            )
    return Inputs(ds, paths, tuple(names), tuple(per_model), p_abnormal, gate, class_probs)
