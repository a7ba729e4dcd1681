"""``python -m ensemble run`` and ``sweep`` on a small dataset with noisy copies of the truth as models."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from core.classes import RSNA_CLASSES, VINBIG_CLASSES, coco_categories
from core.coco import CocoDataset
from core.detections import Detections
from core.io import read_json, write_json
from core.predictions import (
    dataset_identity,
    meta_path,
    read_meta,
    read_predictions,
    write_gate,
    write_predictions,
)
from ensemble.__main__ import main
from ensemble.inputs import read_inputs
from ensemble.run import fuse_and_gate
from eval.metrics import vinbig_map
from fusion.engine import fuse_many
from fusion.gate import NO_FINDING, apply_gate
from fusion.settings import FusionSettings
from tests.conftest_paths import REPO
from tests.test_fusion import canonical, reference

N_IMAGES = 30


def make_dataset(folder: Path, seed: int = 0, rsna: bool = False) -> Path:
    """``val.json``: ``N_IMAGES`` images of varied size (no files needed), every third one normal.

    VinBigData's classes (boxes of four of them), or with ``rsna`` RSNA's one class.
    """
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(N_IMAGES):
        w, h = int(rng.integers(200, 321)), int(rng.integers(200, 321))
        images.append(
            {"id": 100 + i, "file_name": f"img{i}.png", "width": w, "height": h, "orig_width": 4 * w,
             "orig_height": 4 * h, "source_id": f"src{i}"}
        )  # fmt: skip
        if i % 3 == 0:
            continue
        for _ in range(int(rng.integers(1, 4))):
            bw, bh = rng.uniform(0.1, 0.3) * w, rng.uniform(0.1, 0.3) * h
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            cat = 0 if rsna else int(rng.choice([0, 3, 8, 10]))
            anns.append(
                {"id": len(anns) + 1, "image_id": 100 + i, "category_id": cat, "bbox": [x, y, bw, bh]}
            )
    ds = CocoDataset(images, anns, coco_categories(RSNA_CLASSES if rsna else VINBIG_CLASSES))
    return ds.write(folder / "val.json")


def noisy_model(ds: CocoDataset, seed: int, jitter: float, miss: float, n_fp: int, fp_score: float):
    """The truth with jitter (relative to box size), misses and ``n_fp`` false positives per image."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in ds.image_ids:
        im, gt = ds.image(i), ds.ground_truth(i)
        w, h = im["width"], im["height"]
        keep = rng.random(len(gt)) >= miss
        b = gt.boxes[keep].astype(np.float64)
        size = np.tile(b[:, 2:] - b[:, :2], 2)
        b = b + rng.normal(0, jitter, b.shape) * size
        s = rng.uniform(0.5, 1.0, len(b))
        lab = gt.labels[keep]
        xy = rng.uniform(0, 0.7, (n_fp, 2)) * [w, h]
        fp = np.concatenate([xy, xy + rng.uniform(0.05, 0.3, (n_fp, 2)) * [w, h]], 1)
        b = np.clip(np.concatenate([b, fp]), 0, [w, h, w, h])
        b[:, 2:] = np.maximum(b[:, 2:], b[:, :2] + 1)
        s = np.concatenate([s, rng.uniform(0, fp_score, n_fp)])
        lab = np.concatenate([lab, rng.choice([0, 3, 8, 10] if len(ds.category_ids) > 1 else [0], n_fp)])
        out[i] = Detections(b.astype(np.float32), s.astype(np.float32), lab)
    return out


def make_case(tmp_path: Path, rsna: bool = False) -> dict:
    """A dataset, three models (two good, one poor) with sidecars, an informative gate file."""
    ds_path = make_dataset(tmp_path, rsna=rsna)
    ds = CocoDataset.load(ds_path)
    specs = [("yolo", 1, 0.04, 0.1, 2, 0.5), ("d2", 2, 0.06, 0.2, 2, 0.5), ("junk", 3, 0.3, 0.5, 6, 1.0)]
    preds = []
    for name, seed, jitter, miss, n_fp, fp_score in specs:
        p = tmp_path / "preds" / f"{name}.json"
        write_predictions(p, noisy_model(ds, seed, jitter, miss, n_fp, fp_score), {"dataset": str(ds_path)})
        preds.append(p)
    rng = np.random.default_rng(9)
    p_abn = {
        i: float(np.clip((0.1 if ds.is_normal(i) else 0.9) + rng.normal(0, 0.05), 0, 1)) for i in ds.image_ids
    }
    gate = write_gate(tmp_path / "preds" / "gate.json", p_abn, {"dataset": str(ds_path)})
    return {"dir": tmp_path, "dataset": ds_path, "ds": ds, "preds": preds, "gate": gate, "p": p_abn}


