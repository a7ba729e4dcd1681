"""eval leaderboard: table against eval.metrics, ranking, outputs, plots, HTML, errors, CLI start-up.

A small VinBigData-like dataset with real PNG images is drawn in code; two
detectors are noisy copies of the truth at two noise levels (the less noisy
must rank first), a gated fusion adds "No finding" rows, a gate file scores
every image, and two training runs log their losses.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest

from core.classes import VINBIG_CLASSES, coco_categories
from core.coco import CocoDataset
from core.detections import Detections
from core.io import write_json, write_png
from core.predictions import write_gate, write_predictions
from eval.analysis import (
    detection_confusion,
    example_images,
    gate_confusion,
    gate_roc,
    read_loss_log,
)
from eval.leaderboard import build_leaderboard, expand_paths, leaderboard
from eval.metrics import NO_FINDING, coco_map, rsna_score, vinbig_map

REPO = Path(__file__).resolve().parents[1]
N_IMAGES, N_NORMAL, W, H = 12, 4, 160, 128
CLASSES = (0, 3, 7)
FRAMEWORKS = ("torch", "torchvision", "ultralytics", "detectron2", "mmdet", "mmcv", "mmengine", "tensorflow")


# --------------------------------------------------------------------------- the world


def _truth(rng: np.random.Generator) -> list[tuple[int, int, list[float]]]:
    """(image_id, category_id, [x, y, w, h]) on images 1..8; 9..12 are normal."""
    anns = []
    for i in range(1, N_IMAGES - N_NORMAL + 1):
        for _ in range(int(rng.integers(1, 4))):
            w, h = rng.uniform(18, 50, 2)
            x, y = rng.uniform(2, W - w - 2), rng.uniform(2, H - h - 2)
            anns.append((i, int(rng.choice(CLASSES)), [round(float(v), 1) for v in (x, y, w, h)]))
    return anns


def _noisy(truth, rng: np.random.Generator, sigma: float, n_fp: int, swap: float, good: bool) -> list[dict]:
    """A COCO results list: each true box jittered by ``sigma`` px, ``n_fp`` false positives per image."""
    rows = []
    for i, c, (x, y, w, h) in truth:
        dx, dy, dw, dh = rng.normal(0, sigma, 4)
        if rng.random() < swap:
            c = int(rng.choice([k for k in CLASSES if k != c]))
        score = rng.uniform(0.6, 0.95) if good else rng.uniform(0.05, 0.95)
        box = [max(0.0, x + dx), max(0.0, y + dy), max(2.0, w + dw), max(2.0, h + dh)]
        rows.append({"image_id": i, "category_id": c, "bbox": box, "score": float(score)})
    for i in range(1, N_IMAGES + 1):
        for _ in range(n_fp):
            w, h = rng.uniform(10, 40, 2)
            x, y = rng.uniform(0, W - w), rng.uniform(0, H - h)
            s = rng.uniform(0.05, 0.3) if good else rng.uniform(0.05, 0.9)
            rows.append(
                {"image_id": i, "category_id": int(rng.choice(CLASSES)), "bbox": [x, y, w, h], "score": s}
            )
    return rows


def _dets(rows: list[dict]) -> dict[int, Detections]:
    from core.detections import from_coco_results

    return from_coco_results(rows, range(1, N_IMAGES + 1))


def make_world(root: Path) -> dict:
    """Write the dataset, predictions, gate and runs under ``root``; returns their paths and raw data."""
    rng = np.random.default_rng(7)
    truth = _truth(rng)
    img_dir = root / "data" / "images"
    images = []
    for i in range(1, N_IMAGES + 1):
        yy, xx = np.mgrid[0:H, 0:W]
        pic = 60 + 40 * np.sin(xx / 17.0) * np.cos(yy / 23.0) + rng.normal(0, 8, (H, W))
        for j, c, (x, y, w, h) in truth:
            if j == i:
                pic[int(y) : int(y + h), int(x) : int(x + w)] += 60 + 20 * CLASSES.index(c)
        write_png(img_dir / f"{i:03d}.png", np.clip(pic, 0, 255).astype(np.uint8))
        images.append({"id": i, "file_name": f"images/{i:03d}.png", "width": W, "height": H})
    anns = [
        {"id": k + 1, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
        for k, (i, c, b) in enumerate(truth)
    ]
    ds = CocoDataset(images, anns, coco_categories(VINBIG_CLASSES), root=root / "data")
    ds.write(root / "data" / "val.json")

    preds = root / "preds"
    good = _noisy(truth, rng, 1.0, 1, 0.0, good=True)
    bad = _noisy(truth, rng, 9.0, 3, 0.3, good=False)
    abnormal = {i: (i <= N_IMAGES - N_NORMAL) for i in range(1, N_IMAGES + 1)}
    p_abn = {i: (0.8 if a else 0.2) + (0.1 if i % 5 == 0 else 0.0) for i, a in abnormal.items()}
    p_abn[3], p_abn[10] = 0.4, 0.6  # one miss each way: AUC < 1
    fused = good + [
        {"image_id": i, "category_id": NO_FINDING, "bbox": [0, 0, 1, 1], "score": round(1 - p, 6)}
        for i, p in p_abn.items()
    ]
    write_predictions(preds / "yolo_good.json", _dets(good), {"name": "yolo-good", "images_per_second": 42.5})
    write_predictions(preds / "frcnn_bad.json", _dets(bad), {"name": "frcnn-bad", "adapter": "detectron2"})
    write_predictions(
        preds / "wbf.json",
        _dets(fused),
        {"name": "wbf-gated", "method": "wbf", "gate": {"path": str(preds / "gate.json"), "mode": "append"}},
        "fusion",
    )
    write_gate(preds / "gate.json", p_abn, {"name": "resnet-gate", "adapter": "resnet_gate"})

    runs = root / "runs"
    for name, extra in (("yolo", ["loss_cls", "loss_box"]), ("frcnn", [])):
        (runs / name).mkdir(parents=True)
        lines = [",".join(["step", "epoch", "loss", *extra])]
        for s in range(20):
            comps = [f"{1.0 / (s + 2) + 0.1 * k:.4f}" for k in range(len(extra))]
            total = 2.0 / (s + 1) + 0.05 if extra else 1.5 * np.exp(-s / 6) + 0.3
            lines.append(",".join([str(s * 10), str(s // 5), f"{total:.4f}", *comps]))
        (runs / name / "loss.csv").write_text("\n".join(lines) + "\n")
        (runs / name / "config.yaml").write_text(
            f"adapter: {'ultralytics' if name == 'yolo' else 'detectron2'}\n"
        )
    return {
        "root": root,
        "dataset": root / "data" / "val.json",
        "preds": preds,
        "gate": preds / "gate.json",
        "runs": runs,
        "rows": {
            name: json.loads((preds / f"{stem}.json").read_text())
            for name, stem in (("yolo-good", "yolo_good"), ("frcnn-bad", "frcnn_bad"), ("wbf-gated", "wbf"))
        },
        "p_abnormal": p_abn,
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return make_world(tmp_path_factory.mktemp("board"))


@pytest.fixture(scope="module")
def gt(world) -> dict:
    return json.loads(world["dataset"].read_text())


@pytest.fixture(scope="module")
def cli_run(world, tmp_path_factory) -> dict:
    """``python -m eval leaderboard`` run once in a subprocess with every output, recording sys.modules."""
    out, html = tmp_path_factory.mktemp("out"), tmp_path_factory.mktemp("html")
    mods = out / "modules.json"
    argv = [
        "eval",
        "leaderboard",
        "--dataset",
        str(world["dataset"]),
        "--preds",
        str(world["preds"] / "*.json"),  # a quoted glob: expanded by us, sidecars skipped
        "--gate",
        str(world["gate"]),
        "--runs",
        str(world["runs"] / "*"),
        "--out",
        str(out / "res"),
        "--html",
        str(html),
        "--examples",
        "2",
    ]
    code = (
        "import json, runpy, sys\n"
        f"sys.argv = {argv!r}\n"
        "try:\n    runpy.run_module('eval', run_name='__main__', alter_sys=True)\n"
        "except SystemExit as e:\n    rc = e.code\nelse:\n    rc = 0\n"
        f"json.dump(sorted(sys.modules), open({str(mods)!r}, 'w'))\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return {
        "out": out / "res",
        "html": html / "index.html",
        "stdout": proc.stdout,
        "modules": json.loads(mods.read_text()),
    }


# --------------------------------------------------------------------------- the table


def _lesions(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["category_id"] != NO_FINDING]


def test_rows_match_metrics_computed_directly(world, gt):
    board = build_leaderboard(world["dataset"], [world["preds"] / "*.json"], metric="vinbig")
    assert [g.name for g in board.gates] == ["resnet-gate"] and not board.gates[0].applied
    assert {r.name for r in board.rows} == set(world["rows"])
    for r in board.rows:
        raw = json.loads(r.path.read_text())  # the file as written, independent of core.detections
        head = vinbig_map(gt, raw, iou_thr=0.4)
        cocor = coco_map(gt, _lesions(raw))
        assert r.score == pytest.approx(head.map, abs=1e-6)
        assert r.recall == pytest.approx(head.recall, abs=1e-6)
        assert r.map == pytest.approx(cocor.map, abs=1e-6)
        assert r.ap50 == pytest.approx(coco_map(gt, _lesions(raw), iou_thrs=(0.5,)).map, abs=1e-6)
        assert r.per_class_ap.keys() == head.per_class.keys() == {*CLASSES, NO_FINDING}
        for c, ap in head.per_class.items():
            assert r.per_class_ap[c] == pytest.approx(ap, abs=1e-6)
    rows = {r.name: r for r in board.rows}
    assert rows["yolo-good"].no_finding == "none" and rows["yolo-good"].per_class_ap[NO_FINDING] == 0.0
    assert rows["wbf-gated"].no_finding == "predicted" and rows["wbf-gated"].gated == "gate (append)"
    assert rows["wbf-gated"].kind == "fusion" and rows["yolo-good"].gated == ""
    assert rows["yolo-good"].images_per_second == 42.5 and rows["frcnn-bad"].images_per_second is None
    assert board.class_ids == [*CLASSES, NO_FINDING]


@pytest.mark.parametrize("metric", ["vinbig", "coco", "rsna"])
def test_sorted_best_first_and_marked(world, gt, metric):
    board = build_leaderboard(world["dataset"], sorted(world["preds"].glob("*.json")), metric=metric)
    names = [r.name for r in board.rows]
    scores = [r.score for r in board.rows]
    assert scores == sorted(scores, reverse=True)
    assert names.index("yolo-good") < names.index("frcnn-bad")  # less noise ranks higher
    if metric == "vinbig":  # "No finding" predicted by the fusion lifts it to the top
        assert names == ["wbf-gated", "yolo-good", "frcnn-bad"]
        assert [r.best for r in board.rows] == [True, False, False]
        assert [r.rank for r in board.rows] == [1, 2, 3]
    else:  # the fusion's lesion boxes are yolo-good's: they tie, both marked best
        assert set(names[:2]) == {"wbf-gated", "yolo-good"} and scores[0] == scores[1]
        assert [r.best for r in board.rows] == [True, True, False]
        assert [r.rank for r in board.rows] == [1, 1, 3]
    if metric == "rsna":
        raw = world["rows"]["frcnn-bad"]
        assert board.rows[names.index("frcnn-bad")].score == pytest.approx(rsna_score(gt, _lesions(raw)))
    text = board.to_text().splitlines()
    marked = [line for line in text[2:] if line.startswith("*")]
    assert len(marked) == sum(r.best for r in board.rows) and board.rows[0].name in text[2]
    assert text[-1].startswith(" ") and "frcnn-bad" in text[-1]


def test_gate_supplies_no_finding_to_rows_without_class_14(world, gt):
    board = build_leaderboard(world["dataset"], [world["preds"] / "*.json"], gate=world["gate"])
    assert [g.name for g in board.gates] == ["resnet-gate"] and board.gates[0].applied  # once, not a row
    rows = {r.name: r for r in board.rows}
    p_normal = {i: 1 - p for i, p in world["p_abnormal"].items()}
    for name in ("yolo-good", "frcnn-bad"):
        rows14 = [{"image_id": i, "category_id": NO_FINDING, "bbox": [0, 0, 1, 1], "score": p} for i, p in p_normal.items()]
        expected = vinbig_map(gt, world["rows"][name] + rows14, iou_thr=0.4).map
        assert rows[name].score == pytest.approx(expected, abs=1e-6)
        assert rows[name].no_finding == "gate resnet-gate"
    assert rows["wbf-gated"].no_finding == "predicted"  # its own class-14 rows are kept
    assert rows["wbf-gated"].score == pytest.approx(vinbig_map(gt, world["rows"]["wbf-gated"]).map, abs=1e-6)
    # same boxes, same No-finding scores: the gated detector and the fusion tie
    assert rows["yolo-good"].score == pytest.approx(rows["wbf-gated"].score, abs=1e-6)


# --------------------------------------------------------------------------- outputs


def _is_png(path: Path, min_side: int = 100) -> np.ndarray:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None, f"{path} does not decode"
    assert min(img.shape[:2]) >= min_side, f"{path} is {img.shape}"
    packed = (img[..., 0].astype(np.int32) << 16) | (img[..., 1].astype(np.int32) << 8) | img[..., 2]
    assert img.std() > 10 and len(np.unique(packed)) > 20, f"{path} is nearly blank"
    return img


def test_cli_writes_tables_plots_and_report(world, cli_run):
    out = cli_run["out"]
    stdout = cli_run["stdout"]
    assert "wbf-gated" in stdout and "yolo-good" in stdout and "gate resnet-gate: AUC" in stdout
    data = json.loads((out / "leaderboard.json").read_text())
    assert data["metric"] == "vinbig" and [r["rank"] for r in data["rows"]] == [1, 1, 3]
    assert [r["best"] for r in data["rows"]] == [True, True, False]  # the gated detector ties the fusion
    assert data["rows"][2]["name"] == "frcnn-bad"
    assert data["gates"][0]["name"] == "resnet-gate" and 0.5 < data["gates"][0]["auc"] < 1.0
    assert data["rows"][0]["per_class_ap"].keys() == {"0", "3", "7", "14"}

    with open(out / "leaderboard.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["name"] for r in table] == [r["name"] for r in data["rows"]]
    assert [r["best"] for r in table] == ["1", "1", "0"]
    for r, j in zip(table, data["rows"], strict=True):
        assert float(r["vinbig"]) == pytest.approx(j["score"])
        assert float(r["map_50_95"]) == pytest.approx(j["map_50_95"])
        assert float(r["AP 14 No finding"]) == pytest.approx(j["per_class_ap"]["14"])
    assert table[[r["name"] for r in table].index("yolo-good")]["images_per_second"] == "42.5"

    md = (out / "leaderboard.md").read_text()
    assert md.count("(best)") == 2 and "| 14 No finding |" in md and "## Gates" in md
    body = [line for line in md.splitlines() if line.startswith("| ") and "frcnn-bad" in line]
    assert body and "**" not in body[0]

    keys = {p.stem for p in (out / "plots").glob("*.png")}
    slugs = ("wbf-gated", "yolo-good", "frcnn-bad")
    expected = {
        *(f"ap_{s}" for s in slugs),
        *(f"pr_{s}" for s in slugs),
        *(f"confusion_{s}" for s in slugs),
        "pr_all",
        "gate_roc",
        "gate_confusion_resnet-gate",
        "loss",
        "example_1",  # the first abnormal image with most boxes ...
        "example_9",  # ... and the first normal one
    }
    ds = CocoDataset.load(world["dataset"])
    first = example_images(ds, 2)[0]
    expected = (expected - {"example_1"}) | {f"example_{first}"}
    assert keys == expected
    for p in (out / "plots").glob("*.png"):
        _is_png(p)
    assert not list(out.rglob("*.part"))  # atomic writes leave nothing behind


def test_cli_imports_no_framework(cli_run):
    assert not [m for m in cli_run["modules"] if m.split(".")[0] in FRAMEWORKS]


def test_cli_starts_fast_without_plotting_libraries():
    code = (
        "import runpy, sys, time\n"
        "t = time.perf_counter()\n"
        "sys.argv = ['eval', '--help']\n"
        "try:\n    runpy.run_module('eval', run_name='__main__', alter_sys=True)\n"
        "except SystemExit:\n    pass\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{(*FRAMEWORKS, 'matplotlib', 'cv2', 'pandas')!r})\n"
        "print('MODULES', bad, 'SECONDS', time.perf_counter() - t)\n"
    )
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr
    assert "leaderboard" in proc.stdout
    line = proc.stdout.strip().splitlines()[-1]
    assert line.startswith("MODULES [] SECONDS"), line
    assert wall < 5.0, f"python -m eval --help took {wall:.1f} s"


def test_html_is_self_contained(cli_run):
    text = cli_run["html"].read_text(encoding="utf-8")

    class Refs(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tags, self.refs, self.imgs = set(), [], 0

        def handle_starttag(self, tag, attrs):
            self.tags.add(tag)
            self.imgs += tag == "img"
            for k, v in attrs:
                if k in ("src", "href", "srcset", "data", "poster", "action", "background", "xlink:href"):
                    self.refs.append((tag, k, v or ""))

    p = Refs()
    p.feed(text)
    assert not p.tags & {"script", "link", "iframe", "object", "embed", "base"}
    for tag, k, v in p.refs:
        ok = v.startswith("data:image/png;base64,") if k == "src" else v.startswith("#")
        assert ok, f"<{tag} {k}={v[:60]!r}> is an external reference"
    lowered = text.lower()
    for needle in ("http:", "https:", "url(", "@import", "@font-face", 'src="//', "file:"):
        assert needle not in lowered, needle
    assert p.imgs == len(list((cli_run["out"] / "plots").glob("*.png")))
    assert text.count("<tr") == 1 + 3 + 1 + 4 + 1 + 1  # leaderboard, per-class (4 classes), gates


# --------------------------------------------------------------------------- errors


def _copy_with(world, tmp_path: Path, rows: list[dict], name: str = "broken") -> Path:
    path = tmp_path / f"{name}.json"
    write_json(path, rows)
    return path


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (
            lambda r: r.append({"image_id": 999, "category_id": 0, "bbox": [1, 1, 5, 5], "score": 0.5}),
            r"\[999\]",
        ),
        (
            lambda r: r.append({"image_id": 1, "category_id": 42, "bbox": [1, 1, 5, 5], "score": 0.5}),
            r"\[42\]",
        ),
        (lambda r: r.append({"image_id": 1, "category_id": 0, "bbox": [1, 1, 5], "score": 0.5}), "entry"),
    ],
    ids=["unknown-image", "unknown-category", "bad-box"],
)
def test_mismatched_results_name_the_file_and_ids(world, tmp_path, mutate, match):
    rows = json.loads((world["preds"] / "yolo_good.json").read_text())
    mutate(rows)
    path = _copy_with(world, tmp_path, rows)
    with pytest.raises(ValueError, match=match) as e:
        build_leaderboard(world["dataset"], [world["preds"] / "yolo_good.json", path])
    assert str(path) in str(e.value)


def test_mismatched_gate_and_cli_exit_code(world, tmp_path, capsys):
    gate = tmp_path / "gate2.json"
    write_gate(gate, {1: 0.9, 777: 0.2}, {"name": "g2"})
    with pytest.raises(ValueError, match="777") as e:
        build_leaderboard(world["dataset"], [world["preds"] / "yolo_good.json"], gate=gate)
    assert str(gate) in str(e.value)
    from eval.__main__ import main

    rc = main(
        [
            "leaderboard",
            "--dataset",
            str(world["dataset"]),
            "--preds",
            str(world["preds"] / "yolo_good.json"),
            "--gate",
            str(gate),
        ]
    )
    assert rc == 2 and "777" in capsys.readouterr().err


def test_input_errors(world, tmp_path):
    with pytest.raises(FileNotFoundError, match="matches no file"):
        expand_paths([str(tmp_path / "*.json")])
    with pytest.raises(ValueError, match="only gate files"):
        build_leaderboard(world["dataset"], [world["gate"]])
    dup = tmp_path / "again.json"
    write_predictions(dup, _dets(world["rows"]["frcnn-bad"]), {"name": "yolo-good"})
    with pytest.raises(ValueError, match="both named 'yolo-good'"):
        build_leaderboard(world["dataset"], [world["preds"] / "yolo_good.json", dup])
    stray = tmp_path / "scores.json"  # a gate file without its sidecar, passed as predictions
    write_json(stray, [{"image_id": 1, "p_abnormal": 0.5}])
    with pytest.raises(ValueError, match="looks like a gate file"):
        build_leaderboard(world["dataset"], [stray])
    with pytest.raises(ValueError, match="unknown metric"):
        build_leaderboard(world["dataset"], [dup], metric="f1")
    with pytest.raises(FileNotFoundError, match="no such run directory"):
        leaderboard(world["dataset"], [dup], runs=[tmp_path / "nope"])
    assert expand_paths([world["preds"] / "*.json"]) == sorted(
        p for p in world["preds"].glob("*.json") if not p.name.endswith(".meta.json")
    )


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("step,loss,epoch\n1,2,3\n", "header must start with step,epoch,loss"),
        ("step,epoch,loss\n", "no rows"),
        ("step,epoch,loss,cls\n1,0,0.5,0.1\n2,0,abc,0.1\n", r"line 3: 'loss' is not a number: 'abc'"),
        ("step,epoch,loss\n1,0\n", "line 2: 2 fields"),
        ("step,epoch,loss\n1,,0.5\n", "line 2: 'epoch' is empty"),
    ],
)
def test_loss_log_errors(tmp_path, text, match):
    (tmp_path / "loss.csv").write_text(text)
    with pytest.raises(ValueError, match=match) as e:
        read_loss_log(tmp_path)
    assert str(tmp_path / "loss.csv") in str(e.value)


def test_loss_log_reads_components(world):
    log = read_loss_log(world["runs"] / "yolo")
    assert log.label == "yolo (ultralytics)" and list(log.components) == ["loss_cls", "loss_box"]
    assert log.step.shape == log.loss.shape == (20,) and log.step[-1] == 190 and log.epoch[-1] == 3
    assert log.loss[0] == pytest.approx(2.05)


# --------------------------------------------------------------------------- analysis


def test_gate_roc_auc_matches_pairwise_count(world):
    ds = CocoDataset.load(world["dataset"])
    p = world["p_abnormal"]
    roc = gate_roc(ds, p)
    pos = [p[i] for i in ds.image_ids if not ds.is_normal(i)]
    neg = [p[i] for i in ds.image_ids if ds.is_normal(i)]
    pairs = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg) / (len(pos) * len(neg))
    assert roc.auc == pytest.approx(pairs) and 0.5 < roc.auc < 1
    assert (roc.n_abnormal, roc.n_normal) == (8, 4)
    assert roc.fpr[0] == roc.tpr[0] == 0 and roc.fpr[-1] == roc.tpr[-1] == 1
    assert np.all(np.diff(roc.fpr) >= 0) and np.all(np.diff(roc.tpr) >= 0)
    cm = gate_confusion(ds, p)
    assert cm.labels == ("normal", "abnormal") and cm.counts.tolist() == [[3, 1], [1, 7]]
    assert math.isnan(gate_roc(ds.subset([1, 2]), {1: 0.3, 2: 0.9}).auc)  # one class only


def test_detection_confusion_counts():
    images = [{"id": 1, "file_name": "a.png", "width": 100, "height": 100}]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 0, "bbox": [0, 0, 20, 20]},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [50, 50, 20, 20]},
        {"id": 3, "image_id": 1, "category_id": 1, "bbox": [10, 60, 10, 10]},
    ]
    ds = CocoDataset(images, anns, [{"id": 0, "name": "a"}, {"id": 1, "name": "b"}])
    dets = Detections(
        [[0, 0, 20, 21], [50, 50, 70, 70], [80, 0, 95, 15], [0, 0, 20, 20], [1, 1, 2, 2]],
        [0.9, 0.8, 0.7, 0.5, 0.1],
        [0, 0, 1, 0, 1],
    )
    cm = detection_confusion(ds, {1: dets}, iou_thr=0.5, score_thr=0.2)
    assert cm.labels == ("a", "b", "background")
    # a→a; b predicted as a; a stray b and a duplicate a are background; one b is missed
    assert cm.counts.tolist() == [[1, 0, 0], [1, 0, 1], [1, 1, 0]]


def test_rank_rows_ties_and_nan(world):
    from dataclasses import replace

    from eval.leaderboard import rank_rows

    board = build_leaderboard(world["dataset"], [world["preds"] / "yolo_good.json"])
    base = board.rows[0]
    rows = [replace(base, name=n, score=s) for n, s in (("d", math.nan), ("c", 0.5), ("a", 0.7), ("b", 0.5))]
    ranked = rank_rows(rows)
    assert [(r.name, r.rank, r.best) for r in ranked] == [
        ("a", 1, True),
        ("b", 2, False),
        ("c", 2, False),
        ("d", 4, False),
    ]
    assert not any(r.best for r in rank_rows([replace(base, score=math.nan)]))


@pytest.mark.parametrize(
    ("kind", "gate", "shown"),
    [
        ("detector", None, ""),
        ("fusion", None, "no"),
        ("fusion", "preds/gate.json", "gate"),
        (
            "fusion",
            {"path": "g/resnet.json", "mode": "rescale", "low": None, "high": None},
            "resnet (rescale)",
        ),
        (
            "fusion",
            {"path": "g/resnet.json", "mode": "filter", "low": 0.1, "high": 0.9},
            "resnet (filter 0.1..0.9)",
        ),
    ],
)
def test_gated_column_reads_the_fusion_sidecar(kind, gate, shown):
    from eval.inputs import gated_label

    assert gated_label({"gate": gate}, kind) == shown


def test_cli_prints_table_without_writing(world, capsys, tmp_path, monkeypatch):
    from eval.__main__ import main

    monkeypatch.chdir(tmp_path)
    argv = ["leaderboard", "--dataset", str(world["dataset"]), "--preds", str(world["preds"] / "*.json")]
    assert main([*argv, "--metric", "coco"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["rank", "name", "kind", "mAP@[.5:.95]"] and out.isascii()
    assert "frcnn-bad" in lines[4] and "gate resnet-gate: AUC" in out and "wrote" not in out
    assert not list(tmp_path.iterdir())


def test_missing_example_image_is_named(world, tmp_path):
    import shutil

    from eval.report import make_plots

    data = tmp_path / "data"
    shutil.copytree(world["dataset"].parent, data)
    (data / "images" / "009.png").unlink()
    board = build_leaderboard(data / "val.json", [world["preds"] / "yolo_good.json"])
    with pytest.raises(FileNotFoundError, match=r"example image 9: .*009.png.*--examples 0"):
        make_plots(board, n_examples=2)


# --------------------------------------------------------------------------- classifiers


def test_classifier_rows_auroc_per_class_equal_scikit_learn(world, tmp_path):
    """A multilabel classifier file among the predictions: per-class AUROC and macro AUROC equal
    scikit-learn's to 1e-9, in the tables, JSON, classifiers.csv, ROC plot and Grad-CAM section."""
    from sklearn.metrics import roc_auc_score

    from core.class_probs import ClassProbs, truth_matrix, write_class_probs
    from eval.report import make_plots, render_html

    ds = CocoDataset.load(world["dataset"])
    classes, cats = ("Aortic enlargement", "Cardiomegaly", "Lung Opacity", "No finding"), (0, 3, 7, 14)
    ids = ds.image_ids
    truth = truth_matrix(ds, ids, "multilabel", classes, cats)
    rng = np.random.default_rng(5)
    probs = np.clip(0.35 * truth + rng.uniform(0, 0.65, truth.shape), 0, 1)
    preds = tmp_path / "preds"
    write_class_probs(preds / "ml.json", ClassProbs("multilabel", classes, cats, np.array(ids), probs), {"name": "ml"})
    cam_png = preds / "ml_cam" / "cam_1_cardiomegaly.png"
    write_png(cam_png, np.full((20, 30, 3), 128, np.uint8))
    write_json(preds / "ml_cam" / "cams.json", [{"image_id": 1, "class": "Cardiomegaly", "p": 0.7, "file": cam_png.name}])
    board = build_leaderboard(world["dataset"], [world["preds"] / "yolo_good.json", preds / "ml.json"], bootstrap=0)
    (g,) = board.classifiers
    c = g.classifier
    assert c.task == "multilabel" and c.classes == classes and c.images == len(ids)
    for j, name in enumerate(classes):
        assert c.roc[name].n_abnormal == int(truth[:, j].sum())
        assert abs(c.roc[name].auc - roc_auc_score(truth[:, j], probs[:, j])) < 1e-9, name
    assert abs(c.macro_auc - roc_auc_score(truth, probs, average="macro")) < 1e-9
    assert [e["class"] for e in g.cams] == ["Cardiomegaly"]

    paths = board.write(tmp_path / "out")
    assert paths[-1].name == "classifiers.csv"
    with open(paths[-1], newline="") as f:
        lines = list(csv.DictReader(f))
    assert [r["class"] for r in lines] == [*classes, "macro"]
    assert float(lines[-1]["auroc"]) == pytest.approx(c.macro_auc, abs=1e-12)
    data = json.loads((tmp_path / "out" / "leaderboard.json").read_text())
    per_class = data["gates"][-1]["classifier"]["per_class"]
    assert per_class["Cardiomegaly"]["auc"] == pytest.approx(c.roc["Cardiomegaly"].auc)
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "## Classifiers" in md and "### ml: AUROC per class" in md and "| Lung Opacity |" in md
    plots = {p.key: p for p in make_plots(board, n_examples=0)}
    assert "classifier_roc_ml" in plots and [k for k in plots if k.startswith("cam_")] == ["cam_ml_1_Cardiomegaly"]
    assert "classifier_confusion_ml" not in plots  # multilabel: no confusion matrix
    page = render_html(board, list(plots.values()))
    assert 'id="classifiers"' in page and "Grad-CAM of Cardiomegaly on image 1" in page


