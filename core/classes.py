"""Class maps of the supported sources (ids as the source defines them)."""

from __future__ import annotations

VINBIG_CLASSES: dict[int, str] = {
    0: "Aortic enlargement",
    1: "Atelectasis",
    2: "Calcification",
    3: "Cardiomegaly",
    4: "Consolidation",
    5: "ILD",
    6: "Infiltration",
    7: "Lung Opacity",
    8: "Nodule/Mass",
    9: "Other lesion",
    10: "Pleural effusion",
    11: "Pleural thickening",
    12: "Pneumothorax",
    13: "Pulmonary fibrosis",
}
VINBIG_NO_FINDING = 14
VINBIG_NO_FINDING_NAME = "No finding"
#: VinBigData's "No finding" (class 14) is not a detection category of our datasets (a normal image has
#: no annotations); the metric, the gate and the submission add it as one whole-image row per image.
NO_FINDING = VINBIG_NO_FINDING
NO_FINDING_NAME = VINBIG_NO_FINDING_NAME
#: the "No finding" row's box, ``xyxy`` absolute pixels (as the Kaggle submission's ``0 0 1 1``).
NO_FINDING_BOX: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)

RSNA_CLASSES: dict[int, str] = {0: "Lung Opacity"}


def coco_categories(classes: dict[int, str]) -> list[dict]:
    """COCO ``categories`` for a class map."""
    return [{"id": cid, "name": name, "supercategory": "lesion"} for cid, name in sorted(classes.items())]