@pytest.fixture
def case(tmp_path):
    return make_case(tmp_path)


def cli(*args) -> int:
    return main([str(a) for a in args])


def run_args(case, *extra):
    return ["run", "--dataset", case["dataset"], "--preds", *case["preds"], *extra]


def assert_same_as_written(written: dict[int, Detections], expected: dict[int, Detections]) -> None:
    """The rows of a results file equal ``expected`` up to COCO results rounding (x, y, w, h to 0.01 px)."""
    assert set(written) == set(expected)
    for i in expected:
        a, b = written[i], expected[i]
        ka = np.lexsort((a.boxes[:, 0], -np.round(a.scores, 5), a.labels))
        kb = np.lexsort((b.boxes[:, 0], -np.round(b.scores, 5), b.labels))
        np.testing.assert_array_equal(a.labels[ka], b.labels[kb])
        np.testing.assert_allclose(a.boxes[ka], b.boxes[kb], atol=0.0101)
        np.testing.assert_allclose(a.scores[ka], b.scores[kb], atol=1e-6)


# ---------------------------------------------------------------------------- run


def test_run_writes_results_and_sidecar(case):
    out = case["dir"] / "preds" / "wbf.json"
    assert cli(*run_args(case, "--method", "wbf", "--weights", "2,1,1", "--out", out)) == 0
    dets = read_predictions(out, case["ds"])  # valid COCO results on the dataset
    assert sum(len(d) for d in dets.values()) > 0
    meta = read_json(meta_path(out))
    assert meta["kind"] == "fusion" and meta["name"] == "wbf" and meta["method"] == "wbf"
    assert meta["inputs"] == [str(p) for p in case["preds"]]
    assert meta["input_names"] == ["yolo", "d2", "junk"]
    assert meta["options"]["weights"] == [2.0, 1.0, 1.0] and meta["options"]["iou_thr"] == 0.55
    assert meta["gate"] is None and meta["dataset"] == str(case["dataset"])
    assert meta["images"] == N_IMAGES and meta["seconds"] > 0 and meta["images_per_second"] > 0


METHOD_OPTS = [
    ("wbf", {"iou_thr": 0.5, "skip_box_thr": 0.05, "conf_type": "avg"}),
    ("wbf", {"iou_thr": 0.6, "skip_box_thr": 0.0, "conf_type": "max"}),
    ("nms", {"iou_thr": 0.5, "skip_box_thr": 0.05}),
    ("soft-nms", {"iou_thr": 0.4, "skip_box_thr": 0.0, "sigma": 0.3}),
    ("nmw", {"iou_thr": 0.5, "skip_box_thr": 0.05}),
]