def test_multiclass_confusion_and_truth_that_does_not_fit(world, tmp_path):
    from sklearn.metrics import confusion_matrix, roc_auc_score

    from core.class_probs import ClassProbs, write_class_probs
    from eval.analysis import classifier_analysis

    base = CocoDataset.load(world["dataset"])
    classes = ("cat", "dog", "Normal")
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 3, len(base.images))
    images = [{**im, "labels": [classes[t]]} for im, t in zip(base.images, truth, strict=True)]
    ds = CocoDataset(images, [], base.categories, root=base.root)
    logits = rng.normal(0, 1, (len(images), 3)) + 1.5 * np.eye(3)[truth]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    cp = ClassProbs("multiclass", classes, (None, None, None), np.array(ds.image_ids), probs)
    c = classifier_analysis(ds, cp)
    np.testing.assert_array_equal(c.confusion.counts, confusion_matrix(truth, probs.argmax(axis=1), labels=[0, 1, 2]))
    for j, name in enumerate(classes):
        assert abs(c.roc[name].auc - roc_auc_score(truth == j, probs[:, j])) < 1e-9
    assert cp.p_abnormal()[ds.image_ids[0]] == pytest.approx(1 - probs[0, 2])  # 1 - P(Normal)
    # the world's images carry no labels and these classes are no categories: the error names both
    path = write_class_probs(tmp_path / "mc.json", cp, {})
    with pytest.raises(ValueError, match=r"mc\.json: .*class 'cat' is no category of the dataset and image 1 has no"):
        build_leaderboard(world["dataset"], [world["preds"] / "yolo_good.json", path], bootstrap=0)


