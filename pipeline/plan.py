"""What a pipeline does, in order (`plan`), and what its leaderboard says (`findings`).

Steps, each a run of the project's own command line in a fresh process (so the frameworks
never share one interpreter, and each step's memory is returned when it ends):

1. ``synth``: synthetic raw data (VinBigData or RSNA layout, DICOMs + labels), when the config asks for it;
2. ``convert``: raw data → COCO dataset with folds; with a ``test`` section also ``synth_test``
   (when asked for) and ``convert_test``: the unlabelled images → ``coco_test/all.json``;
3. ``train:NAME`` and ``predict:NAME`` for every detector config (and ``predict_test:NAME`` on
   the test images); with ``cv`` once per fold, ``train:NAME@fold{k}`` ...;
4. the same for the classifier gate;
5. with ``cv``, ``oof`` (in process): the fold models' predictions on their own validation folds
   joined into one out-of-fold results file per model, on ``coco/oof.json``;
6. ``fuse:METHOD`` and ``fuse:METHOD+gate`` for every fusion method, each driven by a settings file
   (`fusion.settings.write_settings`, ``python -m ensemble run --config``) written just before it runs;
7. with ``cv`` or ``test``, ``sweep``: ``python -m ensemble sweep`` on the validation (OOF) results;
8. with ``test``: ``fold_fuse:NAME`` (with ``cv``: a model's fold predictions fused by WBF, the
   gate's averaged) and ``fuse_test`` (in process): the models' test results fused with the
   sweep's ``best.yaml``;
9. ``leaderboard`` (in process): the headline metric (with the findings of this run) and the HTML
   report, plus a COCO-mAP leaderboard;
10. ``submission`` (in process, then ``python -m convert submission``): the Kaggle CSV of the best
    fusion, or with ``test`` of the test set (checked against its id list).

Every step names the files it reads (``inputs``) beside those it writes (``outputs``); `plan`
derives from them the steps each depends on (``deps``), so the plan is a graph whose independent
steps (models, folds, the gate, test-set predictions) may run at the same time. A step also carries
what it is made from besides its command and files (``config``: a model's resolved config, a
fusion's settings) and what it asks a Ray cluster for (``resources``). `pipeline.records` says
which steps are done, stale or missing; `pipeline.execute.run` runs the steps.

Planning writes nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fusion.settings import FusionSettings
from pipeline.config import ModelEntry, Pipeline

#: the steps `pipeline.execute` does in process (``Step.command`` is None)
IN_PROCESS = ("oof", "fold_fuse:gate", "fuse_test", "leaderboard", "submission")


@dataclass(frozen=True)
class SettingsFile:
    """A fusion settings file a step reads: where, the settings, and the ``INFO_KEYS`` recorded with them."""

    path: Path
    settings: FusionSettings
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Step:
    """One step of a pipeline.

    Attributes:
        name: ``synth``, ``convert``, ``train:NAME``, ``predict:NAME``, ``fuse:METHOD[+gate]``,
            ``leaderboard`` or ``submission``.
        command: the command line, run in a fresh process; None for a step done in process
            (one of ``IN_PROCESS``).
        outputs: the files (and folders) the step must leave behind.
        settings: for a ``fuse:`` step, the settings file to write before the command runs.
        inputs: the files and folders the step reads (a folder stands for every file in it).
        deps: the names of the steps that write its inputs (set by `plan`).
        config: what the step is made from besides its command and inputs, as a mapping: a model's
            resolved config, a fusion's settings, the pipeline sections an in-process step reads.
        source: the file ``config`` comes from (said when it changes).
        resources: what the step asks a Ray cluster for (``cpus``, ``gpus``, ``memory_gb``); an
            unset key takes the executor's default.
        run_dir: for a ``train:`` step, its run folder (`pipeline.execute` adds ``--resume`` or
            ``--overwrite`` to the command when it holds an earlier run).
    """

    name: str
    command: list[str] | None
    outputs: list[Path]
    settings: SettingsFile | None = None
    inputs: list[Path] = field(default_factory=list)
    deps: list[str] = field(default_factory=list)
    config: dict[str, Any] | None = None
    source: Path | None = None
    resources: dict[str, float] = field(default_factory=dict)
    run_dir: Path | None = None


def matches(name: str, patterns: Sequence[str]) -> bool:
    """Whether the step ``name`` is one of ``patterns``: a step's name, or its kind (``train`` names
    every ``train:`` step, ``fuse`` every ``fuse:`` step)."""
    return any(name == x or name.startswith(f"{x}:") for x in patterns)


def module_command(*args: object) -> list[str]:
    """``python -m ARGS...`` in this interpreter, every argument a string."""
    return [sys.executable, "-m", *(str(a) for a in args)]


def settings_path(p: Pipeline, name: str) -> Path:
    """Where the settings file of the fusion ``name`` (``wbf``, ``wbf+gate``, ...) is written."""
    return p.work_dir / "fusion_settings" / f"{name.replace('+', '_')}.yaml"


def _synth_command(p: Pipeline, s: dict[str, Any], out: Path) -> list[str]:
    """``python -m convert synth KIND`` for the ``synth`` section ``s``."""
    if p.kind == "rsna":
        return module_command(
            "convert", "synth", "rsna", "--out", out, "--n-images", s.get("n_images", 160),
            "--seed", s.get("seed", 0), "--size", s.get("size", 1024), "--workers", s.get("workers", 2),
        )  # fmt: skip
    return module_command(
        "convert", "synth", "vinbig", "--out", out,
        "--n-images", s.get("n_images", 160), "--seed", s.get("seed", 0),
        "--min-size", s.get("min_size", 384), "--max-size", s.get("max_size", 512),
        "--workers", s.get("workers", 2),
    )  # fmt: skip


#: where a synthetic raw set keeps its labels and its images, per data kind
_SYNTH_FILES = {"vinbig": ("train.csv", "train"), "rsna": ("stage_2_train_labels.csv", "stage_2_train_images")}


def _convert_steps(p: Pipeline) -> list[Step]:
    """``synth`` (when asked for) and ``convert``: the labelled data → ``coco/`` with folds."""
    steps: list[Step] = []
    wd, coco = p.work_dir, p.coco
    d, conv = p.data, p.data.get("convert", {})
    labels_name, images_name = _SYNTH_FILES[p.kind]
    extra: list[str] = []
    if d.get("synth"):
        raw = wd / "raw"
        cpus = {"cpus": float(d["synth"].get("workers", 2))}
        steps.append(Step("synth", _synth_command(p, d["synth"], raw), [raw / labels_name, raw / images_name],
                          resources=cpus))  # fmt: skip
        labels, images = raw / labels_name, raw / images_name
        inputs = [labels, images]
    else:
        r = d["raw"]
        labels, images = Path(r["csv" if p.kind == "vinbig" else "labels"]), Path(r["images"])
        inputs = [labels, images]
        if r.get("size_table"):
            extra += ["--size-table", str(r["size_table"])]
            inputs.append(Path(r["size_table"]))
        if r.get("class_info"):
            extra += ["--class-info", str(r["class_info"])]
            inputs.append(Path(r["class_info"]))
    common = [
        "--images", images, "--out", coco, "--size", conv.get("size", 1024), "--folds", conv.get("folds", 5),
        "--val-fold", conv.get("val_fold", 0), "--workers", conv.get("workers", 2),
    ]  # fmt: skip
    if p.kind == "vinbig":
        cmd = module_command(
            "convert", "vinbig", "--csv", labels, *common,
            "--annotators", conv.get("annotators", "wbf"), "--iou-thr", conv.get("iou_thr", 0.4),
        )  # fmt: skip
    else:
        cmd = module_command("convert", "rsna", "--labels", labels, *common)
    outs = [coco / "train.json", coco / "val.json", coco / "all.json", coco / "images"]
    outs += [coco / f"fold{k}_{part}.json" for k in p.cv_folds or () for part in ("train", "val")]
    cpus = {"cpus": float(max(1, conv.get("workers", 2)))}
    steps.append(Step("convert", cmd + extra, outs, inputs=inputs, resources=cpus))
    return steps


def _test_convert_steps(p: Pipeline) -> list[Step]:
    """``synth_test`` (when asked for) and ``convert_test``: the unlabelled images → ``coco_test/all.json``."""
    t = p.test or {}
    steps: list[Step] = []
    conv = p.data.get("convert", {})
    extra: list[str] = []
    if t.get("synth"):
        raw = p.work_dir / "raw_test"
        labels_name, images_name = _SYNTH_FILES[p.kind]
        # its labels are made with the images but never read: the converter sees only the folder
        cpus = {"cpus": float(t["synth"].get("workers", 2))}
        steps.append(Step("synth_test", _synth_command(p, t["synth"], raw), [raw / images_name], resources=cpus))
        images = raw / images_name
        inputs = [images]
    else:
        images = Path(t["images"])
        inputs = [images]
        for key in ("ids", "size_table"):
            if t.get(key):
                extra += [f"--{key.replace('_', '-')}", str(t[key])]
                inputs.append(Path(t[key]))
    cmd = module_command(
        "convert", p.kind, "--images", images, "--out", p.coco_test, "--size", conv.get("size", 1024),
        "--workers", conv.get("workers", 2), *extra,
    )  # fmt: skip
    cpus = {"cpus": float(max(1, conv.get("workers", 2)))}
    steps.append(Step("convert_test", cmd, [p.coco_test / "all.json", p.coco_test / "images"], inputs=inputs,
                      resources=cpus))  # fmt: skip
    return steps


def fold_dir(p: Pipeline, k: int | None) -> str:
    """The sub-folder of fold ``k`` (``fold{k}``), or ``""`` without ``cv``."""
    return "" if k is None else f"fold{k}"


def weights_file(p: Pipeline, m: ModelEntry, k: int | None) -> Path:
    """Where ``m``'s training (on fold ``k`` with ``cv``) leaves its weights."""
    run = p.work_dir / "runs" / m.name / fold_dir(p, k)
    return run / ("weights.pt" if m.adapter == "ultralytics" else "weights.pth")