@pytest.mark.parametrize(("method", "opts"), METHOD_OPTS)
def test_run_equals_fuse_many_and_ensemble_boxes(case, method, opts, monkeypatch):
    monkeypatch.setattr("ensemble.run.CHUNK_IMAGES", 7)  # several fuse_many calls, as on a large dataset
    weights = [2.0, 1.0, 0.5]
    out = case["dir"] / f"{method}.json"
    args = [x for k, v in opts.items() for x in ("--" + k.replace("_", "-"), v)]
    assert cli(*run_args(case, "--method", method, "--weights", "2", "1", "0.5", *args, "--out", out)) == 0

    ds = case["ds"]
    per_model = [read_predictions(p, ds) for p in case["preds"]]
    sizes = {i: (ds.image(i)["width"], ds.image(i)["height"]) for i in ds.image_ids}
    expected = fuse_many(per_model, sizes, method=method, weights=weights, **opts)
    # in memory: the library path equals fuse_many exactly ...
    settings = FusionSettings(method=method, weights=tuple(weights), **opts)
    got = fuse_and_gate(read_inputs(case["preds"], case["dataset"]), settings)
    assert set(got) == set(expected) == set(ds.image_ids)
    for i in ds.image_ids:
        np.testing.assert_array_equal(got[i].boxes, expected[i].boxes)
        np.testing.assert_array_equal(got[i].scores, expected[i].scores)
        np.testing.assert_array_equal(got[i].labels, expected[i].labels)
    # ... and ensemble-boxes on the normalised boxes within 1e-5
    n_compared = 0
    for i in ds.image_ids:
        w, h = sizes[i]
        kw = {**opts, "weights": weights}
        if method in ("nms", "soft-nms", "nmw"):
            kw.pop("conf_type", None)
        rb, rs, rl = reference([m[i] for m in per_model], w, h, method, **kw)
        ob, os_, ol = canonical(got[i].boxes, got[i].scores, got[i].labels, w, h)
        rb, rs, rl = canonical(rb, np.minimum(rs, 1.0), rl, w, h)
        np.testing.assert_array_equal(ol, rl)
        np.testing.assert_allclose(ob, rb, atol=1e-5)
        np.testing.assert_allclose(os_, rs, atol=1e-5)
        n_compared += len(ob)
    assert n_compared > 2 * N_IMAGES
    # the file holds the same rows
    assert_same_as_written(read_predictions(out, ds), expected)


@pytest.mark.parametrize(
    ("mode", "extra"), [("append", []), ("rescale", []), ("filter", ["--low", "0.3", "--high", "0.7"])]
)
def test_run_with_gate_equals_apply_gate(case, mode, extra):
    out = case["dir"] / "gated.json"
    args = run_args(
        case, "--method", "wbf", "--gate", case["gate"], "--gate-mode", mode, *extra, "--out", out
    )
    assert cli(*args) == 0
    ds = case["ds"]
    per_model = [read_predictions(p, ds) for p in case["preds"]]
    sizes = {i: (ds.image(i)["width"], ds.image(i)["height"]) for i in ds.image_ids}
    low, high = (0.3, 0.7) if mode == "filter" else (None, None)
    expected = apply_gate(fuse_many(per_model, sizes, method="wbf"), case["p"], mode, low, high)
    written = read_predictions(out, ds, extra_categories=(NO_FINDING,))
    assert_same_as_written(written, expected)
    with_nf = sum(bool((d.labels == NO_FINDING).any()) for d in written.values())
    assert with_nf == N_IMAGES if mode != "filter" else 0 < with_nf < N_IMAGES
    meta = read_meta(out)
    assert meta["gate"] == {"path": str(case["gate"]), "mode": mode, "low": low, "high": high}


def _sidecar_dataset(case, other):
    mp = meta_path(case["preds"][1])
    write_json(mp, {**read_json(mp), "dataset": str(other), **dataset_identity(other)})
    return case["preds"][1], "a different dataset from"


def _old_sidecar_dataset(case, other):
    """A sidecar from before fingerprints (no dataset_sha256) naming another dataset by a relative path."""
    mp = meta_path(case["preds"][1])
    meta = {k: v for k, v in read_json(mp).items() if k not in ("dataset_path", "dataset_sha256")}
    write_json(mp, {**meta, "dataset": "other/val.json"})
    return case["preds"][1], "says it was predicted on other/val.json"


def _unknown_image(case, _):
    p = case["preds"][2]
    write_json(p, [*read_json(p), {"image_id": 999, "category_id": 0, "bbox": [1, 1, 5, 5], "score": 0.5}])
    return p, "image ids [999] are not in"


def _unknown_category(case, _):
    p = case["preds"][0]
    write_json(p, [*read_json(p), {"image_id": 100, "category_id": 14, "bbox": [1, 1, 5, 5], "score": 0.5}])
    return p, "category ids [14] are not in"


def _gate_missing_image(case, _):
    rows = [r for r in read_json(case["gate"]) if r["image_id"] != 105]
    write_json(case["gate"], rows)
    return case["gate"], "no p_abnormal for 1 of 30 images"


def _gate_as_preds(case, _):
    case["preds"][1] = case["gate"]
    return case["gate"], "is a gate file"


