"""The bundle: a trained ensemble as one self-describing folder (`export_bundle`, `load_bundle`).

A bundle holds everything `infer.api.predict` needs, and nothing of the machine it was made on::

    BUNDLE/
      manifest.json                 what the folder holds (below); written last
      models/NAME/config.yaml       each detector's resolved model config (as its run wrote it), portable
      models/NAME/weights.pt|.pth   its weights
      models/NAME/model/...         the framework's model file, if it is a file (a Detectron2 YAML with its
                                    ``_BASE_`` files, an MMDetection config with its relative ``_base_``)
      gate/NAME/...                 the gate, laid out the same way (only when the fusion uses it)
      fusion.yaml                   the fusion settings (`fusion.settings.write_settings`; absent for a
                                    single-model bundle)

``manifest.json`` keys:

- ``format`` (``cxrfuse-bundle``), ``format_version`` (`FORMAT_VERSION`), ``created`` (ISO 8601);
- ``versions``: what made it: ``cxrfuse``, ``python``, and ``torch``, ``torchvision``, ``numpy``,
  ``opencv``, ``pydicom`` and the frameworks of its adapters, where installed;
- ``source``: the pipeline config, its work folder, the fusion chosen and its leaderboard row;
- ``classes``: ``[{id, name}]`` the models were trained for; ``no_finding``: ``{id, name}``;
- ``preprocessing``: ``size`` (longest side of the images the models saw; null = original size) and
  the decoding rules, those of ``python -m convert`` (`convert.dicom.dicom_to_uint8`,
  `convert.images.target_size` / `resize_gray`);
- ``models``: ``[{name, adapter, config, weights, sha256, model_file}]`` in the order of the fusion
  weights; ``gate``: the same for the gate, or null; ``fusion``: ``{name, settings, method,
  gate_mode}`` or null (one model, no fusion; its gate, if any, adds "No finding" as the Kaggle
  submission does, the ``append`` rule);
- ``files``: ``{path: sha256}`` of every other file of the folder.

`load_bundle` refuses a folder whose files are missing or differ from their SHA-256 (naming the
file), and warns, listing them, when the versions that made it differ from the ones running.
"""

from __future__ import annotations

import ast
import datetime as _dt
import logging
import os
import platform
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from core.classes import NO_FINDING, NO_FINDING_NAME
from core.errors import UserError
from core.io import atomic_open, read_json, sha256_of, write_json

logger = logging.getLogger(__name__)

FORMAT = "cxrfuse-bundle"
#: the layout `export_bundle` writes; `load_bundle` reads this version and older ones
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SETTINGS = "fusion.yaml"
REPO = Path(__file__).resolve().parents[1]

#: distributions whose versions a bundle records: always, and per adapter
_ALWAYS = ("torch", "torchvision", "numpy", "opencv", "pydicom")
_FRAMEWORKS = {
    "ultralytics": ("ultralytics",),
    "detectron2": ("detectron2",),
    "mmdet": ("mmdet", "mmcv", "mmengine"),
    "resnet_gate": (),
}
#: module name → the import name to look its distribution up by
_MODULE = {"opencv": "cv2"}


class InferError(UserError):
    """A bundle that cannot be made or used, or inputs that cannot be predicted; names the file."""


class BundleError(InferError):
    """A bundle folder that is incomplete, altered since export, or of an unknown format."""


# ---------------------------------------------------------------------------------------- versions
def cxrfuse_version() -> str:
    """The version of this CXRFuse: ``pyproject.toml`` beside the packages, else the installed metadata."""
    pyproject = REPO / "pyproject.toml"
    if pyproject.is_file():
        import tomllib

        try:
            return str(tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["version"])
        except (KeyError, tomllib.TOMLDecodeError):
            pass
    from importlib import metadata

    try:
        return metadata.version("cxrfuse")
    except metadata.PackageNotFoundError:
        return "unknown"