def _model_steps(p: Pipeline) -> list[Step]:
    """``train:NAME``, ``predict:NAME`` (and ``predict_test:NAME``) per model and fold.

    With ``cv`` the steps are ``train:NAME@fold{k}`` (``runs/NAME/fold{k}/``, on ``fold{k}_train``),
    ``predict:NAME@fold{k}`` (``preds/fold{k}/NAME.json``, on ``fold{k}_val``) and
    ``predict_test:NAME@fold{k}`` (``preds_test/fold{k}/NAME.json``).
    """
    steps: list[Step] = []
    coco, preds = p.coco, p.preds
    folds: Sequence[int | None] = p.cv_folds or (None,)
    for m in [*p.models, *([p.gate] if p.gate else [])]:
        stem = "gate" if m is p.gate else m.name
        for k in folds:
            at = "" if k is None else f"@fold{k}"
            train_json = coco / ("train.json" if k is None else f"fold{k}_train.json")
            val_json = coco / ("val.json" if k is None else f"fold{k}_val.json")
            run = p.work_dir / "runs" / m.name / fold_dir(p, k)
            sets = [x for o in [*m.overrides, f"dataset.val={val_json}"] for x in ("--set", o)]
            weights = weights_file(p, m, k)
            cmd = module_command("adapters", "train", m.config, "--dataset", train_json, "--out-dir", run, *sets)
            common = {"source": m.config, "resources": dict(m.resources)}
            steps.append(Step(
                f"train:{m.name}{at}", cmd, [weights, run / "loss.csv"],
                inputs=[train_json, val_json, coco / "images", *m.files], config=_model_config(m, "train"),
                run_dir=run, **common,
            ))  # fmt: skip
            out = preds / fold_dir(p, k) / f"{stem}.json"
            cmd = module_command(
                "adapters", "predict", m.config, "--weights", weights, "--dataset", val_json, "--out", out, *sets
            )
            predict = _model_config(m, "predict")
            reads = [weights, *m.files[:-1]] if m.resolved.get("weights") else [weights, *m.files]
            steps.append(Step(f"predict:{m.name}{at}", cmd, [out], inputs=[*reads, val_json, coco / "images"],
                              config=predict, **common))  # fmt: skip
            if p.test is not None:
                out = p.preds_test / fold_dir(p, k) / f"{stem}.json"
                test_json = p.coco_test / "all.json"
                cmd = module_command(
                    "adapters", "predict", m.config, "--weights", weights,
                    "--dataset", test_json, "--out", out, *sets,
                )  # fmt: skip
                steps.append(Step(f"predict_test:{m.name}{at}", cmd, [out],
                                  inputs=[*reads, test_json, p.coco_test / "images"], config=predict, **common))  # fmt: skip
    return steps


