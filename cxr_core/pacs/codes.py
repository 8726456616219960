"""The coded concepts of cxr-assist's DICOM results: the 14 findings, the triage, the flag, the probability.

Every code here was looked up, not guessed (docs/use/pacs.md lists the sources):

- DICOM PS3.16 first (its SNOMED CT "SCT" and DICOM "DCM" codes, as pydicom's PS3.16 concept dictionary and the
  DICOM context group tables carry them): Cardiomegaly (CID 12248), Pleural effusion, Mass, Nodule and Infiltrate
  (CID 6104 "Abnormal Opacity Finding or Feature"), Pneumothorax (CID 6105), Pulmonary edema, Abnormal, Finding,
  Probability, Comment, Imaging Measurement Report, the UCUM unit "1";
- SNOMED CT codes that PS3.16 does not list, each found with the same meaning in independent public terminology
  maps (OHDSI concept sets, FHIR ConceptMaps checked against a SNOMED International release, SNOMED ECL texts):
  Atelectasis, Pneumonia, Lung consolidation, Pulmonary emphysema, Fibrosis of lung, Hernia, Plain chest X-ray;
- Infiltration has no SNOMED CT code we could verify; DICOM's own chest-finding code (DCM 112121 "Infiltrate",
  the word NIH's BBox_List_2017.csv uses) is used, which is standard and preferable to a private one;
- Pleural thickening: neither a SNOMED CT nor a RadLex code could be verified, so it gets a private code in the
  coding scheme ``99CXRASSIST`` (declared in each object's Coding Scheme Identification Sequence). So do the
  concepts that are cxr-assist's own: its triage words "no finding likely" and "not assessed", the flag, the
  reason a film is not assessed.

Code meanings read like the names in ``Data_Entry_2017.csv`` (``Pleural_Thickening`` reads "Pleural thickening",
``Effusion`` reads "Pleural effusion"); :data:`FINDING_BY_CODE` maps any code back to the FINDINGS spelling.
"""

from __future__ import annotations

from types import MappingProxyType

from highdicom.sr import CodedConcept

from cxr_core.evaluation.triage import ABNORMAL, NO_FINDING_LIKELY, NOT_ASSESSED
from cxr_core.findings import FINDINGS

__all__ = [
    "PRIVATE_SCHEME", "PRIVATE_SCHEME_NAME", "FINDING_CODES", "FINDING_BY_CODE", "finding_code", "finding_for_code",
    "TRIAGE_CODES", "TRIAGE_BY_CODE", "TRIAGE", "ANY_FINDING", "FLAG", "FLAGGED", "PROBABILITY", "UNIT_ONE",
    "FINDING", "COMMENT", "REASON_NOT_ASSESSED", "REPORT_TITLE", "PROCEDURE_CHEST_XRAY", "code_key",
]

#: The private coding scheme of concepts no public terminology has (DICOM PS3.3 C.12.1.1.2 "99" prefix: local).
PRIVATE_SCHEME = "99CXRASSIST"
PRIVATE_SCHEME_NAME = "cxr-assist local codes"


def _code(value: str, scheme: str, meaning: str) -> CodedConcept:
    return CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


def _private(value: str, meaning: str) -> CodedConcept:
    return _code(value, PRIVATE_SCHEME, meaning)


# One concept per finding, in FINDINGS order. Where the code's own term differs from NIH's word, the meaning is the
# code's term as NIH's word reads it (a radiologist's wording), never a claim the label does not make: NIH's
# "Hernia" does not say where, so it is the generic hernia, not a hiatal one.
_FINDING_CODES: dict[str, CodedConcept] = {
    "Atelectasis": _code("46621007", "SCT", "Atelectasis"),
    "Cardiomegaly": _code("287272002", "SCT", "Cardiomegaly"),  # PS3.16 CID 12248 (OHDSI data use 8186001)
    "Effusion": _code("60046008", "SCT", "Pleural effusion"),
    "Infiltration": _code("112121", "DCM", "Infiltrate"),  # PS3.16 CID 6104; no verified SNOMED CT code
    "Mass": _code("4147007", "SCT", "Mass"),
    "Nodule": _code("27925004", "SCT", "Nodule"),
    "Pneumonia": _code("233604007", "SCT", "Pneumonia"),
    "Pneumothorax": _code("36118008", "SCT", "Pneumothorax"),
    "Consolidation": _code("95436008", "SCT", "Lung consolidation"),
    "Edema": _code("19242006", "SCT", "Pulmonary edema"),
    "Emphysema": _code("87433001", "SCT", "Pulmonary emphysema"),
    "Fibrosis": _code("51615001", "SCT", "Fibrosis of lung"),
    # Neither SNOMED CT nor RadLex could be verified for pleural thickening: a private code, never a guessed one.
    "Pleural_Thickening": _private("CXRA-PLTHICK", "Pleural thickening"),
    "Hernia": _code("414403008", "SCT", "Hernia"),
}
if tuple(_FINDING_CODES) != FINDINGS:  # one concept per finding, in FINDINGS order: checked at import
    raise RuntimeError("cxr_core.pacs.codes is out of step with cxr_core.findings.FINDINGS")