def installed_versions(names: Sequence[str]) -> dict[str, str | None]:
    """``name → version`` of installed distributions (None where not installed), read from metadata.

    Nothing is imported: a framework's version is known without loading it.
    """
    from importlib import metadata

    dists = None
    out: dict[str, str | None] = {}
    for name in names:
        module = _MODULE.get(name, name)
        try:
            out[name] = metadata.version(name)
            continue
        except metadata.PackageNotFoundError:
            pass
        if dists is None:
            dists = metadata.packages_distributions()
        version = None
        for dist in dists.get(module, []):
            try:
                version = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
        out[name] = version
    return out


def versions_for(adapters: Sequence[str]) -> dict[str, str | None]:
    """The versions a bundle of models with these ``adapters`` records (see the module docstring)."""
    names = list(_ALWAYS)
    for a in adapters:
        names += [n for n in _FRAMEWORKS.get(a, ()) if n not in names]
    return {"cxrfuse": cxrfuse_version(), "python": platform.python_version(), **installed_versions(names)}


def version_differences(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``NAME RECORDED (here CURRENT)`` for every recorded version that differs from the current one."""
    out = []
    for name, was in recorded.items():
        now = current.get(name)
        if was != now:
            out.append(f"{name} {was or 'not installed'} (here {now or 'not installed'})")
    return out


# ---------------------------------------------------------------------------------------- loading
@dataclass(frozen=True)
class Member:
    """One model of a bundle (a detector or the gate).

    Attributes:
        name: the model's name (its run's name in the pipeline).
        adapter: a key of `adapters.ADAPTERS`.
        config: the model config YAML inside the bundle.
        weights: the weights file inside the bundle.
        model_file: the framework's model file inside the bundle, or None (a built-in model name).
    """

    name: str
    adapter: str
    config: Path
    weights: Path
    model_file: Path | None = None

    def model_config(self, overrides: Sequence[str] = ()) -> Any:
        """The validated `adapters.config.ModelConfig`, its model file pointing into the bundle.

        Raises:
            adapters.config.ConfigError: a config that does not validate (naming the file and key).
        """
        from adapters.config import ConfigError, parse_config

        try:
            data = yaml.safe_load(self.config.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{self.config}: not valid YAML ({e})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{self.config}: expected a mapping at the top level")
        if self.model_file is not None:
            data["model"] = str(self.model_file)
        return parse_config(data, self.config, list(overrides))


@dataclass(frozen=True)
class Bundle:
    """A bundle folder, read and checked by `load_bundle`.

    Attributes:
        root: the folder.
        manifest: ``manifest.json`` as read.
        models: the detectors, in the order of the fusion weights.
        gate: the gate, or None.
        settings: the fusion settings, or None for a single-model bundle.
        classes: ``category id → name`` the models were trained for.
        size: longest side of the images the models saw (None: original size).
        voi_lut: whether DICOMs are windowed with their VOI LUT / window before scaling to 8 bits.
        differences: the versions that differ from the running ones (see `version_differences`).
    """

    root: Path
    manifest: dict[str, Any]
    models: tuple[Member, ...]
    gate: Member | None
    settings: Any
    classes: dict[int, str]
    size: int | None
    voi_lut: bool
    differences: tuple[str, ...]

    @property
    def fusion_name(self) -> str | None:
        """The fusion's name on the pipeline's leaderboard (``wbf+gate``), or None."""
        fusion = self.manifest.get("fusion")
        return fusion.get("name") if fusion else None

    @property
    def gate_mode(self) -> str | None:
        """How the gate meets the boxes: the fusion's gate rule, ``append`` for a single model, or None."""
        if self.gate is None:
            return None
        return self.settings.gate_mode if self.settings is not None else "append"


def _member(root: Path, entry: Any, files: Mapping[str, str], what: str) -> Member:
    if not isinstance(entry, dict) or not all(k in entry for k in ("name", "adapter", "config", "weights")):
        raise BundleError(f"{root / MANIFEST}: {what} needs name, adapter, config and weights: {entry!r}")
    paths = {k: entry[k] for k in ("config", "weights", "model_file") if entry.get(k)}
    for key, rel in paths.items():
        if rel not in files:
            raise BundleError(f"{root / MANIFEST}: {what} {entry['name']}'s {key} {rel} is not among its files")
    return Member(
        name=str(entry["name"]),
        adapter=str(entry["adapter"]),
        config=root / entry["config"],
        weights=root / entry["weights"],
        model_file=root / entry["model_file"] if entry.get("model_file") else None,
    )


