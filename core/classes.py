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

RSNA_CLASSES: dict[int, str] = {0: "Lung Opacity"}


def coco_categories(classes: dict[int, str]) -> list[dict]:
    """COCO ``categories`` for a class map."""
    return [{"id": cid, "name": name, "supercategory": "lesion"} for cid, name in sorted(classes.items())]
