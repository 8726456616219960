"""The Structured Report cxr-assist returns into the study: TID 1500, IHE AI Results (AIR) style, built with highdicom.

One film gives one Comprehensive 3D SR document (docs/use/pacs.md shows its content tree):

- the Measurement Report (TID 1500) of a plain chest X-ray, observed by the cxr-assist device, with the source film
  in its image library;
- a triage measurement group (TID 1501): the triage as a qualitative evaluation whose value's meaning is exactly
  ``abnormal``, ``no finding likely`` or ``not assessed``, the probability of any of the 14 findings (UCUM ``1``),
  the algorithm (TID 4019: name, version, the bundle), "not for clinical use" as a comment and, for a film not
  assessed, the reason as text;
- for an assessed film, one group per finding (FINDINGS order): its calibrated probability and, when flagged at the
  bundle's operating point, the qualitative evaluation "flagged".

UIDs are derived from the source instance and the bundle (:func:`result_uids`), so sending the same result again
replaces it in the PACS instead of adding a second copy. :func:`read_sr` reads such an SR back (e.g. from a PACS).
"""

from __future__ import annotations

import copy
import math
import re
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import highdicom as hd
import pydicom
from highdicom.coding_schemes import CodingSchemeIdentificationItem  # not re-exported by highdicom's package
from highdicom.sr import (
    AlgorithmIdentification,
    CodedConcept,
    Comprehensive3DSR,
    DeviceObserverIdentifyingAttributes,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    QualitativeEvaluation,
    SourceImageForMeasurementGroup,
    TextContentItem,
    TrackingIdentifier,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as pydicom_codes

from cxr_core import __version__
from cxr_core.evaluation.triage import NOT_ASSESSED
from cxr_core.findings import DISPLAY_NAMES, FINDINGS
from cxr_core.pacs import codes
from cxr_core.pacs.assessment import Assessment

__all__ = [
    "MANUFACTURER", "NOT_FOR_CLINICAL_USE", "SR_SERIES_DESCRIPTION", "SR_SERIES_NUMBER", "SC_SERIES_NUMBER",
    "ResultError", "ResultUIDs", "AlgorithmInfo", "SRSummary", "result_uids", "clean_source", "build_sr", "read_sr",
    "private_coding_scheme", "instance_number", "result_uid",
]

MANUFACTURER = "cxr-assist"
#: What every result says about itself (the SR as a comment, the capture burned in).
NOT_FOR_CLINICAL_USE = (
    "NOT FOR CLINICAL USE. Research software: cxr-assist's calibrated probabilities and flags are model outputs "
    "trained and validated on text-mined NIH ChestX-ray14 labels, not radiologists' reads; they must not guide "
    "patient care."
)
SR_SERIES_DESCRIPTION = "cxr-assist AI results (not for clinical use)"
#: One results series per study and kind; high numbers keep them after the modality's own series in a viewer.
SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902

# Names the UIDs of cxr-assist's results (a name-based RFC 4122 UUID, DICOM's "2.25." form, PS3.5 B.2).
_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_DNS, "results.cxr-assist")
_REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


class ResultError(ValueError):
    """A source the results cannot be built for (the message says why), or an SR that is not cxr-assist's."""


@dataclass(frozen=True, kw_only=True)
class AlgorithmInfo:
    """The algorithm an SR names (TID 4019).

    Attributes:
        name: the algorithm's name, ``cxr-assist``.
        version: cxr-assist's version (``cxr_core.__version__``).
        bundle_name: the model bundle's name (its folder name, e.g. ``default``).
        bundle_digest: the bundle's content digest (e.g. a SHA-256); it names the results' UIDs.
    """

    bundle_name: str
    bundle_digest: str
    name: str = "cxr-assist"
    version: str = __version__


@dataclass(frozen=True)
class ResultUIDs:
    """The UIDs of one film's results: the same film and bundle always give the same UIDs."""

    sr_sop_instance_uid: str
    sc_sop_instance_uid: str
    sr_series_instance_uid: str
    sc_series_instance_uid: str