def load_bundle(path: str | Path, *, verify: bool = True) -> Bundle:
    """Read a bundle folder and check every file against the manifest.

    Args:
        path: the folder `export_bundle` wrote.
        verify: check each file's SHA-256 (False only checks that the files exist).

    Returns:
        The `Bundle`. Versions that differ from the running ones are logged as one warning and kept
        in ``differences``.

    Raises:
        BundleError: no manifest, a format this version cannot read, a file that is missing or whose
            SHA-256 differs from the manifest's (naming the file), or a manifest that lacks a key.
        ValueError: fusion settings that do not validate (naming ``fusion.yaml``).
    """
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"{root}: no such bundle folder")
    if not (root / MANIFEST).is_file():
        raise BundleError(f"{root}: not a CXRFuse bundle (no {MANIFEST}); make one with python -m infer export")
    m = read_json(root / MANIFEST)
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise BundleError(f"{root / MANIFEST}: not a CXRFuse bundle manifest (format is not {FORMAT!r})")
    version = m.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise BundleError(f"{root / MANIFEST}: bad format_version {version!r}")
    if version > FORMAT_VERSION:
        raise BundleError(
            f"{root}: bundle format {version} was made by a newer CXRFuse ({m.get('versions', {}).get('cxrfuse')}); "
            f"this one ({cxrfuse_version()}) reads format {FORMAT_VERSION} and older"
        )
    for key in ("files", "models", "classes", "preprocessing"):
        if key not in m:
            raise BundleError(f"{root / MANIFEST}: lacks {key!r}")
    files: dict[str, str] = m["files"]
    for rel, digest in files.items():
        p = root / rel
        if not p.is_file():
            raise BundleError(f"{p}: missing from the bundle (listed in {MANIFEST})")
        if verify:
            got = sha256_of(p)
            if got != digest:
                raise BundleError(
                    f"{p}: SHA-256 {got[:16]}... differs from the manifest's {str(digest)[:16]}...: "
                    "the file was changed after export; refusing to use it"
                )
    if not m["models"]:
        raise BundleError(f"{root / MANIFEST}: no models")
    models = tuple(_member(root, e, files, "model") for e in m["models"])
    gate = _member(root, m["gate"], files, "gate") if m.get("gate") else None
    settings = None
    if m.get("fusion"):
        from fusion.settings import read_settings

        rel = m["fusion"].get("settings", SETTINGS)
        if rel not in files:
            raise BundleError(f"{root / MANIFEST}: the fusion settings {rel} are not among its files")
        settings, _ = read_settings(root / rel)
        try:
            settings.validate(len(models))
        except ValueError as e:
            raise ValueError(f"{root / rel}: {e}") from None
        if settings.gate_mode is not None and gate is None:
            raise BundleError(f"{root / MANIFEST}: the fusion uses a gate ({settings.gate_mode}) but has none")
    elif len(models) != 1:
        raise BundleError(f"{root / MANIFEST}: {len(models)} models but no fusion")
    classes = {int(c["id"]): str(c["name"]) for c in m["classes"]}
    prep = m["preprocessing"]
    dicom = prep.get("dicom", {})
    recorded = m.get("versions", {})
    differences = version_differences(recorded, versions_for([x.adapter for x in (*models, *([gate] if gate else []))]))
    if differences:
        logger.warning(
            "%s was made with other versions than these: %s; its results may differ from the pipeline's",
            root, "; ".join(differences),
        )  # fmt: skip
    return Bundle(
        root=root,
        manifest=m,
        models=models,
        gate=gate,
        settings=settings,
        classes=classes,
        size=int(prep["size"]) if prep.get("size") else None,
        voi_lut=bool(dicom.get("voi_lut", True)),
        differences=tuple(differences),
    )


