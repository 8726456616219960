"""The app's PACS parts against a real PACS: Debian's Orthanc with its DICOMweb plugin (tests/pacs_harness.py).

- cxr_core.pacs.dicomweb: QIDO-RS search, the study's images, WADO-RS retrieval, with and without HTTP basic
  credentials, and the messages when the PACS is down, refuses or is not a DICOMweb service;
- the Analyze page's "From the PACS" source (CXR_ASSIST_DICOMWEB): a real film stored in Orthanc, found by its
  Patient ID, opened and analysed as an upload of the same file is;
- the PACS node page (CXR_ASSIST_NODE_INBOX), on a state database filled through cxr_core.pacs.state.

The films are the real ones of ../shared/dicom. Where a test needs a second series in a study (a stand-in for the
node's overlay, a CT image) it copies a real film and gives the copy new UIDs: synthetic, and said so there.
"""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid
from streamlit.testing.v1 import AppTest

from cxr_core.pacs import dicomweb
from cxr_core.pacs.dicomweb import CREDENTIALS_ENV, DICOMWEB_ENV, PacsConnection, PacsError
from tests.app_bundle import tiny_app_bundle
from tests.conftest import REPO_ROOT, SHARED_DICOM
from tests.pacs_harness import Orthanc, free_port

TIMEOUT = 120
FILM = SHARED_DICOM / "udacity_test1.dcm"  # DX, Implicit VR Little Endian, PatientID "2", "No Finding"
CR_FILM = SHARED_DICOM / "siim_example_monochrome2.dcm"  # CR, JPEG baseline
USER, PASSWORD = "reader", "pacs-s3cret-for-tests"


def _uids(path) -> tuple[str, str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


def _copy_into_study(source, target, folder, name: str, **tags) -> str:
    """A synthetic instance: the real film ``source`` under new series and instance UIDs, in ``target``'s study,
    with ``tags`` set (e.g. Manufacturer). Returns its path."""
    ds = pydicom.dcmread(source)
    study = pydicom.dcmread(target, stop_before_pixels=True)
    for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "StudyDate", "StudyTime", "AccessionNumber"):
        if keyword in study:
            setattr(ds, keyword, study.data_element(keyword).value)
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["cxr-assist-test", name, "series"])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["cxr-assist-test", name])
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    path = folder / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return str(path)


def _key_object(source, folder) -> str:
    """A Key Object Selection document (not an image) in ``source``'s study, built by highdicom."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    ds = pydicom.dcmread(source)
    ds.PatientName = f"{ds.PatientName}^"  # the SIIM file's one-component name (highdicom warns of it)
    ko = hd.ko.KeyObjectSelectionDocument(
        evidence=[ds], content=hd.ko.KeyObjectSelection(document_title=codes.DCM.OfInterest, referenced_objects=[ds]),
        series_instance_uid=generate_uid(entropy_srcs=["cxr-assist-test", "ko", "series"]), series_number=90,
        sop_instance_uid=generate_uid(entropy_srcs=["cxr-assist-test", "ko"]), instance_number=1, manufacturer="test")
    path = folder / "key_object.dcm"
    ko.save_as(path, enforce_file_format=True)
    return str(path)


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    """Orthanc holding the DX film, and the CR film's study with: a synthetic CT image, a synthetic stand-in for the
    node's overlay (Manufacturer cxr-assist) and a key object document."""
    if not SHARED_DICOM.is_dir():
        pytest.skip(f"real DICOM files not found at {SHARED_DICOM}")
    root = tmp_path_factory.mktemp("pacs")
    extras = root / "extras"
    extras.mkdir()
    files = [str(FILM), str(CR_FILM),
             _copy_into_study(CR_FILM, CR_FILM, extras, "overlay", Manufacturer="cxr-assist", SeriesNumber=99,
                              SeriesDescription="cxr-assist AI overlay (not for clinical use)"),
             _copy_into_study(SHARED_DICOM / "udacity_test5.dcm", CR_FILM, extras, "ct", SeriesNumber=5),
             _key_object(CR_FILM, extras)]
    with Orthanc(root / "orthanc") as orthanc:
        assert orthanc.store_files(files) == [0] * len(files), orthanc.log_tail()
        yield orthanc