@dataclass(frozen=True)
class SRSummary:
    """What an SR written by :func:`build_sr` says, read back by :func:`read_sr`.

    Attributes:
        triage: ``abnormal``, ``no finding likely`` or ``not assessed``.
        triage_probability: probability of any of the 14 findings; None when not assessed.
        probabilities: {finding (FINDINGS spelling): calibrated probability}, FINDINGS order; empty when not assessed.
        flagged: the flagged findings, most probable first.
        reason: why the film is not assessed; None when assessed.
        source_sop_instance_uid: the film the results are about.
        algorithm_name, algorithm_version, bundle_name, bundle_digest, operating_point: the algorithm (TID 4019).
    """

    triage: str
    triage_probability: float | None
    probabilities: Mapping[str, float] = field(default_factory=dict)
    flagged: tuple[str, ...] = ()
    reason: str | None = None
    source_sop_instance_uid: str | None = None
    algorithm_name: str | None = None
    algorithm_version: str | None = None
    bundle_name: str | None = None
    bundle_digest: str | None = None
    operating_point: str | None = None


def result_uid(*parts: str) -> str:
    """A UID named by ``parts`` (``2.25.`` + a name-based UUID): the same parts always give the same UID.

    pydicom's ``generate_uid(prefix=None)`` ignores its entropy sources (a random UUID), hence this form.
    """
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, chr(31).join(str(p) for p in parts)).int}"


def _source_uid(source: Dataset, keyword: str) -> str:
    value = str(source.get(keyword, "") or "").strip()
    if not value or len(value) > 64 or not re.fullmatch(r"[0-9]+(\.[0-9]+)*", value):
        raise ResultError(f"the source has no valid {keyword} ({value!r}): its results cannot be placed in its study")
    return value


def result_uids(source: Dataset, *, bundle_digest: str) -> ResultUIDs:
    """The UIDs of a film's SR and Secondary Capture and of their series.

    Instances are named by the source's Study and SOP Instance UIDs and the bundle: sending the same result again
    replaces the stored one. The series are named by the study alone: one SR series and one capture series per study.

    Args:
        source: the film's dataset (its UIDs are read, nothing else).
        bundle_digest: the model bundle's digest (results of another bundle are other objects).

    Raises:
        ResultError: the source lacks a valid StudyInstanceUID or SOPInstanceUID.
    """
    if not str(bundle_digest or "").strip():
        raise ResultError("bundle_digest is empty: the results' UIDs must name the bundle")
    study = _source_uid(source, "StudyInstanceUID")
    instance = _source_uid(source, "SOPInstanceUID")
    return ResultUIDs(
        sr_sop_instance_uid=result_uid("sr", study, instance, bundle_digest),
        sc_sop_instance_uid=result_uid("sc", study, instance, bundle_digest),
        sr_series_instance_uid=result_uid("sr-series", study),
        sc_series_instance_uid=result_uid("sc-series", study),
    )


# The Patient and Study attributes highdicom copies into a result (Patient, General Study, Patient Study modules),
# with their types: Type 2 must be present (empty when unknown), Type 3 may go.
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "AccessionNumber",
          "ReferringPhysicianName", "StudyID")
_TYPE3 = ("PatientBirthTime", "OtherPatientNames", "PatientComments", "IssuerOfPatientID", "StudyDescription",
          "ConsultingPhysicianName", "PhysiciansOfRecord", "NameOfPhysiciansReadingStudy", "RequestingService",
          "AdmittingDiagnosesDescription", "PatientAge", "PatientSize", "PatientWeight", "MedicalAlerts", "Allergies",
          "Occupation", "SmokingStatus", "AdditionalPatientHistory", "PregnancyStatus", "LastMenstrualDate",
          "ReasonForVisit", "AdmissionID", "ServiceEpisodeID", "ServiceEpisodeDescription", "PatientState",
          "PatientBodyMassIndex", "MeasuredAPDimension", "MeasuredLateralDimension")
_PATIENT_SEX = {"M", "F", "O"}


def _valid(element) -> bool:
    values = element.value if element.VM > 1 else [element.value]
    for value in values:
        if value in (None, ""):
            continue
        try:
            pydicom.valuerep.validate_value(element.VR, value, pydicom.config.RAISE)
        except (ValueError, TypeError):
            return False
    return True


def _age(value) -> str | None:
    """A DICOM age string ("062Y") from a valid one or a bare number of years ("62": NIH's files give years)."""
    text = str(value or "").strip().upper()
    if re.fullmatch(r"\d{3}[DWMY]", text):
        return text
    if re.fullmatch(r"\d{1,3}", text):
        return f"{int(text):03d}Y"
    return None