# ---------------------------------------------------------------------------------------- export
def _run_files(work_dir: Path, name: str, adapter: str) -> tuple[Path, Path, Path]:
    """``(config.yaml, weights, categories.json)`` of a pipeline run (`pipeline.plan` names them)."""
    run = work_dir / "runs" / name
    weights = run / ("weights.pt" if adapter == "ultralytics" else "weights.pth")
    return run / "config.yaml", weights, run / "categories.json"


def model_files(main: Path) -> list[Path]:
    """The framework model file ``main`` and the files it inherits from by relative path, main first.

    Follows a Detectron2 YAML's ``_BASE_`` and an MMEngine Python config's ``_base_`` (a string or a
    list of strings; ``package::path`` references are left to the installed package).

    Raises:
        InferError: a base file that does not exist (naming it and the file that names it).
    """
    out: list[Path] = []
    todo = [main.resolve()]
    while todo:
        p = todo.pop(0)
        if p in out:
            continue
        out.append(p)
        bases: list[str] = []
        if p.suffix in (".yaml", ".yml"):
            try:
                data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
            except yaml.YAMLError as e:
                raise InferError(f"{p}: not valid YAML ({e})") from None
            base = data.get("_BASE_") if isinstance(data, dict) else None
            bases = [base] if isinstance(base, str) else []
        elif p.suffix == ".py":
            for node in ast.parse(p.read_text(encoding="utf-8"), filename=str(p)).body:
                if isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == "_base_" for t in node.targets
                ):
                    value = ast.literal_eval(node.value)
                    bases = [value] if isinstance(value, str) else [v for v in value if isinstance(v, str)]
        for b in bases:
            if "::" in b or "://" in b:
                continue  # a package's or the model zoo's own file
            q = (p.parent / b).resolve()
            if not q.is_file():
                raise InferError(f"{p}: its base {b} ({q}) does not exist")
            todo.append(q)
    return out


def _portable_config(src: Path, dest_dir: Path) -> tuple[dict[str, Any], Path | None]:
    """A run's resolved config made portable, and the framework model file it names copied beside it.

    Paths of the training machine go: ``dataset`` and ``out_dir`` (not needed to predict) and the
    start ``weights``; ``trust_weights`` goes too (a bundle's weights are CXRFuse's own checkpoints,
    read without unpickling objects). A model that is a file is copied under ``model/`` with its bases.

    Returns:
        ``(config dict, model file in dest_dir or None)``.
    """
    from adapters.config import ConfigError, parse_config

    data = yaml.safe_load(src.read_text(encoding="utf-8")) or {}
    cfg = parse_config(data, src)  # validates, and resolves the model file as the run saw it
    try:
        main = cfg.model_path()
    except ConfigError:
        main = None  # a framework's built-in model (yolov8n.yaml) or an architecture (resnet18)
    if cfg.adapter == "ultralytics" and "/" not in cfg.model and "\\" not in cfg.model:
        main = None  # a bare name is Ultralytics' built-in model even if a file of that name exists
    model_file = None
    if main is not None:
        found = model_files(main)
        top = Path(os.path.commonpath([str(f.parent) for f in found]))
        for f in found:
            target = dest_dir / "model" / f.relative_to(top)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, target)
        model_file = dest_dir / "model" / main.relative_to(top)
        data["model"] = model_file.relative_to(dest_dir).as_posix()
    for key in ("dataset", "out_dir", "trust_weights"):
        data.pop(key, None)
    data["weights"] = None
    return data, model_file


def _leaderboard(work_dir: Path) -> dict[str, Any] | None:
    path = work_dir / "leaderboard" / "leaderboard.json"
    return read_json(path) if path.is_file() else None


