"""Every command of the README runs as written.

The ```bash blocks of ``README.md`` (and ``configs/README.md``) are split into commands (a line
ending in ``\\`` continues on the next; comment lines and blank lines separate nothing else) and run
in order, each in a fresh ``bash`` with ``python`` this interpreter, in one folder prepared as the
README assumes a reader's folder to be:

- ``work/demo``: what ``make demo`` leaves, made by ``python -m pipeline run configs/pipelines/demo.yaml``
  with the demo's own data settings (the same synthetic images, ids and folds), two of its four
  detectors, the gate and two fusion methods, without its unlabelled test set;
- the raw files the conversion examples name, small: ``train.csv`` + ``train/``,
  ``png_1024/`` + ``train_meta.csv``, ``test/`` + ``sample_submission.csv`` + ``test_meta.csv``,
  the RSNA CSVs and ``stage_2_train_images/``, ``stage_2_test_images/`` +
  ``stage_2_sample_submission.csv``, ``new_studies/`` (two DICOMs), NIH's real CSVs cut to twelve
  images (six with boxes) with noise PNGs in ``images/``, and a class-per-folder tree;
- ``configs/``: a copy of the repository's, every model config with its schedule and image size cut
  to a few CPU seconds (the commands are the README's; only the amount of training differs).

A command the tests cannot run (it needs a GPU, the network, Docker, real data or is ``make`` itself)
is marked in the README itself, visibly, by a comment line ``# not run by the tests: REASON``: it and
the commands after it up to the next blank line are not run. The test fails on the first command
that exits non-zero, naming it. New README sections are picked up without changing this file.
"""

from __future__ import annotations

import json
import lzma
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest_paths import REPO

pytestmark = pytest.mark.slow

MARKER = "# not run by the tests:"
DOCS = (REPO / "README.md", REPO / "configs" / "README.md")
#: the most commands the README may leave to its readers (a GPU, Docker, Kaggle, make, real data)
MAX_NOT_RUN = 18


@dataclass(frozen=True)
class Command:
    """One command of a README ``bash`` block: its text (continuations joined), where, and why not run."""

    text: str
    where: str
    not_run: str | None = None


def commands(markdown: str, name: str = "README.md") -> list[Command]:
    """The commands of ``markdown``'s ```bash blocks, in order.

    A ``# not run by the tests: REASON`` line marks the commands after it, up to the next blank
    line or the end of the block.
    """
    out: list[Command] = []
    for m in re.finditer(r"^```bash[ \t]*\n(.*?)^```", markdown, re.S | re.M):
        first = markdown.count("\n", 0, m.start(1)) + 1
        reason: str | None = None
        pending: list[str] = []
        start = 0
        for k, line in enumerate(m.group(1).splitlines()):
            stripped = line.strip()
            if pending:
                pending.append(stripped)
                if not stripped.endswith("\\"):
                    out.append(Command(_join(pending), f"{name}:{start}", reason))
                    pending = []
                continue
            if not stripped:
                reason = None
            elif stripped.startswith(MARKER):
                reason = stripped[len(MARKER) :].strip() or "(no reason given)"
            elif stripped.startswith("#"):
                continue
            else:
                start = first + k
                pending = [stripped]
                if not stripped.endswith("\\"):
                    out.append(Command(_join(pending), f"{name}:{start}", reason))
                    pending = []
        assert not pending, f"{name}:{start}: a command ends in a backslash at the end of its block"
    return out


def _join(lines: list[str]) -> str:
    return " ".join(ln[:-1].strip() if ln.endswith("\\") else ln for ln in lines)


def all_commands() -> list[Command]:
    return [c for doc in DOCS if doc.is_file() for c in commands(doc.read_text(encoding="utf-8"), doc.name)]


# --------------------------------------------------------------------------- the prepared folder


def _shrink(cfg: dict) -> dict:
    """A model config with a few CPU seconds of training: small images, one epoch or two iterations."""
    gate = cfg.get("adapter") == "resnet_gate"
    cfg["image_size"] = 32 if gate else 64
    s = cfg.setdefault("schedule", {})
    if "iterations" in s:
        s["iterations"] = 2
    else:
        s["epochs"] = 1
    s.update(batch_size=16 if gate else 8 if "epochs" in s else 2, workers=0)  # few iterations
    if "warmup_iters" in s:
        s["warmup_iters"] = 1
    cfg.setdefault("predict", {})["batch_size"] = 2
    cfg["device"] = "cpu"
    if gate:
        cfg.setdefault("options", {})["amp"] = False
    return cfg