#: {finding (FINDINGS spelling): its coded concept}, in FINDINGS order.
FINDING_CODES: MappingProxyType = MappingProxyType(_FINDING_CODES)


def code_key(concept) -> tuple[str, str]:
    """``(scheme designator, code value)``: how two codes are compared (the meaning is for people, not for matching).

    Args:
        concept: a highdicom ``CodedConcept``, a pydicom ``Code`` or a code sequence item (a pydicom Dataset).
    """
    scheme = getattr(concept, "scheme_designator", None) or getattr(concept, "CodingSchemeDesignator", "")
    value = getattr(concept, "value", None) or getattr(concept, "CodeValue", "")
    return str(scheme), str(value)


#: {(scheme, value): finding in FINDINGS spelling}: reads a finding code back.
FINDING_BY_CODE: MappingProxyType = MappingProxyType({code_key(c): f for f, c in _FINDING_CODES.items()})


def finding_code(finding: str) -> CodedConcept:
    """The coded concept of a finding (FINDINGS spelling, e.g. ``"Pleural_Thickening"``)."""
    try:
        return _FINDING_CODES[finding]
    except KeyError:
        raise KeyError(f"unknown finding {finding!r}; expected one of {', '.join(FINDINGS)}") from None


def finding_for_code(concept) -> str:
    """The FINDINGS spelling of a finding code (raises KeyError for a code that is not one of the 14)."""
    key = code_key(concept)
    try:
        return FINDING_BY_CODE[key]
    except KeyError:
        raise KeyError(f"code {key} is not one of cxr-assist's 14 finding codes") from None


# The triage: a qualitative evaluation named TRIAGE whose value's meaning is exactly the triage word.
# "abnormal" is SNOMED CT's Abnormal (263654008, PS3.16); the other two words are cxr-assist's own verdicts.
TRIAGE = _private("CXRA-TRIAGE", "Triage of any of the 14 findings")
_TRIAGE_CODES: dict[str, CodedConcept] = {
    ABNORMAL: _code("263654008", "SCT", ABNORMAL),
    NO_FINDING_LIKELY: _private("CXRA-NFL", NO_FINDING_LIKELY),
    NOT_ASSESSED: _private("CXRA-NA", NOT_ASSESSED),
}
#: {triage word: coded value}; each meaning is exactly the word.
TRIAGE_CODES: MappingProxyType = MappingProxyType(_TRIAGE_CODES)
#: {(scheme, value): triage word}.
TRIAGE_BY_CODE: MappingProxyType = MappingProxyType({code_key(c): w for w, c in _TRIAGE_CODES.items()})

#: The triage group's finding: the triage probability is that of any of the 14 (noisy-OR of the calibrated ones).
ANY_FINDING = _private("CXRA-ANY14", "Any of the 14 ChestX-ray14 findings")
#: A finding flagged at the bundle's operating point: name and value of the qualitative evaluation.
FLAG = _private("CXRA-FLAG", "Flag at the operating point")
FLAGGED = _private("CXRA-FLAGGED", "flagged")
#: Why a film is not assessed (TEXT).
REASON_NOT_ASSESSED = _private("CXRA-REASON", "Reason not assessed")

#: The calibrated probability of a finding (DCM 122157 "Probability", PS3.16 Annex D), unit UCUM "1".
PROBABILITY = _code("122157", "DCM", "Probability")
UNIT_ONE = _code("1", "UCUM", "no units")  # PS3.16 CID 7181
#: highdicom's name of a measurement group's finding (DCM 121071, PS3.16 CID 7002).
FINDING = _code("121071", "DCM", "Finding")
#: Free text for the reader (DCM 121106 "Comment"): the "not for clinical use" statement.
COMMENT = _code("121106", "DCM", "Comment")
#: TID 1500's document title (PS3.16 CID 7021) and the procedure reported.
REPORT_TITLE = _code("126000", "DCM", "Imaging Measurement Report")
PROCEDURE_CHEST_XRAY = _code("399208008", "SCT", "Plain chest X-ray")