def choose_fusion(p: Any, fusion: str | None) -> tuple[str | None, dict[str, Any] | None]:
    """The fusion to export: ``fusion`` if given, else the best fusion on the run's leaderboard.

    Returns:
        ``(name, leaderboard row or None)``; name None for a pipeline of one model (no fusion).

    Raises:
        InferError: no leaderboard and no ``fusion`` named, a name the pipeline does not make, or a
            leaderboard without fusions for a pipeline of several models.
    """
    names = [f"{m}{g}" for m in p.methods for g in ("", *(["+gate"] if p.gate else []))]
    if len(p.models) == 1:
        names = []
    board = _leaderboard(p.work_dir)
    rows = sorted(board["rows"], key=lambda r: r.get("rank") or 0) if board else []
    if fusion is not None:
        if fusion not in names:
            raise InferError(
                f"{p.source}: the pipeline makes no fusion {fusion!r}; its fusions: {', '.join(names) or 'none'}"
            )
        return fusion, next((r for r in rows if r.get("name") == fusion), None)
    if board is None:
        raise InferError(
            f"{p.work_dir / 'leaderboard' / 'leaderboard.json'}: no leaderboard: finish the pipeline "
            f"(python -m pipeline run {p.source}) or name the fusion with --fusion"
        )
    if not names:
        return None, next((r for r in rows if r.get("kind") == "detector"), None)
    best = next((r for r in rows if r.get("kind") == "fusion" and r.get("name") in names), None)
    if best is None:
        raise InferError(f"{p.work_dir / 'leaderboard' / 'leaderboard.json'}: no fusion of {p.source} is on it")
    return str(best["name"]), best


def _row_summary(row: Mapping[str, Any] | None, work_dir: Path) -> dict[str, Any] | None:
    """The exported model's or fusion's leaderboard row in short: name, kind, rank, score and the metric."""
    if row is None:
        return None
    return {**{k: row.get(k) for k in ("name", "kind", "rank", "score")},
            "metric": (_leaderboard(work_dir) or {}).get("metric_name")}  # fmt: skip


def _replace_folder(new: Path, out: Path) -> None:
    """Rename the finished folder ``new`` onto ``out``; an old ``out`` goes only once ``new`` is in place."""
    if not out.exists():
        os.replace(new, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent)) / out.name
    os.replace(out, old)
    try:
        os.replace(new, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old.parent, ignore_errors=True)