def _gate_other_dataset(case, other):
    mp = meta_path(case["gate"])
    write_json(mp, {**read_json(mp), "dataset": str(other), **dataset_identity(other)})
    return case["gate"], "says it was predicted on"


@pytest.mark.parametrize(
    "spoil",
    [
        _sidecar_dataset,
        _old_sidecar_dataset,
        _unknown_image,
        _unknown_category,
        _gate_missing_image,
        _gate_as_preds,
        _gate_other_dataset,
    ],
)
def test_disagreeing_files_are_named(case, capsys, spoil):
    other = make_dataset(case["dir"] / "other", seed=5)
    path, message = spoil(case, other)
    out = case["dir"] / "out.json"
    rc = cli(*run_args(case, "--gate", case["gate"], "--gate-mode", "append", "--out", out))
    err = capsys.readouterr().err
    assert rc == 2 and str(path) in err and message in err, err
    assert "Traceback" not in err and not out.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--iou-thr", "-0.1"], "iou_thr must be in [0, 1], got -0.1"),
        (["--weights", "1,1"], "got 2 weights [1.0, 1.0] for 3 prediction files"),
        (["--weights", "1,0,1"], "weights must be finite and > 0"),
        (["--sigma", "0"], "sigma must be > 0"),
        (["--gate-mode", "append"], "--gate-mode append needs --gate"),
        (["--gate", "GATE"], "--gate needs --gate-mode"),
        (["--gate", "GATE", "--gate-mode", "filter", "--low", "0.5"], "needs both thresholds"),
        (["--gate", "GATE", "--gate-mode", "filter", "--low", "0.9", "--high", "0.1"], "must be <= high"),
        (["--low", "0.1", "--high", "0.9"], "low/high thresholds given without a gate mode"),
        (["--out", "PRED0"], "is one of the inputs"),
        (["--out", "x.csv"], "must be a .json file"),
    ],
)
def test_bad_values_exit_2_with_a_message(case, capsys, extra, message):
    subst = {"GATE": str(case["gate"]), "PRED0": str(case["preds"][0])}
    assert cli(*run_args(case, *[subst.get(x, x) for x in extra])) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err, err


def test_missing_file_is_named(case, capsys):
    missing = case["dir"] / "nope.json"
    assert cli("run", "--dataset", case["dataset"], "--preds", case["preds"][0], missing) == 2
    assert f"{missing}: no such prediction file" in capsys.readouterr().err


def test_unknown_option_and_help_via_subprocess(case):
    r = subprocess.run(
        [sys.executable, "-m", "ensemble", "run", "--preds", str(case["preds"][0]), "--dataset",
         str(case["dataset"]), "--iou", "0.5", "--bogus"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 2 and "unrecognized arguments" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "ensemble", "run", "--help"], cwd=REPO, capture_output=True, text=True
    )
    assert r.returncode == 0
    for flag in ("--method", "--preds", "--dataset", "--weights", "--iou-thr", "--skip-box-thr", "--conf-type",
                 "--sigma", "--gate", "--gate-mode", "--low", "--high", "--config", "--name", "--out"):  # fmt: skip
        assert flag in r.stdout
    assert "P(normal) = 1 - p_abnormal" in r.stdout