def test_class_probs_file_reads_old_gates_and_names_bad_entries(tmp_path):
    from core.class_probs import ClassProbs, read_class_probs, write_class_probs
    from core.predictions import read_gate

    write_gate(tmp_path / "old.json", {2: 0.25, 1: 0.75}, {"name": "old"})
    old = read_class_probs(tmp_path / "old.json")
    assert old.task == "binary" and old.classes == ("abnormal",) and old.category_ids == (None,)
    assert old.image_ids.tolist() == [1, 2] and old.p_abnormal() == {1: 0.75, 2: 0.25}
    cp = ClassProbs("multilabel", ("A", "B"), (0, 1), np.array([5, 3]), np.array([[0.1, 0.9], [0.4, 0.2]]))
    assert cp.image_ids.tolist() == [3, 5] and cp.p_abnormal() == {3: 0.4, 5: 0.9}  # no normal class: max
    assert cp.prob_of(1) == {3: 0.2, 5: 0.9} and cp.column("A").tolist() == [0.4, 0.1]
    path = write_class_probs(tmp_path / "ml.json", cp, {"name": "ml"})
    assert read_gate(path) == {3: 0.4, 5: 0.9}
    back = read_class_probs(path)
    assert back.classes == cp.classes and back.category_ids == (0, 1)
    np.testing.assert_array_equal(back.probs, cp.probs)
    for rows, msg in (
        ([{"image_id": 3, "probs": [0.1]}], r"entry 0 \(image 3\) has 1 probabilities for 2 classes"),
        ([{"image_id": 3, "probs": [0.1, 1.5]}], r"entry 0 \(image 3\) has P\(B\) = 1.5, not within \[0, 1\]"),
        ([{"image_id": 3, "probs": [0.1, 0.5]}, {"image_id": 3, "probs": [0.1, 0.5]}], "image 3 appears twice"),
        ([{"id": 3}], r"entry 0 is not \{image_id, p_abnormal, probs\}"),
    ):
        write_json(path, rows)
        with pytest.raises(ValueError, match=f"{path.name}: {msg}"):
            read_class_probs(path)
    with pytest.raises(ValueError, match="multiclass probabilities sum to 0.500000"):
        ClassProbs("multiclass", ("a", "b"), (None, None), np.array([1]), np.array([[0.25, 0.25]]))