def clean_source(source: Dataset) -> Dataset:
    """A copy of a film's dataset whose patient and study attributes a result may copy: valid, Type 2 present.

    Real files carry what a validator rejects and highdicom would copy into the result: an age without its unit
    (``PatientAge`` "62", read as years as NIH gives ages, becomes "062Y"; an age that cannot be read is removed),
    a sex outside M/F/O or a malformed date (emptied), and no Type 2 attributes at all (added empty: patient's
    name, ID, birth date and sex, study date and time, accession number, referring physician, study ID). Valid
    values are kept as they are. The caller's dataset is never modified.

    Args:
        source: the film as received.

    Returns:
        a new Dataset (the pixel data included).
    """
    clean = copy.deepcopy(source)
    for keyword in _TYPE2:
        if keyword not in clean:
            setattr(clean, keyword, "")
    if "PatientAge" in clean:
        age = _age(clean.PatientAge)
        if age is None:
            del clean.PatientAge
        else:
            clean.PatientAge = age
    if str(clean.get("PatientSex", "") or "").strip().upper() not in _PATIENT_SEX:
        clean.PatientSex = ""
    else:
        clean.PatientSex = str(clean.PatientSex).strip().upper()
    for keyword in (*_TYPE2, *_TYPE3):
        if keyword in clean and not _valid(clean[keyword]):
            if keyword in _TYPE2:
                setattr(clean, keyword, "")
            else:
                delattr(clean, keyword)
    return clean


def _check_source(source: Dataset) -> None:
    for keyword in _REQUIRED_UIDS:
        _source_uid(source, keyword)


def instance_number(source: Dataset) -> int:
    """The result's Instance Number: the source's (results sort like their films), else 1."""
    try:
        number = int(str(source.get("InstanceNumber", "") or "").strip())
    except ValueError:
        return 1
    return number if 1 <= number < 2**31 else 1


def private_coding_scheme() -> CodingSchemeIdentificationItem:
    """The declaration of the private ``99CXRASSIST`` codes (Coding Scheme Identification Sequence)."""
    return CodingSchemeIdentificationItem(
        designator=codes.PRIVATE_SCHEME, name=codes.PRIVATE_SCHEME_NAME, responsible_organization=MANUFACTURER)


def _library_view(source: Dataset) -> Dataset | None:
    """What the image library may say about the film: SOP class and instance, size, and the acquisition
    descriptors highdicom adds only when the film carries them (a projection's patient orientation and imager
    pixel spacing; a slice's position and orientation). None when highdicom cannot list the film at all."""
    if "Rows" not in source or "Columns" not in source:
        return None
    view = Dataset()
    for keyword in ("SOPClassUID", "SOPInstanceUID", "Rows", "Columns", "FrameOfReferenceUID"):
        if keyword in source:
            setattr(view, keyword, source[keyword].value)
    modality = str(source.get("Modality", "") or "")
    projection = ("PatientOrientation", "ImagerPixelSpacing")
    slice_ = ("PixelSpacing", "ImageOrientationPatient", "ImagePositionPatient", "SliceThickness")
    needed = projection if modality in {"CR", "DX", "IO", "MG", "PX", "RF", "RG", "XA"} else (
        slice_ if modality in {"CT", "MR", "PT"} else ())
    if needed and all(k in source and source[k].VM >= (1 if k == "SliceThickness" else 2) for k in needed):
        for keyword in needed:
            setattr(view, keyword, source[keyword].value)
    else:
        # Without them highdicom would fail; an empty modality asks it for the SOP class's coded modality and size only.
        modality = ""
    view.Modality = modality
    try:
        hd.sr.ImageLibrary([view])
    except (ValueError, KeyError, AttributeError, TypeError):
        return None  # not an image storage class highdicom knows: the film stays referenced as evidence
    return view


def _parameters(algorithm: AlgorithmInfo, assessment: Assessment) -> list[str]:
    return [f"bundle={algorithm.bundle_name}", f"bundle_digest={algorithm.bundle_digest}",
            f"operating_point={assessment.operating_point}"]


def _text(name: CodedConcept, value: str) -> TextContentItem:
    return TextContentItem(name=name, value=value, relationship_type="CONTAINS")


def _group(*, label: str, tracking_uid: str, finding: CodedConcept, algorithm_id: AlgorithmIdentification,
           source: Dataset, measurements: list[Measurement], evaluations: list[QualitativeEvaluation],
           texts: list[TextContentItem] = ()) -> MeasurementsAndQualitativeEvaluations:
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=tracking_uid, identifier=label),
        finding_type=finding,
        algorithm_id=algorithm_id,
        measurements=measurements or None,
        qualitative_evaluations=evaluations or None,
        source_images=[SourceImageForMeasurementGroup(referenced_sop_class_uid=source.SOPClassUID,
                                                      referenced_sop_instance_uid=source.SOPInstanceUID)],
    )
    # TEXT evaluations (the reason, the comment) beside the coded ones: TID 1501 allows them, highdicom's
    # constructor takes codes only, so they are appended to the group's container as highdicom content items.
    group[0].ContentSequence.extend(texts)
    return group


