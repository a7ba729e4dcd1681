"""A class-per-folder image set → a multi-class dataset with stratified folds.

The layout of the public COVID-19 radiography sets: one folder per class under a root
(``COVID/``, ``Normal/``, ``Lung_Opacity/``, ``Viral Pneumonia/``), each holding that class's
PNG/JPEG/DICOM images, directly or in an ``images/`` subfolder (the sets that ship lung masks keep
them beside it in ``masks/``, which is not read). The folder names are the classes, sorted, or in
the order ``classes`` gives.

Output (as the other converters'): ``images/<stem>.png`` (grey, longer side ``size``), ``all.json``,
``fold{k}_{train,val}.json`` and ``train.json``/``val.json``. The dataset has no categories and no
boxes; every image carries ``labels: [its class]`` and ``fold`` (stratified by class), and
``info["classification"]`` names the task (``multiclass``) and the classes, none of which is a
detection category.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from convert.common import (
    BuildOptions,
    ConversionError,
    Problem,
    _remove_new,
    classification_info,
    write_fold_files,
    write_problem_report,
)
from convert.folds import assign_folds
from convert.images import ImageJob, convert_image, find_images, parallel_map
from core.coco import CocoDataset

log = logging.getLogger(__name__)


def class_folders(root: Path, classes: Sequence[str] | None = None) -> dict[str, Path]:
    """The class folders under ``root``: class name → the folder holding its images, in class order.

    A class folder's images are in it or, where it has one, in its ``images/`` subfolder.

    Raises:
        FileNotFoundError: if ``root`` is not a folder.
        ConversionError: naming the root, if it has no class folder, or if ``classes`` names a
            folder it lacks, leaves one of its folders out or names a class twice.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: class-per-folder root not found")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise ConversionError(
            f"{root}: no class folders (expected one folder per class, e.g. COVID/, Normal/)"
        )
    if classes is None:
        order = found
    else:
        order = [str(c) for c in classes]
        twice = sorted({c for c in order if order.count(c) > 1})
        missing = [c for c in order if c not in found]
        extra = [c for c in found if c not in order]
        if twice or missing or extra:
            parts = [f"--classes names {twice} twice"] if twice else []
            parts += [f"no folder {root / c}" for c in missing]
            if extra:
                parts.append(f"the folder(s) {extra} are not in --classes")
            raise ConversionError(f"{root}: {'; '.join(parts)}; the class folders are {found}")
    return {c: (root / c / "images" if (root / c / "images").is_dir() else root / c) for c in order}


def convert_folders(
    root: Path,
    out_dir: Path,
    *,
    classes: Sequence[str] | None = None,
    size: int | None = 1024,
    n_folds: int = 5,
    val_fold: int = 0,
    seed: int = 0,
    workers: int = 1,
    on_error: str = "raise",
) -> CocoDataset:
    """Convert a class-per-folder image set under ``root`` to a multi-class dataset under ``out_dir``.

    Args:
        root: the folder of class folders.
        out_dir: the dataset folder (created).
        classes: the class order (every folder once); None for the folders' sorted names.
        size: longer side of the written PNGs (aspect kept); None or 0 keeps the source size.
        n_folds, val_fold, seed: the folds, stratified by class.
        workers: processes converting images.
        on_error: ``raise`` on an image that cannot be decoded (removing what this run wrote), or
            ``skip`` it and list it in ``skipped.csv``.

    Returns:
        The whole dataset (``all.json``).

    Raises:
        FileNotFoundError: naming a missing folder.
        ConversionError: naming the flag out of range, the class folders (`class_folders`), a class
            folder without images, two images of one name (the written files are named by stem),
            fewer images than folds, or an image that cannot be decoded; nothing is written before
            the folders check out.
    """
    out = Path(out_dir)
    opts = BuildOptions(
        out_dir=out,
        images_dir=Path(root),
        size=size or None,
        workers=workers,
        n_folds=n_folds,
        val_fold=val_fold,
        seed=seed,
        on_error=on_error,
    )
    opts.check()
    folders = class_folders(Path(root), classes)
    label: dict[str, int] = {}
    sources: dict[str, Path] = {}
    for k, (name, folder) in enumerate(folders.items()):
        found = find_images(folder)
        if not found:
            raise ConversionError(f"{folder}: class {name!r} has no PNG/JPEG/DICOM images")
        for key, path in found.items():
            if key in sources:
                raise ConversionError(
                    f"{path}: the image name {key} is also {sources[key]}; the written images are named "
                    "by file stem, so each must be unique across the classes"
                )
            sources[key], label[key] = path, k
    if len(sources) < n_folds:
        raise ConversionError(
            f"--folds {n_folds} needs at least {n_folds} images; {root} holds {len(sources)}"
        )
    names = list(folders)

    new_dirs = [d for d in (out, out / "images") if not d.exists()]
    out.mkdir(parents=True, exist_ok=True)
    jobs = [ImageJob(k, p, out / "images" / f"{k}.png", opts.size) for k, p in sorted(sources.items())]
    fresh = [j.out for j in jobs if not j.out.exists()]
    results = parallel_map(convert_image, jobs, workers, "converting images")
    done, skipped = {}, []
    try:
        for res in results:
            if res.error and on_error == "raise":
                raise ConversionError(f"image {res.key}: {res.error}")
            if res.error:
                skipped.append(Problem(str(sources[res.key]), None, res.key, res.error))
            else:
                done[res.key] = res
    except ConversionError:
        results.close()
        _remove_new(fresh, new_dirs)
        raise
    if skipped:
        write_problem_report(out / "skipped.csv", skipped)
        log.warning("skipped %d image(s); see %s", len(skipped), out / "skipped.csv")
    keys = sorted(done)
    if len(keys) < n_folds:
        raise ConversionError(
            f"--folds {n_folds} needs at least {n_folds} images; {len(keys)} were converted"
        )
    folds = assign_folds({k: {label[k]} for k in keys}, n_folds, seed)
    images = []
    for image_id, key in enumerate(keys):
        res = done[key]
        images.append(
            {
                "id": image_id,
                "file_name": f"images/{key}.png",
                "width": res.width,
                "height": res.height,
                "orig_width": res.src_width,
                "orig_height": res.src_height,
                "source_id": key,
                "labels": [names[label[key]]],
                "fold": folds[key],
            }
        )
    info = {
        "source": "folders",
        "root": str(root),
        "size": opts.size,
        "n_folds": n_folds,
        "seed": seed,
        "classification": classification_info(names, "multiclass", [None] * len(names)),
    }
    ds = CocoDataset(images, [], [], root=out, info=info)
    write_fold_files(ds, out, n_folds, val_fold)
    ds.write(out / "all.json")
    return ds
