"""The node's parts that need no network: the inbox, the state database, retries, its settings and --status."""

from __future__ import annotations

import json
import random
import sqlite3

import pytest

from cxr_core.pacs.inbox import Inbox, digest, write_durably
from cxr_core.pacs.sender import CStoreDestination, StowDestination, backoff_delay, check_ae_title
from cxr_core.pacs.state import ANALYSED, RECEIVED, SENT, NodeState, open_state
from cxr_core.pacs.status import status_lines, status_summary
from training import node as node_command


def _receive(state: NodeState, uid: str, data: bytes = b"film", **kw) -> str:
    return state.record_received(sop_instance_uid=uid, sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
                                 study_instance_uid="1.2.3", film=f"/inbox/{uid}.dcm", film_sha256=digest(data), **kw)


def test_durable_write_leaves_no_temporary_file_and_replaces_whole(tmp_path):
    path = write_durably(tmp_path / "a" / "x.dcm", b"first")
    write_durably(path, b"second version")
    assert path.read_bytes() == b"second version"
    assert [p.name for p in path.parent.iterdir()] == ["x.dcm"]


def test_inbox_names_films_by_uid_safely(tmp_path):
    inbox = Inbox(tmp_path)
    film = inbox.store_film("1.2.3.4", b"x")
    assert film.name == "1.2.3.4.dcm" and film.parent.name == "films"
    assert inbox.film_path("../../etc/passwd").parent == tmp_path / "films"  # no way out of the inbox
    assert inbox.films_on_disk() == [film]
    assert inbox.result_path("1.2.3.4", "sr").name == "1.2.3.4.sr.dcm"


def test_states_follow_arrival_order_and_never_go_back(tmp_path):
    state = open_state(tmp_path)
    assert [_receive(state, u, u.encode()) for u in ("1.1", "1.2", "1.3")] == ["new"] * 3
    assert state.next_to_analyse().sop_instance_uid == "1.1"
    first = state.get("1.1")
    assert state.mark_analysed("1.1", film_sha256=first.film_sha256, triage="abnormal", flagged="Mass", reason=None,
                               results=["/r/1.1.sr.dcm"])
    assert state.next_to_analyse().sop_instance_uid == "1.2"
    assert [r.sop_instance_uid for r in state.due_to_send()] == ["1.1"]
    assert state.mark_sent("1.1", film_sha256=first.film_sha256)
    assert not state.mark_sent("1.1", film_sha256=first.film_sha256)  # a second "sent" changes nothing
    assert state.counts() == {RECEIVED: 2, ANALYSED: 0, SENT: 1, "failing": 0}


def test_a_film_sent_again_unchanged_is_not_redone_but_a_changed_one_is(tmp_path):
    state = open_state(tmp_path)
    _receive(state, "1.1", b"v1")
    state.mark_analysed("1.1", film_sha256=digest(b"v1"), triage="abnormal", flagged="", reason=None, results=["x"])
    assert _receive(state, "1.1", b"v1") == "same"
    assert state.get("1.1").state == ANALYSED
    assert _receive(state, "1.1", b"v2") == "changed"
    assert state.get("1.1").state == RECEIVED and state.get("1.1").results == ()
    # Results of the old version arriving late are not recorded over the new one.
    assert not state.mark_analysed("1.1", film_sha256=digest(b"v1"), triage="abnormal", flagged="", reason=None,
                                   results=["old"])


def test_failed_sends_are_kept_and_retried_when_due(tmp_path):
    state = open_state(tmp_path)
    _receive(state, "1.1")
    state.mark_analysed("1.1", film_sha256=digest(b"film"), triage="abnormal", flagged="", reason=None, results=["x"])
    state.mark_send_failed("1.1", error="PACS could not be reached", retry_at=1e12)
    assert state.due_to_send(now=1e12 - 1) == []
    assert [r.sop_instance_uid for r in state.due_to_send(now=1e12)] == ["1.1"]
    record = state.get("1.1")
    assert record.failing and record.attempts == 1 and record.last_error == "PACS could not be reached"
    assert state.counts()["failing"] == 1
    state.requeue("1.1")
    assert state.get("1.1").state == RECEIVED


def test_the_database_survives_reopening_and_refuses_a_newer_schema(tmp_path):
    state = open_state(tmp_path)
    _receive(state, "1.1")
    state.close()
    assert open_state(tmp_path).get("1.1").state == RECEIVED
    with sqlite3.connect(tmp_path / "node.sqlite") as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(RuntimeError, match="newer cxr-assist"):
        open_state(tmp_path)


def test_backoff_doubles_up_to_the_cap_with_bounded_jitter():
    rng = random.Random(0)
    delays = [backoff_delay(n, base=2, cap=60, jitter=0.1, rng=rng) for n in range(1, 9)]
    for n, d in enumerate(delays, start=1):
        expected = min(60, 2 * 2 ** (n - 1))
        assert 0.9 * expected <= d <= 1.1 * expected


@pytest.mark.parametrize("text, message", [
    ("ORTHANC@127.0.0.1", "AET@HOST:PORT"),
    ("ORTHANC:4242", "AET@HOST:PORT"),
    ("ORTHANC@127.0.0.1:0", "between 1 and 65535"),
    ("A_TITLE_LONGER_THAN_16@h:1", "not a DICOM AE title"),
])
def test_send_to_is_checked(text, message):
    with pytest.raises(ValueError, match=message):
        CStoreDestination.parse(text)


