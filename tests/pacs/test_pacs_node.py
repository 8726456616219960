"""The DICOM node end to end with a real PACS: Debian's Orthanc, started here on 127.0.0.1.

Films stored into Orthanc are routed by its Lua script to the node (``python -m training.node`` in its own
process), whose Structured Report and Secondary Capture come back into the same study. The SR read back from
Orthanc states what ``training.predict`` gives for the same file; every object passes dciodvfy; a kill -9 in a
burst loses nothing and doubles nothing; an unknown AE title is refused; a CT image and a damaged file get a
``not assessed`` SR; the node survives a malformed association and a C-STORE of 0 bytes. The films' pixels are the
real film of tests/dicom_sources.py in every transfer syntax; their UIDs and patient IDs are synthetic.
"""

from __future__ import annotations

import io
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from pydicom.uid import generate_uid

from tests.conftest import REPO_ROOT, SHARED_DICOM
from tests.pacs_harness import NodeProcess, Orthanc, chest_films, free_port

pytestmark = pytest.mark.slow

SR_CLASSES = {"1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.88.22", "1.2.840.10008.5.1.4.1.1.88.33"}
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
#: One film in each transfer syntax family the node must take (and Orthanc stores and forwards).
SYNTAX_CASES = ("chest8-implicit-le", "chest8-explicit-le", "chest8-deflated", "chest8-rle", "chest8-jpeg-ls-lossless",
                "chest8-jpeg2000-lossless", "chest8-jpeg-lossless-sv1", "chest12-jpeg-lossless-p14-sv6",
                "chest12-jpeg-extended-q90", "chest12-jpeg2000-psnr50", "chest12-jpeg-ls-near-2")