def _probability(value: float) -> Measurement:
    if not math.isfinite(float(value)) or not 0.0 <= float(value) <= 1.0:
        raise ResultError(f"a probability must be in [0, 1], got {value!r}")
    return Measurement(name=codes.PROBABILITY, value=float(value), unit=codes.UNIT_ONE)


def build_sr(source: Dataset, assessment: Assessment, *, algorithm: AlgorithmInfo, uids: ResultUIDs) -> Comprehensive3DSR:
    """The TID 1500 Structured Report of one film's assessment, in the film's study.

    Args:
        source: the film's dataset as received (it is not modified; see :func:`clean_source`).
        assessment: what cxr-assist says about the film (assessed or not assessed, with the reason).
        algorithm: the algorithm and bundle the SR names (TID 4019).
        uids: from :func:`result_uids` (the SR's SOP Instance and Series UIDs are used).

    Returns:
        a highdicom ``Comprehensive3DSR`` (a pydicom Dataset; ``dcmwrite`` it or send it).

    Raises:
        ResultError: the source lacks the UIDs that place a result in its study.
    """
    _check_source(source)
    clean = clean_source(source)
    algorithm_id = AlgorithmIdentification(name=algorithm.name, version=algorithm.version,
                                           parameters=_parameters(algorithm, assessment), manufacturer=MANUFACTURER)
    sr_uid = uids.sr_sop_instance_uid
    texts = [_text(codes.COMMENT, NOT_FOR_CLINICAL_USE)]
    if not assessment.assessed:
        texts.append(_text(codes.REASON_NOT_ASSESSED, str(assessment.reason)))
    texts.extend(_text(codes.COMMENT, f"Note: {note}") for note in assessment.notes)
    groups = [_group(
        label="cxr-assist triage", tracking_uid=result_uid(sr_uid, "triage"), finding=codes.ANY_FINDING,
        algorithm_id=algorithm_id, source=clean,
        measurements=[_probability(assessment.triage_probability)] if assessment.assessed else [],
        evaluations=[QualitativeEvaluation(codes.TRIAGE, codes.TRIAGE_CODES[assessment.triage])],
        texts=texts,
    )]
    if assessment.assessed:
        flagged = set(assessment.flagged)
        for finding, probability in assessment.probabilities.items():
            groups.append(_group(
                label=f"cxr-assist {DISPLAY_NAMES[finding]}", tracking_uid=result_uid(sr_uid, finding),
                finding=codes.finding_code(finding), algorithm_id=algorithm_id, source=clean,
                measurements=[_probability(probability)],
                evaluations=[QualitativeEvaluation(codes.FLAG, codes.FLAGGED)] if finding in flagged else [],
            ))
    device = ObserverContext(
        observer_type=pydicom_codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=result_uid("device", algorithm.name), name=algorithm.name, manufacturer_name=MANUFACTURER,
            model_name=f"{algorithm.name} {algorithm.version}"),
    )
    library = _library_view(clean)
    report = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=device),
        procedure_reported=codes.PROCEDURE_CHEST_XRAY,
        imaging_measurements=groups,
        title=codes.REPORT_TITLE,
        referenced_images=[library] if library is not None else None,
    )
    return Comprehensive3DSR(
        evidence=[clean],
        content=report,
        series_instance_uid=uids.sr_series_instance_uid,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=sr_uid,
        instance_number=instance_number(clean),
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,  # PRELIMINARY: a model's output no one accountable has verified
        is_verified=False,
        series_description=SR_SERIES_DESCRIPTION,
        manufacturer_model_name=algorithm.name,
        software_versions=algorithm.version,
        coding_schemes=[private_coding_scheme()],
    )


# --- reading an SR back ------------------------------------------------------------------------------------------


def _items(dataset) -> Iterator[Dataset]:
    yield from dataset.get("ContentSequence", []) or []


def _name(item: Dataset) -> tuple[str, str]:
    names = item.get("ConceptNameCodeSequence") or []
    return codes.code_key(names[0]) if names else ("", "")


def _key(concept) -> tuple[str, str]:
    return codes.code_key(concept)


_ALGORITHM_NAME, _ALGORITHM_VERSION, _ALGORITHM_PARAMETERS = ("DCM", "111001"), ("DCM", "111003"), ("DCM", "111002")


