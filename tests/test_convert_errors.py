"""Bad input is a clear error naming file and row; --on-error skip goes on and reports; nothing half-written."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest

from convert.__main__ import main
from convert.common import ConversionError
from convert.vinbig import convert_vinbig
from tests.conftest_paths import REPO

HEADER = "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n"
GOOD = [
    "aaa,No finding,14,R1,,,,",
    "aaa,No finding,14,R2,,,,",
    "bbb,Cardiomegaly,3,R1,100.0,200.0,300.0,350.0",
    "bbb,Cardiomegaly,3,R2,105.0,205.0,300.0,352.0",
    "ccc,Nodule/Mass,8,R3,10.0,10.0,40.0,40.0",
]
SIZES = "image_id,dim0,dim1\naaa,500,400\nbbb,500,400\nccc,500,400\n"


def _write(tmp_path, rows):
    (tmp_path / "train.csv").write_text(HEADER + "\n".join(rows) + "\n")
    (tmp_path / "meta.csv").write_text(SIZES)
    return tmp_path / "train.csv", tmp_path / "meta.csv"


def _convert(tmp_path, rows, **kw):
    csv_path, meta = _write(tmp_path, rows)
    return convert_vinbig(
        csv_path, tmp_path / "out", size_table=meta, labels_only=True, annotators="raw", n_folds=2, **kw
    )


BAD_ROWS = [
    ("bbb,Cardiomegaly,3,R3,350.0,200.0,300.0,350.0", "x_max < x_min"),
    ("bbb,Cardiomegaly,3,R3,100.0,200.0,300.0,", "empty or NaN box"),
    ("bbb,Cardiomegaly,3,R3,nan,200.0,300.0,300.0", "empty or NaN box"),
    ("bbb,Cardiomegaly,3,R3,100.0,200.0,450.0,350.0", "outside the 400x500 image"),
    ("bbb,Alien,17,R3,100.0,200.0,300.0,350.0", "unknown class_id 17"),
    ("bbb,Nodule/Mass,3,R3,100.0,200.0,300.0,350.0", "does not match class_id 3"),
    ("aaa,No finding,14,R3,1.0,1.0,2.0,2.0", "'No finding' row with a box"),
]


@pytest.mark.parametrize(("row", "message"), BAD_ROWS)
def test_bad_row_is_named(tmp_path, row, message):
    with pytest.raises(ConversionError) as e:
        _convert(tmp_path, [*GOOD, row])
    text = str(e.value)
    assert message in text and "train.csv, row 7" in text, text
    assert not (tmp_path / "out").exists()  # nothing written


def test_skip_goes_on_and_reports(tmp_path):
    ds = _convert(tmp_path, [*GOOD, BAD_ROWS[0][0]], on_error="skip")
    assert sorted(im["source_id"] for im in ds.images) == ["aaa", "ccc"]  # bbb dropped whole
    with open(tmp_path / "out" / "skipped.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows == [
        {
            "file": str(tmp_path / "train.csv"),
            "row": "7",
            "image_id": "bbb",
            "problem": "x_max < x_min or y_max < y_min: [350.0, 200.0, 300.0, 350.0]",
        }
    ]
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".part")]


def test_missing_columns_and_files(tmp_path):
    (tmp_path / "t.csv").write_text("image_id,class_id\nx,1\n")
    with pytest.raises(ConversionError, match="missing columns"):
        convert_vinbig(tmp_path / "t.csv", tmp_path / "o", labels_only=True, size_table=tmp_path / "t.csv")
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        convert_vinbig(tmp_path / "nope.csv", tmp_path / "o", labels_only=True)
    csv_path, _ = _write(tmp_path, GOOD)
    with pytest.raises(ConversionError, match="needs --size-table"):
        convert_vinbig(csv_path, tmp_path / "o", labels_only=True)


def test_missing_size_table_row(tmp_path):
    csv_path, meta = _write(tmp_path, [*GOOD, "ddd,No finding,14,R1,,,,"])
    with pytest.raises(ConversionError, match="image ddd.*missing from the size table|ddd"):
        convert_vinbig(csv_path, tmp_path / "out", size_table=meta, labels_only=True)


def test_cli_error_exits_non_zero_with_message(tmp_path):
    csv_path, meta = _write(tmp_path, [*GOOD, BAD_ROWS[0][0]])
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "convert",
            "vinbig",
            "--csv",
            str(csv_path),
            "--size-table",
            str(meta),
            "--labels-only",
            "--out",
            str(tmp_path / "out"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "row 7" in r.stderr and "Traceback" not in r.stderr


def _cli_vinbig(csv_path, meta, out) -> list[str]:
    return ["vinbig", "--csv", str(csv_path), "--size-table", str(meta), "--labels-only", "--out", str(out)]


def test_cli_error_is_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    argv = _cli_vinbig(*_write(tmp_path, [*GOOD, BAD_ROWS[0][0], BAD_ROWS[3][0]]), tmp_path / "o")
    assert main(argv) == 2
    captured = capsys.readouterr()
    # the two problems of a multi-line message, on one line
    assert captured.err.count("\n") == 1 and captured.err.startswith("error: 2 problem(s) in the input")
    assert "row 7" in captured.err and "row 8" in captured.err and captured.out == ""
    assert main([*argv, "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "convert.common.ConversionError" in err
    assert err.splitlines()[-1].startswith("error: 2 problem(s)")


def test_cli_missing_input_and_unknown_image_id_are_user_errors(tmp_path, capsys):
    assert main(["summary", str(tmp_path / "nope.json")]) == 2
    assert "nope.json" in capsys.readouterr().err
    out = tmp_path / "o"
    assert main(_cli_vinbig(*_write(tmp_path, GOOD), out)) == 0
    preds = tmp_path / "preds.json"
    preds.write_text('[{"image_id": 999, "category_id": 3, "bbox": [1, 1, 5, 5], "score": 0.5}]')
    sub = tmp_path / "sub.csv"
    rc = main(["submission", "--dataset", str(out / "val.json"), "--preds", str(preds), "--out", str(sub)])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "999" in err and "Traceback" not in err and not sub.exists()


def test_skipped_images_are_a_warning_shown_by_default(tmp_path, capsys):
    out = tmp_path / "o"
    argv = [*_cli_vinbig(*_write(tmp_path, [*GOOD, BAD_ROWS[0][0]]), out), "--on-error", "skip"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert f"skipped 1 image(s); see {out / 'skipped.csv'}" in captured.err
    assert "wrote " in captured.out and "train.json" in captured.out
    assert main([*argv, "-q"]) == 0
    assert capsys.readouterr().err == ""


def test_convert_errors_are_user_errors():
    from convert.dicom import DicomError
    from core.errors import UserError

    assert issubclass(ConversionError, UserError) and issubclass(DicomError, UserError)


def test_cli_help_lists_every_verb():
    r = subprocess.run([sys.executable, "-m", "convert", "--help"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0
    for verb in ("synth", "vinbig", "rsna", "yolo", "submission"):
        assert verb in r.stdout
