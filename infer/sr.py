"""DICOM Structured Reports of the fused boxes (`write_report`), written with ``highdicom``.

One Comprehensive 3D SR document per DICOM input, holding a TID 1500 Measurement Report:

- one TID 1410 "Planar ROI Measurements and Qualitative Evaluations" group per box, its
  *Finding* (``finding_type``) the box's class as a coded concept (`FINDING_CODES`), its region a
  closed ``POLYLINE`` SCOORD of five points (the box's corners clockwise from ``x1, y1``, the first
  repeated last) in pixel coordinates of the source image (DICOM's convention: ``0, 0`` is the top
  left corner of the top left pixel, the box edges as the Kaggle format gives them; to 0.01 pixel,
  as in ``predictions.json``), selected from
  the source image (its SOP class and instance UIDs);
- the score as a measurement of that group: *Certainty of Finding* (DCM 111012), in percent
  (UCUM ``%``): ``100 * score``;
- "No finding" (the gate's P(normal), class 14), when the fusion adds it, as one image-level
  TID 1501 group: finding *No finding* (`NO_FINDING_CODE`) with its Certainty of Finding;
- the algorithm (TID 4019): ``CXRFuse ensemble``, the CXRFuse version and the fusion's name.

The report takes its patient and study from the source image (the same Study Instance UID; type-2
attributes the source lacks are written empty) and lists the image as evidence (its study, series
and SOP instance UIDs). Each report gets its own SOP Instance UID, in one series per study per
`ReportWriter`.

Codes: SNOMED CT (``SCT``) and DICOM (``DCM``) where pydicom's code dictionary
(``pydicom.sr.codedict.codes``) has a concept that is the class itself; the others are in the
private coding scheme ``99CXRFUSE`` (codes ``CXRF000`` + class id), which each report declares in its
Coding Scheme Identification Sequence.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.classes import NO_FINDING, VINBIG_CLASSES
from core.detections import Detections
from core.io import atomic_open

PRIVATE_SCHEME = "99CXRFUSE"
PRIVATE_SCHEME_NAME = "CXRFuse VinBigData chest X-ray findings"
#: Series Number of the reports' series
SERIES_NUMBER = 990
SERIES_DESCRIPTION = "CXRFuse findings"

#: VinBigData class id → (code value, scheme, meaning); real schemes where pydicom's dictionary has the concept
_CODES: dict[int, tuple[str, str, str]] = {
    0: ("CXRF0000", PRIVATE_SCHEME, "Aortic enlargement"),
    1: ("CXRF0001", PRIVATE_SCHEME, "Atelectasis"),
    2: ("CXRF0002", PRIVATE_SCHEME, "Calcification"),
    3: ("287272002", "SCT", "Cardiomegaly"),  # codes.SCT.Cardiomegaly
    4: ("CXRF0004", PRIVATE_SCHEME, "Consolidation"),
    5: ("CXRF0005", PRIVATE_SCHEME, "Interstitial lung disease"),
    6: ("112121", "DCM", "Infiltrate"),  # codes.DCM.Infiltrate (CID 6102, chest CAD findings)
    7: ("112001", "DCM", "Opacity"),  # codes.DCM.Opacity
    8: ("CXRF0008", PRIVATE_SCHEME, "Nodule/Mass"),
    9: ("CXRF0009", PRIVATE_SCHEME, "Other lesion"),
    10: ("60046008", "SCT", "Pleural effusion"),  # codes.SCT.PleuralEffusion
    11: ("CXRF0011", PRIVATE_SCHEME, "Pleural thickening"),
    12: ("36118008", "SCT", "Pneumothorax"),  # codes.SCT.Pneumothorax
    13: ("CXRF0013", PRIVATE_SCHEME, "Pulmonary fibrosis"),
}
_NO_FINDING = ("CXRF0014", PRIVATE_SCHEME, "No finding")


def _code(spec: tuple[str, str, str]) -> Any:
    from pydicom.sr.coding import Code

    value, scheme, meaning = spec
    return Code(value, scheme, meaning)


def finding_code(class_id: int, classes: Mapping[int, str]) -> Any:
    """The coded concept of a class: `FINDING_CODES` for VinBigData's classes, else a private code.

    A class of another class list (e.g. RSNA's) gets ``CXRF1`` + its id in ``99CXRFUSE``, meaning its name.
    """
    name = classes.get(class_id, str(class_id))
    if class_id in _CODES and VINBIG_CLASSES.get(class_id) == name:
        return _code(_CODES[class_id])
    return _code((f"CXRF1{class_id:03d}", PRIVATE_SCHEME, name))


#: the coded concepts of VinBigData's 14 findings, by class id (see the module docstring)
FINDING_CODES = {c: _code(spec) for c, spec in _CODES.items()}
NO_FINDING_CODE = _code(_NO_FINDING)

#: UID-bearing attributes a source image needs to be referenced
_REQUIRED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
#: type-2 patient and study attributes an SR copies from its source, written empty where the source lacks them
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
          "StudyDate", "StudyTime", "ReferringPhysicianName")  # fmt: skip


def polyline(box: np.ndarray, decimals: int = 2) -> np.ndarray:
    """The closed polyline of an ``xyxy`` box: ``(5, 2)`` ``(column, row)`` points, the first repeated last.

    Coordinates are rounded to ``decimals`` (those of ``predictions.json``).
    """
    x1, y1, x2, y2 = (round(float(v), decimals) for v in box)
    return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]], dtype=np.float64)


@dataclass
class ReportWriter:
    """Writes the reports of one run: one series per study, instance numbers counting up in it.

    Attributes:
        classes: ``category id → name`` of the boxes.
        algorithm: the name recorded as the algorithm.
        version: its version (CXRFuse's).
        parameters: recorded with the algorithm (e.g. the fusion's name).
        min_score: boxes scoring below this are left out.
    """

    classes: Mapping[int, str]
    algorithm: str = "CXRFuse ensemble"
    version: str = "unknown"
    parameters: tuple[str, ...] = ()
    min_score: float = 0.0
    _series: dict[str, tuple[str, int]] = field(default_factory=dict)

    def write(self, path: str | Path, header: Any, dets: Detections) -> Path:
        """Write the report of ``dets`` (original pixels of the image of ``header``) to ``path``, atomically.

        Args:
            path: the ``.dcm`` file to write.
            header: the source DICOM's dataset (pixel data not needed).
            dets: the image's detections in its original pixels; class 14 rows ("No finding") become
                the image-level group, the others one group each.

        Raises:
            ValueError: the source lacks a UID it must be referenced by (naming it), or highdicom
                refuses the content.
        """
        import highdicom as hd
        from pydicom.sr.codedict import codes

        missing = [k for k in _REQUIRED if not str(header.get(k, "") or "")]
        if missing:
            raise ValueError(f"the source DICOM has no {', '.join(missing)}: cannot reference it")
        source = copy.deepcopy(header)
        for key in _TYPE2:
            if key not in source:
                setattr(source, key, None)
        src_ref = hd.sr.SourceImageForRegion.from_source_image(source)
        algorithm = hd.sr.AlgorithmIdentification(
            name=self.algorithm, version=self.version, parameters=list(self.parameters) or None
        )
        score_concept = codes.DCM.CertaintyOfFinding
        percent = codes.UCUM.Percent
        groups = []
        keep = (dets.labels != NO_FINDING) & (dets.scores >= self.min_score)
        for k in np.flatnonzero(keep):
            c, s = int(dets.labels[k]), float(dets.scores[k])
            region = hd.sr.ImageRegion(
                graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                graphic_data=polyline(dets.boxes[k]),
                source_image=src_ref,
            )
            groups.append(
                hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                    tracking_identifier=hd.sr.TrackingIdentifier(
                        uid=hd.UID(), identifier=f"finding {len(groups) + 1}: {self.classes.get(c, c)}"
                    ),
                    referenced_region=region,
                    finding_type=finding_code(c, self.classes),
                    algorithm_id=algorithm,
                    measurements=[
                        hd.sr.Measurement(name=score_concept, value=round(100.0 * s, 4), unit=percent)
                    ],
                )
            )
        derived = []
        nf = np.flatnonzero(dets.labels == NO_FINDING)
        if len(nf):
            s = float(dets.scores[nf[0]])
            derived.append(
                hd.sr.MeasurementsAndQualitativeEvaluations(
                    tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="no finding"),
                    source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
                    finding_type=NO_FINDING_CODE,
                    algorithm_id=algorithm,
                    measurements=[
                        hd.sr.Measurement(name=score_concept, value=round(100.0 * s, 4), unit=percent)
                    ],
                )
            )
        observer = hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=hd.UID(), name=self.algorithm, model_name=self.version
            ),
        )
        report = hd.sr.MeasurementReport(
            observation_context=hd.sr.ObservationContext(observer_device_context=observer),
            procedure_reported=codes.SCT.ChestImaging,
            imaging_measurements=[*groups, *derived] or None,
        )
        study = str(source.StudyInstanceUID)
        series_uid, number = self._series.get(study, (str(hd.UID()), 0))
        self._series[study] = (series_uid, number + 1)
        doc = hd.sr.Comprehensive3DSR(
            evidence=[source],
            content=report[0],
            series_instance_uid=series_uid,
            series_number=SERIES_NUMBER,
            sop_instance_uid=hd.UID(),
            instance_number=number + 1,
            manufacturer="CXRFuse",
            series_description=SERIES_DESCRIPTION,
        )
        _declare_private_scheme(doc)
        path = Path(path)
        with atomic_open(path, "wb") as f:
            doc.save_as(f, enforce_file_format=True)
        return path


def _declare_private_scheme(doc: Any) -> None:
    """Name the private coding scheme in the Coding Scheme Identification Sequence (PS3.3 C.12.1.1.6)."""
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodingSchemeDesignator = PRIVATE_SCHEME
    item.CodingSchemeName = PRIVATE_SCHEME_NAME
    item.CodingSchemeResponsibleOrganization = "CXRFuse"
    doc.CodingSchemeIdentificationSequence = [item]