def export_bundle(
    pipeline_config: str | Path,
    out: str | Path,
    *,
    fusion: str | None = None,
    overrides: Sequence[str] = (),
    work_dir: str | Path | None = None,
    force: bool = False,
) -> Path:
    """Export a finished pipeline run as a bundle folder (see the module docstring).

    The folder is built under a temporary name beside ``out`` and renamed onto it at the end, so
    ``out`` is either complete or absent (or, without ``force``, the old one untouched).

    Args:
        pipeline_config: the pipeline YAML the run used (``python -m pipeline run CONFIG``).
        out: the bundle folder to write.
        fusion: the fusion to export (``wbf``, ``wbf+gate``, ...); default the best on the leaderboard.
        overrides: the ``--set KEY=VALUE`` the run was given (they name its models' configs).
        work_dir: the run's work folder, if not the config's.
        force: replace an existing ``out``.

    Returns:
        ``out``.

    Raises:
        InferError: ``out`` exists (without ``force``), the fusion cannot be chosen (`choose_fusion`),
            a model or the gate has not been trained (naming the missing file), its fusion settings
            are missing or were chosen for other models, or the models disagree on the classes.
        pipeline.config.PipelineError, adapters.config.ConfigError: a config that does not validate.
    """
    from fusion.settings import read_settings, write_settings
    from pipeline.config import load_pipeline
    from pipeline.plan import settings_path

    out = Path(out)
    if out.exists() and not force:
        raise InferError(f"{out}: exists; choose another folder or pass --force to replace it")
    p = load_pipeline(pipeline_config, list(overrides), str(work_dir) if work_dir else None)
    name, row = choose_fusion(p, fusion)
    settings = None
    if name is not None:
        spath = settings_path(p, name)
        if not spath.is_file():
            raise InferError(f"{spath}: missing: the fusion {name} has not run (python -m pipeline run {p.source})")
        settings, info = read_settings(spath)
        settings.validate(len(p.models))
        wanted = [m.name for m in p.models]
        if info.get("inputs") and list(info["inputs"]) != wanted:
            raise InferError(f"{spath}: chosen for the models {info['inputs']}, not for {wanted}")
    use_gate = p.gate is not None and (settings is None or settings.gate_mode is not None)
    entries = [("models", m) for m in p.models] + ([("gate", p.gate)] if use_gate else [])
    runs = {}
    for _, m in entries:
        files = _run_files(p.work_dir, m.name, m.adapter)
        missing = [f for f in files[:2] if not f.is_file()]
        if missing:
            raise InferError(f"{missing[0]}: missing: the model {m.name} has not been trained (run the pipeline)")
        runs[m.name] = files
    classes = None
    for kind, m in entries:
        cats_path = runs[m.name][2]
        if kind != "models" or not cats_path.is_file():
            continue
        cats = [{"id": int(c["id"]), "name": str(c["name"])} for c in read_json(cats_path)]
        if classes is not None and cats != classes:
            raise InferError(f"{cats_path}: classes {cats} differ from the other models' {classes}")
        classes = cats
    if classes is None:
        raise InferError(f"{p.work_dir / 'runs'}: no categories.json of any model (was the pipeline run?)")
    val = p.coco / "val.json"
    size = p.data.get("convert", {}).get("size", 1024)
    if val.is_file():
        size = read_json(val).get("info", {}).get("size", size)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent))
    try:
        members: dict[str, list[dict[str, Any]]] = {"models": [], "gate": []}
        for kind, m in entries:
            config_src, weights_src, _ = runs[m.name]
            dest = tmp / kind / m.name
            dest.mkdir(parents=True)
            data, model_file = _portable_config(config_src, dest)
            with atomic_open(dest / "config.yaml") as f:
                f.write(f"# {m.name}: the resolved config of its run ({config_src}), made portable by infer export\n")
                yaml.safe_dump(data, f, sort_keys=False)
            shutil.copyfile(weights_src, dest / weights_src.name)
            members[kind].append(
                {
                    "name": m.name,
                    "adapter": m.adapter,
                    "config": (dest / "config.yaml").relative_to(tmp).as_posix(),
                    "weights": (dest / weights_src.name).relative_to(tmp).as_posix(),
                    "model_file": model_file.relative_to(tmp).as_posix() if model_file else None,
                }
            )
        fusion_entry = None
        if settings is not None:
            write_settings(tmp / SETTINGS, settings, {"inputs": [m.name for m in p.models]})
            fusion_entry = {"name": name, "settings": SETTINGS, "method": settings.method, "gate_mode": settings.gate_mode}
        files = {
            f.relative_to(tmp).as_posix(): sha256_of(f) for f in sorted(tmp.rglob("*")) if f.is_file()
        }
        for entry in (*members["models"], *members["gate"]):
            entry["sha256"] = files[entry["weights"]]
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": versions_for([m.adapter for _, m in entries]),
            "source": {
                "pipeline": str(p.source),
                "work_dir": str(p.work_dir),
                "fusion": name,
                "leaderboard": _row_summary(row, p.work_dir),
            },
            "classes": classes,
            "no_finding": {"id": NO_FINDING, "name": NO_FINDING_NAME},
            "preprocessing": {
                "size": int(size) if size else None,
                "resize": "longest side to size, aspect kept (cv2 INTER_AREA to shrink, INTER_LINEAR to enlarge)",
                "dicom": {
                    "modality_lut": True,
                    "voi_lut": True,
                    "monochrome1": "inverted",
                    "scale": "min-max to 0..255 (uint8)",
                    "frame": "first",
                },
                "raster": "PNG/JPEG read as 8-bit grey",
            },
            "models": members["models"],
            "gate": members["gate"][0] if members["gate"] else None,
            "fusion": fusion_entry,
            "files": files,
        }
        write_json(tmp / MANIFEST, manifest, indent=1)
        _replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("exported %s (%s) to %s", p.source, name or p.models[0].name, out)
    return out