def _configs(tree: Path) -> None:
    shutil.copytree(REPO / "configs", tree / "configs")
    for path in [*(tree / "configs").glob("*.yaml"), *(tree / "configs" / "cpu").glob("*.yaml")]:
        cfg = yaml.safe_load(path.read_text())
        if isinstance(cfg, dict) and "adapter" in cfg:
            path.write_text(yaml.safe_dump(_shrink(cfg), sort_keys=False))
    demo = tree / "configs" / "pipelines" / "demo.yaml"
    cfg = yaml.safe_load(demo.read_text())
    keep = ("yolov8n", "faster_rcnn_d2")  # the two the README's demo commands name, and the gate
    # absolute: the pipeline reads a relative model config from the repository, not from this folder
    cfg["models"] = [str(tree / m) for m in cfg["models"] if Path(str(m)).stem in keep]
    cfg["gate"] = str(tree / cfg["gate"])
    assert len(cfg["models"]) == 2, cfg["models"]
    cfg.pop("test", None)  # the unlabelled test set: three processes more, and no README command reads it
    cfg["ensemble"]["methods"] = ["wbf", "nms"]
    cfg["leaderboard"]["examples"] = 1
    demo.write_text(yaml.safe_dump(cfg, sort_keys=False))


def _run(argv: list[str], cwd: Path, env: dict[str, str]) -> None:
    r = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"{' '.join(argv)}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"


def _raw_files(tree: Path, env: dict[str, str]) -> None:
    """The raw files the README's conversion examples name, synthetic and small."""
    from convert.dicom import read_dicom_header
    from convert.synth import make_rsna, make_vinbig

    make_vinbig(tree, n_images=12, seed=2, sizes=(96, 128))  # train.csv, train/
    (tree / "synth_truth.json").unlink(missing_ok=True)
    tmp = tree / "_scratch"
    _run([sys.executable, "-m", "convert", "vinbig", "--csv", "train.csv", "--images", "train", "--out",
          str(tmp / "coco"), "--size", "96", "--folds", "2", "-q"], tree, env)  # fmt: skip
    images = json.loads((tmp / "coco" / "all.json").read_text())["images"]
    (tree / "png_1024").mkdir()
    rows = ["image_id,dim0,dim1"]
    for im in images:
        shutil.copy(tmp / "coco" / im["file_name"], tree / "png_1024" / f"{im['source_id']}.png")
        rows.append(f"{im['source_id']},{im['orig_height']},{im['orig_width']}")
    (tree / "train_meta.csv").write_text("\n".join(rows) + "\n")
    make_vinbig(tmp / "test", n_images=3, seed=5, sizes=(96, 128))
    shutil.move(tmp / "test" / "train", tree / "test")
    ids = sorted(p.stem for p in (tree / "test").glob("*.dicom"))
    (tree / "sample_submission.csv").write_text(
        "image_id,PredictionString\n" + "".join(f"{i},14 1 0 0 1 1\n" for i in ids)
    )
    sizes = {p.stem: read_dicom_header(p) for p in (tree / "test").glob("*.dicom")}
    (tree / "test_meta.csv").write_text(
        "image_id,dim0,dim1\n" + "".join(f"{i},{sizes[i]['rows']},{sizes[i]['columns']}\n" for i in ids)
    )
    (tree / "new_studies").mkdir()
    for p in sorted((tree / "test").glob("*.dicom"))[:2]:
        shutil.copy(p, tree / "new_studies" / p.name)
    make_rsna(tmp / "rsna", n_images=4, seed=1, size=96, positive_fraction=0.5)
    for name in ("stage_2_train_labels.csv", "stage_2_detailed_class_info.csv", "stage_2_train_images"):
        shutil.move(tmp / "rsna" / name, tree / name)
    make_rsna(tmp / "rsna_test", n_images=2, seed=3, size=96)
    shutil.move(tmp / "rsna_test" / "stage_2_train_images", tree / "stage_2_test_images")
    pids = sorted(p.stem for p in (tree / "stage_2_test_images").glob("*.dcm"))
    (tree / "stage_2_sample_submission.csv").write_text(
        "patientId,PredictionString\n" + "".join(f"{i},0.5 0 0 100 100\n" for i in pids)
    )
    _nih_files(tree)
    _class_folders(tree)
    shutil.rmtree(tmp)