def test_send_to_and_stow_parse():
    d = CStoreDestination.parse(" ORTHANC@[::1]:4242 ", calling_ae_title="CXR")
    assert (d.ae_title, d.host, d.port, d.calling_ae_title) == ("ORTHANC", "::1", 4242, "CXR")
    with pytest.raises(ValueError, match="http"):
        StowDestination(url="ftp://pacs/dicom-web")
    assert check_ae_title(" CXR_ASSIST ") == "CXR_ASSIST"


def test_status_in_words_and_as_data(tmp_path):
    state = open_state(tmp_path)
    _receive(state, "1.1", calling_ae="ORTHANC", patient_id="P1")
    state.mark_analysed("1.1", film_sha256=digest(b"film"), triage="abnormal", flagged="Mass|Nodule", reason=None,
                        results=["x"])
    state.mark_send_failed("1.1", error="PACS down", retry_at=1e10)
    summary = status_summary(state)
    assert summary["counts"] == {RECEIVED: 0, ANALYSED: 1, SENT: 0, "failing": 1}
    row = summary["recent"][0]
    assert row["flagged"] == ["Mass", "Nodule"] and row["from"] == "ORTHANC" and row["status"].startswith("failed 1x")
    text = "\n".join(status_lines(state))
    assert "1 waiting to be sent (1 after a failed send, retried)" in text and "PACS down" in text


def test_status_reads_without_writing(tmp_path):
    import hashlib

    from cxr_core.pacs.state import read_only_state

    state = open_state(tmp_path)
    _receive(state, "1.1")
    state.close()  # the last connection checkpoints the WAL into the file
    before = hashlib.sha256((tmp_path / "node.sqlite").read_bytes()).hexdigest()
    reader = read_only_state(tmp_path)
    assert reader.counts()[RECEIVED] == 1
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        _receive(reader, "1.2")
    reader.close()
    assert hashlib.sha256((tmp_path / "node.sqlite").read_bytes()).hexdigest() == before


def test_status_command(tmp_path, capsys):
    state = open_state(tmp_path)
    _receive(state, "1.1")
    state.close()
    assert node_command.main(["--inbox", str(tmp_path), "--status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"][RECEIVED] == 1
    assert node_command.main(["--inbox", str(tmp_path / "nowhere"), "--status"]) == 2
    assert "no node has used the inbox" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--port", "11112", "--inbox", "x", "--allow", "PACS"], "exactly one of --send-to"),
    (["--port", "11112", "--inbox", "x", "--send-to", "P@h:1", "--stow", "http://h/dw", "--allow", "PACS"],
     "exactly one of --send-to"),
    (["--port", "11112", "--inbox", "x", "--send-to", "P@h:1"], "--allow is required"),
])
def test_command_line_mistakes_are_named(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        node_command.main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_config_file_and_its_mistakes(tmp_path, capsys):
    config = tmp_path / "node.toml"
    config.write_text('port = 11112\nallow = ["PACS"]\nsend_to = "PACS@127.0.0.1:4242"\nbundle = "nowhere"\n'
                      f'inbox = "{tmp_path / "inbox"}"\n')
    assert node_command.main(["--config", str(config)]) == 2
    assert "nowhere is not a model bundle" in capsys.readouterr().err
    config.write_text("port = 11112\ncolour = 'red'\n")
    assert node_command.main(["--config", str(config)]) == 2
    assert "unknown setting(s) colour" in capsys.readouterr().err
    config.write_text("port = \n")
    assert node_command.main(["--config", str(config)]) == 2
    assert "not valid TOML" in capsys.readouterr().err


def _stub_node(tmp_path, **config):
    """A node whose model never finishes loading: its listener works, nothing is analysed (no model needed)."""
    import threading

    from cxr_core.pacs.node import Node, NodeConfig

    never = threading.Event()
    settings = dict(ae_title="CXR_ASSIST", port=0, inbox=tmp_path / "inbox", allow=("STORESCU",),
                    destination=CStoreDestination.parse("PACS@127.0.0.1:9"))
    node = Node(NodeConfig(**{**settings, **config}), load_predictor=never.wait)
    return node, never


def test_films_on_disk_but_not_recorded_are_registered_at_start(tmp_path, shared_dicom):
    """Killed between writing a film and recording it: the next start finds the film and queues it."""
    import pydicom

    inbox = Inbox(tmp_path / "inbox")
    data = (shared_dicom / "udacity_test2.dcm").read_bytes()
    uid = str(pydicom.dcmread(shared_dicom / "udacity_test2.dcm", stop_before_pixels=True).SOPInstanceUID)
    inbox.store_film(uid, data)
    node, never = _stub_node(tmp_path)
    node.start()
    try:
        record = node.state.get(uid)
        assert record.state == RECEIVED and record.film_sha256 == digest(data) and record.modality == "DX"
    finally:
        never.set()
        node.stop()


def test_the_listener_speaks_tls_when_given_a_certificate(tmp_path):
    """--tls-cert/--tls-key: a TLS client associates and echoes; a plain-TCP client gets nowhere."""
    import ssl
    import subprocess

    from pynetdicom import AE

    cert, key = tmp_path / "node.pem", tmp_path / "node.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    context = node_command._ssl_context({"tls_cert": cert, "tls_key": key})
    node, never = _stub_node(tmp_path, ssl_context=context)
    node.start()
    try:
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
        ae = AE(ae_title="STORESCU")
        ae.acse_timeout = ae.network_timeout = 5
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", node.port, ae_title="CXR_ASSIST", tls_args=(client, "localhost"))
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0
        assoc.release()
        plain = ae.associate("127.0.0.1", node.port, ae_title="CXR_ASSIST")
        assert not plain.is_established
    finally:
        never.set()
        node.stop()
    with pytest.raises(ValueError, match="both --tls-cert and --tls-key"):
        node_command._ssl_context({"tls_cert": cert})
