"""The DICOM results of the node (issue 32, item 3): codes, UIDs, the TID 1500 SR, the Secondary Capture.

Built from the real chest DICOM files beside the checkout (../shared/dicom, see its PROVENANCE.md). The
assessments are constructed from numbers (synthetic, named as such: running the model here would only be slower; the
node's end-to-end test compares with ``training.predict``). Every object is written to a file and checked by
dicom3tools' ``dciodvfy`` (no line with "Error") and DCMTK's ``dsrdump`` (exit 0).
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import warnings

import numpy as np
import pydicom
import pytest

from cxr_core.data.imageio import decode_image
from cxr_core.errors import ImageReadError
from cxr_core.findings import DISPLAY_NAMES, FINDINGS
from cxr_core.pacs import codes
from cxr_core.pacs.assessment import Assessment
from cxr_core.pacs.capture import STAMP, build_sc, capture_lines, capture_pixels, heatmap_finding
from cxr_core.pacs.results import (
    NOT_FOR_CLINICAL_USE,
    AlgorithmInfo,
    ResultError,
    build_sr,
    clean_source,
    read_sr,
    result_uids,
)

ALGORITHM = AlgorithmInfo(bundle_name="default", bundle_digest="sha256-test-bundle")
UID = re.compile(r"[0-9]+(\.[0-9]+)*")

# Synthetic numbers (not a model's output): distinct, with 7 significant digits to test the round trip.
SYNTHETIC_PROBABILITIES = {f: round(0.0123457 + 0.0654321 * i, 7) for i, f in enumerate(FINDINGS)}


def assessed(flagged=("Hernia", "Pleural_Thickening", "Effusion")) -> Assessment:
    ordered = tuple(sorted(flagged, key=lambda f: -SYNTHETIC_PROBABILITIES[f]))
    return Assessment(triage="abnormal", triage_probability=0.9312345, probabilities=dict(SYNTHETIC_PROBABILITIES),
                      flagged=ordered, operating_point="specificity")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (.ci/run installs dicom3tools and dcmtk)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def assert_valid(dataset, tmp_path, name: str):
    """Write ``dataset`` and check it with dciodvfy: no line containing "Error" (its output in the message)."""
    path = tmp_path / name
    dataset.save_as(path, enforce_file_format=True)
    run = subprocess.run([_tool("dciodvfy"), str(path)], capture_output=True, text=True, timeout=120)
    output = run.stdout + run.stderr
    errors = [line for line in output.splitlines() if "Error" in line]
    assert not errors, f"dciodvfy found errors in {name}:\n{output}"
    return path


def read(shared_dicom, name: str) -> pydicom.Dataset:
    return pydicom.dcmread(shared_dicom / name)


@pytest.fixture(autouse=True)
def _quiet_person_names():
    # The SIIM file's patient name is one UUID-like component; highdicom warns about that form, which is the file's.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name.*")
        yield


# --- codes ---------------------------------------------------------------------------------------------------------


def test_finding_codes_are_14_distinct_readable_and_read_back():
    assert tuple(codes.FINDING_CODES) == FINDINGS
    keys = [codes.code_key(c) for c in codes.FINDING_CODES.values()]
    assert len(set(keys)) == 14
    for finding, concept in codes.FINDING_CODES.items():
        # The meaning reads like NIH's word ("Pleural_Thickening" -> "Pleural thickening", "Effusion" -> "Pleural
        # effusion", "Infiltration" -> "Infiltrate").
        assert DISPLAY_NAMES[finding].lower()[:8] in concept.meaning.lower(), (finding, concept.meaning)
        assert codes.finding_for_code(concept) == finding
        assert concept.scheme_designator in {"SCT", "DCM", codes.PRIVATE_SCHEME}
        assert len(concept.value) <= 16 and concept.value.strip() == concept.value
    assert codes.FINDING_CODES["Pleural_Thickening"].meaning == "Pleural thickening"
    assert codes.FINDING_CODES["Effusion"].value == "60046008"
    with pytest.raises(KeyError):
        codes.finding_for_code(codes.TRIAGE)


def test_triage_codes_mean_exactly_the_triage_words():
    assert {w: c.meaning for w, c in codes.TRIAGE_CODES.items()} == {
        "abnormal": "abnormal", "no finding likely": "no finding likely", "not assessed": "not assessed"}
    assert codes.code_key(codes.TRIAGE_CODES["abnormal"]) == ("SCT", "263654008")
    assert len({codes.code_key(c) for c in codes.TRIAGE_CODES.values()}) == 3
    assert codes.code_key(codes.UNIT_ONE) == ("UCUM", "1")
    assert codes.FLAGGED.meaning == "flagged"


# --- UIDs and the cleaned source -------------------------------------------------------------------------------------


def test_result_uids_are_deterministic_per_film_and_bundle(shared_dicom):
    film1, film2 = read(shared_dicom, "udacity_test1.dcm"), read(shared_dicom, "udacity_test2.dcm")
    first = result_uids(film1, bundle_digest="a")
    assert result_uids(read(shared_dicom, "udacity_test1.dcm"), bundle_digest="a") == first  # a resend replaces
    other_film = result_uids(film2, bundle_digest="a")
    other_bundle = result_uids(film1, bundle_digest="b")
    for uids in (first, other_film, other_bundle):
        values = [uids.sr_sop_instance_uid, uids.sc_sop_instance_uid, uids.sr_series_instance_uid,
                  uids.sc_series_instance_uid]
        assert len(set(values)) == 4
        assert all(UID.fullmatch(v) and len(v) <= 64 and v.startswith("2.25.") for v in values)
    assert other_film.sr_sop_instance_uid != first.sr_sop_instance_uid
    assert other_film.sc_sop_instance_uid != first.sc_sop_instance_uid
    assert other_film.sr_series_instance_uid != first.sr_series_instance_uid  # another study, another series
    assert other_bundle.sr_sop_instance_uid != first.sr_sop_instance_uid
    assert other_bundle.sr_series_instance_uid == first.sr_series_instance_uid  # one results series per study
    with pytest.raises(ResultError, match="bundle_digest"):
        result_uids(film1, bundle_digest="")


def test_clean_source_fixes_invalid_values_and_leaves_the_input_untouched(shared_dicom):
    film = read(shared_dicom, "udacity_test1.dcm")
    before = film.to_json_dict()
    clean = clean_source(film)
    assert film.to_json_dict() == before
    assert film.PatientAge == "81" and "PatientName" not in film
    assert clean.PatientAge == "081Y"  # NIH gives ages in years
    for keyword in ("PatientName", "PatientBirthDate", "StudyID", "AccessionNumber", "ReferringPhysicianName",
                    "StudyDate", "StudyTime"):
        assert keyword in clean and str(clean[keyword].value or "") == ""
    assert clean.PatientID == "2" and clean.PatientSex == "M" and clean.StudyDescription == "No Finding"
    assert clean.SOPInstanceUID == film.SOPInstanceUID and np.array_equal(clean.pixel_array, film.pixel_array)

    siim = clean_source(read(shared_dicom, "siim_example_monochrome2.dcm"))
    assert siim.PatientAge == "062Y" and siim.StudyDate == "19010101"  # valid values are kept

    odd = read(shared_dicom, "udacity_test2.dcm")
    with warnings.catch_warnings():  # pydicom warns about the invalid values this test sets on purpose
        warnings.simplefilter("ignore", UserWarning)
        odd.PatientAge, odd.PatientSex, odd.PatientBirthDate = "about sixty", "X", "1950-03-01"
    fixed = clean_source(odd)
    assert "PatientAge" not in fixed and fixed.PatientSex == "" and fixed.PatientBirthDate == ""
    assert odd.PatientSex == "X"


# --- the Structured Report -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["udacity_test2.dcm", "siim_example_monochrome2.dcm"])
def test_assessed_sr_validates_and_reads_back_exactly(shared_dicom, tmp_path, name):
    film = read(shared_dicom, name)
    assessment = assessed()
    uids = result_uids(film, bundle_digest=ALGORITHM.bundle_digest)
    sr = build_sr(film, assessment, algorithm=ALGORITHM, uids=uids)
    path = assert_valid(sr, tmp_path, "sr.dcm")
    dump = subprocess.run([_tool("dsrdump"), str(path)], capture_output=True, text=True, timeout=120)
    assert dump.returncode == 0, dump.stdout + dump.stderr
    assert "Imaging Measurement Report" in dump.stdout and '"Pleural thickening"' in dump.stdout

    back = pydicom.dcmread(path)
    assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert back.StudyInstanceUID == film.StudyInstanceUID and back.PatientID == film.PatientID
    assert back.SOPInstanceUID == uids.sr_sop_instance_uid
    assert back.SeriesInstanceUID == uids.sr_series_instance_uid != film.SeriesInstanceUID
    assert back.Manufacturer == "cxr-assist" and "not for clinical use" in back.SeriesDescription
    assert back.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    texts = [e.value for e in back.iterall() if e.keyword == "TextValue"]
    assert NOT_FOR_CLINICAL_USE in texts
    evidence = back.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == film.SOPInstanceUID

    summary = read_sr(back)
    assert summary.triage == "abnormal"
    assert summary.triage_probability == pytest.approx(assessment.triage_probability, abs=1e-6)
    assert tuple(summary.probabilities) == FINDINGS
    for finding in FINDINGS:
        assert summary.probabilities[finding] == pytest.approx(assessment.probabilities[finding], abs=1e-6)
    assert summary.flagged == assessment.flagged == ("Hernia", "Pleural_Thickening", "Effusion")
    assert summary.reason is None
    assert summary.source_sop_instance_uid == film.SOPInstanceUID
    assert (summary.algorithm_name, summary.algorithm_version) == ("cxr-assist", ALGORITHM.version)
    assert (summary.bundle_name, summary.bundle_digest) == ("default", ALGORITHM.bundle_digest)
    assert summary.operating_point == "specificity"

    again = build_sr(film, assessment, algorithm=ALGORITHM, uids=result_uids(film, bundle_digest=ALGORITHM.bundle_digest))
    assert again.SOPInstanceUID == back.SOPInstanceUID  # the same result sent again replaces the stored one


@pytest.mark.parametrize("sop_class, tags", [
    (pydicom.uid.DigitalXRayImageStorageForPresentation, {"ImagerPixelSpacing": [0.143, 0.143],
                                                          "PatientOrientation": ["L", "F"]}),
    (pydicom.uid.DigitalXRayImageStorageForPresentation, {}),
    (pydicom.uid.ComputedRadiographyImageStorage, {}),
    (pydicom.uid.CTImageStorage, {}),
])
def test_sr_and_capture_of_other_image_classes(shared_dicom, tmp_path, sop_class, tags):
    # The real film re-tagged (synthetic tags, named as such) as the classes a PACS routes: a DX with and without
    # its projection descriptors, a CR, a CT without geometry. The image library lists what the film carries.
    film = read(shared_dicom, "udacity_test2.dcm")
    film.SOPClassUID = sop_class
    for keyword, value in tags.items():
        setattr(film, keyword, value)
    uids = result_uids(film, bundle_digest="x")
    path = assert_valid(build_sr(film, assessed(), algorithm=ALGORITHM, uids=uids), tmp_path, "sr.dcm")
    dump = subprocess.run([_tool("dsrdump"), str(path)], capture_output=True, text=True, timeout=120)
    assert dump.returncode == 0 and "Image Library" in dump.stdout
    assert ("Horizontal Pixel Spacing" in dump.stdout) == bool(tags)
    assert read_sr(pydicom.dcmread(path)).flagged == assessed().flagged
    rgb = capture_pixels(film.pixel_array / 255.0, None, lines=["synthetic test line"])
    sc = pydicom.dcmread(assert_valid(build_sc(film, rgb, algorithm=ALGORITHM, uids=uids), tmp_path, "sc.dcm"))
    assert list(sc.get("PatientOrientation") or []) == tags.get("PatientOrientation", [])


def test_no_finding_likely_sr_without_flags(shared_dicom, tmp_path):
    film = read(shared_dicom, "udacity_test1.dcm")
    quiet = Assessment(triage="no finding likely", triage_probability=0.2, probabilities=dict(SYNTHETIC_PROBABILITIES))
    sr = build_sr(film, quiet, algorithm=ALGORITHM, uids=result_uids(film, bundle_digest="x"))
    summary = read_sr(pydicom.dcmread(assert_valid(sr, tmp_path, "sr.dcm")))
    assert summary.triage == "no finding likely" and summary.flagged == ()
    assert summary.triage_probability == pytest.approx(0.2)


@pytest.mark.parametrize("name, reason", [
    ("udacity_test5.dcm", "The input check withheld the output: Modality CT is not a chest radiograph."),
    ("udacity_test4.dcm", "The input check withheld the output: BodyPartExamined RIBCAGE, not CHEST."),
])
def test_withheld_film_gets_a_not_assessed_sr_with_the_reason(shared_dicom, tmp_path, name, reason):
    film = read(shared_dicom, name)
    sr = build_sr(film, Assessment.not_assessed(reason), algorithm=ALGORITHM,
                  uids=result_uids(film, bundle_digest=ALGORITHM.bundle_digest))
    path = assert_valid(sr, tmp_path, "sr.dcm")
    assert subprocess.run([_tool("dsrdump"), str(path)], capture_output=True, timeout=120).returncode == 0
    summary = read_sr(pydicom.dcmread(path))
    assert summary.triage == "not assessed" and summary.triage_probability is None
    assert summary.probabilities == {} and summary.flagged == ()
    assert summary.reason == reason
    assert summary.source_sop_instance_uid == film.SOPInstanceUID


def test_undecodable_film_gets_a_not_assessed_sr(shared_dicom, tmp_path):
    data = (shared_dicom / "udacity_test3.dcm").read_bytes()
    truncated = data[: len(data) // 2]  # a transfer cut off in the pixel data
    with pytest.raises(ImageReadError) as refused:
        decode_image(truncated, name="udacity_test3.dcm")
    film = pydicom.dcmread(io.BytesIO(truncated))  # the header is still readable
    reason = f"The film could not be decoded: {refused.value}"
    sr = build_sr(film, Assessment.not_assessed(reason), algorithm=ALGORITHM,
                  uids=result_uids(film, bundle_digest=ALGORITHM.bundle_digest))
    summary = read_sr(pydicom.dcmread(assert_valid(sr, tmp_path, "sr.dcm")))
    assert summary.triage == "not assessed" and summary.reason == reason and summary.probabilities == {}


def test_sources_without_their_study_are_refused_clearly(shared_dicom):
    film = read(shared_dicom, "udacity_test2.dcm")
    del film.StudyInstanceUID
    with pytest.raises(ResultError, match="StudyInstanceUID"):
        result_uids(film, bundle_digest="x")
    uids = result_uids(read(shared_dicom, "udacity_test2.dcm"), bundle_digest="x")
    with pytest.raises(ResultError, match="StudyInstanceUID"):
        build_sr(film, assessed(), algorithm=ALGORITHM, uids=uids)


def test_read_sr_refuses_what_is_not_a_cxr_assist_sr(shared_dicom):
    with pytest.raises(ResultError):
        read_sr(read(shared_dicom, "udacity_test2.dcm"))


# --- the Secondary Capture -------------------------------------------------------------------------------------------


def synthetic_map(shape=(32, 32), centre=(10, 20)) -> np.ndarray:
    """A synthetic Gaussian blob standing in for a Grad-CAM++ map (named as such: no model runs here)."""
    yy, xx = np.mgrid[0: shape[0], 0: shape[1]]
    return np.exp(-((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / 40.0).astype(np.float32)


def test_heatmap_finding_is_the_most_probable_flagged_one():
    assert heatmap_finding(assessed()) == "Hernia"
    assert heatmap_finding(assessed(flagged=("Atelectasis", "Effusion"))) == "Effusion"
    assert heatmap_finding(assessed(flagged=())) is None  # the triage view
    assert heatmap_finding(Assessment.not_assessed("withheld")) is None
    with pytest.raises(ResultError):
        capture_lines(Assessment.not_assessed("withheld"), shown=None)
    lines = capture_lines(assessed(), shown="Hernia")
    assert "abnormal" in lines[0] and "NIH" in lines[0]
    assert "Hernia 0.86" in lines[1] and DISPLAY_NAMES["Pleural_Thickening"] in lines[1] and "Grad-CAM++ of Hernia" in lines[2]


def _stamp_pixels(rgb: np.ndarray, rows: int) -> int:
    band = rgb[:rows].astype(int)
    return int(((band[..., 0] > 200) & (band[..., 1] < 140) & (band[..., 2] < 140)).sum())


def test_capture_pixels_burns_in_the_stamp_and_scales_the_text(shared_dicom):
    film = decode_image(shared_dicom / "udacity_test2.dcm").pixels
    lines = capture_lines(assessed(), shown="Hernia")
    with_map = capture_pixels(film, synthetic_map(), lines=lines)
    assert with_map.dtype == np.uint8 and with_map.ndim == 3 and with_map.shape[2] == 3
    assert max(with_map.shape[:2]) <= 1024
    assert _stamp_pixels(with_map, 60) > 200  # "NOT FOR CLINICAL USE" in red at the top
    film_part = with_map[-with_map.shape[1]:].astype(int)
    assert np.abs(film_part[..., 0] - film_part[..., 2]).max() > 100  # the map's colours

    triage_view = capture_pixels(film, None, lines=capture_lines(assessed(flagged=()), shown=None))
    bottom = triage_view[-triage_view.shape[1] // 2:]
    assert np.array_equal(bottom[..., 0], bottom[..., 1]) and np.array_equal(bottom[..., 1], bottom[..., 2])

    small = capture_pixels(film[::4, ::4], None, lines=lines)  # a 256-pixel film: the text scales down with it
    assert small.shape[1] == 256 and _stamp_pixels(small, small.shape[0] - 256) > 20
    assert small.shape[0] - 256 < with_map.shape[0] - with_map.shape[1]  # a smaller band above a smaller film
    with pytest.raises(ValueError):
        capture_pixels(np.zeros((4, 4, 3)), None, lines=lines)


def test_secondary_capture_validates_in_a_new_series_of_the_study(shared_dicom, tmp_path):
    name = "udacity_test2.dcm"
    film = read(shared_dicom, name)
    assessment = assessed()
    shown = heatmap_finding(assessment)
    rgb = capture_pixels(decode_image(shared_dicom / name).pixels, synthetic_map(),
                         lines=capture_lines(assessment, shown=shown))
    uids = result_uids(film, bundle_digest=ALGORITHM.bundle_digest)
    sc = build_sc(film, rgb, algorithm=ALGORITHM, uids=uids)
    back = pydicom.dcmread(assert_valid(sc, tmp_path, "sc.dcm"))
    assert back.BurnedInAnnotation == "YES" and back.ConversionType == "WSD"
    assert back.StudyInstanceUID == film.StudyInstanceUID and back.PatientID == film.PatientID
    assert back.SeriesInstanceUID == uids.sc_series_instance_uid not in (film.SeriesInstanceUID,
                                                                          uids.sr_series_instance_uid)
    assert back.SOPInstanceUID == uids.sc_sop_instance_uid
    assert back.PhotometricInterpretation == "RGB" and back.SamplesPerPixel == 3
    assert back.SourceImageSequence[0].ReferencedSOPInstanceUID == film.SOPInstanceUID
    assert np.array_equal(back.pixel_array, rgb)
    assert "not for clinical use" in back.SeriesDescription
    assert "PatientName" not in film  # the caller's dataset is untouched

    siim = read(shared_dicom, "siim_example_monochrome2.dcm")
    sc2 = build_sc(siim, rgb, algorithm=ALGORITHM, uids=result_uids(siim, bundle_digest="x"))
    assert_valid(sc2, tmp_path, "sc2.dcm")
    assert STAMP == "NOT FOR CLINICAL USE"