#: the keys of a model config that a training does not read (the pipeline gives dataset and out dir
#: on the command line) and those a prediction does not read
_NOT_READ = {"train": ("predict", "dataset", "out_dir"), "predict": ("schedule", "dataset", "out_dir", "weights")}


def _model_config(m: ModelEntry, verb: str) -> dict[str, Any]:
    """What of ``m``'s resolved config a ``train`` or ``predict`` step reads."""
    return {k: v for k, v in m.resolved.items() if k not in _NOT_READ[verb]}


def _fusion_steps(p: Pipeline) -> list[Step]:
    """``fuse:METHOD`` and ``fuse:METHOD+gate`` on the validation (with ``cv``: OOF) results."""
    steps: list[Step] = []
    preds, dataset = p.eval_preds, p.eval_dataset
    model_preds = [preds / f"{m.name}.json" for m in p.models]
    gate_json = preds / "gate.json"
    for method in p.methods if len(p.models) > 1 else []:
        for gated in (False, True) if p.gate else (False,):
            name = f"{method}+gate" if gated else method
            out = preds / f"fusion_{name.replace('+', '_')}.json"
            info: dict[str, Any] = {"inputs": [p.row_name(m.name) for m in p.models], "dataset": str(dataset)}
            if gated:
                info["gate"] = str(gate_json)
            settings = SettingsFile(settings_path(p, name), p.fusion_settings(method, gated), info)
            cmd = module_command(
                "ensemble", "run", "--config", settings.path, "--dataset", dataset,
                "--preds", *model_preds, "--name", p.row_name(name), "--out", out,
            )  # fmt: skip
            if gated:
                cmd += ["--gate", str(gate_json)]
            config = {**settings.settings.to_dict(), **info}
            inputs = [dataset, *model_preds, *([gate_json] if gated else [])]
            steps.append(Step(f"fuse:{name}", cmd, [out], settings, inputs=inputs, config=config, source=settings.path))
    return steps


