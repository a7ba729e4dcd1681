"""Checks before work: the run folder rule (--overwrite / --resume), the device, quiet framework output.

None of these trains: every refusal happens before a framework starts, and the folder is left as it was.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import pytest
import yaml

from adapters.base import AdapterError, prepare_run_dir
from adapters.quiet import framework_output, strip_ansi
from tests.test_adapters import TINY, square_dataset


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> Path:
    return square_dataset(tmp_path_factory.mktemp("checks"), 2, 0)


def _cfg(tmp: Path, adapter: str = "detectron2", **extra) -> Path:
    data = {"name": "c", "adapter": adapter, "image_size": 64, "device": "cpu", **TINY[adapter], **extra}
    path = tmp / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------- the run folder rule


def test_a_new_folder_or_one_without_a_run_is_a_new_run(tmp_path):
    assert prepare_run_dir(tmp_path / "a" / "b").status == "new" and (tmp_path / "a" / "b").is_dir()
    (tmp_path / "notes.txt").write_text("mine")
    assert prepare_run_dir(tmp_path).status == "new"


def test_a_finished_run_is_refused_unless_overwrite_which_removes_only_ours(tmp_path):
    run = tmp_path / "run"
    for name in ("weights.pth", "config.yaml", "loss.csv", "train.log"):
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text(name)
    (run / "detectron2").mkdir()
    (run / "detectron2" / "resume.pth").write_text("x")
    (run / "my_notes.txt").write_text("not ours")
    with pytest.raises(AdapterError) as e:
        prepare_run_dir(run)
    assert str(e.value) == (
        f"{run} holds a finished run (weights {run / 'weights.pth'}); "
        "pass --overwrite to replace it or --out-dir for a new one"
    )
    with pytest.raises(AdapterError, match="nothing to resume"):
        prepare_run_dir(run, resume=True)
    with pytest.raises(AdapterError, match="exclude each other"):
        prepare_run_dir(run, overwrite=True, resume=True)
    state = prepare_run_dir(run, overwrite=True)
    assert state.status == "finished" and set(state.removed) == {
        "weights.pth", "config.yaml", "loss.csv", "train.log", "detectron2",
    }  # fmt: skip
    assert sorted(p.name for p in run.iterdir()) == ["my_notes.txt"]


def test_an_unfinished_run_needs_resume_or_overwrite(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("x")
    (run / "loss.csv.part").write_text("step,epoch,loss\n1,1,0.5\n")
    with pytest.raises(AdapterError, match="holds an unfinished run .*pass --resume to continue it, --overwrite"):
        prepare_run_dir(run)
    ckpt = run / "detectron2" / "resume.pth"
    state = prepare_run_dir(run, resume=True, checkpoint=lambda d: ckpt)
    assert state.resume and state.checkpoint == ckpt and (run / "loss.csv.part").exists()
    # killed before its first checkpoint: resuming starts over (nothing to continue from)
    assert prepare_run_dir(run, resume=True, checkpoint=lambda d: None).checkpoint is None
    with pytest.raises(AdapterError, match="no run to resume"):
        prepare_run_dir(tmp_path / "empty", resume=True)


def test_cli_refuses_a_finished_run_before_any_work_and_leaves_it_alone(ds, tmp_path, capsys):
    from adapters.__main__ import main

    cfg = _cfg(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "weights.pth").write_bytes(b"trained")
    (run / "config.yaml").write_text("out_dir: elsewhere\n")
    before = _listing(run)
    assert main(["train", str(cfg), "--dataset", str(ds), "--out-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: {run} holds a finished run (weights {run / 'weights.pth'}); "
        "pass --overwrite to replace it or --out-dir for a new one\n"
    )
    assert main(["train", str(cfg), "--dataset", str(ds), "--out-dir", str(run), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # argparse: the two flags exclude each other
        main(["train", str(cfg), "--dataset", str(ds), "--out-dir", str(run), "--resume", "--overwrite"])
    assert e.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    assert _listing(run) == before


def test_resume_with_other_settings_names_the_key(ds, tmp_path, capsys):
    from adapters.__main__ import main

    cfg = _cfg(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    saved = yaml.safe_load(cfg.read_text())
    saved.update(out_dir=str(run.resolve()), dataset={"train": str(ds.resolve())})
    saved["schedule"] = {**saved["schedule"], "iterations": 99}
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    before = _listing(run)
    assert main(["train", str(cfg), "--dataset", str(ds), "--out-dir", str(run), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "--resume with other settings than the run started with: schedule.iterations was 99, now 3" in err
    assert _listing(run) == before


# ---------------------------------------------------------------------------- the device


def test_a_device_the_machine_lacks_fails_before_any_file_is_written(ds, tmp_path, capsys):
    import torch

    from adapters.__main__ import main

    cfg = _cfg(tmp_path)
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device = f"cuda:{n}"  # one past the last GPU: absent on every machine
    run = tmp_path / "run"
    argv = ["train", str(cfg), "--dataset", str(ds), "--out-dir", str(run), "--set", f"device={device}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: device '{device}' asked for, but torch sees ") and len(err.splitlines()) == 1
    assert not run.exists()
    out = tmp_path / "preds" / "p.json"
    argv = ["predict", str(cfg), "--weights", str(tmp_path / "w.pth"), "--dataset", str(ds), "--out", str(out)]
    assert main([*argv, "--set", f"device={device}"]) == 2
    assert f"device '{device}'" in capsys.readouterr().err and not out.parent.exists()
    assert main([*argv, "--set", "device=tpu"]) == 2
    assert "unknown device 'tpu'" in capsys.readouterr().err


# ---------------------------------------------------------------------------- quiet


def test_framework_output_goes_to_the_log_without_colour(tmp_path, capfd):
    log = tmp_path / "run" / "train.log"
    framework = logging.getLogger("ultralytics.fake")
    with framework_output(log):
        print("\x1b[34m\x1b[1mengine/trainer: \x1b[0mepochs=1 (an argument dump)")
        print("progress 10%\rprogress 100%", file=sys.stderr)
        framework.warning("a framework warning")
        warnings.warn("pkg_resources is deprecated as an API", UserWarning, stacklevel=1)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    text = log.read_text()
    assert "engine/trainer: epochs=1 (an argument dump)\n" in text and "\x1b" not in text
    assert "progress 10%\nprogress 100%" in text
    assert "a framework warning" in text and "pkg_resources is deprecated" in text
    with framework_output(log, echo=True):  # -v: shown as well, uncoloured where the console is no terminal
        print("\x1b[1mshown\x1b[0m")
    assert capfd.readouterr().out == "shown\n" and log.read_text().endswith("shown\n")


def test_a_held_log_is_written_only_where_the_output_folder_exists(tmp_path):
    log = tmp_path / "preds" / "p.log"
    with framework_output(log, held=True):
        print("chatter of a failed prediction")
    assert not log.parent.exists()
    with framework_output(log, held=True):
        print("chatter")
        log.parent.mkdir()
    assert log.read_text() == "chatter\n"
    assert strip_ansi("\x1b[31mred\x1b[0m \x1b[2Kline") == "red line"