def test_cli_imports_no_framework(case):
    """``python -m ensemble run`` and ``sweep``, start to finish, load no training framework."""
    code = (
        "import sys\n"
        "from ensemble.__main__ import main\n"
        f"rc = main(['run', '--dataset', {str(case['dataset'])!r}, '--preds', {str(case['preds'][0])!r}, "
        f"{str(case['preds'][1])!r}, '--gate', {str(case['gate'])!r}, '--gate-mode', 'append', "
        f"'--out', {str(case['dir'] / 'x.json')!r}])\n"
        f"rc |= main(['sweep', '--dataset', {str(case['dataset'])!r}, '--preds', {str(case['preds'][0])!r}, "
        f"'--iou-thr', '0.5', '--skip-box-thr', '0', '--out', {str(case['dir'] / 'sw')!r}])\n"
        "bad = [m for m in ('torch', 'torchvision', 'ultralytics', 'detectron2', 'mmdet', 'mmcv', 'mmengine')"
        " if m in sys.modules]\n"
        "print('loaded:', bad)\n"
        "sys.exit(rc or (3 if bad else 0))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0 and "loaded: []" in r.stdout, r.stdout + r.stderr


# --------------------------------------------------------------------------- sweep


def test_sweep_finds_the_better_setting_and_run_config_reproduces_its_score(case, capsys):
    out = case["dir"] / "sweep"
    bad, good = "1,1,8", "4,4,1"  # the third model is the poor one
    args = ["sweep", "--dataset", case["dataset"], "--preds", *case["preds"], "--out", out,
            "--methods", "wbf,nms", "--iou-thr", "0.1,0.5", "--skip-box-thr", "0", "--weights", bad, "--weights", good]  # fmt: skip
    assert cli(*args) == 0
    assert "8 settings scored by vinbig" in capsys.readouterr().out

    with open(out / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 8 and [int(r["rank"]) for r in table] == list(range(1, 9))
    scores = [float(r["score"]) for r in table]
    assert scores == sorted(scores, reverse=True)
    by_setting = {(r["method"], r["weights"], float(r["iou_thr"])): float(r["score"]) for r in table}
    assert by_setting[("wbf", "4,4,1", 0.5)] > by_setting[("wbf", "1,1,8", 0.5)] + 0.02
    assert table[0]["weights"] == "4,4,1" and float(table[0]["iou_thr"]) == 0.5
    results = read_json(out / "results.json")
    assert results["metric"] == "vinbig" and results["inputs"] == ["yolo", "d2", "junk"]
    assert [r["score"] for r in results["results"]] == pytest.approx(scores)

    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["weights"] == [4.0, 4.0, 1.0] and best["score"] == pytest.approx(scores[0])
    fused = case["dir"] / "best.json"
    assert cli(*run_args(case, "--config", out / "best.yaml", "--out", fused)) == 0
    gt = case["ds"].to_dict()
    assert vinbig_map(gt, read_json(fused)).map == pytest.approx(best["score"], abs=1e-6)
    # a flag overrides the config, the rest still comes from it
    assert cli(*run_args(case, "--config", out / "best.yaml", "--weights", bad, "--out", fused)) == 0
    meta = read_meta(fused)
    assert meta["options"]["weights"] == [1.0, 1.0, 8.0] and meta["method"] == best["method"]
    assert meta["config"] == str(out / "best.yaml")
    assert vinbig_map(gt, read_json(fused)).map == pytest.approx(by_setting[(best["method"], bad, 0.5)])


@pytest.mark.parametrize("metric", ["vinbig", "coco", "rsna"])
def test_every_sweep_score_is_exactly_the_leaderboard_score_of_the_file_run_writes(tmp_path, metric):
    """One scorer: for every setting, the sweep's score == the leaderboard's score of ``run``'s file, to the bit."""
    from ensemble.run import run

    case = make_case(tmp_path, rsna=metric == "rsna")  # the RSNA score needs RSNA's one class
    from eval.leaderboard import build_leaderboard
    from fusion.settings import settings_from_mapping

    out = case["dir"] / f"sweep_{metric}"
    args = ["sweep", "--dataset", case["dataset"], "--preds", *case["preds"][:2], "--gate", case["gate"],
            "--out", out, "--metric", metric, "--methods", "wbf,nms,soft-nms,nmw", "--iou-thr", "0.3,0.55",
            "--skip-box-thr", "0", "--weights", "1,2", "--gate-modes", "none,append,rescale"]  # fmt: skip
    assert cli(*args) == 0
    rows = read_json(out / "results.json")["results"]
    assert len(rows) == 4 * 2 * 3 and len({r["score"] for r in rows}) >= 3  # the settings do differ
    for k, r in enumerate(rows):
        settings = settings_from_mapping({key: r[key] for key in r if key not in ("rank", "score", "fuse_seconds")})
        fused = run(case["preds"][:2], case["dataset"], settings, case["dir"] / f"{metric}_{k}.json",
                    gate=case["gate"] if settings.gate_mode else None)  # fmt: skip
        board = build_leaderboard(case["dataset"], [fused], metric=metric, bootstrap=0)
        assert board.rows[0].score == r["score"], (k, r)


def test_sweep_with_gate_picks_a_gate_and_run_reproduces_it(case):
    out = case["dir"] / "sweep"
    args = ["sweep", "--dataset", case["dataset"], "--preds", *case["preds"][:2], "--gate", case["gate"],
            "--out", out, "--iou-thr", "0.5", "--skip-box-thr", "0", "--weights", "1,1",
            "--gate-modes", "none,append,filter,rescale", "--low", "0.2,0.5", "--high", "0.5,0.8"]  # fmt: skip
    assert cli(*args) == 0
    rows = read_json(out / "results.json")["results"]
    assert len(rows) == 1 + 1 + 4 + 1  # none, append, filter (every low <= high: 4 pairs), rescale
    score = {(r["gate_mode"], r["low"], r["high"]): r["score"] for r in rows}
    assert score[("append", None, None)] > score[(None, None, None)] + 0.05
    assert rows[0]["gate_mode"] is not None
    best = yaml.safe_load((out / "best.yaml").read_text())
    fused = case["dir"] / "best.json"
    rc = cli("run", "--dataset", case["dataset"], "--preds", *case["preds"][:2], "--gate", case["gate"],
             "--config", out / "best.yaml", "--out", fused)  # fmt: skip
    assert rc == 0
    assert vinbig_map(case["ds"].to_dict(), read_json(fused)).map == pytest.approx(best["score"], abs=1e-6)


def test_config_errors_are_named(case, capsys):
    cfg = case["dir"] / "best.yaml"
    cfg.write_text("method: wbf\niou_th: 0.5\n")
    assert cli(*run_args(case, "--config", cfg)) == 2
    assert f"{cfg}: unknown key 'iou_th'; did you mean 'iou_thr'?" in capsys.readouterr().err
    cfg.write_text("method: wbf\nweights: [1, 2, 1]\ninputs: [d2, yolo, junk]\n")
    assert cli(*run_args(case, "--config", cfg, "--out", case["dir"] / "o.json")) == 2
    err = capsys.readouterr().err
    assert "chosen for the models ['d2', 'yolo', 'junk']" in err and "['yolo', 'd2', 'junk']" in err
    cfg.write_text("method: wbf\ngate_mode: filter\nlow: 0.2\nhigh: 0.8\n")
    assert cli(*run_args(case, "--config", cfg)) == 2
    assert (
        f"--gate-mode filter needs --gate GATE.json ({cfg} sets gate_mode filter)" in capsys.readouterr().err
    )
    cfg.write_text("iou_thr: high\n")
    assert cli(*run_args(case, "--config", cfg)) == 2
    assert "iou_thr must be a finite number, got 'high'" in capsys.readouterr().err


def test_sweep_bad_grid_exits_2(case, capsys):
    base = ["sweep", "--dataset", case["dataset"], "--preds", *case["preds"], "--out", case["dir"] / "s"]
    assert cli(*base, "--weights", "1,1") == 2
    assert "--weights 1,1: 2 weights for 3 --preds files" in capsys.readouterr().err
    assert cli(*base, "--weights", "1,1,1", "2,1,1") == 2  # one set per --weights
    assert "--weights 1,1,1,2,1,1: 6 weights for 3 --preds files" in capsys.readouterr().err
    assert cli(*base, "--iou-thr", "1.5") == 2
    assert "iou_thr must be in [0, 1]" in capsys.readouterr().err
    assert cli(*base, "--gate-modes", "filter", "--low", "0.1") == 2
    assert "--gate-modes, --low need --gate GATE.json" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli(*base, "--methods", "wbf", "bogus")
    err = capsys.readouterr().err
    assert e.value.code == 2 and "argument --methods: 'bogus' is not one of wbf, nms, soft-nms, nmw" in err, err
    assert not (case["dir"] / "s").exists()


def test_default_out_and_name(case, monkeypatch):
    monkeypatch.chdir(case["dir"])
    assert cli(*run_args(case, "--method", "nms", "--gate", case["gate"], "--gate-mode", "rescale")) == 0
    out = case["dir"] / "preds" / "nms-rescale.json"
    assert out.is_file() and read_meta(out)["name"] == "nms-rescale"
    assert cli(*run_args(case, "--method", "nmw", "--name", "my fusion")) == 0
    assert (case["dir"] / "preds" / "my fusion.json").is_file()
    assert json.loads(meta_path(case["dir"] / "preds" / "my fusion.json").read_text())["kind"] == "fusion"


# --------------------------------------------------------------------------- files by what they are


def test_the_same_dataset_however_its_path_is_spelled(case, tmp_path_factory, monkeypatch):
    """Sidecars hold the dataset's SHA-256: any spelling of its path, from any folder, or a copy, is accepted."""
    written = read_meta(case["preds"][0])
    assert written["dataset_path"] == str(case["dataset"].resolve()) and len(written["dataset_sha256"]) == 64
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    copy = elsewhere / "copy_of_val.json"
    copy.write_bytes(case["dataset"].read_bytes())
    monkeypatch.chdir(elsewhere)
    for dataset in (case["dataset"].resolve(), copy.name, Path("..") / case["dir"].name / "val.json"):
        out = elsewhere / "fused.json"
        assert cli("run", "--dataset", dataset, "--preds", *case["preds"][:2], "--out", out) == 0, dataset
        assert read_meta(out)["dataset_sha256"] == written["dataset_sha256"]
    other = make_dataset(elsewhere / "other", seed=5)
    with pytest.raises(ValueError, match=f"says it was predicted on .*a different dataset from {other}"):
        read_inputs(case["preds"][:2], other)


def test_an_older_sidecar_is_found_from_the_results_folder(case, monkeypatch, tmp_path_factory):
    """A sidecar without the fingerprint names the dataset relative to where it was written: found from above."""
    for p in case["preds"]:
        mp = meta_path(p)
        meta = {k: v for k, v in read_json(mp).items() if k not in ("dataset_path", "dataset_sha256")}
        write_json(mp, {**meta, "dataset": f"{case['dir'].name}/val.json"})  # written from case["dir"]'s parent
    monkeypatch.chdir(tmp_path_factory.mktemp("somewhere_else"))
    assert len(read_inputs(case["preds"], case["dataset"].resolve()).per_model) == 3


def test_one_list_syntax_in_the_real_command_line(case):
    """``--methods wbf nms`` is ``--methods wbf,nms`` (the values are not taken for the top-level command)."""
    outs = []
    for k, methods in enumerate((["wbf", "nms"], ["wbf,nms"], ["wbf,", "nms"])):
        out = case["dir"] / f"sweep{k}"
        r = subprocess.run(
            [sys.executable, "-m", "ensemble", "sweep", "--dataset", str(case["dataset"]), "--preds",
             *map(str, case["preds"][:2]), "--methods", *methods, "--iou-thr", "0.4", "0.5", "--skip-box-thr",
             "0", "--weights", "1", "1", "--weights", "2,1", "--out", str(out)],
            cwd=REPO, capture_output=True, text=True,
        )  # fmt: skip
        outs.append((r, out))
    for r, out in outs[:2]:
        assert r.returncode == 0, r.stderr
        assert len(read_json(out / "results.json")["results"]) == 2 * 2 * 2  # methods × iou × weight sets
    settings = [
        [{k: v for k, v in r.items() if k != "fuse_seconds"} for r in read_json(out / "results.json")["results"]]
        for _, out in outs[:2]
    ]
    assert settings[0] == settings[1]
    r, out = outs[2]
    assert r.returncode == 2 and "argument --methods: empty value in 'wbf,'" in r.stderr and not out.exists()


def test_a_metric_that_does_not_fit_the_classes_stops_before_any_work(case, tmp_path, capsys):
    rsna = make_case(tmp_path / "rsna", rsna=True)
    out = tmp_path / "sweep"
    assert cli("sweep", "--dataset", rsna["dataset"], "--preds", *rsna["preds"][:2], "--out", out) == 2
    err = capsys.readouterr().err
    assert "--metric vinbig: " in err and "is not a VinBigData dataset (category 0 is 'Lung Opacity'" in err, err
    args = ["sweep", "--dataset", case["dataset"], "--preds", *case["preds"][:2], "--metric", "rsna", "--out", out]
    assert cli(*args) == 2
    assert "--metric rsna: " in capsys.readouterr().err and not out.exists()