def sweep_dir(p: Pipeline) -> Path:
    """Where the sweep writes ``results.csv``, ``results.json`` and ``best.yaml``."""
    return p.work_dir / "sweep"


def _sweep_step(p: Pipeline) -> Step:
    """``sweep``: ``python -m ensemble sweep`` over the validation (OOF) results; ``best.yaml`` wins."""
    preds = p.eval_preds
    cmd = module_command(
        "ensemble", "sweep", "--dataset", p.eval_dataset, "--preds", *[preds / f"{m.name}.json" for m in p.models],
        "--metric", p.metric, "--methods", ",".join(p.methods), "--out", sweep_dir(p),
    )  # fmt: skip
    if p.gate:
        cmd += ["--gate", str(preds / "gate.json")]
    for key, flag in (("iou_thr", "--iou-thr"), ("skip_box_thr", "--skip-box-thr")):
        if key in p.sweep:
            cmd += [flag, ",".join(str(v) for v in p.sweep[key])]
    if p.gate and "gate_modes" in p.sweep:
        cmd += ["--gate-modes", ",".join(p.sweep["gate_modes"])]
    inputs = [p.eval_dataset, *[preds / f"{m.name}.json" for m in p.models], *([preds / "gate.json"] if p.gate else [])]
    return Step("sweep", cmd, [sweep_dir(p) / "best.yaml"], inputs=inputs)