def _nih_files(tree: Path, n_boxed: int = 6, n_plain: int = 6) -> None:
    """NIH ChestX-ray14's real CSVs cut to a few images (some with boxes), and a small PNG for each."""
    import pandas as pd
    from PIL import Image

    from tests.conftest_paths import REAL

    entry = pd.read_csv(REAL / "nih_chestxray14" / "Data_Entry_2017_v2020.csv.xz")
    bbox = pd.read_csv(REAL / "nih_chestxray14" / "BBox_List_2017.csv.xz")
    boxed = entry[entry["Image Index"].isin(bbox["Image Index"])].drop_duplicates("Patient ID").head(n_boxed)
    plain = entry[~entry["Patient ID"].isin(boxed["Patient ID"])].drop_duplicates("Patient ID").head(n_plain)
    rows = pd.concat([boxed, plain])
    rows.to_csv(tree / "Data_Entry_2017_v2020.csv", index=False)
    lines = lzma.decompress((REAL / "nih_chestxray14" / "BBox_List_2017.csv.xz").read_bytes()).decode().splitlines()
    keep = set(boxed["Image Index"])
    (tree / "BBox_List_2017.csv").write_text(
        "\n".join([lines[0], *[ln for ln in lines[1:] if ln.split(",", 1)[0] in keep]]) + "\n"
    )
    (tree / "images").mkdir()
    rng = np.random.default_rng(0)
    for name in rows["Image Index"]:
        Image.fromarray(rng.integers(0, 256, (128, 128), dtype=np.uint8)).save(tree / "images" / name)


def _class_folders(tree: Path, per_class: int = 6) -> None:
    """A tiny COVID-19 radiography layout: one folder per class, PNGs in its ``images/``."""
    from PIL import Image

    rng = np.random.default_rng(1)
    root = tree / "COVID-19_Radiography_Dataset"
    for cls in ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"):
        (root / cls / "images").mkdir(parents=True)
        for j in range(per_class):
            pixels = rng.integers(0, 256, (96, 96), dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / "images" / f"{cls.replace(' ', '_')}-{j + 1}.png")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.update(YOLO_OFFLINE="1", MPLBACKEND="Agg")
    return env


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A reader's folder after ``make demo``, with the raw files the README's examples name."""
    tree = tmp_path_factory.mktemp("readme")
    env = _env()
    _configs(tree)
    _raw_files(tree, env)
    _run([sys.executable, "-m", "pipeline", "run", "configs/pipelines/demo.yaml", "-q"], tree, env)
    return tree


# --------------------------------------------------------------------------- the tests


def test_the_parser_joins_continuations_and_honours_the_marker():
    text = (
        "intro\n```bash\n# a comment\npython -m a --x 1 \\\n    --y 2   # trailing\n\n"
        f"{MARKER} needs a GPU\nrun-on-gpu 1\nrun-on-gpu 2\n\npython -m b\n```\n"
        "```yaml\nkey: value\n```\n```bash\necho done\n```\n"
    )
    got = commands(text, "X.md")
    assert [c.text for c in got] == [
        "python -m a --x 1 --y 2   # trailing", "run-on-gpu 1", "run-on-gpu 2", "python -m b", "echo done"
    ]  # fmt: skip
    assert [c.not_run for c in got] == [None, "needs a GPU", "needs a GPU", None, None]
    assert got[0].where == "X.md:4" and got[-1].where == "X.md:17"


def test_the_commands_left_to_the_reader_are_few_and_say_why():
    cmds = all_commands()
    skipped = [c for c in cmds if c.not_run]
    assert len(cmds) >= 30 and len(cmds) - len(skipped) >= 25  # the README's commands are tested
    assert len(skipped) <= MAX_NOT_RUN, [c.text for c in skipped]
    assert all(c.not_run != "(no reason given)" for c in skipped), [c.where for c in skipped]


def test_every_readme_command_runs_as_written(tree: Path):
    env = _env()
    ran = 0
    for c in all_commands():
        if c.not_run:
            continue
        r = subprocess.run(["bash", "-c", c.text], cwd=tree, env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, (
            f"{c.where}: exit {r.returncode}: {c.text}\n--- stdout\n{r.stdout[-2000:]}\n--- stderr\n{r.stderr[-4000:]}"
        )
        ran += 1
    assert ran >= 25