def _numeric(item: Dataset) -> float:
    measured = item.MeasuredValueSequence[0]
    if "FloatingPointValue" in measured:
        return float(measured.FloatingPointValue)
    return float(measured.NumericValue)


def _read_group(group: Dataset) -> dict:
    out: dict = {"finding": None, "probability": None, "triage": None, "flagged": False, "reason": None,
                 "algorithm": {}, "source": None}
    for item in _items(group):
        name, kind = _name(item), item.get("ValueType", "")
        if kind == "CODE" and name == _key(codes.FINDING):
            out["finding"] = _key(item.ConceptCodeSequence[0])
        elif kind == "NUM" and name == _key(codes.PROBABILITY) and item.get("MeasuredValueSequence"):
            out["probability"] = _numeric(item)
        elif kind == "CODE" and name == _key(codes.TRIAGE):
            value = _key(item.ConceptCodeSequence[0])
            if value not in codes.TRIAGE_BY_CODE:
                raise ResultError(f"unknown triage code {value} in the SR")
            out["triage"] = codes.TRIAGE_BY_CODE[value]
        elif kind == "CODE" and name == _key(codes.FLAG):
            out["flagged"] = _key(item.ConceptCodeSequence[0]) == _key(codes.FLAGGED)
        elif kind == "TEXT" and name == _key(codes.REASON_NOT_ASSESSED):
            out["reason"] = str(item.TextValue)
        elif kind == "TEXT" and name == _ALGORITHM_NAME:
            out["algorithm"]["name"] = str(item.TextValue)
        elif kind == "TEXT" and name == _ALGORITHM_VERSION:
            out["algorithm"]["version"] = str(item.TextValue)
        elif kind == "TEXT" and name == _ALGORITHM_PARAMETERS:
            key, _, value = str(item.TextValue).partition("=")
            out["algorithm"][key] = value
        elif kind == "IMAGE" and item.get("ReferencedSOPSequence"):
            out["source"] = str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
    return out


def read_sr(dataset: Dataset) -> SRSummary:
    """Read back an SR written by :func:`build_sr` (e.g. one retrieved from a PACS).

    Args:
        dataset: the SR document (a pydicom Dataset, as read by ``dcmread``).

    Returns:
        the triage, the probabilities, the flags, the reason and the algorithm it states.

    Raises:
        ResultError: the dataset is not an SR with cxr-assist's triage group.
    """
    measurements = [item for item in _items(dataset)
                    if item.get("ValueType") == "CONTAINER" and _name(item) == ("DCM", "126010")]
    if not measurements:
        raise ResultError("not a TID 1500 measurement report: no Imaging Measurements container")
    groups = [_read_group(item) for item in _items(measurements[0])
              if item.get("ValueType") == "CONTAINER" and _name(item) == ("DCM", "125007")]
    triage_groups = [g for g in groups if g["finding"] == _key(codes.ANY_FINDING) and g["triage"] is not None]
    if len(triage_groups) != 1:
        raise ResultError(f"not a cxr-assist SR: {len(triage_groups)} triage groups (expected 1)")
    triage = triage_groups[0]
    probabilities: dict[str, float] = {}
    for group in groups:
        if group["finding"] in codes.FINDING_BY_CODE and group["probability"] is not None:
            probabilities[codes.FINDING_BY_CODE[group["finding"]]] = group["probability"]
    ordered = {f: probabilities[f] for f in FINDINGS if f in probabilities}
    flagged = [codes.FINDING_BY_CODE[g["finding"]] for g in groups if g["flagged"] and g["finding"] in codes.FINDING_BY_CODE]
    flagged.sort(key=lambda f: (-ordered.get(f, 0.0), FINDINGS.index(f)))
    if triage["triage"] != NOT_ASSESSED and len(ordered) != len(FINDINGS):
        raise ResultError(f"an assessed SR needs the 14 findings' probabilities, found {len(ordered)}")
    algorithm = triage["algorithm"]
    return SRSummary(
        triage=triage["triage"],
        triage_probability=triage["probability"],
        probabilities=ordered,
        flagged=tuple(flagged),
        reason=triage["reason"],
        source_sop_instance_uid=triage["source"],
        algorithm_name=algorithm.get("name"),
        algorithm_version=algorithm.get("version"),
        bundle_name=algorithm.get("bundle"),
        bundle_digest=algorithm.get("bundle_digest"),
        operating_point=algorithm.get("operating_point"),
    )