def _test_fusion_steps(p: Pipeline) -> list[Step]:
    """Per model, its fold models' test results fused (WBF, equal weights): ``fold_fuse:NAME``
    (with ``cv``); then ``fuse_test`` (in process): the models' test results fused with the sweep's
    ``best.yaml``."""
    steps: list[Step] = []
    test_json = p.coco_test / "all.json"
    if p.cv_folds:
        for m in p.models:
            out = p.preds_test / f"{m.name}.json"
            folds = [p.preds_test / fold_dir(p, k) / f"{m.name}.json" for k in p.cv_folds]
            cmd = module_command(
                "ensemble", "run", "--method", "wbf", "--dataset", test_json, "--preds", *folds,
                "--name", m.name, "--out", out,
            )  # fmt: skip
            steps.append(Step(f"fold_fuse:{m.name}", cmd, [out], inputs=[test_json, *folds]))
        if p.gate:
            folds = [p.preds_test / fold_dir(p, k) / "gate.json" for k in p.cv_folds]
            steps.append(Step("fold_fuse:gate", None, [p.preds_test / "gate.json"], inputs=[test_json, *folds]))
    reads = [sweep_dir(p) / "best.yaml", test_json, *(p.preds_test / f"{m.name}.json" for m in p.models)]
    steps.append(Step("fuse_test", None, [fused_test_path(p)], inputs=reads + _gate_file(p, p.preds_test)))
    return steps


def _gate_file(p: Pipeline, folder: Path) -> list[Path]:
    """``[folder / "gate.json"]`` when the pipeline has a gate, else ``[]``."""
    return [folder / "gate.json"] if p.gate else []


def _board_inputs(p: Pipeline, fusions: Sequence[Step]) -> list[Path]:
    """What the leaderboard and the submission read: the models', the gate's and the fusions'
    results on the validation (OOF) images, and that dataset."""
    preds = [p.eval_preds / f"{m.name}.json" for m in p.models]
    return [p.eval_dataset, *preds, *_gate_file(p, p.eval_preds), *(s.outputs[0] for s in fusions)]


def fused_test_path(p: Pipeline) -> Path:
    """The test set's fused results, from which ``submission.csv`` is written."""
    return p.preds_test / "fusion_best.json"


def plan(p: Pipeline) -> list[Step]:
    """The steps of ``p`` in order, with the files each must leave behind."""
    steps = _convert_steps(p)
    if p.test is not None:
        steps += _test_convert_steps(p)
    steps += _model_steps(p)
    if p.cv_folds:
        outs = [p.eval_dataset, *(p.eval_preds / f"{m.name}.json" for m in p.models)]
        stems = [*(m.name for m in p.models), *(["gate"] if p.gate else [])]
        reads = [p.coco / "all.json", *(p.coco / f"fold{k}_val.json" for k in p.cv_folds)]
        reads += [p.preds / fold_dir(p, k) / f"{stem}.json" for stem in stems for k in p.cv_folds]
        steps.append(Step("oof", None, outs + _gate_file(p, p.eval_preds), inputs=reads))
    fusions = _fusion_steps(p)
    steps += fusions
    if p.sweeps:
        steps.append(_sweep_step(p))
    if p.test is not None:
        steps += _test_fusion_steps(p)
    wd = p.work_dir
    runs = [s.outputs[1] for s in steps if s.name.startswith("train:")]  # their loss.csv, for the plots
    board = {"leaderboard": p.leaderboard, "metric": p.metric}
    steps.append(Step("leaderboard", None, [wd / "leaderboard" / "leaderboard.json", wd / "report" / "index.html"],
                      inputs=[*_board_inputs(p, fusions), *runs], config=board, source=p.source))  # fmt: skip
    if p.test is not None:
        test = [fused_test_path(p), p.coco_test / "all.json", sweep_dir(p) / "best.yaml", *_gate_file(p, p.preds_test)]
        reads = test + [Path(p.test["ids"])] if p.test.get("ids") else test
    else:
        reads = _board_inputs(p, fusions)
    sub = {"kind": p.submission_kind, "metric": p.metric}
    steps.append(Step("submission", None, [wd / "submission.csv"], inputs=reads, config=sub, source=p.source))
    return link(steps)