def _needs(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    assert not missing, f"{missing} not installed: .ci/run installs orthanc, orthanc-dicomweb, dcmtk, dicom3tools"


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    """Orthanc routing CR/DX films to a node, and the node sending results back (both running for the module)."""
    _needs("Orthanc", "dciodvfy", "storescu")
    root = tmp_path_factory.mktemp("pacs")
    node_port = free_port()
    orthanc = Orthanc(root / "orthanc", node=("CXR_ASSIST", node_port)).start()
    node = NodeProcess(root / "inbox", send_to=f"ORTHANC@127.0.0.1:{orthanc.dicom_port}", port=node_port)
    try:
        node.start()
        yield orthanc, node
    finally:
        node.stop()
        orthanc.stop()


_DOWNLOADED: dict[str, pydicom.Dataset] = {}


def _results_of(orthanc: Orthanc, source_uid: str, instances: list[dict] | None = None) -> dict[str, list[dict]]:
    """The node's results in Orthanc for one source film: {"sr": [...], "sc": [...]} (instances with their tags)."""
    found = {"sr": [], "sc": []}
    for inst in orthanc.instances() if instances is None else instances:
        if inst["Tags"].get("Manufacturer") != "cxr-assist":
            continue
        if inst["ID"] not in _DOWNLOADED:  # a stored instance never changes: fetch each once
            _DOWNLOADED[inst["ID"]] = pydicom.dcmread(io.BytesIO(orthanc.file(inst["ID"])))
        ds = _DOWNLOADED[inst["ID"]]
        if source_uid in {str(r.ReferencedSOPInstanceUID) for r in _references(ds)}:
            found["sr" if str(ds.SOPClassUID) in SR_CLASSES else "sc"].append({"dataset": ds, **inst})
    return found


def _references(ds) -> list:
    """Every referenced SOP item in a result (SR: its evidence and content; SC: its source image)."""
    refs = []
    for keyword in ("CurrentRequestedProcedureEvidenceSequence", "SourceImageSequence", "ReferencedImageSequence"):
        for item in ds.get(keyword, []):
            refs += list(item.get("ReferencedSOPSequence", [])) or [item]
            for series in item.get("ReferencedSeriesSequence", []):
                refs += list(series.get("ReferencedSOPSequence", []))
    return [r for r in refs if "ReferencedSOPInstanceUID" in r]


def _wait_results(orthanc: Orthanc, uids, *, with_sc: dict[str, bool] | None = None, timeout: float = 180.0) -> dict:
    """Wait until every source UID has its SR (and SC where ``with_sc`` says so); the results by UID."""
    deadline = time.monotonic() + timeout
    while True:
        instances = orthanc.instances()
        got = {uid: _results_of(orthanc, uid, instances) for uid in uids}
        ready = all(got[u]["sr"] and (not with_sc or not with_sc.get(u) or got[u]["sc"]) for u in uids)
        if ready:
            return got
        if time.monotonic() > deadline:
            missing = [u for u in uids if not got[u]["sr"]]
            raise AssertionError(f"no SR for {missing} after {timeout} s; Orthanc:\n{orthanc.log_tail()}")
        time.sleep(0.5)


def _dciodvfy(ds, folder: Path) -> str:
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return out.stdout + out.stderr


@pytest.fixture(scope="module")
def predictions():
    """training.predict's rows (the same code path and bundle) for files, by file name."""
    from cxr_core.jobs import predict_files
    from cxr_core.serving import Predictor

    predictor = Predictor.from_bundle(REPO_ROOT / "models" / "default")

    def rows(paths) -> dict[str, dict]:
        table = predict_files(predictor, [str(p) for p in paths])
        return {row["Image Index"]: row for row in table.to_dict("records")}

    return rows


def test_films_routed_by_the_pacs_come_back_as_sr_and_overlay_in_the_same_study(pacs, predictions, tmp_path):
    from cxr_core.findings import FINDINGS
    from cxr_core.pacs.results import read_sr

    orthanc, node = pacs
    films = chest_films(tmp_path / "films", len(SYNTAX_CASES), cases=SYNTAX_CASES, seed="routing")
    siim = pydicom.dcmread(SHARED_DICOM / "siim_example_monochrome2.dcm")  # CR, JPEG baseline
    siim.SOPInstanceUID = siim.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["routing", "siim"])
    siim.StudyInstanceUID = generate_uid(entropy_srcs=["routing", "siim", "study"])
    films.append(tmp_path / "films" / "siim-jpeg-baseline.dcm")
    siim.save_as(films[-1], enforce_file_format=True)
    assert orthanc.store_files(films) == [0] * len(films)

    sources = {p.name: pydicom.dcmread(p, stop_before_pixels=True) for p in films}
    expected = predictions(films)
    with_sc = {str(ds.SOPInstanceUID): expected[name]["triage"] != "not assessed" for name, ds in sources.items()}
    results = _wait_results(orthanc, list(with_sc), with_sc=with_sc)

    for name, source in sources.items():
        uid, row = str(source.SOPInstanceUID), expected[name]
        got = results[uid]
        assert len(got["sr"]) == 1, f"{name}: {len(got['sr'])} SRs"
        sr = got["sr"][0]["dataset"]
        assert sr.StudyInstanceUID == source.StudyInstanceUID and sr.PatientID == source.PatientID
        summary = read_sr(sr)
        assert summary.triage == row["triage"], name
        assert summary.flagged == tuple(f for f in row["flagged"].split("|") if f), name
        if row["triage"] != "not assessed":
            assert abs(summary.triage_probability - row["abnormal"]) < 1e-4
            np.testing.assert_allclose([summary.probabilities[f] for f in FINDINGS], [row[f] for f in FINDINGS],
                                       atol=1e-4, err_msg=name)
            assert len(got["sc"]) == 1
            sc = got["sc"][0]["dataset"]
            assert sc.StudyInstanceUID == source.StudyInstanceUID and sc.SeriesInstanceUID != source.SeriesInstanceUID
            assert sc.BurnedInAnnotation == "YES"
        else:
            assert got["sc"] == [] and summary.reason
    # A sample through the validators: no Error line.
    for uid in list(results)[:2]:
        for kind in ("sr", "sc"):
            for item in results[uid][kind]:
                report = _dciodvfy(item["dataset"], tmp_path)
                assert not [line for line in report.splitlines() if "Error" in line], report
    status = node.status()
    assert status["counts"]["sent"] >= len(films) and status["counts"]["received"] == 0


def test_unknown_ae_title_is_refused_and_logged(pacs):
    _, node = pacs
    assert node.echo("STORESCU") == 0
    assert node.echo("INTRUDER") == -1
    node.wait_for_log("refused an association from AE 'INTRUDER'", timeout=10)