@pytest.fixture(scope="module")
def locked_pacs(tmp_path_factory):
    """Orthanc that asks for HTTP basic credentials, holding the DX film."""
    with Orthanc(tmp_path_factory.mktemp("locked") / "orthanc", credentials=(USER, PASSWORD)) as orthanc:
        assert orthanc.store_files([str(FILM)]) == [0], orthanc.log_tail()
        yield orthanc


def _nowhere() -> str:
    return f"http://127.0.0.1:{free_port()}/dicom-web"  # nothing listens there


# -- cxr_core.pacs.dicomweb -----------------------------------------------------------------------------------------


def test_a_study_is_found_by_patient_id_and_its_film_retrieved_as_stored(pacs):
    client = PacsConnection(pacs.dicomweb).client()
    study_uid, series_uid, sop_uid = _uids(FILM)
    studies = dicomweb.search_studies(client, patient_id="2")
    assert [s.study_instance_uid for s in studies] == [study_uid]
    assert studies[0].study_description == "No Finding" and studies[0].modalities == ("DX",)
    assert studies[0].instances == 1 and "No Finding" in studies[0].label and "DX" in studies[0].label
    images = dicomweb.list_instances(client, study_uid)
    assert [(i.series_instance_uid, i.sop_instance_uid, i.modality) for i in images] == [(series_uid, sop_uid, "DX")]
    data = dicomweb.retrieve_instance(client, study_uid, series_uid, sop_uid)
    got, original = pydicom.dcmread(io.BytesIO(data)), pydicom.dcmread(FILM)
    assert data[128:132] == b"DICM"  # a Part 10 file, as an upload is
    assert got.SOPInstanceUID == sop_uid and got.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    np.testing.assert_array_equal(got.pixel_array, original.pixel_array)


def test_a_compressed_film_comes_back_in_its_own_transfer_syntax(pacs):
    client = PacsConnection(pacs.dicomweb).client()
    study_uid, series_uid, sop_uid = _uids(CR_FILM)
    data = dicomweb.retrieve_instance(client, study_uid, series_uid, sop_uid)
    got, original = pydicom.dcmread(io.BytesIO(data)), pydicom.dcmread(CR_FILM)
    assert got.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit
    assert got.PixelData == original.PixelData  # the JPEG stream itself, not re-encoded by the PACS


def test_a_study_lists_its_radiographs_first_its_overlays_last_and_no_documents(pacs):
    client = PacsConnection(pacs.dicomweb).client()
    study_uid, _, sop_uid = _uids(CR_FILM)
    (study,) = dicomweb.search_studies(client, patient_id="16d7f894-55d7-4d95-8957-d18987f0e981")
    assert set(study.modalities) >= {"CR", "CT"} and study.instances == 4  # the key object counts, it is listed not
    images = dicomweb.list_instances(client, study_uid)
    assert [(i.modality, i.from_cxr_assist) for i in images] == [("CR", False), ("CT", False), ("CR", True)]
    assert images[0].sop_instance_uid == sop_uid
    assert "made by cxr-assist" in images[-1].label and "cxr-assist AI overlay" in images[-1].label
    assert "series 5" in images[1].label and "made by" not in images[0].label


def test_searches_that_find_nothing_return_nothing(pacs):
    client = PacsConnection(pacs.dicomweb).client()
    assert dicomweb.search_studies(client, patient_id="no-such-patient") == []
    assert dicomweb.search_studies(client, accession_number="NO-SUCH-ACCESSION") == []
    assert dicomweb.list_instances(client, generate_uid()) == []
    with pytest.raises(ValueError, match="Patient ID or an Accession Number"):
        dicomweb.search_studies(client, patient_id="  ")