def link(steps: list[Step]) -> list[Step]:
    """Set every step's ``deps``: the earlier steps that write one of its inputs (or a folder holding one).

    Returns:
        ``steps``, in their order, which lists every step after the steps it depends on.
    """
    made: dict[Path, str] = {}
    for step in steps:
        deps: list[str] = []
        for path in step.inputs:
            for cand in (path, *path.parents):
                name = made.get(cand)
                if name is not None:
                    if name not in deps:
                        deps.append(name)
                    break
        step.deps = deps
        made.update({o: step.name for o in step.outputs})
    return steps


def findings(
    rows: Sequence[Any], metric_label: str, scorer: Any = None, n_resamples: int = 1000, seed: int = 0
) -> list[str]:
    """Plain statements, from scored leaderboard rows, on fusion vs the best model and on the gate.

    ``rows`` need ``name``, ``kind`` (``detector``/``fusion``) and ``score``; a gated fusion is
    named ``METHOD+gate`` beside its ungated ``METHOD``. With a ``scorer`` (`eval.scoring.Scorer`
    of the rows' dataset) the rows also need ``detections`` (as scored), and every comparison is a
    paired bootstrap over the same images (`eval.bootstrap.Bootstrap`, ``n_resamples``, ``seed``):
    a statement says that one beat the other only when the 95% interval of the difference excludes
    0, and "no significant difference" with the interval otherwise. Without a scorer the scores are
    compared as they are.

    Raises:
        ValueError: as `eval.bootstrap.Bootstrap` for rows whose detections the dataset does not match.
    """
    boot = None
    if scorer is not None:
        from eval.bootstrap import Bootstrap

        boot = Bootstrap(scorer, n_resamples, seed)
    notes: list[str] = []
    singles = [r for r in rows if r.kind == "detector"]
    fusions = [r for r in rows if r.kind == "fusion"]
    # like against like: the models carry no gate, so fusion is judged on its ungated runs
    plain = [r for r in fusions if not r.name.endswith("+gate")] or fusions
    if singles and plain:
        bs = max(singles, key=lambda r: r.score)
        bf = max(plain, key=lambda r: r.score)
        if boot is not None:
            res = boot.paired(bf.detections, bs.detections)
            where = f"{res.n_images} images; both without the gate"
            if not res.significant:
                notes.append(
                    f"Fusion {bf.name} vs the best single model {bs.name} on {metric_label}: "
                    f"no significant difference ({res.describe()}, {where})."
                )
            else:
                verdict = "beat" if res.difference > 0 else "did worse than"
                notes.append(
                    f"Fusion {bf.name} {verdict} the best single model {bs.name} by {res.difference:+.4f} "
                    f"on {metric_label} ({res.interval_text()}, {where})."
                )
        else:
            verdict = "beat" if bf.score > bs.score else "did not beat"
            notes.append(
                f"Fusion {verdict} the best single model on {metric_label} (both without the gate): "
                f"best fusion {bf.name} {bf.score:.4f} vs best model {bs.name} {bs.score:.4f} "
                f"({bf.score - bs.score:+.4f})."
            )
    by_name = {r.name: r for r in fusions}
    pairs = [(r, by_name[f"{r.name}+gate"]) for r in fusions if f"{r.name}+gate" in by_name]
    if pairs and boot is not None:
        for a, b in pairs:
            res = boot.paired(b.detections, a.detections)
            if not res.significant:
                notes.append(
                    f"The gate on {a.name}: no significant difference between {b.name} and {a.name} "
                    f"on {metric_label} ({res.describe()}, {res.n_images} images)."
                )
            else:
                verdict = "helped" if res.difference > 0 else "hurt"
                notes.append(
                    f"The gate {verdict} {a.name}: {b.name} vs {a.name} {res.difference:+.4f} "
                    f"on {metric_label} ({res.interval_text()}, {res.n_images} images)."
                )
    elif pairs:
        gains = [b.score - a.score for a, b in pairs]
        helped = sum(g > 0 for g in gains)
        verdict = "helped" if helped == len(pairs) else "did not help" if helped == 0 else "helped in part"
        detail = ", ".join(f"{a.name} {a.score:.4f} → {b.score:.4f}" for a, b in pairs)
        notes.append(
            f"The gate {verdict}: {helped} of {len(pairs)} fusion methods improved with it "
            f"(mean change {sum(gains) / len(gains):+.4f}): {detail}."
        )
    return notes
