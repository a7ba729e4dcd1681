"""Seeded synthetic RAW datasets in the exact VinBigData and RSNA raw formats.

``make_vinbig`` writes ``train.csv`` (the real columns, one row per radiologist
box, "No finding" rows with empty coordinates) and ``train/{image_id}.dicom``
whose headers follow the real mix (MONOCHROME1/2, BitsStored 12/14/16, window
present / absent / multi-valued, rescale present / absent, Implicit VR LE,
Explicit VR LE and JPEG 2000 lossless). ``make_rsna`` writes
``stage_2_train_labels.csv``, ``stage_2_detailed_class_info.csv`` and JPEG
baseline ``stage_2_train_images/{patientId}.dcm``.

Each picture is a chest-like phantom in display space ``d ∈ [0, 1]`` (1 = dense,
bright), drawn from its own seed, with lesions of a distinct high-contrast shape
per class. It is encoded into stored values so that
:func:`convert.dicom.dicom_to_uint8` recovers ``round(255 * d)`` (within ±1;
RSNA's lossy JPEG within a few levels): MONOCHROME1 inverted, window and rescale
undone, quantised to BitsStored; every picture has pixels at d = 0 and d = 1 (two
corner markers) so the decoder's min-max normalisation is the identity.

``synth_truth.json`` (not a raw-format file) records per image the true boxes,
the DICOM parameters and the picture seed; :func:`render_display` re-draws the
picture from such an entry, for tests.

Modules, one job each:

- `convert.synth.phantom`: the chest phantom, the lesion shapes and their placement;
- `convert.synth.dicom_encode`: display values → stored values and DICOM headers
  (photometric, BitsStored, window, rescale, transfer syntax), atomic DICOM writes;
- `convert.synth.vinbig` and `convert.synth.rsna`: the two dataset writers (raw
  layout, label CSVs, ``synth_truth.json``);
- `convert.synth.common`: argument checks and the text/DICOM writing both share.
"""

from __future__ import annotations

from convert.synth.dicom_encode import (
    CR_SOP_CLASS,
    DX_SOP_CLASS,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    JPEG2000_LOSSLESS,
    JPEG_BASELINE,
    DicomVariant,
)
from convert.synth.phantom import paint_lesion, render_display
from convert.synth.rsna import make_rsna
from convert.synth.vinbig import ALL_CLASSES, DEFAULT_CLASSES, VINBIG_VARIANT_CYCLE, make_vinbig

__all__ = [
    "DEFAULT_CLASSES",
    "ALL_CLASSES",
    "DicomVariant",
    "VINBIG_VARIANT_CYCLE",
    "make_vinbig",
    "make_rsna",
    "render_display",
    "paint_lesion",
    "IMPLICIT_VR_LE",
    "EXPLICIT_VR_LE",
    "JPEG2000_LOSSLESS",
    "JPEG_BASELINE",
    "DX_SOP_CLASS",
    "CR_SOP_CLASS",
]