def test_a_study_is_found_by_accession_number(pacs, tmp_path):
    # Synthetic: the real DX film under new UIDs with an accession number (the shared films have none).
    path = _copy_into_study(FILM, FILM, tmp_path, "with-accession", AccessionNumber="ACC-PACS-TEST-1", PatientID="SYNTH-1",
                            StudyInstanceUID=generate_uid(entropy_srcs=["cxr-assist-test", "accession-study"]))
    assert pacs.store_files([path]) == [0]
    client = PacsConnection(pacs.dicomweb).client()
    (study,) = dicomweb.search_studies(client, accession_number="ACC-PACS-TEST-1")
    assert study.study_instance_uid == _uids(path)[0] and "accession ACC-PACS-TEST-1" in study.label


def test_credentials_open_a_locked_pacs_and_a_wrong_one_gets_a_message_without_it(locked_pacs):
    study_uid, series_uid, sop_uid = _uids(FILM)
    client = PacsConnection(locked_pacs.dicomweb, credentials=(USER, PASSWORD)).client()
    assert [s.study_instance_uid for s in dicomweb.search_studies(client, patient_id="2")] == [study_uid]
    assert pydicom.dcmread(io.BytesIO(dicomweb.retrieve_instance(client, study_uid, series_uid, sop_uid))).SOPInstanceUID == sop_uid
    for credentials in (None, (USER, "wrong-password")):
        client = PacsConnection(locked_pacs.dicomweb, credentials=credentials).client()
        for ask in (lambda: dicomweb.search_studies(client, patient_id="2"),
                    lambda: dicomweb.list_instances(client, study_uid),
                    lambda: dicomweb.retrieve_instance(client, study_uid, series_uid, sop_uid)):
            with pytest.raises(PacsError) as caught:
                ask()
            said = str(caught.value)
            assert "HTTP 401" in said and CREDENTIALS_ENV in said and "wrong-password" not in said


def test_an_unreachable_pacs_and_a_wrong_address_get_messages(pacs):
    with pytest.raises(PacsError, match="could not be reached.*is it running"):
        dicomweb.search_studies(PacsConnection(_nowhere()).client(), patient_id="2")
    with pytest.raises(PacsError, match="no DICOMweb service.*HTTP 404"):
        dicomweb.search_studies(PacsConnection(pacs.url + "/not-dicomweb").client(), patient_id="2")
    with pytest.raises(PacsError, match="no longer has image"):
        dicomweb.retrieve_instance(PacsConnection(pacs.dicomweb).client(), generate_uid(), generate_uid(), generate_uid())


def test_the_connection_comes_from_the_environment_and_never_shows_the_password():
    assert PacsConnection.from_env({}) is None and dicomweb.client_from_env({}) is None
    connection = PacsConnection.from_env({DICOMWEB_ENV: " http://pacs.example:8042/dicom-web/ ",
                                          CREDENTIALS_ENV: "reader:pa:ss"})
    assert connection.url == "http://pacs.example:8042/dicom-web" and connection.credentials == ("reader", "pa:ss")
    assert "pa:ss" not in repr(connection) and connection.shown_url == connection.url
    assert PacsConnection.from_env({DICOMWEB_ENV: "http://pacs.example/dicom-web"}).credentials is None
    for environ, message in [({DICOMWEB_ENV: "pacs.example:8042"}, "http:// or https://"),
                             ({DICOMWEB_ENV: "http://reader:secret@pacs.example/dicom-web"}, "user name or password"),
                             ({DICOMWEB_ENV: "http://pacs.example", CREDENTIALS_ENV: "no-colon"}, "user:password")]:
        with pytest.raises(PacsError, match=message) as caught:
            PacsConnection.from_env(environ)
        assert "secret" not in str(caught.value)
    assert dicomweb.display_url("https://reader:secret@pacs.example/dicom-web") == "https://pacs.example/dicom-web"