def test_a_ct_image_and_a_damaged_film_get_a_not_assessed_sr(pacs, tmp_path):
    from cxr_core.pacs.results import read_sr

    orthanc, node = pacs
    ct, damaged = chest_films(tmp_path, 2, cases=("chest12-explicit-le", "chest8-jpeg-ls-lossless"), seed="refused")
    ds = pydicom.dcmread(ct)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    ds.Modality = "CT"
    ds.save_as(ct, enforce_file_format=True)
    ds = pydicom.dcmread(damaged)
    frame = pydicom.encaps.get_frame(ds.PixelData, 0)
    ds.PixelData = pydicom.encaps.encapsulate([frame[: len(frame) // 3]])  # the JPEG-LS stream cut short
    ds.save_as(damaged, enforce_file_format=True)
    assert node.store([ct, damaged]) == [0, 0]  # stored, then found unreadable or not a radiograph
    uids = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in (ct, damaged)]
    results = _wait_results(orthanc, uids)
    for uid, words in zip(uids, ("CT Image Storage", "could not be read")):
        summary = read_sr(results[uid]["sr"][0]["dataset"])
        assert summary.triage == "not assessed" and words in summary.reason
        assert summary.probabilities == {} and results[uid]["sc"] == []


def test_the_node_survives_a_malformed_association_and_an_empty_c_store(pacs):
    from pynetdicom import AE, evt
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.pdu_primitives import P_DATA

    _, node = pacs
    with socket.create_connection(("127.0.0.1", node.port), timeout=5) as s:
        s.sendall(b"\x01\x00\x00\x00\x00\x10" + b"\xff" * 16)  # an A-ASSOCIATE-RQ PDU that is garbage inside
        s.settimeout(5)
        try:
            s.recv(1024)
        except (TimeoutError, ConnectionError):
            pass
    with socket.create_connection(("127.0.0.1", node.port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\n\r\n")
    responses = []
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(SC_CLASS, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", node.port, ae_title="CXR_ASSIST",
                         evt_handlers=[(evt.EVT_DIMSE_RECV, lambda event: responses.append(event.message))])
    assert assoc.is_established
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = SC_CLASS
    request.AffectedSOPInstanceUID = generate_uid()
    request.Priority = 2
    request.DataSet = io.BytesIO(b"")
    context_id = assoc.accepted_contexts[0].context_id
    assoc.dimse.send_msg(request, context_id)  # the command set, which says a data set follows
    data = P_DATA()
    data.presentation_data_value_list = [[context_id, b"\x02"]]  # then a data set fragment of 0 bytes, the last
    assoc.dul.send_pdu(data)
    deadline = time.monotonic() + 30
    while not responses and time.monotonic() < deadline:
        time.sleep(0.1)
    assert responses, "the node did not answer the empty C-STORE"
    assert responses[0].command_set.Status == 0xC210  # "cannot understand": nothing was stored
    assoc.release()
    assert node.echo() == 0 and node.process.poll() is None


def test_kill_9_in_a_burst_loses_nothing_and_doubles_nothing(pacs, tmp_path):
    """Films stored one by one; the node is killed with SIGKILL while it works and restarted; every film the node
    acknowledged, and every film the PACS then sends again, has exactly one SR in the PACS."""
    from cxr_core.pacs.state import read_only_state

    orthanc, node = pacs
    films = chest_films(tmp_path, 12, cases=("chest8-explicit-le", "chest8-jpeg-ls-lossless", "chest12-rle"),
                        seed="kill-9")
    acked, refused = [], []
    for i, film in enumerate(films):
        if i == 5:
            node.kill9()  # while it works: films acknowledged are still waiting, being analysed or sent
            state = read_only_state(node.inbox)
            pending = state.counts()["received"] + state.counts()["analysed"]
            state.close()
            assert pending >= 1, "the kill came after all the work: nothing was left to recover"
        (acked if node.store([film]) == [0] else refused).append(film)
    assert len(acked) == 5 and len(refused) == 7
    node.start()
    assert node.store(refused) == [0] * len(refused)  # the PACS sends again what was not acknowledged
    uids = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in films]
    results = _wait_results(orthanc, uids)
    assert {u: len(r["sr"]) for u, r in results.items()} == {u: 1 for u in uids}
    sr_uids = [r["sr"][0]["dataset"].SOPInstanceUID for r in results.values()]
    assert len(set(sr_uids)) == len(uids)
    deadline = time.monotonic() + 30
    while not all(row["state"] == "sent" for row in node.status()["recent"] if row["sop_instance_uid"] in uids):
        assert time.monotonic() < deadline, node.status()
        time.sleep(0.5)


def test_results_wait_for_a_pacs_that_is_down_then_go_by_stow_rs(tmp_path, monkeypatch):
    """STOW-RS with basic credentials from the environment; a PACS down at first: the results wait (state visible)
    and arrive when it comes up."""
    from cxr_core.pacs.results import read_sr

    _needs("Orthanc")
    orthanc = Orthanc(tmp_path / "orthanc", credentials=("cxr", "s3cret-for-tests"))  # not started yet
    node = NodeProcess(tmp_path / "inbox", stow=orthanc.dicomweb,
                       env={"CXR_ASSIST_STOW_CREDENTIALS": "cxr:s3cret-for-tests"})
    try:
        node.start()
        (film,) = chest_films(tmp_path / "films", 1, cases=("chest8-explicit-le",), seed="stow")
        assert node.store([film]) == [0]
        deadline = time.monotonic() + 120
        while not node.status()["counts"]["failing"]:
            assert time.monotonic() < deadline, node.log()
            time.sleep(0.5)
        row = node.status()["recent"][0]
        assert row["state"] == "analysed" and row["attempts"] >= 1 and "could not be reached" in row["last_error"]
        assert "s3cret" not in " ".join(node.argv)
        orthanc.start()
        uid = str(pydicom.dcmread(film, stop_before_pixels=True).SOPInstanceUID)
        results = _wait_results(orthanc, [uid], with_sc={uid: True})
        assert read_sr(results[uid]["sr"][0]["dataset"]).triage in ("abnormal", "no finding likely")
        assert requests.get(orthanc.url + "/instances", timeout=10).status_code == 401  # the credentials were needed
    finally:
        node.stop()
        orthanc.stop()
