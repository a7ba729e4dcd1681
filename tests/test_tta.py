"""Horizontal-flip test-time augmentation (adapters.tta): boxes of the flipped pass land back on the
object, the two passes are fused with WBF, and ``predict`` records it in the sidecar.

The detector is a stub behind the common interface that boxes the bright pixels of the image it is
given (so its flipped pass really sees a mirrored image), plus one fixed box at the left edge of
whatever it is shown (which, flipped back, lands on the right: a box only one pass finds).
"""

from __future__ import annotations

import numpy as np
import pytest

import adapters
from adapters.base import AdapterError, read_image_bgr
from adapters.config import ConfigError, parse_config
from adapters.tta import hflip_boxes, predict_tta
from core.boxes import box_iou
from core.coco import CocoDataset
from core.detections import Detections
from core.io import write_png
from core.predictions import read_meta, read_predictions

W, H = 160, 96
TRUTH = np.array([[20.0, 30.0, 70.0, 60.0]], np.float32)  # left of centre: the flip moves it
EDGE = [0.0, 0.0, 12.0, 12.0]


class StubDetector:
    """Boxes the bright pixels (class 1, score 0.9) and adds ``EDGE`` (class 1, score 0.6)."""

    def __init__(self, cfg, weights=None) -> None:
        self.cfg, self.name, self.seen = cfg, cfg.name, []

    def train(self, dataset, out_dir):  # pragma: no cover - not used
        raise NotImplementedError

    def start_weights(self):
        return None

    def check_categories(self, dataset) -> None:
        pass

    def predict(self, images, batch_size: int = 4):
        for im in images:
            arr = read_image_bgr(im)
            self.seen.append(arr)
            ys, xs = np.nonzero(arr[:, :, 0] > 128)
            box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            yield Detections(np.array([box, EDGE], np.float32), np.array([0.9, 0.6]), np.array([1, 1]))


def _image() -> np.ndarray:
    img = np.full((H, W), 30, np.uint8)
    x1, y1, x2, y2 = TRUTH[0].astype(int)
    img[y1:y2, x1:x2] = 230
    img[y1 : y1 + 8, x1 : x1 + 8] = 30  # a notch: the object is not symmetric either
    return img


def _cfg(**predict):
    return parse_config({"name": "stub", "adapter": "stub", "model": "none", "predict": predict})


@pytest.fixture
def stub_registered(monkeypatch):
    monkeypatch.setitem(adapters.ADAPTERS, "stub", f"{__name__}:StubDetector")


def test_hflip_boxes_maps_back_and_is_its_own_inverse():
    b = np.array([[10, 5, 30, 25], [0, 0, 160, 96]], np.float32)
    f = hflip_boxes(b, W)
    np.testing.assert_array_equal(f, [[130, 5, 150, 25], [0, 0, 160, 96]])
    np.testing.assert_array_equal(hflip_boxes(f, W), b)


def test_flipped_pass_lands_back_on_the_object_and_passes_are_fused(stub_registered):
    model = StubDetector(_cfg(tta=["hflip"]))
    (fused,) = list(predict_tta(model, [_image()], batch_size=2, modes=["hflip"], iou_thr=0.55))
    plain, flipped = model.seen
    np.testing.assert_array_equal(flipped, plain[:, ::-1])  # the model was shown the mirror image
    # the flipped pass's object box, flipped back, is on the object
    flip_dets = list(StubDetector(_cfg()).predict([flipped]))[0]
    back = hflip_boxes(flip_dets.boxes[:1], W)
    assert box_iou(back, TRUTH)[0, 0] > 0.9
    assert box_iou(back, flip_dets.boxes[:1])[0, 0] < 0.5  # and it had moved: the test sees the flip
    # fused: the object found by both passes keeps its score; each edge box, found by one pass, half
    assert len(fused) == 3
    order = np.argsort(-fused.scores)
    boxes, scores = fused.boxes[order], fused.scores[order]
    assert box_iou(boxes[:1], TRUTH)[0, 0] > 0.9 and scores[0] == pytest.approx(0.9)
    np.testing.assert_allclose(scores[1:], [0.3, 0.3], atol=1e-6)
    edges = sorted(boxes[1:].tolist())
    np.testing.assert_allclose(edges, [EDGE, [W - 12.0, 0.0, W, 12.0]], atol=1e-4)
    assert (fused.labels == 1).all()


def test_without_modes_the_model_predicts_as_it_is(stub_registered):
    model = StubDetector(_cfg())
    (d,) = list(predict_tta(model, [_image()], batch_size=1, modes=[]))
    assert len(model.seen) == 1 and len(d) == 2
    with pytest.raises(AdapterError, match="unknown test-time augmentation 'vflip'"):
        list(predict_tta(model, [_image()], 1, modes=["vflip"]))


def test_config_and_predict_record_tta(stub_registered, tmp_path):
    with pytest.raises(ConfigError, match="predict.tta"):
        _cfg(tta=["vflip"])
    with pytest.raises(ConfigError, match="predict.tta_iou"):
        _cfg(tta=["hflip"], tta_iou=1.5)
    assert _cfg().predict.tta == [] and _cfg(tta=["hflip"]).to_dict()["predict"]["tta"] == ["hflip"]
    write_png(tmp_path / "a.png", _image())
    ds = CocoDataset(
        [{"id": 1, "file_name": "a.png", "width": W, "height": H}], [], [{"id": 1, "name": "thing"}], root=tmp_path
    ).write(tmp_path / "ds.json")
    out = adapters.predict(_cfg(), "none", ds, tmp_path / "p.json", tta=["hflip"])
    meta = read_meta(out)
    assert meta["tta"] == {"modes": ["hflip"], "fusion": "wbf", "iou_thr": 0.55}
    dets = read_predictions(out, CocoDataset.load(ds))[1]
    assert len(dets) == 3
    np.testing.assert_allclose(sorted(dets.scores.tolist()), [0.3, 0.3, 0.9], atol=1e-6)
    plain = adapters.predict(_cfg(), "none", ds, tmp_path / "q.json")
    assert read_meta(plain)["tta"] is None and len(read_predictions(plain, CocoDataset.load(ds))[1]) == 2
    via_config = adapters.predict(_cfg(tta=["hflip"], tta_iou=0.5), "none", ds, tmp_path / "r.json")
    assert read_meta(via_config)["tta"]["iou_thr"] == 0.5


def test_cli_takes_tta_flag():
    from adapters.__main__ import build_parser

    args = build_parser().parse_args(
        ["predict", "c.yaml", "--weights", "w", "--dataset", "d", "--out", "o", "--tta", "hflip"]
    )
    assert args.tta == ["hflip"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["predict", "c.yaml", "--weights", "w", "--dataset", "d", "--out", "o", "--tta", "x"])


def test_tta_of_a_gate_is_refused(tmp_path):
    cfg = parse_config({"name": "g", "adapter": "resnet_gate", "model": "resnet18", "predict": {"tta": ["hflip"]}})
    write_png(tmp_path / "a.png", _image())
    ds = CocoDataset(
        [{"id": 1, "file_name": "a.png", "width": W, "height": H}], [], [{"id": 1, "name": "thing"}], root=tmp_path
    ).write(tmp_path / "ds.json")
    with pytest.raises(AdapterError, match=r"test-time augmentation \(hflip\) is for detectors"):
        adapters.predict(cfg, tmp_path / "missing.pth", ds, tmp_path / "g.json")