# -- the Analyze page: From the PACS ---------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _quiet_env(monkeypatch, tmp_path):
    monkeypatch.setenv("CXR_ASSIST_WARM", "0")  # no background model loading inside the test process
    for name in ("CXR_ASSIST_DATA_ROOTS", "CXR_ASSIST_DEMO", DICOMWEB_ENV, CREDENTIALS_ENV, "CXR_ASSIST_NODE_INBOX"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CXR_READER_STUDY_DB", str(tmp_path / "reader_study.sqlite3"))


@pytest.fixture
def tiny(tmp_path_factory, demo_root):
    return tiny_app_bundle(tmp_path_factory, demo_root)


def app(monkeypatch, bundle, page: str) -> AppTest:
    monkeypatch.setenv("CXR_ASSIST_BUNDLE", str(bundle))
    at = AppTest.from_file(str(REPO_ROOT / "streamlit_app.py"), default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    at.switch_page(f"pages/{page}.py").run()
    assert not at.exception, at.exception
    return at


def _probabilities(at: AppTest) -> list[float]:
    return at.dataframe[0].value["probability"].tolist()


def test_analyze_opens_a_film_from_the_pacs_as_an_upload(monkeypatch, tiny, pacs):
    monkeypatch.setenv(DICOMWEB_ENV, pacs.dicomweb)
    at = app(monkeypatch, tiny, "analyze")
    assert "From the PACS" in at.radio(key="analyze_source").options
    at.radio(key="analyze_source").set_value("From the PACS").run()
    assert not at.exception and any("Patient ID" in i.value for i in at.info)  # a prompt, nothing searched yet
    at.text_input(key="analyze_pacs_query").input("2").run()
    assert not at.exception, at.exception
    study_uid, _, sop_uid = _uids(FILM)
    assert at.selectbox(key="analyze_pacs_study").value == study_uid
    assert at.selectbox(key="analyze_pacs_image").value == sop_uid
    assert "DX" in at.selectbox(key="analyze_pacs_image").options[0]  # the label shows the modality
    assert not at.error
    assert any("Triage:" in m.value for m in at.markdown)  # the triage first, as for an upload
    assert any(f"{sop_uid}.dcm" in c.value and "DICOM" in c.value for c in at.caption)
    assert [b.label for b in at.download_button] == ["Download PDF report", "Download JSON report"]
    from_pacs = _probabilities(at)

    uploaded = app(monkeypatch, tiny, "analyze")
    uploaded.file_uploader(key="analyze_upload").upload("udacity_test1.dcm", FILM.read_bytes()).run()
    assert not uploaded.exception and len(from_pacs) == 14
    assert _probabilities(uploaded) == from_pacs  # the same bytes through the same code: the same numbers


def test_analyze_says_when_the_pacs_has_nothing_or_cannot_be_reached(monkeypatch, tiny, pacs):
    monkeypatch.setenv(DICOMWEB_ENV, pacs.dicomweb)
    at = app(monkeypatch, tiny, "analyze")
    at.radio(key="analyze_source").set_value("From the PACS").run()
    at.radio(key="analyze_pacs_by").set_value("accession_number").run()
    at.text_input(key="analyze_pacs_query").input("NOTHING-HERE").run()
    assert not at.exception and not at.error
    assert any("no study with Accession Number" in i.value for i in at.info)
    assert not at.dataframe

    monkeypatch.setenv(DICOMWEB_ENV, _nowhere())
    at = app(monkeypatch, tiny, "analyze")
    at.radio(key="analyze_source").set_value("From the PACS").run()
    at.text_input(key="analyze_pacs_query").input("2").run()
    assert not at.exception
    assert len(at.error) == 1 and "could not be reached" in at.error[0].value and "Traceback" not in at.error[0].value
    assert not at.dataframe and not at.download_button


def test_analyze_says_when_the_pacs_refuses_the_credentials(monkeypatch, tiny, locked_pacs):
    monkeypatch.setenv(DICOMWEB_ENV, locked_pacs.dicomweb)
    monkeypatch.setenv(CREDENTIALS_ENV, f"{USER}:wrong-password")
    at = app(monkeypatch, tiny, "analyze")
    at.radio(key="analyze_source").set_value("From the PACS").run()
    at.text_input(key="analyze_pacs_query").input("2").run()
    assert not at.exception and len(at.error) == 1 and "HTTP 401" in at.error[0].value
    shown = " ".join(e.value for e in [*at.error, *at.caption, *at.info, *at.markdown])
    assert "wrong-password" not in shown and PASSWORD not in shown

    monkeypatch.setenv(CREDENTIALS_ENV, f"{USER}:{PASSWORD}")
    at = app(monkeypatch, tiny, "analyze")
    at.radio(key="analyze_source").set_value("From the PACS").run()
    at.text_input(key="analyze_pacs_query").input("2").run()
    assert not at.exception and not at.error and any("Triage:" in m.value for m in at.markdown)
    assert PASSWORD not in " ".join(c.value for c in at.caption)


def test_analyze_offers_no_pacs_without_the_setting_and_names_a_bad_one(monkeypatch, tiny):
    at = app(monkeypatch, tiny, "analyze")
    assert at.radio(key="analyze_source").options == ["Upload a file", "Demo image"]
    monkeypatch.setenv(DICOMWEB_ENV, "pacs.example:8042")
    at = app(monkeypatch, tiny, "analyze")
    assert at.radio(key="analyze_source").options == ["Upload a file", "Demo image"]
    assert any(DICOMWEB_ENV in w.value and "http://" in w.value for w in at.warning)


# -- the PACS node page ----------------------------------------------------------------------------------------------


def _fill_node_state(inbox) -> None:
    """A state database as a node leaves it (synthetic rows written through cxr_core.pacs.state): one film sent
    (abnormal, two flags), one not assessed (a CT) and sent, one analysed whose send failed, one just received."""
    from cxr_core.pacs.state import open_state

    state = open_state(inbox)
    try:
        def receive(uid: str, modality: str) -> None:
            state.record_received(sop_instance_uid=uid, sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
                                  study_instance_uid=f"{uid}.0", film=f"{inbox}/{uid}.dcm", film_sha256=uid * 4,
                                  modality=modality, patient_id=f"P-{uid[-1]}", accession_number=f"ACC-{uid[-1]}",
                                  calling_ae="ORTHANC")

        receive("1.2.3.1", "DX")
        state.mark_analysed("1.2.3.1", film_sha256="1.2.3.1" * 4, triage="abnormal", flagged="Effusion|Pleural_Thickening",
                            reason=None, results=["sr.dcm", "sc.dcm"])
        state.mark_sent("1.2.3.1", film_sha256="1.2.3.1" * 4)
        receive("1.2.3.2", "CT")
        state.mark_analysed("1.2.3.2", film_sha256="1.2.3.2" * 4, triage="not assessed", flagged="",
                            reason="CT Image Storage is not a chest radiograph", results=["sr.dcm"])
        state.mark_sent("1.2.3.2", film_sha256="1.2.3.2" * 4)
        receive("1.2.3.3", "CR")
        state.mark_analysed("1.2.3.3", film_sha256="1.2.3.3" * 4, triage="no finding likely", flagged="", reason=None,
                            results=["sr.dcm", "sc.dcm"])
        state.mark_send_failed("1.2.3.3", error="ORTHANC@127.0.0.1:4242 (C-STORE) could not be reached",
                               retry_at=2_000_000_000.0)
        receive("1.2.3.4", "DX")
    finally:
        state.close()


@pytest.fixture
def no_bundle(tmp_path):
    return tmp_path / "no-bundle"  # the node page needs no model (the home page, run first, says there is none)


def test_node_page_shows_the_counts_and_the_recent_work(monkeypatch, no_bundle, tmp_path):
    inbox = tmp_path / "inbox"
    _fill_node_state(inbox)
    monkeypatch.setenv("CXR_ASSIST_NODE_INBOX", str(inbox))
    at = app(monkeypatch, no_bundle, "node")
    assert not at.error
    metrics = {m.label: m.value for m in at.metric}
    assert metrics == {"Waiting for analysis": "1", "Waiting to be sent": "1", "Send failed, retrying": "1", "Sent": "2"}
    table = at.dataframe[0].value
    assert list(table["patient_id"]) == ["P-4", "P-3", "P-2", "P-1"]  # newest first
    by_patient = table.set_index("patient_id")
    assert by_patient.at["P-1", "status"] == "sent" and by_patient.at["P-1", "triage"] == "abnormal"
    assert by_patient.at["P-1", "flagged"] == "Effusion, Pleural Thickening"  # the names a reader reads, not Pleural_...
    assert by_patient.at["P-2", "triage"] == "not assessed" and "CT Image Storage" in by_patient.at["P-2", "reason"]
    assert by_patient.at["P-3", "status"].startswith("failed 1x") and "could not be reached" in by_patient.at["P-3", "last_error"]
    assert by_patient.at["P-4", "status"] == "received" and by_patient.at["P-4", "triage"] == "not yet"
    assert any("validated operating points" in c.value and "NIH validation split" in c.value for c in at.caption)

    # A film the node receives meanwhile shows after a refresh.
    from cxr_core.pacs.state import open_state

    state = open_state(inbox)
    state.record_received(sop_instance_uid="1.2.3.5", sop_class_uid="1.2.840.10008.5.1.4.1.1.1", study_instance_uid="1.2.3",
                          film=str(inbox / "5.dcm"), film_sha256="5" * 64, patient_id="P-5")
    state.close()
    at.button(key="node_refresh").click().run()
    assert not at.exception and {m.label: m.value for m in at.metric}["Waiting for analysis"] == "2"
    assert at.dataframe[0].value["patient_id"].iloc[0] == "P-5"


def test_node_page_says_how_to_start_the_node(monkeypatch, no_bundle, tmp_path):
    at = app(monkeypatch, no_bundle, "node")
    shown = " ".join(x.value for x in [*at.info, *at.markdown])
    assert "CXR_ASSIST_NODE_INBOX" in shown and "python -m training.node" in shown and "docs/use/pacs.md" in shown
    assert not at.error and not at.dataframe and not at.metric

    monkeypatch.setenv("CXR_ASSIST_NODE_INBOX", str(tmp_path / "never-used"))
    at = app(monkeypatch, no_bundle, "node")
    assert not at.error and any("No node has used the inbox" in i.value for i in at.info)
    assert any("python -m training.node" in m.value for m in at.markdown)

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "node.sqlite").write_bytes(b"not a database, " * 100)
    monkeypatch.setenv("CXR_ASSIST_NODE_INBOX", str(broken))
    at = app(monkeypatch, no_bundle, "node")
    assert not at.exception and len(at.error) == 1 and "could not be read" in at.error[0].value


def test_node_page_with_an_empty_state_database(monkeypatch, no_bundle, tmp_path):
    from cxr_core.pacs.state import open_state

    open_state(tmp_path / "inbox").close()
    monkeypatch.setenv("CXR_ASSIST_NODE_INBOX", str(tmp_path / "inbox"))
    at = app(monkeypatch, no_bundle, "node")
    assert not at.exception and not at.error and not at.dataframe
    assert {m.label: m.value for m in at.metric}["Sent"] == "0"
    assert any("no film yet" in i.value for i in at.info)
